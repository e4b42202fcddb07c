// Builds the web app's script and styles into a directory: app.js (the app and the client's
// sources, bundled and minified) and app.css. The server embeds them (from dist/, committed, so
// that building the server needs no Node.js) with the page that loads them, index.html.
//
//   node build.js DIR            builds into DIR
//   node build.js --check DIR    builds elsewhere and fails if DIR differs: the committed bundle
//                                cannot drift from its sources (esbuild's output is the same for
//                                the same sources at the pinned version)
import { build } from "esbuild";
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const args = process.argv.slice(2);
const check = args[0] === "--check";
const target = join(here, args[check ? 1 : 0] ?? "dist");

async function buildInto(dir) {
  rmSync(dir, { recursive: true, force: true });
  mkdirSync(dir, { recursive: true });
  // main.js imports app.css: the styles come out beside the script, as app.css.
  await build({
    entryPoints: { app: join(here, "src/main.js") },
    outdir: dir,
    bundle: true,
    minify: true,
    format: "esm",
    target: "es2022",
    legalComments: "none",
    logLevel: "warning",
  });
}

if (!check) {
  await buildInto(target);
} else {
  const fresh = mkdtempSync(join(tmpdir(), "switchboard-web-"));
  try {
    await buildInto(fresh);
    const names = (dir) => readdirSync(dir).sort();
    const differ = [...new Set([...names(fresh), ...names(target)])].filter((name) => {
      try {
        return !readFileSync(join(fresh, name)).equals(readFileSync(join(target, name)));
      } catch {
        return true;
      }
    });
    if (differ.length > 0) {
      console.error(`${target} is not the build of src/ (${differ.join(", ")} differ): run \`npm run build\` and commit it`);
      process.exit(1);
    }
    console.log(`${target}: the build of src/`);
  } finally {
    rmSync(fresh, { recursive: true, force: true });
  }
}
