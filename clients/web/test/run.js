// Runs the browser tests with node's test runner; TAP when read by a program (ops/test.sh adds
// up its `# pass` and `# fail` lines).
import { spawnSync } from "node:child_process";
import { readdirSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const files = readdirSync(here)
  .filter((name) => name.endsWith(".test.js"))
  .map((name) => join(here, name));
const flags = process.stdout.isTTY ? [] : ["--test-reporter=tap"];
const run = spawnSync(process.execPath, [...flags, "--test", ...files], { stdio: "inherit" });
process.exit(run.status ?? 1);
