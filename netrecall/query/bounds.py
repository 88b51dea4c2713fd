"""The time span a store (or one snapshot) holds: the default bound of every query.

Without --since/--until a query covers everything stored, so a capture imported from last year answers
at once; the bound is still written into the SQL so the engine prunes by the time key.
"""

from __future__ import annotations

from netrecall.errors import NetrecallError
from netrecall.store import Store, sql_identifier

# The time column(s) of each table: (column holding the earliest time, column holding the latest).
TIME_COLUMNS = {
    "packets": ("ts", "ts"),
    "api_calls": ("ts", "ts"),
    "flows": ("first_ts", "last_ts"),
}


def source_table(store: Store, table: str, snapshot: str | None) -> tuple[str, str, dict]:
    """(table name, extra WHERE condition, params) for the live table or a snapshot's copy of it."""
    sql_identifier(table)
    if snapshot is None:
        return table, "1", {}
    name = f"snapshot_{table}"
    if not store.scalar(f"EXISTS TABLE {name}"):
        raise NetrecallError(
            f"no snapshot holds {table} yet (table {name} does not exist): create a snapshot first"
        )
    return name, "snapshot = {snapshot:String}", {"snapshot": snapshot}


# Tables whose sorting key starts with toStartOfMinute(ts): their ends are found by reading in key order.
MINUTE_KEYED = ("packets", "api_calls")


def data_boundaries(
    store: Store, table: str = "packets", snapshot: str | None = None
) -> tuple[int, int] | None:
    """(min_ts_ns, max_ts_ns) of what `table` holds (in the snapshot when named), or None when empty."""
    if table not in TIME_COLUMNS:
        raise NetrecallError(f"no time boundaries for table {table!r}: use one of {', '.join(TIME_COLUMNS)}")
    name, condition, params = source_table(store, table, snapshot)
    if table in MINUTE_KEYED:
        found = _minute_keyed_bounds(store, name, condition, params)
    else:
        first, last = TIME_COLUMNS[table]
        row = store.rows(
            f"SELECT count(), toUnixTimestamp64Nano(min({first})), toUnixTimestamp64Nano(max({last})) "
            f"FROM {name} WHERE {condition}",
            params,
        )[0]
        found = (int(row[1]), int(row[2])) if row[0] else None
    known = "SELECT count() FROM snapshots WHERE name = {snapshot:String}"
    if found is None and snapshot is not None and not store.scalar(known, params):
        raise NetrecallError(f"no snapshot named {snapshot!r}")
    return found


def _minute_keyed_bounds(store: Store, name: str, condition: str, params: dict) -> tuple[int, int] | None:
    # min(ts)/max(ts) would read the whole ts column (~130 ms on 10M rows here); the first and last
    # minute come from the first granules in key order, then min/max inside that one minute.
    ends = []
    for direction, aggregate in (("ASC", "min"), ("DESC", "max")):
        minute = store.rows(
            f"SELECT toStartOfMinute(ts) AS m FROM {name} WHERE {condition} ORDER BY m {direction} LIMIT 1",
            params,
        )
        if not minute:
            return None
        value = store.scalar(
            f"SELECT toUnixTimestamp64Nano({aggregate}(ts)) FROM {name} "
            f"WHERE {condition} AND toStartOfMinute(ts) = {{minute:DateTime}}",
            {**params, "minute": minute[0][0]},
        )
        ends.append(int(value))
    return ends[0], ends[1]


def covering_bounds(
    store: Store, table: str = "api_calls", snapshot: str | None = None
) -> tuple[int, int] | None:
    """A window holding everything `table` stores, to the minute: [start of the first minute, end of the
    last]. One statement reading the first and last granules in key order (data_boundaries needs four
    for nanosecond-exact ends); what a default query bound needs."""
    if table not in MINUTE_KEYED:
        return data_boundaries(store, table, snapshot)
    name, condition, params = source_table(store, table, snapshot)
    first, last = (
        f"(SELECT toUnixTimestamp(toStartOfMinute(ts)) AS m FROM {name} WHERE {condition} "
        f"ORDER BY m {d} LIMIT 1)"
        for d in ("ASC", "DESC")
    )
    row = store.rows(
        f"SELECT {first}, {last}, (SELECT count() FROM {name} WHERE {condition} LIMIT 1)", params
    )[0]
    if not row[2]:
        return data_boundaries(store, table, snapshot)  # empty: None, or the unknown-snapshot error
    return int(row[0]) * 1_000_000_000, (int(row[1]) + 60) * 1_000_000_000 - 1
