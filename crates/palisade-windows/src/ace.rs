//! Security identifiers and access control lists as bytes, and the palisade entries that each
//! file object should carry under a [`FilePlan`].
//!
//! `sys::acl` reads an object's DACL and mandatory label, passes them here, and writes back
//! what [`merge_dacl`] and [`merge_label`] return. The byte layouts are those of `winnt.h`
//! (`SID`, `ACL`, `ACE_HEADER`, `ACCESS_ALLOWED_ACE`, `SYSTEM_MANDATORY_LABEL_ACE`), so the
//! ordering rules and the inheritance that setup computes itself are tested on every platform.
//!
//! Setup walks each tree itself instead of letting Windows propagate inheritance, because the
//! walk must stop at junctions and symbolic links. It therefore writes on each object what
//! automatic inheritance would have written: the entry on a root is explicit and inheritable,
//! and the copy on each object below it is marked `INHERITED_ACE`. Deny entries are the
//! exception: they are explicit on every object of a hidden or protected tree, so they come
//! first in every DACL there and no explicit allow entry on a single file can precede them.

use std::fmt;

use crate::path::WinPath;
use crate::plan::FilePlan;

/// `ACE_HEADER.AceType` values, from `winnt.h`.
pub mod ace_type {
    pub const ALLOW: u8 = 0x00;
    pub const DENY: u8 = 0x01;
    pub const MANDATORY_LABEL: u8 = 0x11;
}

/// `ACE_HEADER.AceFlags` values, from `winnt.h`.
pub mod ace_flags {
    pub const OBJECT_INHERIT: u8 = 0x01;
    pub const CONTAINER_INHERIT: u8 = 0x02;
    pub const NO_PROPAGATE_INHERIT: u8 = 0x04;
    pub const INHERIT_ONLY: u8 = 0x08;
    pub const INHERITED: u8 = 0x10;
    /// Inherited by files and directories below, and applying to the object itself.
    pub const TREE: u8 = OBJECT_INHERIT | CONTAINER_INHERIT;
}

/// `SYSTEM_MANDATORY_LABEL_NO_WRITE_UP`: a process below the label's level may not write.
pub const LABEL_NO_WRITE_UP: u32 = 0x1;

/// The SID of the Low mandatory level.
pub const LOW_INTEGRITY_SID: &str = "S-1-16-4096";

/// `ACL_REVISION`, for ACLs that hold only the entry types above.
const ACL_REVISION: u8 = 2;
const ACL_HEADER_LEN: usize = 8;
const ACE_HEADER_LEN: usize = 4;
/// A SID has at most 15 sub-authorities (`SID_MAX_SUB_AUTHORITIES`).
const SID_MAX_SUB_AUTHORITIES: usize = 15;

/// The reason bytes or text are not a valid SID or ACL.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FormatError {
    #[error("{0:?} is not a SID: expected S-1-<authority>-<sub-authority>...")]
    SidText(String),
    #[error("the SID bytes are truncated or have an unknown revision")]
    SidBytes,
    #[error("the ACL is truncated or its header is inconsistent: {0}")]
    Acl(&'static str),
    #[error("the ACL would be {0} bytes, more than the 65535 an ACL may hold")]
    AclTooLarge(usize),
}

/// A security identifier in its binary form.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Sid(Vec<u8>);

impl Sid {
    /// Parses the string form, `S-1-5-21-...`.
    pub fn parse(text: &str) -> Result<Sid, FormatError> {
        let invalid = || FormatError::SidText(text.to_owned());
        let mut parts = text.split('-');
        if !parts.next().is_some_and(|s| s.eq_ignore_ascii_case("S")) || parts.next() != Some("1") {
            return Err(invalid());
        }
        let authority_text = parts.next().ok_or_else(invalid)?;
        let authority = match authority_text.strip_prefix("0x").or_else(|| authority_text.strip_prefix("0X")) {
            Some(hex) => u64::from_str_radix(hex, 16),
            None => authority_text.parse::<u64>(),
        }
        .map_err(|_| invalid())?;
        if authority >= 1 << 48 {
            return Err(invalid());
        }
        let sub_authorities: Vec<u32> = parts.map(|part| part.parse::<u32>().map_err(|_| invalid())).collect::<Result<_, _>>()?;
        if sub_authorities.len() > SID_MAX_SUB_AUTHORITIES {
            return Err(invalid());
        }
        let mut bytes = vec![1, sub_authorities.len() as u8];
        bytes.extend_from_slice(&authority.to_be_bytes()[2..]);
        for sub_authority in sub_authorities {
            bytes.extend_from_slice(&sub_authority.to_le_bytes());
        }
        Ok(Sid(bytes))
    }

    /// Reads a SID from the start of `bytes`, which may hold more after it.
    pub fn from_bytes(bytes: &[u8]) -> Result<Sid, FormatError> {
        if bytes.len() < 8 || bytes[0] != 1 || usize::from(bytes[1]) > SID_MAX_SUB_AUTHORITIES {
            return Err(FormatError::SidBytes);
        }
        let len = 8 + 4 * usize::from(bytes[1]);
        let sid = bytes.get(..len).ok_or(FormatError::SidBytes)?;
        Ok(Sid(sid.to_vec()))
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Display for Sid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut authority = [0u8; 8];
        authority[2..].copy_from_slice(&self.0[2..8]);
        let authority = u64::from_be_bytes(authority);
        if authority >= 1 << 32 {
            write!(f, "S-1-0x{authority:012X}")?;
        } else {
            write!(f, "S-1-{authority}")?;
        }
        for chunk in self.0[8..].chunks_exact(4) {
            write!(f, "-{}", u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]))?;
        }
        Ok(())
    }
}

impl fmt::Debug for Sid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sid({self})")
    }
}

/// One access control entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ace {
    pub ace_type: u8,
    pub flags: u8,
    pub body: AceBody,
}

/// The part of an entry after its header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AceBody {
    /// The layout of allow, deny and mandatory label entries: an access mask and a SID.
    MaskSid { mask: u32, sid: Sid },
    /// Any other entry type (object, callback, audit, resource attribute), kept byte for byte.
    Other(Vec<u8>),
}

impl Ace {
    pub fn allow(sid: &Sid, mask: u32, flags: u8) -> Ace {
        Ace { ace_type: ace_type::ALLOW, flags, body: AceBody::MaskSid { mask, sid: sid.clone() } }
    }

    pub fn deny(sid: &Sid, mask: u32, flags: u8) -> Ace {
        Ace { ace_type: ace_type::DENY, flags, body: AceBody::MaskSid { mask, sid: sid.clone() } }
    }

    /// Builds the Low mandatory label with no-write-up.
    pub fn low_label(flags: u8) -> Ace {
        let sid = Sid::parse(LOW_INTEGRITY_SID).expect("the Low integrity SID is well formed");
        Ace { ace_type: ace_type::MANDATORY_LABEL, flags, body: AceBody::MaskSid { mask: LABEL_NO_WRITE_UP, sid } }
    }

    /// Returns the SID of an allow, deny or label entry.
    pub fn sid(&self) -> Option<&Sid> {
        match &self.body {
            AceBody::MaskSid { sid, .. } if self.is_mask_sid_type() => Some(sid),
            _ => None,
        }
    }

    pub fn mask(&self) -> Option<u32> {
        match &self.body {
            AceBody::MaskSid { mask, .. } if self.is_mask_sid_type() => Some(*mask),
            _ => None,
        }
    }

    pub fn is_inherited(&self) -> bool {
        self.flags & ace_flags::INHERITED != 0
    }

    fn is_mask_sid_type(&self) -> bool {
        matches!(self.ace_type, ace_type::ALLOW | ace_type::DENY | ace_type::MANDATORY_LABEL)
    }

    /// Formats the entry in SDDL, as `palisade setup --dry-run` shows it:
    /// `(A;OICI;0x1301bf;;;S-1-...)`.
    pub fn to_sddl(&self) -> String {
        let kind = match self.ace_type {
            ace_type::ALLOW => "A",
            ace_type::DENY => "D",
            ace_type::MANDATORY_LABEL => "ML",
            _ => "?",
        };
        let mut flags = String::new();
        for (bit, text) in [
            (ace_flags::OBJECT_INHERIT, "OI"),
            (ace_flags::CONTAINER_INHERIT, "CI"),
            (ace_flags::NO_PROPAGATE_INHERIT, "NP"),
            (ace_flags::INHERIT_ONLY, "IO"),
            (ace_flags::INHERITED, "ID"),
        ] {
            if self.flags & bit != 0 {
                flags.push_str(text);
            }
        }
        match &self.body {
            AceBody::MaskSid { mask, sid } if self.ace_type == ace_type::MANDATORY_LABEL && *mask == LABEL_NO_WRITE_UP && sid.to_string() == LOW_INTEGRITY_SID => {
                format!("({kind};{flags};NW;;;LW)")
            }
            AceBody::MaskSid { mask, sid } => format!("({kind};{flags};0x{mask:x};;;{sid})"),
            AceBody::Other(_) => format!("(type 0x{:02x};{flags})", self.ace_type),
        }
    }

    fn encoded_len(&self) -> usize {
        ACE_HEADER_LEN
            + match &self.body {
                AceBody::MaskSid { sid, .. } => 4 + sid.0.len(),
                AceBody::Other(bytes) => bytes.len(),
            }
    }
}

/// An access control list: a DACL, or the label entries of a SACL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acl {
    pub revision: u8,
    pub aces: Vec<Ace>,
}

impl Acl {
    pub fn new(aces: Vec<Ace>) -> Acl {
        Acl { revision: ACL_REVISION, aces }
    }

    /// Parses an `ACL` structure; `bytes` may extend past its `AclSize`.
    pub fn parse(bytes: &[u8]) -> Result<Acl, FormatError> {
        if bytes.len() < ACL_HEADER_LEN {
            return Err(FormatError::Acl("shorter than its header"));
        }
        let size = usize::from(u16::from_le_bytes([bytes[2], bytes[3]]));
        let count = usize::from(u16::from_le_bytes([bytes[4], bytes[5]]));
        let acl = bytes.get(..size).ok_or(FormatError::Acl("AclSize exceeds the buffer"))?;
        let mut offset = ACL_HEADER_LEN;
        let mut aces = Vec::with_capacity(count);
        for _ in 0..count {
            let header = acl.get(offset..offset + ACE_HEADER_LEN).ok_or(FormatError::Acl("an entry header is cut off"))?;
            let ace_size = usize::from(u16::from_le_bytes([header[2], header[3]]));
            if ace_size < ACE_HEADER_LEN {
                return Err(FormatError::Acl("an entry is shorter than its header"));
            }
            let body = acl.get(offset + ACE_HEADER_LEN..offset + ace_size).ok_or(FormatError::Acl("an entry is cut off"))?;
            let (ace_type, flags) = (header[0], header[1]);
            let body = match ace_type {
                ace_type::ALLOW | ace_type::DENY | ace_type::MANDATORY_LABEL if body.len() >= 12 => {
                    let mask = u32::from_le_bytes([body[0], body[1], body[2], body[3]]);
                    let sid = Sid::from_bytes(&body[4..])?;
                    if 4 + sid.0.len() == body.len() {
                        AceBody::MaskSid { mask, sid }
                    } else {
                        // Padding after the SID: keep the entry as it is.
                        AceBody::Other(body.to_vec())
                    }
                }
                _ => AceBody::Other(body.to_vec()),
            };
            aces.push(Ace { ace_type, flags, body });
            offset += ace_size;
        }
        Ok(Acl { revision: bytes[0], aces })
    }

    /// Encodes the list as an `ACL` structure.
    pub fn to_bytes(&self) -> Result<Vec<u8>, FormatError> {
        let size = ACL_HEADER_LEN + self.aces.iter().map(Ace::encoded_len).sum::<usize>();
        let size16 = u16::try_from(size).map_err(|_| FormatError::AclTooLarge(size))?;
        let mut bytes = Vec::with_capacity(size);
        bytes.extend_from_slice(&[self.revision.max(ACL_REVISION), 0]);
        bytes.extend_from_slice(&size16.to_le_bytes());
        bytes.extend_from_slice(&(self.aces.len() as u16).to_le_bytes());
        bytes.extend_from_slice(&[0, 0]);
        for ace in &self.aces {
            bytes.extend_from_slice(&[ace.ace_type, ace.flags]);
            bytes.extend_from_slice(&(ace.encoded_len() as u16).to_le_bytes());
            match &ace.body {
                AceBody::MaskSid { mask, sid } => {
                    bytes.extend_from_slice(&mask.to_le_bytes());
                    bytes.extend_from_slice(&sid.0);
                }
                AceBody::Other(body) => bytes.extend_from_slice(body),
            }
        }
        Ok(bytes)
    }

    /// The list in SDDL, without the `D:` or `S:` prefix.
    pub fn to_sddl(&self) -> String {
        self.aces.iter().map(Ace::to_sddl).collect()
    }
}

/// The palisade entries one object should carry.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ObjectEntries {
    /// Deny entries first, then allow entries, for every sandbox account.
    pub dacl: Vec<Ace>,
    /// The Low label, when the object is a writable root or lies below one.
    pub label: Option<Ace>,
    /// Whether the object is in a hidden or protected tree, where an entry that cannot be
    /// written must stop setup instead of being skipped.
    pub denied: bool,
}

/// Computes the entries of the object at `path` for the sandbox accounts' `sids`. `files` must
/// hold resolved paths: the long, final names of the roots, as the walk reaches them.
pub fn object_entries(files: &FilePlan, sids: &[Sid], path: &WinPath, is_dir: bool) -> ObjectEntries {
    let (mut deny_mask, mut pin_mask) = (0, 0);
    for deny in &files.denies {
        if deny.tree && path.starts_with(&deny.path) {
            deny_mask |= deny.mask;
        } else if !deny.tree && deny.path == *path {
            pin_mask |= deny.mask;
        }
    }
    // A pin covers its directory alone, so it is written without inheritance flags.
    pin_mask &= !deny_mask;
    let (mut explicit_allow, mut inherited_allow) = (0, 0);
    for grant in files.grants.iter().filter(|grant| path.starts_with(&grant.path)) {
        if grant.path == *path {
            explicit_allow |= grant.access.mask();
        } else {
            inherited_allow |= grant.access.mask();
        }
    }
    // Only the bits a root below did not already grant explicitly need the inherited copy.
    inherited_allow &= !explicit_allow;

    let mut entries = ObjectEntries { denied: deny_mask != 0, ..ObjectEntries::default() };
    for (mask, build, flags) in [
        (deny_mask, Ace::deny as fn(&Sid, u32, u8) -> Ace, inheritance(is_dir, false)),
        (pin_mask, Ace::deny, 0),
        (explicit_allow, Ace::allow, inheritance(is_dir, false)),
        (inherited_allow, Ace::allow, inheritance(is_dir, true)),
    ] {
        if mask != 0 {
            for sid in sids {
                entries.dacl.push(build(sid, mask, flags));
            }
        }
    }
    let labelled = files.labels.iter().filter(|label| path.starts_with(label));
    let explicit = files.labels.iter().any(|label| label == path);
    if explicit {
        entries.label = Some(Ace::low_label(inheritance(is_dir, false)));
    } else if labelled.count() > 0 {
        entries.label = Some(Ace::low_label(inheritance(is_dir, true)));
    }
    entries
}

/// The flags of an entry on a root (`inherited` false) or copied onto an object below it.
/// A file keeps no inheritance flags, as Windows' own inheritance does.
pub fn inheritance(is_dir: bool, inherited: bool) -> u8 {
    let tree = if is_dir { ace_flags::TREE } else { 0 };
    if inherited { tree | ace_flags::INHERITED } else { tree }
}

/// Replaces the sandbox accounts' allow and deny entries in `existing` with `ours`, keeping
/// every other entry in place and the DACL in canonical order: explicit deny entries first,
/// then explicit allow entries, then inherited entries. Ours go at the front, at the end of
/// the explicit part, and at the end, respectively.
pub fn merge_dacl(existing: &Acl, sids: &[Sid], ours: &[Ace]) -> Acl {
    let mine = |ace: &Ace| matches!(ace.ace_type, ace_type::ALLOW | ace_type::DENY) && ace.sid().is_some_and(|sid| sids.contains(sid));
    let kept: Vec<&Ace> = existing.aces.iter().filter(|ace| !mine(ace)).collect();
    let explicit_end = kept.iter().position(|ace| ace.is_inherited()).unwrap_or(kept.len());

    let mut aces = Vec::with_capacity(kept.len() + ours.len());
    aces.extend(ours.iter().filter(|ace| ace.ace_type == ace_type::DENY && !ace.is_inherited()).cloned());
    aces.extend(kept[..explicit_end].iter().map(|&ace| ace.clone()));
    aces.extend(ours.iter().filter(|ace| ace.ace_type == ace_type::ALLOW && !ace.is_inherited()).cloned());
    aces.extend(kept[explicit_end..].iter().map(|&ace| ace.clone()));
    aces.extend(ours.iter().filter(|ace| ace.is_inherited()).cloned());
    Acl { revision: existing.revision, aces }
}

/// What to do with an object's mandatory label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LabelChange {
    /// The label is already what the plan needs, or the plan needs none.
    Unchanged,
    /// Write this list with `LABEL_SECURITY_INFORMATION`.
    Set(Acl),
    /// An object below a writable root carries an explicit label of its own, which setup
    /// leaves alone; the sandbox then cannot write it if the label is Medium or higher.
    ExplicitKept(Ace),
}

/// Decides the label of an object whose current label entries are `existing`.
pub fn merge_label(existing: Option<&Acl>, ours: Option<&Ace>) -> LabelChange {
    let Some(ours) = ours else {
        return LabelChange::Unchanged;
    };
    let current: Vec<&Ace> = existing.map(|acl| acl.aces.iter().filter(|ace| ace.ace_type == ace_type::MANDATORY_LABEL).collect()).unwrap_or_default();
    if current.len() == 1 && current[0] == ours {
        return LabelChange::Unchanged;
    }
    if ours.is_inherited() {
        if let Some(explicit) = current.iter().find(|ace| !ace.is_inherited()) {
            return LabelChange::ExplicitKept((*explicit).clone());
        }
    }
    LabelChange::Set(Acl::new(vec![ours.clone()]))
}

/// How an explicit entry on a root is compared with the plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// An allow entry with exactly this mask.
    Allow(u32),
    /// A deny entry denying at least these rights.
    Deny(u32),
}

/// Checks that `dacl` holds, for `sid`, the explicit entry setup writes on a root. On a
/// directory it must be inheritable by files and directories.
pub fn has_root_entry(dacl: &Acl, sid: &Sid, expect: Expect, is_dir: bool) -> bool {
    let wanted_flags = inheritance(is_dir, false);
    dacl.aces.iter().any(|ace| {
        let flags_match = ace.flags & (ace_flags::TREE | ace_flags::INHERITED | ace_flags::INHERIT_ONLY | ace_flags::NO_PROPAGATE_INHERIT) == wanted_flags;
        let entry_match = match (expect, ace.ace_type, ace.mask()) {
            (Expect::Allow(mask), ace_type::ALLOW, Some(found)) => found == mask,
            (Expect::Deny(mask), ace_type::DENY, Some(found)) => found & mask == mask,
            _ => false,
        };
        flags_match && entry_match && ace.sid() == Some(sid)
    })
}

/// Checks that `dacl` holds a deny entry for `sid` covering at least `mask` on the object
/// alone, without inheritance flags: a pin.
pub fn has_pin_entry(dacl: &Acl, sid: &Sid, mask: u32) -> bool {
    let inheritance_bits = ace_flags::TREE | ace_flags::INHERITED | ace_flags::INHERIT_ONLY | ace_flags::NO_PROPAGATE_INHERIT;
    dacl.aces.iter().any(|ace| {
        ace.ace_type == ace_type::DENY && ace.flags & inheritance_bits == 0 && ace.mask().is_some_and(|found| found & mask == mask) && ace.sid() == Some(sid)
    })
}

/// Checks that the label entries `sacl` hold the explicit, inheritable Low label.
pub fn has_root_label(sacl: Option<&Acl>, is_dir: bool) -> bool {
    let ours = Ace::low_label(inheritance(is_dir, false));
    sacl.is_some_and(|acl| acl.aces.contains(&ours))
}

/// Checks that every name of a file with several hard links lies below `root`. Granting such
/// a file grants it under all its names, so a link to a file outside the workspace must not
/// receive the workspace's grant. `names` are the volume-relative names that
/// `FindFirstFileNameW` returns (`\Users\dev\ws\a.txt`).
pub fn links_inside(root: &WinPath, names: &[String]) -> bool {
    let Some(drive) = root.drive() else {
        // A share does not list the names of a file; never grant through one.
        return false;
    };
    !names.is_empty()
        && names.iter().all(|name| WinPath::parse(&format!("{drive}:{name}")).is_ok_and(|path| path.starts_with(root)))
}

/// A security descriptor in SDDL that holds only `dacl`, for a new object.
pub fn dacl_sddl(dacl: &[Ace]) -> String {
    format!("D:{}", dacl.iter().map(Ace::to_sddl).collect::<String>())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{mask, Access, Deny, Grant, Reason};

    fn p(text: &str) -> WinPath {
        WinPath::parse(text).unwrap()
    }

    fn sids() -> Vec<Sid> {
        vec![Sid::parse("S-1-5-21-1-2-3-1001").unwrap(), Sid::parse("S-1-5-21-1-2-3-1002").unwrap()]
    }

    fn files() -> FilePlan {
        FilePlan {
            grants: vec![
                Grant { path: p(r"C:\ws"), access: Access::Modify, reason: Reason::Workspace },
                Grant { path: p(r"C:\Users\dev\.cargo"), access: Access::ReadExecute, reason: Reason::Cache },
            ],
            labels: vec![p(r"C:\ws")],
            denies: vec![
                Deny { path: p(r"C:\ws\.git\hooks"), mask: mask::ANY_CHANGE, tree: true, reason: Reason::Protected },
                Deny { path: p(r"C:\Users\dev\.cargo\credentials.toml"), mask: mask::ANY_READ | mask::ANY_CHANGE, tree: true, reason: Reason::Hidden },
            ],
            placeholders: vec![p(r"C:\ws\.git\hooks")],
            temp_root: p(r"C:\ProgramData\palisade\tmp"),
        }
    }

    #[test]
    fn sid_text_round_trips() {
        for text in ["S-1-5-21-3623811015-3361044348-30300820-1013", "S-1-16-4096", "S-1-5-32-544", "S-1-1-0", "S-1-0x123456789ABC-1"] {
            let sid = Sid::parse(text).unwrap();
            assert_eq!(sid.to_string(), text);
            assert_eq!(Sid::from_bytes(sid.as_bytes()).unwrap(), sid);
        }
        // The layout of winnt.h's SID: revision, count, 6-byte big-endian authority, then
        // little-endian sub-authorities.
        assert_eq!(Sid::parse("S-1-16-4096").unwrap().as_bytes(), &[1, 1, 0, 0, 0, 0, 0, 16, 0x00, 0x10, 0, 0]);
    }

    #[test]
    fn malformed_sids_are_rejected() {
        for text in ["", "S-1", "S-2-5-32", "X-1-5", "S-1-5-x", "S-1-281474976710656-1", "S-1-5-1-2-3-4-5-6-7-8-9-10-11-12-13-14-15-16"] {
            assert!(Sid::parse(text).is_err(), "{text}");
        }
        assert_eq!(Sid::from_bytes(&[1, 2, 0, 0, 0, 0, 0, 5, 0, 0, 0, 0]), Err(FormatError::SidBytes));
        assert_eq!(Sid::from_bytes(&[2, 0, 0, 0, 0, 0, 0, 5]), Err(FormatError::SidBytes));
    }

    #[test]
    fn acl_bytes_round_trip_and_keep_unknown_entries() {
        let sid = &sids()[0];
        let callback = Ace { ace_type: 0x09, flags: 0x10, body: AceBody::Other(vec![1, 2, 3, 4, 5, 6, 7, 8]) };
        let acl = Acl::new(vec![Ace::deny(sid, mask::ANY_CHANGE, ace_flags::TREE), callback, Ace::allow(sid, 0x1200a9, 0x10)]);
        let bytes = acl.to_bytes().unwrap();
        assert_eq!(u16::from_le_bytes([bytes[2], bytes[3]]) as usize, bytes.len());
        assert_eq!(u16::from_le_bytes([bytes[4], bytes[5]]), 3);
        assert_eq!(Acl::parse(&bytes).unwrap(), acl);
        // A buffer longer than AclSize, as GetSecurityInfo may return, parses the same.
        let mut longer = bytes.clone();
        longer.extend_from_slice(&[0xff; 16]);
        assert_eq!(Acl::parse(&longer).unwrap(), acl);
    }

    #[test]
    fn truncated_acls_are_rejected() {
        let acl = Acl::new(vec![Ace::allow(&sids()[0], 1, 0)]);
        let bytes = acl.to_bytes().unwrap();
        assert!(Acl::parse(&bytes[..bytes.len() - 1]).is_err());
        assert!(Acl::parse(&bytes[..4]).is_err());
        let mut lying = bytes.clone();
        lying[4] = 2; // two entries announced, one present
        assert!(Acl::parse(&lying).is_err());
    }

    #[test]
    fn workspace_root_gets_explicit_grant_and_label() {
        let entries = object_entries(&files(), &sids(), &p(r"C:\ws"), true);
        assert_eq!(entries.dacl, sids().iter().map(|sid| Ace::allow(sid, Access::Modify.mask(), ace_flags::TREE)).collect::<Vec<_>>());
        assert_eq!(entries.label, Some(Ace::low_label(ace_flags::TREE)));
        assert!(!entries.denied);
    }

    #[test]
    fn objects_below_a_root_get_inherited_copies() {
        let file = object_entries(&files(), &sids(), &p(r"C:\ws\src\main.rs"), false);
        assert_eq!(file.dacl[0], Ace::allow(&sids()[0], Access::Modify.mask(), ace_flags::INHERITED));
        assert_eq!(file.label, Some(Ace::low_label(ace_flags::INHERITED)));
        let dir = object_entries(&files(), &sids(), &p(r"C:\WS\Src"), true);
        assert_eq!(dir.dacl[0].flags, ace_flags::TREE | ace_flags::INHERITED);
    }

    // The protection of `.git\hooks` is an entry on the objects, so `.GiT\HOOKS\x` and
    // `x:stream` (a stream of the same file) meet the same deny entry.
    #[test]
    fn protected_tree_is_denied_first_and_explicitly() {
        for path in [r"C:\ws\.git\hooks", r"C:\ws\.GiT\HOOKS\pre-commit"] {
            let entries = object_entries(&files(), &sids(), &p(path), false);
            assert!(entries.denied, "{path}");
            assert_eq!(entries.dacl[0], Ace::deny(&sids()[0], mask::ANY_CHANGE, 0), "{path}");
            assert_eq!(entries.dacl[1], Ace::deny(&sids()[1], mask::ANY_CHANGE, 0), "{path}");
            assert!(entries.dacl[2..].iter().all(|ace| ace.ace_type == ace_type::ALLOW && ace.is_inherited()), "{path}");
        }
    }

    #[test]
    fn hidden_file_inside_a_readable_cache_is_denied() {
        let entries = object_entries(&files(), &sids(), &p(r"C:\Users\dev\.cargo\credentials.toml"), false);
        let deny = &entries.dacl[0];
        assert_eq!(deny.ace_type, ace_type::DENY);
        assert_eq!(deny.mask().unwrap() & mask::READ_DATA, mask::READ_DATA);
        assert!(entries.label.is_none(), "caches are not writable, so not labelled");
    }

    #[test]
    fn objects_outside_every_root_get_nothing() {
        for path in [r"C:\other\x.txt", r"C:\wsx\a", r"C:\Users\dev\Documents"] {
            assert_eq!(object_entries(&files(), &sids(), &p(path), false), ObjectEntries::default(), "{path}");
        }
    }

    fn other_sid(n: u32) -> Sid {
        Sid::parse(&format!("S-1-5-21-9-9-9-{n}")).unwrap()
    }

    #[test]
    fn merge_keeps_canonical_order() {
        let existing = Acl::new(vec![
            Ace::deny(&other_sid(1), 1, 0),
            Ace::allow(&other_sid(2), 1, 0),
            Ace::allow(&other_sid(3), 1, ace_flags::INHERITED),
        ]);
        let ours = vec![
            Ace::deny(&sids()[0], 2, 0),
            Ace::allow(&sids()[0], 4, 0),
            Ace::allow(&sids()[0], 8, ace_flags::INHERITED),
        ];
        let merged = merge_dacl(&existing, &sids(), &ours);
        assert_eq!(merged.aces, vec![ours[0].clone(), existing.aces[0].clone(), existing.aces[1].clone(), ours[1].clone(), existing.aces[2].clone(), ours[2].clone()]);
    }

    #[test]
    fn merge_replaces_earlier_palisade_entries() {
        let stale = Acl::new(vec![Ace::allow(&sids()[1], 0xffff, 0), Ace::allow(&other_sid(2), 1, 0), Ace::deny(&sids()[0], 1, ace_flags::INHERITED)]);
        let ours = vec![Ace::allow(&sids()[0], 4, 0)];
        let merged = merge_dacl(&stale, &sids(), &ours);
        assert_eq!(merged.aces, vec![Ace::allow(&other_sid(2), 1, 0), ours[0].clone()]);
        // Running the merge again changes nothing: setup is idempotent.
        assert_eq!(merge_dacl(&merged, &sids(), &ours), merged);
    }

    #[test]
    fn label_is_set_unless_an_explicit_one_sits_below_the_root() {
        let inherited = Ace::low_label(ace_flags::INHERITED);
        assert_eq!(merge_label(None, Some(&inherited)), LabelChange::Set(Acl::new(vec![inherited.clone()])));
        assert_eq!(merge_label(Some(&Acl::new(vec![inherited.clone()])), Some(&inherited)), LabelChange::Unchanged);
        let medium = Ace { ace_type: ace_type::MANDATORY_LABEL, flags: 0, body: AceBody::MaskSid { mask: 1, sid: Sid::parse("S-1-16-8192").unwrap() } };
        assert_eq!(merge_label(Some(&Acl::new(vec![medium.clone()])), Some(&inherited)), LabelChange::ExplicitKept(medium.clone()));
        // On the root itself the plan's label replaces whatever was there.
        let root = Ace::low_label(ace_flags::TREE);
        assert_eq!(merge_label(Some(&Acl::new(vec![medium])), Some(&root)), LabelChange::Set(Acl::new(vec![root])));
        assert_eq!(merge_label(None, None), LabelChange::Unchanged);
    }

    #[test]
    fn root_entries_are_recognised_only_with_mask_and_inheritance() {
        let sid = &sids()[0];
        let modify = Access::Modify.mask();
        let good = Acl::new(vec![Ace::allow(sid, modify, ace_flags::TREE)]);
        assert!(has_root_entry(&good, sid, Expect::Allow(modify), true));
        assert!(!has_root_entry(&good, &sids()[1], Expect::Allow(modify), true), "another account");
        assert!(!has_root_entry(&Acl::new(vec![Ace::allow(sid, modify, ace_flags::TREE | ace_flags::INHERITED)]), sid, Expect::Allow(modify), true), "inherited");
        assert!(!has_root_entry(&Acl::new(vec![Ace::allow(sid, modify, 0)]), sid, Expect::Allow(modify), true), "not inheritable");
        assert!(!has_root_entry(&Acl::new(vec![Ace::allow(sid, modify | mask::DELETE_CHILD, ace_flags::TREE)]), sid, Expect::Allow(modify), true), "wider mask");
        let deny = Acl::new(vec![Ace::deny(sid, mask::ANY_CHANGE | mask::ANY_READ, 0)]);
        assert!(has_root_entry(&deny, sid, Expect::Deny(mask::ANY_CHANGE), false));
        assert!(!has_root_entry(&deny, sid, Expect::Allow(mask::ANY_CHANGE), false));
        assert!(has_root_label(Some(&Acl::new(vec![Ace::low_label(ace_flags::TREE)])), true));
        assert!(!has_root_label(Some(&Acl::new(vec![Ace::low_label(ace_flags::TREE | ace_flags::INHERITED)])), true));
        assert!(!has_root_label(None, true));
    }

    #[test]
    fn hard_links_outside_the_root_are_detected() {
        let root = p(r"C:\ws");
        assert!(links_inside(&root, &[r"\ws\target\a.exe".into(), r"\WS\target\deps\a-1.exe".into()]));
        assert!(!links_inside(&root, &[r"\ws\id_rsa".into(), r"\Users\dev\.ssh\id_rsa".into()]));
        assert!(!links_inside(&root, &[]));
        assert!(!links_inside(&p(r"\\server\share\ws"), &[r"\ws\a".into()]));
    }

    #[test]
    fn sddl_shows_entries_as_windows_writes_them() {
        let sid = &sids()[0];
        assert_eq!(Ace::allow(sid, 0x1301bf, ace_flags::TREE).to_sddl(), "(A;OICI;0x1301bf;;;S-1-5-21-1-2-3-1001)");
        assert_eq!(Ace::low_label(ace_flags::TREE).to_sddl(), "(ML;OICI;NW;;;LW)");
        assert_eq!(Ace::deny(sid, 1, ace_flags::INHERITED).to_sddl(), "(D;ID;0x1;;;S-1-5-21-1-2-3-1001)");
        assert_eq!(dacl_sddl(&[Ace::deny(sid, 1, ace_flags::TREE)]), "D:(D;OICI;0x1;;;S-1-5-21-1-2-3-1001)");
    }
}
