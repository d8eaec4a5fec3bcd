//! A model of how Seatbelt decides, so that tests can state what a profile is for ("`.env`
//! is unreadable", "`rm` inside the workspace works") instead of comparing text.
//!
//! The model follows two rules that other Seatbelt tools report and rely on. palisade has not
//! verified them on a Mac; the conformance steps in `docs/macos.md` do:
//!
//! 1. A rule for an operation (`file-read-data`) is more specific than a wildcard that covers
//!    it (`file-read*`), which is more specific than a shorter wildcard (`file*`), which is more
//!    specific than `default`. The most specific matching rules decide.
//! 2. Among those, the last one wins.
//!
//! `localhost` in an address filter matches loopback addresses and, as reported against
//! another tool, the wildcard address of an unbound socket. Regex filters are compiled with
//! Rust's regex syntax, which agrees with Seatbelt's on the subset palisade writes (anchors,
//! classes, escaped characters, `+`, and the group `(/|$)` that ends a regex of a path and
//! everything below it). Like Seatbelt, the model compares paths case-sensitively: `.GIT` is not `.git`. The model reads only the vocabulary of
//! [`OPERATIONS`] and the filters palisade writes, and rejects anything else, so a misspelt
//! operation fails a test.

use std::collections::HashMap;

use regex_automata::meta::Regex;

use crate::reader::{self, Expr, ReadError};

/// The operations the model reads: those palisade writes, their wildcards, and the specific
/// operations tests query.
pub const OPERATIONS: &[&str] = &[
    "default",
    "file*",
    "file-read*",
    "file-read-data",
    "file-read-metadata",
    "file-read-xattr",
    "file-write*",
    "file-write-create",
    "file-write-data",
    "file-write-flags",
    "file-write-mode",
    "file-write-owner",
    "file-write-setugid",
    "file-write-times",
    "file-write-unlink",
    "file-write-xattr",
    "file-ioctl",
    "file-link",
    "file-clone",
    "file-map-executable",
    "process-exec",
    "process-fork",
    "process-info*",
    "signal",
    "sysctl-read",
    "sysctl-write",
    "mach-lookup",
    "mach-host*",
    "mach-host-exception-port-set",
    "mach-host-special-port-set",
    "ipc-posix-sem",
    "ipc-posix-shm*",
    "ipc-posix-shm-read*",
    "ipc-posix-shm-read-data",
    "ipc-posix-shm-write-data",
    "user-preference-read",
    "iokit-open",
    "system-socket",
    "pseudo-tty",
    "network*",
    "network-outbound",
    "network-inbound",
    "network-bind",
];

/// The object an operation is applied to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target<'a> {
    /// An operation without an object, such as `process-fork`.
    Nothing,
    /// A file path, as the kernel resolved it.
    Path(&'a str),
    /// A Mach service, sysctl, POSIX IPC or IOKit class name.
    Name(&'a str),
    /// An IP socket: the peer for outbound traffic, the socket's own address for bind and
    /// inbound. An unbound socket's own address is `0.0.0.0`.
    Ip { remote: Option<Address<'a>>, local: Option<Address<'a>> },
    /// A Unix socket's path: the peer's when connecting, the socket's own when binding.
    UnixSocket { remote: Option<&'a str>, local: Option<&'a str> },
    /// A new socket's domain (`AF_INET`) and protocol.
    Socket { domain: &'a str, protocol: u32 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Address<'a> {
    pub host: &'a str,
    pub port: u16,
}

impl<'a> Target<'a> {
    /// Returns the target of a connection or datagram to `host:port` from an unbound socket.
    pub fn connect(host: &'a str, port: u16) -> Target<'a> {
        Target::Ip { remote: Some(Address { host, port }), local: Some(Address { host: "0.0.0.0", port: 0 }) }
    }

    /// Returns the target of binding to or accepting on `host:port`.
    pub fn listen(host: &'a str, port: u16) -> Target<'a> {
        Target::Ip { remote: None, local: Some(Address { host, port }) }
    }
}

/// The outcome of one query, with the index of the deciding rule among the profile's rules
/// (`None` when no rule matched, which Seatbelt treats as allowed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    pub rule: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ModelError {
    #[error(transparent)]
    Read(#[from] ReadError),
    #[error("form {index} ({form}) is not a rule the model reads: {reason}")]
    Form { index: usize, form: String, reason: String },
    #[error("rule {rule} has the filter {filter}, which does not apply to {target}")]
    Unsupported { rule: usize, filter: String, target: String },
}

/// One `allow` or `deny` form.
#[derive(Debug, Clone)]
pub struct ModelRule {
    pub allow: bool,
    pub operations: Vec<String>,
    pub filters: Vec<Expr>,
    /// The form's text, for messages.
    pub text: String,
}

/// A profile read into rules.
#[derive(Debug, Clone)]
pub struct Model {
    pub rules: Vec<ModelRule>,
    regexes: HashMap<String, Regex>,
}

impl Model {
    /// Reads `text`, checking every operation and filter against the model's vocabulary.
    pub fn parse(text: &str) -> Result<Model, ModelError> {
        let mut rules = Vec::new();
        let mut regexes = HashMap::new();
        for (index, form) in reader::read(text)?.iter().enumerate() {
            let invalid = |reason: String| ModelError::Form { index, form: form.to_string(), reason };
            let items = form.as_list().ok_or_else(|| invalid("not a list".into()))?;
            let head = items.first().and_then(Expr::as_symbol).ok_or_else(|| invalid("no keyword".into()))?;
            match head {
                "version" if items.get(1) == Some(&Expr::Number(1)) && items.len() == 2 => continue,
                "allow" | "deny" => {}
                _ => return Err(invalid(format!("unknown keyword {head}"))),
            }
            let mut operations = Vec::new();
            let mut filters = Vec::new();
            for item in &items[1..] {
                match item {
                    Expr::Symbol(operation) if OPERATIONS.contains(&operation.as_str()) => operations.push(operation.clone()),
                    Expr::Symbol(operation) => return Err(invalid(format!("unknown operation {operation}"))),
                    Expr::List(_) if is_modifier(item) => {}
                    Expr::List(_) => {
                        check_filter(item, &mut regexes).map_err(invalid)?;
                        filters.push(item.clone());
                    }
                    _ => return Err(invalid(format!("unexpected {item}"))),
                }
            }
            if operations.is_empty() {
                return Err(invalid("no operation".into()));
            }
            rules.push(ModelRule { allow: head == "allow", operations, filters, text: form.to_string() });
        }
        Ok(Model { rules, regexes })
    }

    /// Decides `operation` on `target`.
    pub fn decide(&self, operation: &str, target: &Target) -> Result<Decision, ModelError> {
        let mut best: Option<(usize, usize)> = None;
        for (index, rule) in self.rules.iter().enumerate() {
            let Some(specificity) = rule.operations.iter().filter_map(|covered| operation_specificity(covered, operation)).max() else {
                continue;
            };
            if !self.rule_matches(index, rule, target)? {
                continue;
            }
            if best.is_none_or(|(best_specificity, _)| specificity >= best_specificity) {
                best = Some((specificity, index));
            }
        }
        Ok(match best {
            Some((_, index)) => Decision { allowed: self.rules[index].allow, rule: Some(index) },
            None => Decision { allowed: true, rule: None },
        })
    }

    /// Returns whether `operation` on `target` is allowed. A query the model cannot decide is
    /// an error.
    pub fn allows(&self, operation: &str, target: &Target) -> Result<bool, ModelError> {
        self.decide(operation, target).map(|decision| decision.allowed)
    }

    /// Returns whether `operation` on the file `path` is allowed.
    pub fn allows_path(&self, operation: &str, path: &str) -> Result<bool, ModelError> {
        self.allows(operation, &Target::Path(path))
    }

    fn rule_matches(&self, index: usize, rule: &ModelRule, target: &Target) -> Result<bool, ModelError> {
        if rule.filters.is_empty() {
            return Ok(true);
        }
        for filter in &rule.filters {
            if self.filter_matches(filter, target).map_err(|filter| ModelError::Unsupported {
                rule: index,
                filter,
                target: format!("{target:?}"),
            })? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Matches one filter; an error carries the filter that does not apply to `target`.
    fn filter_matches(&self, filter: &Expr, target: &Target) -> Result<bool, String> {
        let items = filter.as_list().unwrap_or_default();
        let name = items.first().and_then(Expr::as_symbol).unwrap_or_default();
        let string = items.get(1).and_then(Expr::as_str).unwrap_or_default();
        let unsupported = || Err(filter.to_string());
        match (name, target) {
            ("require-all", _) => {
                for inner in &items[1..] {
                    if !self.filter_matches(inner, target)? {
                        return Ok(false);
                    }
                }
                Ok(true)
            }
            ("require-any", _) => {
                for inner in &items[1..] {
                    if self.filter_matches(inner, target)? {
                        return Ok(true);
                    }
                }
                Ok(false)
            }
            ("require-not", _) => Ok(!self.filter_matches(&items[1], target)?),
            ("literal" | "path-literal", Target::Path(path)) => Ok(*path == string),
            ("subpath", Target::Path(path)) => Ok(is_below(path, string)),
            ("regex" | "path-regex", Target::Path(path)) => Ok(self.regexes[string].is_match(*path)),
            ("global-name" | "sysctl-name" | "iokit-user-client-class", Target::Name(value)) => Ok(*value == string),
            ("sysctl-name-prefix" | "ipc-posix-name-prefix", Target::Name(value)) => Ok(value.starts_with(string)),
            ("remote" | "local", Target::Ip { remote, local }) if items.get(1).and_then(Expr::as_symbol) == Some("ip") => {
                let address = if name == "remote" { remote } else { local };
                let pattern = items.get(2).and_then(Expr::as_str).unwrap_or_default();
                Ok(address.is_some_and(|address| address_matches(pattern, &address)))
            }
            ("remote" | "local", Target::UnixSocket { remote, local }) if items.get(1).and_then(Expr::as_symbol) == Some("unix-socket") => {
                let path = if name == "remote" { remote } else { local };
                match path {
                    Some(path) => self.filter_matches(&items[2], &Target::Path(path)),
                    None => Ok(false),
                }
            }
            ("remote" | "local", Target::Ip { .. } | Target::UnixSocket { .. }) => Ok(false),
            ("socket-domain", Target::Socket { domain, .. }) => Ok(items.get(1).and_then(Expr::as_symbol) == Some(domain)),
            ("socket-protocol", Target::Socket { protocol, .. }) => Ok(items.get(1) == Some(&Expr::Number(i64::from(*protocol)))),
            _ => unsupported(),
        }
    }
}

/// Returns how specific the operation name `covered` is for `operation`, or `None` if it does
/// not cover it: the operation itself is the most specific, `default` the least, a wildcard
/// in between by the length of its prefix.
pub fn operation_specificity(covered: &str, operation: &str) -> Option<usize> {
    if covered == operation {
        Some(usize::MAX)
    } else if covered == "default" {
        Some(0)
    } else {
        let prefix = covered.strip_suffix('*')?;
        operation.starts_with(prefix).then_some(prefix.len())
    }
}

fn is_below(path: &str, root: &str) -> bool {
    path == root || root == "/" || path.strip_prefix(root).is_some_and(|rest| rest.starts_with('/'))
}

/// Matches `HOST:PORT` (HOST is `*` or `localhost`, PORT is `*` or a number) against an
/// address.
fn address_matches(pattern: &str, address: &Address) -> bool {
    let Some((host, port)) = pattern.rsplit_once(':') else { return false };
    let host_matches = match host {
        "*" => true,
        "localhost" => is_loopback_or_unspecified(address.host),
        _ => false,
    };
    let port_matches = port == "*" || port.parse::<u16>() == Ok(address.port);
    host_matches && port_matches
}

fn is_loopback_or_unspecified(host: &str) -> bool {
    match host.parse::<std::net::IpAddr>() {
        Ok(ip) => ip.is_loopback() || ip.is_unspecified(),
        Err(_) => host == "localhost",
    }
}

fn is_modifier(filter: &Expr) -> bool {
    filter.as_list().and_then(|items| items.first()).and_then(Expr::as_symbol) == Some("with")
}

/// Checks a filter's shape and compiles its regexes.
fn check_filter(filter: &Expr, regexes: &mut HashMap<String, Regex>) -> Result<(), String> {
    let items = filter.as_list().ok_or_else(|| format!("{filter} is not a filter"))?;
    let name = items.first().and_then(Expr::as_symbol).ok_or_else(|| format!("{filter} has no name"))?;
    let one_string = || match items {
        [_, Expr::Str(_)] => Ok(()),
        _ => Err(format!("{filter} takes one string")),
    };
    match name {
        "literal" | "subpath" | "path-literal" | "global-name" | "sysctl-name" | "sysctl-name-prefix" | "iokit-user-client-class"
        | "ipc-posix-name-prefix" => one_string(),
        "regex" | "path-regex" => {
            one_string()?;
            let source = items[1].as_str().unwrap_or_default();
            let regex = Regex::new(source).map_err(|error| format!("{filter}: {error}"))?;
            regexes.insert(source.to_owned(), regex);
            Ok(())
        }
        "require-all" | "require-any" if items.len() > 1 => items[1..].iter().try_for_each(|inner| check_filter(inner, regexes)),
        "require-not" if items.len() == 2 => check_filter(&items[1], regexes),
        "target" if matches!(items, [_, Expr::Symbol(target)] if target == "self" || target == "same-sandbox") => Ok(()),
        "socket-domain" if matches!(items, [_, Expr::Symbol(domain)] if domain.starts_with("AF_")) => Ok(()),
        "socket-protocol" if matches!(items, [_, Expr::Number(_)]) => Ok(()),
        "remote" | "local" => match items {
            [_, Expr::Symbol(kind), Expr::Str(pattern)] if kind == "ip" => check_address(pattern).map_err(|reason| format!("{filter}: {reason}")),
            [_, Expr::Symbol(kind), inner] if kind == "unix-socket" => check_filter(inner, regexes),
            _ => Err(format!("{filter} is not an ip or unix-socket filter")),
        },
        _ => Err(format!("unknown filter {filter}")),
    }
}

/// Seatbelt accepts only `*` and `localhost` as the host of an address filter; any other host
/// makes the whole profile fail to compile.
fn check_address(pattern: &str) -> Result<(), String> {
    let (host, port) = pattern.rsplit_once(':').ok_or("expected HOST:PORT")?;
    if host != "*" && host != "localhost" {
        return Err(format!("the host {host:?} is neither * nor localhost"));
    }
    if port != "*" && port.parse::<u16>().is_err() {
        return Err(format!("the port {port:?} is neither * nor a port number"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(text: &str) -> Model {
        Model::parse(text).unwrap()
    }

    #[test]
    fn last_matching_rule_wins() {
        let profile = model("(version 1)(deny default)(allow file-read* (subpath \"/a\"))(deny file-read* (subpath \"/a/b\"))");
        assert!(profile.allows_path("file-read-data", "/a/x").unwrap());
        assert!(!profile.allows_path("file-read-data", "/a/b/c").unwrap());
        assert!(!profile.allows_path("file-read-data", "/other").unwrap());
    }

    // Reported by three other projects: a wildcard deny does not cut a more specific allow,
    // whatever the order.
    #[test]
    fn specific_operation_beats_wildcard() {
        let profile = model("(deny default)(allow file-read-data (subpath \"/\"))(deny file-read* (literal \"/x\"))");
        assert!(profile.allows_path("file-read-data", "/x").unwrap());
        let profile = model("(deny default)(allow file-read-data (subpath \"/\"))(deny file-read-data (literal \"/x\"))");
        assert!(!profile.allows_path("file-read-data", "/x").unwrap());
    }

    #[test]
    fn require_not_and_regex_apply() {
        let profile = model(
            r#"(deny default)(allow file-write* (require-all (subpath "/w") (require-not (literal "/w/.git/hooks")) (require-not (regex "^/w/[.]git/hooks/"))))"#,
        );
        assert!(profile.allows_path("file-write-create", "/w/src/main.rs").unwrap());
        assert!(!profile.allows_path("file-write-create", "/w/.git/hooks").unwrap());
        assert!(!profile.allows_path("file-write-create", "/w/.git/hooks/pre-commit").unwrap());
        assert!(profile.allows_path("file-write-create", "/w/.git/hooksx").unwrap());
    }

    // https://github.com/anthropic-experimental/sandbox-runtime/issues/131: a `local ip`
    // filter on an outbound rule matched the unbound socket's wildcard address, so it let
    // every connection out.
    #[test]
    fn local_filter_on_outbound_admits_every_destination() {
        let profile = model(r#"(deny default)(allow network-outbound (local ip "localhost:*"))"#);
        assert!(profile.allows("network-outbound", &Target::connect("10.99.0.1", 80)).unwrap());
        let profile = model(r#"(deny default)(allow network-outbound (remote ip "localhost:8080"))"#);
        assert!(!profile.allows("network-outbound", &Target::connect("10.99.0.1", 80)).unwrap());
        assert!(profile.allows("network-outbound", &Target::connect("127.0.0.1", 8080)).unwrap());
        assert!(!profile.allows("network-outbound", &Target::connect("127.0.0.1", 8081)).unwrap());
    }

    #[test]
    fn unknown_vocabulary_is_rejected() {
        assert!(matches!(Model::parse("(allow file-reed*)"), Err(ModelError::Form { .. })));
        assert!(matches!(Model::parse("(allow file-read* (subpaht \"/a\"))"), Err(ModelError::Form { .. })));
        assert!(matches!(Model::parse("(allow network-outbound (remote ip \"10.0.0.1:80\"))"), Err(ModelError::Form { .. })));
        assert!(matches!(Model::parse("(version 2)"), Err(ModelError::Form { .. })));
    }

    #[test]
    fn filters_that_do_not_apply_are_errors() {
        let profile = model("(deny default)(allow file-read* (global-name \"x\"))");
        assert!(matches!(profile.allows_path("file-read-data", "/x"), Err(ModelError::Unsupported { .. })));
    }

    #[test]
    fn no_matching_rule_allows() {
        let profile = model("(allow process-fork)");
        assert_eq!(profile.decide("file-read-data", &Target::Path("/x")).unwrap(), Decision { allowed: true, rule: None });
    }
}
