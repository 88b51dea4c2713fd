"""Root causes beyond error codes, on incidents recorded from real traffic in network namespaces
(tests/captures/incidents/record.py, each with its inventory and a written truth):

  slow     a dependency goes from ~5 ms to ~800 ms; its caller times out and 504s climb the chain
  refused  one pod drops SYNs (timeouts), another's port is closed (RST)
  loss     one node's link drops 20% of packets: retransmissions and slow calls, no error code
  newpath  a new deployment starts calling a service that had no such caller

For each: the tools rank the true cause first (latency rise, TCP failure, new edge), answers stay under
12 KB, and the RCA skill's branches reach the root in at most 8 MCP tool calls (the SDK's own client).
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import anyio
import pytest
from mcp import Client

from netrecall.dissect.runner import dissect
from netrecall.errors import NetrecallError
from netrecall.hub.service import Service
from netrecall.ingest.identity import IdentityResolver
from netrecall.ingest.importer import import_files
from netrecall.mcp.server import build_server, compact
from netrecall.query import changes, l4, latency, rca
from netrecall.schema.migrate import ensure_schema
from netrecall.store import open_store
from netrecall.timeutil import format_time_ns

INCIDENTS = Path(__file__).parent / "captures" / "incidents"
SKILL = Path(__file__).parent.parent / "skills" / "network-rca" / "SKILL.md"
MAX_ANSWER = 12 * 1024


def _truth(name: str) -> dict:
    return json.loads((INCIDENTS / f"{name}.truth.json").read_text())


def _load(chdb_path: Path, name: str):
    store = open_store(f"chdb://{chdb_path}?database=rca_{name}_{uuid.uuid4().hex[:8]}")
    ensure_schema(store)
    resolver = IdentityResolver.from_inventory(INCIDENTS / f"{name}.inventory.json")
    import_files(store, [INCIDENTS / f"{name}.pcap"], node="node-1", resolver=resolver)
    dissect(store)
    return store


@pytest.fixture(scope="module")
def incidents(chdb_path):
    stores = {name: _load(chdb_path, name) for name in ("slow", "refused", "loss", "newpath")}
    yield stores
    for store in stores.values():
        store.command(f"DROP DATABASE IF EXISTS {store.database}")


def _windows(truth: dict) -> dict:
    """The fault's window and the one before it, as the tools take them."""
    return {
        "start": format_time_ns(truth["fault_ns"]),
        "end": format_time_ns(truth["end_ns"]),
        "baseline_start": format_time_ns(truth["start_ns"]),
        "baseline_end": format_time_ns(truth["fault_ns"]),
    }


def _compare(store, truth: dict) -> dict:
    return changes.compare_windows(
        store, truth["fault_ns"], truth["end_ns"], truth["start_ns"], truth["fault_ns"]
    )


# --- (a) a slow dependency behind a chain of 504s ------------------------------------------------------


def test_slow_dependency_ranks_first_and_explains_the_504_chain(incidents):
    store, truth = incidents["slow"], _truth("slow")
    root = (truth["root"]["src"], truth["root"]["dst"])
    slow = latency.latency_changes(
        store, truth["fault_ns"], truth["end_ns"], truth["start_ns"], truth["fault_ns"]
    )
    first = slow["edges"][0]
    assert (first["src"], first["dst"]) == root and "explained_by" not in first
    assert first["route"] == "/stock/{id}"  # /stock/6635 and /stock/65426 are one route
    assert first["before"]["p50_ms"] < 25 and first["now"]["p50_ms"] > 500 and first["now"]["max_ms"] > 750
    # the callers got slower too, but only as far as their timeouts: explained by the hop below
    callers = {(e["src"], e["dst"]): e for e in slow["edges"][1:]}
    assert callers[("shop/web", "shop/api")]["explained_by"].startswith("shop/api -> stock/inventory")
    assert callers[("loadgen/loadgen", "shop/web")]["explained_by"].startswith("shop/web -> shop/api")
    # the tail: the slowest calls of the slow edge, each at least as slow as its p50
    assert first["tail"] and all(c["latency_ms"] >= first["now"]["p50_ms"] for c in first["tail"])
    ranked = _compare(store, truth)["changes"]
    assert (ranked[0]["src"], ranked[0]["dst"]) == root
    explained = {(c["src"], c["dst"]) for c in ranked if c["type"] == "new_error" and c.get("explained_by")}
    assert {(s, d) for s, d, _ in truth["symptoms"]} <= explained
    assert len(compact(slow)) < MAX_ANSWER


def test_histogram_percentiles_agree_with_the_exact_ones_within_a_bucket(incidents):
    store = incidents["slow"]
    edges = latency.edge_latency(store, src="shop/api", dst="stock/inventory")["edges"]
    assert len(edges) == 1
    exact = store.rows(
        "SELECT quantileExact(0.5)(elapsed_time) / 1000, quantileExact(0.99)(elapsed_time) / 1000, count() "
        "FROM api_calls WHERE dst_namespace = 'stock'"
    )[0]
    bounds = (0, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000)
    for estimate, truth in ((edges[0]["p50_ms"], exact[0]), (edges[0]["p99_ms"], exact[1])):
        low = max(b for b in bounds if b < truth)
        high = min(b for b in bounds if b >= truth)
        assert low <= estimate <= high, (estimate, truth)
    assert edges[0]["calls"] == exact[2]


def test_whole_minutes_from_the_view_count_as_the_calls_themselves(incidents):
    """The live path (call_latency minutes + raw ragged ends) and the raw path (a KFL filter forces it)
    give the same histograms."""
    store = incidents["slow"]
    window = latency._window(None, None, store, None)
    live = latency.histograms(store, window, latency.EDGE_KEYS)
    raw = latency.histograms(store, window, latency.EDGE_KEYS, kfl="http || !http")
    assert live.keys() == raw.keys()
    for key in live:
        assert (live[key].buckets, live[key].calls, live[key].failed) == (
            raw[key].buckets,
            raw[key].calls,
            raw[key].failed,
        )


def test_route_templates_group_ids(store):
    from netrecall.schema.tables import route_template_sql

    rows = store.rows(
        f"""SELECT {route_template_sql("p")}
            FROM (SELECT arrayJoin(['/orders/8812', '/orders/9911',
                                    '/u/550e8400-e29b-41d4-a716-446655440000/x', '/obj/5f2b9c0a1e7d4c3b',
                                    '/about/deadbeef', '/v2/health', '/']) AS p)"""
    )
    assert [r[0] for r in rows] == [
        "/orders/{id}",
        "/orders/{id}",
        "/u/{id}/x",
        "/obj/{id}",
        "/about/deadbeef",  # hex letters without a digit: a word, not an id
        "/v2/health",
        "/",
    ]


# --- (b) SYNs dropped (timeouts) and a closed port (refused) ---------------------------------------------


def test_timeouts_and_refusals_are_their_own_error_kinds(incidents):
    store, truth = incidents["refused"], _truth("refused")
    groups = rca.summarize_errors(store, rca.Scope())["groups"]
    by_kind = {g["kind"]: g for g in groups if g["proto"] == "tcp"}
    for kind in ("timeout", "refused"):
        expected = truth[kind]
        assert (by_kind[kind]["src"], by_kind[kind]["dst"], by_kind[kind]["code"]) == (
            expected["src"],
            expected["dst"],
            expected["port"],
        )
        assert by_kind[kind]["first_seen"] >= format_time_ns(truth["fault_ns"] - 10**9)
    # the shopper's 5xx sit on top of them, none of them is a reset on an established connection
    assert {g["code"] for g in groups if g["kind"] == "http_5xx"} == {502, 504}
    assert "tcp_reset" not in by_kind
    flows = l4.l4_flows(store, aggregate="workload", failing=True)["flows"]
    top = {(f["src"], f["dst"]): f for f in flows[:2]}
    assert top[("shop/web", "shop/cart")]["timeouts"] == by_kind["timeout"]["count"]
    assert top[("shop/web", "shop/recs")]["refused"] == by_kind["refused"]["count"]
    assert all(f["timeouts"] == f["refused"] == 0 for f in flows[2:])
    # the healthy edge: every handshake answered, in microseconds
    healthy = next(f for f in l4.l4_flows(store, aggregate="workload")["flows"] if f["dst"] == "shop/catalog")
    assert healthy["established"] == healthy["flows"] and 0 < healthy["tcp_handshake_p50_us"] < 100_000
    ranked = _compare(store, truth)["changes"]
    assert {(c["src"], c["dst"], c.get("kind")) for c in ranked[:2]} == {
        ("shop/web", "shop/cart", "timeout"),
        ("shop/web", "shop/recs", "refused"),
    }


# --- (c) packet loss on one node's link -------------------------------------------------------------------


def test_packet_loss_shows_as_retransmissions_and_latency_without_error_codes(incidents):
    store, truth = incidents["loss"], _truth("loss")
    root = (truth["root"]["src"], truth["root"]["dst"])
    assert not [g for g in rca.summarize_errors(store, rca.Scope())["groups"] if g["proto"] != "tcp"]
    nodes = l4.l4_flows(store, since_ns=truth["fault_ns"], until_ns=truth["end_ns"], aggregate="node")[
        "flows"
    ]
    assert (nodes[0]["src"], nodes[0]["dst"]) == ("node-1", truth["node"])
    assert nodes[0]["retrans_rate"] > 0.03
    assert all(n["retransmissions"] == 0 for n in nodes[1:])
    slow = latency.latency_changes(
        store, truth["fault_ns"], truth["end_ns"], truth["start_ns"], truth["fault_ns"]
    )
    assert (slow["edges"][0]["src"], slow["edges"][0]["dst"]) == root
    ranked = _compare(store, truth)["changes"]
    assert (ranked[0]["src"], ranked[0]["dst"]) == root
    assert any(c["type"] == "retransmissions" and (c["src"], c["dst"]) == root for c in ranked)


# --- (d) a new call path after a deployment ---------------------------------------------------------------


def test_a_new_caller_ranks_first_with_the_name_it_resolved(incidents):
    store, truth = incidents["newpath"], _truth("newpath")
    answer = _compare(store, truth)
    first = answer["changes"][0]
    assert first["type"] == "new_edge" and (first["src"], first["dst"]) == (
        truth["root"]["src"],
        truth["root"]["dst"],
    )
    assert first["example_id"] and first["kfl"]
    drilled = Service(store).calls(kfl=first["kfl"], since=truth["fault_ns"], until=truth["end_ns"])
    assert drilled["total"] == first["count"]  # the KFL filter selects exactly that edge's calls
    names = [c for c in answer["changes"] if c["type"] == "new_dns_name"]
    assert names[0]["name"] == truth["dns"]
    # the existing caller did not change
    existing = (truth["existing"]["src"], truth["existing"]["dst"])
    assert not [c for c in answer["changes"] if (c["src"], c["dst"]) == existing]
    assert len(compact(answer)) < MAX_ANSWER


# --- bad input --------------------------------------------------------------------------------------------


def test_bad_windows_are_one_clear_line(incidents):
    store, truth = incidents["slow"], _truth("slow")
    with pytest.raises(
        NetrecallError, match=r"baseline window .* holds no API calls \(calls are stored from"
    ):
        changes.compare_windows(store, truth["fault_ns"], truth["end_ns"], 10**18, 10**18 + 10**9)
    with pytest.raises(NetrecallError, match="the windows overlap"):
        changes.compare_windows(store, truth["fault_ns"], truth["end_ns"], truth["start_ns"], truth["end_ns"])
    with pytest.raises(NetrecallError, match=r"holds no API calls .*left the rolling window"):
        latency.latency_changes(store, truth["fault_ns"], truth["end_ns"], 10**9, 2 * 10**9)
    with pytest.raises(NetrecallError, match="the window ends"):
        latency.edge_latency(store, truth["end_ns"], truth["fault_ns"])
    with pytest.raises(NetrecallError, match=r"START\.\.END"):
        from netrecall.cli.rootcause import baseline_bounds

        baseline_bounds("-2h")


# --- the same answers through REST, the CLI and MCP; the skill's branches ----------------------------------


def test_rest_and_cli_answer_like_the_tools(incidents, capsys, chdb_path):
    from starlette.testclient import TestClient

    from netrecall.cli import main
    from netrecall.hub.app import build_app

    store, truth = incidents["refused"], _truth("refused")
    service = Service(store)
    w = _windows(truth)
    with TestClient(build_app(service, mcp=False)) as c:
        rest = c.get(
            "/api/changes",
            params={
                "since": w["start"],
                "until": w["end"],
                "baseline_since": w["baseline_start"],
                "baseline_until": w["baseline_end"],
            },
        ).json()
        nodes = c.get("/api/flows", params={"aggregate": "node", "failing": "true"}).json()
        bad = c.get("/api/flows", params={"aggregate": "rack"})
        lat = c.get("/api/latency", params={"src": "shop/", "limit": 2}).json()
    assert rest == service.changes(w["start"], w["end"], w["baseline_start"], w["baseline_end"])
    assert nodes["flows"][0]["timeouts"] + nodes["flows"][0]["refused"] > 0
    assert bad.status_code == 400 and "aggregate must be one of" in bad.json()["error"]["message"]
    assert lat["edges"] and all(e["src"].startswith("shop/") for e in lat["edges"])
    code = main(
        [
            "changes",
            "--since",
            w["start"],
            "--until",
            w["end"],
            "--baseline",
            f"{w['baseline_start']}..{w['baseline_end']}",
            "--format",
            "json",
            "--store",
            f"chdb://{chdb_path}?database={store.database}",  # this process's engine, the same database
        ]
    )
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["changes"] == rest["changes"]


class Investigator:
    """A scripted agent following the skill: every tool call goes through the MCP client and is counted."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.calls: list[str] = []
        self.sizes: list[int] = []

    async def __call__(self, tool: str, **arguments) -> dict:
        self.calls.append(tool)
        result = await self.client.call_tool(tool, arguments)
        assert not result.is_error, result.content[0].text
        self.sizes.append(len(result.content[0].text.encode()))
        return json.loads(result.content[0].text)


def test_skill_slow_and_tcp_branches_reach_the_root_in_at_most_8_calls(incidents, tmp_path):
    skill = SKILL.read_text()
    for tool in ("find_slow_edges", "list_l4_flows", "compare_windows", "get_latency"):
        assert tool in skill

    async def investigate(name: str) -> tuple[Investigator, dict]:
        truth = _truth(name)
        w = _windows(truth)
        service = Service(incidents[name], exports_dir=tmp_path / name)
        async with Client(build_server(service)) as client:
            agent = Investigator(client)
            await agent("get_data_boundaries")  # 1
            errors = await agent("summarize_errors", start=w["baseline_start"], end=w["end"])  # 2
            found: dict = {"errors": errors}
            tcp = [g for g in errors["groups"] if g["kind"] in ("timeout", "refused")]
            if tcp:  # TCP branch: who does not answer, on which port
                found["flows"] = await agent("list_l4_flows", aggregate="workload", failing=True)  # 3
            else:  # slow-path branch: what got slower than before, then the network under it
                found["slow"] = await agent("find_slow_edges", **w)  # 3
                found["nodes"] = await agent(
                    "list_l4_flows", aggregate="node", start=w["start"], end=w["end"]
                )  # 4
            found["changes"] = await agent("compare_windows", **w)  # 4/5: what changed, cause first
            first = found["changes"]["changes"][0]
            if first.get("example_id"):
                found["call"] = await agent("get_api_call", id=first["example_id"])  # 5/6
            return agent, found

    for name in ("slow", "refused", "loss", "newpath"):
        agent, found = anyio.run(investigate, name)
        truth = _truth(name)
        assert len(agent.calls) <= 8 and max(agent.sizes) < MAX_ANSWER, (name, agent.calls, agent.sizes)
        first = found["changes"]["changes"][0]
        if name == "refused":
            assert (found["flows"]["flows"][0]["src"], found["flows"]["flows"][0]["dst"]) in {
                (truth["timeout"]["src"], truth["timeout"]["dst"]),
                (truth["refused"]["src"], truth["refused"]["dst"]),
            }
            assert first["type"] == "new_tcp_failure"
        else:
            assert (first["src"], first["dst"]) == (truth["root"]["src"], truth["root"]["dst"]), name
        if name == "slow":
            assert found["slow"]["edges"][0]["dst"] == truth["root"]["dst"]
        if name == "loss":
            assert found["nodes"]["flows"][0]["dst"] == truth["node"]
