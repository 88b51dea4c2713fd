"""Streaming readers for capture files: pcap (both byte orders, µs and ns), pcapng and gzip of either.

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
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import BinaryIO

import numpy as np

from netrecall.errors import NetrecallError

CHUNK_BYTES = 8 << 20  # how much of the file one read takes; a chunk holds the records that end inside it
MAX_CAPLEN = 262144  # libpcap/wiretap's largest standard snapshot length
MAX_BLOCK = 16 << 20  # a pcapng block larger than this is damage, not data

PCAP_MAGIC_US = 0xA1B2C3D4
PCAP_MAGIC_NS = 0xA1B23C4D
PCAPNG_SHB = 0x0A0D0D0A
PCAPNG_BOM = 0x1A2B3C4D
GZIP_MAGIC = b"\x1f\x8b"

DIRECTION_UNKNOWN, DIRECTION_IN, DIRECTION_OUT = 0, 1, 2
Buffer = bytes | bytearray | np.ndarray  # what the parsers read: anything with the buffer protocol


@dataclass
class FrameChunk:
    """A batch of captured frames: per-frame arrays plus the frame bytes in one buffer.

    Frame i is `data[offsets[i] : offsets[i] + caplen[i]]`. Offsets never decrease and frames never
    overlap; gaps between frames are allowed (`offsets[i + 1] >= offsets[i] + caplen[i]`), so a file
    reader hands out its own read buffer with the record headers still in place instead of copying
    every frame. `offsets[n]` is where the last frame ends. A contiguous chunk (no gaps, as
    `from_frames` builds) has `offsets[i + 1] == offsets[i] + caplen[i]`. `iface_index` points into
    `ifaces` (interface names, '' when unknown).
    """

    ts_ns: np.ndarray  # int64, nanoseconds since the epoch
    caplen: np.ndarray  # uint32, bytes captured
    origlen: np.ndarray  # uint32, length on the wire
    link_type: np.ndarray  # uint16, LINKTYPE_* of each frame
    iface_index: np.ndarray  # uint32, index into `ifaces`
    direction: np.ndarray  # uint8: 0 unknown, 1 in, 2 out
    data: np.ndarray  # uint8, the frames back to back
    offsets: np.ndarray  # int64, len n + 1: where each frame starts, then where the last one ends
    ifaces: tuple[str, ...] = ("",)
    file_offsets: np.ndarray | None = None  # int64 byte offset of each record in the (decompressed) file

    def __len__(self) -> int:
        return len(self.ts_ns)

    def frame(self, index: int) -> bytes:
        """One frame's bytes (for slow paths and tests, never the bulk path)."""
        start = int(self.offsets[index])
        return self.data[start : start + int(self.caplen[index])].tobytes()

    @property
    def contiguous(self) -> bool:
        """Whether the frames sit back to back (what an Arrow binary column needs)."""
        n = len(self.caplen)
        return n == 0 or bool(np.array_equal(np.diff(self.offsets), np.asarray(self.caplen, dtype=np.int64)))

    def compacted(self) -> FrameChunk:
        """The same chunk with the frames copied back to back."""
        if self.contiguous:
            return self
        data, offsets = compact_frames(self.data, np.asarray(self.offsets[:-1], np.int64), self.caplen)
        return replace(self, data=data, offsets=offsets)

    @classmethod
    def from_frames(
        cls,
        frames: Sequence[bytes],
        ts_ns: Sequence[int] | np.ndarray,
        link_type: int | Sequence[int] = 1,
        origlen: Sequence[int] | np.ndarray | None = None,
        iface_index: int | Sequence[int] = 0,
        direction: int | Sequence[int] = DIRECTION_UNKNOWN,
        ifaces: tuple[str, ...] = ("",),
    ) -> FrameChunk:
        """Build a chunk from a list of frames (the live capture path)."""
        n = len(frames)
        caplen = np.fromiter((len(f) for f in frames), dtype=np.uint32, count=n)
        offsets = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(caplen, out=offsets[1:])
        return cls(
            ts_ns=np.asarray(ts_ns, dtype=np.int64),
            caplen=caplen,
            origlen=caplen.copy() if origlen is None else np.asarray(origlen, dtype=np.uint32),
            link_type=_broadcast(link_type, n, np.uint16),
            iface_index=_broadcast(iface_index, n, np.uint32),
            direction=_broadcast(direction, n, np.uint8),
            data=np.frombuffer(b"".join(frames), dtype=np.uint8),
            offsets=offsets,
            ifaces=ifaces,
        )


def _broadcast(value: int | Sequence[int], n: int, dtype: type) -> np.ndarray:
    if isinstance(value, int):
        return np.full(n, value, dtype=dtype)
    return np.asarray(value, dtype=dtype)


@dataclass(frozen=True)
class Damage:
    """A part of the file that could not be read as records."""

    offset: int  # byte offset in the file (in the decompressed stream for .gz)
    length: int  # bytes skipped (0 when reading stopped there)
    reason: str
    records: int = 1  # records lost, at least the one whose header was broken


@dataclass
class _Interface:
    link_type: int
    snaplen: int
    name: str
    # timestamp units: ns = ts * mul // div, then + offset_ns
    mul: int = 1000
    div: int = 1
    offset_ns: int = 0


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
            positions, pos, broken = _scan_pcap(buf, pos, order, max_caplen)
            if len(positions):
                chunk = _pcap_chunk(buf, positions, dtype, nanos, link_type, self._consumed)
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
            found, resume = _find_pcap_record(buf, search, eof, record, max_caplen, frac_limit, last_sec)
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
        state = _PcapngState()
        pos = 0
        while True:
            result = _scan_pcapng(buf, pos, state)
            pos = result.pos
            if result.records:
                chunk = _pcapng_chunk(buf, result, state, self._consumed)
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
        self, buf: Buffer, pos: int, eof: bool, state: _PcapngState, reason: str
    ) -> tuple[bool, Buffer, int, bool]:
        start = self._consumed + pos
        search = pos + 4
        while True:
            found, resume = _find_pcapng_block(buf, search, eof, state)
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


# --- pcap helpers --------------------------------------------------------------------------------------
def _scan_pcap(buf: Buffer, pos: int, order: str, max_caplen: int) -> tuple[np.ndarray, int, bool]:
    """Walk the record chain from pos: record starts, where it stopped, and whether a header was broken.

    The loop is the one per-record Python step of a pcap import, so it only follows the chain; the
    checks run vectorised afterwards (an absurd caplen sends the walk off the end, and is found there).
    """
    caplen_at = struct.Struct(order + "I").unpack_from
    positions: list[int] = []
    append = positions.append
    limit = len(buf) - 16
    start = pos
    while pos <= limit:
        append(pos)
        pos += 16 + caplen_at(buf, pos + 8)[0]
    if not positions:
        return np.zeros(0, dtype=np.int64), start, False
    starts = np.asarray(positions, dtype=np.int64)
    caplens = np.ndarray((len(buf) - 3,), dtype=order + "u4", buffer=buf, strides=(1,))[starts + 8].astype(
        np.int64
    )
    bad = np.flatnonzero(caplens > max_caplen)
    if bad.size:
        first = int(bad[0])
        return starts[:first], int(starts[first]), True
    if starts[-1] + 16 + caplens[-1] > len(buf):  # the last record is not all in the buffer yet
        return starts[:-1], int(starts[-1]), False
    return starts, pos, False


def _pcap_chunk(
    buf: Buffer, starts: np.ndarray, dtype: np.dtype, nanos: bool, link_type: int, base: int
) -> FrameChunk:
    raw = np.frombuffer(buf, dtype=np.uint8)
    headers = _gather_u32x4(raw, starts, dtype)
    sec = headers[:, 0].astype(np.int64)
    frac = headers[:, 1].astype(np.int64)
    ts_ns = sec * 1_000_000_000 + (frac if nanos else frac * 1000)
    caplen = headers[:, 2].astype(np.uint32)
    n = len(starts)
    offsets = np.empty(n + 1, dtype=np.int64)
    offsets[:n] = starts + 16
    offsets[n] = offsets[n - 1] + int(caplen[-1])
    return FrameChunk(
        ts_ns=ts_ns,
        caplen=caplen,
        origlen=headers[:, 3].astype(np.uint32),
        link_type=np.full(n, link_type, dtype=np.uint16),
        iface_index=np.zeros(n, dtype=np.uint32),
        direction=np.zeros(n, dtype=np.uint8),
        data=raw,  # the read buffer itself: frames stay where they are, headers in between
        offsets=offsets,
        file_offsets=starts + base,
    )


def _gather_u32x4(raw: np.ndarray, starts: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Four consecutive u32 at each start (any alignment), in the file's byte order."""
    if len(raw) < 16:
        return np.zeros((0, 4), dtype=np.uint32)
    view = np.ndarray((len(raw) - 15,), dtype="V16", buffer=raw, strides=(1,))
    return view[starts].view(dtype).reshape(-1, 4).astype(np.uint32)


def compact_frames(raw: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Copy the byte ranges [start, start + length) back to back; returns (data, offsets n + 1)."""
    n = len(starts)
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    if n == 0:
        return np.zeros(0, dtype=np.uint8), offsets
    # Mark each range in a +1/-1 difference array; its running sum is 1 exactly on kept bytes.
    # Ranges come in file order and never touch (record headers sit between them), so starts and ends
    # are all distinct and plain fancy assignment is exact.
    marks = np.zeros(len(raw) + 1, dtype=np.int8)
    nonempty = lengths > 0
    s = starts[nonempty]
    marks[s] = 1
    marks[s + lengths[nonempty].astype(np.int64)] -= 1
    keep = np.cumsum(marks[:-1], dtype=np.int8).view(np.bool_)
    return raw[keep], offsets


def _plausible_pcap(
    buf: Buffer, pos: int, record: struct.Struct, max_caplen: int, frac_limit: int, last_sec: int
) -> bool:
    sec, frac, caplen, origlen = record.unpack_from(buf, pos)
    if caplen > max_caplen or frac >= frac_limit or origlen > max(MAX_BLOCK, max_caplen) or caplen > origlen:
        return False
    return not (last_sec >= 0 and abs(sec - last_sec) > 7 * 86400)


def _find_pcap_record(
    buf: Buffer, start: int, eof: bool, record: struct.Struct, max_caplen: int, frac_limit: int, last_sec: int
) -> tuple[int | None, int]:
    """The first position >= start holding a plausible record followed by another (or by the end of file).

    Returns (position or None, where to keep the buffer from if more data is needed).
    """
    end = len(buf)
    if end - start < 16:
        return None, start
    raw = np.frombuffer(buf, dtype=np.uint8)
    count = end - start - 15
    words = np.ndarray((count, 4), dtype=record.format[0] + "u4", buffer=raw, offset=start, strides=(1, 4))
    sec, frac, caplen, origlen = (words[:, i].astype(np.int64) for i in range(4))
    ok = (
        (caplen <= max_caplen)
        & (frac < frac_limit)
        & (caplen <= origlen)
        & (origlen <= max(MAX_BLOCK, max_caplen))
    )
    if last_sec >= 0:
        ok &= np.abs(sec - last_sec) <= 7 * 86400
    for index in np.flatnonzero(ok):
        pos = start + int(index)
        nxt = pos + 16 + int(caplen[index])
        if nxt == end and eof:
            return pos, pos
        if nxt + 16 > end:
            if eof:
                continue
            return None, pos  # cannot check the next record yet: keep from here and read more
        if _plausible_pcap(buf, nxt, record, max_caplen, frac_limit, last_sec):
            return pos, pos
    return None, max(start, end - 15)


# --- pcapng helpers ------------------------------------------------------------------------------------
@dataclass
class _PcapngState:
    order: str = ""  # '<' or '>' once a section header was read
    interfaces: list[_Interface] = field(default_factory=list)


@dataclass
class _PcapngScan:
    pos: int
    epb: list[int]  # block starts of Enhanced Packet Blocks (the fast path)
    other: list[
        tuple[int, int, int, int, int, int, int]
    ]  # (block pos, data pos, caplen, origlen, iface, ts_ns, dir)
    epb_flags: dict[int, int]  # block pos -> epb_flags, for the few EPBs that carry options
    error: str = ""
    need: int = 0  # bytes needed for the next block when it does not fit
    new_section: bool = False

    @property
    def records(self) -> int:
        return len(self.epb) + len(self.other)


def _scan_pcapng(buf: Buffer, pos: int, state: _PcapngState) -> _PcapngScan:
    """Walk blocks from pos until the buffer ends, damage, or a new section (its byte order may differ)."""
    result = _PcapngScan(pos, [], [], {})
    epb = result.epb
    end = len(buf)
    order = state.order
    head = struct.Struct(order + "II") if order else None
    word = struct.Struct(order + "I") if order else None
    while pos + 12 <= end:
        if head is None or struct.unpack_from("<I", buf, pos)[0] == PCAPNG_SHB:
            if result.records:
                result.new_section = True
                break
            shb = _read_shb(buf, pos)
            if isinstance(shb, str):
                result.error = shb
                break
            if shb is None:  # need more bytes
                result.need = 28
                break
            order, blen = shb
            if pos + blen > end:
                result.need = blen
                break
            state.order = order
            state.interfaces = []
            head = struct.Struct(order + "II")
            word = struct.Struct(order + "I")
            pos += blen
            result.pos = pos
            continue
        btype, blen = head.unpack_from(buf, pos)
        if blen < 12 or blen % 4 or blen > MAX_BLOCK:
            result.error = f"block length {blen}"
            break
        if pos + blen > end:
            result.need = blen
            break
        if word.unpack_from(buf, pos + blen - 4)[0] != blen:  # type: ignore[union-attr]
            result.error = f"block length {blen} does not match its trailer"
            break
        if btype == 6:
            if blen < 32:
                result.error = f"enhanced packet block too short ({blen} bytes)"
                break
            caplen = word.unpack_from(buf, pos + 20)[0]  # type: ignore[union-attr]
            if caplen > blen - 32:
                result.error = f"captured length {caplen} larger than its block"
                break
            if blen > 32 + ((caplen + 3) & ~3):
                flags = _option_u32(buf, pos + 28 + ((caplen + 3) & ~3), pos + blen - 4, order, 2)
                if flags is not None:
                    result.epb_flags[pos] = flags
            epb.append(pos)
        elif btype == 1:
            if result.records:
                # the packets read so far belong to the interfaces known before this one: a chunk resolves
                # link types from the list as it ends, so it ends here (fuzz/capture)
                result.new_section = True
                break
            _read_idb(buf, pos, blen, order, state)
        elif btype in (2, 3):
            problem = _read_slow_packet(buf, pos, btype, blen, order, state, result)
            if problem:
                result.error = problem
                break
        pos += blen
        result.pos = pos
    result.pos = pos
    return result


def _read_shb(buf: Buffer, pos: int) -> tuple[str, int] | str | None:
    if pos + 12 > len(buf):
        return None
    bom_le = struct.unpack_from("<I", buf, pos + 8)[0]
    if bom_le == PCAPNG_BOM:
        order = "<"
    elif struct.unpack_from(">I", buf, pos + 8)[0] == PCAPNG_BOM:
        order = ">"
    else:
        return f"section header has byte-order magic {bytes(buf[pos + 8 : pos + 12]).hex()}"
    blen = struct.unpack_from(order + "I", buf, pos + 4)[0]
    if blen < 28 or blen % 4 or blen > MAX_BLOCK:
        return f"section header block length {blen}"
    return order, blen


def _options(buf: Buffer, pos: int, end: int, order: str) -> Iterator[tuple[int, bytes]]:
    head = struct.Struct(order + "HH")
    while pos + 4 <= end:
        code, length = head.unpack_from(buf, pos)
        if code == 0:
            return
        value = bytes(buf[pos + 4 : min(pos + 4 + length, end)])  # never past the block (fuzz/capture)
        yield code, value
        pos += 4 + ((length + 3) & ~3)


def _option_u32(buf: Buffer, pos: int, end: int, order: str, wanted: int) -> int | None:
    for code, value in _options(buf, pos, end, order):
        if code == wanted and len(value) >= 4:
            return struct.unpack(order + "I", value[:4])[0]
    return None


def _read_idb(buf: Buffer, pos: int, blen: int, order: str, state: _PcapngState) -> None:
    link_type, _, snaplen = struct.unpack_from(order + "HHI", buf, pos + 8)
    iface = _Interface(link_type=link_type, snaplen=snaplen, name=f"if{len(state.interfaces)}")
    for code, value in _options(buf, pos + 16, pos + blen - 4, order):
        if code == 2:  # if_name
            iface.name = value.rstrip(b"\0").decode("utf-8", "replace")
        elif code == 9 and value:  # if_tsresol: 10^-n, or 2^-n with the top bit set
            resol = value[0]
            if resol & 0x80:
                iface.mul, iface.div = 1_000_000_000, 1 << min(resol & 0x7F, 62)
            elif resol <= 9:
                iface.mul, iface.div = 10 ** (9 - resol), 1
            else:
                iface.mul, iface.div = 1, 10 ** min(resol - 9, 19)  # 10^19 still fits u64 (fuzz/capture)
        elif code == 14 and len(value) >= 8:  # if_tsoffset, seconds
            iface.offset_ns = _int64(struct.unpack(order + "q", value[:8])[0] * 1_000_000_000)
    state.interfaces.append(iface)


def _read_slow_packet(
    buf: Buffer, pos: int, btype: int, blen: int, order: str, state: _PcapngState, result: _PcapngScan
) -> str:
    """Simple Packet Blocks and the obsolete Packet Block: rare, so one Python tuple each."""
    if btype == 3:  # SPB: original length, then data; caplen bounded by the block and interface 0's snaplen
        if blen < 16:
            return f"simple packet block too short ({blen} bytes)"
        origlen = struct.unpack_from(order + "I", buf, pos + 8)[0]
        caplen = min(origlen, blen - 16)
        if state.interfaces and state.interfaces[0].snaplen:
            caplen = min(caplen, state.interfaces[0].snaplen)
        result.other.append((pos, pos + 12, caplen, origlen, 0, 0, 0))
        return ""
    if blen < 32:
        return f"packet block too short ({blen} bytes)"
    iface, _, ts_high, ts_low, caplen, origlen = struct.unpack_from(order + "HHIIII", buf, pos + 8)
    if caplen > blen - 32:
        return f"captured length {caplen} larger than its block"
    flags = _option_u32(buf, pos + 28 + ((caplen + 3) & ~3), pos + blen - 4, order, 2) or 0
    ts_ns = _to_ns((ts_high << 32) | ts_low, state.interfaces[iface]) if iface < len(state.interfaces) else 0
    result.other.append((pos, pos + 28, caplen, origlen, iface, ts_ns, flags & 3))
    return ""


def _to_ns(ts: int, iface: _Interface) -> int:
    return _int64(ts * iface.mul // iface.div + iface.offset_ns)


def _int64(value: int) -> int:
    """A time out of the ns column's range wraps as the vectorised path's int64 arithmetic does: an absurd
    if_tsoffset or timestamp makes a wrong time, never a crash (fuzz/capture)."""
    return ((value + (1 << 63)) & ((1 << 64) - 1)) - (1 << 63)


def _pcapng_chunk(buf: Buffer, scan: _PcapngScan, state: _PcapngState, base: int) -> FrameChunk:
    raw = np.frombuffer(buf, dtype=np.uint8)
    order = state.order
    n_ifaces = len(state.interfaces)
    blocks = np.asarray(scan.epb, dtype=np.int64)
    # Gathers stay inside each block: +8 holds (interface, ts high, ts low, caplen), +12 ends with origlen.
    dtype = np.dtype(order + "u4")
    words = _gather_u32x4(raw, blocks + 8, dtype)
    iface = words[:, 0].astype(np.int64)
    ts = (words[:, 1].astype(np.uint64) << np.uint64(32)) | words[:, 2].astype(np.uint64)
    caplen = words[:, 3].astype(np.uint32)
    origlen = _gather_u32x4(raw, blocks + 12, dtype)[:, 3]
    ts_ns = np.zeros(len(blocks), dtype=np.int64)
    for index in np.unique(iface):
        rows = iface == index
        if 0 <= index < n_ifaces:
            ts_ns[rows] = _ts_to_ns(ts[rows], state.interfaces[int(index)])
    direction = np.zeros(len(blocks), dtype=np.uint8)
    if scan.epb_flags:
        where = {p: i for i, p in enumerate(scan.epb)}
        for block_pos, flags in scan.epb_flags.items():
            direction[where[block_pos]] = flags & 3
    starts = blocks + 28
    file_offsets = blocks
    if scan.other:
        other = np.array(scan.other, dtype=np.int64).reshape(-1, 7)
        file_offsets = np.concatenate([blocks, other[:, 0]])
        starts = np.concatenate([starts, other[:, 1]])
        caplen = np.concatenate([caplen, other[:, 2].astype(np.uint32)])
        origlen = np.concatenate([origlen, other[:, 3].astype(np.uint32)])
        iface = np.concatenate([iface, other[:, 4]])
        ts_ns = np.concatenate([ts_ns, other[:, 5]])
        direction = np.concatenate([direction, other[:, 6].astype(np.uint8)])
        order_index = np.argsort(file_offsets, kind="stable")
        file_offsets, starts, caplen, origlen, iface, ts_ns, direction = (
            a[order_index] for a in (file_offsets, starts, caplen, origlen, iface, ts_ns, direction)
        )
    link_types = np.array([i.link_type for i in state.interfaces] + [0xFFFF], dtype=np.uint16)
    # A packet naming an interface that was never described keeps link type 0xFFFF: stored raw, undecoded.
    safe_iface = np.where((iface >= 0) & (iface < n_ifaces), iface, n_ifaces)
    offsets = np.append(starts, starts[-1] + caplen[-1].astype(np.int64))
    names = (*(i.name for i in state.interfaces), "")
    return FrameChunk(
        ts_ns=ts_ns,
        caplen=caplen,
        origlen=origlen.astype(np.uint32),
        link_type=link_types[safe_iface],
        iface_index=safe_iface.astype(np.uint32),
        direction=direction,
        data=raw,
        offsets=offsets,
        ifaces=names,
        file_offsets=file_offsets + base,
    )


def _ts_to_ns(ts: np.ndarray, iface: _Interface) -> np.ndarray:
    if iface.div == 1:
        out = ts.astype(np.int64) * np.int64(iface.mul)
    elif iface.mul == 1:
        out = (ts // np.uint64(iface.div)).astype(np.int64)
    else:  # 2^-n units: split so the multiplication cannot overflow 64 bits
        div = np.uint64(iface.div)
        whole, rest = ts // div, ts % div
        out = whole.astype(np.int64) * np.int64(iface.mul) + (
            (rest.astype(np.float64) * iface.mul / iface.div).astype(np.int64)
        )
    return out + np.int64(iface.offset_ns)


def _find_pcapng_block(buf: Buffer, start: int, eof: bool, state: _PcapngState) -> tuple[int | None, int]:
    """The next 4-aligned-looking block whose length matches its trailer and is a known block type."""
    order = state.order or "<"
    head = struct.Struct(order + "II")
    end = len(buf)
    pos = start
    while pos + 12 <= end:
        btype, blen = head.unpack_from(buf, pos)
        if btype in (1, 2, 3, 4, 5, 6, PCAPNG_SHB) and 12 <= blen <= MAX_BLOCK and blen % 4 == 0:
            if pos + blen > end:
                if not eof:
                    return None, pos
            elif struct.unpack_from(order + "I", buf, pos + blen - 4)[0] == blen:
                return pos, pos
        pos += 1
    return None, max(start, end - 11)


def iter_chunks(path: str | Path, chunk_bytes: int = CHUNK_BYTES) -> Iterator[FrameChunk]:
    """Every chunk of one file (convenience for callers that do not need the damage report)."""
    yield from CaptureReader(Path(path), chunk_bytes).chunks()
