//! The messages between palisade and `palisade windows-runner`, as pure values with their
//! byte encoding, tested on every platform.
//!
//! In a confined run, palisade starts the runner as the sandbox account with
//! `CreateProcessWithLogonW`, which passes no handles but the three standard ones and no data
//! but a command line of at most 1024 characters and the environment. So the runner's stdin
//! is a pipe from palisade, which writes one [`RunnerRequest`] there and closes it. The request
//! carries the command, its working directory and environment, and the token to derive. It
//! also carries the values of two handles palisade has duplicated into the runner: the
//! command's stdin, and the write end of a status pipe. The runner writes [`RunnerStatus`]
//! messages to the status pipe, so that its own failures stay apart from the command's output.
//! Its exit code is the command's.
//!
//! Only palisade holds the write end of the request pipe, and the runner trusts what it reads
//! there no more than palisade's own command line.

use crate::plan::{Integrity, TokenPlan};

/// Marks the start of a request, so that a runner started by hand fails with a clear error.
const MAGIC: &[u8; 16] = b"palisade-runner\0";
/// The layout version; palisade and its runner are one binary, so they always agree.
const VERSION: u32 = 1;
/// The largest request accepted. Windows limits a command line and an environment block to
/// 32,767 characters each, so real requests are far smaller.
pub const MAX_REQUEST_BYTES: usize = 1 << 20;

/// The reason a message could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HandoffError {
    #[error("the request does not start with palisade's marker; windows-runner is started by palisade run only")]
    NotARequest,
    #[error("the request has layout version {0}, this runner reads version {VERSION}")]
    Version(u32),
    #[error("the message ends early, at byte {0}")]
    Truncated(usize),
    #[error("the message has {0} bytes left over after its end")]
    TrailingBytes(usize),
    #[error("the message is larger than {MAX_REQUEST_BYTES} bytes")]
    TooLarge,
    #[error("a text field is not UTF-8")]
    NotUtf8,
    #[error("unknown integrity level {0}")]
    UnknownIntegrity(u8),
    #[error("unknown status message tag {0}")]
    UnknownStatus(u8),
}

/// The token the runner derives, as data. [`TokenPlan`] contains `'static` strings because plans
/// are built from constants; [`TokenSpec::to_plan`] makes it again in the runner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenSpec {
    pub integrity: Integrity,
    pub deny_only: Vec<String>,
    pub keep_privilege: String,
}

impl TokenSpec {
    pub fn from_plan(plan: &TokenPlan) -> TokenSpec {
        TokenSpec {
            integrity: plan.integrity,
            deny_only: plan.deny_only.iter().map(|sid| (*sid).to_owned()).collect(),
            keep_privilege: plan.keep_privilege.to_owned(),
        }
    }

    /// Makes the [`TokenPlan`] again. Its strings are leaked, which is fine in the runner: it
    /// makes one plan and exits when the command does.
    pub fn to_plan(&self) -> TokenPlan {
        let deny_only: Vec<&'static str> = self.deny_only.iter().map(|sid| &*Box::leak(sid.clone().into_boxed_str())).collect();
        TokenPlan {
            integrity: self.integrity,
            deny_only: Box::leak(deny_only.into_boxed_slice()),
            keep_privilege: Box::leak(self.keep_privilege.clone().into_boxed_str()),
        }
    }
}

/// The request palisade sends the runner: the command to start, and how. Wide strings are
/// UTF-16 code units.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunnerRequest {
    /// The value, in the runner, of the handle the command gets as stdin.
    pub stdin_handle: u64,
    /// The value, in the runner, of the write end of the status pipe.
    pub status_handle: u64,
    pub token: TokenSpec,
    pub cwd: Vec<u16>,
    /// The command and its arguments, the program name first, as the user gave them.
    pub argv: Vec<Vec<u16>>,
    /// The command's environment block, as [`crate::environment::Environment::to_block`]
    /// writes it.
    pub environment_block: Vec<u16>,
}

/// A message the runner sends on the status pipe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunnerStatus {
    /// The command was started with the sandbox token.
    Started { pid: u32 },
    /// The command could not be started: `status` is 126 or 127.
    ExecFailed { status: u8, reason: String },
    /// The runner failed before it could start the command; nothing ran.
    Failed { reason: String },
}

const TAG_STARTED: u8 = 1;
const TAG_EXEC_FAILED: u8 = 2;
const TAG_FAILED: u8 = 3;

impl RunnerRequest {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Writer::default();
        out.bytes.extend_from_slice(MAGIC);
        out.u32(VERSION);
        out.u64(self.stdin_handle);
        out.u64(self.status_handle);
        out.u8(match self.token.integrity {
            Integrity::Low => 0,
        });
        out.u32(self.token.deny_only.len() as u32);
        for sid in &self.token.deny_only {
            out.text(sid);
        }
        out.text(&self.token.keep_privilege);
        out.wide(&self.cwd);
        out.u32(self.argv.len() as u32);
        for arg in &self.argv {
            out.wide(arg);
        }
        out.wide(&self.environment_block);
        out.bytes
    }

    pub fn decode(bytes: &[u8]) -> Result<RunnerRequest, HandoffError> {
        if bytes.len() > MAX_REQUEST_BYTES {
            return Err(HandoffError::TooLarge);
        }
        if bytes.len() < MAGIC.len() || &bytes[..MAGIC.len()] != MAGIC {
            return Err(HandoffError::NotARequest);
        }
        let mut input = Reader { bytes, position: MAGIC.len() };
        let version = input.u32()?;
        if version != VERSION {
            return Err(HandoffError::Version(version));
        }

        let stdin_handle = input.u64()?;
        let status_handle = input.u64()?;

        let integrity = match input.u8()? {
            0 => Integrity::Low,
            other => return Err(HandoffError::UnknownIntegrity(other)),
        };
        let count = input.u32()?;
        let deny_only = (0..count).map(|_| input.text()).collect::<Result<_, _>>()?;
        let keep_privilege = input.text()?;

        let cwd = input.wide()?;
        let argc = input.u32()?;
        let argv = (0..argc).map(|_| input.wide()).collect::<Result<_, _>>()?;
        let environment_block = input.wide()?;
        input.finish()?;
        Ok(RunnerRequest {
            stdin_handle,
            status_handle,
            token: TokenSpec { integrity, deny_only, keep_privilege },
            cwd,
            argv,
            environment_block,
        })
    }
}

impl RunnerStatus {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Writer::default();
        match self {
            RunnerStatus::Started { pid } => {
                out.u8(TAG_STARTED);
                out.u32(*pid);
            }
            RunnerStatus::ExecFailed { status, reason } => {
                out.u8(TAG_EXEC_FAILED);
                out.u8(*status);
                out.text(reason);
            }
            RunnerStatus::Failed { reason } => {
                out.u8(TAG_FAILED);
                out.text(reason);
            }
        }
        out.bytes
    }

    /// Reads every message of a status stream, in order.
    pub fn decode_all(bytes: &[u8]) -> Result<Vec<RunnerStatus>, HandoffError> {
        if bytes.len() > MAX_REQUEST_BYTES {
            return Err(HandoffError::TooLarge);
        }
        let mut input = Reader { bytes, position: 0 };
        let mut messages = Vec::new();
        while input.position < bytes.len() {
            let message = match input.u8()? {
                TAG_STARTED => RunnerStatus::Started { pid: input.u32()? },
                TAG_EXEC_FAILED => RunnerStatus::ExecFailed { status: input.u8()?, reason: input.text()? },
                TAG_FAILED => RunnerStatus::Failed { reason: input.text()? },
                other => return Err(HandoffError::UnknownStatus(other)),
            };
            messages.push(message);
        }
        Ok(messages)
    }
}

#[derive(Default)]
struct Writer {
    bytes: Vec<u8>,
}

impl Writer {
    fn u8(&mut self, value: u8) {
        self.bytes.push(value);
    }

    fn u32(&mut self, value: u32) {
        self.bytes.extend_from_slice(&value.to_le_bytes());
    }

    fn u64(&mut self, value: u64) {
        self.bytes.extend_from_slice(&value.to_le_bytes());
    }

    fn text(&mut self, text: &str) {
        self.u32(text.len() as u32);
        self.bytes.extend_from_slice(text.as_bytes());
    }

    fn wide(&mut self, units: &[u16]) {
        self.u32(units.len() as u32);
        for unit in units {
            self.bytes.extend_from_slice(&unit.to_le_bytes());
        }
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    position: usize,
}

impl Reader<'_> {
    fn take(&mut self, count: usize) -> Result<&[u8], HandoffError> {
        let end = self.position.checked_add(count).filter(|&end| end <= self.bytes.len()).ok_or(HandoffError::Truncated(self.position))?;
        let taken = &self.bytes[self.position..end];
        self.position = end;
        Ok(taken)
    }

    fn u8(&mut self) -> Result<u8, HandoffError> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32, HandoffError> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }

    fn u64(&mut self) -> Result<u64, HandoffError> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }

    fn text(&mut self) -> Result<String, HandoffError> {
        let length = self.u32()? as usize;
        String::from_utf8(self.take(length)?.to_vec()).map_err(|_| HandoffError::NotUtf8)
    }

    fn wide(&mut self) -> Result<Vec<u16>, HandoffError> {
        let length = self.u32()? as usize;
        let bytes = self.take(length.checked_mul(2).ok_or(HandoffError::Truncated(self.position))?)?;
        Ok(bytes.chunks_exact(2).map(|pair| u16::from_le_bytes([pair[0], pair[1]])).collect())
    }

    fn finish(&self) -> Result<(), HandoffError> {
        match self.bytes.len() - self.position {
            0 => Ok(()),
            left => Err(HandoffError::TrailingBytes(left)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> RunnerRequest {
        RunnerRequest {
            stdin_handle: 0x1a4,
            status_handle: u64::MAX - 1,
            token: TokenSpec { integrity: Integrity::Low, deny_only: vec!["S-1-5-32-544".into(), "S-1-5-32-547".into()], keep_privilege: "SeChangeNotifyPrivilege".into() },
            cwd: r"C:\ws".encode_utf16().collect(),
            argv: vec!["cmd".encode_utf16().collect(), vec![], vec![0xD800, 0x20]],
            environment_block: "A=1\0B=2\0\0".encode_utf16().collect(),
        }
    }

    #[test]
    fn request_round_trips() {
        let request = request();
        assert_eq!(RunnerRequest::decode(&request.encode()).unwrap(), request);
    }

    #[test]
    fn token_spec_round_trips_through_a_plan() {
        let spec = request().token;
        assert_eq!(TokenSpec::from_plan(&spec.to_plan()), spec);
    }

    #[test]
    fn damaged_requests_are_rejected() {
        let bytes = request().encode();
        assert_eq!(RunnerRequest::decode(b"hello"), Err(HandoffError::NotARequest));
        for cut in [MAGIC.len() + 2, bytes.len() / 2, bytes.len() - 1] {
            assert!(matches!(RunnerRequest::decode(&bytes[..cut]), Err(HandoffError::Truncated(_))), "cut at {cut}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(RunnerRequest::decode(&longer), Err(HandoffError::TrailingBytes(1)));
        let mut other_version = bytes.clone();
        other_version[MAGIC.len()] = 9;
        assert_eq!(RunnerRequest::decode(&other_version), Err(HandoffError::Version(9)));
        // A length field claiming more than is left fails without allocating it.
        let mut huge = bytes[..MAGIC.len() + 4 + 16 + 1].to_vec();
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(RunnerRequest::decode(&huge), Err(HandoffError::Truncated(_))));
    }

    #[test]
    fn status_messages_round_trip_in_order() {
        let messages = vec![
            RunnerStatus::Started { pid: 4242 },
            RunnerStatus::ExecFailed { status: 127, reason: "nope: not found".into() },
            RunnerStatus::Failed { reason: "CreateRestrictedToken failed".into() },
        ];
        let bytes: Vec<u8> = messages.iter().flat_map(RunnerStatus::encode).collect();
        assert_eq!(RunnerStatus::decode_all(&bytes).unwrap(), messages);
        assert_eq!(RunnerStatus::decode_all(&[]).unwrap(), vec![]);
        assert_eq!(RunnerStatus::decode_all(&[9]), Err(HandoffError::UnknownStatus(9)));
        assert!(matches!(RunnerStatus::decode_all(&bytes[..bytes.len() - 1]), Err(HandoffError::Truncated(_))));
    }
}
