"""Listing and fetching API calls: a KFL filter plus a time bound, newest first, in DESIGN §5's shapes.

`list_calls` -> {"calls": [compact call...], "total": N, "truncated": bool}; `get_call` -> the full record
(headers, bodies when asked, DNS details, flow id, packet time range). Both read the live `api_calls` table
or, with `snapshot`, the snapshot's copy (`snapshot_api_calls WHERE snapshot = NAME`).
"""

from __future__ import annotations

import base64
from typing import Any

from netrecall.errors import NetrecallError
from netrecall.query.bounds import data_boundaries, source_table
from netrecall.query.kfl import compile_filter
from netrecall.query.kfl.catalogue import CATALOGUES
from netrecall.store import Store
from netrecall.timeutil import format_time_ns

MAX_LIMIT = 100_000

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
    stored = data_boundaries(store, "api_calls", snapshot)
    if stored is None:
        return None
    return (stored[0] if since_ns is None else since_ns), (stored[1] if until_ns is None else until_ns)


def build_list_sql(
    kfl: str, table: str, snapshot_condition: str, limit: int
) -> tuple[str, str, dict[str, Any]]:
    """(rows SQL, count SQL, params) for a KFL filter: time bound first so the key prunes parts."""
    compiled = compile_filter(kfl, "api_calls")
    if compiled.table != "api_calls":
        raise NetrecallError(
            "this filter selects L4 flows (conn/flow fields): list flows instead of API calls"
        )
    where = (
        "ts >= fromUnixTimestamp64Nano({since_ns:Int64}) "
        "AND ts <= fromUnixTimestamp64Nano({until_ns:Int64})"
        f" AND {snapshot_condition} AND ({compiled.where})"
    )
    rows_sql = (
        f"SELECT {COMPACT_COLUMNS} FROM {table} WHERE {where} "
        f"ORDER BY ts DESC, id LIMIT 1 BY id LIMIT {int(limit)}"
    )
    count_sql = f"SELECT count() FROM {table} WHERE {where}"
    return rows_sql, count_sql, dict(compiled.params)


def list_calls(
    store: Store,
    kfl: str = "",
    since_ns: int | None = None,
    until_ns: int | None = None,
    limit: int = 100,
    snapshot: str | None = None,
) -> dict:
    """Calls matching `kfl` within [since, until] (default: everything stored), newest first."""
    if limit < 0 or limit > MAX_LIMIT:
        raise NetrecallError(f"limit must be between 0 and {MAX_LIMIT}, got {limit}")
    table, snapshot_condition, snapshot_params = source_table(store, "api_calls", snapshot)
    rows_sql, count_sql, params = build_list_sql(kfl, table, snapshot_condition, limit)
    bounds = _time_bounds(store, since_ns, until_ns, snapshot)
    if bounds is None:
        return {"calls": [], "total": 0, "truncated": False}
    params.update(snapshot_params, since_ns=int(bounds[0]), until_ns=int(bounds[1]))
    rows = store.dicts(rows_sql, params) if limit else []
    # Counting costs a second scan: only pay it when the page is full and more may exist.
    total = len(rows) if len(rows) < limit else int(store.scalar(count_sql, params))
    return {"calls": [compact_call(r) for r in rows], "total": total, "truncated": total > len(rows)}


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
    if row["grpc_method"] or row["protocol"] == "grpc":
        record["grpc"] = {"method": row["grpc_method"], "status": int(row["grpc_status"])}
    if include_payload:
        for side in ("request", "response"):
            record[side]["body"] = _payload(row[f"{side}_body_head"], size, int(row[f"{side}_body_size"]))
    return record


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
