"""Test helper: read a pcap with dpkt into the engine's PacketChunk (no store), for reassembly and
parser tests that need exact control over packet order (reordering, duplicates, drops)."""

from __future__ import annotations

import socket
from dataclasses import dataclass
from pathlib import Path

import dpkt
import numpy as np

from netrecall.dissect.calls import Context, DissectConfig
from netrecall.dissect.engine import Engine, PacketChunk


@dataclass
class Pkt:
    ts: int
    src_ip: bytes
    dst_ip: bytes
    l4: int
    src_port: int
    dst_port: int
    flags: int
    seq: int
    payload: bytes

    @property
    def flow_id(self) -> int:
        a, b = (self.src_ip, self.src_port), (self.dst_ip, self.dst_port)
        return hash((self.l4, *min(a, b), *max(a, b))) & 0x7FFFFFFFFFFFFFFF


def _v6(addr: bytes) -> bytes:
    return addr if len(addr) == 16 else b"\0" * 10 + b"\xff\xff" + addr


def read_packets(path: Path | str) -> list[Pkt]:
    out: list[Pkt] = []
    with open(path, "rb") as fh:
        try:
            reader = dpkt.pcap.Reader(fh)
        except ValueError:
            fh.seek(0)
            reader = dpkt.pcapng.Reader(fh)
        try:
            for ts, frame in reader:
                pkt = _decode(round(ts * 1e9), frame, reader.datalink())
                if pkt is not None:
                    out.append(pkt)
        except dpkt.NeedData:
            pass  # a capture cut short: keep what was read
    return out


def _decode(ts: int, frame: bytes, link: int) -> Pkt | None:
    try:
        if link == dpkt.pcap.DLT_EN10MB:
            ip = dpkt.ethernet.Ethernet(frame).data
        elif link == 0:  # loopback (BSD null)
            ip = dpkt.loopback.Loopback(frame).data
        elif link in (dpkt.pcap.DLT_LINUX_SLL,):
            ip = dpkt.sll.SLL(frame).data
        else:
            ip = dpkt.ip.IP(frame)
    except (dpkt.UnpackError, IndexError):
        return None
    if not isinstance(ip, dpkt.ip.IP | dpkt.ip6.IP6):
        return None
    l4 = ip.data
    if isinstance(l4, dpkt.tcp.TCP):
        return Pkt(ts, _v6(ip.src), _v6(ip.dst), 6, l4.sport, l4.dport, l4.flags, l4.seq, bytes(l4.data))
    if isinstance(l4, dpkt.udp.UDP):
        return Pkt(ts, _v6(ip.src), _v6(ip.dst), 17, l4.sport, l4.dport, 0, 0, bytes(l4.data))
    return None


def chunk_of(packets: list[Pkt]) -> PacketChunk:
    order = sorted(range(len(packets)), key=lambda i: (packets[i].flow_id, packets[i].ts, i))
    ps = [packets[i] for i in order if packets[i].payload or packets[i].flags & 0x07 or packets[i].l4 == 17]
    return PacketChunk(
        ts=[p.ts for p in ps],
        flow_id=np.array([p.flow_id for p in ps], dtype=np.uint64),
        l4=[p.l4 for p in ps],
        src_ip=[p.src_ip for p in ps],
        dst_ip=[p.dst_ip for p in ps],
        src_port=[p.src_port for p in ps],
        dst_port=[p.dst_port for p in ps],
        tcp_flags=[p.flags for p in ps],
        tcp_seq=[p.seq for p in ps],
        payload=[p.payload for p in ps],
    )


def dissect_packets(packets: list[Pkt], chunks: int = 1, config: DissectConfig | None = None) -> Context:
    """Dissect in `chunks` time slices (to exercise state carried across chunks)."""
    ctx = Context(config=config or DissectConfig())
    engine = Engine(ctx)
    ordered = sorted(packets, key=lambda p: p.ts)
    size = max(1, -(-len(ordered) // chunks))
    for start in range(0, len(ordered), size):
        engine.process(chunk_of(ordered[start : start + size]))
    engine.finish()
    return ctx


def dissect_file(path: Path | str, chunks: int = 1, config: DissectConfig | None = None) -> Context:
    return dissect_packets(read_packets(path), chunks, config)


def ip_text(addr: bytes) -> str:
    if addr[:12] == b"\0" * 10 + b"\xff\xff":
        return socket.inet_ntop(socket.AF_INET, addr[12:])
    return socket.inet_ntop(socket.AF_INET6, addr)
