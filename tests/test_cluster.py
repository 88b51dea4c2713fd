"""Scale-out on a ClickHouse cluster, on a real Distributed engine.

tests/cluster_front.py runs the ClickHouse HTTP front on a chDB engine whose config declares a cluster
`nr` of one shard, this server itself, so Distributed tables really route. What cannot run here is
substituted and said: the local tables use the non-Replicated engine (Replicated needs Keeper) and the
DDL runs without `ON CLUSTER` (the distributed DDL queue needs Keeper too); the Distributed tables are
exactly what `schema print --cluster nr` prints.

Checked, on the SQL the front received: writers insert into the Distributed tables synchronously
(`distributed_foreground_insert=1`), the rows land in the `_local` tables, and reads, dissection and
retention go through the Distributed tables (or `clusterAllReplicas` for parts) and give what a single
server gives for the same capture.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import uuid
from collections import Counter
from pathlib import Path

import pytest
import sqlglot
from sqlglot import exp

from netrecall.demo import DEMO_INVENTORY, DEMO_NODE, DEMO_PCAP
from netrecall.dissect.runner import dissect
from netrecall.ingest.identity import IdentityResolver
from netrecall.ingest.importer import import_files
from netrecall.schema.migrate import SCHEMA_VERSION, ensure_schema, stored_version
from netrecall.schema.retention import apply_retention
from netrecall.schema.tables import LOCAL_SUFFIX, TABLES, schema_statements
from netrecall.store import Store, open_store

HERE = Path(__file__).resolve().parent
CLUSTER = "nr"
CALL_FIELDS = "protocol, method, path, status_code, src_port, dst_port, elapsed_time, flow_id"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def front(tmp_path_factory: pytest.TempPathFactory):
    work = tmp_path_factory.mktemp("cluster")
    port, log = _free_port(), work / "sql.jsonl"
    proc = subprocess.Popen(
        [
            sys.executable,
            str(HERE / "cluster_front.py"),
            "--path",
            str(work / "data"),
            "--port",
            str(port),
            "--log",
            str(log),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        line = proc.stdout.readline().decode()
        assert "listening on" in line, proc.stderr.read().decode()[-2000:]
        yield f"http://127.0.0.1:{port}", log
    finally:
        proc.terminate()
        proc.wait(10)


def runnable_without_keeper(statement: str) -> str:
    """The one substitution: Replicated engines and ON CLUSTER need Keeper, which chDB does not run."""
    statement = statement.replace(f" ON CLUSTER {CLUSTER}", "")
    return re.sub(
        r"Replicated(\w*MergeTree)\('/clickhouse/tables/[^']*', '\{replica\}'(?:, )?", r"\1(", statement
    )


def _sent(log: Path, since: int) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines()[since:]]


def _lines(log: Path) -> int:
    return len(log.read_text().splitlines()) if log.exists() else 0


@pytest.fixture(scope="module")
def stores(front):
    url, log = front
    cluster_db, single_db = f"c_{uuid.uuid4().hex[:8]}", f"s_{uuid.uuid4().hex[:8]}"
    cluster = open_store(f"{url}/{cluster_db}?cluster={CLUSTER}")
    for statement in schema_statements(cluster=CLUSTER):
        cluster.command(runnable_without_keeper(statement))
    cluster.command(
        "INSERT INTO netrecall_meta (key, value) VALUES ('schema_version', {v:String})",
        {"v": str(SCHEMA_VERSION)},
        settings=cluster.insert_settings(None),
    )
    single = open_store(f"{url}/{single_db}")
    ensure_schema(single)
    yield cluster, single, log


def _load_demo(store: Store) -> None:
    resolver = IdentityResolver.from_inventory(DEMO_INVENTORY, source="demo:inventory.json")
    import_files(store, [DEMO_PCAP], node=DEMO_NODE, resolver=resolver)


def test_tables_are_distributed_over_local_tables(stores) -> None:
    cluster, _, _ = stores
    engines = dict(
        cluster.rows("SELECT name, engine_full FROM system.tables WHERE database = currentDatabase()")
    )
    for table in TABLES:
        assert engines[table.name].startswith(
            f"Distributed('{CLUSTER}', '{cluster.database}', '{table.name}{LOCAL_SUFFIX}'"
        )
        assert "MergeTree" in engines[table.name + LOCAL_SUFFIX]
    assert (
        cluster.scalar(f"SELECT count() FROM system.clusters WHERE cluster = '{CLUSTER}' AND is_local") == 1
    )
    assert stored_version(cluster) == SCHEMA_VERSION  # read through the Distributed netrecall_meta


def test_writers_insert_into_distributed_tables_synchronously(stores) -> None:
    cluster, single, log = stores
    before = _lines(log)
    _load_demo(cluster)
    inserts = [r for r in _sent(log, before) if r["sql"].lstrip().upper().startswith("INSERT INTO")]
    targets = Counter(
        re.match(r"\s*INSERT INTO\s+`?(?:\w+`?\.`?)?(\w+)", r["sql"], re.I).group(1) for r in inserts
    )
    assert {"packets", "flows", "workloads", "imports"} <= set(targets)
    assert not [t for t in targets if t.endswith(LOCAL_SUFFIX)]  # never past the Distributed table
    assert all(r["settings"].get("distributed_foreground_insert") == "1" for r in inserts), inserts[:2]
    _load_demo(single)
    for table in ("packets", "flows"):
        local = cluster.scalar(f"SELECT count() FROM {table}{LOCAL_SUFFIX}")
        assert (
            local
            == cluster.scalar(f"SELECT count() FROM {table}")
            == single.scalar(f"SELECT count() FROM {table}")
            > 0
        )
    # a flow's rows sit on the shard its flow_id picks: the local table has each flow whole
    assert cluster.rows("SELECT count() FROM packets_local WHERE flow_id = 0") == [(0,)]


def test_dissection_through_distributed_tables_matches_one_server(stores) -> None:
    cluster, single, log = stores
    before = _lines(log)
    dissect(cluster)
    sent = _sent(log, before)
    reads = [r["sql"] for r in sent if "FROM packets" in r["sql"]]
    assert reads and not [s for s in reads if "packets_local" in s]
    dissect(single)
    got = Counter(cluster.rows(f"SELECT {CALL_FIELDS} FROM api_calls FINAL"))
    want = Counter(single.rows(f"SELECT {CALL_FIELDS} FROM api_calls FINAL"))
    assert got == want and sum(got.values()) > 0
    # again: nothing new (the watermark and call ids hold through the Distributed tables)
    dissect(cluster)
    assert cluster.scalar("SELECT count() FROM api_calls_local FINAL") == sum(got.values())


def test_retention_reads_every_replicas_parts_of_the_local_tables(stores) -> None:
    cluster, single, log = stores
    before = _lines(log)
    report = apply_retention(cluster)
    sent = " ".join(r["sql"] for r in _sent(log, before))
    assert f"clusterAllReplicas({CLUSTER}, system.parts)" in sent
    usage = {t.table: t for t in report.tables}
    single_usage = {t.table: t for t in apply_retention(single).tables}
    assert usage["packets"].rows == single_usage["packets"].rows > 0


def test_cluster_store_creates_the_cluster_schema_on_cluster() -> None:
    """What ensure_schema runs on an empty cluster store is `schema print --cluster`: every statement
    ON CLUSTER, parsed by sqlglot's ClickHouse dialect, Distributed tables sharded by flow_id."""
    statements = schema_statements(cluster=CLUSTER)
    for statement in statements:
        tree = sqlglot.parse_one(statement, read="clickhouse")
        assert isinstance(tree, exp.Create) and f"ON CLUSTER {CLUSTER}" in statement
    distributed = [s for s in statements if "ENGINE = Distributed(" in s]
    assert len(distributed) == len(TABLES)
    for table in TABLES:
        (ddl,) = [s for s in distributed if s.split()[5] == table.name]
        key = "flow_id" if "flow_id" in table.column_names else "rand()"
        assert ddl.endswith(f"Distributed({CLUSTER}, currentDatabase(), {table.name}{LOCAL_SUFFIX}, {key})")
