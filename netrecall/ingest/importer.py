"""Import capture files into the store: read in chunks, decode, enrich, insert; once per file content.

The file's identity is the sha256 of its bytes (the `source` of every row and the key of `imports`).
Idempotency rule: a file whose sha256 is already in `imports` (a completed import) is skipped, so
importing it again neither duplicates nor loses anything. The `imports` row is written only after every
packet of the file is in; a file with packets in the store but no `imports` row was interrupted, so
its partial rows are removed first (and the flows they fed are rebuilt from the remaining packets),
then it is imported again in full.

Decoding (numpy, in this thread) overlaps the inserts (two worker threads, each one streaming INSERT
per file on chDB, which runs in C++ and releases the GIL), with one decoded table waiting between them,
so memory follows the batch size, not the file's (the engine adds ~0.4 MB per part it has written; see
docs/import.md). The files are hashed in a background thread.
"""

from __future__ import annotations

import contextlib
import gc
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pyarrow as pa

from netrecall.errors import NetrecallError
from netrecall.ingest.capture_file import CaptureReader
from netrecall.ingest.decode import KNOWN_LINK_TYPES, decode_frames
from netrecall.ingest.digest import FileDigests, file_sha256
from netrecall.ingest.flows import FlowBatches
from netrecall.ingest.frames import Damage
from netrecall.schema.tables import FLOWS, FLOWS_SELECT
from netrecall.store import Store, clickhouse_errors, open_store

BATCH_ROWS = 49_152  # rows per part
BATCH_BYTES = 16 << 20  # ... fewer when the frames are large: with chDB's own ~300 MB this bounds peak RSS
INSERT_WORKERS = 2  # concurrent inserts on chDB: paired runs on 2 cores were 20-30% faster than one, same RSS
DEFERRED_MERGE_ROWS = 200 * BATCH_ROWS  # on chDB, merges wait until the import ends or ~200 parts were made
INSERT_SETTINGS = {
    # Block deduplication would silently drop a re-import of rows removed after an interrupted import:
    # idempotency is handled here, by the file's sha256.
    "insert_deduplicate": 0,
}


class Resolver(Protocol):
    """What the importer needs from netrecall.ingest.identity.IdentityResolver."""

    def enrich(self, table: pa.Table) -> pa.Table: ...

    def workload_rows(self) -> pa.Table: ...


@dataclass
class FileSummary:
    path: str
    source: str = ""
    format: str = ""
    status: str = "imported"  # imported | already imported | failed
    packets: int = 0
    bytes: int = 0  # captured frame bytes stored
    flows: int = 0
    skipped: int = 0  # records lost to damage
    undecoded: int = 0  # frames of an unknown link type, stored raw
    removed_partial: int = 0  # rows of an earlier interrupted import of this file, removed first
    seconds: float = 0.0
    error: str = ""
    damage: list[Damage] = field(default_factory=list)
    first_ts: int = 0
    last_ts: int = 0


@dataclass
class ImportSummary:
    files: list[FileSummary] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def packets(self) -> int:
        return sum(f.packets for f in self.files)

    @property
    def bytes(self) -> int:
        return sum(f.bytes for f in self.files)

    @property
    def flows(self) -> int:
        return sum(f.flows for f in self.files)

    @property
    def skipped(self) -> int:
        return sum(f.skipped for f in self.files)

    @property
    def failed(self) -> list[FileSummary]:
        return [f for f in self.files if f.status == "failed"]

    @property
    def rate(self) -> float:
        return self.packets / self.seconds if self.seconds > 0 else 0.0


def import_files(
    store: Store,
    paths: Iterable[str | Path],
    node: str = "",
    resolver: Resolver | None = None,
    progress: bool = False,
    errors: str = "raise",
    digests: FileDigests | None = None,
    merge_after: bool = True,
) -> ImportSummary:
    """Import every file in order.

    errors='raise' stops at the first unreadable file; 'collect' records it in the summary and goes on.
    `digests` may be started by the caller before it opens the store, so the hashing overlaps that.
    merge_after=False leaves the embedded engine's merges held after the last file, for a caller whose
    process ends with the import (the CLI): merges started then would only be cancelled at exit, and
    the next process that opens the store merges the parts.
    """
    started = time.perf_counter()
    paths = [Path(p) for p in paths]
    digests = digests or FileDigests(paths)
    _import_pandas_now()
    summary = ImportSummary()
    if resolver is not None:
        workloads = resolver.workload_rows()
        if workloads.num_rows:
            store.insert_arrow("workloads", workloads)
    for index, path in enumerate(paths):
        last = index == len(paths) - 1
        try:
            result = import_file(
                store,
                path,
                node=node,
                resolver=resolver,
                progress=progress,
                digests=digests,
                merge_after=merge_after or not last,
            )
        except NetrecallError as exc:
            if errors == "raise":
                raise
            result = FileSummary(str(path), status="failed", error=str(exc))
        summary.files.append(result)
    summary.seconds = time.perf_counter() - started
    return summary


def _import_pandas_now() -> None:
    """pyarrow's array() and chDB's Python() reader import pandas on first use (~0.2 s holding the GIL).
    Doing it here overlaps it with the first file's hashing instead of stalling the first chunk."""
    import pandas  # noqa: F401


def import_file(
    store: Store,
    path: Path,
    node: str = "",
    resolver: Resolver | None = None,
    progress: bool = False,
    digests: FileDigests | None = None,
    merge_after: bool = True,
) -> FileSummary:
    """Import one file (see the module docstring for the idempotency rule; import_files for merge_after)."""
    started = time.perf_counter()
    result = FileSummary(str(path))
    if path.is_dir():
        raise NetrecallError(f"{path}: is a directory, not a capture file")
    result.source = digests.get(path) if digests is not None else file_sha256(path)
    params = {"s": result.source}
    recorded = store.rows(
        "SELECT argMax(packets, imported_at) FROM imports WHERE source = {s:String} GROUP BY source", params
    )
    stored = int(store.scalar("SELECT count() FROM packets WHERE source = {s:String}", params) or 0)
    if recorded and recorded[0][0] == stored:
        result.status = "already imported"
        result.seconds = time.perf_counter() - started
        return result
    # Interrupted before its `imports` row, or partly expired by retention since: start again cleanly.
    if stored:
        result.removed_partial = remove_partial_import(store, result.source)

    reader = CaptureReader(path)
    size = path.stat().st_size
    flows = FlowBatches(store, settings=INSERT_SETTINGS)
    with (
        _gc_paused(),
        _Progress(progress and size > 8 << 20, path.name, size) as advance,
        _DeferredMerges(store, restart=merge_after) as merges,
        _Inserter(store, on_insert=merges.inserted) as inserter,
    ):
        first, last = None, None
        for chunk in reader.chunks():
            table = decode_frames(
                chunk,
                node=node,
                source=result.source,
                chdb_layout=inserter.streams,
                first_seq=result.packets,
            )
            if resolver is not None:
                table = resolver.enrich(table)
            flows.add(table)
            inserter.put(table)
            result.packets += len(chunk)
            result.bytes += int(chunk.caplen.sum(dtype=np.int64))
            result.undecoded += int(np.count_nonzero(~np.isin(chunk.link_type, list(KNOWN_LINK_TYPES))))
            low, high = int(chunk.ts_ns.min()), int(chunk.ts_ns.max())
            first = low if first is None else min(first, low)
            last = high if last is None else max(last, high)
            advance(reader.raw_position)
    flows.flush()
    result.format = reader.format
    result.damage = list(reader.damage)
    result.skipped = reader.skipped
    result.first_ts, result.last_ts = first or 0, last or 0
    if result.packets == 0 and reader.damage:
        bad = reader.damage[0]
        raise NetrecallError(f"{reader.where(bad.offset)}: {bad.reason}; no packet could be read")
    result.flows = int(
        store.scalar(
            "SELECT uniqExact(flow_id) FROM packets WHERE source = {s:String} AND ip_version != 0",
            {"s": result.source},
        )
        or 0
    )
    _record_import(store, result, node, path)
    result.seconds = time.perf_counter() - started
    return result


def _record_import(store: Store, result: FileSummary, node: str, path: Path) -> None:
    row = pa.table(
        {
            "source": [result.source],
            "file_name": [str(path.resolve())],
            "node": [node],
            "packets": pa.array([result.packets], pa.uint64()),
            "bytes": pa.array([result.bytes], pa.uint64()),
            "skipped": pa.array([result.skipped], pa.uint64()),
            "first_ts": pa.array([result.first_ts], pa.timestamp("ns", tz="UTC")),
            "last_ts": pa.array([result.last_ts], pa.timestamp("ns", tz="UTC")),
        }
    )
    store.insert_arrow("imports", row, settings=INSERT_SETTINGS)


def remove_partial_import(store: Store, source: str) -> int:
    """Delete the rows of an interrupted import of `source` and rebuild the flows they contributed to."""
    params = {"s": source}
    count = int(store.scalar("SELECT count() FROM packets WHERE source = {s:String}", params) or 0)
    if not count:
        return 0
    keys = f"_import_cleanup_{source[:16]}"
    store.command(f"DROP TABLE IF EXISTS {keys}")
    store.command(
        f"CREATE TABLE {keys} ENGINE = Memory AS SELECT DISTINCT toStartOfMinute(ts) AS w, node, flow_id "
        "FROM packets WHERE source = {s:String} AND ip_version != 0",
        params,
    )
    try:
        in_keys = f"(SELECT w, node, flow_id FROM {keys})"
        sync = {"mutations_sync": 2}
        store.command(
            f"ALTER TABLE flows DELETE WHERE (window_start, node, flow_id) IN {in_keys}", settings=sync
        )
        store.command("ALTER TABLE packets DELETE WHERE source = {s:String}", params, settings=sync)
        # Re-aggregate the surviving packets of those flows (the SQL twin of netrecall.ingest.flows).
        others = f"(SELECT * FROM packets WHERE (toStartOfMinute(ts), node, flow_id) IN {in_keys})"
        columns = ", ".join(f"`{c}`" for c in FLOWS.column_names if c != "stored_at")
        store.command(
            f"INSERT INTO flows ({columns}) SELECT {columns} FROM ({FLOWS_SELECT.format(packets=others)})",
            settings=INSERT_SETTINGS,
        )
    finally:
        store.command(f"DROP TABLE IF EXISTS {keys}")
    return count


class _Inserter:
    """Hands decoded tables to worker threads that insert them, a bounded number in flight.

    On chDB each worker runs ONE streaming `INSERT ... SELECT ... FROM Python(reader)` for the whole
    file, its reader pulling tables from the shared queue: the engine squashes them into parts of
    BATCH_ROWS / BATCH_BYTES, and the query is planned once per file instead of once per part - ~13 ms
    of CPU per INSERT of a 40-column table through Python().
    Each worker has its own connection handle (a handle serialises its calls), so two inserts run in
    C++ on two cores while this thread decodes. On a server store, batches go one INSERT each.
    """

    def __init__(
        self, store: Store, workers: int = INSERT_WORKERS, on_insert: Callable[[int], None] | None = None
    ) -> None:
        self.on_insert = on_insert
        # On chDB the frames go in as views over the read buffer (no copy, record headers left in place).
        self.streams = store.kind == "chdb"
        # A streaming INSERT holds its connection for the whole file, so every worker gets its own and
        # the caller's stays free for commands meanwhile (SYSTEM START MERGES would otherwise wait for
        # an INSERT that waits for this thread's next table).
        self.stores = [open_store(store.address.display) for _ in range(workers)] if self.streams else [store]
        self.pending: list[pa.Table] = []
        self.pending_rows = 0
        self.pending_bytes = 0
        self.queue: queue.Queue[pa.Table | None] = queue.Queue(maxsize=1)
        self.error: BaseException | None = None
        self.threads = [
            threading.Thread(target=self._run, args=(s,), name=f"netrecall-insert-{i}", daemon=True)
            for i, s in enumerate(self.stores)
        ]

    def __enter__(self) -> _Inserter:
        for thread in self.threads:
            thread.start()
        return self

    def put(self, table: pa.Table) -> None:
        self._check()
        if self.streams:  # the engine batches the stream itself
            self._hand_over(table)
            return
        self.pending.append(table)
        self.pending_rows += table.num_rows
        self.pending_bytes += table.nbytes
        if self.pending_rows >= BATCH_ROWS or self.pending_bytes >= BATCH_BYTES:
            self._flush()

    def _flush(self) -> None:
        if not self.pending:
            return
        batch = pa.concat_tables(self.pending) if len(self.pending) > 1 else self.pending[0]
        self.pending, self.pending_rows, self.pending_bytes = [], 0, 0
        self._hand_over(batch)

    def _hand_over(self, batch: pa.Table) -> None:
        while True:  # wait for room, but notice a failed worker instead of blocking forever
            self._check()
            try:
                self.queue.put(batch, timeout=0.5)
                break
            except queue.Full:
                continue
        if self.on_insert is not None:
            self.on_insert(batch.num_rows)

    def _check(self) -> None:
        if self.error is not None:
            error, self.error = self.error, None
            if isinstance(error, NetrecallError):
                raise error
            raise NetrecallError(f"insert failed: {type(error).__name__}: {error}")

    def _run(self, store: Store) -> None:
        try:
            if self.streams:
                self._stream(store)
            else:
                while (batch := self.queue.get()) is not None:
                    if self.error is None:  # after a failure only drain, so the producer never blocks
                        store.insert_arrow("packets", batch, settings=INSERT_SETTINGS)
                    del batch  # let its buffers go before waiting for the next one
        except BaseException as exc:  # handed to the producer thread
            self.error = exc
            while self.queue.get() is not None:  # drain, so the producer never blocks
                pass

    def _stream(self, store: Store) -> None:
        first = self.queue.get()
        if first is None:
            return

        def tables() -> Iterator[pa.RecordBatch]:
            # Runs on the engine's thread, which takes the GIL for it; queue.get() waits without it.
            table: pa.Table | None = first
            while table is not None:
                yield from table.to_batches()
                table = self.queue.get()

        insert_stream(store, pa.RecordBatchReader.from_batches(first.schema, tables()))

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        try:
            if exc_type is None:
                self._flush()
        finally:
            self.pending = []
            # One None ends a worker's stream, and a worker whose INSERT then failed (disk full at the
            # end of a file) drains until another one: keep offering ends until every worker is gone, or
            # the import waits for ever (found by tests/test_crash_diskfull.py).
            for thread in self.threads:
                while thread.is_alive():
                    with contextlib.suppress(queue.Full):
                        self.queue.put(None, timeout=0.2)
                    thread.join(timeout=0.2)
            for own in self.stores if self.streams else ():
                own.client.close()
        if exc_type is None:
            self._check()


@contextmanager
def _gc_paused() -> Iterator[None]:
    """No cyclic GC passes while streaming: the loop makes no cycles, and the passes cost ~2% of CPU."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


class _DeferredMerges:
    """On chDB, hold background merges of packets/flows while a file streams in.

    Merging the parts of a file while it is still arriving re-reads and re-compresses them during the
    import: on 2 cores that cost ~20% more CPU and ~160 MB more peak RSS (measured on the 1.1M-packet
    benchmark). The import is the engine's only user, so merges are stopped for its duration and
    started again at the end (or once DEFERRED_MERGE_ROWS rows were handed over, so a huge file does
    not pile up parts); the next process that opens the store merges them. With restart=False they stay
    held at the end: the process is about to exit, which would cancel a merge it had just begun (0.14-0.26 s
    of CPU thrown away on the benchmark file). A server store is shared, so there merges are left alone.
    """

    TABLES = ("packets", "flows")

    def __init__(self, store: Store, restart: bool = True) -> None:
        self.store = store
        self.active = store.kind == "chdb"
        self.restart = restart
        self.rows = 0

    def __enter__(self) -> _DeferredMerges:
        if self.active:
            for table in self.TABLES:
                self.store.command(f"SYSTEM STOP MERGES {table}")
        return self

    def inserted(self, rows: int) -> None:
        self.rows += rows
        if self.active and self.rows >= DEFERRED_MERGE_ROWS:
            self._start()

    def _start(self) -> None:
        if self.active:
            self.active = False
            for table in self.TABLES:
                self.store.command(f"SYSTEM START MERGES {table}")

    def __exit__(self, *exc: object) -> None:
        if self.restart:
            self._start()


def insert_stream(store: Store, reader: pa.RecordBatchReader) -> None:
    """chDB: one INSERT of every batch `reader` yields (decode_frames(chdb_layout=True) tables); the
    engine cuts the stream into parts of BATCH_ROWS / BATCH_BYTES."""
    names = ", ".join(f"`{c}`" for c in reader.schema.names)
    settings = {
        **INSERT_SETTINGS,
        "min_insert_block_size_rows": BATCH_ROWS,
        "min_insert_block_size_bytes": BATCH_BYTES,
        # one thread per INSERT: the workers are the parallelism (a pipeline of its own per insert
        # was slower on 2 cores, and held ~200 MB more)
        "max_threads": 1,
        "max_insert_threads": 1,
    }
    with clickhouse_errors():
        # chDB's Python() table function finds `reader` in this frame by name
        store.client.command(
            f"INSERT INTO packets ({names}) SELECT {names} FROM Python(reader)", settings=settings
        )


class _Progress:
    """A rich progress bar over the file's bytes, or nothing for small files."""

    def __init__(self, enabled: bool, name: str, total: int) -> None:
        self.enabled = enabled
        self.name = name
        self.total = total
        self.bar: Any = None
        self.task: Any = None

    def __enter__(self) -> Callable[[int], None]:
        if not self.enabled:
            return lambda _done: None
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        self.bar = Progress(
            "[bold]importing[/] {task.description}",
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            transient=True,
        )
        self.bar.start()
        self.task = self.bar.add_task(self.name, total=self.total)
        return lambda done: self.bar.update(self.task, completed=done)

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()


def describe(summary: ImportSummary | FileSummary, seconds: float | None = None) -> str:
    """One line: packets, bytes, flows, skipped, rate."""
    elapsed = summary.seconds if seconds is None else seconds
    rate = summary.packets / elapsed if elapsed > 0 else 0.0
    return (
        f"{summary.packets:,} packets, {_size(summary.bytes)}, {summary.flows:,} flows, "
        f"{summary.skipped:,} skipped, {elapsed:.2f} s ({rate:,.0f} packets/s)"
    )


def _size(count: int) -> str:
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:,.0f} {unit}" if unit == "B" else f"{value:,.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"
