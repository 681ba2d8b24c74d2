// End-to-end: presence and typing on herald's own page in headless
// Chromium. alice sees bob's dot turn on when his page opens and off after
// he closes it (past the grace), and "bob is typing…" while bob types.
//
// Run by the Rust test `browser` (which passes HERALD_BIN), or by hand:
//   HERALD_BIN=target/debug/herald node tests/browser/presence.mjs
import { chromium } from "playwright-core";
import { CHROMIUM, CHROMIUM_ARGS, PATIENCE, rest, run, startHerald, stopHerald, token, until, watchErrors } from "./herald.mjs";

async function main() {
  const server = await startHerald("127.0.0.1:0", ["--presence-grace", "500ms"]);
  const browser = await chromium.launch({ executablePath: CHROMIUM, args: CHROMIUM_ARGS });
  try {
    const group = await rest(server, token("alice"), "POST", "/api/conversations", { participantIds: ["bob", "carol"] });
    // bob takes part: being added by alice shares nothing of his presence.
    await rest(server, token("bob"), "POST", `/api/conversations/${group.id}/messages`, { content: "hi" });
    const open = async (user) => {
      const context = await browser.newContext();
      const page = await context.newPage();
      watchErrors(page, user);
      await page.goto(`http://${server.http}/#token=${token(user)}`);
      await page.waitForSelector("#status[data-state=live]", { timeout: PATIENCE });
      await page.click(`.conversation[data-id="${group.id}"]`);
      return { context, page };
    };
    const alice = (await open("alice")).page;
    const avatar = alice.locator(`.conversation[data-id="${group.id}"] .avatar`);
    const bobsDot = alice.locator('#members li[data-user="bob"] .dot');
    if (await avatar.evaluate((node) => node.classList.contains("online"))) {
      throw new Error("the group shows someone online before anyone else opened a page");
    }

    const bob = await open("bob");
    await until("bob's dot to turn on", async () => avatar.evaluate((node) => node.classList.contains("online")));
    await until("bob's member dot to turn on", async () => bobsDot.evaluate((node) => node.classList.contains("online")));
    console.log("online: alice sees bob's dot turn on when his page opens");

    await bob.page.type("#content", "hel", { delay: 50 });
    await until("alice to see bob typing", async () => (await alice.locator("#typing").textContent()).includes("bob is typing"));
    console.log("typing: alice sees \"bob is typing…\" while bob types");

    await bob.context.close();
    await until("bob's dot to turn off", async () => !(await avatar.evaluate((node) => node.classList.contains("online"))));
    console.log("offline: bob's dot turns off after his page closed");
  } finally {
    await browser.close();
    await stopHerald(server);
  }
}

run("browser presence test", main);
