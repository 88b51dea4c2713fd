"""Live mode: the calls that ingest brings, pushed to open pages as server-sent events.

Agents post packets; calls exist once those packets are dissected. While at least one page follows live,
every packet batch the hub stores wakes this feed, which runs the incremental dissection (from the
watermark, through the hub's one-at-a-time dissect jobs) and then sends each follower the calls that run
wrote and its filter matches: one query bounded by the run's time range and its `dissected_at`, never the
page's whole query again. A dissection started through the API is followed the same way. Without a
follower nothing is dissected on ingest: dissection stays where it was asked for (POST /api/dissect, CLI).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Any

from netrecall.errors import NetrecallError
from netrecall.hub.service import Service
from netrecall.hub.ui.queries import PAGE_COLUMNS, page_row
from netrecall.query.kfl import compile_filter
from netrecall.query.redact import redact_call
from netrecall.timeutil import parse_time_ns

log = logging.getLogger("netrecall.hub")
SETTLE_S = 0.15  # batches arriving together (several agents, one flush) are dissected in one run
MAX_PUSH = 500  # calls per event: a follower that needs more reloads the page's query
CLOCK_MARGIN_MS = 2000  # `dissected_at` is the engine's clock; followers drop the ids they already have


class Follower:
    """One page in live mode: its compiled filter and the queue its event stream reads."""

    def __init__(self, kfl: str, loop: asyncio.AbstractEventLoop) -> None:
        compiled = compile_filter(kfl or "", "api_calls")  # a bad filter fails before the stream opens
        if compiled.table != "api_calls":
            raise NetrecallError("live mode follows API calls: this filter selects L4 flows")
        self.where = compiled.where
        self.params = dict(compiled.params)
        self.loop = loop
        self.queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=64)

    def push(self, item: dict[str, Any]) -> None:
        """From the feed's thread: hand an event to the page's stream (dropped if the page stopped)."""

        def put() -> None:
            if not self.queue.full():
                self.queue.put_nowait(item)

        self.loop.call_soon_threadsafe(put)


class LiveFeed:
    """Wakes on ingest (or a dissect job), dissects what is new, pushes it to the followers."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self._followers: set[Follower] = set()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._packets = False
        self._jobs: list[str] = []
        self._thread: threading.Thread | None = None

    @property
    def followers(self) -> int:
        return len(self._followers)

    def follow(self, kfl: str) -> Follower:
        follower = Follower(kfl, asyncio.get_running_loop())
        with self._lock:
            self._followers.add(follower)
        self._start()
        return follower

    def leave(self, follower: Follower) -> None:
        with self._lock:
            self._followers.discard(follower)

    def packets_arrived(self) -> None:
        """Ingest stored a packet batch: dissect it if a page is following."""
        if self._followers:
            self._packets = True
            self._wake.set()

    def job_started(self, job_id: str) -> None:
        """A dissection asked through the API: push what it writes when it ends."""
        if self._followers:
            with self._lock:
                self._jobs.append(job_id)
            self._wake.set()

    def _start(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="live-feed", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while True:
            self._wake.wait()
            time.sleep(SETTLE_S)
            self._wake.clear()
            try:
                self._once()
            except Exception:  # the feed must outlive one bad run; the page keeps its stream
                log.exception("live feed: a run failed")

    def _once(self) -> None:
        with self._lock:
            jobs, self._jobs = self._jobs, []
        for job_id in jobs:
            self._publish(self._wait(job_id))
        if self._packets and self._followers:
            self._packets = False
            jobs_ = self.service.dissect_jobs
            job = jobs_.start(self.service.store, {"since_ns": None, "until_ns": None, "node": None})
            if job.get("already_running"):
                self._wait(job["job"])  # someone else's run: ours follows it, from its watermark
                job = jobs_.start(self.service.store, {"since_ns": None, "until_ns": None, "node": None})
            self._publish(self._wait(job["job"]))

    def _wait(self, job_id: str) -> dict[str, Any]:
        """The job's record once it ended (the jobs live in this process: no query while waiting)."""
        jobs = self.service.dissect_jobs
        while True:
            job = jobs.jobs.get(job_id)
            if job is None or job.get("state") != "running":
                return dict(job or {})
            time.sleep(0.02)

    def _publish(self, job: dict[str, Any]) -> None:
        summary = job.get("summary") or {}
        if job.get("state") != "done" or not summary.get("total_calls") or not self._followers:
            return
        started_ms = _epoch_ms(job.get("started", "")) - CLOCK_MARGIN_MS
        store = self.service.store
        for follower in list(self._followers):
            rows = store.dicts(
                f"SELECT {PAGE_COLUMNS} FROM api_calls "
                "WHERE ts >= fromUnixTimestamp64Nano({l_since:Int64}) "
                "AND ts < fromUnixTimestamp64Nano({l_until:Int64}) "
                "AND dissected_at >= fromUnixTimestamp64Milli({l_after:Int64}) "
                f"AND ({follower.where}) ORDER BY ts DESC, id LIMIT {MAX_PUSH}",
                {
                    **follower.params,
                    "l_since": int(summary["since_ns"]),
                    "l_until": int(summary["until_ns"]),
                    "l_after": started_ms,
                },
            )
            calls = [page_row(r) for r in rows]
            if self.service.redact:
                calls = [redact_call(c) for c in calls]
            if calls:
                follower.push({"calls": calls, "dissected": int(summary["total_calls"])})


def _epoch_ms(text: str) -> int:
    try:
        return parse_time_ns(text) // 1_000_000
    except NetrecallError:  # no start time: take everything the run's range holds
        return 0
