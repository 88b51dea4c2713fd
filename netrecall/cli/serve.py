"""`netrecall serve` (the hub: REST, agents' ingest, MCP over HTTP) and `netrecall mcp` (MCP over stdio)."""

from __future__ import annotations

import os
import sys
from typing import Annotated

import typer

from netrecall.cli.common import HubOption, StoreOption, open_cli_store

DEFAULT_PORT = 8080
TokenOption = Annotated[
    str | None, typer.Option("--token", envvar="NETRECALL_TOKEN", help="Bearer token [env NETRECALL_TOKEN]")
]
NoRedactOption = Annotated[
    bool, typer.Option("--no-redact", help="Show secrets (Authorization, cookies, tokens) in answers")
]


def serve(
    host: Annotated[str, typer.Option("--host", help="Address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="Port to listen on")] = DEFAULT_PORT,
    token: TokenOption = None,
    token_file: Annotated[
        str | None, typer.Option("--token-file", help="File whose first line is the token")
    ] = None,
    store_url: StoreOption = None,
    no_redact: NoRedactOption = False,
    log_level: Annotated[str, typer.Option("--log-level", help="uvicorn log level")] = "info",
    retention_ttl: Annotated[
        str | None, typer.Option("--retention-ttl", help="TTL the hub sets at start, e.g. 72h")
    ] = None,
    retention_max_bytes: Annotated[
        str | None,
        typer.Option("--retention-max-bytes", help="Byte budget the hub enforces, e.g. 50GiB"),
    ] = None,
    retention_every: Annotated[
        float, typer.Option("--retention-every", help="Seconds between byte-budget passes")
    ] = 300.0,
) -> None:
    """Run the hub: owns the store, serves REST + /mcp, takes agents' batches on /api/ingest."""
    import uvicorn

    from netrecall.hub.app import build_app
    from netrecall.hub.auth import check_bind, resolve_token
    from netrecall.hub.service import Service
    from netrecall.memory import return_memory_promptly

    return_memory_promptly()  # agents' batches stream through: peak RSS should track one batch
    secret = resolve_token(token, token_file)
    check_bind(host, secret)  # before opening anything: an exposed, open hub never starts
    shown_host = f"[{host}]" if ":" in host else host
    url = f"http://{shown_host}:{port}"
    # The owner note of an embedded store tells a refused second opener which --url to use instead.
    os.environ["NETRECALL_HUB_URL"] = url
    store = open_cli_store(store_url)
    retention = _start_retention(store, retention_ttl, retention_max_bytes, retention_every)
    app = build_app(Service(store, redact=not no_redact), token=secret, host=host)
    print(
        f"netrecall: hub on {url} (store {store.address.display}, "
        f"{'token required' if secret else 'no token: loopback only'})",
        file=sys.stderr,
    )
    try:
        uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=False)
    finally:
        if retention is not None:
            retention.stop()
        store.close()


def _start_retention(store, ttl: str | None, max_bytes: str | None, every_s: float):
    """The hub's retention thread when a rule is given (none otherwise: `netrecall retention` by hand)."""
    if ttl is None and max_bytes is None:
        return None
    from netrecall.hub.retention import RetentionLoop
    from netrecall.timeutil import parse_duration_ns, parse_size_bytes

    ttl_seconds = parse_duration_ns(ttl) // 1_000_000_000 if ttl else None
    budget = parse_size_bytes(max_bytes) if max_bytes else None
    return RetentionLoop(store, ttl_seconds, budget, every_s).start()


def mcp(
    url: HubOption = None,
    token: TokenOption = None,
    store_url: StoreOption = None,
    no_redact: NoRedactOption = False,
) -> None:
    """MCP over stdio for AI agents: opens the local store, or with --url works through a running hub."""
    from netrecall.mcp.server import build_server

    if url:
        from netrecall.hub.client import HubClient

        backend = HubClient(url, token)
    else:
        from netrecall.hub.service import Service

        if no_redact:
            os.environ["NETRECALL_REDACT"] = "0"
        backend = Service(open_cli_store(store_url), redact=not no_redact)
    build_server(backend).run("stdio")


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)
    app.command("mcp")(mcp)
