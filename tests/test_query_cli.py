"""`netrecall query / call / sql` as a user runs them: real subprocesses on their own chDB path (a second
process may not open the test session's path), output parsed and checked against the dataset."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.kfl_dataset import NOW_NS, build_rows
from tests.kfl_reference import evaluate

from netrecall.query.kfl import parse  # isort: skip

ROWS = build_rows()
ROOT = Path(__file__).resolve().parent.parent

LOADER = """
import sys
sys.path.insert(0, {root!r})
from netrecall.schema.migrate import ensure_schema
from netrecall.store import open_store
from tests.kfl_dataset import build_rows, load
store = open_store({url!r})
ensure_schema(store)
load(store, build_rows())
store.command(
    "INSERT INTO workloads (ip, kind, name, namespace, node, labels, valid_from) VALUES "
    "(toIPv6('10.0.1.10'), 'pod', 'frontend-7d9f-abc', 'production', 'node-a', map('app', 'frontend'), "
    "'2026-03-14 00:00:00'), (toIPv6('10.0.1.11'), 'pod', 'checkout-5c6d-x1', 'production', 'node-a', "
    "map('app', 'checkout'), '2026-03-14 00:00:00'), (toIPv6('10.0.3.30'), 'pod', 'web-server-123', "
    "'staging', 'node-b', map(), '2026-03-14 00:00:00')"
)
"""


@pytest.fixture(scope="module")
def cli_store(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = f"chdb://{tmp_path_factory.mktemp('cli') / 'store'}"
    subprocess.run(
        [sys.executable, "-c", LOADER.format(root=str(ROOT), url=url)], check=True, cwd=ROOT, timeout=120
    )
    return url


def run(
    *args: str, store: str, ok: bool = True, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, "-m", "netrecall", *args, "--store", store],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        env={**os.environ, **(env or {})},
    )
    if ok:
        assert done.returncode == 0, done.stderr
    return done


def want(text: str) -> list[dict]:
    tree = parse(text)
    return sorted((r for r in ROWS if evaluate(tree, r, NOW_NS)), key=lambda r: r["ts"], reverse=True)


def test_query_json_envelope(cli_store: str) -> None:
    text = "http && status_code >= 500"
    done = run("query", text, "--limit", "5", "--format", "json", store=cli_store)
    answer = json.loads(done.stdout)
    expected = want(text)
    assert set(answer) == {"calls", "total", "truncated"}
    assert answer["total"] == len(expected) and answer["truncated"] is (len(expected) > 5)
    assert [c["id"] for c in answer["calls"]] == [r["id"] for r in expected[:5]]
    first, row = answer["calls"][0], expected[0]
    assert set(first) == {"id", "ts", "proto", "src", "dst", "method", "path", "status", "latency_ms"}
    assert set(first["src"]) == {"ip", "port", "pod", "ns", "svc", "node"}
    assert first["src"]["ip"] == row["src_ip"] and first["dst"]["pod"] == row["dst_pod"]
    assert first["status"] == row["status_code"] and first["latency_ms"] == row["elapsed_time"] / 1000
    assert first["ts"].endswith("Z") and len(first["ts"]) == len("2026-03-14T21:00:00.123456789Z")


def test_query_dns_records_and_jsonl(cli_store: str) -> None:
    text = "dns && dns_response && status_code != 0"
    done = run("query", text, "--format", "jsonl", "--limit", "1000", store=cli_store)
    calls = [json.loads(line) for line in done.stdout.splitlines()]
    expected = want(text)
    assert [c["id"] for c in calls] == [r["id"] for r in expected] and calls
    for call, row in zip(calls, expected, strict=True):
        assert call["dns"] == {
            "qname": row["dns_questions"][0],
            "qtype": row["dns_question_types"][0],
            "rcode": row["status_code"],
            "answers": row["dns_answers"],
        }


def test_query_table_shows_the_rows(cli_store: str) -> None:
    text = 'dst.pod.namespace == "staging" && http'
    done = run("query", text, "--limit", "1000", store=cli_store)
    lines = done.stdout.splitlines()
    assert lines[0].split()[:4] == ["time", "proto", "src", "dst"]
    expected = want(text)
    assert len(lines) == 1 + len(expected)
    for line, row in zip(lines[1:], expected, strict=True):
        assert row["id"] in line and row["path"][:40] in line and str(row["status_code"]) in line
        assert f"staging/{row['dst_pod']}" in line
    assert f"{len(expected)} call(s)" in done.stderr


def test_query_window_and_tsv(cli_store: str) -> None:
    since, until = "2026-03-14T21:30:00Z", "2026-03-14T21:40:00Z"
    done = run(
        "query", "", "--since", since, "--until", until, "--format", "tsv", "--limit", "1000", store=cli_store
    )
    lines = done.stdout.splitlines()
    ids = {line.split("\t")[-1] for line in lines[1:]}
    expected = want(
        'timestamp >= timestamp("2026-03-14T21:30:00Z") && timestamp <= timestamp("2026-03-14T21:40:00Z")'
    )
    assert ids == {r["id"] for r in expected} and ids


def test_query_errors_are_one_line_with_a_caret(cli_store: str) -> None:
    done = run("query", "http && statuscode >= 500", store=cli_store, ok=False)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "did you mean status_code?" in done.stderr
    assert done.stderr.splitlines()[-1] == "          ^"


def test_call_shows_the_full_record(cli_store: str) -> None:
    row = next(r for r in ROWS if r["protocol"] == "http" and r["request_body"])
    # Unredacted (the CLI masks secrets by default, as the hub does).
    record = json.loads(
        run("call", row["id"], "--payload", store=cli_store, env={"NETRECALL_REDACT": "0"}).stdout
    )
    assert record["id"] == row["id"] and record["request"]["headers"] == row["request_headers"]
    assert record["request"]["body"]["data"] == row["request_body"].decode()
    assert record["flow_id"] == str(row["flow_id"]) and record["dst"]["labels"] == row["dst_labels"]
    missing = run("call", "no-such-call", store=cli_store, ok=False)
    assert missing.returncode == 2 and "no call with id 'no-such-call'" in missing.stderr


def test_sql_is_read_only(cli_store: str) -> None:
    done = run(
        "sql",
        "SELECT protocol, count() AS n FROM api_calls GROUP BY protocol ORDER BY protocol",
        "--format",
        "json",
        store=cli_store,
    )
    answer = json.loads(done.stdout)
    counts: dict[str, int] = {}
    for row in ROWS:
        counts[row["protocol"]] = counts.get(row["protocol"], 0) + 1
    assert answer["columns"] == ["protocol", "n"] and answer["rows"] == [
        [k, v] for k, v in sorted(counts.items())
    ]
    refused = run("sql", "DROP TABLE packets", store=cli_store, ok=False)
    assert refused.returncode == 2 and "refused: DROP" in refused.stderr
    still = json.loads(run("sql", "EXISTS TABLE packets", "--format", "json", store=cli_store).stdout)
    assert still["rows"] == [[1]]


def test_legacy_spellings_answer_with_the_kfl2_names(cli_store: str) -> None:
    done = run(
        "query", 'response.status == 404 and request.method == "GET"', "--format", "json", store=cli_store
    )
    answer = json.loads(done.stdout)
    assert {c["id"] for c in answer["calls"]} == {
        r["id"] for r in want('status_code == 404 && method == "GET"')
    }
    assert "KFL2 calls it 'status_code'" in done.stderr and "KFL2 writes &&" in done.stderr
    assert any("status_code" in note for note in answer["notes"])


def test_workloads_lists_identities(cli_store: str) -> None:
    answer = json.loads(
        run("workloads", "--namespace", "production", "--format", "json", store=cli_store).stdout
    )
    assert {w["name"] for w in answer["workloads"]} == {"frontend-7d9f-abc", "checkout-5c6d-x1"}
    assert {w["ip"] for w in answer["workloads"]} == {"10.0.1.10", "10.0.1.11"}
