// End-to-end: a group changes under three people's pages in headless
// Chromium, all through /api/events. alice adds carol from the members
// panel, and carol's page shows only what follows; "seen" appears on
// alice's message when bob's page reads it; carol's second device drops its
// unread badge when her first device reads; bob leaves and his stream
// carries nothing of the group from then on.
//
// Run by the Rust test `browser` (which passes HERALD_BIN), or by hand:
//   HERALD_BIN=target/debug/herald node tests/browser/members.mjs
import { chromium } from "playwright-core";
import { CHROMIUM, CHROMIUM_ARGS, PATIENCE, rest, run, startHerald, stopHerald, token, until, watchErrors } from "./herald.mjs";

/** Records, before the page's script runs, every message id its EventSource receives. */
function recordMessages() {
  window.__messages = [];
  const Native = window.EventSource;
  window.EventSource = class extends Native {
    constructor(...args) {
      super(...args);
      this.addEventListener("message", (event) => window.__messages.push(event.lastEventId));
    }
  };
}

async function open(browser, server, user) {
  const context = await browser.newContext();
  await context.addInitScript(recordMessages);
  const page = await context.newPage();
  watchErrors(page, user);
  await page.goto(`http://${server.http}/#token=${token(user)}`);
  await page.waitForSelector("#status[data-state=live]", { timeout: PATIENCE });
  return page;
}

const bubble = (page, text) => page.locator(".message .bubble", { hasText: text });
const entry = (page, id) => page.locator(`.conversation[data-id="${id}"]`);

async function main() {
  const server = await startHerald("127.0.0.1:0");
  const browser = await chromium.launch({ executablePath: CHROMIUM, args: CHROMIUM_ARGS });
  try {
    const group = await rest(server, token("alice"), "POST", "/api/conversations", { participantIds: ["bob", "dave"] });
    await rest(server, token("alice"), "POST", `/api/conversations/${group.id}/messages`, { content: "before carol" });
    const alice = await open(browser, server, "alice");
    const bob = await open(browser, server, "bob");
    const carol = await open(browser, server, "carol");
    const carolPhone = await open(browser, server, "carol");
    await alice.click(`.conversation[data-id="${group.id}"]`);
    await bob.click(`.conversation[data-id="${group.id}"]`);

    // alice adds carol from the members panel; carol's pages learn of it
    // from the event stream.
    await alice.click("#members-panel summary");
    await alice.fill("#member-input", "carol");
    await alice.click("#add-member button");
    await alice.locator('#members li[data-user="carol"]').waitFor({ timeout: PATIENCE });
    await entry(carol, group.id).waitFor({ timeout: PATIENCE });
    await entry(carolPhone, group.id).waitFor({ timeout: PATIENCE });
    await carol.click(`.conversation[data-id="${group.id}"]`);

    await alice.fill("#content", "after carol");
    await alice.click("#send");
    await bubble(carol, "after carol").waitFor({ timeout: PATIENCE });
    if (await bubble(carol, "before carol").count()) throw new Error("carol's page shows history from before she was added");
    console.log("add: carol's page shows only what follows her add");

    // bob's page has the group open, so it reads "after carol" at once;
    // alice's page marks her message seen.
    const mine = alice.locator(".message.mine", { hasText: "after carol" });
    await until("alice's message to show bob saw it", async () => (await mine.locator(".seen").textContent()).includes("bob"));
    console.log("seen: alice's page shows bob read her message");

    // carol's phone counted the message unread; her first page read it.
    await until("carol's phone to drop its unread badge", async () => (await entry(carolPhone, group.id).locator(".unread").count()) === 0);
    console.log("unread: carol's phone follows the receipt from her other page");

    // bob leaves; the conversation leaves his page, and his stream carries
    // nothing of the group from then on.
    await bob.click("#members-panel summary");
    await bob.click("#leave");
    await until("the group to leave bob's list", async () => (await entry(bob, group.id).count()) === 0);
    await alice.locator('#members li[data-user="bob"]').waitFor({ state: "detached", timeout: PATIENCE });
    const after = await rest(server, token("alice"), "POST", `/api/conversations/${group.id}/messages`, { content: "after bob left" });
    await bubble(carol, "after bob left").waitFor({ timeout: PATIENCE });
    const other = await rest(server, token("alice"), "POST", "/api/conversations", { participantIds: ["bob"] });
    const marker = await rest(server, token("alice"), "POST", `/api/conversations/${other.id}/messages`, { content: "marker" });
    await until("bob's stream to get the marker", async () => (await bob.evaluate(() => window.__messages)).includes(marker.id));
    const bobs = await bob.evaluate(() => window.__messages);
    if (bobs.includes(after.id)) throw new Error(`bob's stream carried a message from after he left: ${bobs}`);
    console.log("leave: bob's stream carried nothing of the group after he left");
  } finally {
    await browser.close();
    await stopHerald(server);
  }
}

run("browser members test", main);
