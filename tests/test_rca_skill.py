"""The network-RCA skill, followed step by step with the MCP SDK client against the demo incident (a real
capture: shop -> checkout -> payment, whose lookup of the payment gateway fails with NXDOMAIN). The
investigation must name the failing DNS name behind the 5xx chain in at most 8 tool calls."""

from __future__ import annotations

import json
from pathlib import Path

import anyio
import pytest
from mcp import Client

import netrecall.demo
from netrecall.dissect.runner import dissect
from netrecall.hub.service import Service
from netrecall.ingest.identity import IdentityResolver
from netrecall.ingest.importer import import_files
from netrecall.mcp.server import build_server

DEMO = Path(netrecall.demo.__file__).parent
SKILL = Path(__file__).parent.parent / "skills" / "network-rca" / "SKILL.md"
ROOT_CAUSE = "api.payment-gateway.svc.cluster.local"


@pytest.fixture
def incident(store, tmp_path):
    resolver = IdentityResolver.from_inventory(DEMO / "inventory.json")
    import_files(store, [DEMO / "incident.pcap"], node="demo-node-1", resolver=resolver)
    dissect(store)
    return Service(store, exports_dir=tmp_path / "exports")


class Investigator:
    """A scripted agent: every tool call goes through the MCP client and is counted."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.calls: list[str] = []

    async def __call__(self, tool: str, **arguments) -> dict:
        self.calls.append(tool)
        result = await self.client.call_tool(tool, arguments)
        assert not result.is_error, result.content[0].text
        return json.loads(result.content[0].text)


def deepest_failure(groups: list[dict]) -> dict:
    """Skill step 3: the failing group whose source is the destination of another failing group and whose
    own destination does not fail onward."""
    failing = [g for g in groups if g["kind"] != "http_4xx"]
    sources = {g["src"] for g in failing}
    called = {g["dst"] for g in failing}
    candidates = [g for g in failing if g["src"] in called and g["dst"] not in sources]
    return min(candidates, key=lambda g: g["first_seen"])


def test_skill_reaches_the_failing_dns_name_in_at_most_8_calls(incident):
    skill = SKILL.read_text()
    for step in (
        "get_data_boundaries",
        "create_snapshot",
        "summarize_errors",
        "list_api_calls",
        "trace_call",
        "dns_failures",
        "export_pcap",
    ):
        assert step in skill

    async def investigate() -> tuple[Investigator, dict]:
        async with Client(build_server(incident)) as client:
            agent = Investigator(client)
            bounds = await agent("get_data_boundaries")  # 1: what is recorded, dissected or not
            assert bounds["api_calls"]["count"] > 0
            snap = "incident-demo"
            await agent(
                "create_snapshot",
                name=snap,
                start=bounds["window"]["start"],  # 2: freeze it
                end=bounds["window"]["end"],
            )
            errors = await agent("summarize_errors", snapshot=snap)  # 3: the chain of failures
            root = deepest_failure(errors["groups"])
            chain = [g for g in errors["groups"] if g["kind"] == "http_5xx"]
            narrowed = await agent(
                "list_api_calls",
                snapshot=snap,  # 4: confirm with a KFL filter
                kfl=f'dns && status_code != 0 && src.namespace == "{root["src"].split("/")[0]}"',
            )
            top_5xx = max(chain, key=lambda g: g["count"])
            trace = await agent("trace_call", id=root["example_id"], snapshot=snap, window="1s")  # 5
            dns = await agent("dns_failures", snapshot=snap)  # 6: name the failing lookup
            evidence = await agent("export_pcap", snapshot=snap, kfl="dns && status_code != 0")  # 7
            return agent, {
                "root": root,
                "chain": chain,
                "narrowed": narrowed,
                "top_5xx": top_5xx,
                "trace": trace,
                "dns": dns,
                "evidence": evidence,
            }

    agent, found = anyio.run(investigate)
    assert len(agent.calls) <= 8
    root, dns = found["root"], found["dns"]
    assert root["kind"] == "dns_error" and root["sample"].startswith(ROOT_CAUSE)
    assert root["status_text"] == "NXDOMAIN" and root["src"] == "payment/payment"
    assert dns["failures"][0]["qname"] == ROOT_CAUSE and dns["failures"][0]["rcode"] == "NXDOMAIN"
    assert found["narrowed"]["total"] == dns["failures"][0]["count"]
    # the 5xx chain sits on top of it and starts no earlier than the first failed lookup
    assert {(g["src"], g["dst"]) for g in found["chain"]} >= {
        ("shop/frontend", "shop/checkout"),
        ("shop/checkout", "payment/payment"),
    }
    assert all(g["first_seen"] <= g["last_seen"] for g in found["chain"])
    lookups = [e for e in found["trace"]["events"] if e["proto"] == "dns" and e.get("failed")]
    assert lookups and lookups[0]["dns"]["qname"] == ROOT_CAUSE
    assert found["evidence"]["packets"] >= 2 * dns["failures"][0]["count"]  # queries and answers
    assert Path(found["evidence"]["path"]).is_file()
