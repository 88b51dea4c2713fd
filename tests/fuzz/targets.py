"""The fuzz targets: one per parser of untrusted bytes, each checking properties, not only "no exception".

A target takes one input (bytes) and raises AssertionError when a property fails; any other exception
that escapes is a crash too (the parsers promise a one-line NetrecallError or a flagged row instead).

Targets, what each feeds, and the properties it checks:

- capture: the bytes as a pcap/pcapng file, raw or gzip (cut short on request). A one-line error naming
  the file, or chunks whose frames lie inside their buffer in file order; the same frames and damage
  whatever the read size.
- decode: 1-12 frames of any link type. Every payload ends inside its frame; a frame decodes the same
  alone, beside others, or with foreign bytes around it (no read past a record); `data` is the frame
  exactly, in both Arrow layouts.
- tcp: segments cut from one known stream, any order, overlaps, duplicates, 32-bit wrap. Delivered bytes
  are the stream's bytes at their offsets; at the end, bytes declared lost were never sent.
- http1 dns http2 tls redis postgresql kafka: a connection (both directions, flags, holes, time jumps)
  through the engine with that one dissector. No parser failure reaches the engine's safety net; the
  calls convert to the api_calls Arrow schema; ids, times and the watermark stay within the packets'.
- kfl: the bytes as filter text. A KflError, or SQL that sqlglot parses back with every placeholder
  bound, each value fitting its declared type, and no string literal but the catalogue's own.
- sqlguard: the bytes as SQL. Whatever the guard lets through, ClickHouse's own parser (chDB's
  `formatQuery`, then `EXPLAIN AST`) reads as one read: no write, no SETTINGS or INTO OUTFILE, no
  file/url/remote/... function.
- ingest: the bytes as the hub's ingest body for packets, workloads or agent_stats. A NetrecallError (the
  hub's 400), or a batch the hub can store: every column in the table's type, flows aggregate from it.
"""

from __future__ import annotations

import gzip
import os
import re
from collections.abc import Callable
from functools import cache
from pathlib import Path

import numpy as np

from netrecall.dissect import calls as calls_module
from netrecall.dissect.engine import Engine, PacketChunk
from netrecall.dissect.protocols import PROTOCOLS
from netrecall.dissect.tcp import HalfStream
from netrecall.dissect.writer import calls_to_arrow
from netrecall.errors import NetrecallError
from netrecall.ingest.capture_file import CHUNK_BYTES, CaptureReader
from netrecall.ingest.decode import decode_frames
from netrecall.ingest.frames import FrameChunk
from tests.fuzz.inputs import Connection, Cursor, read_frames

Target = Callable[[bytes], None]

# --- capture files -----------------------------------------------------------------------------------------

_SCRATCH = Path(os.environ.get("NETRECALL_FUZZ_TMP", "/dev/shm")) / f"netrecall-fuzz-{os.getpid()}.pcap"


def capture(data: bytes) -> None:
    """Byte 0: bit 0 gzip the rest, bit 1 cut the gzip stream short by (bits 2-3) + 1 bytes, bits 4-7 the
    small read size. The file is read twice, with a small and with the default read size."""
    mode = data[0] if data else 0
    body = data[1:]
    if mode & 1:
        body = gzip.compress(body, compresslevel=1, mtime=0)
        if mode & 2:
            body = body[: -(((mode >> 2) & 3) + 1)]
    _SCRATCH.write_bytes(body)
    small = _read_capture(_SCRATCH, 16 + (mode >> 4) * 37)
    whole = _read_capture(_SCRATCH, CHUNK_BYTES)
    assert small == whole, f"read size changes the result:\n{_first_difference(small, whole)}"


def _read_capture(path: Path, chunk_bytes: int) -> tuple:
    reader = CaptureReader(path, chunk_bytes)
    frames: list[tuple] = []
    last_offset = -1
    try:
        for chunk in reader.chunks():
            _check_chunk(chunk)
            offsets = chunk.file_offsets
            assert offsets is not None and len(offsets) == len(chunk)
            assert len(chunk) > 0, "an empty chunk was handed out"
            assert int(offsets[0]) > last_offset and bool(np.all(np.diff(offsets) > 0)), (
                "records out of order"
            )
            last_offset = int(offsets[-1])
            for i in range(len(chunk)):
                frames.append(
                    (
                        int(chunk.ts_ns[i]),
                        int(chunk.caplen[i]),
                        int(chunk.origlen[i]),
                        int(chunk.link_type[i]),
                        chunk.ifaces[int(chunk.iface_index[i])],
                        int(chunk.direction[i]),
                        chunk.frame(i),
                        int(offsets[i]),
                    )
                )
    except NetrecallError as exc:
        message = str(exc)
        assert "\n" not in message and str(path) in message, (
            f"error is not one line naming the file: {message}"
        )
        return ("error", message)
    damage = sorted((d.offset, d.length, d.records) for d in reader.damage)  # found in read order
    assert reader.records == len(frames)
    return (reader.format, frames, damage)


def _check_chunk(chunk: FrameChunk) -> None:
    n = len(chunk)
    for name in ("caplen", "origlen", "link_type", "iface_index", "direction"):
        assert len(getattr(chunk, name)) == n, f"{name} has {len(getattr(chunk, name))} values for {n} frames"
    assert len(chunk.offsets) == n + 1
    starts = np.asarray(chunk.offsets[:-1], dtype=np.int64)
    ends = starts + np.asarray(chunk.caplen, dtype=np.int64)
    assert bool(np.all(starts >= 0)) and bool(np.all(ends <= len(chunk.data))), (
        "a frame lies outside its buffer"
    )
    assert bool(np.all(starts[1:] >= ends[:-1])), "frames overlap"
    assert int(chunk.offsets[-1]) == int(ends[-1])
    assert bool(np.all(np.asarray(chunk.iface_index) < len(chunk.ifaces))), (
        "an interface index points nowhere"
    )
    assert bool(np.all(np.asarray(chunk.direction) <= 3))


def _first_difference(a: tuple, b: tuple) -> str:
    if a[0] != b[0] or len(a) != len(b):
        return f"{repr(a)[:300]} vs {repr(b)[:300]}"
    for i, (x, y) in enumerate(zip(a[1], b[1], strict=False)):
        if x != y:
            return f"frame {i}: {repr(x)[:300]}... vs {repr(y)[:300]}..."
    if len(a[1]) != len(b[1]):
        return f"{len(a[1])} frames vs {len(b[1])}"
    return f"damage {a[2]} vs {b[2]}"


# --- L2-L4 decoder -----------------------------------------------------------------------------------------

_NOT_COMPARED = ("data", "node", "iface", "source")  # data is checked against the frames themselves


def decode(data: bytes) -> None:
    records = read_frames(data, 12)
    if not records:
        return
    frames = [f for _, f in records]
    ts = np.arange(len(frames), dtype=np.int64) * 1000 + 1_700_000_000_000_000_000
    links = [link for link, _ in records]
    alone = FrameChunk.from_frames(frames, ts, link_type=links)
    plain = decode_frames(alone, node="n", source="s")
    # The same frames as a file reader hands them out: record headers (here 0xFF bytes, 16 of them) between
    # the frames and after the last one. A field read past its frame would see them instead of the next
    # frame's bytes or the padding, and differ.
    gapped = _with_gaps(alone, gap=16)
    viewed = decode_frames(gapped, node="n", source="s", chdb_layout=True)
    assert plain.num_rows == viewed.num_rows == len(frames)
    compared = [name for name in plain.column_names if name not in _NOT_COMPARED]
    for name in compared:
        a, b = plain.column(name).to_pylist(), viewed.column(name).to_pylist()
        assert a == b, f"{name} depends on bytes outside the frame: {a} vs {b}"
    assert plain.column("data").to_pylist() == frames
    assert viewed.column("data").to_pylist() == frames
    caplen = np.asarray(plain.column("caplen"), dtype=np.int64)
    start = np.asarray(plain.column("payload_offset"), dtype=np.int64)
    length = np.asarray(plain.column("payload_len"), dtype=np.int64)
    assert bool(np.all(start + length <= caplen)), "a payload runs past its frame"
    version = np.asarray(plain.column("ip_version"))
    assert set(version.tolist()) <= {0, 4, 6}
    assert bool(np.all(length[version == 0] == 0)), "a non-IP frame has a payload"
    if len(frames) > 1:  # each frame decodes the same on its own
        last = decode_frames(FrameChunk.from_frames(frames[-1:], ts[-1:], link_type=links[-1:]))
        for name in compared:
            if name != "seq":
                assert last.column(name)[0] == plain.column(name)[len(frames) - 1], f"{name} differs alone"


def _with_gaps(chunk: FrameChunk, gap: int) -> FrameChunk:
    parts, starts, pos = [], [], 0
    for i in range(len(chunk)):
        parts.append(b"\xff" * gap)
        pos += gap
        starts.append(pos)
        frame = chunk.frame(i)
        parts.append(frame)
        pos += len(frame)
    parts.append(b"\xff" * gap)
    offsets = np.asarray([*starts, starts[-1] + int(chunk.caplen[-1])], dtype=np.int64)
    return FrameChunk(
        ts_ns=chunk.ts_ns,
        caplen=chunk.caplen,
        origlen=chunk.origlen,
        link_type=chunk.link_type,
        iface_index=chunk.iface_index,
        direction=chunk.direction,
        data=np.frombuffer(b"".join(parts), dtype=np.uint8),
        offsets=offsets,
        ifaces=chunk.ifaces,
    )


# --- TCP reassembly ----------------------------------------------------------------------------------------


# The bytes every tcp input's stream is cut from (a pattern with no short period, so a misplaced piece shows).
_TCP_STREAM = bytes((i * 7 + i // 251) & 0xFF for i in range(8192))


def tcp(data: bytes) -> None:
    """Header: ISN u32, stream length u16, flags u8 (bit 0: SYN seen, bit 1: a small out-of-order limit);
    then segments (start u16, length u16, consume u8): stream[start:start+length] arrives, then the
    session consumes that many % 4 * 37 bytes."""
    cur = Cursor(data)
    isn = int.from_bytes(cur.take(4).ljust(4, b"\0"), "big")
    size = cur.u16() % 8192 + 1
    flags = cur.u8()
    stream = _TCP_STREAM[:size]
    half = HalfStream()
    if flags & 1:
        half.start((isn - 1) & 0xFFFFFFFF)
    covered = bytearray(size)
    lost: list[tuple[int, int]] = []
    first_seen: int | None = None
    limit = 256 if flags & 2 else 1 << 20
    ts = 0
    while cur.left:
        start = cur.u16() % size
        length = cur.u16() % 1500
        consume = cur.u8() % 4 * 37
        ts += 1000
        piece = stream[start : start + length]
        if not piece:
            continue
        if first_seen is None:
            first_seen = 0 if flags & 1 else start
        half.add((isn + start) & 0xFFFFFFFF, piece, ts)
        covered[start : start + len(piece)] = b"\1" * len(piece)
        missing = half.hole(ts, limit, 10**12, False)
        if missing:
            lost.append((half.off, missing))
            half.skip(missing)
        _check_buffer(half, stream, first_seen)
        half.consume(min(consume, len(half.buf)))
        _check_buffer(half, stream, first_seen)
    while half.ooo:
        missing = half.hole(0, limit, 10**12, True)
        assert missing > 0, f"a hole of {missing} bytes with data waiting"
        end_of_hole = half.off + missing
        assert not any(covered[(first_seen or 0) + half.off : (first_seen or 0) + end_of_hole]), (
            "bytes that arrived were declared lost at the end"
        )
        lost.append((half.off, missing))
        half.skip(missing)
        _check_buffer(half, stream, first_seen)
    if first_seen is not None:
        assert half.seq_at(0) == (isn + first_seen) & 0xFFFFFFFF
        expected_end = covered.rfind(1) + 1 - first_seen
        assert half.off == max(expected_end, 0), f"stream ends at {half.off}, data reached {expected_end}"


def _check_buffer(half: HalfStream, stream: bytes, first_seen: int | None) -> None:
    if first_seen is None:
        return
    at = first_seen + half.base
    assert bytes(half.buf) == stream[at : at + len(half.buf)], f"wrong bytes delivered at offset {half.base}"
    assert half.base + len(half.buf) == half.off


# --- protocol dissectors -----------------------------------------------------------------------------------

BASE_TS = 1_700_000_000_000_000_000
CLIENT_IP = b"\0" * 10 + b"\xff\xff" + bytes([10, 0, 0, 1])
SERVER_IP = b"\0" * 10 + b"\xff\xff" + bytes([10, 0, 0, 2])
SYN, ACK, FIN, RST, PSH = 0x02, 0x10, 0x01, 0x04, 0x08


class _StrictEngine(Engine):
    """The engine with its safety net turned into a failure: a parser must flag bad traffic itself."""

    def _parser_failed(self, conn, exc: Exception) -> None:
        raise exc


def _packets(conn: Connection) -> list[tuple]:
    """(ts, flow, l4, src_ip, dst_ip, sport, dport, flags, seq, payload) in capture order."""
    out: list[tuple] = []
    ts = BASE_TS
    isn = (conn.isn * 0x01010101) & 0xFFFFFFFF
    nxt = [isn, (isn ^ 0x5A5A5A5A) & 0xFFFFFFFF]
    cport, sport = conn.client_port, conn.server_port
    if conn.handshake:
        out.append((ts, 1, 6, CLIENT_IP, SERVER_IP, cport, sport, SYN, nxt[0], b""))
        out.append((ts + 1000, 1, 6, SERVER_IP, CLIENT_IP, sport, cport, SYN | ACK, nxt[1], b""))
        ts += 2000
        nxt = [(nxt[0] + 1) & 0xFFFFFFFF, (nxt[1] + 1) & 0xFFFFFFFF]
    for seg in conn.segments:
        ts += 11_000_000_000 if seg.later else 1_000_000
        side = int(seg.server)
        src, dst = (SERVER_IP, CLIENT_IP) if side else (CLIENT_IP, SERVER_IP)
        ports = (sport, cport) if side else (cport, sport)
        if seg.udp:
            if seg.payload:
                out.append((ts, 2, 17, src, dst, *ports, 0, 0, seg.payload))
            continue
        seq = (nxt[side] + seg.jump) & 0xFFFFFFFF
        flags = ACK | (PSH if seg.payload else 0) | (FIN if seg.fin else 0) | (RST if seg.rst else 0)
        if seg.payload or flags & (FIN | RST):
            out.append((ts, 1, 6, src, dst, *ports, flags, seq, seg.payload))
        nxt[side] = (seq + len(seg.payload)) & 0xFFFFFFFF
    return out


def _chunk(packets: list[tuple]) -> PacketChunk:
    rows = sorted(packets, key=lambda p: (p[1], p[0]))
    columns = list(zip(*rows, strict=True)) if rows else [()] * 10
    return PacketChunk(
        ts=list(columns[0]),
        flow_id=np.asarray(columns[1], dtype=np.uint64),
        l4=list(columns[2]),
        src_ip=list(columns[3]),
        dst_ip=list(columns[4]),
        src_port=list(columns[5]),
        dst_port=list(columns[6]),
        tcp_flags=list(columns[7]),
        tcp_seq=list(columns[8]),
        payload=list(columns[9]),
    )


def _dissect(conn: Connection, dissector: object) -> tuple[calls_module.Context, int, int]:
    packets = _packets(conn)
    ctx = calls_module.Context()
    engine = _StrictEngine(ctx)
    engine.dissectors = [dissector]
    if not packets:
        return ctx, 0, 0
    lo, hi = packets[0][0], packets[-1][0]
    size = -(-len(packets) // conn.chunks)
    for start in range(0, len(packets), size):
        engine.process(_chunk(packets[start : start + size]))
        pending = engine.pending_ts()
        assert pending is None or lo <= pending <= hi, f"watermark {pending} outside the packets' times"
    engine.finish()
    return ctx, lo, hi


def _check_calls(ctx: calls_module.Context, lo: int, hi: int) -> None:
    table = calls_to_arrow(ctx.calls)  # what the writer inserts: a value of the wrong type fails here
    assert table.num_rows == len(ctx.calls)
    for call in ctx.calls:
        assert call["protocol"] in PROTOCOLS, call["protocol"]
        assert isinstance(call.get("id"), str) and re.fullmatch(r"[0-9a-f]{20}", call["id"]), call.get("id")
        assert lo <= call["ts"] <= hi, f"call time {call['ts']} outside the packets' times"
        for name in ("first_packet_ts", "last_packet_ts"):
            if call.get(name):
                assert lo <= call[name] <= hi, f"{name} {call[name]} outside the packets' times"
        if call.get("first_packet_ts") and call.get("last_packet_ts"):
            assert call["first_packet_ts"] <= call["last_packet_ts"]
    assert set(ctx.parse_errors) <= set(PROTOCOLS), ctx.parse_errors


def stream_target(make: Callable[[], object]) -> Target:
    def target(data: bytes) -> None:
        ctx, lo, hi = _dissect(Connection.read(data), make())
        _check_calls(ctx, lo, hi)

    return target


def _dissector(module: str, name: str) -> Callable[[], object]:
    def make() -> object:
        from importlib import import_module

        return getattr(import_module(f"netrecall.dissect.protocols.{module}"), name)()

    return make


# --- KFL ---------------------------------------------------------------------------------------------------

_PLACEHOLDER = re.compile(r"\{(p\d+):\s*([^{}]+)\}")
_INT64 = (-(1 << 63), (1 << 63) - 1)


def kfl(data: bytes) -> None:
    import sqlglot
    from sqlglot import exp

    from netrecall.query.kfl import KflError, compile_filter

    text = data.decode("utf-8", "replace")
    try:
        compiled = compile_filter(text, now_ns=BASE_TS)
    except KflError as exc:
        assert 0 <= exc.position <= len(text)
        return
    except NetrecallError as exc:
        assert "\n" not in str(exc), f"not one line: {exc}"
        return
    sql = f"SELECT 1 FROM {compiled.table} WHERE {compiled.where}"
    tree = sqlglot.parse_one(sql, read="clickhouse")
    assert tree.find(exp.Where) is not None
    bound = dict(_PLACEHOLDER.findall(compiled.where))
    assert set(bound) == set(compiled.params), (
        f"placeholders {sorted(bound)} vs params {sorted(compiled.params)}"
    )
    for name, ch_type in bound.items():
        _check_param(compiled.params[name], ch_type.strip(), name)
    allowed = _catalogue_strings()
    for literal in tree.find_all(exp.Literal):
        if literal.is_string:
            assert literal.this in allowed, f"string literal {literal.this!r} spliced into the SQL"


def _check_param(value: object, ch_type: str, name: str) -> None:
    if ch_type == "String":
        assert isinstance(value, str), (name, value)
        value.encode("utf-8")  # a lone surrogate cannot be sent to the engine
    elif ch_type == "Int64":
        assert isinstance(value, int) and _INT64[0] <= value <= _INT64[1], (
            f"{name}={value} does not fit Int64"
        )
    elif ch_type == "UInt64":
        assert isinstance(value, int) and 0 <= value < 1 << 64, f"{name}={value} does not fit UInt64"
    elif ch_type == "Float64":
        assert isinstance(value, float), (name, value)
    elif ch_type == "Bool":
        assert isinstance(value, bool), (name, value)
    elif ch_type.startswith("Array("):
        assert isinstance(value, list | tuple), (name, value)
        for item in value:
            _check_param(item, ch_type[6:-1], name)


@cache
def _catalogue_strings() -> frozenset[str]:
    """String literals the catalogue's own expressions and the compiler's fixed fragments contain."""
    import sqlglot
    from sqlglot import exp

    from netrecall.query.kfl import CATALOGUES

    found = {"?", "true", "false"}
    for fields in CATALOGUES.values():
        for field in fields.values():
            tree = sqlglot.parse_one(field.sql, read="clickhouse")
            found.update(lit.this for lit in tree.find_all(exp.Literal) if lit.is_string)
    return frozenset(found)


# --- SQL guard ---------------------------------------------------------------------------------------------

# Table functions and functions that read or write outside the database (the "file/url/remote"
# and their relatives), listed independently of the guard's own list.
_OUTSIDE = frozenset(
    {
        *("file", "filecluster", "url", "urlcluster", "remote", "remotesecure", "cluster"),
        *("clusterallreplicas", "s3", "s3cluster", "gcs", "hdfs", "hdfscluster", "azureblobstorage"),
        *("azureblobstoragecluster", "executable", "executablepool", "input", "mysql", "postgresql"),
        *("jdbc", "odbc", "sqlite", "mongodb", "redis", "dictionary", "python", "iceberg", "deltalake"),
        *("hudi", "hive", "merge"),
    }
)
_WRITES = (
    "Insert",
    "Alter",
    "Create",
    "Drop",
    "Rename",
    "Truncate",
    "Delete",
    "Update",
    "Optimize",
    "System",
    "Kill",
    "Grant",
    "Revoke",
    "Use",
    "Attach",
    "Detach",
    "Backup",
    "Undrop",
    "Move",
    "Transaction",
    "SetQuery",
    "SetRole",
)


def sqlguard(data: bytes) -> None:
    from netrecall.query.sqlguard import check_readonly

    text = data.decode("utf-8", "replace")
    try:
        statement = check_readonly(text)
    except NetrecallError as exc:
        assert "\n" not in str(exc), f"not one line: {exc}"
        return
    problems = clickhouse_verdict(statement)
    assert not problems, f"the guard let through {statement!r}: ClickHouse reads it as {problems}"


def clickhouse_verdict(statement: str) -> list[str]:
    """What ClickHouse's own parser finds in the statement that is not a plain read (empty: a read, or
    text ClickHouse cannot parse and so would never run)."""
    conn = _chdb()
    try:  # formatQuery parses exactly one statement and runs nothing; a bound parameter carries it
        formatted = conn.query("SELECT formatQuery({q:String})", "TSVRaw", params={"q": statement})
        canonical = formatted.bytes().decode().rstrip("\n")
        ast = conn.query(f"EXPLAIN AST {canonical}", "TSVRaw").bytes().decode()
    except RuntimeError:
        return []
    problems = []
    # split on newlines only: str.splitlines() also breaks at \x1c-\x1e, which a quoted name may hold
    # (a finding of the fuzzer was this oracle's, not the guard's: `"ur=l\x1c"(LECS)`)
    lines = ast.rstrip("\n").split("\n")
    explain = bool(lines) and lines[0].startswith("Explain")
    for line in lines:
        node = line.strip().split(" ")[0]
        if node.startswith(_WRITES):
            problems.append(f"a write ({node})")
        # EXPLAIN's own options (`EXPLAIN indexes = 1 ...`) are a Set right under it; elsewhere a Set is
        # a query's SETTINGS clause
        if node == "Set" and not (explain and line == " Set"):
            problems.append("a SETTINGS clause")
        match = re.match(r"\s*Function (\w+)", line)
        if match and match.group(1).lower() in _OUTSIDE:
            problems.append(f"{match.group(1)}()")
    if lines and lines[0].startswith("SelectWithUnionQuery"):
        for line in lines[1:]:  # INTO OUTFILE and FORMAT hang off the root as its own children
            if line.startswith(" ") and not line.startswith("  ") and not line.startswith(" ExpressionList"):
                problems.append(f"a root clause ({line.strip()})")
    return problems


@cache
def _chdb():
    import chdb

    conn = chdb.connect(":memory:")
    conn.query("SET readonly = 1")  # belt and braces: the oracle itself never writes
    return conn


# --- hub ingest --------------------------------------------------------------------------------------------


def ingest(data: bytes) -> None:
    """Byte 0 picks the table (packets, workloads, agent_stats); the rest is the request body."""
    from netrecall.hub.ingest import TABLES, arrow_types, prepare, read_batch
    from netrecall.ingest.flows import flow_rows

    names = sorted(TABLES)
    table = names[data[0] % len(names)] if data else "packets"
    try:
        batch = prepare(table, read_batch(data[1:]))
    except NetrecallError as exc:
        assert "\n" not in str(exc), f"not one line: {exc}"
        return
    batch.validate(full=True)
    expected = arrow_types(TABLES[table])
    for field in batch.schema:
        assert field.name in expected, f"unknown column {field.name} got through"
        assert field.type in expected[field.name], f"{field.name} is {field.type}, not {expected[field.name]}"
    if table == "packets":
        flow_rows(batch)  # what the hub computes from the batch before the store sees it


TARGETS: dict[str, Target] = {
    "capture": capture,
    "decode": decode,
    "tcp": tcp,
    "http1": stream_target(_dissector("http1", "HttpDissector")),
    "dns": stream_target(_dissector("dns", "DnsTcpDissector")),
    "redis": stream_target(_dissector("redis", "RedisDissector")),
    "postgresql": stream_target(_dissector("postgresql", "PostgresDissector")),
    "kafka": stream_target(_dissector("kafka", "KafkaDissector")),
    "http2": stream_target(_dissector("http2", "Http2Dissector")),
    "tls": stream_target(_dissector("tls", "TlsDissector")),
    "kfl": kfl,
    "sqlguard": sqlguard,
    "ingest": ingest,
}


def warm_up(name: str) -> None:
    """Pay before the clock runs what a target's first inputs would pay once: libFuzzer counts an input
    over 1 s as a hang. A Kafka input naming a dozen APIs imported ~200 of kio's schema modules on its
    first run (1.4 s on a loaded machine; 1 ms the next time): a dissection pays each import once per
    process, when a capture first shows that API and version. The SQL guard's oracle starts its engine,
    and the engine's first syntax error took 2 s in a fresh fuzzing process (`SELECT`, twice at the
    start of a libFuzzer process; 5 ms after)."""
    if name == "sqlguard":
        TARGETS[name](b"SELECT 1")
        TARGETS[name](b"SELECT")
        return
    TARGETS[name](b"")
    if name == "kafka":
        from kio.index import api_key_map

        from netrecall.dissect.protocols.kafka import schema

        for api_key in api_key_map:
            for version in range(32):
                schema(int(api_key), version, True)
                schema(int(api_key), version, False)
