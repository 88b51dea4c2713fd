"""The time span a store (or one snapshot) holds: the default bound of every query, and the rule that fits
a window people give to that span.

Without --since/--until a query covers everything stored, so a capture imported from last year answers
at once; the bound is still written into the SQL so the engine prunes by the time key. A window that
starts before the first stored packet is clamped to the data with a note; it is refused (or needs
--partial) only when retention dropped packets inside it (`fit_window`, `retention_horizon`).
"""

from __future__ import annotations

from dataclasses import dataclass

from netrecall.errors import NetrecallError
from netrecall.store import Store, sql_identifier
from netrecall.timeutil import format_time_ns

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
        found = key_ordered_bounds(store, name, condition, params)
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


def key_ordered_bounds(store: Store, name: str, condition: str, params: dict) -> tuple[int, int] | None:
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


# --- windows as people give them -------------------------------------------------------------------------

HORIZON_KEY = "retention_horizon_ns"  # netrecall_meta: the newest packet time retention has dropped


def retention_horizon(store: Store) -> int | None:
    """The newest packet time that retention dropped (None when it never dropped anything).

    Written by the retention pass (schema/retention.py) just before it drops hour partitions over the byte
    budget or past the TTL, so a window reaching back before the oldest stored packet can tell "retention
    took that" from "nothing was ever captured there"."""
    value = store.scalar(
        "SELECT argMax(value, updated_at) FROM netrecall_meta WHERE key = {k:String}", {"k": HORIZON_KEY}
    )
    return int(value) if value else None


@dataclass(frozen=True)
class Window:
    """A window fitted to the stored data: [since_ns, until_ns) and what was changed, in sentences."""

    since_ns: int
    until_ns: int  # exclusive
    notes: tuple[str, ...] = ()
    lost_ns: tuple[int, int] | None = None  # the part of the window retention dropped (partial accepted)


def fit_window(
    since_ns: int,
    until_ns: int,
    first_ns: int,
    last_ns: int,
    horizon_ns: int | None,
    allow_partial: bool = False,
    what: str = "packet",
    partial_hint: str = "use --since at or after it, or --partial",
) -> Window:
    """Clamp [since, until) to the stored data [first, last]; refuse only when retention dropped data inside.

    A window that merely starts before the first capture (people type 17:00:39 for data starting at
    17:00:39.425) or ends after the last one is clamped, with a note saying so. When the retention horizon
    lies inside the window's uncovered start, packets really were dropped there: refused, unless
    `allow_partial`, which keeps the cut window and says what is missing."""
    notes: list[str] = []
    lost: tuple[int, int] | None = None
    if since_ns < first_ns:
        if horizon_ns is not None and horizon_ns >= since_ns:
            gone = (since_ns, min(horizon_ns, first_ns - 1))
            text = (
                f"retention dropped the {what}s of {format_time_ns(gone[0])} .. {format_time_ns(gone[1])} "
                f"(the oldest stored {what} is from {format_time_ns(first_ns)})"
            )
            if not allow_partial:
                raise NetrecallError(
                    f"the window starts at {format_time_ns(since_ns)} but {text}; {partial_hint}"
                )
            notes.append(f"partial: {text}")
            lost = gone
        else:
            notes.append(
                f"the window starts at {format_time_ns(since_ns)}, before the first stored {what} "
                f"({format_time_ns(first_ns)}): nothing was dropped, the window starts at the data"
            )
        since_ns = first_ns
    if until_ns > last_ns + 1:
        notes.append(
            f"the window ends at {format_time_ns(until_ns)}, after the last stored {what} "
            f"({format_time_ns(last_ns)}): it ends with the data"
        )
        until_ns = last_ns + 1
    return Window(since_ns, until_ns, tuple(notes), lost)
