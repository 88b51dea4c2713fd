"""KFL over a fixed dataset in real chDB: every query's result ids must equal what an independent Python
interpretation of the same filter (tests/kfl_reference.py) selects from the same rows."""

from __future__ import annotations

import pytest

from netrecall.query.calls import list_calls
from netrecall.query.kfl import compile_filter, parse
from netrecall.store import Store
from tests.kfl_dataset import NOW_NS, build_rows, load
from tests.kfl_reference import evaluate

ROWS = build_rows()

QUERIES = [
    # --- Kubeshark's documented examples (docs.kubeshark.com display filters / KFL2 reference) ----------
    "http && status_code >= 400",
    'dst.service.name == "payment-service"',
    'dst.pod.namespace == "production"',
    'http && method == "GET" && url.contains("/api")',
    "dns && dns_request",
    "http && response_body_size > 1000000",
    "http",
    "dns",
    "redis",
    "kafka",
    "tls",
    "http && status_code == 200",
    "http && status_code >= 400 && status_code < 500",
    "http && status_code >= 500",
    'src.pod.name == "web-server-123"',
    'src.service.name == "api-gateway"',
    '"production" in namespaces',
    'http && "authorization" in request.headers',
    'http && request.headers["content-type"] == "application/json"',
    'http && method == "GET" && status_code >= 400',
    'dns && "google.com" in dns_questions',
    "http && response_body_size > 10000",
    "grpc && grpc_status != 0",
    "http && elapsed_time > 5000000",
    "!http",
    "http && status_code != 200",
    'http && !path.contains("/health")',
    '!(src.pod.namespace == "kube-system")',
    "dns && dns_response && status_code != 0",
    'map_get(local_labels, "app", "") == "checkout" && "production" in namespaces',
    'src.service.name == "api-gateway" && dst.pod.namespace == "production"',
    'http && method == "POST" && status_code >= 500 && path.contains("/api")',
    'grpc && grpc_status != 0 && grpc_method.contains("Create")',
    'dns_questions.exists(q, q.endsWith(".svc.cluster.local"))',
    # --- fields, operators and functions -------------------------------------------------------------
    'protocol == "HTTP"',
    'protocol in ["dns", "GRPC"]',
    'src.ip == "10.0.1.10"',
    'dst.ip == "2001:db8:0:0::42"',
    'src.ip in ["10.0.1.10", "192.168.1.1"]',
    'src.ip.startsWith("10.0.")',
    "src.port > 50000 && dst.port == 8080",
    "dst.port in [53, 6379, 9092]",
    'path.matches("^/api/v[0-9]+/users$")',
    'path.matches("users")',
    'url.endsWith("sort=desc")',
    'query_string["id"] == "42"',
    'query_string.contains("page=")',
    'method.startsWith("P") || method == "DELETE"',
    "size(path) > 12",
    "path.size() <= 1",
    "size(request.headers) >= 3",
    "size(dns_answers) > 0",
    "size(namespaces) == 2",
    'dst.name == "coredns-abc"',
    'src.name == ""',
    '"web-server-123" in pods',
    '"kube-dns" in services && dns_response',
    'remote_labels["app"] == "payments"',
    '"team" in local_labels || "team" in remote_labels',
    'local_labels.exists(k, k.startsWith("k8s"))',
    'map_get(remote_labels, "tier", "none") == "none"',
    'response.headers["server"] == "nginx" && http_version == "HTTP/2"',
    'request.headers.host == "shop.example" && method == "PUT"',
    'dns_question_types.exists(t, t == "AAAA") && dns_response',
    'dns_questions.all(q, q.endsWith(".local")) && dns',
    'dns_answers.exists_one(a, a == "10.0.1.11")',
    'size(dns_questions.filter(q, q.contains("svc"))) == 1',
    "dns_questions.map(q, q.size()).exists(n, n > 30)",
    'timestamp > timestamp("2026-03-14T22:00:00Z")',
    'timestamp >= timestamp("2026-03-14T21:30:00Z") && timestamp < timestamp("2026-03-14T21:45:00Z")',
    'timestamp > now() - duration("30m")',
    'now() - timestamp < duration("1h")',
    'timestamp + duration("90m") < now()',
    "elapsed_time / 1000 > 100",
    "elapsed_time % 1000 == 0 && elapsed_time > 0",
    "status_code / 100 == 4",
    "request_body_size + response_body_size > 4000",
    "(status_code >= 500 ? 1 : 0) == 1",
    'string(status_code).startsWith("50")',
    'int(query_string["id"]) > 10',
    'method.lowerAscii() == "get" && dst.port == 8080',
    'partial || error != ""',
    "!has_response && http",
    '"postgresql" == protocol && error.contains("duplicate")',
    "postgresql",
    "tcp || udp",
    'http && host == "shop.example" && status_text == "OK"',
    'response.status == 404 and request.method == "GET"',
    'src.ns == "staging" or not dns',
    'dst.labels.app == "redis"',
    'src.pod.name.matches("^(frontend|checkout)-")',
    'dns && status_code == 3 && dns_questions[0] == "nonexistent.example."',
    "[1, 2, 3].exists(x, x == dst.port % 4)",
    "true",
    "false",
    "",
]


@pytest.fixture
def loaded(store: Store) -> Store:
    load(store, ROWS)
    return store


def expected_ids(text: str) -> set[str]:
    tree = parse(text)
    if tree is None:
        return {row["id"] for row in ROWS}
    return {row["id"] for row in ROWS if evaluate(tree, row, NOW_NS)}


def test_query_table_is_large_enough() -> None:
    assert len(QUERIES) >= 60
    assert len(set(QUERIES)) == len(QUERIES)


def test_every_query_matches_the_reference(loaded: Store) -> None:
    mismatches = []
    nonempty = 0
    for text in QUERIES:
        compiled = compile_filter(text, now_ns=NOW_NS)
        got = {r[0] for r in loaded.rows(f"SELECT id FROM api_calls WHERE {compiled.where}", compiled.params)}
        want = expected_ids(text)
        nonempty += bool(want)
        if got != want:
            mismatches.append((text, sorted(got - want)[:5], sorted(want - got)[:5], compiled.where))
    assert not mismatches, "\n".join(map(str, mismatches))
    # The dataset exercises the filters: most select something and none selects everything by accident.
    assert nonempty >= len(QUERIES) - 3


def test_list_calls_agrees_with_the_reference(loaded: Store) -> None:
    for text in (
        "http && status_code >= 500",
        "dns && dns_response && status_code != 0",
        '"production" in namespaces',
        "",
    ):
        want = expected_ids(text)
        result = list_calls(loaded, text, limit=1000)
        assert {c["id"] for c in result["calls"]} == want
        assert result["total"] == len(want) and result["truncated"] is False
        stamps = [c["ts"] for c in result["calls"]]
        assert stamps == sorted(stamps, reverse=True)


def test_list_calls_limit_total_and_window(loaded: Store) -> None:
    want = expected_ids("http")
    result = list_calls(loaded, "http", limit=5)
    assert len(result["calls"]) == 5 and result["total"] == len(want) and result["truncated"] is True
    newest = sorted((r for r in ROWS if r["id"] in want), key=lambda r: r["ts"], reverse=True)[:5]
    assert [c["id"] for c in result["calls"]] == [r["id"] for r in newest]
    since, until = ROWS[10]["ts"], ROWS[40]["ts"]
    windowed = list_calls(loaded, "", since_ns=since, until_ns=until, limit=1000)
    assert {c["id"] for c in windowed["calls"]} == {r["id"] for r in ROWS if since <= r["ts"] <= until}


def test_list_calls_counts_exactly_up_to_the_cap(loaded: Store) -> None:
    want = expected_ids("http")
    capped = list_calls(loaded, "http", limit=5, count_limit=20)
    assert len(capped["calls"]) == 5 and capped["total"] == 20 and capped["total_capped"] is True
    assert capped["truncated"] is True and len(want) > 20
    exact = list_calls(loaded, "http", limit=5, count_limit=None)
    assert exact["total"] == len(want) and "total_capped" not in exact
