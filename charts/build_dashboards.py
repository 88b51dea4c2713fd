"""Builds the Grafana dashboards in charts/netrecall/dashboards/ (plain JSON, no SDK: the panels are SQL).

Run `python charts/build_dashboards.py` after editing; tests/test_grafana.py checks the committed JSON
is this script's output and runs every panel's SQL, macros expanded as the ClickHouse plugin does, on
real data. Targets are the grafana-clickhouse-datasource plugin's raw-SQL queries (format 0: time
series, 1: table). Times are the tables' own: flows.window_start (one-minute rows), agent_stats.ts, and
for the API calls the minutes of the latency histograms kept by views over api_calls (docs/schema.md):
call_latency.minute (per edge, route and outcome), call_latency_dst.minute (per destination and calling
namespace: the time series), and for whole hours of a range call_latency_hourly.hour. No panel scans the
calls themselves: over a day they are millions of rows, the histograms thousands to a million.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

OUT = Path(__file__).parent / "netrecall" / "dashboards"
DATASOURCE = {"type": "grafana-clickhouse-datasource", "uid": "${datasource}"}
TIME_SERIES, TABLE = 0, 1
# IPv4 is stored v4-mapped: show it dotted
IP = "replaceRegexpOne(toString({col}), '^::ffff:', '')"
NS_FILTER = "$__conditionalAll({expr} IN (${{namespace:singlequote}}), $namespace)"


def ns_filter(expr: str) -> str:
    return NS_FILTER.format(expr=expr)


def target(sql: str, fmt: int) -> dict:
    return {"refId": "A", "datasource": DATASOURCE, "editorType": "sql", "rawSql": sql.strip(), "format": fmt}


def panel(title: str, sql: str, kind: str = "timeseries", unit: str = "short", width: int = 12) -> dict:
    fmt = TIME_SERIES if kind == "timeseries" else TABLE
    return {
        "type": kind,
        "title": title,
        "datasource": DATASOURCE,
        "targets": [target(sql, fmt)],
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {},
        "gridPos": {"h": 8, "w": width, "x": 0, "y": 0},
    }


def variable_datasource() -> dict:
    return {
        "name": "datasource",
        "label": "ClickHouse",
        "type": "datasource",
        "query": "grafana-clickhouse-datasource",
        "current": {},
    }


def variable_query(name: str, sql: str) -> dict:
    return {
        "name": name,
        "type": "query",
        "datasource": DATASOURCE,
        "query": sql,
        "definition": sql,
        "multi": True,
        "includeAll": True,
        "current": {"text": ["All"], "value": ["$__all"]},
        "refresh": 2,
        "sort": 1,
    }


NAMESPACES = variable_query(
    "namespace",
    "SELECT DISTINCT arrayJoin([a_namespace, b_namespace]) AS ns FROM flows "
    "WHERE $__timeFilter(window_start) AND ns != '' ORDER BY ns",
)
NODES = variable_query("node", "SELECT DISTINCT node FROM agent_stats WHERE $__timeFilter(ts) ORDER BY node")


def dashboard(uid: str, title: str, panels: list[dict], variables: list[dict]) -> dict:
    y = 0
    for i, item in enumerate(panels):
        item["id"] = i + 1
        item["gridPos"]["x"] = 0 if item["gridPos"]["w"] == 24 else (12 if i % 2 else 0)
        item["gridPos"]["y"] = y
        if item["gridPos"]["w"] == 24 or i % 2:
            y += 8
    return {
        "uid": uid,
        "title": title,
        "tags": ["netrecall"],
        "timezone": "utc",
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "refresh": "1m",
        "time": {"from": "now-6h", "to": "now"},
        "templating": {"list": [variable_datasource(), *variables]},
        "annotations": {"list": []},
        "panels": panels,
    }


def by_namespace(measure: str, name: str) -> str:
    """A flows measure per time and namespace (either end). Summed per namespace pair first, then each
    pair counted once under each of its namespaces: the arrays are built per pair, not per flow row (3x
    faster over a day of flows, measured; the same sums)."""
    return f"""
SELECT time, namespace, sum(pair_total) AS {name}
FROM (
    SELECT $__timeInterval(window_start) AS time, a_namespace, b_namespace, sum({measure}) AS pair_total
    FROM flows
    WHERE $__timeFilter(window_start)
    GROUP BY time, a_namespace, b_namespace
)
ARRAY JOIN arrayDistinct([a_namespace, b_namespace]) AS namespace
WHERE namespace != '' AND {ns_filter("namespace")}
GROUP BY time, namespace
ORDER BY time"""


def by_workload_pair(measures: dict[str, str], where: str) -> str:
    """Flows summed per workload pair (an end without a workload: its IP), in two levels: per the raw
    columns first (the IP only where it names the end), then per display name, which is a string built
    once per group rather than once per flow row. `measures`: output name -> aggregate over flows."""
    ip_a, ip_b = "if(a_workload = '', ip_a, toIPv6('::'))", "if(b_workload = '', ip_b, toIPv6('::'))"
    inner = ", ".join(f"{expr} AS {name}_" for name, expr in measures.items())
    return f"""
    SELECT if(a_workload != '', a_workload, {IP.format(col="end_ip_a")}) AS end_a,
           if(b_workload != '', b_workload, {IP.format(col="end_ip_b")}) AS end_b, *
    FROM (
        SELECT a_workload, b_workload, {ip_a} AS end_ip_a, {ip_b} AS end_ip_b, {inner}
        FROM flows
        WHERE $__timeFilter(window_start) AND {where}
        GROUP BY a_workload, b_workload, end_ip_a, end_ip_b
    )"""


def traffic() -> dict:
    pair_columns = {
        "namespace_a": "any(a_namespace)",
        "namespace_b": "any(b_namespace)",
        "bytes": "sum(bytes_ab + bytes_ba)",
        "packets": "sum(packets_ab + packets_ba)",
        "flows": "uniqExactState(flow_id)",
    }
    tcp_columns = {
        "resets": "sum(resets)",
        "retransmissions": "sum(retransmissions)",
        "data_segments": "sum(data_segments)",
    }
    panels = [
        panel("Bytes by namespace (either end)", by_namespace("bytes_ab + bytes_ba", "bytes"), unit="bytes"),
        panel("Packets by namespace (either end)", by_namespace("packets_ab + packets_ba", "packets")),
        panel(
            "Traffic by workload pair",
            f"""
SELECT end_a, end_b, any(namespace_a_) AS namespace_a, any(namespace_b_) AS namespace_b,
       sum(bytes_) AS bytes, sum(packets_) AS packets, uniqExactMerge(flows_) AS flows
FROM ({by_workload_pair(pair_columns, f"({ns_filter('a_namespace')} OR {ns_filter('b_namespace')})")})
GROUP BY end_a, end_b
ORDER BY bytes DESC, end_a, end_b
LIMIT 50""",
            kind="table",
            width=24,
        ),
        panel(
            "Top talkers by bytes",
            f"""
SELECT {IP.format(col="ip")} AS address, any(pod) AS pod, any(namespace) AS namespace,
       sum(bytes) AS bytes, sum(packets) AS packets
FROM (
    SELECT ip_a AS ip, a_pod AS pod, a_namespace AS namespace, bytes_ab AS bytes, packets_ab AS packets
    FROM flows WHERE $__timeFilter(window_start)
    UNION ALL
    SELECT ip_b, b_pod, b_namespace, bytes_ba, packets_ba
    FROM flows WHERE $__timeFilter(window_start)
)
WHERE {ns_filter("namespace")}
GROUP BY ip
ORDER BY bytes DESC
LIMIT 20""",
            kind="table",
        ),
        panel(
            "Top talkers by packets",
            f"""
SELECT {IP.format(col="ip")} AS address, any(pod) AS pod, any(namespace) AS namespace,
       sum(packets) AS packets, sum(bytes) AS bytes
FROM (
    SELECT ip_a AS ip, a_pod AS pod, a_namespace AS namespace, bytes_ab AS bytes, packets_ab AS packets
    FROM flows WHERE $__timeFilter(window_start)
    UNION ALL
    SELECT ip_b, b_pod, b_namespace, bytes_ba, packets_ba
    FROM flows WHERE $__timeFilter(window_start)
)
WHERE {ns_filter("namespace")}
GROUP BY ip
ORDER BY packets DESC
LIMIT 20""",
            kind="table",
        ),
        panel(
            "TCP resets and retransmissions",
            f"""
SELECT $__timeInterval(window_start) AS time,
       sum(resets) AS resets, sum(retransmissions) AS retransmissions,
       sum(data_segments) AS data_segments
FROM flows
WHERE $__timeFilter(window_start) AND l4 = 6
  AND ({ns_filter("a_namespace")} OR {ns_filter("b_namespace")})
GROUP BY time
ORDER BY time""",
        ),
        panel(
            "TCP resets and retransmissions by workload pair",
            f"""
SELECT end_a, end_b, sum(resets_) AS tcp_resets, sum(retransmissions_) AS retransmitted_segments,
       round(100 * retransmitted_segments / greatest(sum(data_segments_), 1), 2) AS retransmitted_pct
FROM ({by_workload_pair(tcp_columns, "l4 = 6")})
GROUP BY end_a, end_b
HAVING tcp_resets + retransmitted_segments > 0 OR sum(data_segments_) > 0
ORDER BY tcp_resets + retransmitted_segments DESC, end_a, end_b
LIMIT 50""",
            kind="table",
        ),
    ]
    return dashboard("netrecall-traffic", "netrecall / Traffic", panels, [NAMESPACES])


# The latency histograms (call_latency and the tables kept from it; docs/schema.md): the API-call panels
# read thousands of rows there instead of every call. Ends are ns/name; an error is a call whose `kind`
# says so (HTTP 4xx/5xx, gRPC status != 0, DNS rcode != 0), its `code` the status, grpc-status or rcode.
HIST_NS = "(" + ns_filter("splitByChar('/', src)[1]") + " OR " + ns_filter("splitByChar('/', dst)[1]") + ")"
DST_NS = "(" + ns_filter("src_namespace") + " OR " + ns_filter("splitByChar('/', dst)[1]") + ")"
HIST_BOUNDS_MS = "[5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000]"
HIST_BUCKETS = (
    "[sum(le_5ms), sum(le_10ms), sum(le_25ms), sum(le_50ms), sum(le_100ms), sum(le_250ms), sum(le_500ms), "
    "sum(le_1000ms), sum(le_2500ms), sum(le_5000ms), sum(le_10000ms), sum(gt_10000ms)]"
)


# The histograms over the range: whole hours from call_latency_hourly (kept by a view from the minutes;
# no method or route), the minutes of the hours the range cuts from call_latency. The two parts never
# overlap and add up to the minutes the time filter selects, so a panel reads ~24 x edges rows a day.
HIST_COLUMNS = (
    "src, dst, protocol, kind, code, calls, max_us, "
    + ", ".join(f"le_{ms}ms" for ms in (5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000))
    + ", gt_10000ms"
)
WHOLE_HOUR = "{hour} >= $__fromTime AND {hour} + 3540 <= $__toTime"  # its last minute is in the range
HIST_SOURCE = f"""(
    SELECT {HIST_COLUMNS}, first_minute, last_minute FROM call_latency_hourly
    WHERE {WHOLE_HOUR.format(hour="hour")}
    UNION ALL
    SELECT {HIST_COLUMNS}, minute AS first_minute, minute AS last_minute FROM call_latency
    WHERE $__timeFilter(minute) AND NOT ({WHOLE_HOUR.format(hour="toStartOfHour(minute)")})
)"""
# The same rows from the minutes alone (tests compare the panels over both).
HIST_MINUTES = (
    "(SELECT *, minute AS first_minute, minute AS last_minute FROM call_latency WHERE $__timeFilter(minute))"
)


def hist_quantile(q: float) -> str:
    """The q-quantile in ms from the summed buckets `h` (cumulative `cum`, max `top_ms`): linear inside
    its bucket and never above the slowest call, as netrecall.query.latency computes it."""
    i = f"arrayFirstIndex(c -> c >= {q} * cum[-1], cum)"
    low = f"if({i} = 1, 0, {HIST_BOUNDS_MS}[{i} - 1])"
    high = f"least(if({i} <= 11, {HIST_BOUNDS_MS}[{i}], top_ms), top_ms)"
    return (
        f"round(least({low}, top_ms) + greatest({high} - least({low}, top_ms), 0) * "
        f"({q} * cum[-1] - (cum[{i}] - h[{i}])) / greatest(h[{i}], 1), 3)"
    )


def error_pairs_sql(source: str) -> str:
    return f"""
SELECT src AS source, dst AS destination, protocol, code AS status,
       sum(calls) AS errors, min(first_minute) AS first_seen, max(last_minute) + 59 AS last_seen
FROM {source}
WHERE kind IN ('http_4xx', 'http_5xx', 'grpc_error') AND protocol IN ('http', 'grpc') AND {HIST_NS}
GROUP BY source, destination, protocol, status
ORDER BY errors DESC, source, destination, status
LIMIT 50"""


def latency_table_sql(source: str) -> str:
    return f"""
SELECT dst AS destination, sum(calls) AS calls, {HIST_BUCKETS} AS h, arrayCumSum(h) AS cum,
       max(max_us) / 1000 AS top_ms,
       {hist_quantile(0.5)} AS p50_ms, {hist_quantile(0.9)} AS p90_ms, {hist_quantile(0.99)} AS p99_ms,
       round(top_ms, 3) AS max_ms
FROM {source}
WHERE protocol IN ('http', 'grpc') AND {HIST_NS}
GROUP BY destination
HAVING cum[-1] > 0
ORDER BY p99_ms DESC, destination
LIMIT 50"""


def api_calls() -> dict:
    panels = [
        panel(
            "HTTP/gRPC errors by status",
            f"""
SELECT $__timeInterval(minute) AS time, concat(protocol, ' ', toString(code)) AS status, sum(calls) AS errors
FROM call_latency
WHERE $__timeFilter(minute) AND kind IN ('http_4xx', 'http_5xx', 'grpc_error')
  AND protocol IN ('http', 'grpc') AND {HIST_NS}
GROUP BY time, status
ORDER BY time""",
        ),
        panel("HTTP/gRPC errors by workload pair", error_pairs_sql(HIST_SOURCE), kind="table"),
        panel("Latency percentiles per destination (ms)", latency_table_sql(HIST_SOURCE), kind="table"),
        panel(
            "p99 latency per destination over time",
            f"""
SELECT $__timeInterval(minute) AS time, dst AS destination, {HIST_BUCKETS} AS h, arrayCumSum(h) AS cum,
       max(max_us) / 1000 AS top_ms, {hist_quantile(0.99)} AS p99_ms
FROM call_latency_dst
WHERE $__timeFilter(minute) AND protocol IN ('http', 'grpc') AND {DST_NS}
GROUP BY time, destination
HAVING cum[-1] > 0
ORDER BY time""",
            unit="ms",
        ),
        panel(
            "DNS failures by name and rcode",
            f"""
SELECT route AS name,
       multiIf(code = 1, 'FORMERR', code = 2, 'SERVFAIL', code = 3, 'NXDOMAIN', code = 4, 'NOTIMP',
               code = 5, 'REFUSED', toString(code)) AS rcode,
       src AS asked_by, sum(calls) AS failures, min(minute) AS first_seen, max(minute) + 59 AS last_seen
FROM call_latency
WHERE $__timeFilter(minute) AND protocol = 'dns' AND kind = 'dns_error' AND {HIST_NS}
GROUP BY name, rcode, asked_by
ORDER BY failures DESC, name, rcode, asked_by
LIMIT 50""",
            kind="table",
        ),
        panel(
            "DNS failures over time",
            f"""
SELECT $__timeInterval(minute) AS time, toString(code) AS rcode, sum(calls) AS failures
FROM call_latency
WHERE $__timeFilter(minute) AND protocol = 'dns' AND kind = 'dns_error' AND {HIST_NS}
GROUP BY time, rcode
ORDER BY time""",
        ),
        panel(
            "Calls per second by protocol",
            f"""
SELECT $__timeInterval(minute) AS time, protocol, sum(calls) / $__interval_s AS calls_per_s
FROM call_latency_dst
WHERE $__timeFilter(minute) AND {DST_NS}
GROUP BY time, protocol
ORDER BY time""",
            unit="reqps",
            width=24,
        ),
    ]
    return dashboard("netrecall-api-calls", "netrecall / API calls", panels, [NAMESPACES])


NODE_FILTER = "$__conditionalAll(node IN (${node:singlequote}), $node)"


def agents() -> dict:
    panels = [
        panel(
            "Captured packets/s per node",
            f"""
SELECT $__timeInterval(ts) AS time, node, sum(captured_packets) / $__interval_s AS packets_per_s
FROM agent_stats
WHERE $__timeFilter(ts) AND {NODE_FILTER}
GROUP BY time, node
ORDER BY time""",
            unit="pps",
        ),
        panel(
            "Dropped packets per node (kernel, user space, spool, rejected)",
            f"""
SELECT $__timeInterval(ts) AS time, node,
       sum(kernel_drops + userspace_drops + spool_dropped_packets + rejected_packets) AS dropped
FROM agent_stats
WHERE $__timeFilter(ts) AND {NODE_FILTER}
GROUP BY time, node
ORDER BY time""",
        ),
        panel(
            "Spool bytes per node",
            f"""
SELECT $__timeInterval(ts) AS time, node, max(spool_bytes) AS spool_bytes
FROM agent_stats
WHERE $__timeFilter(ts) AND {NODE_FILTER}
GROUP BY time, node
ORDER BY time""",
            unit="bytes",
        ),
        panel(
            "Batches delivered per node",
            f"""
SELECT $__timeInterval(ts) AS time, node, sum(batches) AS batches
FROM agent_stats
WHERE $__timeFilter(ts) AND {NODE_FILTER}
GROUP BY time, node
ORDER BY time""",
        ),
        panel(
            "Agents: totals over the range",
            f"""
SELECT node, any(backend) AS backend, uniqExact(run_id) AS runs, max(ts) AS last_report,
       sum(captured_packets) AS captured, sum(captured_bytes) AS captured_bytes,
       sum(inserted_packets) AS inserted, sum(kernel_drops) AS kernel_drops,
       sum(userspace_drops) AS userspace_drops, sum(spooled_packets) AS spooled,
       sum(spool_dropped_packets) AS spool_dropped, sum(batches) AS batches,
       argMax(spool_bytes, ts) AS spool_bytes
FROM agent_stats
WHERE $__timeFilter(ts) AND {NODE_FILTER}
GROUP BY node
ORDER BY node""",
            kind="table",
            width=24,
        ),
    ]
    return dashboard("netrecall-agents", "netrecall / Agent health", panels, [NODES])


DASHBOARDS = {"traffic.json": traffic, "api-calls.json": api_calls, "agents.json": agents}


def render() -> dict[str, str]:
    return {name: json.dumps(build(), indent=2) + "\n" for name, build in DASHBOARDS.items()}


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    for name, text in render().items():
        (OUT / name).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
