//! Windows paths as pure values, so that their handling is tested on every platform.
//!
//! Windows gives one file many spellings: any letter case, `/` or `\`, trailing dots and
//! spaces (which Win32 strips), the `\\?\` prefix, 8.3 short names (`GIT~1`) and alternate
//! data streams (`config:evil`). A rule that matched names would miss some of them, so the
//! backend enforces the policy with ACLs on the objects themselves: an access check examines
//! the file, not the name used to open it. This module only compares policy paths with each other,
//! maps every spelling of a path onto one [`WinPath`], and rejects the spellings that name a
//! device or a stream, which no policy entry may do.

use std::fmt;

/// An absolute Windows path in one canonical spelling: the drive letter in upper case, `\`
/// as the separator, no `.` or `..` components, no trailing dots or spaces, no stream suffix.
/// Comparisons ignore letter case as NTFS does.
#[derive(Debug, Clone)]
pub struct WinPath {
    root: Root,
    components: Vec<String>,
}

#[derive(Debug, Clone)]
enum Root {
    /// `C:\`, with the letter in upper case.
    Drive(char),
    /// `\\server\share\`.
    Unc { server: String, share: String },
}

/// A path that names a file object and, optionally, one of its alternate data streams. Access
/// to any stream of a file is checked against the file's own security descriptor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectPath {
    /// The file whose security descriptor governs access.
    pub file: WinPath,
    /// The named stream (`hidden` in `f.txt:hidden`), or `None` for the file's main stream.
    pub stream: Option<String>,
}

/// The reason a string is not a usable Windows path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PathError {
    #[error("the path is empty")]
    Empty,
    #[error("the path is not absolute: start it with a drive (C:\\) or a share (\\\\server\\share)")]
    NotAbsolute,
    #[error("the path names a device or a volume ({0}), not a file")]
    Device(String),
    #[error("the component {0:?} contains a character Windows does not allow in names")]
    BadCharacter(String),
    #[error("the component {0:?} is a reserved device name")]
    ReservedName(String),
    #[error("the component {0:?} names an alternate data stream, which a policy path may not")]
    Stream(String),
    #[error("the path climbs above its root with \"..\"")]
    AboveRoot,
    #[error("the share name is missing: write \\\\server\\share")]
    IncompleteShare,
}

/// Names that Win32 maps to devices in every directory, with or without an extension.
const RESERVED_NAMES: &[&str] = &[
    "CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$", "COM1", "COM2", "COM3", "COM4", "COM5",
    "COM6", "COM7", "COM8", "COM9", "COM¹", "COM²", "COM³", "LPT1", "LPT2", "LPT3", "LPT4", "LPT5",
    "LPT6", "LPT7", "LPT8", "LPT9", "LPT¹", "LPT²", "LPT³",
];

impl WinPath {
    /// Parses an absolute path, accepting every spelling Win32 accepts for a file and rejecting
    /// streams, devices and relative forms.
    pub fn parse(text: &str) -> Result<WinPath, PathError> {
        let object = ObjectPath::parse(text)?;
        match object.stream {
            Some(stream) => Err(PathError::Stream(format!("{}:{stream}", object.file.file_name().unwrap_or_default()))),
            None => Ok(object.file),
        }
    }

    /// Returns the drive letter, for a path on a drive.
    pub fn drive(&self) -> Option<char> {
        match self.root {
            Root::Drive(letter) => Some(letter),
            Root::Unc { .. } => None,
        }
    }

    /// Returns the components after the root, as spelled (case kept).
    pub fn components(&self) -> &[String] {
        &self.components
    }

    /// Returns the last component, or `None` for a root.
    pub fn file_name(&self) -> Option<&str> {
        self.components.last().map(String::as_str)
    }

    /// Returns the path with `name` appended; `name` may hold several components (`.git\hooks`).
    pub fn join(&self, name: &str) -> Result<WinPath, PathError> {
        WinPath::parse(&format!("{self}\\{name}"))
    }

    /// Returns the parent directory, or `None` for a root.
    pub fn parent(&self) -> Option<WinPath> {
        let mut parent = self.clone();
        parent.components.pop()?;
        Some(parent)
    }

    /// Checks whether `self` is `root` or lies below it, ignoring letter case as NTFS does.
    pub fn starts_with(&self, root: &WinPath) -> bool {
        same_root(&self.root, &root.root)
            && root.components.len() <= self.components.len()
            && root.components.iter().zip(&self.components).all(|(a, b)| names_equal(a, b))
    }

    /// Returns the path in the `\\?\` form, which Win32 passes to the kernel without reinterpreting it
    /// and without the 260-character limit. Every path palisade hands to a Windows call uses it.
    pub fn to_verbatim(&self) -> String {
        match &self.root {
            Root::Drive(_) => format!("\\\\?\\{self}"),
            Root::Unc { .. } => format!("\\\\?\\UNC\\{}", &self.to_string()[2..]),
        }
    }

    /// Checks whether a component has the form of an 8.3 short name (`GIT~1`, `PROGRA~2.TXT`). Such a
    /// name may be an alias of a long name, so a comparison by name is not enough: the backend
    /// expands it with the file system before comparing.
    pub fn may_hold_short_names(&self) -> bool {
        self.components.iter().any(|name| looks_like_short_name(name))
    }
}

impl PartialEq for WinPath {
    fn eq(&self, other: &WinPath) -> bool {
        self.components.len() == other.components.len() && self.starts_with(other)
    }
}

impl Eq for WinPath {}

impl fmt::Display for WinPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.root {
            Root::Drive(letter) => write!(f, "{letter}:")?,
            Root::Unc { server, share } => write!(f, "\\\\{server}\\{share}")?,
        }
        if self.components.is_empty() {
            return f.write_str("\\");
        }
        for name in &self.components {
            write!(f, "\\{name}")?;
        }
        Ok(())
    }
}

impl ObjectPath {
    /// Parses an absolute path whose last component may carry a stream suffix
    /// (`f.txt:hidden`, `f.txt:hidden:$DATA`). The unnamed data stream (`f.txt::$DATA`) is the
    /// file itself.
    pub fn parse(text: &str) -> Result<ObjectPath, PathError> {
        if text.is_empty() {
            return Err(PathError::Empty);
        }
        let (verbatim, rest) = strip_prefix(text)?;
        let (root, rest) = parse_root(rest, verbatim)?;
        let separators: &[char] = if verbatim { &['\\'] } else { &['\\', '/'] };
        let mut components: Vec<String> = Vec::new();
        let mut stream = None;
        let parts: Vec<&str> = rest.split(separators).filter(|part| !part.is_empty()).collect();
        for (index, part) in parts.iter().enumerate() {
            let last = index + 1 == parts.len();
            match *part {
                // A verbatim path reaches the kernel as written, where "." and ".." are
                // ordinary (and invalid) names; only Win32 normalisation removes them.
                "." if !verbatim => continue,
                ".." if !verbatim => {
                    components.pop().ok_or(PathError::AboveRoot)?;
                    continue;
                }
                _ => {}
            }
            if verbatim && matches!(*part, "." | "..") {
                return Err(PathError::BadCharacter((*part).to_owned()));
            }
            let (name, named_stream) = split_stream(part)?;
            if named_stream.is_some() && !last {
                return Err(PathError::Stream((*part).to_owned()));
            }
            stream = named_stream;
            let name = if verbatim { name.to_owned() } else { name.trim_end_matches(['.', ' ']).to_owned() };
            check_name(&name, part)?;
            components.push(name);
        }
        Ok(ObjectPath { file: WinPath { root, components }, stream })
    }
}

/// Removes a `\\?\` prefix and rejects device namespaces. Returns whether the path was verbatim.
fn strip_prefix(text: &str) -> Result<(bool, &str), PathError> {
    for device in ["\\\\.\\", "//./", "\\??\\", "\\\\?\\GLOBALROOT", "\\\\?\\Volume{"] {
        if text.len() >= device.len() && text[..device.len()].eq_ignore_ascii_case(device) {
            return Err(PathError::Device(text.to_owned()));
        }
    }
    if let Some(rest) = text.strip_prefix("\\\\?\\") {
        return Ok((true, rest));
    }
    // "//?/" is not the verbatim prefix: Win32 normalises it like any other path, and so do we.
    Ok((false, text))
}

/// Reads the root of `text` (after any `\\?\` prefix) and returns it with the rest.
fn parse_root(text: &str, verbatim: bool) -> Result<(Root, &str), PathError> {
    let bytes = text.as_bytes();
    if bytes.len() >= 2 && bytes[0].is_ascii_alphabetic() && bytes[1] == b':' {
        let rest = &text[2..];
        // "C:" alone or "C:foo" is relative to the current directory of drive C.
        let separator = rest.starts_with('\\') || (!verbatim && rest.starts_with('/'));
        if !separator {
            return Err(PathError::NotAbsolute);
        }
        return Ok((Root::Drive(bytes[0].to_ascii_uppercase() as char), rest));
    }
    let unc = if verbatim {
        text.get(..4).filter(|head| head.eq_ignore_ascii_case("UNC\\")).map(|_| &text[4..])
    } else {
        text.strip_prefix("\\\\").or_else(|| text.strip_prefix("//"))
    };
    let Some(unc) = unc else {
        return Err(PathError::NotAbsolute);
    };
    let separators: &[char] = if verbatim { &['\\'] } else { &['\\', '/'] };
    let (server, after_server) = unc.split_once(separators).unwrap_or((unc, ""));
    let (share, rest) = match after_server.find(separators) {
        Some(index) => (&after_server[..index], &after_server[index..]),
        None => (after_server, ""),
    };
    if server.is_empty() || share.is_empty() {
        return Err(PathError::IncompleteShare);
    }
    if server == "." || server == "?" {
        return Err(PathError::Device(text.to_owned()));
    }
    check_name(server, server)?;
    check_name(share, share)?;
    Ok((Root::Unc { server: server.to_owned(), share: share.to_owned() }, rest))
}

/// Splits `name:stream[:type]` into the name and the stream. The unnamed `$DATA` stream is
/// the file's main stream, so `f.txt::$DATA` is `f.txt`.
fn split_stream(part: &str) -> Result<(&str, Option<String>), PathError> {
    let Some((name, suffix)) = part.split_once(':') else {
        return Ok((part, None));
    };
    let (stream, kind) = match suffix.split_once(':') {
        Some((stream, kind)) => (stream, Some(kind)),
        None => (suffix, None),
    };
    if let Some(kind) = kind {
        if !kind.eq_ignore_ascii_case("$DATA") || stream.contains(':') {
            return Err(PathError::Stream(part.to_owned()));
        }
    }
    if name.is_empty() {
        return Err(PathError::BadCharacter(part.to_owned()));
    }
    if stream.is_empty() {
        return Ok((name, None));
    }
    Ok((name, Some(stream.to_owned())))
}

fn check_name(name: &str, original: &str) -> Result<(), PathError> {
    if name.is_empty() {
        // "..." trims to nothing: Win32 would turn it into the directory itself.
        return Err(PathError::BadCharacter(original.to_owned()));
    }
    if name.chars().any(|c| c < ' ' || matches!(c, '<' | '>' | '"' | '|' | '?' | '*' | ':')) {
        return Err(PathError::BadCharacter(original.to_owned()));
    }
    let stem = name.split('.').next().unwrap_or(name).trim_end_matches(' ');
    if RESERVED_NAMES.iter().any(|reserved| names_equal(reserved, stem)) {
        return Err(PathError::ReservedName(original.to_owned()));
    }
    Ok(())
}

fn same_root(a: &Root, b: &Root) -> bool {
    match (a, b) {
        (Root::Drive(x), Root::Drive(y)) => x == y,
        (Root::Unc { server: s1, share: h1 }, Root::Unc { server: s2, share: h2 }) => {
            names_equal(s1, s2) && names_equal(h1, h2)
        }
        _ => false,
    }
}

/// Compares two names as NTFS does by default: each character mapped through an upper-case
/// table, one character to one character.
///
/// NOTE: Rust's Unicode upper case stands in for the volume's own `$UpCase` table. The two
/// agree on every letter a path in a policy is likely to hold; a name that differs only in a
/// character they map differently compares unequal here, which errs towards treating two
/// entries as distinct, never towards merging them.
pub fn names_equal(a: &str, b: &str) -> bool {
    let mut a = a.chars().map(upper);
    let mut b = b.chars().map(upper);
    loop {
        match (a.next(), b.next()) {
            (None, None) => return true,
            (Some(x), Some(y)) if x == y => continue,
            _ => return false,
        }
    }
}

fn upper(c: char) -> char {
    let mut mapped = c.to_uppercase();
    match (mapped.next(), mapped.next()) {
        (Some(single), None) => single,
        // NTFS maps one character to one; "ß" stays "ß" rather than becoming "SS".
        _ => c,
    }
}

/// Whether `name` has the form of an 8.3 alias: up to six characters, `~`, digits, and an
/// optional extension of up to three characters.
pub fn looks_like_short_name(name: &str) -> bool {
    let (base, extension) = match name.rsplit_once('.') {
        Some((base, extension)) => (base, Some(extension)),
        None => (name, None),
    };
    if extension.is_some_and(|extension| extension.is_empty() || extension.chars().count() > 3) {
        return false;
    }
    let Some((stem, digits)) = base.rsplit_once('~') else {
        return false;
    };
    !stem.is_empty()
        && base.chars().count() <= 8
        && !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
        && !digits.starts_with('0')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(text: &str) -> WinPath {
        WinPath::parse(text).unwrap_or_else(|error| panic!("{text}: {error}"))
    }

    #[test]
    fn every_spelling_of_a_drive_path_is_one_path() {
        let canonical = path(r"C:\Users\dev\project");
        for spelling in [
            r"c:\users\DEV\Project",
            "C:/Users/dev/project",
            r"C:\Users\\dev\.\project\",
            r"C:\Users\other\..\dev\project",
            r"C:\Users\dev\project. ",
            r"C:\Users\dev.\project...",
            r"\\?\C:\Users\dev\project",
            r"\\?\c:\USERS\dev\project",
        ] {
            assert_eq!(path(spelling), canonical, "{spelling}");
        }
        assert_eq!(canonical.to_string(), r"C:\Users\dev\project");
    }

    #[test]
    fn unc_paths_parse_in_both_forms() {
        let share = path(r"\\server\share\dir\file.txt");
        assert_eq!(path(r"\\?\UNC\SERVER\Share\dir\file.txt"), share);
        assert_eq!(path("//server/share/dir/file.txt"), share);
        assert_eq!(share.to_string(), r"\\server\share\dir\file.txt");
        assert_eq!(share.to_verbatim(), r"\\?\UNC\server\share\dir\file.txt");
        assert_eq!(path(r"\\server\share").to_string(), r"\\server\share\");
        assert_eq!(WinPath::parse(r"\\server"), Err(PathError::IncompleteShare));
        assert_eq!(WinPath::parse(r"\\server\"), Err(PathError::IncompleteShare));
    }

    #[test]
    fn verbatim_form_round_trips() {
        let p = path(r"d:\ws\src");
        assert_eq!(p.to_verbatim(), r"\\?\D:\ws\src");
        assert_eq!(path(&p.to_verbatim()), p);
        assert_eq!(path(r"C:\").to_verbatim(), r"\\?\C:\");
    }

    #[test]
    fn relative_forms_are_rejected() {
        for text in [r"project", r"C:project", "C:", r"\Users\dev", r".\x", r"..\x"] {
            assert_eq!(WinPath::parse(text), Err(PathError::NotAbsolute), "{text}");
        }
        assert_eq!(WinPath::parse(""), Err(PathError::Empty));
        assert_eq!(WinPath::parse(r"C:\.."), Err(PathError::AboveRoot));
    }

    #[test]
    fn device_namespaces_are_rejected() {
        for text in [
            r"\\.\PhysicalDrive0",
            r"\\.\pipe\secret",
            "//./pipe/secret",
            r"\??\C:\Windows",
            r"\\?\GLOBALROOT\Device\HarddiskVolume1",
            r"\\?\Volume{01234567-89ab-cdef-0123-456789abcdef}\x",
        ] {
            assert!(matches!(WinPath::parse(text), Err(PathError::Device(_))), "{text}");
        }
    }

    #[test]
    fn reserved_device_names_are_rejected_with_any_extension() {
        for text in [r"C:\ws\nul", r"C:\ws\NUL.txt", r"C:\ws\con", r"C:\ws\com1.log", r"C:\ws\lpt9", r"C:\ws\aux .c"] {
            assert!(matches!(WinPath::parse(text), Err(PathError::ReservedName(_))), "{text}");
        }
        // Names that only start like a device are ordinary.
        path(r"C:\ws\console.txt");
        path(r"C:\ws\com10");
        path(r"C:\ws\nullable");
    }

    #[test]
    fn forbidden_characters_are_rejected() {
        for text in [r"C:\ws\a*b", r"C:\ws\a?b", "C:\\ws\\a\"b", r"C:\ws\a<b", r"C:\ws\a|b", "C:\\ws\\a\u{1}b", r"C:\ws\..."] {
            assert!(matches!(WinPath::parse(text), Err(PathError::BadCharacter(_))), "{text}");
        }
    }

    // A write to `f.txt:hidden` passed a check made on names in Codex's Windows sandbox (its
    // docs/windows_sandbox_security.md). A stream belongs to its file, so the object whose ACL decides is the file.
    #[test]
    fn streams_name_their_file() {
        let config = path(r"C:\ws\.git\config");
        for spelling in [r"C:\ws\.git\config:evil", r"C:\ws\.GIT\Config:evil:$DATA", r"c:/ws/.git/config:x"] {
            let object = ObjectPath::parse(spelling).unwrap();
            assert_eq!(object.file, config, "{spelling}");
            assert!(object.stream.is_some());
        }
        let main = ObjectPath::parse(r"C:\ws\.git\config::$DATA").unwrap();
        assert_eq!(main, ObjectPath { file: config.clone(), stream: None });
        // Policy paths may not name a stream, and a stream may not sit mid-path.
        assert!(matches!(WinPath::parse(r"C:\ws\f.txt:hidden"), Err(PathError::Stream(_))));
        assert!(matches!(ObjectPath::parse(r"C:\ws\dir:s\f.txt"), Err(PathError::Stream(_))));
        assert!(matches!(ObjectPath::parse(r"C:\ws\f:s:$INDEX_ALLOCATION"), Err(PathError::Stream(_))));
    }

    // `.GiT\config` passed a case-sensitive protection of `.git` in Codex's Windows sandbox.
    #[test]
    fn containment_ignores_case() {
        let protected = path(r"C:\ws\.git");
        assert!(path(r"C:\WS\.GiT\config").starts_with(&protected));
        assert!(path(r"c:\ws\.git").starts_with(&protected));
        assert!(!path(r"C:\ws\.github\x").starts_with(&protected));
        assert!(!path(r"D:\ws\.git").starts_with(&protected));
        assert!(!path(r"\\host\ws\.git").starts_with(&protected));
        assert!(names_equal("ÄÖÜ", "äöü"));
        assert!(!names_equal("straße", "STRASSE"));
    }

    #[test]
    fn short_name_forms_are_recognised() {
        for name in ["GIT~1", "PROGRA~1", "PROGRA~2.TXT", "a~12", "CODEX~1.JSO"] {
            assert!(looks_like_short_name(name), "{name}");
        }
        for name in [".git", "git~", "~1", "long-name~1", "GIT~01", "x~1.json", "x~a", "x~1."] {
            assert!(!looks_like_short_name(name), "{name}");
        }
        assert!(path(r"C:\PROGRA~1\tool").may_hold_short_names());
        assert!(!path(r"C:\Program Files\tool").may_hold_short_names());
    }

    #[test]
    fn join_and_parent() {
        let ws = path(r"C:\ws");
        assert_eq!(ws.join(r".git\hooks").unwrap(), path(r"C:\ws\.git\hooks"));
        assert_eq!(ws.join(".git/hooks").unwrap(), path(r"C:\ws\.git\hooks"));
        assert_eq!(path(r"C:\ws\.git").parent(), Some(ws));
        assert_eq!(path(r"C:\").parent(), None);
        assert_eq!(path(r"C:\ws\a.txt").file_name(), Some("a.txt"));
        assert_eq!(path(r"C:\ws").drive(), Some('C'));
    }
}
