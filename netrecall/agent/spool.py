"""A bounded on-disk queue of batches for when the sink is down.

Each batch is one Arrow IPC stream file named `<sequence>.<table>.<token>.arrows`, written to a
temporary name and renamed, so a crash leaves either the whole file or nothing. Replay takes the
files in sequence order. When the spool would exceed its byte budget, the oldest files are dropped and
counted (rows and files), never silently.
"""

from __future__ import annotations

import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.ipc as ipc

from netrecall.agent.batcher import Batch
from netrecall.errors import NetrecallError

_NAME = re.compile(r"^(\d{16})\.([a-z_]+)\.([0-9a-f]{32})\.arrows$")


@dataclass(frozen=True)
class SpoolItem:
    path: Path
    seq: int
    table: str
    token: str
    size: int


class Spool:
    """Thread-safe; `put` may be called from the capture side while the delivery thread replays."""

    def __init__(self, directory: str | Path, max_bytes: int = 1 << 30) -> None:
        self.dir = Path(directory)
        self.max_bytes = max_bytes
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise NetrecallError(f"spool directory {self.dir}: {exc.strerror or exc}") from None
        self._lock = threading.Lock()
        for stale in self.dir.glob("*.tmp"):  # a write cut short by a crash
            stale.unlink(missing_ok=True)
        self._items: list[SpoolItem] = sorted(self._scan(), key=lambda i: i.seq)
        self._next = (self._items[-1].seq + 1) if self._items else 1

    def _scan(self) -> list[SpoolItem]:
        items = []
        for path in self.dir.iterdir():
            match = _NAME.match(path.name)
            if match:
                items.append(
                    SpoolItem(path, int(match.group(1)), match.group(2), match.group(3), path.stat().st_size)
                )
        return items

    # --- state ---------------------------------------------------------------------------------------
    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    @property
    def bytes(self) -> int:
        with self._lock:
            return sum(i.size for i in self._items)

    def items(self) -> list[SpoolItem]:
        with self._lock:
            return list(self._items)

    # --- writing -------------------------------------------------------------------------------------
    def put(self, batch: Batch) -> list[tuple[SpoolItem, Batch | None]]:
        """Write a batch; returns the oldest items dropped to stay within the budget (with their rows)."""
        with self._lock:
            seq = self._next
            self._next += 1
        path = self.dir / f"{seq:016d}.{batch.table}.{batch.token}.arrows"
        tmp = path.with_suffix(".tmp")
        try:
            with pa.OSFile(str(tmp), "wb") as sink, ipc.new_stream(sink, batch.data.schema) as writer:
                writer.write_table(batch.data)
            os.replace(tmp, path)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise NetrecallError(f"spool {self.dir}: cannot write: {exc.strerror or exc}") from None
        item = SpoolItem(path, seq, batch.table, batch.token, path.stat().st_size)
        dropped: list[SpoolItem] = []
        with self._lock:
            self._items.append(item)
            self._items.sort(key=lambda i: i.seq)
            while sum(i.size for i in self._items) > self.max_bytes and len(self._items) > 1:
                dropped.append(self._items.pop(0))
        out = []
        for old in dropped:
            out.append((old, self._read(old)))  # read for the counts before deleting
            old.path.unlink(missing_ok=True)
        return out

    # --- reading -------------------------------------------------------------------------------------
    def oldest(self) -> SpoolItem | None:
        with self._lock:
            return self._items[0] if self._items else None

    def load(self, item: SpoolItem) -> Batch | None:
        return self._read(item)

    def _read(self, item: SpoolItem) -> Batch | None:
        try:
            with pa.memory_map(str(item.path)) as source:
                data = ipc.open_stream(source).read_all()
        except (OSError, pa.ArrowInvalid):
            return None  # damaged (e.g. disk full mid-write before the rename landed): counted by the caller
        return Batch(item.table, data, token=item.token)

    def remove(self, item: SpoolItem) -> None:
        with self._lock:
            self._items = [i for i in self._items if i.seq != item.seq]
        item.path.unlink(missing_ok=True)
