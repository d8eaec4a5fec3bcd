pub mod harness;
pub mod smoke;
pub mod failclosed;
pub mod process;
pub mod guards;
pub mod filesystem;
pub mod git;
pub mod syscalls;
