"""`netrecall import` as a user runs it (a subprocess with its own embedded store): summary line, --node,
--inventory enrichment with the resolver, and a second import of the same file being skipped."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from netrecall.ingest.importer import import_files
from tests.conftest import CAPTURES, require_tool
from tests.import_reference import tshark_frames

DEMO = Path(__file__).parent.parent / "netrecall" / "demo"


def _netrecall(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "netrecall", *args], capture_output=True, text=True, timeout=180
    )


def _query(store_url: str, sql: str) -> list[list[str]]:
    code = (
        "import sys; from netrecall.store import open_store; s = open_store(sys.argv[1]); "
        "[print('\\t'.join(map(str, r))) for r in s.rows(sys.argv[2])]"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, store_url, sql], capture_output=True, text=True, check=True
    )
    return [line.split("\t") for line in out.stdout.splitlines()]


def test_cli_import_twice_with_node(tmp_path: Path) -> None:
    require_tool("tshark")
    store = f"chdb://{tmp_path}/store"
    path = CAPTURES / "lo-http.pcapng"
    expected = len(tshark_frames(path))
    first = _netrecall("import", str(path), "--node", "worker-7", "--store", store)
    assert first.returncode == 0, first.stderr
    line = first.stdout.strip().splitlines()[-1]
    assert re.fullmatch(
        rf"imported {expected} packets, [\d.,]+ KiB, 3 flows, 0 skipped, [\d.]+ s \([\d,]+ packets/s\)", line
    ), line
    second = _netrecall("import", str(path), "--store", store)
    assert second.returncode == 0, second.stderr
    assert "already imported" in second.stdout
    assert second.stdout.strip().splitlines()[-1].startswith("imported 0 packets")
    rows = _query(store, "SELECT node, count() FROM packets GROUP BY node")
    assert rows == [["worker-7", str(expected)]]


def test_cli_inventory_enriches_both_ends(tmp_path: Path) -> None:
    store = f"chdb://{tmp_path}/store"
    result = _netrecall(
        "import", str(DEMO / "incident.pcap"), "--inventory", str(DEMO / "inventory.json"), "--store", store
    )
    assert result.returncode == 0, result.stderr
    pods = _query(
        store,
        "SELECT countIf(src_pod != ''), countIf(dst_pod != ''), count(), uniqExact(src_pod) FROM packets "
        "WHERE ip_version = 4",
    )[0]
    assert int(pods[0]) > 0 and int(pods[1]) > 0 and int(pods[3]) >= 3
    assert int(_query(store, "SELECT count() FROM workloads")[0][0]) > 0
    flows = _query(store, "SELECT countIf(a_pod != '' OR b_pod != '') FROM flows")[0]
    assert int(flows[0]) > 0


def test_in_process_resolver_matches_lookup(store) -> None:
    """Enrichment goes through the resolver exactly: each end's pod is what lookup() says at that time."""
    from netrecall.ingest.identity import IdentityResolver

    resolver = IdentityResolver.from_inventory(DEMO / "inventory.json")
    import_files(store, [DEMO / "incident.pcap"], resolver=resolver)
    rows = store.rows(
        "SELECT toUnixTimestamp64Nano(ts), src_ip, src_pod, dst_ip, dst_pod FROM packets "
        "WHERE ip_version = 4 LIMIT 200"
    )
    assert rows
    for ts, src, src_pod, dst, dst_pod in rows:
        for ip, pod in ((src, src_pod), (dst, dst_pod)):
            found = resolver.lookup(str(ip.ipv4_mapped), ts)
            assert (found.pod if found else "") == pod
