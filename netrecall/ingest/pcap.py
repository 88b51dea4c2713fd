"""The classic pcap format (both byte orders, microsecond and nanosecond magic): walking the record
chain of a buffer, turning the records found into a `FrameChunk`, and finding the next plausible record
after damage. `CaptureReader` (capture_file.py) drives these over a file.
"""

from __future__ import annotations

import struct

import numpy as np

from netrecall.ingest.frames import MAX_BLOCK, Buffer, FrameChunk, gather_u32x4

PCAP_MAGIC_US = 0xA1B2C3D4
PCAP_MAGIC_NS = 0xA1B23C4D


def scan_pcap(buf: Buffer, pos: int, order: str, max_caplen: int) -> tuple[np.ndarray, int, bool]:
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


def pcap_chunk(
    buf: Buffer, starts: np.ndarray, dtype: np.dtype, nanos: bool, link_type: int, base: int
) -> FrameChunk:
    raw = np.frombuffer(buf, dtype=np.uint8)
    headers = gather_u32x4(raw, starts, dtype)
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


def _plausible_pcap(
    buf: Buffer, pos: int, record: struct.Struct, max_caplen: int, frac_limit: int, last_sec: int
) -> bool:
    sec, frac, caplen, origlen = record.unpack_from(buf, pos)
    if caplen > max_caplen or frac >= frac_limit or origlen > max(MAX_BLOCK, max_caplen) or caplen > origlen:
        return False
    return not (last_sec >= 0 and abs(sec - last_sec) > 7 * 86400)


def find_pcap_record(
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
