"""`netrecall import FILE...`: load pcap/pcapng(.gz) captures into the store, one summary line at the end."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from netrecall.cli.common import StoreOption, open_cli_store
from netrecall.errors import NetrecallError


def import_command(
    files: Annotated[list[Path], typer.Argument(help="pcap or pcapng files, optionally gzip-compressed")],
    node: Annotated[str, typer.Option("--node", help="Node name to tag these packets with")] = "",
    inventory: Annotated[
        Path | None,
        typer.Option(
            "--inventory", help="`kubectl get pods,svc -A -o json` dump: enrich both ends of every packet"
        ),
    ] = None,
    store_url: StoreOption = None,
) -> None:
    """Import capture files (skips a file whose exact content was imported before)."""
    from netrecall.ingest.digest import FileDigests, import_paths_sorted

    paths = import_paths_sorted(files)
    # Hashing starts first: it overlaps loading numpy, pyarrow, the inventory and the embedded engine.
    digests = FileDigests(paths)
    from netrecall.ingest.importer import describe, import_files

    resolver = None
    if inventory is not None:
        from netrecall.ingest.identity import IdentityResolver

        resolver = IdentityResolver.from_inventory(inventory)
    store = open_cli_store(store_url)
    try:
        summary = import_files(
            store,
            paths,
            node=node,
            resolver=resolver,
            progress=sys.stderr.isatty(),
            errors="collect",
            digests=digests,
            merge_after=False,  # this process ends here; the next one to open the store merges
        )
    finally:
        store.close()
    if len(summary.files) == 1 and summary.failed:
        raise NetrecallError(summary.failed[0].error)  # the one line: file, byte offset, what is wrong
    for result in summary.files:
        if result.status == "failed":
            print(f"netrecall: error: {result.error}", file=sys.stderr)
            continue
        for damage in sorted(result.damage, key=lambda d: d.offset):
            where = f"byte offset {damage.offset}" + (
                " of the decompressed data" if result.path.endswith("gz") else ""
            )
            print(f"netrecall: warning: {result.path}: {where}: {damage.reason}", file=sys.stderr)
        if result.status == "already imported":
            print(f"{result.path}: already imported (sha256 {result.source[:12]}), skipped")
        elif len(summary.files) > 1:
            print(f"{result.path}: {describe(result)}")
        if result.undecoded:
            print(f"{result.path}: {result.undecoded:,} frames of an unknown link type stored undecoded")
    print(f"imported {describe(summary)}")
    if summary.failed:
        readable = len(summary.files) - len(summary.failed)
        raise NetrecallError(
            f"{len(summary.failed)} of {len(summary.files)} file(s) could not be read"
            + (f" ({readable} read)" if readable else ""),
            exit_code=2,
        )


def register(app: typer.Typer) -> None:
    app.command("import")(import_command)
