#!/usr/bin/env python3
"""Measure the wall time of real work run bare, under palisade and under bwrap.

Two workloads do a fixed amount of work, each a few seconds long:

- cpu: one Python process that chains SHA-256 hashes and integer arithmetic.
- build: `make -j2` of a generated C project of 20 source files, cleaned before every run.

Each round runs every workload once per command (bare, palisade, bwrap), and the order of the
commands rotates from round to round, so slow drift on the machine and the position in a round
affect all of them alike. While a command runs, a thread polls VmHWM, VmRSS and the CPU time of
the process the script started. For the palisade runs that is palisade itself, not the
sandboxed command, so the script can report what palisade needs to supervise a run.

The script prints the median and p95 of each command, palisade/bare and palisade/bwrap, and
states whether the target "palisade within 2% of bare" is met. It exits 0 when every run
succeeded, whether or not the target is met, because it is a measurement and not a test. It
exits 1 when a measured run fails and 2 on a usage or setup error.

Uses only the standard library. Written for Python 3.8 or later on Linux, tested with 3.11.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

# The helpers shared with the startup benchmark live beside this file. Python puts the script's
# directory on sys.path, except in isolated mode (-I), so it is added here explicitly.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from startup import (  # noqa: E402
    DEFAULT_PALISADE,
    RunFailed,
    bwrap_wrapper,
    check_palisade_binary,
    describe_failure,
    machine_info,
    percentile_ns,
    read_version,
    write_json,
)

# Target: palisade's median wall time is at most 2% above the bare median.
MAX_RATIO_TO_BARE = 1.02

# Chained SHA-256 rounds of the cpu workload. The work is fixed, not the time: 4.5 million
# rounds took 2.6 to 3.1 s with CPython 3.11 on the 2-CPU Xeon VM in docs/benchmarks.md.
CPU_ROUNDS = 4_500_000

CPU_SCRIPT = f"""
import hashlib
digest = b"palisade"
total = 0
for i in range({CPU_ROUNDS}):
    digest = hashlib.sha256(digest).digest()
    total = (total * 31 + digest[0] + i * i) % 1_000_000_007
print(digest.hex(), total)
"""

# Size of the generated C project: C_MODULES files of C_FUNCTIONS_PER_MODULE functions each,
# plus main.c. With -O2 the build took about 2.8 s with `make -j2` on the same VM.
C_MODULES = 20
C_FUNCTIONS_PER_MODULE = 50

# -pipe keeps the compiler's intermediate files off /tmp, which is the host's disk for the bare
# run and a tmpfs inside both sandboxes.
MAKEFILE = """\
CFLAGS = -O2 -pipe
SOURCES = $(wildcard *.c)
OBJECTS = $(SOURCES:.c=.o)

check: app
\t./app

app: $(OBJECTS)
\t$(CC) -o $@ $(OBJECTS)

%.o: %.c common.h
\t$(CC) $(CFLAGS) -c -o $@ $<

clean:
\trm -f app $(OBJECTS)

.PHONY: check clean
"""

# Interval of the thread that polls the started process's memory and CPU time, in seconds.
POLL_INTERVAL = 0.020


@dataclass
class Workload:
    """A fixed amount of work and how to reset the workspace before each run of it."""

    name: str
    command: list[str]
    # Runs bare and untimed before every run, such as `make clean`.
    prepare: Callable[[], None]
    # A file the workload must create in the workspace, to prove the sandbox ran it.
    creates: str | None = None


@dataclass
class Sandbox:
    """One way of running a workload: bare, palisade or bwrap."""

    name: str
    # Command line that the workload's command is appended to, empty for a bare run.
    wrapper: list[str]

    def argv(self, workload: Workload) -> list[str]:
        return self.wrapper + workload.command


@dataclass
class Samples:
    """Measurements of one workload under one sandbox."""

    wall_ns: list[int] = field(default_factory=list)
    # Per run, the largest VmHWM and VmRSS of the started process, in KiB.
    hwm_kib: list[int] = field(default_factory=list)
    rss_kib: list[int] = field(default_factory=list)
    # Per run, the CPU time of the started process itself, without its children, in ms.
    cpu_ms: list[float] = field(default_factory=list)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=(
            "Measure the wall time of a CPU-bound workload and a small C build, bare, under "
            "`palisade run` with its default policy and limits, and under bwrap."
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
        default=5,
        metavar="N",
        help="number of measured rounds, each running every workload once per command "
        "(default: 5)",
    )
    parser.add_argument(
        "--warmup",
        type=int,
        default=0,
        metavar="N",
        help="number of unmeasured rounds before the measured ones (default: 0, because the "
        "check before measuring already runs every command once)",
    )
    parser.add_argument(
        "--workload",
        choices=["cpu", "build"],
        action="append",
        help="workload to run (repeatable; default: both)",
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=2,
        metavar="N",
        help="parallel jobs of the build workload, passed to make -j (default: 2)",
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
    if args.jobs < 1:
        parser.error(f"--jobs must be at least 1, got {args.jobs}")
    if not args.workload:
        args.workload = ["cpu", "build"]
    return args


def generate_c_project(directory: Path) -> None:
    """Write a C project whose build compiles C_MODULES files and prints one checksum."""
    header = ["#ifndef COMMON_H", "#define COMMON_H", "#include <stdint.h>"]
    header += [f"uint64_t module_{module}(uint64_t seed);" for module in range(C_MODULES)]
    header.append("#endif")
    (directory / "common.h").write_text("\n".join(header) + "\n")

    for module in range(C_MODULES):
        (directory / f"module_{module}.c").write_text(c_module_source(module))

    calls = "".join(f"    x = module_{module}(x);\n" for module in range(C_MODULES))
    (directory / "main.c").write_text(
        "#include <inttypes.h>\n#include <stdio.h>\n#include \"common.h\"\n\n"
        "int main(void)\n{\n    uint64_t x = 1;\n"
        + calls
        + '    printf("%016" PRIx64 "\\n", x);\n    return 0;\n}\n'
    )
    (directory / "Makefile").write_text(MAKEFILE)


def c_module_source(module: int) -> str:
    """Return one module: small functions with loops and switches that -O2 has work to do on."""
    parts = ['#include "common.h"\n']
    for function in range(C_FUNCTIONS_PER_MODULE):
        parts.append(
            f"""
static uint64_t step_{function}(uint64_t x)
{{
    uint64_t table[16];
    for (int i = 0; i < 16; i++)
        table[i] = x * {2 * function + 3}u + (uint64_t)i * {module + 7}u;
    for (int round = 0; round < {function % 5 + 3}; round++) {{
        switch ((x >> round) & 7) {{
        case 0: x ^= table[round & 15] << 3; break;
        case 1: x += table[(round * 5) & 15] >> 1; break;
        case 2: x *= 0x9e3779b97f4a7c15u; break;
        case 3: x = (x << 13) | (x >> 51); break;
        case 4: x -= table[(round + {function}) & 15]; break;
        default: x ^= x >> 17; break;
        }}
    }}
    return x;
}}
"""
        )
    calls = "".join(
        f"    x = step_{function}(x + {function}u);\n"
        for function in range(C_FUNCTIONS_PER_MODULE)
    )
    parts.append(f"\nuint64_t module_{module}(uint64_t seed)\n{{\n    uint64_t x = seed;\n")
    parts.append(calls + "    return x;\n}\n")
    return "".join(parts)


def make_workloads(names: list[str], workspace: Path, jobs: int) -> list[Workload] | str:
    """Build the requested workloads, or return an error message if a tool is missing."""
    workloads = []
    if "cpu" in names:
        # The interpreter running this script, with the symlinks resolved so that pyenv's shim
        # scripts stay out of the measurement. -I ignores PYTHON* variables and the user's site
        # directory, so the interpreter starts the same way whatever environment a run gets.
        python = os.path.realpath(sys.executable)
        workloads.append(Workload("cpu", [python, "-I", "-c", CPU_SCRIPT], prepare=lambda: None))

    if "build" in names:
        make = shutil.which("make")
        compiler = shutil.which("cc")
        if make is None or compiler is None:
            return "make or cc not found in PATH. Install them (apt-get install build-essential)."
        generate_c_project(workspace)

        def make_clean() -> None:
            run_untimed([make, "-s", "clean"], workspace)

        workloads.append(
            Workload(
                "build",
                [make, "-s", f"-j{jobs}", f"CC={compiler}"],
                prepare=make_clean,
                creates="app",
            )
        )
    return workloads


def displayed(argv: list[str]) -> list[str]:
    """Return `argv` with the multi-line cpu script replaced by its name, for messages."""
    return ["CPU_SCRIPT" if part == CPU_SCRIPT else part for part in argv]


def run_untimed(argv: list[str], cwd: Path) -> None:
    """Run a preparation step such as `make clean`. Raises RunFailed if it fails."""
    completed = subprocess.run(
        argv, cwd=cwd, stdin=subprocess.DEVNULL, capture_output=True, check=False
    )
    if completed.returncode != 0:
        raise RunFailed(
            describe_failure("preparation", argv, completed.returncode, completed.stderr)
        )


class ProcessPoller:
    """A thread that polls the memory and CPU time of one process until it exits or stop().

    The process's /proc directory is opened once at the start. Reading files through that
    descriptor fails once the process is reaped, so a recycled PID is never read instead.
    """

    def __init__(self, pid: int, interval: float) -> None:
        self.max_hwm_kib = 0
        self.max_rss_kib = 0
        # User + system CPU time of the process's own threads, without its children, at the
        # last reading. It misses at most the final polling interval, and the kernel counts it
        # in clock ticks (SC_CLK_TCK, usually 100 per second).
        self.cpu_ms = 0.0
        self._interval = interval
        self._ticks_per_second = os.sysconf("SC_CLK_TCK")
        self._directory = os.open(f"/proc/{pid}", os.O_RDONLY | os.O_DIRECTORY)
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join()
        os.close(self._directory)

    def _poll(self) -> None:
        while self._read_status() and self._read_stat():
            if self._stopped.wait(self._interval):
                return

    def _read(self, name: str) -> bytes | None:
        try:
            descriptor = os.open(name, os.O_RDONLY, dir_fd=self._directory)
        except OSError:
            return None
        with os.fdopen(descriptor, "rb") as file:
            try:
                return file.read()
            except OSError:
                return None

    def _read_status(self) -> bool:
        """Record VmHWM and VmRSS. Returns False once the process has exited."""
        text = self._read("status")
        if text is None:
            return False

        values = {}
        for line in text.splitlines():
            key, _, rest = line.partition(b":")
            if key in (b"VmHWM", b"VmRSS"):
                # The kernel prints these as "VmHWM:\t  12345 kB".
                values[key] = int(rest.split()[0])
        if b"VmHWM" not in values:
            # A zombie has no memory lines left.
            return False
        self.max_hwm_kib = max(self.max_hwm_kib, values[b"VmHWM"])
        self.max_rss_kib = max(self.max_rss_kib, values.get(b"VmRSS", 0))
        return True

    def _read_stat(self) -> bool:
        """Record the CPU time. Returns False once the process has exited."""
        text = self._read("stat")
        if text is None:
            return False
        # The command name in brackets may contain spaces, so fields are counted from the
        # closing bracket: utime and stime are fields 14 and 15 of proc(5), in clock ticks.
        fields = text.rpartition(b")")[2].split()
        ticks = int(fields[11]) + int(fields[12])
        self.cpu_ms = ticks * 1000 / self._ticks_per_second
        return True


@dataclass
class RunResult:
    wall_ns: int
    hwm_kib: int
    rss_kib: int
    cpu_ms: float


def run_once(
    sandbox: Sandbox, workload: Workload, workspace: Path, expected_stdout: bytes, output_files
) -> RunResult:
    """Prepare the workspace, run the workload once under `sandbox` and time it.

    Raises RunFailed if the run exits non-zero or prints something other than
    `expected_stdout`, because then it did not do the work that the other runs did.
    """
    workload.prepare()
    stdout_file, stderr_file = output_files
    for output in output_files:
        output.seek(0)
        output.truncate()
    argv = sandbox.argv(workload)

    # stdout and stderr are files, not terminals, so palisade passes them through its counted
    # pipes as it does for an agent that captures a command's output.
    start = time.perf_counter_ns()
    try:
        process = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=stdout_file, stderr=stderr_file, cwd=workspace
        )
    except OSError as error:
        raise RunFailed(f"{sandbox.name}: failed to start {argv[0]}: {error}") from error
    # Popen returns after the exec, so the first reading is of the started program and not of
    # the forked copy of this script.
    poller = ProcessPoller(process.pid, POLL_INTERVAL)
    returncode = process.wait()
    elapsed = time.perf_counter_ns() - start
    poller.stop()

    check_output(sandbox, workload, argv, returncode, expected_stdout, output_files)
    if workload.creates and not (workspace / workload.creates).exists():
        raise RunFailed(
            f"{sandbox.name} exited 0 but {workspace / workload.creates} was not created."
        )
    return RunResult(elapsed, poller.max_hwm_kib, poller.max_rss_kib, poller.cpu_ms)


def check_output(
    sandbox: Sandbox,
    workload: Workload,
    argv: list[str],
    returncode: int,
    expected_stdout: bytes,
    output_files,
) -> None:
    stdout_file, stderr_file = output_files
    stderr_file.seek(0)
    if returncode != 0:
        raise RunFailed(
            describe_failure(sandbox.name, displayed(argv), returncode, stderr_file.read())
        )

    stdout_file.seek(0)
    stdout = stdout_file.read()
    if stdout != expected_stdout:
        raise RunFailed(
            f"{sandbox.name} ran {workload.name} but printed {stdout!r}, expected "
            f"{expected_stdout!r}\n  command: {' '.join(displayed(argv))}"
        )


def expected_output(workload: Workload, workspace: Path) -> bytes:
    """Run the workload bare once, untimed, and return what it prints.

    Raises RunFailed if it fails.
    """
    workload.prepare()
    completed = subprocess.run(
        workload.command, cwd=workspace, stdin=subprocess.DEVNULL, capture_output=True, check=False
    )
    if completed.returncode != 0 or not completed.stdout:
        raise RunFailed(
            describe_failure(
                f"bare {workload.name}",
                displayed(workload.command),
                completed.returncode,
                completed.stderr,
            )
        )
    return completed.stdout


def read_report(
    palisade: Path, workload: Workload, workspace: Path, expected_stdout: bytes, output_files
) -> dict | None:
    """Run the workload once under palisade with --report and return the report.

    Raises RunFailed if the run fails or prints the wrong output, so this run is also the check
    that palisade runs the workload at all. Returns None if the report cannot be read.
    """
    with tempfile.TemporaryDirectory(prefix="palisade-workload-report-") as directory:
        report = Path(directory) / "report.json"
        reporting = Sandbox(
            "palisade", [str(palisade), "run", "-w", str(workspace), "--report", str(report), "--"]
        )
        run_once(reporting, workload, workspace, expected_stdout, output_files)
        try:
            return json.loads(report.read_text())
        except (OSError, ValueError):
            return None


def rotated(sandboxes: list[Sandbox], round_index: int) -> list[Sandbox]:
    """Return the sandboxes in this round's order: each round starts one further along."""
    start = round_index % len(sandboxes)
    return sandboxes[start:] + sandboxes[:start]


def run_rounds(
    workloads: list[Workload],
    sandboxes: list[Sandbox],
    workspace: Path,
    expected: dict[str, bytes],
    warmup: int,
    rounds: int,
    output_files,
) -> dict[tuple[str, str], Samples]:
    """Run `warmup` unmeasured rounds, then `rounds` measured ones, and return the samples."""
    samples = {(w.name, s.name): Samples() for w in workloads for s in sandboxes}
    total = warmup + rounds
    for round_index in range(total):
        measured = round_index >= warmup
        label = (
            f"measured round {round_index - warmup + 1}/{rounds}"
            if measured
            else f"warm-up round {round_index + 1}/{warmup}"
        )
        print(f"{label} ...", flush=True)

        for workload in workloads:
            for sandbox in rotated(sandboxes, round_index):
                # A collection pause inside a timed run would be charged to whichever command
                # happened to be running, so the collector is off while one runs.
                gc.disable()
                try:
                    result = run_once(
                        sandbox, workload, workspace, expected[workload.name], output_files
                    )
                except RunFailed as error:
                    raise RunFailed(f"{label}, {workload.name}: {error}") from error
                finally:
                    gc.enable()
                if measured:
                    entry = samples[(workload.name, sandbox.name)]
                    entry.wall_ns.append(result.wall_ns)
                    entry.hwm_kib.append(result.hwm_kib)
                    entry.rss_kib.append(result.rss_kib)
                    entry.cpu_ms.append(result.cpu_ms)
    return samples


def summarise(entry: Samples) -> dict:
    wall = entry.wall_ns
    return {
        "median_s": statistics.median(wall) / 1e9,
        "p95_s": percentile_ns(wall, 0.95) / 1e9,
        "min_s": min(wall) / 1e9,
        "max_s": max(wall) / 1e9,
        "samples": len(wall),
        # Memory and CPU time of the process the script started, not of the sandboxed command.
        "max_vmhwm_mib": max(entry.hwm_kib) / 1024,
        "max_vmrss_mib": max(entry.rss_kib) / 1024,
        "median_own_cpu_ms": statistics.median(entry.cpu_ms),
    }


def compare(figures: dict[str, dict], bare_ns: list[int], palisade_ns: list[int]) -> dict:
    """Compute the ratios of medians and the target verdict for one workload.

    `bare_ns` and `palisade_ns` are the wall times in round order. The ratios with bwrap are
    None when bwrap was skipped.
    """
    bare, palisade, bwrap = figures["bare"], figures["palisade"], figures.get("bwrap")
    # Both commands ran in the same round, seconds apart, so the ratio within a round
    # is less affected by slow drift than the ratio of the two medians.
    paired = [p / b for p, b in zip(palisade_ns, bare_ns)]
    result = {
        "overhead_median_s": palisade["median_s"] - bare["median_s"],
        "ratio_to_bare_median": palisade["median_s"] / bare["median_s"],
        "ratio_to_bare_paired_median": statistics.median(paired),
        "ratio_to_bwrap_median": None,
        "bwrap_ratio_to_bare_median": None,
    }
    if bwrap is not None:
        result["ratio_to_bwrap_median"] = palisade["median_s"] / bwrap["median_s"]
        result["bwrap_ratio_to_bare_median"] = bwrap["median_s"] / bare["median_s"]
    result["target_met"] = result["ratio_to_bare_median"] <= MAX_RATIO_TO_BARE
    return result


def print_workload(name: str, figures: dict[str, dict], comparison: dict, rounds: int) -> None:
    print()
    print(f"workload {name}")
    print(
        f"{'command':<10} {'median s':>9} {'p95 s':>9} {'min s':>9} {'max s':>9}"
        f" {'VmHWM MiB':>10} {'VmRSS MiB':>10} {'CPU ms':>8}"
    )
    for sandbox, row in figures.items():
        print(
            f"{sandbox:<10} {row['median_s']:>9.3f} {row['p95_s']:>9.3f} {row['min_s']:>9.3f}"
            f" {row['max_s']:>9.3f} {row['max_vmhwm_mib']:>10.1f} {row['max_vmrss_mib']:>10.1f}"
            f" {row['median_own_cpu_ms']:>8.0f}"
        )
    print(
        f"({rounds} rounds; p95 is the nearest-rank 95th percentile. VmHWM and VmRSS are "
        f"maxima and CPU ms is the median user + system time, all of the started process "
        f"without its children: the workload itself for bare, palisade or bwrap for the "
        f"sandboxes)"
    )
    print(f"palisade - bare:  median {comparison['overhead_median_s']:+.3f} s")
    print(
        f"palisade / bare:  median {comparison['ratio_to_bare_median']:.4f}, "
        f"median of per-round ratios {comparison['ratio_to_bare_paired_median']:.4f}"
    )
    if comparison["ratio_to_bwrap_median"] is not None:
        print(
            f"palisade / bwrap: median {comparison['ratio_to_bwrap_median']:.4f}; "
            f"bwrap / bare: median {comparison['bwrap_ratio_to_bare_median']:.4f}"
        )
    else:
        print("palisade / bwrap: not measured, bwrap was skipped")
    verdict = "met" if comparison["target_met"] else "MISSED"
    print(
        f"target palisade / bare median <= {MAX_RATIO_TO_BARE:g}: {verdict}"
        f" ({comparison['ratio_to_bare_median']:.4f})"
    )


def describe_report(report: dict | None) -> dict | None:
    """Return the layers and usage from a palisade run report, the parts printed for context."""
    if report is None:
        return None
    return {"layers": report.get("layers"), "usage": report.get("usage")}


def print_report_context(name: str, context: dict | None) -> None:
    if context is None:
        print(f"palisade report for {name}: not readable")
        return
    print(f"palisade layers ({name}): {json.dumps(context['layers'])}")
    usage = context["usage"] or {}
    peak = usage.get("peak_memory_bytes")
    peak_text = "n/a" if peak is None else f"{peak / 2**20:.1f} MiB"
    print(
        f"palisade usage ({name}): wall {format_ms(usage.get('wall_time_ms'))}, user CPU "
        f"{format_ms(usage.get('user_cpu_ms'))}, system CPU "
        f"{format_ms(usage.get('system_cpu_ms'))}, peak memory {peak_text}, peak processes "
        f"{usage.get('peak_processes')}, stdout {usage.get('stdout_bytes')} B, stderr "
        f"{usage.get('stderr_bytes')} B"
    )


def format_ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0f} ms"


def format_load() -> str:
    last_minute, last_5_minutes, last_15_minutes = os.getloadavg()
    return f"{last_minute:.2f} {last_5_minutes:.2f} {last_15_minutes:.2f}"


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

    workspace = Path(tempfile.mkdtemp(prefix="palisade-workload-"))
    try:
        return measure(args, palisade, bwrap, workspace, is_root)
    finally:
        shutil.rmtree(workspace, ignore_errors=True)


def measure(
    args: argparse.Namespace, palisade: Path, bwrap: str | None, workspace: Path, is_root: bool
) -> int:
    workloads = make_workloads(args.workload, workspace, args.jobs)
    if isinstance(workloads, str):
        print(f"error: {workloads}", file=sys.stderr)
        return 2

    sandboxes = [
        Sandbox("bare", []),
        Sandbox("palisade", [str(palisade), "run", "-w", str(workspace), "--"]),
    ]
    if bwrap is not None:
        sandboxes.append(Sandbox("bwrap", bwrap_wrapper(bwrap, str(workspace), is_root)))

    info = machine_info(is_root)
    load_before = format_load()
    print(f"kernel {info['kernel']}")
    print(f"cpu {info['cpu_model']}, nproc {info['nproc']}, root {info['root']}")
    print(f"load average before: {load_before}")
    print(f"workspace {workspace}")
    for sandbox in sandboxes:
        print(f"{sandbox.name}: {' '.join(sandbox.wrapper) or '(no wrapper)'}")
    for workload in workloads:
        print(f"workload {workload.name}: {' '.join(displayed(workload.command))}")

    with tempfile.TemporaryFile() as stdout_file, tempfile.TemporaryFile() as stderr_file:
        output_files = (stdout_file, stderr_file)
        expected = {}
        contexts = {}
        # Before measuring, every command runs every workload once and must print what the bare
        # run prints, so a sandbox that exits 0 without doing the work cannot pass as a fast
        # one. palisade's check run writes the report printed for context.
        try:
            for workload in workloads:
                expected[workload.name] = expected_output(workload, workspace)
                report = read_report(
                    palisade, workload, workspace, expected[workload.name], output_files
                )
                contexts[workload.name] = describe_report(report)
                print_report_context(workload.name, contexts[workload.name])
                for sandbox in sandboxes[2:]:
                    run_once(sandbox, workload, workspace, expected[workload.name], output_files)
        except RunFailed as error:
            sys.stdout.flush()
            print(f"error: check before measuring failed: {error}", file=sys.stderr)
            return 2

        try:
            samples = run_rounds(
                workloads, sandboxes, workspace, expected, args.warmup, args.rounds, output_files
            )
        except RunFailed as error:
            sys.stdout.flush()
            print(f"error: {error}", file=sys.stderr)
            return 1

    load_after = format_load()
    results = {}
    for workload in workloads:
        figures = {s.name: summarise(samples[(workload.name, s.name)]) for s in sandboxes}
        comparison = compare(
            figures,
            samples[(workload.name, "bare")].wall_ns,
            samples[(workload.name, "palisade")].wall_ns,
        )
        results[workload.name] = {"figures": figures, "comparison": comparison}
        print_workload(workload.name, figures, comparison, args.rounds)

    print()
    palisade_peak = max(results[w.name]["figures"]["palisade"]["max_vmhwm_mib"] for w in workloads)
    print(f"palisade's own peak memory while supervising (max VmHWM): {palisade_peak:.1f} MiB")
    print(f"load average after: {load_after}")

    if args.json:
        report = {
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "machine": info,
            "load_average": {"before": load_before, "after": load_after},
            "rounds": args.rounds,
            "warmup_rounds": args.warmup,
            "versions": {
                "palisade": read_version([str(palisade), "--version"]),
                "bwrap": read_version([bwrap, "--version"]) if bwrap else None,
                "python": read_version([os.path.realpath(sys.executable), "--version"]),
                "cc": read_version(["cc", "--version"]),
                "make": read_version(["make", "--version"]),
            },
            "wrappers": {s.name: s.wrapper for s in sandboxes},
            "workloads": {w.name: w.command for w in workloads},
            "palisade_reports": contexts,
            "results": results,
            "palisade_peak_vmhwm_mib": palisade_peak,
            "target_max_ratio_to_bare": MAX_RATIO_TO_BARE,
            "samples": {
                w.name: {s.name: vars(samples[(w.name, s.name)]) for s in sandboxes}
                for w in workloads
            },
        }
        write_json(args.json, report)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
