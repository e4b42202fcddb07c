// A real `switchboard serve` for the integration tests: a fresh data directory, a free port,
// and the suite's backend flags (SWITCHBOARD_TEST_BACKEND_ARGS, `{unique}` filled in per server,
// as the Rust suites take them). The binary is SWITCHBOARD_BIN, else the workspace's debug build.
import { spawn } from "node:child_process";
import { existsSync, mkdtempSync, openSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";

const workspace = resolve(dirname(fileURLToPath(import.meta.url)), "../../..");

function binary() {
  const candidates = [
    process.env.SWITCHBOARD_BIN,
    process.env.CARGO_TARGET_DIR && join(process.env.CARGO_TARGET_DIR, "debug/switchboard"),
    join(workspace, "target/debug/switchboard"),
  ].filter(Boolean);
  const found = candidates.find((path) => existsSync(path));
  if (!found) {
    throw new Error(`no switchboard binary (looked at ${candidates.join(", ")}): build it, or set SWITCHBOARD_BIN`);
  }
  return found;
}

export async function startServer(extra = []) {
  const dataDir = mkdtempSync(join(tmpdir(), "switchboard-sdk-"));
  const unique = `sdk${process.pid}_${Date.now() % 1_000_000_000}`;
  const backend = (process.env.SWITCHBOARD_TEST_BACKEND_ARGS ?? "")
    .replaceAll("{unique}", unique)
    .split(/\s+/)
    .filter(Boolean);
  const args = [
    "serve",
    "--listen", "127.0.0.1:0",
    "--data-dir", dataDir,
    // Tests register and connect many users from one address.
    "--rate-auth", "off",
    "--rate-sockets", "off",
    "--rate-sockets-ip", "off",
    "--rate-general", "off",
    ...backend,
    ...extra,
  ];
  const log = openSync(join(dataDir, "server.log"), "a");
  const child = spawn(binary(), args, { stdio: ["ignore", "pipe", log] });
  const url = await new Promise((resolve, reject) => {
    const lines = createInterface({ input: child.stdout });
    lines.on("line", (line) => {
      if (line.startsWith("listening on ")) resolve(line.slice("listening on ".length).trim());
    });
    child.on("exit", (code) => {
      const output = readFileSync(join(dataDir, "server.log"), "utf8");
      reject(new Error(`switchboard exited with ${code} before listening:\n${output}`));
    });
  });
  return {
    url,
    async stop() {
      if (child.exitCode === null) {
        const exited = new Promise((resolve) => child.once("exit", resolve));
        child.kill("SIGTERM");
        await exited;
      }
      rmSync(dataDir, { recursive: true, force: true });
    },
  };
}

/** Waits for `check` to return a truthy value, polling; fails past the deadline. */
export async function eventually(check, what, timeoutMs = 30_000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}
