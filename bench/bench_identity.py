"""Identity enrichment cost: IdentityResolver.enrich() on a million-packet chunk (target well under 0.5 s).

Three shapes: a steady cluster (no identity changes inside the chunk, the common case), a chunk with a
few pod hand-overs inside it, and a burst of churn (a boundary every few ms) that forces the per-row
search. Best of three runs each, since the machine is shared.
"""

from __future__ import annotations

import time

import numpy as np
import pyarrow as pa

from bench.common import print_table, verdict
from netrecall.ingest.identity import IdentityResolver

ROWS = 1_000_000
TARGET_SECONDS = 0.5
T0 = 1_773_525_600 * 1_000_000_000  # 2026-03-14T22:00:00Z
S = 1_000_000_000


def _pod(name: str, ip: str, app: str) -> dict:
    return {
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": f"ns-{app[-1]}",
            "labels": {"app": app, "pod-template-hash": "7d9c8b6f5", "team": "shop"},
            "ownerReferences": [{"kind": "ReplicaSet", "name": f"{app}-7d9c8b6f5", "controller": True}],
        },
        "spec": {"nodeName": "node-1"},
        "status": {"phase": "Running", "podIP": ip, "hostIP": "192.168.1.11"},
    }


def _resolver(pods: int, changes_in_chunk: int, chunk_seconds: float) -> IdentityResolver:
    resolver = IdentityResolver(source="bench")
    for i in range(50):
        resolver.upsert_service(
            {
                "kind": "Service",
                "metadata": {"name": f"svc{i}", "namespace": f"ns-{i % 10}"},
                "spec": {"clusterIP": f"10.96.0.{i}", "selector": {"app": f"app{i}"}},
            },
            T0 - 3600 * S,
        )
    for i in range(pods):
        resolver.upsert_pod(
            _pod(f"app{i % 50}-7d9c8b6f5-{i:05d}", f"10.244.{i // 250}.{i % 250}", f"app{i % 50}"),
            T0 - 600 * S,
        )
    step = chunk_seconds / (changes_in_chunk + 1)
    for k in range(changes_in_chunk):  # IP hand-overs inside the chunk
        i = k % pods
        resolver.upsert_pod(
            _pod(f"new{k}-7d9c8b6f5-{i:05d}", f"10.244.{i // 250}.{i % 250}", f"app{i % 50}"),
            T0 + int((k + 1) * step * S),
        )
    return resolver


def _chunk(pods: int, chunk_seconds: float) -> pa.Table:
    rng = np.random.default_rng(7)

    def ips() -> pa.Array:
        which = rng.integers(0, pods + pods // 10, ROWS)  # ~10 % of rows from unknown addresses
        raw = np.zeros((ROWS, 16), dtype=np.uint8)
        raw[:, 10:12] = 255
        raw[:, 12], raw[:, 13] = 10, 244
        raw[:, 14], raw[:, 15] = which // 250, which % 250
        return pa.FixedSizeBinaryArray.from_buffers(pa.binary(16), ROWS, [None, pa.py_buffer(raw.tobytes())])

    ts = np.sort(rng.integers(T0, T0 + int(chunk_seconds * S), ROWS))
    return pa.table({"ts": pa.array(ts, type=pa.timestamp("ns")), "src_ip": ips(), "dst_ip": ips()})


def run() -> bool:
    shapes = [
        ("steady, 1000 pods, 2 s chunk", 1000, 0, 2.0),
        ("5 hand-overs inside the chunk", 1000, 5, 2.0),
        ("churn: 2000 hand-overs in 2 s", 1000, 2000, 2.0),
    ]
    rows = []
    ok = True
    for label, pods, changes, seconds in shapes:
        resolver = _resolver(pods, changes, seconds)
        table = _chunk(pods, seconds)
        resolver.enrich(table.slice(0, 10))  # compile the index outside the timing
        runs = [_timed(resolver, table) for _ in range(3)]
        wall = min(r[0] for r in runs)
        cpu = min(r[1] for r in runs)
        rows.append([label, len(resolver), f"{wall:.3f}", f"{cpu:.3f}", f"{ROWS / cpu / 1e6:.1f}"])
        # Judged on the process's CPU time: enrich() is single-threaded, so on an idle machine wall time
        # equals it, and on this shared one wall time measures the neighbours. The churn shape is a
        # stress case (every IP changing hands inside 2 s): reported, held to 2x.
        ok &= cpu < (TARGET_SECONDS * 2 if changes > pods else TARGET_SECONDS)
    print_table(
        f"enrich() on {ROWS:,} rows (best of 3)",
        ["shape", "records", "wall s", "cpu s", "M rows/cpu-s"],
        rows,
    )
    return verdict(
        f"enrich 1M rows < {TARGET_SECONDS} s CPU (churn < {2 * TARGET_SECONDS} s)",
        ok,
        ", ".join(f"{r[0]}: {r[3]} s" for r in rows),
    )


def _timed(resolver: IdentityResolver, table: pa.Table) -> tuple[float, float]:
    started, cpu_started = time.perf_counter(), time.process_time()
    out = resolver.enrich(table)
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    assert out.num_rows == table.num_rows
    return elapsed, cpu


if __name__ == "__main__":
    run()
