"""Calls out: enrichment from the packets, de-duplication against what is stored, one Arrow insert per chunk.

Ids are deterministic (see calls.call_id), and api_calls is a ReplacingMergeTree, so a re-dissected call
could only ever replace itself. To keep even `count()` without FINAL exact, a call is inserted only when
no stored row with its id is at least as complete (has a response, is not partial, reaches as far).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from netrecall.dissect.calls import Call
from netrecall.schema.tables import API_CALLS
from netrecall.store import Store

_BINARY = {"request_body", "response_body"}
BATCH_BYTES = 12 << 20  # Arrow bytes of calls per insert at most (see BatchWriter)
HELD_MERGE_ROWS = 2_000_000  # calls a writer inserts before the table's merges resume (on chDB)


def _arrow_type(column: str, ch_type: str) -> tuple[pa.DataType, Any]:
    """The Arrow type that inserts into this ClickHouse column, and the column's empty value."""
    base = ch_type.split(" CODEC")[0].split(" DEFAULT")[0]
    if column in _BINARY:
        return pa.binary(), b""
    if base.startswith("DateTime64"):
        return pa.timestamp("ns", tz="UTC"), 0
    if base == "IPv6":
        return pa.binary(16), bytes(16)
    if base.startswith("Map("):
        return pa.map_(pa.string(), pa.string()), {}
    if base.startswith("Array("):
        return pa.list_(pa.string()), []
    if base == "Bool":
        return pa.bool_(), False
    ints = {
        "UInt8": pa.uint8(),
        "UInt16": pa.uint16(),
        "UInt32": pa.uint32(),
        "UInt64": pa.uint64(),
        "Int16": pa.int16(),
        "Int32": pa.int32(),
        "Int64": pa.int64(),
    }
    if base in ints:
        return ints[base], 0
    return pa.string(), ""


COLUMN_TYPES = {
    name: _arrow_type(name, ch_type)
    for name, ch_type in API_CALLS.columns
    if name not in ("stored_at", "dissected_at")
}


STRUCT = pa.struct([(name, arrow_type) for name, (arrow_type, _) in COLUMN_TYPES.items()])
_SCALAR_EMPTY = {
    name: pa.scalar(empty, arrow_type)
    for name, (arrow_type, empty) in COLUMN_TYPES.items()
    if not isinstance(arrow_type, pa.MapType | pa.ListType) and not pa.types.is_timestamp(arrow_type)
}


def calls_to_arrow(calls: list[Call], extra: dict[str, Any] | None = None) -> pa.Table:
    """The calls as one Arrow table: converted in Arrow's C++ (dicts -> struct array), absent values filled
    with the column's empty value, columns no call set dropped so they take their DEFAULT."""
    present: set[str] = set()
    for call in calls:
        present.update(call)
    # only the columns some call set: Arrow looks up every struct field in every dict, and a protocol
    # sets 20-odd of the 80 columns (measured: half the conversion time)
    struct = pa.struct(
        [(name, arrow_type) for name, (arrow_type, _) in COLUMN_TYPES.items() if name in present]
    )
    table = pa.Table.from_struct_array(pa.array(calls, struct))
    names, arrays = [], []
    for name, value in (extra or {}).items():
        names.append(name)
        arrays.append(pa.array([value] * len(calls), pa.string()))
    for name, column in zip(table.column_names, table.columns, strict=True):
        nulls = column.null_count
        if nulls == len(column):
            continue
        if nulls and name in _SCALAR_EMPTY:
            column = pc.fill_null(column, _SCALAR_EMPTY[name])
        names.append(name)
        arrays.append(column)
    return pa.table(arrays, names=names)


def enrich(calls: list[Call], lookup: Callable[[int, bytes, int], dict | None] | None, node: str) -> None:
    """Node name and workload identities of both ends, from the client's packets (or the server's)."""
    for call in calls:
        info = None
        if lookup is not None:
            info = lookup(call["flow_id"], call["src_ip"], call["src_port"])
            if info is None:
                back = lookup(call["flow_id"], call["dst_ip"], call["dst_port"])
                if back is not None:  # only the server's packets were seen: swap its ends
                    info = {
                        (
                            "dst" + k[3:]
                            if k.startswith("src_")
                            else "src" + k[3:]
                            if k.startswith("dst_")
                            else k
                        ): v
                        for k, v in back.items()
                    }
        if info is None:
            if node:
                call["node_name"] = node
            continue
        call["node_name"] = info.get("node", node) or node
        for key, value in info.items():
            if key != "node" and value:
                call[key] = dict(value) if isinstance(value, dict) else value


def dedupe(
    store: Store, table: str, calls: list[Call], where: str = "", params: dict | None = None
) -> list[Call]:
    """Drop calls whose id is already stored at least as complete."""
    if not calls:
        return calls
    lo = min(c["ts"] for c in calls)
    hi = max(c["ts"] for c in calls)
    extra = f" AND {where}" if where else ""
    rows = store.rows(
        "SELECT id, max(has_response), min(partial), toUnixTimestamp64Nano(max(last_packet_ts)) "
        f"FROM {table} "
        "WHERE ts >= fromUnixTimestamp64Nano({lo:Int64}) AND ts <= fromUnixTimestamp64Nano({hi:Int64})"
        f"{extra} GROUP BY id",
        {**(params or {}), "lo": lo, "hi": hi},
    )
    if not rows:
        return calls
    stored = {row[0]: (bool(row[1]), bool(row[2]), int(row[3])) for row in rows}
    fresh = []
    for call in calls:
        old = stored.get(call["id"])
        if old is not None and (
            old[0] >= bool(call.get("has_response"))
            and old[1] <= bool(call.get("partial"))
            and old[2] >= call.get("last_packet_ts", 0)
        ):
            continue
        fresh.append(call)
    return fresh


def write_calls(store: Store, table: str, calls: list[Call], extra: dict[str, Any] | None = None) -> None:
    if calls:
        store.insert_arrow(table, calls_to_arrow(calls, extra))


def _concat(tables: list[pa.Table]) -> pa.Table:
    """One table from batches that may lack different columns (a column no call of a batch set)."""
    if len(tables) == 1:
        return tables[0]
    table = pa.concat_tables(tables, promote_options="default")
    names, arrays = [], []
    for name, column in zip(table.column_names, table.columns, strict=True):
        if column.null_count and name in _SCALAR_EMPTY:  # what the batch's INSERT would have defaulted
            column = pc.fill_null(column, _SCALAR_EMPTY[name])
        names.append(name)
        arrays.append(column)
    return pa.table(arrays, names=names)


def _insert_settings(batch: pa.Table) -> dict[str, Any]:
    """With no id twice in the batch, the engine's merge of the batch's own rows on insert has nothing to
    do (the table's key ends with the id) and is skipped: half the insert's CPU, measured. Otherwise
    it runs, as it always did, so the batch lands with one row per id."""
    ids = batch.column("id") if "id" in batch.column_names else None
    if ids is not None and pc.count_distinct(ids).as_py() == batch.num_rows:
        return {"optimize_on_insert": 0}
    return {}


class BatchWriter:
    """Inserts calls (as Arrow tables) from a background thread, in batches of `idle_rows` or more when
    the thread is idle, of `batch_rows` at most otherwise (what is left when the run ends is inserted
    while the run waits: smaller batches keep that short).

    The engine runs an INSERT outside the GIL, so it overlaps the parsing of the next calls on the second
    core; and fewer, larger inserts cost less per row (measured on the db benchmark captures: 13 us a row
    in batches of 5,000, 7 us in batches of 20,000). One insert is in flight at a time, so memory holds at
    most one batch being written and one filling. A batch is also cut at `batch_bytes` of Arrow data: the
    engine's insert holds about 4.5 times the batch while it sorts, compresses and writes the part
    (measured: +250 MB for 50,000 HTTP calls with bodies, 58 MB of Arrow), so rows with bodies go in
    smaller batches than rows without.

    On chDB the table's background merges are held while the writer is open (the run is the engine's
    only user): merging the run's parts as they arrived re-read and re-compressed them, 8% of the CPU of
    the PostgreSQL benchmark's run, taken from the parsing on 2 cores (measured with perf). They start
    again after HELD_MERGE_ROWS rows, so a long run does not pile up parts, and at close unless
    `merge_after` is False (a process about to exit would only cancel the merge it had just begun; the
    next process that opens the store merges). A server store is shared: there merges are left alone.

    After each insert `release` runs: the run's `memory.Releaser`, which hands freed pages back once the
    process has grown past its slack.
    """

    def __init__(
        self,
        store: Store,
        table: str,
        batch_rows: int = 50_000,
        idle_rows: int = 20_000,
        batch_bytes: int = BATCH_BYTES,
        merge_after: bool = True,
        *,
        release: Callable[[], None],
    ) -> None:
        self.store = store
        self.table = table
        self.batch_rows = batch_rows
        self.idle_rows = idle_rows
        self.batch_bytes = batch_bytes
        self.waiting: list[pa.Table] = []
        self.rows = 0
        self.bytes = 0
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="netrecall-insert")
        self.inflight: Future | None = None
        self.merge_after = merge_after
        self.merges_held = store.kind == "chdb"
        self.inserted = 0
        self.release = release
        if self.merges_held:
            store.command(f"SYSTEM STOP MERGES {table}")

    def add(self, table: pa.Table) -> None:
        if table.num_rows:
            self.waiting.append(table)
            self.rows += table.num_rows
            self.bytes += table.nbytes
        idle = self.inflight is None or self.inflight.done()
        full = self.rows >= self.batch_rows or self.bytes >= self.batch_bytes
        enough = self.rows >= self.idle_rows or self.bytes >= self.batch_bytes // 2
        if full or (idle and enough):
            self._submit()

    def flush(self) -> None:
        """Everything added is stored when this returns (an insert's error is raised here)."""
        self._submit()
        self._wait()

    def close(self) -> None:
        """Stop the thread; what was added and not flushed is dropped (the run failed: no watermark moves,
        the next run dissects it again)."""
        try:
            with contextlib.suppress(Exception):  # only reached unflushed when the run failed: its error wins
                self._wait()
        finally:
            self.pool.shutdown(wait=True)
            if self.merge_after:
                self._resume_merges()

    def _resume_merges(self) -> None:
        if self.merges_held:
            self.merges_held = False
            self.store.command(f"SYSTEM START MERGES {self.table}")

    def _submit(self) -> None:
        if not self.waiting:
            return
        batch = _concat(self.waiting)
        self.waiting, self.rows, self.bytes = [], 0, 0
        self._wait()
        self.inserted += batch.num_rows
        if self.inserted >= HELD_MERGE_ROWS:
            self._resume_merges()
        self.inflight = self.pool.submit(self._insert, batch)

    def _insert(self, batch: pa.Table) -> None:
        self.store.insert_arrow(self.table, batch, _insert_settings(batch))
        del batch
        self.release()  # the insert's blocks are freed: the engine keeps their pages for seconds

    def _wait(self) -> None:
        if self.inflight is not None:
            inflight, self.inflight = self.inflight, None
            inflight.result()
