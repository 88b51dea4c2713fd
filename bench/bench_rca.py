"""Root causes beyond error codes on the embedded store: latency per edge, window comparison, L4 summary.

Targets (issue #16):
  latency percentiles per edge over 10M calls in 1 h                    p50 <= 300 ms
  window comparison over two 1 h windows of 10M calls each              p50 <= 1 s
  L4 flow summary (TCP failures per workload pair) over 50M packets     p50 <= 1 s

Data, made by the engine (INSERT ... SELECT FROM numbers): 20M API calls over 2 h between 40 workloads in
8 namespaces along 160 edges (each workload calls four others), HTTP paths with ids behind 6 route
templates, gRPC and DNS, ~2% 5xx and a latency that doubles on 8 edges in the second hour; the
materialized view fills `call_latency` as the calls go in, as dissection does. Flows: 240k one-minute
rows over the same 2 h summing to 50M packets, some SYN-only (timeouts), refused and retransmitting.

Side by side: the same answers computed from the raw rows without the histograms (quantiles over
api_calls; the flows query without the merge the tool does is the same read, so the reference there is
tshark's `-z conv,tcp` and `-z expert` on a real capture, for answer size). NETRECALL_BENCH_SCALE=0.1
runs a tenth of the data (the figures then say so).
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import time
from pathlib import Path

from bench.common import OUT, print_table, verdict

ROOT = Path(__file__).resolve().parent.parent
SCALE = float(os.environ.get("NETRECALL_BENCH_SCALE", "1"))
CALLS_PER_HOUR = int(10_000_000 * SCALE)
PACKETS = int(50_000_000 * SCALE)
FLOW_ROWS = int(240_000 * SCALE)
START_S = 1_785_000_000  # a fixed hour boundary, so the store can be reused between runs
RUNS = 7
WORKLOADS = 40
NAMESPACES = ["shop", "payments", "search", "users", "orders", "infra", "batch", "edge"]
ROUTES = [
    "/api/v1/orders/{id}",
    "/api/v1/users/{id}",
    "/api/v1/cart",
    "/health",
    "/api/v2/items/{id}",
    "/login",
]


def _fill(store) -> None:
    """20M calls (2 h) between 40 workloads along 160 edges, then 240k flow rows for 50M packets."""
    ns = "[" + ", ".join(f"'{n}'" for n in NAMESPACES) + "]"
    routes = "[" + ", ".join(f"'{r}'" for r in ROUTES) + "]"
    for hour in range(2):
        step = 3_600_000_000_000 // CALLS_PER_HOUR
        slower = "if(hour = 1 AND e % 20 = 3, 2, 1)" if hour else "1"
        store.command(
            f"""
INSERT INTO api_calls (id, ts, elapsed_time, protocol, node_name, src_ip, src_port, dst_ip, dst_port,
    src_pod, src_namespace, src_service, src_workload, src_node, dst_pod, dst_namespace, dst_service,
    dst_workload, dst_node, method, url, path, status_code, grpc_method, grpc_status, dns_questions,
    dns_question_types, dns_request, dns_response, has_response, flow_id, first_packet_ts, last_packet_ts)
SELECT hex(cityHash64(number, {hour})) AS id,
    fromUnixTimestamp64Nano(toInt64({START_S * 10**9 + hour * 3_600_000_000_000})
                            + toInt64(number) * {step}) AS ts,
    toUInt64((1000 + (h % 20000) * (1 + (h % 97 = 0) * 30)) * {slower}) AS elapsed_time,
    multiIf(e % 10 = 9, 'dns', e % 10 = 8, 'grpc', 'http') AS protocol,
    concat('node-', toString(s % 8)) AS node_name,
    toIPv6(toIPv4(167772160 + s * 64 + h % 4)) AS src_ip, 32768 + h % 28000 AS src_port,
    toIPv6(toIPv4(167772160 + d * 64 + h2 % 4)) AS dst_ip, if(protocol = 'dns', 53, 8080) AS dst_port,
    concat('w', toString(s), '-7d9f8c6b5d-', toString(h % 4)) AS src_pod, {ns}[1 + s % 8] AS src_namespace,
    concat('w', toString(s)) AS src_service, concat('Deployment/w', toString(s)) AS src_workload,
    node_name AS src_node,
    concat('w', toString(d), '-7d9f8c6b5d-', toString(h2 % 4)) AS dst_pod, {ns}[1 + d % 8] AS dst_namespace,
    concat('w', toString(d)) AS dst_service, concat('Deployment/w', toString(d)) AS dst_workload,
    concat('node-', toString(d % 8)) AS dst_node,
    if(protocol = 'http', ['GET', 'GET', 'POST', 'PUT'][1 + h % 4],
       if(protocol = 'grpc', 'POST', '')) AS method,
    path AS url,
    multiIf(protocol = 'http', replaceOne({routes}[1 + (e + h2) % 6], '{{id}}', toString(h % 100000)),
            protocol = 'grpc', '/shop.Orders/Create', '') AS path,
    multiIf(protocol = 'http', if(h % 100 < 2, 503, 200), protocol = 'dns', if(h % 100 < 1, 3, 0), 0)
        AS status_code,
    if(protocol = 'grpc', '/shop.Orders/Create', '') AS grpc_method,
    if(protocol = 'grpc' AND h % 100 < 2, 14, 0) AS grpc_status,
    if(protocol = 'dns', [concat('w', toString(d), '.', dst_namespace, '.svc.cluster.local')], [])
        AS dns_questions,
    if(protocol = 'dns', ['A'], []) AS dns_question_types,
    protocol = 'dns' AS dns_request, protocol = 'dns' AS dns_response, 1 AS has_response,
    cityHash64(number, 7) AS flow_id, ts AS first_packet_ts, ts AS last_packet_ts
FROM (SELECT number, {hour} AS hour, cityHash64(number, 11 + {hour}) AS h,
             cityHash64(number, 13 + {hour}) AS h2,
             h % {WORKLOADS * 4} AS e, intDiv(e, 4) AS s, (s * 7 + e % 4 + 1) % {WORKLOADS} AS d
      FROM numbers({CALLS_PER_HOUR}))
""",
            settings={"max_insert_threads": 2, "max_block_size": 1_000_000},
        )
    per_row = max(PACKETS // max(FLOW_ROWS, 1), 4)
    store.command(
        f"""
INSERT INTO flows (window_start, node, l4, ip_a, port_a, ip_b, port_b, first_ts, last_ts, packets_ab,
    bytes_ab, packets_ba, bytes_ba, tcp_flags_ab, tcp_flags_ba, syn_from, syn_ts, synack_ts, resets,
    data_segments, retransmissions, syns, zero_windows, first_data_ab, first_data_ba,
    a_pod, a_namespace, a_service, a_workload, a_node, b_pod, b_namespace, b_service, b_workload, b_node)
SELECT toDateTime({START_S} + intDiv(number, {max(FLOW_ROWS // 120, 1)}) * 60) AS window_start,
    concat('node-', toString(s % 8)), 6, toIPv6(toIPv4(167772160 + s * 64 + h % 4)), 30000 + h % 30000,
    toIPv6(toIPv4(167772160 + d * 64 + h2 % 4)), 8080,
    toDateTime64(window_start, 9) + (h % 50), toDateTime64(window_start, 9) + (h % 50) + 5,
    if(kind = 0, {per_row // 2}, if(kind = 1, 2, 1)), 300 * {per_row // 2},
    if(kind = 0, {per_row - per_row // 2}, if(kind = 2, 1, 0)), 900 * {per_row // 2},
    27, if(kind = 2, 4, 27), 1, toDateTime64(window_start, 9) + (h % 50),
    if(kind = 0, toDateTime64(window_start, 9) + (h % 50) + 0.0003, NULL), if(kind = 2, 1, 0),
    if(kind = 0, {per_row} - 4, 0), if(kind = 0 AND h % 20 = 0, h % 9, 0), if(kind = 1, 2, 1), 0,
    if(kind = 0, toDateTime64(window_start, 9) + (h % 50) + 0.001, NULL),
    if(kind = 0, toDateTime64(window_start, 9) + (h % 50) + 0.004, NULL),
    concat('w', toString(s), '-7d9f8c6b5d-0'), {ns}[1 + s % 8], concat('w', toString(s)),
    concat('Deployment/w', toString(s)), concat('node-', toString(s % 8)),
    concat('w', toString(d), '-7d9f8c6b5d-0'), {ns}[1 + d % 8], concat('w', toString(d)),
    concat('Deployment/w', toString(d)), concat('node-', toString(d % 8))
FROM (SELECT number, cityHash64(number, 21) AS h, cityHash64(number, 22) AS h2, h % {WORKLOADS * 4} AS e,
             intDiv(e, 4) AS s, (s * 7 + e % 4 + 1) % {WORKLOADS} AS d,
             if(h % 200 = 0, 1, if(h % 300 = 1, 2, 0)) AS kind
      FROM numbers({FLOW_ROWS}))
""",
        settings={"max_insert_threads": 2},
    )


def _timed(fn) -> tuple[float, object]:
    times, answer = [], None
    for _ in range(RUNS):
        started = time.perf_counter()
        answer = fn()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times), answer


def _tshark_sizes() -> tuple[int, int, int] | None:
    """tshark's TCP conversation table and expert info on the loss incident vs the L4 tool's answer."""
    pcap = ROOT / "tests" / "captures" / "incidents" / "loss.pcap"
    if not shutil.which("tshark") or not pcap.exists():
        return None
    conv = subprocess.run(["tshark", "-n", "-q", "-r", str(pcap), "-z", "conv,tcp"], capture_output=True)
    expert = subprocess.run(["tshark", "-n", "-q", "-r", str(pcap), "-z", "expert,note"], capture_output=True)
    from netrecall.dissect.runner import dissect
    from netrecall.ingest.identity import IdentityResolver
    from netrecall.ingest.importer import import_files
    from netrecall.mcp.server import compact
    from netrecall.query.l4 import l4_flows
    from netrecall.schema.migrate import ensure_schema
    from netrecall.store import open_store

    store = open_store(f"chdb://{OUT / 'rca-store'}?database=rca_tshark")
    store.command("DROP DATABASE IF EXISTS rca_tshark")
    store = open_store(f"chdb://{OUT / 'rca-store'}?database=rca_tshark")
    ensure_schema(store)
    inventory = pcap.with_name("loss.inventory.json")
    import_files(store, [pcap], node="node-1", resolver=IdentityResolver.from_inventory(inventory))
    dissect(store)
    ours = len(compact(l4_flows(store, aggregate="workload")).encode())
    return len(conv.stdout), len(expert.stdout), ours


def run() -> bool:
    from netrecall.query.changes import compare_windows
    from netrecall.query.l4 import l4_flows
    from netrecall.query.latency import edge_latency
    from netrecall.schema.migrate import ensure_schema
    from netrecall.store import open_store

    OUT.mkdir(parents=True, exist_ok=True)
    database = f"rca_{str(SCALE).replace('.', '_')}"
    store = open_store(f"chdb://{OUT / 'rca-store'}?database={database}")
    ensure_schema(store)
    hour = 3_600_000_000_000
    t0 = START_S * 10**9
    if int(store.scalar("SELECT count() FROM api_calls")) != 2 * CALLS_PER_HOUR:
        store.command("TRUNCATE TABLE api_calls")
        store.command("TRUNCATE TABLE call_latency")
        store.command("TRUNCATE TABLE flows")
        started = time.perf_counter()
        _fill(store)
        print(
            f"  filled {2 * CALLS_PER_HOUR:,} calls and {FLOW_ROWS:,} flow rows "
            f"in {time.perf_counter() - started:.0f} s"
        )
    store.command("OPTIMIZE TABLE call_latency FINAL")
    histogram_rows = int(
        store.scalar(
            f"SELECT count() FROM call_latency WHERE minute >= toDateTime({START_S}) "
            f"AND minute < toDateTime({START_S + 3600})"
        )
    )

    lat_ms, lat = _timed(lambda: edge_latency(store, t0 + hour, t0 + 2 * hour, by_route=False, limit=200))
    raw_ms, _ = _timed(
        lambda: store.rows(
            "SELECT src_namespace, src_workload, dst_namespace, dst_workload, protocol, count(), "
            "quantiles(0.5, 0.9, 0.99)(elapsed_time) FROM api_calls "
            f"WHERE ts >= fromUnixTimestamp64Nano({t0 + hour}) "
            f"AND ts < fromUnixTimestamp64Nano({t0 + 2 * hour}) "
            "GROUP BY ALL"
        )
    )
    cmp_ms, cmp = _timed(lambda: compare_windows(store, t0 + hour, t0 + 2 * hour, t0, t0 + hour))
    raw_cmp_ms, _ = _timed(
        lambda: [
            store.rows(
                "SELECT src_namespace, src_workload, dst_namespace, dst_workload, protocol, path, "
                "status_code, "
                "count(), quantiles(0.5, 0.9)(elapsed_time) FROM api_calls "
                f"WHERE ts >= fromUnixTimestamp64Nano({a}) AND ts < fromUnixTimestamp64Nano({a + hour}) "
                "GROUP BY ALL"
            )
            for a in (t0, t0 + hour)
        ]
    )
    l4_ms, l4 = _timed(lambda: l4_flows(store, t0, t0 + 2 * hour, aggregate="workload", limit=50))
    from netrecall.mcp.server import compact

    rows = [
        [
            "latency per edge, 1 h",
            f"{CALLS_PER_HOUR:,} calls",
            lat_ms,
            raw_ms,
            raw_ms / lat_ms,
            len(compact(lat)),
        ],
        [
            "compare two 1 h windows",
            f"{2 * CALLS_PER_HOUR:,} calls",
            cmp_ms,
            raw_cmp_ms,
            raw_cmp_ms / cmp_ms,
            len(compact(cmp)),
        ],
        ["L4 summary per workload pair", f"{PACKETS:,} packets", l4_ms, None, None, len(compact(l4))],
    ]
    print_table(
        f"RCA tools (embedded store, median of {RUNS}; scale {SCALE:g}; "
        f"call_latency rows for 1 h: {histogram_rows:,})",
        ["answer", "data", "netrecall ms", "raw SQL ms", "raw / netrecall", "answer bytes"],
        [
            [r[0], r[1], r[2], r[3] if r[3] is not None else "-", r[4] if r[4] is not None else "-", r[5]]
            for r in rows
        ],
    )
    sizes = _tshark_sizes()
    if sizes:
        conv, expert, ours = sizes
        print_table(
            "Answer size on the loss incident (tests/captures/incidents/loss.pcap)",
            ["answer", "bytes", "vs list_l4_flows(aggregate=workload)"],
            [
                ["tshark -z conv,tcp", conv, conv / ours],
                ["tshark -z expert,note", expert, expert / ours],
                ["list_l4_flows(aggregate=workload)", ours, 1.0],
            ],
        )
    ok = verdict("latency per edge p50 <= 300 ms", lat_ms <= 300, f"{lat_ms:.0f} ms")
    ok &= verdict("window comparison p50 <= 1 s", cmp_ms <= 1000, f"{cmp_ms:.0f} ms")
    ok &= verdict("L4 flow summary p50 <= 1 s", l4_ms <= 1000, f"{l4_ms:.0f} ms")
    print("  " + json.dumps({"top_change": (cmp["changes"] or [{}])[0].get("summary", "")})[:200])
    return ok


if __name__ == "__main__":
    import sys

    sys.exit(0 if run() else 1)
