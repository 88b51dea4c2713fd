"""The two contracts a protocol module implements (docs/protocols.md walks through adding one).

Stream protocols (over TCP) provide a `StreamDissector`: `detect(conn)` looks at the first bytes of both
directions and says whether the protocol is spoken (and which side is the client); `session(conn)`
returns a `StreamSession` that consumes reassembled bytes and emits calls into the run context.

Datagram protocols (over UDP) provide a `DatagramDissector`: `detect(payload, sport, dport)` and
`handle(...)` per datagram, with their own matching state.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from netrecall.dissect.calls import Context
    from netrecall.dissect.tcp import TcpConn

NO = -1  # not this protocol
MORE = -2  # cannot tell yet: wait for more bytes
# detect() otherwise returns the side (0 or 1) that is the client


def is_number(text: str) -> bool:
    """ASCII digits, at least one: what int() parses. str.isdigit() alone also takes '²' or '٣', which
    int() then refuses (found by fuzzing HTTP/1)."""
    return text.isascii() and text.isdigit()


class ParseError(Exception):
    """Traffic that does not follow the protocol: the session turns it into a flagged row, never a crash."""


class StreamSession(Protocol):
    protocol: str

    def feed(self, side: int) -> None:
        """Consume what is buffered in conn.halves[side]; emit finished calls."""

    def on_gap(self, side: int, missing: int) -> None:
        """`missing` bytes were lost on `side` right after what was last fed."""

    def close(self) -> None:
        """The connection ended (or the run did): emit whatever is pending, as unanswered or partial."""

    def pending_ts(self) -> int | None:
        """Capture time of the oldest message still waiting for its end or its answer (for the watermark)."""


class StreamDissector(Protocol):
    name: str

    def detect(self, conn: TcpConn) -> int: ...

    def session(self, conn: TcpConn, client: int) -> StreamSession: ...


class DatagramDissector(Protocol):
    name: str

    def detect(self, payload: bytes, sport: int, dport: int) -> bool: ...

    def handle(
        self,
        ctx: Context,
        flow_id: int,
        src: tuple[bytes, int],
        dst: tuple[bytes, int],
        ts: int,
        payload: bytes,
    ) -> None: ...

    def expire(self, ctx: Context, now_ts: int | None) -> None:
        """Emit what waited too long (everything when now_ts is None: the run ends)."""

    def pending_ts(self) -> int | None: ...
