"""Seed corpora for the fuzz targets, written from the repository's real captures and documents.

Nothing here is checked in: `build(target, out_dir)` writes the seeds at run time (a few hundred small
files), from tests/captures (recorded from real servers and clients), Debian's python3-dpkt example
captures, the KFL and SQL examples of docs/ and tests/, and Arrow batches decoded from a capture.
"""

from __future__ import annotations

import hashlib
import io
import random
import re
import struct
from collections.abc import Iterator
from pathlib import Path

from tests.fuzz.inputs import Connection, Segment, write_frames

ROOT = Path(__file__).resolve().parents[2]
CAPTURES = ROOT / "tests" / "captures"
DPKT_EXAMPLES = Path("/usr/share/doc/python3-dpkt/examples/data")
MAX_SEED = 16384

# Which recorded captures hold each protocol's traffic.
PROTOCOL_CAPTURES = {
    "http1": ["dissect/http_*.pcap", "lo-http*.pcap*", "any-sll*.pcap", "export/*.pcap*"],
    "dns": ["dissect/dns_*.pcap", "DPKT:*dns*.pcap"],
    "redis": ["dissect/redis_*.pcap"],
    "postgresql": ["dissect/pgsql_*.pcap"],
    "kafka": ["dissect/kafka_*.pcap"],
    "http2": ["dissect/h2c_*.pcap", "dissect/grpc_*.pcap"],
    "tls": ["dissect/tls_*.pcap", "dissect/pgsql_tls.pcap"],
}


def _files(patterns: list[str]) -> list[Path]:
    found: list[Path] = []
    for pattern in patterns:
        if pattern.startswith("DPKT:"):
            found += sorted(DPKT_EXAMPLES.glob(pattern[5:])) if DPKT_EXAMPLES.is_dir() else []
        else:
            found += sorted(CAPTURES.glob(pattern))
    return found


def all_captures() -> list[Path]:
    files = sorted(p for p in CAPTURES.rglob("*") if p.suffix in (".pcap", ".pcapng"))
    return files + (sorted(DPKT_EXAMPLES.glob("*.pcap")) if DPKT_EXAMPLES.is_dir() else [])


# --- per target --------------------------------------------------------------------------------------------


def capture_seeds() -> Iterator[bytes]:
    for path in all_captures():
        raw = path.read_bytes()[:4096]
        yield b"\x00" + raw  # as it is
        yield b"\x01" + raw[:1024]  # gzip-compressed by the target
        yield b"\x17" + raw[:1024]  # gzip-compressed, then cut short
        yield b"\xf0" + raw[:2048]  # read 16 + 15 * 37 bytes at a time
    # pcapng's slow blocks and the obsolete packet block are rare in real files: one of each
    yield b"\x00" + _pcapng_rare_blocks()


def _pcapng_rare_blocks() -> bytes:
    def block(btype: int, body: bytes) -> bytes:
        body += b"\0" * (-len(body) % 4)
        length = 12 + len(body)
        return struct.pack("<II", btype, length) + body + struct.pack("<I", length)

    shb = block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1))
    idb = block(1, struct.pack("<HHI", 1, 0, 65535) + struct.pack("<HH", 9, 1) + b"\x09\0\0\0" + b"\0" * 4)
    frame = bytes(range(60))
    spb = block(3, struct.pack("<I", len(frame)) + frame)
    pb = block(2, struct.pack("<HHIIII", 0, 0, 1, 2, len(frame), len(frame)) + frame)
    epb = block(
        6, struct.pack("<IIIII", 0, 1, 3, len(frame), len(frame)) + frame + struct.pack("<HHI", 2, 4, 1)
    )
    return shb + idb + spb + pb + epb


def decode_seeds() -> Iterator[bytes]:
    from netrecall.ingest.capture_file import CaptureReader

    for path in all_captures():
        reader = CaptureReader(path)
        try:
            chunk = next(iter(reader.chunks()), None)
        except Exception:
            continue
        if chunk is None:
            continue
        picks = sorted({0, len(chunk) // 3, len(chunk) // 2, len(chunk) - 1, min(3, len(chunk) - 1)})
        yield write_frames([(int(chunk.link_type[i]), chunk.frame(i)) for i in picks])


def tcp_seeds() -> Iterator[bytes]:
    rng = random.Random(17)
    for isn in (1, 0xFFFFFF00, 0x7FFFFFFF):
        for flags in (0, 1, 2, 3):
            size = rng.randrange(200, 5000)
            parts = [struct.pack(">IHB", isn, size, flags)]
            for _ in range(rng.randrange(3, 30)):
                parts.append(
                    struct.pack(">HHB", rng.randrange(size), rng.randrange(1, 1500), rng.randrange(8))
                )
            yield b"".join(parts)


def connection_seeds(target: str) -> Iterator[bytes]:
    from tests.dissect_pcap import read_packets

    count = 0
    for path in _files(PROTOCOL_CAPTURES[target]):
        try:
            packets = read_packets(path)
        except Exception:
            continue
        for conn in _connections(packets):
            data = conn.write()
            yield data[:MAX_SEED]
            count += 1
            if count >= 40:
                return


def _connections(packets: list) -> Iterator[Connection]:
    flows: dict[tuple, list] = {}
    for p in packets:
        a, b = (p.src_ip, p.src_port), (p.dst_ip, p.dst_port)
        flows.setdefault((p.l4, *min(a, b), *max(a, b)), []).append(p)
    for key, pkts in flows.items():
        syn = next((p for p in pkts if p.l4 == 6 and p.flags & 0x12 == 0x02), None)
        first = syn or next((p for p in pkts if p.payload), None)
        if first is None:
            continue
        client = (first.src_ip, first.src_port)
        if key[0] == 17:  # a UDP flow: the DNS server's side is the server
            server_port = 53 if 53 in (first.src_port, first.dst_port) else first.dst_port
            client_port = first.dst_port if first.src_port == server_port else first.src_port
            segments = [Segment((p.src_port == server_port), p.payload, udp=True) for p in pkts if p.payload]
            yield Connection(segments, False, 1, client_port, server_port, 7)
            continue
        server_port = first.dst_port
        nxt: dict[bool, int] = {}
        segments = []
        for p in pkts:
            side = (p.src_ip, p.src_port) != client
            if p.flags & 0x02:
                nxt[side] = (p.seq + 1) & 0xFFFFFFFF
                continue
            if not p.payload and not p.flags & 0x05:
                continue
            expected = nxt.get(side, p.seq)
            jump = ((p.seq - expected + 0x80000000) & 0xFFFFFFFF) - 0x80000000
            segments.append(
                Segment(
                    side, p.payload, bool(p.flags & 1), bool(p.flags & 4), jump if abs(jump) < 32768 else 0
                )
            )
            nxt[side] = (p.seq + len(p.payload)) & 0xFFFFFFFF
        yield Connection(segments, syn is not None, 1, client[1], server_port, 1)


def kfl_seeds() -> Iterator[bytes]:
    seen: set[str] = set()
    sources = [ROOT / "docs" / "kfl.md", ROOT / "README.md", ROOT / "skills" / "network-rca" / "SKILL.md"]
    for path in sources:
        if not path.exists():
            continue
        text = path.read_text()
        for span in re.findall(r"`([^`\n]{3,300})`", text):
            if re.search(r"==|!=|&&|\|\||\.contains|\.exists|>=|<=| in |startsWith|matches|size\(", span):
                seen.add(span.strip("'"))
    for path in (ROOT / "tests").glob("test_kfl*.py"):
        for literal in re.findall(r"'([^'\n]{3,200})'", path.read_text()):
            if re.search(r"==|&&|\|\||\.exists|startsWith", literal):
                seen.add(literal)
    for item in sorted(seen):
        yield item.encode()


def sqlguard_seeds() -> Iterator[bytes]:
    seen: set[str] = set()
    keyword = re.compile(
        r"^\s*\(?\s*(SELECT|WITH|EXPLAIN|SHOW|DESCRIBE|DESC|EXISTS|INSERT|ALTER|DROP)\b", re.I
    )
    for path in [ROOT / "tests" / "test_sqlguard.py", ROOT / "docs" / "kfl.md", ROOT / "docs" / "mcp.md"]:
        if not path.exists():
            continue
        text = path.read_text()
        for literal in re.findall(r'"((?:[^"\\\n]|\\.){4,400})"', text) + re.findall(
            r"`([^`\n]{4,400})`", text
        ):
            if keyword.match(literal):
                seen.add(literal.encode().decode("unicode_escape", "ignore"))
    seen.update(
        [
            "SELECT dst_service, count() FROM api_calls GROUP BY ALL",
            "SELECT * FROM `file`('/etc/passwd', 'LineAsString')",
            "SELECT * FROM \"url\"('http://x', CSV)",
            "WITH t AS (SELECT 1) SELECT * FROM t UNION ALL SELECT 2",
            "EXPLAIN SYNTAX SELECT 1",
            "SELECT * FROM system.tables",
            "SELECT 1 FROM numbers(10) INTO OUTFILE 'x'",
        ]
    )
    for item in sorted(seen):
        yield item.encode()


def ingest_seeds() -> Iterator[bytes]:
    import pyarrow as pa

    from netrecall.agent.metrics import stats_table
    from netrecall.hub.ingest import TABLES
    from netrecall.ingest.capture_file import CaptureReader
    from netrecall.ingest.decode import decode_frames

    names = sorted(TABLES)
    chunk = next(iter(CaptureReader(CAPTURES / "lo-http.pcap").chunks()))
    chunk = type(chunk).from_frames(
        [chunk.frame(i) for i in range(4)], chunk.ts_ns[:4], link_type=[int(t) for t in chunk.link_type[:4]]
    )
    packets = decode_frames(chunk, node="n1", source="agent")
    yield bytes([names.index("packets")]) + _stream(packets)
    yield bytes([names.index("packets")]) + _stream(packets.select(["ts", "src_ip", "dst_ip", "data"]))
    labels = pa.map_(pa.string(), pa.string())
    workloads = pa.table(
        {
            "ip": pa.array([b"\0" * 10 + b"\xff\xff\x0a\0\0\x01"], pa.binary(16)),
            "kind": ["pod"],
            "name": ["web-1"],
            "namespace": ["shop"],
            "node": ["n1"],
            "services": pa.array([["web"]], pa.list_(pa.string())),
            "labels": pa.array([[("app", "web")]], labels),
            "owner": ["web"],
            "host_network": [False],
            "valid_from": pa.array([1_700_000_000_000_000_000], pa.timestamp("ns")),
            "valid_to": pa.array([1_800_000_000_000_000_000], pa.timestamp("ns")),
            "source": ["kube"],
        }
    )
    yield bytes([names.index("workloads")]) + _stream(workloads)
    row = {"ts": 1_700_000_000_000, "node": "n1", "run_id": "r", "backend": "afpacket", "interval_s": 10.0}
    yield bytes([names.index("agent_stats")]) + _stream(stats_table([row]))


def _stream(table) -> bytes:
    import pyarrow as pa

    sink = io.BytesIO()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue()


SEEDS = {
    "capture": capture_seeds,
    "decode": decode_seeds,
    "tcp": tcp_seeds,
    "kfl": kfl_seeds,
    "sqlguard": sqlguard_seeds,
    "ingest": ingest_seeds,
}


def seeds(target: str) -> list[bytes]:
    if target in SEEDS:
        return list(SEEDS[target]())
    return list(connection_seeds(target))


def build(target: str, out_dir: Path) -> int:
    """Write the target's seeds (named by content hash) into out_dir; returns how many."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = 0
    for data in seeds(target):
        name = hashlib.sha1(data).hexdigest()
        path = out_dir / name
        if not path.exists():
            path.write_bytes(data)
            written += 1
    return written
