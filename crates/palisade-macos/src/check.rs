//! `palisade check` on macOS: which protections this Mac offers the current user, built from
//! facts that `sys::check` gathers, so that the decisions are tested on every platform.

/// The facts `sys::check` found on this machine.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Facts {
    /// macOS's version (`kern.osproductversion`), if it could be read.
    pub os_version: Option<String>,
    /// Whether palisade itself runs inside a Seatbelt sandbox, where it can apply none.
    pub sandboxed: bool,
    /// The outcome of running `/usr/bin/true` as `palisade run` does, under the profile
    /// generated from the default policy for a scratch workspace, or `None` when that was not
    /// tried (inside another sandbox).
    pub profile_applied: Option<Result<(), String>>,
    /// The name of palisade's parent process, for the message about nesting.
    pub parent: Option<String>,
    /// Whether `/usr/bin/log` exists, which the report's denials are read with.
    pub log_tool: bool,
}

/// One line of the check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layer {
    pub name: &'static str,
    pub available: bool,
    /// Whether `palisade run` refuses to run without it.
    pub required: bool,
    pub detail: String,
    /// The step that makes it available; empty when nothing can.
    pub fix: String,
}

/// Lists the layers of a confined run on this machine, the limits macOS cannot hold included.
pub fn layers(facts: &Facts) -> Vec<Layer> {
    let version = facts.os_version.as_deref().map_or_else(|| "macOS of unknown version".to_owned(), |version| format!("macOS {version}"));
    let seatbelt = if facts.sandboxed {
        let parent = facts.parent.as_deref().map_or_else(String::new, |parent| format!(" (its parent process is {parent:?})"));
        Layer {
            name: "seatbelt",
            available: false,
            required: true,
            detail: format!("palisade runs inside a Seatbelt sandbox already{parent}, and macOS applies no second one inside it"),
            fix: "run palisade outside that sandbox: from a terminal, or from a tool configured to start it unsandboxed".into(),
        }
    } else if let Some(Err(reason)) = &facts.profile_applied {
        Layer {
            name: "seatbelt",
            available: false,
            required: true,
            detail: format!("{version}: /usr/bin/true failed under the default policy's profile: {reason}"),
            fix: "none known; please report this output, because palisade cannot confine commands on this Mac".into(),
        }
    } else {
        let checked = if facts.profile_applied.is_some() { ", checked by running /usr/bin/true under the default policy's profile" } else { "" };
        Layer {
            name: "seatbelt",
            available: true,
            required: true,
            detail: format!("{version}: sandbox_init applies palisade's profile to each command{checked}"),
            fix: String::new(),
        }
    };
    let log = Layer {
        name: "log",
        available: facts.log_tool,
        required: false,
        detail: if facts.log_tool {
            "/usr/bin/log streams sandbox denials into the run report (best effort)".into()
        } else {
            "/usr/bin/log is missing, so the run report lists no sandbox denials".into()
        },
        fix: String::new(),
    };
    let not_held = |name: &'static str, detail: &str| Layer { name, available: false, required: false, detail: detail.into(), fix: String::new() };
    vec![
        seatbelt,
        Layer {
            name: "rlimits",
            available: true,
            required: true,
            detail: "per-process limits: cpu_time, max_file_size, max_open_files; no core dumps".into(),
            fix: String::new(),
        },
        Layer {
            name: "tree-kill",
            available: true,
            required: true,
            detail: "the run's marker in its profile finds every process of it, also after setsid, for the timeout and the end of the run".into(),
            fix: String::new(),
        },
        log,
        not_held("memory", "not enforced: macOS enforces neither RLIMIT_AS nor RLIMIT_DATA"),
        not_held("max_procs", "not enforced: RLIMIT_NPROC counts every process of the user, not the run's"),
        not_held("cpus", "not enforced: macOS has no CPU bandwidth limit for a group of processes"),
        not_held("tmp_size", "not enforced: the run's temporary directory is on the disk"),
    ]
}

/// Returns whether the default policy runs: every required layer is available. The limits
/// macOS cannot hold are listed in each run's report as not enforced.
pub fn default_policy_runs(layers: &[Layer]) -> bool {
    layers.iter().all(|layer| layer.available || !layer.required)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_palisade_cannot_run() {
        let facts = Facts { os_version: Some("15.1".into()), sandboxed: true, parent: Some("Code Helper".into()), log_tool: true, profile_applied: None };
        let layers = layers(&facts);
        assert!(!default_policy_runs(&layers));
        let seatbelt = &layers[0];
        assert!(seatbelt.detail.contains("\"Code Helper\""), "{}", seatbelt.detail);
        assert!(seatbelt.fix.starts_with("run palisade outside"), "{}", seatbelt.fix);
    }

    #[test]
    fn plain_mac_lists_unheld_limits() {
        let layers = layers(&Facts { os_version: Some("15.1".into()), log_tool: false, profile_applied: Some(Ok(())), ..Facts::default() });
        assert!(default_policy_runs(&layers));
        assert!(layers[0].detail.starts_with("macOS 15.1"), "{}", layers[0].detail);
        assert!(layers[0].detail.ends_with("checked by running /usr/bin/true under the default policy's profile"), "{}", layers[0].detail);
        let not_held: Vec<&str> = layers.iter().filter(|layer| !layer.available).map(|layer| layer.name).collect();
        assert_eq!(not_held, ["log", "memory", "max_procs", "cpus", "tmp_size"]);
    }

    #[test]
    fn failed_profile_stops_runs() {
        let facts = Facts { profile_applied: Some(Err("sandbox_init rejected the profile: bad".into())), ..Facts::default() };
        let layers = layers(&facts);
        assert!(!default_policy_runs(&layers));
        assert!(layers[0].detail.ends_with("sandbox_init rejected the profile: bad"), "{}", layers[0].detail);
    }
}
