//! The Seatbelt profile of a [`Request`], in a fixed order of sections.
//!
//! Among rules for the same operation the last match wins, and a rule for a more specific
//! operation (`file-read-data`) beats one for a wildcard (`file-read*`) whatever their order.
//! The generator relies on both, so it keeps two promises that the tests check:
//!
//! 1. Every deny comes after every allow it cuts, and the sections after the denies allow no
//!    file operation. The late denies come last, and nothing follows them.
//! 2. A deny names every file operation that any allow names, so no allow is more specific
//!    than the deny that cuts it.
//!
//! The sections, in order:
//!
//! 0. the header: `(version 1)` and `(deny default)`;
//! 1. the platform: what every command needs;
//! 2. reads;
//! 3. writes, which leave protected paths out with `require-not`;
//! 4. hidden and protected paths, and their ancestors, which may not be renamed;
//! 5. the network;
//! 6. opt-in integrations (none exist yet);
//! 7. the late denies.
//!
//! Every deny, and every exception a writable root makes for a protected path, matches its
//! path in every ASCII case spelling ([`any_case_subpath`]). Seatbelt compares paths as
//! strings, case-sensitively, but APFS volumes are case-insensitive by default, so
//! `.GIT/hooks` opens the protected `.git/hooks`. Allows stay case-exact: a spelling they miss
//! is denied by default, which refuses too much rather than too little.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use crate::escape::{self, EscapeError};
use crate::canonical::starts_with_any_case;
use crate::platform;
use crate::request::{Network, Request};
use crate::sbpl::{self, Action, Filter, Rule};

/// The maximum number of filters in a profile. Seatbelt compiles every filter into the
/// profile's decision graph, and very large profiles are reported to compile slowly or crash
/// the compiler. The cap is an estimate, far above what a policy of a few hundred paths
/// needs.
pub const MAX_FILTERS: usize = 5000;

/// The sections of a profile, in the order they appear.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum SectionKind {
    Platform,
    Reads,
    Writes,
    Denies,
    Network,
    Integrations,
    LateDenies,
}

impl SectionKind {
    pub fn title(self) -> &'static str {
        match self {
            SectionKind::Platform => "1. Platform: processes, sysctls, Mach services, devices and system directories",
            SectionKind::Reads => "2. Reads",
            SectionKind::Writes => "3. Writes, without the protected paths",
            SectionKind::Denies => "4. Hidden and protected paths, and the ancestors that may not be renamed",
            SectionKind::Network => "5. Network",
            SectionKind::Integrations => "6. Opt-in integrations",
            SectionKind::LateDenies => "7. Late denies: nothing after this allows",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Section {
    pub kind: SectionKind,
    pub rules: Vec<Rule>,
}

/// A generated profile: its rules by section, and the text that is applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeatbeltProfile {
    pub sections: Vec<Section>,
    pub text: String,
}

impl SeatbeltProfile {
    /// Returns the rules of all sections, in order.
    pub fn rules(&self) -> impl Iterator<Item = (SectionKind, &Rule)> {
        self.sections.iter().flat_map(|section| section.rules.iter().map(move |rule| (section.kind, rule)))
    }

    /// Counts the filters, nested ones included.
    pub fn filter_count(&self) -> usize {
        self.rules().map(|(_, rule)| rule.filters.iter().map(count_filters).sum::<usize>()).sum()
    }
}

fn count_filters(filter: &Filter) -> usize {
    match filter {
        Filter::RequireAll(filters) => filters.iter().map(count_filters).sum(),
        Filter::RequireNot(inner) | Filter::RemoteUnixSocket(inner) | Filter::LocalUnixSocket(inner) => count_filters(inner),
        _ => 1,
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum GenerateError {
    #[error(transparent)]
    Escape(#[from] EscapeError),
    #[error("the profile would hold {count} filters, more than the {MAX_FILTERS} palisade generates; list fewer paths")]
    TooManyFilters { count: usize },
}

const READ: &str = "file-read*";
const READ_METADATA: &str = "file-read-metadata";
const WRITE: &str = "file-write*";
const WRITE_DATA: &str = "file-write-data";
const WRITE_UNLINK: &str = "file-write-unlink";
const IOCTL: &str = "file-ioctl";
const EXEC: &str = "process-exec";
const MAP_EXECUTABLE: &str = "file-map-executable";
/// Creating a hard link; a link to a hidden file would be a second, readable name for it.
const LINK: &str = "file-link";
/// `clonefile`, an APFS copy of a file.
const CLONE: &str = "file-clone";

/// Generates the profile of `request`. The same request always gives the same text.
pub fn generate(request: &Request) -> Result<SeatbeltProfile, GenerateError> {
    check_paths(request)?;
    let mut sections = vec![
        Section { kind: SectionKind::Platform, rules: platform_rules(request) },
        Section { kind: SectionKind::Reads, rules: read_rules(request) },
        Section { kind: SectionKind::Writes, rules: write_rules(request) },
    ];
    let allowed_operations = file_operations_allowed(&sections);
    sections.push(Section { kind: SectionKind::Denies, rules: deny_rules(request, &allowed_operations) });
    sections.push(Section { kind: SectionKind::Network, rules: network_rules(request) });
    sections.push(Section { kind: SectionKind::Integrations, rules: Vec::new() });
    sections.push(Section { kind: SectionKind::LateDenies, rules: late_deny_rules(request) });

    let profile = SeatbeltProfile { text: String::new(), sections };
    let count = profile.filter_count();
    if count > MAX_FILTERS {
        return Err(GenerateError::TooManyFilters { count });
    }
    let text = render(request, &profile.sections)?;
    Ok(SeatbeltProfile { text, ..profile })
}

fn render(request: &Request, sections: &[Section]) -> Result<String, EscapeError> {
    let network = match request.network {
        Network::None => "none".to_owned(),
        Network::Proxy { port } => format!("proxy at localhost:{port}"),
        Network::Full => "full".to_owned(),
    };
    let mut out = format!(
        "; palisade's Seatbelt profile for run {}: profile {}, network {network}.\n(version 1)\n(deny default)\n",
        request.run_id, request.profile,
    );
    for section in sections.iter().filter(|section| !section.rules.is_empty()) {
        out.push_str("\n;; ");
        out.push_str(section.kind.title());
        out.push('\n');
        for rule in &section.rules {
            sbpl::render(rule, &mut out)?;
        }
    }
    Ok(out)
}

/// Checks that every path of `request` is UTF-8, so that [`text`] never changes one.
fn check_paths(request: &Request) -> Result<(), EscapeError> {
    let lists = [&request.read_only, &request.writable, &request.hidden, &request.protected];
    for path in lists.into_iter().flatten() {
        escape::path_text(path)?;
    }
    Ok(())
}

fn text(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

fn subpaths<'a>(paths: impl IntoIterator<Item = &'a PathBuf>) -> Vec<Filter> {
    paths.into_iter().map(|path| Filter::Subpath(text(path))).collect()
}

/// Returns the regex of `path` and everything below it, in every ASCII case spelling.
///
/// The regex is `^P(/|$)`: it ends after the `/` that starts whatever is below `P`, so no `.`
/// has to match the rest of the path. In many regex dialects `.` does not match a newline, and
/// a name with one below `P` (`.git/hooks/a\nb`) would escape a `^P(/.*)?$` rule.
pub fn any_case_subpath_regex(path: &str) -> String {
    format!("^{}(/|$)", escape::regex_matching_any_case(path))
}

/// Returns a filter of `path` and everything below it, in every ASCII case spelling: the
/// filter of every hidden and protected path.
///
/// NOTE: the folding covers ASCII letters only. Other letters, and the Unicode normalisation
/// form (NFC or NFD), are matched as written, although APFS may treat both spellings as one.
fn any_case_subpath(path: &Path) -> Filter {
    Filter::Regex(any_case_subpath_regex(&text(path)))
}

/// Returns a filter of exactly `path`, in every ASCII case spelling.
fn any_case_literal(path: &Path) -> Filter {
    Filter::Regex(format!("^{}$", escape::regex_matching_any_case(&text(path))))
}

fn literals<'a>(paths: impl IntoIterator<Item = &'a String>) -> Vec<Filter> {
    paths.into_iter().map(|path| Filter::Literal(path.clone())).collect()
}

fn platform_rules(request: &Request) -> Vec<Rule> {
    let names = |names: &[&'static str], filter: fn(&'static str) -> Filter| names.iter().map(|name| filter(name)).collect::<Vec<_>>();
    let mut sysctls = names(platform::SYSCTL_READ, Filter::SysctlName);
    sysctls.extend(names(platform::SYSCTL_READ_PREFIXES, Filter::SysctlNamePrefix));
    let same_sandbox = || vec![Filter::Target("self"), Filter::Target("same-sandbox")];
    let mut devices = literals(&platform::DEVICES_READ_WRITE.iter().map(|device| device.to_string()).collect::<Vec<_>>());
    devices.push(Filter::Regex(platform::TERMINAL_REGEX.into()));
    let mut roots = vec![Filter::literal("/")];
    roots.extend(platform::ROOT_LINKS.iter().map(|link| Filter::literal(link)));

    vec![
        Rule::allow(&["process-fork"], vec![]),
        Rule::allow(&["process-info*"], same_sandbox()),
        Rule::allow(&["signal"], same_sandbox()),
        Rule::allow(&["sysctl-read"], sysctls),
        Rule::allow(&["sysctl-write"], names(platform::SYSCTL_WRITE, Filter::SysctlName)),
        Rule::allow(&["mach-lookup"], names(platform::MACH_SERVICES, Filter::GlobalName)),
        // Python's multiprocessing creates named semaphores.
        Rule::allow(&["ipc-posix-sem"], vec![]),
        Rule::allow(&["ipc-posix-shm*"], names(platform::SHARED_MEMORY_PREFIXES, Filter::IpcPosixNamePrefix)),
        Rule::allow(&["ipc-posix-shm-read*"], names(platform::SHARED_MEMORY_READ_PREFIXES, Filter::IpcPosixNamePrefix)),
        Rule::allow(&["user-preference-read"], vec![]),
        Rule::allow(&["iokit-open"], vec![Filter::IokitUserClientClass("RootDomainUserClient")]),
        // Kernel control sockets, which the network and DNS code opens even without a network.
        Rule::allow(&["system-socket"], vec![Filter::RequireAll(vec![Filter::SocketDomain("AF_SYSTEM"), Filter::SocketProtocol(2)])]),
        // Creating Unix sockets and socket pairs; connecting and binding are network rules.
        Rule::allow(&["system-socket"], vec![Filter::SocketDomain("AF_UNIX")]),
        Rule::allow(&["pseudo-tty"], vec![]),
        Rule::allow(&[READ], roots),
        Rule::allow(&[READ_METADATA], vec![Filter::literal("/dev")]),
        Rule::allow(&[READ, WRITE_DATA, IOCTL], devices),
        Rule::allow(&[READ], platform::DEVICES_READ.iter().map(|device| Filter::literal(device)).collect()),
        Rule::allow(&[READ, WRITE_DATA], vec![Filter::subpath("/dev/fd")]),
        Rule::allow(&[READ, EXEC, MAP_EXECUTABLE], platform::SYSTEM_READ.iter().map(|path| Filter::subpath(path)).collect()),
        // See `crate::marker`.
        Rule::allow(&[crate::marker::MARKER_OPERATION], vec![Filter::Literal(request.marker.member.clone())]),
    ]
}

/// Returns every root the profile lets the command read: the system's, the policy's and the
/// writable roots.
fn readable_roots(request: &Request) -> BTreeSet<PathBuf> {
    let mut roots: BTreeSet<PathBuf> = platform::SYSTEM_READ.iter().map(PathBuf::from).collect();
    roots.extend(request.read_only.iter().cloned());
    roots.extend(request.writable.iter().cloned());
    roots
}

fn read_rules(request: &Request) -> Vec<Rule> {
    // A root inside another one, or inside the system's, adds nothing.
    let system: Vec<PathBuf> = platform::SYSTEM_READ.iter().map(PathBuf::from).collect();
    let roots: BTreeSet<&PathBuf> = request.read_only.iter().chain(&request.writable).collect();
    let needed = roots.iter().copied().filter(|root| {
        let below_other = roots.iter().any(|other| other != root && root.starts_with(other));
        !below_other && !system.iter().any(|system| root.starts_with(system))
    });
    let mut rules = vec![Rule::allow(&[READ, EXEC, MAP_EXECUTABLE], subpaths(needed))];
    if request.network == Network::Full {
        rules.push(Rule::allow(&[READ], vec![Filter::literal(platform::RESOLVER_CONFIGURATION)]));
    }
    // Programs stat every directory on the way to the one they work in (getcwd, realpath,
    // module resolution), so the ancestors of each root show their metadata, not their
    // contents.
    let readable = readable_roots(request);
    let mut ancestors = BTreeSet::new();
    for root in &readable {
        for ancestor in root.ancestors().skip(1) {
            let covered = readable.iter().any(|other| ancestor.starts_with(other));
            if ancestor != Path::new("/") && !covered {
                ancestors.insert(ancestor.to_path_buf());
            }
        }
    }
    if !ancestors.is_empty() {
        rules.push(Rule::allow(&[READ_METADATA], ancestors.iter().map(|path| Filter::Literal(text(path))).collect()));
    }
    rules
}

fn write_rules(request: &Request) -> Vec<Rule> {
    if request.writable.is_empty() {
        return Vec::new();
    }
    let filters = request.writable.iter().map(|root| writable_root(root, &request.protected)).collect();
    vec![Rule::allow(&[WRITE, LINK, CLONE], filters)]
}

/// Returns the filter of one writable root: the root, except each protected path inside it
/// and everything below it, in every case spelling, whether the path exists or not.
fn writable_root(root: &Path, protected: &[PathBuf]) -> Filter {
    let inside: Vec<&PathBuf> = protected.iter().filter(|path| starts_with_any_case(path, root) && !starts_with_any_case(root, path)).collect();
    if inside.is_empty() {
        return Filter::Subpath(text(root));
    }
    let mut filters = vec![Filter::Subpath(text(root))];
    filters.extend(inside.into_iter().map(|path| Filter::RequireNot(Box::new(any_case_subpath(path)))));
    Filter::RequireAll(filters)
}

/// Returns the file operations named by the allows before the denies, each one once, in a
/// stable order.
fn file_operations_allowed(sections: &[Section]) -> Vec<&'static str> {
    let operations: BTreeSet<&'static str> = sections
        .iter()
        .flat_map(|section| &section.rules)
        .filter(|rule| rule.action == Action::Allow)
        .flat_map(|rule| rule.operations.iter().copied())
        .filter(|operation| is_file_operation(operation))
        .collect();
    operations.into_iter().collect()
}

/// Returns whether `operation` reaches a file by its path.
pub fn is_file_operation(operation: &str) -> bool {
    operation.starts_with("file") || operation == EXEC
}

/// Returns whether `operation` changes a file or its name.
pub fn is_write_operation(operation: &str) -> bool {
    operation.starts_with("file-write") || operation == LINK || operation == CLONE
}

fn deny_rules(request: &Request, allowed_operations: &[&'static str]) -> Vec<Rule> {
    let mut rules = Vec::new();
    let any_case = |paths: &[PathBuf]| paths.iter().map(|path| any_case_subpath(path)).collect::<Vec<_>>();
    if !request.hidden.is_empty() {
        rules.push(Rule::deny(allowed_operations, any_case(&request.hidden)));
    }
    let write_operations: Vec<&'static str> = allowed_operations.iter().copied().filter(|operation| is_write_operation(operation)).collect();
    if !request.protected.is_empty() && !write_operations.is_empty() {
        rules.push(Rule::deny(&write_operations, any_case(&request.protected)));
    }
    // A deny follows a path's name, so renaming an ancestor would carry a hidden file or a
    // protected directory out from under its rule. Renaming or removing the ancestor needs
    // `file-write-unlink` on it. Ancestors outside the writable roots cannot be renamed anyway.
    let mut ancestors = BTreeSet::new();
    for path in request.hidden.iter().chain(&request.protected) {
        for ancestor in path.ancestors().skip(1) {
            if request.writable.iter().any(|root| starts_with_any_case(ancestor, root)) {
                ancestors.insert(ancestor.to_path_buf());
            }
        }
    }
    if !ancestors.is_empty() {
        rules.push(Rule::deny(&[WRITE_UNLINK], ancestors.iter().map(|path| any_case_literal(path)).collect()));
    }
    rules
}

fn network_rules(request: &Request) -> Vec<Rule> {
    let mut rules = Vec::new();
    // Unix sockets inside the writable roots are the command's own: the same files it may
    // create anyway. Sockets elsewhere (the Docker daemon's, an SSH agent's) stay closed in
    // every mode, because connecting to them is a network operation that file rules miss.
    if !request.writable.is_empty() {
        let sockets = |wrap: fn(Box<Filter>) -> Filter| request.writable.iter().map(|root| wrap(Box::new(Filter::Subpath(text(root))))).collect();
        rules.push(Rule::allow(&["network-bind"], sockets(Filter::LocalUnixSocket)));
        rules.push(Rule::allow(&["network-outbound"], sockets(Filter::RemoteUnixSocket)));
    }
    let ip_sockets = || Rule::allow(&["system-socket"], vec![Filter::SocketDomain("AF_INET"), Filter::SocketDomain("AF_INET6")]);
    match request.network {
        Network::Full => {
            rules.push(ip_sockets());
            // Outbound rules name only the remote end. A `local` filter on an outbound rule
            // matches the unbound socket's wildcard address and so every destination.
            rules.push(Rule::allow(&["network-outbound"], vec![Filter::RemoteIp("*:*".into())]));
            rules.push(Rule::allow(&["network-bind", "network-inbound"], vec![Filter::LocalIp("*:*".into())]));
            rules.push(Rule::allow(
                &["network-outbound"],
                vec![Filter::RemoteUnixSocket(Box::new(Filter::PathLiteral(platform::RESOLVER_SOCKET.into())))],
            ));
            rules.push(Rule::allow(&["mach-lookup"], platform::MACH_SERVICES_NETWORK.iter().map(|name| Filter::GlobalName(name)).collect()));
            // getifaddrs, for the list of network interfaces.
            rules.push(Rule::allow(&["sysctl-read"], vec![Filter::SysctlNamePrefix("net.routetable.")]));
        }
        Network::None | Network::Proxy { .. } => {
            let mut remote: Vec<u16> = request.listen_ports.iter().chain(&request.loopback_ports).copied().collect();
            if let Network::Proxy { port } = request.network {
                remote.push(port);
            }
            remote.sort_unstable();
            remote.dedup();
            if !remote.is_empty() {
                rules.push(ip_sockets());
                rules.push(Rule::allow(&["network-outbound"], remote.iter().map(|port| Filter::RemoteIp(format!("localhost:{port}"))).collect()));
            }
            if !request.listen_ports.is_empty() {
                let local = request.listen_ports.iter().map(|port| Filter::LocalIp(format!("localhost:{port}"))).collect();
                rules.push(Rule::allow(&["network-bind", "network-inbound"], local));
            }
        }
    }
    rules
}

fn late_deny_rules(request: &Request) -> Vec<Rule> {
    let mut rules = Vec::new();
    // The network section opens Unix sockets inside the writable roots, so the hidden and
    // protected paths inside them are closed again.
    let closed: BTreeSet<&PathBuf> = request
        .hidden
        .iter()
        .chain(&request.protected)
        .filter(|path| request.writable.iter().any(|root| starts_with_any_case(path, root)))
        .collect();
    if !closed.is_empty() {
        // Socket filters take `path-regex` where file filters take `regex`.
        let any_case = |path: &PathBuf| Filter::PathRegex(any_case_subpath_regex(&text(path)));
        let sockets = |wrap: fn(Box<Filter>) -> Filter| closed.iter().map(|path| wrap(Box::new(any_case(path)))).collect();
        rules.push(Rule::deny(&["network-outbound"], sockets(Filter::RemoteUnixSocket)));
        rules.push(Rule::deny(&["network-bind"], sockets(Filter::LocalUnixSocket)));
    }
    rules.push(Rule::deny(&["sysctl-read"], platform::SYSCTL_DENIED.iter().map(|name| Filter::SysctlName(name)).collect()));
    rules.push(Rule::deny(&[crate::marker::MARKER_OPERATION], vec![Filter::Literal(request.marker.outsider.clone())]));
    rules
}
