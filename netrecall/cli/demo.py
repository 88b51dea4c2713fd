"""`netrecall demo`: import the recorded incident (netrecall/demo/) with its inventory, dissect it, show
what failed and say what to try next.

The capture is real traffic of a small shop whose payment service starts getting NXDOMAIN for its
gateway's name; the inventory tags every packet with the pod, service and node it belonged to. Running
the demo again changes nothing: a capture already imported is skipped, and so is its inventory;
dissection continues from its watermark, so it finds nothing new.
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
from pathlib import Path
from typing import Annotated

import typer

from netrecall.cli.common import StoreOption, open_cli_store
from netrecall.errors import NetrecallError
from netrecall.timeutil import format_time_ns


def demo_command(
    store_url: StoreOption = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Only the summary line")] = False,
    serve: Annotated[
        bool, typer.Option("--serve", help="Then run the hub and its web page on the demo (until Ctrl-C)")
    ] = False,
    host: Annotated[str, typer.Option("--host", help="With --serve: address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="With --serve: port to listen on")] = 8080,
    token: Annotated[
        str | None,
        typer.Option(
            "--token", envvar="NETRECALL_TOKEN", help="With --serve: bearer token [env NETRECALL_TOKEN]"
        ),
    ] = None,
) -> None:
    """Load the demo incident (a shop failing on DNS, captured from real traffic) into the store."""
    if serve:  # an exposed hub without a token is refused before anything is imported
        from netrecall.hub.auth import check_bind, resolve_token

        check_bind(host, resolve_token(token, None))
    from netrecall.demo import DEMO_INVENTORY, DEMO_NODE, DEMO_PCAP
    from netrecall.dissect.runner import dissect
    from netrecall.ingest.digest import file_sha256
    from netrecall.ingest.identity import IdentityResolver
    from netrecall.ingest.importer import describe, import_files

    for path in (DEMO_PCAP, DEMO_INVENTORY):
        if not path.is_file():
            raise NetrecallError(f"the demo file {path} is missing: reinstall netrecall")
    store = open_cli_store(store_url)
    try:
        if _already_imported(store, file_sha256(DEMO_PCAP)):
            typer.echo(f"the demo incident is already in {store.address.display} (nothing imported again)")
        else:
            resolver = IdentityResolver.from_inventory(DEMO_INVENTORY, source="demo:inventory.json")
            summary = import_files(store, [DEMO_PCAP], node=DEMO_NODE, resolver=resolver)
            typer.echo(
                f"imported the demo incident into {store.address.display}: {describe(summary)}; "
                f"{len(resolver)} workload identities"
            )
        dissected = dissect(store)
        typer.echo(f"dissected: {_calls_line(dissected.calls)}")
        if not quiet:
            typer.echo(_failures(store))
        first, last = store.rows(
            "SELECT toUnixTimestamp64Nano(min(ts)), toUnixTimestamp64Nano(max(ts)) FROM packets "
            "WHERE node = {n:String}",
            {"n": DEMO_NODE},
        )[0]
    finally:
        store.close()
    if not quiet:
        typer.echo(_next_steps(store_url, first, last))
    if serve:
        _serve(store_url, host, port, token)


def _serve(store_url: str | None, host: str, port: int, token: str | None) -> None:
    """The hub on the demo's store, with the page's URL said first (the hub owns the store from here)."""
    from netrecall.cli.serve import serve

    shown = f"[{host}]" if ":" in host else host
    typer.echo(
        f"\nThe web page (traffic, call detail, service map, errors): http://{shown}:{port}/"
        + ("  (sign in with the hub's token)" if token else "")
        + "\nThe hub runs until Ctrl-C."
    )
    serve(host=host, port=port, token=token, store_url=store_url, log_level="warning")


def _calls_line(calls: dict[str, int]) -> str:
    if not calls:
        return "no new calls (already dissected)"
    return ", ".join(f"{count:,} {protocol}" for protocol, count in sorted(calls.items())) + " calls"


def _failures(store) -> str:
    """The error summary and the failing DNS names, the two answers that point at the root cause."""
    from netrecall.query.rca import Scope, dns_failures, summarize_errors

    lines = ["", "What failed (errors grouped by source -> destination, protocol and code):"]
    for group in summarize_errors(store, Scope(), limit=6)["groups"]:
        lines.append(
            f"  {group['count']:>4}  {group['kind']:<10} {group['src']} -> {group['dst']}  "
            f"{group['code']} {group['status_text']}  {group['sample']}".rstrip()
        )
    lines += ["", "Failing DNS lookups:"]
    for failure in dns_failures(store, Scope(), limit=3)["failures"]:
        lines.append(
            f"  {failure['count']:>4}  {failure['qname']} {failure['qtype']} -> {failure['rcode']}  "
            f"asked by {failure['client']}, first at {failure['first_seen']}"
        )
    return "\n".join(lines)


def _already_imported(store, source: str) -> bool:
    """The import finished before (its `imports` row is written last) and its packets are all there."""
    recorded = store.scalar(
        "SELECT argMax(packets, imported_at) FROM imports WHERE source = {s:String}", {"s": source}
    )
    stored = store.scalar("SELECT count() FROM packets WHERE source = {s:String}", {"s": source})
    return bool(recorded) and int(recorded) == int(stored or 0)


def _prog() -> str:
    """How to call netrecall again: `netrecall` when it is on PATH, else the path this one ran from."""
    ran = Path(sys.argv[0])
    if shutil.which("netrecall") or ran.name != "netrecall" or not ran.exists():
        return "netrecall"
    relative = os.path.relpath(ran)
    return relative if len(relative) < len(str(ran)) and not relative.startswith("..") else str(ran)


def _next_steps(store_url: str | None, first_ns: int, last_ns: int) -> str:
    from netrecall.demo import DEMO_NODE

    store = f" --store {shlex.quote(store_url)}" if store_url else ""
    prog = _prog()
    # Seconds into the capture: the failure has not started yet, every identity is already there.
    during = format_time_ns(first_ns + 5_000_000_000)
    commands = [
        (
            "Who talked to whom (pods and services, as they were at capture time):",
            f'{prog} sql{store} "SELECT src_namespace, src_pod, dst_service, dst_pod, count() AS packets '
            'FROM packets WHERE ip_version = 4 GROUP BY ALL ORDER BY packets DESC LIMIT 15"',
        ),
        ("The cluster's identities at the time of the capture:", f"{prog} workloads{store} --at {during}"),
        (
            "Find the failures with KFL (DNS errors, HTTP 5xx):",
            f"{prog} query{store} 'dns && dns_response && status_code != 0'\n"
            f"  {prog} query{store} 'http && status_code >= 500'",
        ),
        (
            "Export the failing payment traffic for Wireshark:",
            f"{prog} export pcap{store} -o payment.pcap --namespace payment",
        ),
        (
            "Let an AI agent investigate it (MCP over stdio; see README for the hub and Cursor forms):",
            f"claude mcp add netrecall -- {prog} mcp{store}",
        ),
    ]
    lines = [
        "",
        "The incident: payment (namespace payment) asks DNS for api.payment-gateway.svc.cluster.local;",
        "partway through, DNS answers NXDOMAIN, payment answers 503, checkout 500, frontend 502.",
        f"Capture: {format_time_ns(first_ns)} .. {format_time_ns(last_ns)} on node {DEMO_NODE}.",
        "",
        "Try next:",
    ]
    for title, command in commands:
        lines += [f"  # {title}", f"  {command}"]
    return "\n".join(lines)


def register(app: typer.Typer) -> None:
    app.command("demo")(demo_command)
