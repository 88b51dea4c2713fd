"""A BPF perf-event ring reader in plain Python (no bcc/LLVM in the agent's process).

One perf event (PERF_COUNT_SW_BPF_OUTPUT) per online CPU, its fd stored in the program's perf event
array map at that CPU's index, and a shared ring mmapped per CPU. `read()` copies each ring's unread
region in one go and walks the records: PERF_RECORD_SAMPLE carries the bytes the program submitted,
PERF_RECORD_LOST says how many samples the kernel could not fit (the ring was full).
"""

from __future__ import annotations

import contextlib
import ctypes
import mmap
import os
import struct
from pathlib import Path

SYS_PERF_EVENT_OPEN = 298  # x86_64
SYS_BPF = 321
BPF_MAP_UPDATE_ELEM = 2
PERF_TYPE_SOFTWARE = 1
PERF_COUNT_SW_BPF_OUTPUT = 10
PERF_SAMPLE_RAW = 1 << 10
PERF_FLAG_FD_CLOEXEC = 1 << 3
PERF_EVENT_IOC_ENABLE = 0x2400
PERF_RECORD_LOST = 2
PERF_RECORD_SAMPLE = 9
WATERMARK_BIT = 1 << 14
ATTR_SIZE = 112  # PERF_ATTR_SIZE_VER5

_LIBC = ctypes.CDLL(None, use_errno=True)
_HEADER = struct.Struct("<IHH")  # type, misc, size
_PAGE = mmap.PAGESIZE


def _errno_error() -> OSError:
    err = ctypes.get_errno()
    return OSError(err, os.strerror(err))


def online_cpus() -> list[int]:
    text = Path("/sys/devices/system/cpu/online").read_text().strip()
    cpus: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        cpus += range(int(lo), int(hi or lo) + 1)
    return cpus


def map_update(map_fd: int, key: bytes, value: bytes) -> None:
    """bpf(BPF_MAP_UPDATE_ELEM) with raw key and value bytes."""
    kbuf = ctypes.create_string_buffer(key, len(key))
    vbuf = ctypes.create_string_buffer(value, len(value))
    attr = struct.pack("<IIQQQ", map_fd, 0, ctypes.addressof(kbuf), ctypes.addressof(vbuf), 0)
    abuf = ctypes.create_string_buffer(attr, 128)
    if _LIBC.syscall(SYS_BPF, BPF_MAP_UPDATE_ELEM, abuf, 128) < 0:
        raise _errno_error()


class _Ring:
    def __init__(self, cpu: int, pages: int, watermark: int) -> None:
        attr = bytearray(ATTR_SIZE)
        struct.pack_into(
            "<IIQQQQQI",
            attr,
            0,
            PERF_TYPE_SOFTWARE,
            ATTR_SIZE,
            PERF_COUNT_SW_BPF_OUTPUT,
            1,
            PERF_SAMPLE_RAW,
            0,
            WATERMARK_BIT,
            watermark,
        )
        buf = ctypes.create_string_buffer(bytes(attr), ATTR_SIZE)
        fd = _LIBC.syscall(SYS_PERF_EVENT_OPEN, buf, -1, cpu, -1, PERF_FLAG_FD_CLOEXEC)
        if fd < 0:
            raise _errno_error()
        self.fd = fd
        self.size = pages * _PAGE
        try:
            self.mm = mmap.mmap(fd, (pages + 1) * _PAGE, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
            if _LIBC.ioctl(fd, PERF_EVENT_IOC_ENABLE, 0) < 0:
                raise _errno_error()
        except BaseException:
            os.close(fd)
            raise

    def take(self) -> bytes:
        """The unread bytes of the ring (records, possibly wrapped), and mark them read."""
        head = struct.unpack_from("<Q", self.mm, 1024)[0]
        tail = struct.unpack_from("<Q", self.mm, 1032)[0]
        if head == tail:
            return b""
        start, end = _PAGE + tail % self.size, _PAGE + head % self.size
        if head - tail >= self.size or end <= start:
            data = self.mm[start : _PAGE + self.size] + self.mm[_PAGE:end]
        else:
            data = self.mm[start:end]
        struct.pack_into("<Q", self.mm, 1032, head)
        return data

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.mm.close()
        with contextlib.suppress(OSError):
            os.close(self.fd)


class PerfReader:
    """Per-CPU rings feeding one perf event array map; `read()` -> (samples as memoryviews, lost)."""

    def __init__(self, map_fd: int, pages: int = 1024) -> None:
        if pages & (pages - 1):
            raise ValueError("perf ring pages must be a power of two")
        self.rings: list[_Ring] = []
        try:
            for cpu in online_cpus():
                ring = _Ring(cpu, pages, watermark=pages * _PAGE // 4)
                self.rings.append(ring)
                map_update(map_fd, struct.pack("<I", cpu), struct.pack("<I", ring.fd))
        except BaseException:
            self.close()
            raise

    def fds(self) -> list[int]:
        return [r.fd for r in self.rings]

    def read(self) -> tuple[list[memoryview], int]:
        samples: list[memoryview] = []
        lost = 0
        keep = samples.append
        unpack = _HEADER.unpack_from
        for ring in self.rings:
            data = ring.take()
            if not data:
                continue
            view = memoryview(data)
            off, end = 0, len(data)
            while off + 8 <= end:
                rtype, _, size = unpack(data, off)
                if size == 0:
                    break
                if rtype == PERF_RECORD_SAMPLE:
                    raw = struct.unpack_from("<I", data, off + 8)[0]
                    keep(view[off + 12 : off + 12 + raw])
                elif rtype == PERF_RECORD_LOST:
                    lost += struct.unpack_from("<Q", data, off + 16)[0]
                off += size
        return samples, lost

    def close(self) -> None:
        for ring in self.rings:
            ring.close()
        self.rings = []
