// Runs every test file with node's test runner. Node before 22 has its WebSocket behind a flag.
import { spawnSync } from "node:child_process";
import { readdirSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const files = readdirSync(here)
  .filter((name) => name.endsWith(".test.js"))
  .map((name) => join(here, name));
const [major, minor] = process.versions.node.split(".").map(Number);
if (major < 20 || (major === 20 && minor < 10)) {
  console.error(`the tests need Node.js 20.10 or later (for its WebSocket); this is ${process.version}`);
  process.exit(1);
}
const flags = typeof WebSocket === "function" ? [] : ["--experimental-websocket"];
// TAP when read by a program (ops/test.sh adds up its `# pass` and `# fail` lines).
if (!process.stdout.isTTY) flags.push("--test-reporter=tap");
const run = spawnSync(process.execPath, [...flags, "--test", ...files], { stdio: "inherit" });
process.exit(run.status ?? 1);
