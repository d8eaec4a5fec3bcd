//! Command lines as Windows builds and parses them, as pure functions tested on every platform.
//!
//! A Windows process receives one string, not an argument vector: each program splits it
//! again, almost always with the rules of the Microsoft C runtime, which `CommandLineToArgvW`
//! and Rust's `std::env::args` follow too. [`quote_args`] writes a vector so that those rules
//! give it back unchanged, and [`split_args`] implements the rules so that the round trip is
//! tested here. Batch files are run by `cmd.exe`, which parses the line once more with
//! rules of its own, so [`batch_command_line`] accepts only arguments it can pass through
//! both parsers unchanged. [`find_program`] looks a program up on the command's `PATH`.
//!
//! Strings are UTF-16 code units, as Windows stores them, so that names with unpaired
//! surrogates survive.

use std::fmt;

const SPACE: u16 = b' ' as u16;
const TAB: u16 = b'\t' as u16;
const QUOTE: u16 = b'"' as u16;
const BACKSLASH: u16 = b'\\' as u16;
const SLASH: u16 = b'/' as u16;
const COLON: u16 = b':' as u16;
const DOT: u16 = b'.' as u16;
const PERCENT: u16 = b'%' as u16;
const NEWLINE: u16 = b'\n' as u16;
const CARRIAGE_RETURN: u16 = b'\r' as u16;
const VERTICAL_TAB: u16 = 0x0b;

/// The reason an argument vector cannot be written as a command line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CommandLineError {
    #[error("the command is empty")]
    Empty,
    #[error("argument {index} contains a NUL character, which a Windows command line cannot carry")]
    Nul { index: usize },
    #[error("the program name {0:?} contains a double quote, which Windows cannot pass as the first argument")]
    QuoteInProgram(String),
    #[error(
        "argument {index} ({argument:?}) contains {character}, which cmd.exe would interpret when it runs a batch file; \
         call cmd.exe /c yourself if that is intended"
    )]
    UnsafeForBatch { index: usize, argument: String, character: &'static str },
}

/// Writes `args` as one command line that the C runtime's rules split back into `args`.
///
/// The first element is the program name, which the rules read without escapes: it is always
/// quoted, so it may contain spaces but not `"`. The other elements are quoted only when they
/// are empty or contain whitespace or `"`.
pub fn quote_args<S: AsRef<[u16]>>(args: &[S]) -> Result<Vec<u16>, CommandLineError> {
    let (program, rest) = args.split_first().ok_or(CommandLineError::Empty)?;
    let program = program.as_ref();
    check_nul(program, 0)?;
    if program.contains(&QUOTE) {
        return Err(CommandLineError::QuoteInProgram(String::from_utf16_lossy(program)));
    }
    let mut line = Vec::with_capacity(program.len() + 2);
    line.push(QUOTE);
    line.extend_from_slice(program);
    line.push(QUOTE);
    for (offset, arg) in rest.iter().enumerate() {
        let arg = arg.as_ref();
        check_nul(arg, offset + 1)?;
        line.push(SPACE);
        push_quoted(&mut line, arg);
    }
    Ok(line)
}

fn check_nul(arg: &[u16], index: usize) -> Result<(), CommandLineError> {
    if arg.contains(&0) {
        return Err(CommandLineError::Nul { index });
    }
    Ok(())
}

/// Appends one argument, quoted where needed. Inside quotes, a run of backslashes is doubled
/// when a `"` follows it (a literal one, escaped as `\"`, or the closing one), because only
/// there do the rules read backslashes as escapes.
fn push_quoted(line: &mut Vec<u16>, arg: &[u16]) {
    push_quoted_if(line, arg, false);
}

/// As [`push_quoted`], with quotes also when `force` is set.
fn push_quoted_if(line: &mut Vec<u16>, arg: &[u16], force: bool) {
    let needs_quotes = force || arg.is_empty() || arg.iter().any(|&unit| matches!(unit, SPACE | TAB | NEWLINE | VERTICAL_TAB | QUOTE));
    if !needs_quotes {
        line.extend_from_slice(arg);
        return;
    }
    line.push(QUOTE);
    let mut backslashes = 0;
    for &unit in arg {
        match unit {
            BACKSLASH => backslashes += 1,
            QUOTE => {
                line.extend(std::iter::repeat_n(BACKSLASH, backslashes * 2 + 1));
                line.push(QUOTE);
                backslashes = 0;
            }
            _ => {
                line.extend(std::iter::repeat_n(BACKSLASH, backslashes));
                line.push(unit);
                backslashes = 0;
            }
        }
    }
    line.extend(std::iter::repeat_n(BACKSLASH, backslashes * 2));
    line.push(QUOTE);
}

/// Splits a command line with the rules of the Microsoft C runtime (2008 and later), which
/// `CommandLineToArgvW` shares for everything [`quote_args`] writes:
///
/// - The program name ends at the first space or tab outside quotes, and `"` only toggles
///   quoting there.
/// - Elsewhere, 2n backslashes before a `"` give n backslashes and the `"` toggles quoting;
///   2n+1 backslashes before a `"` give n backslashes and a literal `"`. Backslashes before
///   anything else are literal.
/// - Inside quotes, `""` gives a literal `"` and quoting continues.
pub fn split_args(line: &[u16]) -> Vec<Vec<u16>> {
    let mut args = Vec::new();
    let mut position = 0;

    let mut program = Vec::new();
    let mut quoted = false;
    while let Some(&unit) = line.get(position) {
        if unit == QUOTE {
            quoted = !quoted;
        } else if !quoted && (unit == SPACE || unit == TAB) {
            break;
        } else {
            program.push(unit);
        }
        position += 1;
    }
    args.push(program);

    loop {
        while matches!(line.get(position), Some(&SPACE) | Some(&TAB)) {
            position += 1;
        }
        if position >= line.len() {
            return args;
        }
        let mut arg = Vec::new();
        let mut quoted = false;
        while let Some(&unit) = line.get(position) {
            match unit {
                BACKSLASH => {
                    let run = line[position..].iter().take_while(|&&unit| unit == BACKSLASH).count();
                    position += run;
                    if line.get(position) == Some(&QUOTE) {
                        arg.extend(std::iter::repeat_n(BACKSLASH, run / 2));
                        if run % 2 == 1 {
                            arg.push(QUOTE);
                            position += 1;
                        }
                    } else {
                        arg.extend(std::iter::repeat_n(BACKSLASH, run));
                    }
                    continue;
                }
                QUOTE if quoted && line.get(position + 1) == Some(&QUOTE) => {
                    arg.push(QUOTE);
                    position += 1;
                }
                QUOTE => quoted = !quoted,
                SPACE | TAB if !quoted => break,
                _ => arg.push(unit),
            }
            position += 1;
        }
        args.push(arg);
    }
}

/// Writes the command line that runs the batch file `script` with `args` through `cmd.exe`,
/// to be started with `cmd.exe` itself as the program.
///
/// `/d` skips the AutoRun commands of the registry, `/e:on` and `/v:off` fix the extensions
/// and delayed expansion whatever the registry sets, and `/s /c` makes cmd.exe strip exactly
/// the outer pair of quotes around the rest of the line. The arguments are quoted with the C
/// runtime's rules, because batch files such as `npm.cmd` usually hand `%*` to a program that
/// splits them with those rules. cmd.exe expands `%` even inside quotes and pairs up quotes of
/// its own, so arguments with `%`, `"`, or a line break are rejected: neither parser could get
/// them back unchanged.
pub fn batch_command_line<S: AsRef<[u16]>>(cmd_exe: &[u16], script: &[u16], args: &[S]) -> Result<Vec<u16>, CommandLineError> {
    for (offset, arg) in std::iter::once(script).chain(args.iter().map(AsRef::as_ref)).enumerate() {
        check_nul(arg, offset)?;
        let unsafe_character = arg.iter().find_map(|&unit| match unit {
            PERCENT => Some("%"),
            QUOTE => Some("a double quote"),
            NEWLINE | CARRIAGE_RETURN => Some("a line break"),
            _ => None,
        });
        if let Some(character) = unsafe_character {
            return Err(CommandLineError::UnsafeForBatch { index: offset, argument: String::from_utf16_lossy(arg), character });
        }
    }
    let mut line: Vec<u16> = Vec::new();
    line.push(QUOTE);
    line.extend_from_slice(cmd_exe);
    line.push(QUOTE);
    line.extend(" /d /e:on /v:off /s /c \"".encode_utf16());
    line.push(QUOTE);
    line.extend_from_slice(script);
    line.push(QUOTE);
    for arg in args {
        line.push(SPACE);
        push_quoted_for_batch(&mut line, arg.as_ref());
    }
    line.push(QUOTE);
    Ok(line)
}

/// As [`push_quoted`], and also quotes the characters cmd.exe treats as separators or
/// operators outside quotes, so that they reach the batch file as text.
fn push_quoted_for_batch(line: &mut Vec<u16>, arg: &[u16]) {
    const CMD_SPECIAL: &[u8] = b"&|<>^(),;=!@";
    let special = arg.iter().any(|&unit| unit < 0x80 && CMD_SPECIAL.contains(&(unit as u8)));
    push_quoted_if(line, arg, special);
}

/// What kind of file a program is, which decides how it is started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProgramKind {
    /// Started directly with `CreateProcess`.
    Executable,
    /// A `.bat` or `.cmd` file, started through `cmd.exe`.
    Batch,
}

/// A program found by [`find_program`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Program {
    /// The absolute path.
    pub path: Vec<u16>,
    pub kind: ProgramKind,
}

/// The extensions tried when `PATHEXT` is not set, as in Windows' own default minus the
/// scripting hosts.
const DEFAULT_PATHEXT: &str = ".COM;.EXE;.BAT;.CMD";

/// Looks up the program `name` the way a shell would, from the command's own environment:
///
/// - A name with a separator or a drive (`.\x`, `C:\x`, `tools/x`) is a path, relative to
///   `cwd` unless absolute; no `PATH` search.
/// - Any other name is searched in the directories of `path` (the command's `PATH`), then in
///   `system_dirs`. The current directory is not searched, unlike `CreateProcess`, so a
///   program planted in the workspace does not shadow a system one.
/// - A name without an extension gets each extension of `pathext` in turn; a name with one is
///   tried as it is first.
///
/// `is_file` returns whether a candidate exists. It is a parameter so that the rules are
/// testable without a file system. Returns `None` when no candidate exists.
pub fn find_program(
    name: &[u16],
    cwd: &[u16],
    path: Option<&[u16]>,
    pathext: Option<&[u16]>,
    system_dirs: &[Vec<u16>],
    is_file: impl Fn(&[u16]) -> bool,
) -> Option<Program> {
    if name.is_empty() {
        return None;
    }
    let pathext: Vec<u16> = match pathext {
        Some(value) if !value.is_empty() => value.to_vec(),
        _ => DEFAULT_PATHEXT.encode_utf16().collect(),
    };
    let extensions: Vec<&[u16]> = pathext.split(|&unit| unit == b';' as u16).filter(|ext| !ext.is_empty()).collect();
    let file_name_start = name.iter().rposition(|&unit| matches!(unit, BACKSLASH | SLASH | COLON)).map_or(0, |i| i + 1);
    let has_extension = name[file_name_start..].contains(&DOT);
    let candidates_in = |dir: Option<&[u16]>| -> Option<Program> {
        let base = match dir {
            Some(dir) => join(dir, name),
            None => name.to_vec(),
        };
        if has_extension && is_file(&base) {
            return Some(Program { kind: kind_of(&base), path: base });
        }
        extensions.iter().map(|ext| [base.as_slice(), ext].concat()).find(|candidate| is_file(candidate)).map(|path| Program {
            kind: kind_of(&path),
            path,
        })
    };

    if name.iter().any(|&unit| matches!(unit, BACKSLASH | SLASH | COLON)) {
        return if is_absolute(name) { candidates_in(None) } else { candidates_in(Some(cwd)) };
    }
    let path_dirs = path.into_iter().flat_map(|value| value.split(|&unit| unit == b';' as u16));
    let dirs = path_dirs.map(unquote).filter(|dir| !dir.is_empty()).chain(system_dirs.iter().map(Vec::as_slice));
    for dir in dirs {
        if let Some(program) = candidates_in(Some(dir)) {
            return Some(program);
        }
    }
    None
}

/// Strips the quotes around a `PATH` entry (`"C:\Program Files\x"`), which are not part of
/// the path.
fn unquote(entry: &[u16]) -> &[u16] {
    match entry {
        [QUOTE, inner @ .., QUOTE] => inner,
        _ => entry,
    }
}

fn join(dir: &[u16], name: &[u16]) -> Vec<u16> {
    let mut joined = dir.to_vec();
    if !matches!(joined.last(), Some(&BACKSLASH) | Some(&SLASH)) {
        joined.push(BACKSLASH);
    }
    joined.extend_from_slice(name);
    joined
}

/// `C:\x`, `C:/x`, `\\server\share\x` and `\\?\C:\x` are absolute; `C:x` and `\x` depend on a
/// current directory and are not.
fn is_absolute(name: &[u16]) -> bool {
    match name {
        [letter, COLON, BACKSLASH | SLASH, ..] => (*letter < 0x80) && (*letter as u8).is_ascii_alphabetic(),
        [BACKSLASH | SLASH, BACKSLASH | SLASH, ..] => true,
        _ => false,
    }
}

fn kind_of(path: &[u16]) -> ProgramKind {
    let lower = String::from_utf16_lossy(path).to_ascii_lowercase();
    if lower.ends_with(".bat") || lower.ends_with(".cmd") {
        ProgramKind::Batch
    } else {
        ProgramKind::Executable
    }
}

/// A UTF-16 string for messages, with unpaired surrogates replaced.
pub struct Lossy<'a>(pub &'a [u16]);

impl fmt::Display for Lossy<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&String::from_utf16_lossy(self.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wide(text: &str) -> Vec<u16> {
        text.encode_utf16().collect()
    }

    fn narrow(args: &[Vec<u16>]) -> Vec<String> {
        args.iter().map(|arg| String::from_utf16(arg).unwrap()).collect()
    }

    fn quote(args: &[&str]) -> String {
        let args: Vec<Vec<u16>> = args.iter().map(|arg| wide(arg)).collect();
        String::from_utf16(&quote_args(&args).unwrap()).unwrap()
    }

    fn round_trip(args: &[&str]) {
        let wide_args: Vec<Vec<u16>> = args.iter().map(|arg| wide(arg)).collect();
        let line = quote_args(&wide_args).unwrap();
        assert_eq!(narrow(&split_args(&line)), args, "line: {}", String::from_utf16_lossy(&line));
    }

    // The examples of Microsoft's "Parsing C++ command-line arguments" table.
    #[test]
    fn split_matches_documented_examples() {
        let cases: &[(&str, &[&str])] = &[
            (r#"prog "abc" d e"#, &["prog", "abc", "d", "e"]),
            (r#"prog a\\b d"e f"g h"#, &["prog", r"a\\b", "de fg", "h"]),
            (r#"prog a\\\"b c d"#, &["prog", r#"a\"b"#, "c", "d"]),
            (r#"prog a\\\\"b c" d e"#, &["prog", r"a\\b c", "d", "e"]),
            (r#"prog a"b"" c d"#, &["prog", r#"ab" c d"#]),
        ];
        for (line, expected) in cases {
            assert_eq!(narrow(&split_args(&wide(line))), *expected, "{line}");
        }
    }

    #[test]
    fn program_name_has_no_escapes() {
        assert_eq!(narrow(&split_args(&wide(r#""C:\Program Files\x\" a"#))), [r"C:\Program Files\x\", "a"]);
        assert_eq!(narrow(&split_args(&wide(r"C:\tools\x.exe  b"))), [r"C:\tools\x.exe", "b"]);
    }

    #[test]
    fn plain_arguments_are_not_quoted() {
        assert_eq!(quote(&["cmd", "/c", "exit", "7"]), r#""cmd" /c exit 7"#);
        assert_eq!(quote(&["x", r"C:\dir\"]), r#""x" C:\dir\"#);
    }

    #[test]
    fn quoting_round_trips() {
        let cases: &[&[&str]] = &[
            &["prog"],
            &["C:\\Program Files\\tool.exe", "a b", ""],
            &["p", "\"", "\\\"", "\\\\\"", "a\\", "a\\\\", "a b\\", "a b\\\\", "\\\\server\\share\\"],
            &["p", "tab\there", "new\nline", "vt\u{b}x", "unicode ü 日本", "\"quoted\" words"],
            &["p", "--flag=\"x y\"", "a\"b\"c", "trailing\\\\\\"],
            &["p", " ", "\t", "\"\"", "\\"],
        ];
        for args in cases {
            round_trip(args);
        }
    }

    #[test]
    fn unpaired_surrogates_survive() {
        let args = vec![wide("p"), vec![0xD800, SPACE, 0x61]];
        assert_eq!(split_args(&quote_args(&args).unwrap()), args);
    }

    #[test]
    fn unrepresentable_arguments_are_rejected() {
        assert_eq!(quote_args::<Vec<u16>>(&[]), Err(CommandLineError::Empty));
        assert_eq!(quote_args(&[wide("p"), vec![0x61, 0]]), Err(CommandLineError::Nul { index: 1 }));
        assert!(matches!(quote_args(&[wide("a\"b")]), Err(CommandLineError::QuoteInProgram(_))));
    }

    /// Every argument of the batch line must reach a program that `%*` is handed to unchanged,
    /// once cmd.exe has stripped its outer quotes.
    #[test]
    fn batch_line_round_trips_through_the_c_runtime() {
        let args = ["a b", "x&y", "p|q", "c:\\dir\\", "(1)", "k=v", "semi;colon", "plain", "", "caret^", "bang!"];
        let wide_args: Vec<Vec<u16>> = args.iter().map(|arg| wide(arg)).collect();
        let line = batch_command_line(&wide(r"C:\Windows\System32\cmd.exe"), &wide(r"C:\npm\npm.cmd"), &wide_args).unwrap();
        let text = String::from_utf16(&line).unwrap();
        let prefix = r#""C:\Windows\System32\cmd.exe" /d /e:on /v:off /s /c ""#;
        assert!(text.starts_with(prefix), "{text}");
        assert!(text.ends_with('"'));
        // cmd.exe /s strips the first quote after /c and the last quote of the line.
        let inner = &text[prefix.len()..text.len() - 1];
        let split = narrow(&split_args(&wide(inner)));
        assert_eq!(split[0], r"C:\npm\npm.cmd");
        assert_eq!(&split[1..], args);
        // Every character cmd.exe treats as an operator is inside quotes.
        for operator in ["x&y", "p|q", "(1)", "caret^"] {
            assert!(inner.contains(&format!("\"{operator}\"")), "{inner}");
        }
    }

    #[test]
    fn batch_rejects_what_cmd_would_interpret() {
        let cmd = wide("cmd.exe");
        let script = wide(r"C:\x.bat");
        for (arg, character) in [("%PATH%", "%"), ("a\"b", "a double quote"), ("a\nb", "a line break"), ("a\rb", "a line break")] {
            let error = batch_command_line(&cmd, &script, &[wide(arg)]).unwrap_err();
            assert_eq!(error, CommandLineError::UnsafeForBatch { index: 1, argument: arg.into(), character });
        }
        assert!(matches!(batch_command_line(&cmd, &wide(r"C:\100%\x.bat"), &[wide("a")]), Err(CommandLineError::UnsafeForBatch { index: 0, .. })));
    }

    /// Looks `name` up among `existing` files; the found path comes back in lower case,
    /// because its extension is spelled as in PATHEXT.
    fn lookup(name: &str, existing: &[&str]) -> Option<(String, ProgramKind)> {
        let exists = |candidate: &[u16]| {
            let candidate = String::from_utf16_lossy(candidate).to_ascii_lowercase();
            existing.iter().any(|file| file.to_ascii_lowercase() == candidate)
        };
        let system = vec![wide(r"C:\Windows\System32"), wide(r"C:\Windows")];
        let path = wide(r#"C:\tools;"C:\Program Files\nodejs";;C:\Users\dev\.cargo\bin\"#);
        find_program(&wide(name), &wide(r"C:\ws"), Some(&path), Some(&wide(".COM;.EXE;.BAT;.CMD")), &system, exists)
            .map(|program| (String::from_utf16(&program.path).unwrap().to_ascii_lowercase(), program.kind))
    }

    #[test]
    fn program_lookup_follows_path_and_pathext() {
        assert_eq!(lookup("cmd", &[r"C:\Windows\System32\cmd.exe"]), Some((r"c:\windows\system32\cmd.exe".into(), ProgramKind::Executable)));
        assert_eq!(lookup("npm", &[r"C:\Program Files\nodejs\npm.cmd"]), Some((r"c:\program files\nodejs\npm.cmd".into(), ProgramKind::Batch)));
        assert_eq!(lookup("cargo", &[r"C:\Users\dev\.cargo\bin\cargo.exe"]), Some((r"c:\users\dev\.cargo\bin\cargo.exe".into(), ProgramKind::Executable)));
        // PATH comes before the system directories, and .COM before .EXE.
        assert_eq!(lookup("x", &[r"C:\Windows\System32\x.exe", r"C:\tools\x.exe"]).unwrap().0, r"c:\tools\x.exe");
        assert_eq!(lookup("x", &[r"C:\tools\x.exe", r"C:\tools\x.com"]).unwrap().0, r"c:\tools\x.com");
        // A name with an extension is tried as given.
        assert_eq!(lookup("x.exe", &[r"C:\tools\x.exe"]).unwrap().0, r"c:\tools\x.exe");
        assert_eq!(lookup("script.py", &[r"C:\tools\script.py"]).unwrap().0, r"c:\tools\script.py");
        assert_eq!(lookup("missing", &[]), None);
        assert_eq!(lookup("", &[r"C:\tools\.exe"]), None);
    }

    #[test]
    fn program_lookup_skips_the_current_directory() {
        assert_eq!(lookup("cmd", &[r"C:\ws\cmd.exe", r"C:\Windows\System32\cmd.exe"]).unwrap().0, r"c:\windows\system32\cmd.exe");
        assert_eq!(lookup("tool", &[r"C:\ws\tool.exe"]), None);
    }

    #[test]
    fn program_paths_are_not_searched() {
        assert_eq!(lookup(r".\tool", &[r"C:\ws\.\tool.exe"]).unwrap().0, r"c:\ws\.\tool.exe");
        assert_eq!(lookup(r"sub/run.bat", &[r"C:\ws\sub/run.bat"]), Some((r"c:\ws\sub/run.bat".into(), ProgramKind::Batch)));
        assert_eq!(lookup(r"D:\bin\x", &[r"D:\bin\x.exe"]).unwrap().0, r"d:\bin\x.exe");
        assert_eq!(lookup(r"\\server\share\x.exe", &[r"\\server\share\x.exe"]).unwrap().0, r"\\server\share\x.exe");
        // A path is never looked up on PATH, even where a file of that name exists there.
        assert_eq!(lookup(r".\x", &[r"C:\tools\x.exe"]), None);
    }
}
