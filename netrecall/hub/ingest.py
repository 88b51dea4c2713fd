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
import pyarrow.compute as pc

from netrecall.errors import NetrecallError
from netrecall.ingest.flows import dedup_settings, insert_batch
from netrecall.memory import release_memory
from netrecall.schema.tables import AGENT_STATS, PACKETS, WORKLOADS, Table
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
            table = reader.read_all()
        # read_all() checks the framing, not the buffers: offsets pointing outside their data would be
        # read by the flows aggregation or the engine (fuzz/ingest)
        table.validate(full=True)
        table.column_names  # noqa: B018 - names that are not UTF-8 fail here, not later (fuzz/ingest)
        return table
    except (pa.ArrowException, OSError, UnicodeDecodeError) as exc:  # ArrowKeyError too (fuzz/ingest)
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
        # repr: a name is the sender's text, and may hold a newline (fuzz/ingest)
        raise NetrecallError(f"unknown column(s) for {table_name}: {', '.join(map(repr, unknown[:5]))}")
    keep = [c for c in batch.column_names if c not in COMPUTED]
    if not keep:
        raise NetrecallError("the batch has no columns to store")
    if len(set(keep)) != len(keep):
        raise NetrecallError("the batch names a column twice")
    batch = batch.select(keep)
    # Each column in the type the table stores it from: a batch the hub cannot store is refused here (400,
    # dropped by the agent after its retries), never left to fail in the flows aggregation or the engine
    # (500, which the agent would retry for ever: fuzz/ingest).
    expected = arrow_types(table)
    columns = [_typed(batch, name, expected[name]) for name in keep]
    for name, values in _enum_values(table).items():
        if name in keep:
            column = columns[keep.index(name)]
            numbers = pa.types.is_integer(column.type)
            allowed = list(values.values()) if numbers else list(values)
            choices = pa.array(allowed, pa.int64() if numbers else pa.string()).cast(column.type)
            if pc.all(pc.is_in(column, choices)).as_py() is False:
                raise NetrecallError(f"column {name}: values outside {', '.join(map(str, allowed))}")
    return pa.table(columns, names=keep)


def arrow_types(table: Table) -> dict[str, tuple[pa.DataType, ...]]:
    """The Arrow types a batch column may have for each column of `table` (the first is the one other
    types are cast to)."""
    return {name: _accepted(ch_type) for name, ch_type in table.columns}


def _enum_values(table: Table) -> dict[str, dict[str, int]]:
    found = {}
    for name, ch_type in table.columns:
        if ch_type.startswith("Enum8("):
            found[name] = {k: int(v) for k, v in re.findall(r"'((?:[^'\\]|\\.)*)'\s*=\s*(-?\d+)", ch_type)}
    return found


_INTS = {f"{p}Int{b}": getattr(pa, f"{p.lower()}int{b}")() for p in ("", "U") for b in (8, 16, 32, 64)}


def _accepted(ch_type: str) -> tuple[pa.DataType, ...]:
    base = ch_type.split(" CODEC")[0].split(" DEFAULT")[0].strip()
    if base.startswith("LowCardinality("):
        base = base[len("LowCardinality(") : -1]
    if base.startswith("DateTime64("):
        unit = {"3": "ms", "6": "us", "9": "ns"}.get(base[11:].split(")")[0].split(",")[0].strip(), "ns")
        return (pa.timestamp(unit, tz="UTC"),)
    if base.startswith("DateTime"):
        return (pa.timestamp("s", tz="UTC"),)
    if base.startswith("Enum8("):
        return (pa.string(), pa.int8(), pa.uint8())
    if base == "IPv6":
        return (pa.binary(16),)
    if base == "String":
        return (pa.string(), pa.binary())
    if base.startswith("Map("):
        return (pa.map_(pa.string(), pa.string()),)
    if base.startswith("Array("):
        return (pa.list_(pa.string()),)
    if base == "Bool":
        return (pa.bool_(),)
    if base.startswith("Float"):
        return (pa.float32() if base == "Float32" else pa.float64(),)
    return (_INTS[base],)


def _typed(batch: pa.Table, name: str, accepted: tuple[pa.DataType, ...]) -> pa.ChunkedArray:
    column = batch.column(name)
    kind = column.type
    if pa.types.is_dictionary(kind):
        kind = kind.value_type
    target = accepted[0]
    if pa.types.is_timestamp(target) and pa.types.is_timestamp(kind):
        # a finer unit is cut to the column's precision, as the engine would; a coarser one must not overflow
        coarser = _UNITS.index(kind.unit) < _UNITS.index(target.unit)
        return _cast(column, target, name, safe=coarser)
    if len(accepted) == 3 and pa.types.is_integer(kind):  # an Enum8 sent as its numbers
        target = column.type if column.type in accepted else accepted[1]
    elif target == pa.string() and (
        pa.types.is_binary(kind) or pa.types.is_large_binary(kind) or pa.types.is_binary_view(kind)
    ):
        target = pa.binary()  # a String column holds bytes
    family_ok = (
        (pa.types.is_integer(target) and pa.types.is_integer(kind))
        or (pa.types.is_floating(target) and (pa.types.is_floating(kind) or pa.types.is_integer(kind)))
        or (_stringish(target) and _stringish(kind))
        or (pa.types.is_fixed_size_binary(target) and _binaryish(kind))
        or (pa.types.is_map(target) and pa.types.is_map(kind))
        or (pa.types.is_list(target) and (pa.types.is_list(kind) or pa.types.is_large_list(kind)))
        or (pa.types.is_boolean(target) and pa.types.is_boolean(kind))
    )
    if not family_ok:
        raise NetrecallError(f"column {name}: {column.type} cannot be stored as {target}")
    return _cast(column, target, name)


_UNITS = ("s", "ms", "us", "ns")
_ARROW_ERRORS = (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError)


def _binaryish(kind: pa.DataType) -> bool:
    return _stringish(kind) or pa.types.is_fixed_size_binary(kind)


def _stringish(kind: pa.DataType) -> bool:
    return any(
        check(kind)
        for check in (
            pa.types.is_string,
            pa.types.is_large_string,
            pa.types.is_string_view,
            pa.types.is_binary,
            pa.types.is_large_binary,
            pa.types.is_binary_view,
        )
    )


def _cast(column: pa.ChunkedArray, target: pa.DataType, name: str, safe: bool = True) -> pa.ChunkedArray:
    if column.type == target:
        return column
    try:
        return column.cast(target, safe=safe)
    except _ARROW_ERRORS as exc:
        reason = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
        raise NetrecallError(f"column {name}: cannot store {column.type} as {target}: {reason}") from None


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
            rows = batch.num_rows
            recent.remember(key, rows)
            del batch
            # one batch's worth of pages in three allocators, freed: handed back before the next arrives
            release_memory(store)
            return {"rows": rows, "duplicate": False}
        finally:
            recent.release(key)
