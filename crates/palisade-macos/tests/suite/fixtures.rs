//! A Mac described in memory, and policies resolved on it the way `palisade_policy::resolve`
//! would: the built-in lists of `palisade_policy`, paths under `/Users/dev`, a per-user
//! temporary directory under `/var/folders`. Each named fixture is one golden profile.

use std::path::{Path, PathBuf};

use palisade_macos::canonical::{Entry, FileSystem};
use palisade_macos::{generate, Machine, MemoryFileSystem, Request, SeatbeltProfile};
use palisade_policy::{Filesystem, Limits, NetworkMode, Policy, Ports, Profile};

pub const HOME: &str = "/Users/dev";
pub const WORKSPACE: &str = "/Users/dev/src/app";
pub const RUN_ID: &str = "00c0ffee00c0ffee";
pub const PROXY_PORT: u16 = 41234;

/// Returns a Mac with a home directory, a toolchain, caches, credentials and a git workspace.
pub fn mac() -> MemoryFileSystem {
    let mut fs = MemoryFileSystem::macos();
    for path in [
        "/Users/dev/.rustup/toolchains",
        "/Users/dev/.local/bin",
        "/Users/dev/.gitconfig",
        "/Users/dev/.cargo/bin",
        "/Users/dev/.cargo/registry",
        "/Users/dev/.npm",
        "/Users/dev/.cache",
        "/Users/dev/.ssh/id_ed25519",
        "/Users/dev/.aws/credentials",
        "/Users/dev/Documents",
        "/Users/dev/Library/LaunchAgents",
        "/Users/dev/src/app/src/main.rs",
        "/Users/dev/src/app/.git/hooks",
        "/Users/dev/src/app/.git/config",
        "/Users/dev/src/app/.git/info",
        "/Users/dev/src/app/.git/objects",
        "/Users/dev/src/app/.env",
        "/Users/dev/src/app/sub",
        "/Users/dev/src/app/other/.env",
        "/private/var/folders/zz/xy/T",
        "/private/var/folders/zz/xy/C",
        "/opt/homebrew/bin",
        "/usr/local/bin",
    ] {
        fs = fs.with_present(path);
    }
    fs
}

pub fn machine() -> Machine {
    Machine {
        home: HOME.into(),
        temp_dir: "/var/folders/zz/xy/T".into(),
        cache_dir: "/var/folders/zz/xy/C".into(),
        path_dirs: ["/opt/homebrew/bin", "/usr/local/bin", "/usr/bin", "/bin", "/Users/dev/.cargo/bin", "/Users/dev/.local/bin"]
            .iter()
            .map(PathBuf::from)
            .collect(),
        proxy_port: None,
        run_id: RUN_ID.into(),
    }
}

fn exists(fs: &dyn FileSystem, path: &Path) -> bool {
    matches!(fs.entry(path), Ok(Entry::Present | Entry::Symlink(_)))
}

/// Returns the highest missing ancestor of `path` below `root`, stopping below `.git`, as the
/// policy resolver protects names that do not exist yet.
fn highest_missing(fs: &dyn FileSystem, path: &Path, root: &Path) -> PathBuf {
    let mut highest = path.to_path_buf();
    for ancestor in path.ancestors().skip(1) {
        if ancestor == root || !ancestor.starts_with(root) || exists(fs, ancestor) {
            break;
        }
        if ancestor.file_name().is_some_and(|name| name == ".git") {
            return path.to_path_buf();
        }
        highest = ancestor.to_path_buf();
    }
    highest
}

/// Returns a policy of `profile` for `workspace` on `fs`, with the built-in lists applied.
pub fn policy(profile: Profile, workspace: &str, fs: &dyn FileSystem) -> Policy {
    let home = Path::new(HOME);
    let workspace = PathBuf::from(workspace);
    let mut filesystem = Filesystem { tmp_writable: profile == Profile::WorkspaceWrite, ..Filesystem::default() };
    for system in ["/usr", "/bin", "/sbin", "/private/etc", "/opt"] {
        filesystem.read_only.push(system.into());
    }
    for name in palisade_policy::HOME_TOOLCHAIN {
        if exists(fs, &home.join(name)) {
            filesystem.read_only.push(home.join(name));
        }
    }
    for name in palisade_policy::HOME_CACHES {
        if exists(fs, &home.join(name)) {
            filesystem.copy_on_write.push(home.join(name));
        }
    }
    for name in palisade_policy::CREDENTIAL_STORES {
        filesystem.hidden.push(home.join(name));
    }
    match profile {
        Profile::WorkspaceWrite => filesystem.writable.push(workspace.clone()),
        _ => filesystem.read_only.push(workspace.clone()),
    }
    for root in filesystem.writable.clone() {
        for name in palisade_policy::PROTECTED_IN_WRITABLE {
            filesystem.protected.push(highest_missing(fs, &root.join(name), &root));
        }
        for name in ["commondir", "config.worktree", "gitdir"] {
            filesystem.revert_if_created.push(root.join(".git").join(name));
        }
    }
    for name in palisade_policy::HOME_EXEC_CONFIG {
        if exists(fs, &home.join(name)) {
            filesystem.protected.push(home.join(name));
        }
    }
    Policy {
        profile,
        workspace: workspace.clone(),
        cwd: workspace,
        home: home.into(),
        filesystem,
        network: NetworkMode::None,
        ports: Ports::default(),
        limits: Limits::defaults(Some(16 << 30)),
        env: vec![],
        dropped_env: vec![],
        allow_degraded: false,
        allow_ptrace: false,
    }
}

/// One named policy on one machine, with its generated profile.
pub struct Fixture {
    pub name: &'static str,
    pub policy: Policy,
    pub machine: Machine,
    pub fs: MemoryFileSystem,
}

impl Fixture {
    pub fn request(&self) -> Request {
        Request::from_policy(&self.policy, &self.machine, &self.fs).unwrap_or_else(|error| panic!("{}: {error}", self.name))
    }

    pub fn profile(&self) -> SeatbeltProfile {
        generate(&self.request()).unwrap_or_else(|error| panic!("{}: {error}", self.name))
    }
}

fn fixture(name: &'static str, fs: MemoryFileSystem, build: impl FnOnce(&MemoryFileSystem, &mut Policy, &mut Machine)) -> Fixture {
    let mut policy = policy(Profile::WorkspaceWrite, WORKSPACE, &fs);
    let mut machine = machine();
    build(&fs, &mut policy, &mut machine);
    Fixture { name, policy, machine, fs }
}

/// Returns a workspace at `path`, with protected names and a hidden `.env` inside it.
fn workspace_at(fs: MemoryFileSystem, path: &'static str) -> (MemoryFileSystem, Policy) {
    let fs = fs.with_present(format!("{path}/src"));
    let mut policy = policy(Profile::WorkspaceWrite, path, &fs);
    policy.filesystem.hidden.push(PathBuf::from(path).join(".env"));
    (fs, policy)
}

/// Every fixture, one golden profile each.
pub fn all() -> Vec<Fixture> {
    let mut fixtures = vec![
        fixture("read-only", mac(), |fs, policy, _| *policy = self::policy(Profile::ReadOnly, WORKSPACE, fs)),
        fixture("workspace-write", mac(), |_, _, _| {}),
        fixture("allowlist-network", mac(), |_, policy, machine| {
            let allow = vec!["crates.io".into(), "127.0.0.1:5432".into()];
            policy.network = NetworkMode::Allowlist { allow, deny: vec![], resolve_allowed: false };
            policy.ports = Ports { listen: Some(vec![8000]), expose: vec![] };
            machine.proxy_port = Some(PROXY_PORT);
        }),
        fixture("full-network", mac(), |_, policy, _| policy.network = NetworkMode::Full),
        fixture("symlinked-temp-dir", mac().with_present("/private/tmp/ws/src").with_present("/Volumes/Shared/data").with_symlink("/Users/dev/data", "/Volumes/Shared/data"), |fs, policy, _| {
            // A workspace given as /tmp/ws, and a readable path through a symbolic link: the
            // profile must name /private/tmp/ws and /Volumes/Shared/data.
            *policy = self::policy(Profile::WorkspaceWrite, "/tmp/ws", fs);
            policy.filesystem.read_only.push("/Users/dev/data".into());
            policy.filesystem.hidden.push("/tmp/ws/.env".into());
        }),
        fixture("absent-protected-names", mac().with_present("/Users/dev/src/fresh/README.md"), |fs, policy, _| {
            // No .git, no .vscode, no secrets directory: every protected name is missing.
            *policy = self::policy(Profile::WorkspaceWrite, "/Users/dev/src/fresh", fs);
            let root = Path::new("/Users/dev/src/fresh");
            policy.filesystem.protected.push(highest_missing(fs, &root.join("secrets/keys"), root));
        }),
        fixture("deny-inside-allow", mac().with_present("/Users/dev/data/private/key.pem").with_present("/Users/dev/data/public"), |_, policy, _| {
            policy.filesystem.read_only.push("/Users/dev/data".into());
            policy.filesystem.hidden.push("/Users/dev/data/private".into());
            policy.filesystem.hidden.push("/Users/dev/src/app/.env".into());
            policy.filesystem.hidden.push("/Users/dev/src/app/config/.env.local".into());
        }),
    ];
    for (name, path) in [
        ("path-with-quotes", "/Users/dev/src/say \"hi\" \\ bye"),
        ("path-with-spaces", "/Users/dev/My Projects/app one"),
        ("path-with-unicode", "/Users/dev/src/café-日本-🦀"),
    ] {
        let (fs, policy) = workspace_at(mac(), path);
        fixtures.push(Fixture { name, policy, machine: machine(), fs });
    }
    fixtures
}

/// The fixture called `name`.
pub fn named(name: &str) -> Fixture {
    all().into_iter().find(|fixture| fixture.name == name).unwrap_or_else(|| panic!("no fixture {name}"))
}
