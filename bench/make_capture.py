"""The HTTP benchmark capture: real loopback traffic under load, recorded by tcpdump (>= 1M packets).

nginx serves a few JSON documents of different sizes; client processes keep many HTTP/1.1 keep-alive
connections busy; tcpdump records the loopback with a large buffer and stops itself after PACKETS
packets. The file is cached at bench/out/http-1m.pcap and made again only when missing.
`python -m bench.make_capture` builds it; `benchmark_capture()` is what other benchmarks call.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from bench.common import OUT

PACKETS = 1_100_000
PORT = 18090
CAPTURE = OUT / "http-1m.pcap"
CLIENT_PROCESSES = 2
CONNECTIONS_PER_PROCESS = 24
PATHS = ["/api/items/small.json", "/api/items/medium.json", "/api/items/large.json", "/missing"]
WEIGHTS = [0.65, 0.25, 0.07, 0.03]  # mostly small API answers, as in a service mesh

NGINX_CONF = """
worker_processes 1;
pid {root}/nginx.pid;
error_log {root}/error.log crit;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    keepalive_requests 1000000;
    keepalive_timeout 60s;
    default_type application/json;
    server {{
        listen 127.0.0.1:{port};
        root {root}/www;
    }}
}}
"""


def benchmark_capture() -> Path:
    """The cached capture, recorded first if it is not there yet."""
    if not CAPTURE.exists() or CAPTURE.stat().st_size < 50 << 20:
        record(CAPTURE)
    return CAPTURE


def _documents(www: Path) -> None:
    rng = random.Random(7)
    items = www / "api" / "items"
    items.mkdir(parents=True, exist_ok=True)
    for name, count in (("small", 1), ("medium", 10), ("large", 40)):
        docs = [
            {
                "id": rng.randrange(10**9),
                "name": f"item-{rng.randrange(10**6)}",
                "price": round(rng.uniform(1, 500), 2),
                "tags": rng.sample(["red", "green", "blue", "sale", "new", "eu", "us"], 3),
                "stock": rng.randrange(1000),
            }
            for _ in range(count)
        ]
        (items / f"{name}.json").write_text(json.dumps({"items": docs}))


async def _connection(stop_at: float, rng: random.Random) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", PORT)
    done = 0
    try:
        while time.monotonic() < stop_at:
            path = rng.choices(PATHS, WEIGHTS)[0]
            writer.write(
                f"GET {path}?page={rng.randrange(100)} HTTP/1.1\r\nHost: shop.local\r\n"
                f"User-Agent: bench-client/1.0\r\nAccept: application/json\r\n\r\n".encode()
            )
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            await reader.readexactly(length)
            done += 1
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
    finally:
        writer.close()
    return done


def _client(seconds: float, seed: int) -> None:
    async def main() -> None:
        rng = random.Random(seed)
        stop_at = time.monotonic() + seconds
        await asyncio.gather(
            *(_connection(stop_at, random.Random(rng.random())) for _ in range(CONNECTIONS_PER_PROCESS))
        )

    asyncio.run(main())


def record(target: Path, packets: int = PACKETS, max_seconds: float = 600) -> Path:
    """Record `packets` packets of loopback HTTP into `target` (pcap, µs, full frames)."""
    for tool in ("nginx", "tcpdump"):
        if not shutil.which(tool):
            raise SystemExit(f"{tool} is not installed: run `make bench`, which installs it")
    root = OUT / "nginx"
    shutil.rmtree(root, ignore_errors=True)
    (root / "www").mkdir(parents=True)
    _documents(root / "www")
    (root / "nginx.conf").write_text(NGINX_CONF.format(root=root, port=PORT))
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".partial")
    nginx = subprocess.Popen(["nginx", "-c", str(root / "nginx.conf"), "-g", "daemon off;"])
    dump = None
    clients: list[multiprocessing.Process] = []
    try:
        time.sleep(0.5)
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
                f"tcp port {PORT}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(1.0)
        clients = [
            multiprocessing.Process(target=_client, args=(max_seconds, seed))
            for seed in range(CLIENT_PROCESSES)
        ]
        for client in clients:
            client.start()
        dump.wait(timeout=max_seconds + 30)
    finally:
        for client in clients:
            if client.is_alive():
                client.terminate()
            client.join()
        if dump is not None and dump.poll() is None:
            dump.send_signal(signal.SIGINT)
            dump.wait()
        nginx.send_signal(signal.SIGQUIT)
        nginx.wait()
    os.replace(partial, target)
    return target


if __name__ == "__main__":
    started = time.time()
    path = record(CAPTURE) if "--force" in sys.argv else benchmark_capture()
    print(f"{path}: {path.stat().st_size / 1e6:.0f} MB in {time.time() - started:.0f} s")
