//! Every string palisade writes reads back as itself, and every regex it writes for a path
//! matches that path and nothing else that differs from it.

use palisade_macos::escape::{regex_matching, string_literal, EscapeError};
use palisade_macos::reader::{self, Expr};
use proptest::prelude::*;
use regex_automata::meta::Regex;

fn read_back(literal: &str) -> String {
    let exprs = reader::read(literal).unwrap_or_else(|error| panic!("{literal}: {error}"));
    match exprs.as_slice() {
        [Expr::Str(value)] => value.clone(),
        other => panic!("{literal} read as {other:?}"),
    }
}

proptest! {
    #[test]
    fn escaped_strings_read_back(value in "\\PC{0,200}") {
        match string_literal(&value) {
            Ok(literal) => prop_assert_eq!(read_back(&literal), value),
            Err(error) => prop_assert!(matches!(error, EscapeError::ControlCharacter { .. }), "{error}"),
        }
    }

    #[test]
    fn paths_with_quotes_and_backslashes_read_back(value in "[/a\"\\\\ é.\\[\\]()*]{0,100}") {
        prop_assert_eq!(read_back(&string_literal(&value).unwrap()), value);
    }

    #[test]
    fn path_regexes_match_only_their_path(value in "[/a-z\"\\\\ é.^$|?*+(){}\\[\\]]{1,60}", other in "[/a-z.\\[\\]]{1,60}") {
        let source = read_back(&string_literal(&format!("^{}$", regex_matching(&value))).unwrap());
        let regex = Regex::new(&source).unwrap();
        prop_assert!(regex.is_match(&value), "{} does not match {:?}", source, value);
        prop_assert_eq!(regex.is_match(&other), other == value);
    }
}

#[test]
fn control_characters_never_reach_a_profile() {
    for value in ["/a\nb", "/a\rb", "/a\u{0}b", "/a\u{1b}b", "/a\u{9b}b"] {
        assert!(string_literal(value).is_err(), "{value:?}");
    }
}
