"""Decode a FrameChunk's L2..L4 headers into the `packets` columns, vectorised with numpy.

Every field is read for all frames at once at per-frame computed offsets (strided views of the frame
buffer give big-endian u16/u32 and 4/16-byte reads at any alignment), and every read is masked by the
frame's caplen, so a short frame yields zeros instead of a neighbour's bytes. Link types: Ethernet
(VLAN/QinQ, PPPoE), Linux cooked SLL and SLL2, raw IP, BSD null/loopback. Network: IPv4 (fragments kept:
`ip_frag` set; later fragments carry no ports) and IPv6 (extension headers walked). Transport: TCP, UDP,
UDP-Lite, SCTP, DCCP ports; TCP flags/seq/ack; ICMP/ICMPv6. Every frame becomes a row, IP or not
(`ip_version` 0), and `data` is the exact captured bytes, built as an Arrow column straight from the
buffer and offsets. Tunnels are described by their outer headers.

Not computed here: `flow_id` (the engine's DEFAULT), the src_/dst_ identity columns (the resolver).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from netrecall.ingest.frames import FrameChunk

LINKTYPE_NULL = 0
LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101
LINKTYPE_LOOP = 108
LINKTYPE_LINUX_SLL = 113
LINKTYPE_LINUX_SLL2 = 276
LINKTYPE_IPV4 = 228
LINKTYPE_IPV6 = 229
RAW_LINK_TYPES = (LINKTYPE_RAW, 12, 14)  # DLT_RAW is 12 on most platforms and 14 on OpenBSD
KNOWN_LINK_TYPES = frozenset(
    {
        LINKTYPE_NULL,
        LINKTYPE_ETHERNET,
        LINKTYPE_LOOP,
        LINKTYPE_LINUX_SLL,
        LINKTYPE_LINUX_SLL2,
        LINKTYPE_IPV4,
        LINKTYPE_IPV6,
        *RAW_LINK_TYPES,
    }
)

ETHERTYPE_IPV4 = 0x0800
ETHERTYPE_IPV6 = 0x86DD
ETHERTYPE_PPPOE = 0x8864
VLAN_TAGS = (0x8100, 0x88A8, 0x9100)
IPV6_EXT_GENERIC = (0, 43, 60, 135, 139, 140)  # hop-by-hop, routing, dest opts, mobility, HIP, shim6
PORT_PROTOCOLS = (6, 17, 33, 132, 136)  # TCP, UDP, DCCP, SCTP, UDP-Lite: ports in the first 4 bytes
PAD = 64  # zero bytes after the buffer so no gather can run off its end
_V4_MAPPED_PREFIX = np.frombuffer(b"\x00\x00\xff\xff", dtype=np.uint32)[0]  # bytes 8..11 of ::ffff:a.b.c.d

# The packets columns this module fills, in table order (flow_id and identity columns come later).
PACKET_ARROW_SCHEMA = pa.schema(
    [
        ("ts", pa.timestamp("ns", tz="UTC")),
        ("node", pa.string()),
        ("iface", pa.string()),
        ("direction", pa.uint8()),
        ("source", pa.string()),
        ("seq", pa.uint64()),
        ("link_type", pa.uint16()),
        ("caplen", pa.uint32()),
        ("origlen", pa.uint32()),
        ("vlan", pa.uint16()),
        ("ip_version", pa.uint8()),
        ("src_ip", pa.binary(16)),
        ("dst_ip", pa.binary(16)),
        ("l4", pa.uint8()),
        ("src_port", pa.uint16()),
        ("dst_port", pa.uint16()),
        ("ip_frag", pa.uint8()),
        ("tcp_flags", pa.uint16()),
        ("tcp_seq", pa.uint32()),
        ("tcp_ack", pa.uint32()),
        ("tcp_window", pa.uint16()),
        ("payload_offset", pa.uint16()),
        ("payload_len", pa.uint32()),
        ("data", pa.binary()),
    ]
)
# The layout chDB's Python() reader converts with the least work (decode_frames(chdb_layout=True)):
# `data` as views over the read buffer, and the per-capture strings dictionary-encoded.
_LABEL = pa.dictionary(pa.int32(), pa.string())
PACKET_CHDB_SCHEMA = pa.schema(
    [
        pa.field(
            f.name,
            {"data": pa.binary_view(), "node": _LABEL, "iface": _LABEL, "source": _LABEL}.get(f.name, f.type),
        )
        for f in PACKET_ARROW_SCHEMA
    ]
)


class _Frames:
    """Masked big-endian reads at per-frame offsets into one padded frame buffer."""

    def __init__(self, chunk: FrameChunk) -> None:
        padded = np.ascontiguousarray(chunk.data, dtype=np.uint8)
        if len(padded) < PAD:
            padded = np.concatenate([padded, np.zeros(PAD, dtype=np.uint8)])
        # Reads past a frame's end are masked out by has(); clamping keeps them inside the buffer. The clamp
        # depends on the read's width: a frame ending at the buffer's end must still read its own last
        # bytes (one clamp for all widths moved a 1-byte read there onto another byte: fuzz/decode).
        self.size = len(padded)
        self.start = np.asarray(chunk.offsets[:-1], dtype=np.int64)
        self.caplen = np.asarray(chunk.caplen, dtype=np.int64)
        self.u8 = padded
        self.u16 = np.ndarray((len(padded) - 1,), dtype=">u2", buffer=padded, strides=(1,))
        self.u32 = np.ndarray((len(padded) - 3,), dtype=">u4", buffer=padded, strides=(1,))
        self.v4 = np.ndarray((len(padded) - 3,), dtype="V4", buffer=padded, strides=(1,))
        self.v16 = np.ndarray((len(padded) - 15,), dtype="V16", buffer=padded, strides=(1,))

    def _index(self, offset: np.ndarray | int, width: int) -> np.ndarray:
        return np.minimum(self.start + offset, self.size - width)

    def has(self, offset: np.ndarray | int, size: int) -> np.ndarray:
        """Whether `size` bytes at `offset` lie inside each frame as captured."""
        return (np.asarray(offset) >= 0) & (np.asarray(offset) + size <= self.caplen)

    def byte(self, offset: np.ndarray | int) -> np.ndarray:
        return self.u8[self._index(offset, 1)].astype(np.int64)

    def be16(self, offset: np.ndarray | int) -> np.ndarray:
        return self.u16[self._index(offset, 2)].astype(np.int64)

    def be32(self, offset: np.ndarray | int) -> np.ndarray:
        return self.u32[self._index(offset, 4)].astype(np.int64)

    def bytes4(self, offset: np.ndarray) -> np.ndarray:
        return self.v4[self._index(offset, 4)].view(np.uint8).reshape(-1, 4)

    def bytes16(self, offset: np.ndarray) -> np.ndarray:
        return self.v16[self._index(offset, 16)].view(np.uint8).reshape(-1, 16)


def _link_layer(frames: _Frames, link_type: np.ndarray, direction: np.ndarray):
    """Per frame: network header offset (-1 when none), ethertype-like protocol, VLAN id, direction."""
    n = len(link_type)
    l3 = np.full(n, -1, dtype=np.int64)
    proto = np.zeros(n, dtype=np.int64)  # an ethertype, or 4/6 for raw IP read from the version nibble
    vlan = np.zeros(n, dtype=np.int64)
    caplen = frames.caplen

    eth = (link_type == LINKTYPE_ETHERNET) & (caplen >= 14)
    if eth.any():
        et = np.where(eth, frames.be16(12), 0)
        off = np.where(eth, 14, -1)
        for _ in range(3):  # VLAN, QinQ and one more stacked tag
            tagged = eth & np.isin(et, VLAN_TAGS) & frames.has(off, 4)
            if not tagged.any():
                break
            vlan = np.where(tagged & (vlan == 0), frames.be16(off) & 0x0FFF, vlan)
            et = np.where(tagged, frames.be16(off + 2), et)
            off = np.where(tagged, off + 4, off)
        pppoe = eth & (et == ETHERTYPE_PPPOE) & frames.has(off, 8)
        if pppoe.any():  # PPPoE session: 6-byte header then the PPP protocol (0x21 IPv4, 0x57 IPv6)
            ppp = frames.be16(off + 6)
            et = np.where(
                pppoe, np.select([ppp == 0x21, ppp == 0x57], [ETHERTYPE_IPV4, ETHERTYPE_IPV6], 0), et
            )
            off = np.where(pppoe, off + 8, off)
        l3 = np.where(eth, off, l3)
        proto = np.where(eth, et, proto)

    sll = (link_type == LINKTYPE_LINUX_SLL) & (caplen >= 16)
    if sll.any():
        l3 = np.where(sll, 16, l3)
        proto = np.where(sll, frames.be16(14), proto)
        outgoing = frames.be16(0) == 4  # packet type 4: sent by this host
        direction = np.where(sll & (direction == 0), np.where(outgoing, 2, 1), direction)

    sll2 = (link_type == LINKTYPE_LINUX_SLL2) & (caplen >= 20)
    if sll2.any():
        l3 = np.where(sll2, 20, l3)
        proto = np.where(sll2, frames.be16(0), proto)
        outgoing = frames.byte(10) == 4
        direction = np.where(sll2 & (direction == 0), np.where(outgoing, 2, 1), direction)

    raw = np.isin(link_type, (*RAW_LINK_TYPES, LINKTYPE_IPV4, LINKTYPE_IPV6)) & (caplen >= 1)
    if raw.any():
        nibble = frames.byte(0) >> 4
        l3 = np.where(raw, 0, l3)
        proto = np.where(
            raw, np.select([nibble == 4, nibble == 6], [ETHERTYPE_IPV4, ETHERTYPE_IPV6], 0), proto
        )

    null = np.isin(link_type, (LINKTYPE_NULL, LINKTYPE_LOOP)) & (caplen >= 4)
    if null.any():
        family = frames.be32(0)
        # DLT_NULL stores the address family in the capturing host's byte order; LOOP in network order.
        swapped = family.astype(np.uint32).byteswap().astype(np.int64)
        family = np.where((link_type == LINKTYPE_NULL) & (family > 0xFFFF), swapped, family)
        et = np.select(
            [family == 2, np.isin(family, (10, 23, 24, 28, 30))], [ETHERTYPE_IPV4, ETHERTYPE_IPV6], 0
        )
        l3 = np.where(null, 4, l3)
        proto = np.where(null, et, proto)
    return l3, proto, vlan, direction


def decode_frames(
    chunk: FrameChunk, node: str = "", source: str = "", chdb_layout: bool = False, first_seq: int = 0
) -> pa.Table:
    """The `packets` columns for every frame of the chunk (schema PACKET_ARROW_SCHEMA).

    `first_seq` is the capture sequence number of the chunk's first frame (frames before it in the same
    source), so `seq` keeps the capture order across chunks.

    With chdb_layout=True (schema PACKET_CHDB_SCHEMA) `data` is an Arrow binary_view column over the
    chunk's buffer: each value is the exact frame and none is copied, even with record headers between
    the frames; and `node`, `iface`, `source` are dictionary-encoded, one string each instead of one per
    row (the engine then fills its LowCardinality columns without hashing every row's 64-character
    source). chDB's Python() reader takes both in one pass; a server store gets the plain schema, the
    frames compacted when the chunk has gaps.
    """
    n = len(chunk)
    frames = _Frames(chunk)
    caplen = frames.caplen
    link_type = np.asarray(chunk.link_type, dtype=np.int64)
    direction = np.asarray(chunk.direction, dtype=np.int64)
    l3, proto, vlan, direction = _link_layer(frames, link_type, direction)

    version = frames.byte(l3) >> 4
    is4 = (l3 >= 0) & (proto == ETHERTYPE_IPV4) & (version == 4) & frames.has(l3, 20)
    is6 = (l3 >= 0) & (proto == ETHERTYPE_IPV6) & (version == 6) & frames.has(l3, 40)

    src_ip = np.zeros((n, 16), dtype=np.uint8)
    dst_ip = np.zeros((n, 16), dtype=np.uint8)
    l4 = np.zeros(n, dtype=np.int64)
    l4_off = np.full(n, -1, dtype=np.int64)
    ip_end = caplen.copy()
    ip_frag = np.zeros(n, dtype=np.int64)
    headed = np.zeros(n, dtype=bool)  # the transport header is in this frame (not a later fragment)

    if is4.any():
        ihl = (frames.byte(l3) & 0x0F) * 4
        total = frames.be16(l3 + 2)
        frag = frames.be16(l3 + 6)
        offset4 = frag & 0x1FFF
        # v4-mapped (::ffff:a.b.c.d), written as whole 32-bit words: a masked 2-D byte assignment per
        # field cost as much as the rest of the IPv4 decode
        for address, offset in ((src_ip, 12), (dst_ip, 16)):
            words = address.view(np.uint32)  # (n, 4) in memory order
            words[:, 2] = np.where(is4, _V4_MAPPED_PREFIX, words[:, 2])
            words[:, 3] = np.where(is4, frames.bytes4(l3 + offset).view(np.uint32)[:, 0], words[:, 3])
        l4 = np.where(is4, frames.byte(l3 + 9), l4)
        l4_off = np.where(is4, l3 + np.maximum(ihl, 20), l4_off)
        # total length 0 happens with TSO/GSO captures: the frame's own length is then the packet's
        ip_end = np.where(is4 & (total >= 20), np.minimum(l3 + total, caplen), ip_end)
        ip_frag = np.where(is4 & ((frag & 0x2000) | offset4).astype(bool), 1, ip_frag)
        headed |= is4 & (offset4 == 0)

    if is6.any():
        for address, offset in ((src_ip, 8), (dst_ip, 24)):
            halves = address.view(np.uint64)  # (n, 2), whole-word selects as for IPv4 above
            read = frames.bytes16(l3 + offset).view(np.uint64)
            halves[:] = np.where(is6[:, None], read, halves)
        plen = frames.be16(l3 + 4)
        ip_end = np.where(is6 & (plen > 0), np.minimum(l3 + 40 + plen, caplen), ip_end)
        nh, off, frag6, later = _walk_ipv6(frames, is6, frames.byte(l3 + 6), l3 + 40)
        l4 = np.where(is6, nh, l4)
        l4_off = np.where(is6, off, l4_off)
        ip_frag = np.where(frag6, 1, ip_frag)
        headed |= is6 & ~later

    ip_version = np.select([is4, is6], [4, 6], 0)
    is_ip = ip_version != 0
    src_port = np.zeros(n, dtype=np.int64)
    dst_port = np.zeros(n, dtype=np.int64)
    tcp_flags = np.zeros(n, dtype=np.int64)
    tcp_seq = np.zeros(n, dtype=np.int64)
    tcp_ack = np.zeros(n, dtype=np.int64)
    tcp_window = np.zeros(n, dtype=np.int64)
    payload_offset = np.where(is_ip, l4_off, 0)

    ported = headed & np.isin(l4, PORT_PROTOCOLS) & frames.has(l4_off, 4)
    if ported.any():
        src_port = np.where(ported, frames.be16(l4_off), 0)
        dst_port = np.where(ported, frames.be16(l4_off + 2), 0)
    tcp = headed & (l4 == 6)
    if tcp.any():
        fixed = tcp & frames.has(l4_off, 14)
        tcp_seq = np.where(tcp & frames.has(l4_off, 8), frames.be32(l4_off + 4), 0)
        tcp_ack = np.where(tcp & frames.has(l4_off, 12), frames.be32(l4_off + 8), 0)
        tcp_flags = np.where(fixed, ((frames.byte(l4_off + 12) & 1) << 8) | frames.byte(l4_off + 13), 0)
        # a header cut before the window reads as an open window (the column's default), not a zero one
        tcp_window = np.where(frames.has(l4_off, 16), frames.be16(l4_off + 14), 0xFFFF) * tcp
        data_offset = (frames.byte(l4_off + 12) >> 4) * 4
        payload_offset = np.where(fixed, l4_off + np.maximum(data_offset, 20), payload_offset)
    udp = headed & np.isin(l4, (17, 136))
    payload_offset = np.where(udp, l4_off + 8, payload_offset)
    icmp = headed & np.isin(l4, (1, 58))
    payload_offset = np.where(icmp, l4_off + 8, payload_offset)

    end = np.where(is_ip, np.minimum(ip_end, caplen), 0)
    payload_offset = np.clip(np.minimum(payload_offset, caplen), 0, 0xFFFF)
    payload_len = np.where(is_ip, np.maximum(end - payload_offset, 0), 0)

    columns = [
        pa.array(np.asarray(chunk.ts_ns, dtype=np.int64), type=pa.timestamp("ns", tz="UTC")),
        _label_column(node, n, chdb_layout),
        _iface_column(chunk, n, chdb_layout),
        pa.array(direction.astype(np.uint8)),
        _label_column(source, n, chdb_layout),
        pa.array(np.arange(first_seq, first_seq + n, dtype=np.uint64)),
        pa.array(link_type.astype(np.uint16)),
        pa.array(np.asarray(chunk.caplen, dtype=np.uint32)),
        pa.array(np.asarray(chunk.origlen, dtype=np.uint32)),
        pa.array(vlan.astype(np.uint16)),
        pa.array(ip_version.astype(np.uint8)),
        _fixed16(src_ip),
        _fixed16(dst_ip),
        pa.array(np.where(is_ip, l4, 0).astype(np.uint8)),
        pa.array(src_port.astype(np.uint16)),
        pa.array(dst_port.astype(np.uint16)),
        pa.array(ip_frag.astype(np.uint8)),
        pa.array(tcp_flags.astype(np.uint16)),
        pa.array(tcp_seq.astype(np.uint32)),
        pa.array(tcp_ack.astype(np.uint32)),
        pa.array(tcp_window.astype(np.uint16)),
        pa.array(payload_offset.astype(np.uint16)),
        pa.array(payload_len.astype(np.uint32)),
        view_column(chunk.data, chunk.offsets[:-1], chunk.caplen) if chdb_layout else _data_column(chunk),
    ]
    return pa.Table.from_arrays(columns, schema=PACKET_CHDB_SCHEMA if chdb_layout else PACKET_ARROW_SCHEMA)


def _walk_ipv6(frames: _Frames, active: np.ndarray, nh: np.ndarray, off: np.ndarray):
    """Follow IPv6 extension headers: final next-header, its offset, fragment flag, later-fragment flag."""
    active = active.copy()
    frag = np.zeros(len(nh), dtype=bool)
    later = np.zeros(len(nh), dtype=bool)
    for _ in range(10):
        generic = active & np.isin(nh, IPV6_EXT_GENERIC) & frames.has(off, 8)
        fragment = active & (nh == 44) & frames.has(off, 8)
        auth = active & (nh == 51) & frames.has(off, 8)
        step = generic | fragment | auth
        if not step.any():
            break
        length = np.select(
            [generic, fragment, auth],
            [(frames.byte(off + 1) + 1) * 8, 8, (frames.byte(off + 1) + 2) * 4],
            0,
        )
        frag_offset = frames.be16(off + 2) >> 3
        frag |= fragment
        later |= fragment & (frag_offset != 0)
        nh = np.where(step, frames.byte(off), nh)
        off = np.where(step, off + length, off)
        active = step & ~(fragment & (frag_offset != 0))  # a later fragment's payload is not a header
    return nh, off, frag, later


def _fixed16(rows: np.ndarray) -> pa.Array:
    return pa.FixedSizeBinaryArray.from_buffers(
        pa.binary(16), len(rows), [None, pa.py_buffer(rows.tobytes())]
    )


def _label_column(value: str, n: int, encoded: bool) -> pa.Array:
    """One string on every row: repeated, or dictionary-encoded."""
    if encoded:
        return pa.DictionaryArray.from_arrays(np.zeros(n, dtype=np.int32), pa.array([value], pa.string()))
    return pa.repeat(pa.scalar(value, pa.string()), n)


def _iface_column(chunk: FrameChunk, n: int, encoded: bool) -> pa.Array:
    names = list(chunk.ifaces) or [""]
    if len(names) == 1:
        return _label_column(names[0], n, encoded)
    indices = np.asarray(chunk.iface_index, dtype=np.int32)
    if encoded:
        return pa.DictionaryArray.from_arrays(indices, pa.array(names, pa.string()))
    return pa.array(names, pa.string()).take(pa.array(indices))


def _data_column(chunk: FrameChunk) -> pa.Array:
    if not chunk.contiguous:
        chunk = chunk.compacted()
    return binary_column(chunk.data, chunk.offsets)


def view_column(data: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> pa.Array:
    """An Arrow binary_view column of the byte ranges [start, start + length) of `data`, none copied.

    Each view is 16 bytes: the length, then for up to 12 bytes the bytes themselves (zero-padded, as the
    format requires), else their first 4 bytes, buffer 0 and the offset in it.
    """
    raw = np.ascontiguousarray(data, dtype=np.uint8)
    starts = np.asarray(starts, dtype=np.int64)
    lengths = np.asarray(lengths, dtype=np.int64)
    views = np.zeros((len(starts), 4), dtype=np.int32)
    views[:, 0] = lengths
    inline = lengths <= 12
    if len(raw) >= 4:
        # every range over 12 bytes starts at least 12 bytes before the end: its prefix is readable
        words = np.ndarray((len(raw) - 3,), dtype=np.int32, buffer=raw, strides=(1,))
        views[:, 1] = words[np.minimum(starts, len(raw) - 4)]
        views[:, 3] = starts
    if inline.any():  # rare in real traffic (an Ethernet header alone is 14 bytes)
        at = starts[inline, None] + np.arange(12)
        inside = np.arange(12) < lengths[inline, None]
        head = np.where(inside, raw[np.minimum(at, max(len(raw) - 1, 0))] if len(raw) else 0, 0)
        views[inline, 1:] = head.astype(np.uint8).view(np.int32)
    buffers = [None, pa.py_buffer(views), pa.py_buffer(raw)]
    return pa.Array.from_buffers(pa.binary_view(), len(starts), buffers)


def binary_column(data: np.ndarray, offsets: np.ndarray) -> pa.Array:
    """An Arrow binary column over the frame buffer: no Python bytes object per frame."""
    offsets32 = np.asarray(offsets, dtype=np.int64)
    base = int(offsets32[0]) if len(offsets32) else 0
    if base:
        offsets32 = offsets32 - base
    buffer = np.ascontiguousarray(data, dtype=np.uint8)[base : base + int(offsets32[-1])] if base else data
    return pa.Array.from_buffers(
        pa.binary(),
        len(offsets32) - 1,
        [None, pa.py_buffer(offsets32.astype(np.int32)), pa.py_buffer(buffer)],
    )
