"""The hub's REST API on a real embedded store: auth, shapes, limits, errors, redaction, ingest, exports."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest
from hub_fixtures import SECRET, load_incident
from hub_packets import arrow_stream, packets_batch
from starlette.testclient import TestClient

from netrecall.errors import NetrecallError
from netrecall.hub.app import build_app
from netrecall.hub.auth import check_bind, resolve_token
from netrecall.hub.openapi import openapi_document
from netrecall.hub.service import Service
from netrecall.ingest.flows import insert_packets

TOKEN = "test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def service(store, tmp_path):
    load_incident(store)
    return Service(store, exports_dir=tmp_path / "exports")


@pytest.fixture
def client(service):
    with TestClient(build_app(service, token=TOKEN, mcp=False), headers=AUTH) as c:
        yield c


def test_healthz_needs_no_token(service):
    with TestClient(build_app(service, token=TOKEN, mcp=False)) as c:
        assert c.get("/healthz").json() == {"status": "ok"}


@pytest.mark.parametrize(
    "headers, url",
    [
        ({}, "/api/calls"),
        ({"Authorization": "Bearer wrong-token-000000"}, "/api/calls"),
        ({"Authorization": f"Basic {TOKEN}"}, "/api/calls"),
        ({}, f"/api/calls?token={TOKEN}"),
        ({}, f"/api/calls?access_token={TOKEN}"),
        ({}, "/metrics"),
        ({}, "/openapi.json"),
    ],
)
def test_auth_refuses(service, headers, url):
    with TestClient(build_app(service, token=TOKEN, mcp=False)) as c:
        response = c.get(url, headers=headers)
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "unauthorized"
    assert response.headers["www-authenticate"].startswith("Bearer")


def test_auth_refuses_ingest_and_sql_without_token(service):
    with TestClient(build_app(service, token=TOKEN, mcp=False)) as c:
        assert c.post("/api/sql", json={"sql": "SELECT 1"}).status_code == 401
        assert c.post("/api/ingest?table=packets", content=b"x").status_code == 401


def test_non_loopback_bind_without_token_is_refused():
    with pytest.raises(NetrecallError, match="without a token"):
        check_bind("0.0.0.0", None)
    check_bind("0.0.0.0", TOKEN)
    check_bind("127.0.0.1", None)
    check_bind("::1", None)
    with pytest.raises(NetrecallError, match="at least 8"):
        resolve_token("short", None)


def test_serve_refuses_public_bind_without_token_from_the_cli(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "netrecall", "serve", "--host", "0.0.0.0", "--store", f"chdb://{tmp_path}/s"],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
    )
    assert result.returncode == 2
    assert "refusing to listen on 0.0.0.0 without a token" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "s").exists()  # refused before the store was opened


def test_calls_kfl_limit_and_truncation(client):
    answer = client.get("/api/calls", params={"kfl": "http && status_code >= 500", "limit": 3}).json()
    assert answer["total"] == 5 and answer["truncated"] is True and len(answer["calls"]) == 3
    assert "hint" in answer
    first = answer["calls"][0]
    assert set(first) >= {"id", "ts", "proto", "src", "dst", "method", "path", "status", "latency_ms"}
    assert first["status"] == 500 and first["dst"]["svc"] == "checkout" and first["src"]["ip"] == "10.1.0.10"
    dns = client.get("/api/calls", params={"kfl": "dns && status_code != 0"}).json()
    assert dns["total"] == 5 and dns["calls"][0]["dns"]["qname"] == "payments.shop.svc.cluster.local"
    lines = client.get("/api/calls", params={"kfl": "dns", "format": "jsonl"}).text.splitlines()
    assert len(lines) == 7


def test_call_detail_is_redacted(client):
    call = client.get("/api/calls/fail0000", params={"payload": "true"}).json()
    headers = call["request"]["headers"]
    assert headers["Authorization"] == "[REDACTED]" and headers["Cookie"] == "[REDACTED]"
    assert headers["Accept"] == "*/*"
    assert "abc123" not in call["query_string"] and "cart=7" in call["query_string"]
    body = call["request"]["body"]["data"]
    assert "hunter2" not in body and '"user":"ann"' in body
    assert SECRET not in client.get("/api/calls/fail0000", params={"payload": "true"}).text


def test_redaction_can_be_switched_off(store, tmp_path):
    load_incident(store)
    plain = Service(store, redact=False, exports_dir=tmp_path)
    with TestClient(build_app(plain, token=TOKEN, mcp=False), headers=AUTH) as c:
        call = c.get("/api/calls/fail0000", params={"payload": "true"}).json()
    assert call["request"]["headers"]["Authorization"] == f"Bearer {SECRET}"


def test_errors_summary_groups_by_pair_protocol_and_code(client):
    answer = client.get("/api/errors").json()
    by_kind = {g["kind"]: g for g in answer["groups"]}
    assert by_kind["http_5xx"]["count"] == 5
    assert (by_kind["http_5xx"]["src"], by_kind["http_5xx"]["dst"]) == ("shop/frontend", "shop/checkout")
    assert by_kind["dns_error"]["count"] == 5 and by_kind["dns_error"]["status_text"] == "NXDOMAIN"
    assert by_kind["dns_error"]["sample"] == "payments.shop.svc.cluster.local A"
    assert by_kind["http_4xx"]["count"] == 1  # 4xx kept apart from the outage
    assert by_kind["http_5xx"]["first_seen"] <= by_kind["http_5xx"]["last_seen"]
    assert "token=abc123" not in str(answer)
    without_4xx = client.get("/api/errors", params={"include_4xx": "false"}).json()
    assert {g["kind"] for g in without_4xx["groups"]} == {"http_5xx", "dns_error"}


def test_trace_shows_the_servers_failed_lookup(client):
    trace = client.get("/api/calls/fail0002/trace", params={"window": "15ms"}).json()
    roles = [(e["role"], e["proto"]) for e in trace["events"]]
    assert ("call", "http") in roles
    lookups = [e for e in trace["events"] if e["role"] == "destination_sent" and e["proto"] == "dns"]
    assert lookups and lookups[0]["dns"]["rcode"] == "NXDOMAIN" and lookups[0]["failed"] is True
    times = [e["ts"] for e in trace["events"]]
    assert times == sorted(times)


def test_dns_failures(client):
    answer = client.get("/api/dns/failures").json()
    assert answer["failures"][0]["qname"] == "payments.shop.svc.cluster.local"
    assert answer["failures"][0]["rcode"] == "NXDOMAIN" and answer["failures"][0]["count"] == 5
    assert answer["failures"][0]["client"] == "shop/checkout"
    lost = answer["failures"][1]
    assert (lost["qname"], lost["qtype"], lost["rcode"], lost["count"]) == (
        "cart.shop.svc.cluster.local",
        "AAAA",
        "NO_RESPONSE",
        1,
    )
    assert client.get("/api/dns/failures", params={"limit": 1}).json()["truncated"] is True


def test_tcp_resets_are_summarized_client_first(store, service):
    batch = packets_batch()
    flags = batch.column("tcp_flags").to_pylist()
    # the server's last segment of each connection becomes a reset (RST|ACK): flows count it
    last_from_server = {}
    for i, (sport, dport) in enumerate(
        zip(batch.column("src_port").to_pylist(), batch.column("dst_port").to_pylist(), strict=True)
    ):
        if sport == 18080:
            last_from_server[dport] = i
    for i in last_from_server.values():
        flags[i] = 0x14
    insert_packets(
        store,
        batch.set_column(
            batch.schema.get_field_index("tcp_flags"), "tcp_flags", pa.array(flags, pa.uint16())
        ),
    )
    with TestClient(build_app(service, token=TOKEN, mcp=False), headers=AUTH) as c:
        groups = [g for g in c.get("/api/errors").json()["groups"] if g["kind"] == "tcp_reset"]
        window = {
            "since": _epoch(batch.column("ts")[0].value),
            "until": _epoch(batch.column("ts")[-1].value + 1),
        }
        inside = c.get("/api/errors", params=window).json()["groups"]
        outside = c.get(
            "/api/errors", params={"since": "2001-01-01T00:00:00Z", "until": "2001-01-02T00:00:00Z"}
        )
    assert [g["count"] for g in inside if g["kind"] == "tcp_reset"] == [len(last_from_server)]
    assert outside.json()["groups"] == []
    assert len(groups) == 1
    reset = groups[0]
    assert (reset["src"], reset["dst"], reset["code"]) == ("127.0.0.1", "127.0.0.1", 18080)
    assert reset["count"] == len(last_from_server) and reset["first_seen"] <= reset["last_seen"]


def test_stats_ips_workloads(client):
    stats = client.get("/api/stats").json()
    assert {p["protocol"]: p["calls"] for p in stats["protocols"]} == {"http": 46, "dns": 7}
    ips = {i["ip"] for i in client.get("/api/ips").json()["ips"]}
    assert {"10.1.0.10", "10.1.0.20", "10.96.0.10"} <= ips
    assert client.get("/api/workloads").json() == {"workloads": [], "total": 0, "truncated": False}


def test_sql_guard_and_bounds(client):
    ok = client.post("/api/sql", json={"sql": "SELECT id FROM api_calls ORDER BY id", "max_rows": 4}).json()
    assert ok["columns"] == ["id"] and len(ok["rows"]) == 4 and ok["truncated"] is True
    refused = client.post("/api/sql", json={"sql": "DROP TABLE api_calls"})
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "bad_request"
    assert client.post("/api/sql", json={"sql": "SELECT count() FROM api_calls"}).json()["rows"] == [[53]]


@pytest.mark.parametrize(
    "method, url, kwargs, status, code",
    [
        ("GET", "/api/calls", {"params": {"kfl": "http &&"}}, 400, "bad_request"),
        ("GET", "/api/calls", {"params": {"limit": "x"}}, 400, "bad_request"),
        ("GET", "/api/calls", {"params": {"limit": "0"}}, 400, "bad_request"),
        ("GET", "/api/calls/nope", {}, 404, "not_found"),
        ("GET", "/api/nothing-here", {}, 404, "not_found"),
        ("DELETE", "/api/calls", {}, 405, "method_not_allowed"),
        ("POST", "/api/sql", {"content": b"not json"}, 400, "bad_request"),
        ("POST", "/api/sql", {"content": b"[1]"}, 400, "bad_request"),
        ("POST", "/api/sql", {"content": b'{"sql": "' + b"x" * (2 << 20) + b'"}'}, 413, "too_large"),
        ("GET", "/api/calls", {"params": {"since": "yesterday-ish"}}, 400, "bad_request"),
        ("GET", "/api/snapshots/nope", {}, 404, "not_found"),
        ("GET", "/api/dissect/nope", {}, 404, "not_found"),
        ("GET", "/api/exports/..%2F..%2Fetc%2Fpasswd", {}, 404, "not_found"),
    ],
)
def test_errors_have_one_shape(client, method, url, kwargs, status, code):
    response = client.request(method, url, **kwargs)
    assert response.status_code == status, response.text
    body = response.json()
    assert body["error"]["code"] == code and body["error"]["message"]
    assert "Traceback" not in response.text and 'File "' not in response.text


def test_metrics_and_openapi(client):
    client.get("/api/calls")
    text = client.get("/metrics").text
    assert 'netrecall_hub_requests_total{method="GET",route="/api/calls",status="200"} 1' in text
    assert "netrecall_hub_request_seconds_count" in text
    document = client.get("/openapi.json").json()
    # the web page's files and its own /api/ui routes are the page's internals (docs/ui.md), not the API
    app_paths = {
        route.path
        for route in client.app.routes
        if route.path not in ("/", "/ui") and "/api/ui/" not in route.path
    }
    assert app_paths <= set(document["paths"])
    assert document == openapi_document()


def _ingest(client, body, token, table="packets"):
    return client.post(
        f"/api/ingest?table={table}",
        content=body,
        headers={"Content-Type": "application/vnd.apache.arrow.stream", "X-Netrecall-Batch": token},
    )


def test_ingest_is_idempotent_and_flows_are_not_doubled(store, service):
    batch = packets_batch()
    body = arrow_stream(batch)
    with TestClient(build_app(service, token=TOKEN, mcp=False), headers=AUTH) as c:
        first = _ingest(c, body, "agent-a:000001")
        again = _ingest(c, body, "agent-a:000001")
    assert first.json() == {"rows": batch.num_rows, "duplicate": False}
    assert again.json() == {"rows": batch.num_rows, "duplicate": True}
    # A restarted hub has forgotten the token: ClickHouse's own deduplication still holds.
    with TestClient(build_app(service, token=TOKEN, mcp=False), headers=AUTH) as c:
        assert _ingest(c, body, "agent-a:000001").status_code == 200
    assert store.scalar("SELECT count() FROM packets") == batch.num_rows
    assert store.scalar("SELECT sum(packets_ab + packets_ba) FROM flows") == batch.num_rows
    assert store.scalar("SELECT countIf(flow_id = 0) FROM packets") == 0  # computed by the engine
    with TestClient(build_app(service, token=TOKEN, mcp=False), headers=AUTH) as c:
        assert _ingest(c, body, "agent-a:000002").json()["duplicate"] is False
    assert store.scalar("SELECT count() FROM packets") == 2 * batch.num_rows


@pytest.mark.parametrize(
    "headers, url, body, status",
    [
        (
            {"Content-Type": "application/json", "X-Netrecall-Batch": "tok-00001"},
            "/api/ingest?table=packets",
            b"{}",
            415,
        ),
        ({"Content-Type": "application/vnd.apache.arrow.stream"}, "/api/ingest?table=packets", None, 400),
        (
            {"Content-Type": "application/vnd.apache.arrow.stream", "X-Netrecall-Batch": "tok-00001"},
            "/api/ingest?table=api_calls",
            None,
            400,
        ),
        (
            {"Content-Type": "application/vnd.apache.arrow.stream", "X-Netrecall-Batch": "tok-00001"},
            "/api/ingest?table=packets",
            b"garbage",
            400,
        ),
        (
            {"Content-Type": "application/vnd.apache.arrow.stream", "X-Netrecall-Batch": "bad token!"},
            "/api/ingest?table=packets",
            None,
            400,
        ),
    ],
)
def test_ingest_refusals(client, headers, url, body, status):
    response = client.post(
        url, content=arrow_stream(packets_batch()) if body is None else body, headers=headers
    )
    assert response.status_code == status
    assert response.json()["error"]["message"]


def _epoch(ns: int) -> str:
    return f"{ns // 10**9}.{ns % 10**9:09d}"


def test_snapshots_and_pcap_export_stay_in_the_exports_dir(store, service, tmp_path):
    batch = packets_batch()
    with TestClient(build_app(service, token=TOKEN, mcp=False), headers=AUTH) as c:
        assert _ingest(c, arrow_stream(batch), "agent-a:000010").status_code == 200
        first, last = batch.column("ts")[0].value, batch.column("ts")[-1].value
        created = c.post(
            "/api/snapshots", json={"name": "incident-1", "since": _epoch(first), "until": _epoch(last + 1)}
        )
        assert created.status_code == 201, created.text
        assert created.json()["packets"] == batch.num_rows
        assert [s["name"] for s in c.get("/api/snapshots").json()["snapshots"]] == ["incident-1"]
        assert c.get("/api/snapshots/incident-1").json()["packets"] == batch.num_rows
        # Download: the bytes and the announced sha256 agree, and the file lives in the exports dir.
        response = c.post("/api/export/pcap", json={"ports": [18080]})
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/vnd.tcpdump.pcap"
        assert hashlib.sha256(response.content).hexdigest() == response.headers["x-netrecall-sha256"]
        summary = c.post(
            "/api/export/pcap", json={"ports": [18080], "download": False, "snapshot": "incident-1"}
        ).json()
        assert summary["packets"] == batch.num_rows
        assert summary["path"].startswith(str(tmp_path / "exports"))
        again = c.get(f"/api/exports/{summary['file']}")
        assert hashlib.sha256(again.content).hexdigest() == summary["sha256"]
        # No caller path reaches the filesystem: unknown fields such as a path are ignored.
        sneaky = c.post(
            "/api/export/pcap",
            json={"ports": [18080], "download": False, "path": "/tmp/x.pcap", "out": "/tmp/x.pcap"},
        ).json()
        assert sneaky["path"].startswith(str(tmp_path / "exports"))
        assert c.delete("/api/snapshots/incident-1").json() == {"deleted": "incident-1"}
        assert c.get("/api/snapshots/incident-1").status_code == 404
    tshark = subprocess.run(
        ["tshark", "-r", summary["path"], "-T", "fields", "-e", "frame.number"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert len(tshark.stdout.split()) == batch.num_rows


def test_same_answers_on_a_clickhouse_server(any_store, tmp_path):
    """The hub over both store backends (embedded, and ClickHouse's HTTP protocol): ingest dedup,
    errors summary, redacted call detail and SQL behave the same."""
    load_incident(any_store)
    service = Service(any_store, exports_dir=tmp_path / "exports")
    body = arrow_stream(packets_batch())
    with TestClient(build_app(service, token=TOKEN, mcp=False), headers=AUTH) as c:
        assert _ingest(c, body, "both-backends:1").json()["duplicate"] is False
    with TestClient(build_app(service, token=TOKEN, mcp=False), headers=AUTH) as c:  # tokens forgotten
        assert _ingest(c, body, "both-backends:1").status_code == 200
        assert c.post("/api/sql", json={"sql": "SELECT count() FROM packets"}).json()["rows"] == [[36]]
        flows = c.post("/api/sql", json={"sql": "SELECT sum(packets_ab + packets_ba) FROM flows"}).json()
        assert flows["rows"] == [[36]]
        kinds = {g["kind"]: g["count"] for g in c.get("/api/errors").json()["groups"]}
        assert kinds["http_5xx"] == 5 and kinds["dns_error"] == 5
        detail = c.get("/api/calls/fail0000", params={"payload": "true"}).json()
        assert detail["request"]["headers"]["Authorization"] == "[REDACTED]"


def test_workloads_now_and_at_a_time(store, service):
    from netrecall.demo import __file__ as demo_init
    from netrecall.ingest.identity import IdentityResolver

    rows = IdentityResolver.from_inventory(str(Path(demo_init).parent / "inventory.json")).workload_rows()
    store.insert_arrow("workloads", rows)
    with TestClient(build_app(service, token=TOKEN, mcp=False), headers=AUTH) as c:
        now = c.get("/api/workloads", params={"namespace": "payment"}).json()
        assert now["total"] >= 1 and {w["namespace"] for w in now["workloads"]} == {"payment"}
        first = min(w["valid_from"] for w in now["workloads"])
        at = c.get("/api/workloads", params={"namespace": "payment", "at": first}).json()
        assert at["total"] >= 1 and all(w["valid_from"] <= first for w in at["workloads"])
        before = c.get("/api/workloads", params={"at": "2001-01-01T00:00:00Z"}).json()
        assert before["total"] == 0
        assert c.get("/api/workloads", params={"limit": 1}).json()["truncated"] is True


def test_flows_per_connection_and_per_workload_pair(store, service):
    batch = packets_batch()
    insert_packets(store, batch)
    with TestClient(build_app(service, token=TOKEN, mcp=False), headers=AUTH) as c:
        flows = c.get("/api/flows").json()
        pairs = c.get("/api/flows", params={"aggregate": "true"}).json()
        by_port = c.get("/api/flows", params={"port": 18080, "ip": "127.0.0.1"}).json()
        none = c.get("/api/flows", params={"port": 1}).json()
    assert sum(f["packets"] for f in flows["flows"]) == batch.num_rows
    assert all(f["dst_port"] == 18080 and f["src_ip"] == "127.0.0.1" for f in flows["flows"])
    assert all(f["rtt_us"] is not None and f["resets"] == 0 for f in flows["flows"])
    assert len(pairs["flows"]) == 1 and pairs["flows"][0]["flows"] == flows["total"]
    assert by_port["total"] == flows["total"] and none["total"] == 0


@pytest.mark.parametrize("since", ["9223372036854775808", "-999999w", "9999-01-01T00:00:00Z"])
def test_a_time_beyond_2262_is_a_clear_400_not_a_crash(client, since):
    """Found by schemathesis: an epoch-seconds `since` past int64 nanoseconds overflowed when the export
    formatted it (500). Times are bounded where they are parsed: one line naming the value."""
    for method, path, body in (
        ("post", "/api/export/pcap", {"since": since, "download": False}),
        ("get", f"/api/calls?since={since}", None),
    ):
        answer = client.post(path, json=body) if method == "post" else client.get(path)
        assert answer.status_code == 400, (path, answer.text)
        message = answer.json()["error"]["message"]
        assert since in message and "out of range" in message and "\n" not in message
