"""The hub's Starlette application: REST routes over `Service`, agents' ingest, MCP at /mcp.

Store calls block, so every handler runs its `Service` call in the threadpool. Bearer auth wraps
everything but /healthz; bodies are size-limited per route (ingest larger); errors are JSON.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from netrecall.hub import errors
from netrecall.hub.auth import BearerAuth
from netrecall.hub.errors import bad_request
from netrecall.hub.ingest import ARROW_STREAM, RecentTokens, ingest
from netrecall.hub.metrics import Metrics, MetricsMiddleware
from netrecall.hub.openapi import openapi_document
from netrecall.hub.service import Service
from netrecall.hub.ui.live import LiveFeed
from netrecall.hub.ui.routes import ui_routes

MAX_BODY = 1 << 20  # JSON requests: filters and SQL, never data
MAX_INGEST_BODY = 256 << 20  # one agent batch


class Params:
    """Typed access to query parameters with one-line 400s."""

    def __init__(self, request: Request) -> None:
        self.query = request.query_params

    def str(self, name: str, default: str | None = None) -> str | None:
        value = self.query.get(name)
        return default if value is None or value == "" else value

    def int(self, name: str, default: int | None = None) -> int | None:
        value = self.query.get(name)
        if value is None or value == "":
            return default
        try:
            return int(value)
        except ValueError:
            raise bad_request(f"{name} must be an integer") from None

    def bool(self, name: str, default: bool = False) -> bool:
        value = self.query.get(name)
        if value is None or value == "":
            return default
        if value.lower() in ("1", "true", "yes"):
            return True
        if value.lower() in ("0", "false", "no"):
            return False
        raise bad_request(f"{name} must be true or false")

    def list(self, name: str) -> list[str]:
        return [v for item in self.query.getlist(name) for v in item.split(",") if v]


async def json_body(request: Request) -> dict[str, Any]:
    raw = await request.body()
    if not raw:
        return {}
    try:
        body = json.loads(raw)
    except ValueError:
        raise bad_request("body must be a JSON object") from None
    if not isinstance(body, dict):
        raise bad_request("body must be a JSON object")
    return body


def _str(body: dict[str, Any], name: str) -> str | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise bad_request(f"{name} must be a string")
    return value


def _strs(body: dict[str, Any], name: str) -> list[str] | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise bad_request(f"{name} must be a list of strings")
    return value


def _ints(body: dict[str, Any], name: str) -> list[int] | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise bad_request(f"{name} must be a list of integers")
    return value


def _int(body: dict[str, Any], name: str, default: int) -> int:
    value = body.get(name, default)
    if not isinstance(value, int) or isinstance(value, bool):
        raise bad_request(f"{name} must be an integer")
    return value


FLOW_AGGREGATES = ("workload", "pod", "namespace", "node", "service", "true", "false")


def _aggregate(value: str | None) -> str | None:
    if value is not None and value.lower() not in FLOW_AGGREGATES:
        raise bad_request(f"aggregate must be one of {', '.join(FLOW_AGGREGATES)}")
    return value


def build_app(
    service: Service, token: str | None = None, host: str = "127.0.0.1", mcp: bool = True
) -> Starlette:
    """The whole hub as one ASGI app (uvicorn serves it; tests drive it in-process)."""
    metrics = Metrics()
    recent = RecentTokens()
    feed = LiveFeed(service)  # the web page's live mode (netrecall/hub/ui)

    async def call(fn: Callable[..., Any], /, **kwargs: Any) -> Any:
        return await run_in_threadpool(fn, **kwargs)

    async def healthz(_request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def metrics_route(_request: Request) -> Response:
        return PlainTextResponse(metrics.render(), media_type="text/plain; version=0.0.4")

    async def openapi(_request: Request) -> Response:
        return JSONResponse(openapi_document())

    async def boundaries(request: Request) -> Response:
        return JSONResponse(await call(service.boundaries, snapshot=Params(request).str("snapshot")))

    async def calls(request: Request) -> Response:
        p = Params(request)
        fmt = p.str("format", "json")
        if fmt not in ("json", "jsonl"):
            raise bad_request("format must be json or jsonl")
        answer = await call(
            service.calls,
            kfl=p.str("kfl", ""),
            since=p.str("since"),
            until=p.str("until"),
            limit=p.int("limit", 50),
            snapshot=p.str("snapshot"),
        )
        if fmt == "jsonl":
            text = "".join(json.dumps(c, ensure_ascii=False) + "\n" for c in answer["calls"])
            return PlainTextResponse(
                text,
                media_type="application/x-ndjson",
                headers={
                    "X-Total": str(answer.get("total", "")),
                    "X-Truncated": str(bool(answer.get("truncated"))).lower(),
                },
            )
        return JSONResponse(answer)

    async def call_one(request: Request) -> Response:
        p = Params(request)
        return JSONResponse(
            await call(
                service.call,
                call_id=request.path_params["id"],
                include_payload=p.bool("payload"),
                max_payload_size=p.int("max_payload_size", 4096),
                snapshot=p.str("snapshot"),
            )
        )

    async def trace(request: Request) -> Response:
        p = Params(request)
        return JSONResponse(
            await call(
                service.trace,
                call_id=request.path_params["id"],
                window=p.str("window", "5s"),
                limit=p.int("limit", 50),
                snapshot=p.str("snapshot"),
            )
        )

    async def sql(request: Request) -> Response:
        body = await json_body(request)
        query = _str(body, "sql")
        if not query:
            raise bad_request('body must carry {"sql": "SELECT ..."}')
        return JSONResponse(await call(service.sql, query=query, max_rows=_int(body, "max_rows", 500)))

    async def workloads(request: Request) -> Response:
        p = Params(request)
        return JSONResponse(
            await call(
                service.workloads, namespace=p.str("namespace"), at=p.str("at"), limit=p.int("limit", 200)
            )
        )

    async def ips(request: Request) -> Response:
        p = Params(request)
        return JSONResponse(
            await call(
                service.ips,
                since=p.str("since"),
                until=p.str("until"),
                limit=p.int("limit", 100),
                snapshot=p.str("snapshot"),
            )
        )

    async def flows(request: Request) -> Response:
        p = Params(request)
        return JSONResponse(
            await call(
                service.flows,
                since=p.str("since"),
                until=p.str("until"),
                ip=p.str("ip"),
                port=p.int("port"),
                aggregate=_aggregate(p.str("aggregate")),
                limit=p.int("limit", 100),
                snapshot=p.str("snapshot"),
                l4proto=p.str("l4proto"),
                ns=p.str("ns"),
                pod=p.str("pod"),
                svc=p.str("svc"),
                failing=p.bool("failing"),
            )
        )

    async def latency(request: Request) -> Response:
        p = Params(request)
        return JSONResponse(
            await call(
                service.latency,
                since=p.str("since"),
                until=p.str("until"),
                kfl=p.str("kfl", ""),
                src=p.str("src"),
                dst=p.str("dst"),
                protocol=p.str("protocol"),
                by_route=p.bool("by_route", True),
                step=p.str("step"),
                limit=p.int("limit", 20),
                snapshot=p.str("snapshot"),
            )
        )

    async def slow_edges(request: Request) -> Response:
        p = Params(request)
        return JSONResponse(
            await call(
                service.slow_edges,
                since=p.str("since"),
                until=p.str("until"),
                baseline_since=p.str("baseline_since"),
                baseline_until=p.str("baseline_until"),
                kfl=p.str("kfl", ""),
                limit=p.int("limit", 10),
                tail=p.int("tail", 3),
                snapshot=p.str("snapshot"),
            )
        )

    async def changes(request: Request) -> Response:
        p = Params(request)
        return JSONResponse(
            await call(
                service.changes,
                since=p.str("since"),
                until=p.str("until"),
                baseline_since=p.str("baseline_since"),
                baseline_until=p.str("baseline_until"),
                kfl=p.str("kfl", ""),
                limit=p.int("limit", 15),
                snapshot=p.str("snapshot"),
            )
        )

    async def stats(request: Request) -> Response:
        p = Params(request)
        return JSONResponse(
            await call(
                service.stats,
                kfl=p.str("kfl", ""),
                since=p.str("since"),
                until=p.str("until"),
                snapshot=p.str("snapshot"),
            )
        )

    async def errors_route(request: Request) -> Response:
        p = Params(request)
        return JSONResponse(
            await call(
                service.errors,
                kfl=p.str("kfl", ""),
                since=p.str("since"),
                until=p.str("until"),
                limit=p.int("limit", 20),
                snapshot=p.str("snapshot"),
                include_4xx=p.bool("include_4xx", True),
            )
        )

    async def dns_failures(request: Request) -> Response:
        p = Params(request)
        return JSONResponse(
            await call(
                service.dns_failures,
                kfl=p.str("kfl", ""),
                since=p.str("since"),
                until=p.str("until"),
                limit=p.int("limit", 20),
                snapshot=p.str("snapshot"),
            )
        )

    async def snapshots(request: Request) -> Response:
        if request.method == "GET":
            return JSONResponse(await call(service.snapshots))
        body = await json_body(request)
        name = _str(body, "name")
        if not name:
            raise bad_request("body must carry the snapshot's name")
        created = await call(
            service.create_snapshot,
            name=name,
            last=_str(body, "last"),
            since=_str(body, "since"),
            until=_str(body, "until"),
            nodes=_strs(body, "nodes"),
            note=_str(body, "note") or "",
            created_by="hub",
            partial=body.get("partial") is True,
        )
        return JSONResponse(created, status_code=201)

    async def snapshot_one(request: Request) -> Response:
        name = request.path_params["name"]
        if request.method == "DELETE":
            return JSONResponse(await call(service.delete_snapshot, name=name))
        return JSONResponse(await call(service.snapshot, name=name))

    async def dissect(request: Request) -> Response:
        if request.method == "GET":
            return JSONResponse(await call(service.dissect_status, job=Params(request).str("job")))
        body = await json_body(request)
        job = await call(
            service.start_dissect,
            since=_str(body, "since"),
            until=_str(body, "until"),
            node=_str(body, "node"),
            snapshot=_str(body, "snapshot"),
        )
        metrics.add("netrecall_hub_dissect_jobs_total")
        feed.job_started(job["job"])
        return JSONResponse(job, status_code=202)

    async def dissect_job(request: Request) -> Response:
        return JSONResponse(await call(service.dissect_status, job=request.path_params["job"]))

    async def export_pcap(request: Request) -> Response:
        body = await json_body(request)
        fmt = _str(body, "format") or "pcap"
        if fmt not in ("pcap", "pcapng"):
            raise bad_request("format must be pcap or pcapng")
        written = await call(
            service.export_pcap,
            kfl=_str(body, "kfl") or "",
            nodes=_strs(body, "nodes"),
            ips=_strs(body, "ips"),
            ports=_ints(body, "ports"),
            pods=_strs(body, "pods"),
            labels=_strs(body, "labels"),
            since=_str(body, "since"),
            until=_str(body, "until"),
            snapshot=_str(body, "snapshot"),
            fmt=fmt,
            created_by="hub",
            partial=body.get("partial") is True,
        )
        metrics.add("netrecall_hub_exports_total")
        if body.get("download", True) is False:
            return JSONResponse(written)
        path = service.export_file(written["file"])
        media = "application/vnd.tcpdump.pcap" if fmt == "pcap" else "application/x-pcapng"
        return FileResponse(
            path,
            media_type=media,
            filename=written["file"],
            headers={"X-Netrecall-Sha256": written["sha256"], "X-Netrecall-Packets": str(written["packets"])},
        )

    async def export_download(request: Request) -> Response:
        path = await call(service.export_file, name=request.path_params["name"])
        return FileResponse(path, media_type="application/octet-stream", filename=path.name)

    async def ingest_route(request: Request) -> Response:
        ctype = request.headers.get("content-type", "").split(";")[0].strip()
        if ctype != ARROW_STREAM:
            raise errors.ApiError(415, "unsupported_media_type", f"Content-Type must be {ARROW_STREAM}")
        table = Params(request).str("table", "")
        body = await request.body()
        answer = await call(
            ingest,
            store=service.store,
            recent=recent,
            table_name=table or "",
            token=request.headers.get("x-netrecall-batch"),
            body=body,
        )
        metrics.add("netrecall_hub_ingest_batches_total")
        metrics.add(f"netrecall_hub_ingest_rows_total_{table}", 0 if answer["duplicate"] else answer["rows"])
        metrics.add("netrecall_hub_ingest_bytes_total", len(body))
        if answer["duplicate"]:
            metrics.add("netrecall_hub_ingest_duplicates_total")
        elif table == "packets":
            feed.packets_arrived()
        return JSONResponse(answer)

    routes = [
        Route("/healthz", healthz),
        Route("/metrics", metrics_route),
        Route("/openapi.json", openapi),
        Route("/api/boundaries", boundaries),
        Route("/api/calls", calls),
        Route("/api/calls/{id}", call_one),
        Route("/api/calls/{id}/trace", trace),
        Route("/api/sql", sql, methods=["POST"]),
        Route("/api/workloads", workloads),
        Route("/api/ips", ips),
        Route("/api/flows", flows),
        Route("/api/latency", latency),
        Route("/api/latency/changes", slow_edges),
        Route("/api/changes", changes),
        Route("/api/stats", stats),
        Route("/api/errors", errors_route),
        Route("/api/dns/failures", dns_failures),
        Route("/api/snapshots", snapshots, methods=["GET", "POST"]),
        Route("/api/snapshots/{name}", snapshot_one, methods=["GET", "DELETE"]),
        Route("/api/dissect", dissect, methods=["GET", "POST"]),
        Route("/api/dissect/{job}", dissect_job),
        Route("/api/export/pcap", export_pcap, methods=["POST"]),
        Route("/api/exports/{name}", export_download),
        Route("/api/ingest", ingest_route, methods=["POST"]),
        *ui_routes(service, feed),
    ]
    lifespan = None
    if mcp:
        from netrecall.mcp.server import build_server

        mcp_server = build_server(service)
        mcp_app = mcp_server.streamable_http_app(streamable_http_path="/mcp", host=host)
        routes.extend(mcp_app.routes)

        @contextlib.asynccontextmanager
        async def lifespan(_app: Starlette) -> AsyncIterator[None]:
            async with mcp_server.session_manager.run():
                yield

    app = Starlette(
        routes=routes,
        middleware=[
            Middleware(MetricsMiddleware, metrics=metrics),
            Middleware(BearerAuth, token=token),
            Middleware(
                errors.BodyLimit,
                default=MAX_BODY,
                limits={"/api/ingest": MAX_INGEST_BODY},
                skip_prefixes=("/mcp",),
            ),
        ],
        exception_handlers=errors.HANDLERS,
        lifespan=lifespan,
    )
    app.state.service = service
    app.state.metrics = metrics
    return app
