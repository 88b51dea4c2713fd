// Small helpers shared by the views: building DOM nodes, formatting, and KFL text.

// h("td", {class: "x", onclick: fn}, child, "text", ...): an element; null/false children are skipped.
export function h(tag, attrs = {}, ...children) {
  const svg = ["svg", "g", "path", "rect", "text", "title", "circle", "defs", "marker", "line"].includes(tag);
  const el = svg ? document.createElementNS("http://www.w3.org/2000/svg", tag) : document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else if (key === "dataset") Object.assign(el.dataset, value);
    else el.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

export function clear(el) { el.replaceChildren(); return el; }

// "2026-11-27T00:59:24.182729000Z" -> "00:59:24.182" (the table), the full text in a tooltip.
export function clock(ts) { return ts ? ts.slice(11, 23) : ""; }
export function when(ts) { return ts ? ts.replace("T", " ").replace(/(\.\d{3})\d*Z$/, "$1") : ""; }

export function ms(value) {
  if (value === undefined || value === null) return "";
  if (value >= 1000) return `${(value / 1000).toFixed(2)} s`;
  if (value >= 10) return `${value.toFixed(0)} ms`;
  return `${value.toFixed(2)} ms`;
}

export function bytes(value) {
  if (!value) return "0";
  const units = ["B", "KiB", "MiB", "GiB"];
  let n = value;
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
  return i ? `${n.toFixed(1)} ${units[i]}` : `${n} B`;
}

export function number(n) { return Number(n || 0).toLocaleString("en-US"); }

// --- KFL ---------------------------------------------------------------------------------------------

// A KFL (CEL) string literal: JSON's escaping is CEL's for these characters.
export function literal(value) {
  return typeof value === "number" ? String(value) : JSON.stringify(String(value));
}

export function equals(field, value) { return `${field} == ${literal(value)}`; }

// filter && clause, without doubling a clause already there; parenthesized when the filter has ||.
export function and(filter, clause) {
  const current = (filter || "").trim();
  if (!current) return clause;
  if (current.split("&&").map((s) => s.trim()).includes(clause)) return current;
  return `${current.includes("||") ? `(${current})` : current} && ${clause}`;
}

// The hub says "<reason> at position N" for a KFL error: the caret goes under character N.
export function caret(filter, message) {
  const found = / at position (\d+)/.exec(message);
  if (!found) return message;
  const position = Number(found[1]);
  return `${message.replace(found[0], "")} (column ${position + 1})\n  ${filter}\n  ${" ".repeat(position)}^`;
}

// The end of a call as people name it: namespace/pod (or service), else the IP.
export function endName(end) {
  const name = end.pod || end.svc;
  if (name) return `${end.ns ? `${end.ns}/` : ""}${name}`;
  return end.ip;
}

// The KFL selecting that end (what the "+" beside it adds).
export function endFilter(side, end) {
  if (end.pod) return equals(`${side}.pod.name`, end.pod);
  if (end.svc) return equals(`${side}.service.name`, end.svc);
  return equals(`${side}.ip`, end.ip);
}

// The KFL matching a summary's "namespace/name" end (workload, service or pod name), or a bare IP.
export function whoFilter(side, who) {
  const cut = who.indexOf("/");
  if (cut < 0) return equals(`${side}.ip`, who);
  const ns = who.slice(0, cut);
  const name = who.slice(cut + 1);
  return `${equals(`${side}.namespace`, ns)} && (${side}.workload.endsWith(${literal(`/${name}`)}) || `
    + `${equals(`${side}.service.name`, name)} || ${equals(`${side}.pod.name`, name)})`;
}

const HISTORY_KEY = "netrecall-history";
export function history() {
  try { return JSON.parse(localStorage.getItem(HISTORY_KEY) || "[]"); } catch (_) { return []; }
}
export function remember(filter) {
  if (!filter) return;
  const kept = [filter, ...history().filter((f) => f !== filter)].slice(0, 20);
  localStorage.setItem(HISTORY_KEY, JSON.stringify(kept));
}
