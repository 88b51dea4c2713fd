"""`netrecall retention [--ttl 72h] [--max-bytes 10GiB]`: set and show the rolling window."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from netrecall.cli.common import FormatOption, OutputFormat, StoreOption, emit, open_cli_store
from netrecall.errors import NetrecallError
from netrecall.schema.retention import RetentionReport, apply_retention, format_bytes, format_duration
from netrecall.timeutil import parse_duration_ns, parse_size_bytes

_NO_BUDGET = {"0", "off", "none"}


def parse_ttl_seconds(text: str) -> int:
    """'72h' -> 259200; whole seconds only (the TTL is kept in seconds)."""
    nanos = parse_duration_ns(text)
    if nanos % 1_000_000_000:
        raise NetrecallError(f"invalid TTL {text!r}: use whole seconds or larger units (30m, 72h, 7d)")
    return nanos // 1_000_000_000


def parse_budget_bytes(text: str) -> int:
    """'10GiB' -> bytes; '0', 'off' or 'none' remove the budget."""
    return 0 if text.strip().lower() in _NO_BUDGET else parse_size_bytes(text)


def retention(
    ttl: Annotated[
        str | None, typer.Option("--ttl", help="Keep rows this long after they were stored, e.g. 72h, 7d")
    ] = None,
    max_bytes: Annotated[
        str | None,
        typer.Option("--max-bytes", help="Byte budget of the rolling tables, e.g. 10GiB ('off' removes it)"),
    ] = None,
    store: StoreOption = None,
    fmt: FormatOption = OutputFormat.table,
) -> None:
    """Set (when given) and show the rolling window: TTL after storage, byte budget; snapshots exempt."""
    ttl_seconds = parse_ttl_seconds(ttl) if ttl is not None else None
    budget = parse_budget_bytes(max_bytes) if max_bytes is not None else None
    opened = open_cli_store(store)
    report = apply_retention(opened, ttl_seconds=ttl_seconds, max_bytes=budget)
    show_report(report, fmt)


def report_rows(report: RetentionReport) -> list[dict[str, Any]]:
    return [
        {
            "table": t.table,
            "rows": t.rows,
            "bytes_on_disk": t.bytes_on_disk,
            "size": format_bytes(t.bytes_on_disk),
            "ratio": round(t.ratio, 2),
            "partitions": t.partitions,
            "oldest_stored": t.oldest_stored,
            "newest_stored": t.newest_stored,
        }
        for t in report.tables
    ]


def show_report(report: RetentionReport, fmt: OutputFormat) -> None:
    rows = report_rows(report)
    if fmt is not OutputFormat.table:
        emit(
            rows,
            fmt,
            envelope={
                "ttl_seconds": report.ttl_seconds,
                "max_bytes": report.max_bytes,
                "used_bytes": report.used_bytes,
                "oldest_stored": report.oldest_stored,
                "newest_stored": report.newest_stored,
                "dropped_hours": report.dropped_hours,
                "over_budget": report.over_budget,
                "rows": rows,
            }
            if fmt is OutputFormat.json
            else None,
        )
        return
    budget = format_bytes(report.max_bytes) if report.max_bytes else "none"
    share = f" ({100 * report.used_bytes / report.max_bytes:.0f}% of the budget)" if report.max_bytes else ""
    typer.echo(f"ttl: {format_duration(report.ttl_seconds)} after storage   budget: {budget}")
    typer.echo(f"used: {format_bytes(report.used_bytes)}{share} in the rolling tables (snapshots exempt)")
    oldest, newest = report.oldest_stored, report.newest_stored
    if oldest and newest:
        typer.echo(f"stored from {oldest:%Y-%m-%dT%H:%M:%SZ} to {newest:%Y-%m-%dT%H:%M:%SZ}")
    if report.dropped_hours:
        hours = ", ".join(f"{h:%Y-%m-%dT%H}h" for h in report.dropped_hours)
        typer.echo(f"dropped {len(report.dropped_hours)} hour(s) over the budget: {hours}")
    if report.over_budget:
        typer.echo("still over the budget: the newest hour alone is larger; it is kept (it is being written)")
    emit(
        rows, fmt, columns=["table", "rows", "size", "ratio", "partitions", "oldest_stored", "newest_stored"]
    )


def register(app: typer.Typer) -> None:
    app.command("retention")(retention)
