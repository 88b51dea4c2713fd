"""The pcapng format: walking the blocks of a buffer (section headers with their byte order, interface
descriptions with their time units, enhanced/simple/obsolete packet blocks), turning the packets found
into a `FrameChunk`, and finding the next plausible block after damage. `CaptureReader`
(capture_file.py) drives these over a file.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from netrecall.ingest.frames import MAX_BLOCK, Buffer, FrameChunk, gather_u32x4

PCAPNG_SHB = 0x0A0D0D0A
PCAPNG_BOM = 0x1A2B3C4D


@dataclass
class Interface:
    link_type: int
    snaplen: int
    name: str
    # timestamp units: ns = ts * mul // div, then + offset_ns
    mul: int = 1000
    div: int = 1
    offset_ns: int = 0


@dataclass
class PcapngState:
    order: str = ""  # '<' or '>' once a section header was read
    interfaces: list[Interface] = field(default_factory=list)


@dataclass
class PcapngScan:
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


def scan_pcapng(buf: Buffer, pos: int, state: PcapngState) -> PcapngScan:
    """Walk blocks from pos until the buffer ends, damage, or a new section (its byte order may differ)."""
    result = PcapngScan(pos, [], [], {})
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


def _read_idb(buf: Buffer, pos: int, blen: int, order: str, state: PcapngState) -> None:
    link_type, _, snaplen = struct.unpack_from(order + "HHI", buf, pos + 8)
    iface = Interface(link_type=link_type, snaplen=snaplen, name=f"if{len(state.interfaces)}")
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
    buf: Buffer, pos: int, btype: int, blen: int, order: str, state: PcapngState, result: PcapngScan
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


def _to_ns(ts: int, iface: Interface) -> int:
    return _int64(ts * iface.mul // iface.div + iface.offset_ns)


def _int64(value: int) -> int:
    """A time out of the ns column's range wraps as the vectorised path's int64 arithmetic does: an absurd
    if_tsoffset or timestamp makes a wrong time, never a crash (fuzz/capture)."""
    return ((value + (1 << 63)) & ((1 << 64) - 1)) - (1 << 63)


def pcapng_chunk(buf: Buffer, scan: PcapngScan, state: PcapngState, base: int) -> FrameChunk:
    raw = np.frombuffer(buf, dtype=np.uint8)
    order = state.order
    n_ifaces = len(state.interfaces)
    blocks = np.asarray(scan.epb, dtype=np.int64)
    # Gathers stay inside each block: +8 holds (interface, ts high, ts low, caplen), +12 ends with origlen.
    dtype = np.dtype(order + "u4")
    words = gather_u32x4(raw, blocks + 8, dtype)
    iface = words[:, 0].astype(np.int64)
    ts = (words[:, 1].astype(np.uint64) << np.uint64(32)) | words[:, 2].astype(np.uint64)
    caplen = words[:, 3].astype(np.uint32)
    origlen = gather_u32x4(raw, blocks + 12, dtype)[:, 3]
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


def _ts_to_ns(ts: np.ndarray, iface: Interface) -> np.ndarray:
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


def find_pcapng_block(buf: Buffer, start: int, eof: bool, state: PcapngState) -> tuple[int | None, int]:
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
