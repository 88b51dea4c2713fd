"""Bearer-token access: one shared token for every route except /healthz, compared in constant time.

A token in the query string is deliberately ignored (it would end up in logs and browser history).
Without a configured token the hub accepts everyone, which `serve` only allows on a loopback address.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
from pathlib import Path

from starlette.types import ASGIApp, Receive, Scope, Send

from netrecall.errors import NetrecallError
from netrecall.hub.ui import OPEN_PATHS as PAGE_PATHS
from netrecall.hub.ui import OPEN_PREFIXES as PAGE_PREFIXES

# The web page's own files are open too: they hold no data, and a browser cannot send a bearer header
# when it navigates; the page then sends the token itself on every /api request (docs/ui.md).
OPEN_PATHS = frozenset({"/healthz"}) | PAGE_PATHS


def is_loopback(host: str) -> bool:
    if host in ("localhost", ""):
        return host == "localhost"
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def resolve_token(token: str | None, token_file: str | None) -> str | None:
    """The token from --token, --token-file (first line) or None."""
    if token and token_file:
        raise NetrecallError("give --token or --token-file, not both")
    if token_file:
        try:
            token = Path(token_file).read_text().strip().splitlines()[0].strip()
        except (OSError, IndexError):
            raise NetrecallError(f"cannot read a token from {token_file}") from None
    if token is not None and len(token) < 8:
        raise NetrecallError("the token must be at least 8 characters")
    return token or None


def check_bind(host: str, token: str | None) -> None:
    """Refuse to expose an unauthenticated hub beyond this machine."""
    if token is None and not is_loopback(host):
        raise NetrecallError(
            f"refusing to listen on {host} without a token: pass --token or --token-file "
            "(or bind to 127.0.0.1)"
        )


def token_matches(header: str | None, token: str) -> bool:
    if not header:
        return False
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(value.strip().encode(), token.encode())


class BearerAuth:
    """ASGI middleware: 401 with a JSON error unless `Authorization: Bearer <token>` matches."""

    def __init__(self, app: ASGIApp, token: str | None) -> None:
        self.app = app
        self.token = token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        is_open = path in OPEN_PATHS or path.startswith(PAGE_PREFIXES)
        if scope["type"] != "http" or self.token is None or is_open:
            await self.app(scope, receive, send)
            return
        header = None
        for name, value in scope.get("headers", []):
            if name == b"authorization":
                header = value.decode("latin-1")
                break
        if token_matches(header, self.token):
            await self.app(scope, receive, send)
            return
        body = json.dumps(
            {"error": {"code": "unauthorized", "message": "missing or wrong bearer token"}}
        ).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 401,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"www-authenticate", b'Bearer realm="netrecall"'),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
