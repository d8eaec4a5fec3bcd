//! Integration tests: each test runs a real proxy on 127.0.0.1 in its own runtime and talks to
//! it as a client would, with upstream servers on 127.0.0.1 or ::1 and a stub resolver.

mod suite;
