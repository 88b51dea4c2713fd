"""HTTP/2 and gRPC dissection against tshark's on real captures, and what becomes of damaged ones.

The captures come from tests/captures/dissect/record_http2.py: nghttpd (prior knowledge, padding,
CONTINUATION, concurrent streams, server push), hypercorn behind curl's h2c upgrade, and a grpcio server
and client (unary, streaming both ways, failing, deadline, cancelled calls). Each is imported with the real
importer into the embedded store and dissected by the real runner; tshark 4.0 reads the same file
(`-T json`) and the per-stream tuples of both must be equal as multisets:
(client port, method, path, status, request and response DATA bytes, gRPC messages each way,
grpc-message, reset code).

Damaged copies (a capture cut to start mid-connection, a corrupted HPACK block, garbage frames, a
truncated end) are written with dpkt and go through the same importer and runner.
"""

from __future__ import annotations

import json
import subprocess
from collections import Counter
from pathlib import Path
from urllib.parse import unquote

import dpkt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from netrecall.dissect.protocols.http2 import ERROR_CODES, PREFACE
from netrecall.dissect.runner import dissect
from netrecall.ingest.importer import import_files
from netrecall.store import Store
from tests.conftest import CAPTURES, require_tool
from tests.dissect_pcap import Pkt, dissect_packets

RECORDED = CAPTURES / "dissect"
# capture -> (server port, what tshark is told the port speaks: http for the h2c upgrade, else http2)
CAPTURES_H2 = {
    "h2c_nghttpd.pcap": (8081, "http2"),
    "h2c_upgrade.pcap": (8082, "http"),
    "grpc_calls.pcap": (50051, "http2"),
}
CALL_COLUMNS = (
    "protocol, method, url, host, status_code, status_text, has_response, partial, error, error_code, "
    "request_body_size, response_body_size, request_messages, response_messages, status_message, "
    "grpc_method, grpc_status, http_version, src_port, elapsed_time, request_headers, response_headers, "
    "request_body, response_body, id, ts, path, query_string, request_body_truncated, response_body_truncated"
)
BYTES = {"request_body": "bytes", "response_body": "bytes"}


# --- tshark's side ------------------------------------------------------------------------------------
def _as_list(value: object) -> list:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def tshark_packets(path: Path, port: int, proto: str) -> list[dict]:
    cmd = [
        require_tool("tshark"),
        "-r",
        str(path),
        "-d",
        f"tcp.port=={port},{proto}",
        "-Y",
        "http2 || http",
        "-T",
        "json",
        "--no-duplicate-keys",
        "-J",
        "tcp http http2 grpc",
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return [packet["_source"]["layers"] for packet in json.loads(out)]


class _TsharkStream:
    def __init__(self) -> None:
        self.request: dict[str, str] = {}
        self.response: dict[str, str] = {}
        self.sizes = [0, 0]
        self.messages = [0, 0]
        self.server_ended = False
        self.reset: str | None = None
        self.seen_response = False


def tshark_calls(path: Path) -> Counter:
    """Per HTTP/2 stream: (client port, method, url, status, DATA bytes each way, gRPC messages each way,
    grpc-message, reset code). The h2c upgrade request (HTTP/1.1, answered 101) is stream 1's request."""
    port, proto = CAPTURES_H2[path.name]
    streams: dict[tuple[int, int], _TsharkStream] = {}
    upgrades: dict[int, dict[str, str]] = {}
    for layers in tshark_packets(path, port, proto):
        tcp = layers["tcp"]
        from_server = int(tcp["tcp.srcport"]) == port
        client_port = int(tcp["tcp.dstport"] if from_server else tcp["tcp.srcport"])
        http = layers.get("http")
        if http and not from_server:
            for message in _as_list(http):
                for value in message.values():
                    if isinstance(value, dict) and "http.request.method" in value:
                        upgrades[client_port] = {
                            ":method": value["http.request.method"],
                            ":path": value["http.request.uri"],
                        }
        data_streams = []
        for layer in _as_list(layers.get("http2")):
            for frame in _as_list(layer.get("http2.stream")):
                _tshark_frame(streams, upgrades, client_port, from_server, frame, data_streams)
        grpc = _as_list(layers.get("grpc"))
        if grpc:
            targets = set(data_streams)
            assert len(targets) == 1, f"gRPC messages of several streams in one packet: {targets}"
            streams[targets.pop()].messages[1 if from_server else 0] += len(grpc)
    result: Counter = Counter()
    for (client_port, _sid), s in streams.items():
        content_type = s.request.get("content-type") or s.response.get("content-type") or ""
        is_grpc = content_type.startswith("application/grpc")
        if is_grpc:
            status = int(s.response["grpc-status"]) if "grpc-status" in s.response else None
        else:
            status = int(s.response[":status"]) if ":status" in s.response else None
        message = unquote(s.response.get("grpc-message", "")) if is_grpc else ""
        result[
            (
                client_port,
                s.request.get(":method"),
                s.request.get(":path"),
                status,
                s.sizes[0],
                s.sizes[1],
                s.messages[0] if is_grpc else 0,
                s.messages[1] if is_grpc else 0,
                message,
                # a reset after which the server still ended its response is no error (docs/protocols.md)
                None if s.server_ended else s.reset,
            )
        ] += 1
    return result


def _tshark_frame(
    streams: dict, upgrades: dict, client_port: int, from_server: bool, frame: dict, data_streams: list
) -> None:
    if "http2.type" not in frame:
        return  # the connection preface
    ftype, sid = int(frame["http2.type"]), int(frame["http2.streamid"])
    if sid == 0 or ftype not in (0, 1, 3, 5, 9):
        return  # PRIORITY and WINDOW_UPDATE on a stream do not make it a call (nghttp's idle streams)
    if ftype == 5:  # PUSH_PROMISE: the promised stream's request
        sid = int(frame["http2.push_promise.promised_stream_id"])
    s = streams.get((client_port, sid))
    if s is None:
        s = streams[(client_port, sid)] = _TsharkStream()
        if sid == 1 and client_port in upgrades:
            s.request.update(upgrades[client_port])
    end_stream = frame.get("http2.flags_tree", {}).get("http2.flags.end_stream") == "1"
    if ftype == 0:
        length = int(frame["http2.length"])
        if frame.get("http2.flags_tree", {}).get("http2.flags.padded") == "1":
            length -= 1 + int(frame["http2.pad_length"])
        s.sizes[1 if from_server else 0] += length
        data_streams.append((client_port, sid))
    elif ftype in (1, 5, 9):
        headers = s.request if ftype == 5 or not from_server else s.response
        pairs = [
            (h["http2.header.name"], h.get("http2.header.value", ""))
            for h in _as_list(frame.get("http2.header"))
        ]
        if from_server and ftype == 1 and any(n == ":status" and v.startswith("1") for n, v in pairs):
            return  # interim response
        for name, value in pairs:
            headers.setdefault(name, value)
    elif ftype == 3 and s.reset is None:
        s.reset = ERROR_CODES[int(frame["http2.rst_stream.error"])]
    if end_stream and from_server and ftype != 5:
        s.server_ended = True


# --- netrecall's side ---------------------------------------------------------------------------------
def netrecall_rows(store: Store, path: Path, summaries: list | None = None) -> list[dict]:
    import_files(store, [path])
    summary = dissect(store)
    if summaries is not None:
        summaries.append(summary)
    return store.dicts(f"SELECT {CALL_COLUMNS} FROM api_calls FINAL ORDER BY ts", column_formats=BYTES)


def _empty(store: Store) -> None:
    for table in ("packets", "api_calls", "dissect_state"):
        store.command(f"TRUNCATE TABLE {table}")


def netrecall_calls(rows: list[dict]) -> Counter:
    result: Counter = Counter()
    for c in rows:
        if c["protocol"] not in ("http", "grpc"):
            continue
        is_grpc = c["protocol"] == "grpc"
        status = c["status_code"] if c["has_response"] and not c["error_code"] else None
        if is_grpc and c["error_code"]:
            status = None  # reset without trailers: tshark has no status there (compared on its own below)
        result[
            (
                c["src_port"],
                c["method"] or None,
                c["url"] or None,
                status,
                c["request_body_size"],
                c["response_body_size"],
                c["request_messages"],
                c["response_messages"],
                c["status_message"],
                c["error_code"] or None,
            )
        ] += 1
    return result


@pytest.mark.parametrize("name", sorted(CAPTURES_H2))
def test_same_streams_as_tshark(store: Store, name: str) -> None:
    path = RECORDED / name
    rows = netrecall_rows(store, path)
    expected = tshark_calls(path)
    assert expected, "tshark found no HTTP/2 stream: the capture is not what this test expects"
    assert netrecall_calls(rows) == expected
    calls = [c for c in rows if c["protocol"] in ("http", "grpc")]
    assert not [c for c in calls if c["error"] or c["partial"]]
    assert {c["http_version"] for c in calls} == {"HTTP/2.0"}
    assert not [c for c in rows if c["protocol"] == "tcp" and c["has_response"]]  # nothing left unparsed


def test_nghttpd_capture_covers_the_cases(store: Store) -> None:
    """Padding, CONTINUATION, concurrent streams, push, 404, POST body, a body in many DATA frames."""
    path = RECORDED / "h2c_nghttpd.pcap"
    rows = [c for c in netrecall_rows(store, path) if c["protocol"] == "http"]
    by_url = Counter((c["method"], c["url"], c["status_code"]) for c in rows)
    assert by_url[("GET", "/missing", 404)] == 1 and by_url[("GET", "/nothere", 404)] == 1
    assert ("GET", "/data.json?x=1&y=two", 200) in by_url
    post = next(c for c in rows if c["method"] == "POST")
    assert post["request_body_size"] == 5120 and post["request_body"] == bytes(range(256)) * 20
    assert post["response_body"].startswith(b'{"items"')
    big = [c for c in rows if c["url"] == "/big.txt"]
    assert len(big) == 2 and all(c["response_body_size"] == 80_000 for c in big)
    assert all(len(c["response_body"]) == 64 * 1024 and c["response_body_truncated"] for c in big)
    pushed = next(c for c in rows if c["url"] == "/style.css")
    assert pushed["status_code"] == 200 and pushed["response_body_size"] == 440
    # nghttp's three concurrent streams share one connection; --continuation adds a long header
    nghttp = [c for c in rows if c["request_headers"].get("user-agent", "").startswith("nghttp2")]
    assert len({c["src_port"] for c in nghttp if c["url"] != "/style.css"}) == 2
    assert any(len(v) > 4000 for c in nghttp for v in c["request_headers"].values())
    for c in rows:
        assert c["host"] == "10.78.0.2:8081"
        assert c["path"] == c["url"].split("?")[0] and c["status_text"] in ("OK", "Not Found")
        assert c["elapsed_time"] > 0 or c["url"] == "/style.css"
    assert padded_frames(path) > 0


def padded_frames(path: Path) -> int:
    """DATA/HEADERS frames sent with padding (the capture's nghttp and nghttpd pad: -b)."""
    packets = tshark_packets(path, 8081, "http2")
    return sum(
        1
        for layers in packets
        for layer in _as_list(layers.get("http2"))
        for frame in _as_list(layer.get("http2.stream"))
        if frame.get("http2.flags_tree", {}).get("http2.flags.padded") == "1"
    )


def test_upgrade_is_one_call_on_stream_1(store: Store) -> None:
    rows = netrecall_rows(store, RECORDED / "h2c_upgrade.pcap")
    calls = [c for c in rows if c["protocol"] == "http"]
    assert [(c["method"], c["url"], c["status_code"]) for c in calls] == [
        ("GET", "/index.html?via=upgrade", 200),
        ("GET", "/missing", 404),
        ("GET", "/big.txt", 200),
    ]
    first = calls[0]
    assert first["request_headers"]["upgrade"] == "h2c"  # the HTTP/1.1 request's own headers
    assert first["response_headers"][":status"] == "200" and first["host"] == "10.78.0.2:8082"
    assert len({c["src_port"] for c in calls}) == 1
    # curl resets streams 1 and 3 (STREAM_CLOSED) once it has read their bodies, before hypercorn's
    # final empty DATA frame (END_STREAM) arrives: complete calls, no error_code (docs/protocols.md)
    resets = [
        (int(frame["http2.streamid"]), frame["http2.rst_stream.error"])
        for layers in tshark_packets(RECORDED / "h2c_upgrade.pcap", 8082, "http")
        for layer in _as_list(layers.get("http2"))
        for frame in _as_list(layer.get("http2.stream"))
        if frame.get("http2.type") == "3"
    ]
    assert resets == [(1, "5"), (3, "5")]
    assert not [c for c in calls if c["error_code"] or c["partial"]]


def test_grpc_columns(store: Store) -> None:
    rows = [c for c in netrecall_rows(store, RECORDED / "grpc_calls.pcap") if c["protocol"] == "grpc"]
    by_method: dict[str, list[dict]] = {}
    for c in rows:
        assert c["method"] == "POST" and c["grpc_method"] == c["url"] == c["path"]
        assert c["grpc_status"] == c["status_code"]
        by_method.setdefault(c["url"].rsplit("/", 1)[1], []).append(c)
    summary = {
        name: [
            (c["status_code"], c["status_text"], c["request_messages"], c["response_messages"]) for c in calls
        ]
        for name, calls in by_method.items()
    }
    assert summary == {
        "Echo": [(0, "OK", 1, 1)] * 3,
        "CountUp": [(0, "OK", 1, 4)],
        "Total": [(0, "OK", 3, 1)],
        "Chat": [(0, "OK", 2, 2)],
        "Lookup": [(5, "NOT_FOUND", 1, 0)],
        "Unavailable": [(14, "UNAVAILABLE", 1, 1)],
        "Slow": [(4, "DEADLINE_EXCEEDED", 1, 0)],  # the client reset when its grpc-timeout ran out
        "Missing": [(12, "UNIMPLEMENTED", 1, 0)],  # trailers-only
        "Forever": [(1, "CANCELLED", 1, 3)],  # the client cancelled after three messages
    }
    lookup = by_method["Lookup"][0]
    assert lookup["status_message"] == "no such item: café 50% off"  # percent-decoded
    assert lookup["response_headers"]["grpc-message"] == "no such item: caf%C3%A9 50%25 off"
    assert by_method["Unavailable"][0]["status_message"] == "backend down"
    slow, forever = by_method["Slow"][0], by_method["Forever"][0]
    assert (slow["error_code"], slow["has_response"]) == ("CANCEL", False)
    assert (forever["error_code"], forever["has_response"]) == ("CANCEL", True)
    big = by_method["Echo"][1]
    assert big["request_body_size"] == 20_005 and big["response_body_size"] == 20_010
    assert big["request_body"] == b"\0" + (20_000).to_bytes(4, "big") + b"x" * 20_000
    assert all(c["elapsed_time"] > 0 for c in rows if c["has_response"])
    assert by_method["Slow"][0]["elapsed_time"] == 0  # no response


# --- damaged captures ---------------------------------------------------------------------------------
def _read(path: Path) -> list[tuple[float, bytes]]:
    with open(path, "rb") as fh:
        return list(dpkt.pcap.Reader(fh))


def _write(path: Path, records: list[tuple[float, bytes]]) -> Path:
    with open(path, "wb") as fh:
        writer = dpkt.pcap.Writer(fh)
        for ts, frame in records:
            writer.writepkt(frame, ts)
    return path


def _tcp(frame: bytes) -> dpkt.tcp.TCP:
    return dpkt.ethernet.Ethernet(frame).data.data


def _replace_payload(frame: bytes, payload: bytes) -> bytes:
    """The same frame with a TCP payload of the same length replaced (checksums are not checked)."""
    eth = dpkt.ethernet.Ethernet(frame)
    assert len(payload) == len(eth.data.data.data)
    eth.data.data.data = payload
    return bytes(eth)


def _by_id(rows: list[dict]) -> dict[str, dict]:
    return {c["id"]: c for c in rows}


def test_capture_started_mid_connection(store: Store, tmp_path: Path) -> None:
    """Cut inside the gRPC connection: calls whose header blocks reference table entries from before
    the cut are partial with what is known (never with another entry's value); the rest is complete."""
    path = RECORDED / "grpc_calls.pcap"
    full = _by_id(netrecall_rows(store, path))
    records = _read(path)
    # start right before the request of the CountUp call (stream 5): its :path is a new literal, but
    # every other field refers to entries the first two calls added to the dynamic table
    cut = next(i for i, (_, f) in enumerate(records) if b"/demo.v1.Items/CountUp" in bytes(_tcp(f).data))
    _empty(store)
    rows = netrecall_rows(store, _write(tmp_path / "cut.pcap", records[cut:]))
    calls = [c for c in rows if c["protocol"] in ("http", "grpc")]
    assert len(calls) == len([c for c in full.values() if c["protocol"] == "grpc"]) - 2
    assert not [c for c in rows if c["error"]]  # a loss, not a protocol error
    for call in calls:
        original = full.get(call["id"])
        assert original is not None, f"{call['url']!r}: a call the full capture does not have"
        for column in ("method", "url", "status_code", "status_message", "request_body_size"):
            if call[column] not in ("", 0):  # known values are the true ones
                if column == "status_code" and call["protocol"] != original["protocol"]:
                    # neither content-type nor path survived: an HTTP/2 call with its :status (200)
                    assert call["partial"] and not call["url"] and call["status_code"] == 200
                    continue
                assert call[column] == original[column], column
        for name, value in call["request_headers"].items():
            assert original["request_headers"][name] == value
        assert call["partial"] or call["request_headers"] == original["request_headers"]
    # new literals (each method's :path, grpc-message, a new grpc-timeout) are read; what indexed entries
    # from before the cut stays unknown, and the call says so
    salvaged = [c for c in calls if c["partial"] and c["url"]]
    assert len(salvaged) >= 6 and all(c["protocol"] == "grpc" for c in salvaged)
    assert {c["status_text"] for c in calls if c["url"].endswith("/Lookup")} == {"NOT_FOUND"}
    assert all(c["request_messages"] == full[c["id"]]["request_messages"] for c in salvaged)


def _client_stream_offsets(records: list[tuple[float, bytes]], port: int) -> list[tuple[int, int, int]]:
    """(record index, client port, stream offset of the payload's first byte) for client payloads."""
    sent: dict[int, int] = {}
    out = []
    for index, (_, frame) in enumerate(records):
        tcp = _tcp(frame)
        if tcp.dport != port or not tcp.data:
            continue
        offset = sent.get(tcp.sport, 0)
        out.append((index, tcp.sport, offset))
        sent[tcp.sport] = offset + len(tcp.data)
    return out


def _corrupt_headers(records: list[tuple[float, bytes]], port: int, client_port: int, nth: int, junk: bytes):
    """Overwrite the start of the nth HEADERS frame's block the client sent on one connection."""
    records = list(records)
    stream = bytearray()
    where = []
    for index, sport, offset in _client_stream_offsets(records, port):
        if sport == client_port:
            where.append((index, offset))
            stream += bytes(_tcp(records[index][1]).data)
    pos, seen = len(PREFACE), 0
    while pos + 9 <= len(stream):
        length = int.from_bytes(stream[pos : pos + 3], "big")
        if stream[pos + 3] == 1:
            if seen == nth:
                break
            seen += 1
        pos += 9 + length
    flags = stream[pos + 4]
    block = pos + 9 + (1 if flags & 0x8 else 0) + (5 if flags & 0x20 else 0)
    stream[block : block + len(junk)] = junk
    for index, offset in where:
        tcp = _tcp(records[index][1])
        payload = bytes(stream[offset : offset + len(tcp.data)])
        if payload != bytes(tcp.data):
            records[index] = (records[index][0], _replace_payload(records[index][1], payload))
    return records


def test_corrupt_hpack_block(store: Store, tmp_path: Path) -> None:
    """An index no table holds, on a decoder in sync: a parse error and a flagged row for that stream;
    every other connection of the capture is dissected exactly as before."""
    path = RECORDED / "h2c_nghttpd.pcap"
    full = netrecall_rows(store, path)
    target = next(c for c in full if c["url"] == "/data.json?x=1&y=two")
    records = _corrupt_headers(_read(path), 8081, target["src_port"], 0, b"\xff\xff\xff\x0f")
    _empty(store)
    summaries: list = []
    rows = netrecall_rows(store, _write(tmp_path / "corrupt.pcap", records), summaries)
    assert summaries[0].parse_errors == {"http": 1}
    broken = [c for c in rows if c["src_port"] == target["src_port"]]
    assert len(broken) == 1
    assert broken[0]["partial"] and broken[0]["error"].startswith("http2: HPACK")
    assert broken[0]["method"] == "" and broken[0]["status_code"] == 200  # the answer still decodes
    assert broken[0]["response_body_size"] == target["response_body_size"]
    others = [c for c in rows if c["src_port"] != target["src_port"]]
    assert _without_times(others) == _without_times([c for c in full if c["src_port"] != target["src_port"]])


def _without_times(rows: list[dict]) -> list[tuple]:
    return sorted((c["id"], c["url"], c["status_code"], c["partial"], c["response_body_size"]) for c in rows)


def test_garbage_frames_and_truncated_end(store: Store, tmp_path: Path) -> None:
    """A frame header overwritten with garbage: parse error, a flagged tcp row, the direction
    resynchronises; a connection cut before its last response ends is a partial call; neither costs
    another connection a call."""
    path = RECORDED / "h2c_nghttpd.pcap"
    full = netrecall_rows(store, path)
    records = _read(path)
    victim = next(c for c in full if c["url"] == "/missing")
    # the client's last payload on that connection starts with a frame header (GOAWAY or WINDOW_UPDATE)
    index = [i for i, sport, _ in _client_stream_offsets(records, 8081) if sport == victim["src_port"]][-1]
    data = bytes(_tcp(records[index][1]).data)
    records[index] = (records[index][0], _replace_payload(records[index][1], b"\xfe" * len(data)))
    # and the response of /big.txt (curl's connection) loses its last packets
    big = next(c for c in full if c["url"] == "/big.txt")
    server_packets = [
        i for i, (_, f) in enumerate(records) if _tcp(f).sport == 8081 and _tcp(f).dport == big["src_port"]
    ]
    drop = {i for i in server_packets if _tcp(records[i][1]).data}
    drop = set(sorted(drop)[-2:])
    records = [r for i, r in enumerate(records) if i not in drop]
    _empty(store)
    summaries: list = []
    rows = netrecall_rows(store, _write(tmp_path / "garbage.pcap", records), summaries)
    assert summaries[0].parse_errors == {"http": 1}
    flagged = [c for c in rows if c["protocol"] == "tcp" and c["src_port"] == victim["src_port"]]
    assert len(flagged) == 1 and flagged[0]["error"].startswith("http2: ") and flagged[0]["partial"]
    missing = next(c for c in rows if c["url"] == "/missing")
    assert missing["status_code"] == 404 and not missing["error"]
    cut = next(c for c in rows if c["url"] == "/big.txt" and c["src_port"] == big["src_port"])
    assert cut["partial"] and cut["has_response"] and cut["response_body_size"] < 80_000
    untouched = {victim["src_port"], big["src_port"]}
    assert _without_times([c for c in rows if c["src_port"] not in untouched]) == _without_times(
        [c for c in full if c["src_port"] not in untouched]
    )


def test_declined_upgrade_stays_http1() -> None:
    """A server that ignores `Upgrade: h2c` answers in HTTP/1.1: the client's next request, held back
    while the answer was unknown, is parsed as HTTP/1.1 again."""
    first = b"GET /a HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n\r\n"
    second = b"GET /b HTTP/1.1\r\nHost: x\r\n\r\n"
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
    ctx = dissect_packets(_conversation([first, second], [answer, answer]))
    assert [(c["protocol"], c["url"], c["status_code"], c["http_version"]) for c in ctx.calls] == [
        ("http", "/a", 200, "HTTP/1.1"),
        ("http", "/b", 200, "HTTP/1.1"),
    ]


def test_lost_segment_inside_data_frames(store: Store, tmp_path: Path) -> None:
    """A segment lost in the middle of a body (padded DATA frames): the framing and the HPACK table
    survive, the call is partial with its true body size. A loss that takes frame headers with it puts
    the HPACK table out of step: later calls are partial, and what they show is still true."""
    path = RECORDED / "h2c_nghttpd.pcap"
    full = netrecall_rows(store, path)
    big = next(
        c for c in full if c["url"] == "/big.txt" and c["request_headers"]["user-agent"].startswith("curl")
    )
    records = _read(path)
    server_data = [
        i
        for i, (_, f) in enumerate(records)
        if _tcp(f).sport == 8081 and _tcp(f).dport == big["src_port"] and _tcp(f).data
    ]
    lost = server_data[len(server_data) // 2]
    grpc_path = RECORDED / "grpc_calls.pcap"
    _empty(store)
    grpc_full = netrecall_rows(store, grpc_path)
    grpc_records = _read(grpc_path)
    big_echo = [
        i for i, (_, f) in enumerate(grpc_records) if _tcp(f).dport == 50051 and len(_tcp(f).data) > 1400
    ]
    _empty(store)
    rows = netrecall_rows(
        store, _write(tmp_path / "lost.pcap", [r for i, r in enumerate(records) if i != lost])
    )
    cut = next(c for c in rows if c["id"] == big["id"])
    assert cut["partial"] and cut["status_code"] == 200 and cut["response_body_size"] == 80_000
    assert not [c for c in rows if c["error"]]
    assert _without_times([c for c in rows if c["id"] != big["id"]]) == _without_times(
        [c for c in full if c["id"] != big["id"]]
    )
    # the gRPC capture's 20 KB message is one DATA frame whose second 10 KB segment also holds the frames
    # after it: the body size and the message count survive, the HPACK table of that direction does not
    _empty(store)
    kept = [r for i, r in enumerate(grpc_records) if i != big_echo[1]]
    rows = netrecall_rows(store, _write(tmp_path / "lost_grpc.pcap", kept))
    originals = _by_id(grpc_full)
    echo = next(c for c in rows if originals[c["id"]]["request_body_size"] == 20_005)
    assert echo["partial"] and echo["request_body_size"] == 20_005 and echo["request_messages"] == 1
    assert echo["status_text"] == "OK" and echo["response_body_size"] == 20_010
    assert len(rows) == len(grpc_full) and not [c for c in rows if c["error"]]
    _assert_known_values_true(rows, originals)
    assert all(c["partial"] for c in rows if c["ts"] > echo["ts"])
    assert all(not c["partial"] for c in rows if c["ts"] < echo["ts"])


def _assert_known_values_true(rows: list[dict], originals: dict[str, dict]) -> None:
    """What a damaged capture's calls show is what the intact capture's show: known or left empty."""
    for call in rows:
        original = originals.get(call["id"])
        if original is None:
            continue
        for column in ("method", "url", "status_code", "status_message"):
            assert call[column] in ("", 0, original[column]), column
        assert call["request_headers"].items() <= original["request_headers"].items()
        assert call["response_headers"].items() <= original["response_headers"].items()


def test_lost_header_block_desynchronises_hpack(store: Store, tmp_path: Path) -> None:
    """The segment holding a request's HEADERS is lost: that call is kept from its answer alone, the
    client's HPACK table is out of step from there on, so later calls are partial — and what they
    show is still true; the answers' table (the other direction) is untouched."""
    path = RECORDED / "grpc_calls.pcap"
    full = netrecall_rows(store, path)
    records = _read(path)
    lost = next(i for i, (_, f) in enumerate(records) if b"/demo.v1.Items/Total" in bytes(_tcp(f).data))
    _empty(store)
    rows = netrecall_rows(
        store, _write(tmp_path / "lost_headers.pcap", [r for i, r in enumerate(records) if i != lost])
    )
    assert len(rows) == len(full) and not [c for c in rows if c["error"]]
    originals = _by_id(full)
    total = next(c for c in rows if c["id"] not in originals)  # no request: its id comes from the answer
    assert total["partial"] and total["method"] == "" and total["status_text"] == "OK"
    assert total["response_messages"] == 1 and total["protocol"] == "grpc"
    later = [c for c in rows if c["ts"] > total["ts"]]
    assert later and all(c["partial"] for c in later)
    assert sum(1 for c in later if c["url"]) >= 3  # new literals (each method's :path) still read
    _assert_known_values_true(rows, originals)
    assert all(not c["partial"] for c in rows if c["ts"] < total["ts"])


# --- fuzzing the session ------------------------------------------------------------------------------
CLIENT, SERVER = (
    b"\0" * 10 + b"\xff\xff" + bytes([10, 78, 0, 1]),
    b"\0" * 10 + b"\xff\xff" + bytes([10, 78, 0, 2]),
)


def _conversation(client_bytes: list[bytes], server_bytes: list[bytes]) -> list[Pkt]:
    packets = [
        Pkt(1, CLIENT, SERVER, 6, 40000, 80, 0x02, 999, b""),
        Pkt(2, SERVER, CLIENT, 6, 80, 40000, 0x12, 4999, b""),
    ]
    seq = {0: 1000, 1: 5000}
    ts = 10
    for turn in range(max(len(client_bytes), len(server_bytes))):
        for side, chunks in ((0, client_bytes), (1, server_bytes)):
            if turn < len(chunks) and chunks[turn]:
                src, dst, sport, dport = (
                    (CLIENT, SERVER, 40000, 80) if side == 0 else (SERVER, CLIENT, 80, 40000)
                )
                packets.append(Pkt(ts, src, dst, 6, sport, dport, 0x18, seq[side], chunks[turn]))
                seq[side] += len(chunks[turn])
                ts += 1000
    return packets


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.binary(max_size=300), max_size=6),
    st.lists(st.binary(max_size=300), max_size=6),
    st.booleans(),
)
def test_random_frames_never_crash(client: list[bytes], server: list[bytes], framed: bool) -> None:
    """Random bytes after a real preface (or shaped like frames): flagged rows or calls, never a crash."""
    if framed:  # give the junk plausible frame headers so the parser goes deeper than the first check
        client = [
            len(c).to_bytes(3, "big") + bytes([c[0] % 10 if c else 1, 0x05, 0, 0, 0, 1]) + c for c in client
        ]
        server = [
            len(c).to_bytes(3, "big") + bytes([c[0] % 10 if c else 1, 0x04, 0, 0, 0, 1]) + c for c in server
        ]
    ctx = dissect_packets(_conversation([PREFACE, *client], server))
    failures = [m for m in ctx.error_samples.values() if "parser failure" in m]
    assert not failures
    assert all(c["protocol"] in ("http", "grpc", "tcp") for c in ctx.calls)
