"""Helpers for the agent tests: run the agent and tcpdump in a namespace, read what each one saw."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import dpkt
import pyarrow as pa
import pyarrow.ipc as ipc

from tests.conftest import require_tool
from tests.netlab import NetLab

PYTHON = sys.executable


class Proc:
    """A background process whose stderr is collected; `wait_for(text)` waits for a line to appear."""

    def __init__(self, cmd: list[str], env: dict[str, str] | None = None) -> None:
        self.cmd = cmd
        self.lines: list[str] = []
        self.stdout = b""
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, **(env or {})}
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            self.lines.append(raw.decode(errors="replace").rstrip())

    def wait_for(self, text: str, timeout: float = 60.0) -> str:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            for line in list(self.lines):
                if text in line:
                    return line
            if self.proc.poll() is not None:
                time.sleep(0.2)
                raise AssertionError(f"{self.cmd[:6]} exited {self.proc.returncode}: {self.text()}")
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {text!r}: {self.text()}")

    def text(self) -> str:
        return "\n".join(self.lines[-40:])

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 90.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        # wait, then read stdout: communicate() would also read stderr and race the reader thread for it
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.stdout = self.proc.stdout.read() if self.proc.stdout else b""
        self._reader.join(5)
        return self.proc.returncode

    def __enter__(self) -> Proc:
        return self

    def __exit__(self, *exc: object) -> None:
        """A test that failed half-way must not leave its process running (an agent holds its capture)."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def summary(self) -> dict:
        lines = [line for line in self.stdout.decode().splitlines() if line.startswith("{")]
        return json.loads(lines[-1]) if lines else {}


def agent_cmd(*args: str, prefix: list[str] | None = None) -> list[str]:
    return [
        *(prefix or []),
        PYTHON,
        "-m",
        "netrecall",
        "agent",
        "run",
        "--summary-json",
        "--log-every",
        "1",
        *args,
    ]


def start_tcpdump(prefix: list[str], iface: str, out: Path) -> Proc:
    proc = Proc([*prefix, "tcpdump", "-i", iface, "-s", "262144", "-U", "-n", "-w", str(out)])
    proc.wait_for("listening on", 20)
    return proc


def pcap_frames(path: Path, iface: str) -> Counter:
    """(iface, frame bytes) of every record of a pcap file."""
    found: Counter = Counter()
    with open(path, "rb") as handle:
        for _, frame in dpkt.pcap.Reader(handle):
            found[(iface, bytes(frame))] += 1
    return found


def dump_store(url: str, sql: str, out: Path) -> pa.Table:
    """Run a query on a store in a fresh process (a chDB path has one owner per process)."""
    code = (
        "import sys, pyarrow.ipc as ipc\n"
        "from netrecall.store import open_store\n"
        "s = open_store(sys.argv[1]); t = s.arrow(sys.argv[2])\n"
        "w = ipc.new_file(sys.argv[3], t.schema); w.write_table(t); w.close()\n"
    )
    subprocess.run([PYTHON, "-c", code, url, sql, str(out)], check=True, capture_output=True)
    with pa.memory_map(str(out)) as source:
        return ipc.open_file(source).read_all()


def stored_frames(table: pa.Table) -> Counter:
    found: Counter = Counter()
    for iface, data in zip(table.column("iface").to_pylist(), table.column("data").to_pylist(), strict=True):
        found[(iface.decode() if isinstance(iface, bytes) else iface, bytes(data))] += 1
    return found


def http_traffic(client_prefix: list[str], url: str, requests: int, parallel: int = 1) -> None:
    """Real HTTP exchanges with curl (keep-alive off, so every request is a whole TCP connection)."""
    urls = [url] * requests
    for start in range(0, requests, 20):
        args = [arg for u in urls[start : start + 20] for arg in ("-o", "/dev/null", u)]
        subprocess.run(
            [*client_prefix, "curl", "-s", "--parallel", "--parallel-max", str(parallel), *args],
            check=True,
            timeout=60,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )


@contextmanager
def two_pod_lab() -> Iterator[NetLab]:
    """A node with pods a (10) and b (11) on its bridge, a Python HTTP server on b:8080 answering a."""
    require_tool("curl")
    lab = NetLab().up()
    try:
        lab.add_pod("a", 10)
        lab.add_pod("b", 11)
        server = subprocess.Popen(
            lab.in_pod("b", "python3", "-m", "http.server", "8080", "--bind", lab.pods["b"].ip),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd="/usr/share/doc",
        )
        try:
            _wait_until_answering(lab, server, f"http://{lab.pods['b'].ip}:8080/")
            yield lab
        finally:
            server.terminate()
            server.wait(5)
    finally:
        lab.down()


def _wait_until_answering(lab: NetLab, server: subprocess.Popen, url: str, seconds: float = 30.0) -> None:
    """Return once pod a gets an answer from `url`; fail the test with the reason otherwise (a loaded
    machine can take seconds to start the server: a test must not run against one that never came up)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise AssertionError(f"the HTTP server in pod b exited with {server.returncode}")
        if subprocess.run(lab.in_pod("a", "curl", "-s", "-o", "/dev/null", url)).returncode == 0:
            return
        time.sleep(0.2)
    raise AssertionError(f"the HTTP server in pod b did not answer {url} within {seconds:.0f} s")
