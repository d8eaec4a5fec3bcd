//! Reading the server name (SNI) of a TLS ClientHello, so a tunnel can be closed when the name
//! the client gives the TLS server differs from the destination the proxy checked.
//!
//! The layout is that of RFC 8446 section 4.1.2 (TLS 1.3) and RFC 5246 section 7.4.1.2
//! (TLS 1.2), which agree on every field read here. The extension is RFC 6066 section 3.

use palisade_policy::network::{Target, parse_target};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tracing::debug;

use crate::dial::Protocol;
use crate::proxy::Shared;
use crate::tunnel::relay;

/// The kind of the first bytes a client sent into a tunnel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ClientHello {
    /// Not TLS: the first byte is not a handshake record.
    NotTls,
    /// A TLS handshake that needs at least this many bytes in all before it can be read.
    Incomplete(usize),
    /// A ClientHello, with the host name of its server name extension if it has one.
    ServerName(Option<String>),
    /// A TLS record that is not a well-formed ClientHello.
    Malformed(&'static str),
}

/// The content type of a TLS handshake record.
const HANDSHAKE_RECORD: u8 = 0x16;
/// The handshake type of a ClientHello.
const CLIENT_HELLO: u8 = 0x01;
/// The extension type of server_name.
const SERVER_NAME_EXTENSION: u16 = 0;
/// The name type of a DNS host name in the server name list.
const HOST_NAME: u8 = 0;
/// Length of a TLS record header: type, version, length.
const RECORD_HEADER: usize = 5;
/// Maximum size of a ClientHello the proxy reads. One with a post-quantum key share is about
/// 2 KiB, so this leaves room for many extensions and still bounds the memory per tunnel.
pub(crate) const MAX_CLIENT_HELLO: usize = 64 * 1024;

/// Reads the ClientHello at the start of `bytes`, the first bytes a client sent into a tunnel.
/// The handshake message may span several records, which are joined.
pub(crate) fn parse(bytes: &[u8]) -> ClientHello {
    match bytes.first() {
        None => return ClientHello::Incomplete(1),
        Some(&HANDSHAKE_RECORD) => {}
        Some(_) => return ClientHello::NotTls,
    }

    // Join the fragments of the handshake records until the message is complete.
    let mut message = Vec::new();
    let mut offset = 0;
    loop {
        if bytes.len() < offset + RECORD_HEADER {
            return ClientHello::Incomplete(offset + RECORD_HEADER);
        }
        if bytes[offset] != HANDSHAKE_RECORD {
            return ClientHello::Malformed("a record inside the ClientHello is not a handshake record");
        }
        let length = usize::from(u16::from_be_bytes([bytes[offset + 3], bytes[offset + 4]]));
        if length == 0 {
            return ClientHello::Malformed("an empty handshake record");
        }
        let end = offset + RECORD_HEADER + length;
        if end > MAX_CLIENT_HELLO {
            return ClientHello::Malformed("the ClientHello is larger than the proxy reads");
        }
        if bytes.len() < end {
            return ClientHello::Incomplete(end);
        }
        message.extend_from_slice(&bytes[offset + RECORD_HEADER..end]);
        offset = end;

        if message.len() >= 4 {
            if message[0] != CLIENT_HELLO {
                return ClientHello::Malformed("the first handshake message is not a ClientHello");
            }
            let body_length = (usize::from(message[1]) << 16) | (usize::from(message[2]) << 8) | usize::from(message[3]);
            if 4 + body_length > MAX_CLIENT_HELLO {
                return ClientHello::Malformed("the ClientHello is larger than the proxy reads");
            }
            if message.len() >= 4 + body_length {
                return read_client_hello(&message[4..4 + body_length]);
            }
        }
    }
}

/// Reads the server name from the body of a ClientHello.
fn read_client_hello(body: &[u8]) -> ClientHello {
    let mut reader = Reader { bytes: body };
    let parsed = (|| {
        reader.skip(2)?; // legacy_version
        reader.skip(32)?; // random
        let session_id = reader.u8()?;
        reader.skip(usize::from(session_id))?;
        let cipher_suites = reader.u16()?;
        reader.skip(usize::from(cipher_suites))?;
        let compression_methods = reader.u8()?;
        reader.skip(usize::from(compression_methods))?;
        if reader.bytes.is_empty() {
            // A ClientHello without extensions, as SSL 3.0 clients send.
            return Some(ClientHello::ServerName(None));
        }
        let extensions_length = reader.u16()?;
        let mut extensions = Reader { bytes: reader.take(usize::from(extensions_length))? };
        while !extensions.bytes.is_empty() {
            let kind = extensions.u16()?;
            let length = extensions.u16()?;
            let data = extensions.take(usize::from(length))?;
            if kind == SERVER_NAME_EXTENSION {
                return Some(read_server_name(data));
            }
        }
        Some(ClientHello::ServerName(None))
    })();
    parsed.unwrap_or(ClientHello::Malformed("the ClientHello ends early"))
}

/// Reads the host name from the data of a server_name extension.
fn read_server_name(data: &[u8]) -> ClientHello {
    let mut reader = Reader { bytes: data };
    let parsed = (|| {
        let list_length = reader.u16()?;
        let mut list = Reader { bytes: reader.take(usize::from(list_length))? };
        while !list.bytes.is_empty() {
            let name_type = list.u8()?;
            let length = list.u16()?;
            let name = list.take(usize::from(length))?;
            if name_type == HOST_NAME {
                return Some(match std::str::from_utf8(name) {
                    Ok(name) if !name.is_empty() && name.is_ascii() => ClientHello::ServerName(Some(name.to_owned())),
                    _ => ClientHello::Malformed("the server name is not an ASCII host name"),
                });
            }
        }
        Some(ClientHello::ServerName(None))
    })();
    parsed.unwrap_or(ClientHello::Malformed("the server name extension ends early"))
}

/// Relays an open tunnel to `host` and `port`, after checking the TLS server name the client
/// sends first against `host`. A tunnel whose names differ is closed and recorded as a refusal
/// of `protocol` before any byte of the client reaches the upstream server. `received` contains
/// the client's bytes that were read before the tunnel opened (sent in the same packet as the
/// CONNECT request); they come first.
pub(crate) async fn relay_checked(shared: &Shared, protocol: Protocol, host: &str, port: u16, client: &mut TcpStream, received: Vec<u8>, upstream: &mut TcpStream) {
    let first = match parse_target(host) {
        Ok(Target::Name(name)) => match screen_first_bytes(client, received, upstream, &name, port).await {
            Ok(Screened::Forward(first)) => first,
            Ok(Screened::Refuse(reason)) => {
                shared.refuse(host, port, protocol, None, reason);
                return;
            }
            Err(error) => {
                debug!(%error, "the tunnel closed before the client sent anything");
                return;
            }
        },
        // A tunnel to an IP address reaches that address whatever name the client gives.
        _ => received,
    };
    if !first.is_empty() {
        if let Err(error) = upstream.write_all(&first).await {
            debug!(%error, "failed to pass the client's first bytes to the upstream server");
            return;
        }
    }
    relay(&shared.buffers, client, upstream).await;
}

/// The decision on a tunnel's first bytes.
enum Screened {
    /// The bytes read from the client, to pass on before relaying the rest.
    Forward(Vec<u8>),
    /// The server name differs from the destination, for this reason.
    Refuse(String),
}

/// Reads from `client`, after the bytes already `received` from it, until its first bytes show
/// whether they are a TLS ClientHello and, if so, which server name it carries. Stops early when
/// the upstream server sends first, as SSH and SMTP servers do, because a TLS client always
/// speaks first.
async fn screen_first_bytes<C>(client: &mut C, received: Vec<u8>, upstream: &TcpStream, requested: &str, port: u16) -> std::io::Result<Screened>
where
    C: AsyncRead + Unpin + ?Sized,
{
    // Bytes received before the tunnel opened may already contain the whole ClientHello, and
    // the client then waits for the server's reply, so each pass parses what it has before it
    // reads more. An empty buffer parses as incomplete.
    let mut buffer = received;
    buffer.reserve(4096);
    loop {
        match parse(&buffer) {
            ClientHello::NotTls | ClientHello::ServerName(None) => return Ok(Screened::Forward(buffer)),
            // The upstream server rejects a broken handshake itself.
            ClientHello::Malformed(reason) => {
                debug!(reason, "the client's first bytes look like TLS but are not a ClientHello");
                return Ok(Screened::Forward(buffer));
            }
            ClientHello::Incomplete(needed) => buffer.reserve(needed.saturating_sub(buffer.len())),
            ClientHello::ServerName(Some(name)) => {
                if matches!(parse_target(&name), Ok(Target::Name(given)) if given == requested) {
                    return Ok(Screened::Forward(buffer));
                }
                return Ok(Screened::Refuse(format!(
                    "the TLS server name '{name}' differs from the tunnel's destination {requested}:{port}, so the tunnel was closed before the handshake reached the server; request {name} itself if it is on the allowlist"
                )));
            }
        }
        // `read_buf` is cancel-safe: when the upstream wins, nothing was read from the client.
        tokio::select! {
            biased;
            read = client.read_buf(&mut buffer) => {
                if read? == 0 {
                    return Ok(Screened::Forward(buffer));
                }
            }
            _ = upstream.readable() => return Ok(Screened::Forward(buffer)),
        }
    }
}

/// A cursor over big-endian fields, which returns `None` past the end.
struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, count: usize) -> Option<&'a [u8]> {
        if self.bytes.len() < count {
            return None;
        }
        let (taken, rest) = self.bytes.split_at(count);
        self.bytes = rest;
        Some(taken)
    }

    fn skip(&mut self, count: usize) -> Option<()> {
        self.take(count).map(|_| ())
    }

    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|bytes| bytes[0])
    }

    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|bytes| u16::from_be_bytes([bytes[0], bytes[1]]))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Builds a ClientHello with `server_name` (if any) in one or more records of at most
    /// `record_size` bytes of handshake data each.
    pub(crate) fn client_hello(server_name: Option<&str>, record_size: usize) -> Vec<u8> {
        let mut body = vec![0x03, 0x03];
        body.extend_from_slice(&[7; 32]);
        body.push(0); // empty session id
        body.extend_from_slice(&[0x00, 0x02, 0x13, 0x01]); // one cipher suite
        body.extend_from_slice(&[0x01, 0x00]); // null compression
        let mut extensions = Vec::new();
        // An unrelated extension first (supported_versions), so the reader has to skip one.
        extensions.extend_from_slice(&[0x00, 0x2b, 0x00, 0x03, 0x02, 0x03, 0x04]);
        if let Some(name) = server_name {
            let name = name.as_bytes();
            let entry_length = 3 + name.len();
            extensions.extend_from_slice(&SERVER_NAME_EXTENSION.to_be_bytes());
            extensions.extend_from_slice(&((entry_length + 2) as u16).to_be_bytes());
            extensions.extend_from_slice(&(entry_length as u16).to_be_bytes());
            extensions.push(HOST_NAME);
            extensions.extend_from_slice(&(name.len() as u16).to_be_bytes());
            extensions.extend_from_slice(name);
        }
        body.extend_from_slice(&(extensions.len() as u16).to_be_bytes());
        body.extend_from_slice(&extensions);

        let mut message = vec![CLIENT_HELLO];
        message.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
        message.extend_from_slice(&body);

        let mut records = Vec::new();
        for fragment in message.chunks(record_size) {
            records.extend_from_slice(&[HANDSHAKE_RECORD, 0x03, 0x01]);
            records.extend_from_slice(&(fragment.len() as u16).to_be_bytes());
            records.extend_from_slice(fragment);
        }
        records
    }

    #[test]
    fn server_name_is_read() {
        let hello = client_hello(Some("allowed.test"), 16 * 1024);
        assert_eq!(parse(&hello), ClientHello::ServerName(Some("allowed.test".into())));
    }

    #[test]
    fn hello_without_server_name() {
        let hello = client_hello(None, 16 * 1024);
        assert_eq!(parse(&hello), ClientHello::ServerName(None));
    }

    #[test]
    fn hello_across_several_records() {
        let hello = client_hello(Some("blocked.test"), 10);
        assert_eq!(parse(&hello), ClientHello::ServerName(Some("blocked.test".into())));
    }

    #[test]
    fn every_prefix_asks_for_more() {
        let hello = client_hello(Some("allowed.test"), 20);
        for end in 0..hello.len() {
            match parse(&hello[..end]) {
                ClientHello::Incomplete(needed) => assert!(needed > end && needed <= hello.len(), "prefix {end} asks for {needed}"),
                other => panic!("prefix of {end} bytes read as {other:?}"),
            }
        }
    }

    #[test]
    fn other_protocols_are_not_tls() {
        assert_eq!(parse(b"SSH-2.0-OpenSSH_9.2\r\n"), ClientHello::NotTls);
        assert_eq!(parse(b"GET / HTTP/1.1\r\n"), ClientHello::NotTls);
    }

    #[test]
    fn broken_hellos_are_malformed() {
        let mut hello = client_hello(Some("allowed.test"), 16 * 1024);
        // A handshake type other than ClientHello.
        hello[5] = 0x02;
        assert!(matches!(parse(&hello), ClientHello::Malformed(_)));
        // An empty record.
        assert!(matches!(parse(&[HANDSHAKE_RECORD, 3, 1, 0, 0]), ClientHello::Malformed(_)));
        // A body shorter than its fields.
        let mut short = vec![HANDSHAKE_RECORD, 3, 1, 0, 8, CLIENT_HELLO, 0, 0, 4];
        short.extend_from_slice(&[3, 3, 0, 0]);
        assert!(matches!(parse(&short), ClientHello::Malformed(_)));
    }

    proptest::proptest! {
        // Whatever a client sends, parsing returns one of the four results and never panics.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..600)) {
            let _ = parse(&bytes);
        }

        // Bytes after a handshake record header are read as a ClientHello, never as something else.
        #[test]
        fn arbitrary_records_are_never_other_protocols(body in proptest::collection::vec(proptest::num::u8::ANY, 0..600)) {
            let mut record = vec![HANDSHAKE_RECORD, 3, 1];
            record.extend_from_slice(&(body.len() as u16).to_be_bytes());
            record.extend_from_slice(&body);
            proptest::prop_assert_ne!(parse(&record), ClientHello::NotTls);
        }

        // The name a ClientHello carries is read back whatever the record size.
        #[test]
        fn server_names_round_trip(name in "[a-z0-9-]{1,20}(\\.[a-z0-9-]{1,20}){0,3}", record_size in 1usize..300) {
            let hello = client_hello(Some(&name), record_size);
            proptest::prop_assert_eq!(parse(&hello), ClientHello::ServerName(Some(name)));
        }
    }

    #[test]
    fn oversized_hello_is_malformed() {
        let mut hello = vec![HANDSHAKE_RECORD, 3, 1, 0xff, 0xff, CLIENT_HELLO, 0xff, 0xff, 0xff];
        hello.resize(RECORD_HEADER + 0xffff, 0);
        assert!(matches!(parse(&hello), ClientHello::Malformed(_)));
    }
}
