"""Capture-time identity from a real kube-apiserver (built from Debian's source, with Debian's etcd).

Pods are created, relabelled and deleted through the API while traffic flows between namespace "pods"
whose IPs the Pod objects carry; one IP passes from one pod to another. Every stored packet must carry
the identity that was valid at its own timestamp. A real 410 Gone (etcd compacted while the watch was
away) must be survived by relisting.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from netrecall.agent.kube import KubeWatcher
from netrecall.ingest.identity import IdentityResolver
from tests.agent_helpers import Proc, agent_cmd, dump_store, http_traffic, two_pod_lab
from tests.kubeapi import pod_manifest, set_pod_running, start_kube_api
from tests.netlab import NetLab

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root")
MARGIN_NS = 1_500_000_000  # how long after an API call returns its watch event may still be in flight


@pytest.fixture(scope="module")
def lab():
    with two_pod_lab() as running:
        yield running


@pytest.fixture(scope="module")
def kube(lab: NetLab, tmp_path_factory: pytest.TempPathFactory):
    # bound on the uplink address: reachable from the test (root namespace) and from the node namespace
    api = start_kube_api(tmp_path_factory.mktemp("kube"), host=lab.uplink_root_ip)
    yield api
    api.stop()


@pytest.fixture
def core(kube):
    from kubernetes import client

    api = client.CoreV1Api(kube.client())
    yield api
    for pod in api.list_namespaced_pod("default").items:
        api.delete_namespaced_pod(pod.metadata.name, "default", grace_period_seconds=0)
    for svc in api.list_namespaced_service("default").items:
        if svc.metadata.name != "kubernetes":
            kube.delete(f"/api/v1/namespaces/default/services/{svc.metadata.name}")


def _wait(predicate, timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError("condition not reached in time")


def test_watch_resolves_pods_services_host_network_and_survives_410(kube, core) -> None:
    core.create_namespaced_pod("default", pod_manifest("p1", {"app": "api"}))
    set_pod_running(core, "p1", "10.77.0.5", "10.251.0.2")
    hostnet = pod_manifest("agent-x", {"app": "agent"})
    hostnet["spec"]["hostNetwork"] = True
    core.create_namespaced_pod("default", hostnet)
    set_pod_running(core, "agent-x", "10.251.0.2", "10.251.0.2")
    svc = core.create_namespaced_service(
        "default",
        {"metadata": {"name": "api"}, "spec": {"selector": {"app": "api"}, "ports": [{"port": 80}]}},
    )
    cluster_ip = svc.spec.cluster_ip
    resolver = IdentityResolver(source="kube-apiserver")
    watcher = KubeWatcher(resolver, api_client=kube.client(), watch_timeout_s=30)
    watcher.start()
    try:
        assert watcher.wait_synced(30), watcher.errors
        now = time.time_ns()
        p1 = resolver.lookup("10.77.0.5", now)
        assert p1 is not None and (p1.name, p1.services, p1.node) == ("p1", ("api",), "node-1")
        service = resolver.lookup(cluster_ip, now)
        assert service is not None and (service.kind, service.name) == ("service", "api")
        # a hostNetwork pod shares its node's IP: it is in the history, marked as such
        marked = [r for r in resolver.records if r.ip == "10.251.0.2" and r.kind == "pod"]
        assert [(r.name, r.host_network) for r in marked] == [("agent-x", True)]
        # a change through the watch
        core.patch_namespaced_pod("p1", "default", {"metadata": {"labels": {"app": "api", "v": "2"}}})
        _wait(lambda: resolver.lookup("10.77.0.5", time.time_ns()).labels.get("v") == "2")
        # the watch goes away; meanwhile p1 is deleted, p2 takes its IP, and etcd compacts: a real 410
        watcher.hold("pods")
        watcher.disconnect("pods")
        core.delete_namespaced_pod("p1", "default", grace_period_seconds=0)
        core.create_namespaced_pod("default", pod_manifest("p2", {"app": "other"}))
        set_pod_running(core, "p2", "10.77.0.5", "10.251.0.2")
        kube.compact_etcd()
        watcher.release("pods")
        _wait(lambda: watcher.kinds["pods"].relists_after_gone >= 1)
        _wait(lambda: (resolver.lookup("10.77.0.5", time.time_ns()) or p1).name == "p2")
        history = [r for r in resolver.records if r.ip == "10.77.0.5" and r.kind == "pod"]
        assert [r.name for r in sorted(history, key=lambda r: r.valid_from)][-1] == "p2"
        closed = [r for r in history if r.name == "p1"]
        assert closed and all(r.valid_to < 2**62 for r in closed), (
            "p1's interval was not closed by the relist"
        )
        # the other kinds kept watching through it
        kube.delete("/api/v1/namespaces/default/services/api")
        _wait(lambda: resolver.lookup(cluster_ip, time.time_ns()) is None)
    finally:
        watcher.stop()


def test_every_packet_carries_the_identity_valid_at_its_time(lab: NetLab, kube, core, tmp_path: Path) -> None:
    a, b = lab.pods["a"], lab.pods["b"]
    core.create_node(
        {
            "metadata": {"name": "node-1"},
            "status": {"addresses": [{"type": "InternalIP", "address": lab.uplink_node_ip}]},
        }
    ) if not core.list_node().items else None
    core.create_namespaced_pod("default", pod_manifest("web", {"app": "web"}))
    set_pod_running(core, "web", b.ip, lab.uplink_node_ip)
    core.create_namespaced_service(
        "default",
        {"metadata": {"name": "web"}, "spec": {"selector": {"app": "web"}, "ports": [{"port": 8080}]}},
    )
    core.create_namespaced_pod("default", pod_manifest("client-1", {"app": "client", "version": "v1"}))
    set_pod_running(core, "client-1", a.ip, lab.uplink_node_ip)
    store = f"chdb://{tmp_path}/store"
    agent = Proc(
        agent_cmd(
            "--iface",
            f"veth*{lab.tag}",
            "--backend",
            "afpacket",
            "--kubeconfig",
            str(kube.kubeconfig),
            "--store",
            store,
            "--node",
            "node-1",
            "--batch-seconds",
            "0.5",
            "--spool-dir",
            str(tmp_path / "spool"),
            prefix=lab.node(),
        )
    )
    agent.wait_for("capturing with", 120)
    stop = threading.Event()

    def traffic() -> None:
        while not stop.is_set():
            http_traffic(lab.in_pod("a"), f"http://{b.ip}:8080/", 2)
            time.sleep(0.02)

    thread = threading.Thread(target=traffic, daemon=True)
    thread.start()
    marks: dict[str, tuple[int, int]] = {}

    def mark(name: str, action) -> None:
        start = time.time_ns()
        action()
        marks[name] = (start, time.time_ns())

    time.sleep(3.0)
    mark(
        "relabel",
        lambda: core.patch_namespaced_pod(
            "client-1", "default", {"metadata": {"labels": {"app": "client", "version": "v2"}}}
        ),
    )
    time.sleep(3.0)
    mark("delete", lambda: core.delete_namespaced_pod("client-1", "default", grace_period_seconds=0))
    time.sleep(3.0)

    def handover() -> None:
        core.create_namespaced_pod("default", pod_manifest("client-2", {"app": "client", "version": "v9"}))
        set_pod_running(core, "client-2", a.ip, lab.uplink_node_ip)

    mark("handover", handover)
    time.sleep(3.0)
    stop.set()
    thread.join(30)
    time.sleep(1.0)
    assert agent.stop() == 0, agent.text()
    table = dump_store(
        f"{store}?database=netrecall",
        "SELECT toUnixTimestamp64Nano(ts) AS t, toString(src_ip) AS src, toString(dst_ip) AS dst, src_pod,"
        " dst_pod, src_labels['version'] AS src_version, dst_labels['version'] AS dst_version, src_service,"
        " dst_service FROM packets WHERE ip_version = 4 ORDER BY t",
        tmp_path / "packets.arrow",
    ).to_pylist()
    assert len(table) > 200

    def allowed(ts: int) -> set[tuple[str, str]]:
        """The identities of IP A valid at ts, by the test's own timeline (both sides of a change are
        allowed only while its watch event may still be in flight)."""
        v1, v2, none, new = ("client-1", "v1"), ("client-1", "v2"), ("", ""), ("client-2", "v9")
        steps = [("relabel", v1, v2), ("delete", v2, none), ("handover", none, new)]
        current = {v1}
        for name, before, after in steps:
            start, end = marks[name]
            if ts < start:
                return current
            current = {before, after} if ts <= end + MARGIN_NS else {after}
        return current

    seen = {("client-1", "v1"): 0, ("client-1", "v2"): 0, ("", ""): 0, ("client-2", "v9"): 0}
    a_ip, b_ip = f"::ffff:{a.ip}", f"::ffff:{b.ip}"
    checked = 0
    for row in table:
        text = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in row.items()}
        for side, other in (("src", "dst"), ("dst", "src")):
            if text[side] == a_ip and text[other] == b_ip:
                got = (text[f"{side}_pod"], text[f"{side}_version"])
                assert got in allowed(row["t"]), (
                    f"packet at {row['t']}: {got} not in {allowed(row['t'])} ({marks})"
                )
                seen[got] += 1
                assert (text[f"{other}_pod"], text[f"{other}_service"]) == ("web", "web")
                checked += 1
    assert checked > 200
    assert all(count > 0 for count in seen.values()), seen
    workloads = dump_store(
        f"{store}?database=netrecall",
        "SELECT name, toUnixTimestamp64Nano(valid_from) AS f, toUnixTimestamp64Nano(valid_to) AS t"
        f" FROM workloads FINAL WHERE ip = toIPv6('{a_ip}') AND kind = 'pod' ORDER BY f",
        tmp_path / "workloads.arrow",
    ).to_pylist()
    names = [w["name"].decode() if isinstance(w["name"], bytes) else w["name"] for w in workloads]
    assert names[0] == "client-1" and names[-1] == "client-2"
    assert workloads[-2]["t"] <= workloads[-1]["f"], "the two pods' intervals on one IP overlap"
