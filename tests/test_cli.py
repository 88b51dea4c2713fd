"""The `netrecall` entry point: usage mistakes and bad values end in a short message and exit 2, never a
traceback (typer vendors click, so its exceptions are not the `click` package's)."""

from __future__ import annotations

import subprocess
import sys

import pytest


def netrecall(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "netrecall", *args], capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (("import",), "Missing argument"),
        (("query", "--bogus", "x"), "No such option: --bogus"),
        (("nosuchcommand",), "No such command 'nosuchcommand'"),
        (("schema", "print", "--ttl", "5x"), "invalid duration '5x'"),
        (("query", "http", "--store", "ftp://nowhere"), "scheme must be chdb://, http:// or https://"),
        (("store", "info", "--store", "http://127.0.0.1:1/db"), "Connection refused"),
    ],
)
def test_bad_usage_is_a_message_not_a_traceback(args, says):
    done = netrecall(*args)
    assert done.returncode == 2
    assert says in done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    if "Usage:" not in done.stderr:  # our own errors are exactly one line
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_help_exits_zero():
    done = netrecall("--help")
    assert done.returncode == 0 and "import" in done.stdout and "Traceback" not in done.stderr
