"""Dissection of the Redis and PostgreSQL benchmark captures vs tshark's field pass on the same files.

Each capture (bench/make_db_capture.py: redis-benchmark and pgbench against real servers on loopback) is
imported once into its own embedded store under bench/out (not timed: that is the import benchmark's
job); each run empties api_calls and the watermark, then times `netrecall dissect` in its own process
(wall time, peak RSS of that process) next to tshark decoding the same file to the fields that make
the calls (`resp.*` for Redis; `pgsql.type/query/tag/code` for PostgreSQL).
Targets: at least 2x faster than tshark, peak RSS at most 1 GB, one call per command tshark sees.
"""

from __future__ import annotations

import json
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from bench.common import OUT, in_child, prepare_dissect_store, print_table, run_measured, verdict
from bench.make_db_capture import PG_PORT, REDIS_PORT, pgsql_capture, redis_capture

RSS_LIMIT_MB = 1024
SPEEDUP = 2.0


@dataclass(frozen=True)
class Case:
    protocol: str
    port: int
    tshark_proto: str  # tshark's dissector name for -d and -Y
    fields: tuple[str, ...]
    count_field: str  # a field that occurs once per client message that makes a call
    count_values: tuple[str, ...]  # ... with one of these values (empty: any)


REDIS = Case(
    "redis",
    REDIS_PORT,
    "resp",
    ("resp.bulk_string.value", "resp.string", "resp.error", "resp.integer"),
    "resp.array.length",
    (),
)
PGSQL = Case(
    "postgresql",
    PG_PORT,
    "pgsql",
    ("pgsql.type", "pgsql.query", "pgsql.tag", "pgsql.code"),
    "pgsql.type",
    ("Simple query", "Execute", "Startup message"),
)


def _store_url(case: Case) -> str:
    return f"chdb://{OUT / f'dissect-{case.protocol}-store'}"


def _stored_calls(case: Case) -> int:
    code = f"""
from netrecall.store import open_store
store = open_store({_store_url(case)!r})
print(store.scalar("SELECT count() FROM api_calls FINAL WHERE protocol = {case.protocol!r}"))
"""
    return int(in_child(code))


def _tshark_requests(case: Case, output: str) -> int:
    """Client messages that make a call, from tshark's field output (client frames only)."""
    column = (
        1 + case.fields.index(case.count_field) if case.count_field in case.fields else len(case.fields) + 1
    )
    total = 0
    for line in output.splitlines():
        cells = line.split("\t")
        if cells[0] == str(case.port) and len(cells) > column and cells[column]:
            values = cells[column].split(",")
            total += sum(1 for v in values if not case.count_values or v in case.count_values)
    return total


def _run_case(case: Case, capture: Path, tshark: str) -> bool:
    packets = prepare_dissect_store(_store_url(case), capture)
    ours = run_measured(
        [sys.executable, "-m", "netrecall", "dissect", "--store", _store_url(case), "--format", "json"]
    )
    summary = json.loads(ours.stdout)[0]
    fields = [*case.fields] if case.count_field in case.fields else [*case.fields, case.count_field]
    command = [
        tshark,
        "-r",
        str(capture),
        "-d",
        f"tcp.port=={case.port},{case.tshark_proto}",
        "-Y",
        case.tshark_proto,
    ]
    command += ["-T", "fields", "-e", "tcp.dstport", *(arg for name in fields for arg in ("-e", name))]
    theirs = run_measured(command)
    requests = _tshark_requests(case, theirs.stdout)
    calls = _stored_calls(case)
    print_table(
        f"{case.protocol} dissection of {capture.name} ({packets:,} packets)",
        ["tool", "seconds", "calls/s", "peak RSS MB", "calls"],
        [
            ["netrecall dissect", ours.seconds, calls / ours.seconds, ours.peak_rss_mb, calls],
            [f"tshark -Y {case.tshark_proto} -T fields", theirs.seconds, requests / theirs.seconds,
             theirs.peak_rss_mb, requests],
        ],
    )  # fmt: skip
    ratio = theirs.seconds / ours.seconds
    ok = verdict(f"{case.protocol} speed", ratio >= SPEEDUP, f"{ratio:.2f}x tshark, target >= {SPEEDUP:.0f}x")
    ok &= verdict(
        f"{case.protocol} memory",
        ours.peak_rss_mb <= RSS_LIMIT_MB,
        f"{ours.peak_rss_mb:,.0f} MB peak RSS, target <= {RSS_LIMIT_MB} MB",
    )
    ok &= verdict(
        f"{case.protocol} same calls",
        calls == requests and summary["partial"] <= summary["total_calls"] // 10_000,
        f"{calls:,} calls vs tshark's {requests:,} commands, {summary['partial']} partial",
    )
    return ok


def run() -> bool:
    tshark = shutil.which("tshark")
    if tshark is None:
        print("  tshark is not installed: run `make bench`, which installs it")
        return False
    ok = _run_case(REDIS, redis_capture(), tshark)
    ok &= _run_case(PGSQL, pgsql_capture(), tshark)
    return ok
