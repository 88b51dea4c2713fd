"""Keeping the agent's own traffic out of its capture, in the kernel.

The agent ships what it captures to a store or hub; capturing that traffic again would feed back on
itself. The sink's address and port are resolved once and compiled into a classic BPF socket filter
(AF_PACKET) or into the eBPF classifier (eBPF backend). The classic filter reads the network header
through SKF_NET_OFF, so it works on any link type, and its accept value is the snap length, so frames
are truncated by the kernel.
"""

from __future__ import annotations

import ctypes
import ipaddress
import socket
import struct
from dataclasses import dataclass
from urllib.parse import urlsplit

# classic BPF opcodes (linux/filter.h)
LD, LDX, ALU, JMP, RET = 0x00, 0x01, 0x04, 0x05, 0x06
W, H, B = 0x00, 0x08, 0x10
ABS, IND, MSH = 0x20, 0x40, 0xA0
JEQ, RSH = 0x10, 0x70
K = 0x00
SKF_AD_OFF = -0x1000
SKF_AD_PKTTYPE = 4
SKF_AD_IFINDEX = 8
SKF_NET_OFF = -0x100000
PACKET_OUTGOING = 4
SO_ATTACH_FILTER = 26


@dataclass(frozen=True)
class Endpoint:
    """One address and TCP port whose traffic is not captured (either direction)."""

    ip: str
    port: int

    @property
    def version(self) -> int:
        return ipaddress.ip_address(self.ip).version

    @property
    def packed(self) -> bytes:
        return ipaddress.ip_address(self.ip).packed


def sink_endpoints(url: str | None, default_port: int | None = None) -> list[Endpoint]:
    """The addresses an http(s) sink URL resolves to (chDB and empty URLs have none). `default_port`
    applies when the URL names none (a store's is 8123/8443, a hub's 80/443)."""
    if not url:
        return []
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return []
    port = parts.port or default_port or (443 if parts.scheme == "https" else 80)
    try:
        infos = socket.getaddrinfo(parts.hostname, port, proto=socket.IPPROTO_TCP)
    except OSError:
        return []  # unresolvable now: the sink will report that itself
    return sorted(
        {Endpoint(str(info[4][0]).split("%")[0], port) for info in infos}, key=lambda e: (e.ip, e.port)
    )


class _Asm:
    """A tiny classic-BPF assembler with forward labels (jumps are relative, resolved at the end)."""

    def __init__(self) -> None:
        self.code: list[tuple[int, object, object, int]] = []
        self.labels: dict[str, int] = {}

    def op(self, code: int, k: int = 0, jt: object = 0, jf: object = 0) -> None:
        self.code.append((code, jt, jf, k & 0xFFFFFFFF))

    def label(self, name: str) -> None:
        self.labels[name] = len(self.code)

    def assemble(self) -> list[tuple[int, int, int, int]]:
        out = []
        for pc, (code, jt, jf, k) in enumerate(self.code):
            targets = []
            for target in (jt, jf):
                if isinstance(target, str):
                    delta = self.labels[target] - pc - 1
                    if not 0 <= delta <= 255:
                        raise ValueError("BPF jump out of range")
                    targets.append(delta)
                else:
                    targets.append(int(target))  # type: ignore[arg-type]
            out.append((code, targets[0], targets[1], k))
        return out


def socket_filter(exclude: list[Endpoint], snaplen: int, drop_outgoing_on: int | None = None) -> list[tuple]:
    """A classic BPF program: drop TCP to/from `exclude`, drop outgoing copies on ifindex `drop_outgoing_on`
    (loopback, where every packet is seen leaving and arriving), keep the rest truncated to `snaplen`."""
    a = _Asm()
    if drop_outgoing_on is not None:
        a.op(LD | W | ABS, SKF_AD_OFF + SKF_AD_IFINDEX)
        a.op(JMP | JEQ | K, drop_outgoing_on, 0, "ip")
        a.op(LD | W | ABS, SKF_AD_OFF + SKF_AD_PKTTYPE)
        a.op(JMP | JEQ | K, PACKET_OUTGOING, "drop", "ip")
    a.label("ip")
    v4 = [e for e in exclude if e.version == 4]
    v6 = [e for e in exclude if e.version == 6]
    if v4 or v6:
        a.op(LD | B | ABS, SKF_NET_OFF)
        a.op(ALU | RSH | K, 4)
        a.op(JMP | JEQ | K, 4, "v4", "not4")
        a.label("not4")
        a.op(JMP | JEQ | K, 6, "v6", "accept")
        a.label("v4")
        if v4:
            a.op(LD | B | ABS, SKF_NET_OFF + 9)
            a.op(JMP | JEQ | K, socket.IPPROTO_TCP, "v4tcp", "accept")
            a.label("v4tcp")
            a.op(LDX | B | MSH, SKF_NET_OFF)  # X = IPv4 header length
            for i, ep in enumerate(v4):
                ip = struct.unpack("!I", ep.packed)[0]
                a.op(LD | W | ABS, SKF_NET_OFF + 12)
                a.op(JMP | JEQ | K, ip, f"v4s{i}", f"v4d{i}")
                a.label(f"v4s{i}")
                a.op(LD | H | IND, SKF_NET_OFF)
                a.op(JMP | JEQ | K, ep.port, "drop", f"v4d{i}")
                a.label(f"v4d{i}")
                a.op(LD | W | ABS, SKF_NET_OFF + 16)
                a.op(JMP | JEQ | K, ip, f"v4dp{i}", f"v4n{i}")
                a.label(f"v4dp{i}")
                a.op(LD | H | IND, SKF_NET_OFF + 2)
                a.op(JMP | JEQ | K, ep.port, "drop", f"v4n{i}")
                a.label(f"v4n{i}")
        a.op(RET | K, snaplen)
        a.label("v6")
        if v6:
            a.op(LD | B | ABS, SKF_NET_OFF + 6)  # next header (extension headers are not followed)
            a.op(JMP | JEQ | K, socket.IPPROTO_TCP, "v6tcp", "accept")
            a.label("v6tcp")
            for i, ep in enumerate(v6):
                words = struct.unpack("!IIII", ep.packed)
                for side, base, port_off in (("s", 8, 40), ("d", 24, 42)):
                    nxt = f"v6{'d' if side == 's' else 'n'}{i}"
                    for w, word in enumerate(words):
                        a.op(LD | W | ABS, SKF_NET_OFF + base + 4 * w)
                        a.op(JMP | JEQ | K, word, 0, nxt)
                    a.op(LD | H | ABS, SKF_NET_OFF + port_off)
                    a.op(JMP | JEQ | K, ep.port, "drop", nxt)
                    a.label(nxt)
    a.label("accept")
    a.op(RET | K, snaplen)
    a.label("drop")
    a.op(RET | K, 0)
    return a.assemble()


def attach_socket_filter(sock: socket.socket, program: list[tuple]) -> None:
    """SO_ATTACH_FILTER: the kernel copies the program, so the buffer only has to live for the call."""
    raw = b"".join(struct.pack("HBBI", *insn) for insn in program)
    buf = ctypes.create_string_buffer(raw, len(raw))
    fprog = struct.pack("HL", len(program), ctypes.addressof(buf))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)
