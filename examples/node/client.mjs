// A herald client in Node.js: subscribe to your messages or to every event
// of your conversations, or send a message.
//
//   HERALD_TOKEN=$(herald token bob --jwt-secret $HERALD_JWT_SECRET) node client.mjs subscribe [--count N]
//   HERALD_TOKEN=... node client.mjs events [--count N]
//   HERALD_TOKEN=... node client.mjs send CONVERSATION_ID "hello"
import grpc from "@grpc/grpc-js";
import protoLoader from "@grpc/proto-loader";
import { fileURLToPath } from "node:url";

const proto = fileURLToPath(new URL("../../proto/herald/v1/herald.proto", import.meta.url));
// `oneofs` names which field of Event's `kind` is set.
const definition = protoLoader.loadSync(proto, {
  includeDirs: [fileURLToPath(new URL("../../proto", import.meta.url))],
  oneofs: true,
  arrays: true, // empty repeated fields as [], not absent
});
const { Messenger } = grpc.loadPackageDefinition(definition).herald.v1;

const client = new Messenger(process.env.HERALD_GRPC || "127.0.0.1:50051", grpc.credentials.createInsecure());
const metadata = new grpc.Metadata();
metadata.set("authorization", `Bearer ${process.env.HERALD_TOKEN}`);

const [command, ...args] = process.argv.slice(2);
if (command === "send") {
  const [conversationId, content] = args;
  client.CreateMessage({ conversationId, content }, metadata, (error, message) => {
    if (error) {
      console.error(error.message);
      process.exitCode = 1;
    } else {
      console.log(message.id);
    }
    client.close();
  });
} else if (command === "subscribe" || command === "events") {
  const count = args[0] === "--count" ? Number(args[1]) : 0;
  let received = 0;
  const stream = command === "events"
    ? client.SubscribeEvents({ afterId: "" }, metadata)
    : client.SubscribeMessages({ afterId: "" }, metadata);
  // Initial metadata means the subscription is live.
  stream.on("metadata", () => console.error("subscribed"));
  stream.on("data", (item) => {
    console.log(command === "events" ? describe(item) : `${item.id} ${item.userId}: ${item.content}`);
    if (++received === count) stream.cancel();
  });
  stream.on("error", (error) => {
    if (error.code !== grpc.status.CANCELLED) {
      console.error(error.message);
      process.exitCode = 1;
    }
    client.close();
  });
} else {
  console.error("usage: node client.mjs subscribe|events [--count N] | send CONVERSATION_ID TEXT");
  process.exitCode = 2;
}

/** One line per event: its id, its kind, and what it says. */
function describe(event) {
  const { message, read, membership } = event;
  switch (event.kind) {
    case "message":
      return `${event.id} message ${message.userId}: ${message.content}`;
    case "read":
      return `${event.id} read ${read.userId} up to ${read.messageId}`;
    case "membership": {
      const added = membership.addedIds.map((id) => ` +${id}`).join("");
      const removed = membership.removedIds.map((id) => ` -${id}`).join("");
      return `${event.id} membership by ${membership.actorId}:${added}${removed}`;
    }
    default:
      return `${event.id} ${event.kind}`;
  }
}
