pub mod harness;
pub mod smoke;
