// The page's frame: tabs, the KFL box (history, caret errors), the time range picker, the login form, and
// routing the URL's state to the views.

import { ApiError, get, setToken, token, whenUnauthorized } from "./api.js";
import * as detail from "./detail.js";
import * as map from "./map.js";
import * as panels from "./panels.js";
import { current, notify, onChange, update, windowParams } from "./state.js";
import * as traffic from "./traffic.js";
import { caret, h, history, remember, when } from "./util.js";

const form = document.getElementById("filter");
const input = document.getElementById("kfl");
const errorBox = document.getElementById("kfl-error");
const range = document.getElementById("range");
const absolute = document.getElementById("absolute");
const since = document.getElementById("since");
const until = document.getElementById("until");
const windowNote = document.getElementById("window-note");
const scope = document.getElementById("scope");
const login = document.getElementById("login");
const logout = document.getElementById("logout");

// --- errors in the filter --------------------------------------------------------------------------

function showError(error) {
  if (!error) {
    errorBox.hidden = true;
    return;
  }
  errorBox.hidden = false;
  errorBox.textContent = error.code === "bad_request" ? caret(current().q, error.message) : error.message;
}
traffic.whenFilterFails(showError);

// --- the time range --------------------------------------------------------------------------------

const RELATIVE = ["-5m", "-15m", "-1h", "-6h", "-24h"];

// datetime-local values are read as UTC: the page shows every time in UTC, like the CLI.
function toInput(ts) { return ts ? ts.slice(0, 23) : ""; }
function fromInput(value) {
  if (!value) return "";
  return `${value.length === 16 ? `${value}:00` : value}Z`;
}

function pickerFrom(state) {
  if (!state.since && !state.until) range.value = "";
  else if (RELATIVE.includes(state.since) && !state.until) range.value = state.since;
  else range.value = "abs";
  absolute.hidden = range.value !== "abs";
  if (range.value === "abs") {
    since.value = toInput(state.since);
    until.value = toInput(state.until);
  }
}

async function fillAbsolute() {
  // absolute starts from the data's boundaries, the default window
  const fitted = await get("/api/ui/window", windowParams());
  if (!since.value) since.value = toInput(fitted.since);
  // rounded up to the millisecond the input holds, so the last call stays inside
  if (!until.value) until.value = new Date(Date.parse(`${fitted.until.slice(0, 23)}Z`) + 1).toISOString().slice(0, 23);
}

range.addEventListener("change", () => {
  absolute.hidden = range.value !== "abs";
  if (range.value === "abs") fillAbsolute().catch(() => {});
});

async function describeWindow(state) {
  try {
    const fitted = await get("/api/ui/window", windowParams(state));
    const parts = [`${when(fitted.since)} → ${when(fitted.until)} UTC`];
    windowNote.classList.toggle("error", Boolean(fitted.lost));
    windowNote.textContent = [...parts, ...fitted.notes].join(" · ");
    windowNote.hidden = false;
  } catch (error) {
    if (error.status === 401) return; // the login form asks for the token
    windowNote.classList.add("error");
    windowNote.textContent = error.message;
    windowNote.hidden = false;
  }
}

// --- the filter form -------------------------------------------------------------------------------

function fillHistory() {
  document.getElementById("history").replaceChildren(...history().map((f) => h("option", { value: f })));
}

form.addEventListener("submit", (event) => {
  event.preventDefault();
  const changes = { q: input.value.trim(), call: "" };
  if (range.value === "abs") {
    changes.since = fromInput(since.value);
    changes.until = fromInput(until.value);
  } else {
    changes.since = range.value;
    changes.until = "";
  }
  update(changes);
});

// --- views -----------------------------------------------------------------------------------------

const views = {
  traffic: (state) => traffic.load(state),
  map: (state) => map.load(state),
  errors: (state) => panels.loadErrors(state),
  snapshots: () => panels.loadSnapshots(),
};
let lastKey = "";

async function render(state) {
  input.value = state.q;
  pickerFrom(state);
  for (const link of document.querySelectorAll("#tabs a")) link.classList.toggle("on", link.dataset.view === state.view);
  for (const name of Object.keys(views)) document.getElementById(`view-${name}`).hidden = name !== state.view;
  scope.textContent = state.snapshot ? `snapshot ${state.snapshot}` : "";
  const key = JSON.stringify([state.view, state.q, state.since, state.until, state.group, state.snapshot]);
  const reload = key !== lastKey;
  lastKey = key;
  detail.show(state);
  if (!reload) return;
  if (state.q) remember(state.q);
  fillHistory();
  describeWindow(state);
  try {
    await views[state.view](state);
    if (state.view !== "traffic") showError(null);
  } catch (error) {
    if (error instanceof ApiError) showError(error);
    else throw error;
  }
}

for (const link of document.querySelectorAll("#tabs a")) {
  link.addEventListener("click", (event) => {
    event.preventDefault();
    update({ view: link.dataset.view, call: "" });
  });
}

// --- the token -------------------------------------------------------------------------------------

function askToken() {
  login.hidden = false;
  document.getElementById("token").focus();
}
whenUnauthorized(askToken);

document.getElementById("login-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  setToken(document.getElementById("token").value);
  const message = document.getElementById("login-error");
  try {
    await get("/api/boundaries");
    login.hidden = true;
    message.hidden = true;
    logout.hidden = false;
    lastKey = "";
    notify();
  } catch (error) {
    setToken("");
    message.hidden = false;
    message.textContent = error.status === 401 ? "That token is not this hub's." : error.message;
  }
});

logout.addEventListener("click", () => {
  setToken("");
  logout.hidden = true;
  askToken();
});

onChange(render);
logout.hidden = !token();
render(current());
