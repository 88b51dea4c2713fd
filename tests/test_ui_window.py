"""Windows as people give them (issue #15, item 5), on the real engine with real captures: a window that only
starts before the first capture is clamped to the data with a note, for snapshots, exports and the page's
time picker alike; one reaching into packets retention really dropped (a byte-budget pass, a TTL pass) is
refused unless --partial, which says what is missing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import DPKT_EXAMPLES
from export_helpers import load, packets

from netrecall.errors import NetrecallError
from netrecall.hub.ui.queries import fitted_window
from netrecall.query.bounds import data_boundaries, retention_horizon
from netrecall.query.export import export_pcap
from netrecall.query.selection import PacketFilters
from netrecall.query.snapshots import create_snapshot
from netrecall.schema.retention import apply_retention
from netrecall.timeutil import format_time_ns

OLD = DPKT_EXAMPLES / "http.pcap"  # 2004
NEW = Path(__file__).parent / "captures" / "lo-http.pcap"  # recorded here, years later
SECOND = 1_000_000_000


def _stored_hours_ago(store, hours: int) -> None:
    """Make every packet stored so far look stored `hours` ago (its own hour partition, past a short TTL)."""
    store.command("CREATE TABLE aged AS packets")
    store.command(
        f"INSERT INTO aged SELECT * REPLACE (now() - toIntervalHour({hours}) AS stored_at) FROM packets"
    )
    store.command("TRUNCATE TABLE packets")
    store.command("INSERT INTO packets SELECT * FROM aged")
    store.command("DROP TABLE aged")


def test_a_window_before_the_first_capture_is_clamped_with_a_note(store, tmp_path):
    load(store, OLD)
    first, last = data_boundaries(store, "packets")
    assert retention_horizon(store) is None
    # people type whole seconds: 17:00:39 for data starting at 17:00:39.425
    since = first - first % SECOND - 60 * SECOND
    made = create_snapshot(store, "typed", since, last + 3600 * SECOND)
    assert (made.since_ns, made.until_ns) == (first, last + 1)
    assert made.packets == len(packets(OLD))
    assert any(f"before the first stored packet ({format_time_ns(first)})" in n for n in made.notes)
    assert any("after the last stored packet" in n for n in made.notes)

    out = tmp_path / "typed.pcap"
    result = export_pcap(store, out, PacketFilters(since=format_time_ns(since)))
    assert result.packets == len(packets(OLD))
    manifest = json.loads(Path(result.manifest_path).read_text())
    assert manifest["window"]["since"] == format_time_ns(first)
    assert "nothing was dropped" in manifest["window_notes"][0] and "nothing was dropped" in result.note

    picked = fitted_window(store, since, None)
    assert picked["since"] == format_time_ns(first) and "lost" not in picked
    assert "nothing was dropped" in picked["notes"][0]


@pytest.mark.parametrize("rule", ["budget", "ttl"])
def test_a_window_retention_cut_is_refused_unless_partial(store, tmp_path, rule):
    load(store, OLD)
    old_first, old_last = data_boundaries(store, "packets")
    _stored_hours_ago(store, 3)
    load(store, NEW)
    new_first = int(
        store.scalar("SELECT toUnixTimestamp64Nano(min(ts)) FROM packets WHERE stored_at > now() - 3600")
    )
    assert new_first > old_last

    report = (
        apply_retention(store, max_bytes=1) if rule == "budget" else apply_retention(store, ttl_seconds=3600)
    )
    # the horizon is the newest packet of the dropped (or expiring) partition: the old capture's last one
    assert retention_horizon(store) == old_last
    if rule == "budget":
        assert report.dropped_hours and data_boundaries(store, "packets")[0] == new_first
        store.command("INSERT INTO netrecall_meta (key, value) VALUES ('max_bytes', '0')")
    else:
        store.command(
            "ALTER TABLE packets DELETE WHERE stored_at < now() - toIntervalHour(1)",
            settings={"mutations_sync": 2},
        )  # what ClickHouse's TTL merge does, without the wait
    first, last = data_boundaries(store, "packets")
    assert first == new_first

    cut = old_first - SECOND  # reaches back into what retention took
    with pytest.raises(NetrecallError, match=r"retention dropped the packets of .*--partial") as refused:
        create_snapshot(store, "cut", cut, last + 1)
    assert format_time_ns(old_last) in str(refused.value) and "\n" not in str(refused.value)
    with pytest.raises(NetrecallError, match="retention dropped the packets"):
        export_pcap(store, tmp_path / "cut.pcap", PacketFilters(since=format_time_ns(cut)))
    assert not (tmp_path / "cut.pcap").exists()

    partial = create_snapshot(store, "cut", cut, last + 1, allow_partial=True)
    assert partial.since_ns == first and partial.notes[0].startswith("partial: retention dropped")
    exported = export_pcap(
        store, tmp_path / "cut.pcap", PacketFilters(since=format_time_ns(cut), partial=True)
    )
    assert exported.packets == len(packets(NEW)) and "partial: retention dropped" in exported.note

    # after the horizon, before the first stored packet: nothing was dropped there, so clamped
    gap = old_last + SECOND
    assert gap < first
    clamped = create_snapshot(store, "after-horizon", gap, last + 1)
    assert clamped.since_ns == first and "nothing was dropped" in clamped.notes[0]

    # the page never refuses to look: it says which part is gone
    picked = fitted_window(store, cut, None)
    assert picked["since"] == format_time_ns(first)
    assert picked["lost"] == {"since": format_time_ns(cut), "until": format_time_ns(old_last)}
