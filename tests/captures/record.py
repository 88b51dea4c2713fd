"""Re-record the small real captures the import tests compare against tshark (run as root: `python
tests/captures/record.py`). Real traffic only: curl against Python's http.server on loopback, pings and
UDP in network namespaces joined by veth pairs (for VLAN/QinQ tags and IPv4/IPv6 fragments).

Files written next to this script:
  lo-http.pcap        tcpdump -i lo, µs pcap                 lo-http-ns.pcap  same with ns timestamps
  lo-http.pcapng      dumpcap -i lo (pcapng)                 any-sll.pcap     tcpdump -i any (Linux SLL)
  any-sll2.pcap       tcpdump -i any -y LINUX_SLL2           lo-ipv6.pcap     HTTP over ::1
  vlan-frag.pcap      IPv4/IPv6 fragments (ping, UDP) and 802.1Q, 802.1ad+802.1Q tagged frames on a veth
  multi-if.pcapng     dumpcap on `any` (Linux SLL) and a veth (Ethernet) at once: two link types
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).parent
PORT = 18080
# --immediate-mode: without it tcpdump, run from Python, saved no packets here before its SIGINT
TCPDUMP = ["tcpdump", "--immediate-mode", "-U", "-s", "0"]


def sh(command: str, check: bool = True) -> None:
    subprocess.run(command, shell=True, check=check, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


@contextlib.contextmanager
def http_server(bind: str = "127.0.0.1", port: int = PORT, netns: str = ""):
    prefix = ["ip", "netns", "exec", netns] if netns else []
    server = subprocess.Popen(
        [*prefix, sys.executable, "-m", "http.server", str(port), "--bind", bind, "--directory", str(HERE)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(0.8)
    try:
        yield
    finally:
        server.terminate()
        server.wait()


@contextlib.contextmanager
def capture(command: list[str]):
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)
    try:
        yield
    finally:
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=10)


def curl(url: str, times: int = 3, netns: str = "") -> None:
    prefix = f"ip netns exec {netns} " if netns else ""
    for _ in range(times):
        sh(f"{prefix}curl -s -o /dev/null -m 3 {url}", check=False)


def record_loopback() -> None:
    url = f"http://127.0.0.1:{PORT}/record.py"
    with http_server():
        with capture([*TCPDUMP, "-i", "lo", "-w", str(HERE / "lo-http.pcap"), f"tcp port {PORT}"]):
            curl(url)
        with capture(
            [
                *TCPDUMP,
                "-i",
                "lo",
                "--time-stamp-precision=nano",
                "-w",
                str(HERE / "lo-http-ns.pcap"),
                f"tcp port {PORT}",
            ]
        ):
            curl(url)
        with capture(
            ["dumpcap", "-q", "-i", "lo", "-f", f"tcp port {PORT}", "-w", str(HERE / "lo-http.pcapng")]
        ):
            curl(url)
        with capture(
            [*TCPDUMP, "-i", "any", "-y", "LINUX_SLL", "-w", str(HERE / "any-sll.pcap"), f"tcp port {PORT}"]
        ):
            curl(url, 2)
        with capture(
            [*TCPDUMP, "-i", "any", "-y", "LINUX_SLL2", "-w", str(HERE / "any-sll2.pcap"), f"tcp port {PORT}"]
        ):
            curl(url, 2)
    lo_ipv6 = [*TCPDUMP, "-i", "lo", "-w", str(HERE / "lo-ipv6.pcap"), f"tcp port {PORT}"]
    with http_server(bind="::1"), capture(lo_ipv6):
        curl(f"http://[::1]:{PORT}/record.py", 2)


def netns_pair() -> None:
    """nr-a <-veth-> nr-b with MTU 1280, so large pings and datagrams really fragment."""
    teardown()
    for command in [
        "ip netns add nr-a",
        "ip netns add nr-b",
        "ip link add nr-va type veth peer name nr-vb",
        "ip link set nr-va netns nr-a",
        "ip link set nr-vb netns nr-b",
    ]:
        sh(command)
    for ns, dev, last in (("nr-a", "nr-va", 1), ("nr-b", "nr-vb", 2)):
        x = f"ip netns exec {ns}"
        sh(f"{x} ip link set lo up")
        sh(f"{x} ip link set {dev} mtu 1280 up")
        sh(f"{x} ip addr add 10.77.0.{last}/24 dev {dev}")
        sh(f"{x} ip -6 addr add fd77::{last}/64 dev {dev} nodad")


def teardown() -> None:
    sh("ip netns del nr-a", check=False)
    sh("ip netns del nr-b", check=False)


# This kernel has neither the 8021q module nor tc's vlan action, so tagged traffic is sent as raw frames
# over the real veth (AF_PACKET) and recorded by tcpdump on the other end.
SEND_TAGGED = r"""
import socket, struct
def csum(b):
    if len(b) % 2: b += b"\0"
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b)); s = (s >> 16) + (s & 0xFFFF); s += s >> 16
    return (~s) & 0xFFFF
def ipv4(proto, payload, src="10.77.0.1", dst="10.77.0.2"):
    h = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 7, 0, 64, proto, 0,
                    socket.inet_aton(src), socket.inet_aton(dst))
    return h[:10] + struct.pack("!H", csum(h)) + h[12:] + payload
def udp(sport, dport, data):
    return struct.pack("!HHHH", sport, dport, 8 + len(data), 0) + data
def tcp_syn(sport, dport):
    return struct.pack("!HHIIBBHHH", sport, dport, 1000, 0, 0x50, 0x02, 65535, 0, 0)
def ipv6_udp(sport, dport, data):
    u = udp(sport, dport, data)
    return struct.pack("!IHBB16s16s", 0x60000000, len(u), 17, 64,
                       socket.inet_pton(socket.AF_INET6, "fd77::1"),
                       socket.inet_pton(socket.AF_INET6, "fd77::2")) + u
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind(("nr-va", 0))
mac = s.getsockname()[4]
eth = b"\xff" * 6 + mac
frames = [
    eth + struct.pack("!HHH", 0x8100, 10, 0x0800) + ipv4(17, udp(40000, 5353, b"vlan 10")),
    eth + struct.pack("!HHHHH", 0x88A8, 20, 0x8100, 30, 0x0800) + ipv4(6, tcp_syn(40001, 80)),
    eth + struct.pack("!HHH", 0x8100, 0x2000 | 40, 0x86DD) + ipv6_udp(40002, 53, b"vlan 40 v6"),
]
for f in frames:
    s.send(f)
"""


def record_netns() -> None:
    netns_pair()
    try:
        with capture(
            ["ip", "netns", "exec", "nr-b", *TCPDUMP, "-i", "nr-vb", "-w", str(HERE / "vlan-frag.pcap")]
        ):
            # Datagrams larger than the MTU: IPv4 fragments and IPv6 fragment headers (sent twice: the first
            # may wait for neighbour discovery), answered by ICMP port unreachable
            for family, address in (("AF_INET", "10.77.0.2"), ("AF_INET6", "fd77::2")):
                big = (
                    f"import socket, time; s = socket.socket(socket.{family}, socket.SOCK_DGRAM); "
                    f"s.sendto(b'x' * 3000, ('{address}', 9999)); time.sleep(0.3); "
                    f"s.sendto(b'y' * 3000, ('{address}', 9999))"
                )
                subprocess.run(["ip", "netns", "exec", "nr-a", sys.executable, "-c", big], check=False)
            subprocess.run(["ip", "netns", "exec", "nr-a", sys.executable, "-c", SEND_TAGGED], check=True)
        with (
            http_server(bind="::", netns="nr-b"),
            capture(
                [
                    "ip",
                    "netns",
                    "exec",
                    "nr-b",
                    "dumpcap",
                    "-q",
                    "-i",
                    "any",
                    "-i",
                    "nr-vb",
                    "-w",
                    str(HERE / "multi-if.pcapng"),
                ]
            ),
        ):
            curl(f"http://10.77.0.2:{PORT}/record.py", 1, netns="nr-a")
            curl(f"http://[fd77::2]:{PORT}/record.py", 1, netns="nr-a")
    finally:
        teardown()


if __name__ == "__main__":
    if os.geteuid() != 0:
        sys.exit("record.py needs root (tcpdump, network namespaces)")
    record_loopback()
    record_netns()
    for path in sorted(HERE.glob("*.pcap*")):
        print(f"{path.name}: {path.stat().st_size} bytes")
