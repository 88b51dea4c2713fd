"""The CLI through a running hub (`--url`): a real `netrecall serve` subprocess owning its embedded store,
fed by the agents' ingest path, dissected and queried through the hub."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from hub_packets import arrow_stream, packets_batch
from hub_process import Hub, cli_env

TOKEN = "cli-hub-token-123456"


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    running = Hub(tmp_path_factory.mktemp("hub-cli"), TOKEN).start()
    batch = packets_batch()
    response = httpx.post(
        f"{running.url}/api/ingest?table=packets",
        content=arrow_stream(batch),
        headers={
            "Authorization": f"Bearer {TOKEN}",
            "X-Netrecall-Batch": "cli-test:0001",
            "Content-Type": "application/vnd.apache.arrow.stream",
        },
        timeout=60,
    )
    assert response.json() == {"rows": batch.num_rows, "duplicate": False}
    yield running
    running.stop()


def test_dissect_then_query_call_sql_through_the_hub(hub):
    summary = json.loads(hub.cli("dissect", "--format", "json").stdout)
    assert summary[0]["total_calls"] >= 1 and summary[0]["packets"] > 0
    listed = json.loads(hub.cli("query", "http", "--format", "json").stdout)
    assert listed["total"] >= 1
    first = listed["calls"][0]
    assert first["proto"] == "http" and first["dst"]["port"] == 18080
    detail = json.loads(hub.cli("call", first["id"], "--format", "json").stdout)
    assert detail["id"] == first["id"] and "request" in detail
    rows = json.loads(hub.cli("sql", "SELECT count() AS n FROM packets", "--format", "json").stdout)
    assert rows["rows"] == [[36]]


def test_snapshot_and_export_through_the_hub(hub, tmp_path):
    created = json.loads(
        hub.cli(
            "snapshot",
            "create",
            "cli-snap",
            "--since",
            "2000-01-01T00:00:00Z",
            "--partial",
            "--format",
            "json",
        ).stdout
    )
    assert created[0]["packets"] == 36
    listed = json.loads(hub.cli("snapshot", "list", "--format", "json").stdout)
    assert [s["name"] for s in listed] == ["cli-snap"]
    out = tmp_path / "slice.pcap"
    exported = json.loads(
        hub.cli("export", "pcap", "-o", str(out), "--port", "18080", "--output-format", "json").stdout
    )
    assert exported[0]["packets"] == 36 and out.stat().st_size == exported[0]["bytes"]
    tshark = subprocess.run(
        ["tshark", "-r", str(out), "-T", "fields", "-e", "frame.number"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert len(tshark.stdout.split()) == 36
    hub.cli("snapshot", "delete", "cli-snap")
    assert json.loads(hub.cli("snapshot", "list", "--format", "json").stdout) == []


def test_wrong_token_is_one_line(hub):
    result = hub.cli("query", "http", token=False, check=False)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "401" in result.stderr
    assert "Traceback" not in result.stderr


def test_second_opener_is_told_the_hubs_url(hub):
    result = subprocess.run(
        [sys.executable, "-m", "netrecall", "query", "http", "--store", f"chdb://{hub.store_path}"],
        env=cli_env(hub.home),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert f"--url {hub.url}" in result.stderr
    assert "Traceback" not in result.stderr


def test_agent_hubsink_batches_are_stored_once(hub):
    """The agent's own sink against the hub: a retried batch (same token) is stored and counted once."""
    from netrecall.agent.batcher import Batch
    from netrecall.agent.sink import HubSink
    from netrecall.demo import __file__ as demo_init
    from netrecall.hub.client import HubClient
    from netrecall.ingest.identity import IdentityResolver

    sink = HubSink(hub.url, TOKEN)
    batch = Batch("packets", packets_batch(node="node-agent"))
    assert sink.send(batch) == batch.rows
    assert sink.send(batch) == batch.rows  # the retry answers the same count: duplicate, not stored
    inventory = IdentityResolver.from_inventory(str(Path(demo_init).parent / "inventory.json"))
    workloads = Batch("workloads", inventory.workload_rows())
    assert sink.send(workloads) == workloads.rows
    sink.close()
    client = HubClient(hub.url, TOKEN)
    count = client.sql("SELECT count() FROM packets WHERE node = 'node-agent'")["rows"]
    flows = client.sql("SELECT sum(packets_ab + packets_ba) FROM flows WHERE node = 'node-agent'")["rows"]
    assert count == [[batch.rows]] and flows == [[batch.rows]]
    listed = client.workloads(namespace="payment")
    assert listed["total"] >= 1 and all(w["namespace"] == "payment" for w in listed["workloads"])
