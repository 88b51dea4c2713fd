"""Redis (RESP2 and RESP3): commands (arrays of bulk strings, or inline lines) paired with their replies.

- Detection: a client direction starting with a RESP array of bulk strings whose first element is a known
  command name (any port); on port 6379 also an inline command line, or a first reply from the server.
- Pairing: replies come in the order of the commands (pipelining: the n-th reply answers the n-th command).
  A push is not a reply: RESP3 `>` messages other than subscribe confirmations, and, while the connection
  is subscribed, RESP2 arrays starting with `message`/`pmessage`/`smessage`; each push is a row of its own
  (method = its kind, path = the channel, status_text `push`). SUBSCRIBE-family commands are answered by
  one confirmation per channel (UNSUBSCRIBE without arguments: one per subscribed channel).
  CLIENT REPLY OFF/SKIP/ON are followed: a command the server does not answer is a row without response.
- Columns: method = command name upper-cased, path = the key for commands whose first argument is a key,
  status_code 1 for an error reply (status_message = its text, error_code = its prefix such as ERR or
  WRONGTYPE), redis_type = the reply's type, sizes in bytes of the command and of its reply, a short
  redacted form of the command in request_body (passwords of AUTH, HELLO AUTH, MIGRATE AUTH, CONFIG SET
  requirepass/masterauth and ACL SETUSER are replaced) and the start of the raw reply in response_body.
- Errors: a command that breaks the grammar becomes a flagged `tcp` row (the server closes such a
  connection too); a reply that does not parse flags the stream and the direction resynchronises at the
  next segment. A capture that starts mid-connection resynchronises the same way and flags the first call.
"""

from __future__ import annotations

import re
from collections import deque
from typing import TYPE_CHECKING, Any

from netrecall.dissect.calls import Call, Context, call_id, call_id_in, id_prefix
from netrecall.dissect.protocols.base import MORE, NO, ParseError

if TYPE_CHECKING:
    from netrecall.dissect.tcp import HalfStream, TcpConn

NAME = "redis"
PORT = 6379
KEEP = 256  # bytes of the command's short form and of the raw reply kept in the bodies
MAX_LINE = 64 * 1024  # a type line (or an inline command) longer than this is not Redis
MAX_BULK = 512 * 1024 * 1024  # Redis' own proto-max-bulk-len default
MAX_DEPTH = 64  # nesting deeper than this is garbage, not a reply
REDACTED = "(redacted)"

# Commands whose first argument is a key (the rest take a subcommand, a channel, a pattern or nothing).
_KEY_COMMAND_NAMES = """
    GET SET SETNX SETEX PSETEX GETSET GETDEL GETEX APPEND STRLEN INCR DECR INCRBY DECRBY INCRBYFLOAT
    GETRANGE SETRANGE SUBSTR LCS MGET MSET MSETNX DEL UNLINK EXISTS EXPIRE PEXPIRE EXPIREAT PEXPIREAT
    EXPIRETIME PEXPIRETIME TTL PTTL PERSIST TYPE RENAME RENAMENX DUMP RESTORE TOUCH COPY MOVE SORT SORT_RO
    LPUSH RPUSH LPUSHX RPUSHX LPOP RPOP LLEN LRANGE LINDEX LSET LREM LTRIM LINSERT LPOS LMOVE RPOPLPUSH
    BLPOP BRPOP BLMOVE BRPOPLPUSH HSET HSETNX HGET HMSET HMGET HDEL HLEN HGETALL HKEYS HVALS HEXISTS
    HINCRBY HINCRBYFLOAT HSTRLEN HSCAN HRANDFIELD SADD SREM SMEMBERS SISMEMBER SMISMEMBER SCARD SPOP
    SRANDMEMBER SINTER SINTERCARD SUNION SDIFF SINTERSTORE SUNIONSTORE SDIFFSTORE SMOVE SSCAN ZADD ZREM
    ZSCORE ZMSCORE ZINCRBY ZCARD ZCOUNT ZRANGE ZRANGESTORE ZREVRANGE ZRANGEBYSCORE ZREVRANGEBYSCORE
    ZRANGEBYLEX ZREVRANGEBYLEX ZLEXCOUNT ZRANK ZREVRANK ZREMRANGEBYRANK ZREMRANGEBYSCORE ZREMRANGEBYLEX
    ZPOPMIN ZPOPMAX BZPOPMIN BZPOPMAX ZSCAN ZRANDMEMBER ZUNIONSTORE ZINTERSTORE ZDIFFSTORE XADD XLEN XRANGE
    XREVRANGE XDEL XTRIM XACK XCLAIM XAUTOCLAIM XPENDING XSETID SETBIT GETBIT BITCOUNT BITPOS BITFIELD
    BITFIELD_RO PFADD PFCOUNT PFMERGE GEOADD GEODIST GEOPOS GEOHASH GEOSEARCH GEOSEARCHSTORE GEORADIUS
    GEORADIUSBYMEMBER GEORADIUS_RO GEORADIUSBYMEMBER_RO WATCH"""
KEY_COMMANDS = frozenset(_KEY_COMMAND_NAMES.split())
SUBSCRIBE_KINDS = frozenset(
    (b"subscribe", b"unsubscribe", b"psubscribe", b"punsubscribe", b"ssubscribe", b"sunsubscribe")
)
MESSAGE_KINDS = frozenset((b"message", b"pmessage", b"smessage"))
# The set of subscriptions a confirmation of each kind changes, and whether it adds or removes.
_SUBSCRIPTION_SET = {
    b"subscribe": (0, True),
    b"unsubscribe": (0, False),
    b"psubscribe": (1, True),
    b"punsubscribe": (1, False),
    b"ssubscribe": (2, True),
    b"sunsubscribe": (2, False),
}
TYPES = {
    43: "simple",  # +
    45: "error",  # -
    58: "integer",  # :
    36: "bulk",  # $
    42: "array",  # *
    95: "null",  # _
    37: "map",  # %
    126: "set",  # ~
    44: "double",  # ,
    35: "boolean",  # #
    61: "verbatim",  # =
    40: "bignum",  # (
    62: "push",  # >
    124: "attribute",  # |
    33: "error",  # ! (blob error)
}
_AGGREGATE = frozenset(b"*%~>|")
_BLOB = frozenset(b"$=!")
_OTHER_COMMAND_NAMES = """
    PING ECHO AUTH HELLO SELECT QUIT RESET MULTI EXEC DISCARD UNWATCH INFO COMMAND CONFIG CLIENT CLUSTER
    SUBSCRIBE UNSUBSCRIBE PSUBSCRIBE PUNSUBSCRIBE SSUBSCRIBE SUNSUBSCRIBE PUBLISH SPUBLISH PUBSUB DBSIZE
    FLUSHALL FLUSHDB KEYS SCAN RANDOMKEY SCRIPT EVAL EVALSHA EVAL_RO EVALSHA_RO FCALL FCALL_RO FUNCTION
    OBJECT MEMORY DEBUG SLOWLOG LATENCY MONITOR TIME LASTSAVE SAVE BGSAVE BGREWRITEAOF SHUTDOWN REPLICAOF
    SLAVEOF ROLE WAIT WAITAOF SWAPDB ACL MODULE XREAD XREADGROUP XGROUP XINFO READONLY READWRITE ASKING
    MIGRATE SYNC PSYNC REPLCONF LOLWUT FAILOVER"""
_KNOWN_COMMANDS = KEY_COMMANDS | frozenset(_OTHER_COMMAND_NAMES.split())
_REQUEST_START = re.compile(rb"\*[1-9]\d{0,8}\r\n\$\d{1,10}\r\n")
_REQUEST_PREFIX = re.compile(rb"\*(?:[1-9]\d{0,8}(?:\r(?:\n(?:\$(?:\d{1,10}\r?)?)?)?)?)?")  # a start of it
MIDSTREAM_SCAN = 64 * 1024  # how far into a mid-connection capture to look for a first command


class Reply:
    """One top-level server message, summarised."""

    __slots__ = ("end", "head", "kind", "start", "text", "type_byte")

    def __init__(self, start: int, end: int, type_byte: int, text: str, head: list[bytes]) -> None:
        self.start = start
        self.end = end
        self.type_byte = type_byte
        self.kind = TYPES.get(type_byte, "unknown")
        self.text = text  # the error text or simple string
        self.head = head  # the first scalar elements of an array or push (up to 3)


def _line(buf: bytearray, pos: int) -> int:
    """End of the type line starting at pos (index of its CR), -1 when it is not all here yet."""
    eol = buf.find(b"\r\n", pos)
    if eol < 0 and len(buf) - pos > MAX_LINE:
        raise ParseError("type line longer than 64 KiB")
    return eol


def _length(buf: bytearray, pos: int, eol: int) -> int:
    try:
        return int(buf[pos + 1 : eol])
    except ValueError:
        raise ParseError(f"bad length {bytes(buf[pos : min(eol, pos + 20)])!r}") from None


def parse_reply(buf: bytearray, pos: int) -> Reply | None:
    """The server message at pos, or None if it is not complete yet. Raises ParseError on garbage."""
    type_byte = buf[pos]
    eol = _line(buf, pos)
    if eol < 0:
        return None
    if type_byte in (43, 45, 58, 44, 35, 40, 95):  # one-line types: the common case, kept short
        text = buf[pos + 1 : eol].decode("utf-8", "replace") if type_byte in (43, 45) else ""
        if type_byte == 58 or type_byte == 40:
            _length(buf, pos, eol)  # must be a number
        return Reply(pos, eol + 2, type_byte, text, [])
    if type_byte in _BLOB:
        size = _length(buf, pos, eol)
        if size < 0:
            return Reply(pos, eol + 2, type_byte, "", [])  # RESP2 null bulk string
        end = eol + 2 + size + 2
        if end > len(buf):
            if size > MAX_BULK:
                raise ParseError(f"bulk string of {size} bytes")
            return None
        if buf[end - 2 : end] != b"\r\n":
            raise ParseError("bulk string not followed by CRLF")
        text = buf[eol + 2 : end - 2].decode("utf-8", "replace") if type_byte == 33 else ""
        return Reply(pos, end, type_byte, text, [])
    if type_byte not in _AGGREGATE:
        raise ParseError(f"unknown reply type byte 0x{type_byte:02x}")
    return _aggregate(buf, pos, type_byte)


_RUN_MIN = 8  # elements at a level from which runs of equal-length ones are looked for


def _same_length_run(buf: bytearray, start: int, length_line: bytearray, stride: int, most: int) -> int:
    """How many bulk strings from `start` on (`most` at most) have this length line, `stride` bytes each
    with the CRLF at the end: the elements of a list, set or hash reply often have one length (ids,
    hashes, fixed-width values). Checked a byte column at a time (every element's n-th byte in one
    slice), so C walks the run, not a Python step per element: each element gets the checks the loop
    gives it (its length line byte for byte, the CRLF after its bytes)."""
    count = min(most, (len(buf) - start) // stride)
    columns = [*enumerate(length_line), (stride - 2, 13), (stride - 1, 10)]
    for offset, byte in columns:
        if count <= 0:
            return 0
        column = buf[start + offset : start + count * stride : stride]
        if column.count(byte) != count:  # the run ends before the first element that differs here
            count -= len(column.lstrip(bytes((byte,))))
    return count


def _aggregate(buf: bytearray, start: int, top_type: int) -> Reply | None:
    """An array, map, set, push or attribute, walked without building it; its first scalars are kept."""
    head: list[bytes] = []
    remaining = [1]  # values still to read at each nesting level
    pos = start
    n = len(buf)
    while remaining:
        if remaining[-1] == 0:
            remaining.pop()
            continue
        remaining[-1] -= 1
        if pos >= n:
            return None
        type_byte = buf[pos]
        eol = _line(buf, pos)
        if eol < 0:
            return None
        depth = len(remaining)
        if type_byte == 36 and (depth > 2 or len(head) >= 3):
            # a bulk string whose text is not kept, and the ones that follow it at this level (the
            # elements of an LRANGE or HGETALL reply): skipped in a tight loop, the checks inlined
            left = remaining[-1] + 1
            runs = left > _RUN_MIN  # looked for until two elements in a row differ in length
            while True:
                try:
                    size = int(buf[pos + 1 : eol])
                except ValueError:
                    raise ParseError(f"bad length {bytes(buf[pos : min(eol, pos + 20)])!r}") from None
                left -= 1
                if size < 0:
                    pos = eol + 2
                else:
                    end = eol + 4 + size
                    if end > n:
                        if size > MAX_BULK:
                            raise ParseError(f"bulk string of {size} bytes")
                        return None
                    if buf[end - 2] != 13 or buf[end - 1] != 10:
                        raise ParseError("bulk string not followed by CRLF")
                    if runs:
                        line = buf[pos : eol + 2]
                        if buf.startswith(line, end):
                            # the next element has the same length line: the run is skipped at once
                            run = _same_length_run(buf, end, line, end - pos, left)
                            left -= run
                            end += run * (end - pos)
                        else:  # lengths vary here: the check would only cost
                            runs = False
                    pos = end
                if not left or pos >= n or buf[pos] != 36:
                    break
                eol = buf.find(b"\r\n", pos)
                if eol < 0:
                    remaining[-1] = left  # the next element's line is not all here
                    _line(buf, pos)  # raises when it is too long to be one
                    return None
            remaining[-1] = left
            continue
        if type_byte in _AGGREGATE:
            count = _length(buf, pos, eol)
            pos = eol + 2
            if count < 0:
                continue  # RESP2 null array
            if type_byte == 37 or type_byte == 124:  # map and attribute: key and value per entry
                count *= 2
            if type_byte == 124:
                remaining[-1] += 1  # an attribute is followed by the value it describes
            if len(remaining) >= MAX_DEPTH:
                raise ParseError("aggregate nested too deep")
            remaining.append(count)
        elif type_byte in _BLOB:
            size = _length(buf, pos, eol)
            if size < 0:
                pos = eol + 2
                continue
            end = eol + 2 + size + 2
            if end > n:
                if size > MAX_BULK:
                    raise ParseError(f"bulk string of {size} bytes")
                return None
            if buf[end - 2 : end] != b"\r\n":
                raise ParseError("bulk string not followed by CRLF")
            if depth == 2 and len(head) < 3:
                head.append(bytes(buf[eol + 2 : min(end - 2, eol + 2 + 256)]))
            pos = end
        elif type_byte in TYPES:
            if depth == 2 and len(head) < 3:
                head.append(bytes(buf[pos + 1 : min(eol, pos + 257)]))
            pos = eol + 2
        else:
            raise ParseError(f"unknown reply type byte 0x{type_byte:02x}")
    return Reply(start, pos, top_type, "", head)


class Command:
    """One command as sent, waiting for its reply (or replies: one confirmation per channel)."""

    __slots__ = (
        "args",
        "error",
        "expect",
        "first_ts",
        "last_ts",
        "name",
        "nargs",
        "no_reply",
        "partial",
        "replies",
        "reply_body",
        "reply_size",
        "reply_ts",
        "reply_type",
        "seq",
        "size",
        "text",
        "ts",
    )

    def __init__(self, name: str, args: list[bytes], nargs: int, size: int, ts: int, seq: int) -> None:
        self.name = name
        self.args = args  # the first few arguments (for the key, subcommands and the short form)
        self.nargs = nargs
        self.size = size
        self.ts = ts
        self.first_ts = ts
        self.last_ts = ts
        self.seq = seq
        self.expect = 1  # replies that answer it
        self.replies = 0
        self.no_reply = False
        self.partial = False
        self.reply_ts = 0
        self.reply_size = 0
        self.reply_type = ""
        self.reply_body = b""
        self.error = False
        self.text = ""


def parse_command(buf: bytearray, pos: int) -> tuple[int, list[bytes], int] | None:
    """(end, first arguments (up to 4), number of arguments) of the command at pos; None if incomplete."""
    first = buf[pos]
    if first != 42:  # not '*': an inline command, one line split at spaces
        eol = buf.find(b"\n", pos)
        if eol < 0:
            if len(buf) - pos > MAX_LINE:
                raise ParseError("inline command longer than 64 KiB")
            return None
        words = bytes(buf[pos:eol]).rstrip(b"\r").split()
        return eol + 1, words[:4], len(words)
    eol = _line(buf, pos)
    if eol < 0:
        return None
    try:
        count = int(buf[pos + 1 : eol])
    except ValueError:
        raise ParseError(f"bad multibulk length {bytes(buf[pos : min(eol, pos + 20)])!r}") from None
    if count > 1024 * 1024 or count < 0:
        raise ParseError(f"multibulk length {count}")
    args: list[bytes] = []
    pos = eol + 2
    n = len(buf)
    for index in range(count):
        if pos >= n:
            return None
        if buf[pos] != 36:  # '$'
            raise ParseError(f"expected '$', got {bytes(buf[pos : pos + 1])!r}")
        eol = buf.find(b"\r\n", pos)
        if eol < 0:
            if n - pos > 32:
                raise ParseError("bulk length line too long")
            return None
        try:
            size = int(buf[pos + 1 : eol])
        except ValueError:
            raise ParseError(f"bad bulk length {bytes(buf[pos : min(eol, pos + 20)])!r}") from None
        if size < 0 or size > MAX_BULK:
            raise ParseError(f"bulk length {size}")
        end = eol + 2 + size
        if end + 2 > n:
            return None
        if buf[end] != 13 or buf[end + 1] != 10:
            raise ParseError("bulk argument not followed by CRLF")
        if index < 4:  # a bytearray slice: one copy, and it compares, decodes and joins as bytes do
            args.append(buf[eol + 2 : end if size <= KEEP else eol + 2 + KEEP])
        pos = end + 2
    return pos, args, count


def _secret_index(name: str, upper: list[bytes]) -> int | None:
    """Index of the first word that may hold a password (everything from it on is hidden), or None."""
    if name == "AUTH":
        return 1
    if name in ("HELLO", "MIGRATE"):
        for marker in (b"AUTH", b"AUTH2"):
            if marker in upper:
                return upper.index(marker) + 1
    if (
        name == "CONFIG"
        and len(upper) > 2
        and upper[1] == b"SET"
        and upper[2] in (b"REQUIREPASS", b"MASTERAUTH")
    ):
        return 3
    if name == "ACL" and len(upper) > 1 and upper[1] == b"SETUSER":
        return 3
    return None


def _short_form(name: str, args: list[bytes], nargs: int) -> tuple[bytes, bool]:
    """The command as one short line with passwords replaced; True when it was cut.

    Only the first four words are ever kept (parse_command drops the rest), so a password further on
    is never stored; the ones that can fall within them are replaced here."""
    words = [name.encode(), *args[1:]]
    more = nargs > len(words)
    if name in _SECRET_COMMANDS:
        secret = _secret_index(name, [word.upper() for word in words])
        if secret is not None and secret < len(words):
            words = [*words[:secret], REDACTED.encode()]
    long = max(map(len, words)) > 64
    parts = [word if len(word) <= 64 else word[:64] + b"..." for word in words] if long else words
    line = b" ".join(parts) + (b" ..." if more else b"")
    cut = more or long or len(line) > KEEP
    return line[:KEEP], cut


_SECRET_COMMANDS = frozenset(("AUTH", "HELLO", "MIGRATE", "CONFIG", "ACL"))  # where _secret_index looks


class _Direction:
    __slots__ = ("broken", "half", "resync", "skipped")

    def __init__(self, half: HalfStream) -> None:
        self.half = half
        self.resync = half.mid_start  # looking for a message boundary
        self.broken = False  # the direction stopped following the grammar: the rest is skipped
        self.skipped = False  # bytes were skipped before the next message: it is partial


class RedisSession:
    """Both directions of one Redis connection; replies paired with commands in order."""

    protocol = NAME

    def __init__(self, conn: TcpConn, client: int) -> None:
        self.conn = conn
        self.ctx: Context = conn.ctx
        self.client = client
        self.requests = _Direction(conn.halves[client])
        self.replies = _Direction(conn.halves[1 - client])
        self.pending: deque[Command] = deque()
        self.subscriptions: tuple[set[bytes], set[bytes], set[bytes]] = (set(), set(), set())
        self.reply_mode = "ON"  # CLIENT REPLY: ON, OFF, or SKIP (the next command only)
        self.resync_after_ts = 0  # replies in packets older than this answer commands not captured
        # fixed for the connection: the row's endpoints and the id prefix of the client's commands
        self.ends = conn.call(NAME, client, 0)
        del self.ends["ts"]
        self.id_prefix = id_prefix(NAME, conn.flow_id, conn.port[client])

    # --- session contract -------------------------------------------------------------------------------
    def feed(self, side: int) -> None:
        if side == self.client:
            self._feed_requests()
        else:
            self._feed_replies()

    def on_gap(self, side: int, missing: int) -> None:
        self.feed(side)
        if side == self.client:
            d = self.requests
            # commands were lost: the replies can no longer be counted off against the commands seen
            self._flush_pending(partial=True)
            self.replies.resync = True
            self.resync_after_ts = 0
        else:
            d = self.replies
            # the replies of some pending commands were lost; which ones is unknown: they end unanswered
            self._flush_pending(partial=True)
        d.resync = True
        d.skipped = True

    def close(self) -> None:
        self._feed_requests()
        self._feed_replies()
        self._flush_pending(partial=False)

    def pending_ts(self) -> int | None:
        return self.pending[0].ts if self.pending else None

    # --- requests ---------------------------------------------------------------------------------------
    def _feed_requests(self) -> None:
        d = self.requests
        half = d.half
        buf = half.buf
        pos = 0
        n = len(buf)
        base = half.base
        seg_off, seg_ts = half.seg_off, half.seg_ts
        last_seg = len(seg_off) - 1
        si = 0  # segment holding the byte being looked at: offsets only grow here, so a cursor, no bisect
        try:
            while pos < n and not d.broken:
                if d.resync:
                    found = _REQUEST_START.search(buf, pos)
                    if found is None:
                        pos = max(pos, n - 32)
                        d.skipped = True
                        break
                    d.skipped = d.skipped or found.start() > pos
                    pos = found.start()
                    d.resync = False
                if buf[pos] in (13, 10):  # empty lines between inline commands are allowed
                    pos += 1
                    continue
                parsed = parse_command(buf, pos)
                if parsed is None:
                    break
                end, args, nargs = parsed
                if args:
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
                    self._command(d, pos, end, args, nargs, ts, last_ts)
                pos = end
        except ParseError as exc:
            self._broken(d, str(exc), half.base + pos)
            d.broken = True
        half.consume(n if d.broken else pos)

    def _command(
        self, d: _Direction, pos: int, end: int, args: list[bytes], nargs: int, ts: int, last_ts: int
    ) -> None:
        """A whole command at pos..end; ts and last_ts: capture times of its first and last bytes."""
        half = d.half
        name = args[0].decode("latin-1").upper()
        cmd = Command(name, args, nargs, end - pos, ts, (half.seq0 + half.base + pos) & 0xFFFFFFFF)
        cmd.last_ts = last_ts
        cmd.partial = d.skipped
        d.skipped = False
        if not self.pending and self.replies.resync and not self.resync_after_ts:
            self.resync_after_ts = cmd.ts
        if name in ("SUBSCRIBE", "PSUBSCRIBE", "SSUBSCRIBE"):
            cmd.expect = max(1, nargs - 1)
        elif name in ("UNSUBSCRIBE", "PUNSUBSCRIBE", "SUNSUBSCRIBE"):
            # without arguments: one confirmation per subscribed channel, counted when the first arrives
            cmd.expect = nargs - 1 if nargs > 1 else 0
        if self.reply_mode != "ON":
            cmd.no_reply = True
            if self.reply_mode == "SKIP":
                self.reply_mode = "ON"
        if name == "CLIENT" and len(args) > 2 and args[1].upper() == b"REPLY":
            mode = args[2].upper().decode("latin-1")
            if mode in ("OFF", "SKIP"):
                cmd.no_reply = True  # not even this command is answered
                self.reply_mode = mode
            elif mode == "ON":
                cmd.no_reply = False
                self.reply_mode = "ON"
        if cmd.no_reply:
            self._emit(cmd)
            return
        self.pending.append(cmd)

    # --- replies ----------------------------------------------------------------------------------------
    def _feed_replies(self) -> None:
        d = self.replies
        half = d.half
        buf = half.buf
        pos = 0
        base = half.base
        seg_off, seg_ts = half.seg_off, half.seg_ts
        last_seg = len(seg_off) - 1
        si = 0  # segment holding the byte being looked at: offsets only grow here, so a cursor, no bisect
        while pos < len(buf) and not d.broken:
            if d.resync:
                pos = self._resync_replies(d, pos)
                if d.resync:
                    break
            try:
                reply = parse_reply(buf, pos)
            except ParseError as exc:
                self.ctx.parse_error(NAME, str(exc))
                d.resync = True
                d.skipped = True
                self.resync_after_ts = half.ts_at(half.base + pos) + 1
                pos = self._resync_replies(d, pos + 1)
                continue
            if reply is None:
                break
            if last_seg < 0:
                ts = last_ts = half.last_ts
            else:
                offset = base + pos
                while si < last_seg and seg_off[si + 1] <= offset:
                    si += 1
                ts = seg_ts[si]
                offset = base + reply.end - 1
                while si < last_seg and seg_off[si + 1] <= offset:
                    si += 1
                last_ts = seg_ts[si]
            self._reply(d, buf, reply, ts, last_ts)
            pos = reply.end
        half.consume(len(buf) if d.broken else pos)

    def _resync_replies(self, d: _Direction, pos: int) -> int:
        """Skip to the start of the first segment sent after the oldest command still waiting (a segment
        start is where a reply most likely begins); replies in older segments answered commands not seen."""
        half = d.half
        if not self.pending:
            d.skipped = d.skipped or len(half.buf) > pos
            return len(half.buf)  # nothing to answer yet: what is here answers commands not captured
        after = max(self.resync_after_ts, self.pending[0].ts)
        for seg_off, seg_ts in zip(half.seg_off, half.seg_ts, strict=True):
            start = seg_off - half.base
            if start >= pos and seg_ts >= after and half.buf[start] in TYPES:
                d.skipped = d.skipped or start > 0
                d.resync = False
                return start
        d.skipped = True
        return len(half.buf)

    def _reply(self, d: _Direction, buf: bytearray, reply: Reply, ts: int, last_ts: int) -> None:
        """A whole server message; ts and last_ts: capture times of its first and last bytes."""
        head = reply.head
        kind = head[0].lower() if head else b""
        if kind in SUBSCRIBE_KINDS and reply.type_byte in (42, 62) and len(head) >= 2:
            which, adds = _SUBSCRIPTION_SET[kind]
            channels = self.subscriptions[which]
            if self.pending and self.pending[0].expect == 0:
                self.pending[0].expect = max(1, len(channels))
            if adds:
                channels.add(head[1])
            else:
                channels.discard(head[1])
        elif reply.type_byte == 62 or (
            reply.type_byte == 42 and kind in MESSAGE_KINDS and any(self.subscriptions)
        ):
            self._push(d, buf, reply, kind)
            return
        cmd = self.pending[0] if self.pending else None
        if cmd is None:
            self._orphan(d, buf, reply)
            return
        if not cmd.replies:
            cmd.reply_ts = ts
            cmd.reply_type = reply.kind
            cmd.reply_body = bytes(buf[reply.start : min(reply.end, reply.start + KEEP)])
            if reply.type_byte in (45, 33):
                cmd.error = True
                cmd.text = reply.text
        cmd.replies += 1
        cmd.reply_size += reply.end - reply.start
        cmd.last_ts = last_ts
        if d.skipped:
            cmd.partial = True
            d.skipped = False
        if cmd.replies >= cmd.expect:
            self.pending.popleft()
            self._emit(cmd)

    def _flush_pending(self, partial: bool) -> None:
        while self.pending:
            cmd = self.pending.popleft()
            cmd.partial = cmd.partial or partial or bool(cmd.replies)
            self._emit(cmd)

    # --- output -----------------------------------------------------------------------------------------
    def _emit(self, cmd: Command) -> None:
        name = cmd.name
        args = cmd.args
        short, cut = _short_form(name, args, cmd.nargs)
        key = args[1] if name in KEY_COMMANDS and len(args) > 1 else b""
        ts = cmd.ts
        call = {
            **self.ends,
            "ts": ts,
            "id": call_id_in(self.id_prefix, cmd.seq, ts),
            "method": name,
            "path": key.decode("utf-8", "replace"),
            "request_body_size": cmd.size,
            "request_body": short,
            "request_body_truncated": cut,
            "request_messages": 1,
            "first_packet_ts": cmd.first_ts,
            "last_packet_ts": cmd.last_ts,
            "partial": cmd.partial,
        }
        if cmd.replies:
            body = cmd.reply_body
            call["has_response"] = True
            call["elapsed_time"] = max(0, cmd.reply_ts - ts) // 1000
            call["status_code"] = 1 if cmd.error else 0
            call["redis_type"] = cmd.reply_type
            call["response_body_size"] = cmd.reply_size
            call["response_body"] = body
            call["response_body_truncated"] = cmd.reply_size > len(body)
            call["response_messages"] = cmd.replies
            if cmd.error:
                _set_error(call, cmd.text)
        elif cmd.no_reply:
            call["status_text"] = "no reply (CLIENT REPLY)"
        self.ctx.emit(call)

    def _server_call(self, d: _Direction, buf: bytearray, reply: Reply) -> Call:
        """A row for a server message that answers no command: a push, or a reply whose command is lost."""
        conn = self.conn
        half = d.half
        offset = half.base + reply.start
        ts = half.ts_at(offset)
        call = conn.call(NAME, self.client, ts)
        body = bytes(buf[reply.start : min(reply.end, reply.start + KEEP)])
        size = reply.end - reply.start
        call.update(
            id=call_id(NAME, conn.flow_id, conn.port[1 - self.client], half.seq_at(offset), ts),
            has_response=True,
            redis_type=reply.kind,
            response_body_size=size,
            response_body=body,
            response_body_truncated=size > len(body),
            response_messages=1,
            first_packet_ts=ts,
            last_packet_ts=half.ts_at(half.base + reply.end - 1),
            partial=d.skipped,
        )
        d.skipped = False
        return call

    def _push(self, d: _Direction, buf: bytearray, reply: Reply, kind: bytes) -> None:
        call = self._server_call(d, buf, reply)
        head = reply.head
        channel = head[2] if kind == b"pmessage" and len(head) > 2 else head[1] if len(head) > 1 else b""
        call.update(
            method=kind.decode("latin-1").upper(),
            path=channel.decode("utf-8", "replace"),
            status_text="push",
        )
        self.ctx.emit(call)

    def _orphan(self, d: _Direction, buf: bytearray, reply: Reply) -> None:
        call = self._server_call(d, buf, reply)
        call.update(partial=True, has_request=False, status_code=1 if reply.type_byte in (45, 33) else 0)
        if reply.type_byte in (45, 33):
            _set_error(call, reply.text)
        self.ctx.emit(call)

    def _broken(self, d: _Direction, message: str, offset: int) -> None:
        self.ctx.parse_error(NAME, message)
        half = d.half
        ts = half.ts_at(offset)
        conn = self.conn
        call = conn.call("tcp", self.client, ts)
        call.update(
            id=call_id("tcp", conn.flow_id, conn.port[self.client], half.seq_at(offset), ts),
            error=f"redis: {message}",
            partial=True,
            first_packet_ts=ts,
            last_packet_ts=half.last_ts,
        )
        call["has_request"] = True  # keep it even in a resumed run: the error is real
        self.ctx.emit(call)


def _set_error(call: Call, text: str) -> None:
    call["status_message"] = text
    prefix = text.split(" ", 1)[0]
    # Redis errors start with an upper-case code (ERR, WRONGTYPE, NOAUTH, MOVED, ...) by convention
    call["error_code"] = prefix if prefix.isupper() and prefix.isalpha() else ""


# --- detection ---------------------------------------------------------------------------------------------
def _client_verdict(data: bytearray, on_port: bool) -> str:
    """'yes', 'no' or 'more' for the first bytes a client sent."""
    if not data:
        return "more"
    head = bytes(data[:64])
    if head[0] == 42:  # '*': an array of bulk strings whose first element is a command name
        found = _REQUEST_START.match(head)
        if found is None:
            return "more" if _REQUEST_PREFIX.fullmatch(head) else "no"
        dollar = head.rfind(b"$", 0, found.end())
        size = int(head[dollar + 1 : found.end() - 2])
        name = head[found.end() : found.end() + size]
        if len(name) < size:
            return "more" if len(data) < 64 else "no"
        return "yes" if name.upper().decode("latin-1") in _KNOWN_COMMANDS else "no"
    if not on_port:
        return "no"
    # an inline command (a line of words): only on the Redis port, and only a known command name
    line, newline, _ = head.partition(b"\n")
    word = line.split(b" ", 1)[0].rstrip(b"\r").upper().decode("latin-1")
    if newline or b" " in line:
        return "yes" if word in _KNOWN_COMMANDS else "no"
    return "more" if any(command.startswith(word) for command in _KNOWN_COMMANDS) else "no"


class RedisDissector:
    name = NAME

    def detect(self, conn: TcpConn) -> int:
        on_port = PORT in conn.port
        halves = conn.halves
        if on_port and (halves[0].mid_start or halves[1].mid_start):
            # captured mid-way: the client is the side not on the Redis port; a command array in its bytes
            client = 0 if conn.port[1] == PORT else 1
            buf = halves[client].buf
            if buf and _REQUEST_START.search(buf, 0, MIDSTREAM_SCAN):
                return client
            return MORE if len(buf) < MIDSTREAM_SCAN else NO
        verdicts = [_client_verdict(half.buf, on_port) for half in halves]
        for side, verdict in enumerate(verdicts):
            if verdict == "yes":
                return side
        if on_port:
            # not a command, but the Redis server answered it (a protocol error): Redis, flagged as garbage
            server = 0 if conn.port[0] == PORT else 1
            answer = halves[server].buf
            if answer and answer[0] in TYPES and halves[1 - server].buf:
                return 1 - server
        if "no" in verdicts:
            return NO
        return MORE

    def session(self, conn: TcpConn, client: int) -> Any:
        return RedisSession(conn, client)


DISSECTOR = RedisDissector()
