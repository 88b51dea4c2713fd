"""`netrecall store info`: which store this is, its schema version, and what each table holds on disk."""

from __future__ import annotations

from typing import Any

import typer

from netrecall.cli.common import FormatOption, OutputFormat, StoreOption, emit, open_cli_store
from netrecall.schema.migrate import current_ttl_seconds, stored_version
from netrecall.schema.retention import format_bytes, format_duration, stored_max_bytes, table_usage
from netrecall.schema.tables import ROLLING_TABLES
from netrecall.store import Store

store_app = typer.Typer(help="Inspect the store.", no_args_is_help=True)


def store_summary(store: Store) -> dict[str, Any]:
    """The store's address, schema version, retention and per-table sizes (from part metadata, no scans)."""
    tables = [
        row[0]
        for row in store.rows(
            "SELECT name FROM system.tables WHERE database = currentDatabase() AND engine LIKE '%MergeTree'"
            " ORDER BY name"
        )
    ]
    usage = table_usage(store, tables)
    return {
        "store": store.address.display,
        "backend": store.kind,
        "schema_version": stored_version(store),
        "ttl_seconds": current_ttl_seconds(store),
        "max_bytes": stored_max_bytes(store),
        "rows": [
            {
                "table": t.table,
                "rolling": t.table in ROLLING_TABLES,
                "rows": t.rows,
                "bytes_on_disk": t.bytes_on_disk,
                "size": format_bytes(t.bytes_on_disk),
                "compressed_bytes": t.compressed_bytes,
                "uncompressed_bytes": t.uncompressed_bytes,
                "ratio": round(t.ratio, 2),
            }
            for t in usage
        ],
    }


@store_app.command("info")
def info(store: StoreOption = None, fmt: FormatOption = OutputFormat.table) -> None:
    """Print the store URL, schema version, retention and table sizes (rows, bytes on disk, compression)."""
    summary = store_summary(open_cli_store(store))
    if fmt is OutputFormat.json:
        emit(summary["rows"], fmt, envelope=summary)
        return
    if fmt is not OutputFormat.table:
        emit(summary["rows"], fmt)
        return
    budget = format_bytes(summary["max_bytes"]) if summary["max_bytes"] else "none"
    typer.echo(f"store: {summary['store']} ({summary['backend']})")
    typer.echo(f"schema version: {summary['schema_version']}")
    typer.echo(f"retention: ttl {format_duration(summary['ttl_seconds'])} after storage, budget {budget}")
    total = sum(r["bytes_on_disk"] for r in summary["rows"])
    typer.echo(f"on disk: {format_bytes(total)}")
    emit(summary["rows"], fmt, columns=["table", "rolling", "rows", "size", "ratio"])


def register(app: typer.Typer) -> None:
    app.add_typer(store_app, name="store")
