//! The ACL part of the plan. `palisade setup` writes the entries once, walking each root
//! itself ([`apply`]); a run only reads the entries on the roots ([`verify`]) and creates
//! placeholders for protected names that do not exist yet ([`Placeholders`]). No run rewrites
//! an ACL, so a run costs the same however large the workspace is.
//!
//! The walk opens every object with `FILE_FLAG_OPEN_REPARSE_POINT` and never descends into a
//! junction or symbolic link: a junction planted in a workspace that points at the user's
//! profile receives the workspace's entries itself, and its target receives nothing. Windows'
//! own propagation is not used for the same reason.

use std::ptr::null_mut;

use windows_sys::Win32::Foundation::{ERROR_ALREADY_EXISTS, GetLastError};
use windows_sys::Win32::Security::SECURITY_ATTRIBUTES;
use windows_sys::Win32::Storage::FileSystem::CreateDirectoryW;

use super::Error;
use super::file_object::{FileId, FileObject, identity, link_names, long_name, named_security, remove_empty_directory, resolve};
use super::security::{Descriptor, account_sids, current_user_sid, not_set_up, wide};
use crate::ace::{self, Ace, Acl, Expect, LabelChange, Sid, ace_flags};
use crate::path::WinPath;
use crate::plan::{Access, Accounts, Deny, FilePlan, Reason, mask};
use crate::setup_steps::acl_roots;

/// Checks that the entries setup writes are on every root of `files` that exists. Reads one
/// security descriptor per root and nothing below it.
pub fn verify(files: &FilePlan, accounts: &Accounts) -> Result<(), Error> {
    let sids = account_sids(accounts)?;
    for (path, reason, entries) in acl_roots(files) {
        let Some(security) = named_security(&path, entries.label)? else {
            continue;
        };
        let is_dir = std::fs::metadata(path.to_verbatim()).is_ok_and(|metadata| metadata.is_dir());
        let missing = |what: String| not_set_up(format!("{what} on {path} ({reason})"));
        let Some(dacl) = &security.dacl else {
            return Err(missing("a DACL (it has none, so everyone has full access)".into()));
        };
        for sid in &sids {
            if let Some(access) = entries.grant {
                if !ace::has_root_entry(dacl, sid, Expect::Allow(access.mask()), is_dir) {
                    return Err(missing(format!("the entry that lets the sandbox account {sid} {}", access_text(access))));
                }
            }
            if let Some(mask) = entries.deny {
                if !ace::has_root_entry(dacl, sid, Expect::Deny(mask), is_dir) {
                    return Err(missing(format!("the deny entry for the sandbox account {sid}")));
                }
            }
            if let Some(mask) = entries.pin {
                if !ace::has_pin_entry(dacl, sid, mask) {
                    return Err(missing(format!("the entry that keeps the sandbox account {sid} from renaming or deleting it")));
                }
            }
        }
        if entries.label && !ace::has_root_label(security.label.as_ref(), is_dir) {
            return Err(missing("the Low integrity label".into()));
        }
    }
    Ok(())
}

fn access_text(access: Access) -> &'static str {
    match access {
        Access::Modify => "modify",
        Access::ReadExecute => "read and execute",
    }
}

/// Empty directories a run creates in place of protected names that do not exist, so the
/// command can neither create those names nor remove the placeholders. Each is removed when
/// this value is dropped, if it is still empty.
#[derive(Debug)]
pub struct Placeholders {
    created: Vec<(WinPath, FileId)>,
}

impl Placeholders {
    /// Creates a placeholder for each of `paths` that does not exist and whose parent does.
    pub fn create(paths: &[WinPath], accounts: &Accounts) -> Result<Placeholders, Error> {
        let sids = account_sids(accounts)?;
        let caller = current_user_sid()?;
        let descriptor = Descriptor::from_sddl(&placeholder_sddl(&sids, &caller))?;
        let attributes = SECURITY_ATTRIBUTES {
            nLength: size_of::<SECURITY_ATTRIBUTES>() as u32,
            lpSecurityDescriptor: descriptor.as_ptr(),
            bInheritHandle: 0,
        };
        // Parents before children, so `.git` is in place before `.git\hooks` needs it.
        let mut ordered: Vec<&WinPath> = paths.iter().collect();
        ordered.sort_by_key(|path| path.components().len());

        let mut placeholders = Placeholders { created: Vec::new() };
        for path in ordered {
            let parent_exists = path.parent().is_some_and(|parent| std::fs::metadata(parent.to_verbatim()).is_ok_and(|metadata| metadata.is_dir()));
            if !parent_exists || std::fs::symlink_metadata(path.to_verbatim()).is_ok() {
                continue;
            }
            // A parent reached through a junction or link (which the command of an earlier
            // run could have planted) would put the placeholder outside the workspace.
            let parent = path.parent().expect("a path with an existing parent");
            if resolve(&parent)? != Some(long_name(&parent)?) {
                continue;
            }
            let name = wide(&path.to_verbatim());
            // SAFETY: `name` is NUL-terminated; `attributes` points to a descriptor that is
            // alive for the call.
            if unsafe { CreateDirectoryW(name.as_ptr(), &attributes) } == 0 {
                // SAFETY: reads the calling thread's last error, set by CreateDirectoryW.
                if unsafe { GetLastError() } == ERROR_ALREADY_EXISTS {
                    // Created since the check above, so it is not ours to remove.
                    continue;
                }
                // Dropping `placeholders` removes those already created.
                return Err(Error::last("CreateDirectoryW", path));
            }
            let Some(id) = identity(path)? else {
                return Err(Error::Io { what: format!("the placeholder {path}"), source: std::io::Error::other("removed as soon as it was created") });
            };
            placeholders.created.push((path.clone(), id));
        }
        Ok(placeholders)
    }

    /// Lists the directories this value created.
    pub fn paths(&self) -> Vec<WinPath> {
        self.created.iter().map(|(path, _)| path.clone()).collect()
    }
}

impl Drop for Placeholders {
    fn drop(&mut self) {
        // Only the object created here, and only while it is empty. The command cannot
        // delete or fill a placeholder, but it can rename a directory above it; the
        // placeholder then stays where it was moved to.
        for (path, id) in self.created.iter().rev() {
            remove_empty_directory(path, *id);
        }
    }
}

/// Formats the descriptor of a placeholder: the protected entry's deny for both accounts, and full
/// access for the caller, who removes it. Entries that the parent passes on are added by
/// Windows when the directory is created.
fn placeholder_sddl(sids: &[Sid], caller: &Sid) -> String {
    let mut dacl: Vec<Ace> = sids.iter().map(|sid| Ace::deny(sid, mask::ANY_CHANGE, ace_flags::TREE)).collect();
    dacl.push(Ace::allow(caller, 0x001f_01ff, ace_flags::TREE));
    ace::dacl_sddl(&dacl)
}

/// The ACL plan with every root as the walk reaches it (the long, final name), and the
/// accounts' SIDs.
pub struct Resolved {
    files: FilePlan,
    sids: [Sid; 2],
    /// Each root of the plan, as written in the plan, and the objects its step walks.
    targets: Vec<(WinPath, Vec<WinPath>)>,
}

/// Resolves the roots of `files`. A root that grants access or is labelled must not be reached
/// through a junction or symbolic link, because its entries would land on the link's target,
/// which the plan never checked: setup stops and asks for the target's path. A hidden or
/// protected root that is a link gets its deny entry both on the link and on the target.
pub fn resolve_roots(files: &FilePlan, accounts: &Accounts) -> Result<Resolved, Error> {
    let sids = account_sids(accounts)?;
    let mut resolved = files.clone();
    let mut targets = Vec::new();
    for (path, reason, entries) in acl_roots(files) {
        let Some(target) = resolve(&path)? else {
            targets.push((path, Vec::new()));
            continue;
        };
        let named = long_name(&path)?;
        if target == named {
            replace_root(&mut resolved, &path, &target);
            targets.push((path, vec![target]));
            continue;
        }
        if entries.grant.is_some() || entries.label {
            return Err(Error::Io {
                what: format!("{path} ({reason}) leads to {target} through a junction or symbolic link; name {target} in the policy instead"),
                source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "a root that grants access may not be reached through a reparse point"),
            });
        }
        let deny = resolved.denies.iter().find(|deny| deny.path == path).cloned();
        if let Some(deny) = deny {
            resolved.denies.push(Deny { path: target.clone(), ..deny.clone() });
            resolved.denies.push(Deny { path: named.clone(), ..deny });
        }
        targets.push((path, vec![named, target]));
    }
    Ok(Resolved { files: resolved, sids, targets })
}

fn replace_root(files: &mut FilePlan, from: &WinPath, to: &WinPath) {
    for grant in files.grants.iter_mut().filter(|grant| grant.path == *from) {
        grant.path = to.clone();
    }
    for label in files.labels.iter_mut().filter(|label| *label == from) {
        *label = to.clone();
    }
    for deny in files.denies.iter_mut().filter(|deny| deny.path == *from) {
        deny.path = to.clone();
    }
}

impl Resolved {
    fn targets_of(&self, root: &WinPath) -> &[WinPath] {
        self.targets.iter().find(|(named, _)| named == root).map(|(_, targets)| targets.as_slice()).unwrap_or_default()
    }

    /// Checks whether an object at `path` lies in a hidden or protected tree.
    fn denied(&self, path: &WinPath) -> bool {
        self.files.denies.iter().any(|deny| path.starts_with(&deny.path))
    }

    /// Finds the deepest grant or label root that covers `path`.
    fn deepest_root(&self, path: &WinPath) -> Option<&WinPath> {
        let grants = self.files.grants.iter().map(|grant| &grant.path);
        grants.chain(&self.files.labels).filter(|root| path.starts_with(root)).max_by_key(|root| root.components().len())
    }
}

/// The result of the walk of one root.
#[derive(Debug, Default)]
pub struct WalkSummary {
    pub objects: u64,
    pub updated: u64,
    /// The root does not exist, so nothing was written.
    pub missing: bool,
    /// Junctions and symbolic links that got entries themselves but were not descended into.
    pub links_not_followed: u64,
    /// Files with a hard link outside the root, which got no grant and no label.
    pub shared_hard_links: Vec<WinPath>,
    /// Objects below a writable root with an explicit label of their own, left as they were.
    pub explicit_labels_kept: Vec<WinPath>,
    /// Objects outside every hidden or protected tree that could not be updated, and why.
    pub skipped: Vec<(String, String)>,
}

impl WalkSummary {
    /// A line for the setup report when something needs the user's attention.
    pub fn note(&self) -> Option<String> {
        let mut parts = Vec::new();
        if self.missing {
            parts.push("it does not exist, so nothing was written; run setup again once it does".to_owned());
        }
        if self.links_not_followed > 0 {
            parts.push(format!("{} junctions or symbolic links were not followed", self.links_not_followed));
        }
        if !self.shared_hard_links.is_empty() {
            parts.push(format!("no grant on files with a hard link outside it: {}", sample(&self.shared_hard_links)));
        }
        if !self.explicit_labels_kept.is_empty() {
            parts.push(format!("kept the explicit integrity labels of {}", sample(&self.explicit_labels_kept)));
        }
        if !self.skipped.is_empty() {
            let skipped: Vec<String> = self.skipped.iter().map(|(path, reason)| format!("{path} ({reason})")).collect();
            parts.push(format!("could not update {}", sample(&skipped)));
        }
        (!parts.is_empty()).then(|| parts.join("; "))
    }
}

/// Up to five items and a count of the rest.
fn sample<T: std::fmt::Display>(items: &[T]) -> String {
    let shown: Vec<String> = items.iter().take(5).map(ToString::to_string).collect();
    match items.len().saturating_sub(5) {
        0 => shown.join(", "),
        more => format!("{} and {more} more", shown.join(", ")),
    }
}

/// Writes the entries of every root of `files`, and of everything below each root.
pub fn apply(files: &FilePlan, accounts: &Accounts) -> Result<Vec<(WinPath, WalkSummary)>, Error> {
    let resolved = resolve_roots(files, accounts)?;
    let mut summaries = Vec::new();
    for (root, _, _) in acl_roots(files) {
        let summary = apply_root(&resolved, &root)?;
        summaries.push((root, summary));
    }
    Ok(summaries)
}

/// Writes the entries of one root of the plan and of everything below it.
pub fn apply_root(resolved: &Resolved, root: &WinPath) -> Result<WalkSummary, Error> {
    let mut summary = WalkSummary::default();
    let targets = resolved.targets_of(root);
    summary.missing = targets.is_empty();
    for target in targets {
        walk(resolved, target, &mut summary)?;
    }
    Ok(summary)
}

/// Whether the root's own entries are already what the plan needs. The walk writes a root
/// last, so a root in place means the last walk of its tree finished.
pub fn root_in_place(resolved: &Resolved, root: &WinPath) -> Result<bool, Error> {
    for target in resolved.targets_of(root) {
        let write_label = resolved.files.labels.iter().any(|label| target.starts_with(label));
        let Some(object) = FileObject::open(target, write_label)? else {
            return Ok(false);
        };
        let kind = object.kind()?;
        let entries = ace::object_entries(&resolved.files, &resolved.sids, target, kind.is_dir);
        let security = object.security(write_label)?;
        let Some(existing) = &security.dacl else {
            return Ok(false);
        };
        let label = ace::merge_label(security.label.as_ref(), entries.label.as_ref());
        if ace::merge_dacl(existing, &resolved.sids, &entries.dacl) != *existing || matches!(label, LabelChange::Set(_)) {
            return Ok(false);
        }
    }
    Ok(!resolved.targets_of(root).is_empty())
}

/// Walks the tree at `root` depth first. The root's own entries are written last, so that a
/// walk cut short is redone by the next setup, which takes a root with its entries as done.
fn walk(resolved: &Resolved, root: &WinPath, summary: &mut WalkSummary) -> Result<(), Error> {
    let mut pending = Vec::new();
    let root_update = visit(resolved, root, &mut pending, summary)?;
    while let Some(path) = pending.pop() {
        let result = visit(resolved, &path, &mut pending, summary).and_then(|update| match update {
            Some(update) => update.write().map(|()| summary.updated += 1),
            None => Ok(()),
        });
        match result {
            Ok(()) => {}
            // An object in a hidden or protected tree that keeps its old entries would stay
            // readable or writable: setup stops there.
            Err(error) if resolved.denied(&path) => return Err(error),
            Err(error) => summary.skipped.push((path.to_string(), error.to_string())),
        }
    }
    if let Some(update) = root_update {
        update.write()?;
        summary.updated += 1;
    }
    Ok(())
}

/// A change to one object, ready to be written.
struct Update {
    object: FileObject,
    dacl: Option<Acl>,
    label: Option<Acl>,
    control: u16,
}

impl Update {
    fn write(&self) -> Result<(), Error> {
        self.object.write(self.dacl.as_ref(), self.label.as_ref(), self.control)
    }
}

/// Reads one object, queues its children, and returns the change it needs.
fn visit(resolved: &Resolved, path: &WinPath, pending: &mut Vec<WinPath>, summary: &mut WalkSummary) -> Result<Option<Update>, Error> {
    let write_label = resolved.files.labels.iter().any(|label| path.starts_with(label));
    let Some(object) = FileObject::open(path, write_label)? else {
        // Removed since its directory was listed.
        return Ok(None);
    };
    // A directory above that was swapped for a junction since it was listed would carry the
    // walk elsewhere; the final path shows it.
    let final_path = object.final_path()?;
    if final_path != *path {
        return Err(Error::Io {
            what: format!("{path} now leads to {final_path}"),
            source: std::io::Error::other("a directory was replaced while setup ran"),
        });
    }
    let kind = object.kind()?;
    summary.objects += 1;

    let mut entries = ace::object_entries(&resolved.files, &resolved.sids, path, kind.is_dir);
    let grants_something = entries.label.is_some() || entries.dacl.iter().any(|ace| ace.ace_type == ace::ace_type::ALLOW);
    if !kind.is_dir && kind.links > 1 && grants_something {
        let inside = resolved.deepest_root(path).is_some_and(|root| link_names(path).is_ok_and(|names| ace::links_inside(root, &names)));
        if !inside {
            entries.dacl.retain(|ace| ace.ace_type == ace::ace_type::DENY);
            entries.label = None;
            summary.shared_hard_links.push(path.clone());
        }
    }

    if kind.is_reparse_point {
        summary.links_not_followed += 1;
    } else if kind.is_dir {
        for name in object.children()? {
            match path.join(&name) {
                // `join` trims trailing dots and spaces as Win32 does, which would name
                // another file; such a name is reported instead of followed.
                Ok(child) if child.file_name() == Some(name.as_str()) => pending.push(child),
                _ if resolved.denied(path) => {
                    return Err(Error::Io { what: format!("the entry {name:?} in {path}"), source: std::io::Error::other("a name that Win32 paths cannot express") });
                }
                _ => summary.skipped.push((format!("{path}\\{name}"), "a name that Win32 paths cannot express".into())),
            }
        }
    }

    let security = object.security(write_label)?;
    let Some(existing) = &security.dacl else {
        return Err(Error::Io { what: format!("{path} has no DACL, so everyone has full access"), source: std::io::Error::other("give it a DACL (icacls /reset) and run setup again") });
    };
    let dacl = ace::merge_dacl(existing, &resolved.sids, &entries.dacl);
    let dacl = (dacl != *existing).then_some(dacl);
    let label = match ace::merge_label(security.label.as_ref(), entries.label.as_ref()) {
        LabelChange::Unchanged => None,
        LabelChange::Set(acl) => Some(acl),
        LabelChange::ExplicitKept(_) => {
            summary.explicit_labels_kept.push(path.clone());
            None
        }
    };
    if dacl.is_none() && label.is_none() {
        return Ok(None);
    }
    Ok(Some(Update { object, dacl, label, control: security.control }))
}

/// Creates a writable root that does not exist yet, where its parent exists, so that its
/// entries can be written instead of the root being dropped from the plan. Returns whether it
/// created the directory.
pub fn create_missing_root(path: &WinPath, reason: Reason) -> Result<bool, Error> {
    let parent_exists = path.parent().is_some_and(|parent| std::fs::metadata(parent.to_verbatim()).is_ok_and(|metadata| metadata.is_dir()));
    if !parent_exists || std::fs::symlink_metadata(path.to_verbatim()).is_ok() {
        return Ok(false);
    }
    let name = wide(&path.to_verbatim());
    // SAFETY: `name` is NUL-terminated; the directory gets the entries its parent passes on.
    if unsafe { CreateDirectoryW(name.as_ptr(), null_mut()) } == 0 {
        return Err(Error::last("CreateDirectoryW", format!("{path} ({reason})")));
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use windows_sys::Win32::Security::{ACL, GetSecurityDescriptorDacl};

    use super::*;

    // The byte layout of `ace::Acl` must be the one Windows itself produces: Windows' SDDL
    // parser and `Acl::parse` must agree on the placeholder's descriptor.
    #[test]
    fn windows_parses_placeholder_sddl_into_the_same_entries() {
        let sids = [Sid::parse("S-1-5-21-1-2-3-1001").unwrap(), Sid::parse("S-1-5-21-1-2-3-1002").unwrap()];
        let caller = Sid::parse("S-1-5-21-1-2-3-500").unwrap();
        let descriptor = Descriptor::from_sddl(&placeholder_sddl(&sids, &caller)).unwrap();
        let (mut present, mut defaulted) = (0, 0);
        let mut dacl: *mut ACL = null_mut();
        // SAFETY: the descriptor is valid and alive; the out-pointers are locals, and the DACL
        // pointer points into the descriptor.
        let ok = unsafe { GetSecurityDescriptorDacl(descriptor.as_ptr(), &mut present, &mut dacl, &mut defaulted) };
        assert!(ok != 0 && present != 0 && !dacl.is_null());
        // SAFETY: `dacl` points to the valid ACL inside `descriptor`, alive here.
        let bytes = unsafe { std::slice::from_raw_parts(dacl.cast::<u8>(), usize::from((*dacl).AclSize)) };
        let parsed = Acl::parse(bytes).unwrap();
        let expected = vec![
            Ace::deny(&sids[0], mask::ANY_CHANGE, ace_flags::TREE),
            Ace::deny(&sids[1], mask::ANY_CHANGE, ace_flags::TREE),
            Ace::allow(&caller, 0x001f_01ff, ace_flags::TREE),
        ];
        assert_eq!(parsed.aces, expected);
        assert_eq!(Acl { revision: parsed.revision, aces: expected }.to_bytes().unwrap(), bytes);
    }
}
