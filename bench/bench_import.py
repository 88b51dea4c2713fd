"""`netrecall import` against tshark's field pass on the same real HTTP capture (>= 1M packets).

Both run as subprocesses, one after the other, with their own wall time and peak RSS: netrecall imports
into a fresh embedded store under bench/out; tshark prints time and 5-tuple fields to /dev/null. Then the
stored size of `packets` (system.parts bytes_on_disk) is set against the pcap's size.
Targets (issue 2): >= 5x tshark's packets/s, >= 500k packets/s, stored <= 0.6x pcap, peak RSS <= 1 GB.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys

from bench.common import OUT, print_table, run_measured, verdict
from bench.make_capture import benchmark_capture

TSHARK_FIELDS = ["frame.time_epoch", "ip.src", "ip.dst", "tcp.srcport", "tcp.dstport"]


def _stored_bytes(store_url: str) -> dict[str, int]:
    code = (
        "import sys, json; from netrecall.store import open_store; s = open_store(sys.argv[1]); "
        'print(json.dumps(dict(s.rows("SELECT table, sum(bytes_on_disk) FROM system.parts WHERE active '
        'AND database = currentDatabase() GROUP BY table"))))'
    )
    out = subprocess.run([sys.executable, "-c", code, store_url], capture_output=True, text=True, check=True)
    return {k: int(v) for k, v in json.loads(out.stdout).items()}


def run() -> bool:
    capture = benchmark_capture()
    pcap_bytes = capture.stat().st_size
    store_dir = OUT / "bench-import-store"
    shutil.rmtree(store_dir, ignore_errors=True)
    store_url = f"chdb://{store_dir}"

    ours = run_measured([sys.executable, "-m", "netrecall", "import", str(capture), "--store", store_url])
    line = ours.stdout.strip().splitlines()[-1]
    found = re.search(r"imported ([\d,]+) packets", line)
    packets = int(found.group(1).replace(",", "")) if found else 0
    fields = " ".join(f"-e {f}" for f in TSHARK_FIELDS)
    theirs = run_measured(["sh", "-c", f"exec tshark -r '{capture}' -T fields {fields} > /dev/null 2>&1"])
    stored = _stored_bytes(store_url)

    our_rate = packets / ours.seconds
    their_rate = packets / theirs.seconds
    print_table(
        f"import of {capture.name}: {packets:,} packets, {pcap_bytes / 1e6:,.0f} MB (real loopback HTTP)",
        ["tool", "seconds", "packets/s", "peak RSS MB"],
        [
            ["netrecall import (chDB)", ours.seconds, our_rate, ours.peak_rss_mb],
            ["tshark -T fields (5-tuple)", theirs.seconds, their_rate, theirs.peak_rss_mb],
            ["ratio netrecall/tshark", "", our_rate / their_rate, ""],
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
    ok &= verdict(">= 500k packets/s", our_rate >= 500_000, f"{our_rate:,.0f} packets/s")
    ok &= verdict(
        "stored <= 0.6x pcap", packets_bytes <= 0.6 * pcap_bytes, f"{packets_bytes / pcap_bytes:.3f}x"
    )
    ok &= verdict("peak RSS <= 1 GB", ours.peak_rss_mb <= 1024, f"{ours.peak_rss_mb:,.0f} MB")
    shutil.rmtree(store_dir, ignore_errors=True)
    return ok


if __name__ == "__main__":
    sys.exit(0 if run() else 1)
