"""tshark as the reference reader for the import tests: every frame's time, lengths, bytes and 5-tuple."""

from __future__ import annotations

import json
import shutil
import subprocess
from ipaddress import IPv6Address
from pathlib import Path

from netrecall.store import Store

# IP reassembly off: netrecall stores fragments as they are, and so must the reference.
TSHARK_OPTS = [
    "-o",
    "ip.defragment:FALSE",
    "-o",
    "ipv6.defragment:FALSE",
    "-o",
    "tcp.desegment_tcp_streams:FALSE",
]
FIELDS = [
    "frame.number",
    "ip.src",
    "ip.dst",
    "ipv6.src",
    "ipv6.dst",
    "tcp.srcport",
    "tcp.dstport",
    "udp.srcport",
    "udp.dstport",
]


def _ns(epoch: str) -> int:
    seconds, _, fraction = epoch.partition(".")
    return int(seconds) * 1_000_000_000 + int((fraction + "000000000")[:9])


def tshark_frames(path: Path) -> list[tuple]:
    """(ts_ns, caplen, origlen, bytes, ip_version, src, dst, l4, sport, dport) per frame, in file order."""
    raw = subprocess.run(
        ["tshark", "-r", str(path), *TSHARK_OPTS, "-T", "json", "-x", "-j", "frame"],
        capture_output=True,
        check=False,
    )
    frames = json.loads(raw.stdout or b"[]")
    fields = subprocess.run(
        [
            "tshark",
            "-r",
            str(path),
            *TSHARK_OPTS,
            "-T",
            "fields",
            "-E",
            "occurrence=f",
            "-E",
            "separator=\t",
            *[a for f in FIELDS for a in ("-e", f)],
        ],
        capture_output=True,
        check=False,
        text=True,
    ).stdout.splitlines()
    assert len(frames) == len(fields), f"tshark json/fields disagree on {path}"
    out = []
    for frame, line in zip(frames, fields, strict=True):
        layers = frame["_source"]["layers"]
        info = layers["frame"]
        data = bytes.fromhex(layers["frame_raw"][0])
        f = dict(zip(FIELDS, line.split("\t"), strict=True))
        if f["ip.src"]:
            version, src, dst = 4, f["ip.src"], f["ip.dst"]
        elif f["ipv6.src"]:
            version, src, dst = 6, f["ipv6.src"], f["ipv6.dst"]
        else:
            version, src, dst = 0, "::", "::"
        # the outermost transport in the dissection order (an ICMP error or a tunnel carries inner ones)
        layers_seen = info["frame.protocols"].split(":")
        first = next((p for p in layers_seen if p in ("tcp", "udp", "icmp", "icmpv6")), "")
        l4, sport, dport = 0, 0, 0
        if first == "icmp":
            l4 = 1
        elif first == "icmpv6":
            l4 = 58
        elif first in ("tcp", "udp"):
            l4 = 6 if first == "tcp" else 17
            sport, dport = int(f[f"{first}.srcport"]), int(f[f"{first}.dstport"])
        out.append(
            (
                _ns(info.get("frame.time_epoch", "0")),  # Simple Packet Blocks carry no time
                int(info["frame.cap_len"]),
                int(info["frame.len"]),
                data,
                version,
                src,
                dst,
                l4,
                sport,
                dport,
            )
        )
    return out


def _ip(value: IPv6Address) -> str:
    return str(value.ipv4_mapped) if value.ipv4_mapped else str(value)


def stored_frames(store: Store, where: str = "1") -> list[tuple]:
    """The same tuple for every stored packet; l4 and ports only where tshark would name them."""
    rows = store.rows(
        "SELECT toUnixTimestamp64Nano(ts), caplen, origlen, data, ip_version, src_ip, dst_ip, l4, ip_frag, "
        f"src_port, dst_port FROM packets WHERE {where}",
        column_formats={"data": "bytes"},
    )
    out = []
    for ts, caplen, origlen, data, version, src, dst, l4, _frag, sport, dport in rows:
        if version == 0:
            src_s, dst_s = "::", "::"
        else:
            src_s, dst_s = _ip(src), _ip(dst)
        if l4 not in (1, 6, 17, 58) or (l4 in (6, 17) and sport == 0 and dport == 0):
            l4 = 0  # tshark names no transport for a later fragment (no ports) or an unknown protocol
        out.append((ts, caplen, origlen, bytes(data), version, src_s, dst_s, l4, sport, dport))
    return out


def repeated_pcap(source: Path, target: Path, min_bytes: int) -> int:
    """Write `target`: the pcap `source`'s header, then its records repeated until the file passes
    `min_bytes` (a large capture of real traffic for tests about parts and streaming); returns the
    number of copies."""
    records = source.stat().st_size - 24
    copies = min_bytes // records + 1
    # Streamed: the benchmark writes a 7 GB file with this, and its children must not inherit a large
    # high-water mark from this process (a child's peak RSS counts the parent's memory it started from).
    with source.open("rb") as src, target.open("wb") as out:
        out.write(src.read(24))
        for _ in range(copies):
            src.seek(24)
            shutil.copyfileobj(src, out, 8 << 20)
    return copies
