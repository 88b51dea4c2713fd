"""The Releaser hands memory back only once the process has grown past its slack, and follows the
working set: a level that grew becomes the new reference, a level that shrank too.

Run in a fresh interpreter: in the test process, freed memory of earlier tests is reused by new
allocations, so RSS need not grow when a test allocates."""

from __future__ import annotations

import subprocess
import sys

SCENARIO = """
from netrecall.memory import Releaser, rss_bytes

MB = 1 << 20
before = rss_bytes()
blob = b"x" * (64 * MB)  # written, so resident
assert rss_bytes() - before >= 60 * MB, "rss_bytes follows an allocation"
del blob

release = Releaser(None, slack=32 * MB)
start = release.settled
release()
assert release.settled <= start + 8 * MB, "nothing grew: still the reference it had"

blob = b"x" * (96 * MB)
release()
assert release.settled >= start + 88 * MB, "grown past the slack: the live 96 MB are the new level"
grown = release.settled

del blob
release()
assert release.settled <= grown - 88 * MB, "shrank: the lower level is the reference again"
print("ok")
"""


def test_releaser_follows_the_working_set() -> None:
    done = subprocess.run([sys.executable, "-c", SCENARIO], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "ok"
