"""`netrecall dissect`: turn stored packets into api_calls rows (HTTP/1.x, DNS, flagged tcp/udp), with a
progress bar and a summary of calls per protocol, partial and error counts."""

from __future__ import annotations

import sys
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
from netrecall.timeutil import format_time_ns, parse_size_bytes, parse_time_ns


def dissect_command(
    since: Annotated[
        str | None, typer.Option("--since", help="Start: RFC 3339 or relative (-30m); default: the watermark")
    ] = None,
    until: Annotated[
        str | None, typer.Option("--until", help="End (exclusive); default: the last stored packet")
    ] = None,
    node: Annotated[str | None, typer.Option("--node", help="Only packets captured on this node")] = None,
    snapshot: Annotated[
        str | None, typer.Option("--snapshot", help="Dissect a snapshot's packets into its own calls")
    ] = None,
    body_limit: Annotated[
        str, typer.Option("--body-limit", help="Bytes of each decoded body kept, e.g. 64KiB")
    ] = "64KiB",
    store_url: StoreOption = None,
    url: HubOption = None,
    token: TokenOption = None,
    fmt: FormatOption = OutputFormat.table,
) -> None:
    """Dissect stored packets into API calls; run it again to continue where it stopped."""
    if url:  # the hub dissects in the background; wait for its job and print what it reports
        summary_dict = hub_client(url, token).dissect(since, until, node=node, snapshot=snapshot)
        emit([summary_dict], fmt if fmt is not OutputFormat.table else OutputFormat.json)
        return
    from netrecall.dissect.calls import DissectConfig
    from netrecall.dissect.runner import dissect
    from netrecall.memory import return_memory_promptly

    return_memory_promptly()
    since_ns = parse_time_ns(since) if since else None
    until_ns = parse_time_ns(until) if until else None
    config = DissectConfig(body_limit=parse_size_bytes(body_limit))
    store = open_cli_store(store_url)
    try:
        summary = dissect(
            store,
            since_ns,
            until_ns,
            node=node,
            snapshot=snapshot,
            progress=sys.stderr.isatty(),
            config=config,
            merge_after=False,  # this process ends here; the next one to open the store merges
        )
    finally:
        store.close()
    if fmt is not OutputFormat.table:
        emit([summary.as_dict()], fmt)
        return
    if not summary.packets:
        print(
            "nothing to dissect"
            + (f" after the watermark {format_time_ns(summary.watermark_ns)}" if summary.watermark_ns else "")
        )
        return
    rows = [
        {
            "protocol": proto,
            "calls": summary.calls.get(proto, 0),
            "parse errors": summary.parse_errors.get(proto, 0),
        }
        for proto in sorted(set(summary.calls) | set(summary.parse_errors))
    ]
    emit(rows, OutputFormat.table, ["protocol", "calls", "parse errors"])
    print(
        f"{summary.total_calls:,} calls ({summary.partial:,} partial, {summary.errors:,} with errors) from "
        f"{summary.packets:,} packets in {summary.seconds:.2f}s; "
        f"{summary.duplicates_skipped:,} already stored; watermark {format_time_ns(summary.watermark_ns)}"
    )
    for proto, sample in sorted(summary.error_samples.items()):
        print(f"  first {proto} parse error: {sample}")


def register(app: typer.Typer) -> None:
    app.command("dissect")(dissect_command)
