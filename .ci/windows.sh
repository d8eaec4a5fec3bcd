#!/usr/bin/env bash
# The Windows part of the test command, on Debian 12 x86_64:
#   1. a build of every target of palisade-windows and palisade for x86_64-pc-windows-gnu, and a
#      cargo check of them for -msvc, with Debian's rustc-web and its std source
#      (-Zbuild-std), since rustup cannot download the Windows targets here;
#   2. their tests for x86_64-pc-windows-gnu, linked by mingw-w64 and run under Wine.
# Installs the Debian packages it needs when run as root; as another user without them, it
# prints a SKIP line and exits 0. Prints the time of each step.
#
# Environment: PALISADE_WIN_TARGET_DIR (default /var/tmp/palisade-win-target) and
# PALISADE_WINEPREFIX (default /var/tmp/palisade-wine) hold the build and the Wine prefix
# outside the clone, so a later run reuses the std build and the prefix.
set -euo pipefail
cd "$(dirname "$0")/.."

started=$(date +%s)
step() { echo "== windows [$(($(date +%s) - started)) s] $*"; }

packages=(rustc-web cargo-web rust-web-src binutils-mingw-w64-x86-64 gcc-mingw-w64-x86-64-win32 wine64)
missing=()
for package in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q 'install ok installed' || missing+=("$package")
done
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "SKIP windows: the Debian packages ${missing[*]} are missing; install them as root to run the Windows checks" >&2
    exit 0
  fi
  step "apt-get install ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  timeout 600 apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null ||
    { timeout 120 apt-get update -qq && timeout 600 apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; }
fi

# Debian's compiler and cargo by path: rustup's proxies come first on PATH, and they have no
# std source for Windows. RUSTC_BOOTSTRAP lets this stable compiler take -Zbuild-std.
. .ci/rust-web.sh
rust_web_upgrade_if_old rustc-web cargo-web rust-web-src

export RUSTC=/usr/bin/rustc RUSTDOC=/usr/bin/rustdoc RUSTC_BOOTSTRAP=1
cargo=/usr/bin/cargo
export CARGO_TARGET_DIR=${PALISADE_WIN_TARGET_DIR:-/var/tmp/palisade-win-target}
crates=(-p palisade-windows -p palisade)

# Building the tests compiles every target (library, binary, tests, examples), so it checks
# the gnu target too, without a separate cargo check.
step "cargo test --no-run x86_64-pc-windows-gnu"
timeout 900 "$cargo" test --no-run --locked -Zbuild-std --target x86_64-pc-windows-gnu "${crates[@]}"
# msvc is checked only: Debian has no link.exe and no MSVC libraries to link with. The whole
# workspace is checked, tests included, because `cargo build` on Windows compiles every crate
# of it.
step "cargo check x86_64-pc-windows-msvc"
timeout 900 "$cargo" check --locked -Zbuild-std --target x86_64-pc-windows-msvc --workspace --all-targets

step "wine prefix"
export WINEPREFIX=${PALISADE_WINEPREFIX:-/var/tmp/palisade-wine} WINEDEBUG=-all
# No Mono or Gecko install prompt, and no debugger when a process crashes (the exit code tests
# end processes with crash codes).
export WINEDLLOVERRIDES="mscoree,mshtml,winedbg.exe="
unset DISPLAY
wine=/usr/lib/wine/wine64
# Stop this prefix's wineserver and its services however the script ends; they would
# otherwise hold the caller's stdout open.
trap '/usr/lib/wine/wineserver -k >/dev/null 2>&1 || true' EXIT
# A persistent wineserver, and wineboot to start the prefix's services with their output to
# /dev/null: the test processes below then find them running and do not pass them stdout.
mkdir -p "$WINEPREFIX"
# It fails when this prefix's server is already running, which serves as well.
/usr/lib/wine/wineserver -p >/dev/null 2>&1 || true
timeout 300 "$wine" wineboot --init >/dev/null 2>&1
# Rust >= 1.78 imports bcryptprimitives.dll!ProcessPrng, which Wine 8.0 lacks, so a Rust .exe
# exits with status 53 before main. A stand-in DLL forwards to RtlGenRandom.
shim="$WINEPREFIX/drive_c/windows/system32/bcryptprimitives.dll"
if [ ! -f "$shim" ]; then
  source_dir=$(mktemp -d)
  cat >"$source_dir/bcryptprimitives.c" <<'EOF'
#include <windows.h>
BOOLEAN WINAPI SystemFunction036(PVOID buffer, ULONG length); /* advapi32's RtlGenRandom */
BOOL WINAPI ProcessPrng(PBYTE buffer, SIZE_T length) {
    while (length > 0) {
        ULONG chunk = length > 0x40000000 ? 0x40000000 : (ULONG)length;
        if (!SystemFunction036(buffer, chunk)) return FALSE;
        buffer += chunk;
        length -= chunk;
    }
    return TRUE;
}
EOF
  printf 'LIBRARY bcryptprimitives.dll\nEXPORTS\nProcessPrng\n' >"$source_dir/bcryptprimitives.def"
  x86_64-w64-mingw32-gcc -O2 -shared -o "$shim" "$source_dir/bcryptprimitives.c" "$source_dir/bcryptprimitives.def" -ladvapi32
  rm -rf "$source_dir"
fi

step "cargo test x86_64-pc-windows-gnu under wine"
CARGO_TARGET_X86_64_PC_WINDOWS_GNU_RUNNER=$wine \
  timeout 900 "$cargo" test --locked -Zbuild-std --target x86_64-pc-windows-gnu "${crates[@]}"
step "done"
