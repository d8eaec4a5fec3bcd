#!/usr/bin/env bash
# Type-checks the whole workspace for both Apple targets on Linux, the macOS backend and the
# palisade binary with its macOS glue included. A crate that does not compile for macOS (as
# landlock does not) then breaks CI as it would break `cargo build` on a Mac. Linking
# needs Apple's SDK, which Linux lacks, so nothing is built or run here: `cargo check` with Debian's rustc-web
# builds the standard library for the target from source (-Zbuild-std).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x /usr/bin/rustc ] || [ ! -x /usr/bin/cargo ] || [ ! -x /usr/bin/cargo-clippy ] || [ ! -d /usr/lib/rustlib/src/rust/library ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "SKIP macos: rustc-web, cargo-web, rust-web-src or rust-web-clippy is missing; install them as root to type-check the macOS backend" >&2
    exit 0
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends rustc-web cargo-web rust-web-src rust-web-clippy >/dev/null
fi
. .ci/rust-web.sh
rust_web_upgrade_if_old rustc-web cargo-web rust-web-src rust-web-clippy

# Debian's compiler, not rustup's, because only it has the matching standard library source.
# RUSTC_BOOTSTRAP lets the stable compiler take -Zbuild-std; it is set for these commands only.
# The target directory lies outside the clone, so the rebuilt standard library is kept
# between runs and never mixes with the host build.
export RUSTC=/usr/bin/rustc RUSTDOC=/usr/bin/rustdoc RUSTC_BOOTSTRAP=1
export CARGO_TARGET_DIR="${PALISADE_MACOS_TARGET_DIR:-/var/tmp/mac-target}"

for target in aarch64-apple-darwin x86_64-apple-darwin; do
  echo "macos.sh: checking the workspace for $target" >&2
  /usr/bin/cargo check --locked -Zbuild-std --target "$target" --workspace --all-targets
done

# Clippy checks the macOS-only code (`sys`, the binary's macOS glue and selftest probes) only
# when it checks for a macOS target, and there it enforces a SAFETY comment on every unsafe
# block. Debian's cargo-clippy runs Debian's clippy-driver when /usr/bin comes first in PATH.
echo "macos.sh: running clippy on the workspace for aarch64-apple-darwin" >&2
PATH="/usr/bin:$PATH" /usr/bin/cargo clippy --locked -Zbuild-std --target aarch64-apple-darwin --workspace --all-targets -- -D warnings
