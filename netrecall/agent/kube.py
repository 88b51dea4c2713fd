"""Kubernetes identity, live: list + watch pods, services, endpointslices and nodes into the resolver.

One thread per kind runs the informer loop by hand with the official client's configuration, auth and
HTTP pool (raw JSON, no model objects: cheaper, and the resolver takes API JSON as is):

1. LIST (paged) -> every object is upserted; objects the resolver knew that are gone are deleted;
   the list's resourceVersion is kept.
2. WATCH from that resourceVersion (with bookmarks, so the version stays fresh on quiet kinds);
   ADDED/MODIFIED -> upsert, DELETED -> delete, each at the moment the event arrived (the API's own
   timestamps have one-second precision: too coarse to split the packets of an IP handed over).
3. The watch ends (server timeout, disconnect): watch again from the last version seen. A 410 Gone
   (the version was compacted away): back to 1, a full relist, and the diff repairs what was missed.

The first list of every kind completes before capture starts (`wait_synced`), so the first packets
already carry identities.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from netrecall.errors import NetrecallError

log = logging.getLogger("netrecall.agent")


class Gone(Exception):
    """HTTP 410: the resourceVersion is too old; relist."""


@dataclass
class Kind:
    name: str
    paths: tuple[str, ...]  # tried in order: the first the server serves is used
    path: str = ""
    resource_version: str = ""
    known: dict[tuple[str, str], dict] = field(default_factory=dict)  # (ns, name) -> last object seen
    synced: threading.Event = field(default_factory=threading.Event)
    lists: int = 0
    relists_after_gone: int = 0
    events: int = 0


def _kinds() -> list[Kind]:
    return [
        Kind("nodes", ("/api/v1/nodes",)),
        Kind("services", ("/api/v1/services",)),
        Kind(
            "endpointslices",
            ("/apis/discovery.k8s.io/v1/endpointslices", "/apis/discovery.k8s.io/v1beta1/endpointslices"),
        ),
        Kind("pods", ("/api/v1/pods",)),
    ]


def load_client(kubeconfig: str | None, in_cluster: bool) -> Any:
    from kubernetes import client, config

    try:
        if in_cluster:
            config.load_incluster_config()
            return client.ApiClient()
        configuration = client.Configuration()
        config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
        return client.ApiClient(configuration)
    except Exception as exc:  # ConfigException, file errors: one line
        where = "in-cluster service account" if in_cluster else f"kubeconfig {kubeconfig}"
        raise NetrecallError(f"Kubernetes: cannot load the {where}: {exc}") from None


class KubeWatcher:
    def __init__(
        self,
        resolver: Any,
        kubeconfig: str | None = None,
        in_cluster: bool = False,
        api_client: Any = None,
        watch_timeout_s: int = 300,
    ) -> None:
        self.resolver = resolver
        self.api = api_client or load_client(kubeconfig, in_cluster)
        self.watch_timeout_s = watch_timeout_s
        self.kinds = {k.name: k for k in _kinds()}
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._responses: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._gates = {name: threading.Event() for name in self.kinds}
        for gate in self._gates.values():
            gate.set()
        self.errors: list[str] = []

    # --- lifecycle -----------------------------------------------------------------------------------
    def start(self) -> None:
        for kind in self.kinds.values():
            thread = threading.Thread(target=self._loop, args=(kind,), name=f"kube-{kind.name}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def wait_synced(self, timeout: float) -> bool:
        end = time.monotonic() + timeout
        return all(kind.synced.wait(max(0.0, end - time.monotonic())) for kind in self.kinds.values())

    def stop(self) -> None:
        self._stop.set()
        with self._lock:
            responses = list(self._responses.values())
        for response in responses:
            _close(response)
        for thread in self._threads:
            thread.join(5)

    def disconnect(self, kind: str, stale_resource_version: str | None = None) -> None:
        """Cut a kind's watch as a network failure would (optionally forgetting where it was: the next
        watch then starts from `stale_resource_version`). Used by tests and on shutdown."""
        target = self.kinds[kind]
        with self._lock:
            if stale_resource_version is not None:
                target.resource_version = stale_resource_version
            response = self._responses.get(kind)
        if response is not None:
            _close(response)

    def hold(self, kind: str) -> None:
        """Keep a kind from (re)connecting until `release` (tests: make changes while it is away)."""
        self._gates[kind].clear()

    def release(self, kind: str) -> None:
        self._gates[kind].set()

    # --- the informer loop ---------------------------------------------------------------------------
    def _loop(self, kind: Kind) -> None:
        backoff = 0.5
        need_list = True
        while not self._stop.is_set():
            while not self._gates[kind.name].wait(0.2):
                if self._stop.is_set():
                    return
            try:
                if need_list:
                    self._list(kind)
                    need_list = False
                self._watch(kind)
                backoff = 0.5
            except Gone:
                kind.relists_after_gone += 1
                log.warning(
                    "Kubernetes %s: resourceVersion %s is gone (410): relisting",
                    kind.name,
                    kind.resource_version,
                )
                need_list = True
            except Exception as exc:
                if self._stop.is_set():
                    return
                if not self._gates[kind.name].is_set():
                    continue  # cut on purpose (hold + disconnect): not an error
                first = str(exc).splitlines()[0] if str(exc) else ""
                message = f"Kubernetes {kind.name}: {type(exc).__name__}: {first}"
                self.errors.append(message)
                log.warning("%s; retrying in %.1f s", message, backoff)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 10.0)
                # after a failure the watch resumes from the last version; a 410 then triggers the relist

    def _request(self, kind: Kind, params: list[tuple[str, str]], timeout: float | tuple) -> Any:
        paths = [kind.path] if kind.path else list(kind.paths)
        last = None
        for path in paths:
            method, url, headers, _, _ = self.api.param_serialize(
                method="GET",
                resource_path=path,
                query_params=params,
                header_params={"Accept": "application/json"},
                auth_settings=["BearerToken"],
            )
            response = self.api.call_api(method, url, header_params=headers, _request_timeout=timeout)
            if response.status == 404 and len(paths) > 1:
                _close(response)
                last = response
                continue
            kind.path = path
            return response
        return last

    def _list(self, kind: Kind) -> None:
        items: list[dict] = []
        cont = ""
        while True:
            params = [("limit", "500")] + ([("continue", cont)] if cont else [])
            response = self._request(kind, params, (10, 60))
            body = response.read()
            if response.status == 410:
                cont = ""  # the continue token expired mid-list: start over
                items = []
                continue
            if response.status != 200:
                raise NetrecallError(f"list {kind.path}: HTTP {response.status}: {body[:200]!r}")
            page = json.loads(body)
            items += page.get("items") or []
            meta = page.get("metadata") or {}
            cont = meta.get("continue") or ""
            if not cont:
                kind.resource_version = str(meta.get("resourceVersion") or "")
                break
        first = kind.lists == 0
        now = time.time_ns()
        seen: dict[tuple[str, str], dict] = {}
        for obj in items:
            meta = obj.get("metadata") or {}
            key = (str(meta.get("namespace") or ""), str(meta.get("name") or ""))
            seen[key] = obj
            # the first list takes each object from its own start; a relist changes things from now
            self._apply(kind.name, "ADDED", obj, None if first else now)
        for key, old in list(kind.known.items()):
            if key not in seen:
                self._apply(kind.name, "DELETED", old, now)
        kind.known = seen
        kind.lists += 1
        kind.synced.set()
        log.info(
            "Kubernetes %s: listed %d at resourceVersion %s", kind.name, len(items), kind.resource_version
        )

    def _watch(self, kind: Kind) -> None:
        params = [
            ("watch", "1"),
            ("resourceVersion", kind.resource_version),
            ("allowWatchBookmarks", "true"),
            ("timeoutSeconds", str(self.watch_timeout_s)),
        ]
        response = self._request(kind, params, (10, self.watch_timeout_s + 30))
        if response.status == 410:
            _close(response)
            raise Gone()
        if response.status != 200:
            body = response.read()
            raise NetrecallError(f"watch {kind.path}: HTTP {response.status}: {body[:200]!r}")
        with self._lock:
            self._responses[kind.name] = response
        try:
            for line in _lines(response):
                if self._stop.is_set():
                    return
                event = json.loads(line)
                etype = event.get("type")
                obj = event.get("object") or {}
                if etype == "ERROR":
                    if obj.get("code") == 410:
                        raise Gone()
                    raise NetrecallError(f"watch {kind.path}: {obj.get('message', obj)}")
                rv = (obj.get("metadata") or {}).get("resourceVersion")
                if rv:
                    kind.resource_version = str(rv)
                if etype == "BOOKMARK":
                    continue
                kind.events += 1
                meta = obj.get("metadata") or {}
                key = (str(meta.get("namespace") or ""), str(meta.get("name") or ""))
                if etype == "DELETED":
                    kind.known.pop(key, None)
                else:
                    kind.known[key] = obj
                self._apply(kind.name, etype, obj, time.time_ns())
        finally:
            with self._lock:
                self._responses.pop(kind.name, None)
            _close(response)

    def _apply(self, kind: str, etype: str, obj: dict, at_ns: int | None) -> None:
        r = self.resolver
        deleted = etype == "DELETED"
        if kind == "pods":
            (r.delete_pod if deleted else r.upsert_pod)(
                obj, at_ns if at_ns is not None or not deleted else None
            )
        elif kind == "services":
            (r.delete_service if deleted else r.upsert_service)(obj, at_ns)
        elif kind == "endpointslices":
            (r.delete_endpoint_slice if deleted else r.upsert_endpoint_slice)(obj, at_ns)
        elif kind == "nodes":
            (r.delete_node if deleted else r.upsert_node)(obj, at_ns)


def _lines(response: Any) -> Iterator[bytes]:
    """Newline-delimited JSON events from a streaming urllib3 response."""
    raw = response.response
    buffer = b""
    for segment in raw.stream(amt=None, decode_content=True):
        buffer += segment
        while True:
            cut = buffer.find(b"\n")
            if cut < 0:
                break
            line, buffer = buffer[:cut], buffer[cut + 1 :]
            if line.strip():
                yield line


def _close(response: Any) -> None:
    """Close a response, interrupting a read blocked in another thread (urllib3's shutdown())."""
    raw = getattr(response, "response", response)
    for step in ("shutdown", "release_conn", "close"):
        with contextlib.suppress(Exception):
            getattr(raw, step)()
