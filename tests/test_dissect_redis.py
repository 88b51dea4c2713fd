"""Redis dissection against tshark 4.0's RESP dissector on captures of a real redis-server and real clients
(tests/captures/dissect/record_db.py): the multisets of (command, key, reply type, error text) must be
equal, tuple by tuple, with the differences docs/protocols.md lists asserted where they occur.

tshark's messages are read from its PDML tree (top-level RESP items in order, per TCP stream and
direction); its partial copies of a reply still being reassembled are left out, as tshark marks them.
"""

from __future__ import annotations

import random
import subprocess
import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from netrecall.dissect.protocols.base import ParseError
from netrecall.dissect.protocols.redis import KEY_COMMANDS, parse_reply
from netrecall.dissect.runner import dissect
from netrecall.ingest.importer import import_files
from netrecall.store import Store
from tests.conftest import CAPTURES, require_tool
from tests.dissect_pcap import Pkt, dissect_file, dissect_packets, read_packets

RECORDED = CAPTURES / "dissect"
RESP2 = RECORDED / "redis_resp2.pcap"
RESP3 = RECORDED / "redis_resp3.pcap"
PASSWORD = "s3cret-pw"  # what record_db.py sends with AUTH
TSHARK_TYPES = {
    "resp.string": "simple",
    "resp.error": "error",
    "resp.integer": "integer",
    "resp.bulk_string": "bulk",
    "resp.array": "array",
}


@dataclass
class Message:
    """One top-level message as tshark dissected it."""

    frame: int
    kind: str  # the PDML field name of the top-level item (resp.array, pgsql, ...)
    fields: dict[str, list[str]] = field(default_factory=dict)  # every field inside it, in order
    values: list[bytes] = field(default_factory=list)  # direct bulk-string children (commands' words)


@dataclass
class Stream:
    client_port: int
    requests: list[Message] = field(default_factory=list)
    replies: list[Message] = field(default_factory=list)


def tshark_messages(path: Path, proto: str, server_port: int, top_level_fields: bool) -> dict[int, Stream]:
    """tshark's messages of `proto` per TCP stream, each direction in order. With `top_level_fields` the
    messages are the proto's top-level fields (RESP puts several in one proto item); otherwise each
    proto item is one message (PostgreSQL)."""
    cmd = [require_tool("tshark"), "-r", str(path), "-T", "pdml", "-Y", proto]
    root = ET.fromstring(subprocess.run(cmd, capture_output=True, check=True).stdout)
    streams: dict[int, Stream] = {}
    for packet in root.iter("packet"):
        frame = int(_field(packet, "num") or 0)
        stream_id = int(_field(packet, "tcp.stream") or 0)
        sport, dport = int(_field(packet, "tcp.srcport") or 0), int(_field(packet, "tcp.dstport") or 0)
        from_server = sport == server_port
        stream = streams.setdefault(stream_id, Stream(dport if from_server else sport))
        for item in packet.findall(f"proto[@name='{proto}']"):
            parts = list(item.findall("field")) if top_level_fields else [item]
            for part in parts:
                if part.find(".//field[@name='resp.reassembled_in_next_frame']") is not None:
                    continue  # tshark's partial copy of a reply still being reassembled
                message = Message(frame, part.get("name") or proto)
                for inner in part.iter("field"):
                    message.fields.setdefault(inner.get("name") or "", []).append(inner.get("show") or "")
                for child in part.findall("field[@name='resp.bulk_string']"):
                    value = child.find("field[@name='resp.bulk_string.value']")
                    message.values.append(
                        bytes.fromhex(value.get("value") or "") if value is not None else b""
                    )
                (stream.replies if from_server else stream.requests).append(message)
    return streams


def _field(packet: ET.Element, name: str) -> str | None:
    found = packet.find(f".//field[@name='{name}']")
    return found.get("show") if found is not None else None


def tshark_command(message: Message) -> tuple[str, str]:
    """(command, key) of a request as tshark shows it; inline commands are 'fragments' to tshark."""
    if message.kind != "resp.array" or not message.values:
        return ("<fragment>", "")
    name = message.values[0].decode().upper()
    key = message.values[1].decode() if name in KEY_COMMANDS and len(message.values) > 1 else ""
    return (name, key)


def tshark_reply(message: Message) -> tuple[str, str]:
    """(type, error text) of a reply as tshark shows it."""
    kind = TSHARK_TYPES.get(message.kind, message.kind)
    return (kind, message.fields.get("resp.error", [""])[0] if kind == "error" else "")


def netrecall_calls(store: Store, path: Path) -> list[dict]:
    import_files(store, [path])
    dissect(store)
    return store.dicts(
        "SELECT protocol, src_port, method, path, status_code, status_message, error_code, redis_type, "
        "status_text, has_response, partial, error, response_messages, request_body, response_body, "
        "request_body_size, response_body_size, elapsed_time FROM api_calls FINAL ORDER BY ts"
    )


def _streams_with(streams: dict[int, Stream], *commands: str) -> set[int]:
    return {
        s.client_port for s in streams.values() if any(tshark_command(m)[0] in commands for m in s.requests)
    }


def test_resp2_same_calls_as_tshark(store: Store) -> None:
    calls = [c for c in netrecall_calls(store, RESP2) if c["protocol"] == "redis"]
    streams = tshark_messages(RESP2, "resp", 6379, top_level_fields=True)
    # where a reply answers exactly one command (no pub/sub, no CLIENT REPLY OFF, no inline, no garbage),
    # the n-th reply pairs with the n-th command on both sides: compare whole tuples
    special = _streams_with(streams, "SUBSCRIBE", "CLIENT", "<fragment>")
    expected: Counter = Counter()
    for stream in streams.values():
        if stream.client_port in special:
            continue
        assert len(stream.requests) == len(stream.replies)
        for request, reply in zip(stream.requests, stream.replies, strict=True):
            expected[(*tshark_command(request), *tshark_reply(reply))] += 1
    ours = Counter(
        (c["method"], c["path"], c["redis_type"], c["status_message"])
        for c in calls
        if c["src_port"] not in special
    )
    assert ours == expected
    assert sum(expected.values()) >= 35

    # pub/sub and CLIENT REPLY: the commands, and every server message (a reply made of several
    # confirmations counts each; a push is a row of its own), as multisets per direction
    for port in special:
        stream = next(s for s in streams.values() if s.client_port == port)
        rows = [c for c in calls if c["src_port"] == port]
        if any(tshark_command(m)[0] == "<fragment>" for m in stream.requests):
            continue  # inline commands: asserted in test_inline_commands
        assert Counter(tshark_command(m) for m in stream.requests) == Counter(
            (c["method"], c["path"]) for c in rows if c["status_text"] != "push"
        )
        theirs = Counter(tshark_reply(m) for m in stream.replies)
        ours_replies: Counter = Counter()
        for c in rows:
            if c["has_response"]:
                ours_replies[(c["redis_type"], c["status_message"])] += c["response_messages"]
        assert ours_replies == theirs


def test_pubsub_pairing(store: Store) -> None:
    """SUBSCRIBE to two channels takes both confirmations, pushed messages are rows of their own, PING in
    subscribed mode and the GET after UNSUBSCRIBE (two confirmations) still get their own replies."""
    calls = netrecall_calls(store, RESP2)
    port = next(c["src_port"] for c in calls if c["method"] == "SUBSCRIBE")
    rows = [
        (c["method"], c["path"], c["redis_type"], c["response_messages"])
        for c in calls
        if c["src_port"] == port
    ]
    # commands and pushes sent in one segment share a time: compared as a multiset
    assert Counter(rows) == Counter(
        [
            ("SUBSCRIBE", "", "array", 2),
            ("MESSAGE", "news", "array", 1),
            ("MESSAGE", "alerts", "array", 1),
            ("PING", "", "array", 1),
            ("PSUBSCRIBE", "", "array", 1),
            ("MESSAGE", "news", "array", 1),
            ("PMESSAGE", "news", "array", 1),
            ("UNSUBSCRIBE", "", "array", 2),
            ("PUNSUBSCRIBE", "", "array", 1),
            ("GET", "counter", "bulk", 1),
        ]
    )
    assert all(c["status_text"] == "push" for c in calls if c["method"] in ("MESSAGE", "PMESSAGE"))


def test_client_reply_off_and_skip(store: Store) -> None:
    calls = netrecall_calls(store, RESP2)
    port = next(c["src_port"] for c in calls if c["method"] == "CLIENT")
    rows = Counter((c["method"], c["path"], c["has_response"]) for c in calls if c["src_port"] == port)
    assert rows == Counter(
        [
            ("CLIENT", "", False),  # REPLY SKIP is not answered, nor is the command after it
            ("SET", "quiet:1", False),
            ("CLIENT", "", False),  # REPLY OFF
            ("SET", "quiet:2", False),
            ("CLIENT", "", True),  # REPLY ON: +OK
            ("GET", "quiet:2", True),
        ]
    )


def test_inline_commands(store: Store) -> None:
    """Inline commands (a plain line): tshark 4.0 shows them as undecoded fragments; netrecall parses them
    and pairs them with the replies tshark does decode."""
    calls = netrecall_calls(store, RESP2)
    streams = tshark_messages(RESP2, "resp", 6379, top_level_fields=True)
    inline = next(s for s in streams.values() if tshark_command(s.requests[0])[0] == "<fragment>")
    assert all(m.kind == "resp.fragment" for m in inline.requests)  # the documented difference
    rows = [c for c in calls if c["src_port"] == inline.client_port]
    assert [(c["method"], c["path"]) for c in rows] == [
        ("PING", ""),
        ("SET", "inline:key"),
        ("EXISTS", "inline:key"),
        ("INCR", "inline:key"),
    ]
    assert [(c["redis_type"], c["status_message"]) for c in rows] == [tshark_reply(m) for m in inline.replies]
    assert [c["request_body_size"] for c in rows] == [6, 22, 19, 17]  # the lines with their CRLF


def test_errors_sizes_and_redaction(store: Store) -> None:
    calls = netrecall_calls(store, RESP2)
    by_method = {(c["method"], c["path"]): c for c in calls}
    wrongtype = by_method[("GET", "queue")]
    assert (wrongtype["status_code"], wrongtype["error_code"]) == (1, "WRONGTYPE")
    assert wrongtype["status_message"].startswith("WRONGTYPE Operation against a key")
    unknown = by_method[("NOSUCHCOMMAND", "")]
    assert (unknown["status_code"], unknown["error_code"]) == (1, "ERR")
    assert by_method[("SET", "user:1")]["response_body"] == "+OK\r\n"  # the store gives text
    assert by_method[("SET", "user:1")]["response_body_size"] == 5
    big = by_method[("GET", "big:value")]
    assert big["response_body_size"] == 3000 + len(b"$3000\r\n\r\n")
    assert big["response_body"].startswith("$3000\r\nvvv") and len(big["response_body"]) == 256
    auth = by_method[("AUTH", "")]
    assert auth["request_body"] == "AUTH (redacted)"
    everything = store.dicts("SELECT * FROM api_calls")
    assert PASSWORD not in repr(everything)
    assert all(c["elapsed_time"] >= 0 for c in calls)
    ok = [c for c in calls if c["protocol"] == "redis" and c["has_response"] and c["status_text"] != "push"]
    assert all(c["elapsed_time"] > 0 for c in ok if c["method"])


def test_garbage_on_the_port_is_flagged(store: Store) -> None:
    """'*zz' and binary bytes: a flagged tcp row and a parse error, the server's protocol error reply kept;
    tshark shows an empty array and a fragment there (frame of the garbage stream)."""
    import_files(store, [RESP2])
    summary = dissect(store)
    assert summary.parse_errors.get("redis") == 1
    flagged = store.dicts("SELECT protocol, error, partial FROM api_calls FINAL WHERE error != ''")
    assert flagged == [{"protocol": "tcp", "error": "redis: bad multibulk length b'*zz'", "partial": True}]
    orphan = store.dicts(
        "SELECT status_message FROM api_calls FINAL WHERE method = '' AND protocol = 'redis'"
    )
    assert orphan == [{"status_message": "ERR Protocol error: invalid multibulk length"}]


def _garbage_connection(rng: random.Random, start_ts: int, port: int, count: int) -> list[Pkt]:
    client, server = (
        b"\0" * 10 + b"\xff\xff" + bytes([10, 79, 0, 9]),
        b"\0" * 10 + b"\xff\xff" + bytes([10, 79, 0, 2]),
    )
    packets = [Pkt(start_ts, client, server, 6, 40000, port, 0x02, 1000, b"")]
    seq, ts = 1001, start_ts
    for _ in range(count):
        ts += 1_000_000
        data = rng.randbytes(rng.randrange(1, 300))
        packets.append(Pkt(ts, client, server, 6, 40000, port, 0x18, seq, data))
        seq += len(data)
    return packets


def _redis_tuples(calls: list[dict]) -> Counter:
    return Counter(
        (c["src_port"], c.get("method"), c.get("path"), c.get("redis_type"), c.get("status_message"))
        for c in calls
        if c["protocol"] == "redis"
    )


def test_garbage_costs_nothing_elsewhere() -> None:
    """Random bytes on a second connection to the Redis port, interleaved in time with the real capture:
    every real call is still there, the garbage is flagged, nothing raises."""
    packets = read_packets(RESP2)
    clean = dissect_packets(packets)
    rng = random.Random(14)
    noisy = dissect_packets(packets + _garbage_connection(rng, packets[0].ts, 6379, 40), chunks=3)
    assert _redis_tuples(noisy.calls) - _redis_tuples(clean.calls) == Counter()
    assert _redis_tuples(clean.calls) - _redis_tuples(noisy.calls) == Counter()
    garbage = [c for c in noisy.calls if c["src_port"] == 40000]
    assert garbage and all(c["protocol"] == "tcp" and c["error"] for c in garbage)
    assert not any("parser failure" in (c.get("error") or "") for c in noisy.calls)


def test_mid_connection_start() -> None:
    """A capture starting in the middle of redis-cli's session: the calls after the cut are found again with
    their replies (the first one flagged partial), nothing before it is invented."""
    packets = read_packets(RESP2)
    full = dissect_packets(packets)
    cut_ts = packets[40].ts
    cut = dissect_packets([p for p in packets if p.ts >= cut_ts])
    expected = [c for c in full.calls if c["protocol"] == "redis" and c["ts"] >= cut_ts]
    later = [c for c in cut.calls if c["protocol"] == "redis"]
    key = _redis_tuples
    assert key(later) - key(expected) == Counter()  # no call made up
    missing = key(expected) - key(later)
    assert sum(missing.values()) <= 1  # at most the call cut in half
    assert any(c["partial"] for c in later)


def test_resp3_types_and_pushes(store: Store) -> None:
    calls = netrecall_calls(store, RESP3)
    types = [c["redis_type"] for c in calls if c["method"] == "DEBUG"]
    assert types == [
        "map",
        "set",
        "double",
        "bignum",
        "null",
        "boolean",
        "boolean",
        "verbatim",
        "attribute",
        "bulk",
    ]
    hello = [c for c in calls if c["method"] == "HELLO"]
    assert hello and all(c["redis_type"] == "map" for c in hello)
    by_command = {(c["method"], c["path"]): c["redis_type"] for c in calls if c["status_text"] != "push"}
    assert by_command[("HGETALL", "profile:2")] == "map"
    assert by_command[("SMEMBERS", "colors")] == "set"
    assert by_command[("ZSCORE", "scores")] == "double"
    assert by_command[("GET", "nothing:here")] == "null"
    assert by_command[("INCR", "colors")] == "error"
    # '>' pushes: rows of their own, never a command's reply (the PING sent while a message was pushed)
    pushes = [(c["method"], c["path"]) for c in calls if c["status_text"] == "push"]
    assert Counter(pushes) == Counter(
        {("MESSAGE", "events"): 2, ("INVALIDATE", ""): 1, ("SERVER-CPU-USAGE", "42"): 1}
    )
    ping = next(c for c in calls if c["method"] == "PING")
    assert (ping["redis_type"], ping["response_body"]) == ("bulk", "$6\r\nduring\r\n")
    subscribe = next(c for c in calls if c["method"] == "SUBSCRIBE")
    assert subscribe["redis_type"] == "push" and subscribe["has_response"]
    # the commands tshark decodes (RESP3 replies are fragments to tshark 4.0: documented)
    streams = tshark_messages(RESP3, "resp", 6379, top_level_fields=True)
    theirs = Counter(tshark_command(m) for s in streams.values() for m in s.requests)
    assert theirs == Counter((c["method"], c["path"]) for c in calls if c["status_text"] != "push")
    assert not [c for c in calls if c["error"] or c["partial"]]


def test_detection_leaves_other_protocols_alone() -> None:
    """The HTTP and DNS test captures give no redis or postgresql rows (their tshark comparisons in
    tests/test_dissect_tshark.py keep passing with these dissectors registered)."""
    for path in sorted(RECORDED.glob("http_*.pcap")) + sorted(RECORDED.glob("dns_*.pcap")):
        protocols = {c["protocol"] for c in dissect_file(path).calls}
        assert not protocols & {"redis", "postgresql"}, path.name


@settings(max_examples=150, deadline=None)
@given(
    requests=st.lists(st.binary(max_size=80), max_size=6),
    replies=st.lists(st.binary(max_size=80), max_size=6),
    prefix=st.sampled_from([b"", b"*1\r\n$4\r\nPING\r\n", b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n"]),
)
def test_fuzzed_streams_never_break_the_run(
    requests: list[bytes], replies: list[bytes], prefix: bytes
) -> None:
    """Arbitrary bytes after a valid start, both ways: rows or parse errors, never a parser failure."""
    client, server = (
        b"\0" * 10 + b"\xff\xff" + bytes([10, 79, 0, 9]),
        b"\0" * 10 + b"\xff\xff" + bytes([10, 79, 0, 2]),
    )
    packets = [
        Pkt(1, client, server, 6, 40001, 6379, 0x02, 0, b""),
        Pkt(2, server, client, 6, 6379, 40001, 0x12, 0, b""),
    ]
    seqs = {40001: 1, 6379: 1}
    ts = 10
    for index, data in enumerate([prefix, *requests]):
        for sender, payload in (
            (40001, data),
            (6379, replies[index] if index < len(replies) else b"+OK\r\n"),
        ):
            if not payload:
                continue
            src, dst = (client, server) if sender == 40001 else (server, client)
            ts += 1000
            receiver = 6379 if sender == 40001 else 40001
            packets.append(Pkt(ts, src, dst, 6, sender, receiver, 0x18, seqs[sender], payload))
            seqs[sender] += len(payload)
    ctx = dissect_packets(packets, chunks=2)
    assert not any("parser failure" in (c.get("error") or "") for c in ctx.calls)


def _bulk(value: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(value), value)


@settings(max_examples=300, deadline=None)
@given(
    runs=st.lists(
        st.tuples(st.integers(0, 12), st.integers(1, 40)), min_size=1, max_size=5
    ),  # (element size, how many in a row)
    damaged=st.integers(0, 10_000),
    cut=st.integers(0, 10_000),
)
def test_aggregate_walk_with_runs_of_equal_lengths(
    runs: list[tuple[int, int]], damaged: int, cut: int
) -> None:
    """A list reply whose elements come in runs of one length (walked a byte column at a time) ends
    exactly where it ends, keeps its first elements, is incomplete at every cut and breaks on a missing
    CRLF at any element, as the element-by-element walk does."""
    rng = random.Random(damaged)
    values = [
        bytes(rng.choice(b"ab$*\r\n") for _ in range(size)) for size, count in runs for _ in range(count)
    ]
    elements = [_bulk(v) for v in values]
    reply = b"*%d\r\n" % len(values) + b"".join(elements)
    following = b"*2\r\n" + elements[0] * 2  # a next reply that starts like this one's elements
    parsed = parse_reply(bytearray(reply + following), 0)
    assert parsed is not None and parsed.end == len(reply)
    assert parsed.head == values[:3]
    assert parse_reply(bytearray(reply[: 1 + cut % (len(reply) - 1)]), 0) is None
    index = damaged % len(values)
    crlf = len(b"*%d\r\n" % len(values)) + sum(map(len, elements[: index + 1])) - 2
    broken = bytearray(reply)
    broken[crlf] = ord("x")
    with pytest.raises(ParseError, match="not followed by CRLF"):
        parse_reply(broken, 0)
