#!/usr/bin/env python3
"""Measure the start-to-exit time of /bin/true run bare, under palisade and under bwrap.

Each round runs the three commands one after another (bare, palisade, bwrap), so slow drift on
the machine affects all of them alike. The script prints the median and p95 of each, palisade
minus bare, and palisade/bwrap, then states whether the startup targets are met. It exits 0
when every run succeeded, whether or not the targets are met, because it is a measurement and
not a test. It exits 1 when a run fails and 2 on a usage or setup error.

Uses only the standard library. Written for Python 3.8 or later on Linux, tested with 3.11.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import math
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_PALISADE = REPO_ROOT / "target" / "release" / "palisade"
TRUE_BINARY = "/bin/true"

# Startup targets: palisade starts no slower than bwrap with a comparable policy, and adds at
# most this much to the median of a bare run.
MAX_RATIO_TO_BWRAP = 1.0
MAX_OVERHEAD_MS = 3.0


class RunFailed(Exception):
    """A measured command exited with a non-zero status or could not be started."""


@dataclass
class Target:
    """One way of running /bin/true and its samples in nanoseconds."""

    name: str
    # Sandbox command line that the measured command is appended to, empty for a bare run.
    wrapper: list[str]
    samples_ns: list[int] = field(default_factory=list)

    @property
    def argv(self) -> list[str]:
        return self.command_argv([TRUE_BINARY])

    def command_argv(self, command: list[str]) -> list[str]:
        return self.wrapper + command


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=(
            "Measure start-to-exit time of /bin/true bare, under `palisade run` and under "
            "bwrap with a comparable policy."
        ),
    )
    parser.add_argument(
        "--palisade",
        type=Path,
        default=DEFAULT_PALISADE,
        metavar="PATH",
        help="palisade binary to measure (default: target/release/palisade in the repository)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=200,
        metavar="N",
        help="number of measured rounds, each running every command once (default: 200)",
    )
    parser.add_argument(
        "--warmup",
        type=int,
        default=5,
        metavar="N",
        help="number of unmeasured rounds before the measured ones (default: 5)",
    )
    parser.add_argument(
        "--json",
        type=Path,
        metavar="FILE",
        help="also write the figures, raw samples and machine info to FILE as JSON",
    )
    args = parser.parse_args(argv)

    if args.rounds < 1:
        parser.error(f"--rounds must be at least 1, got {args.rounds}")
    if args.warmup < 0:
        parser.error(f"--warmup must not be negative, got {args.warmup}")
    return args


def check_palisade_binary(path: Path) -> str | None:
    """Return an error message if `path` is not an executable file, else None."""
    if not path.exists():
        return (
            f"palisade binary not found at {path}. Build it with `cargo build --release` "
            f"in {REPO_ROOT}, or pass --palisade PATH."
        )
    if not path.is_file() or not os.access(path, os.X_OK):
        return f"palisade binary at {path} is not an executable file. Pass --palisade PATH."
    return None


def bwrap_wrapper(bwrap: str, workspace: str, is_root: bool) -> list[str]:
    """Build a bwrap command line with roughly the policy of palisade's default profile.

    The host root is read-only, the workspace is writable, and every namespace bwrap supports
    is unshared, so the network is off.
    """
    argv = [bwrap, "--ro-bind", "/", "/", "--unshare-all"]
    if not is_root:
        # --unshare-all only tries to create a user namespace. A non-root user without
        # setuid bwrap needs one, so request it outright and fail loudly if it is missing.
        argv.append("--unshare-user")
    argv += [
        "--die-with-parent",
        "--proc", "/proc",
        "--dev", "/dev",
        "--tmpfs", "/tmp",
        # bwrap mounts in argument order, so the workspace bind comes after the /tmp tmpfs.
        # The other way round, a workspace under /tmp (the usual place for mkdtemp) would be
        # hidden by the tmpfs and --chdir would fail.
        "--bind", workspace, workspace,
        "--chdir", workspace,
    ]
    return argv


def check_runs_command(target: Target, workspace: str) -> str | None:
    """Return an error message unless the sandbox runs a command that writes to the workspace.

    A sandbox that exits 0 without running its command would otherwise pass as a fast one.
    """
    touch = shutil.which("touch")
    if touch is None:
        return "touch not found in PATH, so the sandboxes cannot be checked. Install coreutils."

    probe = Path(workspace) / f"{target.name}-probe"
    argv = target.command_argv([touch, str(probe)])
    try:
        completed = subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            cwd=workspace,
            timeout=60,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"{target.name}: failed to run {' '.join(argv)}: {error}"

    if completed.returncode != 0:
        return describe_failure(target.name, argv, completed.returncode, completed.stderr)
    if not probe.exists():
        return (
            f"{target.name} exited 0 but did not run its command, because {probe} was not "
            f"created.\n  command: {' '.join(argv)}\n"
            f"  Check that {target.wrapper[0]} is a complete build that implements "
            f"`run -w WORKSPACE -- COMMAND`."
        )
    probe.unlink()
    return None


def read_layers(palisade: Path, workspace: str) -> dict | None:
    """Return the layers palisade's default policy enforces here, from its run report.

    The timed palisade runs use the full default: namespaces, Landlock and the seccomp filter.
    The bwrap command line has no Landlock and no seccomp filter, so the comparison does not
    favour palisade.
    """
    with tempfile.TemporaryDirectory(prefix="palisade-bench-report-") as directory:
        report = Path(directory) / "report.json"
        subprocess.run(
            [str(palisade), "run", "-w", workspace, "--report", str(report), "--", TRUE_BINARY],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            check=False,
        )
        try:
            return json.loads(report.read_text())["layers"]
        except (OSError, ValueError, KeyError):
            return None


def describe_status(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit status {returncode}"


def run_once(target: Target, workspace: str, stderr_file) -> int:
    """Run the target once and return its wall time in nanoseconds.

    Raises RunFailed with the command's stderr if it cannot start or exits non-zero.
    """
    # stderr goes to a file instead of /dev/null so that a failure can be shown. A successful
    # run writes nothing, so the cost is the same as with /dev/null.
    stderr_file.seek(0)
    stderr_file.truncate()

    start = time.perf_counter_ns()
    try:
        completed = subprocess.run(
            target.argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr_file,
            cwd=workspace,
            check=False,
        )
    except OSError as error:
        raise RunFailed(f"{target.name}: failed to start {target.argv[0]}: {error}") from error
    elapsed = time.perf_counter_ns() - start

    if completed.returncode != 0:
        stderr_file.seek(0)
        raise RunFailed(
            describe_failure(target.name, target.argv, completed.returncode, stderr_file.read())
        )
    return elapsed


def describe_failure(name: str, argv: list[str], returncode: int, stderr: bytes) -> str:
    stderr_text = stderr.decode(errors="replace").rstrip() or "(empty)"
    indented = "\n".join("    " + line for line in stderr_text.splitlines())
    return (
        f"{name} failed with {describe_status(returncode)}\n"
        f"  command: {' '.join(argv)}\n"
        f"  stderr:\n{indented}"
    )


def run_rounds(targets: list[Target], workspace: str, warmup: int, rounds: int) -> None:
    """Run `warmup` unmeasured rounds, then `rounds` measured ones, interleaving the targets."""
    with tempfile.TemporaryFile() as stderr_file:
        for round_number in range(1, warmup + 1):
            for target in targets:
                try:
                    run_once(target, workspace, stderr_file)
                except RunFailed as error:
                    raise RunFailed(f"warm-up round {round_number}: {error}") from error

        # A collection pause inside a timed region would be charged to whichever command
        # happened to be running, so the collector is off while measuring.
        gc.disable()
        try:
            for round_number in range(1, rounds + 1):
                for target in targets:
                    try:
                        elapsed = run_once(target, workspace, stderr_file)
                    except RunFailed as error:
                        raise RunFailed(f"measured round {round_number}: {error}") from error
                    target.samples_ns.append(elapsed)
        finally:
            gc.enable()


def percentile_ns(samples: list[int], fraction: float) -> int:
    """Return the nearest-rank percentile.

    That is the smallest sample with at least `fraction` of all samples at or below it.
    """
    ordered = sorted(samples)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


def summarise(target: Target) -> dict:
    samples = target.samples_ns
    return {
        "median_ms": statistics.median(samples) / 1e6,
        "p95_ms": percentile_ns(samples, 0.95) / 1e6,
        "min_ms": min(samples) / 1e6,
        "max_ms": max(samples) / 1e6,
        "mean_ms": statistics.fmean(samples) / 1e6,
        "samples": len(samples),
    }


def compare(summary: dict) -> dict:
    """Compute palisade minus bare, palisade/bwrap and the target verdicts.

    Ratios and the ratio verdict are None when bwrap was skipped.
    """
    bare, palisade, bwrap = summary["bare"], summary["palisade"], summary.get("bwrap")
    result = {
        "overhead_median_ms": palisade["median_ms"] - bare["median_ms"],
        "overhead_p95_ms": palisade["p95_ms"] - bare["p95_ms"],
        "ratio_median": None,
        "ratio_p95": None,
    }
    if bwrap is not None:
        result["ratio_median"] = palisade["median_ms"] / bwrap["median_ms"]
        result["ratio_p95"] = palisade["p95_ms"] / bwrap["p95_ms"]

    result["overhead_target_met"] = result["overhead_median_ms"] <= MAX_OVERHEAD_MS
    if bwrap is None:
        result["ratio_target_met"] = None
    else:
        result["ratio_target_met"] = (
            result["ratio_median"] <= MAX_RATIO_TO_BWRAP
            and result["ratio_p95"] <= MAX_RATIO_TO_BWRAP
        )
    return result


def print_report(summary: dict, comparison: dict, rounds: int) -> None:
    print()
    print(f"{'command':<10} {'median ms':>10} {'p95 ms':>10} {'min ms':>10} {'max ms':>10}")
    for name, figures in summary.items():
        print(
            f"{name:<10} {figures['median_ms']:>10.3f} {figures['p95_ms']:>10.3f}"
            f" {figures['min_ms']:>10.3f} {figures['max_ms']:>10.3f}"
        )
    print(f"({rounds} rounds; p95 is the nearest-rank 95th percentile)")
    print()
    print(
        f"palisade - bare:  median {comparison['overhead_median_ms']:+.3f} ms,"
        f" p95 {comparison['overhead_p95_ms']:+.3f} ms"
    )
    if comparison["ratio_median"] is not None:
        print(
            f"palisade / bwrap: median {comparison['ratio_median']:.3f},"
            f" p95 {comparison['ratio_p95']:.3f}"
        )
    print()
    print_verdicts(comparison)


def print_verdicts(comparison: dict) -> None:
    overhead = comparison["overhead_median_ms"]
    verdict = "met" if comparison["overhead_target_met"] else "MISSED"
    print(
        f"target palisade - bare median <= {MAX_OVERHEAD_MS:g} ms: {verdict} ({overhead:+.3f} ms)"
    )
    if comparison["ratio_target_met"] is None:
        print(f"target palisade / bwrap <= {MAX_RATIO_TO_BWRAP:g}: not checked, bwrap was skipped")
    else:
        verdict = "met" if comparison["ratio_target_met"] else "MISSED"
        print(
            f"target palisade / bwrap <= {MAX_RATIO_TO_BWRAP:g} for median and p95: {verdict}"
            f" (median {comparison['ratio_median']:.3f}, p95 {comparison['ratio_p95']:.3f})"
        )


def read_cpu_model() -> str | None:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as cpuinfo:
            for line in cpuinfo:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    return value.strip()
    except OSError:
        return None
    return None


def read_version(argv: list[str]) -> str | None:
    """Return the first line that `argv` prints, or None if it fails or prints nothing."""
    try:
        completed = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if completed.returncode != 0:
        return None
    output = completed.stdout.strip() or completed.stderr.strip()
    return output.splitlines()[0] if output else None


def machine_info(is_root: bool) -> dict:
    uname = os.uname()
    return {
        "kernel": f"{uname.sysname} {uname.release} {uname.version}",
        "arch": uname.machine,
        "cpu_model": read_cpu_model(),
        # The CPUs this process may run on, as nproc(1) reports them.
        "nproc": len(os.sched_getaffinity(0)),
        "root": is_root,
        "python": platform.python_version(),
    }


def write_json(path: Path, report: dict) -> None:
    try:
        path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    except OSError as error:
        print(f"error: failed to write JSON report to {path}: {error}", file=sys.stderr)
        sys.exit(2)
    print(f"wrote {path}")


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    is_root = os.geteuid() == 0

    palisade = args.palisade.resolve()
    problem = check_palisade_binary(palisade)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2

    bwrap = shutil.which("bwrap")
    if bwrap is None:
        print("SKIP bwrap: not installed (apt-get install bubblewrap)")

    workspace = tempfile.mkdtemp(prefix="palisade-bench-")
    try:
        targets = [
            Target("bare", []),
            Target("palisade", [str(palisade), "run", "-w", workspace, "--"]),
        ]
        if bwrap is not None:
            targets.append(Target("bwrap", bwrap_wrapper(bwrap, workspace, is_root)))

        info = machine_info(is_root)
        print(f"kernel {info['kernel']}")
        print(f"cpu {info['cpu_model']}, nproc {info['nproc']}, root {info['root']}")
        print(f"workspace {workspace}")
        for target in targets:
            print(f"{target.name}: {' '.join(target.argv)}")

        for target in targets:
            problem = check_runs_command(target, workspace) if target.wrapper else None
            if problem:
                sys.stdout.flush()
                print(f"error: {problem}", file=sys.stderr)
                return 2
        layers = read_layers(palisade, workspace)
        print(f"palisade layers: {json.dumps(layers)}")

        try:
            run_rounds(targets, workspace, args.warmup, args.rounds)
        except RunFailed as error:
            sys.stdout.flush()
            print(f"error: {error}", file=sys.stderr)
            return 1
    finally:
        shutil.rmtree(workspace, ignore_errors=True)

    summary = {target.name: summarise(target) for target in targets}
    comparison = compare(summary)
    print_report(summary, comparison, args.rounds)

    if args.json:
        report = {
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "machine": info,
            "rounds": args.rounds,
            "warmup_rounds": args.warmup,
            "versions": {
                "palisade": read_version([str(palisade), "--version"]),
                "bwrap": read_version([bwrap, "--version"]) if bwrap else None,
            },
            "commands": {target.name: target.argv for target in targets},
            "palisade_layers": layers,
            "figures": summary,
            "comparison": comparison,
            "targets": {
                "max_overhead_ms": MAX_OVERHEAD_MS,
                "max_ratio_to_bwrap": MAX_RATIO_TO_BWRAP,
            },
            "samples_ns": {target.name: target.samples_ns for target in targets},
        }
        write_json(args.json, report)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
