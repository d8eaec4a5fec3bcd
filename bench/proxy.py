#!/usr/bin/env python3
"""Measure throughput and connection set-up time on loopback, direct and through palisade's proxy.

A small server listens on 127.0.0.1 of this machine. The same client program then talks to it
in up to three ways:

- direct: the client runs bare on the host and connects to the server.
- connect: the client runs under `palisade run --allow-domain 127.0.0.1:PORT`, where only
  loopback exists, and reaches the server through palisade's proxy with HTTP CONNECT.
- socks5: as connect, but with a SOCKS5 CONNECT request.

Two measurements are made of each way:

- bulk: one connection that receives a fixed amount of data (1 GiB by default). The client
  times it from sending its request to the end of the stream, so the tunnel set-up is left out.
- ping: many sequential connections, each timed from socket() to the complete reply of one
  small request, which includes the CONNECT or SOCKS5 exchange with the proxy. The close that
  follows is not timed.

Each round runs every measurement once per way, and the order of the ways rotates from round
to round, so drift and the position in a round affect all of them alike. The script prints
the medians, proxied/direct throughput and the milliseconds that the proxy adds to a
connection at the median, then states whether the targets are met. It exits 0 when every run
succeeded, whether or not the targets are met, because it is a measurement and not a test. It
exits 1 when a measured run fails and 2 on a usage or setup error.

The client and server are a C program compiled with cc, or, when cc is missing or
--python is given, this file run as `proxy.py server` and `proxy.py client ...`. Both
speak the same protocol. A request is 16 bytes: a kind byte (`B` or `P`), 7 unused bytes and a
64-bit big-endian size. The server responds to `B` (bulk) with that many bytes and closes the
connection. It responds to `P` (ping) with that many bytes, at most 64 KiB, and waits for the
next request.

Uses only the standard library. Written for Python 3.8 or later on Linux, tested with 3.11.
"""

from __future__ import annotations

import argparse
import datetime
import os
import re
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

# The helpers shared with the startup benchmark live beside this file. Python puts the script's
# directory on sys.path, except in isolated mode (-I), so it is added here explicitly.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from startup import (  # noqa: E402
    DEFAULT_PALISADE,
    RunFailed,
    check_palisade_binary,
    describe_failure,
    machine_info,
    percentile_ns,
    read_version,
    write_json,
)

# Targets: through the proxy, bulk throughput is at least this fraction of direct, and a
# connection takes at most this much longer at the median.
MIN_THROUGHPUT_RATIO = 0.80
MAX_ADDED_LATENCY_MS = 1.0

# Protocol and buffer sizes shared by the C and the Python implementation.
REQUEST_SIZE = 16
MAX_PING_REPLY = 64 * 1024
# The receive buffer of the bulk client and the send buffer of the server. At 4 MiB a recv
# costs far less in system-call overhead than the copy it makes, so the client is not what
# limits the throughput.
BUFFER_SIZE = 4 * 1024 * 1024
# Threads of the server, each blocking in accept(). A connection that the proxy is slow to
# close therefore does not hold up the next one.
SERVER_THREADS = 4

# Time one client run may take before the script gives up on it, in seconds.
CLIENT_TIMEOUT = 600

WAYS = ("direct", "connect", "socks5")

C_SOURCE = r"""
/* Server and client of bench/proxy.py, which describes the protocol in its docstring. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define REQUEST_SIZE 16
#define MAX_PING_REPLY 65536
#define BUFFER_SIZE (4 << 20)
#define SERVER_THREADS 4

static char *buffer;

static void fail(const char *what, const char *detail)
{
    fprintf(stderr, "proxybench: %s: %s\n", what, detail);
    exit(1);
}

static uint64_t now_ns(void)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (uint64_t)now.tv_sec * 1000000000u + (uint64_t)now.tv_nsec;
}

/* Returns 0 once all of data is sent, -1 on an error. */
static int send_all(int fd, const char *data, size_t size)
{
    while (size > 0) {
        ssize_t sent = send(fd, data, size, MSG_NOSIGNAL);
        if (sent < 0 && errno == EINTR)
            continue;
        if (sent <= 0)
            return -1;
        data += sent;
        size -= (size_t)sent;
    }
    return 0;
}

/* Returns 0 once size bytes are read, -1 on an error or at the end of the stream. */
static int recv_exact(int fd, char *data, size_t size)
{
    while (size > 0) {
        ssize_t received = recv(fd, data, size, 0);
        if (received < 0 && errno == EINTR)
            continue;
        if (received <= 0)
            return -1;
        data += received;
        size -= (size_t)received;
    }
    return 0;
}

/* Both ends send without Nagle's delay, as curl and most HTTP clients do. */
static void set_nodelay(int fd)
{
    int on = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &on, sizeof on);
}

static uint64_t read_be64(const unsigned char *bytes)
{
    uint64_t value = 0;
    for (int i = 0; i < 8; i++)
        value = value << 8 | bytes[i];
    return value;
}

static void serve_connection(int fd)
{
    unsigned char request[REQUEST_SIZE];
    for (;;) {
        if (recv_exact(fd, (char *)request, sizeof request) < 0)
            return;
        uint64_t size = read_be64(request + 8);
        if (request[0] == 'B') {
            while (size > 0) {
                size_t chunk = size < BUFFER_SIZE ? (size_t)size : BUFFER_SIZE;
                if (send_all(fd, buffer, chunk) < 0)
                    return;
                size -= chunk;
            }
            return;
        }
        if (request[0] != 'P' || size > MAX_PING_REPLY || send_all(fd, buffer, (size_t)size) < 0)
            return;
    }
}

static void *accept_loop(void *argument)
{
    int listener = (int)(intptr_t)argument;
    for (;;) {
        int fd = accept(listener, NULL, NULL);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            fail("accept", strerror(errno));
        }
        set_nodelay(fd);
        serve_connection(fd);
        close(fd);
    }
    return NULL;
}

/* Listens on an ephemeral port of 127.0.0.1, prints the port and serves until killed. */
static int run_server(void)
{
    int listener = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in address = {.sin_family = AF_INET};
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t length = sizeof address;
    if (listener < 0 || bind(listener, (struct sockaddr *)&address, sizeof address) < 0
        || listen(listener, 128) < 0
        || getsockname(listener, (struct sockaddr *)&address, &length) < 0)
        fail("failed to listen on 127.0.0.1", strerror(errno));

    for (int i = 1; i < SERVER_THREADS; i++) {
        pthread_t thread;
        if (pthread_create(&thread, NULL, accept_loop, (void *)(intptr_t)listener) != 0)
            fail("pthread_create", "failed to start a server thread");
    }
    printf("%d\n", ntohs(address.sin_port));
    fflush(stdout);
    accept_loop((void *)(intptr_t)listener);
    return 0;
}

static int connect_to(const char *host, int port)
{
    struct sockaddr_in address = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    if (inet_pton(AF_INET, host, &address.sin_addr) != 1)
        fail("not an IPv4 address", host);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0)
        fail("socket", strerror(errno));
    set_nodelay(fd);
    if (connect(fd, (struct sockaddr *)&address, sizeof address) < 0) {
        char detail[128];
        snprintf(detail, sizeof detail, "%s:%d: %s", host, port, strerror(errno));
        fail("failed to connect", detail);
    }
    return fd;
}

/* Connects to the proxy that a variable such as HTTPS_PROXY=http://127.0.0.1:PORT names. */
static int connect_to_proxy(const char *variable)
{
    const char *url = getenv(variable);
    if (url == NULL)
        fail("proxy variable not set", variable);
    const char *host = strstr(url, "://");
    host = host ? host + 3 : url;
    const char *colon = strrchr(host, ':');
    if (colon == NULL || colon - host >= 64)
        fail("the proxy URL has no IPv4 host and port", url);
    char host_text[64];
    memcpy(host_text, host, (size_t)(colon - host));
    host_text[colon - host] = '\0';
    return connect_to(host_text, atoi(colon + 1));
}

/* Sends CONNECT and reads the response head, which must be 200 and all that the proxy sends. */
static void http_connect(int fd, const char *host, int port)
{
    char message[256];
    int length = snprintf(message, sizeof message, "CONNECT %s:%d HTTP/1.1\r\nHost: %s:%d\r\n\r\n",
                          host, port, host, port);
    if (send_all(fd, message, (size_t)length) < 0)
        fail("failed to send CONNECT", strerror(errno));
    char head[4096];
    size_t used = 0;
    while (used < sizeof head - 1) {
        ssize_t received = recv(fd, head + used, sizeof head - 1 - used, 0);
        if (received <= 0)
            fail("CONNECT", "the proxy closed the connection before the end of its response");
        used += (size_t)received;
        head[used] = '\0';
        char *end = strstr(head, "\r\n\r\n");
        if (end == NULL)
            continue;
        if (strncmp(head, "HTTP/1.1 200", 12) != 0)
            fail("the proxy responded to CONNECT with something other than 200", head);
        if (end + 4 != head + used)
            fail("CONNECT", "unexpected bytes after the response head");
        return;
    }
    fail("CONNECT", "the response head is larger than 4096 bytes");
}

/* Greets a SOCKS5 proxy without authentication and requests CONNECT to an IPv4 address. */
static void socks5_connect(int fd, const char *host, int port)
{
    unsigned char greeting[] = {5, 1, 0};
    unsigned char choice[2];
    if (send_all(fd, (char *)greeting, sizeof greeting) < 0
        || recv_exact(fd, (char *)choice, sizeof choice) < 0)
        fail("SOCKS5", "the method negotiation failed");
    if (choice[0] != 5 || choice[1] != 0)
        fail("SOCKS5", "the proxy did not accept 'no authentication'");
    unsigned char request[10] = {5, 1, 0, 1};
    if (inet_pton(AF_INET, host, request + 4) != 1)
        fail("not an IPv4 address", host);
    request[8] = (unsigned char)(port >> 8);
    request[9] = (unsigned char)port;
    unsigned char reply[10];
    if (send_all(fd, (char *)request, sizeof request) < 0
        || recv_exact(fd, (char *)reply, sizeof reply) < 0)
        fail("SOCKS5", "the CONNECT request failed");
    if (reply[1] != 0) {
        char detail[64];
        snprintf(detail, sizeof detail, "the proxy replied with code %d", reply[1]);
        fail("SOCKS5 CONNECT", detail);
    }
}

/* Opens a connection to the server at host:port, directly or through the proxy. */
static int open_stream(const char *via, const char *host, int port)
{
    if (strcmp(via, "direct") == 0)
        return connect_to(host, port);
    if (strcmp(via, "connect") == 0) {
        int fd = connect_to_proxy("HTTPS_PROXY");
        http_connect(fd, host, port);
        return fd;
    }
    if (strcmp(via, "socks5") == 0) {
        int fd = connect_to_proxy("ALL_PROXY");
        socks5_connect(fd, host, port);
        return fd;
    }
    fail("unknown way to connect", via);
    return -1;
}

static void send_request(int fd, char kind, uint64_t size)
{
    unsigned char request[REQUEST_SIZE] = {(unsigned char)kind};
    for (int i = 0; i < 8; i++)
        request[15 - i] = (unsigned char)(size >> (8 * i));
    if (send_all(fd, (char *)request, sizeof request) < 0)
        fail("failed to send the request", strerror(errno));
}

/* Prints the byte count and the ns from sending the request to the end of the stream. */
static void run_bulk(const char *via, const char *host, int port, uint64_t size)
{
    int fd = open_stream(via, host, port);
    uint64_t start = now_ns();
    send_request(fd, 'B', size);
    uint64_t total = 0;
    for (;;) {
        ssize_t received = recv(fd, buffer, BUFFER_SIZE, 0);
        if (received < 0 && errno == EINTR)
            continue;
        if (received < 0)
            fail("recv", strerror(errno));
        if (received == 0)
            break;
        total += (uint64_t)received;
    }
    uint64_t elapsed = now_ns() - start;
    close(fd);
    if (total != size) {
        char detail[96];
        snprintf(detail, sizeof detail, "received %llu bytes, expected %llu",
                 (unsigned long long)total, (unsigned long long)size);
        fail("bulk transfer", detail);
    }
    printf("%llu %llu\n", (unsigned long long)total, (unsigned long long)elapsed);
}

/* Prints, one a line, the ns from socket() to the complete reply of each of count connections. */
static void run_ping(const char *via, const char *host, int port, uint64_t count,
                     uint64_t reply_size)
{
    if (reply_size > MAX_PING_REPLY)
        fail("ping", "the reply size is larger than 65536 bytes");
    uint64_t *samples = calloc(count, sizeof *samples);
    if (samples == NULL)
        fail("calloc", "out of memory");
    for (uint64_t i = 0; i < count; i++) {
        uint64_t start = now_ns();
        int fd = open_stream(via, host, port);
        send_request(fd, 'P', reply_size);
        if (recv_exact(fd, buffer, (size_t)reply_size) < 0)
            fail("ping", "the connection closed before the complete reply");
        samples[i] = now_ns() - start;
        close(fd);
    }
    for (uint64_t i = 0; i < count; i++)
        printf("%llu\n", (unsigned long long)samples[i]);
    free(samples);
}

int main(int argc, char **argv)
{
    buffer = malloc(BUFFER_SIZE);
    if (buffer == NULL)
        fail("malloc", "out of memory");
    memset(buffer, 'x', BUFFER_SIZE);

    if (argc == 2 && strcmp(argv[1], "server") == 0)
        return run_server();
    if (argc == 8 && strcmp(argv[1], "client") == 0) {
        uint64_t number = strtoull(argv[6], NULL, 10);
        if (strcmp(argv[2], "bulk") == 0)
            run_bulk(argv[3], argv[4], atoi(argv[5]), number);
        else if (strcmp(argv[2], "ping") == 0)
            run_ping(argv[3], argv[4], atoi(argv[5]), number, strtoull(argv[7], NULL, 10));
        else
            fail("unknown client mode", argv[2]);
        return 0;
    }
    fprintf(stderr,
            "usage: %s server\n"
            "       %s client bulk|ping direct|connect|socks5 HOST PORT BYTES|COUNT REPLY_BYTES\n",
            argv[0], argv[0]);
    return 2;
}
"""


# The Python implementation of the server and the client, used when cc is missing or with
# --python. It mirrors the C program above function by function.


def python_server() -> int:
    """Listen on an ephemeral port of 127.0.0.1, print the port and serve until killed."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(128)
    payload = memoryview(b"x" * BUFFER_SIZE)
    for _ in range(SERVER_THREADS - 1):
        threading.Thread(target=accept_loop, args=(listener, payload), daemon=True).start()
    print(listener.getsockname()[1], flush=True)
    accept_loop(listener, payload)
    return 0


def accept_loop(listener: socket.socket, payload: memoryview) -> None:
    while True:
        connection, _ = listener.accept()
        with connection:
            connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            try:
                serve_connection(connection, payload)
            except OSError:
                pass


def serve_connection(connection: socket.socket, payload: memoryview) -> None:
    while True:
        request = recv_exact(connection, REQUEST_SIZE)
        if request is None:
            return
        size = int.from_bytes(request[8:], "big")
        if request[:1] == b"B":
            while size > 0:
                chunk = min(size, BUFFER_SIZE)
                connection.sendall(payload[:chunk])
                size -= chunk
            return
        if request[:1] != b"P" or size > MAX_PING_REPLY:
            return
        connection.sendall(payload[:size])


def recv_exact(connection: socket.socket, size: int) -> bytes | None:
    """Return exactly `size` bytes, or None if the stream ends first."""
    data = bytearray()
    while len(data) < size:
        chunk = connection.recv(size - len(data))
        if not chunk:
            return None
        data += chunk
    return bytes(data)


class ClientFailed(Exception):
    """The Python client could not complete a connection or a transfer."""


def python_client(argv: list[str]) -> int:
    """Run `client bulk|ping VIA HOST PORT BYTES|COUNT REPLY_BYTES` and print what C prints."""
    if len(argv) != 6 or argv[0] not in ("bulk", "ping") or argv[1] not in WAYS:
        print(
            "usage: proxy.py client bulk|ping direct|connect|socks5 HOST PORT BYTES|COUNT "
            "REPLY_BYTES",
            file=sys.stderr,
        )
        return 2
    mode, via, host, port_text, number_text, reply_text = argv
    port, number, reply_size = int(port_text), int(number_text), int(reply_text)
    try:
        if mode == "bulk":
            run_bulk(via, host, port, number)
        else:
            run_ping(via, host, port, number, reply_size)
    except (ClientFailed, OSError) as error:
        print(f"proxy.py client: {error}", file=sys.stderr)
        return 1
    return 0


def run_bulk(via: str, host: str, port: int, size: int) -> None:
    buffer = memoryview(bytearray(BUFFER_SIZE))
    with open_stream(via, host, port) as connection:
        start = time.perf_counter_ns()
        send_request(connection, b"B", size)
        total = 0
        while True:
            received = connection.recv_into(buffer)
            if received == 0:
                break
            total += received
        elapsed = time.perf_counter_ns() - start
    if total != size:
        raise ClientFailed(f"bulk transfer: received {total} bytes, expected {size}")
    print(total, elapsed)


def run_ping(via: str, host: str, port: int, count: int, reply_size: int) -> None:
    if reply_size > MAX_PING_REPLY:
        raise ClientFailed(f"ping: the reply size is larger than {MAX_PING_REPLY} bytes")
    samples = []
    for _ in range(count):
        start = time.perf_counter_ns()
        with open_stream(via, host, port) as connection:
            send_request(connection, b"P", reply_size)
            if recv_exact(connection, reply_size) is None:
                raise ClientFailed("ping: the connection closed before the complete reply")
            samples.append(time.perf_counter_ns() - start)
    print("\n".join(str(sample) for sample in samples))


def open_stream(via: str, host: str, port: int) -> socket.socket:
    """Open a connection to the server at host:port, directly or through the proxy."""
    if via == "direct":
        return connect_to(host, port)
    if via == "connect":
        connection = connect_to_proxy("HTTPS_PROXY")
        http_connect(connection, host, port)
        return connection
    connection = connect_to_proxy("ALL_PROXY")
    socks5_connect(connection, host, port)
    return connection


def connect_to(host: str, port: int) -> socket.socket:
    connection = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        connection.connect((host, port))
    except OSError as error:
        connection.close()
        raise ClientFailed(f"failed to connect to {host}:{port}: {error}") from error
    return connection


def connect_to_proxy(variable: str) -> socket.socket:
    """Connect to the proxy that a variable such as HTTPS_PROXY=http://127.0.0.1:PORT names."""
    url = os.environ.get(variable)
    if url is None:
        raise ClientFailed(f"proxy variable not set: {variable}")
    match = re.fullmatch(r"(?:[a-z0-9]+://)?([0-9.]+):([0-9]+)/?", url)
    if match is None:
        raise ClientFailed(f"the proxy URL has no IPv4 host and port: {url}")
    return connect_to(match.group(1), int(match.group(2)))


def http_connect(connection: socket.socket, host: str, port: int) -> None:
    """Send CONNECT and read the response head, which must be 200 and all the proxy sends."""
    connection.sendall(f"CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = connection.recv(4096)
        if not chunk:
            raise ClientFailed(
                "CONNECT: the proxy closed the connection before the end of its response"
            )
        head += chunk
        if len(head) > 4096:
            raise ClientFailed("CONNECT: the response head is larger than 4096 bytes")
    if not head.startswith(b"HTTP/1.1 200"):
        raise ClientFailed(
            f"the proxy responded to CONNECT with something other than 200: {head!r}"
        )
    if not head.endswith(b"\r\n\r\n"):
        raise ClientFailed("CONNECT: unexpected bytes after the response head")


def socks5_connect(connection: socket.socket, host: str, port: int) -> None:
    """Greet a SOCKS5 proxy without authentication and request CONNECT to an IPv4 address."""
    connection.sendall(b"\x05\x01\x00")
    if recv_exact(connection, 2) != b"\x05\x00":
        raise ClientFailed("SOCKS5: the proxy did not accept 'no authentication'")
    connection.sendall(b"\x05\x01\x00\x01" + socket.inet_aton(host) + port.to_bytes(2, "big"))
    reply = recv_exact(connection, 10)
    if reply is None:
        raise ClientFailed("SOCKS5: the connection closed before the reply to CONNECT")
    if reply[1] != 0:
        raise ClientFailed(f"SOCKS5 CONNECT: the proxy replied with code {reply[1]}")


def send_request(connection: socket.socket, kind: bytes, size: int) -> None:
    connection.sendall(kind + bytes(7) + size.to_bytes(8, "big"))


# The measurement.


@dataclass
class Way:
    """One way of reaching the server: bare, or through the proxy with one protocol."""

    name: str
    # Command line that the client's command is appended to, empty for a direct run.
    wrapper: list[str]


@dataclass
class Samples:
    """Measurements of one way, in round order."""

    # Per bulk run: the transfer time in ns.
    bulk_ns: list[int] = field(default_factory=list)
    # Per ping run: the set-up time of every connection in ns.
    ping_ns: list[list[int]] = field(default_factory=list)
    # Per run: user + system CPU time of the started process, in ms. That is the client for a
    # direct run and palisade itself (not the sandboxed client) for a proxied one, so it is
    # mostly the proxy thread's time, plus about 4 ms of palisade's start and stop.
    bulk_cpu_ms: list[float] = field(default_factory=list)
    ping_cpu_ms: list[float] = field(default_factory=list)


def parse_size(text: str) -> int:
    """Parse a byte count such as 1073741824, 512M or 1G (binary units)."""
    match = re.fullmatch(r"([0-9]+)([KMG]?)i?B?", text.strip(), re.IGNORECASE)
    if match is None:
        raise argparse.ArgumentTypeError(
            f"invalid size '{text}': expected a number such as 1G or 512M"
        )
    shift = {"": 0, "K": 10, "M": 20, "G": 30}[match.group(2).upper()]
    return int(match.group(1)) << shift


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=(
            "Measure bulk throughput and connection set-up time on loopback, direct and "
            "through palisade's proxy (HTTP CONNECT and SOCKS5)."
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
        default=10,
        metavar="N",
        help="number of measured rounds, each running every measurement once per way "
        "(default: 10)",
    )
    parser.add_argument(
        "--warmup",
        type=int,
        default=1,
        metavar="N",
        help="number of unmeasured rounds before the measured ones (default: 1)",
    )
    parser.add_argument(
        "--bytes",
        type=parse_size,
        default=1 << 30,
        metavar="SIZE",
        help="bytes of one bulk transfer, such as 1G or 256M (default: 1G)",
    )
    parser.add_argument(
        "--connections",
        type=int,
        default=1000,
        metavar="N",
        help="sequential connections in one ping run (default: 1000)",
    )
    parser.add_argument(
        "--reply-bytes",
        type=int,
        default=64,
        metavar="N",
        help=f"bytes of the reply to each ping request, at most {MAX_PING_REPLY} (default: 64)",
    )
    parser.add_argument(
        "--no-socks5",
        action="store_true",
        help="measure HTTP CONNECT only, not SOCKS5",
    )
    parser.add_argument(
        "--python",
        action="store_true",
        help="use the Python client and server even when cc is available",
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
    if args.bytes < 1:
        parser.error(f"--bytes must be at least 1, got {args.bytes}")
    if args.connections < 1:
        parser.error(f"--connections must be at least 1, got {args.connections}")
    if not 1 <= args.reply_bytes <= MAX_PING_REPLY:
        parser.error(f"--reply-bytes must be from 1 to {MAX_PING_REPLY}, got {args.reply_bytes}")
    return args


def build_tool(workspace: Path, use_python: bool) -> tuple[list[str], str]:
    """Put the client and server program in the workspace and return its command and kind.

    The program must be in the workspace because the sandbox shows neither the host's /tmp nor
    the repository, only the workspace. Raises RunFailed if the C program does not compile.
    """
    compiler = None if use_python else shutil.which("cc")
    if compiler is None:
        # This file imports startup.py, so both go to the workspace.
        bench = Path(__file__).resolve().parent
        for name in ("proxy.py", "startup.py"):
            shutil.copy(bench / name, workspace / name)
        python = os.path.realpath(sys.executable)
        return [python, "-I", str(workspace / "proxy.py")], "python"

    source = workspace / "proxybench.c"
    source.write_text(C_SOURCE)
    binary = workspace / "proxybench"
    argv = [compiler, "-O2", "-pthread", "-o", str(binary), str(source)]
    completed = subprocess.run(argv, capture_output=True, check=False)
    if completed.returncode != 0:
        raise RunFailed(describe_failure("cc", argv, completed.returncode, completed.stderr))
    return [str(binary)], "c"


class Server:
    """The server process, listening on 127.0.0.1:port until stop()."""

    def __init__(self, tool: list[str], workspace: Path) -> None:
        self._stderr = tempfile.TemporaryFile()
        self._argv = tool + ["server"]
        self._process = subprocess.Popen(
            self._argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            cwd=workspace,
        )
        line = self._process.stdout.readline()
        if not line.strip().isdigit():
            try:
                self._process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.stop()
                raise RunFailed(
                    f"the server printed {line!r} instead of its port\n"
                    f"  command: {' '.join(self._argv)}"
                ) from None
            message = self.describe_exit()
            self.stop()
            raise RunFailed(message)
        self.port = int(line)

    def describe_exit(self) -> str:
        """Describe how the server exited, with its stderr. Call it only once it has exited."""
        self._stderr.seek(0)
        stderr = self._stderr.read()
        return describe_failure("server", self._argv, self._process.returncode, stderr)

    def is_running(self) -> bool:
        return self._process.poll() is None

    def stop(self) -> None:
        if self._process.poll() is None:
            self._process.terminate()
            self._process.wait()
        self._process.stdout.close()
        self._stderr.close()


def run_client(
    way: Way, tool: list[str], arguments: list[str], workspace: Path
) -> tuple[str, float]:
    """Run the client once under `way` and return its output and the started process's CPU ms.

    Raises RunFailed if it exits non-zero or times out.
    """
    argv = way.wrapper + tool + ["client"] + arguments
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    try:
        completed = subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            cwd=workspace,
            timeout=CLIENT_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired as error:
        raise RunFailed(
            f"{way.name}: timed out after {CLIENT_TIMEOUT} s\n  command: {' '.join(argv)}"
        ) from error
    except OSError as error:
        raise RunFailed(f"{way.name}: failed to start {argv[0]}: {error}") from error
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if completed.returncode != 0:
        raise RunFailed(describe_failure(way.name, argv, completed.returncode, completed.stderr))
    cpu_s = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return completed.stdout.decode(), cpu_s * 1000


def measure_bulk(
    way: Way, tool: list[str], port: int, size: int, workspace: Path
) -> tuple[int, float]:
    """Run one bulk transfer and return its time in ns and the started process's CPU ms."""
    arguments = ["bulk", way.name, "127.0.0.1", str(port), str(size), "0"]
    output, cpu_ms = run_client(way, tool, arguments, workspace)
    received, elapsed = (int(part) for part in output.split())
    if received != size:
        raise RunFailed(f"{way.name}: the client received {received} bytes, expected {size}")
    return elapsed, cpu_ms


def measure_ping(
    way: Way, tool: list[str], port: int, count: int, reply_size: int, workspace: Path
) -> tuple[list[int], float]:
    """Run one series of connections and return their set-up times in ns and the CPU ms."""
    arguments = ["ping", way.name, "127.0.0.1", str(port), str(count), str(reply_size)]
    output, cpu_ms = run_client(way, tool, arguments, workspace)
    samples = [int(line) for line in output.split()]
    if len(samples) != count:
        raise RunFailed(f"{way.name}: the client printed {len(samples)} samples, expected {count}")
    return samples, cpu_ms


def rotated(ways: list[Way], round_index: int) -> list[Way]:
    """Return the ways in this round's order: each round starts one further along."""
    start = round_index % len(ways)
    return ways[start:] + ways[:start]


def run_rounds(
    args: argparse.Namespace, ways: list[Way], tool: list[str], server: Server, workspace: Path
) -> dict[str, Samples]:
    """Run the warm-up and measured rounds and return the samples of each way."""
    samples = {way.name: Samples() for way in ways}
    total = args.warmup + args.rounds
    for round_index in range(total):
        measured = round_index >= args.warmup
        label = (
            f"measured round {round_index - args.warmup + 1}/{args.rounds}"
            if measured
            else f"warm-up round {round_index + 1}/{args.warmup}"
        )
        print(f"{label} ...", flush=True)

        for way in rotated(ways, round_index):
            try:
                bulk_ns, bulk_cpu = measure_bulk(way, tool, server.port, args.bytes, workspace)
                ping_ns, ping_cpu = measure_ping(
                    way, tool, server.port, args.connections, args.reply_bytes, workspace
                )
            except RunFailed as error:
                if not server.is_running():
                    error = RunFailed(f"{error}\n{server.describe_exit()}")
                raise RunFailed(f"{label}: {error}") from error
            if measured:
                entry = samples[way.name]
                entry.bulk_ns.append(bulk_ns)
                entry.ping_ns.append(ping_ns)
                entry.bulk_cpu_ms.append(bulk_cpu)
                entry.ping_cpu_ms.append(ping_cpu)
    return samples


def mib_per_s(size: int, elapsed_ns: float) -> float:
    return size / 2**20 / (elapsed_ns / 1e9)


def summarise(entry: Samples, size: int) -> dict:
    throughputs = [mib_per_s(size, ns) for ns in entry.bulk_ns]
    pooled = [ns for run in entry.ping_ns for ns in run]
    return {
        "bulk_median_mib_s": statistics.median(throughputs),
        "bulk_min_mib_s": min(throughputs),
        "bulk_max_mib_s": max(throughputs),
        "bulk_median_cpu_ms": statistics.median(entry.bulk_cpu_ms),
        "ping_median_ms": statistics.median(pooled) / 1e6,
        "ping_p95_ms": percentile_ns(pooled, 0.95) / 1e6,
        "ping_p99_ms": percentile_ns(pooled, 0.99) / 1e6,
        "ping_median_cpu_ms": statistics.median(entry.ping_cpu_ms),
        "ping_connections": len(pooled),
    }


def compare(figures: dict, direct: Samples, proxied: Samples) -> dict:
    """Compute proxied/direct throughput, the added set-up time and the target verdicts."""
    # Both ways ran in the same round, seconds apart, so ratios and differences within a round
    # are less affected by slow drift than those of the two medians.
    paired_ratios = [d / p for d, p in zip(direct.bulk_ns, proxied.bulk_ns)]
    paired_added = [
        (statistics.median(p) - statistics.median(d)) / 1e6
        for d, p in zip(direct.ping_ns, proxied.ping_ns)
    ]
    ratio = figures["proxied"]["bulk_median_mib_s"] / figures["direct"]["bulk_median_mib_s"]
    added = figures["proxied"]["ping_median_ms"] - figures["direct"]["ping_median_ms"]
    return {
        "throughput_ratio_median": ratio,
        "throughput_ratio_paired_median": statistics.median(paired_ratios),
        "added_ms_median": added,
        "added_ms_p95": figures["proxied"]["ping_p95_ms"] - figures["direct"]["ping_p95_ms"],
        "added_ms_paired_median": statistics.median(paired_added),
        "throughput_target_met": ratio >= MIN_THROUGHPUT_RATIO,
        "latency_target_met": added < MAX_ADDED_LATENCY_MS,
    }


def print_figures(figures: dict[str, dict], args: argparse.Namespace) -> None:
    print()
    print(
        f"{'way':<8} {'MiB/s med':>10} {'min':>8} {'max':>8} {'CPU ms':>7}"
        f" {'conn ms med':>12} {'p95':>7} {'p99':>7} {'CPU ms':>7}"
    )
    for name, row in figures.items():
        print(
            f"{name:<8} {row['bulk_median_mib_s']:>10.0f} {row['bulk_min_mib_s']:>8.0f}"
            f" {row['bulk_max_mib_s']:>8.0f} {row['bulk_median_cpu_ms']:>7.0f}"
            f" {row['ping_median_ms']:>12.3f} {row['ping_p95_ms']:>7.3f}"
            f" {row['ping_p99_ms']:>7.3f}"
            f" {row['ping_median_cpu_ms']:>7.0f}"
        )
    print(
        f"({args.rounds} rounds of one {format_size(args.bytes)} transfer and "
        f"{args.connections} sequential connections per way; connection times pool all "
        f"connections. CPU ms is the median user + system time of the started process: the "
        f"client for direct, palisade and its proxy thread for the others, without the "
        f"sandboxed client)"
    )


def print_comparison(name: str, comparison: dict) -> None:
    print()
    print(
        f"{name} / direct throughput: median {comparison['throughput_ratio_median']:.3f}, "
        f"median of per-round ratios {comparison['throughput_ratio_paired_median']:.3f}"
    )
    print(
        f"{name} - direct per connection: median {comparison['added_ms_median']:+.3f} ms, "
        f"p95 {comparison['added_ms_p95']:+.3f} ms, "
        f"median of per-round differences {comparison['added_ms_paired_median']:+.3f} ms"
    )
    verdict = "met" if comparison["throughput_target_met"] else "MISSED"
    print(
        f"target {name} throughput >= {MIN_THROUGHPUT_RATIO:.0%} of direct: {verdict}"
        f" ({comparison['throughput_ratio_median']:.1%})"
    )
    verdict = "met" if comparison["latency_target_met"] else "MISSED"
    print(
        f"target {name} adds < {MAX_ADDED_LATENCY_MS:g} ms per connection at the median: "
        f"{verdict} ({comparison['added_ms_median']:+.3f} ms)"
    )


def format_size(size: int) -> str:
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if size >= 1 << shift and size % (1 << shift) == 0:
            return f"{size >> shift} {unit}"
    return f"{size} B"


def format_load() -> str:
    last_minute, last_5_minutes, last_15_minutes = os.getloadavg()
    return f"{last_minute:.2f} {last_5_minutes:.2f} {last_15_minutes:.2f}"


def main(argv: list[str]) -> int:
    # The Python client and server run this file with these first arguments.
    if argv[:1] == ["server"]:
        return python_server()
    if argv[:1] == ["client"]:
        return python_client(argv[1:])

    args = parse_args(argv)
    palisade = args.palisade.resolve()
    problem = check_palisade_binary(palisade)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2

    workspace = Path(tempfile.mkdtemp(prefix="palisade-proxy-bench-"))
    try:
        return measure(args, palisade, workspace)
    finally:
        shutil.rmtree(workspace, ignore_errors=True)


def measure(args: argparse.Namespace, palisade: Path, workspace: Path) -> int:
    try:
        tool, tool_kind = build_tool(workspace, args.python)
        server = Server(tool, workspace)
    except RunFailed as error:
        print(f"error: failed to set up the server: {error}", file=sys.stderr)
        return 2

    try:
        return measure_with_server(args, palisade, workspace, tool, tool_kind, server)
    finally:
        server.stop()


def measure_with_server(
    args: argparse.Namespace,
    palisade: Path,
    workspace: Path,
    tool: list[str],
    tool_kind: str,
    server: Server,
) -> int:
    sandbox = [str(palisade), "run", "-w", str(workspace)]
    sandbox += ["--allow-domain", f"127.0.0.1:{server.port}", "--"]
    ways = [Way("direct", []), Way("connect", sandbox)]
    if not args.no_socks5:
        ways.append(Way("socks5", sandbox))

    info = machine_info(os.geteuid() == 0)
    load_before = format_load()
    print(f"kernel {info['kernel']}")
    print(f"cpu {info['cpu_model']}, nproc {info['nproc']}, root {info['root']}")
    print(f"load average before: {load_before}")
    print(f"client and server: {tool_kind} ({' '.join(tool)}), server on 127.0.0.1:{server.port}")
    for way in ways:
        print(f"{way.name}: {' '.join(way.wrapper) or '(no wrapper)'}")

    # Before measuring, every way makes one connection, so a broken sandbox or proxy stops the
    # script with a setup error rather than in the middle of a measurement.
    try:
        for way in ways:
            measure_ping(way, tool, server.port, 1, args.reply_bytes, workspace)
    except RunFailed as error:
        sys.stdout.flush()
        print(f"error: check before measuring failed: {error}", file=sys.stderr)
        return 2

    try:
        samples = run_rounds(args, ways, tool, server, workspace)
    except RunFailed as error:
        sys.stdout.flush()
        print(f"error: {error}", file=sys.stderr)
        return 1
    load_after = format_load()

    figures = {way.name: summarise(samples[way.name], args.bytes) for way in ways}
    print_figures(figures, args)
    comparisons = {}
    for way in ways[1:]:
        pair = {"direct": figures["direct"], "proxied": figures[way.name]}
        comparisons[way.name] = compare(pair, samples["direct"], samples[way.name])
        print_comparison(way.name, comparisons[way.name])
    print()
    print(f"load average after: {load_after}")

    if args.json:
        report = {
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "machine": info,
            "load_average": {"before": load_before, "after": load_after},
            "rounds": args.rounds,
            "warmup_rounds": args.warmup,
            "bulk_bytes": args.bytes,
            "connections_per_run": args.connections,
            "reply_bytes": args.reply_bytes,
            "client": tool_kind,
            "versions": {
                "palisade": read_version([str(palisade), "--version"]),
                "cc": read_version(["cc", "--version"]) if tool_kind == "c" else None,
                "python": read_version([os.path.realpath(sys.executable), "--version"]),
            },
            "wrappers": {way.name: way.wrapper for way in ways},
            "figures": figures,
            "comparisons": comparisons,
            "targets": {
                "min_throughput_ratio": MIN_THROUGHPUT_RATIO,
                "max_added_latency_ms": MAX_ADDED_LATENCY_MS,
            },
            "samples": {way.name: vars(samples[way.name]) for way in ways},
        }
        write_json(args.json, report)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
