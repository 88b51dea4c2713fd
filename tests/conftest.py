"""Shared fixtures: one embedded chDB engine per test process (chDB allows one data path per process),
a fresh database per test, and the real example captures shipped by Debian's python3-dpkt."""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

import pytest

from netrecall.schema.migrate import ensure_schema
from netrecall.store import Store, open_store

DPKT_EXAMPLES = Path("/usr/share/doc/python3-dpkt/examples/data")
CAPTURES = Path(__file__).parent / "captures"


@pytest.fixture(scope="session")
def chdb_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The single chDB data path this test process uses."""
    return tmp_path_factory.mktemp("chdb") / "store"


@pytest.fixture
def store_url(chdb_path: Path) -> str:
    """A URL to a fresh, empty database on the session's embedded engine."""
    return f"chdb://{chdb_path}?database=t_{uuid.uuid4().hex[:12]}"


@pytest.fixture
def store(store_url: str) -> Store:
    """A fresh database with the netrecall schema in place."""
    opened = open_store(store_url)
    ensure_schema(opened)
    yield opened
    opened.command(f"DROP DATABASE IF EXISTS {opened.database}")


@pytest.fixture(scope="session")
def chfront(chdb_path: Path):
    """The ClickHouse HTTP front (tests/chfront.py), in this process on the session's chDB engine."""
    from chfront import ChFront

    with ChFront(chdb_path) as front:
        yield front


@pytest.fixture(params=["chdb", "http"])
def any_store(request: pytest.FixtureRequest, chdb_path: Path) -> Store:
    """A fresh database with the schema, reached embedded (chdb://) or over HTTP through the front."""
    database = f"t_{uuid.uuid4().hex[:12]}"
    if request.param == "chdb":
        url = f"chdb://{chdb_path}?database={database}"
    else:
        front = request.getfixturevalue("chfront")
        url = f"{front.url}/{database}"
    opened = open_store(url)
    ensure_schema(opened)
    yield opened
    opened.command(f"DROP DATABASE IF EXISTS {opened.database}")
    if request.param == "http":
        opened.close()  # the embedded client stays, like `store`'s: it shares the session's engine


def require_tool(name: str) -> str:
    """The path of a Debian tool the tests need; `make test` installs them, so absence is a failure."""
    found = shutil.which(name)
    if not found:
        pytest.fail(f"{name} is not installed: run `make test`, which installs the test packages")
    return found
