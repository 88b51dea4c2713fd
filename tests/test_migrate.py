"""Migration: a store made by schema version 1 (its DDL frozen in tests/fixtures) moves to the current
version with its data, and ends up with exactly the columns, codecs and view of a new store."""

from __future__ import annotations

from pathlib import Path

from netrecall.ingest.flows import flow_rows
from netrecall.schema.migrate import SCHEMA_VERSION, ensure_schema, stored_version
from netrecall.schema.tables import PACKET_GRANULES
from netrecall.store import open_store

V1_DDL = Path(__file__).parent / "fixtures" / "schema_v1.sql"


def _statements(text: str) -> list[str]:
    body = "\n".join(line for line in text.splitlines() if not line.startswith("--"))
    return [s.strip() for s in body.split(";\n") if s.strip()]


def _shape(store) -> dict:
    """Every column (position, type, default, codec), each table's engine clause (keys, TTL, settings) and
    the views' queries, by table."""
    columns = store.rows(
        "SELECT table, position, name, type, default_kind, default_expression, compression_codec "
        "FROM system.columns "
        "WHERE database = currentDatabase() ORDER BY table, position"
    )
    views = store.rows(
        "SELECT name, replace(as_select, currentDatabase() || '.', '') FROM system.tables "
        "WHERE database = currentDatabase() AND engine = 'MaterializedView'"
    )
    engines = store.rows(
        "SELECT name, engine_full FROM system.tables WHERE database = currentDatabase() "
        "AND engine LIKE '%MergeTree' ORDER BY name"
    )
    engines = [(name, _settings_sorted(engine)) for name, engine in engines]
    return {"columns": columns, "views": views, "engines": engines}


def _settings_sorted(engine_full: str) -> str:
    """An ALTER ... MODIFY SETTING appends the setting: the order of SETTINGS items carries no meaning.
    PACKET_GRANULES is left out: ClickHouse fixes it when a table is created, so only new stores have it."""
    clause, _, settings = engine_full.partition(" SETTINGS ")
    kept = [s for s in settings.split(", ") if s.split(" = ")[0] not in PACKET_GRANULES]
    return f"{clause} SETTINGS {', '.join(sorted(kept))}"


def test_version_1_store_migrates_to_the_current_shape_keeping_its_data(store_url, chdb_path):
    old = open_store(store_url)
    for statement in _statements(V1_DDL.read_text()):
        old.command(statement)
    old.command("INSERT INTO netrecall_meta (key, value) VALUES ('schema_version', '1')")
    a, b = "'::ffff:10.0.0.1'", "'::ffff:10.0.0.2'"
    columns = "ts, node, ip_version, src_ip, dst_ip, l4, src_port, dst_port, tcp_flags, payload_len, origlen"
    old.command(
        f"INSERT INTO packets ({columns}, caplen, data) VALUES "
        f"('2026-01-01 00:00:00.000000001', 'n1', 4, {a}, {b}, 6, 40000, 80, 2, 0, 3, 3, 'a\\0b')"
    )
    assert stored_version(old) == 1

    assert ensure_schema(old) == SCHEMA_VERSION == 5
    assert stored_version(old) == SCHEMA_VERSION
    # the old rows are still there, the new column takes its default, and new flows join the old ones
    kept = old.rows(
        "SELECT count(), any(seq), any(data) AS data FROM packets", column_formats={"data": "bytes"}
    )
    assert kept == [(1, 0, b"a\x00b")]
    segment = f"'2026-01-01 00:00:01', 'n1', 4, {a}, {b}, 6, 40000, 80, 24, 5, 60, 7"
    old.command(f"INSERT INTO packets ({columns}, tcp_seq, seq) VALUES ({segment}, 1), ({segment}, 2)")
    old.insert_arrow("flows", flow_rows(old.arrow("SELECT * FROM packets WHERE seq > 0")))
    # one flow: the id the migrated flows table computes is the one the version-1 view wrote
    assert old.rows("SELECT sum(retransmissions), sum(packets_ab), uniqExact(flow_id) FROM flows") == [
        (1, 3, 1)
    ]

    fresh = open_store(f"chdb://{chdb_path}?database={old.database}_fresh")
    ensure_schema(fresh)
    try:
        assert _shape(old) == _shape(fresh)
        packets_engine = fresh.scalar(
            "SELECT engine_full FROM system.tables WHERE name = 'packets' AND database = currentDatabase()"
        )
        assert "index_granularity_bytes = 1048576" in packets_engine
    finally:
        for migrated in (old, fresh):
            migrated.command(f"DROP DATABASE IF EXISTS {migrated.database}")
