"""`netrecall export pcap` (filtered, ordered, evidence-grade capture files) and `netrecall export verify`."""

from __future__ import annotations

import sys
import time
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
from netrecall.errors import NetrecallError
from netrecall.memory import decay_engine_pages_quickly

# --format names the capture format here (DESIGN §6), so the summary's format moves to --output-format.
SummaryFormatOption = Annotated[OutputFormat, typer.Option("--output-format", help="Summary format")]

export_app = typer.Typer(help="Export packets to capture files and verify them.", no_args_is_help=True)


@export_app.command("pcap")
def export_pcap_command(
    out: Annotated[
        Path, typer.Option("-o", "--output", help="File to write (OUT.manifest.json goes beside it)")
    ],
    kfl: Annotated[
        str | None, typer.Option("--kfl", help="Packets of the flows behind the API calls KFL matches")
    ] = None,
    node: Annotated[list[str] | None, typer.Option("--node", help="Capture node (repeatable)")] = None,
    since: Annotated[str | None, typer.Option("--since", help="RFC 3339 or relative (-30m)")] = None,
    until: Annotated[
        str | None, typer.Option("--until", help="RFC 3339 or relative (-5m); exclusive")
    ] = None,
    ip: Annotated[
        list[str] | None, typer.Option("--ip", help="Address or CIDR, either end (repeatable)")
    ] = None,
    port: Annotated[list[str] | None, typer.Option("--port", help="Port, either end (repeatable)")] = None,
    pod: Annotated[
        list[str] | None, typer.Option("--pod", help="NAMESPACE/NAME, either end (repeatable)")
    ] = None,
    namespace: Annotated[list[str] | None, typer.Option("--namespace", help="Namespace, either end")] = None,
    label: Annotated[
        list[str] | None, typer.Option("--label", help="k=v on one end, as at capture time")
    ] = None,
    proto: Annotated[str | None, typer.Option("--proto", help="tcp, udp or icmp (ICMP and ICMPv6)")] = None,
    snapshot: Annotated[str | None, typer.Option("--snapshot", help="Export from a snapshot")] = None,
    partial: Annotated[
        bool, typer.Option("--partial", help="Accept a window whose start retention already dropped")
    ] = False,
    file_format: Annotated[
        str,
        typer.Option(
            "--format", help="pcap or pcapng [default: pcapng for .pcapng or --annotate, else pcap]"
        ),
    ] = "",
    annotate: Annotated[
        bool, typer.Option("--annotate", help="pcapng: comment each packet with both workloads")
    ] = False,
    schedule: Annotated[
        str, typer.Option("--schedule", help="Name of the schedule running this export (audit row, manifest)")
    ] = "",
    reason: Annotated[
        str, typer.Option("--reason", help="Why the evidence is taken (audit row, manifest)")
    ] = "",
    store_url: StoreOption = None,
    url: HubOption = None,
    token: TokenOption = None,
    fmt: SummaryFormatOption = OutputFormat.table,
) -> None:
    """Write the selected packets in timestamp order: original bytes, lengths and nanosecond timestamps.

    OUT may hold {time} (the run's UTC time, 20260314T220000Z) and {schedule}, so a CronJob names each
    run's file without a shell."""
    from netrecall.query.export import Custody, check_output_path, export_pcap
    from netrecall.query.selection import PacketFilters

    out = Path(expand_output_name(str(out), schedule))
    capture_format = file_format or ("pcapng" if str(out).endswith(".pcapng") or annotate else "pcap")
    check_output_path(out)  # before opening the store: a bad path fails fast and leaves nothing
    filters = PacketFilters(
        nodes=node or [],
        since=since,
        until=until,
        ips=ip or [],
        ports=port or [],
        pods=pod or [],
        namespaces=namespace or [],
        labels=label or [],
        proto=proto,
        kfl=kfl,
        snapshot=snapshot,
        partial=partial,
    )
    if url:  # the hub writes the file (and its own manifest); it streams here, checked, with a manifest
        from netrecall.query.export import export_through_hub

        if schedule or reason:
            raise NetrecallError("--schedule and --reason need --store (the hub's API does not take them)")
        result = export_through_hub(hub_client(url, token), url, out, filters, capture_format, annotate)
    else:
        decay_engine_pages_quickly()
        store = open_cli_store(store_url)
        try:
            custody = Custody(schedule=schedule, reason=reason)
            result = export_pcap(store, out, filters, fmt=capture_format, annotate=annotate, custody=custody)
        finally:
            store.close()
    if result.note:
        print(f"netrecall: note: {result.note}", file=sys.stderr)
    row = {
        "file": result.path,
        "format": result.format,
        "packets": result.packets,
        "bytes": result.file_bytes,
        "sha256": result.sha256,
        "manifest": result.manifest_path,
    }
    emit([row], fmt)


def expand_output_name(out: str, schedule: str, now_ns: int | None = None) -> str:
    """{time} -> the UTC time of this run (second precision), {schedule} -> the schedule's name."""
    if "{" not in out:
        return out
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime((now_ns or time.time_ns()) / 1e9))
    return out.replace("{time}", stamp).replace("{schedule}", schedule or "manual")


@export_app.command("prune")
def prune_command(
    directory: Annotated[Path, typer.Argument(help="Directory holding exports and their manifests")],
    older_than: Annotated[
        str, typer.Option("--older-than", help="Delete exports whose manifest is older than this, e.g. 30d")
    ],
    schedule: Annotated[
        str | None, typer.Option("--schedule", help="Only the exports this schedule made")
    ] = None,
    fmt: FormatOption = OutputFormat.table,
) -> None:
    """Delete old exports (file and manifest) from DIR; the `exports` audit rows are kept."""
    from netrecall.query.export import prune_exports
    from netrecall.timeutil import parse_duration_ns

    if not directory.is_dir():
        raise NetrecallError(f"{directory} is not a directory")
    deleted = prune_exports(directory, parse_duration_ns(older_than), schedule=schedule)
    emit([{"deleted": str(path)} for path in deleted], fmt)


@export_app.command("verify")
def verify_command(
    out: Annotated[Path, typer.Argument(help="An exported file (its OUT.manifest.json must sit beside it)")],
    fmt: FormatOption = OutputFormat.table,
) -> None:
    """Re-hash OUT and recount its packets against OUT.manifest.json; exit 1 naming what differs."""
    from netrecall.query.export import verify_export

    result = verify_export(out)
    emit([{"file": result.path, "ok": result.ok, "sha256": result.sha256, "packets": result.packets}], fmt)
    if not result.ok:
        raise NetrecallError(
            f"{result.path} does not match its manifest: " + "; ".join(result.differences), 1
        )


def register(app: typer.Typer) -> None:
    app.add_typer(export_app, name="export")
