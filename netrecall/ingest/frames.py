"""Captured frames in bulk: `FrameChunk` (numpy metadata plus every frame's bytes in one buffer), the
`Damage` a reader reports, and the byte gathers the file readers and the live capture share.

A chunk never holds a Python object per packet: decoding works on its arrays (ingest/decode.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

MAX_CAPLEN = 262144  # libpcap/wiretap's largest standard snapshot length
MAX_BLOCK = 16 << 20  # a record or pcapng block larger than this is damage, not data

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


def gather_u32x4(raw: np.ndarray, starts: np.ndarray, dtype: np.dtype) -> np.ndarray:
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
