"""Shared by the export and snapshot tests: loading real captures, tshark as reference, comparing files."""

from __future__ import annotations

import ipaddress
import subprocess
from collections.abc import Sequence
from pathlib import Path

import pyarrow as pa

from netrecall.ingest.importer import import_files
from netrecall.query.pcapfile import iter_packets
from netrecall.store import Store

EXPORT_CAPTURES = Path(__file__).parent / "captures" / "export"


class MapResolver:
    """A fixed ip -> (namespace, pod, labels) map, standing in for the agent's resolver (not under test)."""

    def __init__(self, pods: dict[str, tuple[str, str, dict[str, str]]]) -> None:
        self.pods = {self._key(ip): who for ip, who in pods.items()}

    @staticmethod
    def _key(ip: str) -> bytes:
        address = ipaddress.ip_address(ip)
        if isinstance(address, ipaddress.IPv4Address):
            return ipaddress.IPv6Address(f"::ffff:{address}").packed
        return address.packed

    def enrich(self, table: pa.Table) -> pa.Table:
        out = table
        for side in ("src", "dst"):
            found = [self.pods.get(ip) for ip in table.column(f"{side}_ip").to_pylist()]
            columns = {
                f"{side}_namespace": pa.array([w[0] if w else "" for w in found]),
                f"{side}_pod": pa.array([w[1] if w else "" for w in found]),
                f"{side}_labels": pa.array(
                    [list((w[2] if w else {}).items()) for w in found], type=pa.map_(pa.string(), pa.string())
                ),
            }
            for name, values in columns.items():
                position = out.schema.get_field_index(name)
                out = (
                    out.set_column(position, name, values)
                    if position >= 0
                    else out.append_column(name, values)
                )
        return out

    def workload_rows(self) -> pa.Table:
        return pa.table({"ip": pa.array([], pa.binary(16))})


def load(store: Store, path: Path | str, node: str = "", resolver: MapResolver | None = None) -> None:
    summary = import_files(store, [Path(path)], node=node, resolver=resolver)
    assert not summary.failed


def packets(path: Path | str) -> list[tuple[int, int, int, bytes]]:
    return list(iter_packets(str(path)))


def tshark_select(src: Path | str, display_filter: str, out: Path) -> list[tuple[int, int, int, bytes]]:
    """What `tshark -r IN -Y FILTER -w OUT` writes, read back packet by packet."""
    subprocess.run(
        ["tshark", "-r", str(src), "-Y", display_filter, "-w", str(out)], check=True, capture_output=True
    )
    return packets(out)


def assert_same_packets(ours: Sequence[tuple], reference: Sequence[tuple]) -> None:
    """Same count, same timestamps in the same order, same bytes and lengths, packet by packet
    (packets with the very same timestamp included: the stored capture sequence keeps their order)."""
    assert len(ours) == len(reference), f"{len(ours)} packets exported, reference has {len(reference)}"
    assert [p[0] for p in ours] == [p[0] for p in reference], "timestamps differ or are out of order"
    for index, (mine, theirs) in enumerate(zip(ours, reference, strict=True)):
        assert mine == theirs, f"packet {index} differs"


def tool_warnings(path: Path | str) -> list[str]:
    """What capinfos and tshark print on stderr when reading the file (root's banner aside)."""
    problems = []
    for command in (["capinfos", str(path)], ["tshark", "-r", str(path)]):
        proc = subprocess.run(command, capture_output=True, text=True)
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip() and "Running as user" not in ln]
        if proc.returncode != 0:
            lines.append(f"{command[0]} exited {proc.returncode}")
        problems += [f"{command[0]}: {ln}" for ln in lines]
    return problems
