/**
 * The web app's entry: the login screen, and the app once a session is there. The session (the
 * token and who it is for) is kept in localStorage, so a reload goes straight back in until the
 * token expires; the server is the page's own origin.
 */
import "./app.css";
import { login, register } from "../../typescript/src/index.ts";
import { App } from "./app.js";
import { h } from "./dom.js";

const STORAGE_KEY = "switchboard.session";

function savedSession() {
  try {
    const session = JSON.parse(localStorage.getItem(STORAGE_KEY) ?? "null");
    return session && session.expires_at > Date.now() ? session : null;
  } catch {
    return null;
  }
}

function enter(session) {
  localStorage.setItem(STORAGE_KEY, JSON.stringify(session));
  const app = new App(location.origin, session, () => {
    localStorage.removeItem(STORAGE_KEY);
    app.close();
    showLogin();
  });
  // For the browser's console and the browser tests: the app's state, calls and connection.
  window.switchboard = app;
  document.body.replaceChildren(app.element);
}

function showLogin() {
  const handle = h("input", { id: "handle", name: "handle", autocomplete: "username", required: true, placeholder: "handle" });
  const password = h("input", {
    id: "password",
    name: "password",
    type: "password",
    autocomplete: "current-password",
    required: true,
    placeholder: "password (8 characters or more)",
  });
  const displayName = h("input", { id: "display-name", name: "display_name", placeholder: "display name (to register)" });
  const error = h("p", { id: "login-error", class: "error", role: "alert" });
  const submit = async (event, action) => {
    event.preventDefault();
    if (!handle.reportValidity() || !password.reportValidity()) return;
    error.textContent = "";
    const body = { handle: handle.value.trim(), password: password.value };
    try {
      if (action === "register" && displayName.value.trim()) body.display_name = displayName.value.trim();
      enter(action === "register" ? await register(location.origin, body) : await login(location.origin, body));
    } catch (failure) {
      error.textContent = failure.message;
    }
  };
  const form = h(
    "form",
    { id: "login-form", class: "card", onsubmit: (event) => submit(event, "login") },
    h("h1", {}, "switchboard"),
    h("p", { class: "muted" }, "Chat, share files and locations, and call, all through this server."),
    handle,
    password,
    displayName,
    h(
      "div",
      { class: "row" },
      h("button", { id: "login-button", type: "submit" }, "Log in"),
      h("button", { id: "register-button", type: "button", class: "secondary", onclick: (event) => submit(event, "register") }, "Register"),
    ),
    error,
  );
  document.body.replaceChildren(h("main", { class: "login" }, form));
}

const session = savedSession();
if (session) enter(session);
else showLogin();
