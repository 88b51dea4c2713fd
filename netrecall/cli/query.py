"""`netrecall query 'KFL'`, `netrecall call ID`, `netrecall sql '...'` and `netrecall workloads`.

Each runs against the store (`--store`) or through a running hub (`--url`). `query` prints a terminal
table (time, proto, src, dst, method, path/qname, status, latency) or, for machines, DESIGN §5's records:
`--format json` is the `{"calls", "total", "truncated"}` envelope, `jsonl` one call per line.
"""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any

import typer

from netrecall.cli.common import (
    FormatOption,
    HubOption,
    OutputFormat,
    SinceOption,
    SnapshotOption,
    StoreOption,
    TokenOption,
    UntilOption,
    emit,
    hub_client,
    open_cli_store,
    plain,
)
from netrecall.errors import NetrecallError
from netrecall.timeutil import parse_time_ns

TABLE_COLUMNS = ["time", "proto", "src", "dst", "method", "path", "status", "latency_ms", "id"]


def _hub(url: str, token: str | None = None) -> Any:
    return hub_client(url, token)


def _end_text(end: dict[str, Any]) -> str:
    who = f"{end['ns']}/{end['pod']}" if end.get("pod") else (end.get("svc") or end.get("ip", ""))
    if ":" in who:  # an IPv6 address: bracket it so the port stays readable
        who = f"[{who}]"
    return f"{who}:{end['port']}" if end.get("port") else who


def table_rows(calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Compact calls flattened for a terminal: one short line each."""
    rows = []
    for call in calls:
        dns = call.get("dns")
        rows.append(
            {
                "time": call["ts"].replace("T", " ")[:23],
                "proto": call["proto"],
                "src": _end_text(call["src"]),
                "dst": _end_text(call["dst"]),
                "method": call["method"] or (dns["qtype"] if dns else ""),
                "path": dns["qname"] if dns else call["path"],
                "status": call["status"],
                "latency_ms": call["latency_ms"],
                "id": call["id"],
            }
        )
    return rows


COLUMN_CAPS = {"src": 40, "dst": 40, "path": 48, "id": 40}


def print_calls_table(rows: list[dict[str, Any]]) -> None:
    """Fixed-width columns, one call per line, long cells cut with an ellipsis: readable in a terminal and
    in a pipe alike (no wrapping into multi-line cells)."""

    def cell(row: dict[str, Any], column: str) -> str:
        text = str(row[column])
        cap = COLUMN_CAPS.get(column)
        return text if cap is None or len(text) <= cap else text[: cap - 1] + "…"

    cells = [[cell(r, c) for c in TABLE_COLUMNS] for r in rows]
    widths = [max([len(c)] + [len(line[i]) for line in cells]) for i, c in enumerate(TABLE_COLUMNS)]
    right = {"status", "latency_ms"}
    for line in [TABLE_COLUMNS, *cells]:
        parts = [
            value.rjust(width) if name in right else value.ljust(width)
            for name, value, width in zip(TABLE_COLUMNS, line, widths, strict=True)
        ]
        typer.echo("  ".join(parts).rstrip())


def query_command(
    kfl: Annotated[
        str, typer.Argument(help="KFL filter, e.g. 'http && status_code >= 500' ('' for all)")
    ] = "",
    since: SinceOption = None,
    until: UntilOption = None,
    limit: Annotated[int, typer.Option("--limit", help="Most calls to return (newest first)")] = 100,
    snapshot: SnapshotOption = None,
    store: StoreOption = None,
    url: HubOption = None,
    token: TokenOption = None,
    fmt: FormatOption = OutputFormat.table,
) -> None:
    """List API calls matching a KFL filter, newest first (default window: everything stored)."""
    if url:
        result = _hub(url, token).calls(kfl, since, until, limit, snapshot)
    else:
        from netrecall.query.calls import list_calls

        result = list_calls(
            open_cli_store(store),
            kfl,
            since_ns=parse_time_ns(since) if since else None,
            until_ns=parse_time_ns(until) if until else None,
            limit=limit,
            snapshot=snapshot,
        )
    calls = result["calls"]
    for note in result.get("notes", []):
        typer.echo(f"note: {note}", err=True)
    if fmt is OutputFormat.json:
        json.dump(plain(result), sys.stdout, ensure_ascii=False)
        sys.stdout.write("\n")
    elif fmt is OutputFormat.jsonl:
        emit(calls, fmt)
    else:
        if fmt is OutputFormat.table:
            print_calls_table(table_rows(calls))
        else:
            emit(table_rows(calls), fmt, columns=TABLE_COLUMNS)
        if fmt is OutputFormat.table:
            more = (
                f" (showing {len(calls)}; narrow the filter or raise --limit)" if result["truncated"] else ""
            )
            plus = "+" if result.get("total_capped") else ""  # counted up to the cap, more exist
            typer.echo(f"{result['total']}{plus} call(s){more}", err=True)


def call_command(
    call_id: Annotated[str, typer.Argument(help="Call id (from `netrecall query`)")],
    payload: Annotated[bool, typer.Option("--payload", help="Include the stored bodies")] = False,
    max_payload_size: Annotated[int, typer.Option("--max-payload-size", help="Bytes of each body")] = 4096,
    snapshot: SnapshotOption = None,
    store: StoreOption = None,
    url: HubOption = None,
    token: TokenOption = None,
    fmt: FormatOption = OutputFormat.json,
) -> None:
    """Show one call in full: headers, DNS details, flow id, packet time range (and bodies with --payload)."""
    if url:
        record = _hub(url, token).call(call_id, payload, max_payload_size, snapshot)
    else:
        from netrecall.query.calls import get_call
        from netrecall.query.redact import maybe_redact

        record = get_call(open_cli_store(store), call_id, payload, max_payload_size, snapshot)
        # Secrets are masked here as the hub masks them (NETRECALL_REDACT=0 shows them).
        record = maybe_redact(record) if record is not None else None
    if record is None:
        raise NetrecallError(f"no call with id {call_id!r}")
    if fmt in (OutputFormat.json, OutputFormat.jsonl):
        typer.echo(
            json.dumps(plain(record), ensure_ascii=False, indent=None if fmt is OutputFormat.jsonl else 2)
        )
        return
    flat = [{"field": key, "value": value} for key, value in _flatten(plain(record))]
    emit(flat, fmt, columns=["field", "value"])


def _flatten(value: Any, prefix: str = "") -> list[tuple[str, Any]]:
    if isinstance(value, dict) and value:
        items: list[tuple[str, Any]] = []
        for key, inner in value.items():
            items += _flatten(inner, f"{prefix}.{key}" if prefix else str(key))
        return items
    return [(prefix, value)]


def sql_command(
    statement: Annotated[str, typer.Argument(help="SELECT / WITH / EXPLAIN / SHOW / DESCRIBE statement")],
    max_rows: Annotated[int, typer.Option("--max-rows", help="Most rows to return")] = 10000,
    snapshot: Annotated[
        str | None, typer.Option("--snapshot", help="Read the snapshot's copies of packets/flows/api_calls")
    ] = None,
    store: StoreOption = None,
    url: HubOption = None,
    token: TokenOption = None,
    fmt: FormatOption = OutputFormat.table,
) -> None:
    """Run a read-only SQL statement (checked, then run with readonly=1 and result limits)."""
    if url:
        if snapshot is not None:
            raise NetrecallError("--snapshot with --url: name the snapshot tables in the statement instead")
        result = _hub(url, token).sql(statement, max_rows)
    else:
        from netrecall.query.sqlguard import run_readonly

        result = run_readonly(open_cli_store(store), statement, max_rows=max_rows, snapshot=snapshot)
    columns = list(result["columns"])
    rows = [dict(zip(columns, row, strict=False)) for row in result["rows"]]
    if fmt is OutputFormat.json:
        json.dump(plain(result), sys.stdout, ensure_ascii=False)
        sys.stdout.write("\n")
        return
    emit(rows, fmt, columns=columns)
    if result["truncated"] and fmt is OutputFormat.table:
        typer.echo(f"(cut at {max_rows} rows)", err=True)


def workloads_command(
    namespace: Annotated[str | None, typer.Option("--namespace", "-n", help="Only this namespace")] = None,
    at: Annotated[
        str | None, typer.Option("--at", help="Identities valid at this time (default: now)")
    ] = None,
    limit: Annotated[int, typer.Option("--limit", help="Most workloads to list")] = 200,
    store: StoreOption = None,
    url: HubOption = None,
    token: TokenOption = None,
    fmt: FormatOption = OutputFormat.table,
) -> None:
    """List the pods, services and nodes known by IP, as they were at a time (default: now)."""
    if url:
        result = _hub(url, token).workloads(namespace, at, limit)
    else:
        from netrecall.hub.service import Service

        result = Service(open_cli_store(store), redact=False).workloads(namespace, at, limit)
    items = result["workloads"]
    if fmt is OutputFormat.json:
        json.dump(plain(result), sys.stdout, ensure_ascii=False)
        sys.stdout.write("\n")
        return
    emit(
        items,
        fmt,
        columns=["kind", "namespace", "name", "ip", "node", "owner", "services", "labels", "valid_from"],
    )


def register(app: typer.Typer) -> None:
    app.command("query")(query_command)
    app.command("call")(call_command)
    app.command("sql")(sql_command)
    app.command("workloads")(workloads_command)
