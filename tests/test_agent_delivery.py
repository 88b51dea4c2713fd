"""Delivery without loss or duplicates: a sink outage mid-run, a kill -9, the spool's bounds, dedup tokens.

The sinks are real: a ClickHouse HTTP front over chDB (tests/chfront.py) in its own process, killed and
restarted mid-capture; and the hub (`netrecall serve`) taking Arrow batches on /api/ingest. Every check
is against tcpdump's capture of the same interfaces.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pytest

from netrecall.agent.batcher import Batch
from netrecall.agent.spool import Spool
from netrecall.store import Store
from tests.agent_helpers import (
    PYTHON,
    Proc,
    agent_cmd,
    dump_store,
    http_traffic,
    pcap_frames,
    start_tcpdump,
    stored_frames,
    two_pod_lab,
)
from tests.conftest import require_tool
from tests.netlab import NetLab

ROOT = Path(__file__).resolve().parent.parent
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def lab():
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    require_tool("tcpdump")
    with two_pod_lab() as running:
        yield running


def _chfront(path: Path, host: str, port: int) -> Proc:
    proc = Proc(
        [
            PYTHON,
            "-u",
            str(ROOT / "tests" / "chfront.py"),
            "--path",
            str(path),
            "--host",
            host,
            "--port",
            str(port),
        ]
    )
    for _ in range(200):
        try:
            socket.create_connection((host, port), timeout=0.2).close()
            return proc
        except OSError:
            if proc.proc.poll() is not None:
                raise AssertionError(proc.text()) from None
            time.sleep(0.1)
    raise AssertionError("chfront did not start")


class Traffic:
    """curl from pod a to pod b's HTTP server in a loop, until stopped."""

    def __init__(self, lab: NetLab) -> None:
        self.lab = lab
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.is_set():
            http_traffic(self.lab.in_pod("a"), f"http://{self.lab.pods['b'].ip}:8080/", 5)
            time.sleep(0.05)

    def __enter__(self) -> Traffic:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(30)


def _expected(dumps: dict[str, Proc], tmp_path: Path) -> Counter:
    for proc in dumps.values():
        proc.stop(signal.SIGINT)
    expected: Counter = Counter()
    for name in dumps:
        expected += pcap_frames(tmp_path / f"{name}.pcap", name)
    return expected


def _on(table_counter: Counter, ifaces: set[str]) -> Counter:
    return Counter({k: v for k, v in table_counter.items() if k[0] in ifaces})


def _bcc_available() -> bool:
    try:
        import bcc  # noqa: F401
    except ImportError:
        return False
    return True


@needs_root
@pytest.mark.parametrize(
    "backend",
    ["afpacket", pytest.param("ebpf", marks=pytest.mark.skipif(not _bcc_available(), reason="no bcc"))],
)
def test_store_outage_loses_nothing_and_duplicates_nothing(lab: NetLab, tmp_path: Path, backend: str) -> None:
    """Kill the store front mid-run, bring it back: stored frames == tcpdump's, no sink traffic captured."""
    port = _free_port()
    front_path = tmp_path / "front"
    front = _chfront(front_path, lab.uplink_root_ip, port)
    veths = {p.host_veth for p in lab.pods.values()}
    dumps = {v: start_tcpdump(lab.node(), v, tmp_path / f"{v}.pcap") for v in veths}
    agent = Proc(
        agent_cmd(
            "--iface",
            "any",
            "--backend",
            backend,
            "--store",
            f"http://{lab.uplink_root_ip}:{port}/netrecall",
            "--spool-dir",
            str(tmp_path / "spool"),
            "--batch-seconds",
            "0.3",
            "--metrics-port",
            "0",
            prefix=lab.node(),
        )
    )
    agent.wait_for("capturing with", 120)
    with Traffic(lab):
        time.sleep(2.0)
        front.stop(signal.SIGKILL)
        agent.wait_for("sink down", 30)
        time.sleep(2.5)
        front = _chfront(front_path, lab.uplink_root_ip, port)
        agent.wait_for("sink back", 30)
        time.sleep(1.5)
    time.sleep(1.0)
    assert agent.stop() == 0, agent.text()
    expected = _expected(dumps, tmp_path)
    front.stop(signal.SIGTERM)
    table = dump_store(
        f"chdb://{front_path}?database=netrecall",
        "SELECT iface, data, src_port, dst_port FROM packets",
        tmp_path / "stored.arrow",
    )
    got = _on(stored_frames(table), veths)
    assert sum(expected.values()) > 300
    missing, extra = expected - got, got - expected
    assert not missing and not extra, (
        f"missing {sum(missing.values())}, duplicated/extra {sum(extra.values())}"
    )
    # the agent's own traffic to its sink never entered the capture (kernel filter on the sink address)
    ports = set(table.column("src_port").to_pylist()) | set(table.column("dst_port").to_pylist())
    assert port not in ports
    counters = agent.summary()["counters"]
    assert sum(counters["spooled_packets"].values()) > 0
    assert sum(counters["replayed_packets"].values()) == sum(counters["spooled_packets"].values())
    assert sum(counters.get("spool_dropped_packets", {}).values()) == 0
    assert agent.summary()["chdb_loaded"] is False, "a remote-sink agent must not load chDB"


@needs_root
def test_kill9_then_restart_replays_the_spool_through_the_hub(lab: NetLab, tmp_path: Path) -> None:
    """Hub down from the start: batches spool; kill -9; next start (hub up) reports and replays all of it."""
    port = _free_port()
    token = "agent-test-token-123"
    spool = tmp_path / "spool"
    veths = {p.host_veth for p in lab.pods.values()}
    dumps = {v: start_tcpdump(lab.node(), v, tmp_path / f"{v}.pcap") for v in veths}
    hub_url = f"http://{lab.uplink_root_ip}:{port}"
    agent = Proc(
        agent_cmd(
            "--iface",
            ",".join(sorted(veths)),
            "--backend",
            "afpacket",
            "--hub",
            hub_url,
            "--token",
            token,
            "--spool-dir",
            str(spool),
            "--batch-seconds",
            "0.3",
            prefix=lab.node(),
        )
    )
    agent.wait_for("capturing with", 120)
    http_traffic(lab.in_pod("a"), f"http://{lab.pods['b'].ip}:8080/", 30, parallel=3)
    time.sleep(1.0)  # let tcpdump read what the kernel still holds before it is stopped
    expected = _expected(dumps, tmp_path)
    # wait until every captured packet is on disk, then kill -9
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        line = agent.lines[-1] if agent.lines else ""
        if f"captured={sum(expected.values())}" in line and f"spooled={sum(expected.values())}" in line:
            break
        time.sleep(0.2)
    agent.proc.kill()
    agent.proc.wait(10)
    assert list(spool.glob("*.packets.*.arrows")), "nothing was spooled"
    hub = Proc(
        [
            PYTHON,
            "-m",
            "netrecall",
            "serve",
            "--host",
            lab.uplink_root_ip,
            "--port",
            str(port),
            "--token",
            token,
            "--store",
            f"chdb://{tmp_path}/hubstore",
        ]
    )
    hub.wait_for("hub on", 60)
    again = Proc(
        agent_cmd(
            "--iface",
            ",".join(sorted(veths)),
            "--backend",
            "afpacket",
            "--hub",
            hub_url,
            "--token",
            token,
            "--spool-dir",
            str(spool),
            "--duration",
            "3",
            prefix=lab.node(),
        )
    )
    report = again.wait_for("did not exit cleanly", 120)
    assert "about 0 packets" in report, report
    assert again.stop(timeout=120) == 0, again.text()
    hub.stop(signal.SIGTERM)
    table = dump_store(
        f"chdb://{tmp_path}/hubstore?database=netrecall",
        "SELECT iface, data FROM packets",
        tmp_path / "stored.arrow",
    )
    got = _on(stored_frames(table), veths)
    assert got == expected, (
        f"missing {sum((expected - got).values())}, extra {sum((got - expected).values())}"
    )
    assert not list(spool.glob("*.arrows"))
    assert again.summary()["chdb_loaded"] is False


def test_spool_is_bounded_drops_oldest_and_counts(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool", max_bytes=6000)
    batches = [
        Batch("packets", pa.table({"iface": ["eth0"] * 50, "data": [bytes([i]) * 20] * 50})) for i in range(6)
    ]
    dropped = []
    for batch in batches:
        dropped += spool.put(batch)
    assert dropped, "the budget was never hit"
    kept = spool.items()
    assert spool.bytes <= 6000
    # the oldest went first; what is left is the newest, in order
    assert [i.token for i in kept] == [b.token for b in batches[-len(kept) :]]
    assert sum(old.rows for _, old in dropped if old is not None) == 50 * (len(batches) - len(kept))
    # a new Spool over the same directory sees the same queue, in the same order
    again = Spool(tmp_path / "spool", max_bytes=6000)
    assert [i.seq for i in again.items()] == [i.seq for i in kept]
    first = again.load(again.oldest())
    assert first is not None and first.data.equals(batches[-len(kept)].data)


def test_retried_batch_is_stored_once_with_its_flows(store: Store) -> None:
    """The idempotency token: the same batch inserted twice lands once, in packets and in flows."""
    from netrecall.ingest.capture_file import CaptureReader
    from netrecall.ingest.decode import decode_frames
    from netrecall.ingest.flows import dedup_settings, insert_packets
    from tests.conftest import DPKT_EXAMPLES

    chunk = next(CaptureReader(DPKT_EXAMPLES / "dns_icmp.pcap").chunks())
    table = decode_frames(chunk, node="n1", source="test")
    for token in ("a" * 32, "a" * 32):
        insert_packets(store, table, settings=dedup_settings(token))
    assert store.scalar("SELECT count() FROM packets") == table.num_rows
    assert store.scalar("SELECT sum(packets_ab + packets_ba) FROM flows") == table.num_rows
    insert_packets(store, table, settings=dedup_settings("b" * 32))
    assert store.scalar("SELECT count() FROM packets") == 2 * table.num_rows
    assert store.scalar("SELECT sum(packets_ab + packets_ba) FROM flows") == 2 * table.num_rows


def test_agent_refuses_two_sinks_in_one_line(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            PYTHON,
            "-m",
            "netrecall",
            "agent",
            "run",
            "--store",
            "chdb:///tmp/x",
            "--hub",
            "http://h:1",
            "--token",
            "t",
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "exactly one sink" in result.stderr
