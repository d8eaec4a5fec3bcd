//! The fixed identities of palisade's Windows Filtering Platform objects and the parts of each
//! filter that need no Windows call: keys, names, weights, and the security descriptor that
//! makes a condition match one account. `sys::wfp` installs and verifies the filters with them.

use crate::ace::{Acl, Sid, ace_type};
use crate::plan::{AccountKind, Filter, FilterAction, Layer};

/// The key of palisade's provider, which owns its sublayer and filters.
pub const PROVIDER_KEY: u128 = 0x5f1c_2a7e_9b0d_4c36_8e41_7a2d_c0b3_9e01;

/// The key of palisade's sublayer. Its filters are arbitrated apart from the Windows
/// Firewall's: a block here wins over a permit in another sublayer, unless that permit clears
/// the action right from a sublayer of higher weight.
pub const SUBLAYER_KEY: u128 = 0x5f1c_2a7e_9b0d_4c36_8e41_7a2d_c0b3_9e02;

/// The weight of palisade's sublayer. Sublayers of higher weight are evaluated first, and only
/// a higher one could override palisade's block with a hard permit, so it is near the top.
///
/// NOTE: chosen from the documented arbitration rules; not measured against the weights that
/// other products on a real machine use.
pub const SUBLAYER_WEIGHT: u16 = 0xf000;

/// The upper 64 bits of every filter key. The lower 64 bits name the account and the filter,
/// so that the filters of each caller's accounts, on a machine with several callers, have keys
/// of their own.
const FILTER_KEY_BASE: u128 = 0x5f1c_2a7e_9b0d_4c36_0000_0000_0000_0000;

/// `FWP_ACTRL_MATCH_FILTER`, the right a user-matching security descriptor grants. SDDL has no
/// name of its own for it and writes the bit as `CC`.
pub const ACTRL_MATCH_FILTER: u32 = 0x1;

pub const PROVIDER_NAME: &str = "palisade";
pub const PROVIDER_DESCRIPTION: &str = "Network filters of palisade's sandbox accounts";
pub const SUBLAYER_NAME: &str = "palisade sandbox accounts";

/// Computes the key of `filter` for the account named `account_name`. It depends only on the account's
/// name and the filter's properties, so `palisade setup` replaces a filter in place and a run
/// finds it with `FwpmFilterGetByKey0`.
pub fn filter_key(filter: &Filter, account_name: &str) -> u128 {
    let account = fnv1a64(account_name.to_lowercase().as_bytes()) & 0xffff_ffff_ffff_0000;
    let kind = match filter.account {
        AccountKind::Offline => 0u16,
        AccountKind::Online => 1,
    };
    let layer = match filter.layer {
        Layer::ConnectV4 => 0u16,
        Layer::ConnectV6 => 1,
        Layer::AcceptV4 => 2,
        Layer::AcceptV6 => 3,
    };
    let action = match filter.action {
        FilterAction::Block => 0u16,
        FilterAction::Permit => 1,
    };
    let code = kind << 12
        | layer << 8
        | action << 4
        | u16::from(filter.remote_ports.is_some()) << 2
        | u16::from(filter.loopback_only) << 1
        | u16::from(filter.remote_is_sandbox);
    FILTER_KEY_BASE | u128::from(account | u64::from(code))
}

/// Formats the security descriptor that `FWPM_CONDITION_ALE_USER_ID` and
/// `FWPM_CONDITION_ALE_REMOTE_USER_ID` compare a socket's user with: the condition matches
/// when an access check of the user's token for `FWP_ACTRL_MATCH_FILTER` succeeds, so the
/// descriptor grants that right to the account's SID alone.
pub fn user_match_sddl(sid: &str) -> String {
    format!("D:(A;;CC;;;{sid})")
}

/// Checks whether the self-relative security descriptor `bytes` of a filter condition, as the
/// engine returns it, grants `sid` the right that makes the condition match.
pub fn descriptor_matches(bytes: &[u8], sid: &Sid) -> bool {
    // SECURITY_DESCRIPTOR_RELATIVE: revision, padding, control, then the offsets of owner,
    // group, SACL and DACL (winnt.h).
    const SE_DACL_PRESENT: u16 = 0x0004;
    const SE_SELF_RELATIVE: u16 = 0x8000;
    if bytes.len() < 20 || bytes[0] != 1 {
        return false;
    }
    let control = u16::from_le_bytes([bytes[2], bytes[3]]);
    let dacl_offset = u32::from_le_bytes([bytes[16], bytes[17], bytes[18], bytes[19]]) as usize;
    if control & SE_SELF_RELATIVE == 0 || control & SE_DACL_PRESENT == 0 || dacl_offset == 0 {
        return false;
    }
    let Some(Ok(dacl)) = bytes.get(dacl_offset..).map(Acl::parse) else {
        return false;
    };
    dacl.aces.iter().any(|ace| ace.ace_type == ace_type::ALLOW && ace.sid() == Some(sid) && ace.mask().is_some_and(|mask| mask & ACTRL_MATCH_FILTER != 0))
}

/// Formats the display name of a filter, shown by `netsh wfp show filters`.
pub fn filter_name(filter: &Filter, account_name: &str) -> String {
    let action = match filter.action {
        FilterAction::Block => "block",
        FilterAction::Permit => "permit",
    };
    let mut scope = String::new();
    if filter.loopback_only {
        scope.push_str(" loopback");
    }
    if filter.remote_is_sandbox {
        scope.push_str(" same-account");
    }
    if let Some((first, last)) = filter.remote_ports {
        scope.push_str(&format!(" ports {first}-{last}"));
    }
    format!("palisade: {action}{scope} {} for {account_name}", layer_name(filter.layer))
}

/// Returns the name of the layer in the Windows SDK.
pub fn layer_name(layer: Layer) -> &'static str {
    match layer {
        Layer::ConnectV4 => "FWPM_LAYER_ALE_AUTH_CONNECT_V4",
        Layer::ConnectV6 => "FWPM_LAYER_ALE_AUTH_CONNECT_V6",
        Layer::AcceptV4 => "FWPM_LAYER_ALE_AUTH_RECV_ACCEPT_V4",
        Layer::AcceptV6 => "FWPM_LAYER_ALE_AUTH_RECV_ACCEPT_V6",
    }
}

/// Formats a key as Windows writes a GUID: `{5F1C2A7E-9B0D-4C36-8E41-7A2DC0B39E01}`.
pub fn guid_text(key: u128) -> String {
    let bytes = key.to_be_bytes();
    let hex: String = bytes.iter().map(|byte| format!("{byte:02X}")).collect();
    format!("{{{}-{}-{}-{}-{}}}", &hex[..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..])
}

/// Hashes with 64-bit FNV-1a, which is stable across versions and platforms, so keys never
/// change.
fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &byte| (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ace::Ace;

    fn all_filters() -> Vec<Filter> {
        let mut filters = Vec::new();
        for account in [AccountKind::Offline, AccountKind::Online] {
            for layer in [Layer::ConnectV4, Layer::ConnectV6, Layer::AcceptV4, Layer::AcceptV6] {
                for action in [FilterAction::Block, FilterAction::Permit] {
                    for (loopback_only, remote_is_sandbox) in [(false, false), (true, false), (false, true), (true, true)] {
                        for remote_ports in [None, Some(crate::plan::PROXY_PORTS)] {
                            filters.push(Filter { account, layer, action, loopback_only, remote_is_sandbox, remote_ports, weight: 1 });
                        }
                    }
                }
            }
        }
        filters
    }

    #[test]
    fn every_filter_has_its_own_key() {
        let filters = all_filters();
        let mut keys: Vec<u128> = filters.iter().map(|filter| filter_key(filter, "pal-dev-1234")).collect();
        keys.sort_unstable();
        keys.dedup();
        assert_eq!(keys.len(), filters.len());
        assert!(keys.iter().all(|key| key >> 64 == FILTER_KEY_BASE >> 64));
        assert!(!keys.contains(&PROVIDER_KEY));
        assert!(!keys.contains(&SUBLAYER_KEY));
    }

    #[test]
    fn keys_differ_between_callers_and_not_with_case() {
        let filter = &all_filters()[0];
        assert_ne!(filter_key(filter, "pal-alice-1a2b"), filter_key(filter, "pal-bob-3c4d"));
        assert_eq!(filter_key(filter, "PAL-Alice-1A2B"), filter_key(filter, "pal-alice-1a2b"));
    }

    #[test]
    fn keys_are_stable_across_releases() {
        // A changed key would leave the filters of an earlier setup behind, unverified and
        // unremovable by key: this value must never change.
        let filter = Filter { account: AccountKind::Offline, layer: Layer::ConnectV4, action: FilterAction::Block, loopback_only: false, remote_is_sandbox: false, remote_ports: None, weight: 1 };
        assert_eq!(guid_text(filter_key(&filter, "pal-dev-1234")), format!("{{5F1C2A7E-9B0D-4C36-{}}}", {
            let low = fnv1a64(b"pal-dev-1234") & 0xffff_ffff_ffff_0000;
            let hex = format!("{low:016X}");
            format!("{}-{}", &hex[..4], &hex[4..])
        }));
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
    }

    #[test]
    fn user_descriptor_names_one_sid() {
        assert_eq!(user_match_sddl("S-1-5-21-1-2-3-1001"), "D:(A;;CC;;;S-1-5-21-1-2-3-1001)");
    }

    /// A self-relative descriptor with only a DACL, laid out as Windows returns one.
    fn relative_descriptor(dacl: &Acl) -> Vec<u8> {
        let mut bytes = vec![1, 0];
        bytes.extend_from_slice(&(0x8000u16 | 0x0004).to_le_bytes());
        bytes.extend_from_slice(&[0; 12]);
        bytes.extend_from_slice(&20u32.to_le_bytes());
        bytes.extend_from_slice(&dacl.to_bytes().unwrap());
        bytes
    }

    #[test]
    fn descriptor_matches_only_the_account() {
        let sid = Sid::parse("S-1-5-21-1-2-3-1001").unwrap();
        let other = Sid::parse("S-1-5-21-1-2-3-1002").unwrap();
        let descriptor = relative_descriptor(&Acl::new(vec![Ace::allow(&sid, ACTRL_MATCH_FILTER, 0)]));
        assert!(descriptor_matches(&descriptor, &sid));
        assert!(!descriptor_matches(&descriptor, &other));
        let deny = relative_descriptor(&Acl::new(vec![Ace::deny(&sid, ACTRL_MATCH_FILTER, 0)]));
        assert!(!descriptor_matches(&deny, &sid));
        let wrong_right = relative_descriptor(&Acl::new(vec![Ace::allow(&sid, 0x2, 0)]));
        assert!(!descriptor_matches(&wrong_right, &sid));
        assert!(!descriptor_matches(&descriptor[..19], &sid));
        let mut absolute = descriptor.clone();
        absolute[3] &= 0x7f;
        assert!(!descriptor_matches(&absolute, &sid), "an absolute descriptor holds pointers, not offsets");
    }

    #[test]
    fn guid_text_has_windows_layout() {
        assert_eq!(guid_text(PROVIDER_KEY), "{5F1C2A7E-9B0D-4C36-8E41-7A2DC0B39E01}");
    }

    #[test]
    fn filter_names_say_what_they_do() {
        let filter = Filter { account: AccountKind::Offline, layer: Layer::ConnectV6, action: FilterAction::Permit, loopback_only: true, remote_is_sandbox: true, remote_ports: None, weight: 10 };
        assert_eq!(filter_name(&filter, "pal-dev-1234"), "palisade: permit loopback same-account FWPM_LAYER_ALE_AUTH_CONNECT_V6 for pal-dev-1234");
    }
}
