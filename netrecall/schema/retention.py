"""The rolling window: a TTL counted from when rows were stored, and a byte budget over the rolling tables.

Both rules touch only ROLLING_TABLES (packets, flows, workloads, api_calls); snapshots, imports, exports
and the metadata are exempt. The TTL is ClickHouse's own (`TTL stored_at + ...`, whole parts dropped
thanks to `ttl_only_drop_parts = 1`); the budget is enforced here, by dropping the oldest `stored_at`
hour partitions (the same hour in every rolling table) until the active parts fit. The hub and the agent
call `apply_retention(store)` periodically; `netrecall retention` calls it once and shows the result.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime

from netrecall.errors import NetrecallError
from netrecall.schema.migrate import current_ttl_seconds
from netrecall.schema.tables import LOCAL_SUFFIX, ROLLING_TABLES
from netrecall.store import Store

MIN_TTL_SECONDS = 60
MAX_TTL_SECONDS = 10 * 366 * 86400
_PARTITION_ID = re.compile(r"^\d+$")  # toStartOfHour(stored_at): the hour's epoch seconds


@dataclass
class TableUsage:
    """What one table holds on disk (active parts only)."""

    table: str
    rows: int = 0
    bytes_on_disk: int = 0
    compressed_bytes: int = 0
    uncompressed_bytes: int = 0
    partitions: int = 0
    oldest_stored: datetime | None = None
    newest_stored: datetime | None = None

    @property
    def ratio(self) -> float:
        """Uncompressed / compressed: how much the codecs save (0 when empty)."""
        return self.uncompressed_bytes / self.compressed_bytes if self.compressed_bytes else 0.0


@dataclass
class RetentionReport:
    ttl_seconds: int
    max_bytes: int  # 0: no byte budget
    used_bytes: int
    tables: list[TableUsage]
    dropped_hours: list[datetime] = field(default_factory=list)  # partitions dropped by this pass
    over_budget: bool = False  # still above the budget after keeping only the newest hour

    @property
    def oldest_stored(self) -> datetime | None:
        return min((t.oldest_stored for t in self.tables if t.oldest_stored), default=None)

    @property
    def newest_stored(self) -> datetime | None:
        return max((t.newest_stored for t in self.tables if t.newest_stored), default=None)


def ttl_expression(ttl_seconds: int) -> str:
    """The TTL of every rolling table. Counted from stored_at, never from the packet's own time: an old
    capture imported today must not expire on arrival (ClickHouse drops rows already expired on insert)."""
    return f"stored_at + toIntervalSecond({int(ttl_seconds)})"


def check_ttl(ttl_seconds: int) -> int:
    if not isinstance(ttl_seconds, int) or isinstance(ttl_seconds, bool):
        raise NetrecallError(f"invalid TTL {ttl_seconds!r}: expected whole seconds")
    if not MIN_TTL_SECONDS <= ttl_seconds <= MAX_TTL_SECONDS:
        raise NetrecallError(
            f"invalid TTL {format_duration(ttl_seconds)}: "
            f"it must be between 1m and {MAX_TTL_SECONDS // 86400}d"
        )
    return ttl_seconds


def check_max_bytes(max_bytes: int) -> int:
    if not isinstance(max_bytes, int) or isinstance(max_bytes, bool) or max_bytes < 0:
        raise NetrecallError(
            f"invalid byte budget {max_bytes!r}: expected a size such as 10GiB, or 0 for none"
        )
    return max_bytes


def stored_max_bytes(store: Store) -> int:
    """The byte budget last set with `netrecall retention --max-bytes` (0: none)."""
    value = store.scalar("SELECT argMax(value, updated_at) FROM netrecall_meta WHERE key = 'max_bytes'")
    return int(value) if value else 0


def apply_retention(
    store: Store, ttl_seconds: int | None = None, max_bytes: int | None = None
) -> RetentionReport:
    """Set the TTL and/or the byte budget when given (both are remembered), then enforce the budget.

    Safe to call periodically with no arguments: it enforces the remembered budget and reports usage.
    """
    if ttl_seconds is not None:
        check_ttl(ttl_seconds)
    if max_bytes is not None:
        check_max_bytes(max_bytes)
    tables = _existing_rolling_tables(store)
    if "packets" in tables:  # before MODIFY TTL, which drops what the new TTL expires at once
        _record_horizon(
            store,
            "stored_at < now() - toIntervalSecond({ttl:UInt64})",
            {"ttl": current_ttl_seconds(store) if ttl_seconds is None else ttl_seconds},
        )
    if ttl_seconds is not None:
        for table in tables:
            store.command(
                f"ALTER TABLE {_alter_target(store, table)} MODIFY TTL {ttl_expression(ttl_seconds)}"
            )
        _remember(store, "ttl_seconds", ttl_seconds)
    if max_bytes is not None:
        _remember(store, "max_bytes", max_bytes)
    budget = stored_max_bytes(store) if max_bytes is None else max_bytes
    dropped, over = _enforce_budget(store, tables, budget) if budget else ([], False)
    clear_outdated_parts(store)  # what merges and the drops above replaced: off the disk the budget counts
    usage = table_usage(store, tables)
    return RetentionReport(
        ttl_seconds=current_ttl_seconds(store),
        max_bytes=budget,
        used_bytes=sum(t.bytes_on_disk for t in usage),
        tables=usage,
        dropped_hours=dropped,
        over_budget=over,
    )


# A partition id no table has (ids are hour epochs, or 'all'): dropping it drops nothing, and is the engine
# request that also removes the table's outdated parts (see clear_outdated_parts).
_NO_PARTITION = "none"


def clear_outdated_parts(store: Store) -> int:
    """Remove from disk the parts a merge (or a dropped partition) replaced; returns how many were listed.

    The embedded engine never runs ClickHouse's background cleanup of outdated parts (chdb-io/chdb#107):
    they stay on disk, unlisted by the byte budget, across processes (measured: a store whose packets
    were 45 MB of active parts held 90 MB on disk, its call_latency 540 part directories for 5 active
    ones). Dropping a partition makes the engine clear the table's outdated parts itself, so each MergeTree
    table gets a DROP of a partition it cannot have. A server cleans up by itself: nothing to do there."""
    if store.kind != "chdb":
        return 0
    outdated = store.scalar(
        "SELECT count() FROM system.parts WHERE database = currentDatabase() AND NOT active"
    )
    tables = store.rows(
        "SELECT name FROM system.tables WHERE database = currentDatabase() AND engine LIKE '%MergeTree'"
    )
    for (table,) in tables:  # every table: outdated parts of earlier processes load in the background
        store.command(f"ALTER TABLE `{table}` DROP PARTITION ID '{_NO_PARTITION}'")
    return int(outdated or 0)


def table_usage(store: Store, tables: list[str]) -> list[TableUsage]:
    """Rows, bytes and stored-time range of each table, from the active parts (no table scan)."""
    found = {
        row["table"]: row
        for row in store.dicts(
            "SELECT table, sum(rows) AS rows, sum(bytes_on_disk) AS bytes_on_disk,"
            " sum(data_compressed_bytes) AS compressed, sum(data_uncompressed_bytes) AS uncompressed,"
            " uniqExact(partition_id) AS partitions,"
            " toUnixTimestamp(min(min_time)) AS oldest, toUnixTimestamp(max(max_time)) AS newest"
            f" FROM {_parts(store)} WHERE database = currentDatabase() AND active"
            " AND table IN {t:Array(String)} GROUP BY table",
            {"t": _stored_names(store, tables)},
        )
    }
    found = {name.removesuffix(LOCAL_SUFFIX): row for name, row in found.items()}
    usage = []
    for table in tables:
        row = found.get(table)
        if row is None:
            usage.append(TableUsage(table))
            continue
        usage.append(
            TableUsage(
                table=table,
                rows=int(row["rows"]),
                bytes_on_disk=int(row["bytes_on_disk"]),
                compressed_bytes=int(row["compressed"]),
                uncompressed_bytes=int(row["uncompressed"]),
                partitions=int(row["partitions"]),
                oldest_stored=_utc(row["oldest"]),
                newest_stored=_utc(row["newest"]),
            )
        )
    return usage


def _enforce_budget(store: Store, tables: list[str], budget: int) -> tuple[list[datetime], bool]:
    """Drop the oldest hours, in every rolling table at once, until the active parts fit the budget.

    The newest hour is always kept: it is the one being written, and dropping it would fight the
    writers; when that hour alone exceeds the budget the report says so (over_budget).
    """
    hours: dict[int, int] = {}
    for partition_id, size in store.rows(
        f"SELECT partition_id, sum(bytes_on_disk) FROM {_parts(store)}"
        " WHERE database = currentDatabase() AND active AND table IN {t:Array(String)} GROUP BY partition_id",
        {"t": _stored_names(store, tables)},
    ):
        if _PARTITION_ID.match(partition_id):
            hours[int(partition_id)] = int(size)
    used = sum(hours.values())
    ordered = sorted(hours)
    dropped: list[datetime] = []
    while used > budget and len(ordered) > 1:
        hour = ordered.pop(0)
        if "packets" in tables:
            _record_horizon(store, "_partition_id = {p:String}", {"p": str(hour)})
            _count_dropped(store, hour)
        for table in tables:
            # DROP PARTITION of an absent partition is a no-op; the id is digits only (checked above)
            store.command(f"ALTER TABLE {_alter_target(store, table)} DROP PARTITION ID '{hour}'")
        used -= hours[hour]
        dropped.append(datetime.fromtimestamp(hour, tz=UTC))
    return dropped, used > budget


# On a cluster (docs/scaling.md) the rows live in the shards' <table>_local tables: the TTL and partition
# drops go to them ON CLUSTER, and usage is read from every replica's parts. The budget then counts all
# replicas' bytes, i.e. the cluster's disk, not one shard's.
def _parts(store: Store) -> str:
    return f"clusterAllReplicas({store.cluster}, system.parts)" if store.cluster else "system.parts"


def _stored_names(store: Store, tables: list[str]) -> list[str]:
    return [t + LOCAL_SUFFIX for t in tables] if store.cluster else tables


def _alter_target(store: Store, table: str) -> str:
    return f"{table}{LOCAL_SUFFIX} ON CLUSTER {store.cluster}" if store.cluster else table


def _existing_rolling_tables(store: Store) -> list[str]:
    present = {
        row[0]
        for row in store.rows(
            "SELECT name FROM system.tables WHERE database = currentDatabase() AND name IN {t:Array(String)}",
            {"t": ROLLING_TABLES},
        )
    }
    return [t for t in ROLLING_TABLES if t in present]


def _record_horizon(store: Store, where: str, params: dict) -> None:
    """Remember the newest packet time among the packets about to go (past the TTL: ClickHouse drops them on
    its next TTL merge; or a partition dropped over the budget), so a window reaching back into them is
    refused as partial rather than silently clamped (query/bounds.py: fit_window)."""
    from netrecall.query.bounds import HORIZON_KEY, retention_horizon

    newest = store.scalar(
        f"SELECT toUnixTimestamp64Nano(max(ts)) FROM packets WHERE {where} HAVING count() > 0", params
    )
    if newest is None:
        return
    known = retention_horizon(store)
    if known is None or int(newest) > known:
        _remember(store, HORIZON_KEY, int(newest))


DROPPED_PREFIX = "retention_dropped_packets|"


def _count_dropped(store: Store, hour: int) -> None:
    """Count, per node, the packets of an hour about to be dropped over the budget: the named counter a
    reconciliation of sent against stored packets needs (docs/reliability.md). One key per hour and
    node, so a pass interrupted between counting and dropping counts the same rows again, not twice."""
    for node, count in store.rows(
        "SELECT node, count() FROM packets WHERE _partition_id = {p:String} GROUP BY node", {"p": str(hour)}
    ):
        _remember(store, f"{DROPPED_PREFIX}{hour}|{node}", int(count))


def dropped_packets(store: Store) -> dict[str, int]:
    """Packets the byte budget dropped so far, per node (the `retention_dropped_packets` counter)."""
    found: dict[str, int] = {}
    for key, value in store.rows(
        "SELECT key, argMax(value, updated_at) FROM netrecall_meta "
        "WHERE startsWith(key, {p:String}) GROUP BY key",
        {"p": DROPPED_PREFIX},
    ):
        node = key.split("|", 2)[2]
        found[node] = found.get(node, 0) + int(value)
    return found


def _remember(store: Store, key: str, value: int) -> None:
    store.command(
        "INSERT INTO netrecall_meta (key, value) VALUES ({k:String}, {v:String})", {"k": key, "v": str(value)}
    )


def _utc(epoch: int | None) -> datetime | None:
    """Epoch seconds (timezone-proof across servers) -> UTC; 0 means the part has no time key."""
    return datetime.fromtimestamp(int(epoch), tz=UTC) if epoch else None


def format_bytes(size: int) -> str:
    """1536 -> '1.5 KiB' (binary units, as --max-bytes takes them)."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"


def format_duration(seconds: int) -> str:
    """259200 -> '72h', 5400 -> '1h30m', 45 -> '45s' (what --ttl accepts back)."""
    if seconds <= 0:
        return f"{seconds}s"
    parts = []
    for unit, size in (("h", 3600), ("m", 60), ("s", 1)):
        count, seconds = divmod(seconds, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)
