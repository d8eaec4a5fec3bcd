//! A reader for SBPL text, the Scheme syntax of Seatbelt profiles: lists, symbols, numbers,
//! strings with `\\`, `\"`, `\n`, `\t` and `\r` escapes, raw strings (`#"..."`), and `;` and
//! `#| |#` comments.
//!
//! Tests read every generated profile back with it. A profile that Seatbelt's reader would
//! reject for its syntax then fails on Linux, long before anyone applies it on a Mac: an
//! unbalanced parenthesis, a string that ends early, a string longer than
//! [`MAX_LITERAL_BYTES`].
//! It checks syntax only; [`crate::model`] checks the vocabulary.

use std::fmt;

use crate::escape::MAX_LITERAL_BYTES;

/// One datum of the text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expr {
    List(Vec<Expr>),
    Symbol(String),
    Str(String),
    Number(i64),
}

impl Expr {
    pub fn as_symbol(&self) -> Option<&str> {
        match self {
            Expr::Symbol(symbol) => Some(symbol),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Expr::Str(text) => Some(text),
            _ => None,
        }
    }

    pub fn as_list(&self) -> Option<&[Expr]> {
        match self {
            Expr::List(items) => Some(items),
            _ => None,
        }
    }
}

impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Expr::List(items) => {
                f.write_str("(")?;
                for (index, item) in items.iter().enumerate() {
                    if index > 0 {
                        f.write_str(" ")?;
                    }
                    write!(f, "{item}")?;
                }
                f.write_str(")")
            }
            Expr::Symbol(symbol) => f.write_str(symbol),
            Expr::Str(text) => write!(f, "{text:?}"),
            Expr::Number(number) => write!(f, "{number}"),
        }
    }
}

/// A syntax error in SBPL text, with its position.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}, column {column}: {kind}")]
pub struct ReadError {
    pub line: usize,
    pub column: usize,
    pub kind: ReadErrorKind,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReadErrorKind {
    #[error("')' without a matching '('")]
    UnmatchedClose,
    #[error("'(' is never closed")]
    Unclosed,
    #[error("the string is never closed")]
    UnterminatedString,
    #[error("the comment is never closed")]
    UnterminatedComment,
    #[error("the string holds {0} bytes, more than {MAX_LITERAL_BYTES}")]
    StringTooLong(usize),
    #[error("unknown escape '\\{0}' in a string")]
    UnknownEscape(char),
}

/// Reads every datum of `text`.
pub fn read(text: &str) -> Result<Vec<Expr>, ReadError> {
    let mut reader = Reader { chars: text.chars().collect(), position: 0, line: 1, column: 1 };
    let mut stack: Vec<(Vec<Expr>, usize, usize)> = Vec::new();
    let mut top = Vec::new();
    while let Some(c) = reader.peek() {
        let (line, column) = (reader.line, reader.column);
        let datum = match c {
            c if c.is_whitespace() => {
                reader.next();
                continue;
            }
            ';' => {
                while reader.next().is_some_and(|c| c != '\n') {}
                continue;
            }
            '#' if reader.peek_at(1) == Some('|') => {
                reader.block_comment()?;
                continue;
            }
            '(' => {
                reader.next();
                stack.push((std::mem::take(&mut top), line, column));
                continue;
            }
            ')' => {
                reader.next();
                let Some((outer, _, _)) = stack.pop() else {
                    return Err(ReadError { line, column, kind: ReadErrorKind::UnmatchedClose });
                };
                let list = std::mem::replace(&mut top, outer);
                Expr::List(list)
            }
            '"' => Expr::Str(reader.string(false)?),
            '#' if reader.peek_at(1) == Some('"') => {
                reader.next();
                Expr::Str(reader.string(true)?)
            }
            _ => reader.atom(),
        };
        top.push(datum);
    }
    if let Some((_, line, column)) = stack.pop() {
        return Err(ReadError { line, column, kind: ReadErrorKind::Unclosed });
    }
    Ok(top)
}

struct Reader {
    chars: Vec<char>,
    position: usize,
    line: usize,
    column: usize,
}

impl Reader {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.position).copied()
    }

    fn peek_at(&self, offset: usize) -> Option<char> {
        self.chars.get(self.position + offset).copied()
    }

    fn next(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.position += 1;
        if c == '\n' {
            self.line += 1;
            self.column = 1;
        } else {
            self.column += 1;
        }
        Some(c)
    }

    fn error(&self, kind: ReadErrorKind) -> ReadError {
        ReadError { line: self.line, column: self.column, kind }
    }

    fn block_comment(&mut self) -> Result<(), ReadError> {
        let start = self.error(ReadErrorKind::UnterminatedComment);
        self.next();
        self.next();
        loop {
            match self.next() {
                Some('|') if self.peek() == Some('#') => {
                    self.next();
                    return Ok(());
                }
                Some(_) => {}
                None => return Err(start),
            }
        }
    }

    /// Reads a string from its opening quote. A raw string takes every character up to the
    /// next quote as it is.
    fn string(&mut self, raw: bool) -> Result<String, ReadError> {
        let start = self.error(ReadErrorKind::UnterminatedString);
        self.next();
        let mut value = String::new();
        loop {
            match self.next() {
                None => return Err(start),
                Some('"') => break,
                Some('\\') if !raw => {
                    let escaped = match self.next() {
                        None => return Err(start),
                        Some('\\') => '\\',
                        Some('"') => '"',
                        Some('n') => '\n',
                        Some('t') => '\t',
                        Some('r') => '\r',
                        Some(other) => return Err(self.error(ReadErrorKind::UnknownEscape(other))),
                    };
                    value.push(escaped);
                }
                Some(c) => value.push(c),
            }
        }
        if value.len() > MAX_LITERAL_BYTES {
            return Err(ReadError { kind: ReadErrorKind::StringTooLong(value.len()), ..start });
        }
        Ok(value)
    }

    fn atom(&mut self) -> Expr {
        let mut atom = String::new();
        while let Some(c) = self.peek() {
            if c.is_whitespace() || matches!(c, '(' | ')' | '"' | ';') {
                break;
            }
            atom.push(c);
            self.next();
        }
        match atom.parse::<i64>() {
            Ok(number) => Expr::Number(number),
            Err(_) => Expr::Symbol(atom),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn symbol(text: &str) -> Expr {
        Expr::Symbol(text.into())
    }

    #[test]
    fn reads_lists_symbols_numbers_and_strings() {
        let read = read("(version 1)\n; a comment\n(allow file-read* (subpath \"/a b\")) #| block\n|# (deny default)").unwrap();
        assert_eq!(read.len(), 3);
        assert_eq!(read[0], Expr::List(vec![symbol("version"), Expr::Number(1)]));
        assert_eq!(
            read[1],
            Expr::List(vec![symbol("allow"), symbol("file-read*"), Expr::List(vec![symbol("subpath"), Expr::Str("/a b".into())])])
        );
        assert_eq!(read[2].to_string(), "(deny default)");
    }

    #[test]
    fn strings_unescape() {
        let read = read(r#"("a\\\"b" #"raw\d+" "tab\t")"#).unwrap();
        let items = read[0].as_list().unwrap();
        assert_eq!(items[0].as_str(), Some(r#"a\"b"#));
        assert_eq!(items[1].as_str(), Some(r"raw\d+"));
        assert_eq!(items[2].as_str(), Some("tab\t"));
    }

    #[test]
    fn syntax_errors_are_located() {
        let error = |text: &str| read(text).unwrap_err();
        assert_eq!(error("(allow\n  x))").kind, ReadErrorKind::UnmatchedClose);
        assert_eq!((error("(allow\n  x))").line, error("(allow\n  x))").column), (2, 5));
        assert_eq!(error("(version 1)\n(allow (x)").kind, ReadErrorKind::Unclosed);
        assert_eq!(error("(x \"open)").kind, ReadErrorKind::UnterminatedString);
        assert_eq!(error(r#"(x "\q")"#).kind, ReadErrorKind::UnknownEscape('q'));
        assert_eq!(error("#| never").kind, ReadErrorKind::UnterminatedComment);
    }

    #[test]
    fn long_strings_are_rejected() {
        let fits = format!("(literal \"{}\")", "a".repeat(MAX_LITERAL_BYTES));
        assert!(read(&fits).is_ok());
        let too_long = format!("(literal \"{}\")", "é".repeat(MAX_LITERAL_BYTES / 2 + 1));
        assert!(matches!(read(&too_long).unwrap_err().kind, ReadErrorKind::StringTooLong(1002)));
    }

    // A quote escaped before its backslash ends the string early: the escaper must not do
    // that, and the reader must notice when something does.
    #[test]
    fn wrongly_ordered_escaping_is_detected() {
        let path = r#"/tmp/a\"b"#;
        let wrong = path.replace('"', "\\\"").replace('\\', "\\\\");
        let text = format!("(allow file-read* (literal \"{wrong}\"))");
        let read_back = read(&text).map(|exprs| exprs[0].as_list().unwrap()[2].as_list().unwrap()[1].clone());
        assert_ne!(read_back, Ok(Expr::Str(path.into())));
    }
}
