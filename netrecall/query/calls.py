"""Listing and fetching API calls: a KFL filter plus a time bound, newest first, in DESIGN §5's shapes.

`list_calls` -> {"calls": [compact call...], "total": N, "truncated": bool}; `get_call` -> the full record
(headers, bodies when asked, DNS details, flow id, packet time range). Both read the live `api_calls` table
or, with `snapshot`, the snapshot's copy (`snapshot_api_calls WHERE snapshot = NAME`).
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

from netrecall.errors import NetrecallError
from netrecall.query.bounds import covering_bounds, source_table
from netrecall.query.kfl import compile_filter
from netrecall.query.kfl.catalogue import CATALOGUES
from netrecall.store import Store
from netrecall.timeutil import format_time_ns

MAX_LIMIT = 100_000
COUNT_LIMIT = 1_000  # list_calls counts exactly up to here (see list_calls)

_IP = {side: CATALOGUES["api_calls"][f"{side}.ip"].sql for side in ("src", "dst")}

# The columns a compact call needs; IPs and times are rendered by the engine (exact ns, dotted quads).
COMPACT_COLUMNS = (
    "id, toUnixTimestamp64Nano(ts) AS ts_ns, protocol, elapsed_time, "
    f"{_IP['src']} AS src_ip_text, src_port, src_pod, src_namespace, src_service, src_node, "
    f"{_IP['dst']} AS dst_ip_text, dst_port, dst_pod, dst_namespace, dst_service, dst_node, "
    "method, path, status_code, dns_questions, dns_question_types, dns_answers"
)

FULL_COLUMNS = (
    COMPACT_COLUMNS
    + ", node_name, host, url, query_string, status_text, http_version, request_headers, response_headers, "
    "request_body_size, response_body_size, request_body_truncated, response_body_truncated, "
    "src_workload, dst_workload, src_labels, dst_labels, dns_id, dns_request, dns_response, dns_truncated, "
    "grpc_method, grpc_status, has_response, partial, error, flow_id, "
    "status_message, error_code, request_messages, response_messages, command_tag, result_rows, redis_type, "
    "db_user, db_name, client_id, kafka_api_key, kafka_api_version, kafka_correlation_id, kafka_topics, "
    "tls_sni, tls_version, tls_client_versions, tls_alpn, tls_alpn_selected, tls_cipher, ja3, ja3s, ja4, "
    "toUnixTimestamp64Nano(first_packet_ts) AS first_packet_ns, "
    "toUnixTimestamp64Nano(last_packet_ts) AS last_packet_ns"
)


def _end(row: dict, side: str) -> dict[str, Any]:
    return {
        "ip": row[f"{side}_ip_text"],
        "port": int(row[f"{side}_port"]),
        "pod": row[f"{side}_pod"],
        "ns": row[f"{side}_namespace"],
        "svc": row[f"{side}_service"],
        "node": row[f"{side}_node"],
    }


def compact_call(row: dict) -> dict:
    """One row (selected with COMPACT_COLUMNS) as DESIGN §5's compact record."""
    record: dict[str, Any] = {
        "id": row["id"],
        "ts": format_time_ns(int(row["ts_ns"])),
        "proto": row["protocol"],
        "src": _end(row, "src"),
        "dst": _end(row, "dst"),
        "method": row["method"],
        "path": row["path"],
        "status": int(row["status_code"]),
        "latency_ms": round(int(row["elapsed_time"]) / 1000, 3),
    }
    if row["protocol"] == "dns":
        questions, types = list(row["dns_questions"]), list(row["dns_question_types"])
        record["dns"] = {
            "qname": questions[0] if questions else "",
            "qtype": types[0] if types else "",
            "rcode": int(row["status_code"]),
            "answers": list(row["dns_answers"]),
        }
    return record


def _time_bounds(
    store: Store, since_ns: int | None, until_ns: int | None, snapshot: str | None
) -> tuple[int, int] | None:
    if since_ns is not None and until_ns is not None:
        return since_ns, until_ns
    stored = covering_bounds(store, "api_calls", snapshot)
    if stored is None:
        return None
    return (stored[0] if since_ns is None else since_ns), (stored[1] if until_ns is None else until_ns)


@dataclass(frozen=True)
class ListQuery:
    """The statements behind list_calls; bind since_ns/until_ns (and window_ns, offset) before running."""

    edge_sql: str  # the minute of the `limit`-th newest match, read in sorting-key order (stops early)
    rows_sql: str  # the page, newest first, from {window_ns} on: only the newest minutes are read
    count_sql: str  # how many match inside [since, until]
    count_all_sql: str  # how many match at all (the default window is everything stored)
    params: dict[str, Any]
    notes: tuple[str, ...] = ()  # legacy spellings the filter used, with their KFL2 names


def build_list_sql(kfl: str, table: str, snapshot_condition: str, limit: int) -> ListQuery:
    """The SQL of a KFL listing over `table` (api_calls or snapshot_api_calls)."""
    compiled = compile_filter(kfl, "api_calls")
    if compiled.table != "api_calls":
        raise NetrecallError(
            "this filter selects L4 flows (conn/flow fields): list flows instead of API calls"
        )
    matches = f"{snapshot_condition} AND ({compiled.where})"
    where = (
        "ts >= fromUnixTimestamp64Nano({since_ns:Int64}) "
        f"AND ts <= fromUnixTimestamp64Nano({{until_ns:Int64}}) AND {matches}"
    )
    # ORDER BY the whole sorting-key prefix lets the engine read granules newest-first and stop after
    # `offset` rows; ORDER BY ts alone would sort every match (seconds on millions of rows).
    edge_sql = (
        f"SELECT toUnixTimestamp(toStartOfMinute(ts)) FROM {table} WHERE {where} "
        "ORDER BY toStartOfMinute(ts) DESC, protocol DESC, id DESC LIMIT 1 OFFSET {offset:UInt64}"
    )
    rows_sql = (
        f"SELECT {COMPACT_COLUMNS} FROM {table} "
        f"WHERE ts >= fromUnixTimestamp64Nano({{window_ns:Int64}}) AND {where} "
        f"ORDER BY ts DESC, id LIMIT {int(limit)}"
    )
    count_sql = f"SELECT count() FROM {table} WHERE {where}"
    count_all_sql = f"SELECT count() FROM {table} WHERE {matches}"
    return ListQuery(edge_sql, rows_sql, count_sql, count_all_sql, dict(compiled.params), compiled.notes)


def _capped(count_sql: str, cap: int | None) -> str:
    """count() that stops reading after `cap` + 1 matches (LIMIT without ORDER BY ends the scan early)."""
    if cap is None:
        return count_sql
    head, _, where = count_sql.partition(" WHERE ")
    table = head.removeprefix("SELECT count() FROM ")
    return f"SELECT count() FROM (SELECT 1 FROM {table} WHERE {where} LIMIT {int(cap) + 1})"


def list_calls(
    store: Store,
    kfl: str = "",
    since_ns: int | None = None,
    until_ns: int | None = None,
    limit: int = 100,
    snapshot: str | None = None,
    count_limit: int | None = COUNT_LIMIT,
) -> dict:
    """Calls matching `kfl` within [since, until] (default: everything stored), newest first.

    `total` counts exactly up to `count_limit` matches; past it the answer says `"total": count_limit`
    with `"total_capped": true` (a lower bound), because an exact count is a full filtered scan (about a
    second for a regex over 10M rows here) while the capped one stops early. `count_limit=None` counts
    everything.

    Three cheap statements: the minute holding the `limit`-th newest match (key order, stops early), the
    page read from that minute on (the time key prunes the rest), and the count when the page is full.
    When the window is the default (everything stored) the count leaves out the time predicate, which
    could not exclude a row and would cost a read of the whole ts column.
    """
    if limit < 0 or limit > MAX_LIMIT:
        raise NetrecallError(f"limit must be between 0 and {MAX_LIMIT}, got {limit}")
    table, snapshot_condition, snapshot_params = source_table(store, "api_calls", snapshot)
    query = build_list_sql(kfl, table, snapshot_condition, limit)
    bounds = _time_bounds(store, since_ns, until_ns, snapshot)
    if bounds is None or bounds[1] < bounds[0]:
        empty: dict[str, Any] = {"calls": [], "total": 0, "truncated": False}
        return {**empty, "notes": list(query.notes)} if query.notes else empty
    since, until = int(bounds[0]), int(bounds[1])
    params = {**query.params, **snapshot_params, "since_ns": since, "until_ns": until}
    calls: list[dict] = []
    if limit:
        edge = store.rows(query.edge_sql, {**params, "offset": limit - 1})
        window = max(since, int(edge[0][0]) * 1_000_000_000) if edge else since
        ids: set[str] = set()
        for row in store.dicts(query.rows_sql, {**params, "window_ns": window}):
            if row["id"] not in ids:  # a call dissected twice shows once until its copies merge
                ids.add(row["id"])
                calls.append(compact_call(row))
    if len(calls) < limit:
        total = len(calls)
    else:
        default_window = since_ns is None and until_ns is None
        count_sql = query.count_all_sql if default_window else query.count_sql
        total = int(store.scalar(_capped(count_sql, count_limit), params))
    answer: dict[str, Any] = {"calls": calls, "total": total, "truncated": total > len(calls)}
    if count_limit is not None and total > count_limit:
        answer.update(total=count_limit, total_capped=True)
    if query.notes:  # e.g. "'response.status' is Kubeshark's legacy spelling: KFL2 calls it 'status_code'"
        answer["notes"] = list(query.notes)
    return answer


def get_call(
    store: Store,
    call_id: str,
    include_payload: bool = False,
    max_payload_size: int = 4096,
    snapshot: str | None = None,
) -> dict | None:
    """The full record of one call, or None when no call has that id."""
    table, snapshot_condition, params = source_table(store, "api_calls", snapshot)
    size = max(0, int(max_payload_size))
    bodies = (
        f", substring(request_body, 1, {size}) AS request_body_head"
        f", substring(response_body, 1, {size}) AS response_body_head"
        if include_payload
        else ""
    )
    rows = store.dicts(
        f"SELECT {FULL_COLUMNS}{bodies} FROM {table} WHERE id = {{call_id:String}} AND {snapshot_condition} "
        "ORDER BY dissected_at DESC LIMIT 1",
        {**params, "call_id": call_id},
        column_formats={"request_body_head": "bytes", "response_body_head": "bytes"}
        if include_payload
        else None,
    )
    if not rows:
        return None
    row = rows[0]
    record = compact_call(row)
    for side in ("src", "dst"):
        record[side]["workload"] = row[f"{side}_workload"]
        record[side]["labels"] = dict(row[f"{side}_labels"])
    record.update(
        node=row["node_name"],
        host=row["host"],
        url=row["url"],
        query_string=row["query_string"],
        status_text=row["status_text"],
        http_version=row["http_version"],
        elapsed_us=int(row["elapsed_time"]),
        request={
            "headers": dict(row["request_headers"]),
            "body_size": int(row["request_body_size"]),
            "body_truncated": bool(row["request_body_truncated"]),
        },
        response={
            "headers": dict(row["response_headers"]),
            "body_size": int(row["response_body_size"]),
            "body_truncated": bool(row["response_body_truncated"]),
        },
        has_response=bool(row["has_response"]),
        partial=bool(row["partial"]),
        error=row["error"],
        flow_id=str(row["flow_id"]),  # UInt64: a string so JSON consumers keep every digit
        packets={
            "first": format_time_ns(int(row["first_packet_ns"])),
            "last": format_time_ns(int(row["last_packet_ns"])),
        },
    )
    if row["protocol"] == "dns":
        record["dns"].update(
            id=int(row["dns_id"]),
            questions=list(row["dns_questions"]),
            qtypes=list(row["dns_question_types"]),
            request=bool(row["dns_request"]),
            response=bool(row["dns_response"]),
            truncated=bool(row["dns_truncated"]),
        )
    record.update(_protocol_details(row))
    if include_payload:
        for side in ("request", "response"):
            record[side]["body"] = _payload(row[f"{side}_body_head"], size, int(row[f"{side}_body_size"]))
    return record


def _protocol_details(row: dict) -> dict[str, Any]:
    """The section of a full record that only one protocol fills (gRPC, Redis, PostgreSQL, Kafka, TLS)."""
    proto = row["protocol"]
    if row["grpc_method"] or proto == "grpc":
        return {
            "grpc": {
                "method": row["grpc_method"],
                "status": int(row["grpc_status"]),
                "message": row["status_message"],
                "request_messages": int(row["request_messages"]),
                "response_messages": int(row["response_messages"]),
            }
        }
    if proto == "redis":
        return {
            "redis": {
                "command": row["method"],
                "key": row["path"],
                "type": row["redis_type"],
                "error": row["status_message"],
            }
        }
    if proto == "postgresql":
        return {
            "postgresql": {
                "query": row["path"],
                "user": row["db_user"],
                "database": row["db_name"],
                "command_tag": row["command_tag"],
                "rows": int(row["result_rows"]),
                "error_code": row["error_code"],
                "error": row["status_message"],
            }
        }
    if proto == "kafka":
        return {
            "kafka": {
                "api": row["method"],
                "api_key": int(row["kafka_api_key"]),
                "api_version": int(row["kafka_api_version"]),
                "correlation_id": int(row["kafka_correlation_id"]),
                "client_id": row["client_id"],
                "topics": list(row["kafka_topics"]),
                "error_code": row["error_code"],
            }
        }
    if proto == "tls":
        return {
            "tls": {
                "sni": row["tls_sni"],
                "version": row["tls_version"],
                "client_versions": list(row["tls_client_versions"]),
                "alpn": list(row["tls_alpn"]),
                "alpn_selected": row["tls_alpn_selected"],
                "cipher": row["tls_cipher"],
                "ja3": row["ja3"],
                "ja3s": row["ja3s"],
                "ja4": row["ja4"],
                "alert": row["status_message"],
            }
        }
    return {}


def _payload(data: bytes | str, max_size: int, real_size: int) -> dict[str, Any]:
    """A body as text when it is UTF-8, else base64; says when it was cut."""
    raw = data.encode() if isinstance(data, str) else bytes(data)
    try:
        text, encoding = raw.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        text, encoding = base64.b64encode(raw).decode("ascii"), "base64"
    return {
        "encoding": encoding,
        "data": text,
        "bytes": len(raw),
        "cut": len(raw) >= max_size and real_size > len(raw),
    }
