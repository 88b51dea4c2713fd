"""Calls as one line each, for agents: the same facts as the JSON records in about a third of the tokens.

A line is `id time proto src dst method path status ms`, space-separated, `-` for an empty field. The
date is said once (`date`); times are of day, to the microsecond. Endpoints are ns/pod (or ns/svc, or IP).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

COLUMNS = "id time proto src dst method path status ms"
_MAX_PATH = 80


def endpoint(end: Mapping[str, Any] | None, prefer_service: bool = False) -> str:
    if not end:
        return "-"
    ns = end.get("ns") or ""
    names = [end.get("svc"), end.get("pod")] if prefer_service else [end.get("pod"), end.get("svc")]
    name = next((n for n in names if n), "")
    if name:
        return f"{ns}/{name}" if ns else name
    ip = end.get("ip") or "-"
    port = end.get("port")
    return f"{ip}:{port}" if port and prefer_service else str(ip)


def _field(value: Any) -> str:
    text = "" if value is None else str(value)
    return text.replace(" ", "%20") if text else "-"


def call_line(call: Mapping[str, Any]) -> str:
    ts = str(call.get("ts") or "")
    time_of_day = ts[11:23] if len(ts) >= 23 else ts  # to the millisecond: rows stay in order anyway
    method, path, status = call.get("method"), call.get("path"), call.get("status")
    dns = call.get("dns")
    if isinstance(dns, Mapping):
        method = dns.get("qtype") or method
        path = dns.get("qname") or path
        status = dns.get("rcode", status)
    path = str(path or "")
    if len(path) > _MAX_PATH:
        path = path[: _MAX_PATH - 1] + "…"
    latency = call.get("latency_ms")
    ms = f"{latency:.1f}" if isinstance(latency, int | float) else _field(latency)
    return " ".join(
        [
            _field(call.get("id")),
            _field(time_of_day),
            _field(call.get("proto")),
            endpoint(call.get("src")),
            endpoint(call.get("dst"), prefer_service=True),
            _field(method),
            _field(path),
            _field(status),
            ms,
        ]
    )


def calls_table(answer: Mapping[str, Any]) -> dict[str, Any]:
    """{"calls": [...records], "total", "truncated"} -> {"date", "columns", "rows": [lines], "total", ...}."""
    calls = list(answer.get("calls") or [])
    table: dict[str, Any] = {
        "date": str(calls[0].get("ts", ""))[:10] if calls else "",
        "columns": COLUMNS,
        "rows": [call_line(c) for c in calls],
        "total": answer.get("total", len(calls)),
        "truncated": bool(answer.get("truncated")),
    }
    if answer.get("total_capped"):
        table["total_capped"] = True  # `total` is a lower bound: counting stopped there
    if table["truncated"]:
        table["hint"] = answer.get("hint") or "narrow the KFL filter or the time range, or raise limit"
    return table
