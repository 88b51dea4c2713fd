// The traffic view: calls newest first, keyset pages ("Load more" and scrolling), "+" beside a field to
// narrow the filter, and live mode (the hub's event stream of calls as ingest brings them).

import { ApiError, get, stream } from "./api.js";
import { current, update, windowParams } from "./state.js";
import { and, bytes, clear, clock, endFilter, endName, equals, h, ms, number, when } from "./util.js";

const table = document.querySelector("#calls tbody");
const more = document.getElementById("more");
const end = document.getElementById("end");
const count = document.getElementById("count");
const liveButton = document.getElementById("live");
const liveState = document.getElementById("live-state");

let cursor = null;
let loading = null;
let shown = new Set();
let live = null;
let generation = 0; // a newer load makes the answers of an older one stale
let onError = () => {};

export function whenFilterFails(handler) { onError = handler; }

function plus(clause) {
  return h("button", {
    class: "plus",
    type: "button",
    title: `add ${clause} to the filter`,
    "data-clause": clause,
    onclick: (event) => {
      event.stopPropagation();
      update({ q: and(current().q, clause), call: "" });
    },
  }, "+");
}

function cell(text, clause, attrs = {}) {
  return h("td", attrs, h("span", { class: "value" }, text), clause ? plus(clause) : null);
}

function pathOf(call) {
  if (call.dns) return `${call.dns.qname} ${call.dns.qtype}`.trim();
  return call.path || "";
}

function pathClause(call) {
  if (call.dns && call.dns.qname) return `dns_questions.exists(q, q == ${JSON.stringify(call.dns.qname)})`;
  return call.path ? equals("path", call.path) : null;
}

function failed(call) {
  if (call.proto === "http") return call.status >= 500;
  if (call.proto === "dns" || ["redis", "postgresql", "kafka", "tls"].includes(call.proto)) return call.status !== 0;
  return false;
}

const RCODES = ["NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP", "REFUSED"];

function row(call, fresh = false) {
  const status = call.dns ? RCODES[call.dns.rcode] || String(call.dns.rcode) : call.status ? String(call.status) : "";
  const tr = h("tr", {
    "data-id": call.id,
    class: [failed(call) ? "failed" : "", fresh ? "fresh" : ""].join(" ").trim() || null,
    onclick: () => update({ call: call.id }),
  },
  h("td", { title: when(call.ts), class: "mono" }, clock(call.ts)),
  cell(call.proto, equals("protocol", call.proto)),
  cell(endName(call.src), endFilter("src", call.src), { title: `${call.src.ip}:${call.src.port}` }),
  cell(endName(call.dst), endFilter("dst", call.dst), { title: `${call.dst.ip}:${call.dst.port}` }),
  cell(call.method || "", call.method ? equals("method", call.method) : null),
  cell(pathOf(call), pathClause(call), { class: "path", title: pathOf(call) }),
  cell(status, equals("status_code", call.status), { class: "status" }),
  h("td", { class: "num" }, ms(call.latency_ms)),
  h("td", { class: "num" }, call.size ? bytes(call.size) : ""));
  return tr;
}

async function page(state, first) {
  const mine = generation;
  const params = { kfl: state.q, ...windowParams(state), limit: 50, cursor: first ? "" : cursor };
  const answer = await get("/api/ui/calls", params);
  if (mine !== generation) return;
  const rows = [];
  for (const call of answer.calls) {
    if (shown.has(call.id)) continue;
    shown.add(call.id);
    rows.push(row(call));
  }
  table.append(...rows);
  cursor = answer.next;
  more.hidden = !cursor;
  end.hidden = Boolean(cursor) || shown.size === 0;
  if (first && shown.size === 0) table.append(h("tr", { class: "empty" }, h("td", { colspan: 9 }, "No calls match.")));
}

export async function load(state) {
  // data-state says when the rows shown are this filter's (tests and screen readers wait on it)
  table.parentElement.dataset.state = "loading";
  generation += 1;
  const mine = generation;
  performance.mark(`rows-start-${mine}`); // User Timing: bench/bench_ui.py reads "first-rows"
  clear(table);
  shown = new Set();
  cursor = null;
  more.hidden = true;
  end.hidden = true;
  count.textContent = "";
  const first = page(state, true);
  loading = first;
  // The count is asked beside the first page, so the rows never wait for it.
  get("/api/ui/count", { kfl: state.q, ...windowParams(state) })
    .then((answer) => {
      if (mine !== generation) return;
      count.textContent = `${number(answer.total)}${answer.capped ? "+" : ""} calls`;
    })
    .catch(() => {});
  try {
    await first;
    if (mine === generation) performance.measure("first-rows", `rows-start-${mine}`);
    onError(null);
  } catch (error) {
    if (mine !== generation) return;
    if (error instanceof ApiError) onError(error);
    else throw error;
  } finally {
    loading = null;
    if (mine === generation) table.parentElement.dataset.state = "ready";
  }
  if (mine !== generation) return;
  if (live) follow(state);
}

async function next() {
  if (loading || !cursor) return;
  loading = page(current(), false);
  try { await loading; } finally { loading = null; }
}

more.addEventListener("click", next);
window.addEventListener("scroll", () => {
  if (current().view !== "traffic" || more.hidden) return;
  if (window.innerHeight + window.scrollY >= document.body.offsetHeight - 200) next();
});

// --- live mode -------------------------------------------------------------------------------------

function follow(state) {
  if (live) live.abort();
  live = new AbortController();
  const mine = live;
  liveButton.classList.add("on");
  liveState.textContent = "● following new calls";
  stream("/api/ui/live", { kfl: state.q }, (name, data) => {
    if (name !== "calls") return;
    const empty = table.querySelector("tr.empty");
    if (empty) empty.remove();
    // newest first: the event's calls are newest first too
    const rows = data.calls.filter((c) => !shown.has(c.id)).map((c) => { shown.add(c.id); return row(c, true); });
    table.prepend(...rows);
    count.textContent = `${number(shown.size)}+ calls`;
  }, mine.signal).catch((error) => {
    if (mine.signal.aborted) return;
    liveState.textContent = `live stopped: ${error.message}`;
    liveButton.classList.remove("on");
    live = null;
  });
}

function unfollow() {
  if (live) live.abort();
  live = null;
  liveButton.classList.remove("on");
  liveState.textContent = "";
}

liveButton.addEventListener("click", () => {
  if (live) unfollow();
  else follow(current());
});
