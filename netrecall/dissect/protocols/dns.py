"""DNS over UDP and over TCP: header, questions, answers, rcode; queries matched to responses.

- Matching: by (flow, DNS id, questions); a response with no question section falls back to (flow, id).
  A query repeated while waiting (client retransmission) is the same call.
- A query with no response within `dns_timeout_ns` (or by the run's end) is kept with has_response
  false and no status; a response whose query was not captured is kept with `partial`.
- `dns_truncated` is the TC bit (the answer did not fit: the client retries over TCP). A message cut by
  the capture's snap length is parsed as far as it goes and flagged `partial`.
- Answers are stored as their values: A/AAAA addresses, CNAME/NS/PTR names, `pref host` for MX,
  `priority weight port target` for SRV, TXT as its string (several: quoted, as dig prints them),
  `mname rname serial` for SOA, the hex of the data for other types.
- UDP on ports 53, 5353 and 5355 is DNS when it parses; on other ports only a strictly well-formed query
  or response (exactly one question, every section parsed to the last byte) counts.
- TCP: 2-byte length framing on port 53 (either side).
"""

from __future__ import annotations

import socket
import struct
from typing import TYPE_CHECKING, Any

from netrecall.dissect.calls import Call, Context, call_id
from netrecall.dissect.protocols.base import MORE, NO, ParseError

if TYPE_CHECKING:
    from netrecall.dissect.tcp import TcpConn

NAME = "dns"
PORTS = frozenset((53, 5353, 5355))

QTYPES = {
    1: "A",
    2: "NS",
    5: "CNAME",
    6: "SOA",
    12: "PTR",
    13: "HINFO",
    15: "MX",
    16: "TXT",
    17: "RP",
    18: "AFSDB",
    24: "SIG",
    25: "KEY",
    28: "AAAA",
    29: "LOC",
    33: "SRV",
    35: "NAPTR",
    36: "KX",
    37: "CERT",
    39: "DNAME",
    41: "OPT",
    43: "DS",
    44: "SSHFP",
    46: "RRSIG",
    47: "NSEC",
    48: "DNSKEY",
    50: "NSEC3",
    51: "NSEC3PARAM",
    52: "TLSA",
    64: "SVCB",
    65: "HTTPS",
    99: "SPF",
    249: "TKEY",
    250: "TSIG",
    251: "IXFR",
    252: "AXFR",
    255: "ANY",
    256: "URI",
    257: "CAA",
}
QTYPE_NUMBERS = {name: number for number, name in QTYPES.items()}
RCODES = {
    0: "NOERROR",
    1: "FORMERR",
    2: "SERVFAIL",
    3: "NXDOMAIN",
    4: "NOTIMP",
    5: "REFUSED",
    6: "YXDOMAIN",
    7: "YXRRSET",
    8: "NXRRSET",
    9: "NOTAUTH",
    10: "NOTZONE",
}
OPCODES = {0: "QUERY", 1: "IQUERY", 2: "STATUS", 4: "NOTIFY", 5: "UPDATE"}
_HEADER = struct.Struct("!HHHHHH")
_RR = struct.Struct("!HHIH")


def qtype_name(number: int) -> str:
    return QTYPES.get(number, f"TYPE{number}")


class DnsMessage:
    __slots__ = ("answers", "cut", "id", "opcode", "qr", "qtypes", "questions", "rcode", "tc")

    def __init__(self) -> None:
        self.id = 0
        self.qr = False
        self.opcode = 0
        self.tc = False
        self.rcode = 0
        self.questions: list[str] = []
        self.qtypes: list[str] = []
        self.answers: list[str] = []
        self.cut = False  # the capture cut the message short: parsed as far as it went


def _name(data: bytes, pos: int) -> tuple[str, int]:
    """A domain name at pos (with compression); returns (name, position after it in the record)."""
    labels: list[str] = []
    end = -1
    jumps = 0
    total = 0
    while True:
        if pos >= len(data):
            raise IndexError("name runs past the message")
        length = data[pos]
        if length == 0:
            pos += 1
            break
        if length & 0xC0 == 0xC0:
            if pos + 1 >= len(data):
                raise IndexError("pointer runs past the message")
            if end < 0:
                end = pos + 2
            jumps += 1
            if jumps > 64:
                raise ParseError("compression pointer loop")
            pos = ((length & 0x3F) << 8) | data[pos + 1]
            continue
        if length & 0xC0:
            raise ParseError(f"bad label length 0x{length:02x}")
        label = data[pos + 1 : pos + 1 + length]
        if len(label) < length:
            raise IndexError("label runs past the message")
        total += length + 1
        if total > 255:
            raise ParseError("name longer than 255 bytes")
        labels.append(label.decode("ascii", "backslashreplace"))
        pos += 1 + length
    return ".".join(labels), (end if end >= 0 else pos)


def _rdata(data: bytes, rtype: int, start: int, length: int) -> str:
    rd = data[start : start + length]
    if rtype == 1 and length == 4:
        return socket.inet_ntop(socket.AF_INET, rd)
    if rtype == 28 and length == 16:
        return socket.inet_ntop(socket.AF_INET6, rd)
    if rtype in (2, 5, 12, 39):
        return _name(data, start)[0]
    if rtype == 15 and length >= 3:
        return f"{struct.unpack_from('!H', data, start)[0]} {_name(data, start + 2)[0]}"
    if rtype == 33 and length >= 7:
        prio, weight, port = struct.unpack_from("!HHH", data, start)
        return f"{prio} {weight} {port} {_name(data, start + 6)[0]}"
    if rtype == 16:
        parts, i = [], 0
        while i < len(rd):
            n = rd[i]
            parts.append(rd[i + 1 : i + 1 + n].decode("utf-8", "backslashreplace"))
            i += 1 + n
        # one string as is; several quoted and space-separated, as dig prints them
        return parts[0] if len(parts) == 1 else " ".join(f'"{part}"' for part in parts)
    if rtype == 6:
        mname, p = _name(data, start)
        rname, p = _name(data, p)
        serial = struct.unpack_from("!I", data, p)[0] if p + 4 <= len(data) else 0
        return f"{mname} {rname} {serial}"
    return rd.hex()


def parse(data: bytes, strict: bool = False) -> DnsMessage:
    """Parse one DNS message. Raises ParseError when it is not DNS; a cut message is flagged `cut`."""
    if len(data) < 12:
        raise ParseError(f"{len(data)} bytes: shorter than a DNS header")
    ident, flags, qd, an, ns, ar = _HEADER.unpack_from(data)
    msg = DnsMessage()
    msg.id = ident
    msg.qr = bool(flags & 0x8000)
    msg.opcode = (flags >> 11) & 0xF
    msg.tc = bool(flags & 0x0200)
    msg.rcode = flags & 0xF
    if msg.opcode not in OPCODES:
        raise ParseError(f"opcode {msg.opcode}")
    if qd > 64 or an > 512 or (strict and (qd != 1 or ns > 64 or ar > 64)):
        raise ParseError("implausible section counts")
    pos = 12
    try:
        for _ in range(qd):
            qname, pos = _name(data, pos)
            if pos + 4 > len(data):
                raise IndexError("question runs past the message")
            qtype = struct.unpack_from("!H", data, pos)[0]
            pos += 4
            msg.questions.append(qname)
            msg.qtypes.append(qtype_name(qtype))
        for index in range(an + ns + ar):
            _, pos = _name(data, pos)
            if pos + 10 > len(data):
                raise IndexError("record runs past the message")
            rtype, _, _, rdlen = _RR.unpack_from(data, pos)
            pos += 10
            if pos + rdlen > len(data):
                raise IndexError("record data runs past the message")
            if index < an:
                msg.answers.append(_rdata(data, rtype, pos, rdlen))
            pos += rdlen
    except IndexError:
        if strict or (not msg.questions and qd):
            raise ParseError("message shorter than its sections") from None
        msg.cut = True
    if strict and pos != len(data):
        raise ParseError("trailing bytes after the last section")
    return msg


class DnsMatcher:
    """Queries waiting for their responses, for UDP and TCP alike."""

    def __init__(self) -> None:
        self.pending: dict[tuple, tuple[DnsMessage, Call]] = {}

    def query(self, ctx: Context, call: Call, msg: DnsMessage) -> None:
        key = (call["flow_id"], msg.id, tuple(msg.questions), tuple(msg.qtypes))
        if key in self.pending:
            return  # the client asked again while waiting: same call
        _fill_request(call, msg)
        self.pending[key] = (msg, call)

    def response(self, ctx: Context, reply: Call, msg: DnsMessage) -> None:
        """`reply` is a call skeleton for the response packet (client as src, its ts the response's)."""
        resp_ts = reply["ts"]
        key = (reply["flow_id"], msg.id, tuple(msg.questions), tuple(msg.qtypes))
        found = self.pending.pop(key, None)
        if found is None and not msg.questions:
            for other in list(self.pending):
                if other[0] == key[0] and other[1] == msg.id:
                    found = self.pending.pop(other)
                    break
        if found is None:
            call = reply
            call["has_request"] = False
            _fill_request(call, msg)
            call["dns_request"] = False
            call["partial"] = True
        else:
            call = found[1]
            call["elapsed_time"] = max(0, resp_ts - call["ts"]) // 1000
        call.update(
            status_code=msg.rcode,
            status_text=RCODES.get(msg.rcode, f"RCODE{msg.rcode}"),
            dns_answers=msg.answers,
            dns_response=True,
            dns_truncated=msg.tc,
            has_response=True,
            last_packet_ts=resp_ts,
        )
        if msg.cut:
            call["partial"] = True
        ctx.emit(call)

    def expire(self, ctx: Context, now_ts: int | None, timeout_ns: int) -> None:
        for key, (_, call) in list(self.pending.items()):
            if now_ts is None or now_ts - call["ts"] > timeout_ns:
                del self.pending[key]
                ctx.emit(call)

    def pending_ts(self) -> int | None:
        return min((c["ts"] for _, c in self.pending.values()), default=None)


def _fill_request(call: Call, msg: DnsMessage) -> None:
    call.update(
        method=OPCODES.get(msg.opcode, str(msg.opcode)),
        host=msg.questions[0] if msg.questions else "",
        dns_id=msg.id,
        dns_questions=msg.questions,
        dns_question_types=msg.qtypes,
        dns_request=True,
        first_packet_ts=call["ts"],
        last_packet_ts=call["ts"],
    )
    if msg.cut:
        call["partial"] = True


def _call(protocol_flow: int, src: tuple[bytes, int], dst: tuple[bytes, int], ts: int, dns_id: int) -> Call:
    return {
        "protocol": NAME,
        "flow_id": protocol_flow,
        "src_ip": src[0],
        "src_port": src[1],
        "dst_ip": dst[0],
        "dst_port": dst[1],
        "ts": ts,
        "id": call_id(NAME, protocol_flow, src[1], dns_id, ts),
    }


class DnsDatagrams:
    """DNS over UDP: one datagram is one message."""

    name = NAME

    def __init__(self) -> None:
        self.matcher = DnsMatcher()

    def detect(self, payload: bytes, sport: int, dport: int) -> DnsMessage | None:
        try:
            return parse(payload, strict=not (sport in PORTS or dport in PORTS))
        except ParseError:
            return None

    def handle(
        self,
        ctx: Context,
        flow_id: int,
        src: tuple[bytes, int],
        dst: tuple[bytes, int],
        ts: int,
        msg: DnsMessage,
    ) -> None:
        if msg.qr:
            # the client is where the response goes
            self.matcher.response(ctx, _call(flow_id, dst, src, ts, msg.id), msg)
        else:
            self.matcher.query(ctx, _call(flow_id, src, dst, ts, msg.id), msg)

    def expire(self, ctx: Context, now_ts: int | None) -> None:
        self.matcher.expire(ctx, now_ts, ctx.config.dns_timeout_ns)

    def pending_ts(self) -> int | None:
        return self.matcher.pending_ts()


class DnsTcpSession:
    """DNS over TCP: messages framed by a 2-byte length; the client side asks, the server answers."""

    protocol = NAME

    def __init__(self, conn: TcpConn, client: int, matcher: DnsMatcher) -> None:
        self.conn = conn
        self.client = client
        self.matcher = matcher
        self.broken = [False, False]

    def feed(self, side: int) -> None:
        half = self.conn.halves[side]
        buf = half.buf
        pos = 0
        conn = self.conn
        ctx = conn.ctx
        while not self.broken[side] and len(buf) - pos >= 2:
            length = (buf[pos] << 8) | buf[pos + 1]
            if len(buf) - pos - 2 < length:
                break
            offset = half.base + pos
            ts = half.ts_at(offset)
            try:
                msg = parse(bytes(buf[pos + 2 : pos + 2 + length]))
            except ParseError as exc:
                ctx.parse_error(NAME, str(exc))
                self.broken[side] = True
                call = conn.call("tcp", self.client, ts)
                call.update(
                    id=call_id("tcp", conn.flow_id, conn.port[side], half.seq_at(offset), ts),
                    error=f"dns: {exc}",
                    partial=True,
                    first_packet_ts=ts,
                    last_packet_ts=half.last_ts,
                )
                ctx.emit(call)
                break
            pos += 2 + length
            client = self.client
            src = (conn.ip[client], conn.port[client])
            dst = (conn.ip[1 - client], conn.port[1 - client])
            if msg.qr:
                self.matcher.response(ctx, _call(conn.flow_id, src, dst, ts, msg.id), msg)
            else:
                self.matcher.query(ctx, _call(conn.flow_id, src, dst, ts, msg.id), msg)
        half.consume(len(buf) if self.broken[side] else pos)

    def on_gap(self, side: int, missing: int) -> None:
        self.feed(side)
        self.broken[side] = True  # length framing cannot be recovered after a hole

    def close(self) -> None:
        self.feed(self.client)
        self.feed(1 - self.client)
        flow = self.conn.flow_id
        for key, (_, call) in list(self.matcher.pending.items()):
            if key[0] == flow:
                del self.matcher.pending[key]
                self.conn.ctx.emit(call)

    def pending_ts(self) -> int | None:
        return None  # TCP queries are flushed with their connection


class DnsTcpDissector:
    name = NAME

    def __init__(self, matcher: DnsMatcher | None = None) -> None:
        self.matcher = matcher or DnsMatcher()

    def detect(self, conn: TcpConn) -> int:
        if conn.port[0] == 53 or conn.port[1] == 53:
            return 1 if conn.port[0] == 53 else 0
        return NO if any(h.buf for h in conn.halves) else MORE

    def session(self, conn: TcpConn, client: int) -> Any:
        return DnsTcpSession(conn, client, self.matcher)
