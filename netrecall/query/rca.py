"""Root-cause helpers over api_calls and flows: error summary, call tracing, DNS failures, stats, IPs.

Every answer is compact and bounded: groups rather than rows, a `limit`, `truncated` and a `hint` saying
how to narrow. Endpoints are named by workload (namespace/name), falling back to service, pod, then IP,
so a summary reads like the cluster and not like a packet dump.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from netrecall.errors import NetrecallError
from netrecall.schema.tables import CALL_ERROR_KIND, CALL_FAILED, ZERO_IS_OK
from netrecall.schema.tables import endpoint_name_sql as who  # SQL naming one end of a call
from netrecall.store import Store
from netrecall.timeutil import format_time_ns, parse_duration_ns

DNS_RCODES = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED"}
MAX_LIMIT = 1000


class Scope:
    """Which table to read (live or a snapshot's frozen copy), a time window and an optional KFL filter,
    rendered as a WHERE clause with bound parameters."""

    def __init__(
        self,
        table: str = "api_calls",
        since_ns: int | None = None,
        until_ns: int | None = None,
        snapshot: str | None = None,
        kfl: str = "",
        ts: str = "ts",
    ) -> None:
        self.params: dict[str, Any] = {}
        self.where: list[str] = []
        self.table = table
        if snapshot:
            self.table = f"snapshot_{table}"
            self.where.append("snapshot = {scope_snapshot:String}")
            self.params["scope_snapshot"] = snapshot
        if since_ns is not None:
            self.where.append(f"{ts} >= fromUnixTimestamp64Nano({{scope_since:Int64}})")
            self.params["scope_since"] = int(since_ns)
        if until_ns is not None:
            self.where.append(f"{ts} < fromUnixTimestamp64Nano({{scope_until:Int64}})")
            self.params["scope_until"] = int(until_ns)
        if kfl and kfl.strip():
            self._add_kfl(kfl)

    def _add_kfl(self, kfl: str) -> None:
        from netrecall.query.kfl import compile_filter

        compiled = compile_filter(kfl, "api_calls")
        if compiled.table != "api_calls":
            raise NetrecallError("this filter names L4 flow fields: use list_l4_flows for flows")
        sql, params = compiled.where, dict(compiled.params)
        if sql and sql != "1":
            self.where.append(f"({sql})")
            self.params.update(params)

    def clause(self, *extra: str) -> str:
        parts = [*self.where, *[e for e in extra if e]]
        return " AND ".join(parts) if parts else "1"


def _ts(value: Any) -> str | None:
    """Nanoseconds (queries select toUnixTimestamp64Nano) or a driver datetime as RFC 3339, UTC."""
    if value is None:
        return None
    if isinstance(value, int):
        return format_time_ns(value)
    if hasattr(value, "timestamp"):
        from datetime import UTC

        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        whole = int(value.timestamp())
        return format_time_ns(whole * 1_000_000_000 + value.microsecond * 1000)
    return str(value)


def _limit(limit: int) -> int:
    if limit < 1:
        raise NetrecallError("limit must be at least 1")
    return min(int(limit), MAX_LIMIT)


def summarize_errors(store: Store, scope: Scope, limit: int = 20, include_4xx: bool = True) -> dict[str, Any]:
    """Errors grouped by (kind, protocol, source, destination, code) with counts and first/last seen.

    Kinds: http_5xx, http_4xx (kept separate: a 404 storm is rarely the outage), dns_error (rcode != 0),
    grpc_error (status != 0), redis_error (error reply), postgresql_error (ErrorResponse; grouped by
    SQLSTATE), kafka_error (error code), tls_alert (fatal handshake alert), parse_error (stream that could
    not be dissected); from flows (netrecall.query.l4): timeout (SYN never answered), refused (RST to
    SYN), tcp_reset (RST on an established connection); no_response (a request never answered).
    """
    limit = _limit(limit)
    kind_filter = "kind != ''" if include_4xx else "kind NOT IN ('', 'http_4xx')"
    sql = f"""
        SELECT kind, protocol, {who("src")} AS src, {who("dst")} AS dst,
               if(kind = 'grpc_error', grpc_status, status_code) AS code, any(status_text) AS status_text,
               toString(error_code) AS error_code, substring(argMin(status_message, ts), 1, 160) AS message,
               count() AS count, toUnixTimestamp64Nano(min(ts)) AS first_seen,
               toUnixTimestamp64Nano(max(ts)) AS last_seen,
               argMin(id, ts) AS example_id,
               argMin(multiIf(protocol = 'dns', concat(dns_questions[1], ' ', dns_question_types[1]),
                              protocol = 'grpc', grpc_method,
                              protocol = 'tls', tls_sni,
                              protocol = 'kafka', concat(method, ' ', arrayStringConcat(kafka_topics, ',')),
                              concat(method, ' ', substring(path, 1, 160))), ts) AS sample,
               count() OVER () AS groups_total, sum(count()) OVER () AS errors_total
        FROM (SELECT *, {CALL_ERROR_KIND} AS kind FROM {scope.table} FINAL WHERE {scope.clause()})
        WHERE {kind_filter}
        GROUP BY kind, protocol, src, dst, code, error_code
        ORDER BY count DESC, first_seen
        LIMIT {{lim:UInt32}}
    """
    rows = store.dicts(sql, {**scope.params, "lim": limit})
    groups = [_error_group(r) for r in rows]
    from netrecall.query.l4 import failure_groups

    resets = failure_groups(store, scope, limit)  # timeout, refused, tcp_reset (flows); no_response
    groups_total = (rows[0]["groups_total"] if rows else 0) + len(resets)
    errors_total = (int(rows[0]["errors_total"]) if rows else 0) + sum(g["count"] for g in resets)
    groups = sorted(groups + resets, key=lambda g: -g["count"])[:limit]
    truncated = groups_total > len(groups)
    answer: dict[str, Any] = {"groups": groups, "errors": errors_total, "truncated": truncated}
    if truncated:
        answer["hint"] = "narrow with kfl (e.g. 'dst.namespace == \"shop\"'), a time window, or raise limit"
    if groups:
        answer["next"] = "trace_call(example_id) shows what the endpoints sent and received around an error"
    return answer


def _error_group(row: Mapping[str, Any]) -> dict[str, Any]:
    code = int(row["code"])
    text = row["status_text"] or (DNS_RCODES.get(code, "") if row["kind"] == "dns_error" else "")
    group = {
        "kind": row["kind"],
        "proto": row["protocol"],
        "src": row["src"],
        "dst": row["dst"],
        "code": code,
        "status_text": text,
        "count": int(row["count"]),
        "first_seen": _ts(row["first_seen"]),
        "last_seen": _ts(row["last_seen"]),
        "example_id": row["example_id"],
        "sample": row["sample"].strip(),
    }
    # SQLSTATE, Redis error prefix, Kafka error name; the text the server sent with it
    group.update({key: row[key] for key in ("error_code", "message") if row[key]})
    return group


def dns_failures(store: Store, scope: Scope, limit: int = 20) -> dict[str, Any]:
    """Failed lookups (rcode != 0, or a query that never got an answer) grouped by name, type and asker."""
    limit = _limit(limit)
    sql = f"""
        SELECT dns_questions[1] AS qname, dns_question_types[1] AS qtype,
               if(has_response OR dns_response, toString(status_code), 'no_response') AS rcode,
               {who("src")} AS client, {who("dst")} AS server,
               count() AS count, toUnixTimestamp64Nano(min(ts)) AS first_seen,
               toUnixTimestamp64Nano(max(ts)) AS last_seen, argMin(id, ts) AS example_id,
               count() OVER () AS groups_total
        FROM {scope.table} FINAL
        WHERE {
        scope.clause(
            "protocol = 'dns'",
            "(status_code != 0 OR (dns_request AND NOT has_response AND NOT dns_response))",
        )
    }
        GROUP BY qname, qtype, rcode, client, server
        ORDER BY count DESC, first_seen
        LIMIT {{lim:UInt32}}
    """
    rows = store.dicts(sql, {**scope.params, "lim": limit})
    failures = []
    for r in rows:
        rcode = r["rcode"]
        name = "NO_RESPONSE" if rcode == "no_response" else DNS_RCODES.get(int(rcode), f"RCODE{rcode}")
        failures.append(
            {
                "qname": r["qname"],
                "qtype": r["qtype"],
                "rcode": name,
                "client": r["client"],
                "server": r["server"],
                "count": int(r["count"]),
                "first_seen": _ts(r["first_seen"]),
                "last_seen": _ts(r["last_seen"]),
                "example_id": r["example_id"],
            }
        )
    total = rows[0]["groups_total"] if rows else 0
    answer: dict[str, Any] = {"failures": failures, "total": total, "truncated": total > len(failures)}
    if answer["truncated"]:
        answer["hint"] = "narrow with a time window or kfl (e.g. 'src.namespace == \"shop\"'), or raise limit"
    return answer


_ENDS_MATCH = "(src_ip IN ({src_ip:IPv6}, {dst_ip:IPv6}) OR dst_ip IN ({src_ip:IPv6}, {dst_ip:IPv6}))"


def trace_call(
    store: Store, call_id: str, window: str = "5s", limit: int = 50, snapshot: str | None = None
) -> dict[str, Any]:
    """What the failing call's two ends sent and received around it, in time order, DNS included.

    The source's own calls show what the client did before and after; the destination's outgoing calls
    during the call show what the server depended on while it answered (a failed lookup, a 503 upstream).
    """
    limit = _limit(limit)
    span = parse_duration_ns(window)
    base = Scope(snapshot=snapshot)
    found = store.dicts(
        f"""SELECT id, ts, elapsed_time, src_ip, dst_ip, {who("src")} AS src, {who("dst")} AS dst,
                   toUnixTimestamp64Nano(ts) AS ts_ns
            FROM {base.table} FINAL WHERE {base.clause("id = {cid:String}")} LIMIT 1""",
        {**base.params, "cid": call_id},
    )
    if not found:
        raise NetrecallError(f"no call with id {call_id!r}")
    call = found[0]
    start = int(call["ts_ns"]) - span
    end = int(call["ts_ns"]) + int(call["elapsed_time"]) * 1000 + span
    scope = Scope(snapshot=snapshot, since_ns=start, until_ns=end)
    sql = f"""
        SELECT id, toUnixTimestamp64Nano(ts) AS ts_ns, protocol, {who("src")} AS src, {who("dst")} AS dst,
               method, path, status_code,
               status_text, elapsed_time, dns_questions, dns_question_types, dns_answers, grpc_method,
               grpc_status, error,
               multiIf(id = {{cid:String}}, 'call',
                       src_ip = {{src_ip:IPv6}}, 'source_sent',
                       dst_ip = {{src_ip:IPv6}}, 'source_received',
                       src_ip = {{dst_ip:IPv6}}, 'destination_sent',
                       'destination_received') AS role,
               toUnixTimestamp64Nano(ts) BETWEEN {{call_ts:Int64}} AND {{call_end:Int64}} AS during,
               count() OVER () AS total
        FROM {scope.table} FINAL
        WHERE {scope.clause(_ENDS_MATCH)}
        -- the events nearest the call survive the limit; the answer is then put back in time order
        ORDER BY abs(toUnixTimestamp64Nano(ts) - {{call_ts:Int64}}), id
        LIMIT {{lim:UInt32}}
    """
    params = {
        **scope.params,
        "cid": call_id,
        "src_ip": str(call["src_ip"]),
        "dst_ip": str(call["dst_ip"]),
        "lim": limit,
        "call_ts": int(call["ts_ns"]),
        "call_end": int(call["ts_ns"]) + int(call["elapsed_time"]) * 1000,
    }
    rows = sorted(store.dicts(sql, params), key=lambda r: (r["ts_ns"], r["id"]))
    events = [_trace_event(r) for r in rows]
    total = rows[0]["total"] if rows else 0
    answer: dict[str, Any] = {
        "call": {"id": call_id, "ts": _ts(int(call["ts_ns"])), "src": call["src"], "dst": call["dst"]},
        "window": window,
        "events": events,
        "total": total,
        "truncated": total > len(events),
    }
    failing = [e for e in events if e.get("failed") and e["role"] != "call"]
    if failing:
        answer["failed_nearby"] = len(failing)
    if answer["truncated"]:
        answer["hint"] = "use a shorter window (e.g. window='1s') or raise limit"
    return answer


def _trace_event(r: Mapping[str, Any]) -> dict[str, Any]:
    event: dict[str, Any] = {
        "ts": _ts(int(r["ts_ns"])),
        "role": r["role"],
        "proto": r["protocol"],
        "src": r["src"],
        "dst": r["dst"],
        "id": r["id"],
    }
    proto = r["protocol"]
    if proto == "dns":
        event["dns"] = {
            "qname": r["dns_questions"][0] if r["dns_questions"] else "",
            "qtype": r["dns_question_types"][0] if r["dns_question_types"] else "",
            "rcode": DNS_RCODES.get(int(r["status_code"]), str(r["status_code"])),
            "answers": list(r["dns_answers"])[:4],
        }
        failed = int(r["status_code"]) != 0
    elif proto == "grpc":
        event.update(method=r["grpc_method"], status=int(r["grpc_status"]))
        failed = int(r["grpc_status"]) != 0
    elif proto in ZERO_IS_OK:
        event.update(method=r["method"], path=r["path"][:160], status=int(r["status_code"]))
        failed = int(r["status_code"]) != 0
    else:
        event.update(method=r["method"], path=r["path"], status=int(r["status_code"]))
        failed = int(r["status_code"]) >= 500
    if r["error"]:
        event["error"] = r["error"]
    if r["during"] and r["role"] != "call":
        event["during"] = True  # happened while the traced call was waiting for its answer
    event["latency_ms"] = round(int(r["elapsed_time"]) / 1000, 3)
    if failed or r["error"]:
        event["failed"] = True
    return event


def api_stats(store: Store, scope: Scope, top: int = 10) -> dict[str, Any]:
    """Counts by protocol and status class, latency percentiles, and the busiest endpoints."""
    top = _limit(top)
    by_proto = store.dicts(
        f"""SELECT protocol, count() AS calls,
                   countIf({CALL_FAILED}) AS errors,
                   round(quantile(0.5)(elapsed_time) / 1000, 3) AS p50_ms,
                   round(quantile(0.95)(elapsed_time) / 1000, 3) AS p95_ms,
                   toUnixTimestamp64Nano(min(ts)) AS first_seen,
               toUnixTimestamp64Nano(max(ts)) AS last_seen
            FROM {scope.table} FINAL WHERE {scope.clause()} GROUP BY protocol ORDER BY calls DESC""",
        scope.params,
    )
    endpoints = store.dicts(
        f"""SELECT {who("dst")} AS dst, protocol,
                   if(protocol = 'dns', dns_questions[1], if(protocol = 'grpc', grpc_method, path)) AS target,
                   count() AS calls,
                   countIf({CALL_FAILED}) AS errors,
                   round(quantile(0.95)(elapsed_time) / 1000, 3) AS p95_ms
            FROM {scope.table} FINAL WHERE {scope.clause()}
            GROUP BY dst, protocol, target ORDER BY calls DESC LIMIT {{lim:UInt32}}""",
        {**scope.params, "lim": top},
    )
    status = store.dicts(
        f"""SELECT protocol, status_code AS code, count() AS calls
            FROM {scope.table} FINAL WHERE {scope.clause()}
            GROUP BY protocol, code ORDER BY calls DESC LIMIT 30""",
        scope.params,
    )
    return {
        "protocols": [
            {
                **r,
                "calls": int(r["calls"]),
                "errors": int(r["errors"]),
                "first_seen": _ts(r["first_seen"]),
                "last_seen": _ts(r["last_seen"]),
            }
            for r in by_proto
        ],
        "status_codes": [{**r, "calls": int(r["calls"])} for r in status],
        "top_endpoints": [{**r, "calls": int(r["calls"]), "errors": int(r["errors"])} for r in endpoints],
    }


def list_ips(store: Store, scope: Scope, limit: int = 100) -> dict[str, Any]:
    """Every IP seen in api_calls with the workload it resolved to and how many calls it was part of."""
    limit = _limit(limit)
    sql = f"""
        SELECT ip, any(name) AS name, any(namespace) AS namespace, any(kind) AS kind, sum(n) AS calls,
               count() OVER () AS total
        FROM (
            SELECT src_ip AS ip, if(src_pod != '', src_pod, src_service) AS name, src_namespace AS namespace,
                   if(src_pod != '', 'pod', if(src_service != '', 'service', '')) AS kind, count() AS n
            FROM {scope.table} FINAL WHERE {scope.clause()} GROUP BY ip, name, namespace, kind
            UNION ALL
            SELECT dst_ip, if(dst_pod != '', dst_pod, dst_service), dst_namespace,
                   if(dst_pod != '', 'pod', if(dst_service != '', 'service', '')), count()
            FROM {scope.table} FINAL WHERE {scope.clause()}
            GROUP BY dst_ip, dst_pod, dst_service, dst_namespace
        )
        GROUP BY ip ORDER BY calls DESC LIMIT {{lim:UInt32}}
    """
    rows = store.dicts(sql, {**scope.params, "lim": limit})
    ips = [
        {
            "ip": _ip(r["ip"]),
            "name": r["name"],
            "namespace": r["namespace"],
            "kind": r["kind"],
            "calls": int(r["calls"]),
        }
        for r in rows
    ]
    total = rows[0]["total"] if rows else 0
    return {"ips": ips, "total": total, "truncated": total > len(ips)}


def _check_ip(text: str) -> str:
    """An address as the flows table stores it (IPv4 v4-mapped), or a one-line error."""
    from ipaddress import ip_address

    try:
        address = ip_address(text.strip())
    except ValueError:
        raise NetrecallError(f"invalid ip {text!r}: expected an IPv4 or IPv6 address") from None
    return f"::ffff:{address}" if address.version == 4 else str(address)


def _ip(value: Any) -> str:
    """IPv4-mapped IPv6 back to a dotted quad."""
    from ipaddress import IPv6Address, ip_address

    address = value if isinstance(value, IPv6Address) else ip_address(str(value))
    mapped = getattr(address, "ipv4_mapped", None)
    return str(mapped or address)
