"""KFL parser, type checker and compiler: precedence, errors with carets and suggestions, legacy
spellings, flows routing, property tests (random trees, hostile literals) and index use (EXPLAIN)."""

from __future__ import annotations

import re

import pytest
import sqlglot
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlglot import exp

from netrecall.errors import NetrecallError
from netrecall.query.calls import build_list_sql
from netrecall.query.kfl import KflError, compile_filter, parse
from netrecall.query.kfl.nodes import Binary, Call, Ident, Literal, Select, Unary, to_text
from netrecall.store import Store
from netrecall.timeutil import parse_time_ns
from tests.kfl_dataset import NOW_NS, build_rows, load
from tests.kfl_reference import evaluate

# --- parsing ---------------------------------------------------------------------------------------------


def test_precedence_follows_cel() -> None:
    tree = parse("a || b && c == 1 + 2 * 3")
    assert isinstance(tree, Binary) and tree.op == "||"
    right = tree.right
    assert isinstance(right, Binary) and right.op == "&&"
    cmp = right.right
    assert isinstance(cmp, Binary) and cmp.op == "=="
    add = cmp.right
    assert isinstance(add, Binary) and add.op == "+" and isinstance(add.right, Binary) and add.right.op == "*"
    assert to_text(parse("!a && b")) == "(!(a) && b)"
    assert to_text(parse("x in [1, 2] && y")) == "((x in [1, 2]) && y)"
    assert to_text(parse("a - b - c")) == "((a - b) - c)"  # left-associative
    assert to_text(parse("c ? a : b ? d : e")) == "(c ? a : (b ? d : e))"


def test_members_indexes_calls_and_literals() -> None:
    tree = parse("request.headers[\"x\"].startsWith('a\\n')")
    assert isinstance(tree, Call) and tree.name == "startsWith"
    assert tree.args == (Literal(tree.args[0].pos, "a\n", "string"),)
    assert isinstance(parse("src.pod.name"), Select)
    assert parse("0x1F").value == 31 and parse("1.5e3").value == 1500.0 and parse("7u").kind == "uint"
    assert parse(r'r"\d+"').value == r"\d+"
    assert parse('"""a"b"""').value == 'a"b'
    assert parse('"\\u00e9\\x41\\101"').value == "éAA"
    assert parse("  ") is None and parse("") is None
    assert isinstance(parse("-x"), Unary) and parse("-5").value == -5


@pytest.mark.parametrize(
    ("text", "message", "position"),
    [
        ("statuscode >= 500", "did you mean status_code?", 0),
        ('http && dst.pod.namspace == "x"', "did you mean dst.pod.namespace?", 8),
        ("http && status >= 500", "did you mean status_code?", 8),
        ('status_code == "500"', "cannot compare int with string", 12),
        ("http && method == 5", "cannot compare string with int", 15),
        ('status_code.contains("5")', ".contains() needs a string", 0),
        ("http &&", "ends too early", 7),
        ("http & dns", "use '&&'", 5),
        ('method = "GET"', "use '=='", 7),
        ('path == "abc', "unterminated string", 8),
        ('path.matches("(")', "invalid regular expression", 13),
        ('path.matches("(?=x)")', "lookaround", 13),
        ('timestamp > now() - duration("5 minutes")', "invalid duration", 29),
        ('timestamp > timestamp("yesterday")', "invalid time", 22),
        ("status_code", "must be a condition", 0),
        ("sise(path) > 1", "did you mean size()?", 0),
        ("http dns", "join conditions with && or ||", 5),
        ("size(status_code) > 1", "size() needs a string, list or map", 5),
        ('"x" in method', "`in` needs a list or a map", 7),
        ("status_code == null", "KFL has no null", 15),
        ("request.headers == response.headers", "maps cannot be compared", 16),
        ("(http", "expected ')'", 5),
        ("http && !", "ends too early", 9),
        ("dns_questions.exists(q, q > 1)", "cannot compare string with int", 26),
        ('conn_local_bytes > 1 && http_version == "x"', "unknown field 'http_version'", 24),
        ("status_code == 99999999999999999999", "out of range", 15),
    ],
)
def test_errors_point_at_the_offending_character(text: str, message: str, position: int) -> None:
    with pytest.raises(KflError) as caught:
        compile_filter(text)
    error = caught.value
    assert message in str(error), str(error)
    assert error.position == position, (error.position, str(error))
    assert isinstance(error, NetrecallError)
    lines = str(error).splitlines()
    assert lines[-2] == "  " + text and lines[-1] == "  " + " " * position + "^"


def test_long_chains_are_balanced_and_deep_nesting_is_refused(store: Store) -> None:
    chain = " && ".join(["status_code >= 0"] * 3000)  # 3000 terms: a balanced tree, not 3000 levels
    compiled = compile_filter(chain)
    assert store.scalar(f"SELECT count() FROM api_calls WHERE {compiled.where}", compiled.params) == 0
    assert to_text(parse("a && b && c && d || e")) == "(((a && b) && (c && d)) || e)"
    for text in ("1 + " * 1000 + "1 == 1", "!" * 5000 + "http", "(" * 300 + "http" + ")" * 300):
        with pytest.raises(KflError, match="nested too deeply"):
            compile_filter(text)
    # up to the limit, deep filters compile and run
    for text in ("1 + " * 60 + "1 == 61", "!" * 60 + "http", "(" * 60 + "http" + ")" * 60):
        compiled = compile_filter(text)
        store.scalar(f"SELECT count() FROM api_calls WHERE {compiled.where}", compiled.params)


def test_non_utf8_input_is_refused_cleanly() -> None:
    raw = b'path == "\xff\xfe"'.decode("utf-8", "surrogateescape")  # what argv holds for invalid UTF-8
    with pytest.raises(KflError) as caught:
        compile_filter(raw)
    assert "not valid UTF-8" in str(caught.value) and caught.value.position == 9


def test_legacy_spellings_are_accepted_with_notes() -> None:
    legacy = compile_filter('response.status == 500 and request.method == "GET" or not src.ns == "a"')
    modern = compile_filter('status_code == 500 && method == "GET" || !(src.namespace == "a")')
    assert legacy.where == modern.where and legacy.params == modern.params
    joined = " ".join(legacy.notes)
    for word in ("'response.status'", "status_code", "'and'", "'src.ns'"):
        assert word in joined


def test_empty_filter_means_everything() -> None:
    assert compile_filter("").where == "1" and compile_filter(" \n ").params == {}


def test_every_literal_is_a_parameter() -> None:
    compiled = compile_filter(
        'http && path.startsWith("/api") && status_code in [500, 503] && elapsed_time > 1.5 && '
        'map_get(local_labels, "app", "none") == "checkout" && dns_questions.exists(q, q == "a.b")'
    )
    assert "'/api'" not in compiled.where and "500" not in compiled.where and "checkout" not in compiled.where
    placeholders = set(re.findall(r"\{(p\d+): ?[A-Za-z0-9()]+\}", compiled.where))
    assert placeholders == set(compiled.params)
    assert sorted(compiled.params.values(), key=str) == sorted(
        ["/api", 500, 503, 1.5, "app", "none", "checkout", "a.b"], key=str
    )


def test_index_friendly_rewrites() -> None:
    ip = compile_filter('src.ip == "10.1.2.3"')
    assert ip.where == "src_ip = {p0: IPv6}" and ip.params == {"p0": "::ffff:10.1.2.3"}
    proto = compile_filter('protocol == "HTTP"')
    assert proto.params == {"p0": "http"}
    like = compile_filter('path.contains("50%_off")')
    assert "LIKE" in like.where and like.params == {"p0": "%50\\%\\_off%"}
    window = compile_filter('timestamp > now() - duration("5m")', now_ns=10**18)
    (name,) = window.params
    assert window.where == f"ts > fromUnixTimestamp64Nano({{{name}: Int64}})"
    assert window.params == {name: 10**18 - 300 * 10**9}


def test_flow_filters_route_to_flows_and_run(store: Store) -> None:
    compiled = compile_filter('tcp_flow && conn_local_bytes > 1000 && src.pod.namespace == "prod"')
    assert compiled.table == "flows"
    assert compile_filter("tcp", table="flows").table == "flows"
    assert compile_filter("tcp").table == "api_calls"
    for text in (
        'conn && conn_state == "closed"',
        "flow && flow_remote_pkts > 2 && udp",
        '"prod" in namespaces && conn',
        "conn && retransmissions > 0 && resets == 0",
    ):
        found = compile_filter(text)
        assert found.table == "flows"
        assert store.scalar(f"SELECT count() FROM flows WHERE {found.where}", found.params) == 0
    with pytest.raises(NetrecallError, match="L4 flows"):
        build_list_sql("conn", "api_calls", "1", 10)


# --- property tests -------------------------------------------------------------------------------------

STRING_FIELDS = ["method", "path", "url", "src.pod.name", "dst.namespace", "protocol", "src.ip", "dst.name"]
INT_FIELDS = ["status_code", "elapsed_time", "src.port", "response_body_size", "grpc_status"]
BOOL_FIELDS = ["http", "dns", "dns_response", "partial", "has_response"]


def _field(name: str):
    parts = name.split(".")
    node = Ident(0, parts[0])
    for part in parts[1:]:
        node = Select(0, node, part)
    return node


strings = st.text(max_size=12)
string_exprs = st.one_of(
    st.sampled_from(STRING_FIELDS).map(_field),
    strings.map(lambda s: Literal(0, s, "string")),
    st.tuples(st.just("request.headers"), strings).map(
        lambda t: Call(
            0, None, "map_get", (_field(t[0]), Literal(0, t[1], "string"), Literal(0, "", "string"))
        ),
    ),
)
int_exprs = st.recursive(
    st.one_of(
        st.sampled_from(INT_FIELDS).map(_field), st.integers(-1000, 1000).map(lambda i: Literal(0, i, "int"))
    ),
    lambda inner: st.tuples(st.sampled_from(["+", "-", "*", "/", "%"]), inner, inner).map(
        lambda t: Binary(0, t[0], t[1], t[2])
    ),
    max_leaves=2,  # keeps products inside Int64: ClickHouse wraps where Python grows
)
atoms = st.one_of(
    st.sampled_from(BOOL_FIELDS).map(_field),
    st.tuples(st.sampled_from(["==", "!=", "<", ">="]), int_exprs, int_exprs).map(lambda t: Binary(0, *t)),
    st.tuples(st.sampled_from(["==", "!="]), string_exprs, string_exprs).map(lambda t: Binary(0, *t)),
    st.tuples(string_exprs, st.sampled_from(["contains", "startsWith", "endsWith"]), strings).map(
        lambda t: Call(0, t[0], t[1], (Literal(0, t[2], "string"),))
    ),
    st.tuples(string_exprs, st.lists(strings, min_size=1, max_size=3)).map(
        lambda t: Binary(0, "in", t[0], _list(t[1]))
    ),
    strings.map(lambda s: Binary(0, "in", Literal(0, s, "string"), _field("namespaces"))),
    strings.map(
        lambda s: Call(
            0,
            _field("dns_questions"),
            "exists",
            (Ident(0, "q"), Call(0, Ident(0, "q"), "endsWith", (Literal(0, s, "string"),))),
        )
    ),
)
bool_exprs = st.recursive(
    atoms,
    lambda inner: st.one_of(
        st.tuples(st.sampled_from(["&&", "||"]), inner, inner).map(lambda t: Binary(0, *t)),
        inner.map(lambda n: Unary(0, "!", n)),
    ),
    max_leaves=6,
)


def _list(values: list[str]):
    from netrecall.query.kfl.nodes import ListExpr

    return ListExpr(0, tuple(Literal(0, v, "string") for v in values))


@settings(max_examples=300, deadline=None)
@given(bool_exprs)
def test_random_trees_compile_to_sql_that_parses_back(tree) -> None:
    text = to_text(tree)
    assert to_text(parse(text)) == text  # the printer and the parser agree
    compiled = compile_filter(text)
    reparsed = sqlglot.parse_one(f"SELECT 1 FROM api_calls WHERE {compiled.where}", read="clickhouse")
    assert reparsed.find(exp.Where) is not None
    assert set(re.findall(r"\{(p\d+):", compiled.where)) == set(compiled.params)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(bool_exprs)
def test_random_trees_run_in_chdb_and_agree_with_the_reference(loaded: Store, tree) -> None:
    text = to_text(tree)
    compiled = compile_filter(text, now_ns=NOW_NS)
    got = {r[0] for r in loaded.rows(f"SELECT id FROM api_calls WHERE {compiled.where}", compiled.params)}
    want = {row["id"] for row in ROWS if evaluate(parse(text), row, NOW_NS)}
    assert got == want, (text, compiled.where)


HOSTILE = [
    "'); DROP TABLE packets; --",
    '"; DROP TABLE packets; --',
    "\\",
    "\\'",
    "a'b\"c`d",
    "{p0:String}",
    "}{",
    "\x00",
    "nul\x00inside",
    "\xff\xfe",  # code points U+00FF U+00FE: valid text
    "\u2028\U0001f600",
    "x" * 10_000,
    "' OR 1=1 --",
    "/* comment */",
    "%_",
    "\n\r\t",
]
TEMPLATES = [
    "path == LIT",
    "path.contains(LIT)",
    "LIT in request.headers",
    'map_get(local_labels, LIT, LIT) == "x"',
    "method in [LIT, LIT]",
    "dns_questions.exists(q, q.startsWith(LIT))",
    "path.matches(LIT)",
    'request.headers[LIT] == "v"',
]


def _kfl_string(value: str) -> str:
    return to_text(Literal(0, value, "string"))


@pytest.mark.parametrize("template", TEMPLATES)
def test_hostile_literals_never_change_the_statement(template: str) -> None:
    benign = compile_filter(template.replace("LIT", '"benign"'))
    for value in HOSTILE:
        if template.startswith("path.matches") and value not in ("x" * 10_000, "%_", "/* comment */"):
            continue  # most hostile strings are not regular expressions
        hostile = compile_filter(template.replace("LIT", _kfl_string(value)))
        assert hostile.where == benign.where  # identical text: the value cannot reach the structure
        assert _shape(hostile.where) == _shape(benign.where)
        if len(value) > 2:
            assert value not in hostile.where
        escaped = value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        assert any(v == value or (isinstance(v, str) and escaped in v) for v in hostile.params.values())


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_any_literal_is_bound_not_spliced(value: str) -> None:
    benign = compile_filter('path == "benign" || "benign" in request.headers')
    compiled = compile_filter(f"path == {_kfl_string(value)} || {_kfl_string(value)} in request.headers")
    assert compiled.where == benign.where
    assert list(compiled.params.values()) == [value, value]


def _shape(sql: str) -> list[str]:
    tree = sqlglot.parse_one(f"SELECT 1 FROM t WHERE {sql}", read="clickhouse")
    return [type(node).__name__ for node in tree.walk()]


def test_hostile_values_round_trip_through_chdb(store: Store) -> None:
    rows = build_rows(len(HOSTILE))
    for row, value in zip(rows, HOSTILE, strict=True):
        row["path"] = value
        row["request_headers"] = {value: "v"}
    load(store, rows)
    for row, value in zip(rows, HOSTILE, strict=True):
        for template in ("path == LIT", "LIT in request.headers", 'request.headers[LIT] == "v"'):
            compiled = compile_filter(template.replace("LIT", _kfl_string(value)))
            sql = f"SELECT id FROM api_calls WHERE {compiled.where}"
            found = [r[0] for r in store.rows(sql, compiled.params)]
            assert found == [row["id"]], (template, value[:40])
    assert store.scalar("EXISTS TABLE packets") == 1


# --- index use ------------------------------------------------------------------------------------------

ROWS = build_rows()


@pytest.fixture
def loaded(store: Store) -> Store:
    load(store, ROWS)
    return store


def _granules(plan: list[str], marker: str) -> tuple[int, int]:
    """The 'Granules: x/y' line following the line containing `marker` in an EXPLAIN indexes = 1 plan."""
    for index, line in enumerate(plan):
        if marker in line:
            for following in plan[index + 1 :]:
                match = re.search(r"Granules: (\d+)/(\d+)", following)
                if match:
                    return int(match.group(1)), int(match.group(2))
    raise AssertionError(f"{marker} not in plan:\n" + "\n".join(plan))


def test_explain_shows_time_key_and_skip_indexes_pruning(store: Store) -> None:
    from bench.synthetic_calls import insert_synthetic_calls

    start = parse_time_ns("2026-03-14T00:00:00Z")
    insert_synthetic_calls(store, 200_000, start, span_s=3 * 3600)
    # A later batch with a namespace and a status the first batch never has: skip indexes can drop
    # every granule of the first part for them.
    store.command(
        "INSERT INTO api_calls (id, ts, protocol, src_namespace, dst_namespace, status_code, path) "
        "SELECT toString(number), fromUnixTimestamp64Nano(toInt64({s:Int64}) + number * 100000000), 'http', "
        "'rare-ns', 'rare-ns', 599, '/rare' FROM numbers(20000)",
        {"s": start + 4 * 3600 * 10**9},
    )

    def plan(kfl: str, since: int, until: int) -> list[str]:
        query = build_list_sql(kfl, "api_calls", "1", 100)
        params = {**query.params, "since_ns": since, "until_ns": until}
        return [r[0] for r in store.rows("EXPLAIN indexes = 1 " + query.count_sql, params)]

    everything = (start, start + 6 * 3600 * 10**9)
    hour = (start + 3600 * 10**9, start + 3600 * 10**9 + 10 * 60 * 10**9)
    kept, total = _granules(plan("http", *hour), "PrimaryKey")
    assert kept * 5 < total, (kept, total)  # a 10-minute window reads a small share of the granules
    for kfl, index in (
        ('dst.pod.namespace == "rare-ns"', "ix_ns"),
        ("status_code >= 599", "ix_status"),
        ('"rare-ns" in namespaces', "ix_ns"),
    ):
        kept, total = _granules(plan(kfl, *everything), f"Name: {index}")
        assert kept * 5 < total, (kfl, kept, total)
