//! SOCKS5 (RFC 1928), CONNECT only. Without a credential the proxy takes the "no
//! authentication" method, and with one only username/password (RFC 1929).

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tracing::debug;

use crate::credential::{AuthFailure, Credential};
use crate::dial::{DialError, Protocol};
use crate::proxy::{SOCKS5_VERSION, Shared};
use crate::sni::relay_checked;

/// Authentication methods (RFC 1928 section 3).
const METHOD_NO_AUTHENTICATION: u8 = 0x00;
const METHOD_USERNAME_PASSWORD: u8 = 0x02;
const METHOD_NONE_ACCEPTABLE: u8 = 0xff;

/// The version of the username/password subnegotiation, and its status codes (RFC 1929). Any
/// status other than 0 is a failure.
const PASSWORD_VERSION: u8 = 0x01;
const PASSWORD_SUCCEEDED: u8 = 0x00;
const PASSWORD_FAILED: u8 = 0x01;

const COMMAND_CONNECT: u8 = 0x01;

/// Address types (RFC 1928 section 5).
const ADDRESS_IPV4: u8 = 0x01;
const ADDRESS_DOMAIN: u8 = 0x03;
const ADDRESS_IPV6: u8 = 0x04;

/// Reply codes (RFC 1928 section 6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Reply {
    Succeeded = 0x00,
    GeneralFailure = 0x01,
    NotAllowedByRuleset = 0x02,
    NetworkUnreachable = 0x03,
    HostUnreachable = 0x04,
    ConnectionRefused = 0x05,
    CommandNotSupported = 0x07,
    AddressTypeNotSupported = 0x08,
}

/// A CONNECT request read from the client.
struct ConnectRequest {
    /// The host as the client sent it: a domain name, or an address in text form.
    host: String,
    port: u16,
}

/// The reason the handshake ended without a request to dial.
enum HandshakeError {
    /// The client left or the socket failed, so no reply can be sent.
    Io(io::Error),
    /// The proxy refuses the request: `reply` goes to the client (unless it is `None`) and
    /// the rest is recorded as a denial.
    Refused { reply: Option<Reply>, host: String, port: u16, reason: String },
    /// The client did not present the proxy's credential. It has been sent its reply, and the
    /// connection is closed without recording a denial.
    Unauthenticated(AuthFailure),
}

impl From<io::Error> for HandshakeError {
    fn from(error: io::Error) -> HandshakeError {
        HandshakeError::Io(error)
    }
}

/// Serves one SOCKS5 client: reads its greeting and request, then dials and relays, or sends
/// the reply code for the refusal or failure.
pub(crate) async fn serve(shared: &Shared, mut stream: TcpStream) {
    let handshake = tokio::time::timeout(shared.limits.head_timeout, handshake(shared, &mut stream)).await;
    let request = match handshake {
        Ok(Ok(request)) => request,
        Ok(Err(HandshakeError::Refused { reply, host, port, reason })) => {
            shared.refuse(&host, port, Protocol::Socks5, None, reason);
            if let Some(reply) = reply {
                send_reply(&mut stream, reply, None).await;
            }
            return;
        }
        Ok(Err(HandshakeError::Unauthenticated(failure))) => {
            shared.reject_unauthenticated(Protocol::Socks5, &failure);
            return;
        }
        Ok(Err(HandshakeError::Io(error))) => {
            debug!(%error, "SOCKS5 handshake failed");
            return;
        }
        Err(_) => {
            debug!("closed a SOCKS5 connection that sent no complete request within {:?}", shared.limits.head_timeout);
            return;
        }
    };

    match shared.dial(&request.host, request.port, Protocol::Socks5).await {
        Ok(mut upstream) => {
            // The upstream socket's local address is the host's: 0.0.0.0:0 keeps it from the
            // sandbox, and clients do not use the field.
            if send_reply(&mut stream, Reply::Succeeded, None).await {
                relay_checked(shared, Protocol::Socks5, &request.host, request.port, &mut stream, Vec::new(), &mut upstream.stream).await;
            }
        }
        Err(error) => {
            debug!(%error, "SOCKS5 CONNECT to {}:{} failed", request.host, request.port);
            send_reply(&mut stream, reply_for(&error), None).await;
        }
    }
}

/// Reads the method negotiation, authenticates the client if the proxy has a credential, and
/// reads the request (RFC 1928 sections 3 and 4).
async fn handshake(shared: &Shared, stream: &mut TcpStream) -> Result<ConnectRequest, HandshakeError> {
    let [_version, method_count] = read_array::<2>(stream).await?;
    let mut methods = vec![0u8; usize::from(method_count)];
    stream.read_exact(&mut methods).await?;
    match &shared.credential {
        Some(credential) => authenticate(stream, methods, credential).await?,
        None => accept_no_authentication(stream, &methods).await?,
    }
    read_request(stream).await
}

/// Selects the "no authentication" method, or replies that none of `methods` is acceptable.
async fn accept_no_authentication(stream: &mut TcpStream, methods: &[u8]) -> Result<(), HandshakeError> {
    if !methods.contains(&METHOD_NO_AUTHENTICATION) {
        stream.write_all(&[SOCKS5_VERSION, METHOD_NONE_ACCEPTABLE]).await?;
        return Err(HandshakeError::Refused {
            reply: None,
            host: String::new(),
            port: 0,
            reason: format!(
                "the SOCKS5 client offered the authentication methods {methods:02x?}, but palisade accepts only \
                 'no authentication' (0x00)"
            ),
        });
    }
    stream.write_all(&[SOCKS5_VERSION, METHOD_NO_AUTHENTICATION]).await?;
    Ok(())
}

/// Selects the username/password method and checks the client's user name and password
/// against `credential` (RFC 1929). A client that does not offer the method gets "no
/// acceptable methods" (0xFF), and one that sends the wrong credential gets a failure status.
/// After either the caller closes the connection, as RFC 1929 requires after a failure.
async fn authenticate(stream: &mut TcpStream, methods: Vec<u8>, credential: &Credential) -> Result<(), HandshakeError> {
    if !methods.contains(&METHOD_USERNAME_PASSWORD) {
        stream.write_all(&[SOCKS5_VERSION, METHOD_NONE_ACCEPTABLE]).await?;
        return Err(HandshakeError::Unauthenticated(AuthFailure::NoPasswordMethod(methods)));
    }
    stream.write_all(&[SOCKS5_VERSION, METHOD_USERNAME_PASSWORD]).await?;

    let [version, user_length] = read_array::<2>(stream).await?;
    if version != PASSWORD_VERSION {
        // The rest of the message cannot be trusted to follow RFC 1929's layout, so it is not read.
        stream.write_all(&[PASSWORD_VERSION, PASSWORD_FAILED]).await?;
        return Err(HandshakeError::Unauthenticated(AuthFailure::PasswordVersion(version)));
    }
    let mut user = vec![0u8; usize::from(user_length)];
    stream.read_exact(&mut user).await?;
    let [password_length] = read_array::<1>(stream).await?;
    let mut password = vec![0u8; usize::from(password_length)];
    stream.read_exact(&mut password).await?;

    if !credential.matches(&user, &password) {
        stream.write_all(&[PASSWORD_VERSION, PASSWORD_FAILED]).await?;
        return Err(HandshakeError::Unauthenticated(AuthFailure::Mismatch));
    }
    stream.write_all(&[PASSWORD_VERSION, PASSWORD_SUCCEEDED]).await?;
    Ok(())
}

/// Reads the CONNECT request that follows the method negotiation (RFC 1928 section 4).
async fn read_request(stream: &mut TcpStream) -> Result<ConnectRequest, HandshakeError> {
    let [version, command, _reserved, address_type] = read_array::<4>(stream).await?;
    if version != SOCKS5_VERSION {
        return Err(HandshakeError::Refused {
            reply: Some(Reply::GeneralFailure),
            host: String::new(),
            port: 0,
            reason: format!("the SOCKS5 request has version {version}, not 5"),
        });
    }
    let host = match address_type {
        ADDRESS_IPV4 => Ipv4Addr::from(read_array::<4>(stream).await?).to_string(),
        ADDRESS_IPV6 => Ipv6Addr::from(read_array::<16>(stream).await?).to_string(),
        ADDRESS_DOMAIN => read_domain(stream).await?,
        other => {
            return Err(HandshakeError::Refused {
                reply: Some(Reply::AddressTypeNotSupported),
                host: String::new(),
                port: 0,
                reason: format!("SOCKS5 address type {other:#04x} is not supported"),
            });
        }
    };
    let port = u16::from_be_bytes(read_array::<2>(stream).await?);

    if command != COMMAND_CONNECT {
        return Err(HandshakeError::Refused {
            reply: Some(Reply::CommandNotSupported),
            host,
            port,
            reason: format!(
                "SOCKS5 command {} is not supported, only CONNECT",
                command_name(command)
            ),
        });
    }
    Ok(ConnectRequest { host, port })
}

/// Reads a length-prefixed domain name. Bytes that are not UTF-8 become U+FFFD, which
/// [`palisade_policy::network::parse_target`] then rejects.
async fn read_domain(stream: &mut TcpStream) -> io::Result<String> {
    let [length] = read_array::<1>(stream).await?;
    let mut name = vec![0u8; usize::from(length)];
    stream.read_exact(&mut name).await?;
    Ok(String::from_utf8_lossy(&name).into_owned())
}

async fn read_array<const N: usize>(stream: &mut TcpStream) -> io::Result<[u8; N]> {
    let mut bytes = [0u8; N];
    stream.read_exact(&mut bytes).await?;
    Ok(bytes)
}

fn command_name(command: u8) -> String {
    match command {
        0x02 => "BIND (0x02)".into(),
        0x03 => "UDP ASSOCIATE (0x03)".into(),
        other => format!("{other:#04x}"),
    }
}

/// Maps a failed dial to its SOCKS5 reply code.
fn reply_for(error: &DialError) -> Reply {
    match error {
        DialError::InvalidHost(_) => Reply::GeneralFailure,
        DialError::Denied(_) => Reply::NotAllowedByRuleset,
        DialError::Resolve { .. } => Reply::HostUnreachable,
        DialError::Connect { source, .. } => match source.kind() {
            io::ErrorKind::NetworkUnreachable => Reply::NetworkUnreachable,
            io::ErrorKind::HostUnreachable => Reply::HostUnreachable,
            _ => Reply::ConnectionRefused,
        },
    }
}

/// Sends a reply with the bound address, or `0.0.0.0:0` without one. Returns `false` if the
/// client is gone.
async fn send_reply(stream: &mut TcpStream, reply: Reply, bound: Option<SocketAddr>) -> bool {
    let bound = bound.unwrap_or_else(|| SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0));
    let mut message = vec![SOCKS5_VERSION, reply as u8, 0x00];
    match bound.ip() {
        IpAddr::V4(addr) => {
            message.push(ADDRESS_IPV4);
            message.extend_from_slice(&addr.octets());
        }
        IpAddr::V6(addr) => {
            message.push(ADDRESS_IPV6);
            message.extend_from_slice(&addr.octets());
        }
    }
    message.extend_from_slice(&bound.port().to_be_bytes());
    match stream.write_all(&message).await {
        Ok(()) => true,
        Err(error) => {
            debug!(%error, "failed to send the SOCKS5 reply");
            false
        }
    }
}
