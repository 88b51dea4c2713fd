"""Grafana dashboards: every panel's SQL, expanded as the grafana-clickhouse-datasource plugin expands it
(tests/grafana_macros.py), runs on the real schema against two real datasets and returns rows:

- the demo incident (a real capture of a shop failing on DNS), imported and dissected;
- a capture recorded here: the real agent (AF_PACKET) on a node of network namespaces, curl against a
  Python HTTP server (200s and 404s), delivered through the ClickHouse HTTP front into the same store,
  with its agent_stats rows, then dissected.

A panel that returns nothing on a dataset that should fill it fails. The agent's health rows are also
checked against the agent's own final counters.
"""

from __future__ import annotations

import importlib.util
import json
import os
import uuid
from pathlib import Path

import pytest

from netrecall.demo import DEMO_INVENTORY, DEMO_NODE, DEMO_PCAP
from netrecall.dissect.runner import dissect
from netrecall.ingest.identity import IdentityResolver
from netrecall.ingest.importer import import_files
from netrecall.schema.migrate import ensure_schema
from netrecall.store import Store, open_store
from tests.agent_helpers import Proc, agent_cmd, http_traffic, two_pod_lab
from tests.grafana_macros import ALL, QueryContext, expand

ROOT = Path(__file__).resolve().parent.parent
DASHBOARDS = ROOT / "charts" / "netrecall" / "dashboards"
AGENT_NODE = "grafana-node"


def _builder():
    spec = importlib.util.spec_from_file_location("build_dashboards", ROOT / "charts" / "build_dashboards.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _panels() -> list[tuple[str, dict]]:
    found = []
    for path in sorted(DASHBOARDS.glob("*.json")):
        for panel in json.loads(path.read_text())["panels"]:
            found.append((path.stem, panel))
    return found


PANELS = _panels()
# Panels that the datasets cannot fill, by design: the demo was imported (no agent ran), and the
# recorded traffic has no DNS.
EMPTY_BY_DESIGN = {
    "demo": {"agents"},
    "recorded": {"DNS failures by name and rcode", "DNS failures over time"},
}


@pytest.fixture(scope="module")
def datasets(chdb_path: Path, tmp_path_factory: pytest.TempPathFactory):
    if os.geteuid() != 0:
        pytest.skip("the recorded capture needs network namespaces (root)")
    from tests.chfront import ChFront

    database = f"t_grafana_{uuid.uuid4().hex[:8]}"
    store = open_store(f"chdb://{chdb_path}?database={database}")
    ensure_schema(store)
    resolver = IdentityResolver.from_inventory(DEMO_INVENTORY, source="demo:inventory.json")
    import_files(store, [DEMO_PCAP], node=DEMO_NODE, resolver=resolver)
    ranges = {"demo": _range(store, f"node = '{DEMO_NODE}'")}
    with two_pod_lab() as lab, ChFront(chdb_path, host=lab.uplink_root_ip) as front:
        server = f"http://{lab.pods['b'].ip}:8080"
        inventory = tmp_path_factory.mktemp("inventory") / "pods.json"
        inventory.write_text(json.dumps(_inventory({"client": lab.pods["a"].ip, "web": lab.pods["b"].ip})))
        agent = Proc(
            agent_cmd(
                "--iface",
                "any",
                "--backend",
                "afpacket",
                "--node",
                AGENT_NODE,
                "--store",
                f"{front.url}/{database}",
                "--spool-dir",
                str(tmp_path_factory.mktemp("spool")),
                "--stats-every",
                "1",
                "--inventory",
                str(inventory),
                prefix=lab.node(),
            )
        )
        try:
            agent.wait_for("capturing with", 60)
            http_traffic(lab.in_pod("a"), f"{server}/", 30)
            http_traffic(lab.in_pod("a"), f"{server}/missing", 10)  # 404s: errors for the panels
            import time

            time.sleep(2.5)  # at least two agent_stats intervals with traffic
        finally:
            assert agent.stop() == 0, agent.text()
    summary = agent.summary()
    dissect(store)
    ranges["recorded"] = _range(store, f"node = '{AGENT_NODE}'")
    yield store, ranges, summary
    store.command(f"DROP DATABASE IF EXISTS {database}")


def _inventory(pods: dict[str, str]) -> dict:
    """`kubectl get pods,svc -A -o json` for the lab's two pods: namespace shop, a Service for web."""
    items: list[dict] = [
        {
            "kind": "Pod",
            "metadata": {"name": f"{name}-0", "namespace": "shop", "labels": {"app": name}},
            "spec": {"nodeName": AGENT_NODE},
            "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]},
        }
        for name, ip in pods.items()
    ]
    items.append(
        {
            "kind": "Service",
            "metadata": {"name": "web", "namespace": "shop"},
            "spec": {"selector": {"app": "web"}, "clusterIP": "10.96.7.7", "ports": [{"port": 8080}]},
        }
    )
    return {"kind": "List", "items": items}


def _range(store: Store, where: str) -> tuple[int, int]:
    first, last = store.rows(
        f"SELECT toUnixTimestamp(min(ts)), toUnixTimestamp(max(ts)) FROM packets WHERE {where}"
    )[0]
    return int(first) - 60, int(last) + 120  # flows start on the minute; calls end after their packets


def _context(ranges: dict, dataset: str, variables: dict | None = None) -> QueryContext:
    start, end = ranges[dataset]
    return QueryContext(
        start,
        end,
        interval_s=max(1.0, (end - start) / 500),
        variables=variables or {"namespace": [ALL], "node": [ALL]},
    )


def test_committed_dashboards_are_the_builders_output() -> None:
    built = _builder().render()
    assert set(built) == {p.name for p in DASHBOARDS.glob("*.json")}
    for name, text in built.items():
        assert (DASHBOARDS / name).read_text() == text, f"run python charts/build_dashboards.py ({name})"


def test_every_target_is_a_clickhouse_plugin_sql_query() -> None:
    assert len(PANELS) >= 15
    for _, panel in PANELS:
        (target,) = panel["targets"]
        assert target["datasource"]["type"] == "grafana-clickhouse-datasource"
        assert target["editorType"] == "sql" and target["format"] in (0, 1)
        assert "$__timeFilter(" in target["rawSql"]  # every panel follows the time picker


@pytest.mark.parametrize("dataset", ["demo", "recorded"])
@pytest.mark.parametrize("dashboard,panel", PANELS, ids=[f"{d}:{p['title']}" for d, p in PANELS])
def test_panel_returns_rows(datasets, dataset: str, dashboard: str, panel: dict) -> None:
    store, ranges, _ = datasets
    sql = expand(panel["targets"][0]["rawSql"], _context(ranges, dataset))
    assert "$" not in sql, sql  # every macro and variable expanded
    rows = store.rows(sql)
    if dashboard in EMPTY_BY_DESIGN[dataset] or panel["title"] in EMPTY_BY_DESIGN[dataset]:
        return
    assert rows, f"{panel['title']} returned nothing on the {dataset} data:\n{sql}"


def test_demo_panels_show_the_incident(datasets) -> None:
    """The figures are the data's, not just any rows: the NXDOMAIN the demo is about, by name."""
    store, ranges, _ = datasets
    dns = next(p for d, p in PANELS if p["title"] == "DNS failures by name and rcode")
    rows = store.rows(expand(dns["targets"][0]["rawSql"], _context(ranges, "demo")))
    assert ("api.payment-gateway.svc.cluster.local", "NXDOMAIN") in {(r[0], r[1]) for r in rows}


def test_namespace_variable_narrows_the_panels(datasets) -> None:
    store, ranges, _ = datasets
    bytes_panel = next(p for d, p in PANELS if p["title"] == "Bytes by namespace (either end)")
    everything = store.rows(expand(bytes_panel["targets"][0]["rawSql"], _context(ranges, "demo")))
    namespaces = sorted({row[1] for row in everything})
    assert len(namespaces) >= 2
    chosen = _context(ranges, "demo", {"namespace": [namespaces[0]], "node": [ALL]})
    narrowed = store.rows(expand(bytes_panel["targets"][0]["rawSql"], chosen))
    assert narrowed and {row[1] for row in narrowed} == {namespaces[0]}


def test_recorded_errors_and_latency_match_the_traffic(datasets) -> None:
    store, ranges, _ = datasets
    errors = next(p for d, p in PANELS if p["title"] == "HTTP/gRPC errors by workload pair")
    rows = store.rows(expand(errors["targets"][0]["rawSql"], _context(ranges, "recorded")))
    assert {(r[2], r[3], r[4]) for r in rows} == {("http", 404, 10)}  # the ten 404s, nothing else


def test_agent_writes_health_rows_matching_its_counters(datasets) -> None:
    store, _, summary = datasets
    rows = store.dicts(
        "SELECT count() AS rows, sum(captured_packets) AS captured, sum(inserted_packets) AS inserted, "
        "sum(batches) AS batches, uniqExact(run_id) AS runs, any(backend) AS backend FROM agent_stats "
        "WHERE node = {n:String}",
        {"n": AGENT_NODE},
    )[0]
    counters = summary["counters"]
    assert rows["rows"] >= 3 and rows["runs"] == 1 and rows["backend"] == "afpacket"
    assert rows["captured"] == sum(counters["captured_packets"].values())
    # the last row is written before the final delivery drains: inserted may trail by the last batches
    assert 0 < rows["inserted"] <= sum(counters["inserted_packets"].values())
    stored = store.scalar("SELECT count() FROM packets WHERE node = {n:String}", {"n": AGENT_NODE})
    assert rows["batches"] >= 1 and stored == sum(counters["inserted_packets"].values())


@pytest.mark.parametrize("dataset", ["demo", "recorded"])
def test_hourly_sums_answer_as_the_minutes_do(datasets, dataset: str) -> None:
    """The latency and error-pair panels read whole hours from call_latency_hourly and the minutes of the
    hours the range cuts from call_latency: over a range of whole hours (the hourly part) and over the
    dataset's own range (minutes only) they answer exactly as the same panels over the minutes alone."""
    store, ranges, _ = datasets
    builder = _builder()
    start, end = ranges[dataset]
    hours = (start // 3600 * 3600 - 3600, (end // 3600 + 2) * 3600 - 1)
    for span in (hours, ranges[dataset]):
        ctx = QueryContext(*span, interval_s=60, variables={"namespace": [ALL], "node": [ALL]})
        whole = store.scalar(expand(f"SELECT count() FROM {builder.HIST_SOURCE} WHERE kind = ''", ctx))
        hourly = store.scalar(
            expand(
                f"SELECT count() FROM call_latency_hourly WHERE {builder.WHOLE_HOUR.format(hour='hour')}", ctx
            )
        )
        assert whole > 0 and (hourly > 0) == (span == hours)
        for build in (builder.latency_table_sql, builder.error_pairs_sql):
            fast = store.rows(expand(build(builder.HIST_SOURCE), ctx))
            assert fast and fast == store.rows(expand(build(builder.HIST_MINUTES), ctx)), build.__name__


@pytest.mark.parametrize("title", ["p99 latency per destination over time", "Calls per second by protocol"])
def test_per_destination_minutes_answer_as_the_minutes_per_edge_do(datasets, title: str) -> None:
    """The time series read call_latency_dst (the minutes per destination and calling namespace, kept by
    a view on call_latency): the same panel over call_latency itself gives the same points."""
    store, ranges, _ = datasets
    sql = next(p for _, p in PANELS if p["title"] == title)["targets"][0]["rawSql"]
    assert "FROM call_latency_dst" in sql
    edges = "(SELECT *, splitByChar('/', src)[1] AS src_namespace FROM call_latency)"
    by_edge = sql.replace("FROM call_latency_dst", f"FROM {edges}")
    for dataset in ("demo", "recorded"):
        for namespace in ([ALL], ["shop"]):
            ctx = _context(ranges, dataset, {"namespace": namespace, "node": [ALL]})
            fast = sorted(store.rows(expand(sql, ctx)))  # points of one time in any order
            assert fast and fast == sorted(store.rows(expand(by_edge, ctx))), (dataset, namespace)


# The traffic panels as written per flow row (before they summed per pair first): the reference.
PER_ROW = {
    "Bytes by namespace (either end)": """
SELECT $__timeInterval(window_start) AS time, arrayJoin(arrayDistinct([a_namespace, b_namespace])) AS ns,
       sum(bytes_ab + bytes_ba) FROM flows WHERE $__timeFilter(window_start)
GROUP BY time, ns HAVING ns != '' AND $__conditionalAll(ns IN (${namespace:singlequote}), $namespace)""",
    "Traffic by workload pair": """
SELECT if(a_workload != '', a_workload, replaceRegexpOne(toString(ip_a), '^::ffff:', '')) AS end_a,
       if(b_workload != '', b_workload, replaceRegexpOne(toString(ip_b), '^::ffff:', '')) AS end_b,
       sum(bytes_ab + bytes_ba), sum(packets_ab + packets_ba), uniqExact(flow_id) FROM flows
WHERE $__timeFilter(window_start) GROUP BY end_a, end_b""",
    "TCP resets and retransmissions by workload pair": """
SELECT if(a_workload != '', a_workload, replaceRegexpOne(toString(ip_a), '^::ffff:', '')) AS end_a,
       if(b_workload != '', b_workload, replaceRegexpOne(toString(ip_b), '^::ffff:', '')) AS end_b,
       sum(resets), sum(retransmissions) FROM flows WHERE $__timeFilter(window_start) AND l4 = 6
GROUP BY end_a, end_b""",
}
PICK = {  # the panel's columns that the reference has, in its order
    "Bytes by namespace (either end)": (0, 1, 2),
    "Traffic by workload pair": (0, 1, 4, 5, 6),
    "TCP resets and retransmissions by workload pair": (0, 1, 2, 3),
}


@pytest.mark.parametrize("title", sorted(PER_ROW))
def test_traffic_panels_sum_per_pair_as_per_flow_row(datasets, title: str) -> None:
    store, ranges, _ = datasets
    sql = next(p for _, p in PANELS if p["title"] == title)["targets"][0]["rawSql"]
    for dataset in ("demo", "recorded"):
        ctx = _context(ranges, dataset)
        fast = sorted(tuple(row[i] for i in PICK[title]) for row in store.rows(expand(sql, ctx)))
        assert fast and fast == sorted(store.rows(expand(PER_ROW[title], ctx))), (title, dataset)
