//! The job object every run is assigned to: kill on close, no breakaway, the limits of the
//! [`JobPlan`], and the accounting the report reads.
//!
//! How palisade learns that a limit was reached: the job posts `JOB_OBJECT_MSG_*` messages to
//! an I/O completion port, which a watcher thread reads while the run lasts. A message for the
//! job memory limit makes the thread terminate the job at once, as the Linux backend ends a run
//! at its memory limit. Without that, the allocation that failed would be the only sign, and a
//! program could go on with less memory than it needs. A message for the process limit is only
//! recorded: process creation fails and the run goes on. The messages for new and exiting
//! processes give the peak number of processes. Windows documents that these messages may be
//! lost under load, so the peak is a lower bound; the CPU time limit is not read from a
//! message at all but from the job's accounting once the run is over, because Windows itself
//! terminates the job when it expires.

use std::mem::ManuallyDrop;
use std::os::windows::io::{AsRawHandle, BorrowedHandle, FromRawHandle, OwnedHandle};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use windows_sys::Win32::Foundation::{HANDLE, INVALID_HANDLE_VALUE};
use windows_sys::Win32::System::IO::{CreateIoCompletionPort, GetQueuedCompletionStatus, PostQueuedCompletionStatus, OVERLAPPED};
use windows_sys::Win32::System::JobObjects::{
    AssignProcessToJobObject, CreateJobObjectW, JobObjectAssociateCompletionPortInformation, JobObjectBasicAccountingInformation,
    JobObjectBasicUIRestrictions, JobObjectCpuRateControlInformation, JobObjectExtendedLimitInformation, QueryInformationJobObject,
    SetInformationJobObject, TerminateJobObject, JOBOBJECTINFOCLASS, JOBOBJECT_ASSOCIATE_COMPLETION_PORT,
    JOBOBJECT_BASIC_ACCOUNTING_INFORMATION, JOBOBJECT_BASIC_UI_RESTRICTIONS, JOBOBJECT_CPU_RATE_CONTROL_INFORMATION,
    JOBOBJECT_EXTENDED_LIMIT_INFORMATION, JOB_OBJECT_CPU_RATE_CONTROL_ENABLE, JOB_OBJECT_CPU_RATE_CONTROL_HARD_CAP,
    JOB_OBJECT_LIMIT_ACTIVE_PROCESS, JOB_OBJECT_LIMIT_BREAKAWAY_OK, JOB_OBJECT_LIMIT_DIE_ON_UNHANDLED_EXCEPTION, JOB_OBJECT_LIMIT_JOB_MEMORY,
    JOB_OBJECT_LIMIT_JOB_TIME, JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE, JOB_OBJECT_UILIMIT_DESKTOP, JOB_OBJECT_UILIMIT_DISPLAYSETTINGS,
    JOB_OBJECT_UILIMIT_EXITWINDOWS, JOB_OBJECT_UILIMIT_GLOBALATOMS, JOB_OBJECT_UILIMIT_HANDLES, JOB_OBJECT_UILIMIT_READCLIPBOARD,
    JOB_OBJECT_UILIMIT_SYSTEMPARAMETERS, JOB_OBJECT_UILIMIT_WRITECLIPBOARD,
};
use windows_sys::Win32::System::Threading::INFINITE;

use crate::outcome::{format_size, Limit, LimitEvent};
use crate::plan::JobPlan;

use super::Error;

// Message identifiers from the Windows SDK's `winnt.h`.
const JOB_OBJECT_MSG_ACTIVE_PROCESS_LIMIT: u32 = 3;
const JOB_OBJECT_MSG_NEW_PROCESS: u32 = 6;
const JOB_OBJECT_MSG_EXIT_PROCESS: u32 = 7;
const JOB_OBJECT_MSG_ABNORMAL_EXIT_PROCESS: u32 = 8;
const JOB_OBJECT_MSG_JOB_MEMORY_LIMIT: u32 = 10;

/// The completion key of job messages. A packet with [`STOP_KEY`] ends the watcher.
const JOB_KEY: usize = 1;
const STOP_KEY: usize = 2;

/// The exit code of every process palisade terminates, at a limit or when the run ends: that
/// of a process killed by SIGKILL on Linux, so the code reads the same on both systems.
pub const TERMINATED_EXIT_CODE: u32 = 137;

/// A job object with its limit watcher. Dropping it closes the last handle to the job, which
/// kills every process still in it.
pub struct Job {
    /// Closed by `Drop` only once the watcher, which borrows it, has ended.
    handle: ManuallyDrop<OwnedHandle>,
    port: OwnedHandle,
    watcher: Option<JoinHandle<()>>,
    state: Arc<Mutex<WatchState>>,
    plan: JobPlan,
}

/// The state the watcher thread builds from the job's messages.
#[derive(Debug, Default)]
struct WatchState {
    events: Vec<LimitEvent>,
    /// The limit at which the watcher terminated the job.
    ended_by: Option<Limit>,
    active: u64,
    peak_active: u64,
}

/// The job's accounting, read with `QueryInformationJobObject`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Accounting {
    pub user_time: Duration,
    pub kernel_time: Duration,
    /// Processes ever assigned to the job or started in it.
    pub total_processes: u32,
    pub active_processes: u32,
    /// The maximum memory committed by the job's processes together; 0 under Wine, which
    /// does not account for it.
    pub peak_job_memory: u64,
}

impl Job {
    /// Creates the job and applies every limit of `plan`, then starts the watcher. Any failure
    /// drops the job, which has no process yet.
    pub fn create(plan: &JobPlan) -> Result<Job, Error> {
        // SAFETY: no security attributes (the default security of the caller's token) and no
        // name, so no other process can open the job by name.
        let raw = unsafe { CreateJobObjectW(std::ptr::null(), std::ptr::null()) };
        if raw.is_null() {
            return Err(Error::last("CreateJobObjectW", "the run's job object"));
        }
        // SAFETY: CreateJobObjectW returned a new handle that nothing else owns.
        let handle = unsafe { OwnedHandle::from_raw_handle(raw) };

        set_information(&handle, JobObjectExtendedLimitInformation, &extended_limits(plan), "the job's limits")?;
        if let Some(rate) = plan.cpu_rate {
            let mut cpu = JOBOBJECT_CPU_RATE_CONTROL_INFORMATION {
                ControlFlags: JOB_OBJECT_CPU_RATE_CONTROL_ENABLE | JOB_OBJECT_CPU_RATE_CONTROL_HARD_CAP,
                ..Default::default()
            };
            cpu.Anonymous.CpuRate = rate;
            set_information(&handle, JobObjectCpuRateControlInformation, &cpu, "the job's CPU rate")?;
        }
        if plan.ui_restrictions {
            let ui = JOBOBJECT_BASIC_UI_RESTRICTIONS { UIRestrictionsClass: UI_RESTRICTIONS };
            set_information(&handle, JobObjectBasicUIRestrictions, &ui, "the job's UI restrictions")?;
        }

        // SAFETY: INVALID_HANDLE_VALUE with no existing port creates a new port, not associated
        // with any file; one thread reads it.
        let raw_port = unsafe { CreateIoCompletionPort(INVALID_HANDLE_VALUE, std::ptr::null_mut(), 0, 1) };
        if raw_port.is_null() {
            return Err(Error::last("CreateIoCompletionPort", "the job's message port"));
        }
        // SAFETY: a new handle that nothing else owns.
        let port = unsafe { OwnedHandle::from_raw_handle(raw_port) };
        let association = JOBOBJECT_ASSOCIATE_COMPLETION_PORT { CompletionKey: JOB_KEY as *mut _, CompletionPort: port.as_raw_handle() };
        set_information(&handle, JobObjectAssociateCompletionPortInformation, &association, "the job's message port")?;

        let state = Arc::new(Mutex::new(WatchState::default()));
        let watcher = start_watcher(&handle, &port, plan, Arc::clone(&state))?;
        Ok(Job { handle: ManuallyDrop::new(handle), port, watcher: Some(watcher), state, plan: plan.clone() })
    }

    /// Puts `process` in the job. The process must have been created suspended, so that
    /// nothing it starts escapes before it is assigned.
    pub fn assign(&self, process: BorrowedHandle<'_>) -> Result<(), Error> {
        // SAFETY: both handles are valid for the duration of the call.
        if unsafe { AssignProcessToJobObject(self.raw(), process.as_raw_handle()) } == 0 {
            return Err(Error::last("AssignProcessToJobObject", "the run's process"));
        }
        Ok(())
    }

    /// Terminates every process in the job with `exit_code`.
    pub fn terminate(&self, exit_code: u32) -> Result<(), Error> {
        // SAFETY: the job handle is valid and has JOB_OBJECT_TERMINATE (it was created here).
        if unsafe { TerminateJobObject(self.raw(), exit_code) } == 0 {
            return Err(Error::last("TerminateJobObject", "the run's job object"));
        }
        Ok(())
    }

    /// Reads the job's accounting.
    pub fn accounting(&self) -> Result<Accounting, Error> {
        let mut info = JOBOBJECT_BASIC_ACCOUNTING_INFORMATION::default();
        query_information(&self.handle, JobObjectBasicAccountingInformation, &mut info, "the job's accounting")?;
        let mut extended = JOBOBJECT_EXTENDED_LIMIT_INFORMATION::default();
        query_information(&self.handle, JobObjectExtendedLimitInformation, &mut extended, "the job's peak memory")?;
        Ok(Accounting {
            user_time: from_100ns(info.TotalUserTime),
            kernel_time: from_100ns(info.TotalKernelTime),
            total_processes: info.TotalProcesses,
            active_processes: info.ActiveProcesses,
            peak_job_memory: extended.PeakJobMemoryUsed as u64,
        })
    }

    /// Returns the limits the watcher saw the run reach, in order.
    pub fn limit_events(&self) -> Vec<LimitEvent> {
        self.lock().events.clone()
    }

    /// Returns the limit at which the watcher terminated the job, if it did.
    pub fn ended_by(&self) -> Option<Limit> {
        self.lock().ended_by
    }

    /// Returns the maximum number of processes the job's messages showed alive at once, a lower
    /// bound (see the module documentation).
    pub fn peak_processes(&self) -> u64 {
        self.lock().peak_active
    }

    /// Returns the plan the job was created from.
    pub fn plan(&self) -> &JobPlan {
        &self.plan
    }

    fn raw(&self) -> HANDLE {
        self.handle.as_raw_handle()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, WatchState> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Drop for Job {
    fn drop(&mut self) {
        // SAFETY: the port handle is valid; the packet carries no OVERLAPPED.
        let posted = unsafe { PostQueuedCompletionStatus(self.port.as_raw_handle(), 0, STOP_KEY, std::ptr::null()) } != 0;
        if let Some(watcher) = self.watcher.take() {
            if !posted {
                // NOTE: the watcher would wait forever, so it is left running and the job handle
                // it borrows is not closed: the run's processes then live until palisade exits,
                // which closes every handle. Closing the port below ends the watcher's wait.
                tracing::warn!("failed to stop the job's limit watcher: {}", std::io::Error::last_os_error());
                return;
            }
            let _ = watcher.join();
        }
        // SAFETY: the watcher has ended, so nothing uses the handle any more, and it is dropped
        // only here.
        unsafe { ManuallyDrop::drop(&mut self.handle) };
    }
}

/// The UI restrictions of a sandboxed run: no clipboard, no desktop switching or creation, no
/// global atoms, no display or system settings, no handles to windows of other processes, no
/// logging off or shutting down.
const UI_RESTRICTIONS: u32 = JOB_OBJECT_UILIMIT_DESKTOP
    | JOB_OBJECT_UILIMIT_DISPLAYSETTINGS
    | JOB_OBJECT_UILIMIT_EXITWINDOWS
    | JOB_OBJECT_UILIMIT_GLOBALATOMS
    | JOB_OBJECT_UILIMIT_HANDLES
    | JOB_OBJECT_UILIMIT_READCLIPBOARD
    | JOB_OBJECT_UILIMIT_SYSTEMPARAMETERS
    | JOB_OBJECT_UILIMIT_WRITECLIPBOARD;

/// Builds the extended limits. Breakaway stays forbidden whatever the plan contains: neither
/// `JOB_OBJECT_LIMIT_BREAKAWAY_OK` nor `JOB_OBJECT_LIMIT_SILENT_BREAKAWAY_OK` is ever set.
fn extended_limits(plan: &JobPlan) -> JOBOBJECT_EXTENDED_LIMIT_INFORMATION {
    debug_assert!(!plan.allow_breakaway, "plans never allow breakaway");
    let mut info = JOBOBJECT_EXTENDED_LIMIT_INFORMATION::default();
    let mut flags = 0;
    if plan.kill_on_close {
        flags |= JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE;
    }
    if plan.die_on_unhandled_exception {
        flags |= JOB_OBJECT_LIMIT_DIE_ON_UNHANDLED_EXCEPTION;
    }
    if let Some(bytes) = plan.job_memory {
        flags |= JOB_OBJECT_LIMIT_JOB_MEMORY;
        info.JobMemoryLimit = usize::try_from(bytes).unwrap_or(usize::MAX);
    }
    if let Some(count) = plan.active_processes {
        flags |= JOB_OBJECT_LIMIT_ACTIVE_PROCESS;
        info.BasicLimitInformation.ActiveProcessLimit = count;
    }
    if let Some(time) = plan.job_user_time {
        flags |= JOB_OBJECT_LIMIT_JOB_TIME;
        info.BasicLimitInformation.PerJobUserTimeLimit = to_100ns(time);
    }
    debug_assert_eq!(flags & JOB_OBJECT_LIMIT_BREAKAWAY_OK, 0);
    info.BasicLimitInformation.LimitFlags = flags;
    info
}

fn set_information<T>(job: &OwnedHandle, class: JOBOBJECTINFOCLASS, value: &T, what: &str) -> Result<(), Error> {
    // SAFETY: `value` is the structure `class` expects (each caller pairs them), and the size
    // passed is its size.
    let ok = unsafe { SetInformationJobObject(job.as_raw_handle(), class, (value as *const T).cast(), size_of::<T>() as u32) };
    if ok == 0 {
        return Err(Error::last("SetInformationJobObject", what));
    }
    Ok(())
}

fn query_information<T>(job: &OwnedHandle, class: JOBOBJECTINFOCLASS, value: &mut T, what: &str) -> Result<(), Error> {
    // SAFETY: `value` is the structure `class` fills (each caller pairs them) and the size
    // passed is its size.
    let ok = unsafe {
        QueryInformationJobObject(job.as_raw_handle(), class, (value as *mut T).cast(), size_of::<T>() as u32, std::ptr::null_mut())
    };
    if ok == 0 {
        return Err(Error::last("QueryInformationJobObject", what));
    }
    Ok(())
}

fn to_100ns(duration: Duration) -> i64 {
    i64::try_from(duration.as_nanos() / 100).unwrap_or(i64::MAX)
}

fn from_100ns(units: i64) -> Duration {
    Duration::from_nanos(u64::try_from(units).unwrap_or(0).saturating_mul(100))
}

/// Handle values the watcher borrows; [`Job`]'s `Drop` joins the thread before closing them.
#[derive(Clone, Copy)]
struct Borrowed {
    job: usize,
    port: usize,
}

fn start_watcher(job: &OwnedHandle, port: &OwnedHandle, plan: &JobPlan, state: Arc<Mutex<WatchState>>) -> Result<JoinHandle<()>, Error> {
    let handles = Borrowed { job: job.as_raw_handle() as usize, port: port.as_raw_handle() as usize };
    let plan = plan.clone();
    std::thread::Builder::new()
        .name("palisade-job-watcher".into())
        .stack_size(64 * 1024)
        .spawn(move || watch(handles, &plan, &state))
        .map_err(|source| Error::Io { what: "failed to start the job's limit watcher".into(), source })
}

fn watch(handles: Borrowed, plan: &JobPlan, state: &Mutex<WatchState>) {
    loop {
        let mut message = 0u32;
        let mut key = 0usize;
        let mut overlapped: *mut OVERLAPPED = std::ptr::null_mut();
        // SAFETY: the port stays open until Drop has joined this thread; the out-pointers are
        // valid locals.
        let ok = unsafe { GetQueuedCompletionStatus(handles.port as HANDLE, &mut message, &mut key, &mut overlapped, INFINITE) };
        if ok == 0 || key == STOP_KEY {
            return;
        }
        if key != JOB_KEY {
            continue;
        }
        let mut state = state.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        match message {
            JOB_OBJECT_MSG_NEW_PROCESS => {
                state.active += 1;
                state.peak_active = state.peak_active.max(state.active);
            }
            JOB_OBJECT_MSG_EXIT_PROCESS | JOB_OBJECT_MSG_ABNORMAL_EXIT_PROCESS => state.active = state.active.saturating_sub(1),
            JOB_OBJECT_MSG_JOB_MEMORY_LIMIT => {
                let limit = plan.job_memory.unwrap_or_default();
                state.events.push(LimitEvent {
                    limit: Limit::Memory,
                    value: limit,
                    ended_run: true,
                    message: format!(
                        "the run's processes together tried to commit more than its memory limit of {}; every process was killed",
                        format_size(limit)
                    ),
                });
                if state.ended_by.is_none() {
                    state.ended_by = Some(Limit::Memory);
                    // SAFETY: the job handle stays open until Drop has joined this thread.
                    if unsafe { TerminateJobObject(handles.job as HANDLE, TERMINATED_EXIT_CODE) } == 0 {
                        tracing::warn!("failed to terminate the job at its memory limit: {}", std::io::Error::last_os_error());
                    }
                }
            }
            JOB_OBJECT_MSG_ACTIVE_PROCESS_LIMIT => {
                let limit = plan.active_processes.unwrap_or_default();
                // Repeats add nothing: the report lists each limit once.
                if !state.events.iter().any(|event| event.limit == Limit::MaxProcs) {
                    state.events.push(LimitEvent {
                        limit: Limit::MaxProcs,
                        value: u64::from(limit),
                        ended_run: false,
                        message: format!("the run reached its limit of {limit} processes; starting another one failed"),
                    });
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> JobPlan {
        JobPlan {
            kill_on_close: true,
            allow_breakaway: false,
            die_on_unhandled_exception: true,
            job_memory: Some(1 << 30),
            active_processes: Some(64),
            job_user_time: Some(Duration::from_secs(30)),
            cpu_rate: Some(5000),
            ui_restrictions: true,
            timeout: None,
            max_output: None,
        }
    }

    #[test]
    fn extended_limits_carry_the_plan() {
        let info = extended_limits(&plan());
        let basic = info.BasicLimitInformation;
        let expected = JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE
            | JOB_OBJECT_LIMIT_DIE_ON_UNHANDLED_EXCEPTION
            | JOB_OBJECT_LIMIT_JOB_MEMORY
            | JOB_OBJECT_LIMIT_ACTIVE_PROCESS
            | JOB_OBJECT_LIMIT_JOB_TIME;
        assert_eq!(basic.LimitFlags, expected);
        assert_eq!(info.JobMemoryLimit, 1 << 30);
        assert_eq!(basic.ActiveProcessLimit, 64);
        assert_eq!(basic.PerJobUserTimeLimit, 300_000_000);
    }

    #[test]
    fn extended_limits_never_allow_breakaway() {
        use windows_sys::Win32::System::JobObjects::JOB_OBJECT_LIMIT_SILENT_BREAKAWAY_OK;
        let flags = extended_limits(&JobPlan { job_memory: None, active_processes: None, job_user_time: None, ..plan() }).BasicLimitInformation.LimitFlags;
        assert_eq!(flags & (JOB_OBJECT_LIMIT_BREAKAWAY_OK | JOB_OBJECT_LIMIT_SILENT_BREAKAWAY_OK), 0);
        assert_eq!(flags, JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE | JOB_OBJECT_LIMIT_DIE_ON_UNHANDLED_EXCEPTION);
    }

    #[test]
    fn durations_convert_to_100ns_units() {
        assert_eq!(to_100ns(Duration::from_millis(1)), 10_000);
        assert_eq!(from_100ns(10_000), Duration::from_millis(1));
        assert_eq!(from_100ns(-5), Duration::ZERO);
        assert_eq!(to_100ns(Duration::MAX), i64::MAX);
    }
}
