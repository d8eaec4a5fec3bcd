//! A generated profile as data, and its rendering as SBPL text.
//!
//! The generator builds [`Rule`]s so that tests can inspect them; [`render`] is the only code
//! that writes profile text, and it writes every string through [`crate::escape`].

use std::fmt::Write as _;

use crate::escape::{self, EscapeError};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Allow,
    Deny,
}

impl Action {
    pub fn keyword(self) -> &'static str {
        match self {
            Action::Allow => "allow",
            Action::Deny => "deny",
        }
    }
}

/// One `(allow ...)` or `(deny ...)` form. It applies to each of `operations` when any of
/// `filters` matches, or always when there is none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub action: Action,
    pub operations: Vec<&'static str>,
    pub filters: Vec<Filter>,
}

impl Rule {
    pub fn allow(operations: &[&'static str], filters: Vec<Filter>) -> Rule {
        Rule { action: Action::Allow, operations: operations.to_vec(), filters }
    }

    pub fn deny(operations: &[&'static str], filters: Vec<Filter>) -> Rule {
        Rule { action: Action::Deny, operations: operations.to_vec(), filters }
    }
}

/// The filters palisade writes. Strings hold the value itself; rendering escapes them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Filter {
    /// Exactly this path.
    Literal(String),
    /// This path and everything below it.
    Subpath(String),
    /// A regular expression matched against the whole path; it carries its own anchors.
    Regex(String),
    RequireAll(Vec<Filter>),
    RequireNot(Box<Filter>),
    /// A Mach service name, for `mach-lookup`.
    GlobalName(&'static str),
    SysctlName(&'static str),
    SysctlNamePrefix(&'static str),
    /// `self` or `same-sandbox`, for process and signal operations.
    Target(&'static str),
    /// `AF_UNIX`, `AF_INET`, `AF_INET6` or `AF_SYSTEM`, for `system-socket`.
    SocketDomain(&'static str),
    SocketProtocol(u32),
    IokitUserClientClass(&'static str),
    IpcPosixNamePrefix(&'static str),
    /// The peer of a connection or datagram: `HOST:PORT`, where HOST is `localhost` or `*`.
    RemoteIp(String),
    /// The socket's own address, for bind and inbound operations only.
    LocalIp(String),
    RemoteUnixSocket(Box<Filter>),
    LocalUnixSocket(Box<Filter>),
    /// Exactly this socket path, inside a unix-socket filter.
    PathLiteral(String),
    /// A regular expression matched against a socket's whole path, inside a unix-socket filter.
    PathRegex(String),
}

impl Filter {
    pub fn literal(path: &str) -> Filter {
        Filter::Literal(path.to_owned())
    }

    pub fn subpath(path: &str) -> Filter {
        Filter::Subpath(path.to_owned())
    }
}

/// Appends `rule` as SBPL, one filter a line when it has several.
pub fn render(rule: &Rule, out: &mut String) -> Result<(), EscapeError> {
    out.push('(');
    out.push_str(rule.action.keyword());
    for operation in &rule.operations {
        out.push(' ');
        out.push_str(operation);
    }
    match rule.filters.as_slice() {
        [] => {}
        [single] => {
            out.push(' ');
            render_filter(single, out)?;
        }
        several => {
            for filter in several {
                out.push_str("\n  ");
                render_filter(filter, out)?;
            }
        }
    }
    out.push_str(")\n");
    Ok(())
}

fn render_filter(filter: &Filter, out: &mut String) -> Result<(), EscapeError> {
    let string = |name: &str, value: &str, out: &mut String| -> Result<(), EscapeError> {
        let _ = write!(out, "({name} {})", escape::string_literal(value)?);
        Ok(())
    };
    match filter {
        Filter::Literal(path) => string("literal", path, out),
        Filter::Subpath(path) => string("subpath", path, out),
        Filter::Regex(regex) => string("regex", regex, out),
        Filter::PathLiteral(path) => string("path-literal", path, out),
        Filter::PathRegex(regex) => string("path-regex", regex, out),
        Filter::GlobalName(name) => string("global-name", name, out),
        Filter::SysctlName(name) => string("sysctl-name", name, out),
        Filter::SysctlNamePrefix(prefix) => string("sysctl-name-prefix", prefix, out),
        Filter::IokitUserClientClass(class) => string("iokit-user-client-class", class, out),
        Filter::IpcPosixNamePrefix(prefix) => string("ipc-posix-name-prefix", prefix, out),
        Filter::RemoteIp(address) => string("remote ip", address, out),
        Filter::LocalIp(address) => string("local ip", address, out),
        Filter::Target(target) => {
            let _ = write!(out, "(target {target})");
            Ok(())
        }
        Filter::SocketDomain(domain) => {
            let _ = write!(out, "(socket-domain {domain})");
            Ok(())
        }
        Filter::SocketProtocol(protocol) => {
            let _ = write!(out, "(socket-protocol {protocol})");
            Ok(())
        }
        // A root with its protected paths reads best one filter a line.
        Filter::RequireAll(filters) if filters.len() > 2 => {
            out.push_str("(require-all");
            for filter in filters {
                out.push_str("\n    ");
                render_filter(filter, out)?;
            }
            out.push(')');
            Ok(())
        }
        Filter::RequireAll(filters) => nested("require-all", filters, out),
        Filter::RequireNot(inner) => nested("require-not", std::slice::from_ref(inner), out),
        Filter::RemoteUnixSocket(inner) => nested("remote unix-socket", std::slice::from_ref(inner), out),
        Filter::LocalUnixSocket(inner) => nested("local unix-socket", std::slice::from_ref(inner), out),
    }
}

fn nested(name: &str, filters: &[Filter], out: &mut String) -> Result<(), EscapeError> {
    out.push('(');
    out.push_str(name);
    for filter in filters {
        out.push(' ');
        render_filter(filter, out)?;
    }
    out.push(')');
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(rule: &Rule) -> String {
        let mut out = String::new();
        render(rule, &mut out).unwrap();
        out
    }

    #[test]
    fn rules_render_filters_inline_or_on_lines() {
        assert_eq!(text(&Rule::allow(&["process-fork"], vec![])), "(allow process-fork)\n");
        assert_eq!(
            text(&Rule::deny(&["file-read*", "file-write*"], vec![Filter::subpath("/Users/dev/.ssh")])),
            "(deny file-read* file-write* (subpath \"/Users/dev/.ssh\"))\n"
        );
        assert_eq!(
            text(&Rule::allow(&["mach-lookup"], vec![Filter::GlobalName("a"), Filter::GlobalName("b")])),
            "(allow mach-lookup\n  (global-name \"a\")\n  (global-name \"b\"))\n"
        );
    }

    #[test]
    fn nested_filters_render_in_place() {
        let filter = Filter::RequireAll(vec![
            Filter::subpath("/w"),
            Filter::RequireNot(Box::new(Filter::literal("/w/.git/hooks"))),
            Filter::RequireNot(Box::new(Filter::Regex("^/w/[.]git/hooks/".into()))),
        ]);
        assert_eq!(
            text(&Rule::allow(&["file-write*"], vec![filter])),
            "(allow file-write* (require-all\n    (subpath \"/w\")\n    (require-not (literal \"/w/.git/hooks\"))\n    (require-not (regex \"^/w/[.]git/hooks/\"))))\n"
        );
        let socket = Filter::RemoteUnixSocket(Box::new(Filter::PathLiteral("/private/var/run/mDNSResponder".into())));
        assert_eq!(
            text(&Rule::allow(&["network-outbound"], vec![socket])),
            "(allow network-outbound (remote unix-socket (path-literal \"/private/var/run/mDNSResponder\")))\n"
        );
    }

    #[test]
    fn strings_are_escaped_and_control_characters_rejected() {
        assert_eq!(text(&Rule::allow(&["file-read*"], vec![Filter::subpath("/a \"b\"\\c")])), "(allow file-read* (subpath \"/a \\\"b\\\"\\\\c\"))\n");
        let mut out = String::new();
        assert!(render(&Rule::allow(&["file-read*"], vec![Filter::subpath("/a\nb")]), &mut out).is_err());
    }
}
