"""The hub's web page end to end in a real browser: Debian's chromium driven by Playwright, against a real
`netrecall serve` on loopback (token required) holding the demo incident (a real capture, imported and
dissected by `netrecall demo`). Every expectation is checked against the hub's own REST answers for the
same question, or against tshark for the PCAP; screenshots of the views go to docs/ui/."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pyarrow as pa
import pytest
from conftest import require_tool
from hub_packets import arrow_stream, packets_batch
from hub_process import Hub, cli_env, free_port

playwright = pytest.importorskip("playwright.sync_api")

TOKEN = "ui-test-token-0001"
CHROMIUM = "/usr/bin/chromium"
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
SHOTS = Path(__file__).resolve().parent.parent / "docs" / "ui"
FIVE_XX = "http && status_code >= 500"


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    home = tmp_path_factory.mktemp("ui")
    store = f"chdb://{home / 'store'}"
    loaded = subprocess.run(
        [sys.executable, "-m", "netrecall", "demo", "--quiet", "--store", store],
        env=cli_env(home),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert loaded.returncode == 0, loaded.stderr
    running = Hub(home, TOKEN).start()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def api(hub):
    with httpx.Client(base_url=hub.url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60) as client:
        yield client


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    require_tool("chromium")
    with playwright.sync_playwright() as driver:
        context = driver.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")),
            executable_path=CHROMIUM,
            args=ARGS,
            viewport={"width": 1400, "height": 900},
            accept_downloads=True,
        )
        yield context
        context.close()


@pytest.fixture
def page(browser, hub):
    """A new tab signed in through the page's login form (the token lives in that tab's sessionStorage)."""
    tab = browser.new_page()
    errors: list[str] = []
    tab.on("pageerror", lambda error: errors.append(str(error)))
    tab.goto(f"{hub.url}/")
    tab.wait_for_selector("#login:not([hidden])")
    tab.fill("#token", TOKEN)
    tab.click("#login-form button")
    tab.wait_for_selector("#calls tbody tr[data-id]")
    yield tab
    assert errors == [], errors  # no script error on the way
    tab.close()


def shown_ids(tab) -> list[str]:
    return tab.locator("#calls tbody tr[data-id]").evaluate_all("rows => rows.map(r => r.dataset.id)")


def all_pages(tab) -> list[str]:
    """Follow "Load more" (keyset pages) until the page says the results ended."""
    while tab.locator("#more").is_visible():
        before = len(shown_ids(tab))
        tab.click("#more")
        tab.wait_for_function(
            "n => document.querySelectorAll('#calls tbody tr[data-id]').length > n", arg=before
        )
    tab.wait_for_selector("#end:not([hidden])")
    return shown_ids(tab)


def api_ids(api, kfl: str = "") -> list[str]:
    answer = api.get("/api/calls", params={"kfl": kfl, "limit": 1000}).json()
    assert not answer["truncated"]
    return [c["id"] for c in answer["calls"]]


def apply_filter(tab, kfl: str) -> None:
    tab.fill("#kfl", kfl)
    tab.press("#kfl", "Enter")
    tab.wait_for_url(re.compile(r"[?&]q="))
    tab.wait_for_selector("#calls[data-state=ready]")
    tab.wait_for_selector("#kfl-error", state="hidden")


def test_nothing_is_served_without_the_token(hub, browser):
    for path in ("/api/ui/calls", "/api/calls", "/api/ui/map", "/api/ui/live", "/api/boundaries"):
        refused = httpx.get(f"{hub.url}{path}", timeout=30)
        assert refused.status_code == 401 and refused.json()["error"]["code"] == "unauthorized"
        wrong = httpx.get(f"{hub.url}{path}", headers={"Authorization": "Bearer not-the-token"}, timeout=30)
        assert wrong.status_code == 401
    assert httpx.get(f"{hub.url}/api/calls?token={TOKEN}", timeout=30).status_code == 401  # never in a URL
    shell = httpx.get(f"{hub.url}/", timeout=30)  # the page's own files are open: they hold no data
    assert shell.status_code == 200 and "script-src 'self'" in shell.headers["content-security-policy"]
    assert "payment" not in shell.text

    tab = browser.new_page()
    tab.goto(f"{hub.url}/")
    tab.wait_for_selector("#login:not([hidden])")
    assert tab.locator("#calls tbody tr[data-id]").count() == 0
    tab.fill("#token", "wrong-token-123")
    tab.click("#login-form button")
    tab.wait_for_selector("#login-error:not([hidden])")
    assert "not this hub's" in tab.inner_text("#login-error")
    assert TOKEN not in tab.url and "token" not in tab.url
    tab.close()


def test_the_page_lists_the_demo_calls(page, api):
    expected = api_ids(api)
    assert len(expected) == 269  # the demo: 203 HTTP and 66 DNS calls
    assert shown_ids(page) == expected[:50]  # newest first, as the API orders them
    page.wait_for_function("() => /calls/.test(document.querySelector('#count').textContent)")
    assert page.inner_text("#count") == f"{len(expected)} calls"
    assert all_pages(page) == expected
    page.evaluate("() => window.scrollTo(0, 0)")
    page.screenshot(path=str(SHOTS / "traffic.png"))


def test_the_5xx_filter_shows_exactly_what_the_api_returns(page, api, hub):
    apply_filter(page, FIVE_XX)
    expected = api_ids(api, FIVE_XX)
    assert len(expected) == 66  # 22 each of 502, 500 and 503
    assert all_pages(page) == expected  # 66 > one page: the keyset "Load more" is exercised
    statuses = page.locator("#calls tbody tr[data-id] td.status .value").all_inner_texts()
    assert sorted(set(statuses)) == ["500", "502", "503"]
    assert "q=http+%26%26+status_code+%3E%3D+500" in page.url
    # the URL alone reopens the view (pasted into an incident channel)
    page.goto(page.url)
    page.wait_for_selector("#calls tbody tr[data-id]")
    assert page.input_value("#kfl") == FIVE_XX and shown_ids(page) == expected[:50]


def test_a_typo_shows_the_caret_where_the_api_points(page, api):
    typo = "http && status_cod >= 500"
    answer = api.get("/api/calls", params={"kfl": typo})
    assert answer.status_code == 400
    position = int(re.search(r"at position (\d+)", answer.json()["error"]["message"]).group(1))
    page.fill("#kfl", typo)
    page.press("#kfl", "Enter")
    page.wait_for_selector("#kfl-error:not([hidden])")
    lines = page.inner_text("#kfl-error").splitlines()
    assert lines[1].strip() == typo
    caret = lines[2]
    assert caret.rstrip().endswith("^") and caret.index("^") - lines[1].index(typo[0]) == position
    assert typo[position:].startswith("status_cod")


def test_the_plus_beside_a_field_narrows_the_filter(page, api):
    apply_filter(page, FIVE_XX)
    first = page.locator("#calls tbody tr[data-id]").first
    first.hover()
    clause = first.locator("td").nth(3).locator(".plus").get_attribute("data-clause")
    first.locator("td").nth(3).locator(".plus").click()
    page.wait_for_selector("#calls tbody tr[data-id]")
    page.wait_for_function("c => document.querySelector('#kfl').value.endsWith(c)", arg=clause)
    narrowed = f"{FIVE_XX} && {clause}"
    assert page.input_value("#kfl") == narrowed
    assert all_pages(page) == api_ids(api, narrowed)


def test_opening_a_call_shows_its_headers_and_the_flow_pcap_opens_in_tshark(page, api, tmp_path):
    tshark = require_tool("tshark")
    apply_filter(page, 'http && status_code == 503 && dst.service.name == "payment"')
    call_id = shown_ids(page)[0]
    page.click(f"#calls tbody tr[data-id='{call_id}']")
    page.wait_for_selector("#detail [data-headers=request]")
    full = api.get(f"/api/calls/{call_id}", params={"payload": "true"}).json()
    for side in ("request", "response"):
        table = page.locator(f"#detail [data-headers={side}]")
        for name, value in full[side]["headers"].items():
            row = table.locator("tr", has=page.locator("th", has_text=re.compile(f"^{re.escape(name)}$")))
            assert row.locator(".value").inner_text() == value
    assert '"currency": "EUR"' in page.inner_text("#detail pre.json")  # the JSON body, pretty-printed
    page.wait_for_selector("#flow-packets")
    page.wait_for_selector("#detail .part:has(h3:text('Trace')) table")
    assert call_id in page.input_value("#like-this") or "payment" in page.input_value("#like-this")
    page.screenshot(path=str(SHOTS / "call.png"))

    with page.expect_download() as caught:
        page.click("#flow-pcap")
    saved = tmp_path / caught.value.suggested_filename
    caught.value.save_as(saved)
    fields = subprocess.run(
        [
            tshark,
            "-r",
            str(saved),
            "-T",
            "fields",
            "-e",
            "tcp.stream",
            "-e",
            "tcp.srcport",
            "-e",
            "tcp.dstport",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("\n")
    rows = [line.split("\t") for line in fields if line]
    flow = api.get(f"/api/ui/calls/{call_id}/flow").json()
    stored = api.post(
        "/api/sql", json={"sql": f"SELECT count() FROM packets WHERE flow_id = {int(flow['flow_id'])}"}
    ).json()["rows"][0][0]
    assert len(rows) == stored == flow["total"] > 0  # exactly the flow's packets
    assert {r[0] for r in rows} == {"0"}  # one TCP stream
    ports = {full["src"]["port"], full["dst"]["port"]}
    assert all({int(r[1]), int(r[2])} == ports for r in rows)


def test_the_service_map_shows_the_payment_edge_in_error(page, api):
    page.click("#tabs a[data-view=map]")
    page.wait_for_selector("#map svg g.edge")
    failing = page.locator("#map g.edge.bad[data-src='shop/checkout'][data-dst='payment/payment']")
    assert failing.count() == 1
    groups = api.get("/api/errors").json()["groups"]
    expected = next(g for g in groups if g["src"] == "shop/checkout" and g["dst"] == "payment/payment")
    assert int(failing.get_attribute("data-errors")) == expected["count"] == 22
    healthy = page.locator("#map g.edge[data-src='shop/frontend'][data-dst='shop/catalog']")
    assert healthy.count() == 1 and "bad" not in healthy.get_attribute("class")
    page.screenshot(path=str(SHOTS / "service-map.png"), full_page=True)
    failing.locator("path.hit").click()
    page.wait_for_selector("#view-traffic:not([hidden]) #calls tbody tr[data-id]")
    kfl = page.input_value("#kfl")
    assert 'dst.workload == "Deployment/payment"' in kfl and 'src.workload == "Deployment/checkout"' in kfl
    assert all_pages(page) == api_ids(api, kfl)


def test_the_errors_and_dns_panels_link_into_the_traffic_view(page, api):
    page.click("#tabs a[data-view=errors]")
    page.wait_for_selector("#dns-failures tbody tr.failed")
    assert "api.payment-gateway.svc.cluster.local" in page.inner_text("#dns-failures")
    page.locator("#dns-failures tbody tr.failed").first.locator("button", has_text="calls").click()
    page.wait_for_selector("#view-traffic:not([hidden]) #calls tbody tr[data-id]")
    kfl = page.input_value("#kfl")
    expected = api_ids(api, kfl)
    assert len(expected) == 22 and all_pages(page) == expected


def test_live_mode_shows_a_call_ingested_after_the_page_opened(page, api):
    page.click("#live")
    page.wait_for_selector("#live.on")
    page.wait_for_function("() => document.querySelector('#live-state').textContent.includes('following')")
    page.wait_for_timeout(300)  # the event stream is open once the hub sent `ready`
    before = set(api_ids(api))
    # a real capture's packets, as an agent posts them, placed 30 s after the demo's last packet
    batch = packets_batch(node="live-node")
    ts = batch.column("ts").cast(pa.int64()).to_pylist()
    start = _ns(api.get("/api/boundaries").json()["packets"]["last"]) + 30_000_000_000
    shifted = pa.array([t - ts[0] + start for t in ts], pa.timestamp("ns"))
    batch = batch.set_column(batch.schema.get_field_index("ts"), "ts", shifted)
    stored = api.post(
        "/api/ingest?table=packets",
        content=arrow_stream(batch),
        headers={"Content-Type": "application/vnd.apache.arrow.stream", "X-Netrecall-Batch": "ui-live-0001"},
    )
    assert stored.status_code == 200 and stored.json()["rows"] == batch.num_rows
    # how fast (the 2 s) is measured by bench/bench_ui.py: a timed assertion here would flake
    page.wait_for_selector("#calls tbody tr.fresh", timeout=30_000)
    fresh = page.locator("#calls tbody tr.fresh").evaluate_all("rows => rows.map(r => r.dataset.id)")
    now = set(api_ids(api))
    assert fresh and set(fresh) == now - before  # exactly the calls the ingest brought
    page.click("#live")
    page.wait_for_selector("#live:not(.on)")


def _ns(text: str) -> int:
    from netrecall.timeutil import parse_time_ns

    return parse_time_ns(text)


def test_demo_serve_prints_the_page_url_and_serves_it(tmp_path):
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "netrecall",
            "demo",
            "--quiet",
            "--serve",
            "--port",
            str(port),
            "--token",
            TOKEN,
            "--store",
            f"chdb://{tmp_path / 'store'}",
        ],
        env=cli_env(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.3)
        else:
            pytest.fail("the demo's hub did not start")
        page = httpx.get(f"http://127.0.0.1:{port}/", timeout=10)
        assert "/ui/js/main.js" in page.text
        calls = httpx.get(
            f"http://127.0.0.1:{port}/api/ui/calls", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30
        ).json()
        assert len(calls["calls"]) == 50
    finally:
        proc.terminate()
        output, _ = proc.communicate(timeout=30)
    assert f"http://127.0.0.1:{port}/" in output
