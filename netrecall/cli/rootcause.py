"""`netrecall latency`, `netrecall changes` and `netrecall flows`: root causes beyond error codes.

Each runs the same `Service` method as the hub's REST route and the MCP tool (netrecall.query.latency,
.changes, .l4), against the store (`--store`) or through a running hub (`--url`). Tables for people,
`--format json` for machines (the envelope the tools answer).
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

KflOption = Annotated[str, typer.Option("--kfl", help="Only calls matching this KFL filter")]
BaselineOption = Annotated[
    str | None,
    typer.Option(
        "--baseline", help="Baseline window START..END (e.g. -2h..-1h); default: the window just before"
    ),
]


def _backend(store: str | None, url: str | None, token: str | None) -> Any:
    if url:
        return hub_client(url, token)
    from netrecall.hub.service import Service

    return Service(open_cli_store(store), redact=True)


def baseline_bounds(text: str | None) -> tuple[str | None, str | None]:
    """'-2h..-1h' -> ('-2h', '-1h'); one clear line when it is not START..END."""
    if not text:
        return None, None
    start, sep, end = text.partition("..")
    if not sep or not start.strip() or not end.strip():
        raise NetrecallError(f"--baseline {text!r}: expected START..END, e.g. -2h..-1h")
    return start.strip(), end.strip()


def _print(result: dict[str, Any], rows: list[dict[str, Any]], fmt: OutputFormat, columns: list[str]) -> None:
    if fmt is OutputFormat.json:
        json.dump(plain(result), sys.stdout, ensure_ascii=False)
        sys.stdout.write("\n")
        return
    emit(rows, fmt, columns=columns)
    for key in ("note", "hint"):
        if result.get(key):
            typer.echo(f"{key}: {result[key]}", err=True)


def latency_command(
    since: SinceOption = None,
    until: UntilOption = None,
    src: Annotated[str | None, typer.Option("--src", help="Source ns/name (or ns/)")] = None,
    dst: Annotated[str | None, typer.Option("--dst", help="Destination ns/name (or ns/)")] = None,
    protocol: Annotated[str | None, typer.Option("--protocol", help="http, grpc, dns, ...")] = None,
    step: Annotated[str | None, typer.Option("--step", help="A series per edge, e.g. 5m")] = None,
    rise: Annotated[
        bool, typer.Option("--rise", help="The edges whose latency rose against --baseline, cause first")
    ] = False,
    baseline: BaselineOption = None,
    kfl: KflOption = "",
    limit: Annotated[int, typer.Option("--limit", help="Most edges")] = 20,
    snapshot: SnapshotOption = None,
    store: StoreOption = None,
    url: HubOption = None,
    token: TokenOption = None,
    fmt: FormatOption = OutputFormat.table,
) -> None:
    """p50/p90/p99 latency, rate and failures per workload edge (or, with --rise, what got slower)."""
    backend = _backend(store, url, token)
    if rise or baseline:
        b_since, b_until = baseline_bounds(baseline)
        result = backend.slow_edges(since, until, b_since, b_until, kfl, limit, 3, snapshot)
        rows = [
            {
                **e,
                "before_p50": (e.get("before") or {}).get("p50_ms"),
                "now_p50": e["now"]["p50_ms"],
                "now_p99": e["now"]["p99_ms"],
                "calls": e["now"]["calls"],
                "slowest": (e.get("tail") or [{}])[0].get("id", ""),
            }
            for e in result["edges"]
        ]
        columns = ["src", "dst", "protocol", "route", "before_p50", "now_p50", "now_p99", "rise_ms", "calls"]
        _print(result, rows, fmt, [*columns, "explained_by", "slowest"])
        return
    result = backend.latency(since, until, kfl, src, dst, protocol, True, step, limit, snapshot)
    columns = [
        "src",
        "dst",
        "protocol",
        "method",
        "route",
        "calls",
        "rate_per_s",
        "p50_ms",
        "p90_ms",
        "p99_ms",
    ]
    _print(result, result["edges"], fmt, [*columns, "failed", "no_response"])


def changes_command(
    since: SinceOption = None,
    until: UntilOption = None,
    baseline: BaselineOption = None,
    kfl: KflOption = "",
    limit: Annotated[int, typer.Option("--limit", help="Most changes")] = 15,
    snapshot: SnapshotOption = None,
    store: StoreOption = None,
    url: HubOption = None,
    token: TokenOption = None,
    fmt: FormatOption = OutputFormat.table,
) -> None:
    """What changed against a baseline window: errors, TCP failures, latency, edges, names; cause first."""
    b_since, b_until = baseline_bounds(baseline)
    result = _backend(store, url, token).changes(since, until, b_since, b_until, kfl, limit, snapshot)
    _print(
        result,
        result["changes"],
        fmt,
        ["type", "src", "dst", "proto", "summary", "explained_by", "example_id"],
    )


def flows_command(
    since: SinceOption = None,
    until: UntilOption = None,
    aggregate: Annotated[
        str | None, typer.Option("--aggregate", help="workload, pod, namespace, node or service")
    ] = None,
    failing: Annotated[
        bool, typer.Option("--failing", help="Only timeouts, refusals, resets, retransmissions")
    ] = False,
    ip: Annotated[str | None, typer.Option("--ip")] = None,
    port: Annotated[int | None, typer.Option("--port")] = None,
    ns: Annotated[str | None, typer.Option("--namespace", "-n")] = None,
    limit: Annotated[int, typer.Option("--limit")] = 50,
    snapshot: SnapshotOption = None,
    store: StoreOption = None,
    url: HubOption = None,
    token: TokenOption = None,
    fmt: FormatOption = OutputFormat.table,
) -> None:
    """L4 flows with TCP health: timeouts, refused, resets, retransmissions, handshake RTT (µs)."""
    result = _backend(store, url, token).flows(
        since, until, ip, port, aggregate, limit, snapshot, None, ns, None, None, failing
    )
    if aggregate:
        columns = ["src", "dst", "dst_port", "flows", "timeouts", "refused", "resets", "retrans_rate"]
        columns += ["zero_windows", "tcp_handshake_p50_us", "tcp_handshake_p99_us", "ttfb_p50_us"]
    else:
        columns = ["src", "dst", "dst_ip", "dst_port", "packets", "failure", "resets", "retransmissions"]
        columns += ["rtt_us", "ttfb_us", "first_seen"]
    _print(result, result["flows"], fmt, columns)


def register(app: typer.Typer) -> None:
    app.command("latency")(latency_command)
    app.command("changes")(changes_command)
    app.command("flows")(flows_command)
