"""The `netrecall export` and `netrecall snapshot` commands end to end, in a subprocess with its own store:
outputs, exit codes, one-line errors and no partial file left behind on bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import DPKT_EXAMPLES, require_tool
from export_helpers import EXPORT_CAPTURES, assert_same_packets, packets, tool_warnings, tshark_select

CAPTURE = DPKT_EXAMPLES / "http.pcap"


@pytest.fixture(scope="module")
def cli(tmp_path_factory):
    """Run netrecall against one embedded store of this module (its own chDB path: its own process)."""
    base = tmp_path_factory.mktemp("cli")
    env = {**os.environ, "NETRECALL_STORE": f"chdb://{base / 'store'}", "NETRECALL_HOME": str(base / "home")}

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "netrecall", *args], capture_output=True, text=True, env=env, cwd=base
        )

    loaded = run("import", str(CAPTURE), str(EXPORT_CAPTURES / "veth-ns.pcap"), "--node", "n1")
    assert loaded.returncode == 0, loaded.stderr
    return run


def test_export_pcap_and_verify(cli, tmp_path):
    require_tool("tshark")
    out = tmp_path / "web.pcap"
    done = cli(
        "export", "pcap", "-o", str(out), "--ip", "65.208.228.223", "--port", "80", "--output-format", "json"
    )
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)[0]
    reference = tshark_select(CAPTURE, "ip.addr==65.208.228.223 and tcp.port==80", tmp_path / "ref.pcapng")
    assert summary["packets"] == len(reference)
    assert_same_packets(packets(out), reference)
    assert json.loads(Path(str(out) + ".manifest.json").read_text())["nodes"] == ["n1"]
    assert cli("export", "verify", str(out)).returncode == 0
    out.write_bytes(out.read_bytes()[:-3] + b"xyz")
    bad = cli("export", "verify", str(out))
    assert bad.returncode == 1 and "does not match its manifest: sha256 is" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1


def test_export_pcapng_by_extension_with_annotations(cli, tmp_path):
    out = tmp_path / "v6.pcapng"
    done = cli("export", "pcap", "-o", str(out), "--ip", "fd77::/64", "--annotate")
    assert done.returncode == 0, done.stderr
    assert out.read_bytes()[:4] == bytes.fromhex("0a0d0d0a")
    assert tool_warnings(out) == []


def test_empty_match_says_so_and_exits_zero(cli, tmp_path):
    out = tmp_path / "none.pcap"
    done = cli("export", "pcap", "-o", str(out), "--port", "4444")
    assert done.returncode == 0
    assert "no packet matched the filters" in done.stderr
    assert out.exists() and packets(out) == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--pod", "shop/ghost"], "unknown pod shop/ghost"),
        (["--since", "2004-05-13T10:17:30Z", "--until", "2004-05-13T10:17:30Z"], "empty window"),
        (["--since", "2030-01-01T00:00:00Z"], "outside the stored data"),
        (["--ip", "10.1.2.3/40"], "invalid --ip"),
        (["--port", "99999"], "invalid --port"),
        (["--label", "=x"], "invalid --label"),
        (["--format", "txt"], "invalid --format"),
        (["--node", "n2"], "no packets stored for node n2"),
    ],
)
def test_bad_export_input(cli, tmp_path, args, message):
    out = tmp_path / "out.pcap"
    done = cli("export", "pcap", "-o", str(out), *args)
    assert done.returncode != 0
    assert done.stderr.startswith("netrecall: error: ") and message in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_unwritable_output_path(cli, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    done = cli("export", "pcap", "-o", str(tmp_path / "nowhere" / "x.pcap"))
    assert done.returncode != 0 and "does not exist" in done.stderr
    if os.geteuid() != 0:  # root writes anywhere: the mode check only means something for others
        locked.chmod(0o500)
        done = cli("export", "pcap", "-o", str(locked / "x.pcap"))
        assert done.returncode != 0 and "not writable" in done.stderr


def test_snapshot_commands(cli, tmp_path):
    window = ["--since", "2004-05-13T10:17:00Z", "--until", "2004-05-13T10:18:00Z"]
    # 10:17:00 is before the first packet (10:17:07.311224) but retention never dropped anything there:
    # the window is clamped to the data, with a note, instead of refused
    made = cli("snapshot", "create", "incident-1", *window, "--format", "json")
    assert made.returncode == 0, made.stderr
    assert "before the first stored packet (2004-05-13T10:17:07.311224000Z)" in made.stderr
    assert json.loads(made.stdout)[0]["since"] == "2004-05-13T10:17:07.311224000Z"
    assert json.loads(made.stdout)[0]["packets"] == len(packets(CAPTURE))
    again = cli("snapshot", "create", "incident-1", "--since", "2004-05-13T10:17:07Z")
    assert again.returncode != 0 and "already exists" in again.stderr
    gone = cli(
        "snapshot", "create", "late", "--since", "2010-01-01T00:00:00Z", "--until", "2011-01-01T00:00:00Z"
    )
    assert gone.returncode != 0 and "no packets stored in" in gone.stderr and "cover" in gone.stderr
    listed = json.loads(cli("snapshot", "list", "--format", "json").stdout)
    assert [s["name"] for s in listed] == ["incident-1"]

    from_snapshot = tmp_path / "snap.pcap"
    done = cli("export", "pcap", "-o", str(from_snapshot), "--snapshot", "incident-1")
    assert done.returncode == 0, done.stderr
    assert_same_packets(packets(from_snapshot), packets(CAPTURE))

    bundle = tmp_path / "incident-1.zip"
    assert cli("snapshot", "export", "incident-1", "-o", str(bundle)).returncode == 0
    refused = cli("snapshot", "import", str(bundle))
    assert refused.returncode != 0 and "already has a snapshot named 'incident-1'" in refused.stderr
    assert cli("snapshot", "delete", "incident-1").returncode == 0
    assert json.loads(cli("snapshot", "list", "--format", "json").stdout) == []
    assert cli("snapshot", "import", str(bundle)).returncode == 0
    again_out = tmp_path / "again.pcap"
    assert cli("export", "pcap", "-o", str(again_out), "--snapshot", "incident-1").returncode == 0
    assert again_out.read_bytes() == from_snapshot.read_bytes()
    missing = cli("snapshot", "delete", "nope")
    assert missing.returncode != 0 and "no snapshot named 'nope'" in missing.stderr


def test_export_through_a_hub_lands_whole_with_a_manifest(tmp_path):
    """--url: the hub exports and streams; the local file is hash-checked, renamed, and verifiable."""
    from hub_process import Hub, cli_env

    hub = Hub(tmp_path / "hub", "export-test-token")
    hub.home.mkdir(parents=True)
    loaded = subprocess.run(
        [sys.executable, "-m", "netrecall", "import", str(CAPTURE), "--store", f"chdb://{hub.store_path}"],
        env=cli_env(hub.home),
        capture_output=True,
        text=True,
    )
    assert loaded.returncode == 0, loaded.stderr
    hub.start()
    try:
        out = tmp_path / "via-hub.pcap"
        hub.cli("export", "pcap", "-o", str(out), "--ip", "65.208.228.223", "--port", "80")
        reference = tshark_select(
            CAPTURE, "ip.addr==65.208.228.223 and tcp.port==80", tmp_path / "ref.pcapng"
        )
        assert_same_packets(packets(out), reference)
        assert not Path(str(out) + ".tmp").exists()
        manifest = json.loads(Path(str(out) + ".manifest.json").read_text())
        assert manifest["through_hub"] and manifest["packets"] == len(reference)
        verified = subprocess.run(
            [sys.executable, "-m", "netrecall", "export", "verify", str(out)], capture_output=True, text=True
        )
        assert verified.returncode == 0, verified.stderr
        refused = hub.cli("export", "pcap", "-o", str(tmp_path / "x.pcap"), "--proto", "tcp", check=False)
        assert refused.returncode != 0 and "need --store" in refused.stderr
        assert not (tmp_path / "x.pcap").exists()
    finally:
        hub.stop()
