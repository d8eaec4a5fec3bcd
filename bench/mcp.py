#!/usr/bin/env python3
"""Measure what `palisade mcp` costs per command next to a cold `palisade run` and bare /bin/true.

Each round runs four things one after another, so slow drift on the machine affects all of
them alike. The first is /bin/true started directly, the second `palisade run -- /bin/true`
started as a new process. The third is a `run` tool call with the argv ["/bin/true"], and the
fourth a `session_exec` call with the same argv in a session opened once before the rounds,
both sent to one `palisade mcp` server that lives for the whole measurement. The first two are
timed from start to exit, the tool calls from writing the request to reading the response.
The server starts a `palisade run` child for every `run` call, so that call costs a cold run
plus the protocol, the report file and the JSON result. A `session_exec` call costs a fork and
an execve inside the session's sandbox, plus the protocol.

The script prints the median and p95 of each, and the differences of the medians. It exits 0
after a complete measurement, 1 when a run fails, and 2 on a usage or setup error.

Uses only the standard library. Written for Python 3.8 or later on Linux, tested with 3.11.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_PALISADE = REPO_ROOT / "target" / "release" / "palisade"
TRUE_BINARY = "/bin/true"
# The maximum time the script waits for the server to exit after stdin is closed.
EXIT_TIMEOUT_S = 30.0


class RunFailed(Exception):
    """A measured command failed, or the server responded with an error."""


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Time a `run` through one `palisade mcp` against a cold `palisade run` and bare /bin/true.",
    )
    parser.add_argument(
        "--palisade",
        type=Path,
        default=DEFAULT_PALISADE,
        metavar="PATH",
        help="palisade binary to measure (default: target/release/palisade in the repository)",
    )
    parser.add_argument("--rounds", type=int, default=200, metavar="N", help="measured rounds (default: 200)")
    parser.add_argument("--warmup", type=int, default=5, metavar="N", help="unmeasured rounds first (default: 5)")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error(f"--rounds must be at least 1, got {args.rounds}")
    if args.warmup < 0:
        parser.error(f"--warmup must not be negative, got {args.warmup}")
    return args


class Server:
    """One `palisade mcp` process and a blocking line-by-line client for it."""

    def __init__(self, palisade: Path, workspace: str) -> None:
        self.process = subprocess.Popen(
            [str(palisade), "mcp", "--workspace", workspace],
            cwd=workspace,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self.next_id = 1
        self.request("initialize", {
            "protocolVersion": "2025-06-18",
            "capabilities": {},
            "clientInfo": {"name": "bench/mcp.py", "version": "1"},
        })
        self.send({"jsonrpc": "2.0", "method": "notifications/initialized"})

    def send(self, message: dict) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(message).encode() + b"\n")
        self.process.stdin.flush()

    def request(self, method: str, params: dict) -> dict:
        request_id = self.next_id
        self.next_id += 1
        self.send({"jsonrpc": "2.0", "id": request_id, "method": method, "params": params})
        assert self.process.stdout is not None
        # One request at a time, so the next line is its response.
        line = self.process.stdout.readline()
        if not line:
            stderr = self.process.stderr.read().decode(errors="replace") if self.process.stderr else ""
            raise RunFailed(f"palisade mcp exited without responding to {method}: {stderr.strip()}")
        response = json.loads(line)
        if "error" in response:
            raise RunFailed(f"{method} failed: {response['error']}")
        return response["result"]

    def close(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        try:
            self.process.wait(timeout=EXIT_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def time_process(argv: list[str], cwd: str) -> int:
    """Run argv and return its start-to-exit time in nanoseconds."""
    started = time.perf_counter_ns()
    completed = subprocess.run(argv, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    elapsed = time.perf_counter_ns() - started
    if completed.returncode != 0:
        raise RunFailed(f"{' '.join(argv)} exited with {completed.returncode}: {completed.stderr.decode(errors='replace').strip()}")
    return elapsed


def time_tool_call(server: Server) -> int:
    """Send one `run` call of /bin/true and return the time until its response, in nanoseconds."""
    started = time.perf_counter_ns()
    result = server.request("tools/call", {"name": "run", "arguments": {"command": [TRUE_BINARY]}})
    elapsed = time.perf_counter_ns() - started
    structured = result.get("structuredContent", {})
    if result.get("isError") or structured.get("exit_code") != 0:
        raise RunFailed(f"the run tool call failed: {result.get('content')}")
    return elapsed


def time_session_exec(server: Server, session: str) -> int:
    """Send one `session_exec` call of /bin/true and return the time until its response, in nanoseconds."""
    started = time.perf_counter_ns()
    result = server.request("tools/call", {"name": "session_exec", "arguments": {"session": session, "command": [TRUE_BINARY]}})
    elapsed = time.perf_counter_ns() - started
    structured = result.get("structuredContent", {})
    if result.get("isError") or structured.get("exit_code") != 0:
        raise RunFailed(f"the session_exec tool call failed: {result.get('content')}")
    return elapsed


def summary(samples_ns: list[int]) -> tuple[float, float]:
    """Return the median and p95 in milliseconds."""
    ordered = sorted(samples_ns)
    p95 = ordered[min(len(ordered) - 1, int(round(0.95 * (len(ordered) - 1))))]
    return statistics.median(ordered) / 1e6, p95 / 1e6


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    palisade = args.palisade
    if not palisade.is_file() or not os.access(palisade, os.X_OK):
        print(f"palisade binary not found at {palisade}; build it with `cargo build --release` or pass --palisade PATH", file=sys.stderr)
        return 2
    samples: dict[str, list[int]] = {"bare": [], "palisade run": [], "mcp run": [], "session_exec": []}
    with tempfile.TemporaryDirectory(prefix="palisade-bench-mcp-") as workspace:
        cold = [str(palisade), "run", "--workspace", workspace, "--", TRUE_BINARY]
        try:
            server = Server(palisade, workspace)
        except (RunFailed, OSError) as error:
            print(f"failed to start palisade mcp: {error}", file=sys.stderr)
            return 2
        try:
            opened = server.request("tools/call", {"name": "session_open", "arguments": {}})
            if opened.get("isError"):
                raise RunFailed(f"session_open failed: {opened.get('content')}")
            session = opened["structuredContent"]["session"]
            for round_number in range(args.warmup + args.rounds):
                measured = {
                    "bare": time_process([TRUE_BINARY], workspace),
                    "palisade run": time_process(cold, workspace),
                    "mcp run": time_tool_call(server),
                    "session_exec": time_session_exec(server, session),
                }
                if round_number >= args.warmup:
                    for name, elapsed in measured.items():
                        samples[name].append(elapsed)
        except RunFailed as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
        finally:
            server.close()

    print(f"{args.rounds} rounds, {palisade}")
    print(f"{'':<14}{'median ms':>10}{'p95 ms':>10}")
    medians = {}
    for name, values in samples.items():
        median, p95 = summary(values)
        medians[name] = median
        print(f"{name:<14}{median:>10.2f}{p95:>10.2f}")
    print(f"palisade run - bare:          {medians['palisade run'] - medians['bare']:+.2f} ms")
    print(f"mcp run - bare:               {medians['mcp run'] - medians['bare']:+.2f} ms")
    print(f"mcp run - palisade run:       {medians['mcp run'] - medians['palisade run']:+.2f} ms")
    print(f"session_exec - bare:          {medians['session_exec'] - medians['bare']:+.2f} ms (target: at most +1.00)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
