"""Gathering decoded packets into insert-sized batches: flush on size or after about a second.

A batch is the unit of delivery: it carries its own idempotency token (ClickHouse
`insert_deduplication_token`, the hub's X-Netrecall-Batch), so a batch retried after a timeout or
replayed from the spool is stored once.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc


@dataclass
class Batch:
    table: str  # 'packets' or 'workloads'
    data: pa.Table
    token: str = field(default_factory=lambda: uuid.uuid4().hex)
    created_ns: int = field(default_factory=time.time_ns)

    @property
    def rows(self) -> int:
        return self.data.num_rows

    def per_iface(self) -> Counter[str]:
        """Packets per interface (for the per-interface counters); workloads rows count under ''."""
        if self.table != "packets" or "iface" not in self.data.column_names:
            return Counter({"": self.rows})
        counts = pc.value_counts(self.data.column("iface"))
        return Counter({str(v["values"]): int(v["counts"]) for v in counts.to_pylist()})


class Batcher:
    """Accumulates Arrow tables of one destination table; `take()` hands out a batch when one is due."""

    def __init__(
        self, table: str, max_rows: int = 50_000, max_bytes: int = 32 << 20, max_age_s: float = 1.0
    ) -> None:
        self.table = table
        self.max_rows = max_rows
        self.max_bytes = max_bytes
        self.max_age_s = max_age_s
        self._parts: list[pa.Table] = []
        self._rows = 0
        self._bytes = 0
        self._since = 0.0

    @property
    def rows(self) -> int:
        return self._rows

    def add(self, part: pa.Table) -> None:
        if part.num_rows == 0:
            return
        if not self._parts:
            self._since = time.monotonic()
        self._parts.append(part)
        self._rows += part.num_rows
        self._bytes += part.nbytes

    def due(self) -> bool:
        if not self._parts:
            return False
        return (
            self._rows >= self.max_rows
            or self._bytes >= self.max_bytes
            or time.monotonic() - self._since >= self.max_age_s
        )

    def seconds_until_due(self) -> float:
        if not self._parts:
            return self.max_age_s
        return max(0.0, self.max_age_s - (time.monotonic() - self._since))

    def take(self, force: bool = False) -> Batch | None:
        """The accumulated rows as one batch if due (or if `force` and there are any)."""
        if not self._parts or not (force or self.due()):
            return None
        parts = self._parts
        data = parts[0] if len(parts) == 1 else pa.concat_tables(parts, promote_options="default")
        self._parts, self._rows, self._bytes = [], 0, 0
        return Batch(self.table, data.combine_chunks())
