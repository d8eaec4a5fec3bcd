#!/usr/bin/python3
"""Network lab for palisade's integration tests.

Usage: netlab.py SPEC.json RESULT.json

Run it as root inside a network and mount namespace of its own (the caller starts it with
`unshare --net --mount --fork`). The namespace has a loopback interface and nothing else, so
every address the lab uses lives on `lo` and no packet can leave the machine, even when the
sandbox under test is broken.

The lab:
1. brings `lo` up and adds the spec's extra addresses to it;
2. bind-mounts a hosts file mapping the spec's names, and a resolv.conf naming 127.0.0.1
   (where a DNS logger may listen), over the ones in /etc;
3. starts the loggers: TCP, HTTP, TLS (self-signed certificate, logs the SNI), UDP, ICMP and
   UNIX-socket servers that record every connection, datagram or packet they receive;
4. proves each logger works with a control message of its own, then discards that record;
5. runs each palisade command of the spec in turn, and after each one takes the loggers'
   records, so every run gets the records of what arrived while it ran;
6. writes the outputs, exit statuses and records to RESULT.json.

Only the Python standard library and the `ip`, `mount` and `openssl` programs are used.
"""

import json
import os
import signal
import socket
import ssl
import struct
import subprocess
import sys
import threading
import time

CONTROL = b"LAB-CONTROL"
# How long a logger waits for more bytes on an open connection before it stops reading.
READ_IDLE_SECONDS = 5
# How long the lab waits after a run for records still on their way (a datagram in flight).
SETTLE_SECONDS = 0.2


class Records:
    """The records of every logger, shared by the logger threads."""

    def __init__(self):
        self.lock = threading.Lock()
        self.by_logger = {}

    def add(self, logger, peer, **fields):
        """Adds a record and returns it, so a connection can append bytes as they arrive."""
        record = {"peer": peer, "text": ""}
        record.update(fields)
        with self.lock:
            self.by_logger.setdefault(logger, []).append(record)
        return record

    def append_text(self, record, data):
        with self.lock:
            record["text"] += data.decode("latin-1")

    def update(self, record, **fields):
        with self.lock:
            record.update(fields)

    def take(self):
        """Returns every record so far and empties the lists."""
        with self.lock:
            snapshot = {name: [dict(record) for record in records] for name, records in self.by_logger.items()}
            for records in self.by_logger.values():
                records.clear()
        return snapshot

    def count(self, logger):
        with self.lock:
            return len(self.by_logger.get(logger, []))


RECORDS = Records()


def run_checked(argv):
    result = subprocess.run(argv, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"lab setup failed: {' '.join(argv)} exited with {result.returncode}: {result.stderr.strip()}")


def family_of(host):
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def format_peer(address):
    if isinstance(address, tuple):
        return f"{address[0]}:{address[1]}"
    return str(address) or "unnamed"


def start_thread(target, *args):
    thread = threading.Thread(target=target, args=args, daemon=True)
    thread.start()


# Network setup

def set_up_network(addresses):
    run_checked(["ip", "link", "set", "lo", "up"])
    for address in addresses:
        prefix = "/128" if ":" in address else "/32"
        run_checked(["ip", "addr", "add", address + prefix, "dev", "lo"])


def bind_mount_file(contents, lab_dir, name, target):
    path = os.path.join(lab_dir, name)
    with open(path, "w") as file:
        file.write(contents)
    os.chmod(path, 0o644)
    run_checked(["mount", "--bind", path, target])


def set_up_names(hosts, lab_dir):
    lines = ["127.0.0.1 localhost", "::1 localhost ip6-localhost"]
    lines += [f"{address} {name}" for name, address in sorted(hosts.items())]
    bind_mount_file("\n".join(lines) + "\n", lab_dir, "hosts", "/etc/hosts")
    # Every lookup that leaves the hosts file goes to 127.0.0.1:53, where a test may start a
    # DNS logger. Nothing responds, so a lookup that gets there fails after the timeout.
    bind_mount_file("nameserver 127.0.0.1\noptions timeout:2 attempts:1\n", lab_dir, "resolv.conf", "/etc/resolv.conf")


def make_certificate(lab_dir, names, cert_path):
    """Creates a throwaway self-signed certificate for `names`; it is also the test CA."""
    key_path = os.path.join(lab_dir, "key.pem")
    alt_names = ",".join(f"DNS:{name}" for name in names)
    run_checked([
        "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
        "-nodes", "-days", "1", "-subj", "/CN=palisade-lab", "-addext", f"subjectAltName={alt_names}",
        "-keyout", key_path, "-out", cert_path,
    ])
    os.chmod(cert_path, 0o644)
    return key_path


# Loggers

def listen_tcp(host, port):
    server = socket.socket(family_of(host), socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind((host, port))
    server.listen(64)
    return server


def accept_forever(server, name, handle):
    while True:
        connection, peer = server.accept()
        record = RECORDS.add(name, format_peer(peer))
        start_thread(handle, connection, record)


def read_http_request(connection, record):
    """Reads one HTTP request head and its Content-Length body, recording every byte."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = connection.recv(65536)
        if not chunk:
            return data
        RECORDS.append_text(record, chunk)
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        key, _, value = line.partition(b":")
        if key.strip().lower() == b"content-length":
            length = int(value.strip() or b"0")
    while len(body) < length:
        chunk = connection.recv(65536)
        if not chunk:
            break
        RECORDS.append_text(record, chunk)
        body += chunk
    return data


def http_response(status, body, content_type="text/plain"):
    head = f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    return head.encode() + body


def request_path(request):
    """Returns the path of a request line, without its query string."""
    line = request.split(b"\r\n", 1)[0].decode("latin-1")
    parts = line.split(" ")
    target = parts[1] if len(parts) > 1 else "/"
    if "://" in target:
        target = "/" + target.split("://", 1)[1].partition("/")[2]
    return target.split("?", 1)[0]


def static_response(root, request):
    """Serves a file under `root`, or `index.html` for a directory, as python's http.server does."""
    relative = os.path.normpath(request_path(request).lstrip("/"))
    if relative.startswith(".."):
        return http_response("404 Not Found", b"not found\n")
    path = os.path.join(root, relative)
    if os.path.isdir(path):
        path = os.path.join(path, "index.html")
    if not os.path.isfile(path):
        return http_response("404 Not Found", b"not found\n")
    with open(path, "rb") as file:
        body = file.read()
    content_type = "text/html" if path.endswith(".html") else "application/octet-stream"
    return http_response("200 OK", body, content_type)


def serve_http(spec):
    """Starts an HTTP server that records each connection with every byte it sent, and responds
    `LAB-OK NAME`, or serves the files under `root` when the spec names one."""
    name = spec["name"]
    root = spec.get("root")

    def handle(connection, record):
        with connection:
            connection.settimeout(READ_IDLE_SECONDS)
            try:
                request = read_http_request(connection, record)
                if not request:
                    return
                if root:
                    response = static_response(root, request)
                else:
                    response = http_response("200 OK", f"LAB-OK {name}\n".encode())
                connection.sendall(response)
            except OSError as error:
                RECORDS.update(record, error=str(error))

    server = listen_tcp(spec["host"], spec["port"])
    start_thread(accept_forever, server, name, handle)


def serve_tcp(spec):
    """Starts a raw TCP logger: records each connection and every byte it sends."""
    name = spec["name"]

    def handle(connection, record):
        with connection:
            connection.settimeout(READ_IDLE_SECONDS)
            try:
                while True:
                    chunk = connection.recv(65536)
                    if not chunk:
                        return
                    RECORDS.append_text(record, chunk)
            except OSError:
                return

    server = listen_tcp(spec["host"], spec["port"])
    start_thread(accept_forever, server, name, handle)


def serve_tls(spec, cert_path, key_path):
    """Starts a TLS server that records the SNI of each handshake and the request inside it,
    and responds `LAB-TLS-OK NAME`."""
    name = spec["name"]

    def handle(connection, record):
        # The callback runs during the handshake, before it can fail, so a refused handshake
        # still leaves the name the client asked for.
        def note_sni(ssl_socket, server_name, ssl_context):
            RECORDS.update(record, sni=server_name)

        # A context per connection, because the callback writes to this connection's record.
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert_path, key_path)
        context.sni_callback = note_sni
        connection.settimeout(READ_IDLE_SECONDS)
        try:
            with context.wrap_socket(connection, server_side=True) as tls:
                RECORDS.update(record, handshake="completed")
                request = read_http_request(tls, record)
                if request:
                    tls.sendall(http_response("200 OK", f"LAB-TLS-OK {name}\n".encode()))
        except OSError as error:  # ssl.SSLError is an OSError
            RECORDS.update(record, error=str(error))
        finally:
            connection.close()

    server = listen_tcp(spec["host"], spec["port"])
    start_thread(accept_forever, server, name, handle)


def serve_udp(spec):
    """Starts a UDP logger: records every datagram."""
    name = spec["name"]
    server = socket.socket(family_of(spec["host"]), socket.SOCK_DGRAM)
    server.bind((spec["host"], spec["port"]))

    def receive():
        while True:
            data, peer = server.recvfrom(65536)
            record = RECORDS.add(name, format_peer(peer))
            RECORDS.append_text(record, data)

    start_thread(receive)


ICMP_ECHO_REQUEST = 8


def serve_icmp(spec):
    """Starts an ICMP logger: a raw socket receives every ICMP packet that arrives in this network
    namespace, and the logger records the echo requests among them."""
    name = spec["name"]
    server = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)

    def receive():
        while True:
            packet, peer = server.recvfrom(65536)
            header_length = (packet[0] & 0x0F) * 4
            icmp = packet[header_length:]
            if icmp and icmp[0] == ICMP_ECHO_REQUEST:
                record = RECORDS.add(name, peer[0])
                RECORDS.append_text(record, icmp[8:])

    start_thread(receive)


def unix_address(spec):
    if "abstract" in spec:
        return "\0" + spec["abstract"]
    return spec["path"]


def serve_unix(spec):
    """Starts an HTTP server on a UNIX socket (a path or an abstract name) that every user may
    connect to, recording each connection."""
    name = spec["name"]
    address = unix_address(spec)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    if "path" in spec:
        os.makedirs(os.path.dirname(spec["path"]), exist_ok=True)
        if os.path.exists(spec["path"]):
            os.unlink(spec["path"])
    server.bind(address)
    if "path" in spec:
        os.chmod(spec["path"], 0o777)
    server.listen(16)

    def handle(connection, record):
        with connection:
            connection.settimeout(READ_IDLE_SECONDS)
            try:
                if read_http_request(connection, record):
                    connection.sendall(http_response("200 OK", f"LAB-OK {name}\n".encode()))
            except OSError:
                return

    start_thread(accept_forever, server, name, handle)


# Control messages: each proves that its logger receives what is sent to it.

def control_stream(family, address, wrap=None, reply=True):
    """Sends a control request over a stream; waits for the reply unless the logger sends
    none (the raw TCP logger)."""
    with socket.socket(family, socket.SOCK_STREAM) as client:
        client.settimeout(3)
        client.connect(address)
        if wrap:
            client = wrap(client)
        client.sendall(b"GET /" + CONTROL + b" HTTP/1.0\r\n\r\n")
        if reply:
            client.recv(100)
        client.close()


def icmp_checksum(data):
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


def send_control(spec, cert_path):
    kind = spec["kind"]
    if kind in ("http", "tcp"):
        control_stream(family_of(spec["host"]), (spec["host"], spec["port"]), reply=kind == "http")
    elif kind == "tls":
        context = ssl.create_default_context(cafile=cert_path)
        context.check_hostname = False
        control_stream(family_of(spec["host"]), (spec["host"], spec["port"]),
                       lambda client: context.wrap_socket(client, server_hostname="lab-control.test"))
    elif kind == "udp":
        with socket.socket(family_of(spec["host"]), socket.SOCK_DGRAM) as client:
            client.sendto(CONTROL, (spec["host"], spec["port"]))
    elif kind == "icmp":
        header = struct.pack("!BBHHH", ICMP_ECHO_REQUEST, 0, 0, 1, 1)
        checksum = icmp_checksum(header + CONTROL)
        packet = struct.pack("!BBHHH", ICMP_ECHO_REQUEST, 0, checksum, 1, 1) + CONTROL
        with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP) as client:
            client.sendto(packet, (spec.get("host", "127.0.0.1"), 0))
    elif kind == "unix":
        control_stream(socket.AF_UNIX, unix_address(spec))


def check_loggers(loggers, cert_path):
    for spec in loggers:
        try:
            send_control(spec, cert_path)
        except OSError as error:
            raise SystemExit(f"lab setup failed: the control message to logger {spec['name']} failed: {error}")
        deadline = time.monotonic() + 3
        while RECORDS.count(spec["name"]) == 0:
            if time.monotonic() > deadline:
                raise SystemExit(f"lab setup failed: logger {spec['name']} did not record its control message")
            time.sleep(0.01)
    # Wait out records of the controls still being written (the rest of a TLS request).
    time.sleep(0.05)
    RECORDS.take()


STARTERS = {"http": serve_http, "tcp": serve_tcp, "udp": serve_udp, "icmp": serve_icmp, "unix": serve_unix}


def start_loggers(loggers, cert_path, key_path):
    for spec in loggers:
        if spec["kind"] == "tls":
            serve_tls(spec, cert_path, key_path)
        else:
            STARTERS[spec["kind"]](spec)


# Runs

def run_command(run):
    started = time.monotonic()
    process = subprocess.Popen(
        run["argv"], cwd=run["cwd"], env=run["env"], stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
    )
    timed_out = False
    try:
        stdout, stderr = process.communicate(timeout=run["timeout"])
    except subprocess.TimeoutExpired:
        timed_out = True
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
    seconds = time.monotonic() - started
    time.sleep(SETTLE_SECONDS)
    return {
        "code": None if timed_out else process.returncode,
        "timed_out": timed_out,
        "seconds": round(seconds, 3),
        "stdout": stdout.decode("utf-8", "replace"),
        "stderr": stderr.decode("utf-8", "replace"),
        "logs": RECORDS.take(),
    }


def main():
    spec_path, result_path = sys.argv[1], sys.argv[2]
    with open(spec_path) as file:
        spec = json.load(file)
    lab_dir = spec["dir"]
    os.makedirs(lab_dir, exist_ok=True)

    set_up_network(spec["addresses"])
    set_up_names(spec["hosts"], lab_dir)

    cert_path = spec.get("cert")
    key_path = None
    if any(logger["kind"] == "tls" for logger in spec["loggers"]):
        key_path = make_certificate(lab_dir, sorted(spec["hosts"]), cert_path)

    try:
        start_loggers(spec["loggers"], cert_path, key_path)
        check_loggers(spec["loggers"], cert_path)
        results = [run_command(run) for run in spec["runs"]]
        with open(result_path, "w") as file:
            json.dump({"runs": results}, file)
    finally:
        # Socket files outlive the namespaces, so they are removed even when setup fails.
        for logger in spec["loggers"]:
            if logger.get("path") and os.path.exists(logger["path"]):
                os.unlink(logger["path"])
    # os._exit ends the process without waiting for the logger threads, which block in accept
    # and recv.
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
