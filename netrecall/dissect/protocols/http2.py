"""HTTP/2 (prior knowledge and h2c upgrade) and gRPC on it: frames per direction, HPACK per direction,
one call per stream.

- Detection: the client connection preface `PRI * HTTP/2.0`; a server whose first bytes are a SETTINGS
  frame while the client sent nothing; in a connection captured mid-way, a chain of well-formed frame
  headers (the side sending request header blocks is the client). An HTTP/1.1 `Upgrade: h2c` answered
  by 101 is handed over by http1.py (`upgraded()`): the upgraded request is stream 1.
- Frames: the 9-byte frame header is read here (one struct call: this is the hot path); padding,
  priority fields, CONTINUATION, RST_STREAM, SETTINGS (header table size, max frame size), PUSH_PROMISE
  and GOAWAY are interpreted; PRIORITY, PING, WINDOW_UPDATE and unknown types are skipped (hyperframe's
  frame objects cost ~7 us a frame, the header read here ~0.2 us). Header blocks are decoded by
  `HpackDecoder`, one per direction as the table is per direction, over `hpack`'s static table and
  Huffman code (`hpack.Decoder` cost ~17 us a block here, this walker ~2 us).
- Calls: one per stream. Request = the client's HEADERS (+ DATA, + trailers), response = the server's
  HEADERS (1xx skipped), DATA and trailers (merged into response_headers). elapsed_time runs from the
  request HEADERS frame to the frame that ends the response stream. A pushed stream is a call of its own
  (request from the PUSH_PROMISE). `content-type: application/grpc*` makes the call `grpc`: status from
  grpc-status (trailers or trailers-only), grpc-message percent-decoded, messages counted from the
  5-byte length prefixes across DATA frames. RST_STREAM before the response ended: error_code holds the
  reset code's name and a gRPC call gets the status gRPC maps that code to.
- Losses: a hole inside a DATA frame keeps the framing (the call is partial, its size still right); any
  other hole resets that direction's HPACK decoder and resynchronises at the next chain of frames. A
  header block that references a table entry the decoder never saw after such a loss (or in a capture
  started mid-connection) leaves its call partial with what is known — never with guessed values. A
  corrupt header block (decoder in sync) or a malformed frame is a parse error: flagged row, and the
  direction resynchronises; other streams and connections are unaffected.
"""

from __future__ import annotations

import re
import struct
from collections import deque
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from hpack.exceptions import HPACKError, InvalidTableIndexError, InvalidTableSizeError
from hpack.huffman_table import decode_huffman
from hpack.table import HeaderTable

from netrecall.dissect.calls import Context, call_id
from netrecall.dissect.protocols import http1
from netrecall.dissect.protocols.base import MORE, NO, ParseError, is_number

if TYPE_CHECKING:
    from netrecall.dissect.tcp import HalfStream, TcpConn

NAME = "http"
GRPC_PATH = re.compile(r"/[A-Za-z_][\w.]*\.[A-Za-z_]\w*/[A-Za-z_]\w*\Z")
GRPC = "grpc"
ID_KEY = "http2"  # call ids use this, whatever the call turns out to be (http or grpc)
VERSION = "HTTP/2.0"
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
FRAME_HEADER = struct.Struct(">HBBBI")  # length (24 bits as 16 + 8), type, flags, R + stream id
U32 = struct.Struct(">I")
STREAM_MASK = 0x7FFFFFFF

DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = (
    range(10)
)
END_STREAM, ACK, END_HEADERS, PADDED, PRIORITY_FLAG = 0x1, 0x1, 0x4, 0x8, 0x20
SETTINGS_HEADER_TABLE_SIZE, SETTINGS_MAX_FRAME_SIZE = 1, 5
DEFAULT_MAX_FRAME = 16_384
MAX_FRAME = (1 << 24) - 1
MIDSTREAM_MAX_FRAME = 1 << 20  # the largest frame believed when recognising frames without the preface
MAX_HEADER_BLOCK = 1 << 20  # a block continued beyond this is not a real peer's (CONTINUATION flood)
RESYNC_KEEP = 64 * 1024
FINISHED_KEPT = 4096  # bytes kept while looking for the next frame chain

# flags each type defines and how long its payload must be (None: any), for recognising frames mid-stream
_FLAGS = (0x09, 0x2D, 0, 0, 0x01, 0x0C, 0x01, 0, 0, 0x04)
_ON_STREAM_ZERO = (False, False, False, False, True, False, True, True, None, False)

ERROR_CODES = (
    "NO_ERROR",
    "PROTOCOL_ERROR",
    "INTERNAL_ERROR",
    "FLOW_CONTROL_ERROR",
    "SETTINGS_TIMEOUT",
    "STREAM_CLOSED",
    "FRAME_SIZE_ERROR",
    "REFUSED_STREAM",
    "CANCEL",
    "COMPRESSION_ERROR",
    "CONNECT_ERROR",
    "ENHANCE_YOUR_CALM",
    "INADEQUATE_SECURITY",
    "HTTP_1_1_REQUIRED",
)
GRPC_STATUS = (
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
)
# gRPC's PROTOCOL-HTTP2.md: the status a client reports for a stream reset with this code (no trailers)
RESET_TO_GRPC = {"REFUSED_STREAM": 14, "CANCEL": 1, "ENHANCE_YOUR_CALM": 8, "INADEQUATE_SECURITY": 7}
GRPC_INTERNAL = 13
# ... and for an HTTP status without grpc-status (a proxy answered)
HTTP_TO_GRPC = {400: 13, 401: 16, 403: 7, 404: 12, 429: 14, 502: 14, 503: 14, 504: 14}
GRPC_UNKNOWN = 2
DEADLINE_EXCEEDED = 4
TIMEOUT_UNITS = {"H": 3600 * 10**9, "M": 60 * 10**9, "S": 10**9, "m": 10**6, "u": 10**3, "n": 1}
_REASONS = {status.value: status.phrase for status in HTTPStatus}

# directions' parser states
PREFACE_STATE, FRAMES, RESYNC = range(3)


def error_name(code: int) -> str:
    return ERROR_CODES[code] if 0 <= code < len(ERROR_CODES) else f"0x{code:x}"


@dataclass(slots=True)
class Part:
    """One side of a stream: its header fields, body and gRPC message framing."""

    headers: dict[str, str] | None = None  # None: no header block seen (or it could not be decoded)
    seen: bool = False  # a HEADERS frame arrived, decoded or not
    body: bytearray | None = None
    body_size: int = 0
    ended: bool = False
    end_ts: int = 0
    messages: int = 0
    prefix: bytes = b""  # bytes of a 5-byte gRPC message prefix split across DATA frames
    message_left: int = 0  # bytes of the current gRPC message still to come
    framing_lost: bool = False  # a hole inside the body: message counts are no longer known

    def header(self, usual: str, key: str) -> str | None:
        """http1._decoded's accessor (names are lower-case in HTTP/2)."""
        return self.headers.get(key) if self.headers else None


@dataclass(slots=True)
class Stream:
    """One HTTP/2 stream being assembled into a call."""

    sid: int
    ts: int  # first byte of the request HEADERS (or of the first frame seen for a stream seen mid-way)
    seq: int
    port: int  # port of the side the first frame came from (the call id's sending port)
    request: Part = field(default_factory=Part)
    response: Part = field(default_factory=Part)
    last_ts: int = 0
    partial: bool = False
    error: str = ""
    reset: str = ""  # RST_STREAM code name, or REFUSED_STREAM for streams a GOAWAY left unprocessed
    reset_by_client: bool = False
    reset_ts: int = 0
    has_request: bool = True


class _Direction:
    """The frame parser of one direction."""

    __slots__ = (
        "block",
        "decoder",
        "desynced",
        "fed_ts",
        "half",
        "is_client",
        "max_frame",
        "state",
        "tail",
    )

    def __init__(self, half: HalfStream, is_client: bool, state: int) -> None:
        self.half = half
        self.is_client = is_client
        self.state = state
        self.decoder = HpackDecoder(4096)
        # The decoder's table may miss entries (mid-way start, a loss): an unknown index is then expected.
        self.desynced = half.mid_start
        # Until the peer's SETTINGS are parsed (the directions are parsed one after the other, so the
        # frames they govern may come first) any size the protocol allows is accepted.
        self.max_frame = MAX_FRAME
        self.fed_ts = 0  # capture time of the last packet this direction had received when last parsed
        # an open header block: (stream id, kind, end_stream, ts, seq, promised id, fragments)
        self.block: tuple[int, int, bool, int, int, int, bytearray] | None = None
        # a DATA frame a loss cut into: (stream, frame bytes left, body bytes among them, END_STREAM)
        self.tail: tuple[int, int, int, bool] | None = None


class HpackDecoder:
    """HPACK decoding (RFC 7541) for one direction, over hpack's static table and Huffman code.

    The fields are walked here rather than by `hpack.Decoder` (measured: its per-field objects and
    logging made it half of the dissection time) and entries are kept already decoded to text. After a
    loss (`strict=False`) a reference to an entry never seen leaves that field out instead of failing the
    block: a literal added to the table goes in even when its name is unknown (under UNKNOWN), so the
    newest entries stay at the indices the encoder uses and later references to them are right.
    A block made only of one-byte indexed fields does not change the table: its decoding is kept until
    the table changes (a steady stream of calls repeats the same few blocks)."""

    __slots__ = ("cache", "changes", "entries", "limit", "maxsize", "size")

    def __init__(self, limit: int) -> None:
        self.entries: deque[tuple[str, str, int]] = deque()  # newest first: (name, value, entry size)
        self.size = 0
        self.maxsize = 4096
        self.limit = limit  # the receiver's SETTINGS_HEADER_TABLE_SIZE: the encoder may not exceed it
        self.cache: dict[bytes, dict[str, str]] = {}
        self.changes = 0  # additions and resizes: a cached decoding holds only while this stays put

    def decode(self, block: bytes, strict: bool) -> tuple[dict[str, str], bool]:
        """(fields, complete); repeated names joined as HTTP/2 requires (cookie with '; ')."""
        pure = bool(block) and min(block) >= 0x80
        if pure:
            found = self.cache.get(block)
            if found is not None:
                return found, True
        changes = self.changes
        fields, complete = self._fields(block, strict)
        headers: dict[str, str] = {}
        for name, value in fields:
            if name in headers:
                headers[name] += ("; " if name == "cookie" else ", ") + value
            else:
                headers[name] = value
        if pure and complete:
            if len(self.cache) > 256:
                self.cache.clear()
            self.cache[block] = headers
        elif self.cache and changes != self.changes:
            self.cache.clear()
        return headers, complete

    def _fields(self, block: bytes, strict: bool) -> tuple[list[tuple[str, str]], bool]:
        fields: list[tuple[str, str]] = []
        complete = True
        pos, end = 0, len(block)
        while pos < end:
            first = block[pos]
            pos += 1
            if first & 0x80:  # indexed field
                index = first & 0x7F
                if index == 0x7F:
                    index, pos = _integer(block, pos, index)
                if 0 < index <= STATIC_LENGTH:
                    fields.append(STATIC[index - 1])
                    continue
                entry = self._dynamic(index, strict)
                if entry is None or entry[0] is UNKNOWN:
                    complete = False
                else:
                    fields.append((entry[0], entry[1]))
                continue
            if first & 0xE0 == 0x20:  # dynamic table size update
                size, pos = (
                    _integer(block, pos, first & 0x1F) if first & 0x1F == 0x1F else (first & 0x1F, pos)
                )
                if size > self.limit and strict:
                    raise InvalidTableSizeError(f"table size {size} above the {self.limit} allowed")
                self.maxsize = size
                self.changes += 1
                self._shrink()
                continue
            indexing = first & 0x40
            mask = 0x3F if indexing else 0x0F
            index = first & mask
            if index == mask:
                index, pos = _integer(block, pos, index)
            if not index:
                raw, pos = _string(block, pos)
                name, name_size = raw.decode("latin-1"), len(raw)
            elif index <= STATIC_LENGTH:
                name = STATIC[index - 1][0]
                name_size = len(name)
            else:
                entry = self._dynamic(index, strict)
                name = entry[0] if entry is not None else UNKNOWN
                name_size = len(name.encode("latin-1")) if name is not UNKNOWN else 0
            raw, pos = _string(block, pos)
            value = raw.decode("utf-8", "replace")
            if indexing:
                self._add(name, value, name_size + len(raw) + 32)
            if name is UNKNOWN:
                complete = False
            else:
                fields.append((name, value))
        return fields, complete

    def _dynamic(self, index: int, strict: bool) -> tuple[str, str, int] | None:
        at = index - STATIC_LENGTH - 1
        if 0 <= at < len(self.entries):
            return self.entries[at]
        if strict:
            raise InvalidTableIndexError(f"invalid table index {index}")
        return None

    def _add(self, name: str, value: str, size: int) -> None:
        self.changes += 1
        if size > self.maxsize:
            self.entries.clear()
            self.size = 0
            return
        self.entries.appendleft((name, value, size))
        self.size += size
        self._shrink()

    def _shrink(self) -> None:
        while self.size > self.maxsize:
            self.size -= self.entries.pop()[2]


STATIC = tuple((name.decode("latin-1"), value.decode("latin-1")) for name, value in HeaderTable.STATIC_TABLE)
STATIC_LENGTH = len(STATIC)
UNKNOWN = "\0unknown"  # name of an entry added by a field whose name referred to an entry never seen
_HUFFMAN_CACHE: dict[bytes, bytes] = {}


def _integer(block: bytes, pos: int, value: int) -> tuple[int, int]:
    """The continuation bytes of an HPACK integer whose prefix was full (RFC 7541 section 5.1)."""
    shift = 0
    while True:
        if pos >= len(block):
            raise ValueError("header block ends inside an integer")
        byte = block[pos]
        pos += 1
        value += (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
        if shift > 28:
            raise ValueError("integer too large")


def _string(block: bytes, pos: int) -> tuple[bytes, int]:
    if pos >= len(block):
        raise ValueError("header block ends inside a field")
    first = block[pos]
    length = first & 0x7F
    pos += 1
    if length == 0x7F:
        length, pos = _integer(block, pos, length)
    end = pos + length
    if end > len(block):
        raise ValueError("string longer than the header block")
    raw = block[pos:end]
    if first & 0x80:  # Huffman-coded: the same strings come back call after call
        decoded = _HUFFMAN_CACHE.get(raw)
        if decoded is None:
            if len(_HUFFMAN_CACHE) > 20_000:
                _HUFFMAN_CACHE.clear()
            decoded = _HUFFMAN_CACHE[raw] = decode_huffman(raw)
        raw = decoded
    return raw, end


class Http2Session:
    """Parses both directions of one HTTP/2 connection; one call per stream."""

    protocol = NAME

    def __init__(self, conn: TcpConn, client: int, preface: bool = True) -> None:
        self.conn = conn
        self.ctx: Context = conn.ctx
        self.client = client
        halves = conn.halves
        client_state = PREFACE_STATE if preface and not halves[client].mid_start else FRAMES
        self.dirs = (
            _Direction(halves[0], client == 0, client_state if client == 0 else FRAMES),
            _Direction(halves[1], client == 1, client_state if client == 1 else FRAMES),
        )
        for d in self.dirs:
            if d.half.mid_start:
                d.state = RESYNC
        self.streams: dict[int, Stream] = {}
        # Streams reset (or refused by GOAWAY) whose call waits until the other direction has been parsed
        # up to the reset: each direction is parsed on its own, so the answer may not have been read yet.
        self.resets: list[Stream] = []
        # ids of the streams already emitted (the latest FINISHED_KEPT): late frames for them are dropped,
        # not taken for a new stream whose opening was missed
        self.finished: set[int] = set()
        self.finished_order: deque[int] = deque()
        self.body_limit = conn.ctx.config.body_limit

    # --- the h2c upgrade hand-off ------------------------------------------------------------------------
    def upgraded(self, request: http1.Message) -> None:
        """The HTTP/1.1 request that asked for `Upgrade: h2c` is stream 1 (RFC 7540 section 3.2)."""
        stream = Stream(1, request.ts, request.seq, self.conn.port[self.client])
        stream.request = Part(
            headers={k.lower(): v for k, v in request.headers.items()},
            seen=True,
            body=bytearray(request.body) if request.body else None,
            body_size=request.body_size,
            ended=True,
        )
        stream.request.headers.update({":method": request.method, ":path": request.target})  # type: ignore[union-attr]
        stream.partial = request.partial
        stream.last_ts = request.last_ts
        self.streams[1] = stream

    # --- session contract -------------------------------------------------------------------------------
    def feed(self, side: int) -> None:
        d = self.dirs[side]
        half = d.half
        buf = half.buf
        end_of_buf = len(buf)
        pos = 0
        unpack = FRAME_HEADER.unpack_from
        try:
            while True:
                if d.state == FRAMES:
                    if d.tail is not None:
                        pos = self._tail(d, buf, pos, end_of_buf)
                        if d.tail is not None:
                            break
                    if end_of_buf - pos < 9:
                        break
                    high, low, ftype, flags, sid = unpack(buf, pos)
                    length = high << 8 | low
                    if length > d.max_frame:
                        raise ParseError(f"frame of {length} bytes, more than the {d.max_frame} allowed")
                    end = pos + 9 + length
                    if end > end_of_buf:
                        break
                    self._frame(d, ftype, flags, sid & STREAM_MASK, buf, pos, end)
                    pos = end
                elif d.state == PREFACE_STATE:
                    if end_of_buf - pos < len(PREFACE):
                        if not PREFACE.startswith(bytes(buf[pos:])):
                            raise ParseError("not the HTTP/2 connection preface")
                        break
                    if buf[pos : pos + len(PREFACE)] != PREFACE:
                        raise ParseError("not the HTTP/2 connection preface")
                    pos += len(PREFACE)
                    d.state = FRAMES
                else:
                    found = _chain_start(buf, pos, end_of_buf)
                    if found < 0:
                        pos = max(pos, end_of_buf - RESYNC_KEEP)
                        break
                    pos = found
                    d.state = FRAMES
        except ParseError as exc:
            self._broken(d, str(exc), half.base + pos)
            pos = end_of_buf
            self._lost(d)
        half.consume(pos)
        d.fed_ts = half.last_ts
        if self.resets:
            self._settle(force=False)

    def on_gap(self, side: int, missing: int) -> None:
        d = self.dirs[side]
        self.feed(side)
        buf = d.half.buf
        if d.state == FRAMES and d.tail is None and d.block is None and len(buf) >= 9:
            high, low, ftype, flags, sid = FRAME_HEADER.unpack_from(buf, 0)
            length = high << 8 | low
            have = len(buf) - 9
            padded = bool(flags & PADDED)
            pad = buf[9] if padded and have else 0
            data_len = length - padded - pad  # body bytes the frame carries (padding comes last)
            if ftype == DATA and have + missing <= length and have >= padded and data_len >= 0:
                # the hole lies inside a DATA frame: the framing (and HPACK) survive, the body is short
                self._data_hole(d, sid & STREAM_MASK, buf, 9 + padded, data_len, missing)
                d.half.consume(len(buf))
                present = min(len(buf) - 9 - padded, data_len)
                body_left = max(0, data_len - present - missing)
                d.tail = (sid & STREAM_MASK, length - have - missing, body_left, bool(flags & END_STREAM))
                self._tail(d, buf, 0, 0)
                return
            if ftype == DATA and have >= padded and data_len >= 0:
                # the hole runs past this DATA frame: its body bytes still count (the frame's own
                # length says how many), the framing after it is lost
                self._data_hole(d, sid & STREAM_MASK, buf, 9 + padded, data_len, data_len)
        self._lost(d)

    def _data_hole(
        self, d: _Direction, sid: int, buf: bytearray, first: int, data_len: int, missing: int
    ) -> None:
        stream = self._stream(d, sid, 0, self._ts(d, 0))
        if stream is None:
            return
        part = stream.request if d.is_client else stream.response
        present = min(len(buf) - first, data_len)
        self._body(stream, part, buf, first, first + present, self._ts(d, len(buf) - 1))
        lost = min(missing, data_len - present)
        part.body_size += lost
        if part.prefix or part.message_left < lost:
            part.framing_lost = True  # a message prefix was among the lost bytes
        elif lost:
            part.message_left -= lost
            if not part.message_left:
                part.messages += 1
        stream.partial = True

    def close(self) -> None:
        for side in (self.client, 1 - self.client):
            self.feed(side)
        self._settle(force=True)
        for sid in sorted(self.streams):
            stream = self.streams[sid]
            if stream.response.seen and not stream.response.ended and not stream.reset:
                stream.partial = True  # the response was cut off by the end of the capture
            self._emit(stream)
        self.streams.clear()

    def pending_ts(self) -> int | None:
        times = [s.ts for s in self.streams.values() if not s.response.ended]
        return min(times) if times else None

    # --- frames ------------------------------------------------------------------------------------------
    def _ts(self, d: _Direction, offset: int) -> int:
        return d.half.ts_at(d.half.base + offset)

    def _frame(
        self, d: _Direction, ftype: int, flags: int, sid: int, buf: bytearray, start: int, end: int
    ) -> None:
        if d.block is not None and ftype != CONTINUATION:
            raise ParseError(f"frame type {ftype} inside a header block of stream {d.block[0]}")
        first = start + 9
        if ftype == DATA:
            if not sid:
                raise ParseError("DATA on stream 0")
            if flags & PADDED:
                first, end = _unpad(buf, first, end)
            stream = self._stream(d, sid, start, 0)
            if stream is None:
                return
            part = stream.request if d.is_client else stream.response
            ts = self._ts(d, end - 1 if end > first else start)
            self._body(stream, part, buf, first, end, ts)
            if flags & END_STREAM:
                self._ended(stream, d.is_client, ts)
        elif ftype in (HEADERS, PUSH_PROMISE):
            if not sid:
                raise ParseError("header block on stream 0")
            if flags & PADDED:
                first, end = _unpad(buf, first, end)
            promised = 0
            if ftype == HEADERS and flags & PRIORITY_FLAG:
                first += 5
            elif ftype == PUSH_PROMISE:
                if end - first < 4:
                    raise ParseError("PUSH_PROMISE without a promised stream id")
                promised = U32.unpack_from(buf, first)[0] & STREAM_MASK
                first += 4
            if first > end:
                raise ParseError("header block shorter than its fields")
            fragment = bytearray(buf[first:end])
            end_stream = bool(flags & END_STREAM) and ftype == HEADERS
            block = (
                sid,
                ftype,
                end_stream,
                self._ts(d, start),
                d.half.seq_at(d.half.base + start),
                promised,
                fragment,
            )
            if flags & END_HEADERS:
                self._block(d, block, self._ts(d, end - 1))
            else:
                d.block = block
        elif ftype == CONTINUATION:
            if d.block is None or d.block[0] != sid:
                raise ParseError(f"CONTINUATION on stream {sid} without a header block")
            d.block[6].extend(buf[first:end])
            if len(d.block[6]) > MAX_HEADER_BLOCK:
                raise ParseError(f"header block of stream {sid} longer than {MAX_HEADER_BLOCK} bytes")
            if flags & END_HEADERS:
                block, d.block = d.block, None
                self._block(d, block, self._ts(d, end - 1))
        elif ftype == RST_STREAM:
            if end - first != 4 or not sid:
                raise ParseError("malformed RST_STREAM")
            self._reset(sid, error_name(U32.unpack_from(buf, first)[0]), self._ts(d, start), d.is_client)
        elif ftype == SETTINGS:
            if not flags & ACK:
                self._settings(d, buf, first, end)
        elif ftype == GOAWAY:
            if end - first < 8:
                raise ParseError("malformed GOAWAY")
            if not d.is_client:
                self._goaway(U32.unpack_from(buf, first)[0] & STREAM_MASK, self._ts(d, start))
        # PRIORITY, PING, WINDOW_UPDATE and extension frames carry nothing a call needs

    def _settings(self, d: _Direction, buf: bytearray, first: int, end: int) -> None:
        """What a side announces bounds what the OTHER side may send it (table size, frame size)."""
        if (end - first) % 6:
            raise ParseError("SETTINGS length not a multiple of 6")
        peer = self.dirs[0] if self.dirs[1] is d else self.dirs[1]
        if peer.max_frame == MAX_FRAME:
            peer.max_frame = DEFAULT_MAX_FRAME  # unless announced below
        for at in range(first, end, 6):
            ident = buf[at] << 8 | buf[at + 1]
            value = U32.unpack_from(buf, at + 2)[0]
            if ident == SETTINGS_HEADER_TABLE_SIZE:
                peer.decoder.limit = max(value, 4096)
            elif ident == SETTINGS_MAX_FRAME_SIZE and DEFAULT_MAX_FRAME <= value <= MAX_FRAME:
                peer.max_frame = value

    def _tail(self, d: _Direction, buf: bytearray, pos: int, end_of_buf: int) -> int:
        """The rest of a DATA frame a loss cut into: body bytes until the frame's end."""
        assert d.tail is not None
        sid, left, body_left, end_stream = d.tail
        take = min(left, end_of_buf - pos)
        body = min(take, body_left)
        stream = self.streams.get(sid)
        if stream is not None and body:
            part = stream.request if d.is_client else stream.response
            self._body(stream, part, buf, pos, pos + body, self._ts(d, pos + take - 1))
        left -= take
        d.tail = (sid, left, body_left - body, end_stream) if left else None
        if not left and end_stream and stream is not None:
            self._ended(stream, d.is_client, stream.last_ts)
        return pos + take

    def _lost(self, d: _Direction) -> None:
        """Framing is gone on this direction: resynchronise, forget the HPACK table, flag open streams."""
        d.state = RESYNC
        d.block = None
        d.tail = None
        d.decoder = HpackDecoder(d.decoder.limit)
        d.desynced = True
        for stream in self.streams.values():
            stream.partial = True

    # --- streams -----------------------------------------------------------------------------------------
    def _stream(self, d: _Direction, sid: int, offset: int, ts: int) -> Stream | None:
        """The stream a frame belongs to; a stream first seen through a later frame (mid-way capture)."""
        stream = self.streams.get(sid)
        if stream is not None:
            return stream
        if sid in self.finished:
            return None  # a frame after the stream's call was emitted (data in flight after a reset)
        # a stream whose opening was not seen (capture started mid-way, or its HEADERS were lost)
        ts = ts or self._ts(d, offset)
        stream = Stream(
            sid, ts, d.half.seq_at(d.half.base + offset), self.conn.port[0 if d is self.dirs[0] else 1]
        )
        stream.partial = True
        stream.has_request = False
        stream.last_ts = ts
        self.streams[sid] = stream
        return stream

    def _block(
        self, d: _Direction, block: tuple[int, int, bool, int, int, int, bytearray], end_ts: int
    ) -> None:
        sid, kind, end_stream, ts, seq, promised, fragment = block
        headers, problem, complete = self._decode(d, bytes(fragment))
        if kind == PUSH_PROMISE:
            # the promised stream is a call of its own: its request is the promise
            pushed = Stream(promised, ts, seq, self.conn.port[1 - self.client])
            pushed.request = Part(headers=headers, seen=True, ended=True)
            pushed.last_ts = end_ts
            pushed.partial = not complete
            pushed.error = problem
            self.streams[promised] = pushed
            return
        stream = self.streams.get(sid)
        if stream is None and d.is_client and sid & 1 and sid not in self.finished:
            stream = self.streams[sid] = Stream(sid, ts, seq, self.conn.port[self.client])
            stream.last_ts = ts
        elif stream is None:
            stream = self._stream(d, sid, 0, ts)
            if stream is None:
                return
        part = stream.request if d.is_client else stream.response
        stream.partial = stream.partial or not complete
        if headers is None:
            stream.error = stream.error or problem
            part.seen = True
        elif not part.seen or (part.headers is None and not part.body_size):
            if not d.is_client and headers.get(":status", "").startswith("1"):
                stream.last_ts = end_ts
                return  # an interim response (100 Continue, 103): the final one follows
            part.headers = headers
            part.seen = True
        else:  # trailers
            if part.headers is None:
                part.headers = headers
            else:  # a new dict: decoded blocks are shared through the decoder's cache
                merged = dict(part.headers)
                for name, value in headers.items():
                    merged[name] = merged[name] + ", " + value if name in merged else value
                part.headers = merged
        stream.last_ts = end_ts
        if end_stream:
            self._ended(stream, d.is_client, end_ts)

    def _decode(self, d: _Direction, block: bytes) -> tuple[dict[str, str] | None, str, bool]:
        """(header fields, error text, complete). After a loss the table misses entries: what refers to
        one of them is left out (complete=False); in sync, such a reference is a corrupt block."""
        try:
            headers, complete = d.decoder.decode(block, strict=not d.desynced)
        except (HPACKError, IndexError, ValueError) as exc:
            # Entries this block added before failing may be missing: start again from an empty table,
            # which can only make later lookups fail, never return another entry's value.
            d.decoder = HpackDecoder(d.decoder.limit)
            d.desynced = True
            message = f"HPACK: {type(exc).__name__}: {exc}"[:200]
            self.ctx.parse_error(NAME, message)
            return None, f"http2: {message}", False
        return headers, "", complete

    def _body(self, stream: Stream, part: Part, buf: bytearray, first: int, end: int, ts: int) -> None:
        size = end - first
        stream.last_ts = ts
        if not size:
            return
        kept = len(part.body) if part.body is not None else 0
        room = self.body_limit - kept
        if room > 0:
            if part.body is None:
                part.body = bytearray()
            part.body += buf[first : first + (size if size <= room else room)]
        part.body_size += size
        if not part.framing_lost:
            _count_messages(part, buf, first, end)

    def _ended(self, stream: Stream, by_client: bool, ts: int) -> None:
        part = stream.request if by_client else stream.response
        part.ended = True
        part.end_ts = ts
        stream.last_ts = max(stream.last_ts, ts)
        if stream.response.ended and stream.request.ended and not stream.reset:
            del self.streams[stream.sid]
            self._emit(stream)

    def _reset(self, sid: int, code: str, ts: int, by_client: bool) -> None:
        stream = self.streams.get(sid)
        if stream is None or stream.reset:
            return
        stream.reset, stream.reset_ts, stream.reset_by_client = code, ts, by_client
        self.resets.append(stream)

    def _goaway(self, last_sid: int, ts: int) -> None:
        """Client streams above the server's last processed id were refused."""
        for sid in sorted(s for s in self.streams if s & 1 and s > last_sid):
            self._reset(sid, "REFUSED_STREAM", ts, by_client=False)

    def _settle(self, force: bool) -> None:
        """Emit reset streams once the other direction has been parsed as far as the reset."""
        waiting = []
        for stream in self.resets:
            other = self.dirs[1 - self.client] if stream.reset_by_client else self.dirs[self.client]
            if not force and other.fed_ts < other.half.last_ts:
                waiting.append(stream)
                continue
            if self.streams.get(stream.sid) is not stream:
                continue  # it ended normally meanwhile
            del self.streams[stream.sid]
            stream.last_ts = max(stream.last_ts, stream.reset_ts)
            if stream.response.ended:
                stream.reset = ""  # the answer was complete: a late reset changes nothing
            self._emit(stream)
        self.resets = waiting

    # --- output ------------------------------------------------------------------------------------------
    def _broken(self, d: _Direction, message: str, offset: int) -> None:
        self.ctx.parse_error(NAME, message)
        half = d.half
        ts = half.ts_at(offset)
        sender = self.client if d.is_client else 1 - self.client
        call = self.conn.call("tcp", self.client, ts)
        call.update(
            id=call_id("tcp", self.conn.flow_id, self.conn.port[sender], half.seq_at(offset), ts),
            error=f"http2: {message}",
            partial=True,
            first_packet_ts=ts,
            last_packet_ts=half.last_ts,
            has_request=True,  # keep it even in a resumed run: the error is real
        )
        self.ctx.emit(call)

    def _emit(self, stream: Stream) -> None:
        self.finished.add(stream.sid)
        self.finished_order.append(stream.sid)
        if len(self.finished_order) > FINISHED_KEPT:
            self.finished.discard(self.finished_order.popleft())
        request, response = stream.request, stream.response
        req = request.headers or {}
        resp = response.headers or {}
        content_type = req.get("content-type") or resp.get("content-type") or ""
        is_grpc = content_type.startswith("application/grpc") or (
            not content_type and stream.partial and _grpc_shaped(req)
        )
        conn = self.conn
        call = conn.call(GRPC if is_grpc else NAME, self.client, stream.ts)
        call["id"] = call_id(ID_KEY, conn.flow_id, stream.port, stream.seq, stream.ts)
        target = req.get(":path", "")
        path, _, query = target.partition("?")
        call.update(
            method=req.get(":method", ""),
            url=target,
            path=path,
            query_string=query,
            host=req.get(":authority") or req.get("host") or "",
            http_version=VERSION,
            request_headers=req,
            response_headers=resp,
            request_body_size=request.body_size,
            response_body_size=response.body_size,
            has_response=response.seen,
            first_packet_ts=stream.ts,
            last_packet_ts=max(stream.last_ts, stream.ts),
        )
        if not stream.has_request:
            call["has_request"] = False
        limit = self.body_limit
        for part, prefix in ((request, "request"), (response, "response")):
            if part.body:
                body, truncated = http1._decoded(part, limit)  # type: ignore[arg-type]
                call[prefix + "_body"] = body
                call[prefix + "_body_truncated"] = truncated
        if response.ended:
            call["elapsed_time"] = max(0, response.end_ts - stream.ts) // 1000
        elif response.seen:
            call["elapsed_time"] = max(0, stream.last_ts - stream.ts) // 1000
        status = resp.get(":status", "")
        http_status = int(status) if is_number(status) else 0
        if stream.reset:
            call["error_code"] = stream.reset
        if is_grpc:
            _grpc_columns(call, stream, resp, http_status)
        else:
            call["status_code"] = http_status
            call["status_text"] = _REASONS.get(http_status, "")
        partial = stream.partial or (request.seen and request.headers is None)
        partial = partial or (response.seen and response.headers is None)
        call["partial"] = partial
        if stream.error:
            call["error"] = stream.error
        self.ctx.emit(call)


def _grpc_shaped(req: dict[str, str]) -> bool:
    """A request whose content-type was lost (HPACK after a loss) that has gRPC's shape: POST to
    /package.Service/Method."""
    return req.get(":method") == "POST" and GRPC_PATH.match(req.get(":path", "")) is not None


def _grpc_columns(call: dict[str, Any], stream: Stream, resp: dict[str, str], http_status: int) -> None:
    call["grpc_method"] = call["path"]
    call["request_messages"] = stream.request.messages
    call["response_messages"] = stream.response.messages
    text = resp.get("grpc-status", "")
    if is_number(text):
        code = int(text)
    elif stream.reset:
        code = RESET_TO_GRPC.get(stream.reset, GRPC_INTERNAL)
        timeout = _grpc_timeout_ns(stream.request.headers or {})
        if code == 1 and stream.reset_by_client and timeout and stream.reset_ts - stream.ts >= timeout:
            code = DEADLINE_EXCEEDED  # the client gave up when its grpc-timeout ran out
    elif http_status and http_status != 200:
        code = HTTP_TO_GRPC.get(http_status, GRPC_UNKNOWN)
    else:
        return  # no outcome known (the response never came)
    call["status_code"] = call["grpc_status"] = code
    call["status_text"] = GRPC_STATUS[code] if 0 <= code < len(GRPC_STATUS) else str(code)
    message = resp.get("grpc-message")
    if message:
        call["status_message"] = unquote(message, errors="replace")


def _grpc_timeout_ns(headers: dict[str, str]) -> int:
    """The request's grpc-timeout (e.g. `499m`) in nanoseconds, 0 when absent or malformed."""
    text = headers.get("grpc-timeout", "")
    unit = TIMEOUT_UNITS.get(text[-1:])
    if unit is None or not is_number(text[:-1]):
        return 0
    return int(text[:-1]) * unit


def _unpad(buf: bytearray, first: int, end: int) -> tuple[int, int]:
    if first >= end:
        raise ParseError("padded frame without a pad length")
    pad = buf[first]
    if first + 1 + pad > end:
        raise ParseError("padding longer than the frame")
    return first + 1, end - pad


def _count_messages(part: Part, buf: bytearray, pos: int, end: int) -> None:
    """gRPC length-prefixed messages (1 flag byte, 4 length bytes, payload) across DATA frames."""
    while pos < end:
        left = part.message_left
        if left:
            take = left if left <= end - pos else end - pos
            part.message_left = left - take
            pos += take
            if not part.message_left:
                part.messages += 1
            continue
        need = 5 - len(part.prefix)
        if not part.prefix and end - pos >= 5:
            length = U32.unpack_from(buf, pos + 1)[0]
            pos += 5
        else:
            part.prefix += bytes(buf[pos : pos + need])
            pos += min(need, end - pos)
            if len(part.prefix) < 5:
                return
            length = U32.unpack_from(part.prefix, 1)[0]
            part.prefix = b""
        if length:
            part.message_left = length
        else:
            part.messages += 1


# --- detection -----------------------------------------------------------------------------------------
def _frame_ok(buf: bytearray | bytes, pos: int) -> int:
    """The end of a plausible frame starting at pos, or -1 (for recognising frames without the preface)."""
    high, low, ftype, flags, sid = FRAME_HEADER.unpack_from(buf, pos)
    length = high << 8 | low
    if ftype > CONTINUATION or flags & ~_FLAGS[ftype] or sid & 0x80000000 or length > MIDSTREAM_MAX_FRAME:
        return -1
    zero = _ON_STREAM_ZERO[ftype]
    if zero is not None and zero != (sid == 0):
        return -1
    if (
        (ftype == PRIORITY and length != 5)
        or (ftype in (RST_STREAM, WINDOW_UPDATE) and length != 4)
        or (ftype == SETTINGS and length % 6)
        or (ftype == PING and length != 8)
        or (ftype == GOAWAY and length < 8)
    ):
        return -1
    return pos + 9 + length


def _chain_start(buf: bytearray | bytes, pos: int, end: int, scan: int = RESYNC_KEEP) -> int:
    """Where a run of well-formed frames starts (3 frames, or 2 that end exactly at the buffer's end)."""
    for start in range(pos, min(end - 8, pos + scan)):
        at, frames = start, 0
        while at + 9 <= end:
            nxt = _frame_ok(buf, at)
            if nxt < 0:
                break
            frames += 1
            at = nxt
            if frames >= 3:
                return start
        if frames >= 2 and at == end:
            return start
    return -1


def _speaks_first(buf: bytearray | bytes, start: int) -> str:
    """'req' or 'resp' from the first header block of a frame chain (static-table pseudo-headers), or ''."""
    at = start
    while at + 9 <= len(buf):
        nxt = _frame_ok(buf, at)
        if nxt < 0:
            return ""
        ftype, flags = buf[at + 3], buf[at + 4]
        if ftype == PUSH_PROMISE:
            return "resp"
        if ftype == HEADERS and nxt > at + 9:
            first = at + 9 + (1 if flags & PADDED else 0) + (5 if flags & PRIORITY_FLAG else 0)
            if first < min(nxt, len(buf)):  # the frame may run past what is buffered (fuzz/http2)
                return _first_field(buf[first])
        at = nxt
    return ""


def _first_field(byte: int) -> str:
    if byte & 0x80:
        index = byte & 0x7F
    elif byte & 0x40:
        index = byte & 0x3F
    elif byte & 0x20:
        return ""  # a table size update first: no clue
    else:
        index = byte & 0x0F
    if 1 <= index <= 7:
        return "req"  # :authority, :method, :path, :scheme
    if 8 <= index <= 14:
        return "resp"  # :status
    return ""


def _is_settings(buf: bytearray) -> bool:
    """A well-formed SETTINGS frame header at the start (what a server sends first)."""
    if len(buf) < 9 or buf[3] != SETTINGS:
        return False
    return _frame_ok(buf, 0) == 9 + (buf[0] << 16 | buf[1] << 8 | buf[2])


class Http2Dissector:
    name = "http2"

    def detect(self, conn: TcpConn) -> int:
        halves = conn.halves
        waiting = False
        for side, half in enumerate(halves):
            buf = half.buf
            if not buf or (conn.client is not None and side != conn.client):
                continue  # the preface is the client's: a server (known by the SYN) sending it is not h2
            if buf[: len(PREFACE)] == PREFACE:
                return side
            if len(buf) < len(PREFACE) and PREFACE.startswith(bytes(buf)):
                waiting = True
        if waiting:
            return MORE
        if not any(h.mid_start for h in halves):
            # a server that sent its SETTINGS while the client sent nothing (a connection probe, say)
            for side, half in enumerate(halves):
                other = halves[1 - side]
                if not other.buf and not other.total and _is_settings(half.buf):
                    return 1 - side
            return NO
        return self._midway(conn)

    def _midway(self, conn: TcpConn) -> int:
        """A connection captured mid-way: frames, and which side sends requests."""
        verdicts = []
        for half in conn.halves:
            buf = half.buf
            if len(buf) < 9:
                verdicts.append("more" if not buf or half.mid_start else "no")
                continue
            start = _chain_start(buf, 0, len(buf), scan=min(len(buf), 4096))
            if start < 0:
                verdicts.append("more" if len(buf) < 16 * 1024 else "no")
                continue
            verdicts.append(_speaks_first(buf, start) or "frames")
        if "no" in verdicts:
            return NO
        for side, verdict in enumerate(verdicts):
            if verdict == "req":
                return side
            if verdict == "resp":
                return 1 - side
        if "more" in verdicts:
            return MORE
        return conn.guess_client()

    def session(self, conn: TcpConn, client: int) -> Any:
        return Http2Session(conn, client)


def upgraded_session(conn: TcpConn, client: int, request: http1.Message) -> Http2Session:
    """The HTTP/2 session taking over a connection after `101 Switching Protocols` to h2c."""
    session = Http2Session(conn, client, preface=True)
    session.upgraded(request)
    return session
