"""Re-record the demo incident from real traffic (run as root): `python -m netrecall.demo.record [--out DIR]`.

One "node" is a network namespace holding a bridge (the CNI bridge, 10.244.1.1/24); every "pod" is a
network namespace on a veth on that bridge, running a real program (netrecall/demo/apps.py): a shop
(frontend -> checkout -> payment -> the payment gateway, frontend -> catalog), a load generator, the
kubelet's health probes from the node, and a real DNS server (dnsmasq) serving cluster.local at the
kube-dns ClusterIP. ClusterIPs live on the backing pod's interface (there is no kube-proxy here), so a
call to a Service name really goes to its ClusterIP on the wire.

The incident: after `--fail-at` seconds the DNS server stops knowing
api.payment-gateway.svc.cluster.local and answers NXDOMAIN; payment answers 503, checkout 500, and
frontend 502 to the shopper. Everything else (home and product pages through catalog, the probes, the
catalog name) keeps working.

tcpdump on the bridge writes incident.pcap; inventory.json is what `kubectl get pods,svc,nodes -A -o json`
would have printed for this cluster at the end (real IPs, labels, ReplicaSet owners, ClusterIPs, the node
and a hostNetwork kube-proxy). Namespaces, processes and files are always cleaned up.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

NODE_NAME = "demo-node-1"
NODE_IP = "10.244.1.1"
SERVICE_CIDR = "10.96.0.0/16"
DNS_IP = "10.96.0.10"
HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Pod:
    role: str
    name: str  # <deployment>-<pod-template-hash>-<suffix>, as a Deployment names them
    namespace: str
    labels: dict[str, str]
    ip: str
    image: str
    cluster_ips: tuple[str, ...] = ()  # the Services' ClusterIPs this pod answers on
    probe: bool = True
    ports: tuple[tuple[int, str], ...] = ((8080, "TCP"),)

    @property
    def deployment(self) -> str:
        return self.name.rsplit("-", 2)[0]

    @property
    def template_hash(self) -> str:
        return self.name.rsplit("-", 2)[1]


@dataclass(frozen=True)
class Service:
    name: str
    namespace: str
    cluster_ip: str
    selector: dict[str, str]
    ports: tuple[tuple[str, int, str], ...] = (("http", 8080, "TCP"),)
    labels: dict[str, str] = field(default_factory=dict)


PODS = [
    Pod(
        "dns",
        "coredns-5d78c9869d-r8t2w",
        "kube-system",
        {"k8s-app": "kube-dns"},
        "10.244.1.2",
        "registry.k8s.io/coredns/coredns:v1.11.1",
        (DNS_IP,),
        probe=False,
        ports=((53, "UDP"), (53, "TCP")),
    ),
    Pod(
        "frontend",
        "frontend-6c8d9f7b54-x7k2p",
        "shop",
        {"app": "frontend", "tier": "web"},
        "10.244.1.10",
        "ghcr.io/example/shop-frontend:1.4.2",
    ),
    Pod(
        "catalog",
        "catalog-84c6d9f7b5-m4n8z",
        "shop",
        {"app": "catalog", "tier": "backend"},
        "10.244.1.11",
        "ghcr.io/example/shop-catalog:2.0.1",
        ("10.96.0.30",),
    ),
    Pod(
        "checkout",
        "checkout-7b5f9d8c6f-q2w9r",
        "shop",
        {"app": "checkout", "tier": "backend"},
        "10.244.1.12",
        "ghcr.io/example/shop-checkout:3.1.0",
    ),
    Pod(
        "payment",
        "payment-7f6d8c5b9d-h3j6k",
        "payment",
        {"app": "payment"},
        "10.244.1.13",
        "ghcr.io/example/payment:0.9.7",
    ),
    Pod(
        "gateway",
        "api-5b7d9c6f8d-t4v8n",
        "payment-gateway",
        {"app": "api", "provider": "paygate"},
        "10.244.1.14",
        "ghcr.io/example/paygate-api:5.2.0",
        ("10.96.0.40",),
    ),
    Pod(
        "loadgen",
        "loadgen-6f9c7d5b8b-p5t7v",
        "loadgen",
        {"app": "loadgen"},
        "10.244.1.20",
        "ghcr.io/example/loadgen:1.0.0",
        probe=False,
        ports=(),
    ),
]

SERVICES = [
    Service(
        "kubernetes",
        "default",
        "10.96.0.1",
        {},
        (("https", 443, "TCP"),),
        {"component": "apiserver", "provider": "kubernetes"},
    ),
    Service(
        "kube-dns",
        "kube-system",
        DNS_IP,
        {"k8s-app": "kube-dns"},
        (("dns", 53, "UDP"), ("dns-tcp", 53, "TCP")),
        {"k8s-app": "kube-dns"},
    ),
    Service("frontend", "shop", "10.96.0.20", {"app": "frontend"}, labels={"app": "frontend"}),
    Service("catalog", "shop", "10.96.0.30", {"app": "catalog"}, labels={"app": "catalog"}),
    Service("checkout", "shop", "10.96.0.31", {"app": "checkout"}, labels={"app": "checkout"}),
    Service("payment", "payment", "10.96.0.35", {"app": "payment"}, labels={"app": "payment"}),
    Service("api", "payment-gateway", "10.96.0.40", {"app": "api"}, labels={"app": "api"}),
]

GATEWAY_NAME = "api.payment-gateway.svc.cluster.local"


def dns_records(broken: bool) -> str:
    """The DNS server's records (a hosts file): every Service name -> its ClusterIP."""
    lines = [
        f"{svc.cluster_ip} {svc.name}.{svc.namespace}.svc.cluster.local"
        for svc in SERVICES
        if not (broken and f"{svc.name}.{svc.namespace}.svc.cluster.local" == GATEWAY_NAME)
    ]
    return "\n".join(lines) + "\n"


class Cluster:
    """The namespaces, links and processes of one recording, torn down by close() whatever happened."""

    def __init__(self, workdir: Path) -> None:
        self.prefix = f"nrdemo{os.getpid() % 100000}"
        self.workdir = workdir
        self.namespaces: list[str] = []
        self.netns_etc: list[Path] = []
        self.processes: list[subprocess.Popen] = []
        self.created: dict[str, str] = {}  # pod role -> RFC 3339 creation time
        self.etc_netns_existed = Path("/etc/netns").exists()

    @property
    def node_ns(self) -> str:
        return f"{self.prefix}-node"

    def pod_ns(self, pod: Pod) -> str:
        return f"{self.prefix}-{pod.role}"

    def run(self, *args: str) -> None:
        subprocess.run(list(args), check=True, capture_output=True, text=True)

    def add_netns(self, name: str) -> None:
        self.run("ip", "netns", "add", name)
        self.namespaces.append(name)
        # No IPv6 in the demo: no router solicitations or MLD reports in the capture.
        self.run("ip", "netns", "exec", name, "sysctl", "-q", "-w", "net.ipv6.conf.all.disable_ipv6=1")
        self.run("ip", "netns", "exec", name, "sysctl", "-q", "-w", "net.ipv6.conf.default.disable_ipv6=1")
        self.run("ip", "-n", name, "link", "set", "lo", "up")

    def build(self) -> None:
        self.add_netns(self.node_ns)
        self.run("ip", "-n", self.node_ns, "link", "add", "cni0", "type", "bridge")
        self.run("ip", "-n", self.node_ns, "addr", "add", f"{NODE_IP}/24", "dev", "cni0")
        self.run("ip", "-n", self.node_ns, "link", "set", "cni0", "up")
        for pod in PODS:
            ns = self.pod_ns(pod)
            self.add_netns(ns)
            self.created[pod.role] = rfc3339(time.time())
            veth = f"veth{pod.role[:8]}"
            self.run(
                "ip",
                "-n",
                self.node_ns,
                "link",
                "add",
                veth,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                ns,
            )
            self.run("ip", "-n", self.node_ns, "link", "set", veth, "master", "cni0", "up")
            self.run("ip", "-n", ns, "addr", "add", f"{pod.ip}/24", "dev", "eth0")
            for cluster_ip in pod.cluster_ips:
                self.run("ip", "-n", ns, "addr", "add", f"{cluster_ip}/32", "dev", "eth0")
            self.run("ip", "-n", ns, "link", "set", "eth0", "up")
            self.run("ip", "-n", ns, "route", "add", "default", "via", NODE_IP)
            # ClusterIPs are on-link: the backing pod answers ARP for its Service's address.
            self.run("ip", "-n", ns, "route", "add", SERVICE_CIDR, "dev", "eth0")
            etc = Path("/etc/netns") / ns  # `ip netns exec` bind-mounts these over /etc
            etc.mkdir(parents=True, exist_ok=True)
            self.netns_etc.append(etc)
            search = f"{pod.namespace}.svc.cluster.local svc.cluster.local cluster.local"
            (etc / "resolv.conf").write_text(f"nameserver {DNS_IP}\nsearch {search}\noptions ndots:5\n")

    def start(
        self, ns: str, argv: list[str], env: dict[str, str] | None = None, log: str = ""
    ) -> subprocess.Popen:
        out = open(self.workdir / (log or "process.log"), "ab")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, *argv],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )
        self.processes.append(proc)
        return proc

    def close(self) -> None:
        for proc in reversed(self.processes):
            if proc.poll() is None:
                proc.terminate()
        for proc in self.processes:
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
            with contextlib.suppress(OSError):  # another user's namespaces may have files there now
                Path("/etc/netns").rmdir()


def rfc3339(seconds: float) -> str:
    return datetime.fromtimestamp(int(seconds), tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _uid(*parts: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, "netrecall-demo/" + "/".join(parts)))


def pod_object(pod: Pod, created: str) -> dict:
    rs = f"{pod.deployment}-{pod.template_hash}"
    container = {
        "name": pod.deployment,
        "image": pod.image,
        "ports": [{"containerPort": port, "protocol": proto} for port, proto in pod.ports],
    }
    if pod.probe:
        container["livenessProbe"] = {
            "httpGet": {"path": "/healthz", "port": 8080, "scheme": "HTTP"},
            "periodSeconds": 5,
        }
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": pod.name,
            "namespace": pod.namespace,
            "uid": _uid("pod", pod.namespace, pod.name),
            "generateName": f"{rs}-",
            "labels": {**pod.labels, "pod-template-hash": pod.template_hash},
            "creationTimestamp": created,
            "ownerReferences": [
                {
                    "apiVersion": "apps/v1",
                    "kind": "ReplicaSet",
                    "name": rs,
                    "uid": _uid("rs", pod.namespace, rs),
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "spec": {
            "containers": [container],
            "dnsPolicy": "ClusterFirst",
            "nodeName": NODE_NAME,
            "restartPolicy": "Always",
            "serviceAccountName": "default",
        },
        "status": {
            "phase": "Running",
            "hostIP": NODE_IP,
            "hostIPs": [{"ip": NODE_IP}],
            "podIP": pod.ip,
            "podIPs": [{"ip": pod.ip}],
            "startTime": created,
            "qosClass": "BestEffort",
            "conditions": [
                {"type": t, "status": "True", "lastTransitionTime": created}
                for t in ("Initialized", "Ready", "ContainersReady", "PodScheduled")
            ],
            "containerStatuses": [
                {
                    "name": pod.deployment,
                    "image": pod.image,
                    "ready": True,
                    "started": True,
                    "restartCount": 0,
                    "containerID": "containerd://" + uuid.uuid5(uuid.NAMESPACE_URL, pod.name).hex * 2,
                    "state": {"running": {"startedAt": created}},
                }
            ],
        },
    }


def kube_proxy_object(created: str) -> dict:
    """The node's kube-proxy: a hostNetwork DaemonSet pod, so its IP is the node's."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "kube-proxy-zx8vq",
            "namespace": "kube-system",
            "uid": _uid("pod", "kube-proxy"),
            "labels": {
                "k8s-app": "kube-proxy",
                "controller-revision-hash": "6d4b7c9f5b",
                "pod-template-generation": "1",
            },
            "creationTimestamp": created,
            "ownerReferences": [
                {
                    "apiVersion": "apps/v1",
                    "kind": "DaemonSet",
                    "name": "kube-proxy",
                    "uid": _uid("ds", "kube-proxy"),
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "spec": {
            "containers": [{"name": "kube-proxy", "image": "registry.k8s.io/kube-proxy:v1.30.2"}],
            "hostNetwork": True,
            "nodeName": NODE_NAME,
            "priorityClassName": "system-node-critical",
        },
        "status": {
            "phase": "Running",
            "hostIP": NODE_IP,
            "hostIPs": [{"ip": NODE_IP}],
            "podIP": NODE_IP,
            "podIPs": [{"ip": NODE_IP}],
            "startTime": created,
            "qosClass": "BestEffort",
        },
    }


def service_object(svc: Service, created: str) -> dict:
    spec: dict = {
        "type": "ClusterIP",
        "clusterIP": svc.cluster_ip,
        "clusterIPs": [svc.cluster_ip],
        "ipFamilies": ["IPv4"],
        "ipFamilyPolicy": "SingleStack",
        "ports": [
            {"name": name, "port": port, "protocol": proto, "targetPort": port}
            for name, port, proto in svc.ports
        ],
        "sessionAffinity": "None",
    }
    if svc.selector:
        spec["selector"] = svc.selector
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": svc.name,
            "namespace": svc.namespace,
            "uid": _uid("svc", svc.namespace, svc.name),
            "labels": svc.labels,
            "creationTimestamp": created,
        },
        "spec": spec,
        "status": {"loadBalancer": {}},
    }


def node_object(created: str) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": NODE_NAME,
            "uid": _uid("node", NODE_NAME),
            "creationTimestamp": created,
            "labels": {
                "kubernetes.io/hostname": NODE_NAME,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "topology.kubernetes.io/zone": "demo-a",
            },
        },
        "spec": {"podCIDR": "10.244.1.0/24", "podCIDRs": ["10.244.1.0/24"]},
        "status": {
            "addresses": [
                {"type": "InternalIP", "address": NODE_IP},
                {"type": "Hostname", "address": NODE_NAME},
            ]
        },
    }


def inventory(cluster: Cluster, started: float) -> dict:
    # Services and the node predate this recording, as they would in a running cluster.
    long_ago = rfc3339(started - 3 * 86400)
    items = [node_object(rfc3339(started - 30 * 86400)), kube_proxy_object(rfc3339(started - 30 * 86400))]
    items += [pod_object(pod, cluster.created[pod.role]) for pod in PODS]
    items += [service_object(svc, long_ago) for svc in SERVICES]
    return {"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": ""}, "items": items}


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise RuntimeError(f"timed out waiting for {what}")


def record(out: Path, duration: float, fail_at: float, rate: float) -> None:
    if os.geteuid() != 0:
        raise SystemExit("record.py needs root (network namespaces)")
    for tool in ("ip", "tcpdump", "dnsmasq"):
        if not shutil.which(tool):
            raise SystemExit(f"{tool} is not installed")
    out.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="netrecall-demo-"))
    cluster = Cluster(workdir)
    started = time.time()
    try:
        cluster.build()
        pods = {pod.role: pod for pod in PODS}
        hosts = workdir / "cluster.hosts"
        hosts.write_text(dns_records(broken=False))
        dns = cluster.start(
            cluster.pod_ns(pods["dns"]),
            [
                "dnsmasq",
                "--keep-in-foreground",
                "--conf-file=/dev/null",
                "--no-resolv",
                "--no-hosts",
                f"--addn-hosts={hosts}",
                "--local=/cluster.local/",
                "--cache-size=0",
                "--user=root",
                "--group=root",
                "--pid-file",
                "--log-queries",
                f"--log-facility={workdir / 'dnsmasq.log'}",
            ],
            log="dnsmasq.out",
        )
        topology = {
            "pods": {p.role: {"ip": p.ip, "probe": p.probe} for p in PODS},
            "duration": duration,
            "rate": rate,
            "seed": 7,
        }
        for role in ("gateway", "payment", "catalog", "checkout", "frontend"):
            ready = workdir / f"{role}.ready"
            env = {"NETRECALL_DEMO": json.dumps({**topology, "ready_file": str(ready)})}
            cluster.start(
                cluster.pod_ns(pods[role]),
                [sys.executable, "-m", "netrecall.demo.apps", role],
                env,
                log=f"{role}.log",
            )
            wait_for(ready.exists, 20, f"the {role} server")
        pcap = workdir / "incident.pcap"
        tcpdump = cluster.start(
            cluster.node_ns,
            ["tcpdump", "-i", "cni0", "-n", "-s", "0", "-U", "-w", str(pcap)],
            log="tcpdump.log",
        )
        wait_for(lambda: b"listening on" in (workdir / "tcpdump.log").read_bytes(), 10, "tcpdump")
        time.sleep(0.3)
        env = {"NETRECALL_DEMO": json.dumps(topology)}
        prober = cluster.start(
            cluster.node_ns, [sys.executable, "-m", "netrecall.demo.apps", "prober"], env, log="prober.log"
        )
        loadgen = cluster.start(
            cluster.pod_ns(pods["loadgen"]),
            [sys.executable, "-m", "netrecall.demo.apps", "loadgen"],
            env,
            log="loadgen.log",
        )
        time.sleep(fail_at)
        # The incident: cluster DNS forgets the payment gateway's name and answers NXDOMAIN from now on.
        hosts.write_text(dns_records(broken=True))
        dns.send_signal(signal.SIGHUP)
        print(f"DNS now answers NXDOMAIN for {GATEWAY_NAME} ({rfc3339(time.time())})", flush=True)
        loadgen.wait(timeout=duration + 30)
        prober.wait(timeout=30)
        time.sleep(0.5)
        tcpdump.send_signal(signal.SIGINT)
        tcpdump.wait(timeout=10)
        shutil.copyfile(pcap, out / "incident.pcap")
        (out / "inventory.json").write_text(json.dumps(inventory(cluster, started), indent=1) + "\n")
        summary = (workdir / "tcpdump.log").read_text().strip().splitlines()
        print(
            f"wrote {out / 'incident.pcap'} ({pcap.stat().st_size:,} bytes; "
            f"{next((s for s in summary if 'captured' in s), '?')}) and {out / 'inventory.json'}"
        )
    finally:
        cluster.close()
        shutil.rmtree(workdir, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE, help="where incident.pcap and inventory.json go")
    parser.add_argument("--duration", type=float, default=25.0, help="seconds of shopping traffic")
    parser.add_argument("--fail-at", type=float, default=10.0, help="seconds until DNS starts failing")
    parser.add_argument("--rate", type=float, default=2.5, help="shopper requests per second")
    args = parser.parse_args()
    # SIGTERM unwinds like Ctrl-C, so the finally clause still removes every namespace and process.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    record(args.out, args.duration, args.fail_at, args.rate)


if __name__ == "__main__":
    main()
