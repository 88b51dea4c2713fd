"""A small Kubernetes-node lookalike made of network namespaces, for the agent's capture tests.

`NetLab` builds a "node" namespace with a bridge, one namespace per "pod" joined to the bridge by a veth
pair (the host side lives in the node namespace, like a CNI does), and an uplink veth from the node to
the root namespace so the agent inside the node can reach a sink running in the test process. Names
carry a short random tag so parallel test runs never collide.
"""

from __future__ import annotations

import secrets
import subprocess
from dataclasses import dataclass, field


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), check=check, capture_output=True, text=True)


@dataclass
class Pod:
    name: str
    netns: str
    ip: str
    host_veth: str  # the side in the node namespace (what a node agent captures on)


@dataclass
class NetLab:
    tag: str = field(default_factory=lambda: secrets.token_hex(2))
    subnet: int = 0  # third octet of 10.<x>.<subnet>.0/24, set from the tag
    pods: dict[str, Pod] = field(default_factory=dict)
    node_ns: str = ""
    uplink_root_ip: str = ""
    uplink_node_ip: str = ""

    def __post_init__(self) -> None:
        self.subnet = int(self.tag, 16) % 200 + 20
        self.node_ns = f"nrnode{self.tag}"
        self.uplink_root_ip = f"10.251.{self.subnet}.1"
        self.uplink_node_ip = f"10.251.{self.subnet}.2"

    def node(self, *cmd: str) -> list[str]:
        """A command line that runs inside the node namespace."""
        return ["ip", "netns", "exec", self.node_ns, *cmd]

    def in_pod(self, pod: str, *cmd: str) -> list[str]:
        return ["ip", "netns", "exec", self.pods[pod].netns, *cmd]

    def up(self) -> NetLab:
        t = self.tag
        sh("ip", "netns", "add", self.node_ns)
        self._quiet(self.node())
        sh(*self.node("ip", "link", "set", "lo", "up"))
        sh(*self.node("ip", "link", "add", f"nrbr{t}", "type", "bridge"))
        sh(*self.node("ip", "addr", "add", f"10.250.{self.subnet}.1/24", "dev", f"nrbr{t}"))
        sh(*self.node("ip", "link", "set", f"nrbr{t}", "up"))
        # uplink: root <-> node
        sh("ip", "link", "add", f"nrup{t}", "type", "veth", "peer", "name", "uplink", "netns", self.node_ns)
        sh("ip", "addr", "add", f"{self.uplink_root_ip}/30", "dev", f"nrup{t}")
        sh("ip", "link", "set", f"nrup{t}", "up")
        sh(*self.node("ip", "addr", "add", f"{self.uplink_node_ip}/30", "dev", "uplink"))
        sh(*self.node("ip", "link", "set", "uplink", "up"))
        return self

    def add_pod(self, name: str, host_octet: int) -> Pod:
        t = self.tag
        netns = f"nrpod{name}{t}"
        host_veth = f"veth{name}{t}"
        ip = f"10.250.{self.subnet}.{host_octet}"
        sh("ip", "netns", "add", netns)
        self._quiet(["ip", "netns", "exec", netns])
        sh("ip", "netns", "exec", netns, "ip", "link", "set", "lo", "up")
        sh(*self.node("ip", "link", "add", host_veth, "type", "veth", "peer", "name", "eth0", "netns", netns))
        sh(*self.node("ip", "link", "set", host_veth, "master", f"nrbr{t}"))
        sh(*self.node("ip", "link", "set", host_veth, "up"))
        sh("ip", "netns", "exec", netns, "ip", "addr", "add", f"{ip}/24", "dev", "eth0")
        sh("ip", "netns", "exec", netns, "ip", "link", "set", "eth0", "up")
        sh("ip", "netns", "exec", netns, "ip", "route", "add", "default", "via", f"10.250.{self.subnet}.1")
        pod = Pod(name, netns, ip, host_veth)
        self.pods[name] = pod
        return pod

    @staticmethod
    def _quiet(prefix: list[str]) -> None:
        """No IPv6: its router solicitations and DAD would be unprompted traffic at unpredictable times,
        which tests comparing two captures started a moment apart cannot attribute."""
        for key in ("all", "default"):
            sh(*prefix, "sysctl", "-qw", f"net.ipv6.conf.{key}.disable_ipv6=1")

    def remove_pod(self, name: str) -> None:
        pod = self.pods.pop(name)
        sh("ip", "netns", "del", pod.netns, check=False)  # takes its veth pair with it

    def down(self) -> None:
        for name in list(self.pods):
            self.remove_pod(name)
        sh("ip", "link", "del", f"nrup{self.tag}", check=False)
        sh("ip", "netns", "del", self.node_ns, check=False)
