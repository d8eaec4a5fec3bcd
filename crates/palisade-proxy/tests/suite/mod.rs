pub mod support;
pub mod connect;
pub mod forward;
pub mod socks5;
pub mod limits;
pub mod denials;
pub mod curl;
pub mod fuzz;
