"""The Redis and PostgreSQL benchmark captures: real loopback traffic under load, recorded by tcpdump.

- Redis: Debian's redis-server on 127.0.0.1:REDIS_PORT, loaded by redis-benchmark (its real client:
  SET, GET, INCR, LPUSH, LPOP, HSET, LRANGE_100 over many connections, every tenth run pipelined 16 deep)
  until tcpdump has REDIS_PACKETS packets.
- PostgreSQL: a throwaway cluster (initdb under bench/out, owned by the postgres user, trust on
  loopback) on 127.0.0.1:PG_PORT, loaded by pgbench's TPC-B-like script, half with the simple protocol
  and half with server-side prepared statements (extended protocol), until tcpdump has PG_PACKETS.

The files are cached under bench/out and made again only when missing. `python -m bench.make_db_capture`
builds both; `redis_capture()` and `pgsql_capture()` are what the benchmark calls.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from bench.common import OUT

REDIS_PORT = 16379
PG_PORT = 15432
REDIS_PACKETS = 600_000
PG_PACKETS = 400_000
REDIS_CAPTURE = OUT / "redis-bench.pcap"
PG_CAPTURE = OUT / "pgsql-bench.pcap"
PG_ROOT = OUT / "pgbench-cluster"
REDIS_TESTS = "set,get,incr,lpush,lpop,hset,lrange_100"


def redis_capture() -> Path:
    if not REDIS_CAPTURE.exists():
        record_redis(REDIS_CAPTURE)
    return REDIS_CAPTURE


def pgsql_capture() -> Path:
    if not PG_CAPTURE.exists():
        record_pgsql(PG_CAPTURE)
    return PG_CAPTURE


def _require(*tools: str) -> None:
    for tool in tools:
        if not shutil.which(tool):
            raise SystemExit(f"{tool} is not installed: run `make bench`, which installs it")


@contextlib.contextmanager
def _tcpdump(target: Path, packets: int, port: int) -> Iterator[subprocess.Popen]:
    """tcpdump on loopback until `packets` packets of `port` are written; the file appears complete."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".partial")
    dump = subprocess.Popen(
        [
            "tcpdump",
            "-i",
            "lo",
            "-s",
            "0",
            "-B",
            "262144",
            "-c",
            str(packets),
            "-w",
            str(partial),
            f"tcp port {port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(1.0)
    try:
        yield dump
    finally:
        if dump.poll() is None:
            dump.send_signal(signal.SIGINT)
        dump.wait()
    os.replace(partial, target)


def record_redis(target: Path, packets: int = REDIS_PACKETS, max_seconds: float = 600) -> Path:
    _require("redis-server", "redis-benchmark", "tcpdump")
    server = subprocess.Popen(
        [
            "redis-server",
            "--bind",
            "127.0.0.1",
            "--port",
            str(REDIS_PORT),
            "--save",
            "",
            "--appendonly",
            "no",
        ],
        stdout=subprocess.DEVNULL,
    )
    try:
        time.sleep(0.5)
        with _tcpdump(target, packets, REDIS_PORT) as dump:
            deadline = time.monotonic() + max_seconds
            runs = 0
            while dump.poll() is None and time.monotonic() < deadline:
                pipeline = "16" if runs % 10 == 9 else "1"
                load = ["-q", "-c", "20", "-n", "20000", "-d", "64", "-r", "10000", "-P", pipeline]
                subprocess.run(
                    ["redis-benchmark", "-h", "127.0.0.1", "-p", str(REDIS_PORT), *load, "-t", REDIS_TESTS],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    check=False,
                )
                runs += 1
    finally:
        server.terminate()
        server.wait()
    return target


def _as_postgres(*cmd: str) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *cmd]


def record_pgsql(target: Path, packets: int = PG_PACKETS, max_seconds: float = 600) -> Path:
    _require("initdb", "pg_ctl", "pgbench", "tcpdump", "runuser")
    shutil.rmtree(PG_ROOT, ignore_errors=True)
    PG_ROOT.mkdir(parents=True)
    shutil.chown(PG_ROOT, "postgres")
    data = PG_ROOT / "data"
    subprocess.run(
        _as_postgres("initdb", "-D", str(data), "-U", "postgres", "-A", "trust"),
        capture_output=True,
        check=True,
    )
    options = f"-c listen_addresses=127.0.0.1 -p {PG_PORT} -c unix_socket_directories={PG_ROOT} -c fsync=off"
    subprocess.run(
        _as_postgres("pg_ctl", "-D", str(data), "-l", str(PG_ROOT / "log"), "-o", options, "-w", "start"),
        capture_output=True,
        check=True,
    )
    base = ["-h", "127.0.0.1", "-p", str(PG_PORT), "-U", "postgres"]
    try:
        subprocess.run(["pgbench", *base, "-i", "-s", "2", "postgres"], capture_output=True, check=True)
        with _tcpdump(target, packets, PG_PORT) as dump:
            deadline = time.monotonic() + max_seconds
            runs = 0
            while dump.poll() is None and time.monotonic() < deadline:
                mode = "simple" if runs % 2 == 0 else "prepared"
                subprocess.run(
                    ["pgbench", *base, "-c", "8", "-j", "2", "-T", "10", "-M", mode, "postgres"],
                    capture_output=True,
                    check=False,
                )
                runs += 1
    finally:
        subprocess.run(
            _as_postgres("pg_ctl", "-D", str(data), "-m", "immediate", "stop"), capture_output=True
        )
    return target


if __name__ == "__main__":
    started = time.time()
    force = "--force" in sys.argv
    for path, maker in ((REDIS_CAPTURE, record_redis), (PG_CAPTURE, record_pgsql)):
        made = maker(path) if force or not path.exists() else path
        print(f"{made}: {made.stat().st_size / 1e6:.0f} MB in {time.time() - started:.0f} s")
