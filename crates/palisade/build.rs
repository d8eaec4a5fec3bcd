//! Links the unwinder of the GNU toolchain statically on Linux with glibc.
//!
//! Rust's standard library links `libgcc_s.so.1` for unwinding, so every start of palisade
//! loads it, and its constructor reads the CPU's features with `cpuid`, which traps to the
//! hypervisor on a virtual machine. Naming the static `libgcc_eh.a` here puts it on the link
//! line before `-lgcc_s`, the unwinding symbols resolve from it, and `--as-needed` then drops
//! `libgcc_s` from the binary. `palisade --version` took about 0.3 ms less on a 2-CPU VM
//! (docs/benchmarks.md). Panics still unwind in test builds: `libgcc_eh.a` is a complete
//! unwinder.

fn main() {
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let env = std::env::var("CARGO_CFG_TARGET_ENV").unwrap_or_default();
    if os == "linux" && env == "gnu" {
        println!("cargo:rustc-link-lib=static:-bundle=gcc_eh");
    }
}
