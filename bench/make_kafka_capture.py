"""The Kafka benchmark capture: the recorded librdkafka conversation (tests/captures/dissect/
kafka_librdkafka.pcap: producers, a consumer, commits; versions tshark 4.0 decodes) replicated many
times over, each copy with its own client address and port and its own sequence numbers, the copies
starting 10 ms apart so thousands of connections overlap in time, as on a busy broker.

The file is cached at bench/out/kafka-bench.pcap and made again only when missing.
`python -m bench.make_kafka_capture` builds it; `benchmark_capture()` is what the benchmark calls.
"""

from __future__ import annotations

import struct
import sys
import time
from pathlib import Path

import dpkt

from bench.common import OUT

SOURCE = Path(__file__).parent.parent / "tests" / "captures" / "dissect" / "kafka_librdkafka.pcap"
CAPTURE = OUT / "kafka-bench.pcap"
COPIES = 4_000
SPACING_NS = 10_000_000
BROKER_PORTS = (9092, 29092)
ETH, IP_SRC, IP_DST, SPORT, DPORT, SEQ, ACK = 14, 26, 30, 34, 36, 38, 42


def _template() -> list[tuple[int, bytes, bool]]:
    """(time from the first packet in ns, frame, sent by the client) for each packet of the recording."""
    packets = []
    with SOURCE.open("rb") as handle:
        for ts, frame in dpkt.pcap.Reader(handle):
            eth = dpkt.ethernet.Ethernet(frame)
            if not isinstance(eth.data, dpkt.ip.IP) or not isinstance(eth.data.data, dpkt.tcp.TCP):
                continue
            packets.append((round(ts * 1e9), frame, eth.data.data.dport in BROKER_PORTS))
    first = packets[0][0]
    return [(ts - first, frame, from_client) for ts, frame, from_client in packets]


def _copy(template: list[tuple[int, bytes, bool]], k: int, start_ns: int) -> list[tuple[int, bytes]]:
    """Copy k: client 10.82.x.y (a different address per 50,000 copies' worth of ports), port shifted,
    sequence numbers shifted each way."""
    client_ip = bytes([10, 82, 1 + (k // 250) % 250, 1 + k % 250])
    port_shift = (k * 37) % 20_000
    seq_client = (k * 2_654_435_761) & 0xFFFFFFFF
    seq_server = (k * 40_503 * 7_919) & 0xFFFFFFFF
    out = []
    for offset, frame, from_client in template:
        data = bytearray(frame)
        sport, dport = struct.unpack_from(">HH", data, SPORT)
        seq, ack = struct.unpack_from(">II", data, SEQ)
        if from_client:
            data[IP_SRC : IP_SRC + 4] = client_ip
            sport = (sport + port_shift - 1024) % 64_000 + 1024
            seq, ack = (seq + seq_client) & 0xFFFFFFFF, (ack + seq_server) & 0xFFFFFFFF if ack else 0
        else:
            data[IP_DST : IP_DST + 4] = client_ip
            dport = (dport + port_shift - 1024) % 64_000 + 1024
            seq, ack = (seq + seq_server) & 0xFFFFFFFF, (ack + seq_client) & 0xFFFFFFFF if ack else 0
        struct.pack_into(">HHII", data, SPORT, sport, dport, seq, ack)
        struct.pack_into(">H", data, ETH + 10, 0)  # checksums are not verified by either tool
        struct.pack_into(">H", data, ETH + 20 + 16, 0)
        out.append((start_ns + k * SPACING_NS + offset, bytes(data)))
    return out


def record(target: Path, copies: int = COPIES) -> Path:
    template = _template()
    start_ns = 1_700_000_000 * 1_000_000_000
    packets = []
    for k in range(copies):
        packets.extend(_copy(template, k, start_ns))
    packets.sort(key=lambda item: item[0])
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".partial")
    with partial.open("wb") as handle:
        handle.write(struct.pack("<IHHiIII", 0xA1B23C4D, 2, 4, 0, 0, 262144, 1))  # ns timestamps, Ethernet
        for ts, frame in packets:
            sec, nsec = divmod(ts, 1_000_000_000)
            handle.write(struct.pack("<IIII", sec, nsec, len(frame), len(frame)))
            handle.write(frame)
    partial.replace(target)
    return target


def benchmark_capture() -> Path:
    """The cached capture, made first if it is not there yet (or the recording changed since)."""
    if not CAPTURE.exists() or CAPTURE.stat().st_mtime < SOURCE.stat().st_mtime:
        record(CAPTURE)
    return CAPTURE


if __name__ == "__main__":
    started = time.time()
    path = record(CAPTURE) if "--force" in sys.argv else benchmark_capture()
    print(f"{path}: {path.stat().st_size / 1e6:.0f} MB in {time.time() - started:.0f} s")
