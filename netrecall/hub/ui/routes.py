"""The page's routes: the static page itself (open: it holds no data), and the few JSON routes and the live
event stream only the page uses, under /api/ui/ (behind the hub's token like every other /api route).

The page is served compressed from the files shipped in the package (netrecall/hub/ui/static): no build
step and no Node at run time.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.middleware.gzip import GZipMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from netrecall.hub.errors import bad_request
from netrecall.hub.service import Service, time_ns
from netrecall.hub.ui import queries
from netrecall.hub.ui.live import LiveFeed

STATIC = Path(__file__).parent / "static"
# The page may only load its own files and talk to this hub: no inline script, no third-party origin.
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}
KEEPALIVE_S = 15.0


def _arg(request: Request, name: str) -> str | None:
    value = request.query_params.get(name)
    return None if value is None or value == "" else value


def _int(request: Request, name: str, default: int) -> int:
    value = _arg(request, name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise bad_request(f"{name} must be an integer") from None


class _Static(StaticFiles):
    """The page's files with the page's security headers; revalidated (ETag) rather than cached blind."""

    def file_response(self, *args: Any, **kwargs: Any) -> Response:
        response = super().file_response(*args, **kwargs)
        response.headers.update(PAGE_HEADERS)
        return response


def ui_routes(service: Service, feed: LiveFeed) -> list[BaseRoute]:
    async def call(fn: Any, /, **kwargs: Any) -> Any:
        return await run_in_threadpool(fn, **kwargs)

    def window(request: Request) -> dict[str, Any]:
        return {
            "since_ns": time_ns(_arg(request, "since")),
            "until_ns": time_ns(_arg(request, "until")),
            "snapshot": _arg(request, "snapshot"),
        }

    async def page(_request: Request) -> Response:
        return FileResponse(STATIC / "index.html", headers=PAGE_HEADERS)

    async def calls(request: Request) -> Response:
        answer = await call(
            queries.page_calls,
            store=service.store,
            kfl=_arg(request, "kfl") or "",
            limit=_int(request, "limit", 50),
            cursor=_arg(request, "cursor"),
            **window(request),
        )
        answer["calls"] = [service._redact(c) for c in answer["calls"]]
        return JSONResponse(answer)

    async def count(request: Request) -> Response:
        return JSONResponse(
            await call(
                queries.count_calls, store=service.store, kfl=_arg(request, "kfl") or "", **window(request)
            )
        )

    async def service_map(request: Request) -> Response:
        return JSONResponse(
            await call(
                queries.service_map,
                store=service.store,
                kfl=_arg(request, "kfl") or "",
                group=_arg(request, "group") or "workload",
                **window(request),
            )
        )

    async def flow(request: Request) -> Response:
        return JSONResponse(
            await call(
                queries.flow_packets,
                store=service.store,
                call_id=request.path_params["id"],
                snapshot=_arg(request, "snapshot"),
            )
        )

    async def fitted(request: Request) -> Response:
        return JSONResponse(await call(queries.fitted_window, store=service.store, **window(request)))

    async def snapshot_file(request: Request) -> Response:
        """The portable snapshot file (netrecall snapshot export), written under the exports directory."""
        from netrecall.query.snapshots import check_name, export_snapshot

        name = check_name(request.path_params["name"])
        service.exports_dir.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        file_name = f"snapshot-{name}-{stamp}-{uuid.uuid4().hex[:8]}.zip"
        await call(export_snapshot, store=service.store, name=name, out=service.exports_dir / file_name)
        path = service.export_file(file_name)
        return FileResponse(path, media_type="application/zip", filename=file_name)

    async def live(request: Request) -> Response:
        follower = feed.follow(_arg(request, "kfl") or "")  # a bad filter is a 400 here, not a broken stream

        async def events() -> AsyncIterator[str]:
            try:
                yield f"retry: 2000\nevent: ready\ndata: {json.dumps({'followers': feed.followers})}\n\n"
                while True:
                    try:
                        item = await asyncio.wait_for(follower.queue.get(), timeout=KEEPALIVE_S)
                    except TimeoutError:
                        yield ": keepalive\n\n"
                        continue
                    yield f"event: calls\ndata: {json.dumps(item, ensure_ascii=False)}\n\n"
            finally:
                feed.leave(follower)

        return StreamingResponse(
            events(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    static = GZipMiddleware(_Static(directory=STATIC), minimum_size=256)
    return [
        Route("/", page),
        Mount("/ui", app=static, name="ui"),
        Route("/api/ui/calls", calls),
        Route("/api/ui/count", count),
        Route("/api/ui/map", service_map),
        Route("/api/ui/calls/{id}/flow", flow),
        Route("/api/ui/window", fitted),
        Route("/api/ui/live", live),
        Route("/api/ui/snapshots/{name}/file", snapshot_file, methods=["POST"]),
    ]
