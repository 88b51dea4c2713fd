"""Run the fuzz targets (`make fuzz`): each in its own libFuzzer process, for a count or a time.

    python -m tests.fuzz.run [TARGET...] [--runs 1000000] [--seconds 3600] [--jobs 1] [--work DIR]

Seeds are written fresh from the repository's captures; the growing corpus and any crashing input stay
under DIR (default bench/out/fuzz). The table at the end gives executions, speed, coverage and
findings per target; the exit code is 1 when any target crashed or hung (an input over 1 s), and the
crashing input's path is printed: copy it under tests/fuzz_regressions/TARGET/ with its fix.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tests.fuzz.harness import INSTRUMENT
from tests.fuzz.seeds import ROOT, build

ORDER = list(INSTRUMENT)  # capture, decode, tcp, kfl, sqlguard, ingest, then the dissectors
FINDINGS = ("crash-", "timeout-", "oom-", "leak-", "slow-unit-")
# Executions per libFuzzer process. Under atheris the process grows with every input (~80 KB an input for
# the capture target, ~20 KB for decode, a few KB for the rest; measured, and absent from the same loop
# without atheris): the file targets restart more often so the 4 GB limit stays about the input.
SEGMENT = {"capture": 20_000, "decode": 40_000}


@dataclass
class Result:
    target: str
    executions: int = 0
    seconds: float = 0.0
    coverage: int = 0
    features: int = 0
    corpus: int = 0
    seeds: int = 0
    rss_mb: int = 0
    crashes: list[str] = field(default_factory=list)
    hangs: list[str] = field(default_factory=list)
    error: str = ""

    @property
    def ok(self) -> bool:
        return not (self.crashes or self.hangs or self.error)

    @property
    def rate(self) -> float:
        return self.executions / self.seconds if self.seconds else 0.0


def fuzz(
    target: str, runs: int, seconds: int, work: Path, quiet: bool = True, segment: int = 100_000
) -> Result:
    """Fuzz `target` until `runs` executions, `seconds`, or the first finding.

    The run is cut into libFuzzer processes of `segment` executions each (SEGMENT for the file targets),
    over the same corpus: see SEGMENT.
    """
    seeds_dir = work / "seeds" / target
    corpus = work / "corpus" / target
    artifacts = work / "artifacts" / target
    for path in (corpus, artifacts):
        path.mkdir(parents=True, exist_ok=True)
    result = Result(target, seeds=build(target, seeds_dir))
    before = {p.name for p in artifacts.iterdir()}
    log = work / f"{target}.log"
    started = time.monotonic()
    text = ""
    while result.executions < runs:
        left = seconds - (time.monotonic() - started)
        if left < 1:
            break
        part = Result(target)
        size = min(SEGMENT.get(target, segment), runs - result.executions)
        text = _segment(target, size, int(left), corpus, seeds_dir, artifacts, log)
        _parse(text, part)
        result.executions += part.executions
        result.coverage = max(result.coverage, part.coverage)
        result.rss_mb = max(result.rss_mb, part.rss_mb)
        if part.error or "ERROR: libFuzzer" in text or "Uncaught Python exception" in text:
            break
        if part.executions == 0:
            result.error = f"libFuzzer ran nothing: see {log}"
            break
    result.seconds = time.monotonic() - started
    for path in sorted(artifacts.iterdir()):
        if path.name in before or not path.name.startswith(FINDINGS):
            continue
        (result.hangs if path.name.startswith(("timeout-", "slow-unit-")) else result.crashes).append(
            str(path)
        )
    if result.ok and ("ERROR: libFuzzer" in text or "Uncaught Python exception" in text):
        result.error = f"libFuzzer stopped: see {log}"
    result.corpus = sum(1 for _ in corpus.iterdir())
    if not quiet and not result.ok:
        sys.stderr.write(_excerpt(text))
    return result


def _segment(
    target: str, runs: int, seconds: int, corpus: Path, seeds: Path, artifacts: Path, log: Path
) -> str:
    command = [
        sys.executable,
        "-m",
        "tests.fuzz.harness",
        target,
        f"-runs={runs}",
        f"-max_total_time={seconds}",
        "-timeout=1",
        "-rss_limit_mb=4096",
        "-max_len=16384",
        "-print_final_stats=1",
        "-print_pcs=0",
        f"-artifact_prefix={artifacts}/",
        str(corpus),
        str(seeds),
    ]
    with open(log, "w") as out:
        subprocess.run(command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, timeout=seconds + 600)
    return log.read_text(errors="replace")


def _parse(text: str, result: Result) -> None:
    executed = re.findall(r"stat::number_of_executed_units:\s*(\d+)", text)
    if executed:
        result.executions = int(executed[-1])
    else:  # stopped by a finding: the last status line has the count
        counts = re.findall(r"^#(\d+)\s", text, re.M)
        result.executions = int(counts[-1]) if counts else 0
    cov = re.findall(r"cov: (\d+) ft: (\d+)", text)
    if cov:
        result.coverage, result.features = int(cov[-1][0]), int(cov[-1][1])
    rss = re.findall(r"stat::peak_rss_mb:\s*(\d+)", text)
    if rss:
        result.rss_mb = int(rss[-1])


def _excerpt(text: str) -> str:
    """The Python traceback or libFuzzer's error lines of a failed run."""
    start = text.find("=== Uncaught Python exception")
    if start < 0:
        start = max(text.find("ERROR: libFuzzer"), 0)
    return text[start : start + 4000] + "\n"


def table(results: list[Result]) -> str:
    head = f"{'target':<11} {'executions':>11} {'seconds':>8} {'exec/s':>8} {'cov':>6} {'corpus':>7} "
    head += f"{'crashes':>7} {'hangs':>5} {'rss MB':>6}"
    lines = [head]
    for r in results:
        lines.append(
            f"{r.target:<11} {r.executions:>11,} {r.seconds:>8.0f} {r.rate:>8,.0f} {r.coverage:>6} "
            f"{r.corpus:>7} {len(r.crashes):>7} {len(r.hangs):>5} {r.rss_mb:>6}"
            + (f"  {r.error}" if r.error else "")
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("targets", nargs="*", default=ORDER)
    parser.add_argument("--runs", type=int, default=1_000_000, help="executions per target")
    parser.add_argument("--seconds", type=int, default=3600, help="at most this long per target")
    parser.add_argument("--jobs", type=int, default=1, help="targets run side by side")
    parser.add_argument("--work", type=Path, default=ROOT / "bench" / "out" / "fuzz")
    args = parser.parse_args(argv)
    unknown = [t for t in args.targets if t not in INSTRUMENT]
    if unknown:
        parser.error(f"unknown target(s) {', '.join(unknown)}; targets: {', '.join(ORDER)}")
    args.work.mkdir(parents=True, exist_ok=True)

    def one(target: str) -> Result:
        result = fuzz(target, args.runs, args.seconds, args.work, quiet=False)
        print(f"{target}: {result.executions:,} executions in {result.seconds:.0f} s", flush=True)
        return result

    with ThreadPoolExecutor(max(1, args.jobs)) as pool:
        results = list(pool.map(one, args.targets))
    print(table(results))
    (args.work / "last-run.json").write_text(
        json.dumps([{**asdict(r), "rate": r.rate} for r in results], indent=1) + "\n"
    )
    for r in results:
        for path in r.crashes + r.hangs:
            print(f"FINDING {r.target}: {path}")
    short = [r.target for r in results if r.ok and r.executions < args.runs]
    if short:
        print(f"below {args.runs:,} executions (time limit): {', '.join(short)}")
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
