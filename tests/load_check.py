"""Run a set of tests many times on a loaded machine; report whether any outcome changed.

A test that fails because the machine is busy fails for the wrong reason (issue "Tests
that can fail"). This script starts CPU burners (plain Python loops, one per
``--burners``; the equivalent of ``stress --cpu N``), runs pytest ``--runs`` times
on the given tests, and prints each run's summary line. It exits 1 when any run's
outcome differs from the first one (a test that passed once and failed once).

Usage (what ``make load-check`` runs)::

    python tests/load_check.py --runs 20 --burners 4 -- tests/test_store.py tests/test_backbones.py
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import re
import signal
import subprocess
import sys
import time


def _burn() -> None:  # pragma: no cover - runs in a child process until killed
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    while True:
        pass


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--burners", type=int, default=4, help="CPU-burning processes (default 4)")
    ap.add_argument("--timeout", type=float, default=3600, help="seconds per pytest run")
    ap.add_argument("pytest_args", nargs="*", help="tests and pytest options (after --)")
    args = ap.parse_args(argv)
    tests = args.pytest_args or ["tests/test_store.py", "tests/test_backbones.py"]
    burners = [multiprocessing.Process(target=_burn, daemon=True) for _ in range(args.burners)]
    for proc in burners:
        proc.start()
    outcomes = []
    try:
        for run in range(1, args.runs + 1):
            start = time.monotonic()
            proc = subprocess.run(
                [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                 "-m", "not slow and not gpu and not network", *tests],
                capture_output=True, text=True, timeout=args.timeout)
            lines = [line for line in proc.stdout.splitlines() if line.strip()]
            summary = lines[-1] if lines else f"no output (exit {proc.returncode})"
            failed = sorted(re.findall(r"^(?:FAILED|ERROR) (\S+)", proc.stdout, re.M))
            outcomes.append((proc.returncode, tuple(failed)))
            print(f"run {run}/{args.runs}: exit {proc.returncode}, {summary} "
                  f"[{time.monotonic() - start:.0f} s]", flush=True)
            for name in failed:
                print(f"    {name}", flush=True)
    finally:
        for proc in burners:
            proc.terminate()
        for proc in burners:
            proc.join(timeout=5)
    changed = len(set(outcomes)) > 1
    print(f"{args.runs} runs under {args.burners} CPU burners on {os.cpu_count()} cores: "
          f"{sum(code == 0 for code, _ in outcomes)} passed, "
          f"{'outcome CHANGED between runs' if changed else 'the same outcome every run'}")
    return 1 if changed or outcomes[0][0] != 0 else 0


if __name__ == "__main__":
    sys.exit(main())
