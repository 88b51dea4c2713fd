"""Named snapshots: a window's packets, flows, workload history and API calls, kept until deleted.

`create_snapshot` copies server-side (INSERT ... SELECT) from the live tables into the snapshot_* tables,
which have no TTL and are outside the byte budget, so a snapshot outlives the rolling window. Flows are
rebuilt from the snapshot's own packets with the same aggregation as the live view, so they describe
exactly the window. A snapshot is listed (a row in `snapshots`) only once every table is copied; a failed
copy is rolled back by dropping the snapshot's partitions.

`export_snapshot` writes one portable file (a zip) and `import_snapshot` loads it into another store; the
file format is described in docs/export.md.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import zstandard

import netrecall
from netrecall.errors import NetrecallError
from netrecall.query.bounds import Window, fit_window, retention_horizon
from netrecall.query.export import check_output_path, who_ran
from netrecall.schema.tables import (
    API_CALLS,
    FLOWS_SELECT,
    PACKETS,
    SNAPSHOT_API_CALLS,
    SNAPSHOT_FLOWS,
    SNAPSHOT_PACKETS,
    SNAPSHOT_TABLES,
    SNAPSHOT_WORKLOADS,
    WORKLOADS,
)
from netrecall.store import Store, clickhouse_errors
from netrecall.timeutil import format_time_ns, parse_duration_ns, parse_time_ns

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
FILE_KIND = "netrecall-snapshot"
FILE_VERSION = 1
_WINDOW = "ts >= fromUnixTimestamp64Nano({since:Int64}) AND ts < fromUnixTimestamp64Nano({until:Int64})"


@dataclass
class SnapshotInfo:
    name: str
    since_ns: int
    until_ns: int
    nodes: list[str]
    packets: int
    bytes: int
    flows: int
    workloads: int
    api_calls: int
    notes: list[str] = field(default_factory=list)  # how the window was fitted to the stored data


def check_name(name: str) -> str:
    if not _NAME.match(name or ""):
        raise NetrecallError(
            f"invalid snapshot name {name!r}: use letters, digits, '_', '.', '-' "
            "(up to 100, starting with a letter or digit)"
        )
    return name


def snapshot_exists(store: Store, name: str) -> bool:
    return bool(store.scalar("SELECT count() FROM snapshots FINAL WHERE name = {n:String}", {"n": name}))


def resolve_window(
    last: str | None, since: str | None, until: str | None, now_ns: int | None = None
) -> tuple[int, int]:
    """--last D, or --since T [--until T] -> (since_ns, until_ns); until defaults to now."""
    now = time.time_ns() if now_ns is None else now_ns
    if last and (since or until):
        raise NetrecallError("give either --last or --since/--until, not both")
    if last:
        return now - parse_duration_ns(last), now
    if not since:
        raise NetrecallError("a snapshot needs a window: --last 30m, or --since T [--until T]")
    since_ns = parse_time_ns(since, now)
    until_ns = parse_time_ns(until, now) if until else now
    if since_ns >= until_ns:
        raise NetrecallError(
            f"empty window: --since {format_time_ns(since_ns)} is not before "
            f"--until {format_time_ns(until_ns)}"
        )
    return since_ns, until_ns


def create_snapshot(
    store: Store,
    name: str,
    since_ns: int,
    until_ns: int,
    nodes: list[str] | None = None,
    allow_partial: bool = False,
    note: str = "",
) -> SnapshotInfo:
    """Copy the window into the snapshot tables; refuses a duplicate name or a window retention dropped."""
    check_name(name)
    if snapshot_exists(store, name):
        raise NetrecallError(
            f"a snapshot named {name!r} already exists (delete it first or pick another name)"
        )
    nodes = list(nodes or [])
    params: dict[str, Any] = {"n": name, "since": since_ns, "until": until_ns, "nodes": nodes}
    node_clause = " AND node IN {nodes:Array(String)}" if nodes else ""
    window = _check_coverage(store, since_ns, until_ns, node_clause, params, allow_partial)
    since_ns, until_ns = window.since_ns, window.until_ns
    params.update(since=since_ns, until=until_ns)
    # what a create killed before its `snapshots` row left behind: not a snapshot, and it would be doubled
    _drop_data(store, name)
    try:
        _copy(
            store, PACKETS.column_names, "packets", SNAPSHOT_PACKETS.name, f"{_WINDOW}{node_clause}", params
        )
        _rebuild_flows(store, params)
        _copy(
            store,
            WORKLOADS.column_names,
            "workloads",
            SNAPSHOT_WORKLOADS.name,
            "valid_from < fromUnixTimestamp64Nano({until:Int64}) "
            "AND valid_to > fromUnixTimestamp64Nano({since:Int64})",
            params,
        )
        calls_node = " AND node_name IN {nodes:Array(String)}" if nodes else ""
        _copy(
            store,
            API_CALLS.column_names,
            "api_calls",
            SNAPSHOT_API_CALLS.name,
            f"{_WINDOW}{calls_node}",
            params,
        )
        info = _counts(store, name, since_ns, until_ns, nodes)
        info.notes = list(window.notes)
        _insert_row(
            store, {**params, "by": who_ran(), "packets": info.packets, "bytes": info.bytes, "note": note}
        )
    except BaseException:
        _drop_data(store, name)
        raise
    return info


def _insert_row(store: Store, params: dict[str, Any]) -> None:
    """The `snapshots` row: written last, so a snapshot is listed only once all its data is in."""
    store.command(
        "INSERT INTO snapshots (name, created_by, since, until, nodes, packets, bytes, note) VALUES "
        "({n:String}, {by:String}, fromUnixTimestamp64Nano({since:Int64}), "
        "fromUnixTimestamp64Nano({until:Int64}), {nodes:Array(String)}, {packets:UInt64}, "
        "{bytes:UInt64}, {note:String})",
        params,
    )


def _check_coverage(
    store: Store, since_ns: int, until_ns: int, node_clause: str, params: dict[str, Any], allow_partial: bool
) -> Window:
    """The window fitted to the stored packets (query/bounds.py: fit_window); says what is missing when
    nothing is stored there, or when retention dropped the window's start."""
    first, last, total = store.rows(
        "SELECT toUnixTimestamp64Nano(min(ts)), toUnixTimestamp64Nano(max(ts)), count() FROM packets "
        f"WHERE 1{node_clause}",
        params,
    )[0]
    scope = f" for node {', '.join(params['nodes'])}" if params["nodes"] else ""
    window = f"{format_time_ns(since_ns)} .. {format_time_ns(until_ns)}"
    if not total:
        raise NetrecallError(f"nothing to snapshot: no packets are stored{scope}")
    inside = store.scalar(f"SELECT count() FROM packets WHERE {_WINDOW}{node_clause}", params)
    stored = f"stored packets{scope} cover {format_time_ns(first)} .. {format_time_ns(last)}"
    if not inside:
        raise NetrecallError(
            f"no packets stored in {window}: {stored} (retention may have dropped the window)"
        )
    return fit_window(since_ns, until_ns, first, last, retention_horizon(store), allow_partial)


# The copy streams in small blocks on one thread: with the engine's defaults `snapshot create` of the
# 1.1M-packet benchmark capture peaked 1.45 GB over the store's floor (threads x large blocks of frames,
# and merges of the parts being written); one thread, 256-row blocks and merges held until the copy ends:
# ~+280 MB for the whole command, and no slower (bench/bench_memory.py).
_COPY_SETTINGS = {
    "max_threads": 1,
    "max_insert_threads": 1,
    "max_block_size": 256,
    "preferred_block_size_bytes": 1 << 20,
    "min_insert_block_size_rows": 0,
    "min_insert_block_size_bytes": 8 << 20,
}


def _copy(
    store: Store, columns: list[str], source: str, target: str, where: str, params: dict[str, Any]
) -> None:
    names = ", ".join(f"`{c}`" for c in columns)
    held = store.kind == "chdb"  # the embedded engine is this process's own: its merges can wait
    if held:
        store.command(f"SYSTEM STOP MERGES {target}")
    try:
        store.command(
            f"INSERT INTO {target} (snapshot, {names}) "
            f"SELECT {{n:String}}, {names} FROM {source} WHERE {where}",
            params,
            settings=_COPY_SETTINGS,
        )
    finally:
        if held:
            store.command(f"SYSTEM START MERGES {target}")


def _rebuild_flows(store: Store, params: dict[str, Any]) -> None:
    """Flows from the snapshot's own packets, with the writers' aggregation: exact for the window."""
    select = FLOWS_SELECT.format(packets="(SELECT * FROM snapshot_packets WHERE snapshot = {n:String})")
    columns = [c for c in SNAPSHOT_FLOWS.column_names if c not in ("snapshot", "stored_at")]
    names = ", ".join(f"`{c}`" for c in columns)
    store.command(
        f"INSERT INTO {SNAPSHOT_FLOWS.name} (snapshot, stored_at, {names}) "
        f"SELECT {{n:String}}, now(), {names} FROM ({select})",
        params,
    )


def _counts(store: Store, name: str, since_ns: int, until_ns: int, nodes: list[str]) -> SnapshotInfo:
    p = {"n": name}
    packets, size = store.rows(
        "SELECT count(), sum(caplen) FROM snapshot_packets WHERE snapshot = {n:String}", p
    )[0]
    count = "SELECT count() FROM {} WHERE snapshot = {{n:String}}"
    return SnapshotInfo(
        name=name,
        since_ns=since_ns,
        until_ns=until_ns,
        nodes=nodes,
        packets=int(packets),
        bytes=int(size or 0),
        flows=int(
            store.scalar(
                "SELECT count() FROM (SELECT DISTINCT node, flow_id FROM snapshot_flows "
                "WHERE snapshot = {n:String})",
                p,
            )
        ),
        workloads=int(store.scalar(count.format(SNAPSHOT_WORKLOADS.name), p)),
        api_calls=int(store.scalar(count.format(SNAPSHOT_API_CALLS.name), p)),
    )


def _drop_data(store: Store, name: str) -> None:
    for table in SNAPSHOT_TABLES:
        store.command(f"ALTER TABLE {table.name} DROP PARTITION {{n:String}}", {"n": name})


def list_snapshots(store: Store) -> list[dict[str, Any]]:
    return store.dicts(
        "SELECT name, created_at, created_by, since, until, nodes, packets, bytes, note "
        "FROM snapshots FINAL ORDER BY created_at, name"
    )


def delete_snapshot(store: Store, name: str) -> None:
    check_name(name)
    if not snapshot_exists(store, name):
        raise NetrecallError(f"no snapshot named {name!r} (see `netrecall snapshot list`)")
    _drop_data(store, name)
    # The dissector's watermark for this snapshot ('snapshot:NAME', optionally '|node:N'): a snapshot made
    # again under the same name must be dissected from its start.
    store.command(
        "DELETE FROM dissect_state WHERE scope = {s:String} OR startsWith(scope, {p:String})",
        {"s": f"snapshot:{name}", "p": f"snapshot:{name}|"},
    )
    store.command("DELETE FROM snapshots WHERE name = {n:String}", {"n": name})


# --- the portable file -----------------------------------------------------------------------------------


def export_snapshot(store: Store, name: str, out: str | Path) -> dict[str, Any]:
    """Write one zip: each snapshot table as zstd-compressed ClickHouse Native, plus manifest.json.

    Native keeps every type exactly (including the flows' aggregate states, which Arrow cannot carry).
    Written to OUT.tmp and renamed, so a failure leaves nothing behind.
    """
    check_name(name)
    rows = store.dicts(
        "SELECT name, created_at, created_by, toUnixTimestamp64Nano(since) AS since, "
        "toUnixTimestamp64Nano(until) AS until, nodes, packets, bytes, note "
        "FROM snapshots FINAL WHERE name = {n:String}",
        {"n": name},
    )
    if not rows:
        raise NetrecallError(f"no snapshot named {name!r} (see `netrecall snapshot list`)")
    path = check_output_path(out)
    tmp = path.with_name(path.name + ".tmp")
    tables: dict[str, Any] = {}
    try:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
            for table in SNAPSHOT_TABLES:
                member = f"tables/{table.name}.native.zst"
                count = int(
                    store.scalar(
                        f"SELECT count() FROM {table.name} WHERE snapshot = {{n:String}}", {"n": name}
                    )
                )
                with archive.open(member, "w", force_zip64=True) as raw:
                    hashed = _HashingWriter(raw)
                    with zstandard.ZstdCompressor(level=3).stream_writer(hashed, closefd=False) as compressed:
                        _stream_native(store, table.name, name, compressed)
                tables[table.name] = {
                    "member": member,
                    "rows": count,
                    "sha256": hashed.digest.hexdigest(),
                    "bytes": hashed.size,
                    "columns": [[c, t] for c, t in table.columns],
                }
            manifest = _snapshot_manifest(store, rows[0], tables)
            archive.writestr("manifest.json", json.dumps(manifest, indent=2, default=str) + "\n")
        os.replace(tmp, path)
    except OSError as exc:
        raise NetrecallError(f"cannot write {path}: {exc.strerror or exc}") from None
    finally:
        tmp.unlink(missing_ok=True)
    return {
        "file": str(path),
        **{k: v for k, v in manifest.items() if k != "tables"},
        "tables": {k: v["rows"] for k, v in tables.items()},
    }


class _HashingWriter(io.RawIOBase):
    def __init__(self, target: BinaryIO) -> None:
        self.target = target
        self.digest = hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        self.digest.update(view)
        self.target.write(view)
        self.size += len(view)
        return len(view)


def _stream_native(store: Store, table: str, name: str, sink: Any) -> None:
    with clickhouse_errors():
        stream = store.client.raw_stream(
            f"SELECT * FROM {table} WHERE snapshot = {{n:String}}", parameters={"n": name}, fmt="Native"
        )
        with stream:
            while chunk := stream.read(1 << 20):
                sink.write(chunk)


def _snapshot_manifest(store: Store, row: dict[str, Any], tables: dict[str, Any]) -> dict[str, Any]:
    from netrecall.schema.migrate import SCHEMA_VERSION

    return {
        "kind": FILE_KIND,
        "format_version": FILE_VERSION,
        "name": row["name"],
        "since": int(row["since"]),
        "until": int(row["until"]),
        "nodes": list(row["nodes"]),
        "packets": int(row["packets"]),
        "bytes": int(row["bytes"]),
        "note": row["note"],
        "snapshot_created_at": str(row["created_at"]),
        "snapshot_created_by": row["created_by"],
        "exported_at": format_time_ns(time.time_ns()),
        "exported_by": who_ran(),
        "store": store.address.display,
        "schema_version": SCHEMA_VERSION,
        "netrecall_version": netrecall.__version__,
        "tables": tables,
    }


def read_snapshot_manifest(path: str | Path) -> dict[str, Any]:
    try:
        with zipfile.ZipFile(path) as archive:
            manifest = json.loads(archive.read("manifest.json"))
    except FileNotFoundError:
        raise NetrecallError(f"cannot import {path}: no such file") from None
    except (zipfile.BadZipFile, KeyError, ValueError, OSError) as exc:
        raise NetrecallError(f"cannot import {path}: not a netrecall snapshot file ({exc})") from None
    if manifest.get("kind") != FILE_KIND:
        raise NetrecallError(f"cannot import {path}: not a netrecall snapshot file")
    if manifest.get("format_version") != FILE_VERSION:
        raise NetrecallError(
            f"cannot import {path}: snapshot file format {manifest.get('format_version')} "
            f"is not supported (this netrecall reads {FILE_VERSION})"
        )
    return manifest


def import_snapshot(store: Store, path: str | Path) -> dict[str, Any]:
    """Load a snapshot file into this store under its name; hashes are checked before anything is written."""
    manifest = read_snapshot_manifest(path)
    name = check_name(manifest["name"])
    if snapshot_exists(store, name):
        raise NetrecallError(f"cannot import {path}: this store already has a snapshot named {name!r}")
    known = {t.name for t in SNAPSHOT_TABLES}
    with zipfile.ZipFile(path) as archive:
        for table, entry in manifest["tables"].items():
            if table not in known:
                raise NetrecallError(f"cannot import {path}: unknown table {table!r} in the manifest")
            digest = hashlib.sha256()
            with archive.open(entry["member"]) as member:
                while chunk := member.read(1 << 20):
                    digest.update(chunk)
            if digest.hexdigest() != entry["sha256"]:
                raise NetrecallError(
                    f"cannot import {path}: {entry['member']} sha256 is {digest.hexdigest()}, "
                    f"the manifest says {entry['sha256']} (the file is damaged or was altered)"
                )
        _drop_data(store, name)  # an import killed before its `snapshots` row: the rows would be doubled
        try:
            for table, entry in manifest["tables"].items():
                with archive.open(entry["member"]) as member:
                    reader = zstandard.ZstdDecompressor().stream_reader(member)
                    with clickhouse_errors():
                        store.client.raw_insert(table, None, insert_block=reader, fmt="Native")
                got = int(
                    store.scalar(f"SELECT count() FROM {table} WHERE snapshot = {{n:String}}", {"n": name})
                )
                if got != entry["rows"]:
                    raise NetrecallError(
                        f"cannot import {path}: {table} got {got} rows, the manifest says {entry['rows']}"
                    )
            _insert_row(
                store,
                {
                    "n": name,
                    "by": manifest.get("snapshot_created_by", ""),
                    "since": int(manifest["since"]),
                    "until": int(manifest["until"]),
                    "nodes": list(manifest.get("nodes", [])),
                    "packets": int(manifest.get("packets", 0)),
                    "bytes": int(manifest.get("bytes", 0)),
                    "note": manifest.get("note", ""),
                },
            )
        except BaseException:
            _drop_data(store, name)
            raise
    return {"name": name, "file": str(path), "tables": {k: v["rows"] for k, v in manifest["tables"].items()}}
