//! Starting a process: as the caller (`CreateProcessW`), with a token (`CreateProcessAsUserW`)
//! or as another local account (`CreateProcessWithLogonW`), with an explicit environment
//! block, working directory and command line, and only the three standard handles inherited.
//!
//! The first two pass the standard handles in a `PROC_THREAD_ATTRIBUTE_HANDLE_LIST`, so that
//! no other inheritable handle of palisade reaches the child. `CreateProcessWithLogonW`
//! inherits nothing: the secondary logon service copies the three standard handles into the
//! new process and nothing else.

use std::os::windows::io::{AsHandle, AsRawHandle, BorrowedHandle, FromRawHandle, OwnedHandle};
use std::time::Duration;

use windows_sys::Win32::Foundation::{
    DuplicateHandle, DUPLICATE_SAME_ACCESS, ERROR_ACCESS_DENIED, ERROR_BAD_EXE_FORMAT, ERROR_ELEVATION_REQUIRED, ERROR_EXE_MACHINE_TYPE_MISMATCH,
    ERROR_FILE_NOT_FOUND, ERROR_PATH_NOT_FOUND, GENERIC_READ, GENERIC_WRITE, HANDLE, INVALID_HANDLE_VALUE, WAIT_FAILED, WAIT_OBJECT_0, WAIT_TIMEOUT,
};
use windows_sys::Win32::Storage::FileSystem::{
    CreateFileW, GetFileAttributesW, FILE_ATTRIBUTE_DIRECTORY, FILE_SHARE_READ, FILE_SHARE_WRITE, INVALID_FILE_ATTRIBUTES, OPEN_EXISTING,
};
use windows_sys::Win32::System::Console::{GetStdHandle, STD_ERROR_HANDLE, STD_HANDLE, STD_INPUT_HANDLE, STD_OUTPUT_HANDLE};
use windows_sys::Win32::System::SystemInformation::{GetSystemDirectoryW, GetWindowsDirectoryW};
use windows_sys::Win32::System::Threading::{
    CreateEventW, CreateProcessAsUserW, CreateProcessW, CreateProcessWithLogonW, DeleteProcThreadAttributeList, GetCurrentProcess,
    GetExitCodeProcess, InitializeProcThreadAttributeList, ResumeThread, SetEvent, UpdateProcThreadAttribute, WaitForSingleObject,
    CREATE_NO_WINDOW, CREATE_SUSPENDED, CREATE_UNICODE_ENVIRONMENT, EXTENDED_STARTUPINFO_PRESENT, INFINITE, LOGON_WITH_PROFILE,
    LPPROC_THREAD_ATTRIBUTE_LIST, PROCESS_INFORMATION, PROC_THREAD_ATTRIBUTE_HANDLE_LIST, STARTF_USESHOWWINDOW, STARTF_USESTDHANDLES,
    STARTUPINFOEXW, STARTUPINFOW,
};

use crate::cmdline::{batch_command_line, find_program, quote_args, CommandLineError, Lossy, ProgramKind};
use crate::environment::Environment;
use crate::outcome::{EXIT_NOT_EXECUTABLE, EXIT_NOT_FOUND};

use super::error::Code;
use super::Error;

/// Whose identity a new process runs with.
pub enum Identity<'a> {
    /// The caller's own: `CreateProcessW`.
    Caller,
    /// A primary token derived from the caller's: `CreateProcessAsUserW`.
    Token(BorrowedHandle<'a>),
    /// Another local account, logged on with its password: `CreateProcessWithLogonW`, with the
    /// account's profile loaded so that its registry hive is there for the programs it runs.
    Logon { user: &'a str, password: &'a str },
}

/// The three standard handles of a new process. They need not be inheritable:
/// [`create_process`] passes inheritable duplicates.
pub struct Stdio<'a> {
    pub stdin: BorrowedHandle<'a>,
    pub stdout: BorrowedHandle<'a>,
    pub stderr: BorrowedHandle<'a>,
}

/// The description of a process to start. Strings are UTF-16 without a terminating NUL.
pub struct ProcessSpec<'a> {
    /// The absolute path of the executable; never searched for.
    pub application: &'a [u16],
    pub command_line: &'a [u16],
    /// A block as [`Environment::to_block`] writes it.
    pub environment_block: &'a [u16],
    pub cwd: &'a [u16],
    pub stdio: Stdio<'a>,
    /// Create the process with its first thread suspended, so that it can be assigned to a job
    /// before it runs any code; [`Process::resume`] starts it.
    pub suspended: bool,
}

/// A process started by [`create_process`].
pub struct Process {
    pub handle: OwnedHandle,
    thread: OwnedHandle,
    pub pid: u32,
}

/// Starts a process described by `spec` with `identity`.
pub fn create_process(spec: &ProcessSpec<'_>, identity: Identity<'_>) -> Result<Process, Error> {
    let application = nul_terminated(spec.application);
    let cwd = nul_terminated(spec.cwd);
    // CreateProcess* may write to the command line buffer, so it is a private copy.
    let mut command_line = nul_terminated(spec.command_line);
    let object = Lossy(spec.application).to_string();
    let stdin = inheritable(spec.stdio.stdin, "the standard input")?;
    let stdout = inheritable(spec.stdio.stdout, "the standard output")?;
    let stderr = inheritable(spec.stdio.stderr, "the standard error")?;

    let mut flags = CREATE_UNICODE_ENVIRONMENT;
    if spec.suspended {
        flags |= CREATE_SUSPENDED;
    }
    let mut info = PROCESS_INFORMATION::default();
    let environment = spec.environment_block.as_ptr().cast();
    match identity {
        Identity::Logon { user, password } => {
            let user = nul_terminated(&user.encode_utf16().collect::<Vec<_>>());
            let password = Secret(nul_terminated(&password.encode_utf16().collect::<Vec<_>>()));
            let domain = nul_terminated(&[b'.' as u16]);
            let startup = STARTUPINFOW {
                cb: size_of::<STARTUPINFOW>() as u32,
                dwFlags: STARTF_USESTDHANDLES | STARTF_USESHOWWINDOW,
                // SW_HIDE: should Windows give the runner a console of its own despite
                // CREATE_NO_WINDOW, its window stays hidden.
                wShowWindow: 0,
                hStdInput: stdin.as_raw_handle(),
                hStdOutput: stdout.as_raw_handle(),
                hStdError: stderr.as_raw_handle(),
                ..Default::default()
            };
            // NOTE: CreateProcessWithLogonW creates a new console by default; CREATE_NO_WINDOW
            // requests one without a window. Verified only under Wine, which ignores it.
            // SAFETY: every string is NUL-terminated and outlives the call, the command line is a
            // writable private buffer, the environment block ends with two NULs, and `info`
            // receives two new handles that are owned below.
            let ok = unsafe {
                CreateProcessWithLogonW(
                    user.as_ptr(),
                    domain.as_ptr(),
                    password.0.as_ptr(),
                    LOGON_WITH_PROFILE,
                    application.as_ptr(),
                    command_line.as_mut_ptr(),
                    flags | CREATE_NO_WINDOW,
                    environment,
                    cwd.as_ptr(),
                    &startup,
                    &mut info,
                )
            };
            if ok == 0 {
                return Err(Error::last("CreateProcessWithLogonW", object));
            }
        }
        Identity::Caller | Identity::Token(_) => {
            let mut handles: Vec<HANDLE> = vec![stdin.as_raw_handle(), stdout.as_raw_handle(), stderr.as_raw_handle()];
            let attributes = AttributeList::with_handles(&mut handles)?;
            let startup = STARTUPINFOEXW {
                StartupInfo: STARTUPINFOW {
                    cb: size_of::<STARTUPINFOEXW>() as u32,
                    dwFlags: STARTF_USESTDHANDLES,
                    hStdInput: stdin.as_raw_handle(),
                    hStdOutput: stdout.as_raw_handle(),
                    hStdError: stderr.as_raw_handle(),
                    ..Default::default()
                },
                lpAttributeList: attributes.list(),
            };
            let flags = flags | EXTENDED_STARTUPINFO_PRESENT;
            let startup_ptr = (&startup as *const STARTUPINFOEXW).cast::<STARTUPINFOW>();
            let (ok, call) = match identity {
                // SAFETY: as for CreateProcessWithLogonW above; bInheritHandles is TRUE, and the
                // attribute list limits inheritance to the three inheritable duplicates, which
                // live until the call returns.
                Identity::Caller => (
                    unsafe {
                        CreateProcessW(
                            application.as_ptr(),
                            command_line.as_mut_ptr(),
                            std::ptr::null(),
                            std::ptr::null(),
                            1,
                            flags,
                            environment,
                            cwd.as_ptr(),
                            startup_ptr,
                            &mut info,
                        )
                    },
                    "CreateProcessW",
                ),
                // SAFETY: as for CreateProcessW; the token is a valid primary token for the
                // duration of the call.
                Identity::Token(token) => (
                    unsafe {
                        CreateProcessAsUserW(
                            token.as_raw_handle(),
                            application.as_ptr(),
                            command_line.as_mut_ptr(),
                            std::ptr::null(),
                            std::ptr::null(),
                            1,
                            flags,
                            environment,
                            cwd.as_ptr(),
                            startup_ptr,
                            &mut info,
                        )
                    },
                    "CreateProcessAsUserW",
                ),
                Identity::Logon { .. } => unreachable!("handled above"),
            };
            if ok == 0 {
                return Err(Error::last(call, object));
            }
        }
    }
    // SAFETY: the call succeeded, so both handles are new and owned by nobody else.
    let (handle, thread) = unsafe { (OwnedHandle::from_raw_handle(info.hProcess), OwnedHandle::from_raw_handle(info.hThread)) };
    Ok(Process { handle, thread, pid: info.dwProcessId })
}

impl Process {
    /// Starts the first thread of a process created suspended.
    pub fn resume(&self) -> Result<(), Error> {
        // SAFETY: the thread handle is valid and has THREAD_SUSPEND_RESUME (full access).
        if unsafe { ResumeThread(self.thread.as_raw_handle()) } == u32::MAX {
            return Err(Error::last("ResumeThread", format!("process {}", self.pid)));
        }
        Ok(())
    }

    /// Waits for the process to exit; `None` waits without a limit. Returns whether it exited.
    pub fn wait(&self, timeout: Option<Duration>) -> Result<bool, Error> {
        wait_one(self.handle.as_handle(), timeout, format!("process {}", self.pid))
    }

    /// Returns the exit code of a process that has exited.
    pub fn exit_code(&self) -> Result<u32, Error> {
        let mut code = 0;
        // SAFETY: the handle is valid and `code` is a valid out-pointer.
        if unsafe { GetExitCodeProcess(self.handle.as_raw_handle(), &mut code) } == 0 {
            return Err(Error::last("GetExitCodeProcess", format!("process {}", self.pid)));
        }
        Ok(code)
    }
}

/// Waits for one object; `None` waits without a limit. Returns whether it was signalled.
pub fn wait_one(handle: BorrowedHandle<'_>, timeout: Option<Duration>, object: String) -> Result<bool, Error> {
    let milliseconds = timeout.map_or(INFINITE, |timeout| u32::try_from(timeout.as_millis()).unwrap_or(INFINITE - 1).min(INFINITE - 1));
    // SAFETY: the handle is valid for the call; a handle that cannot be waited for makes the
    // call fail, which is reported.
    match unsafe { WaitForSingleObject(handle.as_raw_handle(), milliseconds) } {
        WAIT_OBJECT_0 => Ok(true),
        WAIT_TIMEOUT => Ok(false),
        WAIT_FAILED => Err(Error::last("WaitForSingleObject", object)),
        other => Err(Error::Call { call: "WaitForSingleObject", object, code: Code(other) }),
    }
}

/// A password in memory, overwritten when dropped so that it does not linger in the heap.
struct Secret(Vec<u16>);

impl Drop for Secret {
    fn drop(&mut self) {
        for unit in self.0.iter_mut() {
            // SAFETY: `unit` is a valid, aligned, exclusive reference; the volatile write keeps
            // the compiler from removing a store to memory about to be freed.
            unsafe { std::ptr::write_volatile(unit, 0) };
        }
    }
}

/// A `PROC_THREAD_ATTRIBUTE_LIST` holding one handle list.
struct AttributeList<'a> {
    buffer: Vec<usize>,
    /// The handles the list points to; they must stay in place until the list is deleted.
    _handles: &'a mut Vec<HANDLE>,
}

impl<'a> AttributeList<'a> {
    fn with_handles(handles: &'a mut Vec<HANDLE>) -> Result<AttributeList<'a>, Error> {
        // The same handle twice (stdout and stderr as one pipe) makes the update fail.
        handles.sort_unstable_by_key(|handle| *handle as usize);
        handles.dedup();
        let mut size = 0usize;
        // SAFETY: a null list with a size out-pointer only queries the size, so this call fails
        // with ERROR_INSUFFICIENT_BUFFER by design.
        unsafe { InitializeProcThreadAttributeList(std::ptr::null_mut(), 1, 0, &mut size) };
        let mut buffer = vec![0usize; size.div_ceil(size_of::<usize>())];
        let list: LPPROC_THREAD_ATTRIBUTE_LIST = buffer.as_mut_ptr().cast();
        // SAFETY: the buffer has the size the first call asked for, aligned for pointers.
        if unsafe { InitializeProcThreadAttributeList(list, 1, 0, &mut size) } == 0 {
            return Err(Error::last("InitializeProcThreadAttributeList", "the handle list"));
        }
        let attributes = AttributeList { buffer, _handles: handles };
        // SAFETY: the list is initialised. The list borrows the handle array, so the array lives
        // as long as the list, and its size is passed in bytes.
        let ok = unsafe {
            UpdateProcThreadAttribute(
                attributes.list(),
                0,
                PROC_THREAD_ATTRIBUTE_HANDLE_LIST as usize,
                attributes._handles.as_ptr().cast(),
                attributes._handles.len() * size_of::<HANDLE>(),
                std::ptr::null_mut(),
                std::ptr::null(),
            )
        };
        if ok == 0 {
            return Err(Error::last("UpdateProcThreadAttribute", "the handle list"));
        }
        Ok(attributes)
    }

    fn list(&self) -> LPPROC_THREAD_ATTRIBUTE_LIST {
        self.buffer.as_ptr().cast_mut().cast()
    }
}

impl Drop for AttributeList<'_> {
    fn drop(&mut self) {
        // SAFETY: the list was initialised in `with_handles` and is deleted once.
        unsafe { DeleteProcThreadAttributeList(self.list()) };
    }
}

fn nul_terminated(text: &[u16]) -> Vec<u16> {
    let mut terminated = Vec::with_capacity(text.len() + 1);
    terminated.extend_from_slice(text);
    terminated.push(0);
    terminated
}

/// Duplicates `handle` as an inheritable handle of this process.
pub fn inheritable(handle: BorrowedHandle<'_>, what: &str) -> Result<OwnedHandle, Error> {
    duplicate(handle, None, true, what).map(|raw| {
        // SAFETY: DuplicateHandle created this handle in the current process for us alone.
        unsafe { OwnedHandle::from_raw_handle(raw as HANDLE) }
    })
}

/// Duplicates `handle` into `target` (the current process if `None`) and returns its value
/// there. A handle duplicated into another process is that process's to close.
pub fn duplicate(handle: BorrowedHandle<'_>, target: Option<BorrowedHandle<'_>>, inherit: bool, what: &str) -> Result<u64, Error> {
    let mut duplicated: HANDLE = std::ptr::null_mut();
    // SAFETY: GetCurrentProcess returns a pseudo-handle that needs no closing.
    let current = unsafe { GetCurrentProcess() };
    let target_process = target.map_or(current, |target| target.as_raw_handle());
    // SAFETY: the source handle is valid in this process, the target process handle has
    // PROCESS_DUP_HANDLE (our own pseudo-handle, or a process created here with full access),
    // and `duplicated` is a valid out-pointer.
    let ok = unsafe {
        DuplicateHandle(current, handle.as_raw_handle(), target_process, &mut duplicated, 0, i32::from(inherit), DUPLICATE_SAME_ACCESS)
    };
    if ok == 0 {
        return Err(Error::last("DuplicateHandle", what));
    }
    Ok(duplicated as u64)
}

/// Returns one of palisade's standard handles, or `None` where it has none (a GUI parent, or a handle
/// closed by the caller).
pub fn std_handle(which: StdStream) -> Option<BorrowedHandle<'static>> {
    let id: STD_HANDLE = match which {
        StdStream::Input => STD_INPUT_HANDLE,
        StdStream::Output => STD_OUTPUT_HANDLE,
        StdStream::Error => STD_ERROR_HANDLE,
    };
    // SAFETY: GetStdHandle has no preconditions.
    let handle = unsafe { GetStdHandle(id) };
    if handle.is_null() || handle == INVALID_HANDLE_VALUE {
        return None;
    }
    // SAFETY: the standard handles stay open for the life of the process unless the process
    // itself closes them, which palisade never does.
    Some(unsafe { BorrowedHandle::borrow_raw(handle) })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StdStream {
    Input,
    Output,
    Error,
}

/// Opens the `NUL` device for reading and writing, for a standard handle palisade does not
/// have.
pub fn open_null() -> Result<OwnedHandle, Error> {
    let name: Vec<u16> = "NUL\0".encode_utf16().collect();
    // SAFETY: the name is NUL-terminated; no security attributes or template.
    let handle = unsafe {
        CreateFileW(name.as_ptr(), GENERIC_READ | GENERIC_WRITE, FILE_SHARE_READ | FILE_SHARE_WRITE, std::ptr::null(), OPEN_EXISTING, 0, std::ptr::null_mut())
    };
    if handle == INVALID_HANDLE_VALUE {
        return Err(Error::last("CreateFileW", "NUL"));
    }
    // SAFETY: a new handle owned by nobody else.
    Ok(unsafe { OwnedHandle::from_raw_handle(handle) })
}

/// A manual-reset event, set once by one thread and waited for by another.
pub struct Event(OwnedHandle);

impl Event {
    pub fn new(what: &str) -> Result<Event, Error> {
        // SAFETY: no security attributes or name; manual reset, initially not set.
        let handle = unsafe { CreateEventW(std::ptr::null(), 1, 0, std::ptr::null()) };
        if handle.is_null() {
            return Err(Error::last("CreateEventW", what));
        }
        // SAFETY: a new handle owned by nobody else.
        Ok(Event(unsafe { OwnedHandle::from_raw_handle(handle) }))
    }

    pub fn set(&self) {
        // SAFETY: the handle is a valid event. Setting can only fail for an invalid handle.
        unsafe { SetEvent(self.0.as_raw_handle()) };
    }

    pub fn raw(&self) -> HANDLE {
        self.0.as_raw_handle()
    }
}

/// A command ready to start: the executable and the command line that runs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prepared {
    pub application: Vec<u16>,
    pub command_line: Vec<u16>,
}

/// The reason a command could not be prepared.
#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    /// No program of that name: exit status 127.
    #[error("{0}: not found")]
    NotFound(String),
    /// The arguments cannot be written as a command line; palisade refuses the run.
    #[error(transparent)]
    CommandLine(#[from] CommandLineError),
    #[error(transparent)]
    System(#[from] Error),
}

/// Finds the program of `argv` with the command's own `PATH` and `PATHEXT`, and writes the
/// command line that starts it: directly for an executable, through `cmd.exe` for a batch file.
pub fn prepare_command(argv: &[Vec<u16>], cwd: &[u16], environment: &Environment) -> Result<Prepared, PrepareError> {
    let name = argv.first().ok_or(CommandLineError::Empty)?;
    let system_dirs = system_directories()?;
    let program = find_program(name, cwd, environment.get("PATH"), environment.get("PATHEXT"), &system_dirs, is_file)
        .ok_or_else(|| PrepareError::NotFound(Lossy(name).to_string()))?;
    match program.kind {
        ProgramKind::Executable => Ok(Prepared { command_line: quote_args(argv)?, application: program.path }),
        ProgramKind::Batch => {
            let mut cmd_exe = system_dirs[0].clone();
            cmd_exe.extend("\\cmd.exe".encode_utf16());
            let command_line = batch_command_line(&cmd_exe, &program.path, &argv[1..])?;
            Ok(Prepared { application: cmd_exe, command_line })
        }
    }
}

/// Returns the system directory (`C:\Windows\System32`) and the Windows directory, in that
/// order.
fn system_directories() -> Result<Vec<Vec<u16>>, Error> {
    let read = |call: &'static str, get: unsafe extern "system" fn(*mut u16, u32) -> u32| -> Result<Vec<u16>, Error> {
        let mut buffer = vec![0u16; 512];
        // SAFETY: the buffer has room for `buffer.len()` units, and the call writes at most that many.
        let length = unsafe { get(buffer.as_mut_ptr(), buffer.len() as u32) } as usize;
        if length == 0 || length >= buffer.len() {
            return Err(Error::last(call, "the Windows directories"));
        }
        buffer.truncate(length);
        Ok(buffer)
    };
    Ok(vec![read("GetSystemDirectoryW", GetSystemDirectoryW)?, read("GetWindowsDirectoryW", GetWindowsDirectoryW)?])
}

fn is_file(path: &[u16]) -> bool {
    let path = nul_terminated(path);
    // SAFETY: the path is NUL-terminated.
    let attributes = unsafe { GetFileAttributesW(path.as_ptr()) };
    attributes != INVALID_FILE_ATTRIBUTES && attributes & FILE_ATTRIBUTE_DIRECTORY == 0
}

/// Returns the exit status of a process creation that failed because of the program: 127 when the
/// file is gone, 126 when it cannot be executed. `None` for a failure of palisade's own.
pub fn exec_status(error: &Error) -> Option<u8> {
    let Error::Call { code: Code(code), .. } = error else { return None };
    match *code {
        ERROR_FILE_NOT_FOUND | ERROR_PATH_NOT_FOUND => Some(EXIT_NOT_FOUND),
        ERROR_ACCESS_DENIED | ERROR_BAD_EXE_FORMAT | ERROR_EXE_MACHINE_TYPE_MISMATCH | ERROR_ELEVATION_REQUIRED => Some(EXIT_NOT_EXECUTABLE),
        _ => None,
    }
}
