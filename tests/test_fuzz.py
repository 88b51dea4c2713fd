"""Fuzzing in `make test`: every input a fuzzer ever broke netrecall with (tests/fuzz_regressions/TARGET/)
replays through its target's properties, each fix is checked against a reference (dpkt, the real engine,
the CLI), and every target runs a short coverage-guided atheris session (NETRECALL_FUZZ_SECONDS, 10 s by
default) that must end with no crash and no hang. The long runs are `make fuzz` (docs/reliability.md)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import dpkt
import pyarrow as pa
import pytest

from netrecall.errors import NetrecallError
from netrecall.hub.ingest import RecentTokens, ingest, prepare, read_batch
from netrecall.ingest.capture_file import CaptureReader
from netrecall.ingest.decode import decode_frames
from netrecall.ingest.frames import FrameChunk
from netrecall.store import Store
from tests.conftest import CAPTURES
from tests.fuzz.harness import INSTRUMENT
from tests.fuzz.inputs import Connection, read_frames
from tests.fuzz.run import fuzz
from tests.fuzz.seeds import seeds
from tests.fuzz.targets import TARGETS, _dissect

REGRESSIONS = Path(__file__).parent / "fuzz_regressions"
SECONDS = int(os.environ.get("NETRECALL_FUZZ_SECONDS", "10"))
OWN_ENGINE = {"sqlguard"}  # targets whose checks open a chDB engine of their own


def _regressions() -> list[tuple[str, Path]]:
    return [(p.parent.name, p) for p in sorted(REGRESSIONS.glob("*/*")) if p.is_file()]


@pytest.mark.parametrize(
    ("target", "path"), _regressions(), ids=lambda v: v if isinstance(v, str) else v.name
)
def test_regression_inputs_hold_their_properties(target: str, path: Path) -> None:
    assert target in TARGETS, f"{path}: no fuzz target named {target}"
    assert path.stat().st_size <= 16384, "regression inputs stay small"
    if target in OWN_ENGINE:  # its oracle opens an in-memory chDB: one engine per process, not the suite's
        code = (
            "import sys; from tests.fuzz.targets import TARGETS; "
            "TARGETS[sys.argv[1]](open(sys.argv[2], 'rb').read())"
        )
        done = subprocess.run([sys.executable, "-c", code, target, str(path)], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-3000:]
        return
    TARGETS[target](path.read_bytes())


def test_every_target_has_seeds_from_real_captures() -> None:
    for target in TARGETS:
        found = seeds(target)
        assert len(found) >= 4, f"{target}: only {len(found)} seeds"
        assert max(len(s) for s in found) > 16, target


# --- the fixes, against references -------------------------------------------------------------------------


def test_contiguous_chunks_decode_like_dpkt_to_the_last_byte() -> None:
    """The live agent's chunks are contiguous: the last frame's last header bytes were read from 16 bytes
    before the buffer's end (a pure ACK's flags came out wrong). Every frame of real captures, decoded
    in contiguous chunks of 1-7 frames, against dpkt's reading of the same frames."""
    compared = 0
    for path in (CAPTURES / "lo-http.pcap", CAPTURES / "lo-ipv6.pcap", CAPTURES / "vlan-frag.pcap"):
        chunk = next(iter(CaptureReader(path).chunks()))
        frames = [chunk.frame(i) for i in range(len(chunk))]
        size = 1
        for start in range(0, len(frames), size):
            size = size % 7 + 1
            part = frames[start : start + size]
            table = decode_frames(FrameChunk.from_frames(part, [0] * len(part), int(chunk.link_type[0])))
            for frame, flags, sport in zip(
                part, table.column("tcp_flags").to_pylist(), table.column("src_port").to_pylist(), strict=True
            ):
                ip = dpkt.ethernet.Ethernet(frame).data
                if isinstance(ip, dpkt.ip.IP | dpkt.ip6.IP6) and isinstance(ip.data, dpkt.tcp.TCP):
                    assert (flags & 0xFF, sport) == (ip.data.flags & 0xFF, ip.data.sport)
                    compared += 1
    assert compared > 100


def test_regression_decode_input_is_a_trailing_pure_ack() -> None:
    records = read_frames((REGRESSIONS / "decode" / "last-frame-at-buffer-end").read_bytes())
    link, last = records[-1]
    table = decode_frames(FrameChunk.from_frames([f for _, f in records], [0, 0], link))
    assert table.column("tcp_flags").to_pylist()[-1] == dpkt.ethernet.Ethernet(last).data.data.flags == 0x04


def test_absurd_pcapng_time_offset_imports_instead_of_a_traceback(tmp_path: Path) -> None:
    """The capture regression (an if_tsoffset whose nanoseconds overflow 64 bits) through the real CLI."""
    data = (REGRESSIONS / "capture" / "pcapng-tsoffset-overflow").read_bytes()
    target = tmp_path / "odd.pcapng"
    target.write_bytes(data[1:])  # byte 0 is the target's mode byte (0: the file as it is)
    assert data[0] & 1 == 0
    env = {**os.environ, "NETRECALL_HOME": str(tmp_path / "home")}
    env.pop("NETRECALL_STORE", None)
    result = subprocess.run(
        [sys.executable, "-m", "netrecall", "import", str(target)], capture_output=True, text=True, env=env
    )
    assert "Traceback" not in result.stderr
    assert result.returncode == 0, result.stderr
    assert "imported" in result.stderr + result.stdout


def test_ingest_refuses_what_it_cannot_store_and_stores_the_rest(store: Store) -> None:
    """Every ingest regression and seed through the hub's ingest into a real store: stored (rows counted
    in packets and flows), or refused with a NetrecallError (the hub's 400) — never another exception."""
    recent = RecentTokens()
    stored = refused = 0
    bodies = [p.read_bytes() for p in sorted((REGRESSIONS / "ingest").iterdir())] + seeds("ingest")
    names = ["agent_stats", "packets", "workloads"]
    for number, data in enumerate(bodies):
        table = names[data[0] % 3] if data else "packets"
        try:
            answer = ingest(store, recent, table, f"fuzz-batch-{number:04d}", data[1:])
        except NetrecallError:
            refused += 1
            continue
        stored += answer["rows"]
    assert refused >= 1 and stored >= 4
    assert store.scalar("SELECT count() FROM packets") == 4 + 4  # the two packet seeds
    # the second seed carries no ip_version (stored 0: not IP, no flow); the first one's packets are in flows
    ip_packets = store.scalar("SELECT count() FROM packets WHERE ip_version != 0")
    assert ip_packets == 4 and store.scalar("SELECT sum(packets_ab + packets_ba) FROM flows") == ip_packets


def test_ingest_names_the_column_of_a_wrongly_typed_batch() -> None:
    batch = pa.table({"ts": pa.array([1], pa.int64()), "src_ip": ["10.0.0.1"], "data": [b"x"]})
    with pytest.raises(NetrecallError, match="column ts"):
        prepare("packets", batch)
    batch = pa.table({"src_ip": ["10.0.0.1"]})
    with pytest.raises(NetrecallError, match="column src_ip"):
        prepare("packets", batch)
    batch = pa.table({"direction": pa.array([7], pa.uint8())})
    with pytest.raises(NetrecallError, match="column direction: values outside 0, 1, 2"):
        prepare("packets", batch)
    batch = pa.table({"src_port": pa.array([70000], pa.int64())})
    with pytest.raises(NetrecallError, match="column src_port"):
        prepare("packets", batch)
    with pytest.raises(NetrecallError, match="not an Arrow IPC stream"):
        read_batch((REGRESSIONS / "ingest" / "column-name-not-utf8").read_bytes()[1:])


def test_a_response_captured_before_its_request_keeps_an_ordered_packet_range() -> None:
    conn = Connection.read((REGRESSIONS / "http1" / "first-packet-after-last").read_bytes())
    from netrecall.dissect.protocols.http1 import HttpDissector

    ctx, lo, hi = _dissect(conn, HttpDissector())
    ranges = [(c["first_packet_ts"], c["last_packet_ts"]) for c in ctx.calls if c["protocol"] == "http"]
    assert len(ranges) >= 2 and all(lo <= a <= b <= hi for a, b in ranges)


# --- short coverage-guided runs -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fuzz_work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import atheris  # noqa: F401 - a test dependency (pyproject's test extra): missing is a failure

    return tmp_path_factory.mktemp("fuzz")


@pytest.mark.parametrize("target", list(INSTRUMENT))
def test_short_fuzz_run_finds_nothing(target: str, fuzz_work: Path) -> None:
    result = fuzz(target, runs=10_000_000, seconds=SECONDS, work=fuzz_work)
    assert result.ok, (
        result.crashes,
        result.hangs,
        result.error,
        (fuzz_work / f"{target}.log").read_text()[-3000:],
    )
    assert result.executions >= 20 * SECONDS, f"{target}: only {result.executions} executions in {SECONDS} s"
    assert result.coverage > 50, (
        f"{target}: coverage {result.coverage}: the instrumentation is not reaching it"
    )
