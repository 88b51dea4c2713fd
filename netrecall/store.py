"""The one connection layer over clickhouse-connect: embedded chDB (chdb:///path) or a server (http(s)://).

Everything that reads or writes ClickHouse goes through `Store`, so both backends behave the same:
Arrow inserts, parameter binding, binary-safe reads and one-line errors.
"""

from __future__ import annotations

import json
import os
import re
import socket
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import pyarrow as pa

from netrecall.errors import NetrecallError

OWNER_FILE = "netrecall-owner.json"
DEFAULT_DATABASE = "netrecall"
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class StoreURL:
    """A parsed store address. `kind` is 'chdb' or 'http'."""

    kind: str
    database: str
    path: str = ""  # chdb data directory
    host: str = ""
    port: int = 8123
    username: str = "default"
    password: str = ""
    secure: bool = False
    cluster: str = ""  # a ClickHouse cluster: tables are Distributed over <table>_local (docs/scaling.md)

    @property
    def display(self) -> str:
        """The address without credentials, for logs and manifests."""
        on_cluster = f"?cluster={self.cluster}" if self.cluster else ""
        if self.kind == "chdb":
            return f"chdb://{self.path}?database={self.database}" + on_cluster.replace("?", "&")
        scheme = "https" if self.secure else "http"
        return f"{scheme}://{self.host}:{self.port}/{self.database}{on_cluster}"


def parse_store_url(url: str) -> StoreURL:
    """chdb:///abs/path[?database=db] or http(s)://user:pass@host:port/db, either with `cluster=NAME`."""
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    cluster = query.get("cluster", [""])[0]
    if cluster and not _IDENTIFIER.match(cluster):
        raise NetrecallError(f"store URL {url!r}: cluster name {cluster!r} must be a plain identifier")
    if parts.scheme == "chdb":
        path = unquote((parts.netloc + parts.path) if parts.netloc else parts.path)
        if not path:
            raise NetrecallError(f"store URL {url!r} has no path: use chdb:///absolute/path")
        database = query.get("database", [DEFAULT_DATABASE])[0]
        resolved = str(Path(path).expanduser().resolve())
        return StoreURL("chdb", _check_database(database, url), path=resolved, cluster=cluster)
    if parts.scheme in ("http", "https"):
        if not parts.hostname:
            raise NetrecallError(f"store URL {url!r} has no host")
        database = parts.path.strip("/") or query.get("database", [DEFAULT_DATABASE])[0]
        return StoreURL(
            "http",
            _check_database(database, url),
            host=parts.hostname,
            port=parts.port or (8443 if parts.scheme == "https" else 8123),
            username=unquote(parts.username or "default"),
            password=unquote(parts.password or ""),
            secure=parts.scheme == "https",
            cluster=cluster,
        )
    raise NetrecallError(f"store URL {url!r}: scheme must be chdb://, http:// or https://")


def _check_database(name: str, url: str) -> str:
    if not _IDENTIFIER.match(name):
        raise NetrecallError(f"store URL {url!r}: database name {name!r} must be a plain identifier")
    return name


class Store:
    """A ClickHouse database reached through clickhouse-connect, embedded or remote."""

    def __init__(self, address: StoreURL, client: Any) -> None:
        self.address = address
        self.client = client

    @property
    def kind(self) -> str:
        return self.address.kind

    @property
    def database(self) -> str:
        return self.address.database

    @property
    def cluster(self) -> str:
        """The ClickHouse cluster the tables are distributed over ('' on one server)."""
        return self.address.cluster

    def insert_settings(self, settings: Mapping | None) -> dict:
        """On a cluster, inserts into the Distributed tables are synchronous: the INSERT returns once every
        shard has its rows, so an acknowledged agent batch is stored (not queued on the receiving node)
        and its dedup token reaches the shards' Replicated tables in the same request."""
        merged = dict(settings or {})
        if self.cluster:
            merged.setdefault("distributed_foreground_insert", 1)
        return merged

    # --- reading -------------------------------------------------------------------------------------
    def rows(self, sql: str, params: Mapping[str, Any] | None = None, **kwargs: Any) -> list[tuple]:
        with clickhouse_errors():
            return self.client.query(sql, parameters=dict(params or {}), **kwargs).result_rows

    def dicts(self, sql: str, params: Mapping[str, Any] | None = None, **kwargs: Any) -> list[dict]:
        with clickhouse_errors():
            result = self.client.query(sql, parameters=dict(params or {}), **kwargs)
        return [dict(zip(result.column_names, row, strict=True)) for row in result.result_rows]

    def scalar(self, sql: str, params: Mapping[str, Any] | None = None) -> Any:
        found = self.rows(sql, params)
        return found[0][0] if found else None

    def arrow(
        self, sql: str, params: Mapping[str, Any] | None = None, settings: Mapping | None = None
    ) -> pa.Table:
        """Query into Arrow; String columns arrive as binary so packet bytes survive untouched."""
        with clickhouse_errors():
            return self.client.query_arrow(
                sql,
                parameters=dict(params or {}),
                settings={"output_format_arrow_string_as_string": 0, **(settings or {})},
            )

    def arrow_stream(
        self, sql: str, params: Mapping[str, Any] | None = None, settings: Mapping | None = None
    ) -> Iterator[pa.RecordBatch]:
        """Stream record batches (memory bounded by the block size, not the result)."""
        with clickhouse_errors():
            stream = self.client.query_arrow_stream(
                sql,
                parameters=dict(params or {}),
                settings={"output_format_arrow_string_as_string": 0, **(settings or {})},
            )
            with stream:
                yield from stream

    # --- writing -------------------------------------------------------------------------------------
    def command(
        self, sql: str, params: Mapping[str, Any] | None = None, settings: Mapping | None = None
    ) -> Any:
        with clickhouse_errors():
            return self.client.command(
                sql, parameters=dict(params or {}) or None, settings=dict(settings or {})
            )

    def insert_arrow(self, table: str, arrow_table: pa.Table, settings: Mapping | None = None) -> None:
        """Insert an Arrow table by column name; absent columns take their DEFAULT."""
        if arrow_table.num_rows == 0:
            return
        settings = self.insert_settings(settings)
        with clickhouse_errors():
            if self.kind == "chdb":
                # chDB reads the Arrow table in place through the Python() table function: the fastest
                # path measured here (~5x insert_arrow). It finds `arrow_table` in this frame by name.
                columns = ", ".join(f"`{name}`" for name in arrow_table.column_names)
                self.client.command(
                    f"INSERT INTO {table} ({columns}) SELECT * FROM Python(arrow_table)",
                    settings=dict(settings or {}),
                )
            else:
                self.client.insert_arrow(table, arrow_table, settings=dict(settings or {}))

    def purge_engine_memory(self) -> None:
        """The embedded engine's allocator keeps freed pages for seconds: give them back now (a server
        manages its own memory: nothing to do)."""
        if self.kind == "chdb":
            with suppress(Exception):  # an engine built without jemalloc refuses the command
                self.client.command("SYSTEM JEMALLOC PURGE")

    def close(self) -> None:
        self.client.close()


def open_store(url: str) -> Store:
    """Open (and create if needed) the database behind `url`."""
    address = parse_store_url(url)
    client = _open_chdb(address) if address.kind == "chdb" else _open_http(address)
    with clickhouse_errors():
        client.command(f"CREATE DATABASE IF NOT EXISTS {address.database}")
    client.database = address.database
    return Store(address, client)


def _open_http(address: StoreURL) -> Any:
    import clickhouse_connect

    try:
        client = clickhouse_connect.get_client(
            host=address.host,
            port=address.port,
            username=address.username,
            password=address.password,
            secure=address.secure,
            database="default",
            compress="lz4",
            # One Store is shared by threads (hub, agent); a client-wide session would make concurrent
            # queries fail (ClickHouse allows one query per session at a time). Nothing relies on sessions.
            autogenerate_session_id=False,
        )
    except Exception as exc:  # connection refused, TLS, auth: all one line for the user
        raise NetrecallError(
            f"cannot reach ClickHouse at {address.display}: {_connect_reason(exc)}"
        ) from None
    return client


# Server settings of the embedded engine (they apply when the process opens its first handle). One
# background merge at a time: ClickHouse's default pool (16 threads, 2 merges each) is sized for a
# server; on the small machines an embedded store runs on, each concurrent merge of compact parts holds
# ~100 MB (measured: four at once took an 11M-packet import from 1.0 to 1.5 GB peak RSS).
CHDB_ENGINE_OPTIONS = {"background_pool_size": 1, "background_merges_mutations_concurrency_ratio": 1}


def _open_chdb(address: StoreURL) -> Any:
    """One chDB engine per process and one process per data path: say who holds it when refused."""
    import clickhouse_connect

    Path(address.path).mkdir(parents=True, exist_ok=True)
    try:
        with _engine_stderr() as engine_said:
            client = clickhouse_connect.get_client(
                dsn=f"chdb://{address.path}", database="default", chdb_options=CHDB_ENGINE_OPTIONS
            )
    except Exception as exc:
        # the engine already printed its own multi-line refusal on fd 2: the user gets ours, one line
        raise NetrecallError(_explain_chdb_refusal(address.path, exc)) from None
    if engine_said:
        sys.stderr.write(engine_said[0])
    _write_owner(address.path)
    return client


@contextmanager
def _engine_stderr() -> Iterator[list[str]]:
    """Hold back what the chDB engine writes straight to fd 2 while it starts (it bypasses sys.stderr)."""
    said: list[str] = []
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no usable fd 2 (embedded interpreters): nothing to hold back
        yield said
        return
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield said
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            text = sink.read().decode("utf-8", "replace")
            if text:
                said.append(text)


def _write_owner(path: str) -> None:
    owner = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "command": " ".join([_program_name(), *sys.argv[1:]])[:200],
        "hub_url": os.environ.get("NETRECALL_HUB_URL", ""),
        "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    with suppress(OSError):  # the owner note is advice for other processes, never a reason to fail
        (Path(path) / OWNER_FILE).write_text(json.dumps(owner))


def _program_name() -> str:
    name = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "python"
    return "netrecall" if name in ("__main__.py", "netrecall") else name


def _explain_chdb_refusal(path: str, exc: Exception) -> str:
    message = _first_line(exc)
    if "Code: 36" not in message:
        return f"cannot open the embedded store at {path}: {message}"
    if "different path" in message:
        return (
            f"cannot open the embedded store at {path}: this process already opened another chDB path "
            "(one embedded store per process)"
        )
    try:
        owner = json.loads((Path(path) / OWNER_FILE).read_text())
    except (OSError, ValueError):
        owner = {}
    who = (
        f"process {owner.get('pid')} ({owner.get('command') or 'netrecall'})" if owner else "another process"
    )
    hub = owner.get("hub_url") or "http://HOST:PORT"
    return (
        f"the embedded store at {path} is in use by {who}: an embedded store has one owner at a time; "
        f"run this command through it with --url {hub}, or stop it first"
    )


def _connect_reason(exc: BaseException) -> str:
    """The socket's own words ('[Errno 111] Connection refused') rather than the driver's retry story."""
    text = _first_line(exc)
    errno = re.search(r"\[Errno -?\d+\] [^'\")]+", text)
    return errno.group(0).strip() if errno else text


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    for line in text.splitlines():
        if line.strip():
            return line.strip()
    return text


@contextmanager
def clickhouse_errors() -> Iterator[None]:
    """Turn driver and server exceptions into one-line NetrecallErrors."""
    from clickhouse_connect.driver.exceptions import ClickHouseError

    try:
        yield
    except ClickHouseError as exc:
        raise NetrecallError(f"ClickHouse: {_clean_server_message(str(exc))}") from None


_SERVER_ERROR = re.compile(
    r"Code: (\d+)\. DB::Exception: (.*?)\.?(?: \(([A-Z][A-Z0-9_]+)\))?(?: \(version [^)]*\))?"
    r"(?: \(for url [^)]*\))?\s*(?:Stack trace.*)?$",
    re.S,
)
_MAX_MESSAGE = 400


def _clean_server_message(text: str) -> str:
    """The server's message on one line, without version, URL or stack trace (the same from both backends)."""
    code = _SERVER_ERROR.search(text.strip())
    if not code:
        return _first_line(Exception(text))
    message = " ".join(code.group(2).split())  # multi-line messages (syntax errors) become one line
    if len(message) > _MAX_MESSAGE:
        message = message[:_MAX_MESSAGE].rstrip() + "…"
    return f"{message} (code {code.group(1)}{', ' + code.group(3) if code.group(3) else ''})"


def sql_identifier(name: str) -> str:
    """Validate a table or database name that has to be spliced into SQL (never user free text)."""
    if not _IDENTIFIER.match(name):
        raise NetrecallError(f"invalid identifier {name!r}")
    return name
