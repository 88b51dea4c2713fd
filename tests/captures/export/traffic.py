"""Tiny traffic helpers for record.sh (no nc/ping on the build host): UDP datagrams and ICMP(v6) echoes."""

import contextlib
import socket
import struct
import sys
import time


def checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


def udp(host: str, port: int, text: str) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.sendto(text.encode(), (host, port))


def ping(host: str, count: int) -> None:
    v6 = ":" in host
    family, proto, kind = (socket.AF_INET6, socket.IPPROTO_ICMPV6, 128) if v6 else (socket.AF_INET, 1, 8)
    with socket.socket(family, socket.SOCK_RAW, proto) as sock:
        sock.settimeout(1)
        for seq in range(count):
            payload = b"netrecall-ping-%d" % seq
            header = struct.pack("!BBHHH", kind, 0, 0, 0x4E52, seq)
            csum = 0 if v6 else checksum(header + payload)  # the kernel fills the ICMPv6 checksum
            sock.sendto(struct.pack("!BBHHH", kind, 0, csum, 0x4E52, seq) + payload, (host, 0))
            with contextlib.suppress(TimeoutError):
                sock.recv(2048)
            time.sleep(0.2)


if __name__ == "__main__":
    if sys.argv[1] == "udp":
        udp(sys.argv[2], int(sys.argv[3]), sys.argv[4])
    else:
        ping(sys.argv[2], int(sys.argv[3]))
