//! The environment block a Windows process is created with, as a pure value.
//!
//! `CreateProcess` takes the whole environment as one block of `NAME=VALUE` strings, each
//! ended by a NUL, with one more NUL at the end. Names compare without regard to case, and the
//! documentation of `CreateProcess` requires the strings to be sorted by name in that order.
//! Strings are UTF-16 code units, as Windows stores them.

/// The reason a variable cannot be put in an environment block.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EnvironmentError {
    #[error("an environment variable has an empty name")]
    EmptyName,
    #[error("the environment variable name {0:?} contains '=' or NUL, which Windows does not allow")]
    BadName(String),
    #[error("the value of the environment variable {0} contains NUL, which Windows does not allow")]
    BadValue(String),
}

/// The variables of a command, names unique without regard to case.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Environment {
    vars: Vec<(Vec<u16>, Vec<u16>)>,
}

impl Environment {
    /// Collects `vars`; a later variable replaces an earlier one whose name differs only in
    /// case, as `SetEnvironmentVariable` would.
    pub fn new<N: AsRef<[u16]>, V: AsRef<[u16]>>(vars: impl IntoIterator<Item = (N, V)>) -> Result<Environment, EnvironmentError> {
        let mut environment = Environment::default();
        for (name, value) in vars {
            environment.set(name.as_ref(), value.as_ref())?;
        }
        Ok(environment)
    }

    /// Sets `name` to `value`, replacing a variable whose name differs only in case.
    ///
    /// A name may start with `=`: Windows keeps the current directory of each drive in such
    /// variables (`=C:`). It may not contain `=` anywhere else.
    pub fn set(&mut self, name: &[u16], value: &[u16]) -> Result<(), EnvironmentError> {
        if name.is_empty() {
            return Err(EnvironmentError::EmptyName);
        }
        if name[1..].contains(&(b'=' as u16)) || name.contains(&0) {
            return Err(EnvironmentError::BadName(String::from_utf16_lossy(name)));
        }
        if value.contains(&0) {
            return Err(EnvironmentError::BadValue(String::from_utf16_lossy(name)));
        }
        self.vars.retain(|(existing, _)| !names_equal(existing, name));
        self.vars.push((name.to_vec(), value.to_vec()));
        Ok(())
    }

    /// Returns the value of `name`, compared without regard to case.
    pub fn get(&self, name: &str) -> Option<&[u16]> {
        let name: Vec<u16> = name.encode_utf16().collect();
        self.vars.iter().find(|(existing, _)| names_equal(existing, &name)).map(|(_, value)| value.as_slice())
    }

    /// Writes the block `CreateProcess` takes with `CREATE_UNICODE_ENVIRONMENT`.
    pub fn to_block(&self) -> Vec<u16> {
        let mut sorted: Vec<&(Vec<u16>, Vec<u16>)> = self.vars.iter().collect();
        sorted.sort_by_key(|(name, _)| upper(name));
        let mut block = Vec::new();
        for (name, value) in sorted {
            block.extend_from_slice(name);
            block.push(b'=' as u16);
            block.extend_from_slice(value);
            block.push(0);
        }
        // An empty block still needs its terminator, which is then two NULs.
        if block.is_empty() {
            block.push(0);
        }
        block.push(0);
        block
    }

    /// Reads a block written by [`Environment::to_block`] or returned by
    /// `GetEnvironmentStringsW`.
    pub fn from_block(block: &[u16]) -> Result<Environment, EnvironmentError> {
        let mut environment = Environment::default();
        for entry in block.split(|&unit| unit == 0).take_while(|entry| !entry.is_empty()) {
            // Skip the first unit when looking for '=', so that "=C:=C:\dir" splits after "=C:".
            let Some(equals) = entry.iter().skip(1).position(|&unit| unit == b'=' as u16) else {
                return Err(EnvironmentError::BadName(String::from_utf16_lossy(entry)));
            };
            let (name, value) = entry.split_at(equals + 1);
            environment.set(name, &value[1..])?;
        }
        Ok(environment)
    }
}

/// Windows compares variable names in upper case, for every script, not by locale; this
/// approximation folds with Unicode's simple upper-case mapping.
fn upper(name: &[u16]) -> Vec<u16> {
    char::decode_utf16(name.iter().copied())
        .flat_map(|unit| match unit {
            Ok(character) => {
                let mut upper = character.to_uppercase();
                match (upper.next(), upper.next()) {
                    // A character that upper-cases to several (ß to SS) stays as it is.
                    (Some(single), None) => single.encode_utf16(&mut [0; 2]).to_vec(),
                    _ => character.encode_utf16(&mut [0; 2]).to_vec(),
                }
            }
            Err(unpaired) => vec![unpaired.unpaired_surrogate()],
        })
        .collect()
}

fn names_equal(a: &[u16], b: &[u16]) -> bool {
    a.len() == b.len() && upper(a) == upper(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wide(text: &str) -> Vec<u16> {
        text.encode_utf16().collect()
    }

    fn entries(block: &[u16]) -> Vec<String> {
        block.split(|&unit| unit == 0).take_while(|entry| !entry.is_empty()).map(|entry| String::from_utf16(entry).unwrap()).collect()
    }

    #[test]
    fn block_is_sorted_without_regard_to_case() {
        let environment = Environment::new([("path", "C:\\x"), ("Temp", "C:\\t"), ("ALLUSERSPROFILE", "C:\\p"), ("=C:", "C:\\ws")].map(|(n, v)| (wide(n), wide(v)))).unwrap();
        let block = environment.to_block();
        assert_eq!(entries(&block), ["=C:=C:\\ws", "ALLUSERSPROFILE=C:\\p", "path=C:\\x", "Temp=C:\\t"]);
        assert_eq!(&block[block.len() - 2..], &[0, 0], "the block ends with an empty string");
    }

    #[test]
    fn names_differing_in_case_are_one_variable() {
        let mut environment = Environment::new([(wide("Path"), wide("a"))]).unwrap();
        environment.set(&wide("PATH"), &wide("b")).unwrap();
        assert_eq!(entries(&environment.to_block()), ["PATH=b"]);
        assert_eq!(environment.get("path"), Some(wide("b").as_slice()));
        assert_eq!(environment.get("PathExt"), None);
    }

    #[test]
    fn empty_block_has_two_terminators() {
        assert_eq!(Environment::default().to_block(), [0, 0]);
        assert_eq!(Environment::from_block(&[0, 0]).unwrap(), Environment::default());
    }

    #[test]
    fn block_round_trips() {
        let environment = Environment::new([("=C:", "C:\\ws"), ("A", ""), ("B", "x=y"), ("Ü", "ü")].map(|(n, v)| (wide(n), wide(v)))).unwrap();
        assert_eq!(Environment::from_block(&environment.to_block()).unwrap().to_block(), environment.to_block());
    }

    #[test]
    fn invalid_variables_are_rejected() {
        let mut environment = Environment::default();
        assert_eq!(environment.set(&[], &wide("x")), Err(EnvironmentError::EmptyName));
        assert_eq!(environment.set(&wide("A=B"), &wide("x")), Err(EnvironmentError::BadName("A=B".into())));
        assert_eq!(environment.set(&[0x41, 0], &wide("x")), Err(EnvironmentError::BadName("A\0".into())));
        assert_eq!(environment.set(&wide("A"), &[0x78, 0]), Err(EnvironmentError::BadValue("A".into())));
    }
}
