"""PostgreSQL dissection against tshark 4.0's pgsql dissector on captures of a real server with psql and
psycopg (tests/captures/dissect/record_db.py): the multisets of (method, SQL, command tags, SQLSTATE) must
be equal, tuple by tuple.

tshark decodes each message (pgsql.type, pgsql.query, pgsql.statement, pgsql.portal, pgsql.tag,
pgsql.code) but pairs nothing; the test pairs its messages the way the protocol defines it: the backend
answers frontend messages in order, ReadyForQuery closes a Query, a Sync or the startup, and after an
ErrorResponse the server skips extended-protocol messages up to the next Sync. An Execute runs the SQL
its portal was bound from (Bind's statement, Parse's query).
"""

from __future__ import annotations

import random
from collections import Counter, deque
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from netrecall.dissect.runner import dissect
from netrecall.ingest.importer import import_files
from netrecall.store import Store
from tests.conftest import CAPTURES
from tests.dissect_pcap import Pkt, dissect_packets, read_packets
from tests.test_dissect_redis import Message, Stream, tshark_messages

RECORDED = CAPTURES / "dissect"
SIMPLE = RECORDED / "pgsql_simple.pcap"
EXTENDED = RECORDED / "pgsql_extended.pcap"
TLS = RECORDED / "pgsql_tls.pcap"
PASSWORD = "s3cret-pw"  # record_db.py's
COMPLETIONS = ("Parse completion", "Bind completion", "Close completion")
DESCRIPTIONS = ("Row description", "No data")  # what answers a Describe


def _first(message: Message, name: str) -> str:
    return message.fields.get(name, [""])[0]


def tshark_calls(stream: Stream) -> Counter:
    """(method, SQL, tags joined with '; ', SQLSTATE) per call, from tshark's messages of one stream."""
    statements: dict[str, str] = {}
    portals: dict[str, str] = {}
    queue: deque[list] = deque()
    for message in stream.requests:
        kind = _first(message, "pgsql.type")
        if kind == "Startup message":
            queue.append(["Startup", "", [], ""])
        elif kind == "Simple query":
            queue.append(["Query", _first(message, "pgsql.query"), [], ""])
        elif kind == "Parse":
            statements[_first(message, "pgsql.statement")] = _first(message, "pgsql.query")
            queue.append(["Parse", _first(message, "pgsql.query"), [], ""])
        elif kind == "Bind":
            portals[_first(message, "pgsql.portal")] = statements.get(_first(message, "pgsql.statement"), "")
            queue.append(["Bind", portals[_first(message, "pgsql.portal")], [], ""])
        elif kind == "Execute":
            queue.append(["Execute", portals.get(_first(message, "pgsql.portal"), ""), [], ""])
        elif kind in ("Describe", "Close", "Sync"):
            queue.append([kind, "", [], ""])
    calls: Counter = Counter()

    def done(item: list) -> None:
        calls[(item[0], item[1], "; ".join(item[2]), item[3])] += 1

    for message in stream.replies:
        kind = _first(message, "pgsql.type")
        if not queue:
            continue
        head = queue[0]
        if kind == "Error":
            head[3] = _first(message, "pgsql.code")
            if head[0] in ("Query", "Sync"):
                continue
            queue.popleft()
            if head[0] != "Sync":
                done(head)
            while head[0] != "Startup" and queue and queue[0][0] != "Sync":
                queue.popleft()
        elif kind == "Ready for query":
            while queue:
                item = queue.popleft()
                if item[0] in ("Startup", "Query", "Sync"):
                    if item[0] != "Sync":
                        done(item)
                    break
        elif kind == "Command completion":
            head[2].append(_first(message, "pgsql.tag"))
            if head[0] == "Execute":
                done(queue.popleft())
        elif kind in COMPLETIONS or (kind in DESCRIPTIONS and head[0] == "Describe"):
            queue.popleft()
    return calls


def netrecall_calls(store: Store, path: Path) -> list[dict]:
    import_files(store, [path])
    dissect(store)
    return store.dicts(
        "SELECT protocol, src_port, method, path, status_code, error_code, status_message, status_text, "
        "command_tag, result_rows, db_user, db_name, has_response, partial, error, request_body_size, "
        "response_body_size, elapsed_time FROM api_calls FINAL ORDER BY ts"
    )


def ours(calls: list[dict]) -> Counter:
    return Counter(
        (c["method"], c["path"], c["command_tag"], c["error_code"])
        for c in calls
        if c["protocol"] == "postgresql"
    )


@pytest.mark.parametrize("path", [SIMPLE, EXTENDED], ids=lambda p: p.name)
def test_same_calls_as_tshark(store: Store, path: Path) -> None:
    calls = netrecall_calls(store, path)
    expected: Counter = Counter()
    for stream in tshark_messages(path, "pgsql", 5432, top_level_fields=False).values():
        expected += tshark_calls(stream)
    assert ours(calls) == expected
    assert sum(expected.values()) >= 12
    assert not [c for c in calls if c["error"] or c["partial"] or c["protocol"] != "postgresql"]


def test_simple_protocol_details(store: Store) -> None:
    calls = netrecall_calls(store, SIMPLE)
    assert all((c["db_user"], c["db_name"]) == ("postgres", "postgres") for c in calls)
    by_sql = {c["path"]: c for c in calls if c["method"] == "Query"}
    select = by_sql["SELECT id, name, price FROM items ORDER BY id;"]
    assert (select["command_tag"], select["result_rows"], select["status_code"]) == ("SELECT 3", 3, 0)
    two = by_sql["SELECT count(*) FROM items; UPDATE items SET name = upper(name)"]
    assert (two["command_tag"], two["result_rows"]) == ("SELECT 1; UPDATE 3", 4)
    missing = by_sql["SELECT * FROM missing_table;"]
    assert (missing["status_code"], missing["error_code"], missing["status_text"]) == (1, "42P01", "ERROR")
    assert missing["status_message"] == 'relation "missing_table" does not exist'
    assert by_sql["INSERT INTO items VALUES (1, 'again', 9);"]["error_code"] == "23505"
    copy_in = next(c for c in calls if c["path"].startswith("COPY  items FROM STDIN"))
    assert copy_in["command_tag"] == "COPY 3"
    rows = "10\tcherry\t3.5\n11\tfig\t4\n12\tkiwi\t0.5\n"
    # the Query message plus the CopyData and CopyDone the client sent after it
    assert copy_in["request_body_size"] >= len(rows) + len("COPY  items FROM STDIN ") + 6
    startups = [c for c in calls if c["method"] == "Startup"]
    assert Counter(c["error_code"] for c in startups) == Counter({"": 2, "28P01": 1})
    failed = next(c for c in startups if c["error_code"])
    assert failed["status_text"] == "FATAL" and failed["status_code"] == 1
    assert all(c["elapsed_time"] > 0 for c in calls)


def test_named_statements_reused(store: Store) -> None:
    """One Parse of a named statement, three Bind/Execute of it: three rows carrying its SQL."""
    calls = netrecall_calls(store, EXTENDED)
    executes = Counter(c["path"] for c in calls if c["method"] == "Execute" and not c["error_code"])
    assert executes["SELECT owner, balance FROM accounts WHERE id = $1"] == 3
    assert executes["INSERT INTO accounts VALUES ($1, $2, $3)"] == 2
    streams = tshark_messages(EXTENDED, "pgsql", 5432, top_level_fields=False).values()
    parses = Counter(
        _first(m, "pgsql.query") for s in streams for m in s.requests if _first(m, "pgsql.type") == "Parse"
    )
    assert parses["SELECT owner, balance FROM accounts WHERE id = $1"] == 1
    errors = {(c["method"], c["error_code"]) for c in calls if c["status_code"]}
    assert errors == {("Parse", "42P01"), ("Bind", "22P02"), ("Execute", "23505"), ("Query", "40001")}
    pipelined = [c for c in calls if c["path"] == "SELECT balance FROM accounts WHERE id = $1"]
    assert len(pipelined) == 2 and all(c["command_tag"] == "SELECT 1" for c in pipelined)


def test_passwords_never_stored(store: Store) -> None:
    import_files(store, [SIMPLE, EXTENDED])
    dissect(store)
    everything = store.dicts("SELECT * FROM api_calls")
    assert everything and PASSWORD not in repr(everything)
    assert "wrong-password" not in repr(everything)


def test_ssl_accepted_is_flagged_tls(store: Store) -> None:
    """SSLRequest answered 'S': one row says the rest is TLS; the encrypted bytes are not parsed."""
    import_files(store, [TLS])
    summary = dissect(store)
    rows = store.dicts("SELECT protocol, method, status_text, has_response FROM api_calls FINAL")
    assert {
        "protocol": "postgresql",
        "method": "SSLRequest",
        "status_text": "TLS",
        "has_response": True,
    } in rows
    assert not [r for r in rows if r["protocol"] == "postgresql" and r["method"] != "SSLRequest"]
    assert not summary.parse_errors.get("postgresql")


def _connection(rng: random.Random, start_ts: int, port: int, chunks: list[bytes]) -> list[Pkt]:
    client = b"\0" * 10 + b"\xff\xff" + bytes([10, 79, 0, 9])
    server = b"\0" * 10 + b"\xff\xff" + bytes([10, 79, 0, 2])
    packets = [Pkt(start_ts, client, server, 6, 40000, port, 0x02, 1000, b"")]
    seq, ts = 1001, start_ts
    for data in chunks:
        ts += rng.randrange(1, 5_000_000)
        packets.append(Pkt(ts, client, server, 6, 40000, port, 0x18, seq, data))
        seq += len(data)
    return packets


def _tuples(calls: list[dict]) -> Counter:
    return Counter(
        (c["src_port"], c.get("method"), c.get("path"), c.get("command_tag"), c.get("error_code"))
        for c in calls
        if c["protocol"] == "postgresql"
    )


def test_garbage_costs_nothing_elsewhere() -> None:
    packets = read_packets(EXTENDED)
    clean = dissect_packets(packets)
    rng = random.Random(5432)
    garbage = _connection(rng, packets[0].ts, 5432, [rng.randbytes(rng.randrange(1, 400)) for _ in range(30)])
    noisy = dissect_packets(packets + garbage, chunks=3)
    assert _tuples(noisy.calls) == _tuples(clean.calls)
    flagged = [c for c in noisy.calls if c["src_port"] == 40000]
    assert flagged and all(c["protocol"] == "tcp" and c["error"].startswith("postgresql: ") for c in flagged)
    assert noisy.parse_errors["postgresql"] >= 1
    assert not any("parser failure" in (c.get("error") or "") for c in noisy.calls)


def test_mid_connection_start() -> None:
    """psycopg's session captured from the middle: the calls after the cut come back with their tags; an
    Execute of a statement prepared before the cut has no SQL and is flagged partial."""
    packets = read_packets(EXTENDED)
    full = dissect_packets(packets)
    first_execute = min(c["ts"] for c in full.calls if c.get("method") == "Execute")
    cut_ts = next(p.ts for p in packets if p.ts > first_execute and p.dst_port == 5432 and p.payload)
    cut = dissect_packets([p for p in packets if p.ts >= cut_ts])
    later = [c for c in cut.calls if c["protocol"] == "postgresql"]
    expected = [c for c in full.calls if c["protocol"] == "postgresql" and c["ts"] >= cut_ts]
    # same outcome per call; the SQL is known only where the Parse was captured
    outcome = Counter((c.get("method"), c.get("command_tag"), c.get("error_code")) for c in later)
    assert outcome == Counter((c.get("method"), c.get("command_tag"), c.get("error_code")) for c in expected)
    unknown = [c for c in later if c.get("method") == "Execute" and not c.get("path")]
    assert unknown and all(c["partial"] for c in unknown)
    assert not [c for c in cut.calls if c.get("error")]


def _startup() -> bytes:
    params = b"user\0postgres\0database\0postgres\0\0"
    return (8 + len(params)).to_bytes(4, "big") + (3 << 16).to_bytes(4, "big") + params


@settings(max_examples=150, deadline=None)
@given(
    requests=st.lists(st.binary(max_size=80), max_size=6),
    replies=st.lists(st.binary(max_size=80), max_size=6),
)
def test_fuzzed_streams_never_break_the_run(requests: list[bytes], replies: list[bytes]) -> None:
    """A valid startup, then arbitrary bytes both ways: rows or parse errors, never a parser failure."""
    client = b"\0" * 10 + b"\xff\xff" + bytes([10, 79, 0, 9])
    server = b"\0" * 10 + b"\xff\xff" + bytes([10, 79, 0, 2])
    packets = [
        Pkt(1, client, server, 6, 40001, 5432, 0x02, 0, b""),
        Pkt(2, server, client, 6, 5432, 40001, 0x12, 0, b""),
    ]
    seqs = {40001: 1, 5432: 1}
    ts = 10
    ready = b"Z\0\0\0\x05I"
    for index, data in enumerate([_startup(), *requests]):
        answer = replies[index] if index < len(replies) else ready
        for sender, payload in ((40001, data), (5432, answer)):
            if not payload:
                continue
            src, dst = (client, server) if sender == 40001 else (server, client)
            receiver = 5432 if sender == 40001 else 40001
            ts += 1000
            packets.append(Pkt(ts, src, dst, 6, sender, receiver, 0x18, seqs[sender], payload))
            seqs[sender] += len(payload)
    ctx = dissect_packets(packets, chunks=2)
    assert not any("parser failure" in (c.get("error") or "") for c in ctx.calls)
