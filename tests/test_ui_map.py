"""The service map read from the per-minute edges (call_edges, kept by a view over api_calls) is the map
aggregated from the calls themselves: same edges, counts, errors, p50/p99, nodes and edge KFL, for every
grouping, over whole minutes and over windows with ragged ends (whose edge minutes are read from the
calls). On real captures: the four incidents recorded in network namespaces (tests/captures/incidents,
about five minutes of traffic between them) and the demo incident, imported and dissected for real."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from netrecall.demo import DEMO_INVENTORY, DEMO_NODE, DEMO_PCAP
from netrecall.dissect.runner import dissect
from netrecall.hub.ui.queries import GROUPS, service_map
from netrecall.ingest.identity import IdentityResolver
from netrecall.ingest.importer import import_files
from netrecall.schema.migrate import BACKFILLS, ensure_schema
from netrecall.schema.tables import CALL_FAILED
from netrecall.store import open_store

INCIDENTS = Path(__file__).parent / "captures" / "incidents"
NS = 1_000_000_000
# A filter every call passes that reads a column call_edges does not keep: the map then aggregates the
# calls themselves over the whole window (the reference each fast answer is compared with).
FROM_CALLS = "elapsed_time >= 0"


@pytest.fixture(scope="module")
def store(chdb_path):
    opened = open_store(f"chdb://{chdb_path}?database=ui_map_{uuid.uuid4().hex[:8]}")
    ensure_schema(opened)
    for name in ("slow", "refused", "loss", "newpath"):
        resolver = IdentityResolver.from_inventory(INCIDENTS / f"{name}.inventory.json")
        import_files(opened, [INCIDENTS / f"{name}.pcap"], node="node-1", resolver=resolver)
    import_files(
        opened, [DEMO_PCAP], node=DEMO_NODE, resolver=IdentityResolver.from_inventory(DEMO_INVENTORY)
    )
    dissect(opened)
    yield opened
    opened.command(f"DROP DATABASE IF EXISTS {opened.database}")


def _without_source(answer: dict) -> dict:
    return {k: v for k, v in answer.items() if k != "source"}


def _incident_span(store) -> tuple[int, int]:
    """The incidents' calls (the demo's are days away): about five minutes."""
    first, last = store.rows(
        "SELECT toUnixTimestamp64Nano(min(ts)), toUnixTimestamp64Nano(max(ts)) FROM api_calls "
        "WHERE node_name = 'node-1'"
    )[0]
    assert (last - first) > 4 * 60 * NS
    return int(first), int(last)


def test_the_view_keeps_every_call_in_fewer_rows(store):
    calls, failed = store.rows(f"SELECT count(), countIf({CALL_FAILED}) FROM api_calls FINAL")[0]
    rows, summed, errors = store.rows("SELECT count(), sum(calls), sum(errors) FROM call_edges")[0]
    assert summed == calls > 1000 and errors == failed > 0
    assert rows < calls / 5


@pytest.mark.parametrize("group", GROUPS)
def test_whole_minutes_from_the_edges_are_the_map_of_the_calls(store, group):
    fast = service_map(store, group=group)  # the data's boundaries: whole minutes
    assert fast["source"] == "call_edges"
    reference = service_map(store, kfl=FROM_CALLS, group=group)
    assert reference["source"] == "api_calls"
    assert _without_source(fast) == _without_source(reference)
    assert sum(e["calls"] for e in fast["edges"]) == store.scalar("SELECT count() FROM api_calls FINAL")
    assert any(e["errors"] for e in fast["edges"]) and len(fast["edges"]) > 5


@pytest.mark.parametrize("group", GROUPS)
def test_ragged_ends_come_from_the_calls_and_the_rest_from_the_edges(store, group):
    first, last = _incident_span(store)
    since, until = first + 17 * NS + 123, last - 23 * NS - 456  # mid-minute at both ends
    fast = service_map(store, since_ns=since, until_ns=until, group=group)
    reference = service_map(store, kfl=FROM_CALLS, since_ns=since, until_ns=until, group=group)
    assert (fast["source"], reference["source"]) == ("call_edges", "api_calls")
    assert _without_source(fast) == _without_source(reference)
    inside = store.scalar(
        "SELECT count() FROM api_calls FINAL WHERE ts >= fromUnixTimestamp64Nano({a:Int64}) "
        "AND ts <= fromUnixTimestamp64Nano({b:Int64})",
        {"a": since, "b": until},
    )
    everything = store.scalar("SELECT count() FROM api_calls WHERE node_name = 'node-1'")
    assert sum(e["calls"] for e in fast["edges"]) == inside < everything


def test_filters_on_the_kept_identity_columns_run_on_the_edges(store):
    first, last = _incident_span(store)
    busiest = service_map(store, since_ns=first, until_ns=last, group="workload")["edges"][0]
    for kfl in (busiest["kfl"], "http", 'dst.namespace in ["shop", "payment"] || dns'):
        fast = service_map(store, kfl=kfl, since_ns=first, until_ns=last, group="workload")
        reference = service_map(
            store, kfl=f"({kfl}) && {FROM_CALLS}", since_ns=first, until_ns=last, group="workload"
        )
        assert fast["source"] == "call_edges", kfl
        assert _without_source(fast) == _without_source(reference) and fast["edges"], kfl
    # the edge's own KFL selects exactly that edge
    only = service_map(store, kfl=busiest["kfl"], since_ns=first, until_ns=last, group="workload")["edges"]
    assert [(e["src"], e["dst"], e["calls"]) for e in only] == [
        (busiest["src"], busiest["dst"], busiest["calls"])
    ]
    # anything else (a pod, an IP, a status, a path) is read from the calls
    for kfl in ("http && status_code >= 500", 'path.startsWith("/")', 'src.pod.name != ""'):
        assert service_map(store, kfl=kfl, group="workload")["source"] == "api_calls", kfl


def test_the_migration_backfills_the_edges_and_the_histograms_from_the_stored_calls(store):
    """What the v4 -> v5 step runs once the new tables exist: call_latency and call_edges from the stored
    calls, call_latency_hourly and call_latency_dst through their views on call_latency."""
    hours = (
        "SELECT toStartOfHour(minute) AS hour, src, dst, protocol, kind, code, sum(calls), sum(failed), "
        "max(max_us), min(minute), max(minute), sum(le_5ms), sum(gt_10000ms) FROM call_latency "
        "GROUP BY ALL ORDER BY ALL"
    )
    hourly = (
        "SELECT hour, src, dst, protocol, kind, code, sum(calls), sum(failed), max(max_us), "
        "min(first_minute), max(last_minute), sum(le_5ms), sum(gt_10000ms) FROM call_latency_hourly "
        "GROUP BY ALL ORDER BY ALL"
    )
    per_dst = (
        "SELECT minute, dst, protocol, splitByChar('/', src)[1] AS src_namespace, sum(calls), sum(failed), "
        "max(max_us), sum(le_5ms), sum(le_250ms), sum(gt_10000ms) FROM call_latency GROUP BY ALL ORDER BY ALL"
    )
    dst = (
        "SELECT minute, dst, protocol, src_namespace, sum(calls), sum(failed), max(max_us), sum(le_5ms), "
        "sum(le_250ms), sum(gt_10000ms) FROM call_latency_dst GROUP BY ALL ORDER BY ALL"
    )
    before, minutes, destinations = service_map(store, group="node"), store.rows(hours), store.rows(per_dst)
    # the views on call_latency kept the hours and the destinations
    assert minutes and store.rows(hourly) == minutes and store.rows(dst) == destinations
    for table in ("call_edges", "call_latency", "call_latency_hourly", "call_latency_dst"):
        store.command(f"TRUNCATE TABLE {table}")
    assert service_map(store, group="node")["edges"] == []
    for statement in BACKFILLS[4]({"api_calls"}):  # a v4 store: none of them existed
        store.command(statement)
    assert service_map(store, group="node") == before
    assert store.rows(hours) == minutes == store.rows(hourly)
    assert store.rows(per_dst) == destinations == store.rows(dst)
