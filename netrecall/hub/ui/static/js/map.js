// The service map: workloads (grouped by namespace, workload or node) as boxes, observed calls as edges
// with RED (rate, errors, p50/p99). Layered left to right from the callers; failing edges drawn red and
// thick so the failing path stands out, healthy ones thin and grey. Clicking an edge shows its calls.

import { get } from "./api.js";
import { update, windowParams } from "./state.js";
import { clear, h, ms, number } from "./util.js";

const holder = document.getElementById("map");
const edgesTable = document.querySelector("#edges tbody");
const group = document.getElementById("group");
group.addEventListener("change", () => update({ group: group.value }));

const BOX_W = 190;
const BOX_H = 34;
const COL_W = 380;
const ROW_H = 78;

function hue(text) {
  let n = 0;
  for (const c of text || "") n = (n * 31 + c.charCodeAt(0)) % 360;
  return n;
}

// Depth of each node: the longest caller chain leading to it (cycles cut), so callers sit left.
function layers(nodes, edges) {
  const depth = new Map(nodes.map((n) => [n.id, 0]));
  for (let pass = 0; pass < nodes.length; pass += 1) {
    let moved = false;
    for (const e of edges) {
      if (e.src === e.dst) continue;
      const want = depth.get(e.src) + 1;
      if (want > depth.get(e.dst) && want < nodes.length) {
        depth.set(e.dst, want);
        moved = true;
      }
    }
    if (!moved) break;
  }
  return depth;
}

function label(e) {
  const errors = e.errors ? ` · ${(e.error_rate * 100).toFixed(0)}% errors` : "";
  return [`${e.rate.toFixed(2)}/s${errors}`, `p50 ${ms(e.p50_ms)} · p99 ${ms(e.p99_ms)}`];
}

function showCalls(edge) { update({ view: "traffic", q: edge.kfl, call: "" }); }

function draw(answer) {
  const { nodes, edges } = answer;
  if (!nodes.length) {
    holder.replaceChildren(h("p", { class: "hint" }, "No calls in this window."));
    return;
  }
  const depth = layers(nodes, edges);
  const columns = new Map();
  for (const node of nodes) {
    const d = depth.get(node.id);
    if (!columns.has(d)) columns.set(d, []);
    columns.get(d).push(node);
  }
  const place = new Map();
  let rows = 0;
  // left to right; within a column, nodes sit near the average height of their callers (fewer crossings)
  for (const d of [...columns.keys()].sort((a, b) => a - b)) {
    const column = columns.get(d);
    const weight = (node) => {
      const ys = edges.filter((e) => e.dst === node.id && place.has(e.src)).map((e) => place.get(e.src).y);
      return ys.length ? ys.reduce((a, b) => a + b, 0) / ys.length : Infinity;
    };
    column.sort((a, b) => weight(a) - weight(b) || (a.namespace + a.id).localeCompare(b.namespace + b.id));
    column.forEach((node, i) => place.set(node.id, { x: 20 + d * COL_W, y: 44 + i * ROW_H }));
    rows = Math.max(rows, column.length);
  }
  const width = 40 + Math.max(...columns.keys()) * COL_W + BOX_W;
  const height = 70 + rows * ROW_H;
  const maxRate = Math.max(...edges.map((e) => e.rate), 1e-9);
  const svg = h("svg", { viewBox: `0 0 ${width} ${height}`, width, height, class: "map-svg" },
    h("defs", {},
      h("marker", { id: "arrow", viewBox: "0 0 10 10", refX: 9, refY: 5, markerWidth: 9, markerHeight: 9, markerUnits: "userSpaceOnUse", orient: "auto-start-reverse" },
        h("path", { d: "M 0 0 L 10 5 L 0 10 z", fill: "#7a8594" })),
      h("marker", { id: "arrow-bad", viewBox: "0 0 10 10", refX: 9, refY: 5, markerWidth: 9, markerHeight: 9, markerUnits: "userSpaceOnUse", orient: "auto-start-reverse" },
        h("path", { d: "M 0 0 L 10 5 L 0 10 z", fill: "#d7263d" }))));
  // healthy edges first, failing ones on top
  const ordered = [...edges].sort((a, b) => (a.errors > 0) - (b.errors > 0));
  for (const e of ordered) {
    const a = place.get(e.src);
    const b = place.get(e.dst);
    const bad = e.errors > 0;
    const widthPx = (bad ? 2.5 : 1) + 3 * Math.sqrt(e.rate / maxRate);
    let d;
    let tx;
    let ty;
    if (e.src === e.dst) {
      d = `M ${a.x + BOX_W - 30} ${a.y} C ${a.x + BOX_W} ${a.y - 40}, ${a.x + BOX_W + 40} ${a.y}, ${a.x + BOX_W} ${a.y + BOX_H / 2}`;
      tx = a.x + BOX_W + 60;
      ty = a.y - 18;
    } else {
      const x1 = a.x + BOX_W;
      const y1 = a.y + BOX_H / 2;
      const x2 = b.x;
      const y2 = b.y + BOX_H / 2;
      const bend = Math.max(40, Math.abs(x2 - x1) / 2);
      d = x2 > x1
        ? `M ${x1} ${y1} C ${x1 + bend} ${y1}, ${x2 - bend} ${y2}, ${x2} ${y2}`
        : `M ${a.x} ${y1} C ${a.x - 80} ${y1 + 60}, ${b.x + BOX_W + 80} ${y2 + 60}, ${b.x + BOX_W} ${y2}`;
      tx = (x1 + x2) / 2;
      ty = (y1 + y2) / 2 - 16;
    }
    const edge = h("g", {
      class: `edge${bad ? " bad" : ""}`,
      "data-src": e.src,
      "data-dst": e.dst,
      "data-errors": e.errors,
      onclick: () => showCalls(e),
    },
    h("title", {}, `${e.src} → ${e.dst}\n${number(e.calls)} calls, ${number(e.errors)} failed\n${label(e).join("\n")}\n${e.kfl}`),
    h("path", { d, fill: "none", stroke: bad ? "#d7263d" : "#9aa5b1", "stroke-width": widthPx.toFixed(1), "marker-end": `url(#${bad ? "arrow-bad" : "arrow"})`, class: "line" }),
    h("path", { d, fill: "none", stroke: "transparent", "stroke-width": 14, class: "hit" }),
    label(e).map((line, i) => h("text", { x: tx, y: ty + i * 13, "text-anchor": "middle", class: bad ? "edge-label bad" : "edge-label" }, line)));
    svg.append(edge);
  }
  for (const node of nodes) {
    const p = place.get(node.id);
    const failing = node.errors_in > 0;
    svg.append(h("g", { class: "node", "data-id": node.id },
      h("title", {}, `${node.id}\nnamespace ${node.namespace || "(none)"}\n${number(node.calls_in)} calls in, ${number(node.calls_out)} out, ${number(node.errors_in)} failed in`),
      h("rect", { x: p.x, y: p.y, width: BOX_W, height: BOX_H, rx: 6, fill: `hsl(${hue(node.namespace)} 55% 94%)`, stroke: failing ? "#d7263d" : `hsl(${hue(node.namespace)} 40% 55%)`, "stroke-width": failing ? 2 : 1 }),
      h("text", { x: p.x + 8, y: p.y + 21, class: "node-label" }, node.id.length > 26 ? `${node.id.slice(0, 25)}…` : node.id)));
  }
  holder.replaceChildren(svg);
  // labels at the middle of their curve, now that the browser can measure it
  for (const edge of svg.querySelectorAll("g.edge")) {
    const line = edge.querySelector("path.line");
    const middle = line.getPointAtLength(line.getTotalLength() / 2);
    edge.querySelectorAll("text").forEach((text, i) => {
      text.setAttribute("x", middle.x.toFixed(1));
      text.setAttribute("y", (middle.y - 18 + i * 12).toFixed(1));
    });
  }
}

function list(edges) {
  clear(edgesTable).append(...edges.map((e) => h("tr", {
    class: e.errors ? "failed" : null,
    "data-src": e.src,
    "data-dst": e.dst,
    onclick: () => showCalls(e),
  },
  h("td", {}, e.src), h("td", {}, e.dst), h("td", { class: "num" }, number(e.calls)),
  h("td", { class: "num" }, `${e.rate.toFixed(2)}/s`),
  h("td", { class: "num" }, e.errors ? `${number(e.errors)} (${(e.error_rate * 100).toFixed(1)}%)` : "0"),
  h("td", { class: "num" }, ms(e.p50_ms)), h("td", { class: "num" }, ms(e.p99_ms)),
  h("td", {}, e.protocols.join(", ")))));
}

export async function load(state) {
  group.value = state.group;
  holder.replaceChildren(h("p", { class: "hint" }, "loading…"));
  performance.mark("map-start");
  const answer = await get("/api/ui/map", { kfl: state.q, group: state.group, ...windowParams(state) });
  draw(answer);
  list(answer.edges);
  performance.measure("map-drawn", "map-start"); // read by bench/bench_ui.py
}
