// The browser the tests drive: Debian's Chromium (or CHROMIUM_BIN), headless, with a fake
// camera and microphone that need no permission prompt, and the helpers that act as a user.
import { existsSync, mkdirSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import puppeteer from "puppeteer-core";

const workspace = resolve(dirname(fileURLToPath(import.meta.url)), "../../..");

function chromium() {
  const candidates = [process.env.CHROMIUM_BIN, "/usr/bin/chromium", "/usr/bin/chromium-browser"].filter(Boolean);
  const found = candidates.find((path) => existsSync(path));
  if (!found) throw new Error(`no Chromium (looked at ${candidates.join(", ")}): run ops/deps.sh, or set CHROMIUM_BIN`);
  return found;
}

export function launch() {
  return puppeteer.launch({
    executablePath: chromium(),
    headless: true,
    args: [
      "--use-fake-device-for-media-stream",
      "--use-fake-ui-for-media-stream",
      "--autoplay-policy=no-user-gesture-required",
      // As root (in a container, say) Chromium refuses to start with its sandbox.
      ...(process.getuid?.() === 0 ? ["--no-sandbox"] : []),
    ],
  });
}

/** Where screenshots go: beside the build, under the target directory. */
export function artifacts() {
  const dir = join(process.env.CARGO_TARGET_DIR ? resolve(process.env.CARGO_TARGET_DIR) : join(workspace, "target"), "web-app");
  mkdirSync(dir, { recursive: true });
  return dir;
}

let users = 0;
/** A handle no other test run has taken. */
export function handle(name) {
  return `${name}_${process.pid.toString(36)}${Date.now().toString(36)}${(users++).toString(36)}`;
}

/** A new user, registered through the app's page in a browser context of their own. */
export async function signUp(browser, url, name) {
  const context = await browser.createBrowserContext();
  const page = await context.newPage();
  await page.setViewport({ width: 1100, height: 700 });
  const errors = [];
  page.on("pageerror", (error) => errors.push(error));
  await page.goto(url);
  const who = handle(name);
  await page.type("#handle", who);
  await page.type("#password", "correct horse battery");
  await page.type("#display-name", name[0].toUpperCase() + name.slice(1));
  await page.click("#register-button");
  await page.waitForSelector("#connection.open");
  return { page, context, handle: who, name: name[0].toUpperCase() + name.slice(1), errors };
}

/** Opens the direct conversation with `other` (by handle) from `user`'s sidebar. */
export async function chatWith(user, other) {
  await user.page.type("#direct-handle", other.handle);
  await user.page.click("#new-direct button");
  await user.page.waitForSelector(".chat #chat-title");
}

/** Opens a conversation from the sidebar, once it is listed there. */
export async function openConversation(user, title) {
  // Found and clicked in one step: the list is redrawn as events come.
  await until(user, `"${title}" listed`, (title) => {
    const item = [...document.querySelectorAll("#conversations .conversation")].find(
      (candidate) => candidate.querySelector(".title")?.textContent === title,
    );
    item?.click();
    return item !== undefined;
  }, title);
  await until(user, `"${title}" open`, (title) => document.querySelector("#chat-title")?.textContent.startsWith(title), title);
}

/** Clicks the button whose text starts with `label`, once there is one (found and clicked in one step). */
export async function clickButton(user, label) {
  await until(user, `a "${label}" button`, (label) => {
    const button = [...document.querySelectorAll("button")].find((candidate) => candidate.textContent.startsWith(label));
    button?.click();
    return button !== undefined;
  }, label);
}

export async function send(user, text) {
  await user.page.type("#message-input", text);
  await user.page.click("#send-button");
}

/** The bodies of the open chat's messages, oldest first. */
export function bodies(user) {
  return user.page.$$eval("#messages .message .body", (nodes) => nodes.map((node) => node.textContent));
}

/** Waits for `predicate(page state)` in the page; fails with `what` past the deadline. */
export async function until(user, what, predicate, ...args) {
  try {
    return await user.page.waitForFunction(predicate, { timeout: 60_000, polling: 100 }, ...args);
  } catch (error) {
    throw new Error(`${user.name}'s page: timed out waiting for ${what} (${error.message})`);
  }
}

export async function screenshot(user, name) {
  await user.page.screenshot({ path: join(artifacts(), `${name}.png`) });
}
