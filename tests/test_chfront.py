"""The HTTP test front itself: the ClickHouse HTTP protocol features clickhouse-connect relies on.

If the front were lenient where a server is strict (or the reverse), the HTTP store suite would prove
nothing, so each protocol piece is checked here with raw HTTP and with clickhouse-connect's own client.
"""

from __future__ import annotations

import gzip
import json
import threading
import urllib.request
import uuid
import zlib
from urllib.parse import urlencode

import clickhouse_connect
import httpx
import lz4.frame
import pyarrow as pa
import pytest
import zstandard


@pytest.fixture
def database(chfront):
    name = f"f_{uuid.uuid4().hex[:10]}"
    httpx.post(chfront.url, content=f"CREATE DATABASE {name}").raise_for_status()
    yield name
    httpx.post(chfront.url, content=f"DROP DATABASE IF EXISTS {name}")


def client(chfront, database: str, compress: str | bool = "lz4"):
    port = int(chfront.url.rsplit(":", 1)[1])
    return clickhouse_connect.get_client(
        host="127.0.0.1", port=port, database=database, compress=compress, autogenerate_session_id=False
    )


def test_ping_and_root(chfront):
    assert httpx.get(f"{chfront.url}/ping").text == "Ok.\n"
    assert chfront.nodelay == {1}  # TCP_NODELAY on every accepted connection, as the server sets it
    assert httpx.get(f"{chfront.url}/").text == "Ok.\n"
    assert httpx.get(f"{chfront.url}/nope").status_code == 404


def test_query_in_url_body_or_both(chfront):
    url = chfront.url
    assert httpx.get(url, params={"query": "SELECT 1 + 1"}).text == "2\n"
    assert httpx.post(url, content="SELECT 'body'").text == "body\n"
    # ClickHouse appends the body to the URL query
    assert httpx.post(url, params={"query": "SELECT 1"}, content=" + 41").text == "42\n"
    reply = httpx.post(url, params={"query": "SELECT 1 AS x", "default_format": "JSONEachRow"})
    assert reply.text == '{"x":1}\n' and reply.headers["X-ClickHouse-Format"] == "JSONEachRow"


def test_headers_and_result_formats(chfront):
    reply = httpx.post(chfront.url, content="SELECT number FROM numbers(3) FORMAT Native")
    assert reply.headers["X-ClickHouse-Format"] == "Native"
    assert json.loads(reply.headers["X-ClickHouse-Summary"])["read_rows"] == "3"
    assert reply.headers["X-ClickHouse-Query-Id"]
    assert reply.headers["X-ClickHouse-Timezone"] == chfront.timezone
    ddl = httpx.post(chfront.url, content="CREATE DATABASE IF NOT EXISTS default")
    assert ddl.status_code == 200 and "X-ClickHouse-Format" not in ddl.headers  # no result set
    empty = httpx.post(chfront.url, content="SELECT 1 WHERE 0")
    assert empty.text == "" and empty.headers["X-ClickHouse-Format"] == "TabSeparated"


def test_errors_carry_code_header_and_status_500(chfront):
    reply = httpx.post(chfront.url, content="SELECT * FROM nowhere.nothing")
    assert reply.status_code == 500
    assert reply.headers["X-ClickHouse-Exception-Code"] in ("60", "81")
    assert reply.text.startswith(f"Code: {reply.headers['X-ClickHouse-Exception-Code']}. DB::Exception:")
    empty = httpx.post(chfront.url, content="")
    assert empty.text == "Ok.\n"  # an empty POST is a ping, like the server's root handler
    unknown_setting = httpx.post(chfront.url, params={"no_such_setting": "1"}, content="SELECT 1")
    assert unknown_setting.headers["X-ClickHouse-Exception-Code"] == "115"


def test_url_settings_reach_the_engine(chfront):
    params = {"max_result_rows": "1", "result_overflow_mode": "throw"}
    reply = httpx.post(chfront.url, params=params, content="SELECT number FROM numbers(10)")
    assert reply.status_code == 500 and reply.headers["X-ClickHouse-Exception-Code"] == "396"
    # and do not leak into the next request (each request has its own handle)
    assert httpx.post(chfront.url, content="SELECT count() FROM numbers(10)").text == "10\n"


def test_database_and_server_side_binds(chfront, database):
    query = {"query": "SELECT currentDatabase(), {s:String}, {n:UInt8}", "database": database}
    reply = httpx.get(chfront.url + "?" + urlencode({**query, "param_s": "a\\tb'c", "param_n": "7"}))
    assert reply.text == f"{database}\ta\\tb\\'c\t7\n"  # TSV escapes the quote, as a server does
    missing = httpx.get(chfront.url, params={"query": "SELECT 1", "database": "no_such_db"})
    assert missing.headers["X-ClickHouse-Exception-Code"] == "81"


@pytest.mark.parametrize(
    ("encoding", "pack"),
    [("lz4", lz4.frame.compress), ("zstd", zstandard.ZstdCompressor().compress), ("gzip", gzip.compress)],
)
def test_compressed_request_bodies(chfront, encoding, pack):
    reply = httpx.post(chfront.url, content=pack(b"SELECT 'packed'"), headers={"Content-Encoding": encoding})
    assert reply.text == "packed\n"


UNPACK = {
    "lz4": lz4.frame.decompress,
    "zstd": lambda data: zstandard.ZstdDecompressor().stream_reader(data).read(),
    "gzip": gzip.decompress,
    "deflate": zlib.decompress,
}


@pytest.mark.parametrize("encoding", sorted(UNPACK))
def test_compressed_responses_when_asked(chfront, encoding):
    def fetch(enabled: str) -> tuple[str | None, bytes]:
        query = urlencode({"query": "SELECT repeat('x', 1000)", "enable_http_compression": enabled})
        request = urllib.request.Request(f"{chfront.url}/?{query}", headers={"Accept-Encoding": encoding})
        with urllib.request.urlopen(request) as reply:  # urllib never decodes: the raw body is checked
            return reply.headers.get("Content-Encoding"), reply.read()

    used, body = fetch("1")
    assert used == encoding and len(body) < 1000
    assert UNPACK[encoding](body) == b"x" * 1000 + b"\n"
    assert fetch("0") == (None, b"x" * 1000 + b"\n")


@pytest.mark.parametrize("compress", ["lz4", "zstd", "gzip", False])
def test_clickhouse_connect_native_and_arrow_inserts(chfront, database, compress):
    ch = client(chfront, database, compress)
    assert ch.ping() and ch.server_version == chfront.version  # the connect-time probes were answered
    ch.command(
        "CREATE TABLE t (s String, ip IPv6, m Map(String, String), a Array(UInt32))"
        " ENGINE = MergeTree ORDER BY s"
    )
    rows = [[b"\x00\xff" * i, f"::ffff:10.0.0.{i}", {"k": str(i)}, list(range(i))] for i in range(1, 200)]
    ch.insert("t", rows, column_names=["s", "ip", "m", "a"])  # Native body, Content-Encoding = compress
    arrow = pa.table(
        {
            "s": pa.array([b"\x00arrow\xff"], pa.binary()),
            "ip": pa.array([bytes(15) + b"\x01"], pa.binary(16)),
            "m": pa.array([{"a": "b"}], pa.map_(pa.string(), pa.string())),
            "a": pa.array([[1]], pa.list_(pa.uint32())),
        }
    )
    ch.insert_arrow("t", arrow)  # Arrow IPC body (compressed inside when lz4/zstd)
    assert ch.command("SELECT count() FROM t") == 200
    back = ch.query(
        "SELECT s, toString(ip), m, a FROM t ORDER BY length(s), s", column_formats={"s": "bytes"}
    )
    assert back.result_rows[0] == (b"\x00\xff", "::ffff:10.0.0.1", {"k": "1"}, [0])
    assert (b"\x00arrow\xff", "::1", {"a": "b"}, [1]) in back.result_rows
    table = ch.query_arrow("SELECT s FROM t ORDER BY length(s) DESC LIMIT 1", use_strings=False)
    assert table.column("s").to_pylist() == [b"\x00\xff" * 199]
    with ch.query_arrow_stream("SELECT number FROM numbers(100000)") as stream:
        assert sum(batch.num_rows for batch in stream) == 100000
    ch.close()
    if compress:
        assert compress in chfront.encodings


def test_insert_text_formats_and_inline_values(chfront, database):
    ch = client(chfront, database)
    ch.command("CREATE TABLE t (a UInt32, b String) ENGINE = Memory")
    ch.command("INSERT INTO t FORMAT TabSeparated", data="1\tone\n2\ttwo\n")
    ch.command("INSERT INTO t VALUES (3, 'FORMAT Native')")  # FORMAT inside data is not a format clause
    httpx.post(chfront.url, params={"database": database}, content=b'INSERT INTO t FORMAT CSV\n4,"four"\n')
    assert ch.query("SELECT a, b FROM t ORDER BY a").result_rows == [
        (1, "one"),
        (2, "two"),
        (3, "FORMAT Native"),
        (4, "four"),
    ]
    ch.close()


def test_busy_session_is_locked_like_a_server(chfront):
    session = uuid.uuid4().hex
    slow = threading.Thread(
        target=httpx.post,
        args=(chfront.url,),
        kwargs={"params": {"session_id": session}, "content": "SELECT sleep(1)", "timeout": 10},
    )
    slow.start()
    try:
        for _ in range(50):
            threading.Event().wait(0.02)
            reply = httpx.post(chfront.url, params={"session_id": session}, content="SELECT 1")
            if reply.status_code == 500:
                break
        assert reply.headers["X-ClickHouse-Exception-Code"] == "373"
    finally:
        slow.join()
    assert httpx.post(chfront.url, params={"session_id": session}, content="SELECT 1").text == "1\n"


def test_long_bind_parameters_travel_as_form_data(chfront, database):
    ch = client(chfront, database)
    long_text = "y" * 50_000 + "'\\\n"
    assert ch.query("SELECT length({s:String})", parameters={"s": long_text}).result_rows == [
        (len(long_text),)
    ]
    ch.close()
