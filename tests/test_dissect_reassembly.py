"""TCP reassembly and the parsers on real recorded packets, reordered, duplicated, overlapped, dropped,
cut mid-connection and damaged — read with dpkt and fed to the engine directly, so each case controls
the exact packet order. Also: calls straddling chunks, port reuse, and fuzzing with random bytes."""

from __future__ import annotations

import contextlib
import random
from collections import Counter
from dataclasses import replace

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from netrecall.dissect.calls import Context, DissectConfig
from netrecall.dissect.engine import Engine
from netrecall.dissect.protocols import dns
from tests.conftest import CAPTURES, DPKT_EXAMPLES
from tests.dissect_pcap import Pkt, chunk_of, dissect_packets, read_packets

PYTHON = CAPTURES / "dissect" / "http_python.pcap"
NGINX = CAPTURES / "dissect" / "http_nginx.pcap"
DNSMASQ = CAPTURES / "dissect" / "dns_dnsmasq.pcap"


def summary(ctx: Context) -> Counter:
    return Counter(
        (c["protocol"], c.get("method"), c.get("url"), c.get("status_code"), bool(c.get("partial")))
        for c in ctx.calls
    )


def bodies(ctx: Context) -> dict:
    return {(c.get("method"), c.get("url")): c.get("response_body", b"") for c in ctx.calls}


def data_packets(packets: list[Pkt]) -> list[int]:
    return [i for i, p in enumerate(packets) if p.l4 == 6 and p.payload]


def test_baseline_calls_of_the_python_capture() -> None:
    ctx = dissect_packets(read_packets(PYTHON))
    calls = {(c["method"], c["url"]): c for c in ctx.calls}
    assert len(ctx.calls) == 12 and not ctx.parse_errors
    assert calls[("GET", "/big.txt")]["response_body_size"] == len("line of a larger file\n") * 3000
    assert calls[("GET", "/chunked")]["response_body"] == b"hello chunked " + b"world\n" * 50
    assert calls[("GET", "/gz")]["response_body"] == b"compressed body " * 100  # decoded from gzip
    assert calls[("GET", "/old")]["response_body"] == b"body until close\n" * 20  # close-delimited
    assert calls[("POST", "/upload")]["request_body"] == b"x" * 3000  # chunked request, de-chunked
    assert calls[("POST", "/expect")]["status_code"] == 201  # the final answer, not 100 Continue
    assert calls[("HEAD", "/index.html")]["response_body_size"] == 0
    assert calls[("GET", "/data.json?x=1&y=two")]["path"] == "/data.json"
    assert calls[("GET", "/data.json?x=1&y=two")]["query_string"] == "x=1&y=two"
    assert calls[("GET", "/index.html")]["request_headers"]["Host"] == "10.77.0.2:8000"
    assert all(c["elapsed_time"] > 0 and not c["partial"] for c in ctx.calls)
    assert len({c["id"] for c in ctx.calls}) == len(ctx.calls)


def test_reordered_segments_give_the_same_calls() -> None:
    packets = read_packets(PYTHON)
    base = dissect_packets(packets)
    shuffled = list(packets)
    data = data_packets(shuffled)
    rng = random.Random(7)
    for _ in range(40):  # swap the capture times of neighbouring data segments of the same flow
        i = rng.choice(data[:-1])
        j = next((k for k in data if k > i and shuffled[k].flow_id == shuffled[i].flow_id), None)
        if j is not None:
            shuffled[i], shuffled[j] = (
                replace(shuffled[i], ts=shuffled[j].ts),
                replace(shuffled[j], ts=shuffled[i].ts),
            )
    ctx = dissect_packets(shuffled)
    assert summary(ctx) == summary(base)
    assert bodies(ctx) == bodies(base)


def test_retransmissions_are_ignored() -> None:
    packets = read_packets(PYTHON)
    base = dissect_packets(packets)
    doubled = packets + [replace(p, ts=p.ts + 1000) for p in packets if p.payload]
    ctx = dissect_packets(doubled)
    assert summary(ctx) == summary(base)
    assert bodies(ctx) == bodies(base)


def test_overlap_keeps_the_first_copy() -> None:
    packets = read_packets(PYTHON)
    big = next(i for i, p in enumerate(packets) if b"line of a larger" in p.payload and len(p.payload) > 1000)
    seg = packets[big]
    # a later copy that overlaps the segment's tail with different bytes, then continues past it
    forged = replace(seg, ts=seg.ts + 1, seq=seg.seq + 100, payload=b"Z" * (len(seg.payload) - 100))
    ctx = dissect_packets([*packets[: big + 1], forged, *packets[big + 1 :]])
    assert bodies(ctx) == bodies(dissect_packets(packets))


def test_hole_in_a_body_of_known_length_keeps_the_framing() -> None:
    packets = read_packets(PYTHON)
    victim = next(
        i
        for i, p in enumerate(packets)
        if p.payload and p.payload[:20].count(b"line of a larger") and not p.payload.startswith(b"HTTP")
    )
    ctx = dissect_packets(packets[:victim] + packets[victim + 1 :])
    calls = {(c["method"], c["url"]): c for c in ctx.calls}
    big = calls[("GET", "/big.txt")]
    assert big["partial"] and big["status_code"] == 200
    assert big["response_body_size"] == len("line of a larger file\n") * 3000  # the lost bytes are counted
    assert len(ctx.calls) == 12  # later calls on the same connection are still found
    assert sum(bool(c["partial"]) for c in ctx.calls) == 1


def test_lost_request_headers_resync_at_the_next_message() -> None:
    packets = read_packets(PYTHON)
    victim = next(i for i, p in enumerate(packets) if p.payload.startswith(b"GET /missing"))
    ctx = dissect_packets(packets[:victim] + packets[victim + 1 :])
    urls = Counter(c.get("url") for c in ctx.calls if c["protocol"] == "http")
    assert urls["/missing"] == 0
    assert urls["/big.txt"] == 1 and urls["/index.html"] >= 1  # before and after the hole
    assert not ctx.parse_errors


def test_capture_started_mid_connection() -> None:
    packets = read_packets(PYTHON)
    first_get = next(i for i, p in enumerate(packets) if p.payload.startswith(b"GET /index.html"))
    flow = packets[first_get].flow_id
    # drop the handshake, the first request and half of its response: the capture starts mid-way
    response = next(i for i, p in enumerate(packets) if i > first_get and p.flow_id == flow and p.payload)
    cut = [p for i, p in enumerate(packets) if not (p.flow_id == flow and i <= response)]
    ctx = dissect_packets(cut)
    on_flow = [c for c in ctx.calls if c["flow_id"] == flow]
    # (the server closed this connection after its 404; curl asked for /big.txt on a new one)
    assert [(c["url"], c["status_code"]) for c in on_flow] == [
        ("/data.json?x=1&y=two", 200),
        ("/missing", 404),
    ]
    # the first exchange after the cut is flagged: bytes were skipped to find the response's start
    assert [c["partial"] for c in on_flow] == [True, False]


def test_response_seen_without_its_request_is_partial() -> None:
    packets = read_packets(PYTHON)
    victim = next(i for i, p in enumerate(packets) if p.payload.startswith(b"POST /form"))
    flow = packets[victim].flow_id
    cut = [p for i, p in enumerate(packets) if not (p.flow_id == flow and (p.flags & 0x02 or i <= victim))]
    ctx = dissect_packets(cut)
    orphan = [c for c in ctx.calls if c["flow_id"] == flow]
    assert len(orphan) == 1
    assert orphan[0]["status_code"] == 201 and orphan[0]["partial"] and not orphan[0].get("method")


def test_calls_straddling_chunks_are_produced_once() -> None:
    for path in (PYTHON, NGINX, DNSMASQ):
        packets = read_packets(path)
        whole = dissect_packets(packets)
        one_by_one = dissect_packets(packets, chunks=len(packets))
        assert summary(one_by_one) == summary(whole)
        assert sorted(c["id"] for c in one_by_one.calls) == sorted(c["id"] for c in whole.calls)


def test_port_reuse_is_a_new_connection() -> None:
    packets = read_packets(NGINX)
    flow = next(p.flow_id for p in packets if p.payload.startswith(b"GET /nocontent"))
    conn = [p for p in packets if p.flow_id == flow]
    later = conn[-1].ts - conn[0].ts + 1_000_000
    # the same 5-tuple again with a new initial sequence number, after the first connection closed
    again = [replace(p, ts=p.ts + later, seq=(p.seq + 7_000_000) & 0xFFFFFFFF) for p in conn]
    ctx = dissect_packets(conn + again)
    assert [(c["url"], c["status_code"]) for c in ctx.calls] == [("/nocontent", 204)] * 2
    assert len({c["id"] for c in ctx.calls}) == 2


def test_pipelined_requests_match_in_order() -> None:
    ctx = dissect_packets(read_packets(NGINX))
    pipelined = [c for c in ctx.calls if "pipelined" in c.get("url", "") or c.get("url") == "/small.json"]
    got = [(c["url"], c["status_code"]) for c in pipelined if c["request_headers"].get("User-Agent") is None]
    assert got == [("/small.json", 200), ("/page.txt?pipelined=2", 200), ("/nope?pipelined=3", 404)]
    gz = next(c for c in pipelined if c["url"] == "/page.txt?pipelined=2")
    assert gz["response_body"] == b"nginx page with enough text to be gzipped\n" * 200  # gzip, chunked


def test_body_truncation_keeps_the_real_size() -> None:
    ctx = dissect_packets(read_packets(PYTHON), config=DissectConfig(body_limit=100))
    big = next(c for c in ctx.calls if c.get("url") == "/big.txt")
    assert len(big["response_body"]) == 100 and big["response_body_truncated"]
    assert big["response_body_size"] == 66000
    gz = next(c for c in ctx.calls if c.get("url") == "/gz")
    assert gz["response_body"] == (b"compressed body " * 100)[:100] and gz["response_body_truncated"]


def test_damaged_stream_becomes_a_flagged_row() -> None:
    packets = read_packets(PYTHON)
    victim = next(
        i
        for i, p in enumerate(packets)
        if p.payload.startswith(b"HTTP/1.1 200 OK\r\nServer") and b"chunked" in p.payload
    )
    damaged = packets[victim].payload.replace(b"\r\n\r\n", b"\r\n\r\nZZZZ\r\n", 1)
    packets[victim] = replace(packets[victim], payload=damaged)
    # keep the following sequence numbers consistent with the longer segment
    flow, end = packets[victim].flow_id, packets[victim].seq + len(damaged)
    delta = len(damaged) - len(read_packets(PYTHON)[victim].payload)
    for i in range(victim + 1, len(packets)):
        p = packets[i]
        if p.flow_id == flow and p.src_port == packets[victim].src_port and p.seq >= end - delta:
            packets[i] = replace(p, seq=(p.seq + delta) & 0xFFFFFFFF)
    ctx = dissect_packets(packets)
    flagged = [c for c in ctx.calls if c.get("error")]
    assert len(flagged) == 1 and flagged[0]["protocol"] == "tcp" and "bad chunk size" in flagged[0]["error"]
    assert ctx.parse_errors["http"] == 1
    assert sum(1 for c in ctx.calls if c["protocol"] == "http") >= 11  # the rest of the stream survives


def test_dns_details() -> None:
    ctx = dissect_packets(read_packets(DNSMASQ))
    by_name = {
        (c["dns_questions"][0], c["dns_question_types"][0], c["src_port"] == 53 or c.get("dst_port")): c
        for c in ctx.calls
    }
    calls = {(c["dns_questions"][0], c["dns_question_types"][0]): c for c in ctx.calls}
    assert calls[("a.test", "A")]["dns_answers"] == ["10.1.2.3"]
    assert calls[("v6.test", "AAAA")]["dns_answers"] == ["fd00::4"]
    assert calls[("alias.test", "A")]["dns_answers"][0] == "a.test"
    assert calls[("_http._tcp.svc.test", "SRV")]["dns_answers"] == ["10 5 8080 a.test"]
    assert calls[("txt.test", "TXT")]["dns_answers"] == ['"hello dns" "second string"']
    assert calls[("mail.test", "MX")]["dns_answers"] == ["10 a.test"]
    assert calls[("nothere.test", "A")]["status_text"] == "NXDOMAIN"
    assert calls[("x.fail.example", "A")]["status_text"] == "SERVFAIL"
    lost = calls[("lost.test", "A")]
    assert not lost.get("has_response") and lost.get("status_code", 0) == 0 and lost["dns_request"]
    tcp = [
        c for c in ctx.calls if c["dns_questions"] == ["nothere.test"] and c["dns_question_types"] == ["AAAA"]
    ]
    assert tcp and tcp[0]["status_code"] == 3  # over TCP
    answered = [c for c in ctx.calls if c.get("has_response")]
    assert by_name and all(c["elapsed_time"] >= 0 for c in answered)


def test_truncated_dns_is_flagged() -> None:
    for name in ("truncated_dns.pcap", "truncated_dns_2.pcap"):
        ctx = dissect_packets(read_packets(DPKT_EXAMPLES / name))
        assert len(ctx.calls) == 1 and ctx.calls[0]["partial"] and ctx.calls[0]["dns_answers"]


def _engine_on_payloads(payloads: list[bytes], dport: int, l4: int = 6) -> Context:
    ctx = Context()
    engine = Engine(ctx)
    packets, seq = [], 1000
    src, dst = b"\0" * 10 + b"\xff\xff\x0a\0\0\x01", b"\0" * 10 + b"\xff\xff\x0a\0\0\x02"
    for n, payload in enumerate(payloads):
        sport, dp, a, b = (40000, dport, src, dst) if n % 2 == 0 else (dport, 40000, dst, src)
        packets.append(
            Pkt(1_000_000 * (n + 1), a, b, l4, sport, dp, 0x18, seq if n % 2 == 0 else seq + 5, payload)
        )
        seq += len(payload)
    engine.process(chunk_of(packets))
    engine.finish()
    return ctx


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.binary(max_size=300), min_size=1, max_size=6), st.sampled_from([80, 53, 8080, 5555]))
def test_random_bytes_never_crash(payloads: list[bytes], port: int) -> None:
    for l4 in (6, 17):
        _engine_on_payloads(payloads, port, l4)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.binary(max_size=200), min_size=1, max_size=5))
def test_http_prefixed_garbage_never_crashes(tails: list[bytes]) -> None:
    heads = [
        b"GET / HTTP/1.1\r\nContent-Length: 5\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
    ]
    payloads = [heads[i % 2] + tail for i, tail in enumerate(tails)]
    _engine_on_payloads(payloads, 80)


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=12, max_size=200))
def test_dns_parser_only_raises_parse_errors(data: bytes) -> None:
    for strict in (False, True):
        with contextlib.suppress(dns.ParseError):
            dns.parse(data, strict)


def test_a_parser_bug_costs_one_stream_not_the_run(monkeypatch) -> None:
    """The engine's safety net: an unexpected exception in a session becomes a flagged tcp row."""
    from netrecall.dissect.protocols import http1

    real = http1.HttpSession._frame

    def broken(self, d, msg):
        if msg.target == "/missing":
            raise ValueError("simulated parser bug")
        return real(self, d, msg)

    monkeypatch.setattr(http1.HttpSession, "_frame", broken)
    ctx = dissect_packets(read_packets(PYTHON))
    flagged = [c for c in ctx.calls if c.get("error")]
    assert len(flagged) == 1 and "simulated parser bug" in flagged[0]["error"]
    assert ctx.parse_errors["http"] == 1
    # that connection's calls still waiting for their responses are lost with it; the others are fine
    assert len([c for c in ctx.calls if c["protocol"] == "http"]) == 9
