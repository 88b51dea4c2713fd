"""Prometheus text exposition for the hub, by hand (a few counters do not justify a dependency)."""

from __future__ import annotations

import threading
import time
from collections import defaultdict

from starlette.types import ASGIApp, Message, Receive, Scope, Send


class Metrics:
    """Counters and latency sums, safe to update from the event loop and worker threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.started = time.time()
        self.requests: dict[tuple[str, str, int], int] = defaultdict(int)
        self.latency_sum: dict[str, float] = defaultdict(float)
        self.latency_count: dict[str, int] = defaultdict(int)
        self.counters: dict[str, float] = defaultdict(float)

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        with self._lock:
            self.requests[(method, route, status)] += 1
            self.latency_sum[route] += seconds
            self.latency_count[route] += 1

    def add(self, name: str, value: float = 1) -> None:
        with self._lock:
            self.counters[name] += value

    def render(self) -> str:
        lines = [
            "# HELP netrecall_hub_uptime_seconds Seconds since the hub started.",
            "# TYPE netrecall_hub_uptime_seconds gauge",
            f"netrecall_hub_uptime_seconds {time.time() - self.started:.3f}",
            "# HELP netrecall_hub_requests_total HTTP requests by method, route and status.",
            "# TYPE netrecall_hub_requests_total counter",
        ]
        with self._lock:
            for (method, route, status), count in sorted(self.requests.items()):
                lines.append(
                    f'netrecall_hub_requests_total{{method="{method}",route="{route}",'
                    f'status="{status}"}} {count}'
                )
            lines += [
                "# HELP netrecall_hub_request_seconds Time spent answering, by route.",
                "# TYPE netrecall_hub_request_seconds summary",
            ]
            for route in sorted(self.latency_count):
                lines.append(
                    f'netrecall_hub_request_seconds_sum{{route="{route}"}} {self.latency_sum[route]:.6f}'
                )
                lines.append(
                    f'netrecall_hub_request_seconds_count{{route="{route}"}} {self.latency_count[route]}'
                )
            for name in sorted(self.counters):
                lines.append(f"# TYPE {name} counter")
                lines.append(f"{name} {self.counters[name]:g}")
        return "\n".join(lines) + "\n"


def route_label(scope: Scope) -> str:
    """The route template (/api/calls/{id}), not the raw path, so label cardinality stays small."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    if path:
        return path
    raw = scope.get("path", "")
    return "/mcp" if raw.startswith("/mcp") else "other"


class MetricsMiddleware:
    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def record(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, record)
        finally:
            self.metrics.observe(scope["method"], route_label(scope), status, time.perf_counter() - start)
