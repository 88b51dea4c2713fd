"""The hub's one error shape, `{"error": {"code", "message"}}`, and the handlers that produce it.

No stack trace ever reaches a client: unexpected exceptions are logged on the hub and answered with a
generic message.
"""

from __future__ import annotations

import logging
import re

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


async def netrecall_error(_request: Request, exc: Exception) -> JSONResponse:
    # NetrecallError is the user's mistake or a store refusal, already one line and safe to show.
    message = str(exc).splitlines()[0] if str(exc) else "error"
    if _NOT_FOUND.match(message):
        return error_response(404, "not_found", message)
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
