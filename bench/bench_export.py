"""Export benchmark: a ~1% slice of the 1M-packet capture out of the store vs tshark on the original file.

The store is an embedded chDB under bench/out/export-store, loaded once with `netrecall import` (kept while
the capture is unchanged). The capture is loopback HTTP, so every packet is 127.0.0.1 <-> 127.0.0.1: the
~1% slice is one client connection, selected by its port (`--port P` vs `tshark -Y tcp.port==P`). A full
export (every packet) then checks that peak RSS stays bounded whatever the slice size. The same slice is
exported again from the same data served as a ClickHouse server store (the HTTP front of tests/, engine
in its own process): that is the exporting process's footprint without the ~220 MB that merely loading
libchdb costs.
Targets: the 1% export at least as fast as tshark; export peak RSS <= 300 MB (both exports).
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from itertools import zip_longest
from pathlib import Path

from bench.common import OUT, print_table, run_measured, verdict
from bench.make_capture import benchmark_capture
from netrecall.timeutil import format_time_ns

STORE = OUT / "export-store"
RSS_LIMIT_MB = 300.0
PORT_PROFILE = """
import json, sys
from netrecall.store import open_store
store = open_store(sys.argv[1])
first, last = store.rows("SELECT toUnixTimestamp64Nano(min(ts)), toUnixTimestamp64Nano(max(ts)) "
                         "FROM packets")[0]
cut = first + (last - first) // 2
rows = store.rows("SELECT if(src_port < dst_port, dst_port, src_port) AS client, count() FROM packets "
                  "WHERE l4 = 6 AND toUnixTimestamp64Nano(ts) < {cut:Int64} GROUP BY client", {"cut": cut})
print(json.dumps({"total": store.scalar("SELECT count() FROM packets"), "cut": cut, "ports": rows}))
"""
FLOOR = """
import sys
from netrecall.store import open_store
open_store(sys.argv[1]).scalar("SELECT count() FROM packets")
"""


def _store_url() -> str:
    return f"chdb://{STORE}"


def _load(capture: Path) -> None:
    """Import the capture once; the marker ties the store to the capture's size and mtime."""
    marker = STORE / "loaded-from.json"
    identity = {"file": str(capture), "size": capture.stat().st_size, "mtime": capture.stat().st_mtime}
    if marker.exists() and json.loads(marker.read_text()) == identity:
        return
    shutil.rmtree(STORE, ignore_errors=True)
    STORE.mkdir(parents=True)
    took = run_measured([sys.executable, "-m", "netrecall", "import", str(capture), "--store", _store_url()])
    print(f"  imported {capture.name} in {took.seconds:.1f} s (peak RSS {took.peak_rss_mb:.0f} MB)")
    marker.write_text(json.dumps(identity))


@contextmanager
def _served_over_http():
    """The store's data behind the ClickHouse HTTP front (its own process, the only opener of the path)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    front = Path(__file__).parent.parent / "tests" / "chfront.py"
    proc = subprocess.Popen(
        [sys.executable, str(front), "--path", str(STORE), "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        yield f"http://127.0.0.1:{port}/netrecall"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _one_percent_slice() -> tuple[int, int, int, int]:
    """(port, packets, total, cut): the connection whose packets before mid-capture (`cut`, epoch ns) are
    nearest 1% of the capture (each of the 48 keep-alive connections holds ~2% over the whole run)."""
    out = subprocess.run(
        [sys.executable, "-c", PORT_PROFILE, _store_url()], capture_output=True, text=True, check=True
    ).stdout
    profile = json.loads(out)
    total = profile["total"]
    port, count = min(profile["ports"], key=lambda row: abs(row[1] / total - 0.01))
    return port, count, total, profile["cut"]


def _same_packets(ours: Path, reference: Path) -> bool:
    """Packet by packet, streamed (both files can be large)."""
    from netrecall.query.pcapfile import iter_packets

    for mine, theirs in zip_longest(iter_packets(str(ours)), iter_packets(str(reference))):
        if mine is None or theirs is None or mine[0] != theirs[0] or mine[2:] != theirs[2:]:
            return False
    return True


def run() -> bool:
    for tool in ("tshark",):
        if not shutil.which(tool):
            print(f"  {tool} is not installed")
            return False
    capture = benchmark_capture()
    _load(capture)
    port, count, total, cut = _one_percent_slice()
    until = format_time_ns(cut)
    window = f"frame.time_epoch < {cut // 1_000_000_000}.{cut % 1_000_000_000:09d}"
    slice_out, ref_out, full_out = OUT / "export-slice.pcap", OUT / "export-ref.pcap", OUT / "export-all.pcap"
    display_filter = f"tcp.port=={port} and {window}"
    tshark = run_measured(
        ["tshark", "-r", str(capture), "-Y", display_filter, "-F", "pcap", "-w", str(ref_out)]
    )
    export = [sys.executable, "-m", "netrecall", "export", "pcap", "--store", _store_url()]
    ours = run_measured([*export, "-o", str(slice_out), "--port", str(port), "--until", until])
    floor = run_measured([sys.executable, "-c", FLOOR, _store_url()])
    full = run_measured([*export, "-o", str(full_out)])
    identical = _same_packets(slice_out, ref_out)
    server_out = OUT / "export-server.pcap"
    with _served_over_http() as server_url:
        server_export = [sys.executable, "-m", "netrecall", "export", "pcap", "--store", server_url]
        server = run_measured([*server_export, "-o", str(server_out), "--port", str(port), "--until", until])
    identical_server = _same_packets(server_out, ref_out)
    full_manifest = json.loads(Path(str(full_out) + ".manifest.json").read_text())
    full_packets, total_bytes = full_manifest["packets"], full_manifest["captured_bytes"]
    print_table(
        f"export: {count:,} of {total:,} packets ({100 * count / total:.2f}%: port {port}, first half) "
        f"from a {capture.stat().st_size / 1e6:.0f} MB capture",
        ["tool", "seconds", "peak RSS MB", "packets"],
        [
            [f"tshark -Y '{display_filter}' -w", tshark.seconds, tshark.peak_rss_mb, count],
            [f"netrecall export pcap --port {port} --until {until}", ours.seconds, ours.peak_rss_mb, count],
            ["netrecall export pcap (everything)", full.seconds, full.peak_rss_mb, full_packets],
            ["floor: open the chDB store, one count()", floor.seconds, floor.peak_rss_mb, ""],
            ["same slice, server store (HTTP; engine elsewhere)", server.seconds, server.peak_rss_mb, count],
        ],
    )
    for path in (slice_out, ref_out, full_out, server_out):
        path.unlink(missing_ok=True)
        Path(str(path) + ".manifest.json").unlink(missing_ok=True)
    ok = verdict("same packets as tshark", identical, "packet by packet: timestamps, lengths, bytes")
    ok &= verdict("same packets from a server store", identical_server, "packet by packet")
    ok &= verdict("everything exported", full_packets == total, f"{full_packets:,} of {total:,}")
    ok &= verdict(
        "1% slice at least as fast as tshark",
        ours.seconds <= tshark.seconds,
        f"{ours.seconds:.2f} s vs {tshark.seconds:.2f} s, ratio {tshark.seconds / ours.seconds:.1f}x",
    )
    peak = max(ours.peak_rss_mb, full.peak_rss_mb)
    ok &= verdict(
        "export peak RSS <= 300 MB",
        peak <= RSS_LIMIT_MB,
        f"{peak:.0f} MB at most (full export included); opening the embedded store alone peaks at "
        f"{floor.peak_rss_mb:.0f} MB (libchdb's resident code pages are ~240 MB of it)",
    )
    verdict(
        "export peak RSS <= 300 MB from a server store (informative)",
        server.peak_rss_mb <= RSS_LIMIT_MB,
        f"{server.peak_rss_mb:.0f} MB: the exporting process without libchdb loaded",
    )
    verdict(
        "memory bounded by the chunking, not the export size (informative)",
        full.peak_rss_mb - floor.peak_rss_mb <= 200,
        f"slice {ours.peak_rss_mb - floor.peak_rss_mb:+.0f} MB, everything ({full_packets:,} packets, "
        f"{total_bytes / 1e6:.0f} MB of frames) {full.peak_rss_mb - floor.peak_rss_mb:+.0f} MB over floor",
    )
    return ok


if __name__ == "__main__":
    sys.exit(0 if run() else 1)
