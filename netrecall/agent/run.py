"""The agent's lifecycle: capture -> decode -> enrich -> batch -> deliver, until told to stop.

Threads: one capture thread reads the backend into a bounded queue of chunks (a full queue counts
user-space drops, it never blocks the ring); the main thread decodes, enriches each batch with the
identities valid at its packets' times (just before sending, so watch events that arrive a little
after the packets still count), and hands batches to the delivery thread. SIGTERM/SIGINT: stop capture,
read what is left in the ring, flush the last batch, deliver or spool everything, exit 0.

Crash accounting: a checkpoint file in the spool directory is rewritten every second with the counters.
After a kill -9 the next start finds it unclean and reports how many packets were in memory at the last
checkpoint (lost) before it replays the spool.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import json
import logging
import os
import queue
import signal
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from netrecall.agent.batcher import Batcher
from netrecall.agent.delivery import Delivery
from netrecall.agent.exclude import sink_endpoints
from netrecall.agent.metrics import Metrics, MetricsServer, StatsRows
from netrecall.agent.sink import open_sink
from netrecall.agent.spool import Spool
from netrecall.errors import NetrecallError

log = logging.getLogger("netrecall.agent")
STATE_FILE = "agent-state.json"


@dataclass
class AgentConfig:
    iface: str = "any"
    backend: str = "auto"  # ebpf | afpacket | auto
    snaplen: int = 262144
    store_url: str | None = None
    hub_url: str | None = None
    token: str | None = None
    kubeconfig: str | None = None
    in_cluster: bool = False
    inventory: str | None = None
    node: str = field(default_factory=socket.gethostname)
    duration_s: float | None = None
    spool_dir: str = "/var/lib/netrecall/spool"
    spool_max_bytes: int = 1 << 30
    metrics_host: str = "0.0.0.0"
    metrics_port: int | None = None  # None: no endpoint; 0: any free port
    batch_rows: int = 20_000
    batch_seconds: float = 1.0
    queue_chunks: int = 4096  # the byte bound below is the one that matters
    queue_bytes: int = 4 << 20  # captured bytes waiting for decode; beyond it, user-space drops
    batch_bytes: int = 2 << 20
    log_every_s: float = 5.0
    stats_every_s: float = 10.0  # one agent_stats row per interval (Grafana's agent health)
    ring_mb: int = 8
    extra_exclude: list[str] = field(default_factory=list)  # more "ip:port" to keep out of the capture


class Agent:
    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.metrics = Metrics()
        self.stop_event = threading.Event()
        self.backend: Any = None
        self.backend_reason = ""
        self.resolver: Any = None
        self.watcher: Any = None
        self.metrics_server: MetricsServer | None = None
        self._chunks: queue.Queue = queue.Queue(maxsize=config.queue_chunks)
        self._capture_error: BaseException | None = None
        self._queued_bytes = 0
        self._queued_lock = threading.Lock()
        self._lock_file: Any = None
        self.summary: dict[str, Any] = {}

    # --- setup ---------------------------------------------------------------------------------------
    def _open_backend(self) -> None:
        from netrecall.agent.exclude import Endpoint

        cfg = self.config
        if cfg.hub_url:
            exclude = sink_endpoints(cfg.hub_url)
        elif cfg.store_url and cfg.store_url.startswith(("http://", "https://")):
            from netrecall.store import parse_store_url

            exclude = sink_endpoints(cfg.store_url, parse_store_url(cfg.store_url).port)
        else:
            exclude = []
        for extra in cfg.extra_exclude:
            host, _, port = extra.rpartition(":")
            exclude.append(Endpoint(host.strip("[]"), int(port)))
        choice = cfg.backend
        if choice not in ("auto", "ebpf", "afpacket"):
            raise NetrecallError(f"--backend {choice!r}: choose ebpf, afpacket or auto")
        if choice in ("auto", "ebpf"):
            try:
                from netrecall.agent.capture_ebpf import EbpfCapture

                backend = EbpfCapture(cfg.iface, cfg.snaplen, exclude)
                detail = backend.start()
                self.backend = backend
                self.backend_reason = f"eBPF: {detail}" + (
                    " (auto: the eBPF program loaded)" if choice == "auto" else ""
                )
                return
            except NetrecallError as exc:
                if choice == "ebpf":
                    raise
                reason = str(exc)
            except Exception as exc:  # bcc raises plain Exceptions on compile/load failures
                if choice == "ebpf":
                    raise NetrecallError(f"eBPF backend: {exc}") from None
                reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        from netrecall.agent.capture_afpacket import AfPacketCapture

        backend = AfPacketCapture(cfg.iface, cfg.snaplen, exclude, ring_mb=cfg.ring_mb)
        detail = backend.start()
        self.backend = backend
        self.backend_reason = detail + (f" (auto: eBPF unavailable: {reason})" if choice == "auto" else "")

    def _open_identity(self) -> None:
        cfg = self.config
        if cfg.inventory:
            from netrecall.ingest.identity import IdentityResolver

            self.resolver = IdentityResolver.from_inventory(cfg.inventory)
        elif cfg.kubeconfig or cfg.in_cluster:
            from netrecall.agent.kube import KubeWatcher
            from netrecall.ingest.identity import IdentityResolver

            self.resolver = IdentityResolver(source="kube-apiserver")
            self.watcher = KubeWatcher(self.resolver, kubeconfig=cfg.kubeconfig, in_cluster=cfg.in_cluster)
            self.watcher.start()
            if not self.watcher.wait_synced(30):
                raise NetrecallError("Kubernetes: the first list of pods/services did not complete in 30 s")

    def _lock_spool(self, spool_dir: Path) -> None:
        spool_dir.mkdir(parents=True, exist_ok=True)
        self._lock_file = open(spool_dir / ".lock", "w")  # noqa: SIM115 - held for the agent's life
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise NetrecallError(
                f"spool {spool_dir} is in use by another agent (one agent per spool)"
            ) from None

    # --- crash accounting ----------------------------------------------------------------------------
    def _previous_run(self, state_path: Path, spool: Spool) -> str | None:
        try:
            state = json.loads(state_path.read_text())
        except (OSError, ValueError):
            state = None
        pending = spool.items()
        rows = 0
        if pending:
            rows = sum(b.rows for b in (spool.load(i) for i in pending) if b is not None)
        note = f"spool holds {len(pending)} batches ({rows} rows) to replay" if pending else "spool is empty"
        if state is None or state.get("clean", True):
            return f"previous run ended cleanly; {note}" if pending else None
        lost = max(0, int(state.get("in_memory", 0)))
        return (
            f"previous run (pid {state.get('pid')}) did not exit cleanly (killed?): about {lost} packets "
            f"were in "
            f"memory at its last checkpoint ({state.get('at', '?')}) and are lost; {note}"
        )

    def _checkpoint(self, state_path: Path, clean: bool) -> None:
        m = self.metrics
        handed = (
            m.total("inserted_packets")
            - m.total("replayed_packets")
            + m.total("spooled_packets")
            + m.total("rejected_packets")
            + m.total("userspace_drops")
        )
        state = {
            "pid": os.getpid(),
            "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "clean": clean,
            "captured": m.total("captured_packets"),
            "in_memory": m.total("captured_packets") - handed,
        }
        tmp = state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state))
        os.replace(tmp, state_path)

    # --- capture thread ------------------------------------------------------------------------------
    def _capture_loop(self) -> None:
        try:
            while not self.stop_event.is_set():
                self._capture_once(0.2)
            # stopping: take what the kernel already holds
            for _ in range(64):
                if not self._capture_once(0.05):
                    break
        except BaseException as exc:  # surfaced by the main loop as one line
            self._capture_error = exc
            self.stop_event.set()
        finally:
            self._chunks.put(None)

    def _capture_once(self, timeout: float) -> bool:
        chunk = self.backend.read(timeout)
        if chunk is None:
            return False
        counts = _per_iface(chunk)
        self.metrics.add_counts("captured_packets", counts)
        self.metrics.add_counts("captured_bytes", _per_iface(chunk, chunk.origlen))
        size = int(chunk.data.nbytes)
        with self._queued_lock:
            room = self._queued_bytes + size <= self.config.queue_bytes or self._queued_bytes == 0
            if room:
                self._queued_bytes += size
        if not room:
            self.metrics.add_counts("userspace_drops", counts)
            return True
        try:
            self._chunks.put_nowait(chunk)
        except queue.Full:
            with self._queued_lock:
                self._queued_bytes -= size
            self.metrics.add_counts("userspace_drops", counts)
        return True

    # --- main loop -----------------------------------------------------------------------------------
    def run(self) -> int:
        cfg = self.config
        _release_memory_promptly()
        spool_dir = Path(cfg.spool_dir)
        self._lock_spool(spool_dir)
        spool = Spool(spool_dir, cfg.spool_max_bytes)
        state_path = spool_dir / STATE_FILE
        previous = self._previous_run(state_path, spool)
        if previous:
            log.warning("%s", previous)
        self.summary["previous_run"] = previous or ""
        sink = open_sink(cfg.store_url, cfg.hub_url, cfg.token)
        # two batches in flight at most; beyond that the sink is slow and batches wait on disk, not in memory
        delivery = Delivery(sink, spool, self.metrics, queue_batches=2)
        delivery.start()
        try:
            self._open_identity()
            self._open_backend()
        except BaseException:
            delivery.close(5)
            sink.close()
            raise
        log.info(
            "capturing with %s; node %s; sink %s; spool %s",
            self.backend_reason,
            cfg.node,
            sink.description,
            spool_dir,
        )
        self.summary["backend"] = self.backend.name
        self.summary["backend_reason"] = self.backend_reason
        if cfg.metrics_port is not None:
            self.metrics_server = MetricsServer(self.metrics, cfg.metrics_host, cfg.metrics_port)
            log.info("metrics on http://%s:%d/metrics", cfg.metrics_host, self.metrics_server.port)
            self.summary["metrics_port"] = self.metrics_server.port
        self._checkpoint(state_path, clean=False)
        capture = threading.Thread(target=self._capture_loop, name="capture", daemon=True)
        capture.start()
        from netrecall.ingest.decode import decode_frames

        batcher = Batcher(
            "packets", max_rows=cfg.batch_rows, max_bytes=cfg.batch_bytes, max_age_s=cfg.batch_seconds
        )
        source = f"agent:{cfg.node}"
        captured_seq = 0  # capture order of frames with equal timestamps (the packets `seq` column)
        deadline = time.monotonic() + cfg.duration_s if cfg.duration_s else None
        next_log = time.monotonic() + cfg.log_every_s
        next_checkpoint = time.monotonic() + 1.0
        stats = StatsRows(self.metrics, cfg.node, self.backend.name, uuid.uuid4().hex, time.time())
        next_stats = time.monotonic() + cfg.stats_every_s
        capture_done = False
        while not capture_done:
            if deadline is not None and time.monotonic() >= deadline:
                self.stop_event.set()
            try:
                chunk = self._chunks.get(timeout=min(0.2, max(0.01, batcher.seconds_until_due())))
            except queue.Empty:
                chunk = False
            if chunk is None:
                capture_done = True
            elif chunk is not False:
                with self._queued_lock:
                    self._queued_bytes -= int(chunk.data.nbytes)
                batcher.add(decode_frames(chunk, node=cfg.node, source=source, first_seq=captured_seq))
                captured_seq += len(chunk)
                del chunk
            self.metrics.set_gauge("queue_chunks", self._chunks.qsize())
            batch = batcher.take(force=capture_done)
            if batch is not None:
                if self.resolver is not None:
                    batch.data = self.resolver.enrich(batch.data)
                delivery.submit(batch)
                stats.batches += 1
            self._workloads(delivery)
            now = time.monotonic()
            if now >= next_checkpoint:
                self._kernel_counters()
                self._checkpoint(state_path, clean=False)
                _trim_memory()
                next_checkpoint = now + 1.0
            if now >= next_log:
                log.info("%s", self.metrics.log_line())
                next_log = now + cfg.log_every_s
            if now >= next_stats:
                self._stats(delivery, stats)
                next_stats = now + cfg.stats_every_s
            if delivery.fatal is not None:
                self.stop_event.set()
        capture.join(5)
        self._kernel_counters()
        if self.watcher is not None:
            self.watcher.stop()
        self._workloads(delivery)
        self._stats(delivery, stats)  # the last interval, up to the stop
        self.backend.close()
        emptied = delivery.close(timeout=60)
        sink.close()
        self._checkpoint(state_path, clean=True)
        if self.metrics_server is not None:
            self.metrics_server.close()
        log.info("stopped: %s", self.metrics.log_line())
        if not emptied:
            log.warning(
                "the sink did not take everything: %d batches stay in the spool %s for the next start",
                len(spool),
                spool_dir,
            )
        self.summary["counters"] = self.metrics.snapshot()
        self.summary["spool_batches"] = len(spool)
        if self._capture_error is not None:
            raise NetrecallError(f"capture failed: {self._capture_error}")
        if delivery.fatal is not None:
            raise delivery.fatal
        return 0

    def _workloads(self, delivery: Delivery) -> None:
        if self.resolver is None:
            return
        changes = self.resolver.drain_changes()
        if changes.num_rows:
            from netrecall.agent.batcher import Batch

            delivery.submit(Batch("workloads", changes))

    def _stats(self, delivery: Delivery, stats: StatsRows) -> None:
        """One agent_stats row, delivered like any batch (spooled when the sink is down)."""
        from netrecall.agent.batcher import Batch
        from netrecall.agent.metrics import stats_table

        self._kernel_counters()
        delivery.submit(Batch("agent_stats", stats_table([stats.row(time.time())])))

    def _kernel_counters(self) -> None:
        stats = self.backend.kernel_stats()
        self.metrics.set_kernel_drops({label: s.kernel_drops for label, s in stats.items()})


def _release_memory_promptly() -> None:
    """Arrow's default allocator keeps freed memory for reuse; the agent's buffers come and go every
    second, so the system allocator (which hands large blocks back) keeps the footprint flat. glibc gets
    two arenas (not one per thread, each holding its own free memory) and is trimmed every second."""
    import pyarrow as pa

    pa.set_memory_pool(pa.system_memory_pool())
    with contextlib.suppress(Exception):
        _LIBC.mallopt(-8, 2)  # M_ARENA_MAX


def _trim_memory() -> None:
    import pyarrow as pa

    with contextlib.suppress(Exception):
        _LIBC.malloc_trim(0)
    # Arrow's C++ internals (IPC writers) allocate from mimalloc whatever the Python-level default pool
    with contextlib.suppress(Exception):
        pa.mimalloc_memory_pool().release_unused()


_LIBC = ctypes.CDLL(None)


def _per_iface(chunk, values=None) -> dict[str, int]:
    import numpy as np

    names = chunk.ifaces
    index = np.asarray(chunk.iface_index, dtype=np.int64)
    if values is None:
        counts = np.bincount(index, minlength=len(names))
    else:
        counts = np.bincount(index, weights=np.asarray(values, dtype=np.float64), minlength=len(names))
    return {names[i]: int(c) for i, c in enumerate(counts) if c}


def run_agent(config: AgentConfig) -> dict[str, Any]:
    """Run until SIGTERM/SIGINT or the duration; returns the summary (counters, backend, spool)."""
    agent = Agent(config)

    def _stop(signum: int, frame: object) -> None:
        log.info("signal %d: flushing and stopping", signum)
        agent.stop_event.set()

    previous = {sig: signal.signal(sig, _stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        agent.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return agent.summary
