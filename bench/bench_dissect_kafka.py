"""Kafka dissection of a replicated librdkafka conversation vs tshark 4.0's Kafka dissector on the same file.

The capture (bench/make_kafka_capture.py: the recorded test conversation copied 4,000 times with new
addresses, ports and sequence numbers) is imported once into an embedded store under bench/out (not
timed); each run empties api_calls and the watermark, then times `netrecall dissect` in its own process
(wall time, peak RSS of that process) next to
`tshark -r FILE -d tcp.port==29092,kafka -Y kafka -T fields -e kafka.api_key -e kafka.correlation_id
-e kafka.client_id -e kafka.topic_name -e kafka.error` (the fields netrecall keeps).
Targets: at least 2x faster than tshark, peak RSS at most 1 GB, as many calls as tshark sees requests.
"""

from __future__ import annotations

import json
import shutil
import sys

from bench.common import OUT, in_child, prepare_dissect_store, print_table, run_measured, verdict
from bench.make_kafka_capture import BROKER_PORTS, benchmark_capture

STORE_DIR = OUT / "dissect-kafka-store"
STORE_URL = f"chdb://{STORE_DIR}"
RSS_LIMIT_MB = 1024
SPEEDUP = 2.0


def _stored_kafka_calls() -> tuple[int, int]:
    code = f"""
from netrecall.store import open_store
store = open_store({STORE_URL!r})
print(*store.rows(
    "SELECT count(), countIf(partial OR error != '') FROM api_calls FINAL WHERE protocol = 'kafka'"
)[0])
"""
    calls, flagged = in_child(code).split()
    return int(calls), int(flagged)


def run() -> bool:
    capture = benchmark_capture()
    tshark = shutil.which("tshark")
    if tshark is None:
        print("  tshark is not installed: run `make bench`, which installs it")
        return False
    shutil.rmtree(STORE_DIR, ignore_errors=True)  # a store of its own each run
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
            f"tcp.port=={BROKER_PORTS[1]},kafka",
            "-Y",
            "kafka",
            "-T",
            "fields",
            "-e",
            "tcp.srcport",
            "-e",
            "kafka.api_key",
            "-e",
            "kafka.correlation_id",
            "-e",
            "kafka.client_id",
            "-e",
            "kafka.topic_name",
            "-e",
            "kafka.error",
        ]
    )
    tshark_requests = sum(
        1
        for line in theirs.stdout.split("\n")
        if line and int(line.split("\t")[0]) not in BROKER_PORTS and line.split("\t")[1]
    )
    calls, flagged = _stored_kafka_calls()
    print_table(
        f"Kafka dissection of {capture.name} ({packets:,} packets)",
        ["tool", "seconds", "packets/s", "calls/s", "peak RSS MB", "Kafka calls"],
        [
            [
                "netrecall dissect",
                ours.seconds,
                packets / ours.seconds,
                calls / ours.seconds,
                ours.peak_rss_mb,
                calls,
            ],
            [
                "tshark -Y kafka -T fields",
                theirs.seconds,
                packets / theirs.seconds,
                tshark_requests / theirs.seconds,
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
        calls == tshark_requests and flagged == 0 and not summary["parse_errors"],
        f"{calls:,} calls vs tshark's {tshark_requests:,} requests, {flagged} partial or flagged",
    )
    return ok
