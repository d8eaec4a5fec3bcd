//! The seccomp layer: a filter installed just before `execve` that refuses the system calls
//! builds never need and kernel exploits often do.
//!
//! The filter is a deny list with a ceiling. Every system call number above the newest one
//! reviewed for this list answers ENOSYS, so a call added by a future kernel stays closed until
//! someone reviews it, and the x32 numbers (which carry bit 30) land there too. A full allow
//! list was rejected because it breaks ordinary programs in ways that are hard to diagnose (see
//! docs/security.md). The ceiling gives the one property that mattered from an allow list.
//!
//! seccompiler builds the per-call rules. It checks the architecture but not the x32 bit, and it
//! has one action for every match, so the few instructions in front of its program (foreign
//! architecture, ceiling, `clone3`) are written here by hand.

use std::collections::BTreeMap;

use seccompiler::{
    sock_filter, BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule,
};

/// Options that widen or narrow the filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FilterOptions {
    /// Allow `ptrace` and the calls that read or write another process's memory, for debuggers
    /// and `strace`. The PID namespace and Landlock still keep them inside the run.
    pub allow_ptrace: bool,
    /// Refuse every socket except `socketpair`: the network-off rule when no network namespace
    /// can be created, and the only guard against host UNIX sockets there.
    pub no_sockets: bool,
}

#[cfg(target_arch = "x86_64")]
mod arch {
    pub const AUDIT_ARCH: u32 = 0xC000_003E;
    pub const TARGET: seccompiler::TargetArch = seccompiler::TargetArch::x86_64;
}
#[cfg(target_arch = "aarch64")]
mod arch {
    pub const AUDIT_ARCH: u32 = 0xC000_00B7;
    pub const TARGET: seccompiler::TargetArch = seccompiler::TargetArch::aarch64;
}

/// The newest system call reviewed for this filter: `file_setattr`, Linux 6.17. Numbers from 424
/// on are the same on every architecture. Anything above returns ENOSYS.
const LAST_REVIEWED_SYSCALL: u32 = 469;
/// `open_tree_attr` (Linux 6.15), newer than the libc crate's tables.
const SYS_OPEN_TREE_ATTR: i64 = 467;
/// Bit 30 marks the x32 system call ABI on x86_64.
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

/// Terminal ioctls that push input into a terminal: TIOCSTI queues a keystroke, TIOCLINUX's
/// selection subcodes paste screen text. Only the low 32 bits are compared, which is all the
/// kernel reads, so bits set above them change nothing.
const TIOCSTI: u64 = 0x5412;
const TIOCLINUX: u64 = 0x541C;

/// Namespace flags of `clone` and `unshare`. The command has no capabilities, so only a new
/// user namespace would succeed, but each is refused by name.
const NAMESPACE_FLAGS: &[u64] = &[
    libc::CLONE_NEWNS as u64,
    libc::CLONE_NEWCGROUP as u64,
    libc::CLONE_NEWUTS as u64,
    libc::CLONE_NEWIPC as u64,
    libc::CLONE_NEWUSER as u64,
    libc::CLONE_NEWPID as u64,
    libc::CLONE_NEWNET as u64,
    0x80, // CLONE_NEWTIME, meaningful for unshare only
];

/// Socket families the command may create: local IPC, IP (confined by the network namespace)
/// and netlink, which is further limited to routing queries.
const ALLOWED_FAMILIES: &[u64] = &[libc::AF_UNIX as u64, libc::AF_INET as u64, libc::AF_INET6 as u64, libc::AF_NETLINK as u64];

/// Calls refused outright, each with the reason.
const DENIED: &[(i64, &str)] = &[
    (libc::SYS_io_uring_setup, "io_uring submits work that seccomp never sees"),
    (libc::SYS_io_uring_enter, "io_uring"),
    (libc::SYS_io_uring_register, "io_uring"),
    (libc::SYS_bpf, "eBPF programs, a frequent kernel attack surface"),
    (libc::SYS_perf_event_open, "performance counters, side channels and kernel bugs"),
    (libc::SYS_userfaultfd, "stalls kernel code paths, a common exploit primitive"),
    (libc::SYS_kexec_load, "loads a new kernel"),
    (libc::SYS_kexec_file_load, "loads a new kernel"),
    (libc::SYS_init_module, "kernel modules"),
    (libc::SYS_finit_module, "kernel modules"),
    (libc::SYS_delete_module, "kernel modules"),
    (libc::SYS_add_key, "kernel keyrings hold credentials of the user"),
    (libc::SYS_request_key, "kernel keyrings"),
    (libc::SYS_keyctl, "kernel keyrings"),
    (libc::SYS_mount, "mounts"),
    (libc::SYS_umount2, "mounts: unmounting would uncover hidden paths"),
    (libc::SYS_pivot_root, "mounts"),
    (libc::SYS_chroot, "mounts"),
    (libc::SYS_open_tree, "mounts"),
    (libc::SYS_move_mount, "mounts"),
    (libc::SYS_fsopen, "mounts"),
    (libc::SYS_fsconfig, "mounts"),
    (libc::SYS_fsmount, "mounts"),
    (libc::SYS_fspick, "mounts"),
    (libc::SYS_mount_setattr, "mounts"),
    (SYS_OPEN_TREE_ATTR, "mounts"),
    (libc::SYS_setns, "joins other namespaces"),
    (libc::SYS_open_by_handle_at, "opens files by handle, bypassing path checks"),
    (libc::SYS_swapon, "system administration"),
    (libc::SYS_swapoff, "system administration"),
    (libc::SYS_reboot, "system administration"),
    (libc::SYS_acct, "system administration"),
    (libc::SYS_quotactl, "system administration"),
    (libc::SYS_quotactl_fd, "system administration"),
    (libc::SYS_syslog, "reads the kernel log"),
    (libc::SYS_fanotify_init, "watches the whole filesystem"),
    (libc::SYS_lookup_dcookie, "kernel profiling"),
    (libc::SYS_vhangup, "terminal control of other sessions"),
    #[cfg(target_arch = "x86_64")]
    (libc::SYS_iopl, "raw hardware access"),
    #[cfg(target_arch = "x86_64")]
    (libc::SYS_ioperm, "raw hardware access"),
];

/// Calls refused unless [`FilterOptions::allow_ptrace`] is set.
const DEBUGGING: &[i64] =
    &[libc::SYS_ptrace, libc::SYS_process_vm_readv, libc::SYS_process_vm_writev, libc::SYS_pidfd_getfd];

fn condition(arg: u8, op: SeccompCmpOp, value: u64) -> SeccompCondition {
    SeccompCondition::new(arg, SeccompCmpArgLen::Dword, op, value).expect("argument index below 6")
}

fn rule(conditions: Vec<SeccompCondition>) -> SeccompRule {
    SeccompRule::new(conditions).expect("a rule has at least one condition")
}

/// Returns a rule for each namespace flag, matching when `arg` has the flag set.
fn namespace_flag_rules(arg: u8) -> Vec<SeccompRule> {
    NAMESPACE_FLAGS.iter().map(|&flag| rule(vec![condition(arg, SeccompCmpOp::MaskedEq(flag), flag)])).collect()
}

/// Returns the rules of calls refused only with some arguments.
fn argument_rules(options: FilterOptions) -> BTreeMap<i64, Vec<SeccompRule>> {
    let mut rules = BTreeMap::new();
    rules.insert(
        libc::SYS_ioctl,
        vec![
            rule(vec![condition(1, SeccompCmpOp::Eq, TIOCSTI)]),
            rule(vec![condition(1, SeccompCmpOp::Eq, TIOCLINUX)]),
        ],
    );
    rules.insert(libc::SYS_clone, namespace_flag_rules(0));
    rules.insert(libc::SYS_unshare, namespace_flag_rules(0));
    let socket_rules = if options.no_sockets {
        // An empty rule list refuses every call.
        Vec::new()
    } else {
        let mut outside_families: Vec<SeccompCondition> =
            ALLOWED_FAMILIES.iter().map(|&family| condition(0, SeccompCmpOp::Ne, family)).collect();
        // Keep the rule non-empty whatever the list holds.
        outside_families.push(condition(0, SeccompCmpOp::Ne, u64::from(u32::MAX)));
        vec![
            rule(outside_families),
            // Netlink serves routing queries (getaddrinfo, `ip addr`) and nothing else: audit,
            // uevents and the other protocols talk to the host kernel's subsystems.
            rule(vec![
                condition(0, SeccompCmpOp::Eq, libc::AF_NETLINK as u64),
                condition(2, SeccompCmpOp::Ne, libc::NETLINK_ROUTE as u64),
            ]),
        ]
    };
    rules.insert(libc::SYS_socket, socket_rules);
    rules
}

// Classic BPF as seccomp reads it, from include/uapi/linux/filter.h and seccomp.h.
const BPF_LD_W_ABS: u16 = 0x20;
const BPF_JMP_JEQ_K: u16 = 0x15;
const BPF_JMP_JGT_K: u16 = 0x25;
const BPF_JMP_JSET_K: u16 = 0x45;
const BPF_RET_K: u16 = 0x06;
const SECCOMP_DATA_NR: u32 = 0;
const SECCOMP_DATA_ARCH: u32 = 4;

fn statement(code: u16, k: u32) -> sock_filter {
    sock_filter { code, jt: 0, jf: 0, k }
}

fn jump(code: u16, k: u32, jt: u8, jf: u8) -> sock_filter {
    sock_filter { code, jt, jf, k }
}

fn errno(code: i32) -> u32 {
    libc::SECCOMP_RET_ERRNO | (code as u32 & libc::SECCOMP_RET_DATA)
}

/// Builds the filter for `options`. Pure: the program is compiled before the sandbox forks, so
/// the command stage only installs it.
pub fn build(options: FilterOptions) -> BpfProgram {
    let mut rules = argument_rules(options);
    for &(number, _) in DENIED {
        rules.insert(number, Vec::new());
    }
    if !options.allow_ptrace {
        for &number in DEBUGGING {
            rules.insert(number, Vec::new());
        }
    }
    let filter = SeccompFilter::new(rules, SeccompAction::Allow, SeccompAction::Errno(libc::EPERM as u32), arch::TARGET)
        .expect("the rule set is valid for the target architecture");
    let body: BpfProgram = filter.try_into().expect("the filter compiles");

    // Jump offsets count from the next instruction.
    let mut program = vec![
        // 0-2: a foreign system call ABI (i386 through int 0x80, arm32) has other numbers: kill.
        statement(BPF_LD_W_ABS, SECCOMP_DATA_ARCH),
        jump(BPF_JMP_JEQ_K, arch::AUDIT_ARCH, 1, 0),
        statement(BPF_RET_K, libc::SECCOMP_RET_KILL_PROCESS),
        statement(BPF_LD_W_ABS, SECCOMP_DATA_NR),
        // 4: x32 calls share the x86_64 architecture value and set bit 30 of the number: EPERM.
        jump(BPF_JMP_JSET_K, X32_SYSCALL_BIT, 2, 0),
        // 5: above the ceiling: ENOSYS.
        jump(BPF_JMP_JGT_K, LAST_REVIEWED_SYSCALL, 2, 0),
        // 6: clone3 passes its flags in memory the filter cannot read. ENOSYS makes libc fall
        // back to clone, whose flags the rules check. EPERM would make libc give up instead.
        jump(BPF_JMP_JEQ_K, libc::SYS_clone3 as u32, 1, 2),
        statement(BPF_RET_K, errno(libc::EPERM)),
        statement(BPF_RET_K, errno(libc::ENOSYS)),
        // 9 onwards: seccompiler's program, which checks the architecture again and applies the
        // rules.
    ];
    program.extend(body);
    program
}

/// Installs `program` on the calling thread. `no_new_privs` must already be set.
pub fn install(program: &BpfProgram) -> Result<(), String> {
    seccompiler::apply_filter(program).map_err(|error| format!("failed to install the seccomp filter: {error}"))
}
