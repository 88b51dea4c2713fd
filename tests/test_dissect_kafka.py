"""Kafka dissection against tshark 4.0's Kafka dissector on captures of a real client (confluent-kafka,
i.e. librdkafka 2.16) and a raw-socket client talking to a kio-based broker (tests/captures/dissect/
record_kafka.py), imported with the real importer and dissected by the real runner.

Compared as multisets of tuples, per request: (client port, correlation id, api key, api version,
client id) for every request tshark sees; and (client port, correlation id, topics, first non-zero
error code, answered) for every exchange tshark decodes without complaint. The documented differences
(docs/protocols.md) are excluded by name below and asserted on their own.
"""

from __future__ import annotations

import random
import struct
import subprocess
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from netrecall.dissect.protocols import kafka
from netrecall.dissect.runner import dissect
from netrecall.ingest.importer import import_files
from netrecall.store import Store
from tests.conftest import CAPTURES, DPKT_EXAMPLES, require_tool
from tests.dissect_pcap import Pkt, dissect_file, dissect_packets, read_packets

RECORDED = CAPTURES / "dissect"
LIBRDKAFKA = RECORDED / "kafka_librdkafka.pcap"  # versions tshark 4.0 decodes
NEWEST = RECORDED / "kafka_librdkafka_newest.pcap"  # librdkafka's newest versions
RAW = RECORDED / "kafka_raw.pcap"  # old versions, odd versions, garbage, a cut request
BROKER_PORTS = {9092, 29092}
DECODE_AS = ["-d", "tcp.port==29092,kafka"]
SEP = "\x1e"
# tshark's expert notes on a frame it could not decode (fully): such frames are compared by header only
UNCLEAN = ("Unsupported", "Malformed", "Unknown", "does not end")
FIELDS = [
    "frame.number",
    "tcp.srcport",
    "tcp.dstport",
    "kafka.api_key",
    "kafka.api_version",
    "kafka.correlation_id",
    "kafka.client_id",
    "kafka.topic_name",
    "kafka.error",
    "kafka.request_frame",
    "_ws.expert.message",
]


def tshark_rows(path: Path) -> list[dict[str, list[str]]]:
    cmd = [require_tool("tshark"), "-r", str(path), *DECODE_AS, "-Y", "kafka", "-T", "fields"]
    for field in FIELDS:
        cmd += ["-e", field]
    cmd += ["-E", f"aggregator={SEP}", "-E", "separator=\t"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    rows = []
    for line in out.split("\n"):  # not splitlines(): it splits at the aggregator too
        if not line:
            continue
        cells = line.split("\t") + [""] * len(FIELDS)
        rows.append({name: (cells[i].split(SEP) if cells[i] else []) for i, name in enumerate(FIELDS)})
    return rows


def _clean(row: dict[str, list[str]]) -> bool:
    return not any(word in note for note in row["_ws.expert.message"] for word in UNCLEAN)


def _first_error(codes: list[str]) -> int:
    return next((int(c) for c in codes if int(c) != 0), 0)


def tshark_calls(path: Path) -> tuple[Counter, Counter]:
    """(headers of every request, details of every cleanly decoded exchange) as tshark sees them."""
    rows = tshark_rows(path)
    requests = {}
    responses = {}
    for row in rows:
        if int(row["tcp.srcport"][0]) in BROKER_PORTS:
            if row["kafka.request_frame"]:
                responses[row["kafka.request_frame"][0]] = row
        elif row["kafka.api_key"] and int(row["kafka.api_key"][0]) < kafka.API_KEY_LIMIT:
            requests[row["frame.number"][0]] = row  # (tshark reads garbage as api key 18241: not a request)
    headers: Counter = Counter()
    details: Counter = Counter()
    for frame, req in requests.items():
        key = (int(req["tcp.srcport"][0]), int(req["kafka.correlation_id"][0]))
        client_id = req["kafka.client_id"][0] if req["kafka.client_id"] else ""
        headers[(*key, int(req["kafka.api_key"][0]), int(req["kafka.api_version"][0]), client_id)] += 1
        resp = responses.get(frame)
        if not _clean(req) or (resp is not None and not _clean(resp)):
            continue
        topics = set(req["kafka.topic_name"]) | set(resp["kafka.topic_name"] if resp else [])
        status = _first_error(resp["kafka.error"]) if resp else None
        details[(*key, tuple(sorted(topics - {"[ Null ]"})), status)] += 1
    return headers, details


def netrecall_calls(store: Store, path: Path) -> list[dict]:
    import_files(store, [path])
    dissect(store)
    return store.dicts(
        "SELECT protocol, src_port, dst_port, method, kafka_api_key, kafka_api_version, "
        "kafka_correlation_id, client_id, kafka_topics, path, status_code, error_code, status_message, "
        "has_response, partial, error, request_body_size, response_body_size, elapsed_time "
        "FROM api_calls FINAL ORDER BY ts"
    )


def netrecall_view(calls: list[dict], detail_keys: set[tuple[int, int]]) -> tuple[Counter, Counter]:
    headers: Counter = Counter()
    details: Counter = Counter()
    for c in calls:
        if c["protocol"] != "kafka" or "cut short" in c["error"]:
            continue  # a request cut short never forms a PDU in tshark (asserted in test_bad_input)
        key = (c["src_port"], c["kafka_correlation_id"])
        headers[(*key, c["kafka_api_key"], c["kafka_api_version"], c["client_id"])] += 1
        if key in detail_keys:
            status = c["status_code"] if c["has_response"] else None
            details[(*key, tuple(sorted(c["kafka_topics"])), status)] += 1
    return headers, details


@pytest.mark.parametrize("path", [LIBRDKAFKA, NEWEST, RAW], ids=lambda p: p.name)
def test_same_calls_as_tshark(store: Store, path: Path) -> None:
    calls = netrecall_calls(store, path)
    expected_headers, expected_details = tshark_calls(path)
    assert expected_headers, "tshark found nothing: the capture is not what this test expects"
    headers, details = netrecall_view(calls, {(key[0], key[1]) for key in expected_details})
    assert headers == expected_headers
    assert details == expected_details
    if path == LIBRDKAFKA:  # tshark decodes every exchange here: the detail comparison covers all of them
        assert sum(expected_details.values()) == sum(expected_headers.values())


def test_recorded_cases(store: Store) -> None:
    """What the recordings hold, as dissected (guards against a bad re-record), and the columns set."""
    calls = [c for c in netrecall_calls(store, LIBRDKAFKA) if c["protocol"] == "kafka"]
    methods = {c["method"] for c in calls}
    assert {
        "ApiVersions",
        "Metadata",
        "Produce",
        "Fetch",
        "ListOffsets",
        "FindCoordinator",
        "OffsetCommit",
        "OffsetFetch",
        "InitProducerId",
    } <= methods
    too_large = [c for c in calls if c["error_code"] == "MESSAGE_TOO_LARGE"]
    assert [(c["method"], c["status_code"], c["kafka_topics"], c["path"]) for c in too_large] == [
        ("Produce", 10, ["oversized"], "oversized")
    ]
    assert too_large[0]["status_message"] == "this broker takes nothing on topic oversized"
    unknown = [c for c in calls if c["error_code"] == "UNKNOWN_TOPIC_OR_PARTITION"]
    assert unknown and all(
        c["method"] == "Metadata" and "missing-topic" in c["kafka_topics"] for c in unknown
    )
    fire = [c for c in calls if c["client_id"] == "fire-and-forget" and c["method"] == "Produce"]
    assert len(fire) == 3 and not any(c["has_response"] or c["partial"] for c in fire)  # acks=0
    assert all(c["has_response"] for c in calls if c["method"] == "Fetch")
    assert {c["dst_port"] for c in calls} == {9092, 29092}  # 29092 found by content alone
    multi = next(c for c in calls if len(c["kafka_topics"]) == 3)
    assert multi["path"] == "payments,oversized,missing-topic"
    answered = [c for c in calls if c["has_response"]]
    assert all(c["request_body_size"] > 0 and c["response_body_size"] > 0 for c in answered)
    assert all(not c["partial"] and not c["error"] for c in calls)


def test_newest_versions(store: Store) -> None:
    """librdkafka's newest versions, which tshark 4.0 cannot decode: Fetch v16 names topics by id only
    (resolved through the Metadata responses), Produce v10 and Metadata v13 are flexible."""
    calls = [c for c in netrecall_calls(store, NEWEST) if c["protocol"] == "kafka"]
    versions = {(c["method"], c["kafka_api_version"]) for c in calls}
    assert {("Fetch", 16), ("Produce", 10), ("Metadata", 13), ("OffsetFetch", 9)} <= versions
    assert {tuple(c["kafka_topics"]) for c in calls if c["method"] == "Fetch"} == {("orders",)}
    assert not [c for c in calls for t in c["kafka_topics"] if len(t) == 36 and t.count("-") == 4]  # no ids
    assert [c["status_message"] for c in calls if c["error_code"] == "MESSAGE_TOO_LARGE"] == [
        "this broker takes nothing on topic oversized"
    ]
    assert all(not c["partial"] and not c["error"] for c in calls)


def test_bad_input(store: Store) -> None:
    """Garbage on the port, garbage after a good exchange, a request cut short, an unknown api key and an
    undecodable version: flagged rows and parse errors, and every good call of the capture still there."""
    calls = netrecall_calls(store, RAW)
    summary = dissect(store)  # nothing new: the first run did it all
    assert summary.total_calls == 0
    flagged = sorted(c["error"] for c in calls if c["protocol"] == "tcp")
    assert flagged == [
        "kafka: bad message size 1751477356",  # "hell" of "hello? is this the kafka?"
        "kafka: not a Kafka request header: b'GARBAGE-GARB'",
    ]
    cut = [c for c in calls if "cut short" in c["error"]]
    assert [(c["method"], c["kafka_correlation_id"], c["client_id"], c["partial"]) for c in cut] == [
        ("Metadata", 20, "cut-client", True)
    ]
    good = Counter(
        (c["method"], c["kafka_correlation_id"], c["status_code"], tuple(c["kafka_topics"]))
        for c in calls
        if c["protocol"] == "kafka" and c["has_response"]
    )
    assert good == Counter(
        {
            ("ApiVersions", 1, 0, ()): 1,
            ("Metadata", 2, 3, ("orders", "nope")): 1,
            ("ApiVersions", 3, 35, ()): 1,  # v9 asked, answered in v0 with UNSUPPORTED_VERSION
            ("ApiVersions", 10, 0, ()): 1,
            ("Metadata", 30, 0, ("payments",)): 1,
            ("Metadata", 40, 0, ("orders",)): 1,
        }
    )
    unanswered = {
        (c["method"], c["kafka_api_key"], c["kafka_api_version"]) for c in calls if not c["has_response"]
    }
    assert {("Metadata", 3, 20), ("Unknown(93)", 93, 0)} <= unanswered


def test_run_summary_counts_parse_errors(store: Store) -> None:
    import_files(store, [RAW])
    summary = dissect(store)
    assert summary.parse_errors.get("kafka") == 3
    assert summary.calls == {"kafka": 9, "tcp": 2}


def _kafka_view(calls: list[dict]) -> Counter:
    return Counter(
        (c["src_port"], c.get("kafka_correlation_id"), c.get("method"), tuple(c.get("kafka_topics", ())),
         c.get("status_code"), c.get("has_response", False), c.get("partial", False))
        for c in calls
        if c["protocol"] == "kafka"
    )  # fmt: skip


def test_corrupt_frame_costs_only_its_connection() -> None:
    """A request whose api key is overwritten mid-connection: one parse error and a flagged row; every call
    of the other connections is exactly as in the clean capture."""
    packets = read_packets(LIBRDKAFKA)
    clean = _kafka_view(dissect_file(LIBRDKAFKA).calls)
    target = next(
        i
        for i, p in enumerate(packets)
        if p.dst_port == 9092 and p.payload[4:6] == b"\x00\x01"  # a Fetch
    )
    port = packets[target].src_port
    bad = packets[target]
    packets[target] = Pkt(**{**bad.__dict__, "payload": bad.payload[:4] + b"\x77\x77" + bad.payload[6:]})
    ctx = dissect_packets(packets)
    assert ctx.parse_errors["kafka"] == 1
    assert not [s for s in ctx.error_samples.values() if "parser failure" in s]
    flagged = [c for c in ctx.calls if c["protocol"] == "tcp"]
    assert [c["src_port"] for c in flagged] == [port] and flagged[0]["error"].startswith("kafka: not a Kafka")
    view = _kafka_view(ctx.calls)
    assert Counter({k: v for k, v in view.items() if k[0] != port}) == Counter(
        {k: v for k, v in clean.items() if k[0] != port}
    )
    # on the damaged connection the calls before the bad frame are intact
    assert len([k for k in view if k[0] == port]) >= 3


def test_capture_loss_inside_a_message_keeps_the_framing() -> None:
    """A lost segment in the middle of a Fetch response: that call is partial, the next ones are whole."""
    packets = read_packets(LIBRDKAFKA)
    fetch = next(p for p in packets if p.dst_port == 9092 and p.payload[4:6] == b"\x00\x01")
    index = next(
        i
        for i, p in enumerate(packets)
        if p.src_port == 9092 and p.dst_port == fetch.src_port and p.payload[4:8] == fetch.payload[8:12]
    )
    assert len(packets[index].payload) > 150  # split below into three segments, the middle one lost
    resp = packets[index]
    thirds = [resp.payload[:60], resp.payload[60:120], resp.payload[120:]]
    pieces = [
        Pkt(**{**resp.__dict__, "payload": part, "seq": (resp.seq + offset) & 0xFFFFFFFF, "ts": resp.ts + n})
        for n, (part, offset) in enumerate(zip(thirds, (0, 60, 120), strict=True))
    ]
    packets[index : index + 1] = [pieces[0], pieces[2]]
    ctx = dissect_packets(packets)
    partial = [c for c in ctx.calls if c.get("partial")]
    assert [(c["method"], c["has_response"]) for c in partial] == [("Fetch", True)]
    clean = _kafka_view(dissect_file(LIBRDKAFKA).calls)
    view = _kafka_view(ctx.calls)
    assert sum(view.values()) == sum(clean.values())
    assert ctx.parse_errors["kafka"] == 0


def test_cut_capture_never_crashes() -> None:
    """The capture cut at every tenth packet: no parser failure, every call up to the cut is produced."""
    packets = read_packets(LIBRDKAFKA)
    for end in range(10, len(packets), 10):
        ctx = dissect_packets(packets[:end])
        assert not [s for s in ctx.error_samples.values() if "parser failure" in s]


def test_other_protocols_are_not_taken() -> None:
    """The HTTP and DNS captures (and dpkt's examples) give no kafka rows: detection is strict."""
    for path in [
        *sorted(RECORDED.glob("http_*.pcap")),
        RECORDED / "dns_dnsmasq.pcap",
        *DPKT_EXAMPLES.glob("*.pcap"),
    ]:
        calls = dissect_file(path).calls
        assert not [c for c in calls if c["protocol"] == "kafka" or "kafka" in c.get("error", "")], path.name


# --- fuzzing ------------------------------------------------------------------------------------------------
CLIENT, SERVER = (
    b"\0" * 10 + b"\xff\xff" + bytes([10, 81, 0, 1]),
    b"\0" * 10 + b"\xff\xff" + bytes([10, 81, 0, 2]),
)


def _conversation(client_bytes: bytes, server_bytes: bytes, seg: int) -> list[Pkt]:
    """A TCP connection carrying the given bytes each way, cut into segments of `seg` bytes."""
    packets = [
        Pkt(1_000, CLIENT, SERVER, 6, 40000, 9092, 0x02, 100, b""),
        Pkt(2_000, SERVER, CLIENT, 6, 9092, 40000, 0x12, 500, b""),
    ]
    ts = 3_000
    for data, src, dst, sport, dport, isn in (
        (client_bytes, CLIENT, SERVER, 40000, 9092, 101),
        (server_bytes, SERVER, CLIENT, 9092, 40000, 501),
    ):
        for off in range(0, len(data), seg):
            packets.append(Pkt(ts, src, dst, 6, sport, dport, 0x18, isn + off, data[off : off + seg]))
            ts += 1_000
    return packets


def _request(api_key: int, version: int, corr: int, body: bytes) -> bytes:
    message = struct.pack(">hhih", api_key, version, corr, 4) + b"fuzz" + body
    return struct.pack(">i", len(message)) + message


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    client_tail=st.binary(max_size=300),
    server_bytes=st.binary(max_size=300),
    seg=st.integers(1, 64),
    api_key=st.integers(0, 92),
    version=st.integers(0, 18),
)
def test_fuzzed_streams_never_crash(
    client_tail: bytes, server_bytes: bytes, seg: int, api_key: int, version: int
) -> None:
    """A plausible first request, then anything: rows and parse errors, never a parser failure."""
    client_bytes = _request(api_key, version, 7, client_tail[:40]) + client_tail
    ctx = dissect_packets(_conversation(client_bytes, server_bytes, seg))
    assert not [s for s in ctx.error_samples.values() if "parser failure" in s]
    assert [c for c in ctx.calls if c["protocol"] == "kafka" and c.get("kafka_correlation_id") == 7]


def test_mid_connection_start_finds_the_next_request() -> None:
    """A capture that starts inside a connection: the first request found by search, its answer paired."""
    rng = random.Random(3)
    noise = bytes(rng.randrange(1, 256) for _ in range(37))
    first = _request(3, 1, 41, struct.pack(">i", 0))
    second = _request(18, 0, 42, b"")
    answer = struct.pack(">iihi", 10, 42, 0, 0)  # ApiVersions v0: no error, no api keys
    packets = _conversation(noise + first + second, answer, 1000)[2:]  # no SYN: mid-connection
    calls = dissect_packets(packets).calls
    view = sorted((c["method"], c["kafka_correlation_id"], c.get("has_response", False)) for c in calls)
    assert view == [("ApiVersions", 42, True), ("Metadata", 41, False)]
