//! Links the `palisade` binary statically on Linux with glibc, where the toolchain has glibc's
//! static archives, and links the unwinder statically in every case.
//!
//! Why static: loading `libc.so.6` at each start costs the dynamic loader's work on every
//! `palisade run`. On a 2-CPU VM, the static build ran `palisade run -- /bin/true` 0.29 to
//! 0.45 ms faster than the dynamic one, in three runs of 400 to 500 interleaved rounds
//! (docs/benchmarks.md, eighth set).
//!
//! Why by hand: rustc links glibc statically only with `-C target-feature=+crt-static`, and a
//! plain `cargo build` (no `--target`) applies that flag to the procedural macros too, which
//! cannot be built that way. So this script leaves rustc's link line as it is and changes what
//! its `-l` options find. For each library that rustc names (`-lc`, `-lm`, `-lgcc_s` and the
//! others in `LIBRARIES`), it writes a linker script `lib<name>.so` into `OUT_DIR` that points
//! to the static archive. The binary is linked with `-static-pie`, so it stays
//! position-independent and the kernel still randomizes its address. Before it commits to
//! that, the script links and runs a small C program the same way. When an archive is missing
//! (Fedora's `glibc-static`, for one, is a separate package), that probe fails, or the build
//! is a cross build without a configured linker, the binary is linked dynamically as before,
//! and the build prints a warning.
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
    match prepare_static_link(&out_dir) {
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

/// Writes the linker scripts into `dir` and checks with a probe that the linker can make a
/// static position-independent executable from them.
fn prepare_static_link(dir: &Path) -> Result<(), String> {
    let linker = linker()?;
    check_search_paths()?;
    write_static_shims(&linker, dir)?;
    probe_static_link(&linker, dir)
}

/// Fails when a `-L` directory in the flags cargo passes to rustc contains a shared library
/// that one of this script's linker scripts replaces. The linker searches those directories
/// first, so it would link that library into an executable without a dynamic loader.
fn check_search_paths() -> Result<(), String> {
    let flags = rustc_flags();
    for (index, flag) in flags.iter().enumerate() {
        let value = match flag.as_str() {
            "-L" => flags.get(index + 1).map(String::as_str),
            _ => flag.strip_prefix("-L"),
        };
        let Some(value) = value else { continue };
        // A kind may come first: `-L native=DIR`, `-L all=DIR`.
        let dir = value.split_once('=').map_or(value, |(_, dir)| dir);
        for (name, _) in LIBRARIES {
            let library = Path::new(dir).join(format!("lib{name}.so"));
            if library.exists() {
                return Err(format!("RUSTFLAGS adds the library directory {dir}, whose {} the linker would find first", library.display()));
            }
        }
    }
    Ok(())
}

/// Returns the linker rustc runs for this target: the one `-C linker` names in the flags cargo
/// passes, the one cargo configured (`RUSTC_LINKER`), or `cc`. A cross build without either
/// is an error, because `cc` would find the host's archives.
fn linker() -> Result<String, String> {
    println!("cargo:rerun-if-env-changed=RUSTC_LINKER");
    let flags = rustc_flags();
    let mut from_flags = None;
    for (index, flag) in flags.iter().enumerate() {
        let option = match flag.as_str() {
            "-C" | "--codegen" => flags.get(index + 1).map(String::as_str),
            _ => flag.strip_prefix("-C").or_else(|| flag.strip_prefix("--codegen=")),
        };
        if let Some(linker) = option.and_then(|option| option.strip_prefix("linker=")) {
            from_flags = Some(linker.to_owned());
        }
    }
    if let Some(linker) = from_flags.or_else(|| std::env::var("RUSTC_LINKER").ok()) {
        return Ok(linker);
    }
    if std::env::var("TARGET").ok() != std::env::var("HOST").ok() {
        return Err("a cross build without a configured linker, whose archives this script cannot find".to_owned());
    }
    Ok("cc".to_owned())
}

/// Writes a linker script `lib<name>.so` into `dir` for each of `LIBRARIES`. The linker finds
/// these before the compiler's own library directories, because a `-L` given to the compiler
/// comes first. It finds them after every other `-L` option, rustc's and those of `RUSTFLAGS`
/// or of a dependency's build script, so a `libc.so` in one of those directories wins: the
/// probe cannot see that case, and the test `binary_is_static_pie` catches it. The script for
/// `libc` is a group with the unwinder and `libgcc.a`, because `libgcc_eh.a` and `libc.a` need
/// each other's symbols and a linker that reads archives in order (GNU ld) would otherwise
/// miss some.
fn write_static_shims(linker: &str, dir: &Path) -> Result<(), String> {
    let libgcc = find_archive(linker, "libgcc.a")?;
    let unwinder = find_archive(linker, "libgcc_eh.a")?;
    for (name, archive) in LIBRARIES {
        let path = find_archive(linker, archive)?;
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

/// Links a small C program with `-static-pie` against the scripts in `dir`, as rustc links
/// palisade, and runs it. A toolchain too old for `-static-pie`, or an archive that
/// does not link, fails here rather than in the link of palisade.
fn probe_static_link(linker: &str, dir: &Path) -> Result<(), String> {
    let source = dir.join("probe.c");
    let program = dir.join("probe");
    let code = "#include <stdio.h>\nint main(void) { return puts(\"static\") < 0; }\n";
    std::fs::write(&source, code).map_err(|error| format!("failed to write {}: {error}", source.display()))?;
    let linked = Command::new(linker)
        .arg("-static-pie")
        .arg(&source)
        .arg("-o")
        .arg(&program)
        .arg(format!("-L{}", dir.display()))
        // As on rustc's link line, the libraries come after `-Bdynamic`, so the linker
        // looks for `lib<name>.so` names, which are the scripts.
        .args(["-nodefaultlibs", "-Wl,-Bdynamic", "-lgcc_s", "-lc"])
        .output()
        .map_err(|error| format!("failed to run {linker} for the probe: {error}"))?;
    if !linked.status.success() {
        let stderr = String::from_utf8_lossy(&linked.stderr);
        return Err(format!("{linker} could not link a static-pie probe: {}", stderr.trim()));
    }
    let ran = Command::new(&program).output().map_err(|error| format!("failed to run the static-pie probe: {error}"))?;
    if !ran.status.success() || ran.stdout != b"static\n" {
        return Err(format!("the static-pie probe did not run: {}", ran.status));
    }
    Ok(())
}

/// Returns the path of the static archive `name` that `linker` would use, or why there is
/// none. `cc -print-file-name` prints the bare name when it finds no such file. A found
/// archive is watched, so that an upgrade that moves it (GCC's directory names its version)
/// runs this script again.
fn find_archive(linker: &str, name: &str) -> Result<PathBuf, String> {
    let command = format!("{linker} -print-file-name={name}");
    let output = Command::new(linker)
        .arg(format!("-print-file-name={name}"))
        .output()
        .map_err(|error| format!("failed to run `{command}`: {error}"))?;
    if !output.status.success() {
        return Err(format!("`{command}` failed with {}", output.status));
    }
    let path = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
    if !path.is_absolute() || !path.is_file() {
        let package = if name.starts_with("libgcc") { "GCC's static libraries" } else { "glibc's static archives (glibc-static on Fedora)" };
        return Err(format!(
            "{name} not found by `{command}`; install {package} and run `cargo clean -p palisade`, or set PALISADE_DYNAMIC=1 to build dynamically without this warning"
        ));
    }
    let path = path.canonicalize().unwrap_or(path);
    println!("cargo:rerun-if-changed={}", path.display());
    Ok(path)
}

/// Returns the flags cargo passes to rustc for this package, from `RUSTFLAGS` or the `rustflags`
/// of cargo's configuration, one per element.
fn rustc_flags() -> Vec<String> {
    let encoded = std::env::var("CARGO_ENCODED_RUSTFLAGS").unwrap_or_default();
    encoded.split('\x1f').filter(|flag| !flag.is_empty()).map(str::to_owned).collect()
}

/// Quotes a path for a linker script, which splits unquoted names at spaces.
fn quote(path: &Path) -> String {
    format!("\"{}\"", path.display())
}
