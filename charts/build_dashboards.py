"""Builds the Grafana dashboards in charts/netrecall/dashboards/ (plain JSON, no SDK: the panels are SQL).

Run `python charts/build_dashboards.py` after editing; tests/test_grafana.py checks the committed JSON
is this script's output and runs every panel's SQL, macros expanded as the ClickHouse plugin does, on
real data. Targets are the grafana-clickhouse-datasource plugin's raw-SQL queries (format 0: time
series, 1: table). Times are the tables' own: flows.window_start (one-minute rows), api_calls.ts,
agent_stats.ts.
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


def traffic() -> dict:
    namespace_of = "arrayJoin(arrayDistinct([a_namespace, b_namespace]))"
    panels = [
        panel(
            "Bytes by namespace (either end)",
            f"""
SELECT $__timeInterval(window_start) AS time, {namespace_of} AS namespace,
       sum(bytes_ab + bytes_ba) AS bytes
FROM flows
WHERE $__timeFilter(window_start)
GROUP BY time, namespace
HAVING namespace != '' AND {ns_filter("namespace")}
ORDER BY time""",
            unit="bytes",
        ),
        panel(
            "Packets by namespace (either end)",
            f"""
SELECT $__timeInterval(window_start) AS time, {namespace_of} AS namespace,
       sum(packets_ab + packets_ba) AS packets
FROM flows
WHERE $__timeFilter(window_start)
GROUP BY time, namespace
HAVING namespace != '' AND {ns_filter("namespace")}
ORDER BY time""",
        ),
        panel(
            "Traffic by workload pair",
            f"""
SELECT if(a_workload != '', a_workload, {IP.format(col="ip_a")}) AS end_a,
       if(b_workload != '', b_workload, {IP.format(col="ip_b")}) AS end_b,
       any(a_namespace) AS namespace_a, any(b_namespace) AS namespace_b,
       sum(bytes_ab + bytes_ba) AS bytes, sum(packets_ab + packets_ba) AS packets, uniqExact(flow_id) AS flows
FROM flows
WHERE $__timeFilter(window_start)
  AND ({ns_filter("a_namespace")} OR {ns_filter("b_namespace")})
GROUP BY end_a, end_b
ORDER BY bytes DESC
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
SELECT if(a_workload != '', a_workload, {IP.format(col="ip_a")}) AS end_a,
       if(b_workload != '', b_workload, {IP.format(col="ip_b")}) AS end_b,
       sum(resets) AS tcp_resets, sum(retransmissions) AS retransmitted_segments,
       round(100 * retransmitted_segments / greatest(sum(data_segments), 1), 2) AS retransmitted_pct
FROM flows
WHERE $__timeFilter(window_start) AND l4 = 6
GROUP BY end_a, end_b
HAVING tcp_resets + retransmitted_segments > 0 OR sum(data_segments) > 0
ORDER BY tcp_resets + retransmitted_segments DESC, end_a
LIMIT 50""",
            kind="table",
        ),
    ]
    return dashboard("netrecall-traffic", "netrecall / Traffic", panels, [NAMESPACES])


CALL_SIDES = (
    "if(src_workload != '', src_workload, if(src_pod != '', src_pod, " + IP.format(col="src_ip") + "))"
)
DST_SIDE = (
    "if(dst_service != '', dst_service, if(dst_workload != '', dst_workload, "
    + IP.format(col="dst_ip")
    + "))"
)
# HTTP status >= 400, or a gRPC status other than OK
CALL_ERROR = "((protocol = 'http' AND status_code >= 400) OR (protocol = 'grpc' AND grpc_status != 0))"
CALL_NS = f"({ns_filter('src_namespace')} OR {ns_filter('dst_namespace')})"


def api_calls() -> dict:
    panels = [
        panel(
            "HTTP/gRPC errors by status",
            f"""
SELECT $__timeInterval(ts) AS time,
       concat(protocol, ' ', toString(if(protocol = 'grpc', grpc_status, status_code))) AS status,
       count() AS errors
FROM api_calls
WHERE $__timeFilter(ts) AND {CALL_ERROR} AND {CALL_NS}
GROUP BY time, status
ORDER BY time""",
        ),
        panel(
            "HTTP/gRPC errors by workload pair",
            f"""
SELECT {CALL_SIDES} AS source, {DST_SIDE} AS destination, protocol,
       if(protocol = 'grpc', grpc_status, status_code) AS status,
       count() AS errors, min(ts) AS first_seen, max(ts) AS last_seen
FROM api_calls
WHERE $__timeFilter(ts) AND {CALL_ERROR} AND {CALL_NS}
GROUP BY source, destination, protocol, status
ORDER BY errors DESC
LIMIT 50""",
            kind="table",
        ),
        panel(
            "Latency percentiles per service (ms)",
            f"""
SELECT {DST_SIDE} AS service, count() AS calls,
       quantiles(0.5, 0.9, 0.99)(elapsed_time) AS q,
       round(q[1] / 1000, 3) AS p50_ms, round(q[2] / 1000, 3) AS p90_ms, round(q[3] / 1000, 3) AS p99_ms,
       round(max(elapsed_time) / 1000, 3) AS max_ms
FROM api_calls
WHERE $__timeFilter(ts) AND has_response AND protocol IN ('http', 'grpc') AND {CALL_NS}
GROUP BY service
ORDER BY p99_ms DESC
LIMIT 50""",
            kind="table",
        ),
        panel(
            "p99 latency per service over time",
            f"""
SELECT $__timeInterval(ts) AS time, {DST_SIDE} AS service,
       quantile(0.99)(elapsed_time) / 1000 AS p99_ms
FROM api_calls
WHERE $__timeFilter(ts) AND has_response AND protocol IN ('http', 'grpc') AND {CALL_NS}
GROUP BY time, service
ORDER BY time""",
            unit="ms",
        ),
        panel(
            "DNS failures by name and rcode",
            f"""
SELECT arrayJoin(if(empty(dns_questions), [''], dns_questions)) AS name,
       multiIf(status_code = 1, 'FORMERR', status_code = 2, 'SERVFAIL', status_code = 3, 'NXDOMAIN',
               status_code = 4, 'NOTIMP', status_code = 5, 'REFUSED', toString(status_code)) AS rcode,
       {CALL_SIDES} AS asked_by, count() AS failures, min(ts) AS first_seen, max(ts) AS last_seen
FROM api_calls
WHERE $__timeFilter(ts) AND protocol = 'dns' AND dns_response AND status_code != 0 AND {CALL_NS}
GROUP BY name, rcode, asked_by
ORDER BY failures DESC
LIMIT 50""",
            kind="table",
        ),
        panel(
            "DNS failures over time",
            f"""
SELECT $__timeInterval(ts) AS time, toString(status_code) AS rcode, count() AS failures
FROM api_calls
WHERE $__timeFilter(ts) AND protocol = 'dns' AND dns_response AND status_code != 0 AND {CALL_NS}
GROUP BY time, rcode
ORDER BY time""",
        ),
        panel(
            "Calls per second by protocol",
            f"""
SELECT $__timeInterval(ts) AS time, protocol, count() / $__interval_s AS calls_per_s
FROM api_calls
WHERE $__timeFilter(ts) AND {CALL_NS}
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
