//! A `windows-runner` for the tests of the handoff between palisade and its runner, which Wine
//! can run: it gives the command a duplicate of its own token, so it confines nothing. The
//! tests find it beside their own executable, because `cargo test` builds examples too.

#[cfg(windows)]
fn main() {
    use palisade_windows::sys::run::{duplicate_own_token, runner_main_with};
    std::process::exit(runner_main_with(duplicate_own_token) as i32);
}

#[cfg(not(windows))]
fn main() {
    eprintln!("runner_for_tests is a Windows program");
    std::process::exit(2);
}
