"""The read-only SQL guard: a table of refused statements and functions, a table of allowed analytics,
and chDB itself honouring readonly=1 and the result/time limits behind the guard."""

from __future__ import annotations

import pytest

from netrecall.errors import NetrecallError
from netrecall.query.sqlguard import check_readonly, readonly_settings, run_readonly
from netrecall.store import Store
from tests.kfl_dataset import build_rows, load

REFUSED = [
    ("INSERT INTO packets (node) VALUES ('x')", "INSERT"),
    ("INSERT INTO api_calls SELECT * FROM api_calls", "INSERT"),
    ("ALTER TABLE packets DELETE WHERE 1", "ALTER"),
    ("ALTER TABLE api_calls UPDATE path = '' WHERE 1", "ALTER"),
    ("DROP TABLE packets", "DROP"),
    ("DROP DATABASE netrecall", "DROP"),
    ("CREATE TABLE x (a Int8) ENGINE = Memory", "CREATE"),
    ("CREATE VIEW v AS SELECT 1", "CREATE"),
    ("TRUNCATE TABLE packets", "TRUNCATE"),
    ("RENAME TABLE packets TO p2", "RENAME"),
    ("DETACH TABLE packets", "DETACH"),
    ("ATTACH TABLE packets", "ATTACH"),
    ("SYSTEM FLUSH LOGS", "SYSTEM"),
    ("SYSTEM SHUTDOWN", "SYSTEM"),
    ("SET readonly = 0", "SET"),
    ("KILL QUERY WHERE 1", "KILL"),
    ("OPTIMIZE TABLE packets FINAL", "OPTIMIZE"),
    ("GRANT ALL ON *.* TO default", "GRANT"),
    ("REVOKE ALL ON *.* FROM default", "REVOKE"),
    ("USE system", "USE"),
    ("SELECT * FROM file('/etc/passwd', 'LineAsString')", "file()"),
    ("SELECT * FROM url('http://169.254.169.254/latest', 'LineAsString')", "url()"),
    ("SELECT * FROM s3('https://bucket/x.csv')", "s3()"),
    ("SELECT * FROM remote('127.0.0.1', default.packets)", "remote()"),
    ("SELECT * FROM remoteSecure('h:9440', db.t)", "remoteSecure()"),
    ("SELECT * FROM mysql('h:3306', 'db', 't', 'u', 'p')", "mysql()"),
    ("SELECT * FROM postgresql('h:5432', 'db', 't', 'u', 'p')", "postgresql()"),
    ("SELECT * FROM jdbc('jdbc:x', 't')", "jdbc()"),
    ("SELECT * FROM odbc('DSN=x', 't')", "odbc()"),
    ("SELECT * FROM hdfs('hdfs://h/x', 'TSV', 'a Int8')", "hdfs()"),
    ("SELECT * FROM executable('script.sh', 'TSV', 'a Int8')", "executable()"),
    ("SELECT * FROM input('a Int8')", "input()"),
    ("SELECT * FROM cluster('default', system.one)", "cluster()"),
    ("SELECT * FROM clusterAllReplicas('default', system.one)", "clusterAllReplicas()"),
    ("SELECT * FROM dictionary('d')", "dictionary()"),
    ("SELECT dictGet('d', 'a', toUInt64(1))", "dictGet()"),
    ("SELECT * FROM merge('system', '.*')", "merge()"),
    ("SELECT * FROM Python(arrow_table)", "Python()"),
    ("SELECT * FROM sqlite('/tmp/x.db', 't')", "sqlite()"),
    ("SELECT * FROM api_calls WHERE id IN (SELECT * FROM file('x', 'LineAsString'))", "file()"),
    ("WITH (SELECT 1 FROM url('http://x', CSV)) AS a SELECT a", "url()"),
    ("SELECT sleepEachRow(3) FROM numbers(100)", "sleepEachRow()"),
    ("SELECT * FROM api_calls INTO OUTFILE '/tmp/x.csv'", "INTO OUTFILE"),
    ("SELECT * FROM system.query_log", "system.query_log"),
    ("SELECT * FROM system.users", "system.users"),
    ("SELECT * FROM system.processes", "system.processes"),
    ("SELECT query FROM system.query_log UNION ALL SELECT 'x'", "system.query_log"),
    ("SELECT 1; SELECT 2", "multiple statements"),
    ("SELECT 1; DROP TABLE packets", "multiple statements"),
    ("SELECT 1 SETTINGS readonly = 0", "SETTINGS"),
    ("SELECT 1 SETTINGS max_execution_time = 100000", "SETTINGS"),
    ("SELECT 1 FORMAT Native", "FORMAT"),
    ("SHOW PROCESSLIST", "SHOW"),
    ("SHOW GRANTS", "SHOW"),
    ("SHOW USERS", "SHOW"),
    ("EXPLAIN INSERT INTO packets SELECT * FROM packets", "INSERT"),
    ("EXPLAIN SELECT * FROM file('x')", "file()"),
    ("DESCRIBE TABLE file('x', 'LineAsString')", "file()"),
    ("", "empty"),
    # sqlglot's parser backtracks through JOINs that lack their ON/USING, its time ~1.8x per JOIN
    ("SELECT 1 FROM api_calls" + " JOIN flows" * 9, "more than 8 JOINs without ON or USING"),
    ("SELECT 1 FROM t" + " LEFT JOIN a.b.c.d" * 12, "more than 8 JOINs without ON or USING"),
    # ... and through `IF+IF+...`, its time doubling with each: a budget of backtracking refuses it
    ("SELECT " + "+".join(["IF"] * 16), "would take too long"),
    # ... and through calls nested in calls' `LIMIT n,` arguments
    ("SELECT " + "f(x LIMIT 5, " * 12 + "1" + ")" * 12, "would take too long"),
]

ALLOWED = [
    "SELECT count() FROM api_calls",
    "select protocol, count() AS c from api_calls group by protocol order by c desc limit 10",
    "WITH errors AS (SELECT * FROM api_calls WHERE status_code >= 500) "
    "SELECT dst_service, count() FROM errors GROUP BY dst_service",
    "SELECT a.id, f.packets_ab FROM api_calls AS a LEFT JOIN flows AS f ON a.flow_id = f.flow_id LIMIT 5",
    "SELECT id, status_code, row_number() OVER (PARTITION BY protocol ORDER BY ts) AS n FROM api_calls",
    "SELECT quantile(0.99)(elapsed_time) FROM api_calls WHERE protocol = 'http'",
    "SELECT * FROM packets WHERE src_ip = toIPv6('::ffff:10.0.0.1') LIMIT 1",
    "SELECT 1 UNION ALL SELECT 2",
    "SELECT number FROM numbers(5)",
    "SELECT name, total_rows FROM system.tables WHERE database = currentDatabase()",
    "SELECT table, sum(bytes_on_disk) FROM system.parts GROUP BY table",
    "SELECT * FROM system.one",
    "EXPLAIN SELECT count() FROM api_calls",
    "EXPLAIN indexes = 1 SELECT count() FROM api_calls WHERE status_code >= 500",
    "EXPLAIN PLAN indexes = 1 SELECT id FROM api_calls",
    "EXPLAIN SYNTAX SELECT 1",
    "SHOW TABLES",
    "SHOW CREATE TABLE api_calls",
    "SHOW DATABASES",
    "DESCRIBE api_calls",
    "DESC TABLE packets",
    "EXISTS TABLE api_calls",
    "SELECT arrayJoin(dns_questions) AS q, count() FROM api_calls GROUP BY q",
    "SELECT mapKeys(request_headers) FROM api_calls LIMIT 3;",
]


@pytest.mark.parametrize(("sql", "named"), REFUSED)
def test_guard_refuses(sql: str, named: str) -> None:
    with pytest.raises(NetrecallError) as caught:
        check_readonly(sql)
    message = str(caught.value)
    assert message.startswith("refused:") and "\n" not in message
    assert named.lower() in message.lower(), message


@pytest.mark.parametrize("name", ["url\n", "url\r\nx", "url\x1cx", "url\u2028x"])
def test_a_refusal_quoting_a_line_break_is_one_line(name: str) -> None:
    """The refusal names what it quotes with its line breaks escaped (fuzz/sqlguard: a table function
    `"url\xff\n..."()` gave a refusal of several lines)."""
    with pytest.raises(NetrecallError) as refused:
        check_readonly(f'SELECT * FROM "{name}"()')
    message = str(refused.value)
    assert len(message.splitlines()) == 1 and "table function url" in message


@pytest.mark.parametrize("sql", ALLOWED)
def test_guard_allows_analytics(sql: str) -> None:
    assert check_readonly(sql)


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT 1 FROM api_calls" + " JOIN flows" * 8,  # as many JOINs lacking ON/USING as the guard takes
        "SELECT 1 FROM api_calls AS a" + " LEFT JOIN flows AS f ON a.flow_id = f.flow_id" * 40,
        "SELECT 1 FROM api_calls" + " CROSS JOIN flows" * 20 + " ARRAY JOIN dns_questions" * 20,
    ],
)
def test_guard_parses_joins_that_do_not_backtrack(sql: str) -> None:
    """The JOIN limit counts only JOINs that want a condition and lack it (the guard's own verdict:
    ClickHouse refuses the first statement for its missing ON)."""
    assert check_readonly(sql) == sql


@pytest.fixture
def loaded(store: Store) -> Store:
    load(store, build_rows())
    return store


@pytest.mark.parametrize("sql", ALLOWED)
def test_allowed_statements_run_in_chdb(loaded: Store, sql: str) -> None:
    result = run_readonly(loaded, sql, max_rows=50)
    assert result["columns"] and isinstance(result["rows"], list) and len(result["rows"]) <= 50


def test_results_are_cut_at_max_rows(loaded: Store) -> None:
    result = run_readonly(loaded, "SELECT number FROM numbers(1000000)", max_rows=10)
    assert result["rows"] == [[i] for i in range(10)] and result["truncated"] is True
    whole = run_readonly(loaded, "SELECT id FROM api_calls", max_rows=1000)
    assert len(whole["rows"]) == 240 and whole["truncated"] is False


def test_chdb_honours_readonly_and_limits_behind_the_guard(loaded: Store) -> None:
    """The second wall, tested without the guard: the same settings on raw statements."""
    client = loaded.client
    settings = readonly_settings(max_rows=5, max_seconds=1)
    assert list(settings)[-1] == "readonly"  # readonly last, or the engine refuses the other settings
    # Only SELECT-shaped statements here: clickhouse-connect's chDB backend applies the settings of INSERT
    # and DDL statements with SET and cannot restore readonly=0 afterwards (the engine refuses), leaving
    # the whole embedded session read-only. The guard never lets such a statement reach the engine.
    for sql in (
        "SELECT * FROM file('/etc/hostname', 'LineAsString')",
        "SELECT * FROM url('http://127.0.0.1:9/', 'LineAsString')",
        "SELECT 1 SETTINGS readonly = 0",
    ):
        with pytest.raises(Exception, match=r"(?i)readonly"):
            client.query(sql, settings=settings)
    with pytest.raises(Exception, match=r"(?i)timeout|TIMEOUT_EXCEEDED"):
        client.query("SELECT count() FROM numbers(100000000000)", settings=settings)
    rows = client.query("SELECT number FROM numbers(1000000)", settings=settings).result_rows
    assert 6 <= len(rows) < 1_000_000  # 'break' stops at a block boundary past the limit
    big = client.query(
        "SELECT repeat(toString(number), 100) FROM numbers(200000)",
        settings={**readonly_settings(max_rows=10**9, max_seconds=20), "max_result_bytes": 100_000},
    ).result_rows
    assert len(big) < 200_000
    # the session stays writable for everyone else afterwards
    loaded.command("CREATE TABLE after_guard (a Int8) ENGINE = Memory")
    assert loaded.scalar("EXISTS TABLE after_guard") == 1


def test_runtime_errors_are_one_line(loaded: Store) -> None:
    with pytest.raises(NetrecallError) as caught:
        run_readonly(loaded, "SELECT no_such_column FROM api_calls")
    assert "\n" not in str(caught.value) and "no_such_column" in str(caught.value)


def test_snapshot_rewrite_reads_the_snapshot_copy(loaded: Store) -> None:
    rows = build_rows(5)
    loaded.command(
        "INSERT INTO snapshot_api_calls SELECT 'snap1', * FROM api_calls WHERE id IN {ids:Array(String)}",
        {"ids": [r["id"] for r in rows]},
    )
    result = run_readonly(loaded, "SELECT count() AS n FROM api_calls WHERE protocol != ''", snapshot="snap1")
    assert result["rows"] == [[5]]
    assert run_readonly(loaded, "SELECT count() FROM api_calls a", snapshot="other")["rows"] == [[0]]
