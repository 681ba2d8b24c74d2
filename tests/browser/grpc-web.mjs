// gRPC-Web on herald's HTTP port, from a maintained browser client library
// (Connect's gRPC-Web transport over fetch), with the service described by
// the descriptor set that `buf build` makes from our proto: no hand-written
// protocol code. Unary calls, the server stream, and a refused token.
import { createClient, ConnectError, Code } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";
import { createFileRegistry, fromBinary } from "@bufbuild/protobuf";
import { FileDescriptorSetSchema } from "@bufbuild/protobuf/wkt";
import { execFileSync } from "node:child_process";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { run, startHerald, stopHerald, token, until } from "./herald.mjs";

const here = dirname(fileURLToPath(import.meta.url));
const buf = join(here, "node_modules", ".bin", "buf");
const descriptors = execFileSync(buf, ["build", "-o", "-"], { cwd: join(here, "..", "..") });
const Messenger = createFileRegistry(fromBinary(FileDescriptorSetSchema, descriptors)).getService("herald.v1.Messenger");

async function main() {
  const server = await startHerald();
  const client = createClient(Messenger, createGrpcWebTransport({ baseUrl: `http://${server.http}` }));
  const as = (user) => ({ headers: { authorization: `Bearer ${token(user)}` } });

  const conversation = await client.createConversation({ participantIds: ["bob"] }, as("alice"));
  if (conversation.participantIds.join() !== "alice,bob") throw new Error(`participants: ${conversation.participantIds}`);

  // Bob's server stream; initial metadata (onHeader) means it is live.
  const received = [];
  const abort = new AbortController();
  let live;
  const isLive = new Promise((resolve) => { live = resolve; });
  const reading = (async () => {
    const stream = client.subscribeMessages({}, { ...as("bob"), signal: abort.signal, onHeader: live });
    for await (const message of stream) received.push(message);
  })().catch((error) => {
    if (!(error instanceof ConnectError && error.code === Code.Canceled)) throw error;
  });
  await isLive;

  const sent = await client.createMessage({ conversationId: conversation.id, content: "over gRPC-Web" }, as("alice"));
  await until("bob's gRPC-Web stream to deliver the message", () => received.length === 1);
  if (received[0].id !== sent.id || received[0].content !== "over gRPC-Web") throw new Error("wrong message");
  const page = await client.listMessages({ conversationId: conversation.id }, as("bob"));
  if (page.messages.length !== 1) throw new Error(`history has ${page.messages.length} messages`);
  abort.abort();
  await reading;

  try {
    await client.listConversations({}, { headers: { authorization: "Bearer forged" } });
    throw new Error("a forged token was accepted");
  } catch (error) {
    if (!(error instanceof ConnectError) || error.code !== Code.Unauthenticated) throw error;
  }
  await stopHerald(server);
}

run("gRPC-Web test", main);
