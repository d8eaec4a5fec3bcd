//! The policy's limits as macOS can hold them: rlimits in the stage that applies the profile,
//! and palisade's own wall clock and output count. macOS has no cgroups and no job objects, so
//! memory, the number of processes, CPU bandwidth and the size of the temporary directory are
//! not held for the run as a whole. A limit the user set that cannot be held is an error
//! unless degraded mode is allowed. A profile's default that cannot be held is reported.

use std::time::Duration;

use palisade_policy::Limits;

/// A resource limit of each process, set with `setrlimit` before the command starts and
/// inherited by its children.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource {
    /// `RLIMIT_CORE`: no core dumps, which could write a process's memory to disk.
    Core,
    /// `RLIMIT_CPU`, in seconds.
    Cpu,
    /// `RLIMIT_FSIZE`, in bytes.
    FileSize,
    /// `RLIMIT_NOFILE`.
    OpenFiles,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rlimit {
    pub resource: Resource,
    /// The value the soft and the hard limit are lowered to. `sys::lower_rlimits` keeps a
    /// lower limit already in place.
    pub value: u64,
}

/// The mechanism that enforces one limit on macOS, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Enforcement {
    Held { by: &'static str },
    /// Held for each process, not for the run as a whole.
    PerProcess { by: &'static str },
    NotEnforced { reason: &'static str },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitStatus {
    /// The limit's name in the policy file.
    pub limit: &'static str,
    pub enforcement: Enforcement,
}

/// The rlimits and clocks of a run, and the enforcement of each of the policy's limits for
/// the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitPlan {
    pub rlimits: Vec<Rlimit>,
    /// Wall-clock time, after which palisade kills every process of the run.
    pub timeout: Option<Duration>,
    /// Bytes of stdout and stderr together, counted by palisade on its pipes.
    pub max_output: Option<u64>,
    pub statuses: Vec<LimitStatus>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LimitsError {
    #[error("the {limit} limit cannot be enforced on macOS: {reason}; remove it, or allow degraded mode to run without it")]
    Unsupported { limit: &'static str, reason: &'static str },
}

const MEMORY: &str = "macOS enforces neither RLIMIT_AS nor RLIMIT_DATA, and palisade does not sample the run's memory on macOS yet";
const PROCESSES: &str =
    "RLIMIT_NPROC on macOS counts every process of the user, not the run's, and palisade does not count the run's processes on macOS yet";
const TEMPORARY: &str = "the run's temporary directory is on the disk, not on a file system of its own size";
const CPUS: &str = "macOS has no CPU bandwidth limit for a group of processes";

/// Plans `limits`. `defaults` are the profile's own limits, which tell a limit the user asked
/// for from one the profile set.
pub fn plan_limits(limits: &Limits, defaults: &Limits, allow_degraded: bool) -> Result<LimitPlan, LimitsError> {
    let mut rlimits = vec![Rlimit { resource: Resource::Core, value: 0 }];
    let mut statuses = Vec::new();
    let mut held = |limit: &'static str, enforcement: Enforcement, rlimit: Option<Rlimit>| {
        statuses.push(LimitStatus { limit, enforcement });
        rlimits.extend(rlimit);
    };

    if limits.timeout.is_some() {
        held("timeout", Enforcement::Held { by: "palisade's wall clock, which then kills every process of the run" }, None);
    }
    if let Some(cpu_time) = limits.cpu_time {
        // RLIMIT_CPU counts whole seconds, so a fraction is rounded up: zero would mean no
        // limit.
        let seconds = cpu_time.as_secs() + u64::from(cpu_time.subsec_nanos() > 0);
        held("cpu_time", Enforcement::PerProcess { by: "RLIMIT_CPU" }, Some(Rlimit { resource: Resource::Cpu, value: seconds }));
    }
    if let Some(size) = limits.max_file_size {
        held("max_file_size", Enforcement::Held { by: "RLIMIT_FSIZE" }, Some(Rlimit { resource: Resource::FileSize, value: size }));
    }
    if let Some(count) = limits.max_open_files {
        held("max_open_files", Enforcement::PerProcess { by: "RLIMIT_NOFILE" }, Some(Rlimit { resource: Resource::OpenFiles, value: count }));
    }
    if limits.max_output.is_some() {
        held("max_output", Enforcement::Held { by: "palisade's count of the bytes it copies from the command's pipes" }, None);
    }

    let unsupported = [
        ("memory", limits.memory, defaults.memory, MEMORY),
        ("max_procs", limits.max_procs, defaults.max_procs, PROCESSES),
        ("tmp_size", limits.tmp_size, defaults.tmp_size, TEMPORARY),
        ("cpus", limits.cpus_milli, defaults.cpus_milli, CPUS),
    ];
    for (limit, value, default, reason) in unsupported {
        if value.is_none() {
            continue;
        }
        if value != default && !allow_degraded {
            return Err(LimitsError::Unsupported { limit, reason });
        }
        statuses.push(LimitStatus { limit, enforcement: Enforcement::NotEnforced { reason } });
    }
    Ok(LimitPlan { rlimits, timeout: limits.timeout, max_output: limits.max_output, statuses })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaults() -> Limits {
        Limits::defaults(Some(16 << 30))
    }

    fn status<'a>(plan: &'a LimitPlan, limit: &str) -> &'a Enforcement {
        &plan.statuses.iter().find(|status| status.limit == limit).unwrap().enforcement
    }

    #[test]
    fn defaults_report_what_is_not_held() {
        let plan = plan_limits(&defaults(), &defaults(), false).unwrap();
        assert!(matches!(status(&plan, "memory"), Enforcement::NotEnforced { .. }));
        assert!(matches!(status(&plan, "max_procs"), Enforcement::NotEnforced { .. }));
        assert!(matches!(status(&plan, "tmp_size"), Enforcement::NotEnforced { .. }));
        assert_eq!(status(&plan, "max_file_size"), &Enforcement::Held { by: "RLIMIT_FSIZE" });
        assert!(plan.rlimits.contains(&Rlimit { resource: Resource::Core, value: 0 }));
        assert!(plan.rlimits.contains(&Rlimit { resource: Resource::OpenFiles, value: 65536 }));
    }

    #[test]
    fn set_limits_map_to_rlimits_and_clock() {
        let mut limits = defaults();
        limits.timeout = Some(Duration::from_secs(30));
        limits.cpu_time = Some(Duration::from_millis(1500));
        limits.max_output = Some(1 << 20);
        let plan = plan_limits(&limits, &defaults(), false).unwrap();
        assert_eq!(plan.timeout, Some(Duration::from_secs(30)));
        assert_eq!(plan.max_output, Some(1 << 20));
        assert!(plan.rlimits.contains(&Rlimit { resource: Resource::Cpu, value: 2 }));
        assert_eq!(status(&plan, "cpu_time"), &Enforcement::PerProcess { by: "RLIMIT_CPU" });
    }

    #[test]
    fn unsupported_limits_the_user_set_are_refused() {
        let mut memory = defaults();
        memory.memory = Some(1 << 30);
        let mut processes = defaults();
        processes.max_procs = Some(10);
        let mut cpus = defaults();
        cpus.cpus_milli = Some(1500);
        for (limits, limit) in [(memory, "memory"), (processes, "max_procs"), (cpus, "cpus")] {
            let error = plan_limits(&limits, &defaults(), false).unwrap_err();
            assert!(matches!(error, LimitsError::Unsupported { limit: refused, .. } if refused == limit), "{error}");
            let degraded = plan_limits(&limits, &defaults(), true).unwrap();
            assert!(matches!(status(&degraded, limit), Enforcement::NotEnforced { .. }));
        }
    }

    #[test]
    fn unlimited_needs_no_status() {
        let plan = plan_limits(&Limits::default(), &defaults(), false).unwrap();
        assert!(plan.statuses.is_empty());
        assert_eq!(plan.rlimits, vec![Rlimit { resource: Resource::Core, value: 0 }]);
    }
}
