"""Bounded memory: peak RSS of every streaming path over the embedded store's own floor, for 1x and 10x
the benchmark capture (1.1M and 11M packets of real loopback HTTP).

Paths: `export pcap` of everything, `snapshot create` of everything, `snapshot export`, `dissect` of
everything, and the hub's ingest of the capture posted as agents' batches (the hub's peak, read from
/proc VmHWM). The floor is a process that opens the same store and runs one count() (libchdb's code
pages and the engine's caches: the same for every path). The reference is the size of the work: the
capture's bytes. What a writer leaves unmerged is merged first by a process of its own (OPTIMIZE ...
FINAL), reported on its own row: otherwise the next path would carry that merge's memory. Target: every
path <= floor + 150 MB at both sizes (NETRECALL_MEMORY_SCALES=1,10).
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path

from bench.common import OUT, print_table, run_measured, verdict
from bench.make_capture import benchmark_capture

LIMIT_MB = 150.0
SCALES = [int(s) for s in os.environ.get("NETRECALL_MEMORY_SCALES", "1,10").split(",")]
FLOOR = """
import sys
from netrecall.store import open_store
open_store(sys.argv[1]).scalar("SELECT count() FROM packets")
"""
# What a writer leaves unmerged, the next process that opens the embedded store merges (one background
# merge at a time): measured as its own row, so each path's row is the path itself.
SETTLE = """
import sys
from netrecall.store import open_store
store = open_store(sys.argv[1])
for table in sys.argv[2:]:
    store.command(f"OPTIMIZE TABLE {table} FINAL")
"""
TOKEN = "bench-memory-token"


def _shifted(source: Path, target: Path, shift_s: int) -> None:
    """The capture with every timestamp moved `shift_s` later (new bytes: imported as a new file)."""
    with source.open("rb") as src, target.open("wb") as out:
        out.write(src.read(24))
        while header := src.read(16):
            if len(header) < 16:
                break
            sec, usec, caplen, origlen = struct.unpack("<IIII", header)
            out.write(struct.pack("<IIII", sec + shift_s, usec, caplen, origlen))
            out.write(src.read(caplen))


def _cli(store: Path, *args: str):
    return run_measured([sys.executable, "-m", "netrecall", *args, "--store", f"chdb://{store}"])


def _hub_ingest(capture_files: list[Path], home: Path) -> tuple[float, float]:
    """(hub peak RSS MB, the hub's RSS right after start + one query): the capture posted as batches."""
    import httpx

    from netrecall.agent.sink import encode_stream
    from netrecall.ingest.capture_file import CaptureReader
    from netrecall.ingest.decode import decode_frames

    home.mkdir(parents=True, exist_ok=True)
    with __import__("socket").socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("NETRECALL_")}
    env["NETRECALL_HOME"] = str(home)
    command = [sys.executable, "-m", "netrecall", "serve", "--port", str(port), "--token", TOKEN]
    command += ["--store", f"chdb://{home / 'store'}", "--log-level", "warning"]
    hub = subprocess.Popen(
        command,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/vnd.apache.arrow.stream"}
    try:
        for _ in range(300):
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        httpx.post(f"{url}/api/sql", json={"sql": "SELECT count() FROM packets"}, headers=headers, timeout=60)
        floor = _status(hub.pid, "VmRSS")
        number = 0
        with httpx.Client(timeout=120, headers=headers) as client:
            for path in capture_files:
                for chunk in CaptureReader(path).chunks():
                    table = decode_frames(chunk, node="n1", source="agent")
                    for start in range(0, table.num_rows, 20_000):  # the agent's batch size
                        body = encode_stream(table.slice(start, 20_000))
                        number += 1
                        answer = client.post(
                            f"{url}/api/ingest",
                            params={"table": "packets"},
                            content=body,
                            headers={"X-Netrecall-Batch": f"bench-{number:08d}"},
                        )
                        assert answer.status_code == 200, answer.text
                    del table
        return _status(hub.pid, "VmHWM"), floor
    finally:
        hub.terminate()
        hub.wait(60)


def _status(pid: int, key: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


def run() -> bool:
    capture = benchmark_capture()
    ok = True
    for scale in SCALES:
        work = OUT / f"memory-{scale}x"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        files = [capture]
        for copy in range(1, scale):
            shifted = work / f"copy{copy}.pcap"
            _shifted(capture, shifted, copy * 3600)
            files.append(shifted)
        store = work / "store"
        imported = _cli(store, "import", *map(str, files))
        url = f"chdb://{store}"
        settle = run_measured([sys.executable, "-c", SETTLE, url, "packets", "flows"])
        floor = run_measured([sys.executable, "-c", FLOOR, url])
        everything = ["--since", "2000-01-01T00:00:00Z", "--until", "2100-01-01T00:00:00Z", "--partial"]
        paths = {"export pcap (everything)": _cli(store, "export", "pcap", "-o", str(work / "all.pcap"))}
        paths["snapshot create (everything)"] = _cli(store, "snapshot", "create", "all", *everything)
        snapshot_settle = run_measured(
            [sys.executable, "-c", SETTLE, url, "snapshot_packets", "snapshot_flows"]
        )
        paths["snapshot export"] = _cli(store, "snapshot", "export", "all", "-o", str(work / "all.zip"))
        paths["dissect (everything)"] = _cli(store, "dissect")
        # dissect holds the calls table's merges while it runs: what it leaves is merged here, as above
        dissect_settle = run_measured([sys.executable, "-c", SETTLE, url, "api_calls"])
        (work / "all.pcap").unlink(missing_ok=True)
        (work / "all.zip").unlink(missing_ok=True)
        hub_peak, hub_floor = _hub_ingest(files, work / "hub")
        size = sum(f.stat().st_size for f in files)
        rows = [["floor: open the store, one count()", floor.seconds, floor.peak_rss_mb, 0.0]]
        for name, m in paths.items():
            rows.append([f"netrecall {name}", m.seconds, m.peak_rss_mb, m.peak_rss_mb - floor.peak_rss_mb])
        rows.append(["hub ingest (agents' batches)", 0.0, hub_peak, hub_peak - hub_floor])
        for name, m in (
            ("(import)", imported),
            ("(merging what import left)", settle),
            ("(merging what snapshot create left)", snapshot_settle),
            ("(merging what dissect left)", dissect_settle),
        ):
            rows.append([name, m.seconds, m.peak_rss_mb, m.peak_rss_mb - floor.peak_rss_mb])
        print_table(
            f"memory at {scale}x: {size / 1e9:.1f} GB of capture",
            ["path", "seconds", "peak RSS MB", "over floor MB"],
            rows,
        )
        for row in rows[1 : len(paths) + 2]:  # the paths and the hub's ingest
            ok &= verdict(
                f"{row[0]} at {scale}x <= floor + {LIMIT_MB:.0f} MB",
                row[3] <= LIMIT_MB,
                f"{row[3]:+.0f} MB over the floor ({row[2]:.0f} MB peak, {size / 1e6:.0f} MB of capture: "
                f"{row[2] / (size / 1e6):.3f}x its size)",
            )
        shutil.rmtree(work, ignore_errors=True)
    return ok


if __name__ == "__main__":
    sys.exit(0 if run() else 1)
