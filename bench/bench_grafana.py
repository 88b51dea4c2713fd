"""Grafana dashboards on the embedded store: each dashboard's slowest panel, macros expanded as the
ClickHouse plugin does (tests/grafana_macros.py), over a 24 h range holding 10M API calls and the flows
of 50M packets, plus 24 h of agent_stats from 8 nodes.

Target: p50 <= 300 ms for every dashboard's slowest panel.

The rows are made by the engine (INSERT ... SELECT FROM numbers): 10M calls with bench/synthetic_calls.py
in call-graph mode (each of 40 workloads calls 3 others, each destination serves 4 routes with one method:
the shape of a cluster's traffic; in the default mode every call picks a random destination, route and
method, which made call_latency hold 5.8M per-minute rows for 10M calls, barely aggregated), and flows
directly (the panels read flows, never packets): 1.44M one-minute flow rows whose packet counts add up
to 50M, spread over 24 h, 8 nodes, 40 workloads in 8 namespaces. There is no reference tool to run side
by side (no Grafana server installs here); the figure beside each panel is the rows it returns.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import print_table, verdict

ROOT = Path(__file__).resolve().parent.parent
CALLS = 10_000_000
PACKETS = 50_000_000
FLOW_ROWS = 1_440_000  # 1,000 flows a minute for 24 h
START_S = 1_784_000_000  # a fixed day, so the store can be reused between runs
SPAN_S = 86_400
RUNS = 7
TARGET_MS = 300.0


def _fill(store) -> float:
    from bench.synthetic_calls import NAMESPACES, SERVICES, insert_synthetic_calls

    started = time.perf_counter()
    for part in range(10):
        insert_synthetic_calls(
            store, CALLS // 10, (START_S + part * 8640) * 10**9, span_s=8640, seed=1 + part, call_graph=True
        )
    ns = "[" + ", ".join(f"'{n}'" for n in NAMESPACES) + "]"
    svc = "[" + ", ".join(f"'{s}'" for s in SERVICES) + "]"
    per_row = PACKETS // FLOW_ROWS
    store.command(
        f"""
INSERT INTO flows (window_start, node, l4, ip_a, port_a, ip_b, port_b, first_ts, last_ts, packets_ab,
    bytes_ab, packets_ba, bytes_ba, tcp_flags_ab, tcp_flags_ba, syn_from, resets, data_segments,
    retransmissions,
    a_pod, a_namespace, a_service, a_workload, a_node, b_pod, b_namespace, b_service, b_workload, b_node)
SELECT toDateTime({START_S} + intDiv(number, 1000) * 60) AS window_start, concat('node-', toString(h % 8)),
    6, toIPv6(toIPv4(167772160 + h % 4096)), 30000 + h % 30000, toIPv6(toIPv4(167772160 + h2 % 4096)), 8080,
    toDateTime64(window_start, 9), toDateTime64(window_start, 9) + 59,
    {per_row // 2}, {per_row // 2} * 300, {per_row - per_row // 2}, {per_row - per_row // 2} * 900, 27, 27, 1,
    if(h % 50 = 0, 1, 0), {per_row} - 4, if(h % 20 = 0, h % 5, 0),
    concat({svc}[1 + h % 20], '-', toString(h % 50)), {ns}[1 + h % 8], {svc}[1 + h % 20],
    concat('Deployment/', {svc}[1 + h % 20]), concat('node-', toString(h % 8)),
    concat({svc}[1 + h2 % 20], '-', toString(h2 % 50)), {ns}[1 + h2 % 8], {svc}[1 + h2 % 20],
    concat('Deployment/', {svc}[1 + h2 % 20]), concat('node-', toString(h2 % 8))
FROM (SELECT number, cityHash64(number, 11) AS h, cityHash64(number, 12) AS h2 FROM numbers({FLOW_ROWS}))
"""
    )
    store.command(
        f"""
INSERT INTO agent_stats (ts, node, run_id, backend, interval_s, captured_packets, captured_bytes,
    kernel_drops, inserted_packets, batches, spool_batches, spool_bytes)
SELECT fromUnixTimestamp64Milli(toInt64({START_S} + intDiv(number, 8) * 10) * 1000),
    concat('node-', toString(number % 8)),
    concat('run-', toString(number % 8)), 'ebpf', 10, 200000 + number % 1000, 120000000, number % 97 = 0,
    200000, 10, 0, 0
FROM numbers({8 * SPAN_S // 10})
"""
    )
    return time.perf_counter() - started


def _worker(store_path: str) -> None:
    sys.path.insert(0, str(ROOT))
    from netrecall.schema.migrate import ensure_schema
    from netrecall.store import open_store
    from tests.grafana_macros import ALL, QueryContext, expand

    store = open_store(f"chdb://{store_path}")
    ensure_schema(store)
    generated_s = None
    if store.scalar("SELECT count() FROM api_calls") != CALLS:
        for table in ("api_calls", "flows", "agent_stats"):
            store.command(f"TRUNCATE TABLE {table}")
        generated_s = _fill(store)
    ctx = QueryContext(
        START_S, START_S + SPAN_S, interval_s=SPAN_S / 1000, variables={"namespace": [ALL], "node": [ALL]}
    )
    results = []
    for path in sorted((ROOT / "charts" / "netrecall" / "dashboards").glob("*.json")):
        for panel in json.loads(path.read_text())["panels"]:
            sql = expand(panel["targets"][0]["rawSql"], ctx)
            store.rows(sql)  # warm
            times = []
            for _ in range(RUNS):
                started = time.perf_counter()
                rows = store.rows(sql)
                times.append((time.perf_counter() - started) * 1000)
            results.append(
                {
                    "dashboard": path.stem,
                    "panel": panel["title"],
                    "p50_ms": statistics.median(times),
                    "rows": len(rows),
                }
            )
    print(json.dumps({"generated_s": generated_s, "results": results}))


def run() -> bool:
    store_path = Path(tempfile.gettempdir()) / "netrecall-bench-grafana" / "store"
    done = subprocess.run(
        [sys.executable, "-m", "bench.bench_grafana", str(store_path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    if done.returncode != 0:
        print(done.stderr[-2000:])
        return verdict("grafana", False, "the worker failed")
    report = json.loads(done.stdout.strip().splitlines()[-1])
    if report["generated_s"] is not None:
        print(f"generated 10M calls, flows of 50M packets and agent_stats in {report['generated_s']:.1f} s")
    rows = [(r["dashboard"], r["panel"][:48], f"{r['p50_ms']:.0f}", r["rows"]) for r in report["results"]]
    print_table("Grafana panels, 24 h range (p50 of 7 runs)", ["dashboard", "panel", "p50 ms", "rows"], rows)
    ok = True
    for dashboard in sorted({r["dashboard"] for r in report["results"]}):
        slowest = max(
            (r for r in report["results"] if r["dashboard"] == dashboard), key=lambda r: r["p50_ms"]
        )
        ok &= verdict(
            f"grafana {dashboard}",
            slowest["p50_ms"] <= TARGET_MS,
            f"slowest panel '{slowest['panel']}' p50 {slowest['p50_ms']:.0f} ms "
            f"(target <= {TARGET_MS:.0f} ms)",
        )
    return ok


if __name__ == "__main__":
    _worker(sys.argv[1])
