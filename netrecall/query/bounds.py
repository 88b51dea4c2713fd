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


def data_boundaries(
    store: Store, table: str = "packets", snapshot: str | None = None
) -> tuple[int, int] | None:
    """(min_ts_ns, max_ts_ns) of what `table` holds (in the snapshot when named), or None when empty."""
    if table not in TIME_COLUMNS:
        raise NetrecallError(f"no time boundaries for table {table!r}: use one of {', '.join(TIME_COLUMNS)}")
    first, last = TIME_COLUMNS[table]
    name, condition, params = source_table(store, table, snapshot)
    row = store.rows(
        f"SELECT count(), toUnixTimestamp64Nano(min({first})), toUnixTimestamp64Nano(max({last})) "
        f"FROM {name} WHERE {condition}",
        params,
    )[0]
    if not row[0]:
        if snapshot is not None and not store.scalar(
            "SELECT count() FROM snapshots WHERE name = {snapshot:String}", params
        ):
            raise NetrecallError(f"no snapshot named {snapshot!r}")
        return None
    return int(row[1]), int(row[2])
