"""The hub and MCP answers: how many bytes an agent reads for 100 calls, and how fast `/api/calls` answers.

1. Size: `list_api_calls` (through the MCP SDK's in-memory client) for the newest 100 calls of the demo
   incident (a real capture, imported and dissected), beside the size of `tshark -T json` for the same
   calls: the packets of those calls' flows (exported by KFL on their ids), message frames only
   (`-Y "http || dns"`). Target: at most 12 KB of text.
2. Latency: a real `netrecall serve` over a benchmark store like bench_kfl's (10M synthetic api_calls from
   the same generator, kept under bench/out/hub and reused); p50 of `GET /api/calls?kfl=...&limit=100`
   over HTTP with the bearer token, per filter, beside the same query in-process (list_calls). Printed
   (no target in the issue).

chDB allows one data path per process, so each part runs in its own child process.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench.common import OUT, print_table, verdict

ROOT = Path(__file__).resolve().parent.parent
HUB_OUT = OUT / "hub"
OWN_STORE = HUB_OUT / "store"
ROWS = 10_000_000
TARGET_BYTES = 12 * 1024
RUNS = 15
TOKEN = "bench-hub-token-000001"
FILTERS = [
    ("5xx", "http && status_code >= 500"),
    ("namespace", 'dst.pod.namespace == "payments"'),
    ("dns rcode", "dns && dns_response && status_code == 3"),
    ("slow svc", 'http && elapsed_time > 900000 && dst.service.name == "checkout"'),
]


def _size_worker(workdir: str) -> None:
    """In a child: demo incident -> store -> dissect; MCP list_api_calls text; export the same calls."""
    import anyio
    from mcp import Client

    import netrecall.demo
    from netrecall.dissect.runner import dissect
    from netrecall.hub.service import Service
    from netrecall.ingest.identity import IdentityResolver
    from netrecall.ingest.importer import import_files
    from netrecall.mcp.server import build_server
    from netrecall.schema.migrate import ensure_schema
    from netrecall.store import open_store

    work = Path(workdir)
    shutil.rmtree(work / "size-store", ignore_errors=True)
    store = open_store(f"chdb://{work / 'size-store'}")
    ensure_schema(store)
    demo = Path(netrecall.demo.__file__).parent
    import_files(
        store,
        [demo / "incident.pcap"],
        node="demo-node-1",
        resolver=IdentityResolver.from_inventory(demo / "inventory.json"),
    )
    dissect(store)
    service = Service(store, exports_dir=work / "exports")

    async def ask() -> tuple[str, str]:
        async with Client(build_server(service)) as client:
            table = await client.call_tool("list_api_calls", {"limit": 100})
            records = await client.call_tool("list_api_calls", {"limit": 100, "format": "json"})
            return table.content[0].text, records.content[0].text

    table_text, json_text = anyio.run(ask)
    ids = [c["id"] for c in json.loads(json_text)["calls"]]
    written = service.export_pcap(kfl="id in [" + ", ".join(json.dumps(i) for i in ids) + "]")
    print(
        json.dumps(
            {
                "calls": len(ids),
                "table_bytes": len(table_text.encode()),
                "json_bytes": len(json_text.encode()),
                "pcap": written["path"],
                "packets": written["packets"],
            }
        )
    )


def _populate_worker(store_path: str) -> None:
    """In a child: make sure the store holds ROWS synthetic calls (bench_kfl's generator), then time the
    same queries in-process (list_calls), so the hub's own overhead shows beside its latency."""
    from bench.synthetic_calls import insert_synthetic_calls
    from netrecall.query.calls import list_calls
    from netrecall.schema.migrate import ensure_schema
    from netrecall.store import open_store
    from netrecall.timeutil import parse_time_ns

    store = open_store(f"chdb://{store_path}")
    ensure_schema(store)
    if store.scalar("SELECT count() FROM api_calls") != ROWS:
        store.command("TRUNCATE TABLE api_calls")
        for part in range(10):
            insert_synthetic_calls(
                store,
                ROWS // 10,
                parse_time_ns("2026-03-14T00:00:00Z") + part * 8640 * 10**9,
                span_s=8640,
                seed=1 + part,
            )
    direct = {}
    for name, kfl in FILTERS:
        list_calls(store, kfl, limit=100)
        times = []
        for _ in range(RUNS):
            started = time.perf_counter()
            list_calls(store, kfl, limit=100)
            times.append((time.perf_counter() - started) * 1000)
        direct[name] = statistics.median(times)
    print(json.dumps({"rows": store.scalar("SELECT count() FROM api_calls"), "direct_ms": direct}))


def _child(*args: str) -> dict:
    done = subprocess.run(
        [sys.executable, "-m", "bench.bench_hub", *args], capture_output=True, text=True, cwd=ROOT
    )
    if done.returncode != 0:
        raise RuntimeError(done.stderr.strip()[-800:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def _tshark_json_bytes(pcap: str) -> tuple[int, int]:
    done = subprocess.run(
        ["tshark", "-n", "-r", pcap, "-Y", "http || dns", "-T", "json"], capture_output=True, check=True
    )
    return len(done.stdout), len(json.loads(done.stdout or b"[]"))


def _latencies(store_path: Path) -> list[tuple[str, str, float, int]]:
    import httpx

    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("NETRECALL_")}
    env["NETRECALL_HOME"] = str(HUB_OUT / "home")
    hub = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "netrecall",
            "serve",
            "--port",
            str(port),
            "--token",
            TOKEN,
            "--store",
            f"chdb://{store_path}",
            "--log-level",
            "warning",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=120) as client:
            _wait_up(client, hub)
            results = []
            for name, kfl in FILTERS:
                client.get("/api/calls", params={"kfl": kfl, "limit": 100})  # warm the marks and columns
                times, total = [], 0
                for _ in range(RUNS):
                    started = time.perf_counter()
                    response = client.get("/api/calls", params={"kfl": kfl, "limit": 100})
                    times.append((time.perf_counter() - started) * 1000)
                    response.raise_for_status()
                    total = response.json()["total"]
                results.append((name, kfl, statistics.median(times), total))
            return results
    finally:
        hub.terminate()
        try:
            hub.wait(timeout=30)
        except subprocess.TimeoutExpired:
            hub.kill()


def _wait_up(client, hub: subprocess.Popen) -> None:
    import httpx

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if hub.poll() is not None:
            raise RuntimeError(f"hub exited: {hub.stderr.read().decode()[-500:] if hub.stderr else ''}")
        try:
            if client.get("/healthz").status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.3)
    raise RuntimeError("hub did not come up")


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run() -> bool:
    HUB_OUT.mkdir(parents=True, exist_ok=True)
    sized = _child("--size", str(HUB_OUT))
    tshark_bytes, tshark_frames = _tshark_json_bytes(sized["pcap"])
    print_table(
        f"list_api_calls for {sized['calls']} calls (demo incident) vs tshark -T json of the same calls",
        ["answer", "bytes", "per call", "vs table"],
        [
            [
                "MCP list_api_calls (table, default)",
                sized["table_bytes"],
                sized["table_bytes"] // sized["calls"],
                "1.0x",
            ],
            [
                "MCP list_api_calls (format=json)",
                sized["json_bytes"],
                sized["json_bytes"] // sized["calls"],
                f"{sized['json_bytes'] / sized['table_bytes']:.1f}x",
            ],
            [
                f"tshark -T json ({tshark_frames} message frames, {sized['packets']} packets exported)",
                tshark_bytes,
                tshark_bytes // sized["calls"],
                f"{tshark_bytes / sized['table_bytes']:.0f}x",
            ],
        ],
    )
    ok = verdict(
        "100 calls <= 12 KB",
        sized["table_bytes"] <= TARGET_BYTES,
        f"{sized['table_bytes']:,} bytes; tshark {tshark_bytes:,}",
    )

    store_path = OWN_STORE  # its own copy: bench_kfl may hold its store (one chDB owner per path)
    populated = _child("--populate", str(store_path))
    results = _latencies(store_path)
    print_table(
        f"hub GET /api/calls?kfl=...&limit=100 over HTTP, {populated['rows']:,} api_calls, p50 of {RUNS}",
        ["filter", "KFL", "total", "hub p50 ms", "in-process p50 ms"],
        [[name, kfl[:60], total, p50, populated["direct_ms"][name]] for name, kfl, p50, total in results],
    )
    print(f"  hub p50 over all filters: {statistics.median([r[2] for r in results]):.1f} ms")
    return ok


if __name__ == "__main__":
    if sys.argv[1:2] == ["--size"]:
        _size_worker(sys.argv[2])
    elif sys.argv[1:2] == ["--populate"]:
        _populate_worker(sys.argv[2])
    else:
        sys.exit(0 if run() else 1)
