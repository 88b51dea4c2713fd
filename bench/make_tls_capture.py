"""The TLS benchmark capture: the recorded handshakes of tests/captures/dissect/tls_openssl.pcap (openssl,
curl and Python clients; TLS 1.0 to 1.3; three refused handshakes and three empty probes), replicated
into many connections.

Each copy of a recorded connection gets its own client address and port (10.90.0.0/16, ports from 20000),
its own initial sequence numbers each way (acknowledgements moved with them) and its own start time, 1 ms
after the previous copy's; the server side is moved to port 443, where tshark decodes TLS without being
told. Frames keep their recorded bytes otherwise (checksums recomputed). The file is cached at
bench/out/tls-handshakes.pcap and made again only when missing or made from a different recipe.
`python -m bench.make_tls_capture` builds it; `tls_capture()` is what bench_dissect_tls calls.
"""

from __future__ import annotations

import random
import socket
import struct
import sys
import time
from pathlib import Path

import dpkt

from bench.common import OUT

TEMPLATE = Path(__file__).parent.parent / "tests" / "captures" / "dissect" / "tls_openssl.pcap"
COPIES = 4000  # of each recorded connection: 15 x 4000 = 60,000 connections, 836,000 packets
CAPTURE = OUT / f"tls-handshakes-{COPIES}.pcap"
SERVER_PORT = 443
GAP_NS = 1_000_000  # between the starts of two copies


def tls_capture() -> Path:
    """The cached capture, made first if it is not there yet."""
    if not CAPTURE.exists():
        make(CAPTURE)
    return CAPTURE


def _connections(path: Path) -> list[list[tuple[int, dpkt.ethernet.Ethernet]]]:
    """The template's TCP connections in order of their first packet: (ns since that packet, frame)."""
    by_key: dict[tuple, list[tuple[int, dpkt.ethernet.Ethernet]]] = {}
    with open(path, "rb") as handle:
        for ts, frame in dpkt.pcap.Reader(handle):
            eth = dpkt.ethernet.Ethernet(frame)
            ip, tcp = eth.data, eth.data.data
            key = tuple(sorted([(ip.src, tcp.sport), (ip.dst, tcp.dport)]))
            by_key.setdefault(key, []).append((round(ts * 1e9), eth))
    conns = []
    for packets in sorted(by_key.values(), key=lambda p: p[0][0]):
        start = packets[0][0]
        conns.append([(ts - start, eth) for ts, eth in packets])
    return conns


def _copy(
    packets: list[tuple[int, dpkt.ethernet.Ethernet]], index: int, start_ns: int, rng: random.Random
) -> list[tuple[int, bytes]]:
    """One copy of a connection with a new client address, port and sequence numbers."""
    first_ip = packets[0][1].data
    client_ip, server_ip = first_ip.src, first_ip.dst  # the SYN comes from the client
    client_port = packets[0][1].data.data.sport
    new_client = socket.inet_aton(f"10.90.{index // 250 % 250}.{index % 250 + 1}")
    new_port = 20000 + index % 40000
    shift = {client_ip: rng.getrandbits(32), server_ip: rng.getrandbits(32)}
    out = []
    for offset, eth in packets:
        eth = dpkt.ethernet.Ethernet(bytes(eth))
        ip, tcp = eth.data, eth.data.data
        from_client = ip.src == client_ip and tcp.sport == client_port
        sender, receiver = (client_ip, server_ip) if from_client else (server_ip, client_ip)
        tcp.seq = (tcp.seq + shift[sender]) & 0xFFFFFFFF
        if tcp.flags & dpkt.tcp.TH_ACK:
            tcp.ack = (tcp.ack + shift[receiver]) & 0xFFFFFFFF
        if from_client:
            ip.src, tcp.sport, tcp.dport = new_client, new_port, SERVER_PORT
        else:
            ip.dst, tcp.dport, tcp.sport = new_client, new_port, SERVER_PORT
        ip.sum = tcp.sum = 0  # recomputed when packed
        out.append((start_ns + offset, bytes(eth)))
    return out


def make(target: Path, copies: int = COPIES) -> Path:
    conns = _connections(TEMPLATE)
    rng = random.Random(14)
    frames: list[tuple[int, bytes]] = []
    start = 1_700_000_000 * 1_000_000_000
    index = 0
    for _ in range(copies):
        for packets in conns:
            frames += _copy(packets, index, start + index * GAP_NS, rng)
            index += 1
    frames.sort(key=lambda item: item[0])
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".partial")
    with open(partial, "wb") as handle:
        handle.write(struct.pack("<IHHiIII", 0xA1B23C4D, 2, 4, 0, 0, 65535, 1))  # nanosecond pcap
        for ts, frame in frames:
            handle.write(
                struct.pack("<IIII", ts // 1_000_000_000, ts % 1_000_000_000, len(frame), len(frame))
            )
            handle.write(frame)
    partial.replace(target)
    return target


if __name__ == "__main__":
    began = time.time()
    path = make(CAPTURE) if "--force" in sys.argv else tls_capture()
    print(f"{path}: {path.stat().st_size / 1e6:.0f} MB in {time.time() - began:.0f} s")
