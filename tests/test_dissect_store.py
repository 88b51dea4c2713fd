"""The runner against the real embedded store: idempotency, the watermark, chunk boundaries, late imports,
enrichment, node filter, snapshots and the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import dpkt
import pytest

from netrecall.dissect.runner import dissect
from netrecall.dissect.source import PACKET_OBJECT_BYTES, PacketSource
from netrecall.ingest.importer import import_files
from netrecall.store import Store, open_store
from tests.conftest import CAPTURES

PYTHON = CAPTURES / "dissect" / "http_python.pcap"
NGINX = CAPTURES / "dissect" / "http_nginx.pcap"
DNSMASQ = CAPTURES / "dissect" / "dns_dnsmasq.pcap"

KEY = "protocol, method, url, status_code, has_response, dns_questions, partial"


def calls(store: Store, final: bool = True) -> Counter:
    rows = store.rows(f"SELECT {KEY} FROM api_calls{' FINAL' if final else ''}")
    return Counter((r[0], r[1], r[2], r[3], r[4], tuple(r[5]), r[6]) for r in rows)


def counts(store: Store, table: str = "api_calls") -> tuple[int, int]:
    return store.scalar(f"SELECT count() FROM {table}"), store.scalar(f"SELECT count() FROM {table} FINAL")


@pytest.fixture
def other_store(chdb_path: Path) -> Store:
    """A second fresh database on the same engine, for comparing two ways of dissecting."""
    import uuid

    from netrecall.schema.migrate import ensure_schema

    opened = open_store(f"chdb://{chdb_path}?database=t_{uuid.uuid4().hex[:12]}")
    ensure_schema(opened)
    yield opened
    opened.command(f"DROP DATABASE IF EXISTS {opened.database}")


def test_dissecting_twice_creates_no_duplicates(store: Store) -> None:
    import_files(store, [PYTHON, DNSMASQ])
    first = dissect(store)
    assert first.calls["http"] == 12 and first.calls["dns"] == 13
    assert not first.parse_errors
    n = first.total_calls
    again = dissect(store, since_ns=0)  # the whole range again, explicitly
    assert again.total_calls == 0 and again.duplicates_skipped == n
    assert counts(store) == (n, n)
    third = dissect(store)  # from the watermark: at most the still-unanswered query is read again
    assert third.total_calls == 0 and counts(store) == (n, n)


def test_calls_merges_stay_held_after_the_run_only_when_asked(store: Store) -> None:
    """merge_after=False (the CLI, whose process ends with the run) leaves the engine's merges of
    api_calls held at the end instead of starting merges the exit would cancel; by default they run."""
    from netrecall.errors import NetrecallError

    import_files(store, [PYTHON])
    assert dissect(store, merge_after=False).total_calls == counts(store)[0] > 0
    with pytest.raises(NetrecallError, match="Cancelled merging parts"):
        store.command("OPTIMIZE TABLE api_calls FINAL")
    import_files(store, [DNSMASQ])
    assert dissect(store).total_calls > 0
    store.command("OPTIMIZE TABLE api_calls FINAL")
    parts, partitions = store.rows(
        "SELECT count(), uniqExact(partition) FROM system.parts WHERE active "
        "AND database = currentDatabase() AND table = 'api_calls'"
    )[0]
    assert parts == partitions


def test_call_fields_in_the_table(store: Store) -> None:
    import_files(store, [PYTHON])
    dissect(store)
    row = store.dicts(
        "SELECT *, toUnixTimestamp64Nano(ts) AS ts_ns, toUnixTimestamp64Nano(first_packet_ts) AS first_ns, "
        "toUnixTimestamp64Nano(last_packet_ts) AS last_ns, IPv6NumToString(src_ip) AS src, "
        "IPv6NumToString(dst_ip) AS dst FROM api_calls WHERE url = '/gz'",
        column_formats={"response_body": "bytes"},
    )[0]
    first_byte = store.scalar(
        "SELECT toUnixTimestamp64Nano(min(ts)) FROM packets WHERE payload_len > 0 AND dst_port = 8000 "
        "AND position(substring(data, payload_offset + 1, payload_len), 'GET /gz ') = 1"
    )
    assert row["ts_ns"] == row["first_ns"] == first_byte  # nanoseconds kept
    assert row["last_ns"] > row["ts_ns"] and row["elapsed_time"] > 0
    assert (row["src"], row["dst"], row["dst_port"]) == ("::ffff:10.77.0.1", "::ffff:10.77.0.2", 8000)
    assert row["response_body"] == b"compressed body " * 100
    assert row["response_headers"]["Content-Encoding"] == "gzip"
    assert row["host"] == "10.77.0.2:8000" and row["http_version"] == "HTTP/1.1"
    flows = store.scalar("SELECT count() FROM packets WHERE flow_id = {f:UInt64}", {"f": row["flow_id"]})
    assert flows > 0


def _split(path: Path, out_dir: Path, fraction: float) -> tuple[Path, Path]:
    with open(path, "rb") as fh:
        reader = dpkt.pcap.Reader(fh)
        link = reader.datalink()
        records = list(reader)
    cut = int(len(records) * fraction)
    parts = []
    for name, chunk in (("a", records[:cut]), ("b", records[cut:])):
        target = out_dir / f"{path.stem}-{name}.pcap"
        with open(target, "wb") as fh:
            writer = dpkt.pcap.Writer(fh, linktype=link, nano=True)
            for ts, frame in chunk:
                writer.writepkt(frame, ts)
        parts.append(target)
    return parts[0], parts[1]


def test_incremental_runs_equal_one_run(store: Store, other_store: Store, tmp_path: Path) -> None:
    """Import and dissect a capture in two halves cut mid-connection: the watermark makes the second run
    pick up the calls the first could not finish, and the result equals one run over the whole."""
    import_files(other_store, [PYTHON])
    dissect(other_store)
    whole = calls(other_store)
    for fraction in (0.35, 0.6):
        first, second = _split(PYTHON, tmp_path, fraction)
        store.command("TRUNCATE TABLE api_calls")
        store.command("TRUNCATE TABLE packets")
        store.command("TRUNCATE TABLE dissect_state")
        store.command("TRUNCATE TABLE imports")
        import_files(store, [first])
        dissect(store)
        import_files(store, [second])
        dissect(store)
        assert calls(store) == whole


def test_tiny_chunks_give_the_same_calls(store: Store, other_store: Store) -> None:
    for target in (store, other_store):
        import_files(target, [PYTHON, NGINX, DNSMASQ])
    big = dissect(store)
    small = dissect(other_store, chunk_packets=5)
    assert small.chunks > 20 and big.chunks <= 2  # one per minute the captures touch
    assert calls(other_store) == calls(store)
    n = small.total_calls
    assert counts(other_store) == (n, n)


def test_slices_keep_to_their_byte_budget(store: Store, other_store: Store) -> None:
    """Slices cut by bytes (payloads plus each packet's objects) rather than by packets: every packet in
    exactly one slice, no slice over the budget by more than one packet on these captures (a cut lands
    on a histogram bin's end: 64 bins per slice), and the same calls."""
    budget = 16 << 10
    for target in (store, other_store):
        import_files(target, [PYTHON, NGINX, DNSMASQ])
    source = PacketSource()
    total, first, last = source.bounds(store)
    slices = source.plan(store, first, last + 1, chunk_packets=40_000, chunk_bytes=budget)
    largest = store.scalar(f"SELECT max(payload_len) FROM packets WHERE {source.condition()}")
    seen = 0
    for piece in slices:
        chunk = source.read(store, piece)
        seen += len(chunk)
        assert len(chunk) == piece.packets
        size = sum(len(payload) for payload in chunk.payload) + len(chunk) * PACKET_OBJECT_BYTES
        assert size <= budget + largest + PACKET_OBJECT_BYTES
    assert seen == total and len(slices) > 3 * len(source.plan(store, first, last + 1, 40_000))
    whole = dissect(store)
    small = dissect(other_store, chunk_bytes=budget)
    assert small.chunks == len(slices) and whole.chunks < small.chunks
    assert calls(other_store) == calls(store)


def test_an_older_capture_imported_later_is_dissected(store: Store) -> None:
    import_files(store, [NGINX])  # recorded after the DNS capture
    dissect(store)
    import_files(store, [DNSMASQ])
    later = dissect(store)
    assert later.calls.get("dns") == 13
    assert counts(store)[0] == counts(store)[1]


def test_enrichment_and_node_come_from_the_packets(store: Store) -> None:
    import_files(store, [PYTHON], node="node-a")
    store.command(
        "ALTER TABLE packets UPDATE src_pod = if(src_port = 8000, 'server', 'client'), "
        "dst_pod = if(dst_port = 8000, 'server', 'client'), src_namespace = 'shop', dst_namespace = 'shop', "
        "dst_labels = if(dst_port = 8000, map('app', 'web'), map()) WHERE 1",
        settings={"mutations_sync": 2},
    )
    dissect(store)
    rows = store.rows("SELECT DISTINCT src_pod, dst_pod, src_namespace, node_name, dst_labels FROM api_calls")
    assert rows == [("client", "server", "shop", "node-a", {"app": "web"})]


def test_node_filter(store: Store) -> None:
    import_files(store, [PYTHON], node="node-a")
    assert dissect(store, node="node-b").total_calls == 0
    assert dissect(store, node="node-a").calls["http"] == 12


def test_snapshot_dissection_writes_snapshot_calls(store: Store) -> None:
    if not store.scalar("EXISTS TABLE snapshot_packets"):
        pytest.fail("the schema has no snapshot tables")
    import_files(store, [PYTHON, DNSMASQ])
    store.command("INSERT INTO snapshot_packets SELECT 'incident-1' AS snapshot, * FROM packets")
    summary = dissect(store, snapshot="incident-1")
    assert summary.calls == {"http": 12, "dns": 13}
    assert store.scalar("SELECT count() FROM api_calls") == 0  # live calls untouched
    assert store.rows("SELECT snapshot, count() FROM snapshot_api_calls GROUP BY snapshot") == [
        ("incident-1", 25)
    ]
    assert dissect(store, snapshot="incident-1").total_calls == 0  # its own watermark
    assert dissect(store, snapshot="nope").packets == 0


def test_cli_dissect(tmp_path: Path) -> None:
    url = f"chdb://{tmp_path}/store"
    cli = [sys.executable, "-m", "netrecall"]
    subprocess.run(
        [*cli, "import", str(PYTHON), str(DNSMASQ), "--store", url], check=True, capture_output=True
    )
    done = subprocess.run([*cli, "dissect", "--store", url], capture_output=True, text=True, check=True)
    assert "http" in done.stdout and "25 calls" in done.stdout and "Traceback" not in done.stderr
    again = subprocess.run(
        [*cli, "dissect", "--store", url, "--since", "2000-01-01T00:00:00Z", "--format", "json"],
        capture_output=True,
        text=True,
        check=True,
    )
    summary = json.loads(again.stdout)[0]
    assert summary["total_calls"] == 0 and summary["duplicates_skipped"] == 25
    bad = subprocess.run(
        [*cli, "dissect", "--store", url, "--since", "yesterday"], capture_output=True, text=True
    )
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "invalid time" in bad.stderr


def test_dissect_on_both_store_backends(any_store: Store) -> None:
    """The same calls through the embedded engine and through the ClickHouse HTTP protocol."""
    import_files(any_store, [PYTHON, DNSMASQ])
    summary = dissect(any_store)
    assert summary.calls == {"http": 12, "dns": 13}
    rows = any_store.rows("SELECT url, status_code FROM api_calls WHERE protocol = 'http' AND url = '/gz'")
    assert rows == [("/gz", 200)]
    assert counts(any_store) == (25, 25)
