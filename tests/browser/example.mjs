// examples/browser/index.html, the EventSource-and-fetch client, served
// from another origin in headless Chromium: herald allows that origin by
// --cors-origin, the page receives live and sends.
import { chromium } from "playwright-core";
import { readFileSync } from "node:fs";
import { createServer } from "node:http";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { CHROMIUM, CHROMIUM_ARGS, PATIENCE, rest, run, startHerald, stopHerald, token, watchErrors } from "./herald.mjs";

const page = readFileSync(join(dirname(fileURLToPath(import.meta.url)), "..", "..", "examples", "browser", "index.html"));

async function main() {
  const site = createServer((_, response) => response.writeHead(200, { "Content-Type": "text/html" }).end(page));
  await new Promise((resolve) => site.listen(0, "127.0.0.1", resolve));
  const origin = `http://127.0.0.1:${site.address().port}`;
  const server = await startHerald("127.0.0.1:0", ["--cors-origin", origin]);
  const [alice, bob] = [token("alice"), token("bob")];
  const conversation = await rest(server, alice, "POST", "/api/conversations", { participantIds: ["bob"] });
  const browser = await chromium.launch({ executablePath: CHROMIUM, args: CHROMIUM_ARGS });
  try {
    const tab = watchErrors(await browser.newPage(), "bob");
    const query = new URLSearchParams({ herald: `http://${server.http}`, token: bob, conversation: conversation.id });
    await tab.goto(`${origin}/?${query}`);
    await tab.click("#connect button");
    await tab.waitForSelector("#state:text('live')", { timeout: PATIENCE });

    await rest(server, alice, "POST", `/api/conversations/${conversation.id}/messages`, { content: "hi, example page" });
    await tab.locator("#messages li", { hasText: "alice: hi, example page" }).waitFor({ timeout: PATIENCE });
    await tab.fill("#content", "hi from the example");
    await tab.click("#send button");
    await tab.locator("#messages li", { hasText: "bob: hi from the example" }).waitFor({ timeout: PATIENCE });
  } finally {
    await browser.close();
    site.close();
    await stopHerald(server);
  }
}

run("browser example test", main);
