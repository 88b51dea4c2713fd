"""TCP reassembly: one `TcpConn` per connection, one `HalfStream` per direction.

Rules (docs/protocols.md repeats them for users):
- Bytes are placed by sequence number. A segment that overlaps bytes already received keeps the FIRST
  copy (only its new tail is used), as Linux does; pure retransmissions are counted and dropped.
- A segment ahead of the next expected byte waits. If the hole is not filled within `gap_timeout_ns` of
  capture time, or `ooo_limit_bytes` wait behind it, or the connection ends, the hole is a capture loss:
  the protocol session is told how many bytes are missing, flags the affected call `partial`, and
  resynchronises at the next message boundary.
- A connection seen without its SYN starts at the first byte captured (`mid_start`); its first message
  is found by the protocol's resync search and flagged partial.
- RST ends the connection; FIN ends one direction; both FINs end it. A SYN on a flow whose connection
  ended (or with a different initial sequence number) starts a new connection: port reuse.
"""

from __future__ import annotations

from bisect import bisect_right
from typing import TYPE_CHECKING

from netrecall.dissect.calls import Call, Context

if TYPE_CHECKING:
    from netrecall.dissect.protocols.base import StreamSession

MASK = 0xFFFFFFFF
FIN, SYN, RST, ACK = 0x01, 0x02, 0x04, 0x10


def seq_diff(a: int, b: int) -> int:
    """a - b in 32-bit sequence space (wraps), as a signed number."""
    d = (a - b) & MASK
    return d - 0x100000000 if d & 0x80000000 else d


class HalfStream:
    """The bytes one side sent, in order, with the capture time of each segment for timing."""

    __slots__ = (
        "base",
        "buf",
        "fin",
        "fin_seq",
        "first_ts",
        "last_ts",
        "mid_start",
        "next_seq",
        "off",
        "ooo",
        "ooo_bytes",
        "retransmissions",
        "seg_off",
        "seg_ts",
        "seq0",
        "syn",
        "total",
    )

    def __init__(self) -> None:
        self.seq0 = 0  # sequence number of stream offset 0
        self.next_seq: int | None = None
        self.off = 0  # stream offset of the next expected byte (gaps included)
        self.buf = bytearray()  # received, not yet consumed by the protocol session
        self.base = 0  # stream offset of buf[0]
        self.seg_off: list[int] = []  # stream offset where each buffered segment starts ...
        self.seg_ts: list[int] = []  # ... and its capture time (ns)
        self.ooo: dict[int, tuple[bytes, int]] = {}  # seq -> (payload, ts) waiting behind a hole
        self.ooo_bytes = 0
        self.syn = False
        self.mid_start = False
        self.fin = False
        self.fin_seq = 0
        self.first_ts = 0
        self.last_ts = 0
        self.retransmissions = 0
        self.total = 0  # payload bytes delivered in order

    def start(self, syn_seq: int) -> None:
        """A SYN fixes the initial sequence number: data starts at ISN + 1."""
        if self.next_seq is None:
            self.seq0 = self.next_seq = (syn_seq + 1) & MASK
            self.syn = True

    def add(self, seq: int, data: bytes, ts: int) -> None:
        if seq == self.next_seq:  # the next expected bytes: the common case, _append inlined
            if not self.first_ts:
                self.first_ts = ts
            self.last_ts = ts
            self.seg_off.append(self.off)
            self.seg_ts.append(ts)
            self.buf += data
            n = len(data)
            self.off += n
            self.total += n
            self.next_seq = (seq + n) & MASK
            if self.ooo:
                self._drain()
            return
        if self.next_seq is None:  # no SYN seen: the capture started mid-connection
            self.seq0 = self.next_seq = seq
            self.mid_start = True
        d = seq_diff(seq, self.next_seq)
        if d == 0:
            self._append(data, ts)
        elif d < 0:
            if d + len(data) <= 0:
                self.retransmissions += 1
                return
            self.retransmissions += 1
            self._append(data[-d:], ts)  # first copy wins: only the bytes never seen before
        else:
            held = self.ooo.get(seq)
            if held is None or len(held[0]) < len(data):
                self.ooo_bytes += len(data) - (len(held[0]) if held else 0)
                self.ooo[seq] = (data, held[1] if held else ts)
            return
        if self.ooo:
            self._drain()

    def _append(self, data: bytes, ts: int) -> None:
        if not self.first_ts:
            self.first_ts = ts
        self.last_ts = ts
        self.seg_off.append(self.off)
        self.seg_ts.append(ts)
        self.buf += data
        n = len(data)
        self.off += n
        self.total += n
        self.next_seq = (self.next_seq + n) & MASK  # type: ignore[operator]

    def _drain(self) -> None:
        """Move waiting segments that now touch the stream into it."""
        progressed = True
        while progressed and self.ooo:
            progressed = False
            for seq in sorted(self.ooo, key=lambda s: seq_diff(s, self.next_seq)):  # type: ignore[arg-type]
                d = seq_diff(seq, self.next_seq)  # type: ignore[arg-type]
                if d > 0:
                    break
                data, ts = self.ooo.pop(seq)
                self.ooo_bytes -= len(data)
                if d + len(data) > 0:
                    self._append(data[-d:] if d else data, ts)
                else:
                    self.retransmissions += 1
                progressed = True

    def hole(self, now_ts: int, ooo_limit: int, timeout_ns: int, force: bool) -> int:
        """Bytes missing before the waiting data if the hole counts as lost now, else 0."""
        if not self.ooo:
            return 0
        if not (
            force or self.ooo_bytes > ooo_limit or now_ts - min(t for _, t in self.ooo.values()) > timeout_ns
        ):
            return 0
        return min(seq_diff(s, self.next_seq) for s in self.ooo)  # type: ignore[arg-type]

    def skip(self, missing: int) -> None:
        """Declare `missing` bytes lost: the stream continues after them."""
        self.buf.clear()
        self.off += missing
        self.base = self.off
        self.seg_off.clear()
        self.seg_ts.clear()
        self.next_seq = (self.next_seq + missing) & MASK  # type: ignore[operator]
        self._drain()

    # --- what protocol sessions use ---------------------------------------------------------------------
    def consume(self, n: int) -> None:
        """The session is done with the first n buffered bytes."""
        if n <= 0:
            return
        del self.buf[:n]
        self.base += n
        keep = bisect_right(self.seg_off, self.base) - 1
        if keep > 0:
            del self.seg_off[:keep]
            del self.seg_ts[:keep]

    def ts_at(self, offset: int) -> int:
        """Capture time of the packet that carried the byte at stream offset `offset`."""
        if not self.seg_ts:
            return self.last_ts
        i = bisect_right(self.seg_off, offset) - 1
        return self.seg_ts[i if i >= 0 else 0]

    def seq_at(self, offset: int) -> int:
        return (self.seq0 + offset) & MASK

    @property
    def done(self) -> bool:
        """FIN seen and every byte before it received."""
        return self.fin and self.next_seq is not None and seq_diff(self.fin_seq, self.next_seq) <= 0


class TcpConn:
    """One TCP connection: two half streams, who the client is, and the protocol session parsing it."""

    __slots__ = (
        "client",
        "closed",
        "ctx",
        "detect_tries",
        "first_ts",
        "flow_id",
        "halves",
        "ip",
        "last_ts",
        "port",
        "rst",
        "session",
    )

    def __init__(
        self, ctx: Context, flow_id: int, ip_a: bytes, port_a: int, ip_b: bytes, port_b: int, ts: int
    ):
        self.ctx = ctx
        self.flow_id = flow_id
        self.ip = (ip_a, ip_b)  # index 0 = side a, 1 = side b
        self.port = (port_a, port_b)
        self.halves = (HalfStream(), HalfStream())
        self.client: int | None = None  # which side opened the connection, once known
        self.session: StreamSession | None = None
        self.rst = False
        self.closed = False
        self.first_ts = ts
        self.last_ts = ts
        self.detect_tries = 0

    def guess_client(self) -> int:
        """The client when no SYN was seen: the side whose port is higher (ephemeral) is the client."""
        if self.client is None:
            return 0 if self.port[0] > self.port[1] else 1
        return self.client

    def call(self, protocol: str, client: int, ts: int) -> Call:
        """An api_calls row for this connection with the endpoints in place, client as src."""
        server = 1 - client
        return {
            "protocol": protocol,
            "flow_id": self.flow_id,
            "src_ip": self.ip[client],
            "src_port": self.port[client],
            "dst_ip": self.ip[server],
            "dst_port": self.port[server],
            "ts": ts,
        }

    @property
    def finished(self) -> bool:
        a, b = self.halves
        return self.rst or (a.done and b.done)
