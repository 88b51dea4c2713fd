"""Packets of a real capture as the Arrow batch an agent posts to /api/ingest (dpkt decodes; the store
computes flow_id itself)."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import dpkt
import pyarrow as pa

CAPTURES = Path(__file__).parent / "captures"


def packets_batch(path: Path = CAPTURES / "lo-http.pcap", node: str = "node-a") -> pa.Table:
    cols: dict[str, list] = {
        k: []
        for k in (
            "ts",
            "node",
            "iface",
            "direction",
            "source",
            "link_type",
            "caplen",
            "origlen",
            "ip_version",
            "src_ip",
            "dst_ip",
            "l4",
            "src_port",
            "dst_port",
            "tcp_flags",
            "tcp_seq",
            "tcp_ack",
            "payload_offset",
            "payload_len",
            "data",
        )
    }
    with open(path, "rb") as handle:
        reader = dpkt.pcap.Reader(handle)
        for ts, frame in reader:
            eth = dpkt.ethernet.Ethernet(frame)
            ip = eth.data
            if not isinstance(ip, dpkt.ip.IP):
                continue
            l4 = ip.data
            tcp = isinstance(l4, dpkt.tcp.TCP)
            header = 14 + ip.hl * 4 + (l4.off * 4 if tcp else 8)
            cols["ts"].append(round(ts * 1_000_000) * 1000)  # a µs capture: whole microseconds
            cols["node"].append(node)
            cols["iface"].append("lo")
            cols["direction"].append("unknown")
            cols["source"].append("agent:test")
            cols["link_type"].append(1)
            cols["caplen"].append(len(frame))
            cols["origlen"].append(len(frame))
            cols["ip_version"].append(4)
            cols["src_ip"].append(ipaddress.IPv6Address(f"::ffff:{ipaddress.IPv4Address(ip.src)}").packed)
            cols["dst_ip"].append(ipaddress.IPv6Address(f"::ffff:{ipaddress.IPv4Address(ip.dst)}").packed)
            cols["l4"].append(ip.p)
            cols["src_port"].append(l4.sport)
            cols["dst_port"].append(l4.dport)
            cols["tcp_flags"].append(l4.flags if tcp else 0)
            cols["tcp_seq"].append(l4.seq if tcp else 0)
            cols["tcp_ack"].append(l4.ack if tcp else 0)
            cols["payload_offset"].append(header)
            cols["payload_len"].append(max(0, len(frame) - header))
            cols["data"].append(bytes(frame))
    types = {
        "ts": pa.timestamp("ns"),
        "src_ip": pa.binary(16),
        "dst_ip": pa.binary(16),
        "data": pa.binary(),
        "link_type": pa.uint16(),
        "caplen": pa.uint32(),
        "origlen": pa.uint32(),
        "ip_version": pa.uint8(),
        "l4": pa.uint8(),
        "src_port": pa.uint16(),
        "dst_port": pa.uint16(),
        "tcp_flags": pa.uint16(),
        "tcp_seq": pa.uint32(),
        "tcp_ack": pa.uint32(),
        "payload_offset": pa.uint16(),
        "payload_len": pa.uint32(),
    }
    return pa.table({k: pa.array(v, types.get(k)) for k, v in cols.items()})


def arrow_stream(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()
