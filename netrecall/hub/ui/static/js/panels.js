// Errors and DNS failures (the hub's summarize_errors and dns_failures, linked into the traffic view), and
// snapshots: listed, created from the current window, exported as PCAP or as the portable file, deleted.

import { download, get, send } from "./api.js";
import { current, update, windowParams } from "./state.js";
import { bytes, clear, h, literal, number, when, whoFilter } from "./util.js";

const errorRows = document.querySelector("#error-groups tbody");
const dnsRows = document.querySelector("#dns-failures tbody");
const snapshotRows = document.querySelector("#snapshots tbody");
const snapshotMessage = document.getElementById("snapshot-message");

// The KFL that lists the calls of one error group.
function groupFilter(g) {
  const code = {
    http_5xx: `http && status_code == ${g.code}`,
    http_4xx: `http && status_code == ${g.code}`,
    dns_error: `dns && status_code == ${g.code}`,
    grpc_error: `grpc && grpc_status == ${g.code}`,
    parse_error: 'error != ""',
  }[g.kind] || `protocol == ${literal(g.proto)} && status_code == ${g.code}`;
  return `${code} && ${whoFilter("src", g.src)} && ${whoFilter("dst", g.dst)}`;
}

const RCODES = { NOERROR: 0, FORMERR: 1, SERVFAIL: 2, NXDOMAIN: 3, NOTIMP: 4, REFUSED: 5 };

// The KFL that lists the lookups of one DNS failure group (its name, its answer, who asked).
function dnsFilter(f) {
  const named = /^RCODE(\d+)$/.exec(f.rcode);
  const code = f.rcode in RCODES ? RCODES[f.rcode] : named ? Number(named[1]) : null;
  const answer = code === null ? "dns_request && !dns_response && !has_response" : `status_code == ${code}`;
  return `dns && dns_questions.exists(q, q == ${literal(f.qname)}) && ${answer} && ${whoFilter("src", f.client)}`;
}

function show(filter) { update({ view: "traffic", q: filter, call: "" }); }

export async function loadErrors(state) {
  const scope = { kfl: state.q, ...windowParams(state), limit: 50 };
  const [errors, dns] = await Promise.all([get("/api/errors", scope), get("/api/dns/failures", scope)]);
  clear(errorRows).append(...errors.groups.map((g) => h("tr", { class: "failed", "data-kind": g.kind },
    h("td", { class: "num" }, number(g.count)), h("td", {}, g.kind),
    h("td", {}, `${g.src} → ${g.dst}`), h("td", {}, `${g.code} ${g.status_text || ""}`),
    h("td", { class: "path" }, g.sample || g.message || ""),
    h("td", { class: "mono" }, when(g.first_seen)), h("td", { class: "mono" }, when(g.last_seen)),
    h("td", {},
      g.kind === "tcp_reset" ? null : h("button", { type: "button", class: "link", onclick: () => show(groupFilter(g)) }, "calls"),
      g.example_id ? h("button", { type: "button", class: "link", onclick: () => update({ call: g.example_id }) }, "example") : null))));
  if (!errors.groups.length) errorRows.append(h("tr", {}, h("td", { colspan: 8 }, "No errors in this window.")));
  clear(dnsRows).append(...dns.failures.map((f) => h("tr", { class: "failed" },
    h("td", { class: "num" }, number(f.count)), h("td", {}, f.qname), h("td", {}, f.qtype), h("td", {}, f.rcode),
    h("td", {}, f.client), h("td", {}, f.server), h("td", { class: "mono" }, when(f.first_seen)),
    h("td", {}, h("button", {
      type: "button",
      class: "link",
      onclick: () => show(dnsFilter(f)),
    }, "calls")))));
  if (!dns.failures.length) dnsRows.append(h("tr", {}, h("td", { colspan: 8 }, "No failed lookups in this window.")));
}

function say(text, bad = false) {
  snapshotMessage.hidden = !text;
  snapshotMessage.textContent = text || "";
  snapshotMessage.classList.toggle("error", bad);
}

async function act(button, work) {
  button.disabled = true;
  try { say(await work()); } catch (error) { say(error.message, true); } finally { button.disabled = false; }
}

export async function loadSnapshots() {
  const answer = await get("/api/snapshots");
  clear(snapshotRows).append(...answer.snapshots.map((s) => h("tr", { "data-name": s.name },
    h("td", {}, s.name), h("td", { class: "mono" }, when(s.since)), h("td", { class: "mono" }, when(s.until)),
    h("td", { class: "num" }, number(s.packets)), h("td", { class: "num" }, bytes(s.bytes)),
    h("td", { class: "mono" }, when(s.created_at)), h("td", {}, s.note || ""),
    h("td", {},
      h("button", { type: "button", class: "link", onclick: () => update({ view: "traffic", snapshot: s.name, since: "", until: "", call: "" }) }, "open"),
      h("button", { type: "button", class: "link", onclick: (e) => act(e.target, async () => {
        const got = await download("/api/export/pcap", { snapshot: s.name });
        return `downloaded ${got.name} (${bytes(got.bytes)})`;
      }) }, "PCAP"),
      h("button", { type: "button", class: "link", onclick: (e) => act(e.target, async () => {
        const got = await download(`/api/ui/snapshots/${encodeURIComponent(s.name)}/file`, {});
        return `downloaded ${got.name} (${bytes(got.bytes)}): load it elsewhere with netrecall snapshot import`;
      }) }, "file"),
      h("button", { type: "button", class: "link danger", onclick: (e) => act(e.target, async () => {
        if (!window.confirm(`Delete snapshot ${s.name} and its data?`)) return "";
        await send("DELETE", `/api/snapshots/${encodeURIComponent(s.name)}`);
        await loadSnapshots();
        return `deleted ${s.name}`;
      }) }, "delete")))));
  if (!answer.snapshots.length) snapshotRows.append(h("tr", {}, h("td", { colspan: 8 }, "No snapshots yet.")));
}

document.getElementById("snapshot-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const button = event.target.querySelector("button");
  act(button, async () => {
    const state = current();
    const scope = windowParams(state);
    // the window defaults to everything stored (the boundaries), as the traffic view shows it
    let { since, until } = scope;
    if (!since) since = (await get("/api/ui/window", {})).since;
    const made = await send("POST", "/api/snapshots", {
      name: document.getElementById("snapshot-name").value,
      since,
      until: until || undefined,
      partial: document.getElementById("snapshot-partial").checked,
      note: state.q ? `from the page, filter: ${state.q}` : "from the page",
    });
    await loadSnapshots();
    const notes = (made.notes || []).join("; ");
    return `created ${made.name}: ${number(made.packets)} packets, ${number(made.api_calls)} calls${notes ? ` — ${notes}` : ""}`;
  });
});
