//! The basics: a command runs, its exit status comes back, and the workspace is writable.

use crate::both_identities;
use crate::suite::harness::{palisade_binary, skip, Fixture};

both_identities!(exit_status_passes_through, |f: &Fixture| {
    f.sandbox_sh(&[], "exit 7").expect_code(7);
    f.sandbox_sh(&[], "true").expect_code(0);
});

both_identities!(workspace_write_reaches_host, |f: &Fixture| {
    f.sandbox_sh(&[], "echo hello > created.txt").expect_code(0);
    assert_eq!(std::fs::read_to_string(f.ws.join("created.txt")).unwrap(), "hello\n");
});

/// The program header type of the dynamic section.
const PT_DYNAMIC: u32 = 2;
/// The program header type of the dynamic loader's path, which only a dynamically linked
/// executable has.
const PT_INTERP: u32 = 3;
/// The dynamic section's tag for a shared library the executable needs.
const DT_NEEDED: u64 = 1;
/// The ELF type of a position-independent executable (and of a shared object).
const ET_DYN: u16 = 3;

/// Where the toolchain has glibc's static archives, the build links palisade as a static,
/// position-independent executable: no dynamic loader at start, and an address the kernel
/// still randomizes.
#[test]
fn binary_is_static_pie() {
    if !cfg!(target_env = "gnu") {
        skip("binary_is_static_pie", "palisade was built for a C library other than glibc, which the build script leaves to the toolchain");
        return;
    }
    let linkage = option_env!("PALISADE_LINKAGE").expect("the build script sets PALISADE_LINKAGE on Linux with glibc");
    if let Some(reason) = linkage.strip_prefix("dynamic: ") {
        skip("binary_is_static_pie", &format!("the build linked palisade dynamically: {reason}"));
        return;
    }
    let binary = palisade_binary();
    let elf = std::fs::read(binary).expect("read the palisade binary");
    assert_eq!(&elf[..4], b"\x7fELF", "{} is not an ELF file", binary.display());
    // ELF64 little-endian offsets: e_type at 16, e_phoff at 32, e_phentsize at 54, e_phnum at
    // 56. In a program header, p_type at 0, p_offset at 8, p_filesz at 32.
    let half = |at: usize| u16::from_le_bytes([elf[at], elf[at + 1]]);
    assert_eq!(half(16), ET_DYN, "palisade is not position-independent (ELF type {})", half(16));
    let word = |at: usize| u64::from_le_bytes(elf[at..at + 8].try_into().unwrap());
    let header_offset = word(32) as usize;
    let (entry_size, count) = (half(54) as usize, half(56) as usize);
    let headers: Vec<usize> = (0..count).map(|index| header_offset + index * entry_size).collect();
    let kind = |at: usize| u32::from_le_bytes(elf[at..at + 4].try_into().unwrap());
    assert!(!headers.is_empty(), "palisade has no program headers");
    assert!(headers.iter().all(|&at| kind(at) != PT_INTERP), "palisade names a dynamic loader although the build reported a static link");

    // A static-pie has a dynamic section for its own relocations, but needs no library. One
    // that names libraries but no loader crashes at start.
    for &at in headers.iter().filter(|&&at| kind(at) == PT_DYNAMIC) {
        let (offset, size) = (word(at + 8) as usize, word(at + 32) as usize);
        let mut needed = 0;
        // Each entry is a tag and a value of 8 bytes each. A zero tag ends the section.
        for entry in (offset..offset + size).step_by(16) {
            match word(entry) {
                0 => break,
                DT_NEEDED => needed += 1,
                _ => {}
            }
        }
        assert_eq!(needed, 0, "palisade needs {needed} shared libraries although the build reported a static link");
    }

    let version = std::process::Command::new(binary).arg("--version").output().expect("run palisade --version");
    assert!(version.status.success(), "palisade --version failed: {:?}", version.status);
}
