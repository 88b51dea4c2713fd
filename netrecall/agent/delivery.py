"""Delivering batches in order, with the spool in between when the sink is down.

One delivery thread owns the sink. Batches arrive through a bounded queue; when the queue is full
(the sink is slow), the producer spools the batch itself rather than block capture. While anything
is in the spool, new batches go behind it, so the sink sees batches in capture order. When the sink
is down, batches are spooled and the oldest spooled batch is retried with backoff; every retry
carries the batch's original token, so a batch that did land before a timeout is not stored twice.
"""

from __future__ import annotations

import logging
import queue
import threading
import time

from netrecall.agent.batcher import Batch
from netrecall.agent.metrics import Metrics
from netrecall.agent.sink import Sink, SinkDown, SinkRejected
from netrecall.agent.spool import Spool
from netrecall.errors import NetrecallError

log = logging.getLogger("netrecall.agent")
MAX_ATTEMPTS_REJECTED = 3


class Delivery:
    def __init__(self, sink: Sink, spool: Spool, metrics: Metrics, queue_batches: int = 8) -> None:
        self.sink = sink
        self.spool = spool
        self.metrics = metrics
        self.queue: queue.Queue[Batch | None] = queue.Queue(maxsize=queue_batches)
        self.fatal: NetrecallError | None = None
        self.sink_up = True
        self._retry_at = 0.0
        self._backoff = 0.5
        self._rejections: dict[str, int] = {}
        self._thread = threading.Thread(target=self._run, name="delivery", daemon=True)
        self._stopping = False

    def start(self) -> None:
        self._thread.start()

    # --- producer side ---------------------------------------------------------------------------------
    def submit(self, batch: Batch) -> None:
        try:
            self.queue.put_nowait(batch)
        except queue.Full:
            self._to_spool(batch)

    def close(self, timeout: float = 30.0) -> bool:
        """Deliver what is queued (spooling what the sink will not take now); True if the spool is empty."""
        self._stopping = True
        self.queue.put(None)
        self._thread.join(timeout)
        # anything still queued (thread stuck on a dead sink) goes to disk
        while True:
            try:
                batch = self.queue.get_nowait()
            except queue.Empty:
                break
            if batch is not None:
                self._to_spool(batch)
        self._gauges()
        return len(self.spool) == 0

    # --- delivery thread -------------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            timeout = 0.2 if len(self.spool) else 1.0
            try:
                batch = self.queue.get(timeout=timeout)
            except queue.Empty:
                batch = False  # type: ignore[assignment]
            if batch is None:
                self._drain_on_stop()
                return
            if batch is not False:
                if len(self.spool) or time.monotonic() < self._retry_at:
                    self._to_spool(batch)
                else:
                    self._send_fresh(batch)
            self._replay()
            self._gauges()
            if self.fatal is not None:
                self._drain_on_stop()
                return

    def _drain_on_stop(self) -> None:
        """On shutdown: one more try at the spool (a sink that is up takes it); what is left stays."""
        self._retry_at = 0.0
        self._replay(deadline=time.monotonic() + 10.0)
        while True:
            try:
                batch = self.queue.get_nowait()
            except queue.Empty:
                break
            if batch is not None:
                if len(self.spool) == 0 and self.fatal is None and self.sink_up:
                    self._send_fresh(batch)
                else:
                    self._to_spool(batch)
        self._gauges()

    def _send(self, batch: Batch) -> bool:
        """True when the batch is done with (stored, or refused for good); False when the sink is down."""
        try:
            self.sink.send(batch)
        except SinkDown as exc:
            if self.sink_up:
                log.warning("sink down (%s): spooling to %s", exc, self.spool.dir)
            self.sink_up = False
            self._retry_at = time.monotonic() + self._backoff
            self._backoff = min(self._backoff * 2, 5.0)
            return False
        except SinkRejected as exc:
            tries = self._rejections.get(batch.token, 0) + 1
            self._rejections[batch.token] = tries
            if tries < MAX_ATTEMPTS_REJECTED:
                self._retry_at = time.monotonic() + self._backoff
                return False
            log.error("sink refused batch %s (%d rows) for good: %s", batch.token, batch.rows, exc)
            self._count("rejected_packets", batch)
            self._rejections.pop(batch.token, None)
            return True
        except NetrecallError as exc:
            self.fatal = exc
            return False
        if not self.sink_up:
            log.warning("sink back: replaying %d spooled batches", len(self.spool))
        self.sink_up = True
        self._backoff = 0.5
        self._count("inserted_packets", batch)
        return True

    def _send_fresh(self, batch: Batch) -> None:
        if not self._send(batch):
            self._to_spool(batch)

    def _replay(self, deadline: float | None = None) -> None:
        while self.fatal is None and time.monotonic() >= self._retry_at:
            if deadline is not None and time.monotonic() > deadline:
                return
            if not self._stopping and not self.queue.empty() and not len(self.spool):
                return
            item = self.spool.oldest()
            if item is None:
                return
            batch = self.spool.load(item)
            if batch is None:
                log.error("spooled batch %s is unreadable: dropped", item.path.name)
                self.spool.remove(item)
                self.metrics.inc("spool_dropped_batches_unreadable")
                continue
            if not self._send(batch):
                return
            self.spool.remove(item)
            self._count("replayed_packets", batch)
            if not self._stopping and not self.queue.empty():
                # fresh batches waiting: they go behind the spool, so keep the queue moving into it
                self._move_queue_to_spool()

    def _move_queue_to_spool(self) -> None:
        while True:
            try:
                batch = self.queue.get_nowait()
            except queue.Empty:
                return
            if batch is None:
                self.queue.put(None)  # keep the stop signal for the main loop
                return
            self._to_spool(batch)

    def _to_spool(self, batch: Batch) -> None:
        try:
            dropped = self.spool.put(batch)
        except NetrecallError as exc:  # the spool's disk is full (or gone): the batch is lost, and counted
            log.error("%s: dropped a batch of %d rows", exc, batch.rows)
            self._count("spool_dropped_packets", batch)
            return
        self._count("spooled_packets", batch)
        for item, old in dropped:
            if old is None:
                log.error("spool full: dropped unreadable %s", item.path.name)
                continue
            log.error(
                "spool full (%d bytes): dropped the oldest batch (%d rows)", self.spool.max_bytes, old.rows
            )
            self._count("spool_dropped_packets", old)

    def _count(self, name: str, batch: Batch) -> None:
        if batch.table == "packets":
            self.metrics.add_counts(name, dict(batch.per_iface()))
        elif batch.table == "workloads" and name in ("inserted_packets", "replayed_packets"):
            self.metrics.inc("workload_rows_inserted", "", batch.rows if name == "inserted_packets" else 0)

    def _gauges(self) -> None:
        self.metrics.set_gauge("spool_batches", len(self.spool))
        self.metrics.set_gauge("spool_bytes", self.spool.bytes)
