"""`netrecall store info`, and the embedded store's single owner: a second process is refused in one line
that names the owner and says to go through it with --url."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa

from netrecall.cli.storeinfo import store_summary
from netrecall.schema.migrate import SCHEMA_VERSION
from netrecall.store import Store

HOLDER = """
import sys
from netrecall.store import open_store
store = open_store(sys.argv[1])  # kept referenced: the engine lives as long as a handle does
print("holding", flush=True)
sys.stdin.read()  # until the test closes our stdin
"""


def netrecall(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "netrecall", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=os.environ.copy(),
    )


def test_second_process_is_refused_in_one_line_naming_the_owner(tmp_path: Path):
    url = f"chdb://{tmp_path / 'store'}"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, url], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "holding"
        refused = netrecall("store", "info", "--store", url)
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)
    assert refused.returncode == 2
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1, refused.stderr  # the engine's own multi-line refusal is held back
    line = lines[0]
    assert line.startswith(f"netrecall: error: the embedded store at {tmp_path / 'store'} is in use by")
    assert f"process {holder.pid}" in line
    assert "--url" in line and "Traceback" not in refused.stderr
    # once the owner is gone the store opens again
    again = netrecall("store", "info", "--store", url)
    assert again.returncode == 0, again.stderr
    assert f"store: {url}?database=netrecall (chdb)" in again.stdout
    assert f"schema version: {SCHEMA_VERSION}" in again.stdout


def test_store_info_reports_sizes(any_store: Store):
    any_store.insert_arrow(
        "packets",
        pa.table({"node": pa.array(["n1"] * 1000), "data": pa.array([b"\x00" * 500] * 1000, pa.binary())}),
    )
    summary = store_summary(any_store)
    assert summary["schema_version"] == SCHEMA_VERSION
    assert summary["store"] == any_store.address.display
    packets = next(r for r in summary["rows"] if r["table"] == "packets")
    assert packets["rows"] == 1000 and packets["rolling"] is True
    assert packets["bytes_on_disk"] > 0
    assert packets["ratio"] > 10  # zero-filled frames compress well under ZSTD
    snapshots = next(r for r in summary["rows"] if r["table"] == "snapshots")
    assert snapshots["rolling"] is False


def test_store_info_json(tmp_path: Path):
    done = netrecall("store", "info", "--store", f"chdb://{tmp_path / 's'}", "--format", "json")
    assert done.returncode == 0, done.stderr
    payload = json.loads(done.stdout)
    assert payload["schema_version"] == SCHEMA_VERSION and payload["backend"] == "chdb"
    assert {"packets", "flows", "workloads", "api_calls"} <= {r["table"] for r in payload["rows"]}
