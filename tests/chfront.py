"""A small ClickHouse HTTP front that executes in chDB, so the store's server path is tested for real.

No current ClickHouse server installs here, so clickhouse-connect's HTTP client is pointed at this front:
it speaks the parts of the ClickHouse HTTP protocol that clickhouse-connect 1.12 uses and runs every
statement in a real chDB engine (the same ClickHouse code a server runs). What it covers:

- `/ping` (and `GET /` without a query) answer `Ok.`;
- the query in the URL (`query=`) or in the body, or both (the body is appended, as ClickHouse does);
  `multipart/form-data` bodies (clickhouse-connect uses them for long bind parameters);
- `database=` (or the X-ClickHouse-Database header), `param_x` server-side binds, `default_format`;
- other URL parameters are ClickHouse settings and are applied with SET on the request's own chDB
  handle; transport-only parameters (session_id, query_id, compress, wait_end_of_query...) are consumed;
- `INSERT ... FORMAT <any>` with the data in the body (Native, Arrow, TSV...), written to a temp file
  and loaded with `INSERT ... FROM INFILE` (chDB has no HTTP body input stage);
- `Content-Encoding` lz4 / zstd / gzip / deflate request bodies, chunked transfer encoding;
- compressed responses (lz4 / zstd / gzip / deflate) when `enable_http_compression=1` and the client's
  Accept-Encoding asks for one;
- errors: HTTP 500, `X-ClickHouse-Exception-Code`, and the server's `Code: N. DB::Exception: ...` body;
- `X-ClickHouse-Format`, `-Summary`, `-Query-Id`, `-Timezone`, `-Server-Display-Name` headers; TCP_NODELAY;
- sessions: a second request on a session that is still running gets SESSION_IS_LOCKED (373) as on a
  server. Session *state* (SET, temporary tables across requests) is not kept: every request runs on a
  fresh chDB handle. Responses are buffered, not streamed (fine for tests).

It runs in-process (one thread per connection) on the caller's chDB data path: chDB hosts one engine per
process and allows many handles to it, and the test process already owns that engine through the
`chdb_path` fixture. Sharing it costs no second engine on a 2-core machine, starts instantly, and lets a
test check through the embedded store what went in over HTTP. chDB releases the GIL while a query runs.
Run standalone on its own path: `python tests/chfront.py --path /tmp/front --port 8123`.
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import os
import re
import socket
import tempfile
import threading
import time
import uuid
import zlib
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import chdb
import lz4.frame
import zstandard

# URL parameters that steer the HTTP layer rather than the query: never forwarded as settings.
TRANSPORT_PARAMS = frozenset(
    {
        "query",
        "database",
        "default_format",
        "user",
        "password",
        "quota_key",
        "role",
        "query_id",
        "session_id",
        "session_timeout",
        "session_check",
        "compress",
        "decompress",
        "buffer_size",
        "wait_end_of_query",
        "client_protocol_version",
        "enable_http_compression",
        "http_zlib_compression_level",
        "send_progress_in_http_headers",
        "http_headers_progress_interval_ms",
        "cancel_http_readonly_queries_on_client_close",
        "http_response_buffer_size",
    }
)
_SETTING_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_TRAILING_FORMAT = re.compile(r"\bFORMAT\s+(\w+)\s*;?\s*$", re.IGNORECASE)
_LEADING_COMMENTS = rb"^(?:\s+|--[^\n]*\n|/\*.*?\*/)*"
_INSERT_START = re.compile(_LEADING_COMMENTS + rb"INSERT\s+INTO\b", re.IGNORECASE | re.DOTALL)
_INSERT_FORMAT = re.compile(rb"\bFORMAT\s+(\w+)", re.IGNORECASE)
_NOT_DATA_INSERT = re.compile(rb"\b(VALUES|SELECT|WITH|FROM\s+INFILE)\b", re.IGNORECASE)
_SETTINGS_CLAUSE = re.compile(rb"\bSETTINGS\b", re.IGNORECASE)
_CODE = re.compile(r"Code: (\d+)\.")
_ENCODERS = ("lz4", "zstd", "gzip", "deflate")
SESSION_IS_LOCKED = 373


class FrontError(Exception):
    """A ClickHouse error to send back as such (code + server-style message)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def decompress(data: bytes, encoding: str) -> bytes:
    """Undo a Content-Encoding (clickhouse-connect sends one frame per block: read across frames)."""
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        return data
    if encoding == "lz4":
        out = bytearray()
        while data:
            decoder = lz4.frame.LZ4FrameDecompressor()
            out += decoder.decompress(data)
            data = decoder.unused_data
        return bytes(out)
    if encoding == "zstd":
        reader = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data), read_across_frames=True)
        return reader.read()
    if encoding == "gzip":
        return gzip.decompress(data)
    if encoding == "deflate":
        return zlib.decompress(data)
    raise FrontError(
        415, f"Code: 415. DB::Exception: Unknown Content-Encoding {encoding!r}. (UNKNOWN_COMPRESSION_METHOD)"
    )


def compress(data: bytes, encoding: str) -> bytes:
    if encoding == "lz4":
        return lz4.frame.compress(data)
    if encoding == "zstd":
        return zstandard.ZstdCompressor().compress(data)
    if encoding == "gzip":
        return gzip.compress(data)
    return zlib.compress(data)  # deflate


def choose_encoding(accept: str) -> str | None:
    """The first encoding the client lists that this front can produce."""
    for item in accept.split(","):
        name = item.split(";")[0].strip().lower()
        if name in _ENCODERS:
            return name
    return None


def sql_quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


class Request:
    """One HTTP request reduced to what the engine needs."""

    def __init__(self, params: dict[str, str], body: bytes) -> None:
        self.params = params
        self.body = body


class ChFront:
    """The front: start() it, point clickhouse-connect at `url`, stop() it."""

    def __init__(self, path: str | Path, host: str = "127.0.0.1", port: int = 0) -> None:
        self.path = str(Path(path).resolve())
        Path(self.path).mkdir(parents=True, exist_ok=True)
        self._keep = chdb.connect(self.path)  # holds the engine open for the front's lifetime
        version, timezone = (
            self._keep.query("SELECT version(), timezone()", "TabSeparated").bytes().decode().split()
        )
        self.version, self.timezone = version, timezone
        # Recent ClickHouse compresses by default (enable_http_compression = 1); clickhouse-connect reads
        # system.settings and then stops sending the parameter, so the engine's default decides here too.
        self.compression_default = (
            self._keep.query(
                "SELECT value FROM system.settings WHERE name = 'enable_http_compression'", "TabSeparated"
            )
            .bytes()
            .decode()
            .strip()
            or "0"
        )
        self._sessions: set[str] = set()
        self._sessions_lock = threading.Lock()
        self.requests = 0  # served so far: tests check their traffic really went through the front
        self.encodings: set[str] = set()  # request and response Content-Encodings seen, e.g. 'lz4', 'out:lz4'
        self.nodelay: set[int] = set()  # TCP_NODELAY as read back from the accepted sockets
        front = self

        class Handler(_Handler):
            owner = front

        self.server = ThreadingHTTPServer((host, port), Handler)
        self.server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> ChFront:
        self._thread = threading.Thread(target=self.server.serve_forever, name="chfront", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._keep.close()

    def __enter__(self) -> ChFront:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- execution ----------------------------------------------------------------------------------
    def execute(self, request: Request) -> tuple[bytes, str | None, dict[str, str]]:
        """Run one request: (body, result format or None for statements without a result, summary)."""
        params = request.params
        session = params.get("session_id")
        if session:
            with self._sessions_lock:
                if session in self._sessions:
                    raise FrontError(
                        SESSION_IS_LOCKED,
                        f"Code: 373. DB::Exception: Session {session} is locked by a concurrent client. "
                        "(SESSION_IS_LOCKED)",
                    )
                self._sessions.add(session)
        try:
            return self._execute(params, request.body)
        finally:
            if session:
                with self._sessions_lock:
                    self._sessions.discard(session)

    def _execute(self, params: dict[str, str], body: bytes) -> tuple[bytes, str | None, dict[str, str]]:
        url_query = params.get("query")
        head = url_query.encode() if url_query is not None else body
        data: bytes | None = body if url_query is not None and body else None
        insert = _split_data_insert(head, data)
        if insert is None and data is not None:
            head = head + b"\n" + data  # ClickHouse appends the body to the URL query
        if not head.strip():
            raise FrontError(62, "Code: 62. DB::Exception: Empty query. (SYNTAX_ERROR)")
        conn = chdb.connect(self.path)
        try:
            database = params.get("database")
            if database:
                _run(conn, f"USE `{database.replace('`', '')}`", "TabSeparated")
            for key, value in params.items():
                if key in TRANSPORT_PARAMS or key.startswith("param_") or not _SETTING_NAME.match(key):
                    continue
                _run(conn, f"SET {key} = {sql_quote(value)}", "TabSeparated")
            binds = {k[len("param_") :]: v for k, v in params.items() if k.startswith("param_")}
            if insert is not None:
                return self._insert(conn, *insert)
            # the engine gets the bytes as sent (binary binds embed raw bytes); regexes read a lossless decode
            sql = head
            explicit = _TRAILING_FORMAT.search(head.decode("utf-8", "surrogateescape"))
            if explicit:
                result = _run(conn, sql, explicit.group(1), binds)
                return result.bytes() or b"", explicit.group(1), _summary(result)
            default = params.get("default_format") or "TabSeparated"
            # A statement with a result reports its format even when empty; DDL reports none. With names
            # the first line tells them apart (a result always has it), then it is dropped for TSV.
            if default == "TabSeparated":
                result = _run(conn, sql, "TabSeparatedWithNames", binds)
                out = result.bytes() or b""
                if not out:
                    return b"", None, _summary(result)
                return out[out.find(b"\n") + 1 :], "TabSeparated", _summary(result)
            result = _run(conn, sql, default, binds)
            return result.bytes() or b"", default, _summary(result)
        finally:
            conn.close()

    def _insert(
        self, conn: Any, statement: bytes, fmt: str, payload: bytes
    ) -> tuple[bytes, None, dict[str, str]]:
        """INSERT ... FORMAT x with body data: through a temp file, the way chDB ingests external data."""
        with tempfile.NamedTemporaryFile(suffix=f".{fmt.lower()}", delete=False) as tmp:
            tmp.write(payload)
        try:
            settings_at = _SETTINGS_CLAUSE.search(statement)
            cut = settings_at.start() if settings_at else len(statement)
            sql = (
                statement[:cut].decode("utf-8", "surrogateescape").rstrip()
                + f" FROM INFILE {sql_quote(tmp.name)} "
                + statement[cut:].decode("utf-8", "surrogateescape")
                + f" FORMAT {fmt}"
            )
            result = _run(conn, sql, "TabSeparated")
            summary = _summary(result)
            summary["written_rows"] = summary.get("read_rows", "0")
            summary["written_bytes"] = summary.get("read_bytes", "0")
            return b"", None, summary
        finally:
            os.unlink(tmp.name)


def _split_data_insert(head: bytes, data: bytes | None) -> tuple[bytes, str, bytes] | None:
    """(INSERT statement without FORMAT, format, data) when the request is an insert carrying data."""
    start = _INSERT_START.match(head)
    if not start:
        return None
    found = _INSERT_FORMAT.search(head, start.end())
    if not found or _NOT_DATA_INSERT.search(head, start.end(), found.start()):
        return None
    statement, fmt = head[: found.start()], found.group(1).decode()
    if data is None:
        # Data starts after spaces and at most one line break following the format name (as in ClickHouse):
        # binary data may itself begin with whitespace bytes, so never skip more.
        pos = found.end()
        while pos < len(head) and head[pos : pos + 1] in (b" ", b"\t", b"\f"):
            pos += 1
        if head[pos : pos + 1] == b"\r":
            pos += 1
        if head[pos : pos + 1] == b"\n":
            pos += 1
        data = head[pos:]
    else:
        tail = head[found.end() :].strip()
        if tail and tail != b";":
            data = tail + b"\n" + data
    return statement, fmt, data


def _run(conn: Any, sql: str | bytes, fmt: str, binds: dict[str, str] | None = None) -> Any:
    try:
        return conn.query(sql, fmt, params=binds or {})
    except Exception as exc:
        message = str(exc)
        at = message.find("Code: ")
        message = message[at:].strip() if at >= 0 else message.strip()
        code = _CODE.match(message)
        raise FrontError(int(code.group(1)) if code else 1002, message) from None


def _summary(result: Any) -> dict[str, str]:
    try:
        return {
            "read_rows": str(result.rows_read()),
            "read_bytes": str(result.bytes_read()),
            "written_rows": "0",
            "written_bytes": "0",
            "total_rows_to_read": str(result.rows_read()),
            "result_rows": "0",
            "result_bytes": str(len(result.bytes() or b"")),
            "elapsed_ns": str(int(result.elapsed() * 1_000_000_000)),
        }
    except Exception:
        return {}


_CONTENT_TYPES = {
    "TabSeparated": "text/tab-separated-values; charset=UTF-8",
    "JSON": "application/json; charset=UTF-8",
    "JSONEachRow": "application/x-ndjson; charset=UTF-8",
}


class _Handler(BaseHTTPRequestHandler):
    """HTTP/1.1 keep-alive (clickhouse-connect pools connections); TCP_NODELAY like the server."""

    owner: ChFront
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    server_version = "ClickHouse"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet: pytest shows failures, not every request

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def _handle(self) -> None:
        self.owner.requests += 1
        self.owner.nodelay.add(self.connection.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
        parts = urlsplit(self.path)
        params = dict(parse_qsl(parts.query, keep_blank_values=True))
        body = self._read_body()
        if parts.path.rstrip("/") == "/ping" or (parts.path == "/" and "query" not in params and not body):
            self._reply(200, b"Ok.\n", {"Content-Type": "text/html; charset=UTF-8"})
            return
        if parts.path not in ("/", ""):
            self._reply(404, b"There is no handle " + parts.path.encode() + b"\n", {})
            return
        query_id = params.get("query_id") or str(uuid.uuid4())
        headers = {
            "X-ClickHouse-Query-Id": query_id,
            "X-ClickHouse-Timezone": self.owner.timezone,
            "X-ClickHouse-Server-Display-Name": "chfront",
        }
        try:
            if self.headers.get("Content-Encoding"):
                self.owner.encodings.add(self.headers["Content-Encoding"])
            body = decompress(body, self.headers.get("Content-Encoding", ""))
            params, body = self._merge_form(params, body)
            if self.headers.get("X-ClickHouse-Database") and "database" not in params:
                params["database"] = self.headers["X-ClickHouse-Database"]
            started = time.monotonic_ns()
            out, fmt, summary = self.owner.execute(Request(params, body))
            summary.setdefault("elapsed_ns", str(time.monotonic_ns() - started))
        except FrontError as exc:
            headers["X-ClickHouse-Exception-Code"] = str(exc.code)
            headers["Content-Type"] = "text/plain; charset=UTF-8"
            text = str(exc).rstrip()
            if "(version" not in text:
                text += f" (version {self.owner.version})"
            self._reply(500, (text + "\n").encode(), headers)
            return
        headers["X-ClickHouse-Summary"] = json.dumps(summary)
        if fmt:
            headers["X-ClickHouse-Format"] = fmt
            headers["Content-Type"] = _CONTENT_TYPES.get(fmt, "application/octet-stream")
        else:
            headers["Content-Type"] = "text/plain; charset=UTF-8"
        encoding = choose_encoding(self.headers.get("Accept-Encoding", ""))
        enabled = params.get("enable_http_compression", self.owner.compression_default) in ("1", "true")
        if out and encoding and enabled:
            out = compress(out, encoding)
            headers["Content-Encoding"] = encoding
            self.owner.encodings.add("out:" + encoding)
        self._reply(200, out, headers)

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = bytearray()
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return bytes(chunks)
                chunks += self.rfile.read(size)
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _merge_form(self, params: dict[str, str], body: bytes) -> tuple[dict[str, str], bytes]:
        """multipart/form-data: `query` and `param_x` fields join the URL parameters."""
        content_type = self.headers.get("Content-Type", "")
        if not content_type.startswith("multipart/form-data"):
            return params, body
        message = BytesParser(policy=HTTP).parsebytes(
            b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + body
        )
        merged = dict(params)
        for part in message.iter_parts():
            name = part.get_param("name", header="content-disposition")
            if name:
                payload = part.get_payload(decode=True) or b""
                merged[str(name)] = payload.decode("utf-8", "surrogateescape")
        return merged, b""

    def _reply(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--path", required=True, help="chDB data directory (its own: one process per path)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8123)
    args = parser.parse_args()
    front = ChFront(args.path, args.host, args.port).start()
    print(f"chfront: {front.url} on {front.path}", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        front.stop()


if __name__ == "__main__":
    main()
