//! Runs the macOS-only steps of the backend one at a time, for finding out which one fails
//! when a conformance step in `docs/macos.md` does:
//!
//! ```text
//! macos_probe nesting                       check whether this process runs inside a sandbox
//! macos_probe exec PROFILE -- COMMAND...    apply PROFILE with sandbox_init and exec COMMAND
//! macos_probe members RUN_ID ROOT_PID       list the processes of a run
//! macos_probe kill RUN_ID ROOT_PID          kill every process of a run
//! ```
//!
//! `COMMAND` is looked up in `PATH` as the stage does. `RUN_ID` is the id in the first line of
//! the profile.

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match probe::run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("macos_probe: {message}");
            ExitCode::from(2)
        }
    }
}

#[cfg(target_os = "macos")]
mod probe {
    use std::ffi::OsString;

    use palisade_macos::limits::{Resource, Rlimit};
    use palisade_macos::marker::{RunId, RunMarker};
    use palisade_macos::stage::{StageRequest, StageStatus};
    use palisade_macos::sys;
    use palisade_macos::tree::run_members;

    pub fn run(args: &[String]) -> Result<(), String> {
        match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
            ["nesting"] => {
                sys::check_not_nested_here().map_err(|error| error.to_string())?;
                println!("not inside a Seatbelt sandbox");
                Ok(())
            }
            ["exec", profile, "--", program, ..] => exec(profile, program, &args[3..]),
            ["members", run_id, root] => {
                let (marker, root) = parse_run(run_id, root)?;
                let snapshot = sys::list_processes().map_err(|error| format!("failed to list processes: {error}"))?;
                let own = std::process::id() as i32;
                for pid in run_members(&snapshot, root, own, &mut |pid| sys::is_run_member(pid, &marker)) {
                    let marked = sys::is_run_member(pid, &marker);
                    println!("{pid}{}", if marked { " (marker)" } else { "" });
                }
                Ok(())
            }
            ["kill", run_id, root] => {
                let (marker, root) = parse_run(run_id, root)?;
                let report = sys::kill_run(root, &marker);
                println!("killed {:?}, survivors {:?}", report.killed, report.survivors);
                match report.listing_error {
                    Some(error) => Err(format!("failed to list processes: {error}")),
                    None => Ok(()),
                }
            }
            _ => Err("expected nesting, exec PROFILE -- COMMAND..., members RUN_ID ROOT_PID or kill RUN_ID ROOT_PID".into()),
        }
    }

    fn parse_run(run_id: &str, root: &str) -> Result<(RunMarker, i32), String> {
        let run_id = RunId::parse(run_id)?;
        let root = root.parse().map_err(|_| format!("invalid process id {root:?}"))?;
        Ok((RunMarker::for_run(&run_id), root))
    }

    fn exec(profile: &str, program: &str, argv: &[String]) -> Result<(), String> {
        let text = std::fs::read_to_string(profile).map_err(|error| format!("failed to read {profile}: {error}"))?;
        let cwd = std::env::current_dir().map_err(|error| format!("failed to read the current directory: {error}"))?;
        let env = std::env::vars_os()
            .map(|(name, value)| {
                let mut entry = name;
                entry.push("=");
                entry.push(value);
                entry
            })
            .collect();
        let mut command: Vec<OsString> = vec![program.into()];
        command.extend(argv.iter().skip(1).map(OsString::from));
        let request = StageRequest { profile: Some(text), rlimits: vec![Rlimit { resource: Resource::Core, value: 0 }], cwd, argv: command, env };
        match sys::confine_and_exec(&request) {
            StageStatus::Failed { reason } | StageStatus::ExecFailed { reason, .. } => Err(reason),
        }
    }
}

#[cfg(not(target_os = "macos"))]
mod probe {
    pub fn run(_args: &[String]) -> Result<(), String> {
        Err("this probe calls macOS's sandbox and runs only on macOS".into())
    }
}
