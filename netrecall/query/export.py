"""`export pcap`: stream the selected packets, in timestamp order, into a pcap/pcapng file with evidence.

The file is written to OUT.tmp while its SHA-256 is computed, then renamed into place, so a failure never
leaves a partial OUT. Beside it goes OUT.manifest.json (filters, window, counts, hash, who/when/where) and
a row in the `exports` table; `verify_export` re-hashes the file against its manifest.

Memory stays bounded whatever the size: the selection is cut into time ranges of about CHUNK_BYTES each
(from a cheap per-second profile), each range is sorted server-side (spilling to disk past a budget) and
streamed as Arrow batches, and the writer keeps a few MB of output at a time.
"""

from __future__ import annotations

import getpass
import hashlib
import json
import os
import socket
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import netrecall
from netrecall.errors import NetrecallError
from netrecall.query.pcapfile import PCAP_SNAPLEN, PcapngWriter, PcapWriter, iter_packets
from netrecall.query.selection import PacketFilters, Selection, build_selection
from netrecall.store import Store
from netrecall.timeutil import format_time_ns, parse_time_ns

FORMATS = ("pcap", "pcapng")
MANIFEST_SUFFIX = ".manifest.json"
# Past this the server sort spills to disk: keeps the engine's share of the export's memory bounded.
SORT_SPILL_BYTES = 64 * 1024 * 1024
CHUNK_BYTES = 16 * 1024 * 1024  # frames read and sorted per query (see _chunks)
FLUSH_BYTES = 4 * 1024 * 1024
_ANNOTATE_COLUMNS = "src_ip, src_port, dst_ip, dst_port, src_namespace, src_pod, dst_namespace, dst_pod"


@dataclass
class ExportResult:
    path: str
    manifest_path: str
    format: str
    packets: int
    captured_bytes: int
    original_bytes: int
    file_bytes: int
    sha256: str
    nodes: list[str] = field(default_factory=list)
    note: str = ""


@dataclass(frozen=True)
class Custody:
    """Chain-of-custody facts of one export: the schedule that ran it ('' by hand), why, and the id of its
    audit row (the same id in the manifest and in `exports`, so each finds the other)."""

    schedule: str = ""
    reason: str = ""
    audit_id: str = field(default_factory=lambda: str(uuid.uuid4()))

    def manifest_fields(self) -> dict[str, str]:
        return {"schedule": self.schedule, "reason": self.reason, "audit_id": self.audit_id}


def who_ran() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return f"{user}@{socket.gethostname()}"


def manifest_path_for(path: str | Path) -> Path:
    return Path(str(path) + MANIFEST_SUFFIX)


class _HashingFile:
    """A write-only sink that buffers, hashes and counts what goes to the file."""

    def __init__(self, handle: BinaryIO) -> None:
        self.handle = handle
        self.digest = hashlib.sha256()
        self.size = 0
        self._buffer = bytearray()

    def write(self, data: bytes | memoryview) -> None:
        self._buffer += data
        if len(self._buffer) >= FLUSH_BYTES:
            self.flush()

    def flush(self) -> None:
        if self._buffer:
            self.digest.update(self._buffer)
            self.handle.write(self._buffer)
            self.size += len(self._buffer)
            self._buffer = bytearray()


def check_output_path(out: str | Path) -> Path:
    """Fail before any query when OUT cannot be written (missing directory, no permission, a directory)."""
    path = Path(out).expanduser()
    parent = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise NetrecallError(f"cannot write {path}: it is a directory")
    if not parent.is_dir():
        raise NetrecallError(f"cannot write {path}: directory {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise NetrecallError(f"cannot write {path}: directory {parent} is not writable")
    return path


def export_pcap(
    store: Store,
    out: str | Path,
    filters: PacketFilters,
    fmt: str = "pcap",
    annotate: bool = False,
    now_ns: int | None = None,
    created_by: str | None = None,
    custody: Custody | None = None,
) -> ExportResult:
    """Write the packets `filters` select to `out` (pcap or pcapng), plus the manifest and audit row.

    `created_by` names who asked (the hub passes its caller); the default is this process's user@host.
    `custody` names the schedule that ran the export and why (docs/compliance.md).
    """
    who = created_by or who_ran()
    custody = custody or Custody()
    if fmt not in FORMATS:
        raise NetrecallError(f"invalid --format {fmt!r}: expected pcap or pcapng")
    if annotate and fmt != "pcapng":
        raise NetrecallError("--annotate needs --format pcapng (pcap has no packet comments)")
    path = check_output_path(out)
    selection = build_selection(store, filters, now_ns)
    link_type, snaplen = _pcap_link_type(store, selection) if fmt == "pcap" else (1, PCAP_SNAPLEN)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as handle:
            sink = _HashingFile(handle)
            stats = _write_packets(store, selection, sink, fmt, link_type, snaplen, annotate)
            sink.flush()
            handle.flush()
            os.fsync(handle.fileno())
        result = _finished(store, filters, selection, path, fmt, link_type, stats, sink, who, custody)
        # the manifest is in place before OUT appears: a process killed at any moment leaves OUT complete
        # and verifiable, or no OUT (a manifest alone tells what was being written)
        os.replace(tmp, path)
    except OSError as exc:
        raise NetrecallError(f"cannot write {path}: {exc.strerror or exc}") from None
    finally:
        if tmp.exists():
            tmp.unlink()
    _audit(store, filters, result, who, custody)
    return result


def _finished(
    store: Store,
    filters: PacketFilters,
    selection: Selection,
    path: Path,
    fmt: str,
    link_type: int,
    stats: dict[str, Any],
    sink: _HashingFile,
    who: str,
    custody: Custody,
) -> ExportResult:
    """The result of a written export, with its manifest written beside where OUT will be."""
    result = ExportResult(
        path=str(path),
        manifest_path=str(manifest_path_for(path)),
        format=fmt,
        packets=stats["packets"],
        captured_bytes=stats["captured"],
        original_bytes=stats["original"],
        file_bytes=sink.size,
        sha256=sink.digest.hexdigest(),
        nodes=sorted(stats["nodes"]),
        # how the window was fitted to the stored data (clamped, or partial), then an empty result's note
        note="; ".join(
            [*selection.notes]
            + ([] if stats["packets"] else ["no packet matched the filters: wrote a valid empty capture"])
        ),
    )
    manifest = _manifest(store, filters, selection, result, stats, link_type if fmt == "pcap" else None, who)
    manifest.update(custody.manifest_fields())
    _write_json_atomically(Path(result.manifest_path), manifest)
    return result


def _pcap_link_type(store: Store, selection: Selection) -> tuple[int, int]:
    """pcap holds one link type: the one every selected packet shares, else a pointer to pcapng."""
    kinds, snaplen = store.rows(
        f"SELECT groupUniqArray(link_type), max(caplen) FROM {selection.table} WHERE {selection.where}",
        selection.params,
    )[0]
    if len(kinds) > 1:
        raise NetrecallError(
            f"the selected packets have {len(kinds)} link types ({', '.join(map(str, sorted(kinds)))}): "
            "pcap holds one; use --format pcapng (one interface per link type) or narrow the filters"
        )
    return (kinds[0] if kinds else 1), max(int(snaplen or 0), PCAP_SNAPLEN)


def _chunks(store: Store, selection: Selection) -> list[tuple[int, int]]:
    """Split the selection into consecutive time ranges of about CHUNK_BYTES of frames each.

    One cheap pass over ts and caplen (never `data`) gives the selected bytes per second; each range is
    then read and sorted on its own, so neither the engine nor Python ever holds more than about a chunk,
    whatever the export's size (a single second heavier than a chunk still spills in the server sort).
    """
    profile = store.rows(
        "SELECT intDiv(toUnixTimestamp64Nano(ts), 1000000000) AS sec, sum(caplen + 32) "
        f"FROM {selection.table} "
        f"WHERE {selection.where} GROUP BY sec ORDER BY sec",
        selection.params,
    )
    chunks: list[tuple[int, int]] = []
    start, size = None, 0
    for sec, weight in profile:
        if start is None:
            start = sec
        size += weight
        if size >= CHUNK_BYTES:
            chunks.append((start * 1_000_000_000, (sec + 1) * 1_000_000_000))
            start, size = None, 0
    if start is not None:
        chunks.append((start * 1_000_000_000, (profile[-1][0] + 1) * 1_000_000_000))
    return chunks


def _write_packets(
    store: Store,
    selection: Selection,
    sink: _HashingFile,
    fmt: str,
    link_type: int,
    snaplen: int,
    annotate: bool,
) -> dict[str, Any]:
    extra = f", {_ANNOTATE_COLUMNS}" if annotate else ""
    # Ties on the very same nanosecond keep capture order: `seq` numbers the frames of each source.
    sql = (
        f"SELECT toUnixTimestamp64Nano(ts) AS ts_ns, node, iface, link_type, toUInt8(direction) AS dir, "
        f"origlen, data{extra} "
        f"FROM {selection.table} WHERE {selection.where} "
        "AND ts >= fromUnixTimestamp64Nano({c_lo:Int64}) AND ts < fromUnixTimestamp64Nano({c_hi:Int64}) "
        "ORDER BY ts, source, seq"
    )
    # one engine thread and small blocks: exporting all 1.1M packets of the benchmark capture peaked
    # 300 MB over the store's floor with the defaults, ~150 MB with these, and ran no slower
    # (bench/bench_memory.py)
    settings = {
        "max_bytes_before_external_sort": SORT_SPILL_BYTES,
        "max_block_size": 1024,
        "max_threads": 1,
        "preferred_block_size_bytes": 1 << 20,
    }
    stats: dict[str, Any] = {
        "packets": 0,
        "captured": 0,
        "original": 0,
        "nodes": set(),
        "first": None,
        "last": 0,
    }
    pcap = PcapWriter(sink, link_type, snaplen) if fmt == "pcap" else None
    pcapng = PcapngWriter(sink, f"netrecall {netrecall.__version__}") if fmt == "pcapng" else None
    for low, high in _chunks(store, selection):
        params = {**selection.params, "c_lo": low, "c_hi": high}
        for batch in store.arrow_stream(sql, params, settings):
            _write_batch(batch.to_pydict(), stats, pcap, pcapng, annotate)
    return stats


def _write_batch(
    columns: dict[str, list],
    stats: dict[str, Any],
    pcap: PcapWriter | None,
    pcapng: PcapngWriter | None,
    annotate: bool,
) -> None:
    ts_list, data_list, orig_list = columns["ts_ns"], columns["data"], columns["origlen"]
    nodes = [_text(v) for v in columns["node"]]
    stats["nodes"].update(nodes)
    if pcap is not None:
        for ts_ns, frame, origlen in zip(ts_list, data_list, orig_list, strict=True):
            pcap.write(ts_ns, frame, origlen)
    elif pcapng is not None:
        ifaces, links, directions = columns["iface"], columns["link_type"], columns["dir"]
        for i, (ts_ns, frame, origlen) in enumerate(zip(ts_list, data_list, orig_list, strict=True)):
            interface = pcapng.interface(nodes[i], _text(ifaces[i]), links[i])
            comment = _comment(columns, i) if annotate else ""
            pcapng.write(interface, ts_ns, frame, origlen, comment, directions[i])
    if ts_list:
        stats["first"] = ts_list[0] if stats["first"] is None else stats["first"]
        stats["last"] = ts_list[-1]
    stats["packets"] += len(ts_list)
    stats["captured"] += sum(len(f) for f in data_list)
    stats["original"] += sum(orig_list)


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value or "")


def _comment(columns: dict[str, list], i: int) -> str:
    """'netrecall: default/client-1 (10.1.0.5:51234) -> shop/checkout-2 (10.1.0.9:8080)'."""

    def end(side: str) -> str:
        ip = columns[f"{side}_ip"][i]
        port = columns[f"{side}_port"][i]
        address = _ip_text(ip)
        where = f"[{address}]:{port}" if ":" in address else f"{address}:{port}"
        namespace, pod = _text(columns[f"{side}_namespace"][i]), _text(columns[f"{side}_pod"][i])
        return f"{namespace}/{pod} ({where})" if pod else f"unknown workload ({where})"

    return f"netrecall: {end('src')} -> {end('dst')}"


def _ip_text(value: Any) -> str:
    import ipaddress

    address = (
        ipaddress.IPv6Address(value) if isinstance(value, bytes | int) else ipaddress.IPv6Address(str(value))
    )
    return str(address.ipv4_mapped) if address.ipv4_mapped else str(address)


def _manifest(
    store: Store,
    filters: PacketFilters,
    selection: Selection,
    result: ExportResult,
    stats: dict[str, Any],
    link_type: int | None,
    who: str,
) -> dict[str, Any]:
    return {
        "kind": "netrecall-export",
        "file": Path(result.path).name,
        "format": result.format,
        "link_type": link_type,
        "sha256": result.sha256,
        "file_bytes": result.file_bytes,
        "packets": result.packets,
        "captured_bytes": result.captured_bytes,
        "original_bytes": result.original_bytes,
        "filters": filters.as_dict(),
        "window": {"since": format_time_ns(selection.since_ns), "until": format_time_ns(selection.until_ns)},
        "window_notes": list(selection.notes),
        "first_packet": format_time_ns(stats["first"]) if stats["first"] is not None else None,
        "last_packet": format_time_ns(stats["last"]) if stats["packets"] else None,
        "nodes": result.nodes,
        "snapshot": filters.snapshot,
        "store": store.address.display,
        "netrecall_version": netrecall.__version__,
        "created_at": format_time_ns(time.time_ns()),
        "created_by": who,
        "note": result.note,
    }


def prune_exports(
    directory: str | Path, older_than_ns: int, schedule: str | None = None, now_ns: int | None = None
) -> list[Path]:
    """Delete the exports in `directory` whose manifest was created more than `older_than_ns` ago (and, with
    `schedule`, that this schedule made): the file, then its manifest (a manifest without its file still
    tells what was there). Only files a netrecall manifest describes are touched; the `exports` audit
    rows stay. Returns the deleted files."""
    cutoff = (now_ns if now_ns is not None else time.time_ns()) - older_than_ns
    deleted: list[Path] = []
    for manifest_path in sorted(Path(directory).glob("*" + MANIFEST_SUFFIX)):
        try:
            manifest = json.loads(manifest_path.read_text())
            created_ns = parse_time_ns(str(manifest["created_at"]))
        except (OSError, ValueError, KeyError, NetrecallError):
            continue  # not one of ours, or unreadable: never delete what we cannot date
        if manifest.get("kind") != "netrecall-export" or created_ns >= cutoff:
            continue
        if schedule is not None and manifest.get("schedule") != schedule:
            continue
        exported = manifest_path.with_name(manifest_path.name.removesuffix(MANIFEST_SUFFIX))
        exported.unlink(missing_ok=True)
        manifest_path.unlink(missing_ok=True)
        deleted.append(exported)
    return deleted


def _write_json_atomically(path: Path, payload: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n")
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise NetrecallError(f"cannot write {path}: {exc.strerror or exc}") from None


def _audit(
    store: Store, filters: PacketFilters, result: ExportResult, who: str, custody: Custody | None = None
) -> None:
    user, _, host = who.partition("@")
    host = host or socket.gethostname()
    custody = custody or Custody()
    store.command(
        "INSERT INTO exports (id, created_by, host, filters, file, format, sha256, packets, bytes, "
        "netrecall_version, schedule, reason) "
        "VALUES ({id:UUID}, {by:String}, {host:String}, {filters:String}, {file:String}, "
        "{format:String}, {sha:String}, {packets:UInt64}, {bytes:UInt64}, {version:String}, "
        "{schedule:String}, {reason:String})",
        {
            "id": custody.audit_id,
            "schedule": custody.schedule,
            "reason": custody.reason,
            "by": user,
            "host": host,
            "filters": json.dumps(filters.as_dict(), sort_keys=True),
            "file": str(Path(result.path).resolve()),
            "format": result.format,
            "sha": result.sha256,
            "packets": result.packets,
            "bytes": result.file_bytes,
            "version": netrecall.__version__,
        },
    )


# --- through a hub ---------------------------------------------------------------------------------------


def export_through_hub(
    client: Any, hub_url: str, out: str | Path, filters: PacketFilters, fmt: str, annotate: bool = False
) -> ExportResult:
    """`export pcap --url`: the hub exports (keeping its own copy, manifest and audit row) and streams the
    file here; it lands as OUT.tmp, is checked against the hub's SHA-256, renamed, and gets a local
    manifest so `export verify` works the same."""
    if fmt not in FORMATS:
        raise NetrecallError(f"invalid --format {fmt!r}: expected pcap or pcapng")
    if filters.namespaces or filters.proto or annotate:
        raise NetrecallError("--namespace, --proto and --annotate need --store (not through --url)")
    path = check_output_path(out)
    tmp = path.with_name(path.name + ".tmp")
    try:
        answer = client.download_pcap(
            str(tmp),
            kfl=filters.kfl or "",
            nodes=filters.nodes or None,
            ips=filters.ips or None,
            ports=[int(p) for p in filters.ports] or None,
            pods=filters.pods or None,
            labels=filters.labels or None,
            since=filters.since,
            until=filters.until,
            snapshot=filters.snapshot,
            fmt=fmt,
            **({"partial": True} if filters.partial else {}),
        )
        digest, size = _file_sha256(tmp)
        if answer.get("sha256") and digest != answer["sha256"]:
            raise NetrecallError(
                f"the file from the hub has sha256 {digest}, the hub said {answer['sha256']}"
            )
        os.replace(tmp, path)
    except OSError as exc:
        raise NetrecallError(f"cannot write {path}: {exc.strerror or exc}") from None
    finally:
        tmp.unlink(missing_ok=True)
    count = int(answer.get("packets") or 0)
    result = ExportResult(
        path=str(path),
        manifest_path=str(manifest_path_for(path)),
        format=fmt,
        packets=count,
        captured_bytes=0,
        original_bytes=0,
        file_bytes=size,
        sha256=digest,
        note="" if count else "no packet matched the filters: wrote a valid empty capture",
    )
    manifest = {
        "kind": "netrecall-export",
        "file": path.name,
        "format": fmt,
        "sha256": digest,
        "file_bytes": size,
        "packets": count,
        "filters": filters.as_dict(),
        "store": hub_url,
        "through_hub": True,
        "netrecall_version": netrecall.__version__,
        "created_at": format_time_ns(time.time_ns()),
        "created_by": who_ran(),
        "note": "exported by the hub, which keeps its own copy, manifest and exports row",
    }
    _write_json_atomically(Path(result.manifest_path), manifest)
    return result


def _file_sha256(path: Path) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as handle:
        while chunk := handle.read(1024 * 1024):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


# --- verification ---------------------------------------------------------------------------------------


@dataclass
class VerifyResult:
    path: str
    ok: bool
    differences: list[str]
    sha256: str
    packets: int


def verify_export(out: str | Path) -> VerifyResult:
    """Re-hash OUT and recount its packets against OUT.manifest.json; list every field that differs."""
    path = Path(out).expanduser()
    manifest_path = manifest_path_for(path)
    if not path.is_file():
        raise NetrecallError(f"cannot verify {path}: no such file")
    try:
        manifest = json.loads(manifest_path.read_text())
    except FileNotFoundError:
        raise NetrecallError(f"cannot verify {path}: no manifest {manifest_path}") from None
    except (OSError, ValueError) as exc:
        raise NetrecallError(f"cannot verify {path}: unreadable manifest {manifest_path}: {exc}") from None
    sha, size = _file_sha256(path)
    differences = []
    if sha != manifest.get("sha256"):
        differences.append(f"sha256 is {sha}, manifest says {manifest.get('sha256')}")
    if size != manifest.get("file_bytes"):
        differences.append(f"size is {size} bytes, manifest says {manifest.get('file_bytes')}")
    try:
        packets = sum(1 for _ in iter_packets(str(path)))
    except NetrecallError as exc:
        packets = -1
        differences.append(f"file does not parse: {exc}")
    if packets >= 0 and packets != manifest.get("packets"):
        differences.append(f"file holds {packets} packets, manifest says {manifest.get('packets')}")
    return VerifyResult(str(path), not differences, differences, sha, packets)
