"""TLS over TCP: one `tls` row per connection from its plaintext handshake, the rest counted as opaque bytes.

- Detection (any port): a direction opening with a strict record header — content type 22 (handshake),
  version 0x0301-0x0304, a length a record may have — whose first handshake message is a ClientHello
  (that side is the client) or a ServerHello (the other side is). Also a direction opening with one
  plaintext alert record (a server refusing a connection that sent nothing), and a connection captured
  mid-way whose bytes open with an application_data record header (an opaque, partial `tls` row).
- Parsed: the ClientHello (SNI, ALPN offered, supported_versions, cipher suites, extensions, groups,
  point formats, signature algorithms) with its JA3 (md5) and JA4 (FoxIO's spec, GREASE ignored); the
  ServerHello (version, cipher, ALPN chosen in TLS 1.2, JA3S; a HelloRetryRequest is skipped in favour of
  the ServerHello after it); plaintext alerts. Handshake messages may span records and records may span
  segments: records are taken whole and their handshake bytes reassembled until the hello is read.
- After a direction sends ChangeCipherSpec or application_data, nothing it sends can be read (TLS 1.3
  encrypts everything after the ServerHello): its bytes are only counted. An alert sent after that point
  is encrypted and invisible.
- The row is written when the connection ends (bytes each way are known then): `ts` is the ClientHello's
  packet, `elapsed_time` runs to the ServerHello's packet. A fatal plaintext alert sets `status_code` to
  its description number, `status_text`/`error_code` to its name, `status_message` to who sent it.
- Bad input never raises: a record header that is not TLS, or a hello whose lengths do not add up, flags
  the row (`error` = `tls: ...`, partial) and counts a tls parse error; the direction turns opaque.
"""

from __future__ import annotations

import hashlib
import sys
from array import array
from typing import TYPE_CHECKING, Any

from netrecall.dissect.calls import Call, call_id
from netrecall.dissect.protocols.base import MORE, NO, ParseError

if TYPE_CHECKING:
    from netrecall.dissect.tcp import HalfStream, TcpConn

NAME = "tls"
_LITTLE_ENDIAN = sys.byteorder == "little"
CHANGE_CIPHER_SPEC, ALERT, HANDSHAKE, APPLICATION_DATA, HEARTBEAT = 20, 21, 22, 23, 24
CLIENT_HELLO, SERVER_HELLO = 1, 2
MAX_RECORD = 16384 + 2048  # the largest TLSCiphertext fragment (RFC 8446 5.2, RFC 5246 6.2.3)
MAX_HANDSHAKE = 1 << 17  # a hello longer than this is not one (post-quantum key shares stay under 4 KB)
EXT_SNI, EXT_GROUPS, EXT_POINT_FORMATS, EXT_SIG_ALGS, EXT_ALPN, EXT_VERSIONS = 0, 10, 11, 13, 16, 43
# RFC 8446 4.1.3: a ServerHello with this random is a HelloRetryRequest
HRR_RANDOM = bytes.fromhex("cf21ad74e59a6111be1d8c021e65b891c2a211167abb8c5e079e09e2c8a8339c")

VERSION_NAMES = {
    0x0002: "SSL 2.0",
    0x0300: "SSL 3.0",
    0x0301: "TLS 1.0",
    0x0302: "TLS 1.1",
    0x0303: "TLS 1.2",
    0x0304: "TLS 1.3",
}
JA4_VERSIONS = {
    0x0304: "13",
    0x0303: "12",
    0x0302: "11",
    0x0301: "10",
    0x0300: "s3",
    0x0002: "s2",
    0xFEFF: "d1",
    0xFEFD: "d2",
    0xFEFC: "d3",
}
ALERT_NAMES = {
    0: "close_notify",
    10: "unexpected_message",
    20: "bad_record_mac",
    21: "decryption_failed",
    22: "record_overflow",
    30: "decompression_failure",
    40: "handshake_failure",
    41: "no_certificate",
    42: "bad_certificate",
    43: "unsupported_certificate",
    44: "certificate_revoked",
    45: "certificate_expired",
    46: "certificate_unknown",
    47: "illegal_parameter",
    48: "unknown_ca",
    49: "access_denied",
    50: "decode_error",
    51: "decrypt_error",
    60: "export_restriction",
    70: "protocol_version",
    71: "insufficient_security",
    80: "internal_error",
    86: "inappropriate_fallback",
    90: "user_canceled",
    100: "no_renegotiation",
    109: "missing_extension",
    110: "unsupported_extension",
    111: "certificate_unobtainable",
    112: "unrecognized_name",
    113: "bad_certificate_status_response",
    114: "bad_certificate_hash_value",
    115: "unknown_psk_identity",
    116: "certificate_required",
    120: "no_application_protocol",
}
FATAL = 2


GREASE = frozenset(0x0A0A + 0x1010 * i for i in range(16))  # RFC 8701: 0x0A0A, 0x1A1A, ... 0xFAFA
FINGERPRINT_CACHE_SIZE = 4096  # distinct client fingerprints kept; a cluster has a few dozen


def is_grease(value: int) -> bool:
    return value in GREASE


def version_name(version: int) -> str:
    return VERSION_NAMES.get(version) or f"0x{version:04x}"


# --- hello parsing ---------------------------------------------------------------------------------------
class ClientHello:
    """What a ClientHello says, GREASE values kept (the fingerprints drop them)."""

    __slots__ = (
        "alpn",
        "ciphers",
        "extensions",
        "groups",
        "legacy_version",
        "point_formats",
        "sig_algs",
        "sni",
        "versions",
    )

    def __init__(self) -> None:
        self.legacy_version = 0
        self.ciphers: list[int] = []
        self.extensions: list[int] = []  # types, in the order sent
        self.sni = ""
        self.alpn: list[bytes] = []
        self.versions: list[int] = []  # supported_versions extension
        self.groups: list[int] = []
        self.point_formats: list[int] = []
        self.sig_algs: list[int] = []


class ServerHello:
    __slots__ = ("alpn", "cipher", "extensions", "legacy_version", "retry", "selected_version")

    def __init__(self) -> None:
        self.legacy_version = 0
        self.cipher = 0
        self.extensions: list[int] = []
        self.selected_version = 0  # supported_versions extension (TLS 1.3), 0 when absent
        self.alpn = ""
        self.retry = False  # a HelloRetryRequest


def _u16_list(data: bytes, start: int, end: int) -> list[int]:
    if (end - start) % 2:
        raise ParseError("odd length in a list of 16-bit values")
    values = array("H", data[start:end])
    if _LITTLE_ENDIAN:
        values.byteswap()
    return values.tolist()


def _vector(data: bytes, pos: int, size_bytes: int, limit: int) -> tuple[int, int]:
    """(start, end) of a length-prefixed vector at `pos`, checked against `limit`."""
    if pos + size_bytes > limit:
        raise ParseError("hello cut inside a length field")
    length = int.from_bytes(data[pos : pos + size_bytes], "big")
    start = pos + size_bytes
    if start + length > limit:
        raise ParseError("a hello field is longer than the hello")
    return start, start + length


def _extensions(data: bytes, pos: int, end: int) -> list[tuple[int, int, int]]:
    """(type, start, end) of each extension; a hello without any extension block has none."""
    if pos == end:
        return []
    start, stop = _vector(data, pos, 2, end)
    if stop != end:
        raise ParseError("bytes after the extensions")
    out = []
    while start < stop:  # the hot loop of hello parsing: lengths read inline
        body_start = start + 4
        if body_start > stop:
            raise ParseError("extension header cut")
        body_end = body_start + ((data[start + 2] << 8) | data[start + 3])
        if body_end > stop:
            raise ParseError("a hello field is longer than the hello")
        out.append(((data[start] << 8) | data[start + 1], body_start, body_end))
        start = body_end
    return out


def _scan_client_hello(data: bytes) -> tuple[int, int, list[tuple[int, int, int]]]:
    """Check a ClientHello body's framing: (start, end) of its cipher suites and its extensions."""
    end = len(data)
    if end < 38:
        raise ParseError("ClientHello shorter than its fixed fields")
    _, pos = _vector(data, 34, 1, end)  # session id
    ciphers_start, ciphers_end = _vector(data, pos, 2, end)
    if (ciphers_end - ciphers_start) % 2:
        raise ParseError("odd length in a list of 16-bit values")
    _, pos = _vector(data, ciphers_end, 1, end)  # compression methods
    return ciphers_start, ciphers_end, _extensions(data, pos, end)


# extensions whose contents the fingerprints read (the SNI's only presence counts)
FINGERPRINTED = frozenset((EXT_GROUPS, EXT_POINT_FORMATS, EXT_SIG_ALGS, EXT_ALPN, EXT_VERSIONS))


def client_hello_key(data: bytes) -> tuple[str, tuple]:
    """The SNI of a ClientHello body, and the raw bytes every other column depends on (version, cipher
    suites, extension types, the fingerprinted extensions): hellos with equal keys have equal columns.
    The framing is checked as in parse_client_hello; the extension walk is inlined (it is the hot path)."""
    end = len(data)
    if end < 38:
        raise ParseError("ClientHello shorter than its fixed fields")
    ciphers_start = 37 + data[34]  # after the session id and the cipher suites' length
    if ciphers_start > end:
        raise ParseError("a hello field is longer than the hello")
    ciphers_end = ciphers_start + ((data[ciphers_start - 2] << 8) | data[ciphers_start - 1])
    if ciphers_end >= end:
        raise ParseError("a hello field is longer than the hello")
    if (ciphers_end - ciphers_start) % 2:
        raise ParseError("odd length in a list of 16-bit values")
    pos = ciphers_end + 1 + data[ciphers_end]  # after the compression methods
    if pos > end:
        raise ParseError("a hello field is longer than the hello")
    parts: list[Any] = [data[:2], data[ciphers_start:ciphers_end]]
    types = []
    sni = ""
    if pos < end:
        pos, stop = _vector(data, pos, 2, end)
        if stop != end:
            raise ParseError("bytes after the extensions")
        while pos < stop:
            body = pos + 4
            if body > stop:
                raise ParseError("extension header cut")
            ext_end = body + ((data[pos + 2] << 8) | data[pos + 3])
            if ext_end > stop:
                raise ParseError("a hello field is longer than the hello")
            ext_type = (data[pos] << 8) | data[pos + 1]
            types.append(ext_type)
            if ext_type == EXT_SNI:
                sni = _server_name(data, body, ext_end)
            elif ext_type in FINGERPRINTED:
                parts.append(data[pos:ext_end])  # with its type and length: no two lists can blur
            pos = ext_end
    parts.append(tuple(types))
    return sni, tuple(parts)


def parse_client_hello(data: bytes) -> ClientHello:
    """A ClientHello body (after the 4-byte handshake header), every list decoded."""
    ciphers_start, ciphers_end, extensions = _scan_client_hello(data)
    hello = ClientHello()
    hello.legacy_version = (data[0] << 8) | data[1]
    hello.ciphers = _u16_list(data, ciphers_start, ciphers_end)
    for ext_type, start, stop in extensions:
        hello.extensions.append(ext_type)
        if ext_type == EXT_SNI:
            hello.sni = _server_name(data, start, stop)
        elif ext_type == EXT_ALPN:
            hello.alpn = _alpn_list(data, start, stop)
        elif ext_type == EXT_VERSIONS:
            list_start, list_end = _vector(data, start, 1, stop)
            hello.versions = _u16_list(data, list_start, list_end)
        elif ext_type == EXT_GROUPS:
            list_start, list_end = _vector(data, start, 2, stop)
            hello.groups = _u16_list(data, list_start, list_end)
        elif ext_type == EXT_POINT_FORMATS:
            list_start, list_end = _vector(data, start, 1, stop)
            hello.point_formats = list(data[list_start:list_end])
        elif ext_type == EXT_SIG_ALGS:
            list_start, list_end = _vector(data, start, 2, stop)
            hello.sig_algs = _u16_list(data, list_start, list_end)
    return hello


def _server_name(data: bytes, start: int, stop: int) -> str:
    """The first host_name entry of a server_name extension (an empty extension: none)."""
    if start == stop:
        return ""
    pos, end = _vector(data, start, 2, stop)
    while pos + 3 <= end:
        name_start = pos + 3
        name_end = name_start + ((data[pos + 1] << 8) | data[pos + 2])
        if name_end > end:
            raise ParseError("a hello field is longer than the hello")
        if data[pos] == 0:  # host_name
            return data[name_start:name_end].decode("ascii", "replace")
        pos = name_end
    return ""


def _alpn_list(data: bytes, start: int, stop: int) -> list[bytes]:
    pos, end = _vector(data, start, 2, stop)
    out = []
    while pos < end:
        name_start, name_end = _vector(data, pos, 1, end)
        out.append(bytes(data[name_start:name_end]))
        pos = name_end
    return out


def parse_server_hello(data: bytes) -> ServerHello:
    end = len(data)
    if end < 38:
        raise ParseError("ServerHello shorter than its fixed fields")
    hello = ServerHello()
    hello.legacy_version = (data[0] << 8) | data[1]
    hello.retry = data[2:34] == HRR_RANDOM
    _, pos = _vector(data, 34, 1, end)  # session id
    if pos + 3 > end:
        raise ParseError("ServerHello cut before its cipher suite")
    hello.cipher = (data[pos] << 8) | data[pos + 1]
    for ext_type, start, stop in _extensions(data, pos + 3, end):  # + cipher suite and compression
        hello.extensions.append(ext_type)
        if ext_type == EXT_VERSIONS and stop - start == 2:
            hello.selected_version = (data[start] << 8) | data[start + 1]
        elif ext_type == EXT_ALPN:
            names = _alpn_list(data, start, stop)
            hello.alpn = names[0].decode("latin-1") if names else ""
    return hello


# --- fingerprints ----------------------------------------------------------------------------------------
def _dashed(values: list[int]) -> str:
    return "-".join([str(v) for v in values if v not in GREASE])


def ja3_string(hello: ClientHello) -> str:
    """Salesforce's JA3 text: version, ciphers, extensions, groups, point formats; GREASE left out."""
    return ",".join(
        (
            str(hello.legacy_version),
            _dashed(hello.ciphers),
            _dashed(hello.extensions),
            _dashed(hello.groups),
            "-".join(str(v) for v in hello.point_formats),
        )
    )


def ja3s_string(hello: ServerHello) -> str:
    return f"{hello.legacy_version},{hello.cipher},{_dashed(hello.extensions)}"


def md5_hex(text: str) -> str:
    return hashlib.md5(text.encode(), usedforsecurity=False).hexdigest()


def _sha12(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def ja4_alpn(first: bytes) -> str:
    """First and last characters of the first ALPN value (FoxIO's JA4 spec): '00' when there is none;
    when either end byte is not alphanumeric, the first and last characters of the value's hex instead."""
    if not first:
        return "00"
    head, tail = chr(first[0]), chr(first[-1])
    if head.isascii() and head.isalnum() and tail.isascii() and tail.isalnum():
        return head + tail
    hexed = first.hex()
    return hexed[0] + hexed[-1]


def ja4(hello: ClientHello, transport: str = "t") -> str:
    """FoxIO's JA4: `a_b_c` with a = transport, version, SNI d/i, cipher and extension counts, ALPN ends;
    b = sha256-12 of the sorted ciphers; c = sha256-12 of the sorted extensions less SNI and ALPN, then
    '_' and the signature algorithms in the order sent. GREASE is ignored everywhere."""
    ciphers = [c for c in hello.ciphers if c not in GREASE]
    extensions = [e for e in hello.extensions if e not in GREASE]
    versions = [v for v in hello.versions if v not in GREASE]
    version = JA4_VERSIONS.get(max(versions) if versions else hello.legacy_version, "00")
    sni = "d" if EXT_SNI in extensions else "i"
    alpn = ja4_alpn(hello.alpn[0]) if hello.alpn else "00"
    part_a = f"{transport}{version}{sni}{min(len(ciphers), 99):02d}{min(len(extensions), 99):02d}{alpn}"
    part_b = _sha12(",".join(f"{c:04x}" for c in sorted(ciphers))) if ciphers else "000000000000"
    kept = sorted(e for e in extensions if e not in (EXT_SNI, EXT_ALPN))
    if kept:
        text = ",".join(f"{e:04x}" for e in kept)
        sig_algs = [s for s in hello.sig_algs if s not in GREASE]
        if sig_algs:
            text += "_" + ",".join(f"{s:04x}" for s in sig_algs)
        part_c = _sha12(text)
    else:
        part_c = "000000000000"
    return f"{part_a}_{part_b}_{part_c}"


# --- the session -------------------------------------------------------------------------------------------
class _Direction:
    """What one side sent: its records until it turns opaque, its hello, its byte count."""

    __slots__ = ("half", "handshake", "hello_seq", "hello_ts", "is_client", "opaque", "sent", "wants_hello")

    def __init__(self, half: HalfStream, is_client: bool) -> None:
        self.half = half
        self.is_client = is_client
        self.opaque = False  # encrypted (after CCS or application data), broken or cut: bytes only counted
        self.wants_hello = True  # handshake bytes are reassembled only until this side's hello is read
        self.handshake = bytearray()
        self.hello_ts = 0  # packet time and sequence number of the record that began the pending message
        self.hello_seq = 0
        self.sent = 0  # bytes this side sent (consumed, plus bytes lost in capture gaps)


class TlsSession:
    """One connection's handshake; one row when the connection ends."""

    protocol = NAME

    def __init__(self, conn: TcpConn, client: int, opaque: bool = False) -> None:
        self.conn = conn
        self.ctx = conn.ctx
        self.client = client
        self.dirs = (_Direction(conn.halves[0], client == 0), _Direction(conn.halves[1], client == 1))
        self.client_hello: dict[str, Any] | None = None  # its columns but the SNI (see client_columns)
        self.sni = ""
        self.server_hello: ServerHello | None = None
        self.ch_ts = self.ch_seq = self.sh_ts = 0
        self.alert: tuple[int, int, int] | None = None  # (side, level, description) of the first one
        self.retried = False  # the server asked for another ClientHello (HelloRetryRequest)
        self.partial = opaque or any(h.mid_start for h in conn.halves)
        self.error = ""
        if opaque:  # seen mid-way, already encrypted: nothing to read
            for d in self.dirs:
                d.opaque = True
                d.wants_hello = False

    # --- session contract -------------------------------------------------------------------------------
    def feed(self, side: int) -> None:
        d = self.dirs[side]
        half = d.half
        buf = half.buf
        size = len(buf)
        pos = 0
        if not d.opaque:
            try:
                pos = self._records(d, buf, size)
            except ParseError as exc:
                self._broken(str(exc))
                d.opaque = True
        if d.opaque:
            pos = size
        d.sent += pos
        half.consume(pos)

    def on_gap(self, side: int, missing: int) -> None:
        d = self.dirs[side]
        self.feed(side)
        leftover = len(d.half.buf)  # a record's start waiting for its rest: dropped with the hole
        d.sent += leftover + missing
        d.half.consume(leftover)
        if not d.opaque:  # the record framing is lost: what follows cannot be read safely
            self.partial = True
            d.opaque = True

    def close(self) -> None:
        for side in (self.client, 1 - self.client):
            d = self.dirs[side]
            self.feed(side)
            leftover = len(d.half.buf)
            if leftover:  # a record cut by the end of the capture or connection
                d.sent += leftover
                d.half.consume(leftover)
                self.partial = True
            if d.handshake and d.wants_hello:
                self.partial = True  # a hello cut short
        self._emit()

    def pending_ts(self) -> int | None:
        """The ClientHello while its answer is awaited; after that the row depends on nothing unread."""
        if self.client_hello is not None and self.server_hello is None and self.alert is None:
            return self.ch_ts
        return None

    # --- parsing ----------------------------------------------------------------------------------------
    def _records(self, d: _Direction, buf: bytearray, size: int) -> int:
        """Walk whole records from the start of `buf`; return how many bytes were used."""
        pos = 0
        while size - pos >= 5:
            content_type = buf[pos]
            length = (buf[pos + 3] << 8) | buf[pos + 4]
            if (
                not CHANGE_CIPHER_SPEC <= content_type <= HEARTBEAT
                or buf[pos + 1] != 3
                or length > MAX_RECORD
            ):
                raise ParseError(f"not a TLS record header: {bytes(buf[pos : pos + 5]).hex()}")
            if content_type == APPLICATION_DATA or (
                content_type == CHANGE_CIPHER_SPEC and not self._retrying(d)
            ):
                d.opaque = True  # everything this side sends from here on is encrypted
                return pos
            end = pos + 5 + length
            if end > size:
                break  # the rest of the record is in later segments
            if content_type == HANDSHAKE and d.wants_hello:
                self._handshake(d, buf, pos, end)
            elif content_type == ALERT:
                self._alert(d, buf, pos + 5, end)
            pos = end
        return pos

    def _retrying(self, d: _Direction) -> bool:
        """A TLS 1.3 server may send its compatibility ChangeCipherSpec right after a HelloRetryRequest
        (RFC 8446 D.4): the ServerHello that follows is still in clear."""
        return self.retried and d.wants_hello and not d.is_client

    def _handshake(self, d: _Direction, buf: bytearray, record: int, end: int) -> None:
        """Add one record's handshake bytes; read every message completed by them."""
        held = d.handshake
        if not held:
            offset = d.half.base + record
            d.hello_ts = d.half.ts_at(offset)
            d.hello_seq = d.half.seq_at(offset)
            # the usual case, whole messages in this record: read them where they are
            pos = record + 5
            while end - pos >= 4 and d.wants_hello:
                length = (buf[pos + 1] << 16) | (buf[pos + 2] << 8) | buf[pos + 3]
                if end - pos - 4 < length:
                    break
                self._message(d, buf[pos], bytes(buf[pos + 4 : pos + 4 + length]))
                pos += 4 + length
            if not d.wants_hello or pos == end:
                return
            record = pos - 5  # a message continued in later records: keep its start
        held += buf[record + 5 : end]
        while len(held) >= 4 and d.wants_hello:
            length = (held[1] << 16) | (held[2] << 8) | held[3]
            if length > MAX_HANDSHAKE:
                raise ParseError(f"handshake message of {length} bytes")
            if len(held) < 4 + length:
                return
            msg_type = held[0]
            body = bytes(held[4 : 4 + length])
            del held[: 4 + length]
            self._message(d, msg_type, body)
        if not d.wants_hello:
            held.clear()

    def _message(self, d: _Direction, msg_type: int, body: bytes) -> None:
        if d.is_client and msg_type == CLIENT_HELLO:
            if self.client_hello is None:
                self.sni, self.client_hello = client_columns(body)
                self.ch_ts, self.ch_seq = d.hello_ts, d.hello_seq
            d.wants_hello = False  # a second ClientHello (after a HelloRetryRequest) is not fingerprinted
        elif not d.is_client and msg_type == SERVER_HELLO:
            hello = parse_server_hello(body)
            if hello.retry and not self.retried:
                self.retried = True  # a HelloRetryRequest: the real ServerHello follows
                return
            self.server_hello = hello
            self.sh_ts = d.hello_ts
            d.wants_hello = False

    def _alert(self, d: _Direction, buf: bytearray, start: int, end: int) -> None:
        if self.alert is not None or end - start < 2:
            return
        side = 0 if d is self.dirs[0] else 1
        level, description = buf[start], buf[start + 1]
        self.alert = (side, level, description)
        if not d.is_client and not self.sh_ts:
            self.sh_ts = d.half.ts_at(d.half.base + start)  # the server's answer was the alert

    def _broken(self, message: str) -> None:
        self.ctx.parse_error(NAME, message)
        if not self.error:
            self.error = f"{NAME}: {message}"
        self.partial = True

    # --- output -----------------------------------------------------------------------------------------
    def _emit(self) -> None:
        conn = self.conn
        client, server = self.dirs[self.client], self.dirs[1 - self.client]
        if not client.sent and not server.sent:
            return
        ch, sh = self.client_hello, self.server_hello
        first_ts = [h.first_ts for h in conn.halves if h.first_ts]
        ts = self.ch_ts or self.sh_ts or min(first_ts, default=0)
        seq = self.ch_seq if ch is not None else (server.hello_seq if sh is not None else client.half.seq0)
        port = conn.port[self.client if ch is not None or sh is None else 1 - self.client]
        call = conn.call(NAME, self.client, ts)
        call.update(
            id=call_id(NAME, conn.flow_id, port, seq, ts),
            method="ClientHello" if ch is not None else ("ServerHello" if sh is not None else ""),
            request_body_size=client.sent,
            response_body_size=server.sent,
            has_response=sh is not None or (self.alert is not None and self.alert[0] != self.client),
            partial=self.partial,
            error=self.error,
            first_packet_ts=min(first_ts) if first_ts else ts,
            last_packet_ts=max(h.last_ts for h in conn.halves),
        )
        if ch is not None:
            call.update(ch)
            call["tls_client_versions"] = list(ch["tls_client_versions"])  # rows share no lists
            call["tls_alpn"] = list(ch["tls_alpn"])
            call["tls_sni"] = self.sni
            if self.sh_ts:
                call["elapsed_time"] = max(0, self.sh_ts - self.ch_ts) // 1000
        if sh is not None:
            _server_columns(call, sh)
        if self.alert is not None:
            self._alert_columns(call, *self.alert)
        call["has_request"] = True  # the whole connection: never dropped as an orphan
        self.ctx.emit(call)

    def _alert_columns(self, call: Call, side: int, level: int, description: int) -> None:
        name = ALERT_NAMES.get(description, f"alert_{description}")
        sender = "client" if side == self.client else "server"
        kind = "fatal" if level == FATAL else "warning"
        call["status_message"] = f"{kind} alert {name} ({description}) from the {sender}"
        if level == FATAL:
            call.update(status_code=description, status_text=name, error_code=name)


_fingerprints: dict[tuple, dict[str, Any]] = {}


def client_columns(data: bytes) -> tuple[str, dict[str, Any]]:
    """The SNI and the other ClientHello columns of a hello body. All but the SNI depend only on lists a
    client sends the same way every time, so they are decoded and hashed once per distinct client (that
    is most of a hello's cost); a hello is decoded in full, and checked, the first time it is seen."""
    sni, key = client_hello_key(data)
    columns = _fingerprints.get(key)
    if columns is None:
        hello = parse_client_hello(data)
        if len(_fingerprints) >= FINGERPRINT_CACHE_SIZE:
            _fingerprints.clear()
        versions = [v for v in hello.versions if v not in GREASE] or [hello.legacy_version]
        columns = _fingerprints[key] = {
            "tls_client_versions": [version_name(v) for v in versions],
            "tls_version": version_name(max(versions)),
            "tls_alpn": [name.decode("latin-1") for name in hello.alpn],
            "ja3": md5_hex(ja3_string(hello)),
            "ja4": ja4(hello),
        }
    return sni, columns


_server_fingerprints: dict[tuple, dict[str, Any]] = {}


def _server_columns(call: Call, hello: ServerHello) -> None:
    key = (hello.legacy_version, hello.selected_version, hello.cipher, hello.alpn, tuple(hello.extensions))
    columns = _server_fingerprints.get(key)
    if columns is None:
        if len(_server_fingerprints) >= FINGERPRINT_CACHE_SIZE:
            _server_fingerprints.clear()
        columns = _server_fingerprints[key] = {
            "tls_version": version_name(hello.selected_version or hello.legacy_version),
            "tls_cipher": f"0x{hello.cipher:04x}",
            "tls_alpn_selected": hello.alpn,
            "ja3s": md5_hex(ja3s_string(hello)),
        }
    call.update(columns)


# --- detection -----------------------------------------------------------------------------------------
def _classify(buf: bytearray, mid_start: bool) -> str:
    """'client' (a ClientHello starts here), 'server' (a ServerHello), 'opaque' (an application_data
    record in a stream seen mid-way), 'more' (too few bytes to say) or 'no'."""
    size = len(buf)
    if size == 0:
        return "more"
    content_type = buf[0]
    if content_type == ALERT:
        return _classify_alert(buf)
    if content_type != HANDSHAKE and not (mid_start and content_type == APPLICATION_DATA):
        return "no"
    if size < 3:
        return "more" if size < 2 or buf[1] == 3 else "no"
    if buf[1] != 3 or not 1 <= buf[2] <= 4:
        return "no"
    if size < 5:
        return "more"
    length = (buf[3] << 8) | buf[4]
    if length == 0 or length > MAX_RECORD:
        return "no"
    if content_type == APPLICATION_DATA:
        return "opaque"
    if size < 6:
        return "more"
    if buf[5] not in (CLIENT_HELLO, SERVER_HELLO):
        return "no"
    if size < 10:
        return "more"
    if buf[9] != 3:  # the hello's own legacy version: 0x03xx
        return "no"
    return "client" if buf[5] == CLIENT_HELLO else "server"


def _classify_alert(buf: bytearray) -> str:
    """A lone plaintext alert opening a direction (a server refusing a connection that sent nothing, or
    garbage): exactly one 2-byte alert record, level warning or fatal, a known description."""
    expected = (ALERT, 3)
    for index, value in enumerate(expected):
        if len(buf) <= index:
            return "more"
        if buf[index] != value:
            return "no"
    if len(buf) < 7:
        return "more" if len(buf) < 5 or buf[3:5] == b"\0\2" else "no"
    if not 1 <= buf[2] <= 4 or buf[3:5] != b"\0\2" or buf[5] not in (1, FATAL) or buf[6] not in ALERT_NAMES:
        return "no"
    return "alert"


class TlsDissector:
    name = NAME

    def __init__(self) -> None:
        self.verdicts: list[str] = []  # of the last detect(): session() follows it for the same connection

    def detect(self, conn: TcpConn) -> int:
        verdicts = self.verdicts = [_classify(h.buf, h.mid_start) for h in conn.halves]
        for side, verdict in enumerate(verdicts):
            if verdict == "client":
                return side
            if verdict == "server":
                return 1 - side
        if "no" in verdicts:
            return NO
        if "opaque" in verdicts or "alert" in verdicts:
            return conn.client if conn.client is not None else conn.guess_client()
        return MORE

    def session(self, conn: TcpConn, client: int) -> Any:
        opening = self.verdicts
        return TlsSession(conn, client, opaque="opaque" in opening and "client" not in opening)


DISSECTOR = TlsDissector()
