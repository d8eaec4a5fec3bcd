//! The per-run credential of a proxy that listens where other local processes can reach it.
//!
//! On Linux the proxy listens inside the sandbox's network namespace, where only the command
//! can connect. A backend whose proxy listens on the host's loopback instead sets a
//! [`Credential`], so that a process that did not get the run's proxy URL cannot use the
//! proxy to reach the allowlist. HTTP clients send it as `Proxy-Authorization: Basic`
//! (RFC 7617) and SOCKS5 clients with the username/password method (RFC 1929).

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use hyper::header::{HeaderMap, PROXY_AUTHORIZATION};
use subtle::ConstantTimeEq;
use tracing::debug;

use crate::dial::Protocol;
use crate::proxy::Shared;

/// Number of random bytes in a token: 256 bits, written as 64 hexadecimal digits.
const TOKEN_BYTES: usize = 32;

/// Placeholder for the token in the `Debug` output of a credential or a proxy URL.
const REDACTED: &str = "<redacted>";

/// A user name and a secret token that a client must present to use the proxy.
///
/// The `Debug` output shows the user name only. There is no `Display`, and the token leaves the
/// value only through [`Credential::token`] and [`Credential::proxy_urls`].
#[derive(Clone)]
pub struct Credential {
    /// Lowercase hexadecimal digits, so the token goes into a URL's user info unescaped.
    token: String,
}

impl Credential {
    /// The user name of every credential. It is fixed because only the token needs to be secret.
    pub const USER: &'static str = "palisade";

    /// Creates a credential with a fresh random token of 256 bits from the operating system's
    /// random source, through the `getrandom` crate (the `getrandom` system call on Linux).
    ///
    /// Fails only when the operating system cannot supply random bytes.
    pub fn generate() -> io::Result<Credential> {
        let mut bytes = [0u8; TOKEN_BYTES];
        getrandom::fill(&mut bytes).map_err(|error| {
            let error = io::Error::from(error);
            io::Error::new(error.kind(), format!("failed to read random bytes for the proxy credential: {error}"))
        })?;
        let token = bytes.iter().fold(String::with_capacity(2 * TOKEN_BYTES), |mut token, byte| {
            let _ = fmt::Write::write_fmt(&mut token, format_args!("{byte:02x}"));
            token
        });
        Ok(Credential { token })
    }

    /// Returns the secret token. Put it only where the command reads it, never in a log.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// Builds the proxy URLs for a proxy listening on `proxy`, with this credential as their
    /// user info.
    pub fn proxy_urls(&self, proxy: SocketAddr) -> ProxyUrls {
        let user_info = format!("{}:{}", Credential::USER, self.token);
        ProxyUrls { http: format!("http://{user_info}@{proxy}"), socks5: format!("socks5h://{user_info}@{proxy}") }
    }

    /// Checks the `Proxy-Authorization` header of an HTTP request against this credential.
    pub(crate) fn check_proxy_authorization(&self, headers: &HeaderMap) -> Result<(), AuthFailure> {
        let mut values = headers.get_all(PROXY_AUTHORIZATION).iter();
        let value = values.next().ok_or(AuthFailure::MissingHeader)?;
        if values.next().is_some() {
            return Err(AuthFailure::RepeatedHeader);
        }

        // RFC 9110 section 11: the scheme is case-insensitive, and spaces separate it from the credentials.
        let value = value.as_bytes();
        let split = value.iter().position(|&byte| byte == b' ').unwrap_or(value.len());
        let (scheme, encoded) = value.split_at(split);
        if !scheme.eq_ignore_ascii_case(b"basic") {
            return Err(AuthFailure::NotBasic);
        }
        let decoded = BASE64.decode(encoded.trim_ascii()).map_err(|_| AuthFailure::MalformedBasic)?;
        let Some(colon) = decoded.iter().position(|&byte| byte == b':') else {
            return Err(AuthFailure::MalformedBasic);
        };

        // RFC 7617: the user name ends at the first colon, and the password may contain colons.
        if self.matches(&decoded[..colon], &decoded[colon + 1..]) { Ok(()) } else { Err(AuthFailure::Mismatch) }
    }

    /// Compares a user name and password with this credential in constant time.
    ///
    /// The time taken depends on the lengths and on the client's bytes, but not on how many
    /// leading bytes of the token the client guessed right, so timing the replies does not
    /// reveal the token byte by byte. Both parts are always compared.
    pub(crate) fn matches(&self, user: &[u8], password: &[u8]) -> bool {
        let user_matches = user.ct_eq(Credential::USER.as_bytes());
        let password_matches = password.ct_eq(self.token.as_bytes());
        (user_matches & password_matches).into()
    }
}

impl fmt::Debug for Credential {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.debug_struct("Credential").field("user", &Credential::USER).field("token", &REDACTED).finish()
    }
}

/// The proxy URLs for a command's environment, with the credential as their user info.
///
/// The `Debug` output shows the URLs with the token replaced by `<redacted>`.
#[derive(Clone)]
pub struct ProxyUrls {
    /// `http://palisade:TOKEN@ADDRESS`, for `HTTP_PROXY` and `HTTPS_PROXY`.
    pub http: String,
    /// `socks5h://palisade:TOKEN@ADDRESS`, for `ALL_PROXY`. The `h` makes clients send names
    /// to the proxy instead of resolving them.
    pub socks5: String,
}

impl fmt::Debug for ProxyUrls {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("ProxyUrls")
            .field("http", &redact_user_info(&self.http))
            .field("socks5", &redact_user_info(&self.socks5))
            .finish()
    }
}

/// Replaces the password of a URL's user info (`scheme://user:PASSWORD@host`) with `<redacted>`.
fn redact_user_info(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return REDACTED.to_owned() };
    let Some((user_info, host)) = rest.rsplit_once('@') else { return url.to_owned() };
    let user = user_info.split_once(':').map_or(user_info, |(user, _)| user);
    format!("{scheme}://{user}:{REDACTED}@{host}")
}

/// The reason a client did not authenticate, for the debug log. None of them contains what the
/// client sent as a password.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum AuthFailure {
    #[error("the request has no Proxy-Authorization header")]
    MissingHeader,
    #[error("the request has more than one Proxy-Authorization header")]
    RepeatedHeader,
    #[error("the Proxy-Authorization header uses a scheme other than Basic")]
    NotBasic,
    #[error("the Proxy-Authorization header is not 'Basic' followed by base64 of 'user:password'")]
    MalformedBasic,
    /// An HTTP request so malformed that hyper rejected it before its headers could be read, on
    /// a connection that has not yet sent a request with the credential.
    #[error("the client sent a malformed request before authenticating: {0}")]
    MalformedRequest(String),
    #[error("the SOCKS5 client offered the authentication methods {0:02x?}, but not username/password (0x02)")]
    NoPasswordMethod(Vec<u8>),
    #[error("the SOCKS5 username/password request has version {0}, not 1")]
    PasswordVersion(u8),
    #[error("the user name or token does not match the run's credential")]
    Mismatch,
}

impl Shared {
    /// Counts a client that failed to authenticate and logs why at debug level.
    ///
    /// A failed authentication is not recorded as a [`crate::Denial`]. Denials are the
    /// command's requests that the rules refused, which the run report lists with what to
    /// allow. A client without the credential may be any local process, so its attempts are
    /// not the command's requests, and recording them would let other processes write into the
    /// report. The count is in [`crate::Proxy::auth_failures`].
    pub(crate) fn reject_unauthenticated(&self, protocol: Protocol, failure: &AuthFailure) {
        let count = self.auth_failures.fetch_add(1, Ordering::Relaxed) + 1;
        debug!(protocol = protocol.as_str(), count, "proxy rejected a client without the run's credential: {failure}");
    }
}

#[cfg(test)]
mod tests {
    use hyper::header::HeaderValue;

    use super::*;

    fn headers(values: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append(PROXY_AUTHORIZATION, HeaderValue::from_str(value).unwrap());
        }
        headers
    }

    fn basic(user_and_password: &str) -> String {
        format!("Basic {}", BASE64.encode(user_and_password))
    }

    #[test]
    fn generate_makes_distinct_hex_tokens() {
        let first = Credential::generate().unwrap();
        let second = Credential::generate().unwrap();
        assert_eq!(first.token().len(), 2 * TOKEN_BYTES);
        assert!(first.token().bytes().all(|byte| matches!(byte, b'0'..=b'9' | b'a'..=b'f')), "{}", first.token());
        assert_ne!(first.token(), second.token());
    }

    #[test]
    fn proxy_urls_carry_the_credential() {
        let credential = Credential::generate().unwrap();
        let token = credential.token();

        let urls = credential.proxy_urls("127.0.0.1:3128".parse().unwrap());
        assert_eq!(urls.http, format!("http://palisade:{token}@127.0.0.1:3128"));
        assert_eq!(urls.socks5, format!("socks5h://palisade:{token}@127.0.0.1:3128"));

        let urls = credential.proxy_urls("[::1]:3128".parse().unwrap());
        assert_eq!(urls.http, format!("http://palisade:{token}@[::1]:3128"));
    }

    #[test]
    fn debug_output_hides_the_token() {
        let credential = Credential::generate().unwrap();
        let token = credential.token().to_owned();
        let urls = credential.proxy_urls("127.0.0.1:3128".parse().unwrap());

        let shown = [format!("{credential:?}"), format!("{credential:#?}"), format!("{urls:?}"), format!("{urls:#?}")];
        for text in &shown {
            assert!(!text.contains(&token), "the token appears in {text}");
            assert!(text.contains("palisade"), "the user name is missing from {text}");
            assert!(text.contains(REDACTED), "{text}");
        }
        assert!(shown[2].contains("http://palisade:<redacted>@127.0.0.1:3128"), "{}", shown[2]);
        assert!(shown[2].contains("socks5h://palisade:<redacted>@127.0.0.1:3128"), "{}", shown[2]);
    }

    #[test]
    fn proxy_authorization_accepts_the_credential() {
        let credential = Credential::generate().unwrap();
        let user_and_password = format!("palisade:{}", credential.token());
        let encoded = BASE64.encode(&user_and_password);
        for value in [format!("Basic {encoded}"), format!("basic {encoded}"), format!("BASIC   {encoded}  ")] {
            assert_eq!(credential.check_proxy_authorization(&headers(&[&value])), Ok(()), "{value}");
        }
    }

    #[test]
    fn proxy_authorization_rejects_other_values() {
        let credential = Credential::generate().unwrap();
        let token = credential.token();
        let right = basic(&format!("palisade:{token}"));
        let cases = [
            (vec![], AuthFailure::MissingHeader),
            (vec![right.clone(), right.clone()], AuthFailure::RepeatedHeader),
            (vec![format!("Bearer {token}")], AuthFailure::NotBasic),
            (vec![format!("Digest username=\"palisade\", response=\"{token}\"")], AuthFailure::NotBasic),
            (vec![format!("Basic{}", &right["Basic ".len()..])], AuthFailure::NotBasic),
            (vec!["Basic".to_owned()], AuthFailure::MalformedBasic),
            (vec!["Basic not*base64".to_owned()], AuthFailure::MalformedBasic),
            (vec![format!("Basic {}", BASE64.encode(token))], AuthFailure::MalformedBasic),
            (vec![basic(&format!("other:{token}"))], AuthFailure::Mismatch),
            (vec![basic("palisade:wrong")], AuthFailure::Mismatch),
            (vec![basic(&format!("palisade:{token}x"))], AuthFailure::Mismatch),
            (vec![basic(&format!("palisade:{}", &token[1..]))], AuthFailure::Mismatch),
            (vec![basic(&format!("palisade:{}", token.to_uppercase()))], AuthFailure::Mismatch),
            (vec![basic("palisade:")], AuthFailure::Mismatch),
        ];
        for (values, expected) in cases {
            let values: Vec<&str> = values.iter().map(String::as_str).collect();
            assert_eq!(credential.check_proxy_authorization(&headers(&values)), Err(expected), "{values:?}");
        }
    }

    #[test]
    fn matches_needs_user_and_token() {
        let credential = Credential::generate().unwrap();
        let token = credential.token().as_bytes();
        assert!(credential.matches(b"palisade", token));
        assert!(!credential.matches(b"Palisade", token));
        assert!(!credential.matches(b"", token));
        assert!(!credential.matches(b"palisade", b""));
        assert!(!credential.matches(b"palisade", &token[..token.len() - 1]));
    }
}
