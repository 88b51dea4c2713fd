"""The Releaser hands memory back only once the process has grown past its slack, and follows the
working set: a level that grew becomes the new reference, a level that shrank too. The streaming
commands' engine setting hands a query's freed pages back within a second.

Run in a fresh interpreter: in the test process, freed memory of earlier tests is reused by new
allocations, so RSS need not grow when a test allocates."""

from __future__ import annotations

import os
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


# An engine query that allocates and frees ~250 MB, then a second of small queries (the engine's jemalloc
# decays its dirty pages only while it allocates): how much of it is still resident.
DECAY_SCENARIO = """
import sys, time
from netrecall.memory import decay_engine_pages_quickly, rss_bytes
if sys.argv[1] == "quick":
    decay_engine_pages_quickly()
from netrecall.store import open_store
store = open_store(sys.argv[2])
store.scalar("SELECT 1")
before = rss_bytes()
store.scalar("SELECT length(groupArray(number)) FROM numbers(10000000)")
for _ in range(10):
    time.sleep(0.1)
    store.scalar("SELECT 1")
print((rss_bytes() - before) >> 20)
"""


def _kept_after_a_second(mode: str, store_url: str) -> int:
    env = {k: v for k, v in os.environ.items() if k != "JE_MALLOC_CONF"}
    done = subprocess.run(
        [sys.executable, "-c", DECAY_SCENARIO, mode, store_url],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return int(done.stdout.split()[-1])


def test_streaming_commands_get_freed_engine_pages_back_within_a_second(tmp_path) -> None:
    """decay_engine_pages_quickly (export, snapshots) before the engine loads: a query's freed pages are
    handed back within a second; with chDB's own 5 s decay they are still resident then."""
    quick = _kept_after_a_second("quick", f"chdb://{tmp_path}/quick")
    default = _kept_after_a_second("default", f"chdb://{tmp_path}/default")
    assert quick <= 64, f"{quick} MB still resident a second after the query"
    assert default >= 128, f"chDB's own decay kept only {default} MB: revisit STREAMING_DECAY_MS"
