"""Writing capture files: classic pcap (nanosecond magic) and pcapng, streamed packet by packet.

Only what export needs: the original frame bytes, caplen, origlen and nanosecond timestamps go out
unchanged. pcap carries one link type for the whole file; pcapng has one interface block (IDB) per
(node, interface, link type), added the first time a packet needs it, with if_tsresol = 9 so timestamps
keep their nanoseconds, and an optional comment per packet.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import BinaryIO

from netrecall.errors import NetrecallError

PCAP_NS_MAGIC = 0xA1B23C4D  # pcap with nanosecond timestamps (libpcap >= 1.5, Wireshark)
PCAP_SNAPLEN = 262144  # what tcpdump and dumpcap write; raised when a stored frame is longer
LINKTYPE_ETHERNET = 1

_PCAP_HEADER = struct.Struct("<IHHiIII")
_PCAP_RECORD = struct.Struct("<IIII")

# pcapng block types and option codes (draft-ietf-opsawg-pcapng)
_SHB = 0x0A0D0D0A
_IDB = 0x00000001
_EPB = 0x00000006
_BYTE_ORDER_MAGIC = 0x1A2B3C4D
_OPT_END = 0
_OPT_COMMENT = 1
_SHB_USERAPPL = 4
_IF_NAME = 2
_IF_DESCRIPTION = 3
_IF_TSRESOL = 9
_EPB_FLAGS = 2  # bits 0-1: 01 inbound, 10 outbound
_EPB_HEAD = struct.Struct("<IIIIIII")  # type, total length, interface, ts high, ts low, caplen, origlen


def _pad4(length: int) -> int:
    return (-length) % 4


def _option(code: int, value: bytes) -> bytes:
    return struct.pack("<HH", code, len(value)) + value + b"\0" * _pad4(len(value))


def _options(pairs: list[tuple[int, bytes]]) -> bytes:
    if not pairs:
        return b""
    return b"".join(_option(code, value) for code, value in pairs) + struct.pack("<HH", _OPT_END, 0)


def _block(block_type: int, body: bytes) -> bytes:
    total = 12 + len(body)
    return struct.pack("<II", block_type, total) + body + struct.pack("<I", total)


class PcapWriter:
    """Classic pcap, nanosecond variant: one link type for the file."""

    def __init__(
        self, out: BinaryIO, link_type: int = LINKTYPE_ETHERNET, snaplen: int = PCAP_SNAPLEN
    ) -> None:
        self.out = out
        out.write(_PCAP_HEADER.pack(PCAP_NS_MAGIC, 2, 4, 0, 0, max(snaplen, PCAP_SNAPLEN), link_type))

    def write(self, ts_ns: int, frame: bytes | memoryview, origlen: int) -> None:
        seconds, nanos = divmod(ts_ns, 1_000_000_000)
        self.out.write(_PCAP_RECORD.pack(seconds, nanos, len(frame), origlen))
        self.out.write(frame)


class PcapngWriter:
    """pcapng: a section header naming the writer, interfaces added on first use, enhanced packet blocks."""

    def __init__(self, out: BinaryIO, application: str) -> None:
        self.out = out
        self._interfaces: dict[tuple[str, str, int], int] = {}
        body = struct.pack("<IHHq", _BYTE_ORDER_MAGIC, 1, 0, -1)  # section length unknown: we stream
        body += _options([(_SHB_USERAPPL, application.encode())])
        out.write(_block(_SHB, body))

    def interface(self, node: str, iface: str, link_type: int) -> int:
        """The interface id for (node, iface, link type), writing its IDB the first time."""
        key = (node, iface, link_type)
        found = self._interfaces.get(key)
        if found is not None:
            return found
        index = len(self._interfaces)
        name = f"{node}:{iface}" if node else (iface or "unknown")
        body = struct.pack("<HHI", link_type, 0, 0)  # snaplen 0: no limit
        body += _options(
            [
                (_IF_NAME, name.encode()),
                (_IF_DESCRIPTION, f"netrecall node={node} iface={iface}".encode()),
                (_IF_TSRESOL, bytes([9])),  # 10^-9 s: timestamps keep their nanoseconds
            ]
        )
        self.out.write(_block(_IDB, body))
        self._interfaces[key] = index
        return index

    def write(
        self,
        interface: int,
        ts_ns: int,
        frame: bytes | memoryview,
        origlen: int,
        comment: str = "",
        direction: int = 0,
    ) -> None:
        """One packet; `direction` 1 inbound / 2 outbound goes into epb_flags (0: unknown, no option)."""
        caplen = len(frame)
        pairs = [(_EPB_FLAGS, struct.pack("<I", direction & 0x3))] if direction in (1, 2) else []
        if comment:
            pairs.append((_OPT_COMMENT, comment.encode()))
        options = _options(pairs)
        total = 32 + caplen + _pad4(caplen) + len(options)
        high, low = (ts_ns >> 32) & 0xFFFFFFFF, ts_ns & 0xFFFFFFFF
        self.out.write(_EPB_HEAD.pack(_EPB, total, interface, high, low, caplen, origlen))
        self.out.write(frame)
        self.out.write(b"\0" * _pad4(caplen) + options + struct.pack("<I", total))


# --- reading (for verification and tests: every packet with its exact nanosecond timestamp) -----------

_PCAP_MAGICS = {
    0xA1B2C3D4: ("<", 1000),
    0xD4C3B2A1: (">", 1000),
    0xA1B23C4D: ("<", 1),
    0x4D3CB2A1: (">", 1),
}


def iter_packets(path: str) -> Iterator[tuple[int, int, int, bytes]]:
    """(ts_ns, link_type, origlen, frame) for every packet of a pcap or pcapng file, in file order."""
    with open(path, "rb") as handle:
        head = handle.read(4)
        if len(head) < 4:
            raise NetrecallError(f"{path}: not a capture file (too short)")
        magic = struct.unpack("<I", head)[0]
        if magic == _SHB:
            handle.seek(0)
            yield from _iter_pcapng(handle, path)
        elif magic in _PCAP_MAGICS:
            yield from _iter_pcap(handle, path, *_PCAP_MAGICS[magic])
        else:
            raise NetrecallError(f"{path}: not a pcap or pcapng file (magic {magic:#010x})")


Packet = tuple[int, int, int, bytes]  # ts_ns, link_type, origlen, frame


def _iter_pcap(handle: BinaryIO, path: str, order: str, ns_per_unit: int) -> Iterator[Packet]:
    header = handle.read(20)
    if len(header) < 20:
        raise NetrecallError(f"{path}: truncated pcap header")
    link_type = struct.unpack(order + "IHHiIII", b"\0\0\0\0" + header)[-1] & 0x0FFFFFFF
    record = struct.Struct(order + "IIII")
    while True:
        raw = handle.read(16)
        if not raw:
            return
        if len(raw) < 16:
            raise NetrecallError(f"{path}: truncated packet header")
        seconds, frac, caplen, origlen = record.unpack(raw)
        frame = handle.read(caplen)
        if len(frame) < caplen:
            raise NetrecallError(f"{path}: truncated packet data")
        yield seconds * 1_000_000_000 + frac * ns_per_unit, link_type, origlen, frame


def _iter_pcapng(handle: BinaryIO, path: str) -> Iterator[tuple[int, int, int, bytes]]:
    order = "<"
    interfaces: list[tuple[int, int]] = []  # (link_type, ns per tick numerator/denominator as ticks per s)
    while True:
        raw = handle.read(8)
        if not raw:
            return
        if len(raw) < 8:
            raise NetrecallError(f"{path}: truncated pcapng block")
        block_type = struct.unpack("<I", raw[:4])[0]
        if block_type == _SHB:
            bom = handle.read(4)
            order = "<" if struct.unpack("<I", bom)[0] == _BYTE_ORDER_MAGIC else ">"
            total = struct.unpack(order + "I", raw[4:])[0]
            body = bom + handle.read(total - 12)
            interfaces = []
        else:
            total = struct.unpack(order + "I", raw[4:])[0]
            body = handle.read(total - 8)
        if len(body) < total - 8:
            raise NetrecallError(f"{path}: truncated pcapng block")
        block_type = struct.unpack(order + "I", raw[:4])[0]
        if block_type == _IDB:
            link_type = struct.unpack(order + "H", body[:2])[0]
            interfaces.append((link_type, _tsresol(body[8:-4], order)))
        elif block_type == _EPB:
            iface, high, low, caplen, origlen = struct.unpack(order + "IIIII", body[:20])
            link_type, ticks_per_second = interfaces[iface]
            ticks = (high << 32) | low
            ts_ns = ticks * 1_000_000_000 // ticks_per_second
            yield ts_ns, link_type, origlen, bytes(body[20 : 20 + caplen])


def _tsresol(options: bytes, order: str) -> int:
    """Ticks per second of an interface (if_tsresol; default microseconds)."""
    pos = 0
    while pos + 4 <= len(options):
        code, length = struct.unpack(order + "HH", options[pos : pos + 4])
        if code == _OPT_END:
            break
        if code == _IF_TSRESOL and length >= 1:
            value = options[pos + 4]
            return 2 ** (value & 0x7F) if value & 0x80 else 10**value
        pos += 4 + length + _pad4(length)
    return 1_000_000
