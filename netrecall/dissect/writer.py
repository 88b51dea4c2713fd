"""Calls out: enrichment from the packets, de-duplication against what is stored, one Arrow insert per chunk.

Ids are deterministic (see calls.call_id), and api_calls is a ReplacingMergeTree, so a re-dissected call
could only ever replace itself. To keep even `count()` without FINAL exact, a call is inserted only when
no stored row with its id is at least as complete (has a response, is not partial, reaches as far).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from netrecall.dissect.calls import Call
from netrecall.schema.tables import API_CALLS
from netrecall.store import Store

_BINARY = {"request_body", "response_body"}


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
    table = pa.Table.from_struct_array(pa.array(calls, STRUCT))
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
