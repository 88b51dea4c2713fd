"""Record the Redis and PostgreSQL test captures from real servers and clients (run as root; needs iproute2,
tcpdump, redis-server and redis-tools, postgresql (initdb/pg_ctl/psql), openssl, and psycopg in the venv).

    .venv/bin/python tests/captures/dissect/record_db.py [NAME...]

A network namespace `nrdb` holds the servers (10.79.0.2); the clients run in the root namespace
(10.79.0.1) and tcpdump listens on the root end of the veth pair. Each capture is small (< 300 KB) and
committed next to this script; tests/test_dissect_redis.py and tests/test_dissect_postgresql.py compare
what netrecall dissects from them with tshark.

- redis_resp2.pcap: redis-cli reading commands from stdin on one connection (strings, lists, hashes, sets,
  sorted sets, a nil reply, a 3000-byte value, WRONGTYPE, an unknown command, AUTH without a configured
  password, MULTI/EXEC), a raw-socket client pipelining six commands in one segment, inline commands,
  RESP2 pub/sub (SUBSCRIBE to two channels, messages, PING while subscribed, PSUBSCRIBE, UNSUBSCRIBE
  without arguments), CLIENT REPLY SKIP/OFF/ON, and garbage sent to the port (the server's protocol error).
- redis_resp3.pcap: `redis-cli -3` (HELLO 3: maps, sets, doubles, nulls, an error), a raw-socket client
  asking DEBUG PROTOCOL for every RESP3 type (map, set, double, bignum, null, booleans, verbatim,
  attribute, push), and a raw-socket RESP3 subscriber receiving
  `>` pushes interleaved with replies to its own PINGs, plus a client-side-caching invalidation push.
- pgsql_simple.pcap: psql (SSLRequest answered 'N', SCRAM authentication) running DDL, INSERT, SELECT,
  UPDATE, DELETE, COPY FROM STDIN and COPY TO STDOUT, 42P01 (undefined table),
  23505 (unique violation) and 42601 (syntax error); `psql -c` sending two statements in one Query; a
  login with a wrong password (28P01).
- pgsql_extended.pcap: psycopg's extended protocol: named server-side prepared statements reused
  (`prepare=True`), unnamed ones, pipeline mode (several Execute before one Sync), errors at Parse (42P01),
  Bind (22P02) and Execute (23505), COPY in both directions, and a 40001 serialization failure made by
  two sessions updating the same row.
- pgsql_tls.pcap: psql with sslmode=require against the server with ssl=on: SSLRequest answered 'S', the
  rest is TLS.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from veth import Veth

HERE = Path(__file__).parent
NS = "nrdb"
HOST_IF, NS_IF = "nrdb0", "nrdb1"
HOST_IP, NS_IP = "10.79.0.1", "10.79.0.2"
LAB = Veth(NS, HOST_IF, NS_IF, HOST_IP, NS_IP)
REDIS_PORT = 6379
PG_PORT = 5432
PG_PASSWORD = "s3cret-pw"  # the tests check that it is stored nowhere

REDIS_CLI_RESP2 = """\
SET user:1 alice
GET user:1
GET missing:key
INCR counter
INCRBY counter 10
LPUSH queue a b c
LRANGE queue 0 -1
HSET profile:1 name alice city paris
HGETALL profile:1
SADD tags red green
SMEMBERS tags
ZADD board 10 alice 20 bob
ZRANGE board 0 -1 WITHSCORES
ZSCORE board bob
SET big:value {big}
GET big:value
GET queue
NOSUCHCOMMAND arg
AUTH {password}
MULTI
SET tx:a 1
INCR tx:a
EXEC
EXPIRE user:1 100
TTL user:1
DEL user:1
EXISTS user:1
PING
ECHO hello
"""

REDIS_CLI_RESP3 = """\
HSET profile:2 name bob city rome
HGETALL profile:2
SADD colors red blue
SMEMBERS colors
ZADD scores 1.5 x
ZSCORE scores x
GET nothing:here
SISMEMBER colors red
INCR colors
"""
# Every RESP3 reply type, asked for on a raw socket (redis-cli stops reading at some of them).
DEBUG_PROTOCOL_TYPES = (
    "map",
    "set",
    "double",
    "bignum",
    "null",
    "true",
    "false",
    "verbatim",
    "attrib",
    "push",
)

PSQL_SCRIPT = """\
CREATE TABLE items (id integer PRIMARY KEY, name text NOT NULL, price numeric);
INSERT INTO items VALUES (1, 'apple', 1.5), (2, 'pear', 2.25), (3, 'plum', 0.75);
SELECT id, name, price FROM items ORDER BY id;
UPDATE items SET price = price * 2 WHERE id > 1;
SELECT * FROM missing_table;
INSERT INTO items VALUES (1, 'again', 9);
SELEC broken syntax;
SELECT count(*) FROM items; SELECT max(price) FROM items;
\\copy items FROM STDIN
10\tcherry\t3.5
11\tfig\t4
12\tkiwi\t0.5
\\.
COPY items TO STDOUT;
DELETE FROM items WHERE id >= 10;
"""


def sh(*cmd: str, check: bool = True, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    done = subprocess.run(list(cmd), check=check, capture_output=True, env=env)
    done.stdout = done.stdout.decode("utf-8", "replace")
    return done


# --- Redis -------------------------------------------------------------------------------------------------
def resp_command(*args: str | bytes) -> bytes:
    """One command as a RESP array of bulk strings, as every real client sends it."""
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        raw = arg.encode() if isinstance(arg, str) else arg
        out.append(b"$%d\r\n%s\r\n" % (len(raw), raw))
    return b"".join(out)


class RawClient:
    """A plain socket: writes exactly what it is given, reads until the server is quiet for a moment."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection((NS_IP, port), 5)

    def send(self, data: bytes, quiet: float = 0.3) -> bytes:
        self.sock.sendall(data)
        return self.read(quiet)

    def read(self, quiet: float = 0.3) -> bytes:
        self.sock.settimeout(quiet)
        got = b""
        with contextlib.suppress(TimeoutError, OSError):
            while chunk := self.sock.recv(65536):
                got += chunk
        return got

    def close(self) -> None:
        self.sock.close()


def redis_cli(*args: str, stdin: str = "") -> str:
    done = subprocess.run(
        ["redis-cli", "-h", NS_IP, "-p", str(REDIS_PORT), *args],
        input=stdin.encode(),
        capture_output=True,
        check=False,
    )
    return done.stdout.decode(errors="replace")


def redis_server() -> contextlib.AbstractContextManager[subprocess.Popen]:
    return LAB.in_ns(
        "redis-server",
        "--bind",
        NS_IP,
        "--port",
        str(REDIS_PORT),
        "--save",
        "",
        "--appendonly",
        "no",
        "--protected-mode",
        "no",
        "--enable-debug-command",
        "yes",
        "--loglevel",
        "warning",
    )


def record_redis_resp2(work: Path) -> None:
    with redis_server(), LAB.capture(HERE / "redis_resp2.pcap", f"tcp port {REDIS_PORT}"):
        LAB.wait_port(REDIS_PORT)
        time.sleep(0.3)
        redis_cli(stdin=REDIS_CLI_RESP2.format(big="v" * 3000, password=PG_PASSWORD))
        pipelined = RawClient(REDIS_PORT)
        pipelined.send(
            resp_command("SET", "pipe:1", "one")
            + resp_command("SET", "pipe:2", "two")
            + resp_command("GET", "pipe:1")
            + resp_command("INCR", "pipe:1")  # an error in the middle of the pipeline
            + resp_command("MGET", "pipe:1", "pipe:2", "pipe:3")
            + resp_command("DEL", "pipe:1", "pipe:2")
        )
        pipelined.close()
        inline = RawClient(REDIS_PORT)
        for line in (
            b"PING\r\n",
            b"SET inline:key hello\r\n",
            b"EXISTS inline:key\r\n",
            b"INCR inline:key\r\n",
        ):
            inline.send(line)
        inline.close()
        record_redis_pubsub2()
        quiet = RawClient(REDIS_PORT)
        quiet.send(resp_command("CLIENT", "REPLY", "SKIP") + resp_command("SET", "quiet:1", "x"))
        quiet.send(resp_command("CLIENT", "REPLY", "OFF") + resp_command("SET", "quiet:2", "y"))
        quiet.send(resp_command("CLIENT", "REPLY", "ON") + resp_command("GET", "quiet:2"))
        quiet.close()
        garbage = RawClient(REDIS_PORT)
        garbage.send(b"*zz\r\n\x00\x01binary garbage\xff\r\n")  # the server answers a protocol error, closes
        garbage.close()


def record_redis_pubsub2() -> None:
    subscriber = RawClient(REDIS_PORT)
    subscriber.send(resp_command("SUBSCRIBE", "news", "alerts"))
    redis_cli("PUBLISH", "news", "first message")
    redis_cli("PUBLISH", "alerts", "second message")
    subscriber.read()
    subscriber.send(resp_command("PING"))
    subscriber.send(resp_command("PSUBSCRIBE", "ne*"))
    redis_cli("PUBLISH", "news", "third message")
    subscriber.read()
    subscriber.send(resp_command("UNSUBSCRIBE"))  # one confirmation per channel: two replies
    subscriber.send(resp_command("PUNSUBSCRIBE", "ne*"))
    subscriber.send(resp_command("GET", "counter"))  # out of subscribed mode again: a normal reply
    subscriber.close()


def record_redis_resp3(work: Path) -> None:
    with redis_server(), LAB.capture(HERE / "redis_resp3.pcap", f"tcp port {REDIS_PORT}"):
        LAB.wait_port(REDIS_PORT)
        time.sleep(0.3)
        redis_cli("-3", stdin=REDIS_CLI_RESP3)
        types = RawClient(REDIS_PORT)
        types.send(resp_command("HELLO", "3"))
        for name in DEBUG_PROTOCOL_TYPES:
            types.send(resp_command("DEBUG", "PROTOCOL", name))
        types.close()
        subscriber = RawClient(REDIS_PORT)
        subscriber.send(resp_command("HELLO", "3"))
        subscriber.send(resp_command("SUBSCRIBE", "events"))
        redis_cli("PUBLISH", "events", "pushed while idle")
        subscriber.read()
        # a PING sent while a message is pushed: the push must not take the PING's reply
        subscriber.sock.sendall(resp_command("PING", "during"))
        redis_cli("PUBLISH", "events", "pushed next to a reply")
        subscriber.read()
        subscriber.send(resp_command("UNSUBSCRIBE", "events"))
        subscriber.close()
        tracker = RawClient(REDIS_PORT)
        tracker.send(resp_command("HELLO", "3"))
        tracker.send(resp_command("CLIENT", "TRACKING", "on"))
        tracker.send(resp_command("GET", "tracked:key"))
        redis_cli("SET", "tracked:key", "changed")  # the server pushes an invalidation to the tracker
        tracker.read()
        tracker.send(resp_command("GET", "tracked:key"))
        tracker.close()


# --- PostgreSQL --------------------------------------------------------------------------------------------
def as_postgres(*cmd: str) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *cmd]


@contextlib.contextmanager
def pg_cluster(work: Path, ssl: bool) -> Iterator[Path]:
    """A throwaway cluster under `work`, owned by the postgres user, listening on the namespace's IP."""
    data = work / "pgdata"
    if not data.exists():
        pwfile = work / "pw"
        pwfile.write_text(PG_PASSWORD + "\n")
        shutil.chown(work, "postgres")
        shutil.chown(pwfile, "postgres")
        sh(
            *as_postgres(
                "initdb", "-D", str(data), "-U", "postgres", "--pwfile", str(pwfile), "-A", "scram-sha-256"
            )
        )
        sh(
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
            "/CN=pg.nrdb.test", "-keyout", str(data / "server.key"), "-out", str(data / "server.crt"),
        )  # fmt: skip
        for name in ("server.key", "server.crt"):
            shutil.chown(data / name, "postgres")
            (data / name).chmod(0o600)
        with (data / "pg_hba.conf").open("a") as hba:
            hba.write("host all all 10.79.0.0/24 scram-sha-256\n")
    options = f"-c listen_addresses={NS_IP} -c unix_socket_directories={work} -c ssl={'on' if ssl else 'off'}"
    sh(
        "ip",
        "netns",
        "exec",
        NS,
        *as_postgres("pg_ctl", "-D", str(data), "-l", str(work / "pg.log"), "-o", options, "-w", "start"),
    )
    try:
        LAB.wait_port(PG_PORT)
        yield data
    finally:
        sh(*as_postgres("pg_ctl", "-D", str(data), "-m", "fast", "-w", "stop"), check=False)


def psql(*args: str, stdin: str = "", password: str = PG_PASSWORD, sslmode: str = "prefer") -> str:
    env = {**os.environ, "PGPASSWORD": password, "PGSSLMODE": sslmode, "PGCONNECT_TIMEOUT": "5"}
    done = subprocess.run(
        ["psql", "-X", "-h", NS_IP, "-U", "postgres", "-d", "postgres", *args],
        input=stdin.encode(),
        capture_output=True,
        env=env,
        check=False,
    )
    return done.stdout.decode(errors="replace")


def record_pgsql_simple(work: Path) -> None:
    with pg_cluster(work, ssl=False), LAB.capture(HERE / "pgsql_simple.pcap", f"tcp port {PG_PORT}"):
        time.sleep(0.3)
        psql(stdin=PSQL_SCRIPT)
        psql(
            "-c", "SELECT count(*) FROM items; UPDATE items SET name = upper(name)"
        )  # two statements, one Query
        psql("-c", "SELECT 1", password="wrong-password")  # 28P01 during startup


def record_pgsql_extended(work: Path) -> None:
    import psycopg

    dsn = f"host={NS_IP} port={PG_PORT} user=postgres password={PG_PASSWORD} dbname=postgres sslmode=disable"
    with pg_cluster(work, ssl=False):
        with psycopg.connect(dsn, autocommit=True) as setup:
            setup.execute("DROP TABLE IF EXISTS accounts")
            setup.execute("CREATE TABLE accounts (id integer PRIMARY KEY, owner text, balance integer)")
            setup.execute("INSERT INTO accounts VALUES (1, 'ann', 100), (2, 'bob', 50)")
        with LAB.capture(HERE / "pgsql_extended.pcap", f"tcp port {PG_PORT}"):
            time.sleep(0.3)
            extended_session(dsn)
            serialization_failure(dsn)


def extended_session(dsn: str) -> None:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        for account in (1, 2, 1):  # one Parse of a named statement, three Bind/Execute
            conn.execute("SELECT owner, balance FROM accounts WHERE id = %s", (account,), prepare=True)
        for new_id in (3, 4):
            conn.execute(
                "INSERT INTO accounts VALUES (%s, %s, %s)", (new_id, f"user{new_id}", 10), prepare=True
            )
        conn.execute("UPDATE accounts SET balance = balance + %s WHERE id = %s", (5, 3))  # unnamed statement
        with contextlib.suppress(psycopg.Error):
            conn.execute("SELECT * FROM no_such_table WHERE id = %s", (1,), prepare=True)  # fails at Parse
        with contextlib.suppress(psycopg.Error):
            conn.execute("SELECT owner FROM accounts WHERE id = %s::integer", ("not-a-number",))  # at Bind
        with contextlib.suppress(psycopg.Error):
            conn.execute("INSERT INTO accounts VALUES (%s, %s, %s)", (1, "dup", 0), prepare=True)  # Execute
        with conn.pipeline():
            conn.execute("SELECT balance FROM accounts WHERE id = %s", (1,))
            conn.execute("SELECT balance FROM accounts WHERE id = %s", (2,))
            conn.execute("UPDATE accounts SET owner = %s WHERE id = %s", ("ann2", 1))
        with conn.cursor() as cur:
            with cur.copy("COPY accounts (id, owner, balance) FROM STDIN") as copy:
                for row in ((20, "copy-a", 1), (21, "copy-b", 2), (22, "copy-c", 3)):
                    copy.write_row(row)
            with cur.copy("COPY (SELECT id, owner FROM accounts ORDER BY id) TO STDOUT") as copy:
                for _ in copy:
                    pass
        conn.execute("DELETE FROM accounts WHERE id >= 20")


def serialization_failure(dsn: str) -> None:
    """40001: a repeatable-read transaction updates a row another session changed after its snapshot."""
    import psycopg

    with psycopg.connect(dsn) as first, psycopg.connect(dsn, autocommit=True) as second:
        first.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        first.execute("SELECT balance FROM accounts WHERE id = 2")
        second.execute("UPDATE accounts SET balance = balance + 1 WHERE id = 2")
        with contextlib.suppress(psycopg.errors.SerializationFailure):
            first.execute("UPDATE accounts SET balance = balance - 1 WHERE id = 2")
        first.rollback()


def record_pgsql_tls(work: Path) -> None:
    with pg_cluster(work, ssl=True), LAB.capture(HERE / "pgsql_tls.pcap", f"tcp port {PG_PORT}"):
        time.sleep(0.3)
        psql("-c", "SELECT 1", sslmode="require")


RECORDERS = {
    "redis_resp2": record_redis_resp2,
    "redis_resp3": record_redis_resp3,
    "pgsql_simple": record_pgsql_simple,
    "pgsql_extended": record_pgsql_extended,
    "pgsql_tls": record_pgsql_tls,
}


def main(names: list[str]) -> None:
    LAB.up()
    try:
        for name in names or list(RECORDERS):
            with tempfile.TemporaryDirectory(prefix=f"nr-{name}-") as work:
                Path(work).chmod(0o755)
                RECORDERS[name](Path(work))
            out = HERE / f"{name}.pcap"
            print(f"{out.name}: {out.stat().st_size} bytes")
    finally:
        LAB.down()


if __name__ == "__main__":
    main(sys.argv[1:])
