"""Disk full: the store's volume (a small tmpfs mounted for the test) fills up during an import, during
the hub's ingest of an agent's batches, and the agent's own spool volume fills up.

What must hold: a clear one-line error (never a traceback); nothing half-written is read as whole (the
import's rows stay unconfirmed and are replaced by the next run; an ingest that failed is not
acknowledged); once space is back, the same command ends with exactly the rows a clean run gives; the
agent spools what the hub cannot take and replays it, and what it cannot even spool it counts as dropped.
"""

from __future__ import annotations

import os
import struct
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.test_crash import TOKEN, _HubProcess, fingerprint, netrecall

PACKETS = 16_000  # 1,200 random bytes each: ~20 MB that no codec shrinks


@contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def grow(path: Path, size: str) -> None:
    subprocess.run(["mount", "-o", f"remount,size={size}", str(path)], check=True)


def random_pcap(target: Path, packets: int = PACKETS, seed: int = 17) -> Path:
    """Ethernet/IPv4/UDP frames with random payloads, one every millisecond."""
    rng = __import__("random").Random(seed)
    out = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)]
    for i in range(packets):
        payload = rng.randbytes(1200)
        udp = struct.pack(">HHHH", 40000 + i % 50, 9999, 8 + len(payload), 0) + payload
        ip = struct.pack(
            ">BBHHHBBH4s4s",
            0x45,
            0,
            20 + len(udp),
            i & 0xFFFF,
            0,
            64,
            17,
            0,
            b"\x0a\0\0\x01",
            b"\x0a\0\0\x02",
        )
        frame = b"\x02" * 6 + b"\x04" * 6 + b"\x08\x00" + ip + udp
        sec, usec = 1_700_000_000 + i // 1000, (i % 1000) * 1000
        out.append(struct.pack("<IIII", sec, usec, len(frame), len(frame)) + frame)
    target.write_bytes(b"".join(out))
    return target


@pytest.fixture(scope="module")
def capture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if os.geteuid() != 0:
        pytest.fail("the disk-full tests mount a tmpfs: run them as root (make test does)")
    return random_pcap(tmp_path_factory.mktemp("diskfull") / "random.pcap")


def test_import_onto_a_full_disk_fails_cleanly_and_completes_once_space_is_back(
    capture: Path, tmp_path: Path
) -> None:
    clean = tmp_path / "clean"
    netrecall(clean, "import", str(capture), "--node", "n1")
    expected = fingerprint(clean)
    with tmpfs(tmp_path / "small", "12m") as home:
        failed = netrecall(home, "import", str(capture), "--node", "n1", check=False)
        assert failed.returncode != 0, "the import fitted: make the tmpfs smaller"
        lines = [line for line in failed.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("netrecall: error:"), failed.stderr
        assert "space" in lines[0].lower() or "ENOSPC" in lines[0] or "write" in lines[0].lower(), lines[0]
        grow(home, "512m")
        partial = fingerprint(home)
        assert partial["imports"] == 0, "a file that did not go in whole is recorded as imported"
        netrecall(home, "import", str(capture), "--node", "n1")  # removes what is partial, imports in full
        assert fingerprint(home) == expected


def _batches(capture: Path, rows: int = 500) -> list:
    import pyarrow as pa

    from netrecall.agent.batcher import Batch
    from netrecall.ingest.capture_file import CaptureReader
    from netrecall.ingest.decode import decode_frames

    whole = pa.concat_tables(
        decode_frames(c, node="n1", source="agent") for c in CaptureReader(capture).chunks()
    )
    return [
        Batch("packets", whole.slice(start, rows), token=f"diskfull-{start:08d}")
        for start in range(0, whole.num_rows, rows)
    ]


def _wait(condition, seconds: float = 120) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.2)
    return False


def test_hub_on_a_full_disk_makes_the_agent_spool_then_replay(capture: Path, tmp_path: Path) -> None:
    from netrecall.agent.delivery import Delivery
    from netrecall.agent.metrics import Metrics
    from netrecall.agent.sink import HubSink
    from netrecall.agent.spool import Spool

    batches = _batches(capture)
    sent = sum(b.rows for b in batches)
    clean = tmp_path / "clean"
    clean.mkdir()
    hub = _HubProcess(clean)
    hub.start()
    try:
        assert _wait(lambda: _healthy(hub.url))
        sink = HubSink(hub.url, TOKEN)
        for batch in batches:
            sink.send(batch)
        sink.close()
    finally:
        hub.stop()
    expected = fingerprint(clean)
    assert expected["packets"][0] == sent

    with tmpfs(tmp_path / "small", "12m") as home:
        hub = _HubProcess(home)
        hub.start()
        metrics = Metrics()
        delivery = Delivery(HubSink(hub.url, TOKEN), Spool(tmp_path / "spool"), metrics)
        try:
            assert _wait(lambda: _healthy(hub.url))
            delivery.start()
            for batch in batches:
                delivery.submit(batch)
                time.sleep(0.05)
            assert _wait(lambda: metrics.total("spooled_packets") > 0), "the full disk never showed"
            assert _wait(lambda: delivery.queue.empty())
            # honest counts while the disk is full: every row is acknowledged by the hub or on the spool
            spooled_now = sum(
                b.rows for b in batches if any(i.token == b.token for i in delivery.spool.items())
            )
            assert metrics.total("inserted_packets") + spooled_now == sent
            log = (home / "hub.log").read_text()
            assert "Traceback" not in log
            grow(home, "512m")
            assert _wait(lambda: len(delivery.spool) == 0, 180), "the spool was not replayed"
            assert delivery.close(timeout=60)
        finally:
            hub.stop()
        assert metrics.total("spool_dropped_packets") == 0 and metrics.total("rejected_packets") == 0
        assert metrics.total("inserted_packets") == sent  # replays included
        assert fingerprint(home) == expected  # each row once, in packets and in flows


def test_spool_on_a_full_disk_counts_what_it_drops(capture: Path, tmp_path: Path) -> None:
    from netrecall.agent.delivery import Delivery
    from netrecall.agent.metrics import Metrics
    from netrecall.agent.sink import HubSink
    from netrecall.agent.spool import Spool

    batches = _batches(capture)[:20]
    sent = sum(b.rows for b in batches)
    with tmpfs(tmp_path / "spool", "3m") as spool_dir:
        metrics = Metrics()
        # nothing listens on this port: every batch goes to the spool, which fills after a few
        delivery = Delivery(HubSink("http://127.0.0.1:9", TOKEN, timeout_s=1), Spool(spool_dir), metrics)
        delivery.start()
        for batch in batches:
            delivery.submit(batch)
        assert _wait(lambda: delivery.queue.empty())
        delivery.close(timeout=15)
        spooled = sum(
            i for i in (b.rows for b in batches if any(x.token == b.token for x in delivery.spool.items()))
        )
        dropped = metrics.total("spool_dropped_packets")
        assert dropped > 0, "the spool never filled"
        assert spooled + dropped == sent, (spooled, dropped, sent)
        assert not list(spool_dir.glob("*.tmp")), "a half-written spool file was left to be read as whole"


def _healthy(url: str) -> bool:
    import httpx

    try:
        return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False
