"""Dissection of the TLS handshake benchmark capture vs tshark's TLS handshake field pass on the same file.

The capture (bench/make_tls_capture.py: 15 recorded connections replicated into 60,000) is imported once
into an embedded store under bench/out (not timed: that is the import benchmark's job); each run empties
api_calls and the watermark, then times `netrecall dissect` in its own process (wall time, CPU time, peak
RSS of that process) next to `tshark -r FILE -Y tls.handshake -T fields -e tls.handshake.type
-e tls.handshake.extensions_server_name -e tls.handshake.ja3 -e tls.handshake.ja3s
-e tls.handshake.ciphersuite -e tls.alert_message.desc`.
Targets: at least 2x faster than tshark, peak RSS at most 1 GB, one ClientHello row per ClientHello.
"""

from __future__ import annotations

import json
import resource
import shutil
import sys

from bench.common import OUT, Measurement, in_child, prepare_dissect_store, print_table, run_measured, verdict
from bench.make_tls_capture import tls_capture

STORE_DIR = OUT / "dissect-tls-store"
STORE_URL = f"chdb://{STORE_DIR}"
RSS_LIMIT_MB = 1024
SPEEDUP = 2.0
TSHARK_FIELDS = [
    "tls.handshake.type",
    "tls.handshake.extensions_server_name",
    "tls.handshake.ja3",
    "tls.handshake.ja3s",
    "tls.handshake.ciphersuite",
    "tls.alert_message.desc",
]


def _stored_hellos() -> tuple[int, int]:
    """(tls rows with a ClientHello, rows of any other protocol)."""
    code = f"""
from netrecall.store import open_store
store = open_store({STORE_URL!r})
print(store.scalar("SELECT count() FROM api_calls FINAL WHERE protocol = 'tls' AND method = 'ClientHello'"),
      store.scalar("SELECT count() FROM api_calls FINAL WHERE protocol != 'tls'"))
"""
    hellos, others = in_child(code).split()
    return int(hellos), int(others)


def _measured_with_cpu(command: list[str]) -> tuple[Measurement, float]:
    """run_measured, plus the CPU seconds (user + system) of that child: on the shared 2-core machine the
    wall clock also counts other people's work, the CPU time does not."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    measurement = run_measured(command)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return measurement, cpu


def run() -> bool:
    capture = tls_capture()
    tshark = shutil.which("tshark")
    if tshark is None:
        print("  tshark is not installed: run `make bench`, which installs it")
        return False
    packets = prepare_dissect_store(STORE_URL, capture)

    ours, our_cpu = _measured_with_cpu(
        [sys.executable, "-m", "netrecall", "dissect", "--store", STORE_URL, "--format", "json"]
    )
    summary = json.loads(ours.stdout)[0]
    command = [tshark, "-r", str(capture), "-Y", "tls.handshake", "-T", "fields"]
    for field in TSHARK_FIELDS:
        command += ["-e", field]
    theirs, their_cpu = _measured_with_cpu(command)
    tshark_hellos = sum(1 for line in theirs.stdout.splitlines() if line.split("\t")[0].split(",")[0] == "1")
    hellos, others = _stored_hellos()
    rows = summary["calls"].get("tls", 0)
    print_table(
        f"TLS handshakes in {capture.name} ({packets:,} packets)",
        ["tool", "seconds", "CPU seconds", "connections/s", "peak RSS MB", "ClientHellos"],
        [
            ["netrecall dissect", ours.seconds, our_cpu, rows / ours.seconds, ours.peak_rss_mb, hellos],
            [
                "tshark -Y tls.handshake -T fields",
                theirs.seconds,
                their_cpu,
                rows / theirs.seconds,
                theirs.peak_rss_mb,
                tshark_hellos,
            ],
        ],
    )
    ratio = theirs.seconds / ours.seconds
    detail = f"{ratio:.2f}x tshark (CPU time {their_cpu / our_cpu:.2f}x), target >= {SPEEDUP:.0f}x"
    ok = verdict("speed", ratio >= SPEEDUP, detail)
    ok &= verdict(
        "memory",
        ours.peak_rss_mb <= RSS_LIMIT_MB,
        f"{ours.peak_rss_mb:,.0f} MB peak RSS, target <= {RSS_LIMIT_MB} MB",
    )
    ok &= verdict(
        "same handshakes",
        hellos == tshark_hellos and others == 0 and summary["partial"] == 0,
        f"{hellos:,} ClientHello rows ({rows:,} tls rows) vs tshark's {tshark_hellos:,} ClientHellos, "
        f"{others} rows of other protocols, {summary['partial']} partial",
    )
    return ok
