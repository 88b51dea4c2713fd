"""The identity of a capture file: the sha256 of its bytes, computed ahead in a background thread.

Kept free of numpy, pyarrow and the store so `netrecall import` can start hashing before it loads them.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterable, Sequence
from concurrent.futures import Future
from pathlib import Path

from netrecall.errors import NetrecallError

# Read into one reused buffer, in large blocks: each block takes the GIL twice (after the read, after the
# update), and while the main thread loads libraries it waits up to the 5 ms switch interval for it.
# Beside a busy Python thread, 8 MB blocks hashed the benchmark capture in 1.3-1.4 s, 32 MB in 0.76 s
# (0.5 s alone): `netrecall import` then no longer waits for the hash before its first insert.
HASH_BLOCK = 32 << 20


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    buffer = memoryview(bytearray(HASH_BLOCK))
    try:
        with open(path, "rb", buffering=0) as handle:
            while got := handle.readinto(buffer):
                digest.update(buffer[:got])
    except OSError as exc:
        raise NetrecallError(f"{path}: cannot read: {exc.strerror or exc}") from None
    return digest.hexdigest()


class FileDigests:
    """The sha256 of each file, computed ahead in one background thread.

    hashlib releases the GIL on large blocks, so hashing overlaps whatever runs meanwhile: the embedded
    engine starting (the CLI creates this before opening the store), then the import of the previous
    file. A daemon thread, so an early exit never waits for a large file to be hashed.
    """

    def __init__(self, paths: Iterable[str | Path]) -> None:
        self.futures: dict[Path, Future[str]] = {Path(p): Future() for p in paths}
        threading.Thread(target=self._run, name="netrecall-sha256", daemon=True).start()

    def _run(self) -> None:
        for path, future in self.futures.items():
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(file_sha256(path))
            except BaseException as exc:  # handed to whoever asks for this file
                future.set_exception(exc)

    def get(self, path: Path) -> str:
        future = self.futures.get(path)
        return file_sha256(path) if future is None else future.result()


def import_paths_sorted(paths: Sequence[str | Path]) -> list[Path]:
    """The files in the given order, each once (the same path named twice is imported once)."""
    seen: set[Path] = set()
    ordered = []
    for raw in paths:
        path = Path(raw)
        key = path.resolve()
        if key not in seen:
            seen.add(key)
            ordered.append(path)
    return ordered
