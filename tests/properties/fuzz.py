"""`make fuzz`: run the property suite with the large random profile until enough runs were made.

Each round gives every test module a fresh seed and a pytest process of its own (one at a time, so
one core; a module whose failure kills the blocking bridge cannot spoil the others). Every failure
prints its module, its seed and the command that replays it; the summary gives runs, runs/s and the
distinct failures found. Known failures (``_known.UNTIL_REWRITE``) are generated too, unless
``--default-space``: one known dimension per round in turn, then all of them at once (hypothesis stops
a test at its first failure, so one known failure would otherwise hide the others).

Usage: ``python -m tests.properties.fuzz [--runs 10000] [--seed N] [--examples 2000] [--default-space]
[--minutes M]``
"""

from __future__ import annotations

import argparse
import os
import random
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ._known import UNTIL_REWRITE

HERE = Path(__file__).parent
MODULES = ["test_async_runs.py", "test_sync_runs.py", "test_two_readers.py", "test_interrupts.py"]
_FAILURE = re.compile(r"^\s*\|?\s*(?:E\s+)?((?:\w+\.)*\w+(?:Error|Exception|Interrupt|Exit)\b: .+)$")
_BLOB = re.compile(r"@reproduce_failure\([^)]*\)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10_000, help="stop after at least this many runs")
    parser.add_argument("--seed", type=int, default=None, help="seed of the first round (then +1 each)")
    parser.add_argument("--examples", type=int, default=2000, help="hypothesis examples per test per round")
    parser.add_argument("--default-space", action="store_true", help="leave out the known failures")
    parser.add_argument("--minutes", type=float, default=None, help="start no module after this long")
    parser.add_argument("--spaces", default=None, help="known dimensions to cycle through, comma-separated")
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(2**32)
    logs = Path(tempfile.mkdtemp(prefix="tether-fuzz-"))
    print(f"tether fuzz: at least {args.runs} runs, first seed {seed}, logs in {logs}", flush=True)
    started = time.monotonic()
    runs = 0
    failures: dict[tuple[str, str], list[tuple[str, int]]] = {}
    deadline = started + 60 * args.minutes if args.minutes else None
    spaces = [""] if args.default_space else [*UNTIL_REWRITE, "1"]
    if args.spaces:
        spaces = args.spaces.split(",")
    rounds = 0
    while runs < args.runs and (deadline is None or time.monotonic() < deadline):
        known = spaces[rounds % len(spaces)]
        rounds += 1
        for module in MODULES:
            if deadline is not None and time.monotonic() > deadline:
                print(f"  stopped: --minutes {args.minutes} are over", flush=True)
                break
            made, found = _round(module, seed, known, args, logs)
            runs += made
            for message in found:
                failures.setdefault((module, message), []).append((known, seed))
            elapsed = time.monotonic() - started
            print(
                f"  {module} seed {seed} known={known or '-'}: {made} runs, {len(found)} failure(s); "
                f"total {runs} runs in {elapsed:.0f} s ({runs / elapsed:.1f} runs/s)",
                flush=True,
            )
        seed += 1
    elapsed = time.monotonic() - started
    print(
        f"\ntether fuzz: {runs} runs in {elapsed:.0f} s ({runs / elapsed:.1f} runs/s), "
        f"{len(failures)} distinct failure(s)"
    )
    for (module, message), found in sorted(failures.items()):
        known, seed = found[0]
        print(
            f"  {module}: {message}\n    found {len(found)} time(s), first by: "
            f"{_replay(module, seed, known, args)}"
        )
    return 1 if failures else 0


def _round(module: str, seed: int, known: str, args: argparse.Namespace, logs: Path) -> tuple[int, list[str]]:
    stats = logs / f"{module}.{seed}.{known or 'default'}.runs"
    env = {
        **os.environ,
        "HYPOTHESIS_PROFILE": "fuzz",
        "TETHER_FUZZ_EXAMPLES": str(args.examples),
        "TETHER_FUZZ_STATS": str(stats),
        "TETHER_FUZZ_KNOWN": known,
    }
    command = [
        sys.executable,
        "-m",
        "pytest",
        str(HERE / module),
        "-q",
        "--timeout",
        "0",
        f"--hypothesis-seed={seed}",
    ]
    proc = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    log = logs / f"{module}.{seed}.{known or 'default'}.log"
    log.write_text(proc.stdout + proc.stderr)
    made = sum(int(line) for line in stats.read_text().split()) if stats.exists() else 0
    if proc.returncode in (0, 5):  # 5: every test skipped or deselected
        return made, []
    found = sorted({m.group(1).strip() for m in map(_FAILURE.match, proc.stdout.splitlines()) if m})
    print(f"FAILED {module} with seed {seed}, known={known} (log {log}):", flush=True)
    for message in found or [f"pytest exited {proc.returncode}"]:
        print(f"    {message}")
    for blob in sorted(set(_BLOB.findall(proc.stdout))):
        print(f"    {blob}")
    print(f"    replay: {_replay(module, seed, known, args)}", flush=True)
    return made, found or [f"pytest exited {proc.returncode}"]


def _replay(module: str, seed: int, known: str, args: argparse.Namespace) -> str:
    chosen = f"TETHER_FUZZ_KNOWN={known} " if known else ""
    return (
        f"{chosen}HYPOTHESIS_PROFILE=fuzz TETHER_FUZZ_EXAMPLES={args.examples} "
        f".venv/bin/python -m pytest tests/properties/{module} --timeout 0 --hypothesis-seed={seed}"
    )


if __name__ == "__main__":
    sys.exit(main())
