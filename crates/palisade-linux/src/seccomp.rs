//! The seccomp layer: a filter installed just before `execve` that refuses the system calls
//! builds never need and kernel exploits often do.
//!
//! The filter is a deny list with a ceiling. Every system call number above the newest one
//! reviewed for this list answers ENOSYS, so a call added by a future kernel stays closed until
//! someone reviews it, and the x32 numbers (which carry bit 30) land there too. A full allow
//! list was rejected because it breaks ordinary programs in ways that are hard to diagnose (see
//! docs/security.md). The ceiling gives the one property that mattered from an allow list.
//!
//! The program is written here by hand, and seccompiler installs it. seccompiler's compiler
//! checks the architecture but not the x32 bit, and it has one action for every match. It also
//! compiles each namespace flag and socket family as a rule of its own, 139 instructions for
//! what a bit test and a few comparisons express in 12. Each instruction costs time at every
//! install, when the kernel checks the filter, converts it to eBPF and compiles it.
//!
//! The program checks the architecture, the x32 bit, the ceiling and `clone3` first. A binary
//! search follows: it allows a call without rules and rejects a call denied outright. The four
//! calls with argument rules (`ioctl`, `clone`, `unshare`, `socket`) go on to a short block
//! each.

use std::collections::BTreeMap;

use seccompiler::{sock_filter, BpfProgram};

// The blocks read the low 32 bits of an argument at the lower address of its 64-bit slot.
#[cfg(not(target_endian = "little"))]
compile_error!("the seccomp filter reads arguments as little-endian");

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
}
#[cfg(target_arch = "aarch64")]
mod arch {
    pub const AUDIT_ARCH: u32 = 0xC000_00B7;
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

/// The calls whose arguments the filter looks at, each with the block that decides it.
const ARGUMENT_RULES: &[(i64, Block)] = &[
    (libc::SYS_ioctl, Block::Ioctl),
    (libc::SYS_clone, Block::Namespaces),
    (libc::SYS_unshare, Block::Namespaces),
    (libc::SYS_socket, Block::Socket),
];

/// A block of the program that decides a call from its arguments. Each reads the low 32 bits
/// of an argument, which is all the kernel reads of these `int` and `unsigned int` arguments,
/// so bits set above them change nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Block {
    /// `ioctl`: rejects TIOCSTI and TIOCLINUX.
    Ioctl,
    /// `clone` and `unshare`: rejects any namespace flag.
    Namespaces,
    /// `socket`: allows the families of [`ALLOWED_FAMILIES`], netlink only for routing.
    Socket,
}

/// Offset of the low 32 bits of argument `index` in `struct seccomp_data`.
const fn argument_low(index: u32) -> u32 {
    SECCOMP_DATA_ARGS + 8 * index
}

/// Returns the instructions of `block`.
fn block_insns(block: Block) -> Vec<Insn> {
    match block {
        Block::Ioctl => vec![
            Insn::statement(BPF_LD_W_ABS, argument_low(1)),
            Insn::jump(BPF_JMP_JEQ_K, TIOCSTI as u32, Target::Eperm, Target::Next),
            Insn::jump(BPF_JMP_JEQ_K, TIOCLINUX as u32, Target::Eperm, Target::Allow),
        ],
        Block::Namespaces => {
            let any_namespace = NAMESPACE_FLAGS.iter().fold(0u64, |mask, flag| mask | flag);
            vec![
                Insn::statement(BPF_LD_W_ABS, argument_low(0)),
                Insn::jump(BPF_JMP_JSET_K, u32::try_from(any_namespace).expect("namespace flags fit in 32 bits"), Target::Eperm, Target::Allow),
            ]
        }
        Block::Socket => {
            let mut insns = vec![Insn::statement(BPF_LD_W_ABS, argument_low(0))];
            for &family in ALLOWED_FAMILIES.iter().filter(|&&family| family != libc::AF_NETLINK as u64) {
                insns.push(Insn::jump(BPF_JMP_JEQ_K, family as u32, Target::Allow, Target::Next));
            }
            // Netlink serves routing queries (getaddrinfo, `ip addr`) and nothing else: audit,
            // uevents and the other protocols talk to the host kernel's subsystems.
            insns.push(Insn::jump(BPF_JMP_JEQ_K, libc::AF_NETLINK as u32, Target::Next, Target::Eperm));
            insns.push(Insn::statement(BPF_LD_W_ABS, argument_low(2)));
            insns.push(Insn::jump(BPF_JMP_JEQ_K, libc::NETLINK_ROUTE as u32, Target::Allow, Target::Eperm));
            insns
        }
    }
}

// Classic BPF as seccomp reads it, from include/uapi/linux/filter.h and seccomp.h.
const BPF_LD_W_ABS: u16 = 0x20;
const BPF_JMP_JEQ_K: u16 = 0x15;
const BPF_JMP_JGT_K: u16 = 0x25;
const BPF_JMP_JSET_K: u16 = 0x45;
const BPF_RET_K: u16 = 0x06;
const SECCOMP_DATA_NR: u32 = 0;
const SECCOMP_DATA_ARCH: u32 = 4;
const SECCOMP_DATA_ARGS: u32 = 16;

fn jump(code: u16, k: u32, jt: u8, jf: u8) -> sock_filter {
    sock_filter { code, jt, jf, k }
}

fn errno(code: i32) -> u32 {
    libc::SECCOMP_RET_ERRNO | (code as u32 & libc::SECCOMP_RET_DATA)
}

/// The destination of a jump: the next instruction, a fixed return, the start of a block of
/// argument checks, or an instruction by its index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    Next,
    Allow,
    Eperm,
    Enosys,
    Block(Block),
    At(usize),
}

/// One instruction of the program, with its jumps still symbolic.
#[derive(Debug, Clone, Copy)]
struct Insn {
    code: u16,
    k: u32,
    jt: Target,
    jf: Target,
}

impl Insn {
    fn statement(code: u16, k: u32) -> Insn {
        Insn { code, k, jt: Target::Next, jf: Target::Next }
    }

    fn jump(code: u16, k: u32, jt: Target, jf: Target) -> Insn {
        Insn { code, k, jt, jf }
    }
}

/// Appends a binary search over `numbers` (sorted by number, distinct) that jumps to the target
/// given for a number in the list and allows every other.
///
/// seccompiler compares the number against each rule in turn, so an allowed call walked about
/// 60 comparisons. The kernel walks the filter once per system call number when it installs
/// it, to find the calls it can allow without running the filter (`seccomp_cache_prepare`),
/// and that walk made installing the filter cost about 0.2 ms of every run. With this search in
/// front, an allowed call takes about 7 comparisons.
fn search(numbers: &[(u32, Target)], out: &mut Vec<Insn>) {
    match numbers {
        [] => out.push(Insn::statement(BPF_RET_K, libc::SECCOMP_RET_ALLOW)),
        [.., last] if numbers.len() <= 2 => {
            for &(number, target) in numbers {
                let miss = if number == last.0 { Target::Allow } else { Target::Next };
                out.push(Insn::jump(BPF_JMP_JEQ_K, number, target, miss));
            }
        }
        _ => {
            let (low, high) = numbers.split_at(numbers.len() / 2);
            let split = out.len();
            out.push(Insn::statement(BPF_JMP_JGT_K, 0));
            search(low, out);
            let high_start = out.len();
            out[split] = Insn::jump(BPF_JMP_JGT_K, low[low.len() - 1].0, Target::At(high_start), Target::Next);
            search(high, out);
        }
    }
}

/// Turns the symbolic jumps of `insns` into the offsets classic BPF counts from the next
/// instruction. `allow`, `eperm` and `enosys` are the indices of the fixed returns, `blocks`
/// those of the blocks.
fn resolve(insns: &[Insn], allow: usize, eperm: usize, enosys: usize, blocks: &BTreeMap<Block, usize>) -> Vec<sock_filter> {
    let offset = |from: usize, target: Target| -> u8 {
        let to = match target {
            Target::Next => from + 1,
            Target::Allow => allow,
            Target::Eperm => eperm,
            Target::Enosys => enosys,
            Target::Block(block) => blocks[&block],
            Target::At(index) => index,
        };
        // Classic BPF only jumps forward, at most 255 instructions.
        u8::try_from(to - (from + 1)).expect("a jump of the filter fits in 255 instructions")
    };
    insns
        .iter()
        .enumerate()
        .map(|(index, insn)| jump(insn.code, insn.k, offset(index, insn.jt), offset(index, insn.jf)))
        .collect()
}

/// Builds the filter for `options`. Pure: the program is built before the sandbox forks, so
/// the command stage only installs it.
pub fn build(options: FilterOptions) -> BpfProgram {
    let mut denied: Vec<i64> = DENIED.iter().map(|&(number, _)| number).collect();
    if !options.allow_ptrace {
        denied.extend_from_slice(DEBUGGING);
    }
    if options.no_sockets {
        denied.push(libc::SYS_socket);
    }
    let number = |number: i64| u32::try_from(number).expect("system call numbers are positive");
    // A call denied outright is rejected by the search, even if it also has a block.
    let mut targets: BTreeMap<u32, Target> = ARGUMENT_RULES.iter().map(|&(ruled, block)| (number(ruled), Target::Block(block))).collect();
    targets.extend(denied.iter().map(|&refused| (number(refused), Target::Eperm)));

    let mut insns = vec![
        // A foreign system call ABI (i386 through int 0x80, arm32) has other numbers: kill.
        Insn::statement(BPF_LD_W_ABS, SECCOMP_DATA_ARCH),
        Insn::jump(BPF_JMP_JEQ_K, arch::AUDIT_ARCH, Target::At(3), Target::Next),
        Insn::statement(BPF_RET_K, libc::SECCOMP_RET_KILL_PROCESS),
        Insn::statement(BPF_LD_W_ABS, SECCOMP_DATA_NR),
        // x32 calls share the x86_64 architecture value and set bit 30 of the number: EPERM.
        Insn::jump(BPF_JMP_JSET_K, X32_SYSCALL_BIT, Target::Eperm, Target::Next),
        // Above the ceiling: ENOSYS.
        Insn::jump(BPF_JMP_JGT_K, LAST_REVIEWED_SYSCALL, Target::Enosys, Target::Next),
        // clone3 passes its flags in memory the filter cannot read. ENOSYS makes libc fall back
        // to clone, whose flags the filter checks. EPERM would make libc give up instead.
        Insn::jump(BPF_JMP_JEQ_K, libc::SYS_clone3 as u32, Target::Enosys, Target::Next),
    ];
    // Calls without a rule are allowed here, and denied calls are rejected.
    search(&targets.iter().map(|(&number, &target)| (number, target)).collect::<Vec<_>>(), &mut insns);
    // The blocks and returns come after the search, because classic BPF only jumps forward.
    let mut blocks = BTreeMap::new();
    for block in targets.values().filter_map(|target| match target {
        Target::Block(block) => Some(*block),
        _ => None,
    }) {
        if let std::collections::btree_map::Entry::Vacant(entry) = blocks.entry(block) {
            entry.insert(insns.len());
            insns.extend(block_insns(block));
        }
    }
    let allow = insns.len();
    insns.push(Insn::statement(BPF_RET_K, libc::SECCOMP_RET_ALLOW));
    insns.push(Insn::statement(BPF_RET_K, errno(libc::EPERM)));
    insns.push(Insn::statement(BPF_RET_K, errno(libc::ENOSYS)));
    resolve(&insns, allow, allow + 1, allow + 2, &blocks)
}

/// Installs `program` on the calling thread. `no_new_privs` must already be set.
pub fn install(program: &BpfProgram) -> Result<(), String> {
    seccompiler::apply_filter(program).map_err(|error| format!("failed to install the seccomp filter: {error}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const BPF_JMP_JA: u16 = 0x05;
    const BPF_JMP_JGE_K: u16 = 0x35;
    const BPF_ALU_AND_K: u16 = 0x54;

    /// The data the kernel gives a filter: the call's number, architecture and arguments.
    struct Call {
        nr: u32,
        arch: u32,
        args: [u64; 6],
    }

    impl Call {
        fn new(nr: u32, args: &[u64]) -> Call {
            let mut all = [0; 6];
            all[..args.len()].copy_from_slice(args);
            Call { nr, arch: arch::AUDIT_ARCH, args: all }
        }

        fn word(&self, offset: u32) -> u32 {
            match offset {
                SECCOMP_DATA_NR => self.nr,
                SECCOMP_DATA_ARCH => self.arch,
                _ => {
                    let index = ((offset - SECCOMP_DATA_ARGS) / 8) as usize;
                    let high = (offset - SECCOMP_DATA_ARGS) % 8 == 4;
                    let arg = self.args[index];
                    if high { (arg >> 32) as u32 } else { arg as u32 }
                }
            }
        }
    }

    /// Runs a classic BPF program the way seccomp does, for the instructions seccompiler and
    /// this module emit, and returns the decision and the number of instructions run. Any other
    /// instruction fails the test.
    fn run_counted(program: &[sock_filter], call: &Call) -> (u32, usize) {
        let mut accumulator = 0u32;
        let mut pc = 0usize;
        let mut count = 0;
        loop {
            let insn = &program[pc];
            pc += 1;
            count += 1;
            let take = |condition: bool| usize::from(if condition { insn.jt } else { insn.jf });
            match insn.code {
                BPF_LD_W_ABS => accumulator = call.word(insn.k),
                BPF_RET_K => return (insn.k, count),
                BPF_JMP_JA => pc += insn.k as usize,
                BPF_JMP_JEQ_K => pc += take(accumulator == insn.k),
                BPF_JMP_JGT_K => pc += take(accumulator > insn.k),
                BPF_JMP_JGE_K => pc += take(accumulator >= insn.k),
                BPF_JMP_JSET_K => pc += take(accumulator & insn.k != 0),
                BPF_ALU_AND_K => accumulator &= insn.k,
                code => panic!("instruction {code:#x} at {} is not interpreted", pc - 1),
            }
        }
    }

    fn run(program: &[sock_filter], call: &Call) -> u32 {
        run_counted(program, call).0
    }

    /// The decision the filter must reach, written from the tables rather than the program.
    fn expected(options: FilterOptions, call: &Call) -> u32 {
        let nr = i64::from(call.nr);
        let has_namespace_flag = |flags: u64| NAMESPACE_FLAGS.iter().any(|flag| flags & flag != 0);
        let refused = DENIED.iter().any(|&(number, _)| number == nr)
            || (!options.allow_ptrace && DEBUGGING.contains(&nr))
            || (nr == libc::SYS_ioctl && [TIOCSTI, TIOCLINUX].contains(&(call.args[1] & 0xffff_ffff)))
            || ((nr == libc::SYS_clone || nr == libc::SYS_unshare) && has_namespace_flag(call.args[0] & 0xffff_ffff))
            || (nr == libc::SYS_socket && {
                // Only the low 32 bits of an argument count.
                let family = call.args[0] & 0xffff_ffff;
                options.no_sockets
                    || !ALLOWED_FAMILIES.contains(&family)
                    || (family == libc::AF_NETLINK as u64 && call.args[2] & 0xffff_ffff != libc::NETLINK_ROUTE as u64)
            });
        if call.arch != arch::AUDIT_ARCH {
            libc::SECCOMP_RET_KILL_PROCESS
        } else if call.nr & X32_SYSCALL_BIT != 0 {
            errno(libc::EPERM)
        } else if call.nr > LAST_REVIEWED_SYSCALL || nr == libc::SYS_clone3 {
            errno(libc::ENOSYS)
        } else if refused {
            errno(libc::EPERM)
        } else {
            libc::SECCOMP_RET_ALLOW
        }
    }

    /// Argument lists that reach every rule: each refused value and a harmless one.
    fn argument_samples() -> Vec<Vec<u64>> {
        let mut samples = vec![vec![], vec![0, 0, 0], vec![libc::SIGCHLD as u64], vec![u64::MAX, u64::MAX, u64::MAX]];
        for request in [TIOCSTI, TIOCLINUX, TIOCSTI | 1 << 32, libc::TIOCGWINSZ] {
            samples.push(vec![0, request]);
        }
        for &flag in NAMESPACE_FLAGS {
            samples.push(vec![flag | libc::SIGCHLD as u64]);
        }
        for family in [libc::AF_UNIX, libc::AF_INET, libc::AF_INET6, libc::AF_NETLINK, libc::AF_PACKET, libc::AF_VSOCK] {
            for protocol in [0, libc::NETLINK_ROUTE, libc::NETLINK_AUDIT] {
                samples.push(vec![family as u64, libc::SOCK_STREAM as u64, protocol as u64]);
            }
        }
        samples
    }

    fn all_options() -> [FilterOptions; 4] {
        [false, true].map(|allow_ptrace| FilterOptions { allow_ptrace, no_sockets: false }).into_iter()
            .chain([false, true].map(|allow_ptrace| FilterOptions { allow_ptrace, no_sockets: true }))
            .collect::<Vec<_>>()
            .try_into()
            .expect("four option sets")
    }

    #[test]
    fn filter_decides_every_call_as_the_tables_say() {
        let samples = argument_samples();
        for options in all_options() {
            let program = build(options);
            for nr in (0..=LAST_REVIEWED_SYSCALL + 40).chain([X32_SYSCALL_BIT, X32_SYSCALL_BIT | 59, u32::MAX]) {
                for args in &samples {
                    let call = Call::new(nr, args);
                    assert_eq!(run(&program, &call), expected(options, &call), "call {nr} with {args:?} under {options:?}");
                }
            }
        }
    }

    #[test]
    fn foreign_architecture_is_killed() {
        let program = build(FilterOptions { allow_ptrace: false, no_sockets: false });
        let call = Call { nr: 1, arch: 0x4000_0003, args: [0; 6] };
        assert_eq!(run(&program, &call), libc::SECCOMP_RET_KILL_PROCESS);
    }

    #[test]
    fn allowed_call_takes_few_instructions() {
        // The number of instructions an allowed call runs: the kernel walks it for every
        // system call number when the filter is installed.
        let program = build(FilterOptions { allow_ptrace: false, no_sockets: false });
        let steps = |nr: u32| run_counted(&program, &Call::new(nr, &[])).1;
        let longest = (0..=LAST_REVIEWED_SYSCALL)
            .filter(|&nr| expected(FilterOptions { allow_ptrace: false, no_sockets: false }, &Call::new(nr, &[])) == libc::SECCOMP_RET_ALLOW)
            .filter(|&nr| ![libc::SYS_ioctl, libc::SYS_clone, libc::SYS_unshare, libc::SYS_socket].contains(&i64::from(nr)))
            .map(steps)
            .max()
            .expect("some calls are allowed");
        assert!(longest <= 16, "an allowed call runs {longest} instructions");
    }

    #[test]
    fn filter_stays_small() {
        // The kernel checks and compiles every instruction at each install, in every run. Calls
        // denied outright are decided by the search, so only the argument rules add length.
        for options in all_options() {
            let length = build(options).len();
            assert!(length <= 128, "the filter has {length} instructions under {options:?}");
        }
    }
}
