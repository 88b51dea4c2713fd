"""A client for a running hub, with the same methods as `netrecall.hub.service.Service`.

The CLI (`--url HUB`) and `netrecall mcp --url HUB` use it so that, while `netrecall serve` owns the
embedded store, everything else goes through the hub. Errors come back as one-line NetrecallErrors.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx

from netrecall.errors import NetrecallError

TOKEN_ENV = "NETRECALL_TOKEN"


def _drop_none(values: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None and v != ""}


class HubClient:
    """Blocking REST client. `token` defaults to $NETRECALL_TOKEN."""

    def __init__(self, url: str, token: str | None = None, timeout: float = 120.0) -> None:
        if not url.startswith(("http://", "https://")):
            raise NetrecallError(f"hub URL {url!r} must start with http:// or https://")
        self.url = url.rstrip("/")
        token = token or os.environ.get(TOKEN_ENV) or None
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def close(self) -> None:
        self.http.close()

    # --- plumbing --------------------------------------------------------------------------------
    def request(
        self, method: str, path: str, params: dict[str, Any] | None = None, body: dict[str, Any] | None = None
    ) -> Any:
        try:
            response = self.http.request(
                method,
                path,
                params=_drop_none(params or {}) or None,
                json=_drop_none(body) if body is not None else None,
            )
        except httpx.HTTPError as exc:
            raise NetrecallError(f"cannot reach the hub at {self.url}: {exc}") from None
        return self._answer(response)

    def _answer(self, response: httpx.Response) -> Any:
        if response.status_code >= 400:
            raise NetrecallError(f"hub: {_error_message(response)}")
        try:
            return response.json()
        except ValueError:
            raise NetrecallError(f"hub answered {response.status_code} without JSON") from None

    @contextmanager
    def stream(self, method: str, path: str, body: dict[str, Any]) -> Iterator[httpx.Response]:
        try:
            with self.http.stream(method, path, json=_drop_none(body)) as response:
                if response.status_code >= 400:
                    response.read()
                    raise NetrecallError(f"hub: {_error_message(response)}")
                yield response
        except httpx.HTTPError as exc:
            raise NetrecallError(f"cannot reach the hub at {self.url}: {exc}") from None

    # --- the Service surface ---------------------------------------------------------------------
    def boundaries(self, snapshot: str | None = None) -> dict[str, Any]:
        return self.request("GET", "/api/boundaries", {"snapshot": snapshot})

    def calls(
        self,
        kfl: str = "",
        since: Any = None,
        until: Any = None,
        limit: int = 50,
        snapshot: str | None = None,
    ) -> dict[str, Any]:
        return self.request(
            "GET",
            "/api/calls",
            {"kfl": kfl, "since": since, "until": until, "limit": limit, "snapshot": snapshot},
        )

    def call(
        self,
        call_id: str,
        include_payload: bool = False,
        max_payload_size: int = 4096,
        snapshot: str | None = None,
    ) -> dict[str, Any]:
        return self.request(
            "GET",
            f"/api/calls/{_seg(call_id)}",
            {
                "payload": str(include_payload).lower(),
                "max_payload_size": max_payload_size,
                "snapshot": snapshot,
            },
        )

    def sql(self, query: str, max_rows: int = 500) -> dict[str, Any]:
        return self.request("POST", "/api/sql", body={"sql": query, "max_rows": max_rows})

    def workloads(self, namespace: str | None = None, at: Any = None, limit: int = 200) -> dict[str, Any]:
        return self.request("GET", "/api/workloads", {"namespace": namespace, "at": at, "limit": limit})

    def ips(self, since: Any = None, until: Any = None, limit: int = 100, snapshot: str | None = None):
        return self.request(
            "GET", "/api/ips", {"since": since, "until": until, "limit": limit, "snapshot": snapshot}
        )

    def flows(
        self,
        since: Any = None,
        until: Any = None,
        ip: str | None = None,
        port: int | None = None,
        aggregate: bool | str | None = False,
        limit: int = 100,
        snapshot: str | None = None,
        l4proto: str | None = None,
        ns: str | None = None,
        pod: str | None = None,
        svc: str | None = None,
        failing: bool = False,
    ) -> dict[str, Any]:
        return self.request(
            "GET",
            "/api/flows",
            {
                "since": since,
                "until": until,
                "ip": ip,
                "port": port,
                "aggregate": str(aggregate).lower() if aggregate is not None else None,
                "limit": limit,
                "snapshot": snapshot,
                "l4proto": l4proto,
                "ns": ns,
                "pod": pod,
                "svc": svc,
                "failing": str(failing).lower(),
            },
        )

    def latency(
        self,
        since: Any = None,
        until: Any = None,
        kfl: str = "",
        src: str | None = None,
        dst: str | None = None,
        protocol: str | None = None,
        by_route: bool = True,
        step: str | None = None,
        limit: int = 20,
        snapshot: str | None = None,
    ) -> dict[str, Any]:
        return self.request(
            "GET",
            "/api/latency",
            {
                "since": since,
                "until": until,
                "kfl": kfl,
                "src": src,
                "dst": dst,
                "protocol": protocol,
                "by_route": str(by_route).lower(),
                "step": step,
                "limit": limit,
                "snapshot": snapshot,
            },
        )

    def slow_edges(
        self,
        since: Any = None,
        until: Any = None,
        baseline_since: Any = None,
        baseline_until: Any = None,
        kfl: str = "",
        limit: int = 10,
        tail: int = 3,
        snapshot: str | None = None,
    ) -> dict[str, Any]:
        return self.request(
            "GET",
            "/api/latency/changes",
            {
                "since": since,
                "until": until,
                "baseline_since": baseline_since,
                "baseline_until": baseline_until,
                "kfl": kfl,
                "limit": limit,
                "tail": tail,
                "snapshot": snapshot,
            },
        )

    def changes(
        self,
        since: Any = None,
        until: Any = None,
        baseline_since: Any = None,
        baseline_until: Any = None,
        kfl: str = "",
        limit: int = 15,
        snapshot: str | None = None,
    ) -> dict[str, Any]:
        return self.request(
            "GET",
            "/api/changes",
            {
                "since": since,
                "until": until,
                "baseline_since": baseline_since,
                "baseline_until": baseline_until,
                "kfl": kfl,
                "limit": limit,
                "snapshot": snapshot,
            },
        )

    def stats(self, kfl: str = "", since: Any = None, until: Any = None, snapshot: str | None = None):
        return self.request(
            "GET", "/api/stats", {"kfl": kfl, "since": since, "until": until, "snapshot": snapshot}
        )

    def errors(
        self,
        kfl: str = "",
        since: Any = None,
        until: Any = None,
        limit: int = 20,
        snapshot: str | None = None,
        include_4xx: bool = True,
    ) -> dict[str, Any]:
        return self.request(
            "GET",
            "/api/errors",
            {
                "kfl": kfl,
                "since": since,
                "until": until,
                "limit": limit,
                "snapshot": snapshot,
                "include_4xx": str(include_4xx).lower(),
            },
        )

    def dns_failures(
        self,
        kfl: str = "",
        since: Any = None,
        until: Any = None,
        limit: int = 20,
        snapshot: str | None = None,
    ) -> dict[str, Any]:
        return self.request(
            "GET",
            "/api/dns/failures",
            {"kfl": kfl, "since": since, "until": until, "limit": limit, "snapshot": snapshot},
        )

    def trace(self, call_id: str, window: str = "5s", limit: int = 50, snapshot: str | None = None):
        return self.request(
            "GET",
            f"/api/calls/{_seg(call_id)}/trace",
            {"window": window, "limit": limit, "snapshot": snapshot},
        )

    def snapshots(self) -> dict[str, Any]:
        return self.request("GET", "/api/snapshots")

    def snapshot(self, name: str) -> dict[str, Any]:
        return self.request("GET", f"/api/snapshots/{_seg(name)}")

    def create_snapshot(
        self,
        name: str,
        last: str | None = None,
        since: Any = None,
        until: Any = None,
        nodes: list[str] | None = None,
        note: str = "",
        created_by: str = "hub",
        partial: bool = False,
    ):
        return self.request(
            "POST",
            "/api/snapshots",
            body={
                "name": name,
                "last": last,
                "since": since,
                "until": until,
                "nodes": nodes,
                "note": note,
                "partial": partial or None,
            },
        )

    def delete_snapshot(self, name: str) -> dict[str, Any]:
        return self.request("DELETE", f"/api/snapshots/{_seg(name)}")

    def start_dissect(
        self, since: Any = None, until: Any = None, node: str | None = None, snapshot: str | None = None
    ) -> dict[str, Any]:
        return self.request(
            "POST", "/api/dissect", body={"since": since, "until": until, "node": node, "snapshot": snapshot}
        )

    def dissect(
        self,
        since: Any = None,
        until: Any = None,
        node: str | None = None,
        snapshot: str | None = None,
        poll: float = 0.5,
    ) -> dict[str, Any]:
        """Start dissection on the hub and wait: the job's summary, or its error as a NetrecallError."""
        import time

        job = self.start_dissect(since=since, until=until, node=node, snapshot=snapshot)
        while job.get("state") == "running":
            time.sleep(poll)
            job = self.dissect_status(job["job"])
        if job.get("state") != "done":
            raise NetrecallError(f"hub: dissection failed: {job.get('error', 'unknown error')}")
        return job.get("summary", {})

    def dissect_status(self, job: str | None = None) -> dict[str, Any]:
        if job:
            return self.request("GET", f"/api/dissect/{_seg(job)}")
        return self.request("GET", "/api/dissect")

    def export_pcap(
        self,
        kfl: str = "",
        nodes: list[str] | None = None,
        ips: list[str] | None = None,
        ports: list[int] | None = None,
        pods: list[str] | None = None,
        labels: list[str] | None = None,
        since: Any = None,
        until: Any = None,
        snapshot: str | None = None,
        fmt: str = "pcap",
        created_by: str = "hub",
    ) -> dict[str, Any]:
        """The hub writes the file under its exports directory and answers where (no bytes travel)."""
        return self.request(
            "POST",
            "/api/export/pcap",
            body={
                "kfl": kfl,
                "nodes": nodes,
                "ips": ips,
                "ports": ports,
                "pods": pods,
                "labels": labels,
                "since": since,
                "until": until,
                "snapshot": snapshot,
                "format": fmt,
                "download": False,
            },
        )

    def download_pcap(self, out_path: str, **filters: Any) -> dict[str, Any]:
        """Export on the hub and stream the file to `out_path` here."""
        fmt = filters.pop("fmt", "pcap")
        body = {**filters, "format": fmt, "download": True}
        with self.stream("POST", "/api/export/pcap", body) as response, open(out_path, "wb") as out:
            size = 0
            for chunk in response.iter_bytes():
                out.write(chunk)
                size += len(chunk)
            return {
                "path": out_path,
                "sha256": response.headers.get("x-netrecall-sha256", ""),
                "packets": int(response.headers.get("x-netrecall-packets", "0") or 0),
                "bytes": size,
            }


def _seg(value: str) -> str:
    from urllib.parse import quote

    return quote(str(value), safe="")


def _error_message(response: httpx.Response) -> str:
    try:
        error = response.json()["error"]
        return f"{error['message']} ({response.status_code} {error['code']})"
    except (ValueError, KeyError, TypeError):
        return f"HTTP {response.status_code}"
