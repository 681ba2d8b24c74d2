// A herald client in Node.js: subscribe to your messages, or send one.
//
//   HERALD_TOKEN=$(herald token bob --jwt-secret $HERALD_JWT_SECRET) node client.mjs subscribe [--count N]
//   HERALD_TOKEN=... node client.mjs send CONVERSATION_ID "hello"
import grpc from "@grpc/grpc-js";
import protoLoader from "@grpc/proto-loader";
import { fileURLToPath } from "node:url";

const proto = fileURLToPath(new URL("../../proto/herald/v1/herald.proto", import.meta.url));
const definition = protoLoader.loadSync(proto, { includeDirs: [fileURLToPath(new URL("../../proto", import.meta.url))] });
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
} else if (command === "subscribe") {
  const count = args[0] === "--count" ? Number(args[1]) : 0;
  let received = 0;
  const stream = client.SubscribeMessages({ afterId: "" }, metadata);
  // Initial metadata means the subscription is live.
  stream.on("metadata", () => console.error("subscribed"));
  stream.on("data", (message) => {
    console.log(`${message.id} ${message.userId}: ${message.content}`);
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
  console.error("usage: node client.mjs subscribe [--count N] | send CONVERSATION_ID TEXT");
  process.exitCode = 2;
}
