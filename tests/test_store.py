"""The store suite, run on both backends: embedded chDB and a server over HTTP (tests/chfront.py).

Every packets column type goes in through Arrow and comes back byte-exact; parameters bind hostile text
without SQL injection; errors are one line; the flows view fills; one Store serves concurrent threads.
"""

from __future__ import annotations

import ipaddress
import json
import os
import random
import subprocess
import sys
import threading

import pyarrow as pa
import pytest

from netrecall.errors import NetrecallError
from netrecall.ingest.flows import insert_packets
from netrecall.schema.migrate import SCHEMA_VERSION, stored_version
from netrecall.schema.tables import PACKETS, TABLES
from netrecall.store import Store

BASE_NS = 1_767_225_600_123_456_789  # 2026-01-01T00:00:00.123456789Z

HOSTILE = [
    "'; DROP TABLE packets; --",
    "back\\slash \\' \\\\",
    "tab\tnew\nline\rcarriage",
    "{n:String} and {{braces}}",
    "ünïcødé ✓ 漢字",
    'quote"double`back',
    "",
]


def ip16(text: str) -> bytes:
    """An address as the 16 bytes of the IPv6 column: IPv4 v4-mapped."""
    address = ipaddress.ip_address(text)
    if address.version == 4:
        address = ipaddress.IPv6Address("::ffff:" + text)
    return address.packed


def frames() -> list[bytes]:
    rng = random.Random(7)
    return [
        b"",
        b"\x00",
        b"\x00" * 64,
        b"\xff" * 61,
        bytes(range(256)),
        b"\x00\xff\x00\n\r\t\\'\"" * 9,
        rng.randbytes(1514),
        rng.randbytes(9000),
    ]


def packets_table(n_per_frame: int = 3) -> pa.Table:
    """Packets exercising every column type of `packets`, both directions of v4 and v6 flows."""
    endpoints = [("10.0.0.1", 40000, "10.0.0.2", 80), ("2001:db8::1", 50000, "fe80::2", 443)]
    rows: list[dict] = []
    for i, frame in enumerate(frames() * n_per_frame):
        src, sport, dst, dport = endpoints[i % 2]
        if i % 4 >= 2:  # the reverse direction of the same flow
            src, sport, dst, dport = dst, dport, src, sport
        rows.append(
            {
                "ts": BASE_NS + i * 1_001,
                "node": f"node-{i % 3}",
                "iface": "eth0",
                "direction": ["unknown", "in", "out"][i % 3],
                "source": "test",
                "link_type": 1,
                "caplen": len(frame),
                "origlen": len(frame) + i,
                "vlan": i % 2 * 100,
                "ip_version": 4 if i % 2 == 0 else 6,
                "src_ip": ip16(src),
                "dst_ip": ip16(dst),
                "l4": 6,
                "src_port": sport,
                "dst_port": dport,
                "ip_frag": 0,
                "tcp_flags": 0x18,
                "tcp_seq": 4_000_000_000 + i,
                "tcp_ack": i,
                "payload_offset": 54,
                "payload_len": max(0, len(frame) - 54),
                "src_pod": f"pod-{i % 2}",
                "src_namespace": "default",
                "src_service": "svc",
                "src_workload": "Deployment/web",
                "src_node": "node-0",
                "src_labels": {"app": "web", "tier": HOSTILE[i % len(HOSTILE)]},
                "dst_pod": "",
                "dst_namespace": "",
                "dst_service": "",
                "dst_workload": "",
                "dst_node": "",
                "dst_labels": {},
                "data": frame,
            }
        )
    types = {
        "ts": pa.timestamp("ns"),
        "src_ip": pa.binary(16),
        "dst_ip": pa.binary(16),
        "src_labels": pa.map_(pa.string(), pa.string()),
        "dst_labels": pa.map_(pa.string(), pa.string()),
        "data": pa.binary(),
        "direction": pa.string(),
    }
    for name in ("link_type", "vlan", "src_port", "dst_port", "tcp_flags", "payload_offset"):
        types[name] = pa.uint16()
    for name in ("caplen", "origlen", "tcp_seq", "tcp_ack", "payload_len"):
        types[name] = pa.uint32()
    for name in ("ip_version", "l4", "ip_frag"):
        types[name] = pa.uint8()
    columns = {name: pa.array([r[name] for r in rows], types.get(name, pa.string())) for name in rows[0]}
    return pa.table(columns)


def test_schema_is_in_place(any_store: Store):
    assert stored_version(any_store) == SCHEMA_VERSION
    names = {
        r[0] for r in any_store.rows("SELECT name FROM system.tables WHERE database = currentDatabase()")
    }
    assert {t.name for t in TABLES} <= names
    assert "flows_mv" not in names  # flows are written with the packets (netrecall.ingest.flows)
    assert any_store.scalar("SELECT currentDatabase()") == any_store.database


def test_every_packets_column_round_trips_through_arrow(any_store: Store):
    sent = packets_table()
    any_store.insert_arrow("packets", sent)
    back = any_store.arrow(f"SELECT {', '.join(sent.column_names)}, flow_id FROM packets ORDER BY ts")
    assert back.num_rows == sent.num_rows
    assert back.column("data").to_pylist() == sent.column("data").to_pylist()  # NUL, 0xff, 9000 bytes
    assert [bytes(b) for b in back.column("src_ip").to_pylist()] == sent.column("src_ip").to_pylist()
    assert [bytes(b) for b in back.column("dst_ip").to_pylist()] == sent.column("dst_ip").to_pylist()
    assert back.column("ts").cast(pa.int64()).to_pylist() == sent.column("ts").cast(pa.int64()).to_pylist()
    for name in ("caplen", "origlen", "vlan", "src_port", "dst_port", "tcp_seq", "tcp_ack", "payload_len"):
        assert back.column(name).to_pylist() == sent.column(name).to_pylist(), name
    labels = [
        {bytes(k).decode(): bytes(v).decode() for k, v in m} for m in back.column("src_labels").to_pylist()
    ]
    assert labels == [dict(m) for m in sent.column("src_labels").to_pylist()]
    # the engine computes flow_id: one id per 5-tuple whatever the direction, different flows differ
    flows = {}
    for src, sport, dst, dport, flow in zip(
        *(back.column(c).to_pylist() for c in ("src_ip", "src_port", "dst_ip", "dst_port", "flow_id")),
        strict=True,
    ):
        flows.setdefault(frozenset([(bytes(src), sport), (bytes(dst), dport)]), set()).add(flow)
    assert len(flows) == 2 and all(len(ids) == 1 for ids in flows.values())
    assert len(set().union(*flows.values())) == 2


def test_rows_read_binary_exact_with_column_formats(any_store: Store):
    sent = packets_table(n_per_frame=1)
    any_store.insert_arrow("packets", sent)
    rows = any_store.rows(
        "SELECT data, src_ip, direction, src_labels, ts FROM packets ORDER BY ts",
        column_formats={"data": "bytes"},
    )
    assert [r[0] for r in rows] == sent.column("data").to_pylist()
    assert str(rows[0][1]) == "::ffff:a00:1" and rows[0][1].ipv4_mapped == ipaddress.IPv4Address("10.0.0.1")
    assert str(rows[1][1]) == "2001:db8::1"
    assert [r[2] for r in rows[:3]] == ["unknown", "in", "out"]
    assert rows[0][3] == {"app": "web", "tier": HOSTILE[0]}
    # nanoseconds survive: the engine's own rendering of ts equals what was sent
    text = any_store.scalar("SELECT toString(min(ts)) FROM packets")
    assert text == "2026-01-01 00:00:00.123456789"


def test_arrays_and_maps_round_trip(any_store: Store):
    workloads = pa.table(
        {
            "ip": pa.array([ip16("10.1.2.3"), ip16("fd00::5")], pa.binary(16)),
            "kind": pa.array(["pod", "service"]),
            "name": pa.array(["web-1", "web"]),
            "namespace": pa.array(["prod", "prod"]),
            "services": pa.array([["web", "web-headless"], []], pa.list_(pa.string())),
            "labels": pa.array([{"app": "web", "x": "\x00y"}, {}], pa.map_(pa.string(), pa.string())),
            "valid_from": pa.array([BASE_NS, BASE_NS + 1], pa.timestamp("ns")),
        }
    )
    any_store.insert_arrow("workloads", workloads)
    rows = any_store.dicts("SELECT ip, kind, services, labels, valid_to FROM workloads ORDER BY valid_from")
    assert [str(r["ip"]) for r in rows] == ["::ffff:a01:203", "fd00::5"]
    assert [r["kind"] for r in rows] == ["pod", "service"]
    assert [r["services"] for r in rows] == [["web", "web-headless"], []]
    assert [r["labels"] for r in rows] == [{"app": "web", "x": "\x00y"}, {}]
    assert rows[0]["valid_to"].year == 2262  # DEFAULT filled for the absent column

    calls = pa.table(
        {
            "id": pa.array(["c1"]),
            "ts": pa.array([BASE_NS], pa.timestamp("ns")),
            "protocol": pa.array(["dns"]),
            "request_headers": pa.array(
                [{"Host": "a", "X-Bin": "\u00ff"}], pa.map_(pa.string(), pa.string())
            ),
            "dns_questions": pa.array([["payment.svc.cluster.local", "x.example"]], pa.list_(pa.string())),
            "dns_question_types": pa.array([["A", "AAAA"]], pa.list_(pa.string())),
            "request_body": pa.array([b"\x00\x01\xff"], pa.binary()),
            "status_code": pa.array([3], pa.int32()),
        }
    )
    any_store.insert_arrow("api_calls", calls)
    row = any_store.dicts(
        "SELECT request_headers, dns_questions, dns_question_types, request_body, status_code FROM api_calls",
        column_formats={"request_body": "bytes"},
    )[0]
    assert row == {
        "request_headers": {"Host": "a", "X-Bin": "\u00ff"},
        "dns_questions": ["payment.svc.cluster.local", "x.example"],
        "dns_question_types": ["A", "AAAA"],
        "request_body": b"\x00\x01\xff",
        "status_code": 3,
    }


@pytest.mark.parametrize("text", [*HOSTILE, "x" * 20000])  # the long one rides in a form body over HTTP
def test_parameters_bind_hostile_strings(any_store: Store, text: str):
    any_store.command(
        "INSERT INTO packets (ts, node, data) VALUES ({ts:DateTime64(9)}, {node:String}, {data:String})",
        {"ts": "2026-01-01 00:00:00.000000001", "node": text, "data": text},
    )
    found = any_store.rows("SELECT node, data FROM packets WHERE node = {n:String}", {"n": text})
    assert found == [(text, text)]
    assert any_store.scalar("SELECT count() FROM packets WHERE node != {n:String}", {"n": text}) == 0
    assert any_store.scalar("EXISTS TABLE packets") == 1


def test_parameter_types_bind(any_store: Store):
    row = any_store.rows(
        "SELECT {a:UInt64} + 1, {ip:IPv6}, {arr:Array(String)}, {ts:DateTime64(9)}",
        {"a": 2**63, "ip": "::ffff:10.0.0.1", "arr": ["a'b", "c\\d"], "ts": "2026-01-01 00:00:00.000000001"},
    )[0]
    assert row[0] == 2**63 + 1
    assert str(row[1]) == "::ffff:a00:1"
    assert row[2] == ["a'b", "c\\d"]
    assert row[3].year == 2026


@pytest.mark.parametrize(
    ("sql", "code"),
    [
        ("SELEC 1", "code 62"),
        ("SELECT * FROM no_such_table", "code 60"),
        ("SELECT throwIf(1, 'boom\nsecond line')", "code 395"),
    ],
)
def test_errors_are_one_line_netrecall_errors(any_store: Store, sql: str, code: str):
    with pytest.raises(NetrecallError) as caught:
        any_store.rows(sql)
    message = str(caught.value)
    assert "\n" not in message and message.startswith("ClickHouse: ")
    assert code in message
    assert "http://" not in message  # no URLs with credentials or hosts leaking into the one line


def test_bad_insert_is_one_line(any_store: Store):
    with pytest.raises(NetrecallError) as caught:
        any_store.insert_arrow("packets", pa.table({"no_such_column": pa.array([1])}))
    assert "\n" not in str(caught.value) and "no_such_column" in str(caught.value)


def test_packets_are_written_with_their_flows(any_store: Store):
    insert_packets(any_store, packets_table())
    flows = any_store.dicts(
        "SELECT l4, port_a, port_b, sum(packets_ab) + sum(packets_ba) AS packets,"
        " sum(bytes_ab) + sum(bytes_ba) AS bytes FROM flows"
        " GROUP BY flow_id, l4, port_a, port_b ORDER BY port_a"
    )
    sent = packets_table()
    assert sum(f["packets"] for f in flows) == sent.num_rows
    assert sum(f["bytes"] for f in flows) == sum(sent.column("origlen").to_pylist())
    assert [(f["port_a"], f["port_b"]) for f in flows] == [(40000, 80), (50000, 443)]  # a: lower (ip, port)
    # the flows table computes the packets' own flow_id from the 5-tuple it is sent
    pairs = any_store.rows(
        "SELECT DISTINCT p.flow_id, f.flow_id FROM packets AS p LEFT JOIN flows AS f "
        "ON p.flow_id = f.flow_id ORDER BY p.flow_id"
    )
    assert len(pairs) == 2 and all(p == f for p, f in pairs)


def test_one_store_serves_concurrent_threads(any_store: Store):
    any_store.insert_arrow("packets", packets_table(n_per_frame=1))
    results: list[object] = []
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(5):
                results.append(any_store.scalar("SELECT count() FROM packets WHERE sleepEachRow(0.001) = 0"))
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert results == [len(frames())] * 20


def test_http_traffic_really_goes_through_the_front(chfront, chdb_path):
    from netrecall.store import open_store

    before = chfront.requests
    store = open_store(f"{chfront.url}/t_front_{os.getpid()}")
    try:
        store.command("CREATE TABLE IF NOT EXISTS t (x String) ENGINE = Memory")
        store.insert_arrow("t", pa.table({"x": pa.array([b"\x00\xff"], pa.binary())}))
        assert store.rows("SELECT x FROM t", column_formats={"x": "bytes"}) == [(b"\x00\xff",)]
    finally:
        store.command(f"DROP DATABASE {store.database}")
        store.close()
    assert chfront.requests - before >= 4
    assert "out:lz4" in chfront.encodings  # results came back lz4-compressed, as the store asks
    assert PACKETS.name == "packets"


def test_arrow_stream_yields_the_same_rows_as_arrow(any_store: Store):
    any_store.insert_arrow("packets", packets_table())
    sql = "SELECT ts, data FROM packets ORDER BY ts"
    streamed = pa.Table.from_batches(list(any_store.arrow_stream(sql, settings={"max_block_size": 5})))
    whole = any_store.arrow(sql)
    assert streamed.num_rows == whole.num_rows == packets_table().num_rows
    assert streamed.column("data").to_pylist() == whole.column("data").to_pylist()


def test_unreachable_server_is_one_line():
    from netrecall.store import open_store

    with pytest.raises(NetrecallError) as caught:
        open_store("http://user:secret@127.0.0.1:9/netrecall")
    message = str(caught.value)
    assert message.startswith("cannot reach ClickHouse at http://127.0.0.1:9/netrecall: ")
    assert "\n" not in message and "secret" not in message


def test_embedded_engine_runs_one_background_merge_at_a_time(tmp_path):
    """A process's first open_store starts the engine with CHDB_ENGINE_OPTIONS (store.py: merge memory).
    In a subprocess: in this one the engine may have been started first by the test HTTP front."""
    code = (
        "import json, sys; from netrecall.store import open_store; s = open_store(sys.argv[1]); "
        'print(json.dumps(dict(s.rows("SELECT name, value FROM system.server_settings WHERE name IN '
        "('background_pool_size', 'background_merges_mutations_concurrency_ratio')\"))))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, f"chdb://{tmp_path}/store"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {
        "background_pool_size": "1",
        "background_merges_mutations_concurrency_ratio": "1",
    }
