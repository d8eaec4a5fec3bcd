pub mod harness;
pub mod smoke;
pub mod failclosed;
