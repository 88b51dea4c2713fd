"""Snapshots on the real engine: what a snapshot copies, that it outlives a retention pass that empties
the live tables, and that its portable file round-trips into another store byte for byte."""

from __future__ import annotations

import json
import uuid
import zipfile
from pathlib import Path

import pytest
from conftest import DPKT_EXAMPLES
from export_helpers import EXPORT_CAPTURES, MapResolver, assert_same_packets, load, packets

from netrecall.errors import NetrecallError
from netrecall.query.export import export_pcap
from netrecall.query.selection import PacketFilters
from netrecall.query.snapshots import (
    create_snapshot,
    delete_snapshot,
    export_snapshot,
    import_snapshot,
    list_snapshots,
    resolve_window,
)
from netrecall.schema.migrate import ensure_schema
from netrecall.schema.tables import ROLLING_TABLES, SNAPSHOT_TABLES
from netrecall.store import open_store
from netrecall.timeutil import parse_time_ns

HTTP = DPKT_EXAMPLES / "http.pcap"
WHOLE = (parse_time_ns("2004-05-13T10:17:07Z"), parse_time_ns("2004-05-13T10:18:00Z"))
PODS = {
    "10.77.0.1": ("shop", "client-1", {"app": "client"}),
    "10.77.0.2": ("shop", "server-1", {"app": "web"}),
}


def _fingerprint(store, table: str, name: str) -> tuple[int, int]:
    """Row count and an order-independent hash of every column of one snapshot's rows."""
    return store.rows(
        f"SELECT count(), groupBitXor(cityHash64(*)) FROM {table} WHERE snapshot = {{n:String}}", {"n": name}
    )[0]


def test_snapshot_tables_are_outside_retention():
    names = {t.name for t in SNAPSHOT_TABLES}
    assert names == {"snapshot_packets", "snapshot_flows", "snapshot_workloads", "snapshot_api_calls"}
    assert not names & set(ROLLING_TABLES)
    assert all(
        not t.ttl and t.partition_by == "snapshot" and t.columns[0][0] == "snapshot" for t in SNAPSHOT_TABLES
    )


def test_snapshot_copies_the_window_and_survives_retention(store, tmp_path):
    load(store, HTTP)
    load(store, EXPORT_CAPTURES / "veth-ns.pcap", resolver=MapResolver(PODS))
    store.command(
        "INSERT INTO workloads (ip, kind, name, namespace, valid_from, valid_to) VALUES "
        "('::ffff:65.208.228.223', 'pod', 'web-old', 'www', '2004-05-13 09:00:00', '2004-05-13 11:00:00'), "
        "('::ffff:65.208.228.223', 'pod', 'web-new', 'www', '2004-05-13 11:00:00', '2262-04-11 00:00:00'), "
        "('::ffff:10.9.9.9', 'pod', 'before', 'www', '2004-05-13 08:00:00', '2004-05-13 09:00:00')"
    )
    store.command(
        "INSERT INTO api_calls (id, ts, protocol, flow_id) SELECT 'c1', min(ts), 'http', any(flow_id) "
        "FROM packets WHERE dst_port = 80 AND toYear(ts) = 2004"
    )
    before = export_pcap(
        store,
        tmp_path / "live.pcap",
        PacketFilters(since="2004-05-13T10:17:07Z", until="2004-05-13T10:18:00Z"),
    )
    info = create_snapshot(store, "evidence", *WHOLE, allow_partial=True, note="ticket 42")
    assert (info.packets, info.workloads, info.api_calls) == (len(packets(HTTP)), 1, 1)
    assert store.rows("SELECT name FROM snapshot_workloads") == [("web-old",)]  # the history of the window
    assert info.flows == store.scalar(
        "SELECT uniqExact(flow_id) FROM packets WHERE toYear(ts) = 2004 AND ip_version != 0"
    )
    listed = list_snapshots(store)
    assert [(s["name"], s["packets"], s["note"]) for s in listed] == [("evidence", info.packets, "ticket 42")]
    # flows rebuilt from the snapshot's packets agree with the live view for the same packets
    live = store.rows(
        "SELECT flow_id, sum(packets_ab) + sum(packets_ba) FROM flows WHERE toYear(window_start) = 2004 "
        "GROUP BY flow_id ORDER BY flow_id"
    )
    frozen = store.rows(
        "SELECT flow_id, sum(packets_ab) + sum(packets_ba) FROM snapshot_flows WHERE snapshot = 'evidence' "
        "GROUP BY flow_id ORDER BY flow_id"
    )
    assert frozen == live

    # a retention pass that empties every rolling table: drop all their partitions
    for table in ROLLING_TABLES:
        for (partition,) in store.rows(
            "SELECT DISTINCT partition_id FROM system.parts WHERE database = currentDatabase() "
            "AND table = {t:String} "
            "AND active",
            {"t": table},
        ):
            store.command(f"ALTER TABLE {table} DROP PARTITION ID {{p:String}}", {"p": partition})
        assert store.scalar(f"SELECT count() FROM {table}") == 0
    after = export_pcap(store, tmp_path / "snap.pcap", PacketFilters(snapshot="evidence"))
    assert Path(after.path).read_bytes() == Path(before.path).read_bytes()
    assert_same_packets(packets(after.path), packets(HTTP))
    filtered = export_pcap(
        store, tmp_path / "f.pcap", PacketFilters(snapshot="evidence", ports=[80], ips=["65.208.228.223"])
    )
    assert 0 < filtered.packets < info.packets


def test_refusals_say_what_is_wrong(store):
    load(store, HTTP)
    with pytest.raises(
        NetrecallError, match=r"no packets stored in .* stored packets cover 2004-05-13T10:17:07"
    ):
        create_snapshot(store, "late", *resolve_window("30m", None, None))
    # Starting before the first capture loses nothing (no retention ran): clamped to the data, said so.
    early = create_snapshot(
        store, "early", parse_time_ns("2004-05-13T10:00:00Z"), parse_time_ns("2004-05-13T10:17:20Z")
    )
    assert early.since_ns == parse_time_ns("2004-05-13T10:17:07.311224Z")
    assert "before the first stored packet (2004-05-13T10:17:07.311224000Z)" in early.notes[0]
    delete_snapshot(store, "early")
    with pytest.raises(NetrecallError, match="invalid snapshot name"):
        create_snapshot(store, "../x", *WHOLE)
    with pytest.raises(NetrecallError, match="empty window"):
        resolve_window(None, "2004-05-13T10:18:00Z", "2004-05-13T10:17:00Z")
    with pytest.raises(NetrecallError, match="either --last or --since"):
        resolve_window("5m", "-1h", None)
    create_snapshot(store, "s", *WHOLE, allow_partial=True)
    with pytest.raises(NetrecallError, match="already exists"):
        create_snapshot(store, "s", *WHOLE, allow_partial=True)
    with pytest.raises(NetrecallError, match="no packets are stored for node other"):
        create_snapshot(store, "n", *WHOLE, nodes=["other"], allow_partial=True)
    assert [s["name"] for s in list_snapshots(store)] == ["s"]


def test_node_filter_and_delete(store):
    load(store, HTTP, node="a")
    load(store, EXPORT_CAPTURES / "veth-ns.pcap", node="b")
    everything = (parse_time_ns("2004-01-01T00:00:00Z"), parse_time_ns("2100-01-01T00:00:00Z"))
    info = create_snapshot(store, "only-a", *everything, nodes=["a"], allow_partial=True)
    assert info.packets == len(packets(HTTP))
    assert store.rows("SELECT DISTINCT node FROM snapshot_packets") == [("a",)]
    store.command(
        "INSERT INTO dissect_state (scope, watermark) VALUES ('snapshot:only-a', now64(9)), "
        "('snapshot:only-a|node:a', now64(9)), ('snapshot:only-ab', now64(9)), ('live', now64(9))"
    )
    delete_snapshot(store, "only-a")
    assert list_snapshots(store) == []
    assert sorted(store.rows("SELECT scope FROM dissect_state")) == [("live",), ("snapshot:only-ab",)]
    for table in SNAPSHOT_TABLES:
        assert store.scalar(f"SELECT count() FROM {table.name}") == 0
    with pytest.raises(NetrecallError, match="no snapshot named"):
        delete_snapshot(store, "only-a")


def test_portable_file_round_trips_into_another_store(store, store_url, tmp_path):
    load(store, HTTP)
    load(store, EXPORT_CAPTURES / "veth-ns.pcap", resolver=MapResolver(PODS))
    store.command(
        "INSERT INTO workloads (ip, kind, name, namespace, labels, valid_from) VALUES "
        "('::ffff:10.77.0.2', 'pod', 'server-1', 'shop', {'app': 'web'}, '2020-01-01 00:00:00')"
    )
    store.command(
        "INSERT INTO api_calls (id, ts, protocol, flow_id, request_headers) "
        "SELECT toString(flow_id), min(ts), "
        "'http', flow_id, map('Host', 'x') FROM packets WHERE dst_port = 8080 GROUP BY flow_id"
    )
    create_snapshot(
        store,
        "move-me",
        parse_time_ns("2004-05-13T10:17:07Z"),
        parse_time_ns("2100-01-01T00:00:00Z"),
        allow_partial=True,
    )
    original = export_pcap(
        store, tmp_path / "a.pcapng", PacketFilters(snapshot="move-me"), fmt="pcapng", annotate=True
    )
    bundle = tmp_path / "move-me.nrsnap"
    summary = export_snapshot(store, "move-me", bundle)
    assert summary["tables"]["snapshot_packets"] == original.packets
    with zipfile.ZipFile(bundle) as archive:
        manifest = json.loads(archive.read("manifest.json"))
    assert manifest["name"] == "move-me" and set(manifest["tables"]) == {t.name for t in SNAPSHOT_TABLES}

    other_url = store_url.split("?")[0] + f"?database=t_{uuid.uuid4().hex[:12]}"
    other = open_store(other_url)
    try:
        ensure_schema(other)
        import_snapshot(other, bundle)
        for table in SNAPSHOT_TABLES:
            assert _fingerprint(other, table.name, "move-me") == _fingerprint(store, table.name, "move-me")
        copy = export_pcap(
            other, tmp_path / "b.pcapng", PacketFilters(snapshot="move-me"), fmt="pcapng", annotate=True
        )
        assert Path(copy.path).read_bytes() == Path(original.path).read_bytes()
        with pytest.raises(NetrecallError, match="already has a snapshot named 'move-me'"):
            import_snapshot(other, bundle)
    finally:
        other.command(f"DROP DATABASE IF EXISTS {other.database}")


def test_damaged_file_is_refused_before_writing(store, store_url, tmp_path):
    load(store, HTTP)
    create_snapshot(store, "d", *WHOLE, allow_partial=True)
    bundle = tmp_path / "d.zip"
    export_snapshot(store, "d", bundle)
    damaged = tmp_path / "damaged.zip"
    with zipfile.ZipFile(bundle) as src, zipfile.ZipFile(damaged, "w") as dst:
        for item in src.infolist():
            data = src.read(item.filename)
            if item.filename.endswith("snapshot_packets.native.zst"):
                data = data[:-8] + bytes(8)
            dst.writestr(item, data)
    other = open_store(store_url.split("?")[0] + f"?database=t_{uuid.uuid4().hex[:12]}")
    try:
        ensure_schema(other)
        with pytest.raises(
            NetrecallError, match=r"snapshot_packets\.native\.zst sha256 is .* damaged or was altered"
        ):
            import_snapshot(other, damaged)
        assert list_snapshots(other) == [] and other.scalar("SELECT count() FROM snapshot_packets") == 0
        (tmp_path / "junk.zip").write_bytes(b"not a zip")
        with pytest.raises(NetrecallError, match="not a netrecall snapshot file"):
            import_snapshot(other, tmp_path / "junk.zip")
    finally:
        other.command(f"DROP DATABASE IF EXISTS {other.database}")
    with pytest.raises(NetrecallError, match="no snapshot named 'zzz'"):
        export_snapshot(store, "zzz", tmp_path / "z.zip")
    assert not (tmp_path / "z.zip").exists()


def test_export_and_snapshot_file_on_both_backends(any_store, tmp_path):
    """The same export and snapshot round trip, embedded and over HTTP (raw Native streams both ways)."""
    load(any_store, HTTP)
    create_snapshot(any_store, "both", *WHOLE, allow_partial=True)
    first = export_pcap(any_store, tmp_path / "a.pcap", PacketFilters(snapshot="both", ports=[80]))
    reference = export_pcap(any_store, tmp_path / "live.pcap", PacketFilters(ports=[80]))
    assert Path(first.path).read_bytes() == Path(reference.path).read_bytes()
    bundle = tmp_path / "both.zip"
    export_snapshot(any_store, "both", bundle)
    delete_snapshot(any_store, "both")
    import_snapshot(any_store, bundle)
    again = export_pcap(any_store, tmp_path / "b.pcap", PacketFilters(snapshot="both", ports=[80]))
    assert Path(again.path).read_bytes() == Path(first.path).read_bytes()
