"""Retention on real inserted data: the TTL counts from storage time, the byte budget drops the oldest
hours of every rolling table and keeps the newest, snapshots are exempt, bad values are one line."""

from __future__ import annotations

import random
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from netrecall.cli.retention import parse_budget_bytes, parse_ttl_seconds
from netrecall.errors import NetrecallError
from netrecall.schema.migrate import current_ttl_seconds
from netrecall.schema.retention import (
    apply_retention,
    clear_outdated_parts,
    format_duration,
    stored_max_bytes,
)
from netrecall.schema.tables import ROLLING_TABLES, TABLES
from netrecall.store import Store

FRAME_BYTES = 2000
FRAMES_PER_HOUR = 100  # ~200 KB of incompressible frames per hour: parts overhead is small beside it


def hour_start(store: Store) -> int:
    return int(store.scalar("SELECT toUnixTimestamp(toStartOfHour(now()))"))


def insert_hour(store: Store, hour_epoch: int, table: str = "packets", seed: int = 0) -> None:
    """Packets stored in the hour starting at `hour_epoch`, captured long ago (2020)."""
    rng = random.Random(seed or hour_epoch)
    values = ", ".join(
        f"(toDateTime64('2020-03-01 00:00:00', 9) + {i}, toDateTime({hour_epoch + 60 + i}), 'n1',"
        f" unhex('{rng.randbytes(FRAME_BYTES).hex()}'))"
        for i in range(FRAMES_PER_HOUR)
    )
    columns = (
        "(snapshot, ts, stored_at, node, data)"
        if table.startswith("snapshot_")
        else "(ts, stored_at, node, data)"
    )
    if table.startswith("snapshot_"):
        values = values.replace("(toDateTime64", "('keep', toDateTime64")
    store.command(f"INSERT INTO {table} {columns} VALUES {values}")


def stored_hours(store: Store, table: str) -> list[int]:
    return [
        int(row[0])
        for row in store.rows(
            f"SELECT DISTINCT toUnixTimestamp(toStartOfHour(stored_at)) AS h FROM {table} ORDER BY h"
        )
    ]


def ttl_of(store: Store, table: str) -> str:
    return store.scalar(f"SHOW CREATE TABLE {table}")


def test_old_captures_imported_now_are_kept_and_ttl_counts_from_stored_at(any_store: Store):
    now_hour = hour_start(any_store)
    apply_retention(any_store, ttl_seconds=3600)
    # captured in 2020 but stored now: kept
    any_store.command(
        "INSERT INTO packets (ts, node, data) VALUES ('2020-03-01 00:00:00.000000001', 'old-capture', 'x')"
    )
    # stored 5 hours ago (its own hour partition): expired under a one-hour TTL
    insert_hour(any_store, now_hour - 5 * 3600)
    any_store.command("OPTIMIZE TABLE packets FINAL")
    kept = any_store.rows("SELECT node, toYear(ts) FROM packets")
    assert kept == [("old-capture", 2020)]


def test_ttl_change_is_visible_in_show_create_table_and_remembered(any_store: Store):
    report = apply_retention(any_store, ttl_seconds=5 * 3600)
    assert report.ttl_seconds == 5 * 3600 == current_ttl_seconds(any_store)
    for table in ROLLING_TABLES:
        assert "TTL stored_at + toIntervalSecond(18000)" in ttl_of(any_store, table), table
    for table in {t.name for t in TABLES} - set(ROLLING_TABLES):  # snapshots, imports, exports, meta
        assert "TTL" not in ttl_of(any_store, table).split("ORDER BY", 1)[1], table


def test_budget_drops_the_oldest_hours_everywhere_and_keeps_the_newest(any_store: Store):
    now_hour = hour_start(any_store)
    hours = [now_hour - k * 3600 for k in (3, 2, 1, 0)]
    for hour in hours:
        insert_hour(any_store, hour)
    # an api call stored in the oldest hour goes with it; a snapshot stored then is exempt
    any_store.command(
        "INSERT INTO api_calls (id, ts, stored_at, protocol)"
        " VALUES ('c-old', now64(9), toDateTime({h:UInt32}), 'http')",
        {"h": hours[0] + 30},
    )
    insert_hour(any_store, hours[0], table="snapshot_packets")
    sizes = {
        int(pid): int(size)
        for pid, size in any_store.rows(
            "SELECT partition_id, sum(bytes_on_disk) FROM system.parts WHERE database = currentDatabase()"
            " AND active AND table IN {t:Array(String)} GROUP BY partition_id",
            {"t": ROLLING_TABLES},
        )
    }
    assert sorted(sizes) == hours
    budget = sizes[hours[2]] + sizes[hours[3]] + sizes[hours[1]] // 2  # room for the newest two hours only
    report = apply_retention(any_store, max_bytes=budget)
    assert [int(h.timestamp()) for h in report.dropped_hours] == hours[:2]
    assert not report.over_budget and report.used_bytes <= budget
    assert stored_hours(any_store, "packets") == hours[2:]
    assert any_store.scalar("SELECT count() FROM api_calls") == 0
    assert any_store.scalar("SELECT count() FROM snapshot_packets") == FRAMES_PER_HOUR  # exempt
    assert stored_max_bytes(any_store) == budget
    packets = next(t for t in report.tables if t.table == "packets")
    assert packets.rows == 2 * FRAMES_PER_HOUR and packets.partitions == 2
    assert packets.oldest_stored == datetime.fromtimestamp(hours[2] + 60, tz=UTC)
    assert packets.newest_stored == datetime.fromtimestamp(hours[3] + 60 + FRAMES_PER_HOUR - 1, tz=UTC)


def test_periodic_pass_enforces_the_remembered_budget_and_keeps_the_newest_hour(store: Store):
    now_hour = hour_start(store)
    apply_retention(store, max_bytes=1)  # nothing to drop yet, but remembered
    for k in (2, 1, 0):
        insert_hour(store, now_hour - k * 3600)
    report = apply_retention(store)  # what the hub runs periodically: no arguments
    assert len(report.dropped_hours) == 2
    assert report.over_budget  # the newest hour alone is over one byte, and it is kept
    assert stored_hours(store, "packets") == [now_hour]
    assert apply_retention(store, max_bytes=0).dropped_hours == []  # 0 removes the budget
    assert stored_max_bytes(store) == 0


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"ttl_seconds": 0}, "invalid TTL"),
        ({"ttl_seconds": 59}, "between 1m"),
        ({"ttl_seconds": 10**12}, "between 1m"),
        ({"max_bytes": -1}, "invalid byte budget"),
    ],
)
def test_bad_values_are_one_line_errors(store: Store, kwargs: dict, fragment: str):
    with pytest.raises(NetrecallError) as caught:
        apply_retention(store, **kwargs)
    assert fragment in str(caught.value) and "\n" not in str(caught.value)


def test_cli_values_parse_or_fail_in_one_line():
    assert parse_ttl_seconds("72h") == 259_200
    assert parse_ttl_seconds("1h30m") == 5400
    assert parse_budget_bytes("10GiB") == 10 * 2**30
    assert parse_budget_bytes("off") == 0
    assert format_duration(259_200) == "72h" and format_duration(5400) == "1h30m"
    for bad in ("1.5s", "abc", "-3h", ""):
        with pytest.raises(NetrecallError):
            parse_ttl_seconds(bad)
    for bad in ("lots", "-1", "10XB"):
        with pytest.raises(NetrecallError):
            parse_budget_bytes(bad)


def test_retention_command_end_to_end(tmp_path):
    url = f"chdb://{tmp_path / 'store'}"
    run = [sys.executable, "-m", "netrecall", "retention", "--store", url]
    done = subprocess.run(
        [*run, "--ttl", "48h", "--max-bytes", "1GiB"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "ttl: 48h after storage" in done.stdout and "budget: 1.0 GiB" in done.stdout
    shown = subprocess.run([*run, "--format", "json"], capture_output=True, text=True, timeout=120)
    assert '"ttl_seconds": 172800' in shown.stdout and '"max_bytes": 1073741824' in shown.stdout
    bad = subprocess.run([*run, "--ttl", "forever"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [
        "netrecall: error: invalid duration 'forever': expected forms like 30s, 5m, 72h, 1h30m"
    ]


def test_outdated_parts_leave_the_disk_and_the_rows_stay(store: Store):
    """A merge's source parts stay on an embedded store's disk (the engine never cleans them up) until
    clear_outdated_parts; rows and their bytes are unchanged by it."""
    if store.kind != "chdb":
        pytest.skip("a server removes outdated parts itself")
    now_hour = hour_start(store)
    for seed in (1, 2, 3):
        insert_hour(store, now_hour, seed=seed)  # three parts of one partition
    store.command("OPTIMIZE TABLE packets FINAL")  # merged into one: the three are outdated now
    path = store.scalar(
        "SELECT data_paths[1] FROM system.tables WHERE database = currentDatabase() AND name = 'packets'"
    )
    on_disk = lambda: sorted(p.name for p in Path(path).iterdir() if p.name[0].isdigit())  # noqa: E731
    active = [
        r[0]
        for r in store.rows(
            "SELECT name FROM system.parts "
            "WHERE database = currentDatabase() AND table = 'packets' AND active"
        )
    ]
    digest = "SELECT count(), sum(cityHash64(data)) FROM packets"
    before = store.rows(digest)
    assert len(active) == 1 and len(on_disk()) == 4

    assert clear_outdated_parts(store) >= 3
    assert on_disk() == active
    assert store.rows(digest) == before
    assert store.rows(digest)[0][0] == 3 * FRAMES_PER_HOUR
