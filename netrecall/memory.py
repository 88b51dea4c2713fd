"""Handing freed memory back to the OS, so a streaming path's peak RSS tracks its working set.

Three allocators share a netrecall process, and each keeps what is freed for reuse: glibc (Python
objects, numpy), mimalloc (Arrow's default pool) and the jemalloc linked into the embedded engine (every
query's and insert's blocks; its dirty pages decay only after seconds). Over a run made of many slices
and inserts, what they keep adds up to more than any one step needs (measured on `dissect` of the 1.1M-
packet benchmark capture: ~250 MB of jemalloc pages and ~60 MB of mimalloc pages freed but kept).
A release costs well under a millisecond, but what it hands back is faulted in again, zeroed, by the next
allocations: releasing after every slice and insert made `dissect` of the PostgreSQL benchmark capture
1.5-2 s slower (of ~6 s) than never releasing. `Releaser` releases only once the process has grown
`slack` bytes past where its last release left it: peak RSS stays within the slack of the working set.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from netrecall.store import Store

try:
    _LIBC: ctypes.CDLL | None = ctypes.CDLL("libc.so.6")
except OSError:  # not glibc: nothing to trim
    _LIBC = None


def release_memory(store: Store | None = None) -> None:
    """Return the free pages of glibc, Arrow's pools and (for an embedded store) the engine's jemalloc."""
    import pyarrow as pa

    if _LIBC is not None:
        with contextlib.suppress(AttributeError):
            _LIBC.malloc_trim(0)
    for pool in (pa.default_memory_pool, pa.mimalloc_memory_pool):
        with contextlib.suppress(Exception):  # a pyarrow built without mimalloc
            pool().release_unused()
    if store is not None:
        store.purge_engine_memory()


# What a streaming path may hold above its working set before its freed pages are handed back.
RELEASE_SLACK_BYTES = 64 << 20
_PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")


def rss_bytes() -> int:
    """This process's resident set now (/proc/self/statm: a few microseconds; 0 where there is none)."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * _PAGE_BYTES
    except (OSError, IndexError, ValueError):
        return 0


class Releaser:
    """`release_memory` when the process has grown more than `slack` bytes since the last release (or
    since it shrank): called after each step of a streaming path, from any of its threads."""

    def __init__(self, store: Store | None = None, slack: int = RELEASE_SLACK_BYTES) -> None:
        self.store = store
        self.slack = slack
        self.settled = rss_bytes()  # RSS after the last release, or the lowest seen since

    def __call__(self) -> None:
        rss = rss_bytes()
        if rss - self.settled > self.slack:
            release_memory(self.store)
            self.settled = rss_bytes()  # the working set now: it may have grown, so this is the new level
        elif rss < self.settled:
            self.settled = rss


def return_memory_promptly() -> None:
    """For a process that streams through more data than it holds (dissect, hub): Arrow allocates from the
    system allocator (mimalloc keeps each thread's freed pages, and a trim from one thread does not reach
    the others': ~50 MB of a dissection's peak, measured), and glibc keeps two arenas rather than one per
    thread, each with its own free memory. Results are unchanged: only where bytes are allocated."""
    import pyarrow as pa

    pa.set_memory_pool(pa.system_memory_pool())
    if _LIBC is not None:
        with contextlib.suppress(AttributeError):
            _LIBC.mallopt(_M_ARENA_MAX, 2)


_M_ARENA_MAX = -8


# How long the embedded engine's jemalloc keeps freed pages before handing them back: chDB builds it with
# 5,000 ms, and a command that streams a store's packets through the engine without keeping them (export,
# snapshots) frees a block every few milliseconds, so seconds of them stay resident. Measured on the 1.1M-
# packet benchmark capture (bench/bench_memory.py), peak over the store's floor: export pcap +150-172 MB ->
# +116-129 MB, snapshot create +130 -> +110 MB, snapshot export +68 -> +59 MB, times unchanged within the
# noise; 0 ms gave ~20 MB less again but doubled the kernel time (each freed page returned at once).
STREAMING_DECAY_MS = 300


def decay_engine_pages_quickly() -> None:
    """Make the embedded engine hand its freed pages back after STREAMING_DECAY_MS. jemalloc reads its
    settings when the engine's library loads: this must run before the first store opens (later it
    changes nothing), and a JE_MALLOC_CONF the user set wins."""
    if "chdb" not in sys.modules:
        os.environ.setdefault("JE_MALLOC_CONF", f"dirty_decay_ms:{STREAMING_DECAY_MS}")
