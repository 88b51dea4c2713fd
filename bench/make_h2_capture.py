"""The HTTP/2 + gRPC benchmark capture: >= 200k calls, synthesised at bench time (never committed).

Long-lived HTTP/2 connections to one port (as to a service-mesh sidecar) carry a mix of calls:
gRPC unary calls (most), server-streaming calls, failing calls with a trailers-only answer and a
grpc-message, and plain HTTP/2 GETs answered with JSON or 404. Header blocks come from `hpack`'s encoder
(one per direction and connection, so the dynamic table, Huffman strings and indexed fields are what a
real peer sends); frames are the wire format of RFC 9113; segments are cut at a 1448-byte MSS with
consistent sequence numbers, a pure ACK follows each answer, and connections open with SYN/SYN-ACK/ACK
and the preface and close with GOAWAY and FINs. Connections are interleaved in time, call by call.
The file is cached at bench/out/h2-grpc.pcap; `python -m bench.make_h2_capture [--force]` builds it.
"""

from __future__ import annotations

import random
import struct
import sys
import time
from pathlib import Path

from hpack import Encoder

from bench.common import OUT

PORT = 50051
CAPTURE = OUT / "h2-grpc.pcap"
CONNECTIONS = 200
CALLS_PER_CONNECTION = 1_050  # 210,000 calls
MSS = 1448
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
GRPC_METHODS = [
    f"/shop.v1.{svc}/{name}" for svc in ("Catalog", "Cart", "Pricing") for name in ("Get", "List")
]
# (kind, weight): what a call is
KINDS = [("unary", 0.62), ("stream", 0.10), ("grpc_error", 0.06), ("get", 0.17), ("missing", 0.05)]

_ETH = bytes.fromhex("020000000002020000000001") + b"\x08\x00"
_PCAP_HEADER = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, 1)
_RECORD = struct.Struct("<IIII")
_IP = struct.Struct(">BBHHHBBH4s4s")
_TCP = struct.Struct(">HHIIBBHHH")


def benchmark_capture() -> Path:
    """The cached capture, made first if it is not there yet."""
    if not CAPTURE.exists() or CAPTURE.stat().st_size < 50 << 20:
        make(CAPTURE)
    return CAPTURE


def frame(ftype: int, flags: int, stream: int, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes((ftype, flags)) + struct.pack(">I", stream) + payload


def grpc_message(body: bytes) -> bytes:
    return b"\0" + struct.pack(">I", len(body)) + body


class Connection:
    """One client connection: TCP sequence numbers, HPACK encoders, the next stream id."""

    def __init__(self, index: int, rng: random.Random) -> None:
        self.client_ip = bytes((10, 1, index // 250, index % 250 + 1))
        self.server_ip = bytes((10, 2, 0, 1))
        self.client_port = 30_000 + index
        self.seq = [rng.randrange(1 << 32), rng.randrange(1 << 32)]  # client, server
        self.encoders = (Encoder(), Encoder())
        self.stream = 1
        self.rng = rng

    def packet(self, side: int, flags: int, payload: bytes = b"") -> bytes:
        """One frame as captured (Ethernet, IPv4, TCP without options); checksums are left 0."""
        src, dst = (self.client_ip, self.server_ip) if side == 0 else (self.server_ip, self.client_ip)
        sport, dport = (self.client_port, PORT) if side == 0 else (PORT, self.client_port)
        seq, ack = self.seq[side], self.seq[1 - side]
        ip = _IP.pack(0x45, 0, 40 + len(payload), 0, 0x4000, 64, 6, 0, src, dst)
        tcp = _TCP.pack(sport, dport, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF, 0x50, flags, 65535, 0, 0)
        self.seq[side] = (seq + len(payload) + (1 if flags & 0x03 else 0)) & 0xFFFFFFFF
        return _ETH + ip + tcp + payload

    def send(self, side: int, data: bytes) -> list[bytes]:
        return [self.packet(side, 0x18, data[at : at + MSS]) for at in range(0, len(data), MSS)]

    def headers(self, side: int, sid: int, fields: list[tuple[str, str]], end_stream: bool) -> bytes:
        block = self.encoders[side].encode(fields)
        return frame(1, 0x04 | (0x01 if end_stream else 0), sid, block)

    def opening(self) -> list[bytes]:
        settings_c = frame(4, 0, 0, struct.pack(">HI", 3, 100) + struct.pack(">HI", 4, 4 << 20))
        settings_s = frame(4, 0, 0, struct.pack(">HI", 5, 1 << 20))
        out = [self.packet(0, 0x02), self.packet(1, 0x12), self.packet(0, 0x10)]
        out += self.send(0, PREFACE + settings_c + frame(8, 0, 0, struct.pack(">I", 4 << 20)))
        out += self.send(1, settings_s + frame(4, 0x01, 0, b""))
        out += self.send(0, frame(4, 0x01, 0, b""))
        return out

    def closing(self) -> list[bytes]:
        goaway = frame(7, 0, 0, struct.pack(">II", self.stream - 2, 0))
        return [*self.send(0, goaway), self.packet(0, 0x11), self.packet(1, 0x11), self.packet(0, 0x10)]

    def call(self, kind: str) -> list[bytes]:
        rng = self.rng
        sid = self.stream
        self.stream += 2
        if kind in ("get", "missing"):
            path = f"/api/items/{rng.randrange(1000)}?view=full" if kind == "get" else "/api/nothing"
            request = self.headers(
                0,
                sid,
                [
                    (":method", "GET"),
                    (":scheme", "http"),
                    (":path", path),
                    (":authority", "shop.local"),
                    ("user-agent", "bench-client/1.0"),
                    ("accept", "application/json"),
                ],
                end_stream=True,
            )
            if kind == "get":
                body = b'{"id": %d, "name": "item", "tags": ["a", "b"], "pad": "%s"}' % (
                    rng.randrange(10**6),
                    b"x" * rng.randrange(50, 1500),
                )
                status = "200"
            else:
                body, status = b"not found\n", "404"
            response = self.headers(
                1,
                sid,
                [
                    (":status", status),
                    ("content-type", "application/json"),
                    ("content-length", str(len(body))),
                ],
                end_stream=False,
            )
            response += frame(0, 0x01, sid, body)
            return [*self.send(0, request), *self.send(1, response), self.packet(0, 0x10)]
        method = rng.choice(GRPC_METHODS)
        request = self.headers(
            0,
            sid,
            [
                (":method", "POST"),
                (":scheme", "http"),
                (":path", method),
                (":authority", "shop:50051"),
                ("content-type", "application/grpc"),
                ("te", "trailers"),
                ("grpc-timeout", f"{rng.randrange(100, 999)}m"),
                ("user-agent", "grpc-go/1.60.1"),
            ],
            end_stream=False,
        )
        request += frame(
            0, 0x01, sid, grpc_message(b"\x08" + bytes([rng.randrange(128)]) * rng.randrange(5, 60))
        )
        packets = self.send(0, request)
        if kind == "grpc_error":
            trailers = [
                (":status", "200"),
                ("content-type", "application/grpc"),
                ("grpc-status", "5"),
                ("grpc-message", "item%20not%20found"),
            ]
            packets += self.send(1, self.headers(1, sid, trailers, end_stream=True))
        else:
            answer = self.headers(
                1, sid, [(":status", "200"), ("content-type", "application/grpc")], end_stream=False
            )
            messages = 1 if kind == "unary" else rng.randrange(2, 6)
            for index in range(messages):
                answer += frame(0, 0, sid, grpc_message(b"\x0a" + b"r" * rng.randrange(20, 400)))
                if index < messages - 1:
                    packets += self.send(1, answer)
                    answer = b""
            answer += self.headers(1, sid, [("grpc-status", "0")], end_stream=True)
            packets += self.send(1, answer)
        packets.append(self.packet(0, 0x10))
        return packets


def make(target: Path, connections: int = CONNECTIONS, calls: int = CALLS_PER_CONNECTION) -> Path:
    """Write the capture: every connection's n-th call, then every connection's (n+1)-th, ..."""
    rng = random.Random(14)
    conns = [Connection(i, random.Random(rng.random())) for i in range(connections)]
    kinds = [k for k, _ in KINDS]
    weights = [w for _, w in KINDS]
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".partial")
    clock = [1_767_000_000.0]

    def write(out, packets: list[bytes]) -> None:
        for packet in packets:
            clock[0] += 0.000_02
            seconds = int(clock[0])
            out.write(_RECORD.pack(seconds, int((clock[0] - seconds) * 1e6), len(packet), len(packet)))
            out.write(packet)

    with open(partial, "wb") as out:
        out.write(_PCAP_HEADER)
        for conn in conns:
            write(out, conn.opening())
        for _ in range(calls):
            for conn in conns:
                write(out, conn.call(rng.choices(kinds, weights)[0]))
        for conn in conns:
            write(out, conn.closing())
    partial.replace(target)
    return target


if __name__ == "__main__":
    started = time.time()
    path = make(CAPTURE) if "--force" in sys.argv else benchmark_capture()
    print(f"{path}: {path.stat().st_size / 1e6:.0f} MB in {time.time() - started:.0f} s")
