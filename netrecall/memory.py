"""Handing freed memory back to the OS, so a streaming path's peak RSS tracks its working set.

Three allocators share a netrecall process, and each keeps what is freed for reuse: glibc (Python
objects, numpy), mimalloc (Arrow's default pool) and the jemalloc linked into the embedded engine (every
query's and insert's blocks; its dirty pages decay only after seconds). Over a run made of many slices
and inserts, what they keep adds up to more than any one step needs (measured on `dissect` of the 1.1M-
packet benchmark capture: ~250 MB of jemalloc pages and ~60 MB of mimalloc pages freed but kept).
Each call here costs well under a millisecond.
"""

from __future__ import annotations

import contextlib
import ctypes
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
