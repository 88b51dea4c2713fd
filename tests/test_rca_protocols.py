"""The root-cause tools on the protocols beyond HTTP and DNS: failures that PostgreSQL, Redis and gRPC
servers really sent (recorded in tests/captures/dissect/) come out of `summarize_errors`, KFL and the
full call record as tshark reads them from the same files."""

from __future__ import annotations

import subprocess
from collections import Counter
from pathlib import Path

from netrecall.dissect.runner import dissect
from netrecall.ingest.importer import import_files
from netrecall.query.calls import get_call, list_calls
from netrecall.query.rca import Scope, api_stats, summarize_errors
from tests.conftest import CAPTURES, require_tool

RECORDED = CAPTURES / "dissect"
PGSQL = [RECORDED / "pgsql_simple.pcap", RECORDED / "pgsql_extended.pcap"]
REDIS = RECORDED / "redis_resp2.pcap"
GRPC = RECORDED / "grpc_calls.pcap"


def _tshark(path: Path, decode_as: str, display_filter: str, field: str) -> list[str]:
    command = [require_tool("tshark"), "-r", str(path), "-d", decode_as, "-Y", display_filter]
    done = subprocess.run(
        [*command, "-T", "fields", "-e", field],
        capture_output=True,
        text=True,
        check=True,
    )
    return [line for line in done.stdout.splitlines() if line]


def _loaded(store) -> None:
    import_files(store, [*PGSQL, REDIS, GRPC])
    dissect(store)


def test_summarize_errors_groups_postgresql_failures_by_the_sqlstate_tshark_reads(store):
    _loaded(store)
    want = Counter(
        code for path in PGSQL for code in _tshark(path, "tcp.port==5432,pgsql", "pgsql.code", "pgsql.code")
    )
    assert len(want) >= 5  # the recorder provoked 42P01, 22P02, 23505, 40001, 42601, 28P01

    answer = summarize_errors(store, Scope(), limit=100)
    groups = [g for g in answer["groups"] if g["kind"] == "postgresql_error"]
    got = Counter()
    for group in groups:
        assert group["proto"] == "postgresql" and group["message"], group
        got[group["error_code"]] += group["count"]
    assert got == want
    # every group's example opens as a full record naming the same SQLSTATE and the server's message
    for group in groups:
        record = get_call(store, group["example_id"])
        assert record is not None and record["postgresql"]["error_code"] == group["error_code"]
        assert record["postgresql"]["error"].startswith(group["message"][:40])


def test_kfl_finds_the_calls_that_failed_with_one_sqlstate(store):
    _loaded(store)
    for code in ("42P01", "23505"):
        want = sum(
            _tshark(path, "tcp.port==5432,pgsql", "pgsql.code", "pgsql.code").count(code) for path in PGSQL
        )
        found = list_calls(store, f'postgresql && postgresql_error_code == "{code}"', limit=50)
        assert found["total"] == want > 0
        assert all(call["proto"] == "postgresql" and call["status"] == 1 for call in found["calls"])


def test_redis_error_replies_are_counted_with_their_prefix(store):
    _loaded(store)
    texts = _tshark(REDIS, "tcp.port==6379,resp", "resp.error", "resp.error")
    want = Counter(text.split(" ", 1)[0] for text in texts)

    answer = summarize_errors(store, Scope(kfl="redis"), limit=100)
    got = Counter()
    for group in answer["groups"]:
        if group["kind"] == "redis_error":
            got[group["error_code"]] += group["count"]
    assert got == want
    stats = {p["protocol"]: p for p in api_stats(store, Scope())["protocols"]}
    assert stats["redis"]["errors"] == len(texts)


def test_grpc_failures_carry_status_and_message(store):
    _loaded(store)
    failing = store.rows(
        "SELECT grpc_status, status_message, count() FROM api_calls FINAL "
        "WHERE protocol = 'grpc' AND grpc_status != 0 GROUP BY ALL"
    )
    assert {row[0] for row in failing} >= {4, 5, 14}  # DEADLINE_EXCEEDED, NOT_FOUND, UNAVAILABLE recorded

    answer = summarize_errors(store, Scope(kfl="grpc"), limit=100)
    got = Counter()
    for group in answer["groups"]:
        if group["kind"] == "grpc_error":
            assert group["sample"].startswith("/")
            got[(group["code"], group.get("message", ""))] += group["count"]
    assert got == Counter({(code, message[:160]): count for code, message, count in failing})
