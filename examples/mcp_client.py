#!/usr/bin/env python3
"""Run commands in palisade's sandbox through its MCP server, with the standard library only.

Usage: python3 examples/mcp_client.py [PALISADE] [-- SERVER OPTIONS...]

Starts `palisade mcp -w . --timeout 5m` (or with the given server options), performs the MCP
handshake, lists the tools, runs three commands and prints what came back, including the
structured denials of a network request the policy refuses, then runs three commands in a
session, where the working directory and exported variables carry over. It is a starting
point for a harness: keep one server for the whole agent session and send every command
through it, in a session when the commands build on each other.
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys


class McpClient:
    """A minimal MCP client over a child process's stdin and stdout: one JSON message per line."""

    def __init__(self, argv: list[str]) -> None:
        self.process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.ids = itertools.count(1)

    def request(self, method: str, params: dict | None = None) -> dict:
        """Send a request and return its result; raise RuntimeError on a JSON-RPC error."""
        message_id = next(self.ids)
        self._send({"jsonrpc": "2.0", "id": message_id, "method": method, "params": params or {}})
        while True:
            line = self.process.stdout.readline()
            if not line:
                raise RuntimeError("the server closed its output")
            message = json.loads(line)
            # Skip notifications and responses to other requests.
            if message.get("id") != message_id:
                continue
            if "error" in message:
                raise RuntimeError(f"{method} failed: {message['error']}")
            return message["result"]

    def notify(self, method: str, params: dict | None = None) -> None:
        self._send({"jsonrpc": "2.0", "method": method, "params": params or {}})

    def _send(self, message: dict) -> None:
        self.process.stdin.write(json.dumps(message) + "\n")
        self.process.stdin.flush()

    def close(self) -> None:
        """Close the server's input: the server ends every run it started and exits."""
        self.process.stdin.close()
        self.process.wait(timeout=30)


def main() -> int:
    args = sys.argv[1:]
    palisade = "palisade"
    if args and args[0] != "--":
        palisade = args.pop(0)
    server_options = args[1:] if args[:1] == ["--"] else ["-w", ".", "--timeout", "5m"]

    client = McpClient([palisade, "mcp", *server_options])
    try:
        init = client.request("initialize", {
            "protocolVersion": "2025-06-18",
            "capabilities": {},
            "clientInfo": {"name": "palisade-example", "version": "1.0"},
        })
        client.notify("notifications/initialized")
        print("server:", init["serverInfo"]["name"], init["serverInfo"]["version"], "protocol", init["protocolVersion"])

        tools = client.request("tools/list")["tools"]
        print("tools:", ", ".join(tool["name"] for tool in tools))

        # A shell string, run as /bin/sh -c.
        result = client.request("tools/call", {"name": "run", "arguments": {"command": "echo hello from the sandbox; ls ~"}})
        print("\n--- run: shell string ---")
        print(result["content"][0]["text"])

        # An argv array, with stdin. A request the policy refuses comes back as a tool error
        # with structured content, so a harness can ask a person instead of retrying.
        result = client.request("tools/call", {
            "name": "run",
            "arguments": {"command": ["wc", "-c"], "stdin": "twelve bytes"},
        })
        structured = result["structuredContent"]
        print("--- run: argv with stdin ---")
        print("exit code:", structured.get("exit_code"), "stdout:", structured.get("stdout", "").strip())

        # The denials palisade saw: limits and network destinations the proxy refused.
        result = client.request("tools/call", {
            "name": "run",
            "arguments": {"command": "curl -s -m 5 https://example.invalid/ || true"},
        })
        print("--- run: a destination outside the policy ---")
        for denial in result["structuredContent"].get("denials", []):
            print(f"denied {denial['kind']} {denial['object']}: {denial['message']}")
        if not result["structuredContent"].get("denials"):
            print("no denial recorded (with --net none there is no proxy to refuse it; the command saw a failed lookup)")

        # A session keeps one sandbox for many commands: the directory, exported variables,
        # files in /tmp and background processes carry over from one command to the next.
        opened = client.request("tools/call", {"name": "session_open", "arguments": {}})
        session = opened["structuredContent"]["session"]
        print("--- session", session, "---")
        for command in ["mkdir -p demo && cd demo && export STEP=1", "echo step $STEP in $(pwd)", ["true"]]:
            result = client.request("tools/call", {"name": "session_exec", "arguments": {"session": session, "command": command}})
            structured = result["structuredContent"]
            print(f"{command!r}: exit code {structured['exit_code']}, cwd {structured['cwd']}, stdout {structured['stdout'].strip()!r}")
        client.request("tools/call", {"name": "session_close", "arguments": {"session": session}})
    finally:
        client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
