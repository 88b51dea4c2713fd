"""Latency per workload edge from the per-minute histograms, and the edges that got slower than before.

An edge is (source workload, destination workload or service, protocol, method, route): `route` is the
HTTP path template (`/orders/8812` -> `/orders/{id}`: numbers, UUIDs, hex ids), the gRPC method, the DNS
name or the TLS server name (`schema.tables.route_template_sql`). Percentiles come from fixed histogram
buckets (5 ms .. 10 s, `call_latency`, kept by a materialized view), interpolated inside the bucket and
capped by the slowest call seen: over days that reads thousands of rows, not millions of calls.

Whole minutes of the live window are read from `call_latency`; the ragged minutes at a window's ends,
a snapshot's calls and anything filtered by KFL are aggregated from the calls themselves with the view's
own SELECT, so every path counts alike. `edge_latency` answers p50/p90/p99, rate and failures per edge
(optionally per time bucket); `latency_changes` ranks the edges whose latency rose against a baseline
window and names the calls that made the tail.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from netrecall.errors import NetrecallError
from netrecall.query.rca import Scope, _limit, _ts
from netrecall.schema.tables import LATENCY_BUCKET_COLUMNS, LATENCY_BUCKETS_MS, LATENCY_SELECT, fill_select
from netrecall.store import Store
from netrecall.timeutil import format_time_ns, parse_duration_ns

NS_PER_MINUTE = 60_000_000_000
EDGE_KEYS = ("src", "dst", "protocol", "method", "route")
TAIL_PER_EDGE = 5  # slowest calls kept per edge (the slowest of each of its slowest minutes)
# A latency rise counts when the current percentile is at least this much above the baseline's, both
# ways: relative (x1.5) and absolute (5 ms, one bucket's width at the bottom of the scale).
RISE_RATIO = 1.5
RISE_MIN_MS = 5.0
MIN_CALLS = 5  # fewer calls than this on either side: a percentile is not worth comparing


def bucket_percentile_ms(
    buckets: Sequence[int], bounds_ms: Sequence[float], max_us: int, q: float
) -> float | None:
    """The q-quantile in ms of counts per bucket (upper bounds `bounds_ms`, then one open bucket): linear
    inside its bucket, never above the slowest call seen."""
    total = sum(buckets)
    if not total:
        return None
    target = q * total
    seen = 0
    max_ms = max_us / 1000
    low = 0.0
    for index, count in enumerate(buckets):
        high = float(bounds_ms[index]) if index < len(bounds_ms) else max_ms
        high = min(high, max_ms)
        if count and seen + count >= target:
            return round(low + (high - low) * (target - seen) / count, 3)
        seen += count
        low = high
    return round(max_ms, 3)


@dataclass
class Histogram:
    """Counts per bucket (LATENCY_BUCKETS_MS and beyond) plus the totals of one group of calls."""

    buckets: list[int] = field(default_factory=lambda: [0] * len(LATENCY_BUCKET_COLUMNS))
    calls: int = 0
    failed: int = 0
    no_response: int = 0
    latency_us: int = 0
    max_us: int = 0
    tail: list[tuple[int, str]] = field(default_factory=list)  # (elapsed_us, id), slowest first
    example_id: str = ""
    kinds: dict[tuple[str, int], list] = field(default_factory=dict)  # (kind, code) -> [calls, example id]

    def add(self, row: Mapping[str, Any]) -> None:
        for index, column in enumerate(LATENCY_BUCKET_COLUMNS):
            self.buckets[index] += int(row[column])
        self.calls += int(row["calls"])
        self.failed += int(row["failed"])
        self.no_response += int(row["no_response"])
        self.latency_us += int(row["latency_us"])
        self.max_us = max(self.max_us, int(row["top_us"]))
        self.tail = sorted({*self.tail, *((int(t[0]), str(t[1])) for t in row["tail"] if t[1])}, reverse=True)
        self.tail = self.tail[:TAIL_PER_EDGE]
        self.example_id = self.example_id or str(row["example_id"])
        if row["kind"]:
            key = (str(row["kind"]), int(row["code"]))
            seen = self.kinds.setdefault(key, [0, str(row["example_id"])])
            seen[0] += int(row["calls"])

    def merge(self, other: Histogram) -> Histogram:
        """The two groups as one (e.g. an edge's routes)."""
        merged = Histogram([a + b for a, b in zip(self.buckets, other.buckets, strict=True)])
        merged.calls, merged.failed = self.calls + other.calls, self.failed + other.failed
        merged.no_response = self.no_response + other.no_response
        merged.latency_us, merged.max_us = self.latency_us + other.latency_us, max(self.max_us, other.max_us)
        merged.tail = sorted({*self.tail, *other.tail}, reverse=True)[:TAIL_PER_EDGE]
        merged.example_id = self.example_id or other.example_id
        for source in (self.kinds, other.kinds):
            for key, (count, example) in source.items():
                merged.kinds.setdefault(key, [0, example])[0] += count
        return merged

    @property
    def answered(self) -> int:
        return sum(self.buckets)

    def percentile_ms(self, q: float) -> float | None:
        """The q-quantile in ms, linear inside its bucket, never above the slowest call seen."""
        return bucket_percentile_ms(self.buckets, LATENCY_BUCKETS_MS, self.max_us, q)

    def summary(self, seconds: float) -> dict[str, Any]:
        answered = self.answered
        out: dict[str, Any] = {
            "calls": self.calls,
            "rate_per_s": round(self.calls / seconds, 3) if seconds > 0 else None,
            "p50_ms": self.percentile_ms(0.5),
            "p90_ms": self.percentile_ms(0.9),
            "p99_ms": self.percentile_ms(0.99),
            "mean_ms": round(self.latency_us / answered / 1000, 3) if answered else None,
            "max_ms": round(self.max_us / 1000, 3) if answered else None,
            "failed": self.failed,
        }
        if self.no_response:
            out["no_response"] = self.no_response  # requests that never got an answer
        return out


@dataclass(frozen=True)
class Window:
    since_ns: int
    until_ns: int

    @property
    def seconds(self) -> float:
        return (self.until_ns - self.since_ns) / 1e9


def _edge_filters(src: str | None, dst: str | None, protocol: str | None) -> tuple[list[str], dict[str, Any]]:
    """Exact endpoint names (ns/name), or every endpoint of a namespace when the name ends with '/'."""
    where, params = [], {}
    for column, value in (("src", src), ("dst", dst)):
        if not value:
            continue
        if value.endswith("/"):
            where.append(f"startsWith({column}, {{f_{column}:String}})")
        else:
            where.append(f"{column} = {{f_{column}:String}}")
        params[f"f_{column}"] = value
    if protocol:
        where.append("protocol = {f_protocol:String}")
        params["f_protocol"] = protocol
    return where, params


def _minute_rows(
    store: Store, window: Window, snapshot: str | None, kfl: str, params: dict[str, Any], tag: str
) -> tuple[list[str], dict[str, Any]]:
    """The SELECTs yielding call_latency-shaped rows for `window` (UNION ALL parts), with their params."""
    parts: list[str] = []
    bound: dict[str, Any] = {}
    raw = [window]
    if not snapshot and not (kfl and kfl.strip()):
        first = -(-window.since_ns // NS_PER_MINUTE) * NS_PER_MINUTE  # the first whole minute
        last = window.until_ns // NS_PER_MINUTE * NS_PER_MINUTE
        if last > first:
            bound[f"{tag}_m0"], bound[f"{tag}_m1"] = first // 10**9, last // 10**9
            parts.append(
                "SELECT *, finalizeAggregation(slowest) AS slowest_id FROM call_latency "
                f"WHERE minute >= toDateTime({{{tag}_m0:Int64}}) AND minute < toDateTime({{{tag}_m1:Int64}})"
            )
            raw = [
                w for w in (Window(window.since_ns, first), Window(last, window.until_ns)) if w.seconds > 0
            ]
    for index, piece in enumerate(raw):
        scope = Scope(since_ns=piece.since_ns, until_ns=piece.until_ns, snapshot=snapshot, kfl=kfl)
        rename = {k: f"{tag}{index}_{k}" for k in scope.params}
        clause = scope.clause()
        for old, new in rename.items():
            clause = clause.replace(f"{{{old}:", f"{{{new}:")
        bound.update({rename[k]: v for k, v in scope.params.items()})
        select = fill_select(LATENCY_SELECT, f"{scope.table} FINAL", clause)
        parts.append(f"SELECT *, finalizeAggregation(slowest) AS slowest_id FROM ({select})")
    return parts, bound


def histograms(
    store: Store,
    window: Window,
    keys: Sequence[str],
    snapshot: str | None = None,
    kfl: str = "",
    src: str | None = None,
    dst: str | None = None,
    protocol: str | None = None,
    step_ns: int | None = None,
    tag: str = "w",
) -> dict[tuple, Histogram]:
    """Histograms of `window` grouped by `keys` (of src dst protocol method route kind code), and by
    time bucket first when `step_ns` is given."""
    parts, params = _minute_rows(store, window, snapshot, kfl, {}, tag)
    where, filters = _edge_filters(src, dst, protocol)
    group = [*keys, "kind", "code"]
    select_keys = list(group)
    if step_ns:
        step_s = max(60, step_ns // 10**9)
        select_keys.insert(
            0, f"toUnixTimestamp(toStartOfInterval(minute, INTERVAL {int(step_s)} SECOND)) AS t"
        )
        group.insert(0, "t")
    buckets = ", ".join(f"sum({c}) AS {c}" for c in LATENCY_BUCKET_COLUMNS)
    sql = f"""
        SELECT {", ".join(select_keys)}, sum(calls) AS calls, sum(failed) AS failed,
               sum(no_response) AS no_response, sum(latency_us) AS latency_us, max(max_us) AS top_us,
               any(example_id) AS example_id, {buckets},
               arraySlice(arrayReverseSort(x -> x.1, groupArray((max_us, slowest_id))), 1, {TAIL_PER_EDGE})
                   AS tail
        FROM ({" UNION ALL ".join(parts)})
        WHERE {" AND ".join(where) or "1"}
        GROUP BY {", ".join(group)}
    """
    found: dict[tuple, Histogram] = {}
    for row in store.dicts(sql, {**params, **filters}):
        key = tuple(row[k] for k in (["t"] if step_ns else []) + list(keys))
        found.setdefault(key, Histogram()).add(row)
    return found


def _window(since_ns: int | None, until_ns: int | None, store: Store, snapshot: str | None) -> Window:
    """The asked window, or what is stored (a default that covers everything) where an end is open."""
    if since_ns is None or until_ns is None:
        from netrecall.query.bounds import covering_bounds

        stored = covering_bounds(store, "api_calls", snapshot)
        if stored is None:
            raise NetrecallError("no API calls stored" + (f" in snapshot {snapshot!r}" if snapshot else ""))
        since_ns = stored[0] if since_ns is None else since_ns
        until_ns = stored[1] + 1 if until_ns is None else until_ns
    if until_ns <= since_ns:
        raise NetrecallError(
            f"the window ends ({format_time_ns(until_ns)}) before it starts ({format_time_ns(since_ns)})"
        )
    return Window(int(since_ns), int(until_ns))


def edge_latency(
    store: Store,
    since_ns: int | None = None,
    until_ns: int | None = None,
    snapshot: str | None = None,
    kfl: str = "",
    src: str | None = None,
    dst: str | None = None,
    protocol: str | None = None,
    by_route: bool = True,
    step: str | None = None,
    limit: int = 20,
) -> dict[str, Any]:
    """p50/p90/p99, rate and failures per edge over the window, busiest first; `step` adds a series."""
    limit = _limit(limit)
    window = _window(since_ns, until_ns, store, snapshot)
    keys = EDGE_KEYS if by_route else ("src", "dst", "protocol")
    found = histograms(store, window, keys, snapshot, kfl, src, dst, protocol)
    ranked = sorted(found.items(), key=lambda item: (-item[1].calls, item[0]))
    edges = [{**_edge(key, keys), **hist.summary(window.seconds)} for key, hist in ranked[:limit]]
    if step and edges:
        step_ns = parse_duration_ns(step)
        if step_ns < NS_PER_MINUTE:
            raise NetrecallError(f"step {step!r} is finer than the histograms' minute: use 1m or more")
        series = histograms(store, window, keys, snapshot, kfl, src, dst, protocol, step_ns=step_ns)
        for edge, (key, _) in zip(edges, ranked, strict=False):
            points = sorted((k[0], h) for k, h in series.items() if k[1:] == key)
            edge["series"] = [
                [
                    format_time_ns(int(t) * 10**9),
                    h.calls,
                    h.percentile_ms(0.5),
                    h.percentile_ms(0.99),
                    h.failed,
                ]
                for t, h in points
            ]
        edges[0]["series_columns"] = "start calls p50_ms p99_ms failed"
    answer: dict[str, Any] = {
        "window": {"start": format_time_ns(window.since_ns), "end": format_time_ns(window.until_ns)},
        "edges": edges,
        "total": len(found),
        "truncated": len(found) > len(edges),
    }
    if answer["truncated"]:
        answer["hint"] = "filter by src/dst ('ns/name', or 'ns/' for a namespace) or protocol, or raise limit"
    return answer


def _edge(key: tuple, keys: Sequence[str]) -> dict[str, Any]:
    edge = dict(zip(keys, key, strict=True))
    return {k: v for k, v in edge.items() if v != "" or k in ("src", "dst")}


def baseline_window(
    window: Window, baseline_since_ns: int | None = None, baseline_until_ns: int | None = None
) -> Window:
    """The baseline given, or the window of the same length just before; it must not overlap."""
    if baseline_since_ns is None and baseline_until_ns is None:
        span = window.until_ns - window.since_ns
        return Window(window.since_ns - span, window.since_ns)
    if baseline_since_ns is None or baseline_until_ns is None:
        raise NetrecallError("give the baseline's start and end (e.g. --baseline -2h..-1h)")
    if baseline_until_ns <= baseline_since_ns:
        raise NetrecallError("the baseline window ends before it starts")
    baseline = Window(int(baseline_since_ns), int(baseline_until_ns))
    if baseline.since_ns < window.until_ns and window.since_ns < baseline.until_ns:
        raise NetrecallError(
            f"the windows overlap: baseline {_span(baseline)} and window {_span(window)}; "
            "compare two separate windows"
        )
    return baseline


def resolve_windows(
    store: Store,
    since_ns: int | None,
    until_ns: int | None,
    baseline_since_ns: int | None,
    baseline_until_ns: int | None,
    snapshot: str | None,
) -> tuple[Window, Window]:
    """(window, baseline). With a baseline and no window start, the window starts where the baseline ends
    (`changes --baseline -2h..-1h` compares the last hour with the one before); open ends are what is
    stored. The baseline must hold calls and must not overlap the window."""
    if since_ns is None and baseline_until_ns is not None:
        since_ns = baseline_until_ns
    window = _window(since_ns, until_ns, store, snapshot)
    baseline = baseline_window(window, baseline_since_ns, baseline_until_ns)
    check_baseline_has_data(store, baseline, snapshot)
    return window, baseline


def _span(window: Window) -> str:
    return f"{format_time_ns(window.since_ns)}..{format_time_ns(window.until_ns)}"


def check_baseline_has_data(store: Store, baseline: Window, snapshot: str | None) -> None:
    """A baseline with no calls would make everything look new: say so, and what is stored."""
    scope = Scope(since_ns=baseline.since_ns, until_ns=baseline.until_ns, snapshot=snapshot)
    count = store.scalar(
        f"SELECT count() FROM (SELECT 1 FROM {scope.table} WHERE {scope.clause()} LIMIT 1)", scope.params
    )
    if int(count or 0):
        return
    from netrecall.query.bounds import covering_bounds

    stored = covering_bounds(store, "api_calls", snapshot)
    held = f"calls are stored from {_span(Window(stored[0], stored[1]))}" if stored else "no calls are stored"
    dropped = _retention_note(store, baseline)
    raise NetrecallError(f"the baseline window {_span(baseline)} holds no API calls ({held}{dropped})")


def _retention_note(store: Store, baseline: Window) -> str:
    """When the baseline is older than the rolling window reaches, the TTL explains the gap."""
    import time

    from netrecall.schema.migrate import current_ttl_seconds

    ttl_ns = current_ttl_seconds(store) * 10**9
    if baseline.until_ns < time.time_ns() - ttl_ns:
        hours = ttl_ns // 3_600_000_000_000
        return f"; calls stored more than {hours} h ago have left the rolling window"
    return ""


def latency_changes(
    store: Store,
    since_ns: int | None = None,
    until_ns: int | None = None,
    baseline_since_ns: int | None = None,
    baseline_until_ns: int | None = None,
    snapshot: str | None = None,
    kfl: str = "",
    limit: int = 10,
    tail: int = 3,
) -> dict[str, Any]:
    """Edges whose p50 or p90 rose beyond noise against the baseline, the cause first: an edge whose rise
    is explained by a rise of its destination's own calls (`explained_by`) ranks after the one that
    explains it. Each edge comes with the calls that made its tail."""
    limit = _limit(limit)
    window, baseline = resolve_windows(
        store, since_ns, until_ns, baseline_since_ns, baseline_until_ns, snapshot
    )
    now = histograms(store, window, EDGE_KEYS, snapshot, kfl, tag="w")
    before = histograms(store, baseline, EDGE_KEYS, snapshot, kfl, tag="b")
    rises = []
    for key, hist in now.items():
        old = before.get(key)
        rise = latency_rise(old, hist)
        if rise is not None:
            rises.append((key, hist, old, rise))
    explained = _explanations(rises)
    rises.sort(key=lambda r: (r[0] in explained, -r[3]))
    edges = []
    for key, hist, old, rise in rises[:limit]:
        item = {
            **_edge(key, EDGE_KEYS),
            "rise_ms": round(rise, 3),
            "now": hist.summary(window.seconds),
            "before": old.summary(baseline.seconds) if old else None,
            "example_id": hist.tail[0][1] if hist.tail else hist.example_id,
            "kfl": edge_kfl(key[0], key[1], key[2], key[4], slower_than_ms=_tail_floor(old, hist)),
        }
        if key in explained:
            item["explained_by"] = explained[key]
        edges.append(item)
    if tail and edges:
        _attach_tail(store, edges, rises[: len(edges)], tail, snapshot, window)
    answer: dict[str, Any] = {
        "window": {"start": format_time_ns(window.since_ns), "end": format_time_ns(window.until_ns)},
        "baseline": {"start": format_time_ns(baseline.since_ns), "end": format_time_ns(baseline.until_ns)},
        "edges": edges,
        "total": len(rises),
        "truncated": len(rises) > len(edges),
    }
    if not rises:
        answer["note"] = f"no edge's p50 or p90 rose by x{RISE_RATIO} and {RISE_MIN_MS:g} ms or more"
    return answer


def latency_rise(old: Histogram | None, new: Histogram) -> float | None:
    """How many ms the p50 or p90 rose (the larger), when beyond noise; None otherwise."""
    if new.answered < MIN_CALLS or old is None or old.answered < MIN_CALLS:
        return None
    best = None
    for q in (0.5, 0.9):
        before, now = old.percentile_ms(q), new.percentile_ms(q)
        if before is None or now is None:
            continue
        delta = now - before
        if delta >= RISE_MIN_MS and now >= before * RISE_RATIO:
            best = max(best or 0.0, delta)
    return best


def _explanations(rises: list[tuple]) -> dict[tuple, str]:
    """edge X->Y is explained by Y->Z when Y's own call rose by at least half as much."""
    by_src: dict[str, list[tuple]] = {}
    for key, _, _, rise in rises:
        by_src.setdefault(key[0], []).append((key, rise))
    explained = {}
    for key, _, _, rise in rises:
        below = [(k, r) for k, r in by_src.get(key[1], []) if k[1] != key[0] and r >= 0.5 * rise]
        if below:
            cause = max(below, key=lambda kr: kr[1])[0]
            explained[key] = f"{cause[0]} -> {cause[1]} {cause[4] or cause[2]}".strip()
    return explained


def _tail_floor(old: Histogram | None, new: Histogram) -> int:
    """A KFL threshold (ms) catching the slow calls: above the baseline's p99 when known."""
    floor = (old.percentile_ms(0.99) if old else None) or (new.percentile_ms(0.5) or 0)
    return max(int(floor), 1)


def edge_kfl(src: str, dst: str, protocol: str = "", route: str = "", slower_than_ms: int = 0) -> str:
    """A KFL filter selecting an edge's calls (and only its slow ones with slower_than_ms)."""
    parts = [endpoint_kfl("src", src), endpoint_kfl("dst", dst)]
    if protocol:
        parts.insert(0, protocol)
    if route and protocol in ("http", "http2"):
        fixed = route.split("{id}")[0]
        if fixed and fixed != "/":
            parts.append(f'path.startsWith("{_kfl_text(fixed)}")')
    elif route and protocol == "dns":
        parts.append(f'"{_kfl_text(route)}" in dns_questions')
    if slower_than_ms:
        parts.append(f"elapsed_time > {int(slower_than_ms) * 1000}")
    return " && ".join(p for p in parts if p)


def endpoint_kfl(side: str, name: str) -> str:
    """ns/name (workload, service or pod, as the tools name ends) or an IP, as KFL."""
    if not name:
        return ""
    if "/" not in name:
        return f'{side}.ip == "{_kfl_text(name)}"'
    namespace, short = name.split("/", 1)
    ns, short = _kfl_text(namespace), _kfl_text(short)
    return (
        f'({side}.namespace == "{ns}" && ({side}.workload.endsWith("/{short}") || '
        f'{side}.service.name == "{short}" || {side}.pod.name == "{short}"))'
    )


def _kfl_text(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')


def _attach_tail(
    store: Store, edges: list[dict], rises: list[tuple], tail: int, snapshot: str | None, window: Window
) -> None:
    """The slowest calls of each edge (ids from the histograms' per-minute slowest), as compact lines."""
    ids = {i for _, hist, _, _ in rises for _, i in hist.tail[:tail]}
    if not ids:
        return
    scope = Scope(since_ns=window.since_ns, until_ns=window.until_ns, snapshot=snapshot)
    rows = store.dicts(
        f"""SELECT id, toUnixTimestamp64Nano(ts) AS ts_ns, method, path, status_code, elapsed_time
            FROM {scope.table} WHERE {scope.clause("id IN {ids:Array(String)}")}""",
        {**scope.params, "ids": sorted(ids)},
    )
    found = {r["id"]: r for r in rows}
    for edge, (_, hist, _, _) in zip(edges, rises, strict=True):
        calls = []
        for _, call_id in hist.tail[:tail]:
            r = found.get(call_id)
            if r:
                calls.append(
                    {
                        "id": call_id,
                        "ts": _ts(int(r["ts_ns"])),
                        "latency_ms": round(int(r["elapsed_time"]) / 1000, 3),
                        "status": int(r["status_code"]),
                        "path": str(r["path"])[:120],
                    }
                )
        edge["tail"] = calls
