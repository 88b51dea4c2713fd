"""Agents' batches into the store: one Arrow IPC stream per POST, idempotent by the batch token.

Contract (the agent's HubSink): `POST /api/ingest?table=packets|workloads|agent_stats`,
`Authorization: Bearer T`,
`X-Netrecall-Batch: <token>`, `Content-Type: application/vnd.apache.arrow.stream`. A retried batch (same
token) is stored once: the hub remembers recent tokens, and ClickHouse deduplicates the insert itself
by `insert_deduplication_token` (packets and flows keep a non-replicated deduplication window), on the
packets and on the flows written with them, so a retry after a hub restart does not double flows either.
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from typing import Any

import pyarrow as pa

from netrecall.errors import NetrecallError
from netrecall.ingest.flows import dedup_settings, insert_batch
from netrecall.schema.tables import AGENT_STATS, PACKETS, WORKLOADS
from netrecall.store import Store

ARROW_STREAM = "application/vnd.apache.arrow.stream"
TABLES = {t.name: t for t in (PACKETS, WORKLOADS, AGENT_STATS)}
# Columns the store computes itself: an agent's value would be ignored or wrong, so they are dropped.
COMPUTED = frozenset({"flow_id", "stored_at", "observed_at"})
_BATCH_TOKEN = re.compile(r"^[A-Za-z0-9._:\-]{8,128}$")


class RecentTokens:
    """The last N batch tokens seen, with the row count each one stored."""

    def __init__(self, size: int = 10_000) -> None:
        self.size = size
        self._seen: OrderedDict[str, int] = OrderedDict()
        self._lock = threading.Lock()
        self.pending: dict[str, threading.Lock] = {}

    def get(self, token: str) -> int | None:
        with self._lock:
            return self._seen.get(token)

    def remember(self, token: str, rows: int) -> None:
        with self._lock:
            self._seen[token] = rows
            self._seen.move_to_end(token)
            while len(self._seen) > self.size:
                self._seen.popitem(last=False)

    def lock_for(self, token: str) -> threading.Lock:
        """Two concurrent retries of one batch serialize, so the second sees the first's result."""
        with self._lock:
            return self.pending.setdefault(token, threading.Lock())

    def release(self, token: str) -> None:
        with self._lock:
            self.pending.pop(token, None)


def read_batch(body: bytes) -> pa.Table:
    try:
        with pa.ipc.open_stream(pa.py_buffer(body)) as reader:
            return reader.read_all()
    except (pa.ArrowInvalid, pa.ArrowTypeError, OSError) as exc:
        raise NetrecallError(f"body is not an Arrow IPC stream: {str(exc).splitlines()[0]}") from None


def check_token(token: str | None) -> str:
    if not token:
        raise NetrecallError("missing X-Netrecall-Batch header (the batch's idempotency token)")
    if not _BATCH_TOKEN.match(token):
        raise NetrecallError("X-Netrecall-Batch must be 8-128 characters of [A-Za-z0-9._:-]")
    return token


def prepare(table_name: str, batch: pa.Table) -> pa.Table:
    """Keep the columns the table has, drop the computed ones, refuse unknown columns."""
    table = TABLES.get(table_name)
    if table is None:
        raise NetrecallError(f"table must be one of {', '.join(sorted(TABLES))}")
    known = set(table.column_names)
    unknown = [c for c in batch.column_names if c not in known]
    if unknown:
        raise NetrecallError(f"unknown column(s) for {table_name}: {', '.join(unknown[:5])}")
    keep = [c for c in batch.column_names if c not in COMPUTED]
    if not keep:
        raise NetrecallError("the batch has no columns to store")
    return batch.select(keep)


def ingest(
    store: Store, recent: RecentTokens, table_name: str, token: str | None, body: bytes
) -> dict[str, Any]:
    """Store one batch; answer {"rows": N, "duplicate": bool}."""
    token = check_token(token)
    batch = prepare(table_name, read_batch(body))
    key = f"{table_name}:{token}"
    lock = recent.lock_for(key)
    with lock:
        try:
            seen = recent.get(key)
            if seen is not None:
                return {"rows": seen, "duplicate": True}
            # One block per insert keeps the dedup hash identical when the batch is retried.
            settings = {
                **dedup_settings(key),
                "min_insert_block_size_rows": 0,
                "min_insert_block_size_bytes": 0,
                "max_insert_block_size": max(batch.num_rows, 1),
                "max_block_size": max(batch.num_rows, 1),
            }
            insert_batch(store, table_name, batch, settings=settings)
            recent.remember(key, batch.num_rows)
            return {"rows": batch.num_rows, "duplicate": False}
        finally:
            recent.release(key)
