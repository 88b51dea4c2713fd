"""`CaptureReader`: a capture file (pcap or pcapng, raw or gzip) read as a stream of `FrameChunk`s.

A file is read a few MB at a time and handed out as `FrameChunk`s: numpy arrays of per-frame metadata
plus every frame's bytes back to back in one buffer, so decoding never builds a Python object per
packet. The only per-record Python work is walking the record chain (each record's position depends on
the previous one's length); everything else is vectorised.

Damage is not fatal: a record whose header is implausible starts a scan for the next plausible record
(itself followed by a plausible record), the bytes in between are reported as skipped with their byte
offset, and reading goes on. A file that is not a capture at all raises NetrecallError naming the file.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np

from netrecall.errors import NetrecallError
from netrecall.ingest.frames import MAX_BLOCK, MAX_CAPLEN, Buffer, Damage, FrameChunk
from netrecall.ingest.pcap import PCAP_MAGIC_NS, PCAP_MAGIC_US, find_pcap_record, pcap_chunk, scan_pcap
from netrecall.ingest.pcapng import (
    PCAPNG_SHB,
    PcapngState,
    find_pcapng_block,
    pcapng_chunk,
    scan_pcapng,
)

CHUNK_BYTES = 8 << 20  # how much of the file one read takes; a chunk holds the records that end inside it
GZIP_MAGIC = b"\x1f\x8b"


@dataclass
class CaptureReader:
    """Iterate `chunks()` over one capture file; afterwards `damage` lists what was skipped."""

    path: Path
    chunk_bytes: int = CHUNK_BYTES
    format: str = ""  # 'pcap' or 'pcapng'
    compressed: bool = False
    damage: list[Damage] = field(default_factory=list)
    records: int = 0
    _raw: BinaryIO | None = None
    _stream: BinaryIO | None = None
    _consumed: int = 0  # bytes of the (decompressed) stream before the parser's current buffer
    _produced: int = 0  # bytes of the (decompressed) stream read so far

    @property
    def raw_position(self) -> int:
        """How far into the file on disk reading has got (for progress bars)."""
        try:
            return self._raw.tell() if self._raw is not None and not self._raw.closed else 0
        except (OSError, ValueError):
            return 0

    @property
    def skipped(self) -> int:
        return sum(d.records for d in self.damage)

    def where(self, offset: int) -> str:
        suffix = " of the decompressed data" if self.compressed else ""
        return f"{self.path}: byte offset {offset}{suffix}"

    # --- opening -------------------------------------------------------------------------------------
    def _open(self) -> bytes:
        try:
            raw = open(self.path, "rb")  # noqa: SIM115 - closed in chunks()
        except OSError as exc:
            raise NetrecallError(f"{self.path}: cannot open: {exc.strerror or exc}") from None
        self._raw = raw
        magic = raw.read(2)
        raw.seek(0)
        if magic == GZIP_MAGIC:
            self.compressed = True
            self._stream = gzip.GzipFile(fileobj=raw, mode="rb")  # type: ignore[assignment]
        else:
            self._stream = raw
        head = self._read(24)
        if not head:
            raise NetrecallError(f"{self.path}: empty file, not a capture (byte offset 0)")
        if len(head) < 4:
            raise NetrecallError(
                f"{self.path}: not a pcap or pcapng file: only {len(head)} bytes (byte offset 0)"
            )
        return head

    def _read(self, size: int) -> bytes:
        assert self._stream is not None
        if not self.compressed:
            data = self._stream.read(size)
            self._produced += len(data)
            return data
        # read1 in a loop: a damaged or truncated .gz must not lose what was decompressed before it
        parts: list[bytes] = []
        got = 0
        while got < size:
            try:
                part = self._stream.read1(size - got)  # type: ignore[attr-defined]
            except EOFError:
                self._note_stream_end("compressed data ends early (truncated .gz)", got)
                break
            except (gzip.BadGzipFile, zlib.error, OSError) as exc:
                self._note_stream_end(f"compressed data is damaged ({exc})", got)
                break
            if not part:
                break
            parts.append(part)
            got += len(part)
        self._produced += got
        return b"".join(parts)

    def _note_stream_end(self, reason: str, pending: int) -> None:
        # _consumed lags the parser by the buffered bytes; the offset is where the readable data ends
        self.damage.append(Damage(self._produced + pending, 0, reason, records=0))
        self._stream = _EmptyStream()  # type: ignore[assignment]

    # --- reading -------------------------------------------------------------------------------------
    def chunks(self) -> Iterator[FrameChunk]:
        head = self._open()
        try:
            magic_le = struct.unpack_from("<I", head)[0]
            magic_be = struct.unpack_from(">I", head)[0]
            if magic_le == PCAPNG_SHB:
                self.format = "pcapng"
                yield from self._pcapng_chunks(head)
            elif PCAP_MAGIC_US in (magic_le, magic_be) or PCAP_MAGIC_NS in (magic_le, magic_be):
                self.format = "pcap"
                yield from self._pcap_chunks(head, magic_le, magic_be)
            else:
                kind = " (gzip data)" if self.compressed else ""
                raise NetrecallError(
                    f"{self.path}: not a pcap or pcapng file{kind}: "
                    f"unknown magic {head[:4].hex()} at byte offset 0"
                )
        finally:
            if self._raw is not None:
                self._raw.close()

    def _fill(self, buf: Buffer, pos: int, want: int) -> tuple[Buffer, bool]:
        """Keep buf[pos:] and read more into a new buffer; returns (new buffer, eof).

        Every fill makes a new buffer: the chunks handed out earlier still point into the old one.
        """
        size = max(want, self.chunk_bytes)
        self._consumed += pos
        if self.compressed:
            more = self._read(size)
            return buf[pos:] + more, not more
        keep = len(buf) - pos
        new = np.empty(keep + size, dtype=np.uint8)  # not zero-filled: the read overwrites it
        new[:keep] = np.frombuffer(buf, dtype=np.uint8, offset=pos) if keep else new[:0]
        got = self._stream.readinto(memoryview(new)[keep:])  # type: ignore[union-attr]
        self._produced += got
        return new[: keep + got], got == 0

    # --- pcap ------------------------------------------------------------------------------------------
    def _pcap_chunks(self, head: bytes, magic_le: int, magic_be: int) -> Iterator[FrameChunk]:
        if len(head) < 24:
            raise NetrecallError(
                f"{self.where(len(head))}: pcap file header is truncated ({len(head)} of 24 bytes)"
            )
        order = "<" if magic_le in (PCAP_MAGIC_US, PCAP_MAGIC_NS) else ">"
        nanos = (magic_le if order == "<" else magic_be) == PCAP_MAGIC_NS
        _, _, _, _, _, snaplen, link_field = struct.unpack(order + "IHHiIII", head)
        # The top bits of the link-type field may carry an FCS length (pcap-linktype(7)): type is the low 16.
        link_type = link_field & 0xFFFF
        max_caplen = max(MAX_CAPLEN, snaplen if snaplen <= MAX_BLOCK else 0)
        frac_limit = 1_000_000_000 if nanos else 1_000_000
        record = struct.Struct(order + "IIII")
        dtype = np.dtype(order + "u4")
        self._consumed = 24
        buf, eof = self._fill(b"", 0, self.chunk_bytes)
        pos = 0
        last_sec = -1
        while True:
            positions, pos, broken = scan_pcap(buf, pos, order, max_caplen)
            if len(positions):
                chunk = pcap_chunk(buf, positions, dtype, nanos, link_type, self._consumed)
                last_sec = int(chunk.ts_ns[-1] // 1_000_000_000)
                self.records += len(positions)
                yield chunk
            if broken:
                found, buf, pos, eof = self._pcap_resync(
                    buf, pos, eof, record, max_caplen, frac_limit, last_sec
                )
                if not found:
                    break
                continue
            if eof:
                if pos < len(buf):
                    self._truncated_tail(buf, pos, record)
                break
            buf, eof = self._fill(buf, pos, self.chunk_bytes)
            pos = 0
            if eof and not len(buf):
                break

    def _truncated_tail(self, buf: Buffer, pos: int, record: struct.Struct) -> None:
        have = len(buf) - pos
        if have >= record.size:
            need = record.size + record.unpack_from(buf, pos)[2]
            reason = f"last record is truncated ({have} of {need} bytes)"
        else:
            reason = f"last record header is truncated ({have} of {record.size} bytes)"
        self.damage.append(Damage(self._consumed + pos, have, reason))

    def _pcap_resync(
        self,
        buf: Buffer,
        pos: int,
        eof: bool,
        record: struct.Struct,
        max_caplen: int,
        frac_limit: int,
        last_sec: int,
    ) -> tuple[bool, Buffer, int, bool]:
        """After a broken header at buf[pos]: find the next plausible record, note the skipped bytes."""
        start = self._consumed + pos
        caplen = record.unpack_from(buf, pos)[2]
        search = pos + 1
        while True:
            found, resume = find_pcap_record(buf, search, eof, record, max_caplen, frac_limit, last_sec)
            if found is not None:
                skipped = self._consumed + found - start
                self.damage.append(
                    Damage(
                        start, skipped, f"damaged record header (caplen {caplen}); skipped {skipped} bytes"
                    )
                )
                return True, buf, found, eof
            if eof:
                rest = self._consumed + len(buf) - start
                self.damage.append(
                    Damage(
                        start, rest, f"damaged record header (caplen {caplen}); no readable record after it"
                    )
                )
                return False, buf, len(buf), eof
            # keep what may still start a record and read on
            buf, eof = self._fill(buf, resume, self.chunk_bytes)
            search = 0

    # --- pcapng ----------------------------------------------------------------------------------------
    def _pcapng_chunks(self, head: bytes) -> Iterator[FrameChunk]:
        self._consumed = 0
        buf, eof = self._fill(head, 0, self.chunk_bytes)
        state = PcapngState()
        pos = 0
        while True:
            result = scan_pcapng(buf, pos, state)
            pos = result.pos
            if result.records:
                chunk = pcapng_chunk(buf, result, state, self._consumed)
                self.records += len(chunk)
                yield chunk
            if result.error:
                offset = self._consumed + pos
                if state.order == "" and offset == 0:
                    raise NetrecallError(f"{self.where(0)}: damaged pcapng section header: {result.error}")
                found, buf, pos, eof = self._pcapng_resync(buf, pos, eof, state, result.error)
                if not found:
                    break
                continue
            if result.new_section:
                continue  # the scan stopped at a section header: go on with its byte order
            if eof:
                if pos < len(buf):
                    have = len(buf) - pos
                    self.damage.append(
                        Damage(self._consumed + pos, have, f"last block is truncated ({have} bytes)")
                    )
                break
            want = max(self.chunk_bytes, result.need)
            buf, eof = self._fill(buf, pos, want)
            pos = 0
            if eof and not len(buf):
                break

    def _pcapng_resync(
        self, buf: Buffer, pos: int, eof: bool, state: PcapngState, reason: str
    ) -> tuple[bool, Buffer, int, bool]:
        start = self._consumed + pos
        search = pos + 4
        while True:
            found, resume = find_pcapng_block(buf, search, eof, state)
            if found is not None:
                skipped = self._consumed + found - start
                self.damage.append(
                    Damage(start, skipped, f"damaged block ({reason}); skipped {skipped} bytes")
                )
                return True, buf, found, eof
            if eof:
                rest = self._consumed + len(buf) - start
                self.damage.append(
                    Damage(start, rest, f"damaged block ({reason}); no readable block after it")
                )
                return False, buf, len(buf), eof
            buf, eof = self._fill(buf, resume, self.chunk_bytes)
            search = 0


class _EmptyStream:
    def read(self, size: int = -1) -> bytes:
        return b""

    def read1(self, size: int = -1) -> bytes:
        return b""


def iter_chunks(path: str | Path, chunk_bytes: int = CHUNK_BYTES) -> Iterator[FrameChunk]:
    """Every chunk of one file (convenience for callers that do not need the damage report)."""
    yield from CaptureReader(Path(path), chunk_bytes).chunks()
