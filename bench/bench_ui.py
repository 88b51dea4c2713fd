"""The web page over 10M calls, measured in the browser (Debian's chromium driven by Playwright).

A store of 10M synthetic api_calls spread over one hour (bench/synthetic_calls.py's generator, kept under
bench/out/ui and reused) behind a real `netrecall serve` with a token; the page signed in through its
login form. Measured with the page's own User Timing marks:

1. Time to first rows of the traffic view for a filter: from the filter's submit to the first page of
   rows in the table (p50 over RUNS). Reference: the hub's REST `/api/calls?kfl&limit=50` for the same
   filter timed from Python (the CLI's and MCP's path), as a ratio. Target: p50 <= 500 ms.
2. A deep page: the 20th "Load more" (keyset paging, never OFFSET) against the first page.
3. The service map over the whole hour (10M calls) per grouping: submit to drawn (the map reads the
   per-minute edges, call_edges, kept by a view as the calls are inserted). Reference: the bare GROUP BY
   of the same ends over the calls through `/api/sql` (what a scan alone needs). Target: p50 <= 1 s.
4. Page weight: the bytes the browser transferred for the page and its files, compressed as the hub sends
   them (Resource Timing). Target: <= 500 KB.
5. Live mode: from an agent's batch of real packets (tests/captures/lo-http.pcap, dated now) posted to
   `/api/ingest` to its calls standing in the table (p50 and worst of RUNS batches). A hub of its own on
   a fresh store, so the 10M-call store stays as it was built. Target: every batch <= 2 s.

chDB allows one data path per process: the store is built in a child process, the hub is another.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import OUT, print_table, verdict

ROOT = Path(__file__).resolve().parent.parent
UI_OUT = OUT / "ui"
STORE = UI_OUT / "store"
ROWS = 10_000_000
START = "2026-03-14T10:00:00Z"
TOKEN = "bench-ui-token-000001"
RUNS = 7
FILTERS = [
    ("everything", ""),
    ("5xx", "http && status_code >= 500"),
    ("namespace", 'dst.namespace == "payments"'),
    ("dns nxdomain", "dns && dns_response && status_code == 3"),
    ("slow svc", 'http && elapsed_time > 900000 && dst.service.name == "checkout"'),
]
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-quic",
    "--no-first-run",
    "--disable-component-update",
    "--disable-sync",
]
TARGET_ROWS_MS = 500
TARGET_MAP_MS = 1000
TARGET_WEIGHT = 500 * 1024
TARGET_LIVE_S = 2.0
LIVE_CAPTURE = ROOT / "tests" / "captures" / "lo-http.pcap"


def _populate() -> None:
    """In a child: make sure the store holds ROWS calls over one hour."""
    from bench.synthetic_calls import insert_synthetic_calls
    from netrecall.schema.migrate import ensure_schema
    from netrecall.store import open_store
    from netrecall.timeutil import parse_time_ns

    store = open_store(f"chdb://{STORE}")
    ensure_schema(store)
    if store.scalar("SELECT count() FROM api_calls") != ROWS:
        store.command("TRUNCATE TABLE api_calls")
        for part in range(10):  # ten 6-minute slices: bounded memory while generating
            insert_synthetic_calls(
                store, ROWS // 10, parse_time_ns(START) + part * 360 * 10**9, span_s=360, seed=1 + part
            )
        store.command("OPTIMIZE TABLE api_calls FINAL")
    print(json.dumps({"rows": store.scalar("SELECT count() FROM api_calls")}))
    store.close()


def _start_hub(port: int, log: Path, store: Path = STORE) -> subprocess.Popen:
    import httpx

    proc = subprocess.Popen(
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
            f"chdb://{store}",
            "--log-level",
            "warning",
        ],
        stdout=subprocess.DEVNULL,
        stderr=open(log, "w"),  # noqa: SIM115
        cwd=ROOT,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"hub exited: {log.read_text()[-500:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.3)
    proc.kill()
    raise RuntimeError("hub did not start")


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _p50(values: list[float]) -> float:
    return statistics.median(values)


def _measure_rows(page, kfl: str) -> float:
    """Submit the filter (alternating two spellings of it, so every submit is a new query) and read the
    page's "first-rows" measure: submit to the first page of rows in the table."""
    times = []
    for run in range(RUNS + 1):
        page.evaluate("() => performance.clearMeasures('first-rows')")
        text = kfl if run % 2 else (f"({kfl})" if kfl else "true")
        page.fill("#kfl", text)
        page.press("#kfl", "Enter")
        page.wait_for_function("() => performance.getEntriesByName('first-rows').length > 0")
        if run:  # the first one warms the engine's caches
            times.append(page.evaluate("() => performance.getEntriesByName('first-rows')[0].duration"))
    return _p50(times)


def _measure_rest(client, kfl: str) -> float:
    times = []
    for run in range(RUNS + 1):
        started = time.perf_counter()
        answer = client.get("/api/calls", params={"kfl": kfl, "limit": 50})
        if answer.status_code != 200:
            raise RuntimeError(f"live ingest refused: {answer.text[:300]}")
        if run:
            times.append((time.perf_counter() - started) * 1000)
    return _p50(times)


def _deep_page(page) -> tuple[float, int]:
    """Load 20 more pages of everything; the time of the last one (keyset: no slower than the first)."""
    page.fill("#kfl", "")
    page.press("#kfl", "Enter")
    page.wait_for_selector("#calls[data-state=ready] tbody tr[data-id]")
    last = 0.0
    for _ in range(20):
        before = page.locator("#calls tbody tr[data-id]").count()
        started = time.perf_counter()
        page.click("#more")
        page.wait_for_function(
            "n => document.querySelectorAll('#calls tbody tr[data-id]').length > n", arg=before
        )
        last = (time.perf_counter() - started) * 1000
    return last, page.locator("#calls tbody tr[data-id]").count()


def _measure_map(page, base: str, group: str) -> float:
    times = []
    for run in range(RUNS + 1):
        page.goto(f"{base}/?view=map&group={group}")  # a pasted link: the whole page, then the map
        page.wait_for_function("() => performance.getEntriesByName('map-drawn').length > 0", timeout=60_000)
        if run:
            times.append(page.evaluate("() => performance.getEntriesByName('map-drawn')[0].duration"))
    return _p50(times)


def _measure_sql(client, group: str) -> float:
    ends = {
        "namespace": ("src_namespace", "dst_namespace"),
        "workload": ("src_namespace, src_workload, src_service", "dst_namespace, dst_workload, dst_service"),
        "node": ("src_node", "dst_node"),
    }[group]
    sql = f"SELECT {ends[0]}, {ends[1]}, count() FROM api_calls GROUP BY ALL"
    times = []
    for run in range(RUNS + 1):
        started = time.perf_counter()
        client.post("/api/sql", json={"sql": sql, "max_rows": 10000}).raise_for_status()
        if run:
            times.append((time.perf_counter() - started) * 1000)
    return _p50(times)


def _live_batches(count: int) -> list[bytes]:
    """The capture's packets as an agent posts them, `count` times, each copy dated a second after the one
    before it ends (times from now: an agent posts what it just saw)."""
    import pyarrow as pa

    from netrecall.agent.sink import encode_stream
    from netrecall.ingest.capture_file import CaptureReader
    from netrecall.ingest.decode import decode_frames

    table = decode_frames(next(CaptureReader(LIVE_CAPTURE).chunks()), node="bench-live", source="agent")
    ts = table.column("ts").cast(pa.int64()).to_pylist()
    span = ts[-1] - ts[0] + 1_000_000_000
    start = time.time_ns()
    at = table.schema.get_field_index("ts")
    return [
        encode_stream(
            table.set_column(
                at, "ts", pa.array([t - ts[0] + start + i * span for t in ts], pa.timestamp("ns"))
            )
        )
        for i in range(count)
    ]


def _signed_in(context, base: str):
    """A new page of the hub, signed in through its login form."""
    page = context.new_page()
    page.goto(f"{base}/")
    page.wait_for_selector("#login:not([hidden])")
    page.fill("#token", TOKEN)
    page.click("#login-form button")
    return page


def _measure_live(context, base: str, client) -> list[float]:
    """Seconds from each batch's POST to its calls standing in the followed table."""
    page = _signed_in(context, base)
    page.wait_for_selector("#calls[data-state]")
    page.click("#live")
    page.wait_for_function("() => document.querySelector('#live-state').textContent.includes('following')")
    page.wait_for_timeout(300)  # the event stream is open once the hub sent `ready`
    waits = []
    for number, body in enumerate(_live_batches(RUNS)):
        shown = page.locator("#calls tbody tr.fresh").count()
        sent = time.monotonic()
        answer = client.post(
            "/api/ingest?table=packets",
            content=body,
            headers={
                "Content-Type": "application/vnd.apache.arrow.stream",
                "X-Netrecall-Batch": f"bench-live-{number:04d}",
            },
        )
        if answer.status_code != 200:
            raise RuntimeError(f"live ingest refused: {answer.text[:300]}")
        page.wait_for_function(
            "n => document.querySelectorAll('#calls tbody tr.fresh').length > n", arg=shown, timeout=60_000
        )
        waits.append(time.monotonic() - sent)
    page.close()
    return waits


def run() -> bool:
    import shutil

    import httpx
    from playwright.sync_api import sync_playwright

    UI_OUT.mkdir(parents=True, exist_ok=True)
    built = subprocess.run(
        [sys.executable, "-m", "bench.bench_ui", "populate"], capture_output=True, text=True, cwd=ROOT
    )
    if built.returncode != 0:
        raise RuntimeError(built.stderr.strip()[-800:])
    rows = json.loads(built.stdout.strip().splitlines()[-1])["rows"]
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    hub = _start_hub(port, UI_OUT / "hub.log")
    try:
        client = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=120)
        with sync_playwright() as driver, tempfile.TemporaryDirectory() as profile:
            context = driver.chromium.launch_persistent_context(
                profile,
                executable_path="/usr/bin/chromium",
                args=ARGS,
                viewport={"width": 1400, "height": 900},
            )
            page = _signed_in(context, base)
            page.wait_for_selector("#calls[data-state=ready] tbody tr[data-id]")
            weight = page.evaluate(
                "() => [...performance.getEntriesByType('navigation'), "
                "...performance.getEntriesByType('resource')]"
                ".filter(e => !e.name.includes('/api/'))"
                ".reduce((n, e) => n + e.encodedBodySize, 0)"
            )
            first_rows = [
                (name, _measure_rows(page, kfl), _measure_rest(client, kfl)) for name, kfl in FILTERS
            ]
            deep_ms, deep_rows = _deep_page(page)
            maps = [
                (g, _measure_map(page, base, g), _measure_sql(client, g))
                for g in ("namespace", "workload", "node")
            ]
            hub.terminate()
            hub.wait(timeout=30)
            live_store = UI_OUT / "live-store"
            shutil.rmtree(live_store, ignore_errors=True)
            hub = _start_hub(port, UI_OUT / "hub-live.log", live_store)
            live = _measure_live(context, base, client)
            context.close()
    finally:
        hub.terminate()
        hub.wait(timeout=30)

    print_table(
        f"Traffic view, time to first rows (50), {rows:,} calls over 1 h, p50 of {RUNS} (browser vs REST)",
        ["filter", "page ms", "REST /api/calls ms", "page / REST"],
        [(n, page_ms, rest_ms, page_ms / rest_ms) for n, page_ms, rest_ms in first_rows],
    )
    print(f"  the 20th 'Load more' (rows {deep_rows - 49:,}-{deep_rows:,}): {deep_ms:.0f} ms (keyset paging)")
    print_table(
        f"Service map over the whole hour ({rows:,} calls), p50 of {RUNS} "
        "(browser vs the bare GROUP BY of the same ends via /api/sql)",
        ["group", "page ms", "bare SQL ms", "page / SQL"],
        [(g, page_ms, sql_ms, page_ms / sql_ms) for g, page_ms, sql_ms in maps],
    )
    print_table(
        "Page weight (transferred, compressed)",
        ["bytes", "target", "ratio to target"],
        [(weight, TARGET_WEIGHT, weight / TARGET_WEIGHT)],
    )
    worst_rows = max(t for _, t, _ in first_rows)
    worst_map = max(t for _, t, _ in maps)
    ok = verdict(
        "first rows p50 <= 500 ms", worst_rows <= TARGET_ROWS_MS, f"worst filter {worst_rows:.0f} ms"
    )
    ok &= verdict(
        "service map (1 h, 10M) p50 <= 1 s", worst_map <= TARGET_MAP_MS, f"worst group {worst_map:.0f} ms"
    )
    print_table(
        f"Live mode: an agent's batch posted -> its calls in the followed table, {RUNS} batches",
        ["p50 s", "worst s", "target s"],
        [(statistics.median(live), max(live), TARGET_LIVE_S)],
    )
    ok &= verdict("page weight <= 500 KB", weight <= TARGET_WEIGHT, f"{weight / 1024:.1f} KB")
    ok &= verdict(
        "live mode <= 2 s",
        max(live) <= TARGET_LIVE_S,
        f"worst {max(live):.2f} s, p50 {statistics.median(live):.2f} s",
    )
    return ok


if __name__ == "__main__":
    if sys.argv[1:] == ["populate"]:
        _populate()
    else:
        sys.exit(0 if run() else 1)
