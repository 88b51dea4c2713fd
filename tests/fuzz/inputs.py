"""The byte framings the fuzz targets read, and their writers (so seeds come from real captures).

Every reader is total: any byte string decodes to something (a short read takes what is left), so the
fuzzer's mutations always reach the parser under test instead of dying in the framing.

Connection (protocol dissectors): a 6-byte header, then records.
    header   flags u8 (bit 0: a SYN handshake opens the connection; bits 1-2: the packets are fed in
             that many + 1 chunks), client port u16, server port u16, ISN selector u8 (x 0x01010101, so
             255 starts right below the 32-bit wrap)
    record   kind u8: bit 0 sent by the server, bit 1 FIN, bit 2 RST, bit 3 an i16 sequence jump follows
             (a hole or an overlap), bit 4 a UDP datagram instead of a TCP segment, bit 5 11 s pass
             before it (timeouts), then the payload length u16 and the payload

Frames (L2-L4 decoder): records of link-type selector u8 (an index into LINK_TYPES, else the raw
value), length u16, bytes.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

LINK_TYPES = (1, 113, 276, 101, 228, 229, 0, 108, 12, 14, 147)

SERVER, FIN, RST, JUMP, UDP, LATER = 1, 2, 4, 8, 16, 32


class Cursor:
    """Reads fields from a byte string; past the end, numbers are 0 and byte runs are cut short."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    @property
    def left(self) -> int:
        return len(self.data) - self.pos

    def take(self, n: int) -> bytes:
        out = self.data[self.pos : self.pos + n]
        self.pos += len(out)
        return out

    def u8(self) -> int:
        raw = self.take(1)
        return raw[0] if raw else 0

    def u16(self) -> int:
        return int.from_bytes(self.take(2).ljust(2, b"\0"), "big")

    def i16(self) -> int:
        return int.from_bytes(self.take(2).ljust(2, b"\0"), "big", signed=True)


@dataclass
class Segment:
    server: bool
    payload: bytes
    fin: bool = False
    rst: bool = False
    jump: int = 0
    udp: bool = False
    later: bool = False


@dataclass
class Connection:
    segments: list[Segment]
    handshake: bool = True
    chunks: int = 1
    client_port: int = 40000
    server_port: int = 80
    isn: int = 1

    @classmethod
    def read(cls, data: bytes) -> Connection:
        cur = Cursor(data)
        flags = cur.u8()
        conn = cls([], bool(flags & 1), ((flags >> 1) & 3) + 1, cur.u16(), cur.u16(), cur.u8())
        while cur.left:
            kind = cur.u8()
            jump = cur.i16() if kind & JUMP else 0
            payload = cur.take(cur.u16())
            conn.segments.append(
                Segment(
                    bool(kind & SERVER),
                    payload,
                    bool(kind & FIN),
                    bool(kind & RST),
                    jump,
                    bool(kind & UDP),
                    bool(kind & LATER),
                )
            )
        return conn

    def write(self) -> bytes:
        flags = int(self.handshake) | ((max(1, min(self.chunks, 4)) - 1) << 1)
        out = [struct.pack(">BHHB", flags, self.client_port, self.server_port, self.isn & 0xFF)]
        for s in self.segments:
            kind = s.server * SERVER | s.fin * FIN | s.rst * RST | bool(s.jump) * JUMP
            kind |= s.udp * UDP | s.later * LATER
            out.append(bytes([kind]))
            if s.jump:
                out.append(struct.pack(">h", s.jump))
            out.append(struct.pack(">H", len(s.payload)) + s.payload[:0xFFFF])
        return b"".join(out)


def read_frames(data: bytes, limit: int = 16) -> list[tuple[int, bytes]]:
    """(link type, frame) records, at most `limit`."""
    cur = Cursor(data)
    frames = []
    while cur.left and len(frames) < limit:
        selector = cur.u8()
        link = LINK_TYPES[selector] if selector < len(LINK_TYPES) else selector
        frames.append((link, cur.take(cur.u16())))
    return frames


def write_frames(frames: list[tuple[int, bytes]]) -> bytes:
    out = []
    for link, frame in frames:
        selector = LINK_TYPES.index(link) if link in LINK_TYPES else link & 0xFF
        out.append(struct.pack(">BH", selector, len(frame)) + frame[:0xFFFF])
    return b"".join(out)
