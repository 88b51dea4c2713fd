"""Which network interfaces to capture on, and noticing when they come and go.

An interface spec is `any` or a comma list of names and shell globs (`eth0,veth*`). On a node, pod veths
appear and vanish with pods: `InterfaceWatcher` rescans /sys/class/net whenever the kernel announces a
link change (an rtnetlink RTMGRP_LINK socket), so a capture backend can attach to new interfaces at once
instead of polling.
"""

from __future__ import annotations

import fnmatch
import os
import socket
from dataclasses import dataclass
from pathlib import Path

SYS_NET = Path("/sys/class/net")
RTMGRP_LINK = 1
ARPHRD_ETHER = 1
ARPHRD_LOOPBACK = 772
ARPHRD_NONE = 65534  # tun, wireguard: IP packets with no link header
LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101


@dataclass(frozen=True)
class Interface:
    name: str
    index: int
    arphrd: int

    @property
    def link_type(self) -> int:
        """The pcap LINKTYPE of frames captured on it (Ethernet-like or raw IP)."""
        return LINKTYPE_RAW if self.arphrd == ARPHRD_NONE else LINKTYPE_ETHERNET

    @property
    def is_loopback(self) -> bool:
        return self.arphrd == ARPHRD_LOOPBACK


def link_type_of(arphrd: int) -> int:
    return LINKTYPE_RAW if arphrd == ARPHRD_NONE else LINKTYPE_ETHERNET


def list_interfaces() -> dict[str, Interface]:
    """Every interface of this network namespace, by name."""
    found: dict[str, Interface] = {}
    try:
        names = os.listdir(SYS_NET)
    except OSError:
        return found
    for name in names:
        try:
            index = int((SYS_NET / name / "ifindex").read_text())
            arphrd = int((SYS_NET / name / "type").read_text())
        except (OSError, ValueError):
            continue  # vanished while we looked
        found[name] = Interface(name, index, arphrd)
    return found


def parse_spec(spec: str) -> list[str]:
    """'any' -> ['*']; 'eth0, veth*' -> ['eth0', 'veth*']."""
    parts = [p.strip() for p in spec.split(",") if p.strip()]
    return ["*" if p == "any" else p for p in parts] or ["*"]


def matching(patterns: list[str], interfaces: dict[str, Interface]) -> dict[str, Interface]:
    return {n: i for n, i in interfaces.items() if any(fnmatch.fnmatchcase(n, p) for p in patterns)}


def is_glob(patterns: list[str]) -> bool:
    return any(any(c in p for c in "*?[") for p in patterns)


class InterfaceWatcher:
    """The set of matching interfaces, refreshed when rtnetlink reports a link change.

    `fileno()` can sit in a poll set; after it turns readable, `changes()` says what was added and removed.
    """

    def __init__(self, patterns: list[str]) -> None:
        self.patterns = patterns
        self.current: dict[str, Interface] = matching(patterns, list_interfaces())
        self._sock = socket.socket(
            socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_NONBLOCK, socket.NETLINK_ROUTE
        )
        self._sock.bind((0, RTMGRP_LINK))

    def fileno(self) -> int:
        return self._sock.fileno()

    def changes(self) -> tuple[list[Interface], list[Interface]]:
        """(added, removed) since the last call; drains the netlink notifications."""
        try:
            while self._sock.recv(65536):
                pass
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:
            pass  # ENOBUFS: we missed notifications, the rescan below catches up anyway
        now = matching(self.patterns, list_interfaces())
        added = [i for n, i in now.items() if self.current.get(n) != i]
        removed = [i for n, i in self.current.items() if now.get(n) != i]
        self.current = now
        return added, removed

    def close(self) -> None:
        self._sock.close()
