"""What every command shares: the --store/--url/--format options, opening the store, printing results."""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Iterable, Mapping, Sequence
from contextlib import suppress
from datetime import date, datetime
from enum import Enum, StrEnum
from ipaddress import IPv4Address, IPv6Address
from typing import Annotated, Any

import typer

from netrecall.config import default_store_url
from netrecall.errors import NetrecallError


class OutputFormat(StrEnum):
    table = "table"
    json = "json"
    jsonl = "jsonl"
    tsv = "tsv"


StoreOption = Annotated[
    str | None,
    typer.Option(
        "--store", help="Store URL: chdb:///path or http(s)://user:pass@host:8123/db [env NETRECALL_STORE]"
    ),
]
HubOption = Annotated[
    str | None,
    typer.Option("--url", help="Work through a running `netrecall serve` hub instead of the store"),
]
FormatOption = Annotated[OutputFormat, typer.Option("--format", help="Output format")]
TokenOption = Annotated[
    str | None,
    typer.Option("--token", envvar="NETRECALL_TOKEN", help="Hub bearer token [env NETRECALL_TOKEN]"),
]
SinceOption = Annotated[str | None, typer.Option("--since", help="Start: RFC 3339 or relative (-30m)")]
UntilOption = Annotated[str | None, typer.Option("--until", help="End: RFC 3339 or relative (-5m)")]
SnapshotOption = Annotated[
    str | None, typer.Option("--snapshot", help="Read a snapshot instead of live data")
]


def hub_client(url: str, token: str | None = None):
    """The client for a running hub (`--url`): same methods as the hub's Service over the store."""
    from netrecall.hub.client import HubClient

    return HubClient(url, token)


def open_cli_store(store_url: str | None):
    """Open the store named on the command line (or the default) with its schema in place, and the parts
    earlier processes' merges replaced off its disk (an embedded engine leaves them there)."""
    from netrecall.schema.migrate import ensure_schema
    from netrecall.schema.retention import clear_outdated_parts
    from netrecall.store import open_store

    store = open_store(store_url or default_store_url())
    ensure_schema(store)
    with suppress(NetrecallError):  # housekeeping (a full disk may refuse it): never why a command fails
        clear_outdated_parts(store)
    return store


def plain(value: Any) -> Any:
    """A value as JSON can carry it: IPv4-mapped IPv6 back to dotted quads, times as RFC 3339."""
    if isinstance(value, IPv6Address):
        return str(value.ipv4_mapped) if value.ipv4_mapped else str(value)
    if isinstance(value, IPv4Address):
        return str(value)
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


def emit(
    rows: Sequence[Mapping[str, Any]],
    fmt: OutputFormat,
    columns: Sequence[str] | None = None,
    envelope: Mapping[str, Any] | None = None,
) -> None:
    """Print rows as a terminal table, JSON (optionally in an envelope with total/truncated), JSONL or TSV."""
    columns = list(columns or (rows[0].keys() if rows else []))
    if fmt is OutputFormat.json:
        payload: Any = [plain(dict(r)) for r in rows]
        if envelope is not None:
            payload = (
                {**plain(dict(envelope)), "rows": payload}
                if "rows" not in envelope
                else plain(dict(envelope))
            )
        json.dump(payload, sys.stdout, ensure_ascii=False)
        sys.stdout.write("\n")
    elif fmt is OutputFormat.jsonl:
        for row in rows:
            sys.stdout.write(json.dumps(plain(dict(row)), ensure_ascii=False) + "\n")
    elif fmt is OutputFormat.tsv:
        writer = csv.writer(sys.stdout, delimiter="\t", lineterminator="\n")
        writer.writerow(columns)
        for row in rows:
            writer.writerow([_cell(row.get(c)) for c in columns])
    else:
        _print_table(rows, columns)


def _cell(value: Any) -> str:
    value = plain(value)
    if isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False)
    return "" if value is None else str(value)


def _print_table(rows: Iterable[Mapping[str, Any]], columns: Sequence[str]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(show_header=True, header_style="bold", box=None, pad_edge=False)
    for column in columns:
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*[_cell(row.get(c)) for c in columns])
    Console(soft_wrap=False).print(table)


def fail(message: str) -> None:
    raise NetrecallError(message)
