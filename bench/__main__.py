"""`python -m bench [NAME...]` runs every bench/bench_*.py (or the named ones) and prints their tables."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

# Import runs first: the others delete stores of thousands of files, and on this machine's ext4 (no
# journal) inodes freed in the last minutes are skipped one by one when new files are created, which made
# the import that followed them up to 30% slower (kernel time in find_inode_bit/recently_deleted).
FIRST = ["import"]


def main(selected: list[str]) -> int:
    found = sorted(p.stem.removeprefix("bench_") for p in Path(__file__).parent.glob("bench_*.py"))
    names = [n for n in FIRST if n in found] + [n for n in found if n not in FIRST]
    if selected:
        unknown = [n for n in selected if n not in names]
        if unknown:
            print(f"unknown benchmark(s): {', '.join(unknown)}; known: {', '.join(names)}", file=sys.stderr)
            return 2
        names = selected
    failed = 0
    for name in names:
        print(f"\n== {name} ==", flush=True)
        module = importlib.import_module(f"bench.bench_{name}")
        failed += 0 if module.run() else 1
    print(f"\n{len(names) - failed} benchmark(s) met their targets, {failed} missed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
