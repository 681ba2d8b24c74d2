// Shared by the JavaScript tests: run the herald binary, mint tokens, call
// REST. HERALD_BIN names the binary (the Rust test runner passes it).
import { execFileSync, spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";

export const BIN = process.env.HERALD_BIN;
export const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
export const CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
  "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"];
export const PATIENCE = 15_000;
const SECRET = "javascript-test-secret-0123456789abcdef0123456789abcdef";
const dir = mkdtempSync(join(tmpdir(), "herald-js-"));
const database = `sqlite://${dir}/herald.db`;
const running = new Set();

if (!BIN) throw new Error("set HERALD_BIN to the herald binary");

/** Tracks a child process so `finish` can end it whatever happens. */
export function track(proc) {
  running.add(proc);
  proc.on("exit", () => running.delete(proc));
  return proc;
}

/** Starts `herald serve` on `http` (port 0 allowed) with `extra` flags; resolves once it serves. */
export function startHerald(http = "127.0.0.1:0", extra = []) {
  const args = ["serve", "--http", http, "--grpc", "127.0.0.1:0", "--database-url", database,
    "--jwt-secret", SECRET, "--drain-timeout", "2s", ...extra];
  const proc = track(spawn(BIN, args, { stdio: ["ignore", "ignore", "pipe"], env: { ...process.env, RUST_LOG: "info" } }));
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error("herald did not start")), PATIENCE);
    createInterface({ input: proc.stderr }).on("line", (line) => {
      const found = /herald is serving http=(\S+) grpc=(\S+)/.exec(line);
      if (found) {
        clearTimeout(timer);
        resolve({ proc, http: found[1], grpc: found[2] });
      }
    });
    proc.on("exit", (code) => reject(new Error(`herald exited with ${code}`)));
  });
}

export function stopHerald(server) {
  return new Promise((resolve) => {
    if (server.proc.exitCode !== null) return resolve(server.proc.exitCode);
    server.proc.on("exit", (code) => resolve(code));
    server.proc.kill("SIGTERM");
  });
}

export const token = (user) => execFileSync(BIN, ["token", user, "--jwt-secret", SECRET]).toString().trim();

/** A service key made with `herald key create` on the tests' database (before the server starts). */
export const serviceKey = (name, scopes) =>
  execFileSync(BIN, ["key", "create", name, "--scope", scopes, "--database-url", database], { stdio: ["ignore", "pipe", "ignore"] })
    .toString()
    .trim();

export async function rest(server, bearer, method, path, body) {
  const response = await fetch(`http://${server.http}${path}`, {
    method,
    headers: { Authorization: `Bearer ${bearer}`, "Content-Type": "application/json" },
    body: body && JSON.stringify(body),
  });
  if (!response.ok) throw new Error(`${method} ${path}: ${response.status} ${await response.text()}`);
  return response.json();
}

export async function until(what, check) {
  const deadline = Date.now() + PATIENCE;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

/** Errors the pages' own scripts threw: any fails the test. */
const pageErrors = [];

/** Records what `page`'s scripts throw, as `who`'s errors. */
export function watchErrors(page, who) {
  page.on("pageerror", (error) => {
    console.error(`${who}'s page error:`, error);
    pageErrors.push(`${who}: ${error}`);
  });
  return page;
}

/** Runs `test`, reports, and always cleans up; an error a page threw fails it. */
export function run(name, test) {
  test()
    .then(() => {
      if (pageErrors.length > 0) throw new Error(`the pages threw: ${pageErrors.join("; ")}`);
    })
    .then(() => console.log(`${name} passed`))
    .catch((error) => {
      console.error(`${name} failed:`, error);
      process.exitCode = 1;
    })
    .finally(() => {
      for (const proc of running) proc.kill("SIGKILL");
      rmSync(dir, { recursive: true, force: true });
    });
}
