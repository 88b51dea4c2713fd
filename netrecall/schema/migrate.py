"""Create the schema idempotently and move an older store forward, one numbered step at a time."""

from __future__ import annotations

from collections.abc import Callable

from netrecall.errors import NetrecallError
from netrecall.schema.tables import (
    API_CALLS,
    CALL_EDGES_MV,
    CALL_LATENCY_MV,
    DEFAULT_TTL_SECONDS,
    EXPORTS,
    FLOWS,
    PACKET_PARTS,
    PACKETS,
    Table,
    fill_select,
    schema_statements,
)
from netrecall.store import Store

SCHEMA_VERSION = 5


def _column(table: Table, name: str) -> str:
    """`name type` as the current definition has it, so a migration adds exactly what a new store has."""
    return f"`{name}` {dict(table.columns)[name]}"


def _v1_to_v2(existing: set[str]) -> list[str]:
    """packets gain `seq` (capture order among equal timestamps) and a cheaper frame codec; flows trade
    the exact per-flow sequence set for a per-batch retransmission count (the view is recreated after).
    Tables a version-1 store may not have yet (snapshot_*) are created afterwards in their new shape."""
    steps = ["DROP VIEW IF EXISTS flows_mv"]
    for table in {"packets", "snapshot_packets"} & existing:
        steps += [
            f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {_column(PACKETS, 'seq')} AFTER source",
            f"ALTER TABLE {table} MODIFY COLUMN {_column(PACKETS, 'data')}",
        ]
    for table in {"flows", "snapshot_flows"} & existing:
        steps += [
            f"ALTER TABLE {table} DROP COLUMN IF EXISTS uniq_segments",
            f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {_column(FLOWS, 'retransmissions')} "
            "AFTER data_segments",
        ]
    return steps


def _v2_to_v3(existing: set[str]) -> list[str]:
    """packets write Compact parts up to 256 MiB (one file for all columns: inserts create ~10x fewer
    files; existing parts keep their format until merged) with 256 KiB compression blocks, and the
    flows view is recreated with its cheaper per-direction SELECT (same rows)."""
    settings = ", ".join(f"{k} = {v}" for k, v in PACKET_PARTS.items())
    tables = sorted({"packets", "snapshot_packets"} & existing)
    steps = ["DROP VIEW IF EXISTS flows_mv"]
    return steps + [f"ALTER TABLE {table} MODIFY SETTING {settings}" for table in tables]


def _v3_to_v4(existing: set[str]) -> list[str]:
    """Flows are written by whoever writes packets (netrecall.ingest.flows) instead of a materialized
    view, which ClickHouse re-planned for every inserted block: the view goes, and flows compute their
    flow_id from the 5-tuple they are sent, with the packets' expression."""
    tables = sorted({"flows", "snapshot_flows"} & existing)
    steps = ["DROP VIEW IF EXISTS flows_mv"]
    return steps + [f"ALTER TABLE {table} MODIFY COLUMN {_column(FLOWS, 'flow_id')}" for table in tables]


# api_calls columns added in v5 (HTTP/2, gRPC, Redis, PostgreSQL, Kafka and TLS details), in table order.
V5_CALL_COLUMNS = API_CALLS.column_names[
    API_CALLS.column_names.index("status_message") : API_CALLS.column_names.index("has_response")
]


# flows columns added in v5 (TCP-level failures), in table order.
V5_FLOW_COLUMNS = FLOWS.column_names[FLOWS.column_names.index("syns") : FLOWS.column_names.index("a_pod")]


def _v4_to_v5(existing: set[str]) -> list[str]:
    """api_calls (and snapshot copies) gain the columns of the protocols beyond HTTP/1 and DNS, and a
    bloom filter on the TLS server name; the exports audit gains the schedule and the reason of each
    export. Existing rows read the new columns' defaults. (agent_stats is new: created afterwards.)

    Packets gain the TCP window and flows the TCP-failure counters (SYNs, zero windows, first payload
    each way); old rows read an open window and zero counts. The per-minute latency histograms
    (call_latency) and the service map's per-minute edges (call_edges) start with what api_calls already
    holds, then their views keep them."""
    steps = []
    for table in sorted({"packets", "snapshot_packets"} & existing):
        add = f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS"
        steps.append(f"{add} {_column(PACKETS, 'tcp_window')} AFTER tcp_ack")
    for table in sorted({"flows", "snapshot_flows"} & existing):
        after = "retransmissions"
        for name in V5_FLOW_COLUMNS:
            steps.append(f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {_column(FLOWS, name)} AFTER {after}")
            after = name
    if "exports" in existing:
        add = "ALTER TABLE exports ADD COLUMN IF NOT EXISTS"
        steps += [
            f"{add} {_column(EXPORTS, 'schedule')} AFTER netrecall_version",
            f"{add} {_column(EXPORTS, 'reason')} AFTER schedule",
        ]
    for table in sorted({"api_calls", "snapshot_api_calls"} & existing):
        after = "grpc_status"
        for name in V5_CALL_COLUMNS:
            steps.append(
                f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {_column(API_CALLS, name)} AFTER {after}"
            )
            after = name
        sni_index = next(ix for ix in API_CALLS.indexes if " ix_sni " in ix)
        steps.append(f"ALTER TABLE {table} ADD {sni_index.replace('INDEX', 'INDEX IF NOT EXISTS', 1)}")
    return steps


def _v5_view_backfill(existing: set[str]) -> list[str]:
    """The calls stored before call_latency and call_edges existed, into them (their views, just created,
    keep them from now on; the store has one writer: the one migrating)."""
    if "api_calls" not in existing:
        return []
    return [
        f"INSERT INTO {view.target} {fill_select(view.select, 'api_calls FINAL', '1')}"
        for view in (CALL_LATENCY_MV, CALL_EDGES_MV)
        if view.target not in existing
    ]


# MIGRATIONS[n] takes a store at version n to n + 1; afterwards the current schema's CREATE ... IF NOT
# EXISTS statements add whatever is new (tables a step did not create).
# An empty database (version 0) gets the current schema directly. On a cluster, run the same steps
# ON CLUSTER against the *_local tables (docs/scaling.md).
MIGRATIONS: dict[int, Callable[[set[str]], list[str]]] = {
    1: _v1_to_v2,
    2: _v2_to_v3,
    3: _v3_to_v4,
    4: _v4_to_v5,
}


# BACKFILLS[n] runs once the current schema exists, for a store that took step n (tables the step's
# CREATE statements made, filled from what the store held).
BACKFILLS: dict[int, Callable[[set[str]], list[str]]] = {4: _v5_view_backfill}


def stored_version(store: Store) -> int:
    exists = store.scalar("EXISTS TABLE netrecall_meta")
    if not exists:
        return 0
    value = store.scalar("SELECT argMax(value, updated_at) FROM netrecall_meta WHERE key = 'schema_version'")
    return int(value) if value else 0


def ensure_schema(store: Store) -> int:
    """Bring the store to SCHEMA_VERSION; safe to call on every start. Returns the version."""
    version = stored_version(store)
    if version > SCHEMA_VERSION:
        raise NetrecallError(
            f"store {store.address.display} has schema version {version}, newer than this netrecall "
            f"({SCHEMA_VERSION}): upgrade netrecall"
        )
    if version == SCHEMA_VERSION:
        return version
    if store.cluster:
        return _create_cluster_schema(store, version)
    # An empty database (version 0) takes the current schema as is; an older store walks the steps first.
    backfills = []
    for step in range(version, SCHEMA_VERSION) if version else ():
        existing = {row[0] for row in store.rows("SHOW TABLES")}
        for statement in MIGRATIONS[step](existing):
            store.command(statement)
        backfills += BACKFILLS[step](existing) if step in BACKFILLS else []
    for statement in schema_statements(ttl_seconds=current_ttl_seconds(store)):
        store.command(statement)
    for statement in backfills:
        store.command(statement)
    store.command(
        "INSERT INTO netrecall_meta (key, value) VALUES ('schema_version', {v:String})",
        {"v": str(SCHEMA_VERSION)},
    )
    return SCHEMA_VERSION


def _create_cluster_schema(store: Store, version: int) -> int:
    """On a cluster: the Replicated local tables and the Distributed tables over them, ON CLUSTER (what
    `netrecall schema print --cluster NAME` prints). The chart's migration Job runs this once per release."""
    if version:
        raise NetrecallError(
            f"store {store.address.display} has schema version {version}: moving a cluster forward is done "
            f"with the ON CLUSTER steps of docs/scaling.md; this netrecall creates version {SCHEMA_VERSION}"
        )
    for statement in schema_statements(ttl_seconds=DEFAULT_TTL_SECONDS, cluster=store.cluster):
        store.command(statement)
    store.command(
        "INSERT INTO netrecall_meta (key, value) VALUES ('schema_version', {v:String})",
        {"v": str(SCHEMA_VERSION)},
        settings=store.insert_settings(None),
    )
    return SCHEMA_VERSION


def current_ttl_seconds(store: Store) -> int:
    """The TTL last set with `netrecall retention --ttl` (kept in netrecall_meta), else the default."""
    if not store.scalar("EXISTS TABLE netrecall_meta"):
        return DEFAULT_TTL_SECONDS
    value = store.scalar("SELECT argMax(value, updated_at) FROM netrecall_meta WHERE key = 'ttl_seconds'")
    return int(value) if value else DEFAULT_TTL_SECONDS
