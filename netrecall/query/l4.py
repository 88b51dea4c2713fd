"""TCP-level failures and health from the flows table: what Kubeshark's `list_l4_flows` and its `tcp_flow`
fields answer, plus what breaks before any error code exists.

Every flow is merged over the window (its one-minute rows summed) and classified:

- `timeout`: the client's SYNs got neither SYN-ACK nor RST (a dropped SYN, a dead pod): counted once the
  first SYN is older than `SYN_PATIENCE` before the end of the data, so a handshake cut by the end of a
  capture is not one;
- `refused`: a RST came back instead of a SYN-ACK (the port is closed);
- `tcp_reset`: a RST on an established connection (`reset_by` says which end sent one);
- retransmissions (a lower bound, see docs/schema.md) per data segment, zero-window packets, handshake
  RTT (SYN to SYN-ACK) and time to first byte (the server's first payload after the client's), in
  microseconds with Kubeshark's names (`tcp_handshake_p50_us` ...).

Groups are per client/server workload and port by default, or per pod, namespace, node or service
(Kubeshark's `aggregate`); the client is the end that sent the SYN. `failure_groups` feeds
summarize_errors its `timeout`, `refused` and `tcp_reset` kinds, and `no_response` for requests that
never got an answer (the client gave up or the connection died).
"""

from __future__ import annotations

from typing import Any

from netrecall.errors import NetrecallError
from netrecall.query.rca import Scope, _check_ip, _limit, _ts, who
from netrecall.store import Store

SYN_PATIENCE_NS = 1_000_000_000  # a SYN younger than this at the end of the data may still be answered
AGGREGATES = ("workload", "pod", "namespace", "node", "service")
# Request/response protocols: a request there without a response is a failure (not for DNS: dns_failures
# reports NO_RESPONSE lookups; not for one-way Kafka produces).
ANSWERED_PROTOCOLS = ("http", "http2", "grpc", "redis", "postgresql")


def _name(side: str, aggregate: str) -> str:
    """One end of a flow as the aggregate names it; an end without that identity is its IP."""
    ip = f"replaceRegexpOne(toString(ip_{side}), '^::ffff:', '')"
    ns = f"{side}_namespace"
    if aggregate == "pod":
        return f"if({side}_pod != '', concat({ns}, '/', {side}_pod), {ip})"
    if aggregate == "namespace":
        return f"if({ns} != '', {ns}, {ip})"
    if aggregate == "node":
        return f"if({side}_node != '', {side}_node, {ip})"
    if aggregate == "service":
        return f"multiIf({side}_service != '', concat({ns}, '/', {side}_service), {_name(side, 'workload')})"
    return (
        f"multiIf({side}_workload != '', concat({ns}, '/', splitByChar('/', {side}_workload)[-1]), "
        f"{side}_service != '', concat({ns}, '/', {side}_service), "
        f"{side}_pod != '', concat({ns}, '/', {side}_pod), {ip})"
    )


def _merged(table: str, where: str) -> str:
    """One row per flow over the window, with its classification (client = a unless b sent the SYN)."""
    identity = ", ".join(
        f"anyLast({s}_{f}) AS {s}_{f}"
        for s in ("a", "b")
        for f in ("pod", "namespace", "service", "workload", "node")
    )
    return f"""
        SELECT flow_id, any(l4) AS l4, any(ip_a) AS ip_a, any(port_a) AS port_a, any(ip_b) AS ip_b,
               any(port_b) AS port_b, max(syn_from) AS syn_from, min(first_ts) AS first_ts,
               max(last_ts) AS last_ts, sum(packets_ab) AS packets_ab, sum(packets_ba) AS packets_ba,
               sum(bytes_ab) AS bytes_ab, sum(bytes_ba) AS bytes_ba,
               groupBitOr(tcp_flags_ab) AS flags_ab, groupBitOr(tcp_flags_ba) AS flags_ba,
               min(syn_ts) AS syn_ts_, min(synack_ts) AS synack_ts_, sum(resets) AS resets,
               sum(data_segments) AS data_segments, sum(retransmissions) AS retransmissions,
               sum(syns) AS syns, sum(zero_windows) AS zero_windows,
               min(first_data_ab) AS data_ab, min(first_data_ba) AS data_ba, {identity}
        FROM {table} WHERE {where} GROUP BY flow_id
    """


def _classified(merged: str) -> str:
    """Client/server orientation and the failure class of each merged flow."""
    client_first = "syn_from != 2"
    return f"""
        SELECT *,
               l4 = 6 AND syn_from != 0 AND synack_ts_ IS NULL AND resets > 0 AS refused,
               l4 = 6 AND syn_from != 0 AND synack_ts_ IS NULL AND resets = 0
                   AND toUnixTimestamp64Nano(syn_ts_) < {{horizon:Int64}} AS timed_out,
               l4 = 6 AND (synack_ts_ IS NOT NULL OR syn_from = 0) AND resets > 0 AS reset_mid,
               if(synack_ts_ IS NULL OR syn_ts_ IS NULL, NULL,
                  dateDiff('microsecond', syn_ts_, synack_ts_)) AS rtt_us,
               if({client_first}, data_ab, data_ba) AS client_data,
               if({client_first}, data_ba, data_ab) AS server_data,
               if(client_data IS NULL OR server_data IS NULL OR server_data < client_data, NULL,
                  dateDiff('microsecond', client_data, server_data)) AS ttfb_us,
               if({client_first}, bitAnd(flags_ab, 4) != 0, bitAnd(flags_ba, 4) != 0) AS client_rst,
               if({client_first}, bitAnd(flags_ba, 4) != 0, bitAnd(flags_ab, 4) != 0) AS server_rst
        FROM ({merged})
    """


def _ends(aggregate: str) -> tuple[str, str]:
    a, b = _name("a", aggregate), _name("b", aggregate)
    return f"if(syn_from = 2, {b}, {a})", f"if(syn_from = 2, {a}, {b})"


def _flow_scope(
    since_ns: int | None, until_ns: int | None, snapshot: str | None
) -> tuple[str, list[str], list[str], dict[str, Any]]:
    """(table, WHERE on rows, HAVING on merged flows, params): a flow belongs to the window when its
    packets overlap it (in WHERE, first_ts/last_ts would name the merged aggregates, hence HAVING)."""
    scope = Scope("flows", snapshot=snapshot)
    where, having, params = list(scope.where), [], dict(scope.params)
    if since_ns is not None:
        where.append("window_start >= toStartOfMinute(fromUnixTimestamp64Nano({since:Int64}))")
        having.append("last_ts >= fromUnixTimestamp64Nano({since:Int64})")
        params["since"] = int(since_ns)
    if until_ns is not None:
        where.append("window_start < fromUnixTimestamp64Nano({until:Int64})")
        having.append("first_ts < fromUnixTimestamp64Nano({until:Int64})")
        params["until"] = int(until_ns)
    return scope.table, where, having, params


def _horizon(store: Store, table: str, where: list[str], params: dict[str, Any], until_ns: int | None) -> int:
    """SYNs after this (ns) may still be answered: SYN_PATIENCE before the end of the data or window."""
    latest = store.scalar(
        f"SELECT toUnixTimestamp64Nano(max(last_ts)) FROM {table} WHERE {' AND '.join(where) or '1'}", params
    )
    end = int(latest or 0)
    if until_ns is not None:
        end = min(end, int(until_ns)) if end else int(until_ns)
    return end - SYN_PATIENCE_NS


def l4_flows(
    store: Store,
    since_ns: int | None = None,
    until_ns: int | None = None,
    ip: str | None = None,
    port: int | None = None,
    aggregate: str | None = None,
    l4proto: str | None = None,
    ns: str | None = None,
    pod: str | None = None,
    svc: str | None = None,
    failing: bool = False,
    limit: int = 100,
    snapshot: str | None = None,
) -> dict[str, Any]:
    """Flows (or groups of them) with their TCP health; groups with failures first when aggregated."""
    limit = _limit(limit)
    if aggregate is not None and aggregate not in AGGREGATES:
        raise NetrecallError(f"aggregate must be one of {', '.join(AGGREGATES)}, got {aggregate!r}")
    table, where, having, params = _flow_scope(since_ns, until_ns, snapshot)
    params["horizon"] = _horizon(store, table, where, params, until_ns)
    having += _having(ip, port, l4proto, ns, pod, svc, params)
    merged = _merged(table, " AND ".join(where) or "1")
    if having:
        merged += f" HAVING {' AND '.join(having)}"
    rows_sql = _classified(merged)
    failing_where = "(refused OR timed_out OR reset_mid OR retransmissions > 0 OR zero_windows > 0)"
    if aggregate:
        client, server = _ends(aggregate)
        pod_client, pod_server = _ends("pod")
        port_key = "" if aggregate in ("namespace", "node") else ", dst_port"
        port_column = ", if(syn_from = 2, port_a, port_b) AS dst_port"
        sql = f"""
            SELECT {client} AS src, {server} AS dst{port_column if port_key else ""},
                   multiIf(any(l4) = 6, 'tcp', any(l4) = 17, 'udp', toString(any(l4))) AS proto,
                   count() AS n_flows, countIf(synack_ts_ IS NOT NULL) AS n_established,
                   countIf(timed_out) AS n_timeouts, countIf(refused) AS n_refused,
                   countIf(reset_mid) AS n_resets,
                   sum(retransmissions) AS n_retrans, sum(data_segments) AS n_data,
                   sum(zero_windows) AS n_zero_windows,
                   sum(packets_ab + packets_ba) AS n_packets, sum(bytes_ab + bytes_ba) AS n_bytes,
                   quantilesIf(0.5, 0.9, 0.99)(rtt_us, rtt_us IS NOT NULL) AS rtt,
                   quantilesIf(0.5, 0.9, 0.99)(ttfb_us, ttfb_us IS NOT NULL) AS ttfb,
                   countIf(rtt_us IS NOT NULL) AS rtt_n, countIf(ttfb_us IS NOT NULL) AS ttfb_n,
                   toUnixTimestamp64Nano(min(first_ts)) AS first_seen,
                   toUnixTimestamp64Nano(max(last_ts)) AS last_seen,
                   groupUniqArray(3)({pod_client}) AS src_pods, groupUniqArray(3)({pod_server}) AS dst_pods,
                   argMaxIf(flow_id, timed_out OR refused OR reset_mid, 1) AS example_flow,
                   count() OVER () AS total
            FROM ({rows_sql}) {"WHERE " + failing_where if failing else ""}
            GROUP BY src, dst{port_key}
            ORDER BY n_timeouts + n_refused + n_resets DESC, n_retrans / greatest(n_data, 1) DESC,
                     n_flows DESC, src, dst
            LIMIT {{lim:UInt32}}
        """
        rows = store.dicts(sql, {**params, "lim": limit})
        flows = [_group(r) for r in rows]
    else:
        client, server = _ends("workload")
        sql = f"""
            SELECT {client} AS src, {server} AS dst, l4,
                   replaceRegexpOne(toString(if(syn_from = 2, ip_b, ip_a)), '^::ffff:', '') AS src_ip,
                   if(syn_from = 2, port_b, port_a) AS src_port,
                   replaceRegexpOne(toString(if(syn_from = 2, ip_a, ip_b)), '^::ffff:', '') AS dst_ip,
                   if(syn_from = 2, port_a, port_b) AS dst_port,
                   packets_ab + packets_ba AS packets, bytes_ab + bytes_ba AS bytes, resets, retransmissions,
                   data_segments, zero_windows, syns, rtt_us, ttfb_us, refused, timed_out, reset_mid,
                   client_rst, server_rst, toString(flow_id) AS flow_id,
                   toUnixTimestamp64Nano(first_ts) AS first_seen, toUnixTimestamp64Nano(last_ts) AS last_seen,
                   count() OVER () AS total
            FROM ({rows_sql}) {"WHERE " + failing_where if failing else ""}
            ORDER BY first_seen LIMIT {{lim:UInt32}}
        """
        rows = store.dicts(sql, {**params, "lim": limit})
        flows = [_flow(r) for r in rows]
    total = int(rows[0]["total"]) if rows else 0
    answer: dict[str, Any] = {"flows": flows, "total": total, "truncated": total > len(flows)}
    if aggregate:
        answer["aggregate"] = aggregate
    if answer["truncated"]:
        answer["hint"] = "filter by ip, port, ns, pod or svc, a time window, failing=true, or aggregate"
    return answer


def _having(
    ip: str | None,
    port: int | None,
    l4proto: str | None,
    ns: str | None,
    pod: str | None,
    svc: str | None,
    params: dict[str, Any],
) -> list[str]:
    """Conditions on merged flows (aggregate aliases, hence HAVING: see _flow_scope)."""
    having = []
    if ip:
        having.append("(ip_a = toIPv6({ip:String}) OR ip_b = toIPv6({ip:String}))")
        params["ip"] = _check_ip(ip)
    if port is not None:
        if not 0 <= int(port) <= 65535:
            raise NetrecallError(f"invalid port {port}: expected 0-65535")
        having.append("(port_a = {port:UInt16} OR port_b = {port:UInt16})")
        params["port"] = int(port)
    if l4proto:
        numbers = {"tcp": 6, "udp": 17}
        if l4proto.lower() not in numbers:
            raise NetrecallError(f"l4proto must be tcp or udp, got {l4proto!r}")
        having.append("l4 = {l4proto:UInt8}")
        params["l4proto"] = numbers[l4proto.lower()]
    for name, value, column in (("ns", ns, "namespace"), ("pod", pod, "pod"), ("svc", svc, "service")):
        if value:
            having.append(f"(a_{column} = {{{name}:String}} OR b_{column} = {{{name}:String}})")
            params[name] = value
    return having


def _us(values: Any, count: Any) -> list[int | None]:
    return [int(v) for v in values] if int(count) else [None, None, None]


def _group(r: dict[str, Any]) -> dict[str, Any]:
    rtt, ttfb = _us(r["rtt"], r["rtt_n"]), _us(r["ttfb"], r["ttfb_n"])
    data = int(r["n_data"])
    group: dict[str, Any] = {"src": r["src"], "dst": r["dst"]}
    if "dst_port" in r:
        group["dst_port"] = int(r["dst_port"])
    group.update(
        proto=r["proto"],
        flows=int(r["n_flows"]),
        established=int(r["n_established"]),
        timeouts=int(r["n_timeouts"]),
        refused=int(r["n_refused"]),
        resets=int(r["n_resets"]),
        retransmissions=int(r["n_retrans"]),
        retrans_rate=round(int(r["n_retrans"]) / data, 4) if data else 0.0,
        zero_windows=int(r["n_zero_windows"]),
        packets=int(r["n_packets"]),
        bytes=int(r["n_bytes"]),
        tcp_handshake_p50_us=rtt[0],
        tcp_handshake_p90_us=rtt[1],
        tcp_handshake_p99_us=rtt[2],
        ttfb_p50_us=ttfb[0],
        ttfb_p99_us=ttfb[2],
        src_pods=list(r["src_pods"]),
        dst_pods=list(r["dst_pods"]),
        first_seen=_ts(r["first_seen"]),
        last_seen=_ts(r["last_seen"]),
    )
    if group["timeouts"] or group["refused"] or group["resets"]:
        group["example_flow"] = str(r["example_flow"])
    return group


def _flow(r: dict[str, Any]) -> dict[str, Any]:
    item = {
        k: r[k]
        for k in (
            "src",
            "dst",
            "l4",
            "src_ip",
            "src_port",
            "dst_ip",
            "dst_port",
            "flow_id",
            "rtt_us",
            "ttfb_us",
        )
    }
    for key in ("packets", "bytes", "resets", "retransmissions", "zero_windows", "syns"):
        item[key] = int(r[key])
    state = "timeout" if r["timed_out"] else "refused" if r["refused"] else "reset" if r["reset_mid"] else ""
    if state:
        item["failure"] = state
    if r["reset_mid"]:
        item["reset_by"] = (
            "both" if r["client_rst"] and r["server_rst"] else "client" if r["client_rst"] else "server"
        )
    item["first_seen"], item["last_seen"] = _ts(r["first_seen"]), _ts(r["last_seen"])
    return item


KIND_TEXT = {
    "timeout": "SYN not answered on port {port}",
    "refused": "connection refused (RST to SYN) on port {port}",
    "tcp_reset": "RST on an established connection, port {port}",
}


def failure_groups(store: Store, scope: Scope, limit: int, unanswered: bool = True) -> list[dict[str, Any]]:
    """summarize_errors' TCP kinds (timeout, refused, tcp_reset) per client, server and port, and (with
    `unanswered`) no_response for requests that never got an answer, in its group shape."""
    since, until = scope.params.get("scope_since"), scope.params.get("scope_until")
    table, where, having, params = _flow_scope(since, until, scope.params.get("scope_snapshot"))
    params["horizon"] = _horizon(store, table, where, params, until)
    merged = _merged(table, " AND ".join(where) or "1") + (
        f" HAVING {' AND '.join(having)}" if having else ""
    )
    client, server = _ends("workload")
    sql = f"""
        SELECT multiIf(timed_out, 'timeout', refused, 'refused', 'tcp_reset') AS kind,
               {client} AS src, {server} AS dst, if(syn_from = 2, port_a, port_b) AS port,
               count() AS count, toUnixTimestamp64Nano(min(first_ts)) AS first_seen,
               toUnixTimestamp64Nano(max(last_ts)) AS last_seen, argMin(flow_id, first_ts) AS example_flow,
               argMin(concat(replaceRegexpOne(toString(if(syn_from = 2, ip_b, ip_a)), '^::ffff:', ''), ' -> ',
                             replaceRegexpOne(toString(if(syn_from = 2, ip_a, ip_b)), '^::ffff:', ''), ':',
                             toString(if(syn_from = 2, port_a, port_b))), first_ts) AS sample
        FROM ({_classified(merged)})
        WHERE timed_out OR refused OR reset_mid
        GROUP BY kind, src, dst, port
        ORDER BY count DESC
        LIMIT {{lim:UInt32}}
    """
    groups = [
        {
            "kind": r["kind"],
            "proto": "tcp",
            "src": r["src"],
            "dst": r["dst"],
            "code": int(r["port"]),
            "status_text": KIND_TEXT[r["kind"]].format(port=r["port"]),
            "count": int(r["count"]),
            "first_seen": _ts(r["first_seen"]),
            "last_seen": _ts(r["last_seen"]),
            "example_id": "",
            "example_flow": str(r["example_flow"]),
            "sample": r["sample"],
        }
        for r in store.dicts(sql, {**params, "lim": limit})
    ]
    return groups + (_no_response_groups(store, scope, limit) if unanswered else [])


def _no_response_groups(store: Store, scope: Scope, limit: int) -> list[dict[str, Any]]:
    protocols = ", ".join(f"'{p}'" for p in ANSWERED_PROTOCOLS)
    sql = f"""
        SELECT protocol, {who("src")} AS src, {who("dst")} AS dst, count() AS count,
               toUnixTimestamp64Nano(min(ts)) AS first_seen, toUnixTimestamp64Nano(max(ts)) AS last_seen,
               argMin(id, ts) AS example_id,
               argMin(concat(method, ' ', substring(path, 1, 160)), ts) AS sample
        FROM {scope.table} FINAL
        WHERE {scope.clause(f"protocol IN ({protocols})", "NOT has_response", "method != ''")}
        GROUP BY protocol, src, dst ORDER BY count DESC LIMIT {{lim:UInt32}}
    """
    return [
        {
            "kind": "no_response",
            "proto": r["protocol"],
            "src": r["src"],
            "dst": r["dst"],
            "code": 0,
            "status_text": "request never answered (client gave up or the connection died)",
            "count": int(r["count"]),
            "first_seen": _ts(r["first_seen"]),
            "last_seen": _ts(r["last_seen"]),
            "example_id": r["example_id"],
            "sample": r["sample"].strip(),
        }
        for r in store.dicts(sql, {**scope.params, "lim": limit})
    ]
