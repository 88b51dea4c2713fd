"""Where batches go: straight into a store (StoreSink) or to a hub's ingest endpoint (HubSink).

Both carry the batch's idempotency token: ClickHouse `insert_deduplication_token` (on the packets and
on the flows written with them, so a retried batch counts once in both) or the hub's
`X-Netrecall-Batch` header. A sink raises `SinkDown` when it cannot take the batch now
(connection refused, timeout, 5xx: the caller spools and retries later) and `SinkRejected` when the
batch itself was refused (4xx: retrying the same bytes cannot help). A bad token is fatal.

HubSink does not touch chDB or clickhouse-connect: a remote agent stays small.
"""

from __future__ import annotations

import contextlib
import io
import logging
from typing import Protocol

import pyarrow as pa
import pyarrow.ipc as ipc

from netrecall.agent.batcher import Batch
from netrecall.errors import NetrecallError

log = logging.getLogger("netrecall.agent")
ARROW_STREAM = "application/vnd.apache.arrow.stream"


class SinkDown(Exception):
    """The sink cannot take batches now; spool and retry."""


class SinkRejected(Exception):
    """The sink refused this batch for good."""


class Sink(Protocol):
    description: str

    def send(self, batch: Batch) -> int: ...

    def close(self) -> None: ...


class StoreSink:
    """Insert into a store (chdb:// in-process, or a ClickHouse server over HTTP); opened lazily."""

    def __init__(self, url: str) -> None:
        from netrecall.store import parse_store_url

        self.url = url
        self.address = parse_store_url(url)
        self.description = f"store {self.address.display}"
        self._store = None

    def _open(self):
        if self._store is None:
            from netrecall.schema.migrate import ensure_schema
            from netrecall.store import open_store

            try:
                store = open_store(self.url)
                ensure_schema(store)
            except NetrecallError as exc:
                if self.address.kind == "chdb":
                    raise  # a local store that cannot open will not get better by waiting
                raise SinkDown(str(exc)) from None
            self._store = store
        return self._store

    def send(self, batch: Batch) -> int:
        from netrecall.ingest.flows import dedup_settings, insert_batch

        store = self._open()
        try:
            insert_batch(store, batch.table, batch.data, settings=dedup_settings(batch.token))
        except NetrecallError as exc:
            if self.address.kind == "http" and not self._reachable():
                raise SinkDown(str(exc)) from None
            raise SinkRejected(str(exc)) from None
        except OSError as exc:  # a connection dropped mid-request outside the driver's wrapping
            raise SinkDown(str(exc)) from None
        return batch.rows

    def _reachable(self) -> bool:
        try:
            return bool(self._store is not None and self._store.client.ping())
        except Exception:
            return False

    def close(self) -> None:
        if self._store is not None:
            with contextlib.suppress(Exception):
                self._store.close()
            self._store = None


class HubSink:
    """POST /api/ingest?table=... with the batch as one Arrow IPC stream (the hub's ingest contract)."""

    def __init__(self, url: str, token: str, timeout_s: float = 30.0) -> None:
        import httpx

        self.base = url.rstrip("/")
        self.description = f"hub {self.base}"
        self._client = httpx.Client(
            timeout=timeout_s, headers={"Authorization": f"Bearer {token}"}, follow_redirects=False
        )

    def send(self, batch: Batch) -> int:
        import httpx

        body = encode_stream(batch.data)
        try:
            response = self._client.post(
                f"{self.base}/api/ingest",
                params={"table": batch.table},
                content=body,
                headers={"X-Netrecall-Batch": batch.token, "Content-Type": ARROW_STREAM},
            )
        except httpx.HTTPError as exc:  # connect, timeout, protocol: the hub is down or unreachable
            raise SinkDown(f"{self.base}: {type(exc).__name__}: {exc}") from None
        if response.status_code >= 500:
            raise SinkDown(f"{self.base}: HTTP {response.status_code}")
        if response.status_code in (401, 403):
            raise NetrecallError(f"hub {self.base} refused the agent's token (HTTP {response.status_code})")
        if response.status_code != 200:
            raise SinkRejected(f"hub {self.base}: HTTP {response.status_code}: {_error_message(response)}")
        try:
            return int(response.json().get("rows", batch.rows))
        except ValueError:
            return batch.rows

    def close(self) -> None:
        self._client.close()


def encode_stream(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    with ipc.new_stream(buf, table.schema) as writer:
        writer.write_table(table)
    return buf.getvalue()


def _error_message(response) -> str:
    try:
        error = response.json().get("error") or {}
        return f"{error.get('code', '')}: {error.get('message', '')}".strip(": ")
    except ValueError:
        return response.text[:200]


def open_sink(store_url: str | None, hub_url: str | None, token: str | None) -> Sink:
    if hub_url:
        if not token:
            raise NetrecallError("--hub needs --token (the hub's ingest token)")
        return HubSink(hub_url, token)
    if not store_url:
        raise NetrecallError("the agent needs a sink: --store URL or --hub URL --token T")
    return StoreSink(store_url)
