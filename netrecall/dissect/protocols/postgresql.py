"""PostgreSQL (frontend/backend protocol 3.0): startup, simple and extended queries, COPY, errors.

- Detection: a client whose first message is a StartupMessage (protocol 3.x), an SSLRequest, a
  GSSENCRequest or a CancelRequest (any port: the 8-byte header is unambiguous). On port 5432 also a
  connection captured mid-way (a chain of well-formed messages) or garbage (then flagged).
- Calls: one row per StartupMessage (`Startup`: db_user, db_name, status 1 on an authentication error),
  per simple Query (`Query`: path = the SQL text, every CommandComplete tag joined with '; ',
  result_rows = the sum of the tags' row counts), per Execute (`Execute`: path = the SQL of the statement
  its portal was bound from, remembered per connection across named statements), and per other
  extended-protocol message the server answered with ErrorResponse (`Parse`, `Bind`, ...). An
  ErrorResponse sets status_code 1, error_code (SQLSTATE), status_message and status_text (severity).
  db_user and db_name go on every row of the connection. COPY data counts into the body sizes.
- Pairing: the backend answers frontend messages in order: ParseComplete, BindComplete, ... and
  ReadyForQuery closes a Query, a Sync or the startup. After an error the server skips the extended
  messages up to the next Sync: they produce no row (the server never ran them).
- TLS: an SSLRequest (or GSSENCRequest) answered 'S' ('G') makes the rest of the connection encrypted:
  one `SSLRequest` row says so (status_text `TLS`) and the bytes after it are not parsed. Answered 'N',
  the startup continues in clear.
- Never stored: passwords (PasswordMessage, SASL and GSS bodies are skipped) and Bind parameters.
- Errors: a frontend message that breaks the framing becomes a flagged `tcp` row and the direction looks
  for the next plausible message (type byte and length, followed by another); a capture that starts
  mid-connection resynchronises the same way and flags its first call partial.
"""

from __future__ import annotations

import struct
from collections import deque
from typing import TYPE_CHECKING, Any

from netrecall.dissect.calls import Context, call_id, call_id_in, id_prefix
from netrecall.dissect.protocols.base import MORE, NO, ParseError, is_number

if TYPE_CHECKING:
    from netrecall.dissect.tcp import HalfStream, TcpConn

NAME = "postgresql"
PORT = 5432
SSL_REQUEST = 80877103
GSSENC_REQUEST = 80877104
CANCEL_REQUEST = 80877102
PROTOCOL_3 = 3 << 16
MAX_STARTUP = 10_000  # the server itself refuses longer startup packets
MAX_MESSAGE = 1 << 30  # the protocol's own limit
PLAUSIBLE = 16 << 20  # when resynchronising, a length larger than this is taken for noise
MIDSTREAM_SCAN = 64 * 1024
FRONTEND_TYPES = frozenset(b"BCcdDEfFHpPQSX")
BACKEND_TYPES = frozenset(b"123ACcDdEGHIKnNRsStTvVWZ")
# ErrorResponse fields: S severity (localised), V severity, C SQLSTATE code, M message
_INT32 = struct.Struct("!i")
Body = bytes | bytearray  # a message's body: a slice of the stream's buffer, not copied again
_TAG_ROWS = frozenset(("SELECT", "INSERT", "UPDATE", "DELETE", "COPY", "FETCH", "MOVE", "MERGE"))
# The rows produced by each kind of frontend message, and the backend message that completes it.
_COMPLETED_BY = {"Parse": 0x31, "Bind": 0x32, "Close": 0x33}
_ENDED_BY_READY = frozenset(("Startup", "Query", "Sync", "FunctionCall"))
# Backend messages that neither complete nor change the answer they belong to, beyond its size:
# DataRow, CopyData, ParameterStatus, NoticeResponse, ParameterDescription, CopyDone.
_JUST_COUNTED = frozenset(b"DdSNtc")
# Backend messages that only count into the answer under way: ParameterStatus, BackendKeyData, Notice,
# NotificationResponse, FunctionCallResponse.
_STATUS = frozenset(b"SKNAv")
_COMPLETIONS = frozenset(b"123")


class Pending:
    """A frontend message waiting for the backend's answer (and, for Query/Execute/Startup, its row)."""

    __slots__ = (
        "copy_in",
        "copy_out",
        "error",
        "kind",
        "last_ts",
        "partial",
        "reply_size",
        "reply_ts",
        "rows",
        "seq",
        "severity",
        "size",
        "sql",
        "sqlstate",
        "suspended",
        "tags",
        "ts",
    )

    def __init__(self, kind: str, sql: str, ts: int, seq: int, size: int) -> None:
        self.kind = kind
        self.sql = sql
        self.ts = ts
        self.last_ts = ts
        self.seq = seq
        self.size = size
        self.copy_in = 0  # CopyData bytes the client sent
        self.copy_out = 0  # CopyData bytes the server sent
        self.reply_ts = 0
        self.reply_size = 0
        self.tags: list[str] | None = None  # CommandComplete tags; most messages have none
        self.rows = 0
        self.error = ""
        self.sqlstate = ""
        self.severity = ""
        self.partial = False
        self.suspended = False


def _cstring(body: Body, pos: int) -> tuple[str, int]:
    end = body.find(b"\0", pos)
    if end < 0:
        raise ParseError("string without its terminating NUL")
    return body[pos:end].decode("utf-8", "replace"), end + 1


def _error_fields(body: Body) -> dict[str, str]:
    """The fields of an ErrorResponse or NoticeResponse by their one-letter code."""
    fields: dict[str, str] = {}
    pos = 0
    while pos < len(body) and body[pos] != 0:
        code = chr(body[pos])
        value, pos = _cstring(body, pos + 1)
        fields[code] = value
    return fields


def _rows_of(tag: str) -> int:
    """Rows a CommandComplete tag reports ('INSERT 0 3' -> 3, 'SELECT 2' -> 2, 'CREATE TABLE' -> 0)."""
    words = tag.split()
    if len(words) >= 2 and words[0] in _TAG_ROWS and is_number(words[-1]):
        return int(words[-1])
    return 0


def _plausible_chain(buf: bytearray, pos: int, types: frozenset[int]) -> bool:
    """A plausible message header at pos, followed by the buffer's end or another plausible header."""
    for index in range(2):
        if pos + 5 > len(buf):
            return index > 0 and pos == len(buf)
        if buf[pos] not in types:
            return False
        length = _INT32.unpack_from(buf, pos + 1)[0]
        if length < 4 or length > PLAUSIBLE:
            return False
        pos += 1 + length
    return True


def _find_boundary(buf: bytearray, pos: int, types: frozenset[int], limit: int) -> int:
    """The first position from pos where a plausible chain of messages starts, or -1."""
    end = min(len(buf) - 4, pos + limit)
    while pos < end:
        if buf[pos] in types and _plausible_chain(buf, pos, types):
            return pos
        pos += 1
    return -1


# directions' states
STARTUP, TYPED, RESYNC, OPAQUE = range(4)


class _Direction:
    __slots__ = ("half", "skipped", "state")

    def __init__(self, half: HalfStream, state: int) -> None:
        self.half = half
        self.state = RESYNC if half.mid_start else state
        self.skipped = half.mid_start  # bytes before the first message were not seen: it is partial


class PostgresSession:
    """Both directions of one connection; backend answers matched to frontend messages in order."""

    protocol = NAME

    def __init__(self, conn: TcpConn, client: int) -> None:
        self.conn = conn
        self.ctx: Context = conn.ctx
        self.client = client
        self.frontend = _Direction(conn.halves[client], STARTUP)
        self.backend = _Direction(conn.halves[1 - client], TYPED)
        self.pending: deque[Pending] = deque()
        self.statements: dict[str, str] = {}  # prepared statement name -> SQL
        self.portals: dict[str, str] = {}  # portal name -> SQL of the statement it was bound from
        self.user = ""
        self.database = ""
        self.encryption: Pending | None = None  # an SSLRequest/GSSENCRequest waiting for its 1-byte answer
        self.answers_expected = 0  # 1-byte answers the backend owes (one per encryption request)
        self.last_query: Pending | None = None  # where CopyData from the client goes
        # fixed for the connection: the row's endpoints, and the id prefix of a call the client started
        # (index True) or of a server message nothing asked for (index False)
        self.ends = conn.call(NAME, client, 0)
        del self.ends["ts"]
        self.id_prefixes = (
            id_prefix(NAME, conn.flow_id, conn.port[1 - client]),
            id_prefix(NAME, conn.flow_id, conn.port[client]),
        )

    # --- session contract -------------------------------------------------------------------------------
    def feed(self, side: int) -> None:
        if side == self.client:
            self._feed(self.frontend, self._frontend_message)
        else:
            self._feed(self.backend, self._backend_message)

    def on_gap(self, side: int, missing: int) -> None:
        self.feed(side)
        d = self.frontend if side == self.client else self.backend
        if d.state == OPAQUE:
            return
        d.state = RESYNC
        d.skipped = True
        if side != self.client:
            for item in self.pending:
                item.partial = True

    def close(self) -> None:
        self.feed(self.client)
        self.feed(1 - self.client)
        if self.encryption is not None:  # the answer was not captured
            self.encryption.partial = True
            self._emit(self.encryption)
            self.encryption = None
        while self.pending:
            item = self.pending.popleft()
            if item.kind in ("Startup", "Query", "Execute", "FunctionCall"):
                item.partial = item.partial or bool(item.reply_ts)
                self._emit(item)

    def pending_ts(self) -> int | None:
        return self.pending[0].ts if self.pending else None

    # --- framing ----------------------------------------------------------------------------------------
    def _feed(self, d: _Direction, handle: Any) -> None:
        half = d.half
        buf = half.buf
        pos = 0
        n = len(buf)
        backend = d is self.backend
        types = BACKEND_TYPES if backend else FRONTEND_TYPES
        base = half.base
        seg_off, seg_ts = half.seg_off, half.seg_ts
        last_seg = len(seg_off) - 1
        si = 0  # segment holding the byte being looked at: offsets only grow here, so a cursor, no bisect
        unpack = _INT32.unpack_from
        seq0 = half.seq0
        while pos < n:
            state = d.state
            try:
                if state == TYPED and not (backend and self.answers_expected):
                    # the hot path, inlined: one typed message (type byte, length, body)
                    if n - pos < 5:
                        break
                    type_byte = buf[pos]
                    length = unpack(buf, pos + 1)[0]
                    if type_byte not in types:
                        raise ParseError(f"unknown message type {bytes(buf[pos : pos + 1])!r}")
                    if length < 4 or length > MAX_MESSAGE:
                        raise ParseError(f"message length {length}")
                    end = pos + 1 + length
                    if end > n:
                        break
                    if backend and type_byte in _JUST_COUNTED and self.pending and not d.skipped:
                        # rows and status messages of an answer already under way only add to its size
                        head = self.pending[0]
                        if head.reply_ts:
                            head.reply_size += 1 + length
                            if type_byte == 0x64:
                                head.copy_out += length - 4
                            pos = end
                            continue
                    if last_seg < 0:
                        ts = last_ts = half.last_ts
                    else:
                        offset = base + pos
                        while si < last_seg and seg_off[si + 1] <= offset:
                            si += 1
                        ts = seg_ts[si]
                        offset = base + end - 1
                        while si < last_seg and seg_off[si + 1] <= offset:
                            si += 1
                        last_ts = seg_ts[si]
                    seq = (seq0 + base + pos) & 0xFFFFFFFF  # half.seq_at, inlined
                    handle(d, type_byte, buf[pos + 5 : end], ts, seq, 1 + length, last_ts)
                    pos = end
                    continue
                if state == OPAQUE:
                    pos = n
                    break
                if state == RESYNC:
                    found = self._resync(d, pos)
                    if found < 0:
                        pos = max(pos, n - 8)
                        break
                    pos = found
                    d.state = TYPED
                    continue
                if backend and self.answers_expected and buf[pos] in b"SNG":
                    self.answers_expected -= 1
                    self._encryption_answer(buf[pos], half.ts_at(base + pos))
                    pos += 1
                    continue
                if state == STARTUP:
                    end = self._startup_message(d, buf, pos)
                else:
                    end = self._typed_message(d, buf, pos, handle)
            except ParseError as exc:
                self._broken(d, str(exc), base + pos)
                d.state = RESYNC
                d.skipped = True
                pos += 1
                continue
            if end is None:
                break
            pos = end
        half.consume(pos)

    def _resync(self, d: _Direction, pos: int) -> int:
        types = FRONTEND_TYPES if d is self.frontend else BACKEND_TYPES
        buf = d.half.buf
        if d is self.backend and d.half.mid_start and not self.pending:
            return -1  # nothing seen from the client yet: what the server says answers messages not captured
        return _find_boundary(buf, pos, types, len(buf))

    def _typed_message(self, d: _Direction, buf: bytearray, pos: int, handle: Any) -> int | None:
        """One typed message off the hot path (the backend owes a 1-byte encryption answer meanwhile)."""
        if len(buf) - pos < 5:
            return None
        type_byte = buf[pos]
        length = _INT32.unpack_from(buf, pos + 1)[0]
        types = FRONTEND_TYPES if d is self.frontend else BACKEND_TYPES
        if type_byte not in types:
            raise ParseError(f"unknown message type {bytes(buf[pos : pos + 1])!r}")
        if length < 4 or length > MAX_MESSAGE:
            raise ParseError(f"message length {length}")
        end = pos + 1 + length
        if end > len(buf):
            return None
        half = d.half
        offset = half.base + pos
        body = bytes(buf[pos + 5 : end])
        handle(
            d,
            type_byte,
            body,
            half.ts_at(offset),
            half.seq_at(offset),
            1 + length,
            half.ts_at(half.base + end - 1),
        )
        return end

    # --- frontend ---------------------------------------------------------------------------------------
    def _startup_message(self, d: _Direction, buf: bytearray, pos: int) -> int | None:
        """An untyped message (startup packet, SSL/GSS/cancel request), or TLS once encryption is on."""
        half = d.half
        if buf[pos] == 0x16 and self.encryption is not None:
            d.state = OPAQUE  # a TLS ClientHello: the server said 'S'
            return len(buf)
        if len(buf) - pos < 8:
            return None
        length, code = struct.unpack_from("!ii", buf, pos)
        if length < 8 or length > MAX_STARTUP:
            raise ParseError(f"startup packet length {length}")
        end = pos + length
        if end > len(buf):
            return None
        offset = half.base + pos
        ts, seq = half.ts_at(offset), half.seq_at(offset)
        if code in (SSL_REQUEST, GSSENC_REQUEST):
            kind = "SSLRequest" if code == SSL_REQUEST else "GSSENCRequest"
            self.encryption = Pending(kind, "", ts, seq, length)
            self.answers_expected += 1
        elif code == CANCEL_REQUEST:
            self._emit(Pending("CancelRequest", "", ts, seq, length))  # answered by closing, never in words
        elif code >> 16 == 3:
            self._startup_parameters(bytes(buf[pos + 8 : end]))
            item = Pending("Startup", "", ts, seq, length)
            if self.encryption is not None:  # refused with 'N': the startup goes on in clear
                item.ts, item.seq = self.encryption.ts, self.encryption.seq
                item.size += self.encryption.size
                item.reply_ts = self.encryption.reply_ts
                item.reply_size = self.encryption.reply_size
                self.encryption = None
            item.partial = d.skipped
            d.skipped = False
            self.pending.append(item)
            d.state = TYPED
        else:
            raise ParseError(f"startup packet with protocol code {code}")
        return end

    def _startup_parameters(self, body: bytes) -> None:
        pos = 0
        params: dict[str, str] = {}
        while pos < len(body) and body[pos] != 0:
            key, pos = _cstring(body, pos)
            value, pos = _cstring(body, pos)
            params[key] = value
        self.user = params.get("user", "")
        self.database = params.get("database", "") or self.user  # the server's own default

    def _frontend_message(
        self, d: _Direction, type_byte: int, body: Body, ts: int, seq: int, size: int, last_ts: int
    ) -> None:
        kind = ""
        sql = ""
        if type_byte == 0x51:  # Q
            kind, sql = "Query", _cstring(body, 0)[0]
        elif type_byte == 0x50:  # P
            name, pos = _cstring(body, 0)
            sql = _cstring(body, pos)[0]
            self.statements[name] = sql
            kind = "Parse"
        elif type_byte == 0x42:  # B
            portal, pos = _cstring(body, 0)
            statement = _cstring(body, pos)[0]
            sql = self.statements.get(statement, "")
            self.portals[portal] = sql
            kind = "Bind"
        elif type_byte == 0x45:  # E
            portal = _cstring(body, 0)[0]
            kind = "Execute"
            sql = self.portals.get(portal, "")
        elif type_byte == 0x44:  # D
            kind = "Describe"
        elif type_byte == 0x43:  # C
            kind = "Close"
            if body[:1] == b"S":
                self.statements.pop(_cstring(body, 1)[0], None)
        elif type_byte == 0x53:  # S
            kind = "Sync"
        elif type_byte == 0x46:  # F
            kind = "FunctionCall"
        elif type_byte == 0x64:  # d: CopyData goes with the COPY that asked for it
            if self.last_query is not None:
                self.last_query.copy_in += len(body)
                self.last_query.size += size
            return
        else:
            return  # Flush, CopyDone, CopyFail, Terminate; passwords ('p') are never looked into
        item = Pending(kind, sql, ts, seq, size)
        item.last_ts = last_ts
        if d.skipped:
            item.partial = True
            d.skipped = False
        if kind == "Execute" and not sql:
            item.partial = True  # bound before the capture started: the statement's text is unknown
        self.pending.append(item)
        if kind == "Query":
            self.last_query = item

    # --- backend ----------------------------------------------------------------------------------------
    def _encryption_answer(self, answer: int, ts: int) -> None:
        request = self.encryption
        if request is None:
            return
        request.reply_ts = ts
        request.reply_size = 1
        request.last_ts = ts
        if answer in (0x53, 0x47):  # 'S' / 'G': the rest of the connection is encrypted
            self.encryption = None
            self.frontend.state = OPAQUE
            self.backend.state = OPAQUE
            self._emit(request)

    def _backend_message(
        self, d: _Direction, type_byte: int, body: Body, ts: int, seq: int, size: int, last_ts: int
    ) -> None:
        pending = self.pending
        if not pending:
            if type_byte == 0x45:  # an error nothing asked for is still worth a row
                orphan = Pending("", "", ts, seq, 0)
                self._answered(orphan, ts, size, last_ts)
                self._error(orphan, body)
                orphan.partial = True
                self._emit(orphan, has_request=False)
            return
        head = pending[0]
        if not head.reply_ts:  # _answered, inlined: every backend message passes here
            head.reply_ts = ts
        head.reply_size += size
        head.last_ts = last_ts
        if type_byte in _STATUS:
            return
        if d.skipped:
            head.partial = True
            d.skipped = False
        # the type bytes below are all different, so the most frequent go first
        if type_byte == 0x5A:  # Z: ReadyForQuery ends a Query, a Sync, the startup
            self._ready()
        elif type_byte == 0x43:  # C: CommandComplete
            tag = _cstring(body, 0)[0]
            if head.tags is None:
                head.tags = [tag]
            else:
                head.tags.append(tag)
            head.rows += _rows_of(tag)
            if head.kind == "Execute":
                self._done()
        elif type_byte in _COMPLETIONS:  # 1 ParseComplete, 2 BindComplete, 3 CloseComplete
            if _COMPLETED_BY.get(head.kind) == type_byte:
                self._done()
        elif type_byte == 0x54 or type_byte == 0x6E:  # T RowDescription, n NoData: answer a Describe
            if head.kind == "Describe":
                self._done()
        elif type_byte == 0x45:  # E
            self._failed(head, body)
        elif type_byte == 0x49 or type_byte == 0x73:  # I: EmptyQueryResponse, s: PortalSuspended
            head.suspended = type_byte == 0x73
            if head.kind == "Execute":
                self._done()
        elif type_byte == 0x64:  # d: CopyData
            head.copy_out += len(body)
        # R (authentication), t, D, G/H/W (COPY starts), c, V (a FunctionCall's result, ended by its
        # ReadyForQuery): part of the head's answer

    def _answered(self, item: Pending, ts: int, size: int, last_ts: int) -> None:
        if not item.reply_ts:
            item.reply_ts = ts
        item.reply_size += size
        item.last_ts = last_ts

    def _done(self) -> None:
        item = self.pending.popleft()
        if item.kind == "Execute":
            self._emit(item)

    def _ready(self) -> None:
        """ReadyForQuery: the oldest Query/Sync/startup is complete (anything older was skipped)."""
        while self.pending:
            item = self.pending.popleft()
            if item.kind in _ENDED_BY_READY:
                if item.kind != "Sync":
                    self._emit(item)
                return
            if item.kind == "Execute":
                item.partial = True  # ReadyForQuery before its completion: the answer went missing
                self._emit(item)

    def _failed(self, head: Pending, body: Body) -> None:
        """ErrorResponse: a Query or the startup keeps it; an extended message gets a row and the server
        skips what follows up to the next Sync."""
        self._error(head, body)
        if head.kind == "Query" or head.kind == "FunctionCall":
            return  # ReadyForQuery follows
        self.pending.popleft()
        if head.kind == "Startup":
            self._emit(head)  # the server closes the connection after a failed startup
            return
        if head.kind != "Sync":
            self._emit(head)
        while self.pending and self.pending[0].kind != "Sync":
            self.pending.popleft()

    def _error(self, item: Pending, body: Body) -> None:
        try:
            fields = _error_fields(body)
        except ParseError:
            fields = {}
        item.sqlstate = fields.get("C", "")
        item.error = fields.get("M", "")
        item.severity = fields.get("V", fields.get("S", "ERROR"))

    # --- output -----------------------------------------------------------------------------------------
    def _emit(self, item: Pending, has_request: bool = True) -> None:
        ts = item.ts
        reply_ts = item.reply_ts
        last_ts = item.last_ts
        call = {
            **self.ends,
            "ts": ts,
            "id": call_id_in(self.id_prefixes[has_request], item.seq, ts),
            "method": item.kind,
            "path": item.sql,
            "db_user": self.user,
            "db_name": self.database,
            "request_body_size": item.size,
            "response_body_size": item.reply_size,
            "has_response": bool(reply_ts),
            "elapsed_time": max(0, reply_ts - ts) // 1000 if reply_ts and has_request else 0,
            "command_tag": "; ".join(item.tags) if item.tags else "",
            "result_rows": item.rows,
            "partial": item.partial,
            "first_packet_ts": ts,
            "last_packet_ts": last_ts if last_ts > ts else ts,
        }
        if item.sqlstate or item.error:
            call.update(
                status_code=1, error_code=item.sqlstate, status_message=item.error, status_text=item.severity
            )
        elif item.kind in ("SSLRequest", "GSSENCRequest") and item.reply_ts and not item.partial:
            call["status_text"] = "TLS" if item.kind == "SSLRequest" else "GSS"
            call["status_message"] = (
                "the server accepted encryption: the rest of the connection is not dissected"
            )
        elif item.suspended:
            call["status_text"] = "PortalSuspended"
        if not has_request:
            call["has_request"] = False
        self.ctx.emit(call)

    def _broken(self, d: _Direction, message: str, offset: int) -> None:
        self.ctx.parse_error(NAME, message)
        half = d.half
        ts = half.ts_at(offset)
        conn = self.conn
        side = self.client if d is self.frontend else 1 - self.client
        call = conn.call("tcp", self.client, ts)
        call.update(
            id=call_id("tcp", conn.flow_id, conn.port[side], half.seq_at(offset), ts),
            error=f"postgresql: {message}",
            partial=True,
            first_packet_ts=ts,
            last_packet_ts=half.last_ts,
        )
        call["has_request"] = True  # keep it even in a resumed run: the error is real
        self.ctx.emit(call)


# --- detection ---------------------------------------------------------------------------------------------
def _startup_verdict(data: bytearray) -> str:
    """'yes', 'no' or 'more' for the first bytes of a direction: is it a client's first message?"""
    if len(data) < 8:
        return "more" if data[:1] in (b"", b"\0") else "no"
    length, code = struct.unpack_from("!ii", data, 0)
    if code in (SSL_REQUEST, GSSENC_REQUEST):
        return "yes" if length == 8 else "no"
    if code == CANCEL_REQUEST:
        return "yes" if length == 16 else "no"
    if code >> 16 == 3 and 8 < length <= MAX_STARTUP and code & 0xFFFF <= 2:
        # Parameters are NUL-terminated names and values, and "user" is required, so the first name is
        # non-empty text. An empty one would take Kafka's Metadata v0-v2 (size, 00 03 00 0N, id 00 ..).
        name = bytes(data[8 : min(len(data), 40)]).split(b"\0", 1)[0]
        if not (name and name.isascii() and name.replace(b"_", b"").isalnum()):
            return "no"
        if len(data) >= length and data[length - 1] != 0:
            return "no"  # the whole message is here and does not end with the list's terminator
        return "yes"
    return "no"


class PostgresDissector:
    name = NAME

    def detect(self, conn: TcpConn) -> int:
        halves = conn.halves
        on_port = PORT in conn.port
        if halves[0].mid_start or halves[1].mid_start:
            if not on_port:
                return NO
            client = 0 if conn.port[1] == PORT else 1
            buf = halves[client].buf
            if _find_boundary(buf, 0, FRONTEND_TYPES, MIDSTREAM_SCAN) >= 0:
                return client
            server_buf = halves[1 - client].buf
            if not buf and _find_boundary(server_buf, 0, BACKEND_TYPES, MIDSTREAM_SCAN) >= 0:
                return client
            return MORE if len(buf) + len(server_buf) < MIDSTREAM_SCAN else NO
        verdicts = [_startup_verdict(half.buf) for half in halves]
        for side, verdict in enumerate(verdicts):
            if verdict == "yes":
                return side
        if on_port:
            client = 0 if conn.port[1] == PORT else 1
            if halves[client].buf and verdicts[client] == "no":
                return client  # not a startup packet on the PostgreSQL port: dissected, and flagged
        a, b = halves
        if (a.buf and verdicts[0] == "more") or (b.buf and verdicts[1] == "more"):
            return MORE  # the first 8 bytes are not all here yet
        return NO if a.buf or b.buf else MORE

    def session(self, conn: TcpConn, client: int) -> Any:
        return PostgresSession(conn, client)


DISSECTOR = PostgresDissector()
