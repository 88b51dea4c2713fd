"""Where dissection reads packets from and writes calls to: live tables or a snapshot's frozen copies.

A `PacketSource` is a table plus an extra WHERE (and its parameters), so dissecting a snapshot is a
parameter, not a fork. Reading is in time slices planned from a histogram of packet times, each slice
fetched with only the columns dissection needs — the L4 payload cut out of the frame by the engine
(`substring(data, payload_offset + 1, payload_len)`), never the headers — and sorted by flow then time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
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
ENRICHMENT = ("pod", "namespace", "service", "workload", "node", "labels")


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

    def stored_since(self, store: Store, wall_ns: int) -> int | None:
        """First capture time among packets stored at or after `wall_ns` (wall clock), if any."""
        value = store.scalar(
            f"SELECT toUnixTimestamp64Nano(min(ts)) FROM {self.table} WHERE {self.condition()} "
            "AND stored_at >= toDateTime(intDiv({wall:Int64}, 1000000000)) HAVING count() > 0",
            {**self.params, "wall": wall_ns},
        )
        return int(value) if value is not None else None

    def plan(
        self, store: Store, since_ns: int, until_ns: int, chunk_packets: int
    ) -> list[tuple[int, int, int]]:
        """Cut [since, until) into time slices of about `chunk_packets` packets: (start, end, packets).

        A histogram of packet times gives the cut points; a slice still far too big (a burst inside one
        bucket) is cut again with a finer histogram of its own range.
        """
        params = {**self.params, "since_ns": since_ns, "until_ns": until_ns}
        cond = f"{self.condition()} AND {RANGE}"
        total, first, last = store.rows(
            f"SELECT count(), toUnixTimestamp64Nano(min(ts)), toUnixTimestamp64Nano(max(ts)) "
            f"FROM {self.table} WHERE {cond}",
            params,
        )[0]
        total, first, last = int(total), int(first or 0), int(last or 0)
        if total == 0:
            return []
        if total <= chunk_packets or last == first:
            return [(since_ns, until_ns, total)]
        buckets = max(64, (total // chunk_packets) * 16)
        width = max(1, (last - first) // buckets + 1)
        histogram = store.rows(
            f"SELECT intDiv(toUnixTimestamp64Nano(ts) - {{first:Int64}}, {{width:Int64}}) AS b, count() "
            f"FROM {self.table} WHERE {cond} GROUP BY b ORDER BY b",
            {**params, "first": first, "width": width},
        )
        slices: list[tuple[int, int, int]] = []
        start, acc = since_ns, 0
        for bucket, count in histogram:
            acc += int(count)
            if acc >= chunk_packets:
                end = first + (int(bucket) + 1) * width
                slices.append((start, end, acc))
                start, acc = end, 0
        if acc or not slices:
            slices.append((start, until_ns, acc))
        else:
            slices[-1] = (slices[-1][0], until_ns, slices[-1][2])
        refined: list[tuple[int, int, int]] = []
        for piece in slices:
            if piece[2] > 2 * chunk_packets and len(slices) > 1:
                refined.extend(self.plan(store, piece[0], piece[1], chunk_packets))
            else:
                refined.append(piece)
        return refined

    def read(self, store: Store, since_ns: int, until_ns: int) -> PacketChunk:
        """One time slice, sorted by flow then time, as the engine's columns."""
        sql = (
            "SELECT toUnixTimestamp64Nano(ts) AS t, flow_id, l4, src_ip, dst_ip, src_port, dst_port, "
            "tcp_flags, tcp_seq, substring(data, payload_offset + 1, payload_len) AS payload "
            f"FROM {self.table} WHERE {self.condition()} AND {RANGE} ORDER BY flow_id, ts"
        )
        params = {**self.params, "since_ns": since_ns, "until_ns": until_ns}
        batches = list(store.arrow_stream(sql, params))
        table = pa.Table.from_batches(batches) if batches else None
        if table is None or table.num_rows == 0:
            empty: list = []
            return PacketChunk(
                empty, np.zeros(0, np.uint64), empty, empty, empty, empty, empty, empty, empty, empty
            )
        col = table.column
        return PacketChunk(
            ts=col("t").to_numpy().tolist(),
            flow_id=col("flow_id").to_numpy(),
            l4=col("l4").to_numpy().tolist(),
            src_ip=col("src_ip").to_pylist(),
            dst_ip=col("dst_ip").to_pylist(),
            src_port=col("src_port").to_numpy().tolist(),
            dst_port=col("dst_port").to_numpy().tolist(),
            tcp_flags=col("tcp_flags").to_numpy().tolist(),
            tcp_seq=col("tcp_seq").to_numpy().tolist(),
            payload=col("payload").to_pylist(),
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


def iter_slices(
    store: Store, source: PacketSource, slices: list[tuple[int, int, int]]
) -> Iterator[tuple[tuple[int, int, int], PacketChunk]]:
    for piece in slices:
        yield piece, source.read(store, piece[0], piece[1])
