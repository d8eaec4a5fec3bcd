//! Each fixture's profile, compared with `tests/golden/NAME.sb`. A change to the generator or
//! to the built-in lists changes a golden file; review the difference, then rewrite the files
//! with `PALISADE_BLESS=1 cargo test -p palisade-macos --test tests golden`.

use std::path::PathBuf;

use super::fixtures;

fn golden_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden").join(format!("{name}.sb"))
}

#[test]
fn profiles_match_golden_files() {
    let bless = std::env::var_os("PALISADE_BLESS").is_some_and(|value| value == "1");
    let mut mismatched = Vec::new();
    for fixture in fixtures::all() {
        let text = fixture.profile().text;
        let path = golden_path(fixture.name);
        if bless {
            std::fs::write(&path, &text).unwrap();
            continue;
        }
        let expected = std::fs::read_to_string(&path).unwrap_or_else(|error| panic!("failed to read {}: {error}", path.display()));
        if expected != text {
            let line = expected.lines().zip(text.lines()).position(|(a, b)| a != b).map_or(expected.lines().count().min(text.lines().count()), |index| index) + 1;
            mismatched.push(format!("{} differs from line {line}", path.display()));
        }
    }
    assert!(mismatched.is_empty(), "{}\nrerun with PALISADE_BLESS=1 after reviewing the change", mismatched.join("\n"));
}

#[test]
fn every_golden_file_has_a_fixture() {
    let names: Vec<&str> = fixtures::all().iter().map(|fixture| fixture.name).collect();
    for entry in std::fs::read_dir(golden_path("x").parent().unwrap()).unwrap() {
        let path = entry.unwrap().path();
        let stem = path.file_stem().unwrap().to_str().unwrap().to_owned();
        assert!(names.contains(&stem.as_str()), "{} has no fixture; remove it", path.display());
    }
}

#[test]
fn generation_is_deterministic() {
    for fixture in fixtures::all() {
        assert_eq!(fixture.profile(), fixture.profile(), "{}", fixture.name);
        // The policy's order does not matter either.
        let mut reversed = fixture.policy.clone();
        let filesystem = &mut reversed.filesystem;
        for list in [&mut filesystem.read_only, &mut filesystem.writable, &mut filesystem.hidden, &mut filesystem.protected, &mut filesystem.copy_on_write] {
            list.reverse();
        }
        let request = palisade_macos::Request::from_policy(&reversed, &fixture.machine, &fixture.fs).unwrap();
        assert_eq!(palisade_macos::generate(&request).unwrap().text, fixture.profile().text, "{}", fixture.name);
    }
}
