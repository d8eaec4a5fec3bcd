//! The sandbox accounts' password store: how a password is made from random bytes, and the
//! text format of `%LOCALAPPDATA%\palisade\accounts`. `sys::account` supplies the random
//! bytes, protects each password with DPAPI before it reaches this format, and writes the file.
//!
//! The file has one line per account, `<kind> <name> <hex of the DPAPI blob>`, and comment
//! lines starting with `#`.

use std::fmt::Write as _;

use crate::plan::AccountKind;

/// Characters of the random part of a password: 64 of them, so that each random byte gives
/// six unbiased bits.
const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// One character of each class a Windows complexity policy may require.
const CLASSES: [&[u8]; 4] = [b"ABCDEFGHJKLMNPQRSTUVWXYZ", b"abcdefghijkmnopqrstuvwxyz", b"23456789", b"!#%+-.=?@_"];

/// Random bytes [`password`] consumes.
pub const PASSWORD_RANDOM_BYTES: usize = 32;

/// Builds a password from `random` bytes: one character of each class that a local password
/// policy may require, then 28 characters of 6 random bits each (168 bits in all). The
/// account's password is used only by palisade and never typed.
pub fn password(random: &[u8; PASSWORD_RANDOM_BYTES]) -> String {
    let mut password = String::with_capacity(PASSWORD_RANDOM_BYTES);
    for (class, byte) in CLASSES.iter().zip(random) {
        password.push(char::from(class[usize::from(*byte) % class.len()]));
    }
    for byte in &random[CLASSES.len()..] {
        password.push(char::from(ALPHABET[usize::from(byte & 63)]));
    }
    password
}

/// One account's entry in the store.
#[derive(Clone, PartialEq, Eq)]
pub struct Entry {
    pub kind: AccountKind,
    pub name: String,
    /// The password as `CryptProtectData` returned it.
    pub protected: Vec<u8>,
}

impl std::fmt::Debug for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Entry").field("kind", &self.kind).field("name", &self.name).field("protected", &format_args!("<{} bytes>", self.protected.len())).finish()
    }
}

/// The reason the store file cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    #[error("line {line} of the password store is malformed: {reason}")]
    Malformed { line: usize, reason: &'static str },
}

const HEADER: &str = "# palisade's sandbox accounts. Each password is protected with DPAPI for your user\n# account; `palisade setup` writes this file, and it is readable only by you.\n";

/// Formats the store file.
pub fn format(entries: &[Entry]) -> String {
    let mut text = HEADER.to_owned();
    for entry in entries {
        let kind = kind_name(entry.kind);
        let _ = write!(text, "{kind} {} ", entry.name);
        for byte in &entry.protected {
            let _ = write!(text, "{byte:02x}");
        }
        text.push('\n');
    }
    text
}

/// Parses the store file.
pub fn parse(text: &str) -> Result<Vec<Entry>, StoreError> {
    let mut entries = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let line_number = index + 1;
        let malformed = |reason| StoreError::Malformed { line: line_number, reason };
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [kind, name, hex] = fields[..] else {
            return Err(malformed("expected three fields: kind, account name, protected password"));
        };
        let kind = match kind {
            "offline" => AccountKind::Offline,
            "online" => AccountKind::Online,
            _ => return Err(malformed("the kind is neither offline nor online")),
        };
        let protected = decode_hex(hex).ok_or_else(|| malformed("the protected password is not hexadecimal"))?;
        entries.push(Entry { kind, name: name.to_owned(), protected });
    }
    Ok(entries)
}

/// Finds the entry of `kind` for the account `name`, compared without case as Windows
/// compares account names.
pub fn find<'a>(entries: &'a [Entry], kind: AccountKind, name: &str) -> Option<&'a Entry> {
    entries.iter().find(|entry| entry.kind == kind && entry.name.eq_ignore_ascii_case(name))
}

pub fn kind_name(kind: AccountKind) -> &'static str {
    match kind {
        AccountKind::Offline => "offline",
        AccountKind::Online => "online",
    }
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if text.len() % 2 != 0 || text.is_empty() {
        return None;
    }
    (0..text.len()).step_by(2).map(|index| u8::from_str_radix(text.get(index..index + 2)?, 16).ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_has_every_class_and_full_length() {
        for seed in [0u8, 1, 63, 128, 255] {
            let random = [seed; PASSWORD_RANDOM_BYTES];
            let password = password(&random);
            assert_eq!(password.len(), PASSWORD_RANDOM_BYTES);
            assert!(password.chars().any(|c| c.is_ascii_uppercase()), "{password}");
            assert!(password.chars().any(|c| c.is_ascii_lowercase()), "{password}");
            assert!(password.chars().any(|c| c.is_ascii_digit()), "{password}");
            assert!(password.chars().any(|c| !c.is_ascii_alphanumeric()), "{password}");
        }
    }

    #[test]
    fn password_uses_every_random_byte() {
        let mut random = [7u8; PASSWORD_RANDOM_BYTES];
        let before = password(&random);
        for index in 0..PASSWORD_RANDOM_BYTES {
            random[index] ^= 1;
            assert_ne!(password(&random), before, "byte {index} is ignored");
            random[index] ^= 1;
        }
    }

    #[test]
    fn store_round_trips() {
        let entries = vec![
            Entry { kind: AccountKind::Offline, name: "pal-dev-1234".into(), protected: vec![0, 1, 0xab, 0xff] },
            Entry { kind: AccountKind::Online, name: "pal-dev-1234-net".into(), protected: vec![0x10; 200] },
        ];
        let text = format(&entries);
        assert!(text.starts_with('#'));
        assert_eq!(parse(&text).unwrap(), entries);
        assert_eq!(find(&entries, AccountKind::Online, "PAL-DEV-1234-NET"), Some(&entries[1]));
        assert_eq!(find(&entries, AccountKind::Offline, "pal-dev-1234-net"), None);
    }

    #[test]
    fn malformed_store_lines_are_rejected_with_their_number() {
        for (text, line) in [("offline pal-x\n", 1), ("# c\nonline pal-x zz\n", 2), ("other pal-x 00\n", 1), ("offline pal-x 0\n", 1), ("offline a b c\n", 1)] {
            assert!(matches!(parse(text), Err(StoreError::Malformed { line: found, .. }) if found == line), "{text:?}");
        }
    }

    #[test]
    fn debug_hides_the_protected_bytes() {
        let entry = Entry { kind: AccountKind::Offline, name: "pal-x".into(), protected: vec![0xde, 0xad] };
        assert!(!format!("{entry:?}").contains("222"), "{entry:?}");
        assert!(format!("{entry:?}").contains("<2 bytes>"));
    }
}
