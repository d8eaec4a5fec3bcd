//! Links the `palisade` binary statically on Linux with glibc, where the toolchain has glibc's
//! static archives, and links the unwinder statically in every case.
//!
//! Why static: loading `libc.so.6` at each start costs the dynamic loader's work on every
//! `palisade run`. On a 2-CPU VM, a static build ran `palisade run -- /bin/true` 0.23 ms
//! faster than the dynamic one, in 500 interleaved rounds (docs/benchmarks.md, eighth set).
//!
//! Why by hand: rustc links glibc statically only with `-C target-feature=+crt-static`, and a
//! plain `cargo build` (no `--target`) applies that flag to the procedural macros too, which
//! cannot be built that way. So this script leaves rustc's link line as it is and changes what
//! its `-l` options find. For each library that rustc names (`-lc`, `-lm`, `-lgcc_s` and the
//! others in `LIBRARIES`), it writes a linker script `lib<name>.so` into `OUT_DIR` that points
//! to the static archive. The binary is linked with `-static-pie`, so it stays
//! position-independent and the kernel still randomizes its address. When an archive is
//! missing (Fedora's `glibc-static`, for one, is a separate package) or the linker cannot be
//! asked, the binary is linked dynamically as before, and the build prints a warning.
//! `PALISADE_DYNAMIC=1` selects the dynamic link. `PALISADE_LINKAGE`, set at compile time,
//! records which link was made and why, for the tests.
//!
//! Why the unwinder: Rust's standard library links `libgcc_s.so.1`, whose constructor reads
//! the CPU's features with `cpuid`, which traps to the hypervisor on a virtual machine. Naming
//! the static `libgcc_eh.a` puts it on the link line before `-lgcc_s`, the unwinding symbols
//! resolve from it, and `--as-needed` then drops `libgcc_s` from a dynamic binary.
//! `palisade --version` took about 0.3 ms less on a 2-CPU VM (docs/benchmarks.md). Panics
//! still unwind in test builds: `libgcc_eh.a` is a complete unwinder.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The libraries rustc's link line names for a Rust binary on glibc, each with the static
/// archive that replaces it. `gcc_s` is the shared unwinder, which `libgcc_eh.a` replaces.
const LIBRARIES: [(&str, &str); 7] = [
    ("c", "libc.a"),
    ("m", "libm.a"),
    ("dl", "libdl.a"),
    ("rt", "librt.a"),
    ("pthread", "libpthread.a"),
    ("util", "libutil.a"),
    ("gcc_s", "libgcc_eh.a"),
];

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=PALISADE_DYNAMIC");
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let env = std::env::var("CARGO_CFG_TARGET_ENV").unwrap_or_default();
    if os != "linux" || env != "gnu" {
        return;
    }
    println!("cargo:rustc-link-lib=static:-bundle=gcc_eh");
    // An escape hatch for toolchains where the static link fails in a way this script cannot
    // detect.
    if std::env::var("PALISADE_DYNAMIC").as_deref() == Ok("1") {
        println!("cargo:rustc-env=PALISADE_LINKAGE=dynamic: PALISADE_DYNAMIC=1 is set");
        return;
    }
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    match write_static_shims(&out_dir) {
        Ok(()) => {
            println!("cargo:rustc-link-arg-bins=-static-pie");
            println!("cargo:rustc-link-arg-bins=-L{}", out_dir.display());
            println!("cargo:rustc-env=PALISADE_LINKAGE=static");
        }
        Err(reason) => {
            println!("cargo:warning=palisade is linked dynamically: {reason}");
            println!("cargo:rustc-env=PALISADE_LINKAGE=dynamic: {reason}");
        }
    }
}

/// Writes a linker script `lib<name>.so` into `dir` for each of `LIBRARIES`. The search finds
/// these before the system's libraries: a `-L` given to the compiler comes before its own
/// search directories. The script for `libc` is a group with the unwinder and `libgcc.a`,
/// because `libgcc_eh.a` and `libc.a` need each other's symbols and a linker that reads
/// archives in order (GNU ld) would otherwise miss some.
fn write_static_shims(dir: &Path) -> Result<(), String> {
    let libgcc = find_archive("libgcc.a")?;
    let unwinder = find_archive("libgcc_eh.a")?;
    for (name, archive) in LIBRARIES {
        let path = find_archive(archive)?;
        let script = if name == "c" {
            format!("GROUP ( {} {} {} )\n", quote(&path), quote(&unwinder), quote(&libgcc))
        } else {
            format!("INPUT ( {} )\n", quote(&path))
        };
        let shim = dir.join(format!("lib{name}.so"));
        std::fs::write(&shim, script).map_err(|error| format!("failed to write {}: {error}", shim.display()))?;
    }
    Ok(())
}

/// Returns the path of the static archive `name` that the linker rustc runs would use, or why
/// there is none. Cargo names a configured linker in `RUSTC_LINKER`. Otherwise rustc runs `cc`.
/// `cc -print-file-name` prints the bare name when it finds no such file.
fn find_archive(name: &str) -> Result<PathBuf, String> {
    println!("cargo:rerun-if-env-changed=RUSTC_LINKER");
    let linker = std::env::var("RUSTC_LINKER").unwrap_or_else(|_| "cc".to_owned());
    let command = format!("{linker} -print-file-name={name}");
    let output = Command::new(&linker)
        .arg(format!("-print-file-name={name}"))
        .output()
        .map_err(|error| format!("failed to run `{command}`: {error}"))?;
    if !output.status.success() {
        return Err(format!("`{command}` failed with {}", output.status));
    }
    let path = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
    if !path.is_absolute() || !path.is_file() {
        return Err(format!(
            "{name} not found by `{command}`; install the C library's static archives (glibc-static on Fedora), or set PALISADE_DYNAMIC=1 to build dynamically without this warning"
        ));
    }
    Ok(path.canonicalize().unwrap_or(path))
}

/// Quotes a path for a linker script, which splits unquoted names at spaces.
fn quote(path: &Path) -> String {
    format!("\"{}\"", path.display())
}
