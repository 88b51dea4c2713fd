"""`dissect()`: stored packets of a time range -> api_calls rows, chunk by chunk, resumable by watermark.

Memory is bounded by the chunk (about `chunk_packets` packets) plus the state of streams still open.
The watermark (table dissect_state, one row per scope) is where the next run without --since starts:
the capture time of the oldest message still unfinished when this run ended (a request waiting for its
response, a half-received body), so that call is produced again, complete, with the same id. A second
row (scope + '|until') remembers how far the run read, so the next run drops responses whose requests it
cannot see because they were already produced whole.
"""

from __future__ import annotations

import gc
import time
from collections import Counter, deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field

from netrecall.dissect.calls import Context, DissectConfig
from netrecall.dissect.engine import Engine, PacketChunk
from netrecall.dissect.source import SLICE_BYTES, PacketSource, Slice
from netrecall.dissect.writer import BatchWriter, calls_to_arrow, dedupe, enrich
from netrecall.errors import NetrecallError
from netrecall.memory import Releaser
from netrecall.store import Store

DEFAULT_CHUNK_PACKETS = 40_000
MAX_LOOKBACK_NS = 600 * 1_000_000_000  # a watermark never holds back more than this behind the range's end
# Allocations between young-generation collections while dissecting (CPython's default: 700; the setting
# is the process's, restored when the run ends). Parsing allocates a few tracked objects per message and
# makes almost no cycles, yet at the default the collector ran 1,400 times on the PostgreSQL benchmark, a
# dozen of them over the whole heap: 1.4 s of its 10 s of CPU (measured with gc.callbacks); 0.4 s here.
GC_YOUNG_THRESHOLD = 20_000


@dataclass
class DissectSummary:
    calls: dict[str, int] = field(default_factory=dict)  # per protocol, rows written
    partial: int = 0
    errors: int = 0  # rows with an error text (unparseable streams)
    parse_errors: dict[str, int] = field(default_factory=dict)
    packets: int = 0  # packets read (those with payload or SYN/FIN/RST)
    seconds: float = 0.0
    chunks: int = 0
    since_ns: int = 0
    until_ns: int = 0
    watermark_ns: int = 0
    duplicates_skipped: int = 0
    error_samples: dict[str, str] = field(default_factory=dict)

    @property
    def total_calls(self) -> int:
        return sum(self.calls.values())

    def as_dict(self) -> dict:
        return {**asdict(self), "total_calls": self.total_calls}


def _state(store: Store, scope: str) -> int | None:
    value = store.scalar(
        "SELECT toUnixTimestamp64Nano(argMax(watermark, updated_at)) FROM dissect_state "
        "WHERE scope = {s:String} HAVING count() > 0",
        {"s": scope},
    )
    return int(value) if value is not None else None


def _last_run_ns(store: Store, scope: str) -> int:
    value = store.scalar(
        "SELECT toUnixTimestamp64Nano(max(updated_at)) FROM dissect_state WHERE scope = {s:String}",
        {"s": scope},
    )
    return int(value or 0)


def _set_state(store: Store, scope: str, value_ns: int) -> None:
    store.command(
        "INSERT INTO dissect_state (scope, watermark) "
        "VALUES ({s:String}, fromUnixTimestamp64Nano({w:Int64}))",
        {"s": scope, "w": int(value_ns)},
    )


def dissect(
    store: Store,
    since_ns: int | None = None,
    until_ns: int | None = None,
    node: str | None = None,
    snapshot: str | None = None,
    progress: bool = False,
    chunk_packets: int = DEFAULT_CHUNK_PACKETS,
    chunk_bytes: int = SLICE_BYTES,
    config: DissectConfig | None = None,
    merge_after: bool = True,
) -> DissectSummary:
    """Dissect [since, until) (default: from the watermark, or the first packet, to the last packet).

    merge_after=False leaves the embedded engine's merges of the calls table held when the run ends, for
    a caller whose process ends with it (the CLI): see BatchWriter."""
    started = time.perf_counter()
    source = PacketSource.for_run(snapshot, node)
    if snapshot and not store.scalar("EXISTS TABLE snapshot_packets"):
        raise NetrecallError(f"snapshot {snapshot!r}: this store has no snapshot tables")
    summary = DissectSummary()
    count, first, last = source.bounds(store)
    watermark = _state(store, source.scope)
    resumed = since_ns is None and watermark is not None
    if since_ns is None:
        since_ns = watermark if watermark is not None else first
        late = source.stored_since(store, _last_run_ns(store, source.scope)) if resumed else None
        if late is not None and late < since_ns:
            # packets imported since the last run but older than its watermark (an old capture loaded
            # later): start from them; orphans are not dropped then, their requests were never seen
            since_ns, resumed = late, False
    if until_ns is None:
        until_ns = last + 1
    summary.since_ns, summary.until_ns = since_ns, until_ns
    if count == 0 or until_ns <= since_ns:
        summary.watermark_ns = watermark or 0
        summary.seconds = time.perf_counter() - started
        return summary

    ctx = Context(config=config or DissectConfig())
    if resumed:
        ctx.drop_orphans_before_ns = _state(store, source.scope + "|until") or 0
    engine = Engine(ctx)
    slices = source.plan(store, since_ns, until_ns, chunk_packets, chunk_bytes)
    enriched = source.has_enrichment(store, since_ns, until_ns)
    nodes = source.nodes(store, since_ns, until_ns)
    only_node = nodes[0] if len(nodes) == 1 else ""
    per_protocol: Counter = Counter()

    current = [since_ns, until_ns]  # the slice being read: where endpoint identities are looked up
    # Calls get the time of their first packet, inside [since, until): when no call is stored there yet,
    # nothing this run writes can be a duplicate and the per-batch lookups are skipped.
    stored_before = source.calls_stored(store, since_ns, until_ns)
    release = Releaser(store)
    writer = BatchWriter(store, source.calls_table, merge_after=merge_after, release=release)

    def flush() -> None:
        calls = ctx.calls
        if not calls:
            return
        ctx.calls = []
        lookup = None
        if enriched or len(nodes) > 1:
            lo, hi = current
            lo = min(lo, min(c["ts"] for c in calls))
            lookup = source.endpoints(store, lo, hi)
        enrich(calls, lookup, only_node)
        if stored_before:
            writer.flush()  # the lookup must see every row written before it
            fresh = dedupe(store, source.calls_table, calls, source.calls_where, source.params)
        else:
            fresh = calls
        summary.duplicates_skipped += len(calls) - len(fresh)
        if fresh:
            writer.add(calls_to_arrow(fresh, source.extra_columns))
        for call in fresh:
            per_protocol[call["protocol"]] += 1
            summary.partial += bool(call.get("partial"))
            summary.errors += bool(call.get("error"))

    ctx.on_full = flush
    bar = _progress(progress, sum(piece.packets for piece in slices))
    # The next slice is read (the engine's query runs outside the GIL) while this one is parsed, and calls
    # are inserted by the writer's thread: the second core takes the engine's share of the work.
    reader = ThreadPoolExecutor(1, thread_name_prefix="netrecall-read")
    threshold = gc.get_threshold()
    gc.set_threshold(max(threshold[0], GC_YOUNG_THRESHOLD), *threshold[1:])
    try:
        for piece, chunk in _read_ahead(reader, source, store, slices):
            current[:] = piece.since_ns, piece.until_ns
            engine.process(chunk, piece.safe_ns)
            summary.packets += len(chunk)
            summary.chunks += 1
            del chunk
            flush()
            release()
            if bar is not None:
                bar.advance(summary.packets - bar.done)
        pending = engine.pending_ts()
        current[:] = since_ns, until_ns
        engine.finish()
        flush()
        writer.flush()
    finally:
        gc.set_threshold(*threshold)
        reader.shutdown(wait=True, cancel_futures=True)
        writer.close()
        if bar is not None:
            bar.stop()

    resume = until_ns if pending is None else max(min(pending, until_ns), until_ns - MAX_LOOKBACK_NS)
    resume = max(resume, since_ns)
    if watermark is None or resume > watermark:
        _set_state(store, source.scope, resume)
        _set_state(store, source.scope + "|until", until_ns)
        summary.watermark_ns = resume
    else:
        summary.watermark_ns = watermark
    summary.calls = dict(per_protocol)
    summary.parse_errors = dict(ctx.parse_errors)
    summary.error_samples = dict(ctx.error_samples)
    summary.seconds = time.perf_counter() - started
    return summary


def _read_ahead(
    reader: ThreadPoolExecutor, source: PacketSource, store: Store, slices: list[Slice], depth: int = 2
) -> Iterator[tuple[Slice, PacketChunk]]:
    """The slices' packets in order, the next `depth` already being read while the caller parses this
    one. The reader needs the GIL for its share of each read, which the parsing holds: a read took 0.13 to
    0.6 s of wall time for 0.04 s of CPU, and with one slice ahead the parsing waited for 15% of the
    PostgreSQL benchmark's run (measured); two ahead absorb the spread."""
    upcoming = deque(reader.submit(source.read, store, piece) for piece in slices[:depth])
    for index, piece in enumerate(slices):
        chunk = upcoming.popleft().result()
        if index + depth < len(slices):
            upcoming.append(reader.submit(source.read, store, slices[index + depth]))
        yield piece, chunk
        del chunk


class _Bar:
    def __init__(self, total: int) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.progress = Progress(
            TextColumn("dissecting"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("packets"),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            transient=True,
        )
        self.task = self.progress.add_task("dissect", total=total)
        self.progress.start()
        self.done = 0

    def advance(self, n: int) -> None:
        self.done += n
        self.progress.advance(self.task, n)

    def stop(self) -> None:
        self.progress.stop()


def _progress(enabled: bool, total: int) -> _Bar | None:
    return _Bar(total) if enabled else None
