"""eBPF capture with bcc: a TC classifier on ingress and egress of each interface, frames to user space
through a perf buffer.

The classifier copies each packet's first `snaplen` bytes into the perf buffer with a small header
(kernel time, ifindex, length on the wire, bytes copied, direction) via `perf_submit_skb`, and always
lets the packet through (TC_ACT_OK). The agent's own sink traffic is skipped in the kernel. Programs are
attached as TCX links (kernel 6.6+): a link belongs to this process's file descriptor, so a killed agent
leaves nothing attached behind. Interfaces are followed as they appear and vanish (pod veths on a node).

On loopback only ingress is hooked: lo shows every packet leaving and arriving, and tcpdump (and the
AF_PACKET backend) keep one copy. Kernel time is CLOCK_MONOTONIC, moved to the wall clock with an
offset sampled at start and refreshed every few seconds. Perf-buffer overflows (lost samples) are the
kernel drops; the perf buffer is per CPU, so they are counted under 'all', not per interface.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import select
import struct
import time
from pathlib import Path

import numpy as np

from netrecall.agent.capture_afpacket import SocketStats
from netrecall.agent.exclude import Endpoint
from netrecall.agent.ifaces import Interface, InterfaceWatcher, is_glob, parse_spec
from netrecall.errors import NetrecallError
from netrecall.ingest.capture_file import FrameChunk

HEADERS_CACHE = Path(os.environ.get("NETRECALL_CACHE", "/var/cache/netrecall")) / "kernel-headers"
BPF_LINK_CREATE = 28
BPF_TCX_INGRESS = 46
BPF_TCX_EGRESS = 47
SYS_BPF = 321  # x86_64
META = struct.Struct("<QIIIB3x")  # ts, ifindex, len, cap, dir
MAX_SNAPLEN = 65535
GATHER_S = 0.05  # how long read() keeps collecting samples into one chunk
GATHER_MAX = 20000  # what one perf sample can carry; longer frames are truncated to it

PROGRAM = r"""
#include <uapi/linux/bpf.h>
#include <uapi/linux/pkt_cls.h>

struct meta_t { u64 ts; u32 ifindex; u32 len; u32 cap; u8 dir; u8 pad[3]; };
BPF_PERF_OUTPUT(frames);
BPF_HASH(l2len, u32, u32, 4096);

static __always_inline int excluded(struct __sk_buff *skb) {
#if EXCLUDE
    u32 l2 = 14;
    u32 idx = skb->ifindex;
    u32 *known = l2len.lookup(&idx);
    if (known) l2 = *known;
    if (skb->protocol == 0x0008) {  /* ETH_P_IP, network byte order */
        u8 vihl = 0, proto = 0;
        u32 saddr = 0, daddr = 0;
        u16 ports[2] = {0, 0};
        if (bpf_skb_load_bytes(skb, l2, &vihl, 1) < 0) return 0;
        if (bpf_skb_load_bytes(skb, l2 + 9, &proto, 1) < 0) return 0;
        if (proto != 6) return 0;
        if (bpf_skb_load_bytes(skb, l2 + 12, &saddr, 4) < 0) return 0;
        if (bpf_skb_load_bytes(skb, l2 + 16, &daddr, 4) < 0) return 0;
        u32 ihl = (vihl & 0x0f) * 4;
        if (ihl < 20 || ihl > 60) return 0;
        if (bpf_skb_load_bytes(skb, l2 + ihl, ports, 4) < 0) return 0;
        EXCLUDE_V4
    }
#endif
    return 0;
}

static __always_inline int capture(struct __sk_buff *skb, u8 dir) {
    if (excluded(skb)) return TC_ACT_OK;
    struct meta_t m = {};
    m.ts = bpf_ktime_get_ns();
    m.ifindex = skb->ifindex;
    m.len = skb->len;
    u32 cap = skb->len;
    if (cap > SNAPLEN) cap = SNAPLEN;
    m.cap = cap;
    m.dir = dir;
    frames.perf_submit_skb(skb, cap, &m, sizeof(m));
    return TC_ACT_OK;
}

int nr_ingress(struct __sk_buff *skb) { return capture(skb, 1); }
int nr_egress(struct __sk_buff *skb) { return capture(skb, 2); }
"""


class _LinkAttr(ctypes.Structure):
    """The link_create part of `union bpf_attr` (TCX: relative_fd/expected_revision after the flags)."""

    _fields_ = [
        ("prog_fd", ctypes.c_uint32),
        ("target_ifindex", ctypes.c_uint32),
        ("attach_type", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("relative_fd", ctypes.c_uint32),
        ("pad", ctypes.c_uint32),
        ("expected_revision", ctypes.c_uint64),
        ("rest", ctypes.c_uint8 * 64),
    ]


_LIBC = ctypes.CDLL(None, use_errno=True)


def _tcx_link(prog_fd: int, ifindex: int, attach_type: int) -> int:
    attr = _LinkAttr(prog_fd=prog_fd, target_ifindex=ifindex, attach_type=attach_type)
    fd = _LIBC.syscall(SYS_BPF, BPF_LINK_CREATE, ctypes.byref(attr), ctypes.sizeof(attr))
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return fd


def _exclusion_code(exclude: list[Endpoint]) -> str:
    checks = []
    for ep in exclude:
        if ep.version != 4:
            continue  # IPv6 sinks: not filtered in the classifier yet (documented)
        ip = struct.unpack("<I", ep.packed)[0]
        port = struct.unpack("<H", struct.pack("!H", ep.port))[0]
        checks.append(
            f"if ((saddr == {ip}u && ports[0] == {port}) || (daddr == {ip}u && ports[1] == {port})) return 1;"
        )
    return " ".join(checks)


def _kernel_headers() -> None:
    """Point bcc at the cached kernel headers (tests/setup/bcc_headers.sh) unless told otherwise."""
    if "BCC_KERNEL_SOURCE" in os.environ:
        return
    tree = HEADERS_CACHE / "usr" / "src" / "linux-headers-common"
    if tree.is_dir() and not Path(f"/lib/modules/{os.uname().release}/build").exists():
        os.environ["BCC_KERNEL_SOURCE"] = str(tree)


class EbpfCapture:
    """Same interface as AfPacketCapture: start(), read(timeout) -> FrameChunk | None, kernel_stats()."""

    name = "ebpf"

    def __init__(
        self, iface: str, snaplen: int = 262144, exclude: list[Endpoint] | None = None, page_cnt: int = 1024
    ) -> None:
        self.spec = iface
        self.patterns = parse_spec(iface)
        self.snaplen = max(1, min(snaplen, MAX_SNAPLEN))
        self.exclude = list(exclude or [])
        self.page_cnt = page_cnt
        self.ifaces: dict[int, Interface] = {}
        self.links: dict[str, list[int]] = {}
        self.lost = 0
        self._samples: list[bytes] = []
        self._bpf = None
        self._watcher: InterfaceWatcher | None = None
        self._offset_ns = 0
        self._offset_at = 0.0

    # --- lifecycle -----------------------------------------------------------------------------------
    def start(self) -> str:
        if os.geteuid() != 0:
            raise NetrecallError("eBPF capture needs root (CAP_BPF and CAP_NET_ADMIN)")
        _kernel_headers()
        try:
            from bcc import BPF
        except ImportError:
            raise NetrecallError(
                "eBPF capture needs bcc (Debian python3-bpfcc; `make test` links it into the venv)"
            ) from None
        code = _exclusion_code(self.exclude)
        cflags = [f"-DSNAPLEN={self.snaplen}", f"-DEXCLUDE={1 if code else 0}", f"-DEXCLUDE_V4={code or ';'}"]
        try:
            bpf = BPF(text=PROGRAM, cflags=cflags)
            self._ingress = bpf.load_func("nr_ingress", BPF.SCHED_CLS)
            self._egress = bpf.load_func("nr_egress", BPF.SCHED_CLS)
        except Exception as exc:
            raise NetrecallError(f"the eBPF program did not load: {_first_line(exc)}") from None
        self._bpf = bpf
        bpf["frames"].open_perf_buffer(self._on_sample, page_cnt=self.page_cnt, lost_cb=self._on_lost)
        self._sync_clock()
        self._watcher = InterfaceWatcher(self.patterns)
        if not self._watcher.current and not is_glob(self.patterns):
            self.close()
            raise NetrecallError(f"no interface named {self.spec!r} here (see `ip link`)")
        for iface in self._watcher.current.values():
            self._attach(iface)
        if self._watcher.current and not self.links:
            self.close()
            raise NetrecallError("could not attach the TC classifier (TCX links need kernel 6.6+)")
        attached = ", ".join(sorted(self.links)) or "(none yet)"
        return f"TC classifier (TCX) + perf buffer on {attached} ({self.spec})"

    def _attach(self, iface: Interface) -> None:
        assert self._bpf is not None
        self.ifaces[iface.index] = iface
        l2 = 0 if iface.link_type != 1 else 14
        self._bpf["l2len"][ctypes.c_uint32(iface.index)] = ctypes.c_uint32(l2)
        hooks = [(self._ingress, BPF_TCX_INGRESS)]
        if not iface.is_loopback:
            hooks.append((self._egress, BPF_TCX_EGRESS))
        fds = []
        try:
            for func, attach_type in hooks:
                fds.append(_tcx_link(func.fd, iface.index, attach_type))
        except OSError as exc:
            for fd in fds:
                os.close(fd)
            if exc.errno in (19, 6):  # the interface vanished meanwhile
                return
            if exc.errno in (22, 95):  # no TCX on this kernel
                return
            raise NetrecallError(f"attaching the classifier to {iface.name}: {exc.strerror}") from None
        self.links[iface.name] = fds

    def _detach(self, name: str) -> None:
        for fd in self.links.pop(name, []):
            with contextlib.suppress(OSError):
                os.close(fd)

    def close(self) -> None:
        for name in list(self.links):
            self._detach(name)
        if self._watcher is not None:
            self._watcher.close()
            self._watcher = None
        if self._bpf is not None:
            with contextlib.suppress(Exception):
                self._bpf.cleanup()
            self._bpf = None

    # --- reading -------------------------------------------------------------------------------------
    def _on_sample(self, cpu: int, data: int, size: int) -> None:
        self._samples.append(ctypes.string_at(data, size))

    def _on_lost(self, count: int) -> None:
        self.lost += count

    def _sync_clock(self) -> None:
        # the smallest gap between two wall-clock reads around a monotonic read gives the best offset
        best = None
        for _ in range(5):
            r1 = time.clock_gettime_ns(time.CLOCK_REALTIME)
            m = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
            r2 = time.clock_gettime_ns(time.CLOCK_REALTIME)
            if best is None or r2 - r1 < best[0]:
                best = (r2 - r1, (r1 + r2) // 2 - m)
        assert best is not None
        self._offset_ns = best[1]
        self._offset_at = time.monotonic()

    def read(self, timeout: float) -> FrameChunk | None:
        assert self._bpf is not None and self._watcher is not None
        if time.monotonic() - self._offset_at > 5:
            self._sync_clock()
        ready, _, _ = select.select([self._watcher], [], [], 0)
        if ready:
            added, removed = self._watcher.changes()
            for iface in removed:
                self._detach(iface.name)
            for iface in added:
                self._detach(iface.name)
                self._attach(iface)
        self._bpf.perf_buffer_poll(int(timeout * 1000))
        # Gather for a few tens of milliseconds: one perf poll returns a handful of samples, and a chunk per
        # handful would cost more in per-chunk work than the frames themselves.
        until = time.monotonic() + GATHER_S
        while len(self._samples) < GATHER_MAX and time.monotonic() < until:
            self._bpf.perf_buffer_poll(5)
        if not self._samples:
            return None
        samples, self._samples = self._samples, []
        return self._chunk(samples)

    def _chunk(self, samples: list[bytes]) -> FrameChunk:
        n = len(samples)
        head = np.frombuffer(b"".join([s[: META.size] for s in samples]), dtype=np.uint8).reshape(
            n, META.size
        )
        ts = head[:, 0:8].copy().view("<u8").ravel().astype(np.int64) + self._offset_ns
        ifindex = head[:, 8:12].copy().view("<u4").ravel()
        origlen = head[:, 12:16].copy().view("<u4").ravel()
        caplen = head[:, 16:20].copy().view("<u4").ravel()
        direction = head[:, 20].copy()
        offsets = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(caplen, out=offsets[1:])
        # the perf sample may carry alignment padding after the frame: cut each frame at its caplen
        start = META.size
        data = np.frombuffer(
            b"".join(
                [memoryview(s)[start : start + c] for s, c in zip(samples, caplen.tolist(), strict=True)]
            ),
            dtype=np.uint8,
        )
        uniq, inverse = np.unique(ifindex, return_inverse=True)
        names = tuple(self.ifaces[int(i)].name if int(i) in self.ifaces else f"if{int(i)}" for i in uniq)
        link_by_pos = np.array(
            [self.ifaces[int(i)].link_type if int(i) in self.ifaces else 1 for i in uniq], dtype=np.uint16
        )
        return FrameChunk(
            ts_ns=ts,
            caplen=caplen.astype(np.uint32),
            origlen=origlen.astype(np.uint32),
            link_type=link_by_pos[inverse],
            iface_index=inverse.astype(np.uint32),
            direction=direction.astype(np.uint8),
            data=data,
            offsets=offsets,
            ifaces=names,
        )

    # --- counters ------------------------------------------------------------------------------------
    def kernel_stats(self) -> dict[str, SocketStats]:
        return {"all": SocketStats(kernel_seen=0, kernel_drops=self.lost)}


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
