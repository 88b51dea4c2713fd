"""`netrecall schema print [--cluster NAME]`: the DDL, for one server or for a cluster; `netrecall schema
migrate`: create it or move it forward (the chart's migration Job)."""

from __future__ import annotations

import sys
import time
from typing import Annotated

import typer

from netrecall.cli.common import StoreOption, open_cli_store
from netrecall.errors import NetrecallError
from netrecall.schema.tables import DEFAULT_TTL_SECONDS, schema_statements
from netrecall.timeutil import parse_duration_ns

schema_app = typer.Typer(help="Show the table definitions.", no_args_is_help=True)


@schema_app.command("print")
def print_schema(
    cluster: Annotated[
        str | None,
        typer.Option("--cluster", help="Render ReplicatedMergeTree + Distributed tables ON CLUSTER"),
    ] = None,
    ttl: Annotated[
        str | None, typer.Option("--ttl", help="Rolling window for the TTL clauses, e.g. 72h")
    ] = None,
) -> None:
    """Print every CREATE statement netrecall runs, in order."""
    ttl_seconds = parse_duration_ns(ttl) // 1_000_000_000 if ttl else DEFAULT_TTL_SECONDS
    for statement in schema_statements(ttl_seconds=ttl_seconds, cluster=cluster):
        typer.echo(statement + ";\n")


@schema_app.command("migrate")
def migrate_schema(
    store_url: StoreOption = None,
    wait: Annotated[
        float, typer.Option("--wait", help="Seconds to keep retrying while ClickHouse does not answer")
    ] = 0.0,
) -> None:
    """Create the schema or move it to this version (ON CLUSTER with ?cluster=NAME in the store URL).

    The chart's migration Job runs this; it waits for a ClickHouse that is still starting."""
    from netrecall.schema.migrate import ensure_schema

    deadline = time.monotonic() + wait
    while True:
        try:
            store = open_cli_store(store_url)
            break
        except NetrecallError as exc:
            if time.monotonic() >= deadline:
                raise
            print(f"netrecall: waiting for the store: {exc}", file=sys.stderr)
            time.sleep(2.0)
    try:
        version = ensure_schema(store)
    finally:
        store.close()
    typer.echo(f"schema version {version} at {store.address.display}")


def register(app: typer.Typer) -> None:
    app.add_typer(schema_app, name="schema")
