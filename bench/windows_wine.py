#!/usr/bin/env python3
"""Measure what `palisade run --profile unconfined` adds to a command under Wine.

After a few unmeasured rounds, each round runs `cmd /c exit 0` bare under Wine and then under
`palisade.exe run --profile unconfined --`, one after the other, so slow drift on the machine
affects both alike. The script prints the median and p95 of each, palisade minus bare and
palisade/bare. The unconfined profile is what Wine can run: palisade resolves the policy,
creates a kill-on-close job object, starts the command suspended, assigns and resumes it, and
copies its output through pipes. Confined runs need a Windows machine set up with
`palisade setup`.

It exits 0 when every run succeeded, 1 when a measured run fails, and 2 on a usage or setup
error. Uses only the standard library; written for Python 3.8 or later, tested with 3.11.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

WINE = "/usr/lib/wine/wine64"
WINESERVER = "/usr/lib/wine/wineserver"
DEFAULT_TARGET_DIR = Path(os.environ.get("PALISADE_WIN_TARGET_DIR", "/var/tmp/palisade-win-target"))
DEFAULT_PALISADE = DEFAULT_TARGET_DIR / "x86_64-pc-windows-gnu" / "release" / "palisade.exe"
DEFAULT_PREFIX = Path(os.environ.get("PALISADE_WINEPREFIX", "/var/tmp/palisade-wine"))
COMMAND = ["cmd", "/c", "exit 0"]


class RunFailed(Exception):
    """A measured command exited with an unexpected status."""


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Measure `palisade run --profile unconfined -- cmd /c exit 0` against bare `cmd /c exit 0`, both under Wine.")
    parser.add_argument("--palisade", type=Path, default=DEFAULT_PALISADE, metavar="PATH", help=f"palisade.exe to measure (default: {DEFAULT_PALISADE})")
    parser.add_argument("--wineprefix", type=Path, default=DEFAULT_PREFIX, metavar="DIR", help=f"the Wine prefix, set up by .ci/windows.sh (default: {DEFAULT_PREFIX})")
    parser.add_argument("--rounds", type=int, default=50, metavar="N", help="rounds of one bare and one palisade run (default: 50)")
    parser.add_argument("--warmup", type=int, default=3, metavar="N", help="unmeasured rounds first (default: 3)")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the samples and summary to FILE")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    if args.warmup < 0:
        parser.error("--warmup must not be negative")
    return args


def wine_environment(prefix: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update({"WINEPREFIX": str(prefix), "WINEDEBUG": "-all", "WINEDLLOVERRIDES": "mscoree,mshtml,winedbg.exe="})
    env.pop("DISPLAY", None)
    return env


def run_once(argv: list[str], env: dict[str, str], expected: int) -> int:
    """Run argv and return its wall time in nanoseconds. Output goes to /dev/null: Wine's
    helper processes would hold a pipe open."""
    start = time.perf_counter_ns()
    status = subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False).returncode
    elapsed = time.perf_counter_ns() - start
    if status != expected:
        raise RunFailed(f"{' '.join(argv)} exited with {status}, expected {expected}")
    return elapsed


def percentile(samples: list[int], fraction: float) -> float:
    ordered = sorted(samples)
    index = max(0, math.ceil(fraction * len(ordered)) - 1)
    return ordered[index]


def summary(samples: list[int]) -> dict[str, float]:
    return {"median_ms": statistics.median(samples) / 1e6, "p95_ms": percentile(samples, 0.95) / 1e6}


def machine() -> dict[str, str]:
    wine_version = subprocess.run([WINE, "--version"], capture_output=True, text=True, check=False).stdout.strip()
    return {"cpus": str(os.cpu_count()), "kernel": platform.release(), "wine": wine_version, "python": platform.python_version()}


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if not args.palisade.is_file():
        print(f"error: {args.palisade} not found; build it with:\n  RUSTC=/usr/bin/rustc RUSTDOC=/usr/bin/rustdoc RUSTC_BOOTSTRAP=1 "
              f"CARGO_TARGET_DIR={DEFAULT_TARGET_DIR} /usr/bin/cargo build --release --locked "
              "-Zbuild-std=std,panic_abort --target x86_64-pc-windows-gnu -p palisade", file=sys.stderr)
        return 2
    if not (args.wineprefix / "system.reg").is_file():
        print(f"error: {args.wineprefix} is not a Wine prefix; run .ci/windows.sh once to set it up", file=sys.stderr)
        return 2
    env = wine_environment(args.wineprefix)
    bare = [WINE, *COMMAND]
    under_palisade = [WINE, str(args.palisade), "run", "--profile", "unconfined", "--", *COMMAND]

    # A persistent wineserver, so no round pays for starting Wine's server and services.
    subprocess.run([WINESERVER, "-p"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    try:
        # Probes: both commands work, and palisade passes the command's own status through, so
        # a palisade that never ran the command cannot be measured.
        run_once(bare, env, 0)
        run_once([WINE, str(args.palisade), "run", "--profile", "unconfined", "--", "cmd", "/c", "exit 3"], env, 3)
        for _ in range(args.warmup):
            run_once(bare, env, 0)
            run_once(under_palisade, env, 0)
        samples: dict[str, list[int]] = {"bare": [], "palisade": []}
        for _ in range(args.rounds):
            samples["bare"].append(run_once(bare, env, 0))
            samples["palisade"].append(run_once(under_palisade, env, 0))
    except RunFailed as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    finally:
        subprocess.run([WINESERVER, "-k"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)

    results = {name: summary(values) for name, values in samples.items()}
    added_ms = results["palisade"]["median_ms"] - results["bare"]["median_ms"]
    ratio = results["palisade"]["median_ms"] / results["bare"]["median_ms"]
    print(f"{args.rounds} rounds, interleaved; Wine: {machine()['wine']}; {os.cpu_count()} CPUs")
    print(f"{'':<10} {'median':>10} {'p95':>10}")
    for name, values in results.items():
        print(f"{name:<10} {values['median_ms']:>8.1f}ms {values['p95_ms']:>8.1f}ms")
    print(f"palisade adds {added_ms:.1f} ms to the median, {ratio:.2f}x bare")
    if args.json:
        record = {
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "machine": machine(),
            "rounds": args.rounds,
            "command": COMMAND,
            "results": results,
            "added_ms": added_ms,
            "ratio": ratio,
            "samples_ns": samples,
        }
        args.json.write_text(json.dumps(record, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
