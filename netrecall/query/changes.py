"""What changed between two windows of traffic, ranked so the likely cause comes first.

Both windows are read from the per-minute latency histograms (`netrecall.query.latency.histograms`, the
ragged minutes from the calls) and from the flows. The changes, each with counts on both sides, an
`example_id` (or flow) and a KFL filter (or a list_l4_flows call) to drill in:

- `new_error`: an error kind and code on an edge that had none of it in the baseline;
- `new_tcp_failure`: timeouts, refused connections, mid-connection resets, unanswered requests that
  appeared (or grew x3) on a client -> server port;
- `retransmissions`: an edge whose retransmission rate rose (at least 1% of its data segments, x3);
- `latency_rise`: an edge whose p50 or p90 rose beyond noise (x1.5 and 5 ms);
- `new_edge` / `vanished_edge`: a caller -> callee pair seen on one side only (errors folded in);
- `new_dns_name`, `new_tls_sni`: names nobody asked for (or connected to) in the baseline;
- `rate_shift`: an edge whose call count moved beyond Poisson noise (3 sigma) and by x1.5.

Ranking: problems (errors, TCP failures, retransmissions, latency) before the rest, and among problems
those not `explained_by` a problem one hop further down (X -> Y is explained when Y -> Z has one), so a
chain of 504s ranks below the slow dependency that caused it. Then new edges, new names, rate shifts,
new DNS edges and vanished edges, each by size.
"""

from __future__ import annotations

import math
from typing import Any

from netrecall.errors import NetrecallError
from netrecall.query.latency import (
    MIN_CALLS,
    Histogram,
    Window,
    edge_kfl,
    histograms,
    latency_rise,
    resolve_windows,
)
from netrecall.query.rca import DNS_RCODES, _limit
from netrecall.store import Store
from netrecall.timeutil import format_time_ns

PROBLEMS = ("new_error", "new_tcp_failure", "retransmissions", "latency_rise")
ORDER = {
    "problem": 0,
    "new_edge": 2,
    "explained": 3,
    "new_dns_name": 4,
    "new_tls_sni": 4,
    "rate_shift": 5,
    "new_dns_edge": 6,
    "vanished_edge": 7,
}
RETRANS_MIN_RATE = 0.01
GROWTH = 3.0  # a failure kind already present must grow this much to count as a change


def compare_windows(
    store: Store,
    since_ns: int | None = None,
    until_ns: int | None = None,
    baseline_since_ns: int | None = None,
    baseline_until_ns: int | None = None,
    snapshot: str | None = None,
    kfl: str = "",
    limit: int = 15,
) -> dict[str, Any]:
    """The ranked changes of [since, until) against the baseline (default: the window just before)."""
    limit = _limit(limit)
    window, baseline = resolve_windows(
        store, since_ns, until_ns, baseline_since_ns, baseline_until_ns, snapshot
    )
    # The four reads are independent: run them side by side (threads share the store's connection).
    from concurrent.futures import ThreadPoolExecutor

    keys = ("src", "dst", "protocol", "method", "route")
    with ThreadPoolExecutor(max_workers=2) as pool:
        hist_now = pool.submit(histograms, store, window, keys, snapshot, kfl, tag="w")
        hist_before = pool.submit(histograms, store, baseline, keys, snapshot, kfl, tag="b")
        flows = None if kfl and kfl.strip() else pool.submit(_flow_groups, store, window, baseline, snapshot)
        now, before = hist_now.result(), hist_before.result()
        flow_groups = flows.result() if flows else None
    if not now:
        raise NetrecallError(
            f"the window {format_time_ns(window.since_ns)}..{format_time_ns(window.until_ns)} holds no API "
            "calls: nothing to compare"
        )
    edges_now, edges_before = _by_edge(now), _by_edge(before)
    items: list[dict[str, Any]] = []
    items += _new_errors(edges_now, edges_before)
    items += _latency(now, before, window, baseline)
    items += _edges(edges_now, edges_before, window, baseline)
    items += _names(now, before, "dns", "new_dns_name")
    items += _names(now, before, "tls", "new_tls_sni")
    items += _unanswered(edges_now, edges_before)
    if flow_groups is not None:  # flows cannot be filtered by a call filter
        items += _tcp(*flow_groups)
    _explain(items)
    items.sort(key=_rank)
    answer: dict[str, Any] = {
        "window": {"start": format_time_ns(window.since_ns), "end": format_time_ns(window.until_ns)},
        "baseline": {"start": format_time_ns(baseline.since_ns), "end": format_time_ns(baseline.until_ns)},
        "calls": {
            "window": sum(h.calls for h in now.values()),
            "baseline": sum(h.calls for h in before.values()),
        },
        "changes": [_public(i) for i in items[:limit]],
        "total": len(items),
        "truncated": len(items) > limit,
    }
    if not items:
        answer["note"] = "no edge, error kind, latency, rate, DNS name or TLS name changed beyond noise"
    elif answer["truncated"]:
        answer["hint"] = "raise limit, or narrow with kfl (e.g. 'dst.namespace == \"shop\"')"
    return answer


def _by_edge(found: dict[tuple, Histogram]) -> dict[tuple, Histogram]:
    edges: dict[tuple, Histogram] = {}
    for key, hist in found.items():
        edge = key[:3]
        edges[edge] = edges[edge].merge(hist) if edge in edges else hist
    return edges


def _item(change: str, edge: tuple, score: float, summary: str, **extra: Any) -> dict[str, Any]:
    return {
        "type": change,
        "src": edge[0],
        "dst": edge[1],
        "proto": edge[2],
        "score": score,
        "summary": summary,
        **extra,
    }


def _new_errors(now: dict[tuple, Histogram], before: dict[tuple, Histogram]) -> list[dict[str, Any]]:
    """Failure kinds that appeared on edges the baseline already had (errors of new edges are folded
    into those edges)."""
    items = []
    for edge, hist in now.items():
        if edge not in before:
            continue
        old = before[edge].kinds
        for (kind, code), (count, example) in hist.kinds.items():
            if kind == "http_4xx" or (kind, code) in old:
                continue
            text = DNS_RCODES.get(code, str(code)) if kind == "dns_error" else str(code)
            items.append(
                _item(
                    "new_error",
                    edge,
                    count,
                    f"{count} {kind} {text} from {edge[1]} (none in the baseline)",
                    kind=kind,
                    code=code,
                    count=count,
                    example_id=example,
                    kfl=_error_kfl(edge, kind, code),
                )
            )
    return items


def _error_kfl(edge: tuple, kind: str, code: int) -> str:
    condition = {
        "dns_error": f"status_code == {code}",
        "grpc_error": f"grpc_status == {code}",
        "parse_error": 'error != ""',
    }.get(kind, f"status_code == {code}")
    return f"{edge_kfl(edge[0], edge[1], edge[2])} && {condition}"


def _latency(
    now: dict[tuple, Histogram], before: dict[tuple, Histogram], window: Window, baseline: Window
) -> list[dict[str, Any]]:
    items = []
    for key, hist in now.items():
        old = before.get(key)
        rise = latency_rise(old, hist)
        if rise is None or old is None:
            continue
        was, is_ = old.percentile_ms(0.5), hist.percentile_ms(0.5)
        items.append(
            _item(
                "latency_rise",
                key[:3],
                round(rise, 3),
                f"{key[3]} {key[4]}".strip() + f": p50 {was} -> {is_} ms, p90 {old.percentile_ms(0.9)} -> "
                f"{hist.percentile_ms(0.9)} ms",
                route=key[4],
                example_id=hist.tail[0][1] if hist.tail else hist.example_id,
                kfl=edge_kfl(
                    key[0], key[1], key[2], key[4], slower_than_ms=max(int(old.percentile_ms(0.99) or 1), 1)
                ),
            )
        )
    return items


def _edges(
    now: dict[tuple, Histogram], before: dict[tuple, Histogram], window: Window, baseline: Window
) -> list[dict[str, Any]]:
    items = []
    for edge, hist in now.items():
        if edge in before:
            old = before[edge]
            expected = old.calls * window.seconds / baseline.seconds if baseline.seconds else 0
            moved = abs(hist.calls - expected) > 3 * math.sqrt(max(expected, 1.0))
            big = hist.calls >= 1.5 * expected or hist.calls * 1.5 <= expected
            if moved and big and max(hist.calls, expected) >= 2 * MIN_CALLS:
                rate, was = hist.calls / window.seconds, old.calls / baseline.seconds
                items.append(
                    _item(
                        "rate_shift",
                        edge,
                        round(abs(hist.calls - expected), 1),
                        f"{was:.3g}/s -> {rate:.3g}/s",
                        example_id=hist.example_id,
                        kfl=edge_kfl(edge[0], edge[1], edge[2]),
                    )
                )
            continue
        errors = {f"{k} {c}": n for (k, c), (n, _) in hist.kinds.items() if k != "http_4xx"}
        kind = "new_dns_edge" if edge[2] == "dns" else "new_edge"
        extra: dict[str, Any] = {"count": hist.calls, "example_id": hist.example_id}
        if errors:
            extra["errors"] = errors
        items.append(
            _item(
                kind,
                edge,
                hist.calls,
                f"{edge[0]} calls {edge[1]} ({edge[2]}, {hist.calls} calls), not in the baseline",
                kfl=edge_kfl(edge[0], edge[1], edge[2]),
                **extra,
            )
        )
    for edge, old in before.items():
        if edge not in now:
            items.append(
                _item(
                    "vanished_edge",
                    edge,
                    old.calls,
                    f"{old.calls} calls in the baseline, none now",
                    count=old.calls,
                    example_id=old.example_id,
                    kfl=edge_kfl(edge[0], edge[1], edge[2]),
                )
            )
    return items


def _names(
    now: dict[tuple, Histogram], before: dict[tuple, Histogram], protocol: str, kind: str
) -> list[dict]:
    """DNS names asked (TLS server names connected to) in the window that nobody used in the baseline."""
    known = {k[4] for k in before if k[2] == protocol}
    fresh: dict[str, dict[str, Any]] = {}
    for key, hist in now.items():
        if key[2] != protocol or not key[4] or key[4] in known:
            continue
        entry = fresh.setdefault(
            key[4], {"count": 0, "clients": set(), "failed": 0, "example_id": hist.example_id}
        )
        entry["count"] += hist.calls
        entry["failed"] += hist.failed
        entry["clients"].add(key[0])
    items = []
    for name, entry in fresh.items():
        clients = sorted(entry["clients"])
        answered = entry["count"] - entry["failed"]
        field = "dns_questions" if protocol == "dns" else "tls_sni"
        kfl = f'"{name}" in dns_questions' if protocol == "dns" else f'tls && {field} == "{name}"'
        items.append(
            {
                "type": kind,
                "src": clients[0],
                "dst": "",
                "proto": protocol,
                # answered names first: a new name that resolves is a new dependency, a failing one often
                # a search-path variant of it
                "score": answered * 1000 + entry["count"],
                "summary": f"{name}: {entry['count']} ({entry['failed']} failed) from "
                + ", ".join(clients[:3]),
                "name": name,
                "example_id": entry["example_id"],
                "kfl": kfl,
            }
        )
    return items


def _unanswered(now: dict[tuple, Histogram], before: dict[tuple, Histogram]) -> list[dict[str, Any]]:
    """Requests never answered (client gave up, connection died) that appeared or grew x3 on an edge."""
    items = []
    for edge, hist in now.items():
        old = before[edge].no_response if edge in before else 0
        if hist.no_response and hist.no_response >= GROWTH * old and edge[2] != "dns":
            items.append(
                _item(
                    "new_tcp_failure",
                    edge,
                    hist.no_response,
                    f"{hist.no_response} requests never answered (baseline {old})",
                    kind="no_response",
                    count=hist.no_response,
                    example_id=hist.example_id,
                    kfl=f"{edge_kfl(edge[0], edge[1], edge[2])} && !has_response",
                )
            )
    return items


def _flow_groups(store: Store, window: Window, baseline: Window, snapshot: str | None) -> tuple[dict, dict]:
    """One flows summary per window, by client -> server:port (list_l4_flows' groups)."""
    from netrecall.query.l4 import l4_flows

    def groups(w: Window) -> dict[tuple, dict]:
        found = l4_flows(store, w.since_ns, w.until_ns, aggregate="workload", limit=1000, snapshot=snapshot)
        return {(f["src"], f["dst"], f.get("dst_port")): f for f in found["flows"]}

    return groups(window), groups(baseline)


def _tcp(now: dict[tuple, dict], before: dict[tuple, dict]) -> list[dict[str, Any]]:
    """TCP failures and retransmission rates that appeared (or grew x3) per client -> server:port."""
    items = []
    for key, f in now.items():
        old = before.get(key, {})
        for kind, column in (("timeout", "timeouts"), ("refused", "refused"), ("tcp_reset", "resets")):
            count, was = f[column], old.get(column, 0)
            if count and count >= GROWTH * was:
                ns = f["dst"].split("/")[0] if "/" in f["dst"] else None
                drill = f"list_l4_flows(failing=true, port={key[2]}" + (f', ns="{ns}")' if ns else ")")
                items.append(
                    _item(
                        "new_tcp_failure",
                        (f["src"], f["dst"], "tcp"),
                        count,
                        f"{count} {kind} port {key[2]} (baseline {was})",
                        kind=kind,
                        count=count,
                        example_flow=f.get("example_flow", ""),
                        drill=drill,
                    )
                )
        was = old.get("retrans_rate", 0.0)
        if f["retrans_rate"] >= RETRANS_MIN_RATE and f["retrans_rate"] >= GROWTH * was:
            items.append(
                _item(
                    "retransmissions",
                    (f["src"], f["dst"], "tcp"),
                    f["retrans_rate"],
                    f"{f['retransmissions']} retransmissions, {f['retrans_rate']:.1%} of data segments "
                    f"(baseline {was:.1%}) on port {key[2]}",
                    drill=f'list_l4_flows(aggregate="node", port={key[2]})',
                )
            )
    return items


def _explain(items: list[dict[str, Any]]) -> None:
    """A problem on X -> Y is explained by a problem on Y -> Z (Z not X): the deeper one is the cause."""
    problems = [i for i in items if i["type"] in PROBLEMS]
    by_src: dict[str, list[dict]] = {}
    for item in problems:
        by_src.setdefault(item["src"], []).append(item)
    for item in problems:
        below = [p for p in by_src.get(item["dst"], []) if p["dst"] != item["src"]]
        if below:
            cause = below[0]
            item["explained_by"] = f"{cause['type']} {cause['src']} -> {cause['dst']}"


def _rank(item: dict[str, Any]) -> tuple:
    if item["type"] in PROBLEMS:
        group = ORDER["explained"] if "explained_by" in item else ORDER["problem"]
        within = PROBLEMS.index(item["type"]) if item["type"] != "latency_rise" else 1
    else:
        group, within = ORDER[item["type"]], 0
    return (group, within, -float(item["score"]), item["src"], item["dst"])


def _public(item: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in item.items() if (v not in ("", None) or k in ("src", "dst")) and k != "score"}
