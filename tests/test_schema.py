"""Schema: idempotent creation, versioning, flows written and rebuilt alike, cluster DDL as SQL."""

from __future__ import annotations

import sqlglot

from netrecall.errors import NetrecallError
from netrecall.ingest.flows import flow_rows
from netrecall.schema.migrate import SCHEMA_VERSION, ensure_schema, stored_version
from netrecall.schema.tables import FLOWS, FLOWS_SELECT, TABLES, schema_statements


def test_schema_is_created_once_and_versioned(store):
    assert stored_version(store) == SCHEMA_VERSION
    ensure_schema(store)  # second run is a no-op
    names = {
        row[0] for row in store.rows("SELECT name FROM system.tables WHERE database = currentDatabase()")
    }
    assert {t.name for t in TABLES} <= names
    versions = store.rows("SELECT count() FROM netrecall_meta WHERE key = 'schema_version'")
    assert versions == [(1,)]


def test_newer_store_is_refused(store):
    store.command("INSERT INTO netrecall_meta (key, value) VALUES ('schema_version', '999')")
    try:
        ensure_schema(store)
    except NetrecallError as exc:
        assert "newer than this netrecall" in str(exc)
    else:
        raise AssertionError("a store from a newer netrecall must be refused")


def test_flows_aggregate_both_directions_alike_when_written_and_when_rebuilt(store):
    columns = "ts, node, ip_version, src_ip, dst_ip, l4, src_port, dst_port, tcp_flags, tcp_seq, "
    columns += "payload_len, origlen"
    a, b = "'::ffff:10.0.0.1'", "'::ffff:10.0.0.2'"
    rows = [
        f"('2026-01-01 00:00:00.000000001', 'n1', 4, {a}, {b}, 6, 40000, 80, 2, 1, 0, 60)",  # SYN
        f"('2026-01-01 00:00:00.000100000', 'n1', 4, {b}, {a}, 6, 80, 40000, 18, 9, 0, 60)",  # SYN-ACK
        f"('2026-01-01 00:00:00.000200000', 'n1', 4, {a}, {b}, 6, 40000, 80, 24, 2, 10, 70)",  # data
        # the same segment again: a retransmission
        f"('2026-01-01 00:00:00.000300000', 'n1', 4, {a}, {b}, 6, 40000, 80, 24, 2, 10, 70)",
    ]
    store.command(f"INSERT INTO packets ({columns}) VALUES {', '.join(rows)}")
    # written: the writers' numpy aggregation of the batch; rebuilt: the SQL over the stored packets
    store.insert_arrow("flows", flow_rows(store.arrow("SELECT * FROM packets")))
    store.command("CREATE TABLE rebuilt AS flows")
    names = ", ".join(c for c in FLOWS.column_names if c != "stored_at")
    store.command(
        f"INSERT INTO rebuilt ({names}) SELECT {names} FROM ({FLOWS_SELECT.format(packets='packets')})"
    )
    for table in ("flows", "rebuilt"):
        flows = store.dicts(
            "SELECT any(port_a) AS pa, any(port_b) AS pb, sum(packets_ab) AS ab, sum(packets_ba) AS ba,"
            " sum(bytes_ab) AS bytes_ab, max(syn_from) AS syn_from,"
            " dateDiff('microsecond', min(syn_ts), min(synack_ts)) AS rtt_us,"
            f" sum(retransmissions) AS retrans, any(flow_id) AS id FROM {table} GROUP BY flow_id"
        )
        assert flows == [
            {
                "pa": 40000,
                "pb": 80,
                "ab": 3,
                "ba": 1,
                "bytes_ab": 200,
                "syn_from": 1,
                "rtt_us": 100,
                "retrans": 1,
                "id": store.scalar("SELECT any(flow_id) FROM packets"),
            }
        ], table


def test_cluster_ddl_parses_and_is_replicated():
    statements = schema_statements(cluster="prod")
    for statement in statements:
        parsed = sqlglot.parse_one(statement, read="clickhouse")
        assert parsed is not None
    local = [s for s in statements if "_local ON CLUSTER prod" in s and s.startswith("CREATE TABLE")]
    distributed = [s for s in statements if "ENGINE = Distributed(prod" in s]
    assert len(local) == len(TABLES) == len(distributed)
    assert all("Replicated" in s for s in local)
