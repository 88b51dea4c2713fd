"""The DDL netrecall prints is the DDL a store really has, and the cluster DDL is the same tables made
replicated and distributed: parsed with sqlglot's ClickHouse dialect and compared structurally."""

from __future__ import annotations

import re

import pytest
import sqlglot
from sqlglot import exp

from netrecall.cli import main
from netrecall.schema.tables import LOCAL_SUFFIX, TABLES, create_table_sql, schema_statements
from netrecall.store import Store


def structure(ddl: str) -> dict:
    """The parts of a CREATE TABLE: columns (type, default, codec), indexes, engine, keys, TTL, settings."""
    tree = sqlglot.parse_one(ddl, read="clickhouse")
    assert isinstance(tree, exp.Create), ddl
    columns, indexes = [], []
    for item in tree.this.expressions:
        if isinstance(item, exp.ColumnDef):
            constraints = [c.sql("clickhouse") for c in item.args.get("constraints") or []]
            # the server spells out codec widths it chose itself (Delta -> Delta(8)): compare the choice
            constraints = [re.sub(r"\bDelta\(\d+\)", "Delta", c) for c in constraints]
            columns.append((item.name, item.args["kind"].sql("clickhouse"), tuple(constraints)))
        else:
            indexes.append(item.sql("clickhouse"))
    found: dict = {"columns": columns, "indexes": indexes, "settings": {}}
    for prop in tree.args["properties"].expressions:
        text = prop.sql("clickhouse")
        if isinstance(prop, exp.EngineProperty):
            found["engine"] = text.removeprefix("ENGINE=").removesuffix("()")
        elif isinstance(prop, exp.PartitionedByProperty):
            found["partition_by"] = text
        elif isinstance(prop, exp.Order):
            found["order_by"] = text
        elif isinstance(prop, exp.MergeTreeTTL):
            found["ttl"] = text
        elif isinstance(prop, exp.SettingsProperty):
            found["settings"] = dict(s.sql("clickhouse").split(" = ", 1) for s in prop.expressions)
    return found


@pytest.mark.parametrize("table", TABLES, ids=[t.name for t in TABLES])
def test_printed_ddl_is_what_a_fresh_store_has(store: Store, table):
    printed = structure(create_table_sql(table))
    actual = structure(store.scalar(f"SHOW CREATE TABLE {table.name}"))
    assert actual["columns"] == printed["columns"]
    assert actual["indexes"] == printed["indexes"]
    for key in ("engine", "partition_by", "order_by", "ttl"):
        assert actual.get(key) == printed.get(key), key
    # the server adds its defaults (index_granularity); every setting netrecall asks for is there
    assert printed["settings"].items() <= actual["settings"].items()


def test_cluster_ddl_is_the_same_tables_replicated_and_distributed():
    single = {t.name: structure(create_table_sql(t)) for t in TABLES}
    statements = schema_statements(cluster="prod")
    creates = [sqlglot.parse_one(s, read="clickhouse") for s in statements]
    assert all(isinstance(c, exp.Create) for c in creates)
    for table in TABLES:
        local = structure(create_table_sql(table, cluster="prod"))
        want = single[table.name]
        assert local["columns"] == want["columns"] and local["indexes"] == want["indexes"]
        assert local["order_by"] == want["order_by"] and local.get("partition_by") == want.get("partition_by")
        assert local.get("ttl") == want.get("ttl")
        engine = want["engine"].split("(")[0]
        assert local["engine"].startswith(f"Replicated{engine}('/clickhouse/tables/{{shard}}/{{database}}/")
        assert f"{table.name}{LOCAL_SUFFIX}', '{{replica}}'" in local["engine"]
    distributed = {s.split()[5]: s for s in statements if "ENGINE = Distributed(" in s}
    assert set(distributed) == {t.name for t in TABLES}
    for name in ("packets", "flows", "api_calls"):  # a flow's packets, flow rows and calls share a shard
        assert distributed[name].rstrip().endswith(f"{name}{LOCAL_SUFFIX}, flow_id)")
    # writers send flows; the views are the latency histograms' (minutes from the calls, hours and
    # destinations from the minutes) and the map's edges, each on the shard's local tables
    views = [s for s in statements if "VIEW" in s]
    assert [v.split("\n")[0].split(" ON CLUSTER prod TO ") for v in views] == [
        ["CREATE MATERIALIZED VIEW IF NOT EXISTS call_latency_mv", "call_latency_local"],
        ["CREATE MATERIALIZED VIEW IF NOT EXISTS call_latency_hourly_mv", "call_latency_hourly_local"],
        ["CREATE MATERIALIZED VIEW IF NOT EXISTS call_latency_dst_mv", "call_latency_dst_local"],
        ["CREATE MATERIALIZED VIEW IF NOT EXISTS call_edges_mv", "call_edges_local"],
    ]
    assert ["FROM call_latency_local" in view for view in views] == [False, True, True, False]
    assert ["FROM api_calls_local" in view for view in views] == [True, False, False, True]


def test_schema_print_cluster_command_output_parses(capsys):
    assert main(["schema", "print", "--cluster", "prod", "--ttl", "24h"]) == 0
    printed = [s.strip() for s in capsys.readouterr().out.split(";\n") if s.strip()]
    assert printed == schema_statements(ttl_seconds=86400, cluster="prod")
    for statement in printed:
        assert isinstance(sqlglot.parse_one(statement, read="clickhouse"), exp.Create)
    assert "TTL stored_at + toIntervalSecond(86400)" in printed[2]
