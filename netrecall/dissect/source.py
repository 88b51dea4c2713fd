"""Where dissection reads packets from and writes calls to: live tables or a snapshot's frozen copies.

A `PacketSource` is a table plus an extra WHERE (and its parameters), so dissecting a snapshot is a
parameter, not a fork. Reading is in time slices planned from a histogram of packet times, each slice
fetched with only the columns dissection needs — the L4 payload cut out of the frame by the engine
(`substring(data, payload_offset + 1, payload_len)`), never the headers — and sorted by flow then time.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from netrecall.dissect.engine import PacketChunk
from netrecall.store import Store

# Packets that can matter: TCP/UDP, not a later IP fragment, with a payload or a SYN/FIN/RST flag.
RELEVANT = (
    "ip_version != 0 AND l4 IN (6, 17) AND ip_frag = 0 AND (payload_len > 0 OR bitAnd(tcp_flags, 7) != 0)"
)
RANGE = "ts >= fromUnixTimestamp64Nano({since_ns:Int64}) AND ts < fromUnixTimestamp64Nano({until_ns:Int64})"
FLOWS = "flow_id >= {flow_lo:UInt64} AND flow_id <= {flow_hi:UInt64}"
ENRICHMENT = ("pod", "namespace", "service", "workload", "node", "labels")
MINUTE_NS = 60 * 1_000_000_000
_FLOW_BUCKET = 1 << 54  # 1024 flow-id buckets per minute in the plan
# A slice's packets live as Python objects while they are parsed, and two more slices are read ahead: what
# one packet costs besides its payload (a bytes object, ints, ten list slots: ~250 bytes, measured with
# tracemalloc), and how much of that a slice may hold. At 8 MiB, slices of the HTTP benchmark capture
# (~500-byte payloads) hold ~11,000 packets, those of the PostgreSQL one (~44 bytes) ~28,000; dissect's
# peak RSS on the HTTP capture went from +380 to ~+290 MB over the store's floor (bench_memory).
PACKET_OBJECT_BYTES = 256
SLICE_BYTES = 8 << 20
# Bins per slice a big cell needs, in the histogram that cuts it by time: a cut lands on a bin's end, so a
# slice holds its budget plus at most part of one bin (1/64 of a slice where traffic is even).
BINS_PER_SLICE = 64


@dataclass(frozen=True)
class Slice:
    """Packets of [since, until) whose flow_id is in [flow_lo, flow_hi]; `safe_ns`: no later slice holds
    a packet older than this (timeouts in the engine are measured against it)."""

    since_ns: int
    until_ns: int
    flow_lo: int
    flow_hi: int
    packets: int
    safe_ns: int


@dataclass(frozen=True)
class PacketSource:
    """The packets to read and where their calls go."""

    table: str = "packets"
    where: str = ""  # extra condition, with {name:Type} binds taken from params
    params: dict[str, Any] = field(default_factory=dict)
    calls_table: str = "api_calls"
    extra_columns: dict[str, Any] = field(default_factory=dict)  # constant columns added to every call row
    scope: str = "live"  # dissect_state key for the watermark
    calls_where: str = ""  # the calls of this source in calls_table (a snapshot's), for de-duplication

    @classmethod
    def for_run(cls, snapshot: str | None = None, node: str | None = None) -> PacketSource:
        where, params = [], {}
        scope, calls_where = "live", ""
        table, calls_table, extra = "packets", "api_calls", {}
        if snapshot:
            calls_where = "snapshot = {snapshot:String}"
            table, calls_table = "snapshot_packets", "snapshot_api_calls"
            where.append("snapshot = {snapshot:String}")
            params["snapshot"] = snapshot
            extra["snapshot"] = snapshot
            scope = f"snapshot:{snapshot}"
        if node:
            where.append("node = {node:String}")
            params["node"] = node
            scope += f"|node:{node}"
        return cls(table, " AND ".join(where), params, calls_table, extra, scope, calls_where)

    def condition(self) -> str:
        return f"{RELEVANT} AND {self.where}" if self.where else RELEVANT

    def bounds(self, store: Store) -> tuple[int, int, int]:
        """(count, first ts, last ts) of the relevant packets, over everything stored."""
        row = store.rows(
            f"SELECT count(), toUnixTimestamp64Nano(min(ts)), toUnixTimestamp64Nano(max(ts)) "
            f"FROM {self.table} WHERE {self.condition()}",
            self.params,
        )[0]
        return int(row[0]), int(row[1] or 0), int(row[2] or 0)

    def calls_stored(self, store: Store, since_ns: int, until_ns: int) -> bool:
        """Whether any call of this source is stored with a time in [since, until)."""
        where = f" AND {self.calls_where}" if self.calls_where else ""
        found = store.rows(
            f"SELECT 1 FROM {self.calls_table} WHERE {RANGE}{where} LIMIT 1",
            {**self.params, "since_ns": since_ns, "until_ns": until_ns},
        )
        return bool(found)

    def stored_since(self, store: Store, wall_ns: int) -> int | None:
        """First capture time among packets stored at or after `wall_ns` (wall clock), if any."""
        value = store.scalar(
            f"SELECT toUnixTimestamp64Nano(min(ts)) FROM {self.table} WHERE {self.condition()} "
            "AND stored_at >= toDateTime(intDiv({wall:Int64}, 1000000000)) HAVING count() > 0",
            {**self.params, "wall": wall_ns},
        )
        return int(value) if value is not None else None

    def plan(
        self, store: Store, since_ns: int, until_ns: int, chunk_packets: int, chunk_bytes: int = SLICE_BYTES
    ) -> list[Slice]:
        """Cut [since, until) into slices of at most about `chunk_packets` packets and `chunk_bytes` of
        packets as Python objects (payloads plus PACKET_OBJECT_BYTES each) that the sort key can read
        cheaply: packets are ordered by (minute, flow_id, ts), so a slice is one minute (clipped to the
        range) times a range of flow ids; a flow-id bucket too big for one slice is cut by time.
        """
        params = {**self.params, "since_ns": since_ns, "until_ns": until_ns}
        cells = store.rows(
            "SELECT toUnixTimestamp64Nano(toDateTime64(toStartOfMinute(ts), 9)) AS m, "
            f"intDiv(flow_id, {_FLOW_BUCKET}) AS b, count(), sum(payload_len), "
            "toUnixTimestamp64Nano(min(ts)), toUnixTimestamp64Nano(max(ts)) "
            f"FROM {self.table} WHERE {self.condition()} AND {RANGE} GROUP BY m, b ORDER BY m, b",
            params,
        )
        budget = _Budget(chunk_packets, chunk_bytes)
        histograms = self._histograms(store, cells, budget)
        slices: list[Slice] = []
        open_lo, acc, acc_bytes, minute = -1, 0, 0, None

        def close(hi_bucket: int) -> None:
            nonlocal open_lo, acc, acc_bytes
            if open_lo >= 0 and acc:
                assert minute is not None
                lo, hi = max(minute, since_ns), min(minute + MINUTE_NS, until_ns)
                flow_hi = min((hi_bucket + 1) * _FLOW_BUCKET - 1, 2**64 - 1)
                slices.append(Slice(lo, hi, open_lo * _FLOW_BUCKET, flow_hi, acc, lo))
            open_lo, acc, acc_bytes = -1, 0, 0

        last_bucket = -1
        for m, bucket, count, payload, _first, _last in cells:
            m, bucket, count = int(m), int(bucket), int(count)
            size = budget.bytes_of(count, int(payload))
            if m != minute:
                close(last_bucket)
                minute = m
            if budget.slices(count, size) > 1:  # one bucket alone is too big: its own slices, cut by time
                close(last_bucket)
                histogram = histograms.get((minute, bucket), _EMPTY_HISTOGRAM)
                slices.extend(_by_time(histogram, minute, bucket, since_ns, until_ns, budget))
                last_bucket = bucket
                continue
            if acc and budget.slices(acc + count, acc_bytes + size) > 1:
                close(last_bucket)
            if open_lo < 0:
                open_lo = bucket
            acc += count
            acc_bytes += size
            last_bucket = bucket
        close(last_bucket)
        return slices

    def _histograms(
        self, store: Store, cells: list[tuple], budget: _Budget
    ) -> dict[tuple[int, int], _Histogram]:
        """Histograms of packet times (bins, packets, payload bytes) of the (minute, flow bucket) cells too
        big for one slice, over the time their packets span: one query per minute for all its big cells,
        read as Arrow, with BINS_PER_SLICE bins per slice the biggest cell needs. (Bins a few nanoseconds
        wide, one group per packet, held 480 MB of the engine and took 10 s to plan 11M packets.)"""
        big: dict[int, list[tuple[int, int, int, int]]] = {}
        for m, bucket, count, payload, first, last in cells:
            needed = budget.slices(int(count), budget.bytes_of(int(count), int(payload)))
            if needed > 1:
                big.setdefault(int(m), []).append((int(bucket), needed, int(first), int(last)))
        histograms: dict[tuple[int, int], _Histogram] = {}
        for minute, big_cells in big.items():
            lo = min(first for _, _, first, _ in big_cells)
            hi = max(last for _, _, _, last in big_cells) + 1
            width = max(1, (hi - lo) // (BINS_PER_SLICE * max(needed for _, needed, _, _ in big_cells)) + 1)
            table = store.arrow(
                f"SELECT intDiv(flow_id, {_FLOW_BUCKET}) AS b, "
                "intDiv(toUnixTimestamp64Nano(ts) - {since_ns:Int64}, {width:Int64}) AS t, count() AS n, "
                "sum(payload_len) AS p "
                f"FROM {self.table} WHERE {self.condition()} AND {RANGE} AND b IN {{buckets:Array(UInt64)}} "
                "GROUP BY b, t ORDER BY b, t",
                {
                    **self.params,
                    "since_ns": lo,
                    "until_ns": hi,
                    "width": width,
                    "buckets": [bucket for bucket, _, _, _ in big_cells],
                },
            )
            cell = table.column("b").to_numpy()
            bins = table.column("t").to_numpy()
            counts = table.column("n").to_numpy().astype(np.int64)
            sizes = budget.bytes_of(counts, table.column("p").to_numpy().astype(np.int64))
            cuts = np.flatnonzero(cell[1:] != cell[:-1]) + 1
            for first, last in zip([0, *cuts.tolist()], [*cuts.tolist(), len(cell)], strict=True):
                if last > first:
                    histograms[(minute, int(cell[first]))] = _Histogram(
                        lo, width, bins[first:last], counts[first:last], sizes[first:last]
                    )
        return histograms

    def read(self, store: Store, piece: Slice) -> PacketChunk:
        """One time slice, sorted by flow then time, as the engine's columns.

        Sorted here rather than with ORDER BY: the engine's sort held the whole slice a second time
        (measured: +260 MB for 100k packets); numpy's argsort and a reordered list of references do not.
        """
        sql = (
            "SELECT toUnixTimestamp64Nano(ts) AS t, flow_id, l4, src_ip, dst_ip, src_port, dst_port, "
            "tcp_flags, tcp_seq, substring(data, payload_offset + 1, payload_len) AS payload "
            f"FROM {self.table} WHERE {self.condition()} AND {RANGE} AND {FLOWS}"
        )
        params = {
            **self.params,
            "since_ns": piece.since_ns,
            "until_ns": piece.until_ns,
            "flow_lo": piece.flow_lo,
            "flow_hi": piece.flow_hi,
        }
        # one reading thread and small blocks: the slice is small, and memory stays flat (measured)
        batches = list(store.arrow_stream(sql, params, settings={"max_threads": 1, "max_block_size": 8192}))
        rows = sum(batch.num_rows for batch in batches)
        if rows == 0:
            empty: list = []
            return PacketChunk(
                empty, np.zeros(0, np.uint64), empty, empty, empty, empty, empty, empty, empty, empty
            )
        table = pa.Table.from_batches(batches)
        del batches
        ts = table.column("t").to_numpy()
        flows = table.column("flow_id").to_numpy()
        order = np.lexsort((ts, flows))
        col = table.column

        def numbers(name: str) -> list[int]:
            return col(name).to_numpy()[order].tolist()

        def values(name: str) -> list:
            items = col(name).to_pylist()  # one Python object per packet, put in order without a copy
            return [items[i] for i in order.tolist()]

        def addresses(name: str) -> list:
            # a slice holds few distinct addresses: converted once each (to_pylist of 16-byte values costs
            # 0.4 us a packet, measured; this 0.05), then one reference per packet
            encoded = col(name).combine_chunks().dictionary_encode()
            distinct = encoded.dictionary.to_pylist()
            return [distinct[i] for i in encoded.indices.to_numpy()[order].tolist()]

        return PacketChunk(
            ts=ts[order].tolist(),
            flow_id=flows[order],
            l4=numbers("l4"),
            src_ip=addresses("src_ip"),
            dst_ip=addresses("dst_ip"),
            src_port=numbers("src_port"),
            dst_port=numbers("dst_port"),
            tcp_flags=numbers("tcp_flags"),
            tcp_seq=numbers("tcp_seq"),
            payload=values("payload"),
        )

    def has_enrichment(self, store: Store, since_ns: int, until_ns: int) -> bool:
        cond = " OR ".join(
            [f"{side}_{name} != ''" for side in ("src", "dst") for name in ENRICHMENT if name != "labels"]
            + ["notEmpty(src_labels)", "notEmpty(dst_labels)"]
        )
        found = store.rows(
            f"SELECT 1 FROM {self.table} WHERE {self.condition()} AND {RANGE} AND ({cond}) LIMIT 1",
            {**self.params, "since_ns": since_ns, "until_ns": until_ns},
        )
        return bool(found)

    def nodes(self, store: Store, since_ns: int, until_ns: int) -> list[str]:
        rows = store.rows(
            f"SELECT DISTINCT node FROM {self.table} WHERE {self.condition()} AND {RANGE} LIMIT 2",
            {**self.params, "since_ns": since_ns, "until_ns": until_ns},
        )
        return [r[0] for r in rows]

    def endpoints(
        self, store: Store, since_ns: int, until_ns: int
    ) -> Callable[[int, bytes, int], dict | None]:
        """Per (flow, sender ip, sender port): node and the enrichment of both ends, as packets carry it."""
        cols = ", ".join(
            f"anyLast({side}_{name}) AS {side}_{name}" for side in ("src", "dst") for name in ENRICHMENT
        )
        rows = store.dicts(
            f"SELECT flow_id, src_ip, src_port, anyLast(node) AS node, {cols} FROM {self.table} "
            f"WHERE {self.condition()} AND {RANGE} GROUP BY flow_id, src_ip, src_port",
            {**self.params, "since_ns": since_ns, "until_ns": until_ns},
        )
        # keyed by (flow, sender port): both ends of one flow share a port only in rare cases (53 <-> 53)
        table: dict[tuple[int, int], dict] = {}
        for row in rows:
            row.pop("src_ip")
            table[(row.pop("flow_id"), row.pop("src_port"))] = row
        return lambda flow, _ip, port: table.get((flow, port))


@dataclass(frozen=True)
class _Budget:
    """What one slice may hold: packets, and bytes of packets as the engine's Python columns."""

    packets: int
    bytes: int

    @staticmethod
    def bytes_of(packets: Any, payload: Any) -> Any:
        return payload + packets * PACKET_OBJECT_BYTES

    def slices(self, packets: int, size: int) -> int:
        """How many slices that many packets and bytes need (at least 1)."""
        return max(1, -(-packets // self.packets), -(-size // self.bytes))


@dataclass(frozen=True)
class _Histogram:
    origin: int  # time (ns) where bin 0 starts
    width: int  # ns per bin
    bins: np.ndarray  # bin numbers, ascending
    packets: np.ndarray  # packets per bin
    bytes: np.ndarray  # _Budget.bytes_of the bin's packets


_EMPTY_HISTOGRAM = _Histogram(0, 1, np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64))


def _by_time(
    histogram: _Histogram, minute: int, bucket: int, since_ns: int, until_ns: int, budget: _Budget
) -> list[Slice]:
    """Time cuts of one (minute, flow bucket) cell from the histogram of its packet times: a cut after
    the first bin where the budget's packets or bytes have gathered since the last cut."""
    lo, hi = max(minute, since_ns), min(minute + MINUTE_NS, until_ns)
    flow_lo, flow_hi = bucket * _FLOW_BUCKET, min((bucket + 1) * _FLOW_BUCKET - 1, 2**64 - 1)
    packets = np.cumsum(histogram.packets)  # packets up to and including each bin
    sizes = np.cumsum(histogram.bytes)
    slices: list[Slice] = []
    start, done, done_bytes = lo, 0, 0
    while True:
        i = min(
            int(np.searchsorted(packets, done + budget.packets, side="left")),
            int(np.searchsorted(sizes, done_bytes + budget.bytes, side="left")),
        )
        if i >= len(packets):
            break
        end = min(histogram.origin + (int(histogram.bins[i]) + 1) * histogram.width, hi)
        slices.append(Slice(start, end, flow_lo, flow_hi, int(packets[i]) - done, lo))
        start, done, done_bytes = end, int(packets[i]), int(sizes[i])
    rest = (int(packets[-1]) if len(packets) else 0) - done
    if rest:
        slices.append(Slice(start, hi, flow_lo, flow_hi, rest, lo))
    return slices
