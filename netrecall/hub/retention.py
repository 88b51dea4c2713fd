"""The hub applies the rolling window itself: the TTL and byte budget it was started with (the chart's
`retention.ttl` and `retention.maxBytes`) are set once at start, and the byte budget is enforced again
every few minutes, so a cluster needs no separate cron for it."""

from __future__ import annotations

import logging
import threading

from netrecall.errors import NetrecallError
from netrecall.schema.retention import apply_retention
from netrecall.store import Store

log = logging.getLogger("netrecall.hub")


class RetentionLoop:
    """A daemon thread: `apply_retention` at start with the given rules, then with the remembered ones."""

    def __init__(
        self, store: Store, ttl_seconds: int | None, max_bytes: int | None, every_s: float = 300.0
    ) -> None:
        self.store = store
        self.ttl_seconds = ttl_seconds
        self.max_bytes = max_bytes
        self.every_s = every_s
        self.runs = 0
        self.last_error = ""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="retention", daemon=True)

    def apply_now(self, first: bool = False) -> None:
        """One pass; a failure is logged and retried next time (the hub keeps serving)."""
        try:
            report = apply_retention(
                self.store,
                ttl_seconds=self.ttl_seconds if first else None,
                max_bytes=self.max_bytes if first else None,
            )
        except NetrecallError as exc:
            self.last_error = str(exc)
            log.warning("retention: %s", exc)
            return
        self.runs += 1
        self.last_error = ""
        if report.dropped_hours:
            log.info("retention: dropped %d hour partitions over the byte budget", len(report.dropped_hours))

    def start(self) -> RetentionLoop:
        self.apply_now(first=True)
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.wait(self.every_s):
            self.apply_now()

    def stop(self) -> None:
        self._stop.set()
