"""The demo recorder re-records a short incident from real traffic (as root): tshark sees healthy calls
before the DNS failure and NXDOMAIN + 503/500/502 after it, the inventory holds the pods' real IPs, and
no namespace or /etc/netns entry is left behind."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from conftest import require_tool

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root")


def netns_names() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def test_record_a_short_incident(tmp_path: Path):
    tshark = require_tool("tshark")
    require_tool("dnsmasq")
    require_tool("tcpdump")
    before = netns_names()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "netrecall.demo.record",
            "--out",
            str(tmp_path),
            "--duration",
            "6",
            "--fail-at",
            "3",
            "--rate",
            "4",
        ],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert not {n for n in netns_names() - before if n.startswith("nrdemo")}
    assert not list(Path("/etc/netns").glob("nrdemo*"))  # an absent directory globs to nothing

    fields = subprocess.run(
        [
            tshark,
            "-r",
            str(tmp_path / "incident.pcap"),
            "-Y",
            "http.response || dns.flags.response == 1",
            "-T",
            "fields",
            "-e",
            "frame.time_epoch",
            "-e",
            "http.response.code",
            "-e",
            "dns.qry.name",
            "-e",
            "dns.flags.rcode",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    rows = [line.split("\t") for line in fields]
    gateway = [
        (float(t), rcode) for t, _, name, rcode in rows if name == "api.payment-gateway.svc.cluster.local"
    ]
    assert gateway, "payment never asked DNS for the gateway"
    # Healthy answers first, then NXDOMAIN (rcode 3) only: the failure starts once and stays.
    rcodes = [rcode for _, rcode in sorted(gateway)]
    assert rcodes[0] == "0" and rcodes[-1] == "3"
    assert rcodes == sorted(rcodes)
    statuses = Counter(code for _, code, _, _ in rows if code)
    assert statuses["200"] > 0 and statuses["503"] > 0 and statuses["500"] > 0 and statuses["502"] > 0
    catalog = {rcode for _, _, name, rcode in rows if name == "catalog.shop.svc.cluster.local"}
    assert catalog == {"0"}  # the other name keeps resolving

    items = json.loads((tmp_path / "inventory.json").read_text())["items"]
    ips = {i["metadata"]["name"]: i["status"]["podIP"] for i in items if i["kind"] == "Pod"}
    assert ips["payment-7f6d8c5b9d-h3j6k"] == "10.244.1.13"
    hosts = subprocess.run(
        [tshark, "-r", str(tmp_path / "incident.pcap"), "-T", "fields", "-e", "ip.src"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert set(hosts) <= set(ips.values()) | {i["spec"]["clusterIP"] for i in items if i["kind"] == "Service"}
