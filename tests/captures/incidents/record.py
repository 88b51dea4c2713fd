"""Re-record the RCA incidents from real traffic (run as root): `python tests/captures/incidents/record.py
[SCENARIO...]`. Scenarios: slow, refused, loss, newpath (default: all four).

Like the demo recorder (netrecall/demo/record.py): "nodes" are network namespaces holding a bridge
(cni0), "pods" are namespaces on veths on that bridge running tests/captures/incidents/apps.py, and
tcpdump on node-1's bridge writes the capture. Two nodes (10.82.1.0/24 and 10.82.2.0/24) are joined by
one link (10.82.0.0/30), routed by the node namespaces; ClusterIPs (10.82.96.0/24) sit on the backing
pod's interface. Every name starts with `nrrca` and every address is in 10.82.0.0/16.

Each scenario writes `<name>.pcap`, `<name>.inventory.json` (what `kubectl get pods,svc,nodes -A -o json`
would print) and `<name>.truth.json` (when the fault began, what it was, the workloads at the root):

  slow     inventory's answers go from ~5 ms to ~800 ms; api gives up on it after 500 ms and answers 504,
           web passes the 504 on to the shopper
  refused  cart stops accepting connections (an nftables rule in its namespace drops SYNs: web's connects
           time out, web answers 504) and recs' server stops (its port is closed: RST, web answers 502)
  loss     the link to node-2 drops 20% of the packets it forwards (tc netem is not built into this
           kernel, CONFIG_NET_SCH_NETEM; nftables `numgen random` drops at the same place): calls from
           node-1 to api on node-2 retransmit and slow down, without one error code
  newpath  a new deployment (analytics/reports) starts and calls finance/ledger, which only billing
           called before (by its ClusterIP), after resolving a name nobody asked before through the
           cluster DNS (dnsmasq)
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[2]))  # netrecall's demo inventory helpers, run from a checkout

from netrecall.demo.record import (  # noqa: E402
    Pod,
    Service,
    node_object,
    pod_object,
    rfc3339,
    service_object,
    wait_for,
)

NODES = {"node-1": ("10.82.1.1", "10.82.0.1"), "node-2": ("10.82.2.1", "10.82.0.2")}
SERVICE_CIDR = "10.82.96.0/24"
DNS_IP = "10.82.96.10"
PREFIX = "nrrca"


@dataclass
class Scenario:
    name: str
    pods: list[tuple[Pod, str]]  # (pod, node)
    services: list[Service]
    apps: dict[str, dict]  # role -> apps.py config (servers); clients under role "client*"
    duration: float
    fault_at: float
    truth: dict = field(default_factory=dict)
    late: tuple[str, ...] = ()  # roles started when the fault begins (a new deployment)


def _pod(role: str, name: str, ns: str, ip: str, cluster_ips: tuple[str, ...] = (), **kw) -> Pod:
    labels = {"app": name.rsplit("-", 2)[0]}
    return Pod(role, name, ns, labels, ip, f"ghcr.io/example/{labels['app']}:1.0", cluster_ips, **kw)


def _svc(name: str, ns: str, ip: str) -> Service:
    return Service(name, ns, ip, {"app": name}, labels={"app": name})


def _server(name: str, delay_ms: float = 5, calls: list | None = None, **extra) -> dict:
    return {"name": name, "delay_ms": delay_ms, "calls": calls or [], **extra}


def scenarios() -> dict[str, Scenario]:
    client = {"rate": 4, "seed": 16}
    slow = Scenario(
        "slow",
        [
            (_pod("loadgen", "loadgen-6f9c7d5b8b-p5t7v", "loadgen", "10.82.1.20", probe=False), "node-1"),
            (_pod("web", "web-6c8d9f7b54-x7k2p", "shop", "10.82.1.10"), "node-1"),
            (_pod("api", "api-7b5f9d8c6f-q2w9r", "shop", "10.82.1.11"), "node-1"),
            (_pod("inventory", "inventory-84c6d9f7b5-m4n8z", "stock", "10.82.1.12"), "node-1"),
            (_pod("catalog", "catalog-5b7d9c6f8d-t4v8n", "shop", "10.82.1.13"), "node-1"),
        ],
        [],
        {
            "web": _server(
                "web",
                calls=[
                    {"host": "10.82.1.11", "path": "/api/products/{id}", "timeout": 3, "when": "/products"},
                    {"host": "10.82.1.13", "path": "/catalog/{id}", "timeout": 3, "when": "/home"},
                ],
            ),
            "api": _server("api", calls=[{"host": "10.82.1.12", "path": "/stock/{id}", "timeout": 0.5}]),
            "inventory": _server("inventory", delay_file="{workdir}/inventory.delay"),
            "catalog": _server("catalog"),
            "loadgen": {
                **client,
                "targets": [
                    {"host": "10.82.1.10", "path": "/products/{id}"},
                    {"host": "10.82.1.10", "path": "/home/{id}"},
                ],
            },
        },
        duration=30,
        fault_at=12,
        truth={
            "fault": "inventory answers in ~800 ms instead of ~5 ms; api times out after 500 ms (504)",
            "root": {"src": "shop/api", "dst": "stock/inventory"},
            "symptoms": [["loadgen/loadgen", "shop/web", 504], ["shop/web", "shop/api", 504]],
            "healthy": {"src": "shop/web", "dst": "shop/catalog"},
        },
    )
    refused = Scenario(
        "refused",
        [
            (_pod("loadgen", "loadgen-6f9c7d5b8b-p5t7v", "loadgen", "10.82.1.20", probe=False), "node-1"),
            (_pod("web", "web-6c8d9f7b54-x7k2p", "shop", "10.82.1.10"), "node-1"),
            (_pod("cart", "cart-7d9f8c6b5d-k2m4n", "shop", "10.82.1.14"), "node-1"),
            (_pod("recs", "recs-5c8b7d6f9d-r7t2w", "shop", "10.82.1.15"), "node-1"),
            (_pod("catalog", "catalog-5b7d9c6f8d-t4v8n", "shop", "10.82.1.13"), "node-1"),
        ],
        [],
        {
            "web": _server(
                "web",
                calls=[
                    {"host": "10.82.1.14", "path": "/cart/{id}", "timeout": 1, "when": "/cart"},
                    {"host": "10.82.1.15", "path": "/recs/{id}", "timeout": 1, "when": "/recs"},
                    {"host": "10.82.1.13", "path": "/catalog/{id}", "timeout": 1, "when": "/home"},
                ],
            ),
            "cart": _server("cart"),
            "recs": _server("recs"),
            "catalog": _server("catalog"),
            "loadgen": {
                **client,
                "targets": [
                    {"host": "10.82.1.10", "path": "/cart/{id}"},
                    {"host": "10.82.1.10", "path": "/recs/{id}"},
                    {"host": "10.82.1.10", "path": "/home/{id}"},
                ],
            },
        },
        duration=25,
        fault_at=10,
        truth={
            "fault": "cart drops SYNs to port 8080 (timeouts); recs' server stopped (port closed: RST)",
            "timeout": {"src": "shop/web", "dst": "shop/cart", "port": 8080},
            "refused": {"src": "shop/web", "dst": "shop/recs", "port": 8080},
            "healthy": {"src": "shop/web", "dst": "shop/catalog"},
        },
    )
    loss = Scenario(
        "loss",
        [
            (_pod("loadgen", "loadgen-6f9c7d5b8b-p5t7v", "loadgen", "10.82.1.20", probe=False), "node-1"),
            (_pod("local", "catalog-5b7d9c6f8d-t4v8n", "shop", "10.82.1.13"), "node-1"),
            (_pod("api", "api-7b5f9d8c6f-q2w9r", "shop", "10.82.2.11"), "node-2"),
        ],
        [],
        {
            "local": _server("catalog", padding=1500),
            "api": _server("api", padding=1500),
            "loadgen": {
                **client,
                "targets": [
                    {"host": "10.82.2.11", "path": "/items/{id}", "timeout": 20},
                    {"host": "10.82.1.13", "path": "/catalog/{id}", "timeout": 20},
                ],
            },
        },
        duration=30,
        fault_at=12,
        truth={
            "fault": "the link to node-2 drops 20% of forwarded packets",
            "node": "node-2",
            "root": {"src": "loadgen/loadgen", "dst": "shop/api"},
            "healthy": {"src": "loadgen/loadgen", "dst": "shop/catalog"},
        },
    )
    newpath = Scenario(
        "newpath",
        [
            (
                _pod(
                    "dns",
                    "coredns-5d78c9869d-r8t2w",
                    "kube-system",
                    "10.82.1.2",
                    (DNS_IP,),
                    probe=False,
                    ports=((53, "UDP"),),
                ),
                "node-1",
            ),
            (_pod("loadgen", "loadgen-6f9c7d5b8b-p5t7v", "loadgen", "10.82.1.20", probe=False), "node-1"),
            (_pod("web", "web-6c8d9f7b54-x7k2p", "shop", "10.82.1.10"), "node-1"),
            (_pod("catalog", "catalog-5b7d9c6f8d-t4v8n", "shop", "10.82.1.13", ("10.82.96.30",)), "node-1"),
            (_pod("billing", "billing-6d8f7c9b5d-b3n7m", "finance", "10.82.1.16", probe=False), "node-1"),
            (_pod("ledger", "ledger-7c9d8f6b5d-l4d9r", "finance", "10.82.1.17", ("10.82.96.40",)), "node-1"),
            (_pod("reports", "reports-5f7d9c8b6d-w2x8z", "analytics", "10.82.1.30", probe=False), "node-1"),
        ],
        [
            Service("kube-dns", "kube-system", DNS_IP, {"app": "coredns"}, (("dns", 53, "UDP"),)),
            _svc("catalog", "shop", "10.82.96.30"),
            _svc("ledger", "finance", "10.82.96.40"),
        ],
        {
            "web": _server("web", calls=[{"host": "10.82.96.30", "path": "/catalog/{id}", "timeout": 2}]),
            "catalog": _server("catalog"),
            "ledger": _server("ledger"),
            "loadgen": {"rate": 2, "seed": 16, "targets": [{"host": "10.82.1.10", "path": "/home/{id}"}]},
            "billing": {
                "rate": 1,
                "seed": 3,
                "targets": [{"host": "10.82.96.40", "path": "/entries/{id}"}],  # by its ClusterIP
            },
            "reports": {
                "rate": 2,
                "seed": 5,
                "targets": [{"host": "ledger.finance.svc.cluster.local", "path": "/entries/{id}"}],
            },
        },
        duration=30,
        fault_at=12,
        late=("reports",),
        truth={
            "fault": "a new deployment, analytics/reports, starts calling finance/ledger",
            "root": {"src": "analytics/reports", "dst": "finance/ledger"},
            "dns": "ledger.finance.svc.cluster.local",
            "existing": {"src": "finance/billing", "dst": "finance/ledger"},
        },
    )
    return {s.name: s for s in (slow, refused, loss, newpath)}


class Lab:
    """Namespaces, links and processes of one recording, torn down by close() whatever happened."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.namespaces: list[str] = []
        self.netns_etc: list[Path] = []
        self.processes: dict[str, subprocess.Popen] = {}
        self.created: dict[str, str] = {}
        self.etc_netns_existed = Path("/etc/netns").exists()

    @staticmethod
    def run(*args: str) -> None:
        subprocess.run(list(args), check=True, capture_output=True, text=True)

    def add_netns(self, name: str) -> None:
        self.run("ip", "netns", "add", name)
        self.namespaces.append(name)
        for key in ("all", "default"):  # no IPv6 chatter in the capture
            self.run("ip", "netns", "exec", name, "sysctl", "-q", "-w", f"net.ipv6.conf.{key}.disable_ipv6=1")
        self.run("ip", "-n", name, "link", "set", "lo", "up")

    def build(self, scenario: Scenario) -> None:
        for node, (bridge_ip, _) in NODES.items():
            ns = f"{PREFIX}-{node}"
            self.add_netns(ns)
            self.run("ip", "netns", "exec", ns, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1")
            self.run("ip", "-n", ns, "link", "add", "cni0", "type", "bridge")
            self.run("ip", "-n", ns, "addr", "add", f"{bridge_ip}/24", "dev", "cni0")
            self.run("ip", "-n", ns, "link", "set", "cni0", "up")
        one, two = f"{PREFIX}-node-1", f"{PREFIX}-node-2"
        self.run("ip", "-n", one, "link", "add", "eth1", "type", "veth", "peer", "name", "eth1", "netns", two)
        for ns, (_, link_ip) in zip((one, two), NODES.values(), strict=True):
            self.run("ip", "-n", ns, "addr", "add", f"{link_ip}/30", "dev", "eth1")
            self.run("ip", "-n", ns, "link", "set", "eth1", "up")
        self.run("ip", "-n", one, "route", "add", "10.82.2.0/24", "via", "10.82.0.2")
        self.run("ip", "-n", two, "route", "add", "10.82.1.0/24", "via", "10.82.0.1")
        for pod, node in scenario.pods:
            if pod.role not in scenario.late:
                self.add_pod(pod, node)

    def add_pod(self, pod: Pod, node: str) -> None:
        ns, node_ns = f"{PREFIX}-{pod.role}", f"{PREFIX}-{node}"
        self.add_netns(ns)
        self.created[pod.role] = rfc3339(time.time())
        veth = f"v{pod.role[:10]}"
        pair = ["type", "veth", "peer", "name", "eth0", "netns", ns]
        self.run("ip", "-n", node_ns, "link", "add", veth, *pair)
        self.run("ip", "-n", node_ns, "link", "set", veth, "master", "cni0", "up")
        self.run("ip", "-n", ns, "addr", "add", f"{pod.ip}/24", "dev", "eth0")
        for cluster_ip in pod.cluster_ips:
            self.run("ip", "-n", ns, "addr", "add", f"{cluster_ip}/32", "dev", "eth0")
        self.run("ip", "-n", ns, "link", "set", "eth0", "up")
        self.run("ip", "-n", ns, "route", "add", "default", "via", NODES[node][0])
        self.run("ip", "-n", ns, "route", "add", SERVICE_CIDR, "dev", "eth0")  # ClusterIPs are on-link
        etc = Path("/etc/netns") / ns  # `ip netns exec` bind-mounts these over /etc
        etc.mkdir(parents=True, exist_ok=True)
        self.netns_etc.append(etc)
        search = f"{pod.namespace}.svc.cluster.local svc.cluster.local cluster.local"
        (etc / "resolv.conf").write_text(f"nameserver {DNS_IP}\nsearch {search}\noptions ndots:5\n")

    def start(self, role: str, argv: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
        out = open(self.workdir / f"{role}.log", "ab")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(
            ["ip", "netns", "exec", f"{PREFIX}-{role}", *argv],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )
        self.processes[role] = proc
        return proc

    def app(self, role: str, kind: str, config: dict) -> subprocess.Popen:
        text = json.dumps(config).replace("{workdir}", str(self.workdir))
        return self.start(role, [sys.executable, str(HERE / "apps.py"), kind], {"NRRCA_APP": text})

    def stop(self, role: str) -> None:
        proc = self.processes[role]
        proc.terminate()
        proc.wait(timeout=10)

    def close(self) -> None:
        for proc in reversed(list(self.processes.values())):
            if proc.poll() is None:
                proc.terminate()
        for proc in self.processes.values():
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for ns in reversed(self.namespaces):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        for etc in self.netns_etc:
            shutil.rmtree(etc, ignore_errors=True)
        if not self.etc_netns_existed:
            with contextlib.suppress(OSError):
                Path("/etc/netns").rmdir()


def inventory(scenario: Scenario, lab: Lab, started: float) -> dict:
    long_ago = rfc3339(started - 3 * 86400)
    items = []
    for node, (bridge_ip, _) in NODES.items():
        obj = node_object(rfc3339(started - 30 * 86400))
        obj["metadata"]["name"] = obj["metadata"]["labels"]["kubernetes.io/hostname"] = node
        obj["spec"] = {"podCIDR": bridge_ip.rsplit(".", 1)[0] + ".0/24"}
        obj["spec"]["podCIDRs"] = [obj["spec"]["podCIDR"]]
        obj["status"]["addresses"] = [
            {"type": "InternalIP", "address": bridge_ip},
            {"type": "Hostname", "address": node},
        ]
        items.append(obj)
    for pod, node in scenario.pods:
        obj = copy.deepcopy(pod_object(pod, lab.created[pod.role]))
        obj["spec"]["nodeName"] = node
        host_ip = NODES[node][0]
        obj["status"]["hostIP"], obj["status"]["hostIPs"] = host_ip, [{"ip": host_ip}]
        items.append(obj)
    items += [service_object(svc, long_ago) for svc in scenario.services]
    return {"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": ""}, "items": items}


def inject(scenario: Scenario, lab: Lab) -> None:
    """The fault, at `fault_at` seconds."""
    if scenario.name == "slow":
        (lab.workdir / "inventory.delay").write_text("800")
    elif scenario.name == "refused":
        ns = f"{PREFIX}-cart"
        lab.run("ip", "netns", "exec", ns, "nft", "add", "table", "inet", "nrrca")
        hook = "{ type filter hook input priority 0; }"
        lab.run("ip", "netns", "exec", ns, "nft", "add", "chain", "inet", "nrrca", "syns", hook)
        rule = ["tcp", "dport", "8080", "tcp", "flags", "&", "(syn|ack)", "==", "syn", "drop"]
        lab.run("ip", "netns", "exec", ns, "nft", "add", "rule", "inet", "nrrca", "syns", *rule)
        lab.stop("recs")
    elif scenario.name == "loss":
        ns = f"{PREFIX}-node-2"
        lab.run("ip", "netns", "exec", ns, "nft", "add", "table", "inet", "nrrca")
        hook = "{ type filter hook forward priority 0; }"
        lab.run("ip", "netns", "exec", ns, "nft", "add", "chain", "inet", "nrrca", "lossy", hook)
        rule = ["numgen", "random", "mod", "100", "<", "20", "drop"]
        lab.run("ip", "netns", "exec", ns, "nft", "add", "rule", "inet", "nrrca", "lossy", *rule)
    elif scenario.name == "newpath":
        pod = next(p for p, _ in scenario.pods if p.role == "reports")
        lab.add_pod(pod, "node-1")
        config = {**scenario.apps["reports"], "duration": scenario.duration - scenario.fault_at}
        lab.app("reports", "client", config)


def record(scenario: Scenario, out: Path) -> None:
    workdir = Path(tempfile.mkdtemp(prefix=f"nrrca-{scenario.name}-"))
    lab = Lab(workdir)
    started = time.time()
    try:
        lab.build(scenario)
        pods = {p.role: p for p, _ in scenario.pods}
        if "dns" in pods:
            hosts = workdir / "cluster.hosts"
            hosts.write_text(
                "".join(
                    f"{s.cluster_ip} {s.name}.{s.namespace}.svc.cluster.local\n" for s in scenario.services
                )
            )
            dnsmasq = ["dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null", "--no-resolv"]
            dnsmasq += ["--no-hosts"]
            dnsmasq += [f"--addn-hosts={hosts}", "--local=/cluster.local/", "--cache-size=0", "--user=root"]
            lab.start("dns", [*dnsmasq, "--group=root", "--pid-file"])
        clients = [r for r, c in scenario.apps.items() if "targets" in c and r not in scenario.late]
        for role, config in scenario.apps.items():
            if role in clients or role in scenario.late:
                continue
            ready = workdir / f"{role}.ready"
            lab.app(role, "server", {**config, "ready_file": str(ready)})
            wait_for(ready.exists, 20, f"the {role} server")
        pcap = workdir / "capture.pcap"
        tcpdump = lab.start(
            "node-1", ["tcpdump", "-i", "cni0", "-n", "-s", "0", "-U", "--immediate-mode", "-w", str(pcap)]
        )
        wait_for(lambda: b"listening on" in (workdir / "node-1.log").read_bytes(), 10, "tcpdump")
        time.sleep(0.3)
        began = time.time_ns()
        for role in clients:
            lab.app(role, "client", {**scenario.apps[role], "duration": scenario.duration})
        time.sleep(scenario.fault_at)
        fault_ns = time.time_ns()
        inject(scenario, lab)
        print(f"{scenario.name}: fault injected at {rfc3339(fault_ns / 1e9)}", flush=True)
        for role in clients:
            lab.processes[role].wait(timeout=scenario.duration + 60)
        if scenario.late:
            lab.processes[scenario.late[0]].wait(timeout=scenario.duration + 60)
        time.sleep(1.0)
        ended = time.time_ns()
        tcpdump.send_signal(signal.SIGINT)
        tcpdump.wait(timeout=10)
        shutil.copyfile(pcap, out / f"{scenario.name}.pcap")
        inv = inventory(scenario, lab, started)
        (out / f"{scenario.name}.inventory.json").write_text(json.dumps(inv, indent=1) + "\n")
        truth = {"scenario": scenario.name, "node": "node-1", "start_ns": began, "fault_ns": fault_ns}
        truth.update(end_ns=ended, **scenario.truth)
        (out / f"{scenario.name}.truth.json").write_text(json.dumps(truth, indent=1) + "\n")
        print(f"{scenario.name}: wrote {out / (scenario.name + '.pcap')} ({pcap.stat().st_size:,} bytes)")
    finally:
        lab.close()
        shutil.rmtree(workdir, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scenario", nargs="*", help="slow, refused, loss, newpath (default: all)")
    parser.add_argument("--out", type=Path, default=HERE)
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("record.py needs root (network namespaces)")
    for tool in ("ip", "tcpdump", "dnsmasq", "nft"):
        if not shutil.which(tool):
            package = tool if tool != "ip" else "iproute2"
            raise SystemExit(f"{tool} is not installed (apt-get install {package})")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    known = scenarios()
    for name in args.scenario or list(known):
        if name not in known:
            raise SystemExit(f"unknown scenario {name!r}: use {', '.join(known)}")
        record(known[name], args.out)


if __name__ == "__main__":
    main()
