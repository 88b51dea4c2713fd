"""`netrecall schema print [--cluster NAME]`: the DDL, for one server or for a cluster."""

from __future__ import annotations

from typing import Annotated

import typer

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


def register(app: typer.Typer) -> None:
    app.add_typer(schema_app, name="schema")
