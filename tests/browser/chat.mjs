// End-to-end: alice and bob chat through herald's own page in headless
// Chromium. Bob's page shows alice's message live, then survives a server
// restart and receives a message sent while it was away, through
// EventSource's own reconnect with Last-Event-ID.
//
// Run by the Rust test `browser` (which passes HERALD_BIN), or by hand:
//   HERALD_BIN=target/debug/herald node tests/browser/chat.mjs
import { chromium } from "playwright-core";
import { spawn } from "node:child_process";
import { mkdirSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import {
  CHROMIUM, CHROMIUM_ARGS, PATIENCE, rest, run, startHerald, stopHerald, token, track, until, watchErrors,
} from "./herald.mjs";

const screenshots = join(dirname(fileURLToPath(import.meta.url)), "screenshots");

/**
 * Records, before the page's own script runs, every event its EventSource
 * receives (message ids, and "reset") and how many times the page loaded,
 * so "nothing duplicated" is checked on the wire, not on the page, which
 * drops ids it has already shown.
 */
function recordEvents() {
  sessionStorage.loads = String(Number(sessionStorage.loads || 0) + 1);
  window.__events = [];
  const Native = window.EventSource;
  window.EventSource = class extends Native {
    constructor(...args) {
      super(...args);
      this.addEventListener("message", (event) => window.__events.push(event.lastEventId));
      this.addEventListener("reset", () => window.__events.push("reset"));
    }
  };
}

async function openChat(browser, server, bearer, conversationId) {
  const context = await browser.newContext();
  await context.addInitScript(recordEvents);
  const page = await context.newPage();
  watchErrors(page, "alice");
  await page.goto(`http://${server.http}/#token=${bearer}`);
  await page.click(`.conversation[data-id="${conversationId}"]`, { timeout: PATIENCE });
  await page.waitForSelector("#status[data-state=live]", { timeout: PATIENCE });
  return page;
}

const bubble = (page, text) => page.locator(".message .bubble", { hasText: text });

/** grpcurl against `server` as `bearer`; returns the child process. */
function grpcurl(server, bearer, method, body) {
  const args = ["-plaintext", "-H", `authorization: Bearer ${bearer}`, "-d", JSON.stringify(body),
    server.grpc, `herald.v1.Messenger/${method}`];
  const proc = track(spawn("grpcurl", args, { stdio: ["ignore", "pipe", "inherit"] }));
  let output = "";
  proc.stdout.on("data", (chunk) => { output += chunk; });
  proc.output = () => output;
  return proc;
}

/** Bob on the page chats with carol on gRPC (grpcurl), both ways. */
async function chatWithGrpcUser(browser, server, bob) {
  const carol = token("carol");
  const conversation = await rest(server, carol, "POST", "/api/conversations", { participantIds: ["bob"] });
  const carolStream = grpcurl(server, carol, "SubscribeMessages", {});
  const bobPage = watchErrors(await (await browser.newContext()).newPage(), "bob");
  await bobPage.goto(`http://${server.http}/#token=${bob}`);
  await bobPage.click(`.conversation[data-id="${conversation.id}"]`, { timeout: PATIENCE });
  await bobPage.waitForSelector("#status[data-state=live]", { timeout: PATIENCE });

  const sent = grpcurl(server, carol, "CreateMessage", { conversation_id: conversation.id, content: "hi from gRPC" });
  await new Promise((resolve) => sent.on("exit", resolve));
  await bubble(bobPage, "hi from gRPC").waitFor({ timeout: PATIENCE });
  await bobPage.fill("#content", "hi from the browser");
  await bobPage.click("#send");
  await until("carol's gRPC stream to get bob's reply", () => carolStream.output().includes("hi from the browser"));
  carolStream.kill("SIGTERM");
  console.log("grpc: bob on the page and carol on gRPC chat both ways");
}

async function main() {
  const [alice, bob] = [token("alice"), token("bob")];
  let server = await startHerald("127.0.0.1:0");
  const conversation = await rest(server, alice, "POST", "/api/conversations", { participantIds: ["bob"] });
  const browser = await chromium.launch({ executablePath: CHROMIUM, args: CHROMIUM_ARGS });
  try {
    await chatWithGrpcUser(browser, server, bob);
    const alicePage = await openChat(browser, server, alice, conversation.id);
    const bobPage = await openChat(browser, server, bob, conversation.id);

    await alicePage.fill("#content", "hello bob");
    await alicePage.click("#send");
    await bubble(bobPage, "hello bob").waitFor({ timeout: PATIENCE });
    console.log("live: bob's page shows alice's message without a reload");

    const address = server.http;
    await stopHerald(server);
    await bobPage.waitForSelector("#status[data-state=connecting]", { timeout: PATIENCE });
    // While bob's page is away, another herald on the same database (and
    // other ports) takes a message: only a replay can bring it to bob.
    const side = await startHerald("127.0.0.1:0");
    await rest(side, alice, "POST", `/api/conversations/${conversation.id}/messages`, {
      content: "sent while you were away",
    });
    await stopHerald(side);
    server = await startHerald(address);
    await bubble(bobPage, "sent while you were away").waitFor({ timeout: PATIENCE });
    console.log("resume: bob's page replayed the message it missed during the restart");

    await alicePage.waitForSelector("#status[data-state=live]", { timeout: PATIENCE });
    await alicePage.fill("#content", "welcome back");
    await alicePage.click("#send");
    await bubble(bobPage, "welcome back").waitFor({ timeout: PATIENCE });
    const copies = await bubble(bobPage, "hello bob").count();
    if (copies !== 1) throw new Error(`bob's page shows "hello bob" ${copies} times`);
    // On the wire: one load, no reset, every id once, and the message sent
    // while away came by replay on the same stream.
    const { events, loads } = await bobPage.evaluate(() => ({
      events: window.__events, loads: sessionStorage.loads,
    }));
    if (loads !== "1") throw new Error(`bob's page loaded ${loads} times`);
    if (events.includes("reset")) throw new Error(`bob's stream was reset: ${events}`);
    const twice = events.filter((id, index) => events.indexOf(id) !== index);
    if (twice.length) throw new Error(`ids received twice: ${twice} in ${events}`);
    if (events.length !== 3) throw new Error(`expected 3 messages on bob's stream, got ${events}`);
    console.log("live again after the restart, nothing duplicated on the wire");

    mkdirSync(screenshots, { recursive: true });
    await bobPage.screenshot({ path: join(screenshots, "bob.png") });
    await alicePage.screenshot({ path: join(screenshots, "alice.png") });
  } finally {
    await browser.close();
    await stopHerald(server);
  }
}

run("browser chat test", main);
