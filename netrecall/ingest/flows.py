"""Turn a batch of packets into `flows` rows (numpy), and write packets together with their flows.

Every writer of packets (import, agent, hub ingest) stores the flows of what it writes through
`insert_packets` or `FlowBatches`: a materialized view did this inside the engine before, but ClickHouse
re-plans a view's SELECT for every inserted block (~20 ms for this one, more than the aggregation
itself, and it serialised the insert pipeline): a quarter to a third of the engine's CPU in an import.

The rows are the ones `schema.tables.FLOWS_SELECT` computes from stored packets (snapshots and the
clean-up of an interrupted import rebuild flows with it; a test holds the two to the same result):
grouped per minute, node, 5-tuple and direction, end `a` being the lower (ip, port) of the pair in
ClickHouse's order (IPv6 compares as its 16 bytes, then the port). `flow_id` is not computed here: the
flows table's DEFAULT computes it with the packets table's expression. Retransmissions count the data
segments whose (direction, seq) was already seen in the same batch (see docs/schema.md).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from netrecall.ingest.decode import PACKET_ARROW_SCHEMA
from netrecall.schema.tables import IDENTITY_FIELDS

if TYPE_CHECKING:  # only annotated: writing flows goes through whatever Store the caller has
    from netrecall.store import Store

TCP = 6
NO_TS = np.iinfo(np.int64).max  # "no such packet in the group" for the minIf() columns
_MIX = np.uint64(0x9E3779B97F4A7C15)  # 2^64 / golden ratio: spreads each field over the whole word
NS_PER_MINUTE = 60_000_000_000
_NODE_CODES = 1 << 23  # node names a batch can have before they need a grouping key of their own
_USED = ["ts", "node", "ip_version", "l4", "src_ip", "dst_ip", "src_port", "dst_port", "origlen"]
_USED += ["tcp_flags", "tcp_seq", "tcp_window", "payload_len"]
_ZERO = {name: "" if name == "node" else b"\0" * 16 if name.endswith("_ip") else 0 for name in _USED}
_ZERO["tcp_window"] = 0xFFFF  # the packets column's DEFAULT: an absent window is open, not zero

_TS = pa.timestamp("ns", tz="UTC")
FLOW_ARROW_SCHEMA = pa.schema(
    [
        ("window_start", pa.timestamp("s", tz="UTC")),
        ("node", pa.string()),
        ("l4", pa.uint8()),
        ("ip_a", pa.binary(16)),
        ("port_a", pa.uint16()),
        ("ip_b", pa.binary(16)),
        ("port_b", pa.uint16()),
        ("first_ts", _TS),
        ("last_ts", _TS),
        ("packets_ab", pa.uint64()),
        ("bytes_ab", pa.uint64()),
        ("packets_ba", pa.uint64()),
        ("bytes_ba", pa.uint64()),
        ("tcp_flags_ab", pa.uint16()),
        ("tcp_flags_ba", pa.uint16()),
        ("syn_from", pa.uint8()),
        ("syn_ts", _TS),
        ("synack_ts", _TS),
        ("resets", pa.uint64()),
        ("data_segments", pa.uint64()),
        ("retransmissions", pa.uint64()),
        ("syns", pa.uint64()),
        ("zero_windows", pa.uint64()),
        ("first_data_ab", _TS),
        ("first_data_ba", _TS),
    ]
)


def insert_packets(store: Store, packets: pa.Table, settings: Mapping | None = None) -> None:
    """Insert a batch of packets, then its flows with the same settings (a deduplication token applies
    to each table on its own, so a retried batch is a no-op in both)."""
    store.insert_arrow("packets", packets, settings=settings)
    store.insert_arrow("flows", flow_rows(packets), settings=settings)


def dedup_settings(token: str) -> dict[str, object]:
    """Insert settings that make a retried batch a no-op (per table: its packets and its flows)."""
    return {"insert_deduplicate": 1, "insert_deduplication_token": token}


def insert_batch(store: Store, table: str, rows: pa.Table, settings: Mapping | None = None) -> None:
    """A writer's batch for `table`: packets go in with their flows, other tables as they are."""
    if table == "packets":
        insert_packets(store, rows, settings=settings)
    else:
        store.insert_arrow(table, rows, settings=settings)


class FlowBatches:
    """The flows of a stream of packet batches, inserted together (the importer's use: one insert per
    file, or every `max_rows` rows, instead of one per batch)."""

    def __init__(self, store: Store, settings: Mapping | None = None, max_rows: int = 262_144) -> None:
        self.store = store
        self.settings = settings
        self.max_rows = max_rows
        self.pending: list[pa.Table] = []
        self.pending_rows = 0

    def add(self, packets: pa.Table) -> None:
        rows = flow_rows(packets)
        if not rows.num_rows:
            return
        self.pending.append(rows)
        self.pending_rows += rows.num_rows
        if self.pending_rows >= self.max_rows:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            rows = pa.concat_tables(self.pending)
            self.pending, self.pending_rows = [], 0
            self.store.insert_arrow("flows", rows, settings=self.settings)


def flow_rows(packets: pa.Table) -> pa.Table:
    """One row per (minute, node, 5-tuple, direction) of the IP packets in `packets`.

    `packets` has the packets columns (ts as timestamp[ns], IPs as fixed_size_binary(16)); identity
    columns (src_pod, ...) are carried over when present, else the flows table's defaults apply.
    """
    identity = [f"{side}_{f}" for f in IDENTITY_FIELDS for side in ("src", "dst")]
    has_identity = all(name in packets.column_names for name in identity)
    if "ip_version" not in packets.column_names:  # stored as 0: not IP, so no flow
        return FLOW_ARROW_SCHEMA.empty_table()
    for name in _USED:  # a writer may leave columns to their defaults (zero, empty)
        if name not in packets.column_names:
            kind = PACKET_ARROW_SCHEMA.field(name).type
            packets = packets.append_column(name, pa.nulls(packets.num_rows, kind).fill_null(_ZERO[name]))
    packets = packets.select(_USED + (identity if has_identity else []))  # never copy the frames
    ip = _numpy(packets["ip_version"]) != 0
    if not ip.all():
        packets = packets.filter(pa.array(ip))
    if packets.num_rows == 0:
        return FLOW_ARROW_SCHEMA.empty_table()
    ends = _Ends(packets)
    ts = _numpy(packets["ts"].cast(_TS).cast(pa.int64()))
    minute = ts // NS_PER_MINUTE
    node_codes, node_names = _codes(packets["node"])
    # node, l4, direction and both ports in one word: fewer keys to group on
    small = (node_codes.astype(np.uint64) & np.uint64(_NODE_CODES - 1)) << np.uint64(41)
    small |= (ends.l4.astype(np.uint64) << np.uint64(33)) | (ends.fwd.astype(np.uint64) << np.uint64(32))
    small |= (ends.a_port.astype(np.uint64) << np.uint64(16)) | ends.b_port
    keys = [minute, small, ends.a_hi, ends.a_lo, ends.b_hi, ends.b_lo]
    order, starts, group = _group(keys if len(node_names) <= _NODE_CODES else [*keys, node_codes])
    first = order[starts]  # each group's first packet in batch order: any() of the engine
    forward = ends.fwd[first]
    columns = {
        "window_start": pa.array(minute[first] * 60, pa.int64()).cast(pa.timestamp("s", tz="UTC")),
        "node": node_names.take(pa.array(node_codes[first])),
        "l4": pa.array(ends.l4[first], pa.uint8()),
        "ip_a": _ip_array(ends.a_hi[first], ends.a_lo[first]),
        "port_a": pa.array(ends.a_port[first], pa.uint16()),
        "ip_b": _ip_array(ends.b_hi[first], ends.b_lo[first]),
        "port_b": pa.array(ends.b_port[first], pa.uint16()),
        **_counters(packets, ts, ends.l4, order, starts, group, forward),
    }
    if has_identity:
        columns.update(_identity(packets, first, forward))
    return pa.table(columns)


class _Ends:
    """Both ends of every packet in canonical order: a is the lower (ip, port), fwd says a sent it."""

    def __init__(self, packets: pa.Table) -> None:
        self.l4 = _numpy(packets["l4"])
        src_hi, src_lo = _ip_words(packets["src_ip"])
        dst_hi, dst_lo = _ip_words(packets["dst_ip"])
        src_port, dst_port = _numpy(packets["src_port"]), _numpy(packets["dst_port"])
        # (src_ip, src_port) <= (dst_ip, dst_port) in the engine's order: the IP's bytes, then the port
        fwd = (src_hi < dst_hi) | (
            (src_hi == dst_hi) & ((src_lo < dst_lo) | ((src_lo == dst_lo) & (src_port <= dst_port)))
        )
        self.fwd = fwd
        self.a_hi, self.a_lo = np.where(fwd, src_hi, dst_hi), np.where(fwd, src_lo, dst_lo)
        self.b_hi, self.b_lo = np.where(fwd, dst_hi, src_hi), np.where(fwd, dst_lo, src_lo)
        self.a_port, self.b_port = np.where(fwd, src_port, dst_port), np.where(fwd, dst_port, src_port)


def _counters(
    packets: pa.Table,
    ts: np.ndarray,
    l4: np.ndarray,
    order: np.ndarray,
    starts: np.ndarray,
    group: np.ndarray,
    forward: np.ndarray,
) -> dict[str, pa.Array]:
    """The per-group times, counts and TCP facts; a group's packets are `order[starts[g]:starts[g+1]]`."""
    flags = _numpy(packets["tcp_flags"])
    tcp = l4 == TCP
    syn = tcp & ((flags & 0x12) == 0x02)
    synack = tcp & ((flags & 0x12) == 0x12)
    carries_data = tcp & (_numpy(packets["payload_len"]) > 0)
    data = carries_data[order]
    # Wireshark's tcp.analysis.zero_window: a zero window on anything but SYN, FIN or RST
    zero_window = tcp & (_numpy(packets["tcp_window"]) == 0) & ((flags & 0x07) == 0)

    def total(values: np.ndarray) -> np.ndarray:
        return np.add.reduceat(values[order].astype(np.uint64), starts)

    def earliest(mask: np.ndarray) -> pa.Array:
        return _ts_array(np.minimum.reduceat(np.where(mask, ts, NO_TS)[order], starts), nulls=True)

    # a data segment whose (group, seq) came before in the batch: data_segments - uniqExactIf(tcp_seq)
    seqs = np.sort((group[data] << np.uint64(32)) | _numpy(packets["tcp_seq"])[order][data])
    repeated = (seqs[1:][seqs[1:] == seqs[:-1]] >> np.uint64(32)).astype(np.int64)
    packets_n = np.diff(np.append(starts, len(order))).astype(np.uint64)
    bytes_n = total(_numpy(packets["origlen"]))
    flags_n = np.bitwise_or.reduceat(flags[order], starts).astype(np.uint16)
    zero = np.zeros(len(starts), dtype=np.uint64)
    return {
        "first_ts": _ts_array(np.minimum.reduceat(ts[order], starts)),
        "last_ts": _ts_array(np.maximum.reduceat(ts[order], starts)),
        "packets_ab": pa.array(np.where(forward, packets_n, zero)),
        "bytes_ab": pa.array(np.where(forward, bytes_n, zero)),
        "packets_ba": pa.array(np.where(forward, zero, packets_n)),
        "bytes_ba": pa.array(np.where(forward, zero, bytes_n)),
        "tcp_flags_ab": pa.array(np.where(forward, flags_n, 0).astype(np.uint16)),
        "tcp_flags_ba": pa.array(np.where(forward, 0, flags_n).astype(np.uint16)),
        "syn_from": pa.array(
            (np.maximum.reduceat(syn[order], starts) * np.where(forward, 1, 2)).astype(np.uint8)
        ),
        "syn_ts": earliest(syn),
        "synack_ts": earliest(synack),
        "resets": pa.array(total(tcp & ((flags & 0x04) != 0))),
        "data_segments": pa.array(np.add.reduceat(data.astype(np.uint64), starts)),
        "retransmissions": pa.array(np.bincount(repeated, minlength=len(starts)).astype(np.uint64)),
        "syns": pa.array(total(syn)),
        "zero_windows": pa.array(total(zero_window)),
        **_first_data(earliest(carries_data), forward),
    }


def _first_data(first: pa.Array, forward: np.ndarray) -> dict[str, pa.Array]:
    """The group's first payload time in the column of the end that sent it (the other one NULL)."""
    none = pa.nulls(len(first), _TS)
    fwd = pa.array(forward)
    return {"first_data_ab": pc.if_else(fwd, first, none), "first_data_ba": pc.if_else(fwd, none, first)}


def _identity(packets: pa.Table, first: np.ndarray, forward: np.ndarray) -> dict[str, pa.Array]:
    """a_/b_ identity columns from each group's first packet: a is the source on a forward group."""
    n = len(first)
    pick = pa.array(np.where(forward, np.arange(n), np.arange(n) + n))  # into [src values, dst values]
    taken = pa.array(first)
    columns = {}
    for f in IDENTITY_FIELDS:
        src = packets[f"src_{f}"].take(taken).combine_chunks()
        dst = packets[f"dst_{f}"].take(taken).combine_chunks()
        columns[f"a_{f}"] = pa.concat_arrays([src, dst]).take(pick)
        columns[f"b_{f}"] = pa.concat_arrays([dst, src]).take(pick)
    return columns


def _group(keys: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows grouped on equal keys: (row order with groups contiguous and rows in batch order within
    each, each group's start in that order, the group number of each row in that order).

    Groups are found on one 64-bit mix of the keys (numpy's hashed unique, then a lookup), so the only
    sort is of small group numbers (a radix sort under 65,536 groups). A collision of the mix is
    detected and the batch then grouped on the keys themselves."""
    mixed = np.zeros(len(keys[0]), dtype=np.uint64)
    for key in keys:
        mixed ^= key.astype(np.uint64, copy=False)
        mixed *= _MIX
        mixed ^= mixed >> np.uint64(29)
    distinct, number = np.unique(mixed, return_inverse=True)
    if len(distinct) <= 0xFFFF:
        number = number.astype(np.uint16)
    order = np.argsort(number, kind="stable")
    starts = np.zeros(len(distinct), dtype=np.int64)
    np.cumsum(np.bincount(number, minlength=len(distinct))[:-1], out=starts[1:])
    first = order[starts]
    for key in keys:
        if not np.array_equal(key, key[first][number]):  # two keys share a mix
            return _group_exact(keys)
    return order, starts, number[order].astype(np.uint64)


def _group_exact(keys: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    order = np.lexsort(keys[::-1])
    boundary = np.zeros(len(order), dtype=bool)
    boundary[0] = True
    for key in keys:
        in_order = key[order]
        boundary[1:] |= in_order[1:] != in_order[:-1]
    starts = np.flatnonzero(boundary)
    return order, starts, (np.cumsum(boundary) - 1).astype(np.uint64)


def _numpy(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    return column.to_numpy()


def _codes(column: pa.ChunkedArray) -> tuple[np.ndarray, pa.Array]:
    """Small integer codes for a string column, and the strings they stand for."""
    if pa.types.is_dictionary(column.type):  # the importer's chDB layout: already coded
        if column.num_chunks == 1:
            encoded = column.chunk(0)
            if len(pc.unique(encoded.dictionary)) == len(encoded.dictionary):  # one code per string
                return encoded.indices.to_numpy(zero_copy_only=False), encoded.dictionary
        column = column.cast(pa.string())
    column = column.combine_chunks()
    bounds = pc.min_max(column)
    if bounds["min"] == bounds["max"]:  # one node per batch, the usual case: no hashing of every row
        return np.zeros(len(column), dtype=np.int32), pa.array([bounds["min"].as_py()], pa.string())
    encoded = pc.dictionary_encode(column)
    return encoded.indices.to_numpy(zero_copy_only=False), encoded.dictionary


def _ip_words(column: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """A fixed_size_binary(16) column as two big-endian 64-bit words: comparing (hi, lo) is comparing
    the 16 bytes, which is how ClickHouse orders IPv6."""
    array = column.combine_chunks()
    if array.type != pa.binary(16):  # e.g. read back from the store as variable-length binary
        array = array.cast(pa.binary(16))
    start = array.offset * 16
    raw = np.frombuffer(array.buffers()[1], dtype=np.uint8)[start : start + len(array) * 16]
    words = raw.view(">u8").reshape(-1, 2).astype(np.uint64)
    return words[:, 0], words[:, 1]


def _ip_array(hi: np.ndarray, lo: np.ndarray) -> pa.Array:
    words = np.empty((len(hi), 2), dtype=">u8")
    words[:, 0], words[:, 1] = hi, lo
    return pa.FixedSizeBinaryArray.from_buffers(pa.binary(16), len(hi), [None, pa.py_buffer(words.tobytes())])


def _ts_array(ns: np.ndarray, nulls: bool = False) -> pa.Array:
    mask = ns == NO_TS if nulls else None
    return pa.array(ns, pa.int64(), mask=mask).cast(_TS)
