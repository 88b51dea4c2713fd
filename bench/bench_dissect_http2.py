"""Dissection of the HTTP/2 + gRPC benchmark capture (210k calls) vs tshark's HTTP/2 field pass.

The capture (bench/make_h2_capture.py) is imported once into an embedded store under bench/out (not
timed: that is the import benchmark's job); each run empties api_calls and the watermark, then times
`netrecall dissect` in its own process (wall time, peak RSS of that process) next to
`tshark -r FILE -d tcp.port==50051,http2 -Y http2 -T fields -e http2.streamid -e http2.headers.method
-e http2.headers.path -e http2.headers.status` on the same file.
Targets: at least 2x faster than tshark, peak RSS at most 1 GB, the same number of calls.
"""

from __future__ import annotations

import json
import shutil
import sys

from bench.common import OUT, in_child, prepare_dissect_store, print_table, run_measured, verdict
from bench.make_h2_capture import CALLS_PER_CONNECTION, CONNECTIONS, PORT, benchmark_capture

STORE_DIR = OUT / "dissect-h2-store"
STORE_URL = f"chdb://{STORE_DIR}"
RSS_LIMIT_MB = 1024
SPEEDUP = 2.0


def _stored_calls() -> dict[str, int]:
    code = f"""
import json
from netrecall.store import open_store
store = open_store({STORE_URL!r})
rows = store.rows("SELECT protocol, count(), countIf(partial) FROM api_calls FINAL GROUP BY protocol")
print(json.dumps({{p: [n, partial] for p, n, partial in rows}}))
"""
    return json.loads(in_child(code))


def run() -> bool:
    capture = benchmark_capture()
    tshark = shutil.which("tshark")
    if tshark is None:
        print("  tshark is not installed: run `make bench`, which installs it")
        return False
    packets = prepare_dissect_store(STORE_URL, capture)
    expected = CONNECTIONS * CALLS_PER_CONNECTION

    ours = run_measured(
        [sys.executable, "-m", "netrecall", "dissect", "--store", STORE_URL, "--format", "json"]
    )
    summary = json.loads(ours.stdout)[0]
    theirs = run_measured(
        [
            tshark,
            "-r",
            str(capture),
            "-d",
            f"tcp.port=={PORT},http2",
            "-Y",
            "http2",
            "-T",
            "fields",
            "-e",
            "http2.streamid",
            "-e",
            "http2.headers.method",
            "-e",
            "http2.headers.path",
            "-e",
            "http2.headers.status",
        ]
    )
    tshark_requests = sum(
        len(line.split("\t")[1].split(","))
        for line in theirs.stdout.splitlines()
        if line.split("\t")[1:2] != [""]
    )
    stored = _stored_calls()
    calls = sum(n for protocol, (n, _) in stored.items() if protocol in ("http", "grpc"))
    partial = sum(p for _, (_, p) in stored.items())
    print_table(
        f"dissection of {capture.name} ({packets:,} packets, {expected:,} HTTP/2 and gRPC calls)",
        ["tool", "seconds", "calls/s", "packets/s", "peak RSS MB", "calls"],
        [
            [
                "netrecall dissect",
                ours.seconds,
                calls / ours.seconds,
                packets / ours.seconds,
                ours.peak_rss_mb,
                calls,
            ],
            [
                "tshark -Y http2 -T fields",
                theirs.seconds,
                tshark_requests / theirs.seconds,
                packets / theirs.seconds,
                theirs.peak_rss_mb,
                tshark_requests,
            ],
        ],
    )
    print(f"  netrecall: {', '.join(f'{p} {n:,}' for p, (n, _) in sorted(stored.items()))}")
    ratio = theirs.seconds / ours.seconds
    ok = verdict("speed", ratio >= SPEEDUP, f"{ratio:.2f}x tshark, target >= {SPEEDUP:.0f}x")
    ok &= verdict(
        "memory",
        ours.peak_rss_mb <= RSS_LIMIT_MB,
        f"{ours.peak_rss_mb:,.0f} MB peak RSS, target <= {RSS_LIMIT_MB} MB",
    )
    ok &= verdict(
        "same calls",
        calls == tshark_requests == expected and partial == 0 and not summary["errors"],
        f"{calls:,} calls vs tshark's {tshark_requests:,} requests ({expected:,} made), {partial} partial",
    )
    return ok
