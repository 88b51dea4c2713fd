"""The queries only the page needs: keyset pages of calls, the service map (RED per edge), the packets of a
call's flow, and the time picker's window fitted to the data.

Everything else the page shows comes from the hub's REST API as is (call detail with redaction, trace,
errors, DNS failures, snapshots, PCAP export), so the page and the CLI/MCP answers never disagree.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from sqlglot import exp

from netrecall.errors import NetrecallError
from netrecall.query.bounds import (
    covering_bounds,
    data_boundaries,
    fit_window,
    retention_horizon,
    source_table,
)
from netrecall.query.calls import COMPACT_COLUMNS, compact_call
from netrecall.query.kfl import KflFilter, compile_filter
from netrecall.query.latency import bucket_percentile_ms
from netrecall.query.rca import who
from netrecall.schema.tables import (
    CALL_EDGES,
    CALL_FAILED,
    EDGE_BUCKET_COLUMNS,
    EDGE_BUCKETS_MS,
    EDGE_FILTER_COLUMNS,
    latency_bucket_counts,
)
from netrecall.store import Store
from netrecall.timeutil import format_time_ns

MAX_PAGE = 500
NS_PER_MINUTE = 60_000_000_000
COUNT_CAP = 10_000  # the page says "10,000+" past this: an exact count is a full filtered scan
_CURSOR = re.compile(r"^(\d{1,20})\.(.{1,200})$")
PAGE_COLUMNS = f"{COMPACT_COLUMNS}, src_workload, dst_workload, request_body_size, response_body_size"


@dataclass(frozen=True)
class Cursor:
    """Where the previous page ended: the last call's (ts, id) in the page order (ts DESC, id ASC)."""

    ts_ns: int
    call_id: str

    @classmethod
    def parse(cls, text: str | None) -> Cursor | None:
        if not text:
            return None
        found = _CURSOR.match(text)
        if not found:
            raise NetrecallError("cursor must be the `next` value of the previous page")
        return cls(int(found.group(1)), found.group(2))

    def text(self) -> str:
        return f"{self.ts_ns}.{self.call_id}"


def _compiled(kfl: str) -> KflFilter:
    compiled = compile_filter(kfl or "", "api_calls")
    if compiled.table != "api_calls":
        raise NetrecallError("this filter selects L4 flows (conn/flow fields), not API calls")
    return compiled


def _matches(kfl: str, snapshot_condition: str) -> tuple[str, dict[str, Any]]:
    compiled = _compiled(kfl)
    return f"{snapshot_condition} AND ({compiled.where})", dict(compiled.params)


def _window(store: Store, since_ns: int | None, until_ns: int | None, snapshot: str | None):
    if since_ns is not None and until_ns is not None:
        return since_ns, until_ns
    stored = covering_bounds(store, "api_calls", snapshot)
    if stored is None:
        return None
    return (stored[0] if since_ns is None else since_ns), (stored[1] if until_ns is None else until_ns)


def page_calls(
    store: Store,
    kfl: str = "",
    since_ns: int | None = None,
    until_ns: int | None = None,
    limit: int = 50,
    cursor: str | None = None,
    snapshot: str | None = None,
) -> dict[str, Any]:
    """One page of calls, newest first, after `cursor` (keyset paging on the sort order, never OFFSET).

    Two cheap statements whatever the page's depth: the minute holding the (limit+1)-th match below the
    cursor, read in sorting-key order (the engine stops early), then the page read from that minute on
    (the time key prunes the rest). The extra row says whether another page follows."""
    if not 1 <= limit <= MAX_PAGE:
        raise NetrecallError(f"limit must be between 1 and {MAX_PAGE}")
    after = Cursor.parse(cursor)
    table, condition, params = source_table(store, "api_calls", snapshot)
    matches, kfl_params = _matches(kfl, condition)
    window = _window(store, since_ns, until_ns, snapshot)
    if window is None:
        return {"calls": [], "next": None}
    since, until = window
    params = {**params, **kfl_params, "p_since": int(since), "p_until": int(until)}
    keyset = ""
    if after is not None:
        # (ts, id) after the cursor in (ts DESC, id ASC) order; the time bound alone lets the key prune
        until = min(until, after.ts_ns)
        params.update(p_until=int(until), c_ts=after.ts_ns, c_id=after.call_id)
        keyset = (
            " AND (ts < fromUnixTimestamp64Nano({c_ts:Int64}) "
            "OR (ts = fromUnixTimestamp64Nano({c_ts:Int64}) AND id > {c_id:String}))"
        )
    where = (
        "ts >= fromUnixTimestamp64Nano({p_since:Int64}) AND ts <= fromUnixTimestamp64Nano({p_until:Int64}) "
        f"AND {matches}{keyset}"
    )
    edge = store.rows(
        f"SELECT toUnixTimestamp(toStartOfMinute(ts)) FROM {table} WHERE {where} "
        "ORDER BY toStartOfMinute(ts) DESC, protocol DESC, id DESC LIMIT 1 OFFSET {off:UInt64}",
        {**params, "off": limit},
    )
    start = max(since, int(edge[0][0]) * 1_000_000_000) if edge else since
    rows = store.dicts(
        f"SELECT {PAGE_COLUMNS} FROM {table} WHERE ts >= fromUnixTimestamp64Nano({{p_start:Int64}}) "
        f"AND {where} ORDER BY ts DESC, id LIMIT {int(limit) + 1}",
        {**params, "p_start": int(start)},
    )
    calls = []
    seen: set[str] = set()
    for row in rows[:limit]:
        if row["id"] in seen:  # a call dissected twice shows once until its copies merge
            continue
        seen.add(row["id"])
        calls.append(page_row(row))
    following = None
    if len(rows) > limit:
        last = rows[limit - 1]
        following = Cursor(int(last["ts_ns"]), last["id"]).text()
    return {"calls": calls, "next": following}


def page_row(row: dict[str, Any]) -> dict[str, Any]:
    """A row selected with PAGE_COLUMNS as the table's record: the compact call plus workloads and size."""
    call = compact_call(row)
    call["src"]["workload"] = row["src_workload"]
    call["dst"]["workload"] = row["dst_workload"]
    call["size"] = int(row["request_body_size"]) + int(row["response_body_size"])
    call["ts_ns"] = str(int(row["ts_ns"]))  # a string: JSON numbers lose nanoseconds
    return call


def count_calls(
    store: Store,
    kfl: str = "",
    since_ns: int | None = None,
    until_ns: int | None = None,
    snapshot: str | None = None,
) -> dict[str, Any]:
    """How many calls match, exactly up to COUNT_CAP (then `capped`): asked beside the first page, so the
    rows never wait for the count."""
    table, condition, params = source_table(store, "api_calls", snapshot)
    matches, kfl_params = _matches(kfl, condition)
    window = _window(store, since_ns, until_ns, snapshot)
    if window is None:
        return {"total": 0, "capped": False}
    params = {**params, **kfl_params, "p_since": int(window[0]), "p_until": int(window[1])}
    where = (
        "ts >= fromUnixTimestamp64Nano({p_since:Int64}) AND ts <= fromUnixTimestamp64Nano({p_until:Int64}) "
        f"AND {matches}"
    )
    total = int(
        store.scalar(
            f"SELECT count() FROM (SELECT 1 FROM {table} WHERE {where} LIMIT {COUNT_CAP + 1})", params
        )
    )
    return {"total": min(total, COUNT_CAP), "capped": total > COUNT_CAP}


# --- the service map ------------------------------------------------------------------------------------

GROUPS = ("namespace", "workload", "node")


def _ip(side: str) -> str:
    return f"replaceRegexpOne(toString({side}_ip), '^::ffff:', '')"


def _node_key(group: str, side: str) -> str:
    """SQL naming one end of a call for the map's grouping (an unknown workload falls back to its IP)."""
    if group == "namespace":
        return f"if({side}_namespace != '', {side}_namespace, {_ip(side)})"
    if group == "node":  # a Service's ClusterIP has no node: named as its workload would be
        return f"if({side}_node != '', {side}_node, {who(side)})"
    return who(side)


def _keys(group: str, side: str) -> tuple[dict[str, str], dict[str, str]]:
    """How one end is grouped before naming: (group keys, values picked per group).

    The keys are the raw LowCardinality identity columns the display name needs (cheap to hash), plus one
    number standing for the pod and IP only where the name falls back to them (who(): workload, else
    service, else pod, else IP) — an end named by its workload must not split into a group per pod (a
    million groups, each with a latency state, on 10M calls), and conditional *strings* would lose
    LowCardinality's fast hashing. The pod and IP are then picked once per group."""
    s = side
    if group == "namespace":
        return (
            {"namespace": f"{s}_namespace", "fallback": f"if({s}_namespace = '', cityHash64({s}_ip), 0)"},
            {"ip": f"any({s}_ip)"},
        )
    keys = {"namespace": f"{s}_namespace", "workload": f"{s}_workload", "service": f"{s}_service"}
    unnamed = f"{s}_workload = '' AND {s}_service = ''"
    if group == "node":
        keys["node"] = f"{s}_node"
        unnamed = f"{s}_node = '' AND {unnamed}"
    keys["fallback"] = f"if({unnamed}, cityHash64({s}_pod, {s}_ip), 0)"
    return keys, {"pod": f"any({s}_pod)", "ip": f"any({s}_ip)"}


def _columns(group: str) -> list[str]:
    return [c for s in ("src", "dst") for part in _keys(group, s) for c in (f"{s}_{n}" for n in part)]


def _anys(group: str) -> str:
    """One value per edge end of each identity column the grouping kept ('' for the others): the largest,
    so the same edge reads the same whichever rows (per-minute edges or calls) it was summed from."""
    kept = set(_columns(group))
    out = []
    for s in ("src", "dst"):
        for column, alias in (
            ("namespace", "ns"),
            ("workload", "wl"),
            ("service", "svc"),
            ("pod", "pod_"),
            ("node", "nd"),
        ):
            name = f"{s}_{column}"
            out.append(f"max({name}) AS {s}_{alias}" if name in kept else f"'' AS {s}_{alias}")
    return ", ".join(out)


def _edge_rows(group: str, source: str, where: str) -> str:
    """One part of the map's input (UNION ALL): per group of the grouping's own keys (see _keys), the
    identity columns its name needs, calls, errors, the slowest answer and the latency buckets, summed from
    the calls themselves or from the per-minute call_edges (whose keys are finer than any grouping's, and
    whose pod and IP are exact wherever a name falls back to them)."""
    columns = [c for c in _columns(group) if not c.endswith("_fallback")]
    parts = [(s, *_keys(group, s)) for s in ("src", "dst")]
    inner = ", ".join(
        f"{expr} AS {s}_{name}_k" for s, keys, picks in parts for name, expr in {**keys, **picks}.items()
    )
    if source == CALL_EDGES.name:
        measures = ", ".join(
            ["sum(calls) AS calls", "sum(errors) AS errors", "max(max_us) AS top_us"]
            + [f"sum({c}) AS {c}_" for c in EDGE_BUCKET_COLUMNS]
        )
    else:
        measures = ", ".join(
            [
                "count() AS calls",
                f"countIf({CALL_FAILED}) AS errors",
                "maxIf(elapsed_time, has_response) AS top_us",
            ]
            + [f"{count}_" for count in latency_bucket_counts(EDGE_BUCKETS_MS, EDGE_BUCKET_COLUMNS)]
        )
    buckets = ", ".join(f"{c}_ AS {c}" for c in EDGE_BUCKET_COLUMNS)
    return f"""
        SELECT {", ".join(f"{c}_k AS {c}" for c in columns)}, calls, errors, top_us AS max_us, {buckets},
               protocols
        FROM (
            SELECT {inner}, {measures}, groupUniqArray(4)(protocol) AS protocols
            FROM {source}
            WHERE {where}
            GROUP BY ALL
        )"""


def edges_can_filter(compiled: KflFilter) -> bool:
    """Whether a compiled KFL filter reads only columns call_edges keeps as they are in api_calls (either
    end's namespace, workload, service, node, and the protocol): it then runs on the per-minute edges."""
    if compiled.expression is None:
        return compiled.where == "1"
    return all(column.name in EDGE_FILTER_COLUMNS for column in compiled.expression.find_all(exp.Column))


def service_map(
    store: Store,
    kfl: str = "",
    since_ns: int | None = None,
    until_ns: int | None = None,
    group: str = "namespace",
    snapshot: str | None = None,
    limit: int = 300,
) -> dict[str, Any]:
    """Workloads (grouped by namespace, workload or node) as nodes, observed calls as edges with RED:
    request rate, error rate (the protocols' own failure rule, as summarize_errors counts), p50/p99 latency.

    The whole minutes of the window come from call_edges (per-minute RED per identity edge, kept by a
    view over api_calls) when the filter reads only columns it keeps (edges_can_filter); the ragged
    minutes at the window's ends, a snapshot and any other filter are aggregated from the calls
    themselves, by the raw (LowCardinality) identity columns the grouping needs. Then one level by the
    display name, summing calls, errors and latency buckets: both paths count alike. p50/p99 come from the
    buckets (EDGE_BUCKETS_MS), interpolated as `netrecall latency` does."""
    if group not in GROUPS:
        raise NetrecallError(f"group must be one of {', '.join(GROUPS)}")
    table, condition, params = source_table(store, "api_calls", snapshot)
    compiled = _compiled(kfl)
    window = _window(store, since_ns, until_ns, snapshot)
    if window is None:
        return {"nodes": [], "edges": [], "group": group, "seconds": 0}
    since, until = window
    params = {**params, **compiled.params, "lim": int(limit)}
    raw = [(since, until + 1)]  # [from, to) in ns: the window's end is inclusive
    sources = []
    first = -(-since // NS_PER_MINUTE) * NS_PER_MINUTE  # the first whole minute
    last = (until + 1) // NS_PER_MINUTE * NS_PER_MINUTE
    fast = snapshot is None and last > first and edges_can_filter(compiled)
    if fast:
        params.update(m0=first // 10**9, m1=last // 10**9)
        minutes = "minute >= toDateTime({m0:Int64}) AND minute < toDateTime({m1:Int64})"
        sources.append(_edge_rows(group, CALL_EDGES.name, f"{minutes} AND ({compiled.where})"))
        raw = [piece for piece in ((since, first), (last, until + 1)) if piece[1] > piece[0]]
    for index, (lo, hi) in enumerate(raw):
        params.update({f"r{index}_lo": int(lo), f"r{index}_hi": int(hi)})
        where = (
            f"ts >= fromUnixTimestamp64Nano({{r{index}_lo:Int64}}) "
            f"AND ts < fromUnixTimestamp64Nano({{r{index}_hi:Int64}}) AND {condition} AND ({compiled.where})"
        )
        sources.append(_edge_rows(group, table, where))
    sql = f"""
        SELECT {_node_key(group, "src")} AS src, {_node_key(group, "dst")} AS dst,
               {_anys(group)},
               sum(calls) AS calls, sum(errors) AS errors, max(max_us) AS top_us,
               [{", ".join(f"sum({c})" for c in EDGE_BUCKET_COLUMNS)}] AS buckets,
               groupUniqArrayArray(4)(protocols) AS protocols
        FROM ({" UNION ALL ".join(sources)})
        GROUP BY src, dst
        ORDER BY calls DESC, src, dst
        LIMIT {{lim:UInt32}}
    """
    rows = store.dicts(sql, params)
    seconds = max((until - since) / 1e9, 1e-9)
    nodes: dict[str, dict[str, Any]] = {}
    edges = []
    for r in rows:
        for side in ("src", "dst"):
            name = r[side]
            node = nodes.setdefault(
                name,
                {"id": name, "namespace": r[f"{side}_ns"], "calls_in": 0, "calls_out": 0, "errors_in": 0},
            )
            node["calls_out" if side == "src" else "calls_in"] += int(r["calls"])
            if side == "dst":
                node["errors_in"] += int(r["errors"])
        calls, errors = int(r["calls"]), int(r["errors"])
        buckets, top = [int(n) for n in r["buckets"]], int(r["top_us"])
        edges.append(
            {
                "src": r["src"],
                "dst": r["dst"],
                "calls": calls,
                "rate": round(calls / seconds, 3),
                "errors": errors,
                "error_rate": round(errors / calls, 4) if calls else 0.0,
                # from the buckets, as `netrecall latency` does (None: no call of the edge was answered)
                "p50_ms": bucket_percentile_ms(buckets, EDGE_BUCKETS_MS, top, 0.5),
                "p99_ms": bucket_percentile_ms(buckets, EDGE_BUCKETS_MS, top, 0.99),
                "protocols": sorted(r["protocols"]),
                "kfl": " && ".join(
                    [_side_kfl(group, "src", r, r["src"]), _side_kfl(group, "dst", r, r["dst"])]
                ),
            }
        )
    return {
        "group": group,
        "since": format_time_ns(int(since)),
        "until": format_time_ns(int(until)),
        "seconds": round(seconds, 3),
        "nodes": sorted(nodes.values(), key=lambda n: (n["namespace"], n["id"])),
        "edges": edges,
        "truncated": len(rows) >= limit,
        "source": "call_edges" if fast else "api_calls",  # which table the whole minutes came from
    }


def kfl_string(value: str) -> str:
    """A KFL (CEL) string literal: JSON's escaping is CEL's for the characters names can hold."""
    return json.dumps(value, ensure_ascii=False)


def _side_kfl(group: str, side: str, r: dict[str, Any], name: str) -> str:
    """The KFL that selects one end of a map edge, as the grouping named it."""
    ns = r[f"{side}_ns"]
    if group == "namespace":
        return f"{side}.namespace == {kfl_string(ns)}" if ns else f"{side}.ip == {kfl_string(name)}"
    if group == "node" and r[f"{side}_nd"] and name == r[f"{side}_nd"]:
        return f"{side}.node.name == {kfl_string(name)}"
    # workload (or an end without a node): who() picks the first of workload, service, pod, IP
    if r[f"{side}_wl"]:
        return f"{side}.namespace == {kfl_string(ns)} && {side}.workload == {kfl_string(r[f'{side}_wl'])}"
    if r[f"{side}_svc"]:
        return (
            f"{side}.namespace == {kfl_string(ns)} && {side}.service.name == {kfl_string(r[f'{side}_svc'])}"
        )
    if r[f"{side}_pod_"]:
        return f"{side}.namespace == {kfl_string(ns)} && {side}.pod.name == {kfl_string(r[f'{side}_pod_'])}"
    return f"{side}.ip == {kfl_string(name)}"


# --- a call's flow --------------------------------------------------------------------------------------


def flow_packets(store: Store, call_id: str, snapshot: str | None = None, limit: int = 300) -> dict[str, Any]:
    """The packets of the flow (5-tuple) a call travelled on, in time order, those of the call marked."""
    table, condition, params = source_table(store, "api_calls", snapshot)
    found = store.dicts(
        f"SELECT flow_id, toUnixTimestamp64Nano(first_packet_ts) AS first_ns, "
        f"toUnixTimestamp64Nano(last_packet_ts) AS last_ns FROM {table} "
        f"WHERE id = {{cid:String}} AND {condition} LIMIT 1",
        {**params, "cid": call_id},
    )
    if not found:
        raise NetrecallError(f"no call with id {call_id!r}")
    flow_id, first_ns, last_ns = int(found[0]["flow_id"]), int(found[0]["first_ns"]), int(found[0]["last_ns"])
    packets, pcondition, pparams = source_table(store, "packets", snapshot)
    rows = store.dicts(
        f"""SELECT toUnixTimestamp64Nano(ts) AS ts_ns, {_ip("src")} AS src_addr, src_port,
                   {_ip("dst")} AS dst_addr, dst_port, l4, tcp_flags, tcp_seq, tcp_ack, payload_len, caplen,
                   count() OVER () AS total
            FROM {packets} WHERE flow_id = {{fid:UInt64}} AND {pcondition}
            ORDER BY ts, source, seq LIMIT {{lim:UInt32}}""",
        {**pparams, "fid": flow_id, "lim": int(limit)},
    )
    return {
        "flow_id": str(flow_id),
        "call": {"first": format_time_ns(first_ns), "last": format_time_ns(last_ns)},
        "packets": [
            {
                "ts": format_time_ns(int(r["ts_ns"])),
                "src": f"{r['src_addr']}:{r['src_port']}",
                "dst": f"{r['dst_addr']}:{r['dst_port']}",
                "l4": {6: "tcp", 17: "udp"}.get(int(r["l4"]), str(r["l4"])),
                "flags": _tcp_flags(int(r["tcp_flags"])) if int(r["l4"]) == 6 else "",
                "seq": int(r["tcp_seq"]),
                "ack": int(r["tcp_ack"]),
                "payload": int(r["payload_len"]),
                "bytes": int(r["caplen"]),
                "in_call": first_ns <= int(r["ts_ns"]) <= last_ns,
            }
            for r in rows
        ],
        "total": int(rows[0]["total"]) if rows else 0,
        "truncated": bool(rows) and int(rows[0]["total"]) > len(rows),
        # the export that gives exactly this flow's packets (the hub's PCAP export, audited)
        "export": {"kfl": f"id == {kfl_string(call_id)}", **({"snapshot": snapshot} if snapshot else {})},
    }


def _tcp_flags(flags: int) -> str:
    names = ((0x02, "SYN"), (0x10, "ACK"), (0x08, "PSH"), (0x01, "FIN"), (0x04, "RST"), (0x20, "URG"))
    return ",".join(name for bit, name in names if flags & bit)


# --- the time picker ------------------------------------------------------------------------------------


def fitted_window(
    store: Store, since_ns: int | None, until_ns: int | None, snapshot: str | None = None
) -> dict[str, Any]:
    """The picker's window fitted to the stored packets with the rule of exports and snapshots
    (query/bounds.py: fit_window): clamped with a note; where retention dropped the start, the page is
    told (`lost`) rather than refused, since looking loses nothing."""
    stored = data_boundaries(store, "packets", snapshot)
    calls = data_boundaries(store, "api_calls", snapshot)
    spans = [s for s in (stored, calls) if s]
    if not spans:
        return {"since": None, "until": None, "notes": ["nothing is stored yet"], "empty": True}
    first, last = min(s[0] for s in spans), max(s[1] for s in spans)
    since = first if since_ns is None else since_ns
    until = last + 1 if until_ns is None else until_ns
    if since >= until:
        raise NetrecallError(f"empty window: {format_time_ns(since)} is not before {format_time_ns(until)}")
    if since > last or until <= first:
        raise NetrecallError(
            f"window {format_time_ns(since)} .. {format_time_ns(until)} is outside the stored data "
            f"({format_time_ns(first)} .. {format_time_ns(last)})"
        )
    horizon = None if snapshot else retention_horizon(store)
    fitted = fit_window(since, until, first, last, horizon, allow_partial=True)
    answer: dict[str, Any] = {
        "since": format_time_ns(fitted.since_ns),
        "until": format_time_ns(fitted.until_ns),
        "data": {"first": format_time_ns(first), "last": format_time_ns(last)},
        "notes": list(fitted.notes),
    }
    if fitted.lost_ns:
        answer["lost"] = {
            "since": format_time_ns(fitted.lost_ns[0]),
            "until": format_time_ns(fitted.lost_ns[1]),
        }
    return answer
