// End-to-end: messages change under two people's pages in headless
// Chromium. alice edits her message, bob reacts to it and replies to it,
// alice deletes another; each page shows the other's changes live through
// /api/events, and bob's page shows the same after a reload.
//
// Run by the Rust test `browser` (which passes HERALD_BIN), or by hand:
//   HERALD_BIN=target/debug/herald node tests/browser/changes.mjs
import { chromium } from "playwright-core";
import { CHROMIUM, CHROMIUM_ARGS, PATIENCE, rest, run, startHerald, stopHerald, token, watchErrors } from "./herald.mjs";

async function open(browser, server, user, conversation) {
  const page = watchErrors(await (await browser.newContext()).newPage(), user);
  await page.goto(`http://${server.http}/#token=${token(user)}`);
  await page.waitForSelector("#status[data-state=live]", { timeout: PATIENCE });
  await page.click(`.conversation[data-id="${conversation}"]`);
  return page;
}

const message = (page, id) => page.locator(`.message[data-id="${id}"]`);

/** Clicks `action` (a class of the message's action buttons, or an emoji) on message `id`. */
async function act(page, id, action) {
  const item = message(page, id);
  await item.hover();
  const button = action.startsWith(".") ? item.locator(`.actions ${action}`) : item.locator(".actions .react", { hasText: action });
  await button.first().click();
}

async function expectText(locator, text, what) {
  await locator.filter({ hasText: text }).first().waitFor({ timeout: PATIENCE }).catch(() => {
    throw new Error(`${what}: no ${JSON.stringify(text)}`);
  });
}

/** What bob must see of alice's first message, the reply and the deleted one. */
async function bobSees(bob, ids, when) {
  await expectText(message(bob, ids.first).locator(".bubble"), "hello", `${when}: the edit`);
  await expectText(message(bob, ids.first).locator(".meta"), "(edited)", `${when}: edited`);
  await expectText(message(bob, ids.first).locator(".reaction.mine"), "👍 1", `${when}: his reaction`);
  await expectText(message(bob, ids.reply).locator(".quote"), "alice: hello", `${when}: the quote`);
  await expectText(message(bob, ids.oops).locator(".bubble"), "message deleted", `${when}: the tombstone`);
  const left = await message(bob, ids.oops).locator(".bubble").textContent();
  if (left.includes("oops")) throw new Error(`${when}: the deleted content is still shown`);
}

async function main() {
  const server = await startHerald("127.0.0.1:0");
  const browser = await chromium.launch({ executablePath: CHROMIUM, args: CHROMIUM_ARGS });
  try {
    const chat = await rest(server, token("alice"), "POST", "/api/conversations", { participantIds: ["bob"] });
    const alice = await open(browser, server, "alice", chat.id);
    let bob = await open(browser, server, "bob", chat.id);

    // alice sends "helo", then fixes it from the page.
    await alice.fill("#content", "helo");
    await alice.click("#send");
    const first = alice.locator(".message.mine").last();
    await expectText(first.locator(".bubble"), "helo", "alice's message");
    const ids = { first: await first.getAttribute("data-id") };
    await expectText(message(bob, ids.first).locator(".bubble"), "helo", "bob sees it");
    await act(alice, ids.first, ".edit");
    await alice.fill("#content", "hello");
    await alice.click("#send");
    await expectText(message(bob, ids.first).locator(".bubble"), "hello", "bob sees the edit live");
    console.log("edit: bob's page shows alice's edit live, marked (edited)");

    // bob reacts with the palette and replies.
    await act(bob, ids.first, "👍");
    await expectText(message(alice, ids.first).locator(".reaction"), "👍 1", "alice sees bob's reaction");
    await act(bob, ids.first, ".reply");
    await bob.fill("#content", "hi!");
    await bob.click("#send");
    const reply = bob.locator(".message.mine").last();
    await expectText(reply.locator(".bubble"), "hi!", "bob's reply");
    ids.reply = await reply.getAttribute("data-id");
    await expectText(message(alice, ids.reply).locator(".quote"), "alice: hello", "alice sees the quote");
    console.log("react, reply: alice's page shows bob's reaction and his reply under a quote");

    // alice sends a message she regrets, and deletes it.
    await alice.fill("#content", "oops");
    await alice.click("#send");
    const oops = alice.locator(".message.mine").last();
    await expectText(oops.locator(".bubble"), "oops", "alice's second message");
    ids.oops = await oops.getAttribute("data-id");
    await expectText(message(bob, ids.oops).locator(".bubble"), "oops", "bob sees it");
    await act(alice, ids.oops, ".delete");
    await bobSees(bob, ids, "live");
    console.log("delete: bob's page shows the tombstone live");

    // After a reload, from history.
    await bob.reload();
    await bob.waitForSelector("#status[data-state=live]", { timeout: PATIENCE });
    await bob.click(`.conversation[data-id="${chat.id}"]`);
    await bobSees(bob, ids, "after a reload");
    console.log("reload: bob's page shows the same from history");
  } finally {
    await browser.close();
    await stopHerald(server);
  }
}

run("browser message changes test", main);
