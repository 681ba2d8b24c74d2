// End-to-end: the application steers the chat under bob's page in headless
// Chromium. A system message it publishes is shown apart from people's
// messages; when it bans bob, his page stops reconnecting and says why.
//
// Run by the Rust test `browser` (which passes HERALD_BIN), or by hand:
//   HERALD_BIN=target/debug/herald node tests/browser/moderation.mjs
import { chromium } from "playwright-core";
import { CHROMIUM, CHROMIUM_ARGS, PATIENCE, rest, run, serviceKey, startHerald, token, watchErrors } from "./herald.mjs";

async function main() {
  const key = serviceKey("shop", "publish,moderate");
  const server = await startHerald("127.0.0.1:0");
  const browser = await chromium.launch({ executablePath: CHROMIUM, args: CHROMIUM_ARGS });
  try {
    const chat = await rest(server, token("alice"), "POST", "/api/conversations", { participantIds: ["bob"] });
    await rest(server, token("alice"), "POST", `/api/conversations/${chat.id}/messages`, { content: "hi bob" });
    const bob = watchErrors(await (await browser.newContext()).newPage(), "bob");
    // Every stream the page opens, to tell that it stops reconnecting.
    let streams = 0;
    bob.on("request", (request) => {
      if (request.url().includes("/api/events")) streams += 1;
    });
    await bob.goto(`http://${server.http}/#token=${token("bob")}`);
    await bob.waitForSelector("#status[data-state=live]", { timeout: PATIENCE });
    await bob.click(`.conversation[data-id="${chat.id}"]`);

    const notice = await rest(server, key, "POST", `/api/admin/conversations/${chat.id}/messages`, { content: "Your order shipped" });
    const shown = bob.locator(`.message.system[data-id="${notice.id}"]`);
    await shown.waitFor({ timeout: PATIENCE });
    if ((await shown.locator(".bubble").textContent()) !== "Your order shipped") throw new Error("the notice's text");
    if (!(await shown.locator(".meta").textContent()).startsWith("notice")) throw new Error("a notice is nobody's message");
    if ((await bob.locator(".message.system").count()) !== 1) throw new Error("only the notice is a system message");

    const banned = await fetch(`http://${server.http}/api/admin/users/bob/ban`, {
      method: "PUT",
      headers: { Authorization: `Bearer ${key}`, "Content-Type": "application/json" },
      body: JSON.stringify({ reason: "spam" }),
    });
    if (banned.status !== 204) throw new Error(`the ban: ${banned.status}`);
    await bob.waitForSelector("#status[data-state=banned]", { timeout: PATIENCE });
    const said = await bob.locator("#notice").textContent();
    if (!said.includes("banned: spam")) throw new Error(`the page says ${JSON.stringify(said)}`);
    const opened = streams;
    await new Promise((resolve) => setTimeout(resolve, 3000));
    if (streams !== opened) throw new Error(`the page reconnected ${streams - opened} times after the ban`);
  } finally {
    await browser.close();
  }
}

run("moderation", main);
