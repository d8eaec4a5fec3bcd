//! The only way a path or name enters a profile's text: as an SBPL string literal.
//!
//! SBPL is read by a Scheme reader, so a string ends at the first unescaped `"`, and `\` starts
//! an escape. A regex filter is read twice, first as a string and then by the regex compiler,
//! so its text is escaped for the regex first ([`regex_matching`]) and for the string second
//! ([`string_literal`]). Control characters and names that are not UTF-8 are rejected rather
//! than escaped, because the profile language has no agreed spelling for them. A rejected path
//! is an error the user can act on, where a mangled one would silently protect another name.

use std::path::Path;

/// The maximum length of a string literal palisade writes, in bytes between the quotes. Other
/// Seatbelt tools report that the profile reader rejects strings of about a kilobyte. palisade
/// has not measured the limit, so it stays below it.
pub const MAX_LITERAL_BYTES: usize = 1000;

/// The reason a value cannot be written into a profile.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EscapeError {
    #[error("{value:?} contains the control character U+{code:04X}, which palisade does not write into a Seatbelt profile; rename the file or leave it out of the policy")]
    ControlCharacter { value: String, code: u32 },
    #[error("{0} is not valid UTF-8, which a Seatbelt profile requires; rename the file or leave it out of the policy")]
    NotUtf8(String),
    #[error("{value:?} takes {length} bytes in the profile, more than the {MAX_LITERAL_BYTES} that palisade writes into one Seatbelt string; use a shorter path")]
    TooLong { value: String, length: usize },
}

/// Returns the text of `path`, or an error if it is not UTF-8.
pub fn path_text(path: &Path) -> Result<&str, EscapeError> {
    path.to_str().ok_or_else(|| EscapeError::NotUtf8(path.display().to_string()))
}

/// Returns `value` as a quoted SBPL string literal: `\` becomes `\\`, then `"` becomes `\"`.
/// The order matters: escaping quotes first would turn the backslash of `\"` into `\\` and
/// end the string early.
pub fn string_literal(value: &str) -> Result<String, EscapeError> {
    if let Some(control) = value.chars().find(|c| c.is_control()) {
        return Err(EscapeError::ControlCharacter { value: value.to_owned(), code: u32::from(control) });
    }
    let body = value.replace('\\', "\\\\").replace('"', "\\\"");
    if body.len() > MAX_LITERAL_BYTES {
        return Err(EscapeError::TooLong { value: value.to_owned(), length: body.len() });
    }
    Ok(format!("\"{body}\""))
}

/// Checks that `value` can be written with [`string_literal`].
pub fn check(value: &str) -> Result<(), EscapeError> {
    string_literal(value).map(drop)
}

/// Returns a regular expression that matches exactly the characters of `value`, without
/// anchors. Characters that are special in a regex become one-character classes (`[.]`), and
/// the four that are special inside a class too (`\`, `[`, `]`, `^`) get a backslash.
pub fn regex_matching(value: &str) -> String {
    let mut regex = String::with_capacity(value.len() + 8);
    for c in value.chars() {
        match c {
            '.' | '*' | '+' | '?' | '(' | ')' | '{' | '}' | '|' | '$' => {
                regex.push('[');
                regex.push(c);
                regex.push(']');
            }
            '\\' | '[' | ']' | '^' => {
                regex.push('\\');
                regex.push(c);
            }
            _ => regex.push(c),
        }
    }
    regex
}

/// Returns a regular expression, without anchors, that matches `value` in every ASCII case
/// spelling: each ASCII letter becomes a class of its two cases (`git` becomes `[gG][iI][tT]`),
/// and every other character is escaped as [`regex_matching`] does. Seatbelt matches paths as
/// strings, case-sensitively, while a case-insensitive volume (the default for APFS) opens the
/// same file for every spelling, so a deny must match them all.
///
/// NOTE: only ASCII letters are folded, so `É` does not match `é`. A name is also matched only
/// in the Unicode normalisation form it was given: NFC `é` does not match NFD `e` + U+0301,
/// although APFS may open the same file for both.
pub fn regex_matching_any_case(value: &str) -> String {
    let mut regex = String::with_capacity(value.len() * 4);
    for c in value.chars() {
        if c.is_ascii_alphabetic() {
            regex.push('[');
            regex.push(c.to_ascii_lowercase());
            regex.push(c.to_ascii_uppercase());
            regex.push(']');
        } else {
            regex.push_str(&regex_matching(c.encode_utf8(&mut [0; 4])));
        }
    }
    regex
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backslash_is_escaped_before_quote() {
        assert_eq!(string_literal(r#"a\"b"#).unwrap(), r#""a\\\"b""#);
        assert_eq!(string_literal(r"C:\dir").unwrap(), r#""C:\\dir""#);
        assert_eq!(string_literal(r#"say "hi""#).unwrap(), r#""say \"hi\"""#);
    }

    #[test]
    fn control_characters_are_rejected() {
        for value in ["a\nb", "tab\there", "nul\0", "del\u{7f}", "c1\u{85}", "esc\u{1b}[31m"] {
            let error = string_literal(value).unwrap_err();
            assert!(matches!(error, EscapeError::ControlCharacter { .. }), "{value:?}: {error}");
        }
    }

    #[test]
    fn unicode_and_spaces_pass_unchanged() {
        assert_eq!(string_literal("/Users/zoë/My Projects/日本").unwrap(), "\"/Users/zoë/My Projects/日本\"");
    }

    #[test]
    fn long_values_are_rejected() {
        let fits = "a".repeat(MAX_LITERAL_BYTES);
        assert!(string_literal(&fits).is_ok());
        let too_long = "a".repeat(MAX_LITERAL_BYTES + 1);
        assert!(matches!(string_literal(&too_long), Err(EscapeError::TooLong { length, .. }) if length == MAX_LITERAL_BYTES + 1));
        // Escaping counts: 600 backslashes take 1200 bytes.
        assert!(matches!(string_literal(&"\\".repeat(600)), Err(EscapeError::TooLong { .. })));
    }

    #[cfg(unix)]
    #[test]
    fn non_utf8_paths_are_rejected() {
        use std::os::unix::ffi::OsStrExt;
        let path = Path::new(std::ffi::OsStr::from_bytes(b"/Users/dev/\xff.txt"));
        assert!(matches!(path_text(path), Err(EscapeError::NotUtf8(_))));
    }

    #[test]
    fn regex_metacharacters_become_literal() {
        assert_eq!(regex_matching("/a.b"), "/a[.]b");
        assert_eq!(regex_matching("x[1]^y"), r"x\[1\]\^y");
        assert_eq!(regex_matching(r"back\slash"), r"back\\slash");
        assert_eq!(regex_matching("(a|b)*+?{2}$"), "[(]a[|]b[)][*][+][?][{]2[}][$]");
    }

    #[test]
    fn any_case_regex_folds_ascii_letters_only() {
        assert_eq!(regex_matching_any_case("/.Git"), "/[.][gG][iI][tT]");
        assert_eq!(regex_matching_any_case("a1[b]"), r"[aA]1\[[bB]\]");
        assert_eq!(regex_matching_any_case("zoë"), "[zZ][oO]ë");
    }
}
