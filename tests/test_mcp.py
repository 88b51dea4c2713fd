"""The MCP server through the SDK's own clients: in-memory on a real store, stdio against `netrecall mcp`,
and streamable HTTP against a running hub (plus `netrecall mcp --url` relaying to it)."""

from __future__ import annotations

import json
import sys

import anyio
import httpx2
import pytest
from hub_fixtures import SECRET, load_incident
from hub_packets import arrow_stream, packets_batch
from hub_process import Hub, cli_env
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client

from netrecall.hub.service import Service
from netrecall.ingest.flows import insert_packets
from netrecall.mcp.server import build_server

DESIGN_TOOLS = {
    "get_data_boundaries",
    "list_workloads",
    "list_ips",
    "list_api_calls",
    "get_api_call",
    "get_api_stats",
    "list_l4_flows",
    "list_snapshots",
    "create_snapshot",
    "get_snapshot",
    "delete_snapshot",
    "start_snapshot_dissection",
    "export_pcap",
    "query_sql",
    "summarize_errors",
    "trace_call",
    "dns_failures",
}
WRITE_TOOLS = {"create_snapshot", "delete_snapshot", "start_snapshot_dissection", "export_pcap"}
TOKEN = "mcp-hub-token-0123456"


def run(coro_fn, *args):
    return anyio.run(coro_fn, *args)


async def call(client: Client, tool: str, **arguments) -> dict:
    result = await client.call_tool(tool, arguments)
    assert not result.is_error, result.content[0].text
    return json.loads(result.content[0].text)


async def call_error(client: Client, tool: str, **arguments) -> str:
    result = await client.call_tool(tool, arguments)
    assert result.is_error
    return result.content[0].text


@pytest.fixture
def service(store, tmp_path):
    load_incident(store)
    insert_packets(store, packets_batch())
    return Service(store, exports_dir=tmp_path / "exports")


def test_tools_schemas_and_annotations(service):
    async def go():
        async with Client(build_server(service)) as client:
            return (await client.list_tools()).tools

    tools = {t.name: t for t in run(go)}
    assert set(tools) >= DESIGN_TOOLS
    for name, tool in tools.items():
        assert tool.description and tool.input_schema["type"] == "object"
        assert tool.annotations.read_only_hint is (name not in WRITE_TOOLS), name
    for name in WRITE_TOOLS:
        assert tools[name].annotations.read_only_hint is False
    assert tools["delete_snapshot"].annotations.destructive_hint is True
    kfl_help = tools["list_api_calls"].input_schema["properties"]["kfl"]["description"]
    assert "status_code >= 500" in kfl_help and "dst.service.name" in kfl_help
    assert tools["list_api_calls"].input_schema["properties"]["limit"]["maximum"] == 1000


def test_calls_are_compact_bounded_and_redacted(service):
    async def go():
        async with Client(build_server(service)) as client:
            table = await call(client, "list_api_calls", kfl="http && status_code >= 500", limit=2)
            records = await call(client, "list_api_calls", kfl="dns", format="json")
            one = await call(client, "get_api_call", id="fail0001", include_payload=True)
            bad = await call_error(client, "list_api_calls", kfl="status_code >= ")
            too_many = await client.call_tool("list_api_calls", {"limit": 5000})
            return table, records, one, bad, too_many

    table, records, one, bad, too_many = run(go)
    assert table["total"] == 5 and table["truncated"] is True and len(table["rows"]) == 2
    assert "hint" in table and table["columns"].startswith("id time proto")
    assert table["rows"][0].split()[2:4] == ["http", "shop/frontend-7d9f"]
    assert records["total"] == 7 and records["calls"][0]["dns"]["qname"]
    assert one["request"]["headers"]["Authorization"] == "[REDACTED]"
    assert SECRET not in json.dumps(one) and "hunter2" not in json.dumps(one)
    assert "position" in bad or "expected" in bad
    assert too_many.is_error


def test_root_cause_tools(service):
    async def go():
        async with Client(build_server(service)) as client:
            errors = await call(client, "summarize_errors")
            trace = await call(client, "trace_call", id="fail0003", window="15ms")
            dns = await call(client, "dns_failures")
            stats = await call(client, "get_api_stats")
            sql = await call(client, "query_sql", sql="SELECT count() FROM api_calls WHERE status_code = 500")
            refused = await call_error(client, "query_sql", sql="INSERT INTO api_calls (id) VALUES ('x')")
            return errors, trace, dns, stats, sql, refused

    errors, trace, dns, stats, sql, refused = run(go)
    assert {g["kind"] for g in errors["groups"]} == {"http_5xx", "dns_error", "http_4xx"}
    assert any(e["proto"] == "dns" and e.get("failed") for e in trace["events"])
    assert dns["failures"][0]["qname"] == "payments.shop.svc.cluster.local"
    assert stats["protocols"][0]["protocol"] == "http"
    assert sql["rows"] == [[5]]
    assert "refused" in refused


def test_write_tools_stay_confined(service, tmp_path):
    async def go():
        async with Client(build_server(service)) as client:
            no_filter = await call_error(client, "export_pcap")
            written = await call(client, "export_pcap", ports=[18080])
            bounds = await call(client, "get_data_boundaries")
            snap = await call(
                client, "create_snapshot", name="mcp-snap", start=bounds["packets"]["first"], end="now"
            )
            listed = await call(client, "list_snapshots")
            got = await call(client, "get_snapshot", name="mcp-snap")
            job = await call(client, "start_snapshot_dissection", snapshot="mcp-snap")
            for _ in range(200):
                status = await call(client, "get_dissection_status", job=job["job"])
                if status["state"] != "running":
                    break
                await anyio.sleep(0.1)
            deleted = await call(client, "delete_snapshot", name="mcp-snap")
            bad_name = await client.call_tool("create_snapshot", {"name": "../../etc", "duration": "5m"})
            return no_filter, written, snap, listed, got, status, deleted, bad_name

    no_filter, written, snap, listed, got, status, deleted, bad_name = run(go)
    assert "at least one filter" in no_filter
    assert written["path"].startswith(str(tmp_path / "exports")) and written["packets"] == 36
    assert set(written) == {"path", "sha256", "packets", "bytes"}
    assert snap["packets"] == 36 and [s["name"] for s in listed["snapshots"]] == ["mcp-snap"]
    assert got["name"] == "mcp-snap"
    assert status["state"] == "done" and status["summary"]["total_calls"] >= 1
    assert deleted == {"deleted": "mcp-snap"}
    assert bad_name.is_error


def test_stdio_netrecall_mcp_on_its_own_store(tmp_path):
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "netrecall", "mcp", "--store", f"chdb://{tmp_path}/store"],
        env=cli_env(tmp_path),
    )

    async def go():
        async with Client(params) as client:
            names = {t.name for t in (await client.list_tools()).tools}
            bounds = await call(client, "get_data_boundaries")
            missing = await call_error(client, "get_api_call", id="nope")
            return names, bounds, missing

    names, bounds, missing = run(go)
    assert names >= DESIGN_TOOLS
    assert bounds["packets"]["count"] == 0 and bounds["api_calls"]["first"] is None
    assert "no call with id 'nope'" in missing


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    running = Hub(tmp_path_factory.mktemp("hub-mcp"), TOKEN).start()
    auth = {"Authorization": f"Bearer {TOKEN}"}
    import httpx

    ingested = httpx.post(
        f"{running.url}/api/ingest?table=packets",
        content=arrow_stream(packets_batch()),
        headers={
            **auth,
            "X-Netrecall-Batch": "mcp-test:0001",
            "Content-Type": "application/vnd.apache.arrow.stream",
        },
        timeout=60,
    )
    assert ingested.status_code == 200
    yield running
    running.stop()


def _http_transport(hub: Hub, token: str | None):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return streamable_http_client(
        f"{hub.url}/mcp", http_client=httpx2.AsyncClient(headers=headers, timeout=60)
    )


def test_streamable_http_behind_the_token(hub):
    async def go():
        async with Client(_http_transport(hub, TOKEN)) as client:
            names = {t.name for t in (await client.list_tools()).tools}
            job = await call(client, "start_snapshot_dissection")
            for _ in range(300):
                status = await call(client, "get_dissection_status", job=job["job"])
                if status["state"] != "running":
                    break
                await anyio.sleep(0.1)
            calls = await call(client, "list_api_calls", kfl="http && dst.port == 18080")
            return names, status, calls

    names, status, calls = run(go)
    assert names >= DESIGN_TOOLS
    assert status["state"] == "done"
    assert calls["total"] >= 1 and all(" http " in row for row in calls["rows"])


def test_streamable_http_refuses_without_token(hub):
    import httpx

    response = httpx.post(
        f"{hub.url}/mcp",
        json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
        headers={"Accept": "application/json, text/event-stream"},
    )
    assert response.status_code == 401

    async def go():
        async with Client(_http_transport(hub, "wrong-token-9999")) as client:
            await client.list_tools()

    with pytest.raises(BaseException):  # noqa: B017 - the SDK surfaces the 401 as its own error type
        run(go)


def test_stdio_relay_to_the_hub(hub):
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "netrecall", "mcp", "--url", hub.url, "--token", TOKEN],
        env=cli_env(hub.home),
    )

    async def go():
        async with Client(params) as client:
            bounds = await call(client, "get_data_boundaries")
            sql = await call(client, "query_sql", sql="SELECT count() FROM packets")
            return bounds, sql

    bounds, sql = run(go)
    assert bounds["packets"]["count"] == 36 and sql["rows"] == [[36]]


def test_every_cut_answer_says_how_to_narrow(service):
    async def go():
        async with Client(build_server(service)) as client:
            return [
                await call(client, "list_ips", limit=1),
                await call(client, "query_sql", sql="SELECT id FROM api_calls", max_rows=2),
                await call(client, "summarize_errors", limit=1),
                await call(client, "trace_call", id="fail0000", limit=2),
                await call(client, "list_api_calls", limit=1, format="json"),
            ]

    for answer in run(go):
        assert answer["truncated"] is True and answer["hint"]
