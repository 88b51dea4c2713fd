"""The agent captures real traffic between namespace "pods" exactly as tcpdump sees it, with each backend.

A node namespace with a bridge and two pods; a Python HTTP server in one pod, curl in the other; the
agent (a subprocess in the node namespace) and one tcpdump per host-side veth capture at the same time.
The stored frames (interface, exact bytes) must equal tcpdump's, count for count.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.agent_helpers import (
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

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root")


@pytest.fixture(scope="module")
def lab():
    require_tool("tcpdump")
    with two_pod_lab() as running:
        yield running


def _bcc_available() -> bool:
    try:
        import bcc  # noqa: F401
    except ImportError:
        return False
    return True


BACKENDS = [
    "afpacket",
    pytest.param("ebpf", marks=pytest.mark.skipif(not _bcc_available(), reason="bcc missing")),
]


def _veth_agent(lab: NetLab, backend: str, store: str, tmp_path: Path, *extra: str) -> list[str]:
    """The agent in the node namespace, capturing every pod veth of the lab with `backend`."""
    return agent_cmd(
        *("--iface", f"veth*{lab.tag}", "--backend", backend, "--store", store),
        *("--spool-dir", str(tmp_path / "spool"), *extra),
        prefix=lab.node(),
    )


@pytest.mark.parametrize("backend", BACKENDS)
def test_stored_packets_equal_tcpdump(lab: NetLab, backend: str, tmp_path: Path) -> None:
    with contextlib.ExitStack() as running:  # a failure half-way leaves neither tcpdump nor the agent behind
        _stored_packets_equal_tcpdump(lab, backend, tmp_path, running)


def _stored_packets_equal_tcpdump(
    lab: NetLab, backend: str, tmp_path: Path, running: contextlib.ExitStack
) -> None:
    a, b = lab.pods["a"], lab.pods["b"]
    store = f"chdb://{tmp_path}/store"
    dumps = {
        pod.host_veth: running.enter_context(
            start_tcpdump(lab.node(), pod.host_veth, tmp_path / f"{pod.host_veth}.pcap")
        )
        for pod in (a, b)
    }
    agent = running.enter_context(Proc(_veth_agent(lab, backend, store, tmp_path, "--node", "node-1")))
    started = agent.wait_for("capturing with", 120)
    assert ("eBPF" in started) == (backend == "ebpf"), started
    http_traffic(lab.in_pod("a"), f"http://{b.ip}:8080/", 40, parallel=4)
    http_traffic(lab.in_pod("a"), f"http://{b.ip}:8080/python3-dpkt/", 10)
    time.sleep(1.0)
    assert agent.stop() == 0, agent.text()
    for proc in dumps.values():
        proc.stop(subprocess.signal.SIGINT)
    summary = agent.summary()
    expected: Counter = Counter()
    for name in dumps:
        expected += pcap_frames(tmp_path / f"{name}.pcap", name)
    table = dump_store(
        f"{store}?database=netrecall",
        "SELECT iface, data, node, direction, src_ip, l4 FROM packets",
        tmp_path / "stored.arrow",
    )
    got = stored_frames(table)
    assert sum(expected.values()) > 400, "the traffic generator produced too little"
    missing = expected - got
    extra = got - expected
    assert not missing and not extra, f"missing {sum(missing.values())}, extra {sum(extra.values())}"
    assert set(table.column("node").to_pylist()) in ({b"node-1"}, {"node-1"})
    counters = summary["counters"]
    assert sum(counters["inserted_packets"].values()) == sum(expected.values())
    assert sum(counters.get("kernel_drops", {}).values()) == 0
    assert sum(counters.get("userspace_drops", {}).values()) == 0
    assert summary["chdb_loaded"] is True  # an embedded store is in-process by design


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_auto_backend_says_which_it_took_and_why(lab: NetLab, tmp_path: Path) -> None:
    base = ["--iface", "lo", "--backend", "auto", "--duration", "1", "--store", f"chdb://{tmp_path}/store"]
    if _bcc_available():
        took = Proc(agent_cmd(*base, "--spool-dir", str(tmp_path / "s1"), prefix=lab.node()))
        assert (
            "eBPF" in took.wait_for("capturing with", 120) and "auto: the eBPF program loaded" in took.text()
        )
        assert took.stop() == 0
    # a kernel tree without headers: the eBPF program cannot compile, auto falls back and says why
    broken = Proc(
        agent_cmd(*base, "--spool-dir", str(tmp_path / "s2"), prefix=lab.node()),
        env={"BCC_KERNEL_SOURCE": str(tmp_path / "no-headers")},
    )
    line = broken.wait_for("capturing with", 120)
    assert "AF_PACKET" in line and "auto: eBPF unavailable" in line, line
    assert broken.stop() == 0


def test_inventory_identity_and_prometheus_metrics(lab: NetLab, tmp_path: Path) -> None:
    import json
    import urllib.request

    a, b = lab.pods["a"], lab.pods["b"]
    inventory = tmp_path / "pods.json"
    pods = [
        {
            "kind": "Pod",
            "metadata": {
                "name": name,
                "namespace": "shop",
                "labels": {"app": name},
                "creationTimestamp": "2020-01-01T00:00:00Z",
            },
            "spec": {"nodeName": "node-1"},
            "status": {"phase": "Running", "podIP": pod.ip},
        }
        for name, pod in (("client", a), ("web", b))
    ]
    inventory.write_text(json.dumps({"kind": "List", "items": pods}))
    store = f"chdb://{tmp_path}/store"
    agent = Proc(
        agent_cmd(
            "--iface",
            a.host_veth,
            "--backend",
            "afpacket",
            "--inventory",
            str(inventory),
            "--store",
            store,
            "--metrics-port",
            "0",
            "--spool-dir",
            str(tmp_path / "spool"),
            prefix=lab.node(),
        )
    )
    agent.wait_for("capturing with", 120)
    port = int(agent.wait_for("metrics on", 30).rsplit(":", 1)[1].split("/")[0])
    http_traffic(lab.in_pod("a"), f"http://{b.ip}:8080/", 5)
    time.sleep(1.5)
    text = urllib.request.urlopen(f"http://{lab.uplink_node_ip}:{port}/metrics", timeout=5).read().decode()
    captured = [
        line
        for line in text.splitlines()
        if line.startswith(f'netrecall_agent_captured_packets_total{{iface="{a.host_veth}"}}')
    ]
    assert captured and int(captured[0].split()[-1]) > 0, text
    for name in (
        "kernel_drops",
        "userspace_drops",
        "spooled_packets",
        "replayed_packets",
        "inserted_packets",
    ):
        assert f"# TYPE netrecall_agent_{name}_total counter" in text
    assert agent.stop() == 0
    table = dump_store(
        f"{store}?database=netrecall",
        f"SELECT src_pod, dst_pod, src_namespace FROM packets WHERE src_ip = toIPv6('::ffff:{a.ip}')"
        f" AND dst_ip = toIPv6('::ffff:{b.ip}')",
        tmp_path / "t.arrow",
    ).to_pylist()
    assert table
    assert {(r["src_pod"], r["dst_pod"], r["src_namespace"]) for r in table} in (
        {(b"client", b"web", b"shop")},
        {("client", "web", "shop")},
    )


@pytest.mark.parametrize("backend", BACKENDS)
def test_follows_pod_veths_as_they_come_and_go(lab: NetLab, backend: str, tmp_path: Path) -> None:
    store = f"chdb://{tmp_path}/store"
    agent = Proc(_veth_agent(lab, backend, store, tmp_path))
    agent.wait_for("capturing with", 120)
    pod = lab.add_pod("c", 12)  # a new pod after the agent started
    try:
        dump = start_tcpdump(lab.node(), pod.host_veth, tmp_path / "c.pcap")
        time.sleep(0.5)
        http_traffic(lab.in_pod("c"), f"http://{lab.pods['b'].ip}:8080/", 10)
        time.sleep(1.0)
        dump.stop(subprocess.signal.SIGINT)
    finally:
        lab.remove_pod("c")  # and gone again: the agent detaches and goes on
    time.sleep(0.5)
    http_traffic(lab.in_pod("a"), f"http://{lab.pods['b'].ip}:8080/", 2)
    time.sleep(1.0)
    assert agent.stop() == 0, agent.text()
    expected = pcap_frames(tmp_path / "c.pcap", pod.host_veth)
    table = dump_store(f"{store}?database=netrecall", "SELECT iface, data FROM packets", tmp_path / "s.arrow")
    got = stored_frames(table)
    on_c = Counter({k: v for k, v in got.items() if k[0] == pod.host_veth})
    assert sum(expected.values()) > 50
    assert on_c == expected, (
        f"missing {sum((expected - on_c).values())}, extra {sum((on_c - expected).values())}"
    )
    assert any(k[0] == lab.pods["a"].host_veth for k in got), "capture stopped after the pod went away"
