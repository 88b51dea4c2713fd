// A call in full: headers and bodies (as the hub redacts them; JSON pretty-printed, binary as hex), timing,
// the flow and its packets with a PCAP of exactly that flow, the call's trace, and a KFL for calls like it.

import { download, get } from "./api.js";
import { current, update } from "./state.js";
import { and, bytes, clear, endName, equals, h, literal, ms, when } from "./util.js";

const panel = document.getElementById("detail");
const body = document.getElementById("detail-body");
const title = document.getElementById("detail-title");
document.getElementById("detail-close").addEventListener("click", () => update({ call: "" }));

function plus(clause) {
  return h("button", {
    class: "plus",
    type: "button",
    title: `add ${clause} to the filter`,
    "data-clause": clause,
    onclick: () => update({ q: and(current().q, clause), call: "" }),
  }, "+");
}

function field(name, value, clause) {
  return h("tr", {}, h("th", {}, name), h("td", {}, h("span", { class: "value" }, value), clause ? plus(clause) : null));
}

function headersTable(side, headers) {
  const names = Object.keys(headers || {}).sort();
  if (!names.length) return h("p", { class: "hint" }, "no headers");
  return h("table", { class: "kv", "data-headers": side },
    names.map((name) => field(name, headers[name], `${side}.headers[${literal(name)}] == ${literal(headers[name])}`)));
}

function hex(base64) {
  const raw = atob(base64);
  const lines = [];
  for (let offset = 0; offset < raw.length; offset += 16) {
    const chunk = raw.slice(offset, offset + 16);
    const hexes = [...chunk].map((c) => c.charCodeAt(0).toString(16).padStart(2, "0")).join(" ");
    const text = [...chunk].map((c) => (c.charCodeAt(0) >= 32 && c.charCodeAt(0) < 127 ? c : ".")).join("");
    lines.push(`${offset.toString(16).padStart(6, "0")}  ${hexes.padEnd(47)}  ${text}`);
  }
  return lines.join("\n");
}

function bodyBlock(part) {
  const payload = part && part.body;
  if (!payload || !payload.bytes) return h("p", { class: "hint" }, part && part.body_size ? `${bytes(part.body_size)} (not stored)` : "no body");
  let text = payload.data;
  let kind = "text";
  if (payload.encoding === "base64") {
    text = hex(payload.data);
    kind = "hex";
  } else {
    try {
      text = JSON.stringify(JSON.parse(payload.data), null, 2);
      kind = "json";
    } catch (_) { /* not JSON: as is */ }
  }
  const cut = payload.cut || part.body_truncated ? ` (first ${bytes(payload.bytes)} of ${bytes(part.body_size)})` : "";
  return h("div", {}, h("p", { class: "hint" }, `${kind}, ${bytes(payload.bytes)}${cut}`), h("pre", { class: `body ${kind}` }, text));
}

// "Calls like this one": same protocol, destination and operation.
function likeThis(call) {
  const parts = [call.proto === "http" || call.proto === "dns" || call.proto === "grpc" ? call.proto : equals("protocol", call.proto)];
  if (call.dst.svc) parts.push(equals("dst.service.name", call.dst.svc));
  else if (call.dst.pod) parts.push(equals("dst.pod.name", call.dst.pod));
  else parts.push(equals("dst.ip", call.dst.ip));
  if (call.dns) parts.push(`dns_questions.exists(q, q == ${literal(call.dns.qname)})`);
  else {
    if (call.method) parts.push(equals("method", call.method));
    if (call.path) parts.push(equals("path", call.path));
  }
  return parts.join(" && ");
}

function section(name, ...children) { return h("section", { class: "part" }, h("h3", {}, name), ...children); }

function copyButton(input) {
  return h("button", {
    type: "button",
    onclick: async (event) => {
      input.select();
      try { await navigator.clipboard.writeText(input.value); } catch (_) { document.execCommand("copy"); }
      event.target.textContent = "Copied";
    },
  }, "Copy");
}

function traceList(trace) {
  if (!trace.events.length) return h("p", { class: "hint" }, "nothing around it");
  return h("table", { class: "grid small" },
    h("thead", {}, h("tr", {}, ["Time", "Role", "Proto", "Source → destination", "What", "Status", "Latency"].map((n) => h("th", {}, n)))),
    h("tbody", {}, trace.events.map((e) => h("tr", {
      class: [e.failed ? "failed" : "", e.role === "call" ? "self" : ""].join(" ").trim() || null,
      onclick: () => e.id && update({ call: e.id }),
    },
    h("td", { class: "mono" }, when(e.ts).slice(11)),
    h("td", {}, e.role.replace("_", " ") + (e.during ? " (during)" : "")),
    h("td", {}, e.proto),
    h("td", {}, `${e.src} → ${e.dst}`),
    h("td", { class: "path" }, e.dns ? `${e.dns.qname} ${e.dns.qtype}` : `${e.method || ""} ${e.path || ""}`),
    h("td", {}, e.dns ? e.dns.rcode : e.status ?? ""),
    h("td", { class: "num" }, ms(e.latency_ms))))));
}

function packetsTable(flow) {
  return h("table", { class: "grid small", id: "flow-packets" },
    h("thead", {}, h("tr", {}, ["Time", "From", "To", "Flags", "Payload", "Bytes"].map((n) => h("th", {}, n)))),
    h("tbody", {}, flow.packets.map((p) => h("tr", { class: p.in_call ? "self" : null },
      h("td", { class: "mono" }, when(p.ts).slice(11)), h("td", {}, p.src), h("td", {}, p.dst),
      h("td", {}, p.flags || p.l4), h("td", { class: "num" }, p.payload), h("td", { class: "num" }, p.bytes)))));
}

let shownId = "";

export async function show(state) {
  if (!state.call) {
    panel.hidden = true;
    shownId = "";
    return;
  }
  if (state.call === shownId && !panel.hidden) return;
  shownId = state.call;
  panel.hidden = false;
  title.textContent = "Call";
  clear(body).append(h("p", { class: "hint" }, "loading…"));
  const scope = { snapshot: state.snapshot };
  let call;
  try {
    call = await get(`/api/calls/${encodeURIComponent(state.call)}`, { ...scope, payload: true, max_payload_size: 65536 });
  } catch (error) {
    clear(body).append(h("p", { class: "error" }, error.message));
    return;
  }
  if (shownId !== state.call) return;
  title.textContent = `${call.proto.toUpperCase()} ${call.method || ""} ${call.dns ? call.dns.qname : call.path || ""}`;
  const like = h("input", { class: "kfl-copy", readonly: true, value: likeThis(call), id: "like-this" });
  const packets = h("div", {}, h("p", { class: "hint" }, "loading packets…"));
  const trace = h("div", {}, h("p", { class: "hint" }, "loading trace…"));
  const status = call.dns ? `${call.dns.rcode}` : `${call.status} ${call.status_text || ""}`;
  const pcap = h("button", {
    id: "flow-pcap",
    type: "button",
    onclick: async (event) => {
      const button = event.target;
      button.disabled = true;
      try {
        const got = await download("/api/export/pcap", { kfl: `id == ${literal(call.id)}`, snapshot: state.snapshot || undefined });
        button.textContent = `Downloaded ${got.name}`;
      } catch (error) {
        button.textContent = `Export failed: ${error.message}`;
      } finally {
        button.disabled = false;
      }
    },
  }, "Download PCAP of this flow");
  clear(body).append(
    section("Summary", h("table", { class: "kv" },
      field("Time", when(call.ts)),
      field("Protocol", call.proto, equals("protocol", call.proto)),
      field("Source", `${endName(call.src)} (${call.src.ip}:${call.src.port})`, equals("src.ip", call.src.ip)),
      field("Destination", `${endName(call.dst)} (${call.dst.ip}:${call.dst.port})`, equals("dst.ip", call.dst.ip)),
      field("Status", status, equals("status_code", call.status)),
      field("Latency", ms(call.latency_ms)),
      field("Node", call.node || "", call.node ? equals("node_name", call.node) : null),
      call.error ? field("Parse error", call.error) : null,
      call.partial ? field("Partial", "built across a capture gap or seen mid-stream") : null)),
    section("Request",
      h("p", { class: "mono" }, call.dns ? `${call.dns.qname} ${call.dns.qtype}` : `${call.method || ""} ${call.url || call.path || ""} ${call.http_version || ""}`),
      headersTable("request", call.request.headers), bodyBlock(call.request)),
    section("Response",
      h("p", { class: "mono" }, call.has_response ? status : "no response seen"),
      call.dns && call.dns.answers.length ? h("p", {}, `answers: ${call.dns.answers.join(", ")}`) : null,
      headersTable("response", call.response.headers), bodyBlock(call.response)),
    ...["grpc", "redis", "postgresql", "kafka", "tls"].filter((p) => call[p]).map((p) => section(p,
      h("table", { class: "kv" }, Object.entries(call[p]).map(([k, v]) => field(k, Array.isArray(v) ? v.join(", ") : String(v)))))),
    section("Timing", h("table", { class: "kv" },
      field("Request starts", when(call.ts)),
      field("Time to response", ms(call.latency_ms)),
      field("Packets", `${when(call.packets.first)} → ${when(call.packets.last)}`))),
    section("Flow", h("p", {}, `flow ${call.flow_id} `, pcap), packets),
    section("Trace (both ends, ±5 s)", trace),
    section("Calls like this one", h("div", { class: "inline" }, like, copyButton(like),
      h("button", { type: "button", onclick: () => update({ q: like.value, call: "" }) }, "Show them"))),
  );
  get(`/api/ui/calls/${encodeURIComponent(call.id)}/flow`, scope).then((flow) => {
    packets.replaceChildren(h("p", { class: "hint" }, `${flow.total} packets${flow.truncated ? ` (first ${flow.packets.length})` : ""}; the call's are highlighted`), packetsTable(flow));
  }).catch((error) => packets.replaceChildren(h("p", { class: "error" }, error.message)));
  get(`/api/calls/${encodeURIComponent(call.id)}/trace`, { ...scope, window: "5s", limit: 50 }).then((answer) => {
    trace.replaceChildren(traceList(answer));
  }).catch((error) => trace.replaceChildren(h("p", { class: "error" }, error.message)));
}

