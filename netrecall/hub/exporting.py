"""PCAP exports for the hub and MCP, confined to the exports directory: the file name is ours, never the
caller's, so no path from a request reaches the filesystem."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

from netrecall.errors import NetrecallError
from netrecall.store import Store


def export_to_dir(
    store: Store,
    exports_dir: Path,
    kfl: str = "",
    nodes: list[str] | None = None,
    ips: list[str] | None = None,
    ports: list[int] | None = None,
    pods: list[str] | None = None,
    labels: list[str] | None = None,
    since_ns: int | None = None,
    until_ns: int | None = None,
    snapshot: str | None = None,
    fmt: str = "pcap",
    created_by: str = "hub",
    partial: bool = False,
) -> dict[str, Any]:
    """Write the selected packets to `exports_dir/netrecall-<time>-<id>.<fmt>`; answer where and what."""
    from netrecall.query.export import export_pcap
    from netrecall.query.selection import PacketFilters
    from netrecall.timeutil import format_time_ns

    if fmt not in ("pcap", "pcapng"):
        raise NetrecallError("format must be pcap or pcapng")
    exports_dir.mkdir(parents=True, exist_ok=True)
    name = f"netrecall-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{uuid.uuid4().hex[:8]}.{fmt}"
    filters = PacketFilters(
        nodes=list(nodes or []),
        ips=list(ips or []),
        ports=list(ports or []),
        pods=list(pods or []),
        labels=list(labels or []),
        kfl=kfl or None,
        snapshot=snapshot or None,
        since=format_time_ns(since_ns) if since_ns is not None else None,
        until=format_time_ns(until_ns) if until_ns is not None else None,
        partial=partial,
    )
    result = export_pcap(store, exports_dir / name, filters, fmt=fmt)
    return {
        "path": result.path,
        "file": name,
        "sha256": result.sha256,
        "packets": result.packets,
        "bytes": result.file_bytes,
        "format": result.format,
        "manifest": result.manifest_path,
        "created_by": created_by,
        **({"note": result.note} if result.note else {}),
    }
