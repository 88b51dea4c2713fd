"""HTTP/1.0 and HTTP/1.1: detection by content, an incremental parser per direction, matching by order.

- Detection: a direction starting with a known method and a space is the client; one starting with
  `HTTP/1.` is the server. A connection captured mid-way is searched for the first message start.
- Framing: Transfer-Encoding chunked, else Content-Length, else (responses only) until the server
  closes. HEAD, 1xx, 204 and 304 responses have no body. `100 Continue` and other 1xx (except 101) are
  interim: the final response is the one matched. 101 and a successful CONNECT turn the stream opaque,
  except 101 to `h2c`: the connection is handed to an HTTP/2 session (http2.py) whose stream 1 is the
  request that asked for the upgrade (the client's bytes after that request wait for its answer).
- Pipelining and keep-alive: requests queue in order; the n-th final response answers the n-th request.
- Bodies: de-chunked, then decoded from gzip/deflate for storage, kept up to `body_limit` bytes;
  `*_body_size` is the real de-chunked size on the wire (before decoding).
- Errors: a message that breaks the grammar becomes a flagged `tcp` row (error text), the parse error
  counter for http goes up, and the direction resynchronises at the next message start.
"""

from __future__ import annotations

import re
import zlib
from collections import deque
from typing import TYPE_CHECKING, Any

from netrecall.dissect.calls import Context, call_id
from netrecall.dissect.protocols.base import MORE, NO, ParseError, is_number

if TYPE_CHECKING:
    from netrecall.dissect.tcp import HalfStream, TcpConn

NAME = "http"
METHODS = frozenset(
    b"GET HEAD POST PUT DELETE CONNECT OPTIONS TRACE PATCH PROPFIND PROPPATCH MKCOL COPY MOVE LOCK UNLOCK "
    b"SEARCH REPORT MKACTIVITY CHECKOUT MERGE M-SEARCH NOTIFY SUBSCRIBE UNSUBSCRIBE PURGE LINK UNLINK".split()
)
_METHOD_ALT = b"|".join(re.escape(m) for m in sorted(METHODS, key=len, reverse=True))
_REQUEST_START = re.compile(rb"(?:" + _METHOD_ALT + rb") [^ \r\n]+ HTTP/1\.[01]\r?\n")
_RESPONSE_START = re.compile(rb"HTTP/1\.[01] \d{3}[ \r\n]")
_TOKEN = re.compile(r"[A-Z][A-Z_-]*\Z")
_HEADER_LINE = re.compile(r"([^:\r\n \t][^:\r\n]*):[ \t]*([^\r\n]*?)[ \t]*\r\n")
MAX_HEAD = 64 * 1024  # a header block longer than this is not HTTP
MIDSTREAM_SCAN = 64 * 1024  # how far into a mid-connection capture to look for a first message
RESYNC_TAIL = 32  # bytes kept when a resync search fails: a message start may straddle the boundary

# parser states, one parser per direction
HEAD, BODY_LEN, CHUNK_SIZE, CHUNK_DATA, CHUNK_CRLF, TRAILERS, BODY_CLOSE, RESYNC, OPAQUE, UPGRADED = range(10)


class Message:
    """One request or response as it is parsed."""

    __slots__ = (
        "body",
        "body_size",
        "headers",
        "last_ts",
        "low_text",
        "lower",
        "method",
        "partial",
        "reason",
        "seq",
        "status",
        "target",
        "ts",
        "version",
    )

    def __init__(self, ts: int, seq: int, partial: bool) -> None:
        self.ts = ts
        self.last_ts = ts
        self.seq = seq
        self.partial = partial
        self.method = ""
        self.target = ""
        self.version = ""
        self.status = 0
        self.reason = ""
        self.headers: dict[str, str] = {}
        self.lower: dict[str, str] | None = None  # lower-cased names, built only when needed
        self.low_text = ""
        self.body = b""  # becomes a bytearray when body bytes arrive
        self.body_size = 0

    def header(self, usual: str, key: str) -> str | None:
        """A header's value by name, case-insensitively: the usual spelling first, then (only when the
        lower-cased head mentions it at all) a lower-cased copy of the names."""
        value = self.headers.get(usual)
        if value is not None or key + ":" not in self.low_text:
            return value
        if self.lower is None:
            lower: dict[str, str] = {}
            for name, item in self.headers.items():
                name = name.lower()
                lower[name] = lower[name] + ", " + item if name in lower else item
            self.lower = lower
        return self.lower.get(key)


class _Direction:
    """The incremental parser of one direction (requests from the client, responses from the server)."""

    __slots__ = ("half", "is_request", "msg", "remaining", "skipped", "state")

    def __init__(self, half: HalfStream, is_request: bool) -> None:
        self.half = half
        self.is_request = is_request
        self.state = RESYNC if half.mid_start else HEAD
        self.msg: Message | None = None
        self.remaining = 0
        self.skipped = False  # bytes were skipped to find the next message: it is partial


class HttpSession:
    """Parses both directions of one connection and pairs requests with responses."""

    protocol = NAME

    def __init__(self, conn: TcpConn, client: int) -> None:
        self.conn = conn
        self.ctx: Context = conn.ctx
        self.client = client
        self.dirs = (
            _Direction(conn.halves[0], client == 0),
            _Direction(conn.halves[1], client == 1),
        )
        self.requests: deque[Message] = deque()
        self.body_limit = conn.ctx.config.body_limit
        self.upgrade_asked = False  # a request with `Upgrade: h2c` waits for its answer
        self.h2: Any = None  # the HTTP/2 session the connection was handed to after 101 to h2c

    # --- session contract -------------------------------------------------------------------------------
    def feed(self, side: int) -> None:
        if self.h2 is not None:
            return self.h2.feed(side)
        d = self.dirs[side]
        half = d.half
        buf = half.buf
        pos = 0
        try:
            while True:
                new_pos = self._step(d, buf, pos)
                if new_pos is None:
                    break
                pos = new_pos
        except ParseError as exc:
            self._broken(d, str(exc), half.base + pos)
            pos = len(buf)
            d.state = RESYNC
            d.msg = None
        half.consume(pos)
        if self.h2 is not None:  # the rest of both directions is HTTP/2 now: requests before answers
            self.h2.feed(self.client)
            self.h2.feed(1 - self.client)
        return None

    def on_gap(self, side: int, missing: int) -> None:
        if self.h2 is not None:
            return self.h2.on_gap(side, missing)
        d = self.dirs[side]
        self.feed(side)
        if d.state in (BODY_LEN, CHUNK_DATA) and d.msg is not None and d.remaining >= missing:
            # the hole lies inside a body of known length: the framing survives, the body is incomplete
            d.remaining -= missing
            d.msg.body_size += missing
            d.msg.partial = True
            if d.state == BODY_LEN and d.remaining == 0:
                self._done(d)
            return
        if d.state == BODY_CLOSE and d.msg is not None:
            d.msg.body_size += missing
            d.msg.partial = True
            return
        if d.msg is not None and d.state != HEAD:
            d.msg.partial = True
            self._done(d)  # headers are known: keep what we have
        d.msg = None
        if d.state != OPAQUE:
            d.state = RESYNC
            d.skipped = True
        return None

    def close(self) -> None:
        if self.h2 is not None:
            return self.h2.close()
        for side in (self.client, 1 - self.client):
            d = self.dirs[side]
            self.feed(side)
            if d.msg is not None and d.state == BODY_CLOSE:
                self._done(d)  # a body delimited by the connection's end is complete now
            elif d.msg is not None and d.state not in (HEAD, RESYNC, OPAQUE):
                d.msg.partial = True
                self._done(d)
        while self.requests:
            self._emit(self.requests.popleft(), None)
        return None

    def pending_ts(self) -> int | None:
        if self.h2 is not None:
            return self.h2.pending_ts()
        times = [r.ts for r in self.requests]
        times += [d.msg.ts for d in self.dirs if d.msg is not None]
        return min(times) if times else None

    # --- parsing ----------------------------------------------------------------------------------------
    def _step(self, d: _Direction, buf: bytearray, pos: int) -> int | None:
        """Advance one state; return the new position, or None when more bytes are needed."""
        avail = len(buf) - pos
        state = d.state
        if state == HEAD:
            if avail == 0 or (d.is_request and self.upgrade_asked):
                return None  # (after an h2c upgrade request: HTTP/2's preface, or more HTTP/1.1)
            return self._head(d, buf, pos)
        if state in (BODY_LEN, CHUNK_DATA):
            if avail == 0:
                return None
            take = d.remaining if d.remaining <= avail else avail
            self._body(d, buf, pos, take)
            d.remaining -= take
            if d.remaining == 0:
                if state == BODY_LEN:
                    self._done(d)
                else:
                    d.state = CHUNK_CRLF
            return pos + take
        if state == CHUNK_SIZE:
            eol = buf.find(b"\n", pos)
            if eol < 0:
                if avail > 1024:
                    raise ParseError("chunk size line too long")
                return None
            text = bytes(buf[pos:eol]).split(b";", 1)[0].strip()
            try:
                size = int(text, 16)
            except ValueError:
                raise ParseError(f"bad chunk size {text[:20]!r}") from None
            if size < 0:
                raise ParseError("negative chunk size")
            if size == 0:
                d.state = TRAILERS
            else:
                d.remaining = size
                d.state = CHUNK_DATA
            return eol + 1
        if state == CHUNK_CRLF:
            if avail < 2 and not (avail == 1 and buf[pos] == 10):
                return None
            if buf[pos] == 13 and buf[pos + 1] == 10:
                d.state = CHUNK_SIZE
                return pos + 2
            if buf[pos] == 10:
                d.state = CHUNK_SIZE
                return pos + 1
            raise ParseError("chunk not followed by CRLF")
        if state == TRAILERS:
            if avail < 2 and not (avail == 1 and buf[pos] == 10):
                return None
            if buf.startswith(b"\r\n", pos):
                self._done(d)
                return pos + 2
            if buf[pos] == 10:
                self._done(d)
                return pos + 1
            end = buf.find(b"\r\n\r\n", pos)
            if end < 0:
                if avail > MAX_HEAD:
                    raise ParseError("trailer block too long")
                return None
            self._done(d)
            return end + 4
        if state == BODY_CLOSE:
            if avail == 0:
                return None
            self._body(d, buf, pos, avail)
            return pos + avail
        if state == RESYNC:
            return self._resync(d, buf, pos)
        if state == UPGRADED:
            return None  # the HTTP/2 session takes the bytes from here
        # OPAQUE: after 101 Switching Protocols or CONNECT, the bytes are not HTTP any more
        return pos + avail if avail else None

    def _resync(self, d: _Direction, buf: bytearray, pos: int) -> int | None:
        pattern = _REQUEST_START if d.is_request else _RESPONSE_START
        found = pattern.search(buf, pos)
        if found is None:
            keep_from = max(pos, len(buf) - RESYNC_TAIL)
            if keep_from > pos:
                d.skipped = True
            return keep_from if keep_from > pos else None
        if found.start() > pos:
            d.skipped = True
        d.state = HEAD
        return found.start()

    def _head(self, d: _Direction, buf: bytearray, pos: int) -> int | None:
        end = buf.find(b"\r\n\r\n", pos)
        lf = buf.find(b"\n\n", pos, end + 2 if end >= 0 else len(buf))
        if lf >= 0 and (end < 0 or lf < end):
            end, sep = lf, 2
        elif end >= 0:
            sep = 4
        else:
            if len(buf) - pos > MAX_HEAD:
                raise ParseError("header block too long")
            return None
        # decoded with the terminating CRLF so every header line ends in one (the regex needs it)
        text = buf[pos : end + 2].decode("latin-1")
        if sep == 2:
            text = text.replace("\r\n", "\n").replace("\n", "\r\n")
        eol = text.find("\r\n")
        first = text[:eol]
        half = d.half
        offset = half.base + pos
        msg = Message(half.ts_at(offset), half.seq_at(offset), d.skipped)
        d.skipped = False
        if d.is_request:
            method, _, rest = first.partition(" ")
            target, _, version = rest.rpartition(" ")
            if not _TOKEN.match(method) or not target or not version.startswith("HTTP/"):
                raise ParseError(f"bad request line {first[:60]!r}")
            msg.method, msg.target, msg.version = method, target, version
        else:
            version, _, rest = first.partition(" ")
            code, _, reason = rest.partition(" ")
            if not version.startswith("HTTP/") or len(code) != 3 or not is_number(code):
                raise ParseError(f"bad status line {first[:60]!r}")
            msg.version, msg.status, msg.reason = version, int(code), reason.strip()
        # The header lines in one C-level pass; the careful loop only when something is unusual
        # (a line without a colon, a repeated name, obsolete line folding).
        pairs = _HEADER_LINE.findall(text, eol + 2)
        headers = dict(pairs)
        if len(headers) != len(pairs) or len(pairs) != text.count("\r\n") - 1:
            headers = _headers_slowly(text[eol + 2 :])
        msg.headers = headers
        msg.low_text = text.lower()  # for case-insensitive presence checks in C, see header()
        d.msg = msg
        self._frame(d, msg)
        if d.state == HEAD:  # no body
            self._done(d)
        return end + sep

    def _frame(self, d: _Direction, msg: Message) -> None:
        """Decide how the body is delimited (RFC 9112 section 6.3)."""
        if not d.is_request:
            request = self.requests[0] if self.requests else self.dirs[self.client].msg
            method = request.method if request is not None else ""
            status = msg.status
            if status == 101 or (method == "CONNECT" and 200 <= status < 300):
                d.state = HEAD  # done now; the stream turns opaque after it (see _done)
                return
            if method == "HEAD" or 100 <= status < 200 or status in (204, 304):
                d.state = HEAD
                return
        te = msg.header("Transfer-Encoding", "transfer-encoding") or ""
        if te and te.lower().rstrip().endswith("chunked"):
            d.state = CHUNK_SIZE
            return
        length = msg.header("Content-Length", "content-length")
        if length is not None:
            text = length.split(",")[0].strip()
            if not is_number(text):
                raise ParseError(f"bad Content-Length {length[:30]!r}")
            d.remaining = int(text)
            d.state = BODY_LEN if d.remaining else HEAD
            return
        d.state = HEAD if d.is_request else BODY_CLOSE

    def _body(self, d: _Direction, buf: bytearray, pos: int, take: int) -> None:
        msg = d.msg
        assert msg is not None
        room = self.body_limit - len(msg.body)
        if room > 0:
            if not msg.body:
                msg.body = bytearray()
            msg.body += buf[pos : pos + (take if take <= room else room)]
        msg.body_size += take
        msg.last_ts = d.half.ts_at(d.half.base + pos + take - 1)

    def _done(self, d: _Direction) -> None:
        msg = d.msg
        d.msg = None
        d.state = HEAD
        if msg is None:
            return
        if d.is_request:
            self.requests.append(msg)
            if "h2c" in (msg.header("Upgrade", "upgrade") or "").lower():
                self.upgrade_asked = True
            if msg.method == "CONNECT":
                pass  # the tunnel starts only once the server agrees (see the response side)
            return
        if 100 <= msg.status < 200 and msg.status != 101:
            return  # interim response (100 Continue, 103 Early Hints): the final one follows
        request = self.requests.popleft() if self.requests else None
        if self.upgrade_asked:
            self.upgrade_asked = False
            if msg.status == 101 and request is not None and self._to_h2c(request, msg):
                return
            if self._held_back():  # declined: the requests that waited are HTTP/1.1, read them now
                self.feed(self.client)
        if msg.status == 101 or (
            request is not None and request.method == "CONNECT" and 200 <= msg.status < 300
        ):
            d.state = OPAQUE
            self.dirs[self.client].state = OPAQUE
        self._emit(request, msg)

    def _held_back(self) -> bool:
        """Client bytes kept while an upgrade was asked: after a refusal they are HTTP/1.1 again."""
        d = self.dirs[self.client]
        return d.state == HEAD and bool(d.half.buf)

    def _to_h2c(self, request: Message, response: Message) -> bool:
        """101 to h2c: hand the connection to HTTP/2; the upgraded request becomes its stream 1."""
        if "h2c" not in (response.header("Upgrade", "upgrade") or "").lower():
            return False
        from netrecall.dissect.protocols import http2  # http2 imports this module

        self.h2 = http2.upgraded_session(self.conn, self.client, request)
        self.conn.session = self.h2
        for d in self.dirs:
            d.state = UPGRADED
        return True

    # --- output -----------------------------------------------------------------------------------------
    def _broken(self, d: _Direction, message: str, offset: int) -> None:
        self.ctx.parse_error(NAME, message)
        half = d.half
        ts = half.ts_at(offset)
        call = self.conn.call("tcp", self.client, ts)
        call.update(
            id=call_id(
                "tcp",
                self.conn.flow_id,
                self.conn.port[self.client if d.is_request else 1 - self.client],
                half.seq_at(offset),
                ts,
            ),
            error=f"http: {message}",
            partial=True,
            first_packet_ts=ts,
            last_packet_ts=half.last_ts,
        )
        if not d.is_request:
            call["has_request"] = True  # keep it even in a resumed run: the error is real
        self.ctx.emit(call)

    def _emit(self, req: Message | None, resp: Message | None) -> None:
        conn = self.conn
        first = req if req is not None else resp
        assert first is not None
        call = conn.call(NAME, self.client, first.ts)
        port = conn.port[self.client] if req is not None else conn.port[1 - self.client]
        call["id"] = call_id(NAME, conn.flow_id, port, first.seq, first.ts)
        call["first_packet_ts"] = first.ts
        limit = self.body_limit
        partial = False
        if req is not None:
            target = req.target
            path, _, query = target.partition("?")
            call.update(
                method=req.method,
                url=target,
                path=path,
                query_string=query,
                host=req.header("Host", "host") or "",
                http_version=req.version,
                request_headers=req.headers,
                request_body_size=req.body_size,
            )
            if req.body:
                body, truncated = _decoded(req, limit)
                call["request_body"] = body
                call["request_body_truncated"] = truncated
            partial = req.partial
            last = req.last_ts
        else:
            call["has_request"] = False
            partial = True
        if resp is not None:
            call.update(
                status_code=resp.status,
                status_text=resp.reason,
                response_headers=resp.headers,
                response_body_size=resp.body_size,
                has_response=True,
            )
            if req is None:
                call["http_version"] = resp.version
            else:
                call["elapsed_time"] = max(0, resp.ts - req.ts) // 1000
            if resp.body:
                body, truncated = _decoded(resp, limit)
                call["response_body"] = body
                call["response_body_truncated"] = truncated
            partial = partial or resp.partial
            last = resp.last_ts
        call["partial"] = partial
        call["last_packet_ts"] = last
        self.ctx.emit(call)


def _decoded(msg: Message, limit: int) -> tuple[bytes, bool]:
    """The stored body: decoded from gzip/deflate when so encoded, at most `limit` bytes."""
    raw = bytes(msg.body)
    truncated = msg.body_size > len(raw)
    encoding = (msg.header("Content-Encoding", "content-encoding") or "").strip().lower()
    if encoding in ("gzip", "x-gzip", "deflate"):
        wbits = 47 if encoding != "deflate" else 15  # 47: gzip or zlib header, auto-detected
        try:
            inflater = zlib.decompressobj(wbits)
            out = inflater.decompress(raw, limit)
        except zlib.error:
            if encoding != "deflate":
                return raw[:limit], truncated
            try:  # "deflate" in the wild is sometimes raw DEFLATE without the zlib header
                inflater = zlib.decompressobj(-15)
                out = inflater.decompress(raw, limit)
            except zlib.error:
                return raw[:limit], truncated
        # more output than the limit, or input left over, means the stored copy is cut
        return out, truncated or bool(inflater.unconsumed_tail)
    return raw, truncated


def _headers_slowly(block: str) -> dict[str, str]:
    """Header lines one by one: repeated names joined with ', ', folded lines appended, errors raised."""
    headers: dict[str, str] = {}
    name = ""
    for line in block.split("\r\n"):
        lead = line[:1]
        if lead == " " or lead == "\t":  # obsolete line folding continues the previous header
            if name:
                headers[name] += " " + line.strip()
            continue
        name, colon, value = line.partition(":")
        if not colon:
            if not line:
                continue
            raise ParseError(f"header line without a colon {line[:60]!r}")
        name = name.strip()
        value = value.strip()
        headers[name] = headers[name] + ", " + value if name in headers else value
    return headers


# --- detection -----------------------------------------------------------------------------------------
_RESPONSE_PREFIX = b"HTTP/1."


def _classify(data: bytes | bytearray, mid_start: bool) -> str:
    """'req', 'resp', 'more' (too few bytes to say) or 'no', for the first bytes of one direction."""
    if not data:
        return "more"
    head = bytes(data[:16])
    if head.startswith(_RESPONSE_PREFIX):
        return "resp"
    if _RESPONSE_PREFIX.startswith(head):
        return "more"
    sp = head.find(b" ")
    if sp > 0 and head[:sp] in METHODS:
        return "req"
    if sp < 0 and len(head) < 16 and any(m.startswith(head) for m in METHODS):
        return "more"
    if mid_start:
        window = data[:MIDSTREAM_SCAN]
        if _REQUEST_START.search(window):
            return "req"
        if _RESPONSE_START.search(window):
            return "resp"
        if len(data) < MIDSTREAM_SCAN:
            return "more"
    return "no"


class HttpDissector:
    name = NAME

    def detect(self, conn: TcpConn) -> int:
        verdicts = [_classify(h.buf, h.mid_start) for h in conn.halves]
        for side, verdict in enumerate(verdicts):
            if verdict == "req":
                return side
            if verdict == "resp":
                return 1 - side
        if "more" in verdicts:
            # wait for the other side only while nothing disqualifies: one side not HTTP ends it
            if any(v == "no" for side, v in enumerate(verdicts) if conn.halves[side].buf):
                return NO
            return MORE
        return NO

    def session(self, conn: TcpConn, client: int) -> Any:
        return HttpSession(conn, client)


DISSECTOR = HttpDissector()
