"""Dissection of the 1M-packet HTTP benchmark capture vs tshark's HTTP field pass on the same file.

The capture is imported once into an embedded store under bench/out (not timed: that is the import
benchmark's job); each run empties api_calls and the watermark, then times `netrecall dissect` in its
own process (wall time, peak RSS of that process) next to
`tshark -r FILE -Y http -T fields -e http.request.method -e http.request.uri -e http.response.code`.
Targets: at least 2x faster than tshark, peak RSS at most 1 GB.
"""

from __future__ import annotations

import json
import shutil
import sys

from bench.common import OUT, in_child, prepare_dissect_store, print_table, run_measured, verdict
from bench.make_capture import PORT, benchmark_capture

STORE_DIR = OUT / "dissect-store"
STORE_URL = f"chdb://{STORE_DIR}"
RSS_LIMIT_MB = 1024
SPEEDUP = 2.0


def _stored_http_calls() -> int:
    code = f"""
from netrecall.store import open_store
store = open_store({STORE_URL!r})
print(store.scalar("SELECT count() FROM api_calls FINAL WHERE protocol = 'http'"))
"""
    return int(in_child(code))


def run() -> bool:
    capture = benchmark_capture()
    tshark = shutil.which("tshark")
    if tshark is None:
        print("  tshark is not installed: run `make bench`, which installs it")
        return False
    packets = prepare_dissect_store(STORE_URL, capture)

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
            f"tcp.port=={PORT},http",
            "-Y",
            "http",
            "-T",
            "fields",
            "-e",
            "http.request.method",
            "-e",
            "http.request.uri",
            "-e",
            "http.response.code",
        ]
    )
    tshark_requests = sum(1 for line in theirs.stdout.splitlines() if line.split("\t")[0])
    calls = _stored_http_calls()
    print_table(
        f"dissection of {capture.name} ({packets:,} packets)",
        ["tool", "seconds", "packets/s", "peak RSS MB", "HTTP calls"],
        [
            ["netrecall dissect", ours.seconds, packets / ours.seconds, ours.peak_rss_mb, calls],
            [
                "tshark -Y http -T fields",
                theirs.seconds,
                packets / theirs.seconds,
                theirs.peak_rss_mb,
                tshark_requests,
            ],
        ],
    )
    ratio = theirs.seconds / ours.seconds
    ok = verdict("speed", ratio >= SPEEDUP, f"{ratio:.2f}x tshark, target >= {SPEEDUP:.0f}x")
    ok &= verdict(
        "memory",
        ours.peak_rss_mb <= RSS_LIMIT_MB,
        f"{ours.peak_rss_mb:,.0f} MB peak RSS, target <= {RSS_LIMIT_MB} MB",
    )
    ok &= verdict(
        "same calls",
        calls == tshark_requests and summary["partial"] == 0,
        f"{calls:,} calls vs tshark's {tshark_requests:,} requests, {summary['partial']} partial",
    )
    return ok
