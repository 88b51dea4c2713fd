"""Honest counters of the agent, per interface, as Prometheus text on /metrics and a periodic log line.

Every packet is accounted for: captured (reached user space), kernel drops (the ring or perf buffer
overflowed), user-space drops (the agent's bounded queue was full), spooled (sink down, kept on disk),
replayed (sent from the spool later), inserted (acknowledged by the sink), dropped from the spool
(the spool was full and its oldest batch went). Kernel counters are per ring: per interface for named
interfaces, 'any' for one socket on every interface, 'all' for the eBPF perf buffer.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

COUNTERS = {
    "captured_packets": "Packets that reached the agent",
    "captured_bytes": "Bytes on the wire of the captured packets",
    "kernel_drops": "Packets the kernel dropped before the agent read them (ring/perf buffer full)",
    "userspace_drops": "Packets dropped because the agent's bounded queue was full",
    "spooled_packets": "Packets written to the on-disk spool while the sink was down",
    "replayed_packets": "Packets sent from the spool once the sink was back",
    "inserted_packets": "Packets the sink acknowledged",
    "spool_dropped_packets": "Packets lost because the spool was full (oldest batches dropped)",
    "rejected_packets": "Packets the sink refused for good (after retries)",
    "workload_rows_inserted": "workloads history rows the sink acknowledged",
}
GAUGES = {
    "spool_batches": "Batches waiting in the spool",
    "spool_bytes": "Bytes of the spool on disk",
    "queue_chunks": "Chunks waiting between capture and batching",
}


class Metrics:
    """Thread-safe counters keyed by (name, iface)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counters: dict[tuple[str, str], int] = defaultdict(int)
        self._gauges: dict[str, float] = {}
        self._kernel: dict[str, int] = {}  # absolute kernel counters by ring label

    def inc(self, name: str, iface: str = "", value: int = 1) -> None:
        if value:
            with self._lock:
                self._counters[(name, iface)] += int(value)

    def add_counts(self, name: str, per_iface: dict[str, int]) -> None:
        with self._lock:
            for iface, value in per_iface.items():
                self._counters[(name, iface)] += int(value)

    def set_kernel_drops(self, per_ring: dict[str, int]) -> None:
        """Kernel counters are cumulative already: store the absolute value."""
        with self._lock:
            for label, value in per_ring.items():
                self._counters[("kernel_drops", label)] = int(value)

    def set_gauge(self, name: str, value: float) -> None:
        with self._lock:
            self._gauges[name] = value

    def total(self, name: str) -> int:
        with self._lock:
            return sum(v for (n, _), v in self._counters.items() if n == name)

    def get(self, name: str, iface: str) -> int:
        with self._lock:
            return self._counters.get((name, iface), 0)

    def snapshot(self) -> dict[str, dict[str, int]]:
        with self._lock:
            out: dict[str, dict[str, int]] = {}
            for (name, iface), value in self._counters.items():
                out.setdefault(name, {})[iface] = value
            return out

    def prometheus(self) -> str:
        lines: list[str] = []
        snap = self.snapshot()
        for name, help_text in COUNTERS.items():
            metric = f"netrecall_agent_{name}_total"
            lines += [f"# HELP {metric} {help_text}", f"# TYPE {metric} counter"]
            for iface, value in sorted(snap.get(name, {}).items()):
                lines.append(f'{metric}{{iface="{_escape(iface)}"}} {value}')
        with self._lock:
            gauges = dict(self._gauges)
        for name, help_text in GAUGES.items():
            metric = f"netrecall_agent_{name}"
            lines += [
                f"# HELP {metric} {help_text}",
                f"# TYPE {metric} gauge",
                f"{metric} {gauges.get(name, 0):g}",
            ]
        return "\n".join(lines) + "\n"

    def log_line(self) -> str:
        """One line: totals first, then each interface's capture count."""
        snap = self.snapshot()
        totals = {name: sum(snap.get(name, {}).values()) for name in COUNTERS}
        parts = [
            f"captured={totals['captured_packets']}",
            f"kernel_drops={totals['kernel_drops']}",
            f"user_drops={totals['userspace_drops']}",
            f"inserted={totals['inserted_packets']}",
            f"spooled={totals['spooled_packets']}",
            f"replayed={totals['replayed_packets']}",
            f"spool_dropped={totals['spool_dropped_packets']}",
        ]
        with self._lock:
            parts.append(f"spool={int(self._gauges.get('spool_batches', 0))}")
        per_iface = snap.get("captured_packets", {})
        if per_iface:
            parts.append("ifaces=" + ",".join(f"{k}:{v}" for k, v in sorted(per_iface.items())))
        return " ".join(parts)


# The counters an agent_stats row carries, as increments over its interval (schema table agent_stats).
STATS_COUNTERS = (
    "captured_packets",
    "captured_bytes",
    "kernel_drops",
    "userspace_drops",
    "spooled_packets",
    "replayed_packets",
    "inserted_packets",
    "spool_dropped_packets",
    "rejected_packets",
)


class StatsRows:
    """Rows for the `agent_stats` table: the counters' increments since the previous row plus the gauges,
    so Grafana on ClickHouse shows the same figures as /metrics (sum() over any bucket is exact)."""

    def __init__(self, metrics: Metrics, node: str, backend: str, run_id: str, now_s: float) -> None:
        self.metrics = metrics
        self.node = node
        self.backend = backend
        self.run_id = run_id
        self.batches = 0  # packet batches handed to delivery; the run loop counts them
        self._last_s = now_s
        self._last: dict[str, int] = dict.fromkeys(STATS_COUNTERS, 0)
        self._last_batches = 0

    def row(self, now_s: float) -> dict[str, object]:
        totals = {name: self.metrics.total(name) for name in STATS_COUNTERS}
        with self.metrics._lock:
            gauges = dict(self.metrics._gauges)
        row: dict[str, object] = {
            "ts": int(now_s * 1000),
            "node": self.node,
            "run_id": self.run_id,
            "backend": self.backend,
            "interval_s": max(0.0, now_s - self._last_s),
            # a counter never goes back; max() keeps a reset kernel counter from wrapping to 2^64
            **{name: max(0, totals[name] - self._last[name]) for name in STATS_COUNTERS},
            "batches": self.batches - self._last_batches,
            "spool_batches": int(gauges.get("spool_batches", 0)),
            "spool_bytes": int(gauges.get("spool_bytes", 0)),
            "queue_chunks": int(gauges.get("queue_chunks", 0)),
        }
        self._last, self._last_s, self._last_batches = totals, now_s, self.batches
        return row


def stats_table(rows: list[dict[str, object]]):
    """The rows as an Arrow table typed like agent_stats (ts in milliseconds)."""
    import pyarrow as pa

    uint64 = {name: pa.uint64() for name in (*STATS_COUNTERS, "batches", "spool_batches", "spool_bytes")}
    schema = pa.schema(
        [
            ("ts", pa.timestamp("ms")),
            ("node", pa.string()),
            ("run_id", pa.string()),
            ("backend", pa.string()),
            ("interval_s", pa.float32()),
            *uint64.items(),
            ("queue_chunks", pa.uint32()),
        ]
    )
    return pa.Table.from_pylist(rows, schema=schema)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class MetricsServer:
    """GET /metrics on a port of its own, in a daemon thread (no web framework: a small footprint)."""

    def __init__(self, metrics: Metrics, host: str, port: int) -> None:
        owner = metrics

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.split("?")[0] != "/metrics":
                    self.send_error(404)
                    return
                body = owner.prometheus().encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer((host, port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, name="metrics", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
