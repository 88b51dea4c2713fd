"""The recorders' network: one namespace holding the servers, joined to the root namespace by a veth pair,
and tcpdump on the root end. Shared by record.py, record_db.py, record_http2.py, record_kafka.py and
record_tls.py, each with its own names and addresses so two recorders never collide.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path


def _run(*cmd: str, check: bool = True) -> None:
    subprocess.run(list(cmd), check=check, capture_output=True)


@dataclass(frozen=True)
class Veth:
    ns: str  # the servers' namespace
    host_if: str  # the root end, where tcpdump listens
    ns_if: str
    host_ip: str  # the clients' address (root namespace)
    ns_ip: str  # the servers' address

    def up(self, loopback_alias: bool = False, ns_offload_off: bool = False) -> None:
        self.down()
        inside = ("ip", "netns", "exec", self.ns)
        _run("ip", "netns", "add", self.ns)
        _run("ip", "link", "add", self.host_if, "type", "veth", "peer", "name", self.ns_if)
        _run("ip", "link", "set", self.ns_if, "netns", self.ns)
        _run("ip", "addr", "add", f"{self.host_ip}/24", "dev", self.host_if)
        _run("ip", "link", "set", self.host_if, "up")
        _run(*inside, "ip", "addr", "add", f"{self.ns_ip}/24", "dev", self.ns_if)
        _run(*inside, "ip", "link", "set", self.ns_if, "up")
        _run(*inside, "ip", "link", "set", "lo", "up")
        if loopback_alias:
            _run(*inside, "ip", "addr", "add", "127.0.0.2/8", "dev", "lo", check=False)
        # Segments the size of a real network's, not 64 KiB offload super-frames.
        if shutil.which("ethtool"):
            _run("ethtool", "-K", self.host_if, "tso", "off", "gso", "off", "gro", "off", check=False)
            if ns_offload_off:
                _run(*inside, "ethtool", "-K", self.ns_if, "tso", "off", "gso", "off", check=False)

    def down(self) -> None:
        _run("ip", "netns", "del", self.ns, check=False)
        _run("ip", "link", "del", self.host_if, check=False)

    @contextlib.contextmanager
    def in_ns(
        self, *cmd: str, cwd: Path | None = None, keep_stderr: bool = True
    ) -> Iterator[subprocess.Popen]:
        """A server running in the namespace for the length of the block."""
        proc = subprocess.Popen(
            ["ip", "netns", "exec", self.ns, *cmd],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE if keep_stderr else subprocess.DEVNULL,
            cwd=cwd,
        )
        try:
            yield proc
        finally:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    @contextlib.contextmanager
    def capture(self, out: Path, bpf: str = "tcp") -> Iterator[None]:
        """tcpdump on the root end into `out` for the length of the block; prints its counters after."""
        proc = subprocess.Popen(
            ["tcpdump", "-i", self.host_if, "--immediate-mode", "-w", str(out), "-U", "-s", "0", bpf],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        assert proc.stderr is not None
        proc.stderr.readline()  # "listening on ..." means the capture is armed
        time.sleep(0.5)  # ... almost: give the kernel filter a moment
        try:
            yield
        finally:
            time.sleep(0.5)
            proc.send_signal(signal.SIGINT)
            proc.wait(10)
            stats = proc.stderr.read().decode(errors="replace").split("\n")
            print(f"{out.name}: " + "; ".join(line for line in stats if line))

    def wait_port(self, port: int, udp: bool = False, tries: int = 200) -> None:
        """Until a TCP server in the namespace accepts on `port` (a UDP one gets a short pause)."""
        if udp:
            time.sleep(0.3)
            return
        for _ in range(tries):
            with contextlib.suppress(OSError), socket.create_connection((self.ns_ip, port), 0.2):
                return
            time.sleep(0.05)
        raise RuntimeError(f"nothing listens on {self.ns_ip}:{port}")
