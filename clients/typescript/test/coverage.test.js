// The client speaks the whole protocol: every route, op and pushed event that docs/protocol.md
// documents or the server's sources define is in the client's lists (ROUTES, OPS, EVENT_TYPES),
// and the client has nothing the server lacks. A route, op or event added to either side without
// the client fails here.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { test } from "node:test";
import { fileURLToPath } from "node:url";

import { EVENT_TYPES, OPS, ROUTES } from "../dist/index.js";

const root = join(dirname(fileURLToPath(import.meta.url)), "../../..");
const read = (path) => readFileSync(join(root, path), "utf8");
const doc = read("docs/protocol.md");

/** Request lines of the document that name no route: they show what an unknown route or method gets. */
const NOT_ROUTES = new Set(["GET /v1/nothing", "PUT /v1/conversations"]);

/** The text of a `### ` section of the document, up to the next heading. */
function section(title) {
  const start = doc.indexOf(`\n### ${title}\n`);
  assert.ok(start >= 0, `the document has a section "${title}"`);
  const end = doc.indexOf("\n#", start + 5);
  return doc.slice(start, end < 0 ? undefined : end);
}

/** The names in backquotes of the first column of a section's table, parenthesised notes left out. */
function firstColumn(text) {
  return text
    .split("\n")
    .filter((line) => line.startsWith("| `"))
    .flatMap((line) => [...line.split("|")[1].replace(/\([^)]*\)/g, "").matchAll(/`([^`]+)`/g)].map((m) => m[1]));
}

/** Whether `METHOD /concrete/path` is a call of the route `METHOD /pattern/{param}`. */
function matches(route, request) {
  const [method, pattern] = route.split(" ");
  const regex = new RegExp(`^${pattern.replace(/\{\w+\}/g, "[^/]+")}$`);
  const [requestMethod, path] = request.split(" ");
  return method === requestMethod && regex.test(path);
}

/** Every `/v1` request of the document: route headings, and request lines of its examples. */
function documentedRequests() {
  const requests = new Set();
  for (const [, method, path] of doc.matchAll(/^(?:### `)?(GET|POST|PUT|PATCH|DELETE|HEAD) (\/v1\/[^\s`?]*)/gm)) {
    requests.add(`${method} ${path.replace(/\{(\w+)\}/g, "x").replace(/…$/, "")}`);
  }
  return [...requests].filter((request) => !NOT_ROUTES.has(request));
}

/** Every route of the server's router, as `METHOD /v1/path`, from api/src/routes/mod.rs. */
function serverRoutes() {
  const source = read("api/src/routes/mod.rs");
  const start = source.indexOf("pub fn router(");
  const body = source.slice(start, source.indexOf("\n}\n", start));
  const routes = [];
  for (let at = body.indexOf(".route("); at >= 0; at = body.indexOf(".route(", at + 1)) {
    let depth = 0;
    let end = at + ".route".length;
    do {
      if (body[end] === "(") depth++;
      if (body[end] === ")") depth--;
      end++;
    } while (depth > 0);
    const call = body.slice(at, end);
    const path = call.match(/"([^"]+)"/)[1];
    for (const [, method] of call.matchAll(/\b(get|post|put|patch|delete)\(/g)) {
      routes.push(`${method.toUpperCase()} ${path.startsWith("/v1") ? path : `/v1${path}`}`);
    }
  }
  return routes;
}

const normalise = (route) => route.replace(/\{\w+\}/g, "{}");

test("every request the document shows is a route of the client", () => {
  const requests = documentedRequests();
  assert.ok(requests.length > 20, "the document's requests were found");
  const missing = requests.filter((request) => !Object.values(ROUTES).some((route) => matches(route, request)));
  assert.deepEqual(missing, [], "requests of docs/protocol.md that no client route makes");
});

test("the client's routes are exactly the server's", () => {
  const server = serverRoutes().map(normalise).sort();
  assert.ok(server.length > 20, "the server's routes were found");
  assert.deepEqual([...new Set(Object.values(ROUTES).map(normalise))].sort(), server);
});

test("the client's ops are exactly those the document lists and the server reads", () => {
  const documented = firstColumn(section("Ops"));
  const server = [...read("api/src/ws/protocol.rs").matchAll(/^\s*"([a-z.]+)" => Op::/gm)].map((m) => m[1]);
  assert.ok(documented.length > 10 && server.length > 10, "the ops were found");
  assert.deepEqual([...OPS].sort(), [...documented].sort(), "ops of docs/protocol.md");
  assert.deepEqual([...OPS].sort(), [...server].sort(), "ops of api/src/ws/protocol.rs");
});

test("the client's events are exactly those the document lists", () => {
  const documented = firstColumn(section("Pushed events"));
  assert.ok(documented.length > 15, "the events were found");
  assert.deepEqual([...EVENT_TYPES].sort(), [...documented].sort());
});
