"""Read-only SQL for `netrecall sql` and the MCP `query_sql` tool: checked on sqlglot's parse tree, then
run with ClickHouse's own limits.

Two independent walls. (1) `check_readonly` parses the statement and refuses anything that is not a
SELECT / WITH / UNION / EXPLAIN / SHOW / DESCRIBE / EXISTS, any table function or function that reaches
files, URLs, other servers, processes or dictionaries, system tables outside an allow-list, SETTINGS /
FORMAT / INTO OUTFILE clauses, and more than one statement. (2) `run_readonly` runs what passed with
`readonly=1`, `max_execution_time`, `max_result_rows` / `max_result_bytes` and
`result_overflow_mode='break'` — measured on chDB 4.4: all are honoured when sent as the query's SETTINGS
clause (readonly last, since readonly=1 forbids changing settings after it).
"""

from __future__ import annotations

import re
from typing import Any

import sqlglot
from sqlglot import exp
from sqlglot.dialects.dialect import Dialect
from sqlglot.errors import ParseError, TokenError
from sqlglot.tokens import Token, TokenType

from netrecall.errors import NetrecallError
from netrecall.store import Store, clickhouse_errors

ALLOWED_ROOTS = (exp.Select, exp.SetOperation, exp.Describe, exp.Subquery, exp.Paren)

# Table functions and functions that read outside the database, run programs, or read other tables by
# pattern (merge() could reach system tables); compared case-insensitively.
FORBIDDEN_FUNCTIONS = frozenset(
    name.lower()
    for name in (
        "file",
        "fileCluster",
        "url",
        "urlCluster",
        "s3",
        "s3Cluster",
        "gcs",
        "cosn",
        "oss",
        "azureBlobStorage",
        "azureBlobStorageCluster",
        "remote",
        "remoteSecure",
        "cluster",
        "clusterAllReplicas",
        "mysql",
        "postgresql",
        "jdbc",
        "odbc",
        "hdfs",
        "hdfsCluster",
        "executable",
        "executablePool",
        "input",
        "dictionary",
        "sqlite",
        "mongodb",
        "redis",
        "iceberg",
        "icebergS3",
        "icebergAzure",
        "icebergHDFS",
        "icebergLocal",
        "icebergCluster",
        "deltaLake",
        "deltaLakeCluster",
        "hudi",
        "hudiCluster",
        "hive",
        "merge",
        "mergeTreeIndex",
        "mergeTreeProjection",
        "python",
        "arrowStream",
        "view",
        "loop",
        "paimon",
        "ytsaurus",
        "fuzzQuery",
        "dictGet",
        "dictGetOrDefault",
        "dictGetOrNull",
        "dictHas",
        "dictGetHierarchy",
        "dictIsIn",
        "dictGetChildren",
        "dictGetDescendants",
        "dictGetAll",
        "joinGet",
        "joinGetOrNull",
        "sleep",
        "sleepEachRow",
        "throwIf",
        "getSetting",
        "getServerSetting",
        "getMacro",
        "filesystemAvailable",
        "filesystemCapacity",
        "filesystemUnreserved",
        "initializeAggregation",
        "file_cluster",
    )
)
FORBIDDEN_PREFIXES = ("dictget", "iceberg", "deltalake", "hudi", "azureblob", "s3", "hdfs", "url")

# System tables an analyst may read: the data's own shape, never other users' queries, logs or grants.
SYSTEM_ALLOWED = frozenset(
    {
        "one",
        "numbers",
        "numbers_mt",
        "zeros",
        "zeros_mt",
        "tables",
        "columns",
        "parts",
        "parts_columns",
        "databases",
        "functions",
        "table_functions",
        "data_skipping_indices",
        "data_type_families",
        "time_zones",
        "formats",
        "build_options",
        "table_engines",
        "aggregate_function_combinators",
        "contributors",
    }
)
INFORMATION_SCHEMA_ALLOWED = frozenset({"tables", "columns", "schemata", "views"})

_EXPLAIN = re.compile(
    r"^\s*EXPLAIN\s+(?:(?:AST|SYNTAX|QUERY\s+TREE|PLAN|PIPELINE|ESTIMATE)\s+)?"
    r"((?:[A-Za-z_]+\s*=\s*[A-Za-z0-9_']+\s*,?\s*)*)(.*)$",
    re.IGNORECASE | re.DOTALL,
)
_SHOW = re.compile(
    r"^\s*SHOW\s+(?:FULL\s+)?(?:TABLES|DATABASES|COLUMNS|INDEX|INDEXES|KEYS|"
    r"CREATE\s+(?:TEMPORARY\s+)?(?:TABLE|VIEW|DATABASE|DICTIONARY))\b[^;]*$",
    re.IGNORECASE | re.DOTALL,
)
_EXISTS = re.compile(
    r"^\s*EXISTS\s+(?:TEMPORARY\s+)?(?:TABLE\s+|DATABASE\s+|VIEW\s+)?[\w.`\"]+\s*;?\s*$", re.IGNORECASE
)
_OUTFILE = re.compile(r"\bINTO\s+OUTFILE\b", re.IGNORECASE)
_FIRST_WORD = re.compile(r"^\s*([A-Za-z]+)")
_SYSTEM_REF = re.compile(r"\b(system|information_schema)\s*\.\s*`?([A-Za-z_][A-Za-z0-9_]*)", re.IGNORECASE)

READ_ONLY_ONLY = "netrecall sql runs SELECT, WITH, EXPLAIN, SHOW, DESCRIBE and EXISTS only"


def _refuse(what: str) -> NetrecallError:
    return NetrecallError(f"refused: {what} ({READ_ONLY_ONLY})")


def check_readonly(sql: str) -> str:
    """The statement, stripped, when it is one read-only query; else NetrecallError saying what is refused."""
    text = sql.strip().rstrip(";").strip()
    if not text:
        raise _refuse("an empty statement")
    if _OUTFILE.search(text):
        raise _refuse("INTO OUTFILE writes a file")
    first = (_FIRST_WORD.match(text).group(1) if _FIRST_WORD.match(text) else "").upper()
    if first == "EXPLAIN":
        match = _EXPLAIN.match(text)
        inner = match.group(2) if match else ""
        if not inner.strip():
            raise _refuse("EXPLAIN without a query")
        check_readonly(inner)
        return text
    if first == "SHOW":
        if not _SHOW.match(text):
            raise _refuse("this SHOW statement (allowed: SHOW TABLES, DATABASES, COLUMNS, INDEXES, CREATE)")
        _check_system_refs(text)
        return text
    if first == "EXISTS" and _EXISTS.match(text):
        return text
    try:
        with _quiet_sqlglot():
            tokens = _CLICKHOUSE.tokenize(text)
            _check_joins(tokens)
            statements = [s for s in _BoundedParser(dialect=_CLICKHOUSE).parse(tokens, text) if s is not None]
    except NetrecallError:  # the guard's own refusals: _check_joins, the parser's backtracking budget
        raise
    except (ParseError, TokenError) as exc:  # TokenError: e.g. an unclosed $ quote ('$re')
        raise _refuse(f"a statement the guard cannot parse ({str(exc).splitlines()[0][:120]})") from None
    except RecursionError:  # sqlglot's recursive descent on thousands of nested brackets (fuzz/sqlguard)
        raise _refuse("a statement nested too deeply for the guard to parse") from None
    except Exception as exc:  # sqlglot's own bugs on odd text (AttributeError on `{{{...`: fuzz/sqlguard)
        raise _refuse(f"a statement the guard cannot parse ({type(exc).__name__})") from None
    if len(statements) != 1:
        raise _refuse("multiple statements")
    tree = statements[0]
    if not isinstance(tree, ALLOWED_ROOTS):
        raise _refuse(f"{_statement_kind(tree, first)} statements")
    _check_tree(tree)
    return text


_CLICKHOUSE = Dialect.get_or_raise("clickhouse")
# JOINs that want ON or USING and have neither: sqlglot's parser backtracks through such a chain, its
# time growing ~1.8x with each (fuzz/sqlguard: 14 of them took 0.3 s, 20 would take ~10 s, from a
# 300-byte statement). CROSS and ARRAY JOINs take no condition and parse in linear time.
MAX_BARE_JOINS = 8


# Tokens the parser may step back over in one statement: sqlglot parses by trying alternatives and
# stepping back, which some short texts make exponential (fuzz/sqlguard: `IF+IF+...` doubles with each IF,
# 14 of them took 0.6 s; nested calls with `LIMIT n,` in their arguments). Each token stepped back costs
# ~10 us of CPU here, so the budget is ~0.1 s whatever the statement's length: a budget per token let a
# long statement hold a thread for seconds. Real statements step back little (a 1,033-token analytic
# query: 121 tokens, a 200-branch CASE: 1); the 5,090 statements of the fuzz corpus, texts built to
# explore the parser, at most 7,833.
BACKTRACK_BUDGET = 10_000


class _BoundedParser(_CLICKHOUSE.parser_class):  # type: ignore[misc,name-defined]
    """sqlglot's ClickHouse parser with a budget of backtracking: past it the statement is refused."""

    def parse(self, raw_tokens: list[Token], sql: str) -> list[Any]:
        self._stepped_back = 0
        return super().parse(raw_tokens, sql)

    def _retreat(self, index: int) -> None:
        if index < self._index:
            self._stepped_back += self._index - index
            if self._stepped_back > BACKTRACK_BUDGET:
                raise _refuse("a statement the guard's parser would take too long over")
        super()._retreat(index)


def _check_joins(tokens: list[Token]) -> None:
    bare = 0
    waiting = False  # a JOIN whose ON or USING has not come yet
    previous = None
    for token in tokens:
        kind = token.token_type
        if kind is TokenType.JOIN:
            bare += waiting
            waiting = previous not in (TokenType.CROSS, TokenType.ARRAY)
        elif kind in (TokenType.ON, TokenType.USING):
            waiting = False
        previous = kind
    if bare + waiting > MAX_BARE_JOINS:
        raise _refuse(f"more than {MAX_BARE_JOINS} JOINs without ON or USING")


def _statement_kind(tree: exp.Expression, first_word: str) -> str:
    if isinstance(tree, exp.Command):
        return str(tree.this).upper()
    return first_word or type(tree).__name__.upper()


def _check_tree(tree: exp.Expression) -> None:
    for node in tree.walk():
        if isinstance(
            node,
            exp.Command
            | exp.Insert
            | exp.Create
            | exp.Drop
            | exp.Alter
            | exp.Set
            | exp.TruncateTable
            | exp.Into,
        ):
            raise _refuse(f"{type(node).__name__.upper()} inside a query")
        if isinstance(node, exp.Select | exp.SetOperation) and node.args.get("settings"):
            raise _refuse("a SETTINGS clause (limits are fixed by netrecall)")
        if isinstance(node, exp.Select | exp.SetOperation) and node.args.get("format"):
            raise _refuse("a FORMAT clause (the output format is chosen by netrecall)")
        name = _function_name(node)
        if name and _forbidden(name):
            raise _refuse(f"the function {name}() (it reaches outside the database or blocks the engine)")
        if isinstance(node, exp.Table):
            _check_table(node)


def _function_name(node: exp.Expression) -> str:
    if isinstance(node, exp.Anonymous):
        return str(node.name)
    if isinstance(node, exp.Func):
        return node.sql_name()
    return ""


def _forbidden(name: str) -> bool:
    lowered = name.lower()
    return lowered in FORBIDDEN_FUNCTIONS or lowered.startswith(FORBIDDEN_PREFIXES)


def _check_table(table: exp.Table) -> None:
    inner = table.this
    if inner is not None and not isinstance(inner, exp.Identifier):
        name = _function_name(inner)
        if name and _forbidden(name):
            raise _refuse(f"the table function {name}()")
    name = table.name
    database = (table.db or "").lower()
    if (
        not database
        and _forbidden(name)
        and table.args.get("this") is not None
        and not isinstance(inner, exp.Identifier)
    ):
        raise _refuse(f"the table function {name}()")
    if not database and name.lower() in ("dictionary", "file", "url", "input", "executable", "remote", "s3"):
        raise _refuse(f"the table function {name}()")  # sqlglot parses some table functions as tables
    if database == "system" and name.lower() not in SYSTEM_ALLOWED:
        raise _refuse(f"the system table system.{name} (allowed: {', '.join(sorted(SYSTEM_ALLOWED))})")
    if database == "information_schema" and name.lower() not in INFORMATION_SCHEMA_ALLOWED:
        raise _refuse(f"the table information_schema.{name}")


def _check_system_refs(text: str) -> None:
    for database, name in _SYSTEM_REF.findall(text):
        allowed = SYSTEM_ALLOWED if database.lower() == "system" else INFORMATION_SCHEMA_ALLOWED
        if name.lower() not in allowed:
            raise _refuse(f"the table {database}.{name}")


class _quiet_sqlglot:
    """sqlglot logs a warning when it falls back to a Command; the guard reports on its own."""

    def __enter__(self) -> None:
        import logging

        self.logger = logging.getLogger("sqlglot")
        self.level = self.logger.level
        self.logger.setLevel(logging.ERROR)

    def __exit__(self, *exc: object) -> None:
        self.logger.setLevel(self.level)


def readonly_settings(
    max_rows: int, max_seconds: int = 30, max_bytes: int = 256 * 1024 * 1024
) -> dict[str, Any]:
    """The limits a read-only query runs under. `readonly` comes last: once it is 1 the engine refuses to
    change any other setting, and chDB applies a SETTINGS clause left to right."""
    return {
        "max_execution_time": max_seconds,
        "timeout_overflow_mode": "throw",
        "max_result_rows": max_rows + 1,  # one more than shown, so a cut result is known to be cut
        "max_result_bytes": max_bytes,
        "result_overflow_mode": "break",
        "readonly": 1,
    }


SNAPSHOT_TABLES = ("packets", "flows", "api_calls", "workloads")


def snapshot_sql(store: Store, sql: str, snapshot: str) -> tuple[str, dict[str, Any]]:
    """Rewrite a checked SELECT so each netrecall table it names reads the snapshot's copy instead:
    `api_calls` becomes `(SELECT * EXCEPT snapshot FROM snapshot_api_calls WHERE snapshot = {snapshot})`."""
    statement = check_readonly(sql)
    with _quiet_sqlglot():
        tree = sqlglot.parse_one(statement, read="clickhouse")
    if not isinstance(tree, exp.Select | exp.SetOperation):
        raise NetrecallError("--snapshot applies to SELECT statements only")
    copies = {t for t in SNAPSHOT_TABLES if store.scalar(f"EXISTS TABLE snapshot_{t}")}
    for table in list(tree.find_all(exp.Table)):
        if table.db or table.name not in copies or not isinstance(table.this, exp.Identifier):
            continue
        inner = sqlglot.parse_one(
            f"SELECT * EXCEPT (snapshot) FROM snapshot_{table.name} WHERE snapshot = {{snapshot:String}}",
            read="clickhouse",
        )
        alias = table.alias or table.name
        table.replace(exp.Subquery(this=inner, alias=exp.TableAlias(this=exp.to_identifier(alias))))
    return tree.sql(dialect="clickhouse"), {"snapshot": snapshot}


def run_readonly(
    store: Store, sql: str, max_rows: int = 10000, max_seconds: int = 30, snapshot: str | None = None
) -> dict:
    """Run a checked read-only statement: {"columns", "rows", "truncated"} with at most max_rows rows.

    `result_overflow_mode='break'` stops at a block boundary past the limit, so the rows are cut here too.
    With `snapshot`, the netrecall tables it names read that snapshot's copies.
    """
    statement = check_readonly(sql)
    params: dict[str, Any] = {}
    if snapshot is not None:
        statement, params = snapshot_sql(store, statement, snapshot)
    with clickhouse_errors():
        result = store.client.query(
            statement, parameters=params, settings=readonly_settings(max_rows, max_seconds)
        )
    rows = [list(r) for r in result.result_rows]
    columns = list(result.column_names)
    if not rows and not columns and isinstance(_parsed(statement), exp.Select | exp.SetOperation):
        # chDB sends no block for an empty result, so no names either: ask the engine for the shape.
        with clickhouse_errors():
            described = store.client.query(
                f"DESCRIBE TABLE ({statement})",
                parameters=params,
                settings=readonly_settings(1000, max_seconds),
            )
        columns = [row[0] for row in described.result_rows]
    truncated = len(rows) > max_rows
    return {"columns": columns, "rows": rows[:max_rows], "truncated": truncated}


def _parsed(statement: str) -> exp.Expression | None:
    try:
        with _quiet_sqlglot():
            return sqlglot.parse_one(statement, read="clickhouse")
    except ParseError:
        return None
