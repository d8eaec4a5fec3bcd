//! The filter that decides which environment variables reach the sandbox.

/// Name fragments that mark a variable as a likely credential. Matching ignores case.
const SECRET_FRAGMENTS: &[&str] = &[
    "TOKEN", "SECRET", "KEY", "PASSWORD", "PASSWD", "PASS", "CREDENTIAL", "AUTH", "COOKIE",
    "SESSION", "PRIVATE", "CERT",
];

/// Name prefixes of cloud and service credentials that do not contain a fragment above.
const SECRET_PREFIXES: &[&str] = &[
    "AWS_", "AZURE_", "GOOGLE_", "GCP_", "GCLOUD_", "CLOUDSDK_", "DIGITALOCEAN_", "HEROKU_",
    "DOCKER_", "KUBE", "VAULT_", "NPM_CONFIG_", "PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL",
    "CARGO_REGISTRIES_", "OP_", "SSH_", "GPG_", "DATABASE_URL", "REDIS_URL", "SENTRY_DSN",
];

/// Variables that are always dropped because they point at host sockets or agents that the
/// sandbox cannot reach anyway, and whose presence would mislead tools.
const HOST_SOCKET_VARS: &[&str] =
    &["SSH_AUTH_SOCK", "DBUS_SESSION_BUS_ADDRESS", "XDG_RUNTIME_DIR", "DISPLAY", "WAYLAND_DISPLAY"];

/// Returns true when a variable named `name` is dropped unless passed explicitly with `--env`.
pub fn looks_secret(name: &str) -> bool {
    let upper = name.to_ascii_uppercase();
    // `PASS` would also match harmless names such as `PASSTHROUGH`; `KEY` matches `KEYBOARD`.
    // A few false drops are the price of never passing a token by accident, and `--env NAME`
    // passes any of them back.
    SECRET_FRAGMENTS.iter().any(|fragment| upper.contains(fragment))
        || SECRET_PREFIXES.iter().any(|prefix| upper.starts_with(prefix))
        || HOST_SOCKET_VARS.contains(&upper.as_str())
}

#[cfg(test)]
mod tests {
    use super::looks_secret;

    #[test]
    fn credential_names_are_secret() {
        for name in [
            "GITHUB_TOKEN", "gh_token", "OPENAI_API_KEY", "AWS_ACCESS_KEY_ID", "AWS_REGION",
            "DB_PASSWORD", "MY_SECRET", "SSH_AUTH_SOCK", "NPM_CONFIG__AUTH", "DATABASE_URL",
        ] {
            assert!(looks_secret(name), "{name} should be dropped");
        }
    }

    #[test]
    fn ordinary_names_pass() {
        for name in ["PATH", "HOME", "LANG", "TERM", "USER", "CARGO_HOME", "RUSTUP_HOME", "LC_ALL", "EDITOR", "SHELL"] {
            assert!(!looks_secret(name), "{name} should pass");
        }
    }
}
