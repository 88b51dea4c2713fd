"""The hub's one error shape, `{"error": {"code", "message"}}`, and the handlers that produce it.

No stack trace ever reaches a client: unexpected exceptions are logged on the hub and answered with a
generic message.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse

from netrecall.errors import NetrecallError

log = logging.getLogger("netrecall.hub")
# "no call with id 'x'", "no snapshot named 'y'": the store's way of saying 404.
_NOT_FOUND = re.compile(r"^no [\w ]+? (with id|named|with name) ")


class ApiError(Exception):
    """An error with an HTTP status and a stable machine-readable code."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def not_found(message: str) -> ApiError:
    return ApiError(404, "not_found", message)


def bad_request(message: str) -> ApiError:
    return ApiError(400, "bad_request", message)


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers)


async def api_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return error_response(exc.status, exc.code, exc.message)


# Routes where the engine's own complaint is about the caller's text (their SQL), so a 400.
_USER_SQL_ROUTES = frozenset({"/api/sql"})


async def netrecall_error(request: Request, exc: Exception) -> JSONResponse:
    # NetrecallError is the user's mistake or a store refusal, already one line and safe to show.
    message = str(exc).splitlines()[0] if str(exc) else "error"
    if _NOT_FOUND.match(message):
        return error_response(404, "not_found", message)
    if message.startswith("ClickHouse: ") and request.url.path not in _USER_SQL_ROUTES:
        # Inputs are validated before they reach the engine, so an engine error elsewhere is ours: a 500
        # (logged here), not the caller's 400. The one-line message is still safe to show.
        log.error("engine error on %s %s: %s", request.method, request.url.path, message)
        return error_response(500, "engine_error", message)
    return error_response(400, "bad_request", message)


async def http_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    codes = {404: "not_found", 405: "method_not_allowed", 413: "too_large", 401: "unauthorized"}
    return error_response(exc.status_code, codes.get(exc.status_code, "http_error"), str(exc.detail))


async def unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    log.exception("internal error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(500, "internal", "internal error (details are in the hub log)")


HANDLERS = {
    ApiError: api_error,
    NetrecallError: netrecall_error,
    HTTPException: http_error,
    Exception: unexpected_error,
}


class BodyLimit:
    """ASGI middleware: a request body past its route's limit is answered 413 in the JSON error shape.

    Checked on Content-Length first and again while streaming (a chunked body has no length).
    """

    def __init__(
        self, app: Any, default: int, limits: dict[str, int], skip_prefixes: tuple[str, ...] = ()
    ) -> None:
        self.app = app
        self.default = default
        self.limits = limits
        self.skip = skip_prefixes

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"].startswith(self.skip):
            await self.app(scope, receive, send)
            return
        limit = self.limits.get(scope["path"], self.default)
        for name, value in scope.get("headers", []):
            if name == b"content-length" and value.isdigit() and int(value) > limit:
                await _too_large(scope, receive, send, limit)
                return
        seen = 0
        started = False

        async def limited_receive() -> Any:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise _TooLarge
            return message

        async def tracking_send(message: Any) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _TooLarge:
            if not started:
                await _too_large(scope, receive, send, limit)


class _TooLarge(Exception):
    pass


async def _too_large(scope: Any, receive: Any, send: Any, limit: int) -> None:
    response = error_response(413, "too_large", f"request body larger than {limit} bytes")
    await response(scope, receive, send)
