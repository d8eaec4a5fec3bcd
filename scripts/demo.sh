#!/usr/bin/env bash
# Demonstrates palisade on real input. The script:
#   1. builds palisade in release mode;
#   2. downloads a published crate (strsim) with cargo, outside the sandbox, and copies its
#      source into a fresh workspace;
#   3. runs that crate's own test suite inside `palisade run ... -- cargo test --offline`;
#   4. shows three attempts the sandbox refuses (reading a planted SSH key, connecting to a
#      server on the host, writing outside the workspace) and checks on the host that nothing
#      outside changed.
# It exits 0 only when the tests pass and every refusal happens. Otherwise it prints FAILED
# lines and exits 1.
#
# Usage: bash scripts/demo.sh
#
# Requirements:
#   - a Rust toolchain (cargo and rustc, through rustup or a system package) that the user
#     running the script can read. Palisade mounts it read-only inside the sandbox. root's
#     toolchain under /root is not readable by other users, so a normal user needs their own.
#   - network access to crates.io for the download in step 2 (the sandbox has none);
#   - python3 for the small TCP server in step 5;
#   - Linux with user namespaces enabled (`palisade check` reports whether they are).
# It works as root and as a normal user.
#
# Every sandboxed command runs with HOME set to a fake home directory that the script creates
# under a temporary directory and removes at the end. Inside the sandbox, nothing of the real
# home directory is visible except the toolchain, which is passed in read-only with
# --env CARGO_HOME=..., --env RUSTUP_HOME=... and --allow-read for both. The script never
# reads the real ~/.ssh. Outside the sandbox, step 2 adds the downloaded crate to cargo's
# cache, as any cargo fetch does.

set -euo pipefail

readonly CRATE_NAME=strsim
readonly CRATE_VERSION=0.11.1
# Text written into the planted key. If it appears in a sandboxed command's output, the read
# was not refused.
readonly FAKE_KEY_MARKER="FAKE KEY PLANTED BY PALISADE DEMO, NOT A REAL KEY"
readonly SERVER_GREETING="hello from the host"

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
readonly REPO
START_SECONDS=$SECONDS
FAILURES=0
STEP=0
readonly STEP_COUNT=6

header() {
    STEP=$((STEP + 1))
    printf '\n==> [%d/%d] %s\n' "$STEP" "$STEP_COUNT" "$1"
}

info() {
    printf '    %s\n' "$@"
}

# Prints each line of $1 indented under a label.
show_output() {
    local label=$1 text=$2
    if [[ -z $text ]]; then
        printf '    %-10s (no output)\n' "$label:"
        return
    fi
    local first=1 line
    while IFS= read -r line; do
        if ((first)); then
            printf '    %-10s %s\n' "$label:" "$line"
            first=0
        else
            printf '    %-10s %s\n' "" "$line"
        fi
    done <<<"$text"
}

fail() {
    printf '    FAILED: %s\n' "$1"
    FAILURES=$((FAILURES + 1))
}

die() {
    printf 'demo: error: %s\n' "$1" >&2
    exit 1
}

require_command() {
    command -v "$1" >/dev/null 2>&1 || die "$1 not found in PATH. $2"
}

# --- Setup -------------------------------------------------------------------------------

require_command cargo "Install a Rust toolchain that this user can read, for example with rustup."
require_command python3 "Install python3, which step 5 uses for a TCP server on 127.0.0.1."
require_command sha256sum "Install coreutils."

DEMO_DIR=$(mktemp -d "${TMPDIR:-/tmp}/palisade-demo.XXXXXX")
readonly DEMO_DIR
readonly WS=$DEMO_DIR/workspace
readonly FAKE_HOME=$DEMO_DIR/home
readonly OUTSIDE=$DEMO_DIR/outside
SERVER_PID=

cleanup() {
    if [[ -n $SERVER_PID ]]; then
        kill "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
    fi
    rm -rf "$DEMO_DIR"
}
trap cleanup EXIT

mkdir -p "$WS" "$FAKE_HOME" "$OUTSIDE"

# The real toolchain locations, as cargo and rustup resolve them for this user.
REAL_CARGO_HOME=${CARGO_HOME:-$HOME/.cargo}
REAL_RUSTUP_HOME=
if command -v rustup >/dev/null 2>&1; then
    REAL_RUSTUP_HOME=$(rustup show home)
fi

# Flags that make the toolchain usable under the fake home. The real CARGO_HOME may contain a
# registry token. The built-in credential list covers only the sandbox's own home, so the
# token files are hidden explicitly.
TOOLCHAIN_FLAGS=()
if [[ -d $REAL_CARGO_HOME ]]; then
    TOOLCHAIN_FLAGS+=(--env "CARGO_HOME=$REAL_CARGO_HOME" --allow-read "$REAL_CARGO_HOME"
        --deny-read "$REAL_CARGO_HOME/credentials.toml" --deny-read "$REAL_CARGO_HOME/credentials")
fi
if [[ -n $REAL_RUSTUP_HOME && -d $REAL_RUSTUP_HOME ]]; then
    TOOLCHAIN_FLAGS+=(--env "RUSTUP_HOME=$REAL_RUSTUP_HOME" --allow-read "$REAL_RUSTUP_HOME")
fi

# Runs `palisade run` with the demo's workspace, fake home and toolchain. Extra palisade flags
# come first, then `--` and the command. CARGO_TARGET_DIR is dropped so that cargo builds
# inside the workspace, the only writable place.
sandbox() {
    env -u CARGO_TARGET_DIR HOME="$FAKE_HOME" \
        "$PALISADE" run --workspace "$WS" --timeout 10m "${TOOLCHAIN_FLAGS[@]}" "$@"
}

# Runs `sandbox "$@"` and stores its stdout and stderr in RUN_OUTPUT and its exit status in
# RUN_STATUS.
sandbox_capture() {
    RUN_STATUS=0
    RUN_OUTPUT=$(sandbox "$@" 2>&1) || RUN_STATUS=$?
}

# Checks that the command itself ran and failed. Exit statuses 124 to 127 mean that the run
# timed out, palisade failed or the exec failed, so the command never made its attempt.
expect_command_failed() {
    if ((RUN_STATUS == 0)); then
        fail "the command succeeded, but it should have been refused"
    elif ((RUN_STATUS >= 124 && RUN_STATUS <= 127)); then
        fail "exit status $RUN_STATUS: the run timed out or palisade or the exec failed, so the command never made its attempt"
    fi
}

# --- 1. Build ----------------------------------------------------------------------------

header "Build palisade (cargo build --release)"
cargo build --release --manifest-path "$REPO/Cargo.toml"
PALISADE=${CARGO_TARGET_DIR:-$REPO/target}/release/palisade
readonly PALISADE
[[ -x $PALISADE ]] || die "the build finished but $PALISADE is missing"
info "binary: $PALISADE ($("$PALISADE" --version))"
CHECK_OUTPUT=$("$PALISADE" check 2>&1) || die "palisade cannot run sandboxes here: $CHECK_OUTPUT"
info "this machine: $CHECK_OUTPUT"

# --- 2. Fetch ----------------------------------------------------------------------------

header "Download $CRATE_NAME $CRATE_VERSION from crates.io (outside the sandbox)"
FETCH_DIR=$DEMO_DIR/fetch
mkdir -p "$FETCH_DIR/src"
: >"$FETCH_DIR/src/lib.rs"
cat >"$FETCH_DIR/Cargo.toml" <<EOF
[package]
name = "palisade-demo-fetch"
version = "0.0.0"
edition = "2021"
publish = false

[dependencies]
$CRATE_NAME = "=$CRATE_VERSION"
EOF
env -u CARGO_TARGET_DIR cargo fetch --manifest-path "$FETCH_DIR/Cargo.toml"

# cargo metadata returns where cargo unpacked the crate in the registry.
CRATE_SOURCE=$(cargo metadata --format-version 1 --offline --manifest-path "$FETCH_DIR/Cargo.toml" |
    python3 -c '
import json, os, sys
name, version = sys.argv[1], sys.argv[2]
for package in json.load(sys.stdin)["packages"]:
    if package["name"] == name and package["version"] == version:
        print(os.path.dirname(package["manifest_path"]))
' "$CRATE_NAME" "$CRATE_VERSION")
[[ -n $CRATE_SOURCE && -f $CRATE_SOURCE/Cargo.toml ]] ||
    die "cargo metadata did not report the source of $CRATE_NAME $CRATE_VERSION"
cp -R "$CRATE_SOURCE/." "$WS"
rm -rf "$WS/target"
info "source:    $CRATE_SOURCE"
info "workspace: $WS"
# Resolve the workspace's own dependencies while the network is still available, so that the
# offline build inside the sandbox finds its lock file and every dev-dependency.
env -u CARGO_TARGET_DIR cargo fetch --quiet --manifest-path "$WS/Cargo.toml"

# --- 3. Test suite -----------------------------------------------------------------------

header "Run the $CRATE_NAME test suite inside the sandbox"
info "palisade run --workspace $WS --timeout 10m \\"
for ((i = 0; i < ${#TOOLCHAIN_FLAGS[@]}; i += 2)); do
    info "    ${TOOLCHAIN_FLAGS[i]} ${TOOLCHAIN_FLAGS[i + 1]} \\"
done
info "    -- cargo test --offline -- --quiet"
info "(HOME=$FAKE_HOME)"
echo
TEST_LOG=$DEMO_DIR/cargo-test.log
set +e
sandbox -- cargo test --offline -- --quiet 2>&1 | tee "$TEST_LOG"
TEST_STATUS=${PIPESTATUS[0]}
set -e
echo
PASSED=$({ grep -oE 'test result: ok\. [0-9]+ passed' "$TEST_LOG" || true; } | awk '{ sum += $4 } END { print sum + 0 }')
if ((TEST_STATUS != 0)); then
    fail "cargo test exited with status $TEST_STATUS"
elif ((PASSED == 0)); then
    fail "cargo test exited 0 but reported no passing tests"
else
    info "result: $PASSED tests of $CRATE_NAME $CRATE_VERSION passed inside the sandbox"
fi

# --- 4. Refusal: credential read ---------------------------------------------------------

header "Refused: reading a planted SSH key"
mkdir -p "$FAKE_HOME/.ssh"
chmod 700 "$FAKE_HOME/.ssh"
printf -- '-----BEGIN OPENSSH PRIVATE KEY-----\n%s\n-----END OPENSSH PRIVATE KEY-----\n' \
    "$FAKE_KEY_MARKER" >"$FAKE_HOME/.ssh/id_ed25519"
chmod 600 "$FAKE_HOME/.ssh/id_ed25519"
KEY_SUM=$(sha256sum "$FAKE_HOME/.ssh/id_ed25519")
info "planted:   $FAKE_HOME/.ssh/id_ed25519 (fake key, HOME=$FAKE_HOME)"

sandbox_capture -- bash -c 'cat ~/.ssh/id_ed25519'
info "tried:     cat ~/.ssh/id_ed25519"
show_output saw "$RUN_OUTPUT"
info "exit:      $RUN_STATUS"
info "rule:      ~/.ssh is a built-in credential store. The sandbox's home is an empty tmpfs," \
    "           and palisade never mounts credential stores into it."
expect_command_failed
[[ $RUN_OUTPUT != *"$FAKE_KEY_MARKER"* ]] || fail "the key's contents appeared inside the sandbox"

echo
sandbox_capture --allow-read "$FAKE_HOME/.ssh" -- cat "$FAKE_HOME/.ssh/id_ed25519"
info "tried:     the same read with --allow-read ~/.ssh"
show_output saw "$RUN_OUTPUT"
info "exit:      $RUN_STATUS"
info "rule:      a path inside a credential store cannot be made visible, so palisade rejects" \
    "           the policy and runs nothing."
((RUN_STATUS == 125)) || fail "expected palisade to reject the policy with exit status 125"
[[ $RUN_OUTPUT != *"$FAKE_KEY_MARKER"* ]] || fail "the key's contents appeared inside the sandbox"

if [[ $(sha256sum "$FAKE_HOME/.ssh/id_ed25519") == "$KEY_SUM" ]]; then
    info "host:      the planted key is unchanged (sha256 ${KEY_SUM%% *})"
else
    fail "the planted key changed on the host"
fi

# --- 5. Refusal: network -----------------------------------------------------------------

header "Refused: connecting to a server on the host"
PORT_FILE=$DEMO_DIR/server.port
SERVER_LOG=$DEMO_DIR/server.log
: >"$SERVER_LOG"
# A TCP server on the host's loopback interface that greets each client and logs the
# connection, so the script can count who reached it.
python3 -c '
import os, socket, sys
port_file, log_file, greeting = sys.argv[1], sys.argv[2], sys.argv[3]
server = socket.socket()
server.bind(("127.0.0.1", 0))
server.listen()
with open(port_file + ".tmp", "w") as f:
    f.write(str(server.getsockname()[1]))
os.rename(port_file + ".tmp", port_file)
while True:
    connection, address = server.accept()
    with open(log_file, "a") as log:
        log.write("connection from %s:%d\n" % address)
    connection.sendall(greeting.encode() + b"\n")
    connection.close()
' "$PORT_FILE" "$SERVER_LOG" "$SERVER_GREETING" &
SERVER_PID=$!
for _ in $(seq 50); do
    [[ -s $PORT_FILE ]] && break
    sleep 0.1
done
[[ -s $PORT_FILE ]] || die "the TCP server on 127.0.0.1 did not start"
PORT=$(<"$PORT_FILE")
# shellcheck disable=SC2016 # $1 expands in the inner bash.
CONNECT_SCRIPT='exec 3<>"/dev/tcp/127.0.0.1/$1" && cat <&3'

HOST_REPLY=$(timeout 10 bash -c "$CONNECT_SCRIPT" bash "$PORT" 2>&1) || true
info "server:    listening on 127.0.0.1:$PORT on the host"
show_output reply "$HOST_REPLY"
[[ $HOST_REPLY == "$SERVER_GREETING" ]] || die "the host could not reach its own server on port $PORT"

echo
sandbox_capture -- bash -c "$CONNECT_SCRIPT" bash "$PORT"
info "tried:     connect to 127.0.0.1:$PORT from inside the sandbox (bash /dev/tcp)"
show_output saw "$RUN_OUTPUT"
info "exit:      $RUN_STATUS"
info "rule:      --net none (the default) runs the command in its own network namespace whose" \
    "           only interface is a private loopback, so the host's 127.0.0.1 is out of reach."
expect_command_failed
[[ $RUN_OUTPUT != *"$SERVER_GREETING"* ]] || fail "the server's greeting reached the sandbox"

echo
sandbox_capture -- bash -c 'exec 3<>/dev/tcp/index.crates.io/443'
info "tried:     connect to index.crates.io:443 from inside the sandbox"
show_output saw "$RUN_OUTPUT"
info "exit:      $RUN_STATUS"
info "rule:      the same namespace has no route to any name server, so no host name resolves."
expect_command_failed

CONNECTIONS=$(wc -l <"$SERVER_LOG")
if ((CONNECTIONS == 1)); then
    info "host:      the server logged 1 connection, the host's own, and none from the sandbox"
else
    fail "the server logged $CONNECTIONS connections, expected only the host's 1"
fi

# --- 6. Refusal: write outside the workspace ---------------------------------------------

header "Refused: writing outside the workspace"
info "outside:   $OUTSIDE (created by the demo, visible with --allow-read)"
sandbox_capture --allow-read "$OUTSIDE" -- bash -c 'echo data >"$1/note.txt"' bash "$OUTSIDE"
info "tried:     echo data > $OUTSIDE/note.txt"
show_output saw "$RUN_OUTPUT"
info "exit:      $RUN_STATUS"
info "rule:      only the workspace and --allow-write paths are writable. --allow-read mounts" \
    "           a path read-only."
expect_command_failed
if [[ -e $OUTSIDE/note.txt ]]; then
    fail "$OUTSIDE/note.txt exists on the host"
elif [[ -n $(ls -A "$OUTSIDE") ]]; then
    fail "$OUTSIDE is no longer empty on the host"
else
    info "host:      $OUTSIDE/note.txt does not exist, and the directory is still empty"
fi

# --- Summary -----------------------------------------------------------------------------

echo
if ((FAILURES > 0)); then
    printf '==> demo FAILED: %d check(s) did not behave as described (%ds)\n' "$FAILURES" \
        "$((SECONDS - START_SECONDS))"
    exit 1
fi
printf '==> demo passed: tests ran in the sandbox and all refusals happened (%ds)\n' \
    "$((SECONDS - START_SECONDS))"
