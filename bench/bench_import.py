"""`netrecall import` against tshark's field pass on the same real HTTP capture (>= 1M packets).

Both run as subprocesses, one after the other, with their own wall time and peak RSS: netrecall imports
into a fresh embedded store under bench/out (RUNS times, each into its own new store; the median run is
reported, since this 2-core machine is noisy); tshark prints time and 5-tuple fields to /dev/null. Then the
stored size of `packets` (system.parts bytes_on_disk) is set against the pcap's size.

Two rates are printed for netrecall: the whole command (Python, the chDB engine and pandas, which chDB
loads, start in ~0.7 s before the first packet) and the importer's own clock (hashing, reading, decoding,
inserting, flows: the rate a large file sees). The 500k packets/s target is judged on the importer's clock;
the 5x ratio against tshark on the whole command.
Peak RSS "whatever the file size" is checked on a ~12M-packet file (the capture's records 11 times over,
written under bench/out and deleted afterwards): the import, then a process that opens the store and lets
its background merges of the import's parts finish, which is where a large file costs memory.
Targets (issue 2): >= 5x tshark's packets/s, >= 500k packets/s, stored <= 0.6x pcap, peak RSS <= 1 GB.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

from bench.common import OUT, Measurement, print_table, run_measured, verdict
from bench.make_capture import benchmark_capture

TSHARK_FIELDS = ["frame.time_epoch", "ip.src", "ip.dst", "tcp.srcport", "tcp.dstport"]
RUNS = 5
LARGE_COPIES = 10  # the large-file check: the benchmark capture's records 11 times over (~12M packets)
# A later process opening the store merges what the import left: wait until its merges are done.
MERGE_AFTER = (
    "import sys, time; from netrecall.store import open_store; s = open_store(sys.argv[1]); idle = 0\n"
    "while idle < 3:\n"
    "    time.sleep(1); idle = idle + 1 if not s.scalar('SELECT count() FROM system.merges') else 0\n"
    "print(s.scalar(\"SELECT count() FROM system.parts WHERE active AND table = 'packets'\"))"
)


def _stored_bytes(store_url: str) -> dict[str, int]:
    code = (
        "import sys, json; from netrecall.store import open_store; s = open_store(sys.argv[1]); "
        'print(json.dumps(dict(s.rows("SELECT table, sum(bytes_on_disk) FROM system.parts WHERE active '
        'AND database = currentDatabase() GROUP BY table"))))'
    )
    out = subprocess.run([sys.executable, "-c", code, store_url], capture_output=True, text=True, check=True)
    return {k: int(v) for k, v in json.loads(out.stdout).items()}


def _import_once(capture: Path, store_dir: Path) -> tuple[Measurement, str, int, float, Path]:
    """One `netrecall import` into a new store: measurement, summary, packets, importer seconds, store."""
    command = [sys.executable, "-m", "netrecall", "import", str(capture), "--store", f"chdb://{store_dir}"]
    ours = run_measured(command)
    line = ours.stdout.strip().splitlines()[-1]
    found = re.search(r"imported ([\d,]+) packets, .*, ([\d.]+) s \(", line)
    if not found:
        raise RuntimeError(f"unexpected import summary: {line!r}")
    return ours, line, int(found.group(1).replace(",", "")), float(found.group(2)), store_dir


def run() -> bool:
    capture = benchmark_capture()
    pcap_bytes = capture.stat().st_size
    stores = [OUT / f"bench-import-store-{i}" for i in range(RUNS)]
    for store_dir in stores:
        shutil.rmtree(store_dir, ignore_errors=True)
    # every run first, stores deleted only afterwards: see bench/__main__.py on freed inodes
    runs = sorted((_import_once(capture, d) for d in stores), key=lambda r: r[0].seconds)
    ours, line, packets, importer_seconds, store_dir = runs[len(runs) // 2]
    fields = " ".join(f"-e {f}" for f in TSHARK_FIELDS)
    theirs = run_measured(["sh", "-c", f"exec tshark -r '{capture}' -T fields {fields} > /dev/null 2>&1"])
    stored = _stored_bytes(f"chdb://{store_dir}")

    our_rate = packets / ours.seconds
    importer_rate = packets / importer_seconds
    their_rate = packets / theirs.seconds
    print_table(
        f"import of {capture.name}: {packets:,} packets, {pcap_bytes / 1e6:,.0f} MB (real loopback HTTP); "
        f"netrecall: median of {RUNS} runs ({', '.join(f'{r[0].seconds:.2f}' for r in runs)} s)",
        ["tool", "seconds", "packets/s", "peak RSS MB"],
        [
            ["netrecall import, whole command (chDB)", ours.seconds, our_rate, ours.peak_rss_mb],
            ["netrecall import, importer's clock", importer_seconds, importer_rate, ""],
            ["tshark -T fields (5-tuple)", theirs.seconds, their_rate, theirs.peak_rss_mb],
            ["ratio netrecall/tshark (whole commands)", "", our_rate / their_rate, ""],
        ],
    )
    print(f"  netrecall: {line}")
    packets_bytes = stored.get("packets", 0)
    print_table(
        "stored bytes",
        ["what", "bytes", "x pcap"],
        [
            ["pcap file", pcap_bytes, 1.0],
            ["packets table", packets_bytes, packets_bytes / pcap_bytes],
            ["flows table", stored.get("flows", 0), stored.get("flows", 0) / pcap_bytes],
        ],
    )
    ok = verdict(">= 5x tshark", our_rate >= 5 * their_rate, f"{our_rate / their_rate:.1f}x")
    ok &= verdict(
        ">= 500k packets/s",
        importer_rate >= 500_000,
        f"{importer_rate:,.0f} packets/s on the importer's clock, {our_rate:,.0f} for the whole command",
    )
    ok &= verdict(
        "stored <= 0.6x pcap", packets_bytes <= 0.6 * pcap_bytes, f"{packets_bytes / pcap_bytes:.3f}x"
    )
    peak = max(r[0].peak_rss_mb for r in runs)
    ok &= verdict("peak RSS <= 1 GB", peak <= 1024, f"{peak:,.0f} MB, the highest of the {RUNS} runs")
    for store_dir in stores:
        shutil.rmtree(store_dir, ignore_errors=True)
    return _large_file(capture) and ok


def _large_file(capture: Path) -> bool:
    """Peak RSS must not grow with the file: a ~12M-packet import, then a process merging its parts."""
    from tests.import_reference import repeated_pcap

    large = OUT / "http-large.pcap"
    store_dir = OUT / "bench-import-large-store"
    shutil.rmtree(store_dir, ignore_errors=True)
    try:
        repeated_pcap(capture, large, LARGE_COPIES * capture.stat().st_size)
        imported, _, packets, importer_seconds, _ = _import_once(large, store_dir)
        merged = run_measured([sys.executable, "-c", MERGE_AFTER, f"chdb://{store_dir}"])
        print_table(
            f"large file: {large.name}, {packets:,} packets, {large.stat().st_size / 1e9:,.1f} GB",
            ["step", "seconds", "packets/s", "peak RSS MB"],
            [
                [
                    "netrecall import, whole command",
                    imported.seconds,
                    packets / imported.seconds,
                    imported.peak_rss_mb,
                ],
                ["netrecall import, importer's clock", importer_seconds, packets / importer_seconds, ""],
                [
                    f"next process, merges to {merged.stdout.strip()} parts",
                    merged.seconds,
                    "",
                    merged.peak_rss_mb,
                ],
            ],
        )
        peak = max(imported.peak_rss_mb, merged.peak_rss_mb)
        return verdict("peak RSS <= 1 GB at ~12M packets", peak <= 1024, f"{peak:,.0f} MB")
    finally:
        large.unlink(missing_ok=True)
        shutil.rmtree(store_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(0 if run() else 1)
