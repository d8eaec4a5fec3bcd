//! System calls that rustix does not wrap, each in one small function with its safety argument,
//! and the children that share palisade's memory. Most of this crate's `unsafe` lives here.

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

/// `clone(2)` with fork semantics (no new stack) and the given namespace flags. Returns the
/// child's PID in the parent and 0 in the child.
///
/// The caller must be single-threaded: the child continues with a copy of this thread only, and
/// any lock another thread held would stay locked forever.
pub fn clone_fork(namespace_flags: libc::c_int) -> io::Result<libc::pid_t> {
    // SAFETY: with a null stack pointer, clone behaves like fork: the child runs on a copy of
    // the caller's stack. The remaining pointer arguments are unused for these flags. The caller
    // guarantees the process is single-threaded, so the child inherits no held locks.
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone,
            (namespace_flags | libc::SIGCHLD) as libc::c_ulong,
            std::ptr::null_mut::<libc::c_void>(),
            std::ptr::null_mut::<libc::c_int>(),
            std::ptr::null_mut::<libc::c_int>(),
            0 as libc::c_ulong,
        )
    };
    if pid < 0 { Err(io::Error::last_os_error()) } else { Ok(pid as libc::pid_t) }
}

/// A stack for a child that shares this process's memory: an anonymous mapping whose pages the
/// kernel allocates only when the child touches them. An inaccessible guard page at its low
/// end makes an overflow fault there instead of writing into whatever lies below.
///
/// A zeroed heap allocation of 64 KiB cost the parent 16 page faults before the clone, about
/// 20 µs on a VM, for a child that touches one or two pages.
pub struct ChildStack {
    base: *mut libc::c_void,
    size: usize,
}

impl ChildStack {
    pub fn new(size: usize) -> io::Result<ChildStack> {
        let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK | libc::MAP_NORESERVE;
        // SAFETY: an anonymous mapping at an address the kernel picks touches no existing memory.
        let base = unsafe { libc::mmap(std::ptr::null_mut(), size, libc::PROT_READ | libc::PROT_WRITE, flags, -1, 0) };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let stack = ChildStack { base, size };
        // SAFETY: the page lies within the mapping just created, which nothing else uses.
        if unsafe { libc::mprotect(base, 4096, libc::PROT_NONE) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(stack)
    }

    /// Returns the address a child starts its stack at: the end of the mapping, which the
    /// x86_64 and aarch64 ABIs want 16-byte aligned, as the stack grows down.
    fn top(&self) -> *mut libc::c_void {
        ((self.base as usize + self.size) & !15) as *mut libc::c_void
    }
}

impl Drop for ChildStack {
    fn drop(&mut self) {
        // SAFETY: the mapping is this value's, and its owner drops it only once no child runs
        // on it (see the users of ChildStack).
        unsafe { libc::munmap(self.base, self.size) };
    }
}

/// The memory a child started by [`clone_holder`] uses: its stack and the descriptors it reads.
/// It must outlive the child, so only the code that reaped that child may free it.
pub struct HolderMemory {
    _stack: ChildStack,
    _pipe: Box<HolderPipe>,
}

/// The two ends of the pipe a holder child waits on, as numbers in its copy of the descriptor
/// table.
#[repr(C)]
struct HolderPipe {
    read: RawFd,
    write: RawFd,
}

/// Size of a holder's stack: the child runs one small function that makes two system calls.
const HOLDER_STACK_SIZE: usize = 64 * 1024;

/// The function a holder child runs. `arg` points to its [`HolderPipe`]. It closes its copy of the
/// write end, then blocks reading until the parent closes the last write end, and exits.
extern "C" fn hold_until_closed(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: the parent passes a pointer to a HolderPipe it keeps alive until this child has
    // been reaped, and never writes to it after the clone.
    let pipe = unsafe { &*(arg as *const HolderPipe) };
    // rustix makes each system call directly: unlike libc's wrappers it never writes errno,
    // which lives in memory this child shares with its parent.
    // SAFETY: `write` is open in this child's own copy of the descriptor table, and nothing
    // else in this child uses it.
    unsafe { rustix::io::close(pipe.write) };
    // SAFETY: `read` stays open in this child's table until the child exits.
    let read = unsafe { BorrowedFd::borrow_raw(pipe.read) };
    let mut byte = [0u8; 1];
    let _ = rustix::io::read(read, &mut byte);
    // Returning makes libc's clone wrapper call exit(2) for this child alone.
    0
}

/// Starts a child in the namespaces of `namespace_flags` that does nothing but wait until the
/// caller closes `write`, the write end of the pipe whose read end is `read`. Returns the
/// child's PID and the memory it runs on, which the caller drops only after reaping the child.
///
/// The child shares the caller's memory (`CLONE_VM`) instead of receiving a copy, so the clone
/// copies no page tables and the caller takes no copy-on-write faults afterwards. The child
/// touches nothing but its own stack and the pipe numbers and makes two system calls, so
/// sharing the memory is safe while the caller keeps running. It gets its own copy of the
/// descriptor table, as after a fork.
pub fn clone_holder(namespace_flags: libc::c_int, read: BorrowedFd<'_>, write: BorrowedFd<'_>) -> io::Result<(libc::pid_t, HolderMemory)> {
    let stack = ChildStack::new(HOLDER_STACK_SIZE)?;
    let pipe = Box::new(HolderPipe { read: read.as_raw_fd(), write: write.as_raw_fd() });
    // SAFETY: the stack's top lies at the end of a live mapping, and `pipe` points to a live
    // HolderPipe. Both move into the returned HolderMemory, which the caller keeps until it has
    // reaped the child; moving them moves neither the mapping nor the Box's contents. The
    // child function uses no
    // heap and no state of the parent. Without CLONE_SETTLS the child shares the parent's
    // thread-local block, which it does not touch.
    let pid = unsafe {
        libc::clone(
            hold_until_closed,
            stack.top(),
            libc::CLONE_VM | namespace_flags | libc::SIGCHLD,
            &*pipe as *const HolderPipe as *mut libc::c_void,
        )
    };
    if pid < 0 { Err(io::Error::last_os_error()) } else { Ok((pid, HolderMemory { _stack: stack, _pipe: pipe })) }
}

/// A child that creates the run's network and IPC namespaces and brings the loopback interface
/// up while init builds the root. It leaves init a socket in the network namespace and a
/// descriptor of the IPC namespace to join them by.
///
/// Creating a network namespace cost about 0.3 ms on a 2-CPU VM (`unshare -n true` against
/// `unshare true`), and the sandbox needs it before the command runs.
/// Created by the clone of init itself, it held up the supervisor. Created by this child, on
/// another CPU where there is one, it overlaps the mounts that build the root instead. The IPC
/// namespace goes with it for the same reason: with its own mqueue filesystem, it was the most
/// expensive namespace of the clone after the mount namespace (medians of 200 `unshare` calls
/// of each kind in a C program on a 2-CPU VM: 28 µs, against 6 µs for UTS).
///
/// The child is a [`HelperChild`]: it shares init's memory and descriptor table, makes its
/// system calls through rustix, which never writes errno, touches nothing of init's but its
/// result, and exits.
pub struct NetworkChild {
    helper: HelperChild<NetworkResult>,
}

/// The result slots of a [`NetworkChild`]: a socket in the new network namespace and a
/// descriptor of the new IPC namespace, as numbers in the shared descriptor table. If the child
/// failed, `socket` has a negated errno instead and `failed_step` the step. Both descriptor
/// slots stay [`NO_RESULT`] until the child has finished. Dropping it closes what was not
/// taken.
struct NetworkResult {
    socket: std::sync::atomic::AtomicI32,
    ipc: std::sync::atomic::AtomicI32,
    failed_step: std::sync::atomic::AtomicUsize,
}

/// The steps of a [`NetworkChild`], in order, so that a failure names the namespace at fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NamespaceStep {
    /// `unshare(CLONE_NEWNET)`.
    Network,
    /// The socket in the new network namespace, and its loopback interface brought up.
    Loopback,
    /// `unshare(CLONE_NEWIPC)`.
    Ipc,
    /// Opening `/proc/self/ns/ipc`, the descriptor init joins the IPC namespace by.
    OpenIpc,
}

/// [`NamespaceStep`]s by their number in [`NetworkResult::failed_step`].
const NAMESPACE_STEPS: [NamespaceStep; 4] = [NamespaceStep::Network, NamespaceStep::Loopback, NamespaceStep::Ipc, NamespaceStep::OpenIpc];

impl Drop for NetworkResult {
    fn drop(&mut self) {
        drop(take_shared_fd(&self.ipc));
        drop(take_shared_fd(&self.socket));
    }
}

/// Creates the network namespace, brings its loopback interface up and creates the IPC
/// namespace: the work of a [`NetworkChild`]. Descriptors are kept as numbers and closed
/// through rustix on failure, so no `OwnedFd` drop calls libc's `close`, which may write errno.
fn create_network_namespace(result: &NetworkResult) {
    use std::os::fd::IntoRawFd;
    use std::sync::atomic::Ordering;
    use rustix::thread::UnshareFlags;
    let fail = |step: NamespaceStep, errno: rustix::io::Errno, opened: Option<RawFd>| {
        if let Some(fd) = opened {
            // SAFETY: this child opened the number, and no value owns it.
            unsafe { rustix::io::close(fd) };
        }
        result.failed_step.store(step as usize, Ordering::Relaxed);
        result.socket.store(-errno.raw_os_error(), Ordering::Release);
    };
    // SAFETY: the flag only moves this child into a new network namespace. The descriptor
    // table stays shared, so the descriptors opened next are in init's table too.
    if let Err(errno) = unsafe { rustix::thread::unshare_unsafe(UnshareFlags::NEWNET) } {
        return fail(NamespaceStep::Network, errno, None);
    }
    let socket = match rustix::net::socket_with(rustix::net::AddressFamily::INET, rustix::net::SocketType::DGRAM, rustix::net::SocketFlags::CLOEXEC, None) {
        Ok(socket) => socket.into_raw_fd(),
        Err(errno) => return fail(NamespaceStep::Loopback, errno, None),
    };
    // SAFETY: `socket` was just opened, and is closed only below or by init.
    if let Err(errno) = set_loopback_up(unsafe { BorrowedFd::borrow_raw(socket) }) {
        return fail(NamespaceStep::Loopback, errno, Some(socket));
    }
    // SAFETY: the flag only moves this child into a new IPC namespace.
    if let Err(errno) = unsafe { rustix::thread::unshare_unsafe(UnshareFlags::NEWIPC) } {
        return fail(NamespaceStep::Ipc, errno, Some(socket));
    }
    // Before init's pivot this is the host's /proc, after it the sandbox's. In both, "self" is
    // this child.
    let flags = rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CLOEXEC;
    let ipc = match rustix::fs::open(c"/proc/self/ns/ipc", flags, rustix::fs::Mode::empty()) {
        Ok(ipc) => ipc.into_raw_fd(),
        Err(errno) => return fail(NamespaceStep::OpenIpc, errno, Some(socket)),
    };
    result.ipc.store(ipc, Ordering::Release);
    result.socket.store(socket, Ordering::Release);
}

/// Sets the flags `IFF_UP` and `IFF_RUNNING` on the loopback interface of the network namespace
/// that `socket` belongs to. It makes its two system calls through rustix, so a
/// [`NetworkChild`] may call it.
fn set_loopback_up(socket: BorrowedFd<'_>) -> rustix::io::Result<()> {
    // SAFETY: ifreq is plain data; all-zero is a valid value.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    for (slot, byte) in request.ifr_name.iter_mut().zip(b"lo\0") {
        *slot = *byte as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS reads the interface name from an ifreq and writes its flags back.
    // SIOCSIFFLAGS reads an ifreq. `request` is one, and it outlives both calls.
    unsafe {
        rustix::ioctl::ioctl(socket, rustix::ioctl::Updater::<{ libc::SIOCGIFFLAGS as rustix::ioctl::Opcode }, libc::ifreq>::new(&mut request))?;
        request.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
        rustix::ioctl::ioctl(socket, rustix::ioctl::Setter::<{ libc::SIOCSIFFLAGS as rustix::ioctl::Opcode }, libc::ifreq>::new(request))
    }
}

/// Keeps child `pid` off the CPU this process runs on, where the scheduler may queue a new
/// process behind its parent although another CPU is idle. A child that works while its parent
/// does (the network namespace is created while init builds the root) then starts at once.
/// On a 2-CPU VM the child otherwise started 0.44 to 0.58 ms after its fork (medians of 300
/// runs of a build with time stamps), and init waited for it. With one allowed CPU, or when the
/// affinity cannot be read or set, nothing changes.
fn run_on_another_cpu(pid: libc::pid_t) {
    let Ok(mut others) = rustix::thread::sched_getaffinity(None) else { return };
    others.unset(rustix::thread::sched_getcpu());
    if others.count() == 0 {
        return;
    }
    if let Some(pid) = rustix::process::Pid::from_raw(pid) {
        let _ = rustix::thread::sched_setaffinity(Some(pid), &others);
    }
}

/// The value of a result slot shared with a child until the child stores one.
pub const NO_RESULT: i32 = i32::MIN;

/// Takes the descriptor a child stored in `slot`: a number of the descriptor table it shared
/// with this process. Returns `Err` with the slot's other value ([`NO_RESULT`], or a negated
/// errno) and leaves `NO_RESULT` behind, so a number is owned only once.
pub fn take_shared_fd(slot: &std::sync::atomic::AtomicI32) -> Result<OwnedFd, i32> {
    let value = slot.swap(NO_RESULT, std::sync::atomic::Ordering::Acquire);
    if value < 0 {
        return Err(value);
    }
    // SAFETY: a child that shared this process's descriptor table opened the number and stored
    // it once; the swap above made this call its only owner.
    Ok(unsafe { OwnedFd::from_raw_fd(value) })
}

/// A child that shares this process's memory and descriptor table and runs `work(&data)` while
/// this process goes on with its own work. The child is kept off this process's CPU where
/// another is allowed (see [`run_on_another_cpu`]). Descriptors it opens appear in this
/// process's table. Results go into atomics inside `data`, which this process reads after
/// [`HelperChild::finish`].
pub struct HelperChild<T: Sync> {
    pid: libc::pid_t,
    reaped: bool,
    /// Boxed, so its address stays the one the child got while this value moves. Freed only
    /// after the child is reaped (see `Drop`).
    task: Option<Box<HelperTask<T>>>,
    _stack: ChildStack,
}

struct HelperTask<T> {
    data: T,
    work: fn(&T),
}

/// Size of a helper's stack: enough for a few small frames of system call wrappers.
const HELPER_STACK_SIZE: usize = 64 * 1024;

extern "C" fn run_helper_task<T: Sync>(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `HelperChild::start` passes its boxed task, which stays allocated and unchanged
    // until this child has been reaped.
    let task = unsafe { &*(arg as *const HelperTask<T>) };
    (task.work)(&task.data);
    0
}

impl<T: Sync> HelperChild<T> {
    /// Starts the child running `work(&data)`.
    ///
    /// # Safety
    ///
    /// `work` runs in memory shared with this process, without a thread of its own. So it may
    /// use no heap and no thread-local state (errno included: its system calls go through
    /// rustix's raw backend), must not panic, and must return. It may write only to atomics in
    /// `data`. The helper must be finished or dropped, not leaked, because the child runs on
    /// its stack.
    pub unsafe fn start(data: T, work: fn(&T)) -> io::Result<HelperChild<T>> {
        let stack = ChildStack::new(HELPER_STACK_SIZE)?;
        let task = Box::new(HelperTask { data, work });
        let arg = &*task as *const HelperTask<T> as *mut libc::c_void;
        // SAFETY: the stack's top lies at the end of a live mapping, and `arg` points to the
        // boxed task. Both move into the returned value, which frees them only after the child
        // is reaped. The caller vouches for `work`. Without CLONE_SETTLS the child shares the
        // caller's thread-local block, which such a function does not touch.
        let pid = unsafe { libc::clone(run_helper_task::<T>, stack.top(), libc::CLONE_VM | libc::CLONE_FILES | libc::SIGCHLD, arg) };
        if pid < 0 {
            return Err(io::Error::last_os_error());
        }
        run_on_another_cpu(pid);
        Ok(HelperChild { pid, reaped: false, task: Some(task), _stack: stack })
    }

    /// Waits until the child has exited and returns the data, with what the child stored in it.
    pub fn finish(mut self) -> T {
        self.wait();
        let task = self.task.take().expect("a helper's task stays until it is finished");
        task.data
    }

    fn wait(&mut self) {
        if !self.reaped {
            crate::userns::reap_child(self.pid);
            self.reaped = true;
        }
    }
}

impl<T: Sync> Drop for HelperChild<T> {
    fn drop(&mut self) {
        // The child runs on this value's stack and reads its task: it must be gone before
        // either is freed.
        self.wait();
    }
}

impl NetworkChild {
    /// Starts the child. Finishing or dropping the result waits for the child.
    pub fn start() -> io::Result<NetworkChild> {
        let result = NetworkResult {
            socket: std::sync::atomic::AtomicI32::new(NO_RESULT),
            ipc: std::sync::atomic::AtomicI32::new(NO_RESULT),
            failed_step: std::sync::atomic::AtomicUsize::new(0),
        };
        // SAFETY: `create_network_namespace` uses no heap and no thread-local state, makes its
        // system calls through rustix and contains nothing that panics. It writes only the
        // result's atomics.
        let helper = unsafe { HelperChild::start(result, create_network_namespace) }?;
        Ok(NetworkChild { helper })
    }

    /// Waits for the child and returns descriptors of the network and IPC namespaces it
    /// created, or the step that failed and its error.
    pub fn finish(self) -> Result<(OwnedFd, OwnedFd), (NamespaceStep, io::Error)> {
        let result = self.helper.finish();
        let socket = match take_shared_fd(&result.socket) {
            Ok(socket) => socket,
            Err(NO_RESULT) => return Err((NamespaceStep::Network, io::Error::other("the child creating the namespaces ended without a result"))),
            Err(negated) => {
                let step = NAMESPACE_STEPS.get(result.failed_step.load(std::sync::atomic::Ordering::Relaxed)).copied().unwrap_or(NamespaceStep::Network);
                return Err((step, io::Error::from_raw_os_error(-negated)));
            }
        };
        let ipc = take_shared_fd(&result.ipc).map_err(|_| (NamespaceStep::OpenIpc, io::Error::other("the child creating the namespaces left no IPC namespace")))?;
        let network = network_namespace_of(socket.as_fd()).map_err(|error| (NamespaceStep::Loopback, error))?;
        Ok((network, ipc))
    }
}

/// Starts a child that shares this process's memory and lives until this process exits. The
/// kernel then frees the memory when the child exits, not within the exit that the caller of
/// palisade waits for.
///
/// Freeing the address space unmaps every page palisade touched, most of them pages of its own
/// binary and of libc (about 4 MiB resident). In `perf record` over 300 runs on a 2-CPU VM
/// that took 0.19 ms of each exit of palisade, more than the rest of its exit together.
/// While another process still uses the memory, an exit only drops its reference, and the
/// memory goes with the child's exit.
///
/// The child runs on a small stack of its own, which stays mapped until this process exits. It
/// closes its copy of the descriptor table first, so it keeps no pipe of the caller's open, and
/// sets SIGKILL as its parent-death signal, so it dies when the thread that started it exits.
/// It then waits for that signal. It makes its system calls through rustix, which never writes
/// errno, except `close_range`, whose arguments leave the kernel no error to return (see the
/// call).
pub fn defer_memory_teardown() -> io::Result<()> {
    let stack = ChildStack::new(KEEPER_STACK_SIZE)?;
    let parent = rustix::process::getpid().as_raw_nonzero().get();
    // SAFETY: the stack's top lies at the end of a live mapping, which is never unmapped (see
    // below). The child function uses no heap, touches nothing of this process's memory, and
    // makes its system calls without errno (see the function). Without CLONE_SETTLS it shares
    // the caller's thread-local block, which it does not touch.
    let pid = unsafe { libc::clone(keep_memory, stack.top(), libc::CLONE_VM | libc::SIGCHLD, parent as usize as *mut libc::c_void) };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    // The child runs on the stack until this process exits.
    std::mem::forget(stack);
    // The teardown runs at the lowest priority there is, so it waits while the caller of
    // palisade, just woken by palisade's exit, or any other program, needs the CPU.
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: sched_setscheduler reads a valid sched_param. Failing leaves the child at normal
    // priority, which only makes the teardown compete for the CPU.
    unsafe { libc::sched_setscheduler(pid, libc::SCHED_IDLE, &param) };
    Ok(())
}

/// The stack size of the child [`defer_memory_teardown`] starts, which makes four system calls
/// and then waits.
const KEEPER_STACK_SIZE: usize = 16 * 1024;

/// The function the child of [`defer_memory_teardown`] runs. `arg` is the pid of the process
/// that started it.
extern "C" fn keep_memory(arg: *mut libc::c_void) -> libc::c_int {
    let parent = arg as usize as libc::pid_t;
    // SAFETY: close_range only closes descriptors of this child's own table, a copy of the
    // parent's. The kernel returns an error only for unknown flags or a first descriptor above
    // the last, neither of which these arguments have, so the libc wrapper never writes errno,
    // which the child shares with the thread that started it.
    unsafe { libc::syscall(libc::SYS_close_range, 0 as libc::c_uint, libc::c_uint::MAX, 0 as libc::c_uint) };
    if rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL)).is_err() {
        return 0;
    }
    // The parent may have exited before the signal was set.
    if rustix::process::getppid().map(|pid| pid.as_raw_nonzero().get()) != Some(parent) {
        return 0;
    }
    loop {
        rustix::event::pause();
    }
}

/// A child that detaches the host's root, stacked on the new root by `pivot_root(".", ".")`,
/// while the command stage confines itself, and that the stage waits for before `execve`.
///
/// A detach ends by waiting for an RCU grace period, which the kernel expedites with an
/// interrupt to every CPU. On a 2-CPU VM that took 0.06 ms in the median run and more than
/// 0.7 ms in one run of ten (`perf trace -e umount2`), on the critical path of every command.
/// Done here, it overlaps the stage's work (Landlock, seccomp), which takes longer.
///
/// The child shares init's memory, so the stage, which shares it too, reads its result. It is
/// cloned with `CLONE_CHILD_CLEARTID`: the kernel clears the child's thread id word and wakes
/// its waiters once the child has exited, however it ended, so a wait cannot hang on a child
/// that died before storing its result. The child's working directory is a copy of init's,
/// the new root with the host's root stacked on it, so `umount2(".")` finds the host's root.
/// It makes that one system call through rustix, which never writes errno.
pub struct DetachChild {
    pid: libc::pid_t,
    state: Box<DetachState>,
    _stack: ChildStack,
}

/// The state a [`DetachChild`] shares with the processes that wait for it.
struct DetachState {
    /// The child's thread id until it has exited, then 0 (`CLONE_CHILD_CLEARTID`).
    tid: std::sync::atomic::AtomicU32,
    /// 0 once the host's root is detached, a negated errno if that failed, or [`NO_RESULT`].
    result: std::sync::atomic::AtomicI32,
}

/// The function a [`DetachChild`] runs. `arg` points to its [`DetachState`].
extern "C" fn detach_old_root(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: init passes a pointer to the DetachState of a DetachChild, which it keeps alive
    // until the kernel has cleared `tid`, after this function.
    let state = unsafe { &*(arg as *const DetachState) };
    let value = match rustix::mount::unmount(".", rustix::mount::UnmountFlags::DETACH) {
        Ok(()) => 0,
        Err(errno) => -errno.raw_os_error(),
    };
    state.result.store(value, std::sync::atomic::Ordering::Release);
    0
}

impl DetachChild {
    /// Starts the child. Call right after `pivot_root(".", ".")`, with the new root as the
    /// working directory.
    pub fn start() -> io::Result<DetachChild> {
        let stack = ChildStack::new(HOLDER_STACK_SIZE)?;
        let state = Box::new(DetachState { tid: std::sync::atomic::AtomicU32::new(0), result: std::sync::atomic::AtomicI32::new(NO_RESULT) });
        let state_pointer = &*state as *const DetachState as *mut libc::c_void;
        let tid_pointer = state.tid.as_ptr();
        // SAFETY: the stack's top lies at the end of a live mapping, and `state` is a live
        // DetachState. Both move into the returned DetachChild, which waits for the kernel to
        // clear `tid` before it frees them. Moving them moves neither the mapping nor the Box's
        // contents. The kernel stores the child's id in `tid` before the child runs
        // (CLONE_PARENT_SETTID) and clears it when the child exits. The child function uses no
        // heap, makes its system call without errno, and writes only `result`. Without
        // CLONE_SETTLS it shares the caller's thread-local block, which it does not touch.
        let pid = unsafe {
            libc::clone(
                detach_old_root,
                stack.top(),
                libc::CLONE_VM | libc::CLONE_PARENT_SETTID | libc::CLONE_CHILD_CLEARTID | libc::SIGCHLD,
                state_pointer,
                tid_pointer,
                std::ptr::null_mut::<libc::c_void>(),
                tid_pointer,
            )
        };
        if pid < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(DetachChild { pid, state, _stack: stack })
    }

    /// Waits until the child has exited and returns whether it detached the host's root. Any
    /// process that shares the memory of the one that started the child may call this: it
    /// makes only futex calls, and allocates nothing.
    pub fn wait(&self) -> rustix::io::Result<()> {
        use std::sync::atomic::Ordering;
        loop {
            let tid = self.state.tid.load(Ordering::Acquire);
            if tid == 0 {
                break;
            }
            // The kernel's wake at the child's exit is a shared futex wake, so the wait is not
            // marked private. EAGAIN means the word changed already; EINTR, a signal.
            match rustix::thread::futex::wait(&self.state.tid, rustix::thread::futex::Flags::empty(), tid, None) {
                Ok(()) | Err(rustix::io::Errno::AGAIN) | Err(rustix::io::Errno::INTR) => {}
                Err(error) => return Err(error),
            }
        }
        match self.state.result.load(Ordering::Acquire) {
            0 => Ok(()),
            NO_RESULT => Err(rustix::io::Errno::CHILD),
            negated => Err(rustix::io::Errno::from_raw_os_error(-negated)),
        }
    }
}

impl Drop for DetachChild {
    fn drop(&mut self) {
        // The child's stack must stay mapped until the child is gone, and reaping waits for it.
        crate::userns::reap_child(self.pid);
    }
}

/// Returns a descriptor of the network namespace that `socket` belongs to (`SIOCGSKNS`).
pub fn network_namespace_of(socket: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    // SAFETY: SIOCGSKNS takes no argument and returns a new descriptor, checked below.
    let fd = unsafe { libc::ioctl(socket.as_raw_fd(), libc::SIOCGSKNS) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just created this descriptor for this process.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Size of the stack a process started by [`spawn_sharing_memory`] runs on. The pages are
/// reserved lazily, so only what the command stage touches is allocated.
const SHARED_STAGE_STACK: usize = 8 << 20;

/// Starts a process that shares the caller's memory and runs `entry(arg)` on a stack of its
/// own, like `posix_spawn` does, and suspends the caller until that process has executed a
/// program or exited (`CLONE_VM | CLONE_VFORK`). Returns the new process's PID.
///
/// Unlike a fork, this copies no page tables, and neither process takes copy-on-write faults
/// afterwards. The child gets its own copies of the descriptor table, credentials, signal
/// handlers and working directory, as after a fork. It shares the memory, thread-local storage
/// and alternate signal stack. Process-wide flags of the memory, such as dumpability, are
/// shared too: the caller sets them again afterwards if the child may change them.
///
/// # Safety
///
/// `entry` must never return and must end in `execve` or `_exit`. It must not write to or free
/// anything the caller owns, apart from what sharing the memory implies: errno, the allocator's
/// state and the thread's cache, which are consistent again when the child ends, because the
/// caller is suspended meanwhile. It must keep every signal blocked while it allocates, so that
/// a signal cannot end it in the middle of an allocation. `arg` must stay valid until this
/// function returns. The caller must be single-threaded.
pub unsafe fn spawn_sharing_memory(entry: extern "C" fn(*mut libc::c_void) -> libc::c_int, arg: *mut libc::c_void) -> io::Result<libc::pid_t> {
    let stack = ChildStack::new(SHARED_STAGE_STACK)?;
    // SAFETY: the stack's top lies at the end of a live mapping. CLONE_VFORK returns only once
    // the child has executed a program (and left this memory) or exited, and `stack` drops
    // after that. The caller guarantees `entry` and `arg` meet the conditions above.
    let pid = unsafe { libc::clone(entry, stack.top(), libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD, arg) };
    if pid < 0 { Err(io::Error::last_os_error()) } else { Ok(pid) }
}

/// Closes the descriptor numbered `fd` in the calling process's descriptor table, leaving any
/// value that owns it alone. Errors are ignored: the number may already be closed.
///
/// # Safety
///
/// Nothing in this process may use `fd` afterwards: its owner must live in another process's
/// copy of the descriptor table, or be about to be forgotten.
pub unsafe fn close_raw(fd: RawFd) {
    // SAFETY: close takes a number and reads no memory of the caller (it may set errno); the
    // caller guarantees nothing here uses the number again.
    unsafe { libc::close(fd) };
}

/// Sets the filesystem uid and gid of the calling thread, which decide the owner of files it
/// creates and the checks on idmapped mounts. Returns the previous pair.
pub fn set_fs_ids(uid: u32, gid: u32) -> (u32, u32) {
    // SAFETY: setfsuid and setfsgid take plain integers, touch no memory of the caller, and
    // return the previous value.
    unsafe { (libc::setfsuid(uid) as u32, libc::setfsgid(gid) as u32) }
}

/// Mount attribute bits for [`mount_setattr`].
pub const MOUNT_ATTR_RDONLY: u64 = 0x1;
pub const MOUNT_ATTR_NOSUID: u64 = 0x2;
pub const MOUNT_ATTR_NODEV: u64 = 0x4;
pub const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;

#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// `mount_setattr(2)`: sets `attr_set` on the mount at `fd` (an `open_tree` result or an
/// `O_PATH` descriptor), on every mount below it too when `recursive`. With
/// [`MOUNT_ATTR_IDMAP`], `userns` names the user namespace whose mapping the mount takes.
pub fn mount_setattr(fd: BorrowedFd<'_>, recursive: bool, attr_set: u64, userns: Option<BorrowedFd<'_>>) -> io::Result<()> {
    let attr = MountAttr {
        attr_set,
        attr_clr: 0,
        propagation: 0,
        userns_fd: userns.map_or(0, |fd| fd.as_raw_fd() as u64),
    };
    let flags = libc::AT_EMPTY_PATH | if recursive { libc::AT_RECURSIVE } else { 0 };
    // SAFETY: the path is an empty C string, `attr` is a properly laid-out `struct mount_attr`
    // that outlives the call, and its size is passed alongside.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            fd.as_raw_fd(),
            c"".as_ptr(),
            flags as libc::c_uint,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if rc < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

/// Marks every descriptor from `first` upwards close-on-exec, so nothing the caller inherited
/// leaks into the command while the descriptors the setup still needs stay usable until
/// `execve`.
pub fn cloexec_from(first: RawFd) -> io::Result<()> {
    // SAFETY: close_range with CLOSE_RANGE_CLOEXEC only changes descriptor flags; it frees no
    // memory that Rust code might still reference.
    let rc = unsafe { libc::syscall(libc::SYS_close_range, first as libc::c_uint, libc::c_uint::MAX, libc::CLOSE_RANGE_CLOEXEC) };
    if rc < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

/// Empties the bounding set, so no later `execve` can grant a capability (file capabilities,
/// a setuid-root program). The permitted and effective sets stay as they are. Stops at the
/// first capability number the kernel does not know (EINVAL), which spares reading
/// `/proc/sys/kernel/cap_last_cap`.
pub fn drop_bounding_set() -> io::Result<()> {
    for cap in 0..64 {
        match prctl(libc::PR_CAPBSET_DROP, cap, 0) {
            Err(error) if error.raw_os_error() == Some(libc::EINVAL) => break,
            other => other?,
        }
    }
    Ok(())
}

/// Locks the securebits that would let a uid-0 process regain capabilities through `execve`
/// or a uid change, and empties the ambient set. The permitted and effective sets stay until
/// [`clear_capabilities`], so the caller can still change its uid in between. The bounding set
/// is [`drop_bounding_set`]'s.
pub fn lock_capabilities() -> io::Result<()> {
    // Securebits need CAP_SETPCAP, so they come before the capabilities are cleared.
    let secure = libc::SECBIT_NOROOT
        | libc::SECBIT_NOROOT_LOCKED
        | libc::SECBIT_NO_SETUID_FIXUP
        | libc::SECBIT_NO_SETUID_FIXUP_LOCKED
        | libc::SECBIT_KEEP_CAPS_LOCKED
        | libc::SECBIT_NO_CAP_AMBIENT_RAISE
        | libc::SECBIT_NO_CAP_AMBIENT_RAISE_LOCKED;
    prctl(libc::PR_SET_SECUREBITS, secure as libc::c_ulong, 0)?;
    prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong, 0)
}

/// Empties the permitted, effective and inheritable capability sets of the calling thread.
pub fn clear_capabilities() -> io::Result<()> {
    #[repr(C)]
    struct CapHeader {
        version: u32,
        pid: libc::c_int,
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct CapData {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;
    let mut header = CapHeader { version: LINUX_CAPABILITY_VERSION_3, pid: 0 };
    let data = [CapData { effective: 0, permitted: 0, inheritable: 0 }; 2];
    // SAFETY: version 3 capability data is an array of two structs, which `data` provides;
    // both pointers are valid for the duration of the call.
    let rc = unsafe { libc::syscall(libc::SYS_capset, &mut header as *mut _, data.as_ptr()) };
    if rc < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

fn prctl(option: libc::c_int, arg2: libc::c_ulong, arg3: libc::c_ulong) -> io::Result<()> {
    // SAFETY: the options used here take integer arguments only; no pointers are passed.
    let rc = unsafe { libc::prctl(option, arg2, arg3, 0 as libc::c_ulong, 0 as libc::c_ulong) };
    if rc < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

/// Blocks `signals` for the calling thread and returns a signalfd that reads them.
pub fn block_into_signalfd(signals: &[libc::c_int]) -> io::Result<OwnedFd> {
    let set = signal_set(signals);
    // SAFETY: `set` is an initialised sigset_t; a null old-set pointer is allowed.
    let rc = unsafe { libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: -1 requests a new descriptor, and `set` is initialised.
    let fd = unsafe { libc::signalfd(-1, &set, libc::SFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: signalfd returned a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Unblocks every signal and restores default dispositions, undoing what the supervisor and
/// init set up, so the command starts with the signal state a shell would give it.
pub fn reset_signals() -> io::Result<()> {
    reset_signal_dispositions();
    unblock_all_signals()
}

/// Sets every signal's disposition to its default, the real-time ones included, leaving the
/// signal mask as it is. An ignored disposition survives `execve`, so a signal the caller of
/// palisade ignored would otherwise stay ignored in the command.
pub fn reset_signal_dispositions() {
    // The kernel's own `struct sigaction` with every field zero: handler SIG_DFL, no flags, no
    // mask. libc's `signal` refuses the two real-time signals glibc keeps for itself, so the
    // system call is made directly. 32 bytes cover the structure on every architecture.
    let default = [0u64; 4];
    for signal in 1..=64 {
        if signal == libc::SIGKILL || signal == libc::SIGSTOP {
            continue;
        }
        // SAFETY: rt_sigaction reads a zeroed kernel sigaction from a live local buffer large
        // enough for it, writes nothing (the old action pointer is null), and takes the size
        // of the kernel's signal set (8 bytes). Failures are harmless and ignored.
        unsafe {
            libc::syscall(libc::SYS_rt_sigaction, signal, default.as_ptr(), std::ptr::null_mut::<libc::c_void>(), 8usize);
        }
    }
}

/// Blocks every signal that can be blocked (SIGKILL and SIGSTOP cannot).
pub fn block_all_signals() -> io::Result<()> {
    let mut set = std::mem::MaybeUninit::<libc::sigset_t>::uninit();
    // SAFETY: sigfillset initialises the set before sigprocmask reads it.
    let rc = unsafe {
        libc::sigfillset(set.as_mut_ptr());
        libc::sigprocmask(libc::SIG_SETMASK, set.as_ptr(), std::ptr::null_mut())
    };
    if rc < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

/// Unblocks every signal.
pub fn unblock_all_signals() -> io::Result<()> {
    let set = signal_set(&[]);
    // SAFETY: `set` is an initialised, empty sigset_t.
    let rc = unsafe { libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut()) };
    if rc < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

fn signal_set(signals: &[libc::c_int]) -> libc::sigset_t {
    let mut set = std::mem::MaybeUninit::<libc::sigset_t>::uninit();
    // SAFETY: sigemptyset initialises the set before sigaddset reads it.
    unsafe {
        libc::sigemptyset(set.as_mut_ptr());
        for &signal in signals {
            libc::sigaddset(set.as_mut_ptr(), signal);
        }
        set.assume_init()
    }
}

/// Reads one `signalfd_siginfo` record: the signal number, whether the kernel raised it (for
/// example a terminal's Ctrl-C) rather than a process calling `kill`, and the sender's PID.
pub fn read_signal(fd: BorrowedFd<'_>) -> io::Result<(libc::c_int, bool)> {
    let mut info = std::mem::MaybeUninit::<libc::signalfd_siginfo>::zeroed();
    let size = std::mem::size_of::<libc::signalfd_siginfo>();
    // SAFETY: the buffer is exactly one signalfd_siginfo, as signalfd requires.
    let n = unsafe { libc::read(fd.as_raw_fd(), info.as_mut_ptr().cast(), size) };
    if n != size as isize {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel filled the whole record.
    let info = unsafe { info.assume_init() };
    Ok((info.ssi_signo as libc::c_int, info.ssi_code == libc::SI_KERNEL))
}

/// Sends `signal` to `pid`. Errors are returned, not logged.
pub fn kill(pid: libc::pid_t, signal: libc::c_int) -> io::Result<()> {
    // SAFETY: kill takes plain integers.
    let rc = unsafe { libc::kill(pid, signal) };
    if rc < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

/// `execve(2)` with its null-terminated argument and environment arrays built once, so that
/// each attempt makes the system call without allocating.
pub struct PreparedExec<'a> {
    argv: Vec<*const libc::c_char>,
    envp: Vec<*const libc::c_char>,
    _strings: std::marker::PhantomData<&'a CString>,
}

impl<'a> PreparedExec<'a> {
    pub fn new(argv: &'a [CString], envp: &'a [CString]) -> PreparedExec<'a> {
        let pointers = |strings: &'a [CString]| strings.iter().map(|value| value.as_ptr()).chain([std::ptr::null()]).collect();
        PreparedExec { argv: pointers(argv), envp: pointers(envp), _strings: std::marker::PhantomData }
    }

    /// Executes `path`; returns only on failure, with the reason. Allocates nothing.
    pub fn execve(&self, path: &CStr) -> io::Error {
        // SAFETY: both arrays are null-terminated and point into CStrings that the lifetime
        // 'a keeps alive for the call.
        unsafe { libc::execve(path.as_ptr(), self.argv.as_ptr(), self.envp.as_ptr()) };
        io::Error::last_os_error()
    }
}

/// Terminates the calling process immediately, without running destructors or flushing
/// buffers shared with the parent's copy of this address space.
pub fn exit_now(code: i32) -> ! {
    // SAFETY: _exit never returns and touches no Rust-managed state.
    unsafe { libc::_exit(code) }
}

/// CPU time and largest resident set from a `struct rusage`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ResourceUsage {
    pub user_us: u64,
    pub system_us: u64,
    pub max_rss_kib: u64,
}

impl ResourceUsage {
    fn from_raw(usage: &libc::rusage) -> ResourceUsage {
        let micros = |time: libc::timeval| time.tv_sec.max(0) as u64 * 1_000_000 + time.tv_usec.max(0) as u64;
        ResourceUsage { user_us: micros(usage.ru_utime), system_us: micros(usage.ru_stime), max_rss_kib: usage.ru_maxrss.max(0) as u64 }
    }
}

/// Returns the usage of every child the calling process has reaped, and of their reaped
/// descendants. rustix has no getrusage.
pub fn children_usage() -> ResourceUsage {
    // SAFETY: an all-zero rusage is a valid value, and getrusage writes into it.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `usage` is a valid, writable rusage.
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut usage) };
    ResourceUsage::from_raw(&usage)
}

/// Waits for `pid` to exit, retrying on EINTR, and returns its raw wait status with its
/// usage and that of the descendants it reaped. rustix's waitpid reports no usage.
pub fn wait4(pid: libc::pid_t) -> io::Result<(libc::c_int, ResourceUsage)> {
    // SAFETY: an all-zero rusage is a valid value.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let mut status = 0;
    loop {
        // SAFETY: `status` and `usage` are valid, writable locals.
        let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        if rc == pid {
            return Ok((status, ResourceUsage::from_raw(&usage)));
        }
        let error = io::Error::last_os_error();
        if rc < 0 && error.raw_os_error() != Some(libc::EINTR) {
            return Err(error);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{NAMESPACE_STEPS, NamespaceStep};

    #[test]
    fn namespace_steps_match_their_index() {
        for (index, step) in NAMESPACE_STEPS.iter().enumerate() {
            assert_eq!(*step as usize, index);
        }
        assert_eq!(NAMESPACE_STEPS.len(), NamespaceStep::OpenIpc as usize + 1);
    }
}
