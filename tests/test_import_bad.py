"""Bad input: damaged files made by cutting and corrupting real captures, each read as far as it can be.

Each case checks what is stored (against tshark on the intact original) and the one-line report with the
byte offset; the CLI cases check the exit code and that no traceback ever reaches the user.
"""

from __future__ import annotations

import gzip
import struct
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest

from netrecall.errors import NetrecallError
from netrecall.ingest.importer import import_files
from tests.conftest import CAPTURES, require_tool
from tests.import_reference import repeated_pcap, stored_frames, tshark_frames

PCAP = CAPTURES / "lo-http.pcap"
PCAPNG = CAPTURES / "lo-http.pcapng"


@pytest.fixture(scope="module", autouse=True)
def _tshark() -> None:
    require_tool("tshark")


def _pcap_records(data: bytes) -> list[int]:
    positions, pos = [], 24
    while pos + 16 <= len(data):
        positions.append(pos)
        pos += 16 + struct.unpack_from("<I", data, pos + 8)[0]
    return positions


def _pcapng_packet_blocks(data: bytes) -> list[int]:
    positions, pos = [], 0
    while pos + 8 <= len(data):
        btype, length = struct.unpack_from("<II", data, pos)
        if btype == 6:
            positions.append(pos)
        pos += length
    return positions


def test_truncated_file_keeps_every_whole_record(store, tmp_path: Path) -> None:
    data = PCAP.read_bytes()
    records = _pcap_records(data)
    cut = records[20] + 30  # inside record 20
    target = tmp_path / "cut.pcap"
    target.write_bytes(data[:cut])
    summary = import_files(store, [target])
    result = summary.files[0]
    assert result.packets == 20 and result.skipped == 1
    assert result.damage[0].offset == records[20]
    assert "truncated" in result.damage[0].reason
    assert sorted(stored_frames(store)) == sorted(tshark_frames(PCAP)[:20])


def test_damaged_record_in_the_middle_is_skipped(store, tmp_path: Path) -> None:
    data = bytearray(PCAP.read_bytes())
    records = _pcap_records(bytes(data))
    struct.pack_into("<I", data, records[10] + 8, 0x7FFFFFFF)  # absurd caplen
    target = tmp_path / "mid.pcap"
    target.write_bytes(bytes(data))
    result = import_files(store, [target]).files[0]
    assert result.skipped == 1 and result.damage[0].offset == records[10]
    assert "caplen 2147483647" in result.damage[0].reason
    expected = tshark_frames(PCAP)
    assert sorted(stored_frames(store)) == sorted(expected[:10] + expected[11:])


def test_damaged_block_in_the_middle_of_pcapng(store, tmp_path: Path) -> None:
    data = bytearray(PCAPNG.read_bytes())
    blocks = _pcapng_packet_blocks(bytes(data))
    struct.pack_into("<I", data, blocks[7] + 4, 0x12345)
    target = tmp_path / "mid.pcapng"
    target.write_bytes(bytes(data))
    result = import_files(store, [target]).files[0]
    assert result.skipped == 1 and result.damage[0].offset == blocks[7]
    expected = tshark_frames(PCAPNG)
    assert sorted(stored_frames(store)) == sorted(expected[:7] + expected[8:])


def test_first_record_absurd_then_readable(store, tmp_path: Path) -> None:
    data = bytearray(PCAP.read_bytes())
    struct.pack_into("<I", data, 24 + 8, 0xFFFFFFF0)
    target = tmp_path / "first.pcap"
    target.write_bytes(bytes(data))
    result = import_files(store, [target]).files[0]
    assert result.skipped == 1 and result.damage[0].offset == 24
    assert result.packets == len(tshark_frames(PCAP)) - 1


def test_nothing_readable_is_an_error_with_the_offset(store, tmp_path: Path) -> None:
    target = tmp_path / "garbage.pcap"
    target.write_bytes(PCAP.read_bytes()[:24] + bytes(range(256)) * 40)
    with pytest.raises(NetrecallError, match=r"garbage.pcap: byte offset 24: .*no packet could be read"):
        import_files(store, [target])
    assert store.scalar("SELECT count() FROM imports") == 0


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", r"empty.bin: empty file, not a capture \(byte offset 0\)"),
        (
            b"hello world, not a capture\n",
            r"empty.bin: not a pcap or pcapng file: unknown magic 68656c6c at byte offset 0",
        ),
        (PCAP.read_bytes()[:10], r"empty.bin: byte offset 10: pcap file header is truncated"),
        (gzip.compress(b"just text inside gzip"), r"not a pcap or pcapng file \(gzip data\)"),
    ],
    ids=["empty", "text", "short-header", "gzip-text"],
)
def test_not_a_capture(store, tmp_path: Path, content: bytes, message: str) -> None:
    target = tmp_path / "empty.bin"
    target.write_bytes(content)
    with pytest.raises(NetrecallError, match=message):
        import_files(store, [target])


def test_unknown_link_type_stored_raw(store, tmp_path: Path) -> None:
    data = bytearray(PCAP.read_bytes())
    struct.pack_into("<I", data, 20, 147)  # LINKTYPE_USER0: nothing netrecall decodes
    target = tmp_path / "user0.pcap"
    target.write_bytes(bytes(data))
    result = import_files(store, [target]).files[0]
    expected = tshark_frames(PCAP)
    assert result.undecoded == result.packets == len(expected)
    rows = store.rows(
        "SELECT toUnixTimestamp64Nano(ts), data, link_type, ip_version FROM packets",
        column_formats={"data": "bytes"},
    )
    assert sorted((ts, bytes(d)) for ts, d, _, _ in rows) == sorted((e[0], e[3]) for e in expected)
    assert {(lt, v) for _, _, lt, v in rows} == {(147, 0)}


def test_truncated_gzip(store, tmp_path: Path) -> None:
    packed = gzip.compress(PCAP.read_bytes())
    target = tmp_path / "cut.pcap.gz"
    target.write_bytes(packed[: len(packed) // 2])
    result = import_files(store, [target]).files[0]
    assert 0 < result.packets < len(tshark_frames(PCAP))
    assert any("truncated .gz" in d.reason for d in result.damage)
    stored = stored_frames(store)
    assert set(stored) <= set(tshark_frames(PCAP))


def test_header_only_capture_is_empty_not_an_error(store, tmp_path: Path) -> None:
    target = tmp_path / "header.pcap"
    target.write_bytes(PCAP.read_bytes()[:24])
    result = import_files(store, [target]).files[0]
    assert result.packets == 0 and result.skipped == 0 and result.status == "imported"


def test_collect_mode_goes_on_after_a_bad_file(store, tmp_path: Path) -> None:
    bad = tmp_path / "bad.pcap"
    bad.write_text("nope")
    summary = import_files(store, [bad, PCAP], errors="collect")
    assert [f.status for f in summary.files] == ["failed", "imported"]
    assert "bad.pcap" in summary.files[0].error
    assert summary.packets == len(tshark_frames(PCAP))


# --- the command line -------------------------------------------------------------------------------------
def _cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    store = f"chdb://{tmp_path}/store"
    return subprocess.run(
        [sys.executable, "-m", "netrecall", "import", *args, "--store", store],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cli_bad_inputs_one_line_no_traceback(tmp_path: Path) -> None:
    empty = tmp_path / "empty.pcap"
    empty.write_bytes(b"")
    text = tmp_path / "notes.txt"
    text.write_text("not a capture")
    mid = tmp_path / "mid.pcap"
    data = bytearray(PCAP.read_bytes())
    struct.pack_into("<I", data, _pcap_records(bytes(data))[5] + 8, 0x7FFFFFFF)
    mid.write_bytes(bytes(data))

    only_bad = _cli(tmp_path, str(text))
    assert only_bad.returncode != 0
    assert only_bad.stderr.strip().splitlines() == [
        f"netrecall: error: {text}: not a pcap or pcapng file: unknown magic 6e6f7420 at byte offset 0"
    ]
    mixed = _cli(tmp_path, str(empty), str(mid))
    assert mixed.returncode != 0  # one of them could not be read at all
    assert "Traceback" not in mixed.stderr + mixed.stdout
    assert f"netrecall: error: {empty}: empty file, not a capture (byte offset 0)" in mixed.stderr
    assert f"{mid}: byte offset {_pcap_records(bytes(data))[5]}: damaged record header" in mixed.stderr
    assert f"imported {len(tshark_frames(PCAP)) - 1} packets" in mixed.stdout
    assert "1 skipped" in mixed.stdout


def test_missing_file_is_one_error_and_the_others_import(store, tmp_path: Path) -> None:
    missing = tmp_path / "gone.pcap"
    summary = import_files(store, [missing, PCAP], errors="collect")
    assert [f.status for f in summary.files] == ["failed", "imported"]
    assert summary.files[0].error == f"{missing}: cannot read: No such file or directory"
    assert summary.packets == len(tshark_frames(PCAP))


class _BreaksAfter:
    """A resolver whose later tables have a column the first did not: the streaming INSERT fails mid-file."""

    def __init__(self, good_chunks: int) -> None:
        self.good_chunks = good_chunks
        self.calls = 0

    def enrich(self, table: pa.Table) -> pa.Table:
        self.calls += 1
        if self.calls <= self.good_chunks:
            return table
        return table.append_column("src_pod", pa.repeat(pa.scalar("x", pa.string()), table.num_rows))

    def workload_rows(self) -> pa.Table:
        return pa.table({})


def test_insert_failing_mid_file_is_an_error_and_a_retry_imports_it_whole(store, tmp_path: Path) -> None:
    big = tmp_path / "big.pcap"  # 8 read chunks: the INSERT fails mid-stream, after 6 tables went in
    copies = repeated_pcap(PCAP, big, 64 * 2**20)
    with pytest.raises(NetrecallError, match=r"^(insert failed|ClickHouse): "):
        import_files(store, [big], resolver=_BreaksAfter(good_chunks=6))
    assert store.scalar("SELECT count() FROM imports") == 0  # not recorded as imported
    again = import_files(store, [big]).files[0]
    assert again.status == "imported"
    total = copies * len(tshark_frames(PCAP))
    stored = store.rows("SELECT count(), uniqExact(seq), max(seq) FROM packets")
    assert again.packets == total and stored == [(total, total, total - 1)]
