//! The verdicts of the probes only macOS runs. They are pure, so the tests run on every
//! platform. The verdicts every platform shares are in `../judge.rs`.

use crate::selftest::attempt::Attempt;
use crate::selftest::host::Finished;
use crate::selftest::judge::no_result;
use crate::selftest::Verdict;

/// The text palisade's refusal inside another Seatbelt sandbox starts with.
pub const NESTED_MESSAGE: &str = "palisade is already running inside a Seatbelt sandbox";

/// Holds when the attempt succeeded, as reading the CPU's description and listing processes
/// must.
pub fn allowed(run: &Finished) -> Verdict {
    let Some(result) = &run.result else { return no_result(run) };
    if result.succeeded { Verdict::Held(result.detail.clone()) } else { Verdict::NotHeld(result.detail.clone()) }
}

/// Holds when every access to a denied `.env` file failed, the one allowed write succeeded
/// (`count` is 1), and on the host the `.env` files did not change and the allowed file is
/// there.
pub fn env_hidden(result: &Attempt, changes: &[String], allowed_on_host: bool) -> Verdict {
    if result.succeeded {
        return Verdict::NotHeld(result.detail.clone());
    }
    if !changes.is_empty() {
        return Verdict::NotHeld(format!("{}; on the host {}", result.detail, changes.join(", ")));
    }
    if result.count != Some(1) || !allowed_on_host {
        return Verdict::NotHeld(format!("{}: the workspace outside the denied files must stay writable", result.detail));
    }
    Verdict::Held(format!("{}; nothing denied changed on the host", result.detail))
}

/// Holds when every connection and the lookup succeeded and the listeners accepted: the
/// loopback one, and the one on this machine's own non-loopback address. That address stands
/// for the local network, so the verdict shows whether the profile lets connections to the
/// local network through, not whether other hosts of the network respond.
/// `own_address_accepted` is `None` when the machine has no such address: then the
/// local-network check could not run, and the probe skips unless something else failed.
pub fn full_network(result: &Attempt, loopback_accepted: usize, own_address_accepted: Option<usize>) -> Verdict {
    if !result.succeeded {
        return Verdict::NotHeld(format!("{}: with --net full, loopback, names and the local network must be reachable", result.detail));
    }
    if loopback_accepted == 0 || own_address_accepted == Some(0) {
        return Verdict::NotHeld(format!("{}, but a listener of selftest accepted no connection: the probe reached something else", result.detail));
    }
    match own_address_accepted {
        Some(_) => Verdict::Held(format!("{}; the listeners accepted the connections", result.detail)),
        None => Verdict::Skipped(format!(
            "this Mac has no non-loopback IPv4 address, so the local-network check could not run ({}; the loopback listener accepted the connection)",
            result.detail
        )),
    }
}

/// Holds when reading the case variants of a hidden file, hard-linking it into the workspace,
/// and hard-linking a protected file there all failed, and the host shows no change
/// (`changes`, such as a link that appeared). On a case-sensitive volume (`case_insensitive`
/// false) the variants name no file, so the detail states that only the hard links were
/// tested.
pub fn hidden_variants(result: &Attempt, changes: &[String], case_insensitive: bool) -> Verdict {
    if result.succeeded {
        return Verdict::NotHeld(result.detail.clone());
    }
    if !changes.is_empty() {
        return Verdict::NotHeld(format!("{}; on the host {}", result.detail, changes.join(", ")));
    }
    if case_insensitive {
        Verdict::Held(format!("{}; the volume is case-insensitive, so each variant names the hidden file", result.detail))
    } else {
        Verdict::Held(format!("{}; the volume is case-sensitive, so the variants name no file and only the hard links were tested", result.detail))
    }
}

/// Holds when listening on the allowed port worked (`count` is 1) and the connection to
/// another loopback port failed without the host's listener accepting it.
pub fn listen_without_egress(result: &Attempt, accepted: usize) -> Verdict {
    if result.count != Some(1) {
        return Verdict::NotHeld(format!("{}: listening on the port of --allow-listen must work", result.detail));
    }
    if result.succeeded || accepted > 0 {
        return Verdict::NotHeld(format!("{}; the host's listener accepted {accepted} connections", result.detail));
    }
    Verdict::Held(format!("{}; the host's listener accepted no connection", result.detail))
}

/// Holds when palisade, started inside another Seatbelt sandbox, rejected the run with status
/// 125 and a message that names the cause.
pub fn nested(code: Option<i32>, stderr: &str) -> Verdict {
    let last_line = stderr.lines().last().unwrap_or_default().trim();
    match code {
        Some(125) if stderr.contains(NESTED_MESSAGE) => Verdict::Held(format!("palisade rejected the run with status 125: {last_line}")),
        Some(125) => Verdict::NotHeld(format!("palisade failed with status 125 for another reason: {last_line}")),
        Some(code) => Verdict::NotHeld(format!("palisade ran inside the outer sandbox and exited with status {code}")),
        None => Verdict::NotHeld(format!("palisade ended without a status: {last_line}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::selftest::judge::fixtures::*;

    #[test]
    fn allowed_needs_success() {
        assert!(is_held(&allowed(&finished(Some(success("hw.ncpu is 8; ps listed 300 processes"))))));
        assert!(matches!(allowed(&finished(Some(failure(1, "ps failed")))), Verdict::NotHeld(_)));
        assert!(matches!(allowed(&finished(None)), Verdict::Skipped(_)));
    }

    #[test]
    fn env_hidden_needs_the_allowed_write() {
        let refused = Attempt { count: Some(1), ..failure(1, "reading ../.env failed") };
        assert!(is_held(&env_hidden(&refused, &[], true)));
        assert!(matches!(env_hidden(&refused, &[".env changed".into()], true), Verdict::NotHeld(_)));
        assert!(matches!(env_hidden(&refused, &[], false), Verdict::NotHeld(_)));
        let nothing_writable = Attempt { count: Some(0), ..refused.clone() };
        assert!(matches!(env_hidden(&nothing_writable, &[], true), Verdict::NotHeld(_)));
        assert!(matches!(env_hidden(&Attempt { count: Some(1), ..success("read 7 bytes of ../.env") }, &[], true), Verdict::NotHeld(_)));
    }

    #[test]
    fn full_network_needs_every_listener() {
        let reached = success("connecting succeeded");
        assert!(is_held(&full_network(&reached, 1, Some(1))));
        let Verdict::Skipped(detail) = full_network(&reached, 1, None) else { panic!("without an own address the probe must skip") };
        assert!(detail.contains("local-network check could not run"), "{detail}");
        assert!(matches!(full_network(&reached, 0, None), Verdict::NotHeld(_)));
        let Verdict::Held(detail) = full_network(&reached, 1, Some(1)) else { unreachable!() };
        assert!(!detail.contains("skipped"), "{detail}");
        assert!(matches!(full_network(&reached, 1, Some(0)), Verdict::NotHeld(_)));
        assert!(matches!(full_network(&failure(1, "resolving localhost failed"), 1, None), Verdict::NotHeld(_)));
    }

    #[test]
    fn hidden_variants_fail_on_any_success_or_change() {
        let refused = failure(1, "reading .SSH/id_ed25519 failed; hard-linking failed");
        let Verdict::Held(detail) = hidden_variants(&refused, &[], true) else { panic!("case-insensitive refusal must hold") };
        assert!(detail.contains("case-insensitive"), "{detail}");
        let Verdict::Held(detail) = hidden_variants(&refused, &[], false) else { panic!("case-sensitive refusal must hold") };
        assert!(detail.contains("only the hard links were tested"), "{detail}");
        assert!(matches!(hidden_variants(&success("read 56 bytes of .SSH/id_ed25519"), &[], true), Verdict::NotHeld(_)));
        assert!(matches!(hidden_variants(&refused, &["selftest-hidden-link appeared".into()], true), Verdict::NotHeld(_)));
    }

    // https://github.com/anthropic-experimental/sandbox-runtime/issues/131: a rule on the local
    // end of a socket let every outbound connection through once listening was allowed.
    #[test]
    fn listen_without_egress_needs_both_halves() {
        let listened = Attempt { count: Some(1), ..failure(1, "connecting failed") };
        assert!(is_held(&listen_without_egress(&listened, 0)));
        assert!(matches!(listen_without_egress(&listened, 1), Verdict::NotHeld(_)));
        let connected = Attempt { count: Some(1), ..success("connecting succeeded") };
        assert!(matches!(listen_without_egress(&connected, 1), Verdict::NotHeld(_)));
        let no_listen = Attempt { count: Some(0), ..failure(1, "listening failed") };
        assert!(matches!(listen_without_egress(&no_listen, 0), Verdict::NotHeld(_)));
    }

    // https://github.com/openai/codex/issues/45657: inside another Seatbelt sandbox, a
    // sandboxed agent failed late with "sandbox_apply: Operation not permitted".
    #[test]
    fn nested_needs_the_refusal_message() {
        let stderr = format!("palisade: error: {NESTED_MESSAGE} (its parent process is \"sandbox-exec\"), ...");
        assert!(is_held(&nested(Some(125), &stderr)));
        assert!(matches!(nested(Some(125), "palisade: error: invalid policy"), Verdict::NotHeld(_)));
        assert!(matches!(nested(Some(0), ""), Verdict::NotHeld(_)));
    }
}
