"""`import_files` against tshark on real captures: every frame's bytes, lengths, ns timestamp and 5-tuple."""

from __future__ import annotations

import gzip
import hashlib
import shutil
import struct
import subprocess
import threading
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from netrecall.ingest import importer
from netrecall.ingest.capture_file import CaptureReader
from netrecall.ingest.digest import FileDigests
from netrecall.ingest.importer import import_files
from tests.conftest import CAPTURES, DPKT_EXAMPLES, require_tool
from tests.import_reference import repeated_pcap, stored_frames, tshark_frames

REAL_CAPTURES = sorted(DPKT_EXAMPLES.glob("*.pcap")) + sorted(CAPTURES.glob("*.pcap*"))


@pytest.fixture(scope="module", autouse=True)
def _tshark() -> None:
    require_tool("tshark")


def test_captures_are_there() -> None:
    names = {p.name for p in REAL_CAPTURES}
    assert {
        "http.pcap",
        "lo-http.pcap",
        "lo-http.pcapng",
        "lo-http-ns.pcap",
        "any-sll.pcap",
        "any-sll2.pcap",
        "lo-ipv6.pcap",
        "vlan-frag.pcap",
        "multi-if.pcapng",
    } <= names


@pytest.mark.parametrize("path", REAL_CAPTURES, ids=lambda p: p.name)
def test_import_matches_tshark(store, path: Path) -> None:
    expected = tshark_frames(path)
    summary = import_files(store, [path], node="node-1")
    assert summary.packets == len(expected)
    stored = stored_frames(store)
    assert sorted(stored) == sorted(expected)
    # every row carries the file's sha256 and the node; flows were filled by the view
    assert store.rows("SELECT DISTINCT source, node FROM packets") == [(summary.files[0].source, "node-1")]
    if any(frame[4] for frame in expected):
        assert store.scalar("SELECT count() FROM flows") > 0
        assert summary.flows == store.scalar("SELECT uniqExact(flow_id) FROM packets WHERE ip_version != 0")


def test_file_digests_are_the_sha256_of_each_file_in_turn(tmp_path: Path) -> None:
    copy = tmp_path / "copy.pcap"
    shutil.copy(CAPTURES / "lo-http.pcap", copy)
    paths = [CAPTURES / "lo-http.pcap", DPKT_EXAMPLES / "http.pcap", copy]
    digests = FileDigests(paths)
    expected = [hashlib.sha256(p.read_bytes()).hexdigest() for p in paths]
    assert [digests.get(p) for p in paths] == expected
    assert expected[0] == expected[2] != expected[1]


def test_packets_are_written_as_compact_parts(store, tmp_path: Path) -> None:
    """One file per part instead of two per column: what makes an insert cheap (docs/schema.md). The
    capture is the real lo-http.pcap repeated to 16 MB, past ClickHouse's default 10 MB Wide threshold."""
    big = tmp_path / "big.pcap"
    repeated_pcap(CAPTURES / "lo-http.pcap", big, 16 * 2**20)
    import_files(store, [big])
    parts = store.rows(
        "SELECT DISTINCT part_type FROM system.parts WHERE active AND database = currentDatabase() "
        "AND table = 'packets'"
    )
    assert parts == [("Compact",)]


def test_merges_restarted_mid_file_while_inserts_stream(store, tmp_path: Path, monkeypatch) -> None:
    """Past DEFERRED_MERGE_ROWS the importer restarts merges while its streaming INSERTs are open: the
    command must not wait on a connection an INSERT holds (that deadlocked once), and every row lands."""
    monkeypatch.setattr(importer, "DEFERRED_MERGE_ROWS", 1)
    big = tmp_path / "big.pcap"
    copies = repeated_pcap(CAPTURES / "lo-http.pcap", big, 24 * 2**20)
    done: list = []
    worker = threading.Thread(target=lambda: done.append(import_files(store, [big])), daemon=True)
    worker.start()
    worker.join(120)
    assert not worker.is_alive(), "import hung"
    expected = copies * len(tshark_frames(CAPTURES / "lo-http.pcap"))
    assert done[0].packets == expected == store.scalar("SELECT count() FROM packets")


def test_merges_stay_held_after_the_last_file_only_when_asked(store) -> None:
    """merge_after=False (the CLI, whose process ends with the import) leaves the engine's merges held
    at the end instead of starting merges the exit would cancel; by default they run again."""
    from netrecall.errors import NetrecallError

    files = [CAPTURES / "lo-http.pcap", CAPTURES / "lo-ipv6.pcap"]
    summary = import_files(store, files, merge_after=False)
    assert summary.packets == store.scalar("SELECT count() FROM packets") > 0
    with pytest.raises(NetrecallError, match="Cancelled merging parts"):
        store.command("OPTIMIZE TABLE packets FINAL")
    import_files(store, [DPKT_EXAMPLES / "http.pcap"])
    store.command("OPTIMIZE TABLE packets FINAL")
    parts, partitions = store.rows(
        "SELECT count(), uniqExact(partition) FROM system.parts WHERE active "
        "AND database = currentDatabase() AND table = 'packets'"
    )[0]
    assert parts == partitions  # merged: one part per hour of stored_at


def test_vlan_tags_and_fragments(store) -> None:
    import_files(store, [CAPTURES / "vlan-frag.pcap"])
    vlans = store.rows(
        "SELECT vlan, ip_version, l4, src_port, dst_port FROM packets WHERE vlan != 0 ORDER BY vlan"
    )
    # 802.1Q 10 (IPv4/UDP), 802.1ad 20 over 802.1Q 30 (IPv4/TCP), 802.1Q 40 with priority bits (IPv6/UDP)
    assert vlans == [(10, 4, 17, 40000, 5353), (20, 4, 6, 40001, 80), (40, 6, 17, 40002, 53)]
    frags = store.rows(
        "SELECT ip_version, src_port, count() FROM packets WHERE ip_frag = 1 AND l4 = 17 "
        "GROUP BY ip_version, src_port ORDER BY ip_version, src_port"
    )
    # per family: two datagrams of three fragments; only the first fragment of each carries ports
    assert [(v, n) for v, port, n in frags if port == 0] == [(4, 4), (6, 4)]
    assert [(v, n) for v, port, n in frags if port != 0] == [(4, 2), (6, 2)]
    # MLD reports sit behind a hop-by-hop options header: the walk still finds ICMPv6
    assert (
        store.scalar("SELECT count() FROM packets WHERE ip_version = 6 AND l4 = 58 AND payload_len > 0") > 0
    )


def test_payload_offsets_point_at_the_l4_payload(store) -> None:
    import_files(store, [CAPTURES / "lo-http.pcap"])
    rows = store.rows(
        "SELECT substring(data, payload_offset + 1, payload_len) FROM packets WHERE payload_len > 0 "
        "AND dst_port = 18080",
        column_formats={"substring(data, plus(payload_offset, 1), payload_len)": "bytes"},
    )
    assert rows and all(bytes(r[0]).startswith(b"GET /record.py HTTP/1.1") for r in rows)


def test_pcapng_directions_and_interfaces(store) -> None:
    import_files(store, [CAPTURES / "multi-if.pcapng"])
    rows = dict(store.rows("SELECT iface, groupUniqArray(link_type) FROM packets GROUP BY iface"))
    assert rows == {"any": [113], "nr-vb": [1]}
    # Linux cooked headers say which way a packet went
    directions = {r[0] for r in store.rows("SELECT DISTINCT direction FROM packets WHERE iface = 'any'")}
    assert directions == {"in", "out"}


@pytest.mark.parametrize("name", ["lo-http.pcap", "multi-if.pcapng"])
def test_gzip_detected_by_content(store, tmp_path: Path, name: str) -> None:
    source = CAPTURES / name
    packed = tmp_path / "capture.bin"  # no .gz suffix: detected by its magic
    packed.write_bytes(gzip.compress(source.read_bytes()))
    import_files(store, [packed])
    assert sorted(stored_frames(store)) == sorted(tshark_frames(source))


def _to_big_endian_pcap(source: Path, target: Path) -> None:
    data = source.read_bytes()
    out = bytearray(struct.pack(">IHHiIII", *struct.unpack_from("<IHHiIII", data, 0)))
    pos = 24
    while pos < len(data):
        sec, frac, caplen, origlen = struct.unpack_from("<IIII", data, pos)
        out += struct.pack(">IIII", sec, frac, caplen, origlen) + data[pos + 16 : pos + 16 + caplen]
        pos += 16 + caplen
    target.write_bytes(bytes(out))


@pytest.mark.parametrize("name", ["lo-http.pcap", "lo-http-ns.pcap"])
def test_big_endian_pcap(store, tmp_path: Path, name: str) -> None:
    target = tmp_path / "be.pcap"
    _to_big_endian_pcap(CAPTURES / name, target)
    assert target.read_bytes()[:4] in (b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d")
    expected = tshark_frames(target)
    assert expected == tshark_frames(CAPTURES / name)
    import_files(store, [target])
    assert sorted(stored_frames(store)) == sorted(expected)


def test_pcapng_microsecond_resolution(store, tmp_path: Path) -> None:
    """editcap writes pcapng with if_tsresol 6 (µs), unlike dumpcap's ns."""
    target = tmp_path / "us.pcapng"
    subprocess.run(
        [require_tool("editcap"), "-F", "pcapng", str(CAPTURES / "lo-http.pcap"), str(target)], check=True
    )
    expected = tshark_frames(target)
    import_files(store, [target])
    assert sorted(stored_frames(store)) == sorted(expected)


def test_small_chunks_give_the_same_frames(tmp_path: Path) -> None:
    """Records straddling chunk boundaries are read whole whatever the chunk size."""
    for name in ("lo-http.pcap", "lo-http.pcapng", "multi-if.pcapng"):
        whole = [c for c in CaptureReader(CAPTURES / name).chunks()]
        small = [c for c in CaptureReader(CAPTURES / name, chunk_bytes=1000).chunks()]
        assert len(small) > len(whole)
        frames_whole = [c.frame(i) for c in whole for i in range(len(c))]
        frames_small = [c.frame(i) for c in small for i in range(len(c))]
        assert frames_small == frames_whole
        assert [t for c in small for t in c.ts_ns.tolist()] == [t for c in whole for t in c.ts_ns.tolist()]


def test_double_import_is_skipped(store) -> None:
    path = CAPTURES / "lo-http.pcap"
    first = import_files(store, [path])
    flows_before = store.rows(
        "SELECT flow_id, sum(packets_ab), sum(packets_ba) FROM flows GROUP BY flow_id ORDER BY 1"
    )
    second = import_files(store, [path])
    assert second.files[0].status == "already imported"
    assert store.scalar("SELECT count() FROM packets") == first.packets
    assert store.scalar("SELECT count() FROM imports") == 1
    flows_after = store.rows(
        "SELECT flow_id, sum(packets_ab), sum(packets_ba) FROM flows GROUP BY flow_id ORDER BY 1"
    )
    assert flows_after == flows_before


def test_same_content_under_another_name_is_skipped(store, tmp_path: Path) -> None:
    copy = tmp_path / "renamed.cap"
    shutil.copy(CAPTURES / "lo-http.pcap", copy)
    summary = import_files(store, [CAPTURES / "lo-http.pcap", copy])
    assert [f.status for f in summary.files] == ["imported", "already imported"]
    assert store.scalar("SELECT count() FROM packets") == summary.files[0].packets


_FLOW_TOTALS = (
    "SELECT flow_id, sum(packets_ab), sum(packets_ba), sum(bytes_ab), sum(bytes_ba), "
    "groupBitOr(tcp_flags_ab), max(syn_from) FROM flows GROUP BY flow_id ORDER BY flow_id"
)


def test_interrupted_import_is_replaced(store, chdb_path: Path) -> None:
    """Rows left by an interrupted import are removed (and their flows rebuilt) before importing again."""
    from netrecall.ingest.decode import decode_frames
    from netrecall.ingest.digest import file_sha256
    from netrecall.ingest.importer import INSERT_SETTINGS
    from netrecall.schema.migrate import ensure_schema
    from netrecall.store import open_store

    path = CAPTURES / "lo-http.pcap"
    other = DPKT_EXAMPLES / "http.pcap"
    import_files(store, [other])  # an unrelated import whose flows must survive the clean-up
    chunk = next(CaptureReader(path, chunk_bytes=3000).chunks())
    store.insert_arrow("packets", decode_frames(chunk, source=file_sha256(path)), settings=INSERT_SETTINGS)

    summary = import_files(store, [path])
    assert summary.files[0].removed_partial == len(chunk) > 0
    assert sorted(stored_frames(store)) == sorted(tshark_frames(path) + tshark_frames(other))
    assert store.scalar("SELECT count() FROM imports") == 2

    clean = open_store(f"chdb://{chdb_path}?database={store.database}_clean")
    try:
        ensure_schema(clean)
        import_files(clean, [other, path])
        assert store.rows(_FLOW_TOTALS) == clean.rows(_FLOW_TOTALS)
    finally:
        clean.command(f"DROP DATABASE IF EXISTS {clean.database}")


def test_partly_expired_import_is_imported_again(store) -> None:
    """When retention dropped some of a file's packets, importing it again restores it exactly once."""
    path = CAPTURES / "lo-http.pcap"
    first = import_files(store, [path])
    store.command("ALTER TABLE packets DELETE WHERE src_port = 18080 SETTINGS mutations_sync = 2")
    again = import_files(store, [path])
    assert again.files[0].status == "imported"
    assert store.scalar("SELECT count() FROM packets") == first.packets


def test_decode_exact_data_from_gapped_and_contiguous_chunks() -> None:
    """The reader's chunks keep record headers between frames; decode_frames compacts them by default,
    and a chunk built by from_frames (the live agent's path) decodes to the same rows."""
    from netrecall.ingest.decode import decode_frames
    from netrecall.ingest.frames import FrameChunk

    chunk = next(CaptureReader(CAPTURES / "multi-if.pcapng").chunks())
    assert not chunk.contiguous
    frames = [chunk.frame(i) for i in range(len(chunk))]
    table = decode_frames(chunk, node="n", source="s")
    assert table.column("data").to_pylist() == frames
    rebuilt = FrameChunk.from_frames(
        frames,
        chunk.ts_ns,
        link_type=chunk.link_type.tolist(),
        origlen=chunk.origlen,
        iface_index=chunk.iface_index.tolist(),
        direction=chunk.direction.tolist(),
        ifaces=chunk.ifaces,
    )
    assert rebuilt.contiguous
    assert decode_frames(rebuilt, node="n", source="s").equals(table)
    # as views over the reader's buffer (the chDB import's path): the same exact frames, none copied
    views = decode_frames(chunk, node="n", source="s", chdb_layout=True).column("data")
    assert views.type == pa.binary_view()
    assert views.to_pylist() == frames
    assert views.chunk(0).buffers()[2].address == chunk.data.ctypes.data


def test_view_column_inlines_short_ranges_up_to_the_buffer_end() -> None:
    """Ranges of up to 12 bytes live inside their view (zero-padded), longer ones point into the buffer;
    a short range right at the buffer's end must not read past it."""
    from netrecall.ingest.decode import view_column

    sizes = [0, 1, 5, 12, 13, 100, 11, 1500, 4, 3]
    rng = np.random.default_rng(7)
    frames = [rng.integers(0, 256, size, dtype=np.uint8).tobytes() for size in sizes]
    buffer = b"".join(b"\xee" * 16 + frame for frame in frames)  # a record header before each frame
    starts = np.cumsum([16 + s for s in [0, *sizes[:-1]]])
    column = view_column(np.frombuffer(buffer, dtype=np.uint8), starts, np.array(sizes))
    column.validate(full=True)
    assert column.to_pylist() == frames
    views = np.frombuffer(column.buffers()[1], dtype=np.int32).reshape(-1, 4)
    assert views[3, 1:].tobytes() == frames[3] and views[1, 1:].tobytes() == frames[1] + bytes(11)
    assert list(views[5, 2:]) == [0, starts[5]]


# --- pcapng variants made from a real dumpcap capture -------------------------------------------------------
def _pcapng_blocks(data: bytes) -> list[tuple[int, bytes]]:
    blocks, pos = [], 0
    while pos + 8 <= len(data):
        btype, length = struct.unpack_from("<II", data, pos)
        blocks.append((btype, data[pos + 8 : pos + length - 4]))
        pos += length
    return blocks


def _block(order: str, btype: int, body: bytes) -> bytes:
    body += b"\0" * (-len(body) % 4)
    return struct.pack(order + "II", btype, len(body) + 12) + body + struct.pack(order + "I", len(body) + 12)


def _swap_options(body: bytes, numeric: dict[int, str]) -> bytes:
    """Re-encode little-endian options big-endian: code/length always, values of numeric options too."""
    out, pos = b"", 0
    while pos + 4 <= len(body):
        code, length = struct.unpack_from("<HH", body, pos)
        value = body[pos + 4 : pos + 4 + length]
        if code in numeric:
            value = struct.pack(">" + numeric[code], *struct.unpack("<" + numeric[code], value))
        out += struct.pack(">HH", code, length) + value + b"\0" * (-length % 4)
        pos += 4 + length + (-length % 4)
        if code == 0:
            break
    return out


def _to_big_endian_pcapng(source: Path, target: Path) -> None:
    out = b""
    for btype, body in _pcapng_blocks(source.read_bytes()):
        if btype == 0x0A0D0D0A:  # SHB: byte-order magic, version, section length, options
            head = struct.pack(">IHHq", *struct.unpack_from("<IHHq", body))
            out += _block(">", btype, head + _swap_options(body[16:], {}))
        elif btype == 1:  # IDB: link type, reserved, snaplen, options (if_speed is a u64)
            head = struct.pack(">HHI", *struct.unpack_from("<HHI", body))
            out += _block(">", btype, head + _swap_options(body[8:], {8: "Q"}))
        elif btype == 6:  # EPB: interface, timestamp, lengths, data, options (epb_flags is a u32)
            iface, high, low, caplen, origlen = struct.unpack_from("<IIIII", body)
            padded = caplen + (-caplen % 4)
            head = struct.pack(">IIIII", iface, high, low, caplen, origlen)
            out += _block(
                ">", btype, head + body[20 : 20 + padded] + _swap_options(body[20 + padded :], {2: "I"})
            )
        # other blocks (interface statistics) are left out: they carry no packets
    target.write_bytes(out)


def _to_packet_blocks(source: Path, target: Path, kind: int) -> None:
    """EPBs rewritten as obsolete Packet Blocks (2) or Simple Packet Blocks (3)."""
    out = b""
    for btype, body in _pcapng_blocks(source.read_bytes()):
        if btype != 6:
            out += _block("<", btype, body)
            continue
        iface, high, low, caplen, origlen = struct.unpack_from("<IIIII", body)
        frame = body[20 : 20 + caplen]
        if kind == 2:
            out += _block("<", 2, struct.pack("<HHIIII", iface, 0, high, low, caplen, origlen) + frame)
        else:
            out += _block("<", 3, struct.pack("<I", origlen) + frame)
    target.write_bytes(out)


@pytest.mark.parametrize("variant", ["big-endian", "packet-blocks", "simple-packet-blocks"])
def test_pcapng_variants_match_tshark(store, tmp_path: Path, variant: str) -> None:
    target = tmp_path / f"{variant}.pcapng"
    if variant == "big-endian":
        _to_big_endian_pcapng(CAPTURES / "lo-http.pcapng", target)
        assert target.read_bytes()[8:12] == b"\x1a\x2b\x3c\x4d"
    else:
        _to_packet_blocks(CAPTURES / "lo-http.pcapng", target, 2 if variant == "packet-blocks" else 3)
    expected = tshark_frames(target)
    assert len(expected) == len(tshark_frames(CAPTURES / "lo-http.pcapng"))
    import_files(store, [target])
    assert sorted(stored_frames(store)) == sorted(expected)
