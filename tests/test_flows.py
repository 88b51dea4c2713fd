"""Flows as writers compute them (numpy, netrecall.ingest.flows) against the SQL that rebuilds them from
stored packets (schema.tables.FLOWS_SELECT): the same rows, on real captures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from netrecall.demo import DEMO_INVENTORY, DEMO_PCAP
from netrecall.ingest.capture_file import CaptureReader
from netrecall.ingest.decode import decode_frames
from netrecall.ingest.flows import insert_packets
from netrecall.ingest.identity import IdentityResolver
from netrecall.schema.tables import FLOWS, FLOWS_SELECT
from netrecall.store import Store
from tests.conftest import CAPTURES, DPKT_EXAMPLES

COMPARED = [c for c in FLOWS.column_names if c != "stored_at"]


def _batch(path: Path, resolver: IdentityResolver | None = None) -> pa.Table:
    """The whole capture as one batch, as a writer would hand it over."""
    reader = CaptureReader(path)
    tables = [decode_frames(chunk, node="n1", source="test") for chunk in reader.chunks()]
    table = pa.concat_tables(tables)
    return resolver.enrich(table) if resolver is not None else table


def _rows(store: Store, table: str) -> list[tuple]:
    names = ", ".join(COMPARED)
    return store.rows(f"SELECT {names} FROM {table} ORDER BY window_start, flow_id, packets_ab, packets_ba")


def _written_and_rebuilt(store: Store, batch: pa.Table) -> tuple[list[tuple], list[tuple]]:
    insert_packets(store, batch)
    store.command("CREATE TABLE rebuilt AS flows")
    names = ", ".join(COMPARED)
    store.command(
        f"INSERT INTO rebuilt ({names}) SELECT {names} FROM ({FLOWS_SELECT.format(packets='packets')})"
    )
    return _rows(store, "flows"), _rows(store, "rebuilt")


@pytest.mark.parametrize(
    "path",
    [
        CAPTURES / "lo-http.pcap",
        CAPTURES / "lo-ipv6.pcap",
        CAPTURES / "vlan-frag.pcap",
        CAPTURES / "multi-if.pcapng",
        DPKT_EXAMPLES / "dns_icmp.pcap",
        DPKT_EXAMPLES / "nb6-http.pcap",
    ],
    ids=lambda p: p.name,
)
def test_written_flows_are_the_rebuilt_flows(store: Store, path: Path) -> None:
    batch = _batch(path)
    written, rebuilt = _written_and_rebuilt(store, batch)
    assert written and written == rebuilt
    ip_packets = int(np.count_nonzero(batch["ip_version"].to_numpy()))
    assert store.scalar("SELECT sum(packets_ab + packets_ba) FROM flows") == ip_packets
    # every packet's flow_id names a flows row: the table computed the packets' own id
    assert (
        store.scalar(
            "SELECT count() FROM packets WHERE ip_version != 0 AND flow_id NOT IN (SELECT flow_id FROM flows)"
        )
        == 0
    )


@pytest.mark.parametrize(
    "path", [CAPTURES / "multi-if.pcapng", DPKT_EXAMPLES / "nb6-http.pcap"], ids=lambda p: p.name
)
def test_the_importers_chdb_layout_gives_the_same_flows(path: Path) -> None:
    """The chDB import hands flow_rows tables with dictionary-encoded node/iface/source and frames as
    views (decode_frames(chdb_layout=True)): the flows are those of the plain layout, chunk by chunk."""
    from netrecall.ingest.flows import flow_rows

    for chunk in CaptureReader(path).chunks():
        plain = decode_frames(chunk, node="n1", source="s")
        coded = decode_frames(chunk, node="n1", source="s", chdb_layout=True)
        assert pa.types.is_dictionary(coded.schema.field("node").type)
        assert coded["iface"].cast(pa.string()).equals(plain["iface"])
        assert flow_rows(coded).equals(flow_rows(plain))


def test_enriched_flows_carry_both_ends_identity(store: Store) -> None:
    batch = _batch(DEMO_PCAP, IdentityResolver.from_inventory(DEMO_INVENTORY))
    written, rebuilt = _written_and_rebuilt(store, batch)
    assert written == rebuilt
    pods = store.rows("SELECT DISTINCT a_pod != '' OR b_pod != '' FROM flows")
    assert (True,) in pods  # the demo's services talk to each other by pod IP


def test_retransmitted_segments_are_counted_once_each(store: Store) -> None:
    batch = _batch(CAPTURES / "lo-http.pcap")
    data = np.flatnonzero((batch["l4"].to_numpy() == 6) & (batch["payload_len"].to_numpy() > 0))
    again = data[:3]  # three real data segments, captured a second time later in the batch
    resent = batch.take(pa.array(again)).set_column(
        batch.schema.get_field_index("seq"), "seq", pa.array(np.arange(3) + batch.num_rows, pa.uint64())
    )
    written, rebuilt = _written_and_rebuilt(store, pa.concat_tables([batch, resent]))
    assert written == rebuilt
    assert store.scalar("SELECT sum(retransmissions) FROM flows") == 3


def test_a_batch_without_some_columns_gets_the_flows_of_their_defaults(store: Store) -> None:
    """The hub takes batches whose missing columns the table fills in (zero, empty): flows alike."""
    batch = _batch(CAPTURES / "lo-http.pcap")
    partial = batch.select(["ts", "ip_version", "src_ip", "dst_ip", "l4", "src_port", "dst_port", "data"])
    written, rebuilt = _written_and_rebuilt(store, partial)
    assert written and written == rebuilt
    assert store.scalar("SELECT sum(bytes_ab + bytes_ba) + sum(data_segments) FROM flows") == 0


def test_the_exact_grouping_behind_a_hash_collision_groups_alike() -> None:
    """_group falls back to _group_exact when two keys share a mix, which real batches almost never do:
    both must put the same packets together (each packet named by its group's first packet)."""
    from netrecall.ingest import flows

    batch = _batch(CAPTURES / "lo-ipv6.pcap").combine_chunks()
    words = [flows._ip_words(batch[f"{side}_ip"]) for side in ("src", "dst")]
    keys = [*words[0], *words[1], batch["src_port"].to_numpy(), batch["dst_port"].to_numpy()]

    def first_of_group(order: np.ndarray, starts: np.ndarray, group: np.ndarray) -> np.ndarray:
        named = np.empty(len(order), dtype=np.int64)
        named[order] = order[starts][group.astype(np.int64)]
        return named

    hashed = first_of_group(*flows._group(keys))
    exact = first_of_group(*flows._group_exact(keys))
    assert len(np.unique(hashed)) > 1 and np.array_equal(hashed, exact)
