"""Shared benchmark plumbing: timing a command with its own peak RSS, and printing side-by-side tables."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

OUT = Path(__file__).parent / "out"  # generated captures and stores; never committed


@dataclass(frozen=True)
class Measurement:
    seconds: float
    peak_rss_mb: float
    stdout: str


def run_measured(command: Sequence[str], env: dict[str, str] | None = None) -> Measurement:
    """Run a command to completion; wall time and the peak RSS of that process alone (wait4 rusage).

    A child's ru_maxrss starts from the high-water mark of the memory it was spawned from (the kernel
    records the old address space's peak at exec, and subprocess spawns with vfork): this process's peak
    is reset first, so a large buffer it once held does not show up as the child's peak."""
    _reset_peak_rss()
    started = time.perf_counter()
    proc = subprocess.Popen(
        list(command), stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, **(env or {})}
    )
    # Read output before waiting so a chatty process cannot block on a full pipe.
    stdout = proc.stdout.read() if proc.stdout else b""
    stderr = proc.stderr.read() if proc.stderr else b""
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({proc.returncode}): {stderr.decode()[-500:]}")
    return Measurement(seconds, usage.ru_maxrss / 1024, stdout.decode(errors="replace"))


def _reset_peak_rss() -> None:
    with open("/proc/self/clear_refs", "w") as handle:  # 5: reset VmHWM to the current RSS (Linux >= 4.0)
        handle.write("5")


def print_table(title: str, header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """A plain fixed-width table (benchmark output goes to logs, so no colours)."""
    cells = [list(map(str, header))] + [[_fmt(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    print(title)
    for index, row in enumerate(cells):
        print("  " + "  ".join(cell.rjust(width) for cell, width in zip(row, widths, strict=True)))
        if index == 0:
            print("  " + "  ".join("-" * width for width in widths))


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:,.2f}" if value < 1000 else f"{value:,.0f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def verdict(name: str, ok: bool, detail: str) -> bool:
    print(f"  target {name}: {'MET' if ok else 'MISSED'} ({detail})")
    return ok


def in_child(code: str) -> str:
    """Run Python code in a process of its own (the embedded store has one owner); what it printed."""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return done.stdout.strip()


def prepare_dissect_store(store_url: str, capture: Path | str) -> int:
    """The capture imported into the store (a file already imported is skipped by its sha256), the calls
    and the watermark emptied, so the next `netrecall dissect` starts from nothing; the packets stored."""
    return int(
        in_child(f"""
from netrecall.ingest.importer import import_files
from netrecall.schema.migrate import ensure_schema
from netrecall.store import open_store
store = open_store({store_url!r})
ensure_schema(store)
import_files(store, [{str(capture)!r}])
store.command("TRUNCATE TABLE api_calls")
store.command("TRUNCATE TABLE dissect_state")
print(store.scalar("SELECT count() FROM packets"))
""")
    )
