//! Public reports against other sandboxes, each as a statement about the profile palisade
//! generates, checked with the model of Seatbelt's decisions. The same reports are the Mac
//! conformance steps in `docs/macos.md`, where the real command is run.

use std::path::PathBuf;

use palisade_macos::model::{Model, Target};
use palisade_macos::{generate, Request};
use palisade_policy::{NetworkMode, Ports};

use super::fixtures::{self, Fixture, PROXY_PORT, WORKSPACE};

fn model(fixture: &Fixture) -> Model {
    Model::parse(&fixture.profile().text).unwrap()
}

fn ws(relative: &str) -> String {
    format!("{WORKSPACE}/{relative}")
}

// https://github.com/openai/codex/issues/11210 and https://github.com/openai/codex/issues/23505:
// without the CPU sysctls Node's os.cpus() was empty, and without sysmond `ps` and `pgrep`
// failed.
#[test]
fn cpu_sysctls_and_sysmond_are_reachable() {
    let model = model(&fixtures::named("workspace-write"));
    for name in ["machdep.cpu.brand_string", "hw.model", "hw.physicalcpu", "hw.optional.arm64", "hw.ncpu", "hw.memsize", "kern.proc.all"] {
        assert!(model.allows("sysctl-read", &Target::Name(name)).unwrap(), "{name}");
    }
    assert!(model.allows("mach-lookup", &Target::Name("com.apple.sysmond")).unwrap());
    // Other processes' arguments and environment stay closed.
    for name in ["kern.procargs2", "kern.procargs"] {
        assert!(!model.allows("sysctl-read", &Target::Name(name)).unwrap(), "{name}");
    }
}

// https://github.com/openai/codex/issues/11210 blamed the missing `(allow mach-host*)` for
// the empty os.cpus(). Seatbelt's `mach-host*` covers two operations only,
// `mach-host-exception-port-set` and `mach-host-special-port-set`, which set host-wide ports
// and which reading the CPU's load with host_processor_info() does not use. The sandbox
// denials logged in that report were the sysctls libuv reads, which the profile allows, so
// the host setters stay denied.
#[test]
fn cpu_description_is_readable_without_host_port_setters() {
    let model = model(&fixtures::named("workspace-write"));
    for name in ["machdep.cpu.brand_string", "hw.model", "hw.cpufrequency", "hw.ncpu"] {
        assert!(model.allows("sysctl-read", &Target::Name(name)).unwrap(), "{name}");
    }
    for operation in ["mach-host-exception-port-set", "mach-host-special-port-set"] {
        assert!(!model.allows(operation, &Target::Nothing).unwrap(), "{operation}");
    }
    assert!(!fixtures::named("full-network").profile().text.contains("mach-host"));
}

// Blanket mach-lookup reaches the keychain over Mach even when its files are denied.
#[test]
fn keychain_services_are_not_reachable() {
    let model = model(&fixtures::named("full-network"));
    for service in ["com.apple.SecurityServer", "com.apple.securityd", "com.apple.secd", "com.apple.security.agent", "com.apple.coreservices.launchservicesd"] {
        assert!(!model.allows("mach-lookup", &Target::Name(service)).unwrap(), "{service}");
    }
}

// https://github.com/openai/codex/issues/22179: a deny of `.env` files did not stop reads.
// https://github.com/anthropic-experimental/sandbox-runtime/issues/432: denies were anchored
// at the command's working directory, so files elsewhere in the root stayed open. The policy
// names each path absolutely, so the profile does not depend on the working directory at
// all, and a hidden name that does not exist yet is denied when it appears.
#[test]
fn env_files_stay_hidden_wherever_the_command_starts() {
    let mut fixture = fixtures::named("workspace-write");
    for name in [".env", "other/.env", "sub/.env"] {
        fixture.policy.filesystem.hidden.push(PathBuf::from(ws(name)));
    }
    let texts: Vec<String> = [ws("sub"), WORKSPACE.to_owned(), "/".to_owned()]
        .into_iter()
        .map(|cwd| {
            fixture.policy.cwd = cwd.into();
            fixture.profile().text
        })
        .collect();
    assert!(texts.windows(2).all(|pair| pair[0] == pair[1]), "the working directory changed the profile");

    let model = model(&fixture);
    for name in [".env", "other/.env", "sub/.env"] {
        let path = ws(name);
        // `cat .env`, `python3 -c 'open(".env").read()'` and `cp .env /tmp/x` all read it.
        assert!(!model.allows_path("file-read-data", &path).unwrap(), "{path}");
        assert!(!model.allows_path("file-write-create", &path).unwrap(), "{path}");
        assert!(!model.allows_path("file-write-data", &path).unwrap(), "{path}");
    }
    assert!(model.allows_path("file-write-create", &ws("other/ok.txt")).unwrap());
    assert!(!model.allows_path("file-write-create", &ws(".git/hooks/pre-commit")).unwrap());
}

// APFS volumes are case-insensitive by default, so each of these names a protected or hidden
// file, while Seatbelt compares paths case-sensitively.
#[test]
fn case_variants_of_protected_names_are_denied() {
    let mut fixture = fixtures::named("workspace-write");
    fixture.policy.filesystem.hidden.push(PathBuf::from(ws(".env")));
    let model = model(&fixture);
    for path in [".GIT/hooks/pre-commit", ".git/HOOKS/x", ".Git/Hooks", ".git/CONFIG", ".VSCODE/tasks.json", ".vscode/TASKS.json"] {
        let path = ws(path);
        assert!(!model.allows_path("file-write-create", &path).unwrap(), "{path}");
        assert!(!model.allows_path("file-write-data", &path).unwrap(), "{path}");
    }
    for path in [".ENV", ".Env"] {
        let path = ws(path);
        assert!(!model.allows_path("file-read-data", &path).unwrap(), "{path}");
        assert!(!model.allows_path("file-write-create", &path).unwrap(), "{path}");
    }
    // `mv .GIT .git2` would carry the hooks out from under their rule.
    assert!(!model.allows_path("file-write-unlink", &ws(".GIT")).unwrap());
    // Allows stay case-exact, so a variant of a granted root is refused: the safe direction.
    assert!(model.allows_path("file-write-create", &ws("src/new.rs")).unwrap());
    assert!(!model.allows_path("file-write-create", "/users/dev/src/app/src/new.rs").unwrap());
}

// A path typed in another case than the directory's (`--deny-read /users/dev/...` for
// `/Users/dev/...`) names the same file on a case-insensitive volume, so it must still deny.
#[test]
fn deny_typed_in_another_case_holds() {
    let mut fixture = fixtures::named("workspace-write");
    let typed = WORKSPACE.to_ascii_lowercase().replace("/dev/", "/DEV/");
    fixture.policy.filesystem.hidden.push(PathBuf::from(format!("{typed}/Config/secrets.toml")));
    let model = model(&fixture);
    let path = ws("config/secrets.toml");
    assert!(!model.allows_path("file-read-data", &path).unwrap(), "{path}");
    assert!(!model.allows_path("file-write-data", &path).unwrap(), "{path}");
    assert!(!model.allows_path("file-write-unlink", &ws("config")).unwrap(), "the ancestor of {path} could be renamed");
    assert!(model.allows_path("file-read-data", &ws("config/app.toml")).unwrap());
}

#[test]
fn hooks_dir_is_not_creatable_when_absent() {
    let fixture = fixtures::named("absent-protected-names");
    let model = model(&fixture);
    let root = "/Users/dev/src/fresh";
    for path in [".git/hooks", ".git/hooks/pre-commit", ".git/config", ".vscode", ".vscode/tasks.json", "secrets", "secrets/keys"] {
        let path = format!("{root}/{path}");
        assert!(!model.allows_path("file-write-create", &path).unwrap(), "{path}");
    }
    // `git init` still creates `.git` and its objects.
    for path in [".git", ".git/objects/ab/cdef", ".git/HEAD", "README.md"] {
        let path = format!("{root}/{path}");
        assert!(model.allows_path("file-write-create", &path).unwrap(), "{path}");
    }
}

#[test]
fn rm_inside_the_workspace_is_allowed() {
    let model = model(&fixtures::named("workspace-write"));
    for path in ["src/main.rs", "src", "target/debug/app", ".git/objects/ab/cdef", ".git/index.lock"] {
        assert!(model.allows_path("file-write-unlink", &ws(path)).unwrap(), "{path}");
    }
}

// `mv` of an ancestor carries a denied path out from under its rule, so it is refused: the
// rename needs `file-write-unlink` on the source.
#[test]
fn ancestor_of_denied_path_cannot_move() {
    let fixture = fixtures::named("deny-inside-allow");
    let model = model(&fixture);
    for ancestor in [WORKSPACE.to_owned(), ws("config"), ws(".git")] {
        assert!(!model.allows_path("file-write-unlink", &ancestor).unwrap(), "{ancestor}");
    }
    // A sibling without denied paths below it moves freely.
    assert!(model.allows_path("file-write-unlink", &ws("src")).unwrap());
    assert!(model.allows_path("file-write-create", &ws("src2")).unwrap());
}

#[test]
fn deny_inside_a_readable_path_holds() {
    let model = model(&fixtures::named("deny-inside-allow"));
    assert!(model.allows_path("file-read-data", "/Users/dev/data/public/a.csv").unwrap());
    assert!(!model.allows_path("file-read-data", "/Users/dev/data/private/key.pem").unwrap());
    assert!(!model.allows_path("file-read-metadata", "/Users/dev/data/private").unwrap());
    assert!(!model.allows_path("file-read-data", &ws("config/.env.local")).unwrap());
    assert!(!model.allows_path("file-write-create", &ws("config/.env.local")).unwrap());
    assert!(model.allows_path("file-write-create", &ws("config/app.toml")).unwrap());
}

// https://github.com/openai/codex/issues/10390: with the network on, DNS and a loopback
// server were still blocked.
#[test]
fn full_network_reaches_loopback_and_resolves_names() {
    let model = model(&fixtures::named("full-network"));
    assert!(model.allows("network-outbound", &Target::connect("127.0.0.1", 8765)).unwrap());
    assert!(model.allows("network-outbound", &Target::UnixSocket { remote: Some("/private/var/run/mDNSResponder"), local: None }).unwrap());
    for service in ["com.apple.SystemConfiguration.DNSConfiguration", "com.apple.dnssd.service", "com.apple.trustd.agent"] {
        assert!(model.allows("mach-lookup", &Target::Name(service)).unwrap(), "{service}");
    }
    assert!(model.allows_path("file-read-data", "/private/var/run/resolv.conf").unwrap());
}

// https://github.com/openai/codex/issues/28281: full access still blocked hosts of the local
// network.
#[test]
fn full_network_reaches_the_local_network() {
    let model = model(&fixtures::named("full-network"));
    for (host, port) in [("192.168.1.10", 22), ("10.0.0.5", 5432), ("172.16.0.1", 443), ("fd00::1", 80), ("93.184.216.34", 443)] {
        assert!(model.allows("network-outbound", &Target::connect(host, port)).unwrap(), "{host}:{port}");
    }
    assert!(model.allows("network-bind", &Target::listen("0.0.0.0", 3000)).unwrap());
}

#[test]
fn no_network_allows_no_ip_traffic() {
    let model = model(&fixtures::named("workspace-write"));
    for (host, port) in [("127.0.0.1", 8765), ("::1", 22), ("10.99.0.1", 80)] {
        assert!(!model.allows("network-outbound", &Target::connect(host, port)).unwrap(), "{host}:{port}");
    }
    assert!(!model.allows("network-bind", &Target::listen("127.0.0.1", 8000)).unwrap());
    assert!(!model.allows("system-socket", &Target::Socket { domain: "AF_INET", protocol: 6 }).unwrap());
}

#[test]
fn allowlist_reaches_only_the_proxy_and_listed_ports() {
    let model = model(&fixtures::named("allowlist-network"));
    assert!(model.allows("network-outbound", &Target::connect("127.0.0.1", PROXY_PORT)).unwrap());
    assert!(model.allows("network-outbound", &Target::connect("127.0.0.1", 8000)).unwrap());
    // The allowlist's entry 127.0.0.1:5432, a database on the host.
    assert!(model.allows("network-outbound", &Target::connect("127.0.0.1", 5432)).unwrap());
    for (host, port) in [("127.0.0.1", 6379), ("10.99.0.1", PROXY_PORT), ("192.168.1.10", 80), ("10.99.0.1", 5432)] {
        assert!(!model.allows("network-outbound", &Target::connect(host, port)).unwrap(), "{host}:{port}");
    }
    // No resolver: names are resolved by the proxy, never inside the sandbox.
    assert!(!model.allows("network-outbound", &Target::UnixSocket { remote: Some("/private/var/run/mDNSResponder"), local: None }).unwrap());
    assert!(!model.allows("mach-lookup", &Target::Name("com.apple.trustd.agent")).unwrap());
}

// https://github.com/anthropic-experimental/sandbox-runtime/issues/131 and
// https://github.com/anthropic-experimental/sandbox-runtime/issues/225: allowing a local
// server also let outbound TCP go anywhere.
#[test]
fn listening_port_does_not_open_outbound_traffic() {
    let mut fixture = fixtures::named("workspace-write");
    fixture.policy.ports = Ports { listen: Some(vec![8000]), expose: vec![] };
    let model = model(&fixture);
    assert!(model.allows("network-bind", &Target::listen("127.0.0.1", 8000)).unwrap());
    assert!(model.allows("network-inbound", &Target::listen("127.0.0.1", 8000)).unwrap());
    assert!(!model.allows("network-bind", &Target::listen("127.0.0.1", 8001)).unwrap());
    assert!(!model.allows("network-outbound", &Target::connect("10.99.0.1", 80)).unwrap());
    assert!(!model.allows("network-outbound", &Target::connect("127.0.0.1", 6379)).unwrap());
}

// A Unix socket connect is a network operation that file denies do not stop: the Docker
// daemon's socket stays closed even with the host's network.
#[test]
fn host_unix_sockets_stay_closed() {
    for name in ["workspace-write", "full-network"] {
        let model = model(&fixtures::named(name));
        for socket in ["/private/var/run/docker.sock", "/Users/dev/.docker/run/docker.sock", "/private/tmp/com.apple.launchd.x/Listeners"] {
            assert!(!model.allows("network-outbound", &Target::UnixSocket { remote: Some(socket), local: None }).unwrap(), "{name}: {socket}");
        }
        let own = ws("target/test.sock");
        assert!(model.allows("network-bind", &Target::UnixSocket { remote: None, local: Some(&own) }).unwrap(), "{name}");
        assert!(model.allows("network-outbound", &Target::UnixSocket { remote: Some(&own), local: None }).unwrap(), "{name}");
    }
}

#[test]
fn home_directory_outside_the_grants_is_closed() {
    let model = model(&fixtures::named("workspace-write"));
    for path in ["/Users/dev/Documents/taxes.pdf", "/Users/dev/Library/Keychains/login.keychain-db", "/Users/dev/.ssh/id_ed25519", "/private/tmp/other-user-file"] {
        assert!(!model.allows_path("file-read-data", path).unwrap(), "{path}");
    }
    // A cache is readable, not writable: macOS has no copy-on-write layer.
    assert!(model.allows_path("file-read-data", "/Users/dev/.cargo/registry/index").unwrap());
    assert!(!model.allows_path("file-write-create", "/Users/dev/.cargo/registry/index/x").unwrap());
    // The credentials inside a readable cache stay hidden.
    assert!(!model.allows_path("file-read-data", "/Users/dev/.cargo/credentials.toml").unwrap());
}

#[test]
fn read_only_profile_writes_nothing_but_devices() {
    let fixture = fixtures::named("read-only");
    let (request, model) = (fixture.request(), model(&fixture));
    assert!(request.writable.is_empty());
    assert!(model.allows_path("file-read-data", &ws("src/main.rs")).unwrap());
    assert!(!model.allows_path("file-write-data", &ws("src/main.rs")).unwrap());
    assert!(!model.allows_path("file-write-create", &request.temp_dir.join("x").to_string_lossy()).unwrap());
    assert!(model.allows_path("file-write-data", "/dev/null").unwrap());
}

#[test]
fn unconfined_and_missing_proxy_port_are_refused() {
    let mut fixture = fixtures::named("workspace-write");
    fixture.policy.network = NetworkMode::Allowlist { allow: vec!["crates.io".into()], deny: vec![], resolve_allowed: false };
    assert!(Request::from_policy(&fixture.policy, &fixture.machine, &fixture.fs).is_err());
    fixture.machine.proxy_port = Some(PROXY_PORT);
    assert!(generate(&fixture.request()).is_ok());
}
