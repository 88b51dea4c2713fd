"""Crash safety: `kill -9` of import, dissect, snapshot create, export and the hub at moments drawn at
random, then the same command again; the store must end exactly as after one clean run.

Each command runs as the real CLI (or hub) process on a copy of a prepared embedded store; the moment
of the kill is uniform over the clean run's own duration. The store is compared with the clean run's
by row counts and content checksums of every table the command writes (packets, flows, imports,
api_calls, the snapshot tables, the export file and its audit rows). `make test` runs
NETRECALL_CRASH_RUNS=2 per command; `make crash` runs 50 (docs/reliability.md has the last figures).
The seed of the random moments is printed, and NETRECALL_CRASH_SEED replays a run.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.conftest import CAPTURES
from tests.hub_process import cli_env, free_port

RUNS = int(os.environ.get("NETRECALL_CRASH_RUNS", "2"))
SEED = int(os.environ.get("NETRECALL_CRASH_SEED", str(time.time_ns() % 1_000_000)))
COPIES = int(os.environ.get("NETRECALL_CRASH_COPIES", "3000"))  # of a 74-packet HTTP capture
TOKEN = "crash-test-token"

# Row counts and checksums of what each command writes; columns that hold the time of writing
# (stored_at, dissected_at, created_at) are left out, as two clean runs differ there.
FINGERPRINT = r"""
import json, sys
from netrecall.store import open_store
from netrecall.schema.tables import PACKETS, API_CALLS, SNAPSHOT_PACKETS, SNAPSHOT_API_CALLS
store = open_store(sys.argv[1])
def sums(table, columns, where="1"):
    cols = ", ".join(f"`{c}`" for c in columns)
    n, h = store.rows(f"SELECT count(), sum(cityHash64({cols})) FROM {table} WHERE {where}")[0]
    return [int(n), int(h or 0)]
skip = {"stored_at", "dissected_at", "created_at", "observed_at"}
out = {
    "packets": sums("packets", [c for c in PACKETS.column_names if c not in skip]),
    "flows": [int(v or 0) for v in store.rows(
        "SELECT count(), sum(h) FROM (SELECT cityHash64(window_start, node, flow_id, any(l4), min(first_ts), "
        "max(last_ts), sum(packets_ab), sum(bytes_ab), sum(packets_ba), sum(bytes_ba), sum(resets), "
        "sum(data_segments)) AS h FROM flows GROUP BY window_start, node, flow_id)")[0]],
    "imports": int(store.scalar("SELECT count() FROM imports FINAL")),
    "api_calls": sums("api_calls", [c for c in API_CALLS.column_names if c not in skip]),
    "snapshots": int(store.scalar("SELECT count() FROM snapshots FINAL")),
    "snapshot_packets": sums("snapshot_packets", [c for c in SNAPSHOT_PACKETS.column_names if c not in skip]),
    "snapshot_flows": int(store.scalar("SELECT count() FROM snapshot_flows")),
    "snapshot_api_calls": sums(
        "snapshot_api_calls", [c for c in SNAPSHOT_API_CALLS.column_names if c not in skip]
    ),
    "exports": sorted(r[0] for r in store.rows("SELECT sha256 FROM exports")),
}
print(json.dumps(out))
"""


def shifted_pcap(source: Path, target: Path, copies: int, gap_s: int = 1) -> int:
    """`copies` copies of a pcap's records, each moved `gap_s` seconds later than the one before, so every
    copy is new traffic (new call ids); returns the packet count."""
    data = source.read_bytes()
    header, records, pos = data[:24], [], 24
    while pos + 16 <= len(data):
        sec, usec, caplen, origlen = struct.unpack_from("<IIII", data, pos)
        records.append((sec, usec, data[pos + 16 : pos + 16 + caplen], origlen))
        pos += 16 + caplen
    with target.open("wb") as out:
        out.write(header)
        for copy in range(copies):
            out.write(
                b"".join(
                    struct.pack("<IIII", sec + copy * gap_s, usec, len(frame), origlen) + frame
                    for sec, usec, frame, origlen in records
                )
            )
    return copies * len(records)


def netrecall(
    home: Path, *args: str, check: bool = True, store: bool = True, timeout: float = 600
) -> subprocess.CompletedProcess:
    where = ["--store", f"chdb://{home / 'store'}"] if store else []
    result = subprocess.run(
        [sys.executable, "-m", "netrecall", *args, *where],
        env=cli_env(home),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert "Traceback" not in result.stderr, result.stderr
    if check:
        assert result.returncode == 0, f"netrecall {' '.join(args)}: {result.stderr}"
    return result


def fingerprint(home: Path) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", FINGERPRINT, f"chdb://{home / 'store'}"],
        env=cli_env(home),
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    return json.loads(out.stdout)


def kill_after(command: list[str], home: Path, delay: float) -> tuple[bool, float]:
    """Start `command`, SIGKILL it after `delay` s; (whether it was still running, how long it ran)."""
    started = time.monotonic()
    proc = subprocess.Popen(command, env=cli_env(home), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        proc.wait(timeout=delay)
        return False, time.monotonic() - started
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        return True, time.monotonic() - started


@dataclass
class Tally:
    command: str
    runs: int = 0
    killed: int = 0
    refused: int = 0  # reruns refused because the killed run had already finished
    different: list[str] = field(default_factory=list)
    moments: list[float] = field(default_factory=list)

    def line(self) -> str:
        return (
            f"{self.command}: {self.runs} runs, {self.killed} killed mid-run (moments "
            f"{min(self.moments, default=0):.2f}-{max(self.moments, default=0):.2f} s), "
            f"{self.refused} reruns refused as already done, "
            f"{len(self.different)} ended different from a clean run"
        )


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The capture, and stores prepared once: empty, imported, imported and dissected."""
    root = tmp_path_factory.mktemp("crash")
    capture = root / "http.pcap"
    packets = shifted_pcap(CAPTURES / "dissect" / "http_nginx.pcap", capture, COPIES)
    empty = root / "empty"
    empty.mkdir()
    imported = root / "imported"
    shutil.copytree(empty, imported, symlinks=True)
    netrecall(imported, "import", str(capture), "--node", "n1")
    dissected = root / "dissected"
    shutil.copytree(imported, dissected, symlinks=True)
    netrecall(dissected, "dissect")
    print(f"crash runs: seed {SEED}, {RUNS} per command, capture of {packets} packets")
    return {"root": root, "capture": capture, "empty": empty, "imported": imported, "dissected": dissected}


def _crash_runs(
    world: dict,
    name: str,
    base: str,
    args: Callable[[Path], list[str]],
    check: Callable[[Path, Path], None] | None = None,
    refusal: str = "",
) -> Tally:
    """Clean run, then RUNS killed-and-rerun runs, each on a fresh copy of the `base` store."""
    rng = random.Random(f"{SEED}-{name}")
    root: Path = world["root"]
    clean = root / f"{name}-clean"
    shutil.copytree(world[base], clean, symlinks=True)
    started = time.monotonic()
    netrecall(clean, *args(clean))
    duration = time.monotonic() - started
    expected = fingerprint(clean)
    tally = Tally(name)
    for run in range(RUNS):
        home = root / f"{name}-{run}"
        shutil.copytree(world[base], home, symlinks=True)
        moment = rng.uniform(0.05, duration)
        command = [sys.executable, "-m", "netrecall", *args(home), "--store", f"chdb://{home / 'store'}"]
        was_running, _ = kill_after(command, home, moment)
        tally.runs += 1
        tally.killed += was_running
        tally.moments.append(moment)
        if check is not None:
            check(home, clean)  # what a killed run left must already be safe to read
        again = netrecall(home, *args(home), check=False)  # the same command again, to completion
        if again.returncode != 0:
            # a kill that came after the command had finished its work (the snapshot row written, say):
            # the command refuses to do it twice, which is an answer, not damage
            assert refusal and refusal in again.stderr, f"netrecall {' '.join(args(home))}: {again.stderr}"
            tally.refused += 1
        if check is not None:
            check(home, clean)
        got = fingerprint(home)
        if got != expected:
            diff = {k: (got[k], expected[k]) for k in got if got[k] != expected[k]}
            tally.different.append(f"run {run} killed at {moment:.2f} s: {diff}")
        shutil.rmtree(home)
    print(tally.line())
    return tally


def _assert_clean(tally: Tally) -> None:
    assert not tally.different, f"seed {SEED}: " + "; ".join(tally.different)
    assert tally.runs == RUNS


def test_kill_import(world: dict) -> None:
    capture = str(world["capture"])
    tally = _crash_runs(world, "import", "empty", lambda home: ["import", capture, "--node", "n1"])
    _assert_clean(tally)


def test_kill_dissect(world: dict) -> None:
    _assert_clean(_crash_runs(world, "dissect", "imported", lambda home: ["dissect"]))


def test_kill_snapshot_create(world: dict) -> None:
    window = ["--since", "2000-01-01T00:00:00Z", "--until", "2100-01-01T00:00:00Z", "--partial"]
    tally = _crash_runs(
        world,
        "snapshot",
        "dissected",
        lambda home: ["snapshot", "create", "s1", *window],
        refusal="a snapshot named 's1' already exists",
    )
    _assert_clean(tally)


def _export_safe(home: Path, clean: Path) -> None:
    """An export is complete and verifiable, or absent; when complete, it is the clean run's file."""
    out = home / "out.pcap"
    if out.exists():
        verified = netrecall(home, "export", "verify", str(out), check=False, store=False)
        assert verified.returncode == 0, f"a killed export left an unverifiable file: {verified.stderr}"
        assert out.read_bytes() == (clean / "out.pcap").read_bytes()


def test_kill_export(world: dict) -> None:
    tally = _crash_runs(
        world,
        "export",
        "imported",
        lambda home: ["export", "pcap", "-o", str(home / "out.pcap"), "--port", "80"],
        check=_export_safe,
    )
    # every audit row names the one file content a clean export writes; a killed export may have written
    # its row before dying, so a rerun adds a second row for the same content, never another content
    _assert_clean_or_extra_audit(tally)


def _assert_clean_or_extra_audit(tally: Tally) -> None:
    problems = [d for d in tally.different if not _only_repeated_audit(d)]
    assert not problems, f"seed {SEED}: " + "; ".join(problems)


def _only_repeated_audit(difference: str) -> bool:
    diff = eval(difference.split(": ", 1)[1])  # our own repr of {key: (got, expected)}
    if set(diff) != {"exports"}:
        return False
    got, expected = diff["exports"]
    return set(got) == set(expected) and len(got) > len(expected)


# --- the hub ---------------------------------------------------------------------------------------


def _batches(capture: Path, rows: int = 2000) -> list[tuple[str, bytes]]:
    """The capture as agents' packet batches (Arrow IPC bodies) with their idempotency tokens."""
    import pyarrow as pa

    from netrecall.agent.sink import encode_stream
    from netrecall.ingest.capture_file import CaptureReader
    from netrecall.ingest.decode import decode_frames

    tables = [decode_frames(chunk, node="n1", source="agent") for chunk in CaptureReader(capture).chunks()]
    whole = pa.concat_tables(tables)
    return [
        (f"crash-batch-{i:06d}", encode_stream(whole.slice(start, rows)))
        for i, start in enumerate(range(0, whole.num_rows, rows))
    ]


class _HubProcess:
    def __init__(self, home: Path) -> None:
        self.home = home
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        command = [sys.executable, "-m", "netrecall", "serve", "--port", str(self.port), "--token", TOKEN]
        command += ["--store", f"chdb://{self.home / 'store'}", "--log-level", "warning"]
        log = open(self.home / "hub.log", "a")  # noqa: SIM115 - the child owns it
        self.proc = subprocess.Popen(command, env=cli_env(self.home), stdout=subprocess.DEVNULL, stderr=log)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)


def _deliver(hub: _HubProcess, batches: list[tuple[str, bytes]], kill_at: float | None) -> float:
    """Post every batch until the hub acknowledges it (as the agent's delivery does), killing the hub once
    at `kill_at` s and restarting it; returns how long delivery took."""
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/vnd.apache.arrow.stream"}
    started = time.monotonic()
    killed = False
    with httpx.Client(timeout=30) as client:
        for token, body in batches:
            while True:
                if kill_at is not None and not killed and time.monotonic() - started >= kill_at:
                    hub.kill()
                    hub.start()
                    killed = True
                try:
                    response = client.post(
                        f"{hub.url}/api/ingest",
                        params={"table": "packets"},
                        content=body,
                        headers={**headers, "X-Netrecall-Batch": token},
                    )
                except httpx.HTTPError:
                    time.sleep(0.1)
                    continue
                if response.status_code == 200:
                    break
                assert response.status_code >= 500, response.text  # only "down" is retried
                time.sleep(0.1)
    return time.monotonic() - started


def test_kill_hub_during_ingest(world: dict) -> None:
    """kill -9 of the hub while a client posts batches and retries the unacknowledged one: every packet is
    stored once, in packets and in flows (the batch token deduplicates across the restart)."""
    batches = _batches(world["capture"])
    rng = random.Random(f"{SEED}-hub")
    root: Path = world["root"]
    clean = root / "hub-clean"
    shutil.copytree(world["empty"], clean, symlinks=True)
    hub = _HubProcess(clean)
    hub.start()
    try:
        duration = _deliver(hub, batches, None)
    finally:
        hub.stop()
    expected = fingerprint(clean)
    tally = Tally("hub")
    for run in range(RUNS):
        home = root / f"hub-{run}"
        shutil.copytree(world["empty"], home, symlinks=True)
        hub = _HubProcess(home)
        hub.start()
        moment = rng.uniform(0.05, duration)
        try:
            _deliver(hub, batches, moment)
        finally:
            hub.stop()
        tally.runs += 1
        tally.killed += 1
        tally.moments.append(moment)
        got = fingerprint(home)
        if got != expected:
            diff = {k: (got[k], expected[k]) for k in got if got[k] != expected[k]}
            tally.different.append(f"run {run} killed at {moment:.2f} s: {diff}")
        shutil.rmtree(home)
    print(tally.line())
    _assert_clean(tally)
