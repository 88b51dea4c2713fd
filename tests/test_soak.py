"""Soak: two network-namespace "nodes", each with an agent capturing a pod's numbered UDP stream, sending
to one hub for NETRECALL_SOAK_SECONDS (`make soak`: 600; `make test`: 60), while the hub is killed and
restarted, each node's link to it is cut and restored, the hub's retention pass runs under a small byte
budget, and a client keeps querying the hub.

At the end every datagram sent is stored exactly once or counted as dropped by a named agent counter
(kernel_drops, userspace_drops, spool_dropped_packets, rejected_packets); the agents' RSS stays within
10% of its level after warm-up; query p99 is reported (target 1 s). The curve and the figures go to
bench/out/soak.json and into docs/reliability.md. Namespaces `nrsoak*`, addresses in 10.84.0.0/16.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.agent_helpers import Proc, agent_cmd
from tests.hub_process import cli_env, free_port
from tests.netlab import sh

SECONDS = int(os.environ.get("NETRECALL_SOAK_SECONDS", "60"))
# `make soak` holds the run to the timed targets (p99, RSS growth); `make test`'s short run reports them
# only: on a shared machine its timings are noise, and the counts are what it must get right.
TIMED_TARGETS = "NETRECALL_SOAK_SECONDS" in os.environ
RATE = int(os.environ.get("NETRECALL_SOAK_RATE", "400"))  # datagrams per second per node
TOKEN = "soak-token-" + secrets.token_hex(4)
OUT = Path(__file__).resolve().parents[1] / "bench" / "out"

# The pod program: numbered datagrams at a steady rate, then the count sent on stdout.
SENDER = r"""
import socket, sys, time
dst, node, rate, seconds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
start, sent = time.monotonic(), 0
while True:
    now = time.monotonic() - start
    if now >= seconds:
        break
    due = int(now * rate) + 1
    while sent < due:
        s.sendto(b"NRSOAK" + bytes([node]) + sent.to_bytes(8, "big") + b"." * 64, (dst, 9999))
        sent += 1
    time.sleep(0.002)
print(sent, flush=True)
"""
SINK = "import socket,sys\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\ns.bind((sys.argv[1],9999))\n"
SINK += "while True: s.recv(65536)\n"


@dataclass
class Node:
    """A node namespace with a bridge, pods a (.10, the sender) and b (.11, the receiver), an uplink."""

    index: int
    tag: str = field(default_factory=lambda: secrets.token_hex(2))
    pods: dict[str, str] = field(default_factory=dict)  # name -> netns

    @property
    def ns(self) -> str:
        return f"nrsoak{self.index}{self.tag}"

    @property
    def uplink_root_ip(self) -> str:
        return f"10.84.{100 + self.index}.1"

    def pod_ip(self, octet: int) -> str:
        return f"10.84.{10 + self.index}.{octet}"

    def veth(self, pod: str) -> str:
        return f"nrsv{self.index}{pod}{self.tag}"

    def run(self, *cmd: str) -> list[str]:
        return ["ip", "netns", "exec", self.ns, *cmd]

    def up(self) -> Node:
        i, t = self.index, self.tag
        sh("ip", "netns", "add", self.ns)
        sh(*self.run("ip", "link", "set", "lo", "up"))
        sh(*self.run("sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"))
        sh(*self.run("ip", "link", "add", f"nrsbr{i}{t}", "type", "bridge"))
        sh(*self.run("ip", "addr", "add", f"{self.pod_ip(1)}/24", "dev", f"nrsbr{i}{t}"))
        sh(*self.run("ip", "link", "set", f"nrsbr{i}{t}", "up"))
        sh("ip", "link", "add", f"nrsup{i}{t}", "type", "veth", "peer", "name", "uplink", "netns", self.ns)
        sh("ip", "addr", "add", f"{self.uplink_root_ip}/30", "dev", f"nrsup{i}{t}")
        sh("ip", "link", "set", f"nrsup{i}{t}", "up")
        sh(*self.run("ip", "addr", "add", f"10.84.{100 + i}.2/30", "dev", "uplink"))
        sh(*self.run("ip", "link", "set", "uplink", "up"))
        for pod, octet in (("a", 10), ("b", 11)):
            netns = f"nrsoakp{i}{pod}{t}"
            sh("ip", "netns", "add", netns)
            sh("ip", "netns", "exec", netns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1")
            sh("ip", "netns", "exec", netns, "ip", "link", "set", "lo", "up")
            veth = self.veth(pod)
            sh(*self.run("ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", netns))
            sh(*self.run("ip", "link", "set", veth, "master", f"nrsbr{i}{t}"))
            sh(*self.run("ip", "link", "set", veth, "up"))
            sh("ip", "netns", "exec", netns, "ip", "addr", "add", f"{self.pod_ip(octet)}/24", "dev", "eth0")
            sh("ip", "netns", "exec", netns, "ip", "link", "set", "eth0", "up")
            self.pods[pod] = netns
        return self

    def cut(self, down: bool) -> None:
        sh(*self.run("ip", "link", "set", "uplink", "down" if down else "up"))

    def down(self) -> None:
        for netns in self.pods.values():
            sh("ip", "netns", "del", netns, check=False)
        sh("ip", "link", "del", f"nrsup{self.index}{self.tag}", check=False)
        sh("ip", "netns", "del", self.ns, check=False)


def rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


class Hub:
    def __init__(self, home: Path) -> None:
        self.home = home
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self.restarts = 0

    def start(self) -> None:
        command = [sys.executable, "-m", "netrecall", "serve", "--host", "0.0.0.0", "--port", str(self.port)]
        command += ["--token", TOKEN, "--store", f"chdb://{self.home / 'store'}", "--log-level", "warning"]
        command += ["--retention-max-bytes", "1MiB", "--retention-every", "15"]
        log = open(self.home / "hub.log", "a")  # noqa: SIM115 - the child owns it
        self.proc = subprocess.Popen(command, env=cli_env(self.home), stdout=subprocess.DEVNULL, stderr=log)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.2)
        raise AssertionError(f"hub did not start: {(self.home / 'hub.log').read_text()[-2000:]}")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(60)

    def restart(self, sig: int) -> None:
        self.stop(sig)
        self.restarts += 1
        self.start()


class Querier(threading.Thread):
    """KFL and SQL queries against the hub, one after another; latencies of those that answered."""

    def __init__(self, hub: Hub) -> None:
        super().__init__(daemon=True)
        self.hub = hub
        self.latencies: list[float] = []
        self.unavailable = 0  # the hub was down (restarting): not an answer, not a failure
        self.failed: list[str] = []
        self.halt = threading.Event()

    def run(self) -> None:
        headers = {"Authorization": f"Bearer {TOKEN}"}
        queries = [
            ("GET", "/api/calls", {"params": {"kfl": "udp && dst.port == 9999", "limit": 50}}),
            ("POST", "/api/sql", {"json": {"sql": "SELECT node, count() FROM packets GROUP BY node"}}),
            ("GET", "/api/flows", {"params": {"port": 9999, "aggregate": "true"}}),
            ("GET", "/api/boundaries", {}),
        ]
        with httpx.Client(timeout=30, headers=headers) as client:
            n = 0
            while not self.halt.is_set():
                method, path, kwargs = queries[n % len(queries)]
                n += 1
                started = time.monotonic()
                try:
                    response = client.request(method, f"{self.hub.url}{path}", **kwargs)
                except httpx.TransportError:
                    self.unavailable += 1
                    time.sleep(0.2)
                    continue
                if response.status_code == 200:
                    self.latencies.append(time.monotonic() - started)
                else:
                    self.failed.append(f"{path}: {response.status_code} {response.text[:200]}")
                time.sleep(0.2)


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p * len(ordered)))] if ordered else 0.0


@pytest.fixture
def nodes():
    if os.geteuid() != 0:
        pytest.fail("the soak builds network namespaces: run it as root (make soak does)")
    made = [Node(1).up(), Node(2).up()]
    try:
        yield made
    finally:
        for node in made:
            node.down()


def test_soak(nodes: list[Node], tmp_path: Path) -> None:
    hub = Hub(tmp_path / "hub")
    hub.home.mkdir()
    hub.start()
    sinks, agents, senders = [], [], []
    querier = Querier(hub)
    curve: list[dict] = []
    cuts = 0
    try:
        for node in nodes:
            sinks.append(
                subprocess.Popen(
                    ["ip", "netns", "exec", node.pods["b"], sys.executable, "-c", SINK, node.pod_ip(11)],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
            agents.append(
                Proc(
                    agent_cmd(
                        "--iface",
                        node.veth("a"),
                        "--backend",
                        "afpacket",
                        "--hub",
                        f"http://{node.uplink_root_ip}:{hub.port}",
                        "--token",
                        TOKEN,
                        "--node",
                        f"soak{node.index}",
                        "--spool-dir",
                        str(tmp_path / f"spool{node.index}"),
                        "--batch-seconds",
                        "0.5",
                        "--log-every",
                        "5",
                        prefix=node.run(),
                    )
                )
            )
        for agent in agents:
            agent.wait_for("capturing with", 120)
        for node in nodes:
            senders.append(
                subprocess.Popen(
                    [
                        "ip",
                        "netns",
                        "exec",
                        node.pods["a"],
                        sys.executable,
                        "-c",
                        SENDER,
                        node.pod_ip(11),
                        str(node.index),
                        str(RATE),
                        str(SECONDS),
                    ],
                    stdout=subprocess.PIPE,
                    text=True,
                )
            )
        querier.start()
        started = time.monotonic()
        # faults at fixed fractions of the run: two hub restarts (kill -9, then SIGTERM), a network cut each
        faults = [
            (0.25, lambda: hub.restart(signal.SIGKILL)),
            (0.40, lambda: nodes[0].cut(True)),
            (0.45, lambda: nodes[0].cut(False)),
            (0.60, lambda: hub.restart(signal.SIGTERM)),
            (0.70, lambda: nodes[1].cut(True)),
            (0.75, lambda: nodes[1].cut(False)),
        ]
        while time.monotonic() - started < SECONDS:
            elapsed = time.monotonic() - started
            while faults and elapsed >= faults[0][0] * SECONDS:
                faults.pop(0)[1]()
                cuts += 1
            curve.append(
                {
                    "t": round(elapsed, 1),
                    "hub_mb": round(rss_mb(hub.proc.pid), 1),
                    **{f"agent{i + 1}_mb": round(rss_mb(a.proc.pid), 1) for i, a in enumerate(agents)},
                }
            )
            time.sleep(max(1.0, SECONDS / 120))
        sent = [int(s.communicate(timeout=60)[0].strip() or 0) for s in senders]
        time.sleep(3)  # the last batches leave the agents
        summaries = []
        for agent in agents:
            assert agent.stop(signal.SIGTERM) == 0, agent.text()
            summaries.append(agent.summary()["counters"])
        querier.halt.set()
        querier.join(30)
        rows = _stored(hub)
        retention = _retention_dropped(hub)
    finally:
        querier.halt.set()
        for proc in senders + sinks:
            if proc.poll() is None:
                proc.kill()
        for agent in agents:
            if agent.proc.poll() is None:
                agent.stop(signal.SIGKILL)
        hub.stop()

    report = _report(nodes, sent, summaries, rows, retention, curve, querier, hub, cuts)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "soak.json").write_text(json.dumps({**report, "curve": curve}, indent=1) + "\n")
    print(json.dumps(report, indent=1))
    for node_report in report["nodes"]:
        assert node_report["duplicated"] == 0, node_report
        # retention counts every packet of an hour it drops (ARP included): at most a few beyond the stream
        slack = node_report["retention_dropped_packets"] // 100
        assert -slack <= node_report["unaccounted"] <= 0, node_report
    assert not querier.failed, querier.failed[:5]
    if TIMED_TARGETS:
        assert report["query_p99_s"] <= 1.0, report
        for name, growth in report["rss_growth"].items():
            if name.startswith("agent"):
                assert growth <= 0.10, (name, growth, report["rss_growth"])


def _stored(hub: Hub) -> dict[int, tuple[int, int]]:
    """Per node index: (rows, distinct datagrams) of the soak stream in the store."""
    sql = (
        "SELECT reinterpretAsUInt8(substring(data, payload_offset + 7, 1)) AS node, count(), "
        "uniqExact(substring(data, payload_offset + 7, 9)) FROM packets "
        "WHERE l4 = 17 AND dst_port = 9999 AND substring(data, payload_offset + 1, 6) = 'NRSOAK' "
        "GROUP BY node"
    )
    answer = httpx.post(
        f"{hub.url}/api/sql", json={"sql": sql}, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=120
    )
    assert answer.status_code == 200, answer.text
    return {int(r[0]): (int(r[1]), int(r[2])) for r in answer.json()["rows"]}


def _retention_dropped(hub: Hub) -> dict[str, int]:
    """The retention_dropped_packets counter per node (schema/retention.py: dropped_packets)."""
    sql = (
        "SELECT key, argMax(value, updated_at) FROM netrecall_meta "
        "WHERE startsWith(key, 'retention_dropped_packets|') GROUP BY key"
    )
    answer = httpx.post(
        f"{hub.url}/api/sql", json={"sql": sql}, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=120
    )
    assert answer.status_code == 200, answer.text
    found: dict[str, int] = {}
    for key, value in answer.json()["rows"]:
        node = key.split("|", 2)[2]
        found[node] = found.get(node, 0) + int(value)
    return found


def _report(nodes, sent, summaries, rows, retention, curve, querier, hub, cuts) -> dict:
    named = ("kernel_drops", "userspace_drops", "spool_dropped_packets", "rejected_packets")
    per_node = []
    for node, count, counters in zip(nodes, sent, summaries, strict=True):
        stored, distinct = rows.get(node.index, (0, 0))
        drops = {name: sum(counters.get(name, {}).values()) for name in named}
        per_node.append(
            {
                "node": f"soak{node.index}",
                "sent": count,
                "stored": distinct,
                "duplicated": stored - distinct,
                **drops,
                "spooled": sum(counters.get("spooled_packets", {}).values()),
                "replayed": sum(counters.get("replayed_packets", {}).values()),
                # every packet of the node's hour went, the stream's and a few ARP frames: an upper bound
                "retention_dropped_packets": retention.get(f"soak{node.index}", 0),
                "unaccounted": count - distinct - sum(drops.values()) - retention.get(f"soak{node.index}", 0),
            }
        )
    warm = [c for c in curve if c["t"] >= max(10.0, SECONDS * 0.2)]
    growth = {}
    for name in [k for k in (curve[0] if curve else {}) if k.endswith("_mb")]:
        if name == "hub_mb":  # restarted on purpose: measured over its last lifetime only
            life = [c for c in curve if c["t"] >= SECONDS * 0.65]
            values = [c[name] for c in life if c[name]]
        else:
            values = [c[name] for c in warm if c[name]]
        if len(values) >= 4:
            base = statistics.mean(values[: max(1, len(values) // 5)])
            growth[name.removesuffix("_mb")] = round(max(values[-max(1, len(values) // 5) :]) / base - 1, 3)
    return {
        "seconds": SECONDS,
        "rate_per_node": RATE,
        "nodes": per_node,
        "hub_restarts": hub.restarts,
        "faults": cuts,
        "queries": len(querier.latencies),
        "query_p50_s": round(percentile(querier.latencies, 0.5), 3),
        "query_p99_s": round(percentile(querier.latencies, 0.99), 3),
        "queries_while_hub_down": querier.unavailable,
        "rss_growth": growth,
        "rss_peak_mb": {
            k: max(c[k] for c in curve) for k in (curve[0] if curve else {}) if k.endswith("_mb")
        },
        "retention_dropped_packets": sum(retention.values()),
    }


def test_retention_counts_the_packets_it_drops(store) -> None:
    """The byte budget drops whole hours; what it drops is counted per node (retention_dropped_packets),
    so a reconciliation of sent against stored packets can name it. A repeated pass does not count twice."""
    from netrecall.schema.retention import apply_retention, dropped_packets

    for node, rows, hours_ago in (("old-node", 700, 3), ("new-node", 50, 0)):
        store.command(
            "INSERT INTO packets (ts, stored_at, node, data) SELECT now64(9) - number, "
            "now() - toIntervalHour({h:UInt8}), {n:String}, repeat('x', 500) FROM numbers({r:UInt32})",
            {"n": node, "r": rows, "h": hours_ago},
        )
    assert dropped_packets(store) == {}
    report = apply_retention(store, max_bytes=1)
    assert len(report.dropped_hours) == 1 and report.over_budget  # the newest hour is always kept
    assert dropped_packets(store) == {"old-node": 700}
    assert store.scalar("SELECT count() FROM packets") == 50
    apply_retention(store)
    assert dropped_packets(store) == {"old-node": 700}
