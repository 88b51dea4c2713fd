"""`netrecall snapshot create|list|delete|export|import`: keep a window past retention, move it."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from netrecall.cli.common import (
    FormatOption,
    HubOption,
    OutputFormat,
    StoreOption,
    TokenOption,
    emit,
    hub_client,
    open_cli_store,
)
from netrecall.memory import decay_engine_pages_quickly
from netrecall.timeutil import format_time_ns

snapshot_app = typer.Typer(help="Named snapshots: a window kept until deleted.", no_args_is_help=True)


@snapshot_app.command("create")
def create_command(
    name: Annotated[str, typer.Argument(help="Snapshot name (letters, digits, _ . -)")],
    last: Annotated[str | None, typer.Option("--last", help="The last duration, e.g. 30m")] = None,
    since: Annotated[str | None, typer.Option("--since", help="RFC 3339 or relative (-2h)")] = None,
    until: Annotated[str | None, typer.Option("--until", help="RFC 3339 or relative; default now")] = None,
    node: Annotated[
        list[str] | None, typer.Option("--node", help="Only these capture nodes (repeatable)")
    ] = None,
    partial: Annotated[
        bool, typer.Option("--partial", help="Accept a window whose start retention already dropped")
    ] = False,
    note: Annotated[str, typer.Option("--note", help="Free text kept with the snapshot")] = "",
    store_url: StoreOption = None,
    url: HubOption = None,
    token: TokenOption = None,
    fmt: FormatOption = OutputFormat.table,
) -> None:
    """Copy the window's packets, flows, workload history and API calls into snapshot NAME."""
    from netrecall.query.snapshots import check_name, create_snapshot, resolve_window

    check_name(name)
    if url:
        created = hub_client(url, token).create_snapshot(
            name, last=last, since=since, until=until, nodes=node, note=note, partial=partial
        )
        _say_notes(created.pop("notes", []))
        emit([created], fmt)
        return
    since_ns, until_ns = resolve_window(last, since, until)
    decay_engine_pages_quickly()
    store = open_cli_store(store_url)
    try:
        info = create_snapshot(store, name, since_ns, until_ns, node or [], allow_partial=partial, note=note)
    finally:
        store.close()
    _say_notes(info.notes)
    emit(
        [
            {
                "name": info.name,
                "since": format_time_ns(info.since_ns),
                "until": format_time_ns(info.until_ns),
                "packets": info.packets,
                "bytes": info.bytes,
                "flows": info.flows,
                "workloads": info.workloads,
                "api_calls": info.api_calls,
            }
        ],
        fmt,
    )


def _say_notes(notes: list[str]) -> None:
    """How the window was fitted to the data (clamped, or partial), on stderr beside the result."""
    for text in notes:
        print(f"netrecall: note: {text}", file=sys.stderr)


@snapshot_app.command("list")
def list_command(
    store_url: StoreOption = None,
    url: HubOption = None,
    token: TokenOption = None,
    fmt: FormatOption = OutputFormat.table,
) -> None:
    """Every snapshot with its window and size."""
    from netrecall.query.snapshots import list_snapshots

    if url:
        rows = hub_client(url, token).snapshots()["snapshots"]
    else:
        store = open_cli_store(store_url)
        try:
            rows = list_snapshots(store)
        finally:
            store.close()
    columns = ["name", "since", "until", "nodes", "packets", "bytes", "created_at", "created_by", "note"]
    emit(rows, fmt, columns=columns)


@snapshot_app.command("delete")
def delete_command(
    name: Annotated[str, typer.Argument()],
    store_url: StoreOption = None,
    url: HubOption = None,
    token: TokenOption = None,
) -> None:
    """Delete snapshot NAME and all its data."""
    from netrecall.query.snapshots import delete_snapshot

    if url:
        hub_client(url, token).delete_snapshot(name)
    else:
        store = open_cli_store(store_url)
        try:
            delete_snapshot(store, name)
        finally:
            store.close()
    typer.echo(f"deleted snapshot {name}")


@snapshot_app.command("export")
def export_command(
    name: Annotated[str, typer.Argument()],
    out: Annotated[Path, typer.Option("-o", "--output", help="The portable snapshot file to write (.zip)")],
    store_url: StoreOption = None,
    fmt: FormatOption = OutputFormat.table,
) -> None:
    """Write snapshot NAME to one portable file (its tables plus a manifest with SHA-256s)."""
    from netrecall.query.export import check_output_path
    from netrecall.query.snapshots import export_snapshot

    check_output_path(out)
    decay_engine_pages_quickly()
    store = open_cli_store(store_url)
    try:
        summary = export_snapshot(store, name, out)
    finally:
        store.close()
    emit([{"file": summary["file"], "name": name, **summary["tables"]}], fmt)


@snapshot_app.command("import")
def import_command(
    file: Annotated[Path, typer.Argument(help="A file written by `netrecall snapshot export`")],
    store_url: StoreOption = None,
    fmt: FormatOption = OutputFormat.table,
) -> None:
    """Load a snapshot file into this store (hashes checked first; an existing name is refused)."""
    from netrecall.query.snapshots import import_snapshot, read_snapshot_manifest

    read_snapshot_manifest(file)  # a bad file fails before the store is opened
    store = open_cli_store(store_url)
    try:
        summary = import_snapshot(store, file)
    finally:
        store.close()
    emit([{"name": summary["name"], **summary["tables"]}], fmt)


def register(app: typer.Typer) -> None:
    app.add_typer(snapshot_app, name="snapshot")
