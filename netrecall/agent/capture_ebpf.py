"""eBPF capture with bcc: a TC classifier on ingress and egress of each interface, frames to user space
through a perf buffer.

bcc compiles the program in a short-lived helper process (netrecall.agent.ebpf_compile) that hands the
loaded programs and maps over as file descriptors: the agent itself never loads clang/LLVM (that costs
well over 100 MB that is never given back), and reads the perf rings in plain Python (perfbuf.py).

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
import json
import os
import select
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from netrecall.agent.capture_afpacket import SocketStats
from netrecall.agent.exclude import Endpoint
from netrecall.agent.ifaces import Interface, InterfaceWatcher, is_glob, parse_spec
from netrecall.agent.perfbuf import PerfReader, map_update
from netrecall.errors import NetrecallError
from netrecall.ingest.frames import FrameChunk

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
        self._perf: PerfReader | None = None
        self._owned_fds: list[int] = []
        self._prog_in = self._prog_out = self._l2len_map = -1
        self._watcher: InterfaceWatcher | None = None
        self._offset_ns = 0
        self._offset_at = 0.0

    # --- lifecycle -----------------------------------------------------------------------------------
    def start(self) -> str:
        if os.geteuid() != 0:
            raise NetrecallError("eBPF capture needs root (CAP_BPF and CAP_NET_ADMIN)")
        _kernel_headers()
        code = _exclusion_code(self.exclude)
        cflags = [f"-DSNAPLEN={self.snaplen}", f"-DEXCLUDE={1 if code else 0}", f"-DEXCLUDE_V4={code or ';'}"]
        self._prog_in, self._prog_out, frames_map, self._l2len_map = _compile(PROGRAM, cflags)
        self._owned_fds = [self._prog_in, self._prog_out, frames_map, self._l2len_map]
        try:
            self._perf = PerfReader(frames_map, pages=self.page_cnt)
        except OSError as exc:
            self.close()
            raise NetrecallError(f"eBPF perf buffer: {exc.strerror or exc}") from None
        self._poll = select.poll()
        for fd in self._perf.fds():
            self._poll.register(fd, select.POLLIN)
        self._sync_clock()
        self._watcher = InterfaceWatcher(self.patterns)
        self._poll.register(self._watcher.fileno(), select.POLLIN)
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
        self.ifaces[iface.index] = iface
        l2 = 0 if iface.link_type != 1 else 14
        try:
            map_update(self._l2len_map, struct.pack("<I", iface.index), struct.pack("<I", l2))
        except OSError as exc:
            raise NetrecallError(f"eBPF map update: {exc.strerror}") from None
        hooks = [(self._prog_in, BPF_TCX_INGRESS)]
        if not iface.is_loopback:
            hooks.append((self._prog_out, BPF_TCX_EGRESS))
        fds = []
        try:
            for prog_fd, attach_type in hooks:
                fds.append(_tcx_link(prog_fd, iface.index, attach_type))
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
        if self._perf is not None:
            self._perf.close()
            self._perf = None
        for fd in self._owned_fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._owned_fds = []

    # --- reading -------------------------------------------------------------------------------------
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
        assert self._perf is not None and self._watcher is not None
        if time.monotonic() - self._offset_at > 5:
            self._sync_clock()
        ready = self._poll.poll(int(timeout * 1000))
        if any(fd == self._watcher.fileno() for fd, _ in ready):
            added, removed = self._watcher.changes()
            for iface in removed:
                self._detach(iface.name)
            for iface in added:
                self._detach(iface.name)
                self._attach(iface)
        # Gather for a few tens of milliseconds: rings are read whole, and a chunk per handful of frames
        # would cost more in per-chunk work than the frames themselves.
        samples: list[memoryview] = []
        until = time.monotonic() + GATHER_S
        while True:
            got, lost = self._perf.read()
            samples += got
            self.lost += lost
            if len(samples) >= GATHER_MAX or time.monotonic() >= until:
                break
            time.sleep(0.005)
        if not samples:
            return None
        return self._chunk(samples)

    def _chunk(self, samples: list[memoryview]) -> FrameChunk:
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


def _compile(program: str, cflags: list[str]) -> list[int]:
    """Compile and load in a helper process (netrecall.agent.ebpf_compile); returns its descriptors."""
    parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "netrecall.agent.ebpf_compile",
                str(child.fileno()),
                json.dumps({"program": program, "cflags": cflags}),
            ],
            pass_fds=[child.fileno()],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        child.close()
        parent.settimeout(120)
        try:
            message, fds, _, _ = socket.recv_fds(parent, 65536, 8)
        except (TimeoutError, OSError) as exc:
            proc.kill()
            raise NetrecallError(f"the eBPF compiler helper did not answer: {exc}") from None
        _, stderr = proc.communicate(timeout=30)
    finally:
        parent.close()
    try:
        answer = json.loads(message or b"{}")
    except ValueError:
        answer = {}
    if not answer.get("ok") or len(fds) != 4:
        for fd in fds:
            os.close(fd)
        detail = (
            answer.get("error") or (stderr.decode(errors="replace").strip().splitlines() or ["no answer"])[-1]
        )
        raise NetrecallError(f"the eBPF program did not load: {detail}")
    return list(fds)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
