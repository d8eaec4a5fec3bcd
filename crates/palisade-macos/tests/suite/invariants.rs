//! The invariants of every generated profile, checked on every fixture. A profile reads back,
//! its paths are canonical, and it grants what the request grants and denies what it denies.
//! Its rules are ordered so that no later allow and no more specific allow undoes a deny.

use std::path::{Path, PathBuf};

use palisade_macos::model::{operation_specificity, Model, Target, OPERATIONS};
use palisade_macos::profile::{any_case_subpath_regex, is_file_operation, SectionKind};
use palisade_macos::reader::{self, Expr};
use palisade_macos::sbpl::{Action, Filter, Rule};
use palisade_macos::{Network, Request, RequestError, SeatbeltProfile};

use super::fixtures::{self, Fixture};

fn model(fixture: &Fixture) -> Model {
    Model::parse(&fixture.profile().text).unwrap_or_else(|error| panic!("{}: {error}", fixture.name))
}

fn probe(path: &Path) -> String {
    path.join("palisade-probe").to_str().unwrap().to_owned()
}

fn text(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// Returns whether `path` is inside one of `paths`.
fn inside(path: &Path, paths: &[PathBuf]) -> bool {
    paths.iter().any(|other| path.starts_with(other))
}

#[test]
fn profiles_read_back_with_known_vocabulary() {
    for fixture in fixtures::all() {
        let text = fixture.profile().text;
        reader::read(&text).unwrap_or_else(|error| panic!("{}: {error}", fixture.name));
        model(&fixture);
    }
}

fn strings(exprs: &[Expr], out: &mut Vec<String>) {
    for expr in exprs {
        match expr {
            Expr::Str(text) => out.push(text.clone()),
            Expr::List(items) => strings(items, out),
            _ => {}
        }
    }
}

#[test]
fn escaped_paths_read_back_unchanged() {
    for fixture in fixtures::all() {
        let request = fixture.request();
        let mut read_back = Vec::new();
        strings(&reader::read(&fixture.profile().text).unwrap(), &mut read_back);
        for path in &request.writable {
            assert!(read_back.iter().any(|string| string == text(path)), "{}: {} does not read back", fixture.name, path.display());
        }
        // Hidden and protected paths are written as regexes of every case spelling.
        for path in request.hidden.iter().chain(&request.protected) {
            let regex = any_case_subpath_regex(text(path));
            assert!(read_back.contains(&regex), "{}: {regex} does not read back", fixture.name);
        }
        // A readable root inside another one is left out of the profile.
        for path in &request.read_only {
            let covered = read_back.iter().any(|string| string.starts_with('/') && path.starts_with(string));
            assert!(covered, "{}: {} does not read back", fixture.name, path.display());
        }
    }
}

/// Returns the path a filter names, or the fixed start of a regex.
fn path_base(filter: &Filter) -> Option<String> {
    match filter {
        Filter::Literal(path) | Filter::Subpath(path) | Filter::PathLiteral(path) => Some(path.clone()),
        Filter::Regex(regex) | Filter::PathRegex(regex) => Some(regex_prefix(regex)),
        Filter::RequireAll(filters) => filters.first().and_then(path_base),
        Filter::RemoteUnixSocket(inner) | Filter::LocalUnixSocket(inner) => path_base(inner),
        _ => None,
    }
}

/// Returns the literal text a regex starts with, after `^`. A class of one letter in both
/// cases (`[gG]`) counts as the lowercase letter, so compare the result with
/// [`lowercase_path`].
fn regex_prefix(regex: &str) -> String {
    let mut prefix = String::new();
    let mut chars = regex.strip_prefix('^').unwrap_or(regex).chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' => prefix.extend(chars.next()),
            '[' => {
                let class: Vec<char> = chars.by_ref().take_while(|c| *c != ']').collect();
                match class.as_slice() {
                    [single] => prefix.push(*single),
                    [lower, upper] if lower.is_ascii_lowercase() && lower.to_ascii_uppercase() == *upper => prefix.push(*lower),
                    _ => break,
                }
            }
            '$' | '+' | '*' | '?' | '(' | '|' | '.' => break,
            _ => prefix.push(c),
        }
    }
    prefix
}

#[test]
fn granted_paths_are_canonical() {
    for fixture in fixtures::all() {
        let profile = fixture.profile();
        for (_, rule) in profile.rules().filter(|(_, rule)| rule.action == Action::Allow) {
            for base in rule.filters.iter().filter_map(path_base) {
                for lexical in ["/tmp/", "/var/", "/etc/", "/System/Volumes/Data/"] {
                    assert!(!base.starts_with(lexical), "{}: {base} in {rule:?}", fixture.name);
                }
            }
        }
        for lexical in ["\"/tmp/", "\"/var/", "\"/etc/"] {
            assert!(!profile.text.contains(lexical), "{}: {lexical}", fixture.name);
        }
    }
}

#[test]
fn lexical_workspace_appears_in_canonical_form() {
    let fixture = fixtures::named("symlinked-temp-dir");
    let text = fixture.profile().text;
    assert!(text.contains("(subpath \"/private/tmp/ws\")"), "{text}");
    assert!(text.contains(&format!("(regex \"{}\")", any_case_subpath_regex("/private/tmp/ws/.env"))), "{text}");
    assert!(text.contains("(subpath \"/Volumes/Shared/data\")"), "{text}");
    assert!(text.contains("(subpath \"/private/var/folders/zz/xy/T/palisade-00c0ffee00c0ffee\")"), "{text}");
}

#[test]
fn granted_roots_are_readable_and_writable() {
    for fixture in fixtures::all() {
        let (request, model) = (fixture.request(), model(&fixture));
        let closed: Vec<PathBuf> = request.hidden.iter().chain(&request.protected).cloned().collect();
        for root in request.read_only.iter().chain(&request.writable) {
            let probe = probe(root);
            if inside(Path::new(&probe), &request.hidden) {
                continue;
            }
            for operation in ["file-read-data", "file-read-metadata", "process-exec", "file-map-executable"] {
                assert!(model.allows_path(operation, &probe).unwrap(), "{}: {operation} {probe}", fixture.name);
            }
        }
        for root in &request.writable {
            let probe = probe(root);
            if inside(Path::new(&probe), &closed) {
                continue;
            }
            for operation in ["file-write-create", "file-write-data", "file-write-unlink", "file-link"] {
                assert!(model.allows_path(operation, &probe).unwrap(), "{}: {operation} {probe}", fixture.name);
            }
        }
    }
}

#[test]
fn read_only_roots_are_not_writable() {
    for fixture in fixtures::all() {
        let (request, model) = (fixture.request(), model(&fixture));
        for root in request.read_only.iter().filter(|root| !inside(root, &request.writable)) {
            let probe = probe(root);
            for operation in ["file-write-create", "file-write-data", "file-write-unlink"] {
                assert!(!model.allows_path(operation, &probe).unwrap(), "{}: {operation} {probe}", fixture.name);
            }
        }
    }
}

#[test]
fn hidden_paths_are_unreadable_and_unwritable() {
    for fixture in fixtures::all() {
        let (request, model) = (fixture.request(), model(&fixture));
        assert!(!request.hidden.is_empty());
        for hidden in &request.hidden {
            for path in [text(hidden).to_owned(), probe(hidden)] {
                for operation in
                    ["file-read-data", "file-read-metadata", "file-read-xattr", "file-write-create", "file-write-data", "file-write-unlink", "process-exec", "file-map-executable", "file-link", "file-clone"]
                {
                    assert!(!model.allows_path(operation, &path).unwrap(), "{}: {operation} {path}", fixture.name);
                }
            }
        }
    }
}

#[test]
fn protected_paths_stay_read_only() {
    for fixture in fixtures::all() {
        let (request, model) = (fixture.request(), model(&fixture));
        for protected in &request.protected {
            for path in [text(protected).to_owned(), probe(protected)] {
                for operation in ["file-write-create", "file-write-data", "file-write-unlink", "file-write-mode", "file-link", "file-clone"] {
                    assert!(!model.allows_path(operation, &path).unwrap(), "{}: {operation} {path}", fixture.name);
                }
                let readable = inside(protected, &request.writable) && !inside(protected, &request.hidden);
                if readable {
                    assert!(model.allows_path("file-read-data", &path).unwrap(), "{}: protected {path} is readable", fixture.name);
                }
            }
        }
    }
}

/// Paths below `path` whose names hold control characters, which a `.` in a regex may not match.
fn names_with_control_characters(path: &Path) -> Vec<String> {
    ["x\ny", "\n", "a\rb", "\t\u{1b}", "hooks/x\ny", "a\nb/tasks.json"].iter().map(|name| format!("{}/{name}", text(path))).collect()
}

#[test]
fn control_names_below_hidden_closed() {
    for fixture in fixtures::all() {
        let (request, model) = (fixture.request(), model(&fixture));
        for path in request.hidden.iter().flat_map(|hidden| names_with_control_characters(hidden)) {
            for operation in ["file-read-data", "file-read-metadata", "file-write-create", "file-write-data", "file-write-unlink", "file-link"] {
                assert!(!model.allows_path(operation, &path).unwrap(), "{}: {operation} {path:?}", fixture.name);
            }
        }
    }
}

#[test]
fn control_names_below_protected_read_only() {
    for fixture in fixtures::all() {
        let (request, model) = (fixture.request(), model(&fixture));
        for path in request.protected.iter().flat_map(|protected| names_with_control_characters(protected)) {
            for operation in ["file-write-create", "file-write-data", "file-write-unlink", "file-write-mode", "file-link", "file-clone"] {
                assert!(!model.allows_path(operation, &path).unwrap(), "{}: {operation} {path:?}", fixture.name);
            }
        }
    }
}

#[test]
fn ancestors_of_denied_paths_cannot_be_renamed() {
    for fixture in fixtures::all() {
        let (request, model) = (fixture.request(), model(&fixture));
        for path in request.hidden.iter().chain(&request.protected) {
            for ancestor in path.ancestors().skip(1).filter(|ancestor| inside(ancestor, &request.writable)) {
                assert!(!model.allows_path("file-write-unlink", text(ancestor)).unwrap(), "{}: rename {}", fixture.name, ancestor.display());
            }
        }
    }
}

/// Returns other spellings of `path` that a case-insensitive volume opens as the same file:
/// all upper case, all lower case, the last component in upper case, and alternating case.
fn case_variants(path: &str) -> Vec<String> {
    let (parent, name) = path.rsplit_once('/').unwrap();
    let alternating: String = path.chars().enumerate().map(|(i, c)| if i % 2 == 0 { c.to_ascii_uppercase() } else { c.to_ascii_lowercase() }).collect();
    let mut variants = vec![path.to_ascii_uppercase(), path.to_ascii_lowercase(), format!("{parent}/{}", name.to_ascii_uppercase()), alternating];
    variants.retain(|variant| variant != path);
    variants.sort();
    variants.dedup();
    assert!(!variants.is_empty(), "{path} has no case variant");
    variants
}

#[test]
fn case_variants_of_hidden_paths_are_closed() {
    for fixture in fixtures::all() {
        let (request, model) = (fixture.request(), model(&fixture));
        for hidden in &request.hidden {
            for variant in case_variants(text(hidden)) {
                for path in [variant.clone(), format!("{variant}/palisade-probe")] {
                    for operation in ["file-read-data", "file-read-metadata", "file-write-create", "file-write-data", "file-write-unlink", "process-exec", "file-link", "file-clone"] {
                        assert!(!model.allows_path(operation, &path).unwrap(), "{}: {operation} {path}", fixture.name);
                    }
                }
            }
        }
    }
}

#[test]
fn case_variants_of_protected_paths_stay_read_only() {
    for fixture in fixtures::all() {
        let (request, model) = (fixture.request(), model(&fixture));
        for protected in &request.protected {
            for variant in case_variants(text(protected)) {
                for path in [variant.clone(), format!("{variant}/palisade-probe")] {
                    for operation in ["file-write-create", "file-write-data", "file-write-unlink", "file-write-mode", "file-link", "file-clone"] {
                        assert!(!model.allows_path(operation, &path).unwrap(), "{}: {operation} {path}", fixture.name);
                    }
                }
            }
        }
    }
}

#[test]
fn case_variants_of_ancestors_cannot_be_renamed() {
    for fixture in fixtures::all() {
        let (request, model) = (fixture.request(), model(&fixture));
        for path in request.hidden.iter().chain(&request.protected) {
            for ancestor in path.ancestors().skip(1).filter(|ancestor| inside(ancestor, &request.writable)) {
                for variant in case_variants(text(ancestor)) {
                    assert!(!model.allows_path("file-write-unlink", &variant).unwrap(), "{}: rename {variant}", fixture.name);
                }
            }
        }
    }
}

fn operations_overlap(first: &Rule, second: &Rule) -> bool {
    first.operations.iter().any(|a| second.operations.iter().any(|b| operation_specificity(a, b).is_some() || operation_specificity(b, a).is_some()))
}

/// Returns `path` with its ASCII letters in lowercase, for comparing it with the prefix of a
/// regex of every case spelling.
fn lowercase_path(path: &str) -> PathBuf {
    PathBuf::from(path.to_ascii_lowercase())
}

fn paths_overlap(first: &Rule, second: &Rule) -> bool {
    let bases = |rule: &Rule| rule.filters.iter().filter_map(path_base).map(|base| lowercase_path(&base)).collect::<Vec<_>>();
    let (first, second) = (bases(first), bases(second));
    first.iter().any(|a| second.iter().any(|b| a.starts_with(b) || b.starts_with(a)))
}

/// Pairs of an allow and a later or earlier deny whose paths and operations overlap.
fn overlapping_pairs(profile: &SeatbeltProfile) -> Vec<(usize, &Rule, usize, &Rule)> {
    let rules: Vec<&Rule> = profile.rules().map(|(_, rule)| rule).collect();
    let mut pairs = Vec::new();
    for (i, allow) in rules.iter().enumerate().filter(|(_, rule)| rule.action == Action::Allow) {
        for (j, deny) in rules.iter().enumerate().filter(|(_, rule)| rule.action == Action::Deny) {
            if operations_overlap(allow, deny) && paths_overlap(allow, deny) {
                pairs.push((i, *allow, j, *deny));
            }
        }
    }
    pairs
}

#[test]
fn denies_follow_the_allows_they_cut() {
    for fixture in fixtures::all() {
        let profile = fixture.profile();
        for (i, allow, j, deny) in overlapping_pairs(&profile) {
            assert!(i < j, "{}: rule {i} {allow:?} comes after the deny {j} {deny:?}", fixture.name);
        }
    }
}

// A deny cuts an allow only if it is at least as specific for every operation both cover
// (a `file-read*` deny does not cut a `file-read-data` allow).
#[test]
fn denies_as_specific_as_cut_allows() {
    let concrete: Vec<&str> = OPERATIONS.iter().copied().filter(|operation| !operation.ends_with('*') && *operation != "default").collect();
    for fixture in fixtures::all() {
        let profile = fixture.profile();
        for (_, allow, _, deny) in overlapping_pairs(&profile) {
            for operation in &concrete {
                let best = |rule: &Rule| rule.operations.iter().filter_map(|covered| operation_specificity(covered, operation)).max();
                if let (Some(allowed), Some(denied)) = (best(allow), best(deny)) {
                    assert!(denied >= allowed, "{}: for {operation}, {deny:?} is less specific than {allow:?}", fixture.name);
                }
            }
        }
    }
}

#[test]
fn no_allow_after_late_denies() {
    for fixture in fixtures::all() {
        let profile = fixture.profile();
        let kinds: Vec<SectionKind> = profile.sections.iter().map(|section| section.kind).collect();
        assert!(kinds.windows(2).all(|pair| pair[0] < pair[1]), "{}: {kinds:?}", fixture.name);
        assert_eq!(kinds.last(), Some(&SectionKind::LateDenies));
        let late = profile.sections.last().unwrap();
        assert!(late.rules.iter().all(|rule| rule.action == Action::Deny), "{}", fixture.name);
        let text_after = profile.text.split(SectionKind::LateDenies.title()).nth(1).unwrap();
        assert!(!text_after.contains("(allow"), "{}", fixture.name);
        // The network and the integrations allow no file operation, so the file denies before
        // them stay final.
        for (kind, rule) in profile.rules().filter(|(kind, rule)| *kind > SectionKind::Denies && rule.action == Action::Allow) {
            assert!(!rule.operations.iter().any(|operation| is_file_operation(operation)), "{}: {kind:?} {rule:?}", fixture.name);
        }
    }
}

// https://github.com/anthropic-experimental/sandbox-runtime/issues/131: a `local` filter on
// an outbound rule matched every destination.
#[test]
fn outbound_rules_name_only_the_remote_end() {
    for fixture in fixtures::all() {
        let profile = fixture.profile();
        for (_, rule) in profile.rules().filter(|(_, rule)| rule.operations.contains(&"network-outbound")) {
            for filter in &rule.filters {
                assert!(matches!(filter, Filter::RemoteIp(_) | Filter::RemoteUnixSocket(_)), "{}: {rule:?}", fixture.name);
            }
        }
        for line in profile.text.lines().filter(|line| line.contains("network-outbound")) {
            assert!(!line.contains("(local "), "{}: {line}", fixture.name);
        }
    }
}

#[test]
fn resolver_is_reachable_only_with_full_network() {
    for fixture in fixtures::all() {
        let (request, profile, model) = (fixture.request(), fixture.profile(), model(&fixture));
        let full = request.network == Network::Full;
        assert_eq!(profile.text.contains("mDNSResponder"), full, "{}", fixture.name);
        let resolver = Target::UnixSocket { remote: Some("/private/var/run/mDNSResponder"), local: None };
        assert_eq!(model.allows("network-outbound", &resolver).unwrap(), full, "{}", fixture.name);
        assert_eq!(model.allows("mach-lookup", &Target::Name("com.apple.dnssd.service")).unwrap(), full, "{}", fixture.name);
    }
}

#[test]
fn filter_count_stays_within_budget() {
    for fixture in fixtures::all() {
        let count = fixture.profile().filter_count();
        assert!(count <= 400, "{}: {count} filters", fixture.name);
    }
}

#[test]
fn run_marker_tells_members_apart() {
    for fixture in fixtures::all() {
        let (request, model) = (fixture.request(), model(&fixture));
        assert!(model.allows_path("file-read-metadata", &request.marker.member).unwrap(), "{}", fixture.name);
        assert!(!model.allows_path("file-read-metadata", &request.marker.outsider).unwrap(), "{}", fixture.name);
    }
    // Even a policy that reads the whole file system keeps the outsider path denied.
    let mut fixture = fixtures::named("workspace-write");
    fixture.policy.filesystem.read_only.push("/".into());
    let (request, model) = (fixture.request(), model(&fixture));
    assert!(model.allows_path("file-read-metadata", &request.marker.member).unwrap());
    assert!(!model.allows_path("file-read-metadata", &request.marker.outsider).unwrap());
}

// Every home directory has a second spelling below /System/Volumes/Data, which a broad read
// grant would cover.
#[test]
fn data_volume_spelling_of_hidden_paths_is_denied() {
    let mut fixture = fixtures::named("workspace-write");
    fixture.policy.filesystem.read_only.push("/".into());
    let model = model(&fixture);
    assert!(model.allows_path("file-read-data", "/Users/dev/Documents/notes.txt").unwrap());
    assert!(!model.allows_path("file-read-data", "/Users/dev/.ssh/id_ed25519").unwrap());
    assert!(!model.allows_path("file-read-data", "/System/Volumes/Data/Users/dev/.ssh/id_ed25519").unwrap());
}

#[test]
fn too_long_paths_are_refused() {
    let mut fixture = fixtures::named("workspace-write");
    fixture.policy.filesystem.hidden.push(PathBuf::from("/Users/dev/src/app").join("d".repeat(990)));
    let error = Request::from_policy(&fixture.policy, &fixture.machine, &fixture.fs).unwrap_err();
    assert!(matches!(&error, RequestError::Path { what: "a hidden path", .. }), "{error}");
    assert!(error.to_string().contains("more than the 1000"), "{error}");
}

#[cfg(unix)]
#[test]
fn non_utf8_paths_are_refused() {
    use std::os::unix::ffi::OsStrExt;
    let mut request = fixtures::named("workspace-write").request();
    request.hidden.push(PathBuf::from(std::ffi::OsStr::from_bytes(b"/Users/dev/\xff")));
    assert!(palisade_macos::generate(&request).is_err());
}
