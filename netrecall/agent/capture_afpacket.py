"""AF_PACKET capture through a TPACKET_V3 memory-mapped ring (the portable fallback to eBPF).

The kernel fills blocks of the shared ring with frames; user space walks a full block's frame chain
(each frame header says where the next starts), copies the block once, and hands the frames up as one
`FrameChunk` without a Python object per frame. The socket filter truncates to the snap length, drops
the agent's own sink traffic and, on loopback, the outgoing copy of every packet (lo shows each packet
leaving and arriving; tcpdump keeps one).

`--iface any`: one socket sees every interface, present and future. Named interfaces or globs: one
socket per interface, opened and closed as matching interfaces appear and vanish. Kernel drops come
from PACKET_STATISTICS per socket.
"""

from __future__ import annotations

import contextlib
import ctypes
import mmap
import os
import select
import socket
import struct
from dataclasses import dataclass, field

import numpy as np

from netrecall.agent.exclude import Endpoint, attach_socket_filter, socket_filter
from netrecall.agent.ifaces import (
    Interface,
    InterfaceWatcher,
    is_glob,
    link_type_of,
    list_interfaces,
    parse_spec,
)
from netrecall.errors import NetrecallError
from netrecall.ingest.frames import DIRECTION_IN, DIRECTION_OUT, FrameChunk

SOL_PACKET = 263
PACKET_RX_RING = 5
PACKET_STATISTICS = 6
PACKET_VERSION = 10
PACKET_IGNORE_OUTGOING = 23
TPACKET_V3 = 2
TP_STATUS_USER = 1
TP_STATUS_KERNEL = 0
ETH_P_ALL = 0x0003
SLL_OFFSET = 48  # TPACKET_ALIGN(sizeof(struct tpacket3_hdr))

_BLOCK_HDR = struct.Struct(
    "<IIIIII"
)  # version, offset_to_priv, block_status, num_pkts, first_offset, blk_len
_PKT_HDR = struct.Struct("<IIIIIIHH")  # next, sec, nsec, snaplen, len, status, mac, net
_SLL = struct.Struct("<HHiHBB")  # family, protocol, ifindex, hatype, pkttype, halen


@dataclass
class SocketStats:
    """Counters of one ring, cumulative (PACKET_STATISTICS resets on every read)."""

    kernel_seen: int = 0
    kernel_drops: int = 0


@dataclass
class _Ring:
    label: str  # interface name, or 'any'
    sock: socket.socket
    ring: mmap.mmap
    block_size: int
    block_nr: int
    next_block: int = 0
    stats: SocketStats = field(default_factory=SocketStats)

    def read_stats(self) -> None:
        raw = self.sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 12)
        packets, drops, _ = struct.unpack("III", raw)
        self.stats.kernel_seen += packets
        self.stats.kernel_drops += drops

    def close(self) -> None:
        try:
            self.ring.close()
        finally:
            self.sock.close()


class AfPacketCapture:
    """Capture on an interface spec; `read(timeout)` returns the next chunk of frames (or None)."""

    name = "afpacket"

    def __init__(
        self,
        iface: str,
        snaplen: int = 262144,
        exclude: list[Endpoint] | None = None,
        ring_mb: int = 8,
        block_kb: int = 1024,
        block_timeout_ms: int = 50,
    ) -> None:
        self.spec = iface
        self.patterns = parse_spec(iface)
        self.snaplen = snaplen
        self.exclude = list(exclude or [])
        self.block_size = block_kb * 1024
        self.block_nr = max(2, ring_mb * 1024 * 1024 // self.block_size)
        self.block_timeout_ms = block_timeout_ms
        self.rings: dict[str, _Ring] = {}
        self.retired_stats: dict[str, SocketStats] = {}  # of rings closed when their interface went away
        self.ifaces: dict[int, Interface] = {}
        self._watcher: InterfaceWatcher | None = None
        self._poll = select.poll()
        self._fd_ring: dict[int, _Ring] = {}
        self._pending: list[_Ring] = []

    # --- lifecycle -----------------------------------------------------------------------------------
    def start(self) -> str:
        """Open the ring(s); returns a one-line description of what is captured."""
        self._refresh_ifaces()
        if self.patterns == ["*"]:
            lo = next((i.index for i in self.ifaces.values() if i.is_loopback), None)
            self._open_ring("any", None, drop_outgoing_on=lo)
            return "AF_PACKET TPACKET_V3 on all interfaces"
        self._watcher = InterfaceWatcher(self.patterns)
        if not self._watcher.current and not is_glob(self.patterns):
            raise NetrecallError(f"no interface named {self.spec!r} here (see `ip link`)")
        for iface in self._watcher.current.values():
            self._open_ring(iface.name, iface)
        self._poll.register(self._watcher.fileno(), select.POLLIN)
        return f"AF_PACKET TPACKET_V3 on {', '.join(sorted(self.rings)) or '(none yet)'} ({self.spec})"

    def _refresh_ifaces(self) -> None:
        self.ifaces.update({i.index: i for i in list_interfaces().values()})

    def _open_ring(self, label: str, iface: Interface | None, drop_outgoing_on: int | None = None) -> None:
        try:
            sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)  # protocol 0: nothing until bind
        except PermissionError:
            raise NetrecallError("AF_PACKET capture needs root or CAP_NET_RAW") from None
        try:
            attach_socket_filter(sock, socket_filter(self.exclude, self.snaplen, drop_outgoing_on))
            if iface is not None and iface.is_loopback:
                # lo shows every packet twice (leaving and arriving): keep the arriving copy, as tcpdump does
                sock.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
            sock.setsockopt(SOL_PACKET, PACKET_VERSION, TPACKET_V3)
            frame_size = 2048
            req = struct.pack(
                "IIIIIII",
                self.block_size,
                self.block_nr,
                frame_size,
                self.block_size * self.block_nr // frame_size,
                self.block_timeout_ms,
                0,
                0,
            )
            sock.setsockopt(SOL_PACKET, PACKET_RX_RING, req)
            ring = mmap.mmap(
                sock.fileno(),
                self.block_size * self.block_nr,
                mmap.MAP_SHARED,
                mmap.PROT_READ | mmap.PROT_WRITE,
            )
            _bind(sock, iface.index if iface else 0)
        except OSError as exc:
            sock.close()
            if iface is not None and exc.errno in (19, 6):  # ENODEV/ENXIO: it vanished meanwhile
                return
            raise NetrecallError(f"AF_PACKET ring on {label}: {exc.strerror or exc}") from None
        entry = _Ring(label, sock, ring, self.block_size, self.block_nr)
        entry.read_stats()  # start counting from now
        entry.stats = SocketStats()
        self.rings[label] = entry
        self._fd_ring[sock.fileno()] = entry
        self._poll.register(sock.fileno(), select.POLLIN | select.POLLERR)

    def _close_ring(self, label: str) -> None:
        entry = self.rings.pop(label, None)
        if entry is None:
            return
        self._fd_ring.pop(entry.sock.fileno(), None)
        with contextlib.suppress(KeyError, ValueError):
            self._poll.unregister(entry.sock.fileno())
        with contextlib.suppress(OSError):
            entry.read_stats()
        old = self.retired_stats.setdefault(label, SocketStats())
        old.kernel_seen += entry.stats.kernel_seen
        old.kernel_drops += entry.stats.kernel_drops
        entry.close()

    def close(self) -> None:
        for label in list(self.rings):
            self._close_ring(label)
        if self._watcher is not None:
            self._watcher.close()

    # --- reading -------------------------------------------------------------------------------------
    def read(self, timeout: float) -> FrameChunk | None:
        """The frames of every ready block (at most a few blocks per ring per call), or None on timeout."""
        chunk = self._drain()
        if chunk is not None:
            return chunk
        for fd, _ in self._poll.poll(int(timeout * 1000)):
            if self._watcher is not None and fd == self._watcher.fileno():
                self._follow_interfaces()
        return self._drain()

    def _follow_interfaces(self) -> None:
        assert self._watcher is not None
        added, removed = self._watcher.changes()
        self._refresh_ifaces()
        for iface in removed:
            self._close_ring(iface.name)
        for iface in added:
            self._close_ring(iface.name)
            self._open_ring(iface.name, iface)

    def _drain(self, max_blocks: int = 4) -> FrameChunk | None:
        parts: list[tuple] = []
        for entry in list(self.rings.values()):
            for _ in range(max_blocks):
                part = self._take_block(entry)
                if part is None:
                    break
                parts.append(part)
        if not parts:
            return None
        return self._chunk(parts)

    def _take_block(self, entry: _Ring) -> tuple | None:
        base = entry.next_block * entry.block_size
        ring = entry.ring
        _, _, status, num_pkts, first, blk_len = _BLOCK_HDR.unpack_from(ring, base)
        if not status & TP_STATUS_USER:
            return None
        block = ring[base : base + blk_len]  # one copy; the block goes back to the kernel right away
        struct.pack_into("<I", ring, base + 8, TP_STATUS_KERNEL)
        entry.next_block = (entry.next_block + 1) % entry.block_nr
        if num_pkts == 0:
            return None
        ts = np.empty(num_pkts, dtype=np.int64)
        caplen = np.empty(num_pkts, dtype=np.uint32)
        origlen = np.empty(num_pkts, dtype=np.uint32)
        ifindex = np.empty(num_pkts, dtype=np.int32)
        hatype = np.empty(num_pkts, dtype=np.uint16)
        pkttype = np.empty(num_pkts, dtype=np.uint8)
        unpack_pkt = _PKT_HDR.unpack_from
        unpack_sll = _SLL.unpack_from
        view = memoryview(block)
        frames = []
        keep = frames.append
        off = first
        for i in range(num_pkts):
            nxt, sec, nsec, snap, length, _, mac, _ = unpack_pkt(block, off)
            _, _, idx, ha, ptype, _ = unpack_sll(block, off + SLL_OFFSET)
            ts[i] = sec * 1_000_000_000 + nsec
            caplen[i] = snap
            origlen[i] = length
            keep(view[off + mac : off + mac + snap])
            ifindex[i] = idx
            hatype[i] = ha
            pkttype[i] = ptype
            off += nxt
        return frames, ts, caplen, origlen, ifindex, hatype, pkttype

    def _chunk(self, parts: list[tuple]) -> FrameChunk:
        """Concatenate blocks' frames into one chunk: one join of memoryview slices (no per-byte index)."""
        ts = np.concatenate([p[1] for p in parts])
        caplen = np.concatenate([p[2] for p in parts])
        origlen = np.concatenate([p[3] for p in parts])
        ifindex = np.concatenate([p[4] for p in parts])
        hatype = np.concatenate([p[5] for p in parts])
        pkttype = np.concatenate([p[6] for p in parts])
        offsets = np.zeros(len(ts) + 1, dtype=np.int64)
        np.cumsum(caplen, out=offsets[1:])
        data = np.frombuffer(b"".join([frame for p in parts for frame in p[0]]), dtype=np.uint8)
        # interface names: iface_index points into a per-chunk tuple of names
        unknown = [int(i) for i in np.unique(ifindex) if int(i) not in self.ifaces]
        if unknown:
            self._refresh_ifaces()
        uniq, inverse = np.unique(ifindex, return_inverse=True)
        names = tuple(self.ifaces[int(i)].name if int(i) in self.ifaces else f"if{int(i)}" for i in uniq)
        link = np.where(hatype == 65534, link_type_of(65534), link_type_of(1)).astype(np.uint16)
        direction = np.where(pkttype == 4, DIRECTION_OUT, DIRECTION_IN).astype(np.uint8)
        return FrameChunk(
            ts_ns=ts,
            caplen=caplen,
            origlen=origlen,
            link_type=link,
            iface_index=inverse.astype(np.uint32),
            direction=direction,
            data=data,
            offsets=offsets,
            ifaces=names,
        )

    # --- counters ------------------------------------------------------------------------------------
    def kernel_stats(self) -> dict[str, SocketStats]:
        """Cumulative kernel counters per ring label (interface name or 'any')."""
        out: dict[str, SocketStats] = {}
        for label, old in self.retired_stats.items():
            out[label] = SocketStats(old.kernel_seen, old.kernel_drops)
        for label, entry in self.rings.items():
            with contextlib.suppress(OSError):
                entry.read_stats()
            got = out.setdefault(label, SocketStats())
            got.kernel_seen += entry.stats.kernel_seen
            got.kernel_drops += entry.stats.kernel_drops
        return out


def _bind(sock: socket.socket, ifindex: int) -> None:
    """bind(2) to one ifindex, or 0 for every interface (Python's bind() only takes names, not 0)."""
    addr = struct.pack("<HHiHBB8s", socket.AF_PACKET, socket.htons(ETH_P_ALL), ifindex, 0, 0, 0, b"")
    if _LIBC.bind(sock.fileno(), addr, len(addr)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


_LIBC = ctypes.CDLL(None, use_errno=True)
