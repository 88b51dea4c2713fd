"""`netrecall demo` end to end in subprocesses (its own chDB path): every packet of the committed capture is
stored (tshark's count), both ends of the HTTP packets carry the pods and services of the inventory, and
a second run adds nothing."""

from __future__ import annotations

import ipaddress
import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import require_tool

from netrecall.demo import DEMO_INVENTORY, DEMO_NODE, DEMO_PCAP


def netrecall(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "netrecall", *args], capture_output=True, text=True, timeout=300, check=False
    )


def sql(store_url: str, query: str) -> list[list]:
    done = netrecall("sql", "--store", store_url, "--format", "json", query)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)["rows"]


def expected_identities() -> dict[str, tuple[str, str, str]]:
    """IPv4 -> (pod, namespace, service) straight from the inventory JSON (no resolver involved)."""
    items = json.loads(DEMO_INVENTORY.read_text())["items"]
    services = [i for i in items if i["kind"] == "Service"]
    found: dict[str, tuple[str, str, str]] = {}
    for svc in services:
        found[svc["spec"]["clusterIP"]] = ("", svc["metadata"]["namespace"], svc["metadata"]["name"])
    for pod in items:
        if pod["kind"] != "Pod" or pod["spec"].get("hostNetwork"):
            continue
        meta = pod["metadata"]
        selected = sorted(
            s["metadata"]["name"]
            for s in services
            if s["metadata"]["namespace"] == meta["namespace"]
            and s["spec"].get("selector")
            and all(meta["labels"].get(k) == v for k, v in s["spec"]["selector"].items())
        )
        found[pod["status"]["podIP"]] = (meta["name"], meta["namespace"], selected[0] if selected else "")
    return found


@pytest.fixture(scope="module")
def demo_store(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = f"chdb://{tmp_path_factory.mktemp('demo') / 'store'}"
    done = netrecall("demo", "--store", url)
    assert done.returncode == 0, done.stderr
    assert "imported the demo incident" in done.stdout
    assert f"query --store {url}" in done.stdout  # what to do next, for this store
    # the demo dissects and names the root cause: payment's lookup of the gateway fails with NXDOMAIN
    failing = [line for line in done.stdout.splitlines() if "-> NXDOMAIN" in line]
    assert len(failing) == 1 and "api.payment-gateway.svc.cluster.local A" in failing[0], done.stdout
    assert "asked by payment/payment" in failing[0]
    return url


def test_every_packet_of_the_capture_is_stored(demo_store):
    tshark = require_tool("tshark")
    frames = subprocess.run(
        [tshark, "-r", str(DEMO_PCAP), "-T", "fields", "-e", "frame.len"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert len(frames) > 1000
    count, total, nodes = sql(demo_store, "SELECT count(), sum(origlen), groupUniqArray(node) FROM packets")[
        0
    ]
    assert (int(count), int(total), nodes) == (len(frames), sum(map(int, frames)), [DEMO_NODE])


def test_http_packets_carry_the_inventory_identities_at_both_ends(demo_store):
    expected = expected_identities()
    rows = sql(
        demo_store,
        "SELECT IPv6NumToString(src_ip), IPv6NumToString(dst_ip), src_pod, src_namespace, src_service, "
        "src_node, dst_pod, dst_namespace, dst_service, dst_node, count() FROM packets "
        "WHERE l4 = 6 AND (src_port = 8080 OR dst_port = 8080) GROUP BY ALL",
    )
    pod_to_pod = 0
    for src, dst, *identity, packets in rows:
        src_ip, dst_ip = (str(ipaddress.IPv6Address(a).ipv4_mapped) for a in (src, dst))
        src_pod, src_ns, src_svc, src_node, dst_pod, dst_ns, dst_svc, dst_node = identity
        assert (src_pod, src_ns, src_svc) == expected.get(src_ip, ("", "", "")), (src_ip, packets)
        assert (dst_pod, dst_ns, dst_svc) == expected.get(dst_ip, ("", "", "")), (dst_ip, packets)
        if src_pod and dst_pod:
            pod_to_pod += int(packets)
            assert src_node == dst_node == DEMO_NODE
    # The shop's own calls go pod to pod; the prober's come from the node's address.
    assert pod_to_pod > 500
    names = {
        tuple(r[:2])
        for r in sql(
            demo_store,
            "SELECT src_pod, dst_pod FROM packets WHERE dst_port = 8080 "
            "AND src_pod != '' AND dst_pod != '' GROUP BY ALL",
        )
    }
    assert ("loadgen-6f9c7d5b8b-p5t7v", "frontend-6c8d9f7b54-x7k2p") in names
    assert ("checkout-7b5f9d8c6f-q2w9r", "payment-7f6d8c5b9d-h3j6k") in names
    probes = sql(
        demo_store,
        "SELECT DISTINCT src_node, src_pod FROM packets WHERE src_ip = toIPv6('::ffff:10.244.1.1')",
    )
    assert probes == [[DEMO_NODE, ""]]  # the node, never the hostNetwork kube-proxy sharing its address


def test_workloads_history_is_written(demo_store):
    rows = sql(
        demo_store, "SELECT kind, namespace, name, owner, host_network FROM workloads FINAL ORDER BY ALL"
    )
    assert ["pod", "payment", "payment-7f6d8c5b9d-h3j6k", "Deployment/payment", False] in rows
    assert ["pod", "kube-system", "kube-proxy-zx8vq", "DaemonSet/kube-proxy", True] in rows
    assert ["service", "payment-gateway", "api", "", False] in rows
    assert ["node", "", DEMO_NODE, "", False] in rows


def test_running_the_demo_twice_adds_nothing(demo_store):
    before = sql(
        demo_store,
        "SELECT (SELECT count() FROM packets), (SELECT count() FROM workloads), "
        "(SELECT count() FROM imports), (SELECT count() FROM api_calls)",
    )
    done = netrecall("demo", "--store", demo_store, "--quiet")
    assert done.returncode == 0, done.stderr
    assert "already in" in done.stdout and "Try next" not in done.stdout
    after = sql(
        demo_store,
        "SELECT (SELECT count() FROM packets), (SELECT count() FROM workloads), "
        "(SELECT count() FROM imports), (SELECT count() FROM api_calls)",
    )
    assert after == before


def test_demo_files_are_small_and_shipped():
    assert DEMO_PCAP.stat().st_size < 1_000_000
    assert Path(DEMO_PCAP).parent.joinpath("record.py").is_file()
