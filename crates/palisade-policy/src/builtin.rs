//! The built-in lists behind the profiles: what the system offers read-only, which parts of the
//! home directory builds need, which credential stores stay hidden and which files inside
//! writable roots stay read-only because the host later executes or trusts them.

/// System directories visible read-only (when they exist on the host). `/var` is limited to the
/// parts tools read; `/var/tmp` gets a private tmpfs, and `/var/run`, `/var/lock`, `/var/mail`,
/// `/var/spool` and `/var/log` are absent.
pub const SYSTEM_READ: &[&str] = &[
    "/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc", "/opt",
    "/var/lib", "/var/cache", "/var/opt", "/nix/store",
];

/// Toolchain and configuration entries of the home directory visible read-only (relative to
/// the home directory). Credential stores inside them stay hidden, see [`CREDENTIAL_STORES`].
pub const HOME_TOOLCHAIN: &[&str] = &[
    ".rustup", ".local", ".pyenv", ".nvm", ".volta", ".bun", ".deno", ".rbenv", ".asdf",
    ".sdkman", ".gitconfig", ".config/git",
];

/// Caches that builds write into. Each is visible through a copy-on-write layer: writes succeed
/// inside the sandbox and are discarded when the run ends, so the host's cache never changes.
pub const HOME_CACHES: &[&str] = &[".cargo", ".npm", ".cache", ".m2", ".gradle", "go", ".yarn"];

/// Entries inside the caches that tools execute or trust as configuration. They stay read-only
/// even inside the copy-on-write layer, so a command cannot change what its own later tools run.
pub const HOME_EXEC_CONFIG: &[&str] = &[
    ".cargo/bin", ".cargo/config", ".cargo/config.toml", ".cargo/env", ".m2/settings.xml",
    ".gradle/init.d", ".gradle/init.gradle", "go/bin", ".yarnrc",
];

/// Credential stores hidden from every sandbox (relative to the home directory). They read as
/// absent wherever palisade can remove them from the view, and as unreadable elsewhere.
pub const CREDENTIAL_STORES: &[&str] = &[
    ".ssh", ".aws", ".gnupg", ".config/gh", ".config/gcloud", ".config/hub", ".config/glab-cli",
    ".azure", ".kube", ".docker", ".netrc", ".git-credentials", ".config/git/credentials",
    ".npmrc", ".yarnrc.yml", ".pypirc", ".pgpass", ".my.cnf", ".vault-token",
    ".cargo/credentials", ".cargo/credentials.toml", ".gem/credentials",
    ".config/composer/auth.json", ".composer/auth.json", ".terraform.d/credentials.tfrc.json",
    ".gradle/gradle.properties", ".m2/settings-security.xml", ".password-store",
    ".local/share/keyrings", ".config/op", ".config/1Password", ".config/Bitwarden CLI",
    ".claude/.credentials.json", ".codex/auth.json", ".config/anthropic", ".config/openai",
    ".config/palisade", ".cache/palisade", ".ethereum", ".bitcoin", ".electrum",
    ".config/solana", ".mozilla", ".config/google-chrome",
    ".config/chromium", ".thunderbird",
];

/// Names inside every writable root that stay read-only and cannot be created, because the host
/// later executes or trusts them: git's hooks and configuration, and the configuration
/// directories of agents and editors that run commands when they open a project.
pub const PROTECTED_IN_WRITABLE: &[&str] = &[
    ".git/hooks", ".git/config", ".git/info", ".palisade", ".codex", ".claude", ".gemini",
    ".cursor", ".vscode", ".idea", ".zed", ".continue", ".devcontainer",
];

/// Shell start-up files and other files the user's next login runs (relative to the home
/// directory). They matter when a writable root contains the home directory.
pub const PROTECTED_IN_HOME: &[&str] = &[
    ".bashrc", ".bash_profile", ".bash_login", ".bash_logout", ".profile", ".zshrc", ".zshenv",
    ".zprofile", ".zlogin", ".zlogout", ".config/fish", ".config/autostart", ".config/systemd",
    ".config/environment.d", ".xprofile", ".xsessionrc", ".inputrc", ".pam_environment",
    ".config/palisade", ".local/bin", ".cargo/bin",
];
