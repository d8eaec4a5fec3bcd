//! Prints the Seatbelt profile palisade generates for the current directory on this machine, so
//! that it can be read, or applied with `sandbox-exec` when a conformance step in
//! `docs/macos.md` fails. The gaps and the limits go to standard error.
//!
//! ```text
//! cargo run -p palisade-macos --example print_profile -- [--profile NAME] [--net MODE]
//!     [--policy FILE] [--workspace DIR] [--proxy-port PORT] [--allow-listen PORT] > run.sb
//! ```

use std::path::PathBuf;
use std::process::ExitCode;

use palisade_macos::{generate, plan_limits, HostFileSystem, Machine, Request};
use palisade_policy::{resolve, Context, Limits, Overrides, RawPolicy};

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("print_profile: {message}");
            ExitCode::from(2)
        }
    }
}

fn run() -> Result<(), String> {
    let mut overrides = Overrides::default();
    let mut policy_file = None;
    let mut proxy_port = None;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--profile" => overrides.profile = Some(value()?),
            "--net" => overrides.net = Some(value()?),
            "--policy" => policy_file = Some(PathBuf::from(value()?)),
            "--workspace" => overrides.workspace = Some(PathBuf::from(value()?)),
            "--allow-listen" => overrides.allow_listen.push(value()?),
            "--proxy-port" => proxy_port = Some(value()?.parse::<u16>().map_err(|error| format!("invalid --proxy-port: {error}"))?),
            other => return Err(format!("unknown argument {other}")),
        }
    }

    let raw = match &policy_file {
        Some(path) => RawPolicy::from_file(path).map_err(|error| error.to_string())?,
        None => RawPolicy::default(),
    };
    let context = Context::from_process().map_err(|error| format!("failed to read the current directory: {error}"))?;
    let policy = resolve(&raw, &overrides, &context).map_err(|error| error.to_string())?;

    // The per-user directories are siblings below /var/folders: T for temporary files, C for
    // caches. The stage will ask confstr(3) for them instead.
    let temp_dir = std::env::temp_dir();
    let cache_dir = if temp_dir.ends_with("T") { temp_dir.with_file_name("C") } else { temp_dir.clone() };
    let path_dirs = std::env::var_os("PATH").map(|path| std::env::split_paths(&path).collect()).unwrap_or_default();
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |elapsed| elapsed.as_nanos());
    let machine = Machine {
        home: policy.home.clone(),
        temp_dir,
        cache_dir,
        path_dirs,
        proxy_port,
        run_id: format!("{:016x}{:08x}", nanos as u64, std::process::id()),
    };

    let request = Request::from_policy(&policy, &machine, &HostFileSystem::new()).map_err(|error| error.to_string())?;
    let profile = generate(&request).map_err(|error| error.to_string())?;
    print!("{}", profile.text);

    for gap in &request.gaps {
        eprintln!("gap: {}: {}", gap.what, gap.consequence);
    }
    let limits = plan_limits(&policy.limits, &Limits::defaults(context.memory_total), true).map_err(|error| error.to_string())?;
    for status in &limits.statuses {
        eprintln!("limit {}: {:?}", status.limit, status.enforcement);
    }
    eprintln!("TMPDIR for the command: {}", request.temp_dir.display());
    Ok(())
}
