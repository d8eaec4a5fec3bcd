//! Destination rules of the network allowlist, and the decisions palisade's proxy takes with them.
//!
//! A rule is one entry of `[network] allow` or `deny`, or one `--allow-domain` pattern: an exact
//! name, a `*.` wildcard, an IP address or a CIDR block, each with an optional port. The proxy
//! decides on the host its client requested, resolves names itself and connects only to an
//! address it checked, in three steps:
//!
//! 1. [`parse_target`] reads the requested host. Every spelling that `inet_aton` or a browser
//!    reads as an IPv4 address becomes [`Target::Ip`], so `127.1` never passes as a name.
//! 2. [`Rules::check_request`] matches the target and port against the rules.
//! 3. [`Rules::check_address`] checks each address the proxy may connect to: every address a
//!    name resolved to, or the IP target itself. Internal addresses (see [`classify`]) are
//!    reached only through an IP or CIDR allow entry, never through a name entry.
//!
//! This module only decides. It opens no connection and resolves no name.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::error::PolicyError;

/// Maximum length of a DNS name in text form without the trailing dot: 255 bytes in wire form
/// (RFC 1035 section 2.3.4) minus the length bytes of the first and the root label.
const MAX_NAME_LEN: usize = 253;
/// Maximum length of one label of a DNS name (RFC 1035 section 2.3.4).
const MAX_LABEL_LEN: usize = 63;

const PATH_REASON: &str =
    "a path ('/...') is not allowed, because entries match hosts and ports only, such as example.com:443";
const WILDCARD_POSITION_REASON: &str = "'*' is allowed only as the whole first label, as in *.example.com";

/// Maximum number of ports palisade serves inside the sandbox besides the proxy's: forwarded
/// loopback entries and, with `resolve_allowed`, the ports of resolvable names (see
/// [`Rules::served_port_count`]). The Linux backend passes every listening socket in one
/// `SCM_RIGHTS` message, and the kernel passes at most 253 descriptors in one (`SCM_MAX_FD`).
pub const MAX_SERVED_PORTS: usize = 64;

/// The list an entry belongs to, which decides what the entry may name and the hints of its
/// errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryList {
    /// `[network] allow` and `--allow-domain`.
    Allow,
    /// `[network] deny`.
    Deny,
}

impl EntryList {
    /// Returns what to do instead of an entry that would match every destination.
    fn too_broad_hint(self) -> &'static str {
        match self {
            EntryList::Allow => "use --net full to allow every destination",
            EntryList::Deny => "use network mode none (--net none) to reject every destination",
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Rules

/// One entry of `[network] allow` or `deny`, or one `--allow-domain` pattern, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    text: String,
    host: RuleHost,
    port: Option<u16>,
}

/// The host part of a [`Rule`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuleHost {
    /// An exact name, lowercase, without a trailing dot.
    Name(String),
    /// `*.suffix`, which matches names with at least one more label than `suffix`. Holds the
    /// suffix, lowercase, without `*.` and without a trailing dot.
    Wildcard(String),
    /// An IP address (a network of one address) or a CIDR block.
    Network(IpNetwork),
}

/// An IP network: an address whose bits past `prefix_len` are zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNetwork {
    addr: IpAddr,
    prefix_len: u8,
}

impl Rule {
    /// Returns the entry as written, for reports and messages.
    pub fn text(&self) -> &str {
        &self.text
    }

    pub fn host(&self) -> &RuleHost {
        &self.host
    }

    /// Returns the port the rule is limited to. `None` matches every port.
    pub fn port(&self) -> Option<u16> {
        self.port
    }

    fn matches_port(&self, port: u16) -> bool {
        self.port.is_none_or(|own| own == port)
    }

    /// Returns `true` if a name rule matches `name`, which must be normalised as [`parse_target`] does.
    fn matches_name(&self, name: &str) -> bool {
        match &self.host {
            RuleHost::Name(own) => own == name,
            RuleHost::Wildcard(suffix) => is_below(name, suffix),
            RuleHost::Network(_) => false,
        }
    }

    /// Returns `true` if an IP rule covers any of `addrs`.
    fn covers_any(&self, addrs: &[IpAddr]) -> bool {
        match &self.host {
            RuleHost::Network(network) => addrs.iter().any(|&addr| network.contains(addr)),
            RuleHost::Name(_) | RuleHost::Wildcard(_) => false,
        }
    }

    fn is_single_address(&self) -> bool {
        matches!(&self.host, RuleHost::Network(network) if network.is_single_address())
    }

    /// Returns the address and port of an entry that names exactly one loopback address with a
    /// port, such as `127.0.0.1:5432` or `[::1]:8080`. [`Rules::forwarded_ports`] forwards
    /// these unless a deny entry covers them.
    pub fn loopback_socket_addr(&self) -> Option<SocketAddr> {
        let (RuleHost::Network(network), Some(port)) = (&self.host, self.port) else { return None };
        let addr = network.addr();
        (network.is_single_address() && addr.is_loopback()).then_some(SocketAddr::new(addr, port))
    }

    /// Returns `true` for a name or wildcard entry that matches only `localhost` or names under
    /// `.localhost`, which resolve to loopback addresses (RFC 6761 section 6.3) that a name
    /// entry never reaches.
    pub fn is_loopback_name(&self) -> bool {
        match &self.host {
            RuleHost::Name(name) | RuleHost::Wildcard(name) => is_loopback_name(name),
            RuleHost::Network(_) => false,
        }
    }
}

/// Returns `true` for `localhost` and the names under `.localhost`, normalised.
fn is_loopback_name(name: &str) -> bool {
    name == "localhost" || name.ends_with(".localhost")
}

/// Explains why an allow entry for a loopback name is rejected, and names the address entries
/// to use instead.
fn loopback_name_reason(port: Option<u16>) -> String {
    let port = port.map_or_else(|| "PORT".to_owned(), |port| port.to_string());
    format!(
        "localhost and the names under .localhost resolve to loopback addresses, which a name entry never reaches, so use the address entries 127.0.0.1:{port} and [::1]:{port}"
    )
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// Returns `true` if `name` ends in `.suffix` with at least one label before it.
fn is_below(name: &str, suffix: &str) -> bool {
    name.len() > suffix.len() + 1 && name.ends_with(suffix) && name.as_bytes()[name.len() - suffix.len() - 1] == b'.'
}

impl IpNetwork {
    /// Builds the network `addr/prefix_len`. Fails when the prefix is longer than the address or
    /// when bits past the prefix are set, naming the network the caller probably meant.
    pub fn new(addr: IpAddr, prefix_len: u8) -> Result<IpNetwork, String> {
        let max = max_prefix_len(addr);
        if prefix_len > max {
            return Err(format!("prefix length /{prefix_len} is longer than the {max} bits of {}", family_name(addr)));
        }
        let network = mask(addr, prefix_len);
        if network != addr {
            return Err(format!(
                "{addr}/{prefix_len} has host bits set, so write the network as {network}/{prefix_len}"
            ));
        }
        Ok(IpNetwork { addr, prefix_len })
    }

    /// Returns the network's first address.
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    pub fn prefix_len(&self) -> u8 {
        self.prefix_len
    }

    /// Returns `true` if `addr` lies in the network. Networks of one family never contain
    /// addresses of the other, so callers compare IPv4-mapped twins themselves.
    pub fn contains(&self, addr: IpAddr) -> bool {
        is_same_family(addr, self.addr) && mask(addr, self.prefix_len) == self.addr
    }

    /// Returns `true` if the network contains exactly one address (`/32` or `/128`).
    pub fn is_single_address(&self) -> bool {
        self.prefix_len == max_prefix_len(self.addr)
    }
}

impl fmt::Display for IpNetwork {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

fn max_prefix_len(addr: IpAddr) -> u8 {
    match addr {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    }
}

fn family_name(addr: IpAddr) -> &'static str {
    match addr {
        IpAddr::V4(_) => "an IPv4 address",
        IpAddr::V6(_) => "an IPv6 address",
    }
}

fn is_same_family(a: IpAddr, b: IpAddr) -> bool {
    a.is_ipv4() == b.is_ipv4()
}

/// Clears the bits of `addr` past `prefix_len`.
fn mask(addr: IpAddr, prefix_len: u8) -> IpAddr {
    let host_bits = u32::from(max_prefix_len(addr) - prefix_len.min(max_prefix_len(addr)));
    match addr {
        IpAddr::V4(v4) => {
            let keep = u32::MAX.checked_shl(host_bits).unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from(u32::from(v4) & keep))
        }
        IpAddr::V6(v6) => {
            let keep = u128::MAX.checked_shl(host_bits).unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(u128::from(v6) & keep))
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Rule parsing

/// Parses one entry of `list` as resolution checks it: the syntax [`parse_rule`] reads, and,
/// in the allow list, no name or wildcard for `localhost` or a name under `.localhost`. Such
/// an entry would allow nothing, because these names resolve to loopback addresses and a name
/// entry never reaches an internal address.
///
/// Returns, on error, a reason without the entry itself, which the caller places after the
/// entry and its origin.
pub fn parse_entry(text: &str, list: EntryList) -> Result<Rule, String> {
    let rule = parse_syntax(text, list)?;
    if list == EntryList::Allow && rule.is_loopback_name() {
        return Err(loopback_name_reason(rule.port));
    }
    Ok(rule)
}

/// Parses the syntax of one allowlist or denylist entry: `example.com`, `*.example.com`, either
/// with an optional `:port`, an IPv4 address in dotted-quad form, an IPv6 address (`::1`, or
/// `[::1]:8080` with a port), or a CIDR block (`10.0.0.0/8`, `fd00::/8`, `[fd00::/8]:443`).
/// An IPv6 address without brackets takes no port, so `::1:8080` is the address `::1:8080`.
///
/// Names are lowercased and lose one trailing dot. Errors carry the hints of an allow entry.
/// Unlike [`parse_entry`], this accepts `localhost` and the names under `.localhost`, so rules
/// built from them show how the proxy treats such a name.
pub fn parse_rule(text: &str) -> Result<Rule, String> {
    parse_syntax(text, EntryList::Allow)
}

fn parse_syntax(text: &str, list: EntryList) -> Result<Rule, String> {
    reject_non_host_syntax(text)?;
    let (host, port) = split_port(text)?;
    let host = match host {
        HostText::Bracketed(inside) => parse_bracketed_rule_host(inside, list)?,
        HostText::Plain(host) => parse_rule_host(host, list, port)?,
    };
    Ok(Rule { text: text.to_owned(), host, port })
}

/// Rejects the parts of a URL that are not a host and port, with a reason for each.
fn reject_non_host_syntax(text: &str) -> Result<(), String> {
    if text.is_empty() {
        return Err("the entry is empty".into());
    }
    if text.chars().any(char::is_whitespace) {
        return Err("the entry contains whitespace, but it must be a single destination such as example.com:443".into());
    }
    if let Some((scheme, _)) = text.split_once("://") {
        return Err(format!(
            "'{scheme}://' is a URL scheme, but an entry is a host with an optional port, such as example.com:443"
        ));
    }
    if text.contains('@') {
        return Err("user info ('user@') is not allowed, because an entry names a host only".into());
    }
    if text.contains('%') {
        return Err(percent_reason(text).into());
    }
    Ok(())
}

fn percent_reason(text: &str) -> &'static str {
    if looks_like_ipv6(text) {
        "IPv6 zone ids such as %eth0 are not supported"
    } else {
        "percent-encoding is not allowed, so write names in plain ASCII (punycode xn--... for international names)"
    }
}

fn looks_like_ipv6(text: &str) -> bool {
    text.starts_with('[') || text.matches(':').count() >= 2
}

enum HostText<'a> {
    Plain(&'a str),
    /// The text between `[` and `]`.
    Bracketed(&'a str),
}

/// Splits `host:port`, `[ipv6]:port` and the forms without a port. An IPv6 address without
/// brackets takes no port, because its last group would be read as one.
fn split_port(text: &str) -> Result<(HostText<'_>, Option<u16>), String> {
    if let Some(rest) = text.strip_prefix('[') {
        let Some((inside, after)) = rest.split_once(']') else {
            return Err("'[' has no closing ']'".into());
        };
        if after.is_empty() {
            return Ok((HostText::Bracketed(inside), None));
        }
        let Some(port) = after.strip_prefix(':') else {
            return Err(format!("unexpected '{after}' after ']', where only a port such as :8080 may follow"));
        };
        return Ok((HostText::Bracketed(inside), Some(parse_port(port)?)));
    }
    if text.contains(']') {
        return Err("']' has no opening '['".into());
    }
    match text.split_once(':') {
        Some((host, port)) if !port.contains(':') => Ok((HostText::Plain(host), Some(parse_port(port)?))),
        _ => Ok((HostText::Plain(text), None)),
    }
}

fn parse_port(text: &str) -> Result<u16, String> {
    if text.is_empty() {
        return Err("the port after ':' is missing".into());
    }
    if text.contains('/') {
        return Err(PATH_REASON.into());
    }
    if !text.bytes().all(|byte| byte.is_ascii_digit()) {
        return Err(format!("port '{text}' is not a number"));
    }
    match text.parse::<u16>() {
        Ok(port) if port != 0 => Ok(port),
        _ => Err(format!("port {text} is out of range, because ports go from 1 to 65535")),
    }
}

fn parse_bracketed_rule_host(inside: &str, list: EntryList) -> Result<RuleHost, String> {
    let (addr_text, prefix_text) = match inside.split_once('/') {
        Some((addr, prefix)) => (addr, Some(prefix)),
        None => (inside, None),
    };
    match addr_text.parse::<Ipv6Addr>() {
        Ok(addr) => network_rule(IpAddr::V6(addr), prefix_text, list),
        Err(_) => Err(format!(
            "'{inside}' is not an IPv6 address, and brackets are only for IPv6 addresses such as [::1]:8080"
        )),
    }
}

fn parse_rule_host(host: &str, list: EntryList, port: Option<u16>) -> Result<RuleHost, String> {
    if let Some((addr_text, prefix_text)) = host.split_once('/') {
        return match parse_rule_address(addr_text)? {
            Some(addr) => network_rule(addr, Some(prefix_text), list),
            None => Err(PATH_REASON.into()),
        };
    }
    match parse_rule_address(host)? {
        Some(addr) => network_rule(addr, None, list),
        None => parse_rule_name(host, list, port),
    }
}

/// Returns the address `text` spells, or `None` when `text` is meant as a name.
///
/// IPv4 addresses must be in canonical dotted-quad form. Other spellings that clients accept,
/// such as `127.1` or `0x7f000001`, are rejected with the canonical form, so the rule a reader
/// sees is the address it matches.
fn parse_rule_address(text: &str) -> Result<Option<IpAddr>, String> {
    if text.contains(':') {
        return match text.parse::<Ipv6Addr>() {
            Ok(addr) => Ok(Some(IpAddr::V6(addr))),
            Err(_) => Err(format!(
                "'{text}' is neither host:port nor an IPv6 address (an IPv6 address with a port is written [::1]:8080)"
            )),
        };
    }
    let lower = text.to_ascii_lowercase();
    if !ends_in_number(&lower) {
        return Ok(None);
    }
    match parse_ipv4_like_clients(&lower) {
        Some(addr) if addr.to_string() == text => Ok(Some(IpAddr::V4(addr))),
        Some(addr) => Err(format!(
            "'{text}' spells the IPv4 address {addr} in a non-standard form, and entries take the canonical dotted-quad form {addr}"
        )),
        None => {
            Err(format!("'{text}' ends in a number, so clients read it as an IPv4 address, but it is not a valid one"))
        }
    }
}

fn network_rule(addr: IpAddr, prefix_text: Option<&str>, list: EntryList) -> Result<RuleHost, String> {
    let max = max_prefix_len(addr);
    let prefix_len = match prefix_text {
        None => max,
        Some(text) => parse_prefix_len(text, max)?,
    };
    if prefix_len == 0 {
        return Err(format!(
            "/0 covers every {} address, which is too broad for one entry, so {}",
            family(addr),
            list.too_broad_hint()
        ));
    }
    IpNetwork::new(addr, prefix_len).map(RuleHost::Network)
}

fn family(addr: IpAddr) -> &'static str {
    match addr {
        IpAddr::V4(_) => "IPv4",
        IpAddr::V6(_) => "IPv6",
    }
}

fn parse_prefix_len(text: &str, max: u8) -> Result<u8, String> {
    let valid = !text.is_empty() && text.len() <= 3 && text.bytes().all(|byte| byte.is_ascii_digit());
    match text.parse::<u8>() {
        Ok(len) if valid && len <= max => Ok(len),
        _ => Err(format!("prefix length '/{text}' is not a number from 0 to {max}")),
    }
}

/// Parses a name or wildcard entry. `port` is the entry's port, for the hint of a rejected
/// `*.localhost`.
fn parse_rule_name(host: &str, list: EntryList, port: Option<u16>) -> Result<RuleHost, String> {
    if host == "*" {
        return Err(format!("'*' alone would match every name, which is too broad, so {}", list.too_broad_hint()));
    }
    if host.starts_with('.') {
        return Err("the name starts with '.', so write *.example.com to match the names under example.com".into());
    }
    let (wildcard, name) = match host.strip_prefix("*.") {
        Some(suffix) => (true, suffix),
        None => (false, host),
    };
    if name.contains('*') {
        return Err(WILDCARD_POSITION_REASON.into());
    }
    let name = normalize_name(name)?;
    if !wildcard {
        return Ok(RuleHost::Name(name));
    }
    if !name.contains('.') {
        // `*.localhost` is no top-level domain of the internet, and the useful hint is the one
        // for any loopback name.
        if list == EntryList::Allow && is_loopback_name(&name) {
            return Err(loopback_name_reason(port));
        }
        return Err(format!(
            "'*.{name}' matches every name in the top-level domain '{name}', which is too broad, so name a domain such as *.example.{name}"
        ));
    }
    if name.len() + 2 > MAX_NAME_LEN {
        return Err(format!("'*.{name}' is longer than the {MAX_NAME_LEN} bytes a DNS name can have"));
    }
    // NOTE: `*.co.uk` passes, because telling public suffixes such as co.uk from registered
    // domains needs the Public Suffix List, which palisade does not ship.
    Ok(RuleHost::Wildcard(name))
}

/// Lowercases a host name, drops one trailing dot and checks the host name syntax of RFC 1123.
/// Each label has 1 to 63 letters, digits and `-`, and neither starts nor ends with `-`. The
/// whole name has at most 253 bytes.
fn normalize_name(text: &str) -> Result<String, String> {
    if !text.is_ascii() {
        return Err(
            "the name contains non-ASCII characters, so write it in its punycode form (labels starting with xn--)"
                .into(),
        );
    }
    let name = text.strip_suffix('.').unwrap_or(text).to_ascii_lowercase();
    if name.is_empty() {
        return Err("the name is empty".into());
    }
    if name.len() > MAX_NAME_LEN {
        return Err(format!("the name is {} bytes long, more than the {MAX_NAME_LEN} bytes DNS allows", name.len()));
    }
    for label in name.split('.') {
        check_label(label)?;
    }
    Ok(name)
}

fn check_label(label: &str) -> Result<(), String> {
    if label.is_empty() {
        return Err("the name has an empty label ('..', or a '.' at the start or after the trailing dot)".into());
    }
    if label.len() > MAX_LABEL_LEN {
        return Err(format!(
            "label '{label}' is {} bytes long, more than the {MAX_LABEL_LEN} bytes DNS allows",
            label.len()
        ));
    }
    let is_allowed = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-';
    if let Some(c) = label.chars().find(|&c| !is_allowed(c)) {
        return Err(format!("'{c}' is not allowed in a host name, which contains only letters, digits, '-' and '.'"));
    }
    if label.starts_with('-') || label.ends_with('-') {
        return Err(format!("label '{label}' starts or ends with '-', which host names may not"));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Request targets

/// The host a proxy client requested: the host of a CONNECT authority or an absolute URI, or a
/// SOCKS5 domain name or address.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Target {
    /// A host name, lowercase, without a trailing dot.
    Name(String),
    Ip(IpAddr),
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Name(name) => f.write_str(name),
            Target::Ip(addr) => write!(f, "{addr}"),
        }
    }
}

/// Parses the host a client requested, without its port.
///
/// Every spelling that glibc's `inet_aton` or the WHATWG URL standard (which browsers follow)
/// reads as an IPv4 address becomes [`Target::Ip`]: `127.1`, `2130706433`, `0x7f000001`,
/// `0x7f.1`, `0177.0.0.1`, `127.0.0.1.` and mixes of these. A host whose last label is a number
/// but which is no valid address (`1.2.3.4.5`, `999.1.1.1`) is rejected rather than looked up
/// as a name. IPv6 addresses come with or without brackets. Names are normalised like rules.
pub fn parse_target(host: &str) -> Result<Target, String> {
    if host.is_empty() {
        return Err("the host is empty".into());
    }
    if host.chars().any(char::is_whitespace) {
        return Err("the host contains whitespace".into());
    }
    if host.contains('%') {
        return Err(percent_reason(host).into());
    }
    if let Some(rest) = host.strip_prefix('[') {
        let Some((inside, after)) = rest.split_once(']') else {
            return Err("'[' has no closing ']'".into());
        };
        if !after.is_empty() {
            return Err(format!("unexpected '{after}' after ']', where the host ends (the port is not part of it)"));
        }
        return parse_target_ipv6(inside);
    }
    if host.contains(':') {
        return parse_target_ipv6(host);
    }
    let lower = host.to_ascii_lowercase();
    if ends_in_number(&lower) {
        return match parse_ipv4_like_clients(&lower) {
            Some(addr) => Ok(Target::Ip(IpAddr::V4(addr))),
            None => Err(format!(
                "'{host}' ends in a number but is no valid IPv4 address, so it is rejected rather than looked up as a name"
            )),
        };
    }
    normalize_name(host).map(Target::Name)
}

fn parse_target_ipv6(text: &str) -> Result<Target, String> {
    match text.parse::<Ipv6Addr>() {
        Ok(addr) => Ok(Target::Ip(IpAddr::V6(addr))),
        Err(_) => Err(format!("'{text}' is not a valid IPv6 address")),
    }
}

/// Returns `true` if the last label of a lowercase host is a decimal or `0x` number, ignoring
/// one trailing dot. The WHATWG URL standard parses such a host as an IPv4 address ("ends in a
/// number"), and `inet_aton` accepts only hosts whose labels are all numbers.
fn ends_in_number(host: &str) -> bool {
    let host = host.strip_suffix('.').unwrap_or(host);
    let last = host.rsplit('.').next().unwrap_or(host);
    if last.is_empty() {
        return false;
    }
    if last.bytes().all(|byte| byte.is_ascii_digit()) {
        return true;
    }
    last.strip_prefix("0x").is_some_and(|hex| hex.bytes().all(|byte| byte.is_ascii_hexdigit()))
}

/// Parses a lowercase host the way `inet_aton` and the WHATWG URL standard do: one to four
/// numbers separated by dots, each decimal, octal with a leading `0`, or hexadecimal with `0x`.
/// The last number fills the bytes the others leave (`127.1` is 127.0.0.1) and every other
/// number is one byte. One trailing dot is allowed, as browsers allow it.
fn parse_ipv4_like_clients(host: &str) -> Option<Ipv4Addr> {
    let host = host.strip_suffix('.').unwrap_or(host);
    let parts: Vec<&str> = host.split('.').collect();
    if parts.len() > 4 {
        return None;
    }
    let numbers = parts.iter().map(|part| parse_ipv4_number(part)).collect::<Option<Vec<u64>>>()?;
    let (last, leading) = numbers.split_last()?;
    if leading.iter().any(|&number| number > 0xff) {
        return None;
    }
    let last_bits = 8 * (4 - leading.len());
    if *last >= 1u64 << last_bits {
        return None;
    }
    let mut value = *last;
    for (index, &number) in leading.iter().enumerate() {
        value |= number << (24 - 8 * index);
    }
    u32::try_from(value).ok().map(Ipv4Addr::from)
}

/// Parses one part of a client-style IPv4 address. `0x` alone is zero, as in the WHATWG URL
/// standard. Returns `None` for digits outside the radix and for values beyond `u64`.
fn parse_ipv4_number(part: &str) -> Option<u64> {
    let (digits, radix) = if let Some(hex) = part.strip_prefix("0x") {
        (hex, 16)
    } else if let Some(octal) = part.strip_prefix('0').filter(|rest| !rest.is_empty()) {
        (octal, 8)
    } else {
        (part, 10)
    };
    if digits.is_empty() {
        return (radix == 16).then_some(0);
    }
    if !digits.chars().all(|c| c.is_digit(radix)) {
        return None;
    }
    u64::from_str_radix(digits, radix).ok()
}

// ---------------------------------------------------------------------------------------------
// Internal addresses

const METADATA: &str = "cloud metadata";
const LOOPBACK: &str = "loopback";
const UNSPECIFIED: &str = "unspecified";
const RESERVED: &str = "reserved";

const fn v4_block(a: u8, b: u8, c: u8, d: u8, prefix_len: u8) -> IpNetwork {
    IpNetwork { addr: IpAddr::V4(Ipv4Addr::new(a, b, c, d)), prefix_len }
}

const fn v6_block(segments: [u16; 8], prefix_len: u8) -> IpNetwork {
    let [a, b, c, d, e, f, g, h] = segments;
    IpNetwork { addr: IpAddr::V6(Ipv6Addr::new(a, b, c, d, e, f, g, h)), prefix_len }
}

/// IPv4 blocks that are not public destinations, most specific first, with their category.
const IPV4_BLOCKS: &[(IpNetwork, &str)] = &[
    // AWS, Azure, Google Cloud and Oracle Cloud instance metadata (and credentials).
    (v4_block(169, 254, 169, 254, 32), METADATA),
    // AWS ECS task metadata and credentials.
    (v4_block(169, 254, 170, 2, 32), METADATA),
    // Alibaba Cloud instance metadata.
    (v4_block(100, 100, 100, 200, 32), METADATA),
    // Azure's host endpoint (WireServer), a public address that Azure VMs reach on the host.
    (v4_block(168, 63, 129, 16, 32), METADATA),
    (v4_block(255, 255, 255, 255, 32), "broadcast"),
    // Linux connects a socket to the local host when the destination is 0.0.0.0.
    (v4_block(0, 0, 0, 0, 32), UNSPECIFIED),
    // "This network" (RFC 791).
    (v4_block(0, 0, 0, 0, 8), "\"this network\""),
    (v4_block(127, 0, 0, 0, 8), LOOPBACK),
    (v4_block(10, 0, 0, 0, 8), "private"),
    (v4_block(172, 16, 0, 0, 12), "private"),
    (v4_block(192, 168, 0, 0, 16), "private"),
    (v4_block(100, 64, 0, 0, 10), "carrier-grade NAT"),
    (v4_block(169, 254, 0, 0, 16), "link-local"),
    // IETF protocol assignments (RFC 6890).
    (v4_block(192, 0, 0, 0, 24), RESERVED),
    (v4_block(192, 0, 2, 0, 24), "documentation"),
    (v4_block(198, 51, 100, 0, 24), "documentation"),
    (v4_block(203, 0, 113, 0, 24), "documentation"),
    (v4_block(198, 18, 0, 0, 15), "benchmarking"),
    (v4_block(224, 0, 0, 0, 4), "multicast"),
    (v4_block(240, 0, 0, 0, 4), RESERVED),
];

/// IPv6 blocks that are not public destinations, most specific first. Loopback, unspecified
/// and the forms that embed an IPv4 address are handled before this table.
const IPV6_BLOCKS: &[(IpNetwork, &str)] = &[
    // AWS instance metadata over IPv6.
    (v6_block([0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254], 128), METADATA),
    (v6_block([0x100, 0, 0, 0, 0, 0, 0, 0], 64), "discard-only"),
    (v6_block([0x64, 0xff9b, 1, 0, 0, 0, 0, 0], 48), "local-use NAT64"),
    (v6_block([0x2001, 2, 0, 0, 0, 0, 0, 0], 48), "benchmarking"),
    (v6_block([0x2001, 0xdb8, 0, 0, 0, 0, 0, 0], 32), "documentation"),
    (v6_block([0x3fff, 0, 0, 0, 0, 0, 0, 0], 20), "documentation"),
    (v6_block([0xfc00, 0, 0, 0, 0, 0, 0, 0], 7), "unique-local"),
    (v6_block([0xfe80, 0, 0, 0, 0, 0, 0, 0], 10), "link-local"),
    (v6_block([0xfec0, 0, 0, 0, 0, 0, 0, 0], 10), "site-local"),
    (v6_block([0xff00, 0, 0, 0, 0, 0, 0, 0], 8), "multicast"),
];

/// Global unicast space. Everything outside it that the tables above do not name is unassigned.
const IPV6_GLOBAL_UNICAST: IpNetwork = v6_block([0x2000, 0, 0, 0, 0, 0, 0, 0], 3);
const IPV6_NAT64: IpNetwork = v6_block([0x64, 0xff9b, 0, 0, 0, 0, 0, 0], 96);
const IPV6_6TO4: IpNetwork = v6_block([0x2002, 0, 0, 0, 0, 0, 0, 0], 16);
const IPV6_TEREDO: IpNetwork = v6_block([0x2001, 0, 0, 0, 0, 0, 0, 0], 32);

/// Names the internal category of an address, such as `"loopback"` or `"cloud metadata"`, or
/// returns `None` for a public address.
///
/// IPv6 addresses that embed an IPv4 address are judged by that address: IPv4-mapped
/// (`::ffff:0:0/96`), IPv4-compatible (`::/96`), NAT64 (`64:ff9b::/96`), 6to4 (`2002::/16`)
/// and Teredo (`2001::/32`, by its client address). IPv6 addresses outside `2000::/3` that no
/// other category names are `"reserved"`.
pub fn classify(addr: IpAddr) -> Option<&'static str> {
    match addr {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

fn classify_v4(addr: Ipv4Addr) -> Option<&'static str> {
    lookup(IPV4_BLOCKS, IpAddr::V4(addr))
}

fn classify_v6(addr: Ipv6Addr) -> Option<&'static str> {
    if addr.is_unspecified() {
        return Some(UNSPECIFIED);
    }
    if addr.is_loopback() {
        return Some(LOOPBACK);
    }
    if let Some((v4, _)) = embedded_ipv4(addr) {
        return classify_v4(v4);
    }
    if let Some(category) = lookup(IPV6_BLOCKS, IpAddr::V6(addr)) {
        return Some(category);
    }
    if !IPV6_GLOBAL_UNICAST.contains(IpAddr::V6(addr)) {
        return Some(RESERVED);
    }
    None
}

fn lookup(blocks: &[(IpNetwork, &'static str)], addr: IpAddr) -> Option<&'static str> {
    blocks.iter().find(|(block, _)| block.contains(addr)).map(|&(_, category)| category)
}

/// Returns the IPv4 address an IPv6 address carries, with the name of the form that carries it.
/// `::` and `::1` carry none: they are the IPv6 unspecified and loopback addresses.
fn embedded_ipv4(addr: Ipv6Addr) -> Option<(Ipv4Addr, &'static str)> {
    let bits = u128::from(addr);
    let low_32 = Ipv4Addr::from(bits as u32);
    let v6 = IpAddr::V6(addr);
    if let Some(v4) = addr.to_ipv4_mapped() {
        return Some((v4, "IPv4-mapped"));
    }
    if bits >> 32 == 0 && bits > 1 {
        return Some((low_32, "IPv4-compatible"));
    }
    if IPV6_NAT64.contains(v6) {
        return Some((low_32, "NAT64"));
    }
    if IPV6_6TO4.contains(v6) {
        // 2002:AABB:CCDD::/48 carries AA.BB.CC.DD in bits 16 to 47.
        return Some((Ipv4Addr::from((bits >> 80) as u32), "6to4"));
    }
    if IPV6_TEREDO.contains(v6) {
        // The client's address is stored inverted in the last 32 bits (RFC 4380 section 4).
        return Some((Ipv4Addr::from(!(bits as u32)), "Teredo"));
    }
    None
}

/// Returns the address and its IPv4-mapped twin, which name the same destination.
fn same_destination(addr: IpAddr) -> Vec<IpAddr> {
    match addr {
        IpAddr::V4(v4) => vec![addr, IpAddr::V6(v4.to_ipv6_mapped())],
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => vec![addr, IpAddr::V4(v4)],
            None => vec![addr],
        },
    }
}

/// Returns the addresses a deny entry is checked against: the address, its IPv4-mapped twin,
/// and any IPv4 address it embeds, so denying `10.0.0.0/8` also denies `64:ff9b::a00:1`.
fn related_addresses(addr: IpAddr) -> Vec<IpAddr> {
    let mut related = same_destination(addr);
    if let IpAddr::V6(v6) = addr {
        if let Some((v4, _)) = embedded_ipv4(v6) {
            related.extend(same_destination(IpAddr::V4(v4)));
        }
    }
    related
}

// ---------------------------------------------------------------------------------------------
// Decisions

/// The outcome of a check: whether the proxy may connect, and the entry and reason behind it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// `rule` is the allow entry that decided, as written.
    Allow { rule: String },
    /// `rule` is the deny entry that decided, as written, or `None` where no entry did.
    /// `reason` is one or two sentences that state what to change to allow the destination.
    Deny { rule: Option<String>, reason: String },
}

impl Decision {
    pub fn is_allowed(&self) -> bool {
        matches!(self, Decision::Allow { .. })
    }

    fn deny(rule: Option<&Rule>, reason: String) -> Decision {
        Decision::Deny { rule: rule.map(|rule| rule.text.clone()), reason }
    }
}

/// The parsed allow and deny entries of an allowlist.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rules {
    pub allow: Vec<Rule>,
    pub deny: Vec<Rule>,
}

impl Rules {
    /// Parses the entries of a resolved `NetworkMode::Allowlist`, which resolution has already
    /// checked with [`parse_entry`]. Only the syntax is checked here, as [`parse_rule`] does.
    pub fn from_strings<S: AsRef<str>>(allow: &[S], deny: &[S]) -> Result<Rules, PolicyError> {
        Ok(Rules {
            allow: parse_list(allow, EntryList::Allow, "[network] allow entry")?,
            deny: parse_list(deny, EntryList::Deny, "[network] deny entry")?,
        })
    }

    /// Returns the loopback addresses and ports that allow entries name exactly, such as
    /// `127.0.0.1:5432` or `[::1]:8080`, unless a deny entry covers them. Inside a sandbox,
    /// loopback is the sandbox's own, so palisade listens on each of these there and forwards
    /// the connections to the same address and port outside: clients that ignore the proxy
    /// reach the host's service at its usual address.
    pub fn forwarded_ports(&self) -> Vec<SocketAddr> {
        let mut forwarded: Vec<SocketAddr> = Vec::new();
        for socket in self.allow.iter().filter_map(Rule::loopback_socket_addr) {
            let (addr, port) = (socket.ip(), socket.port());
            if !forwarded.contains(&socket) && self.check_address(addr, port, &Target::Ip(addr)).is_allowed() {
                forwarded.push(socket);
            }
        }
        forwarded
    }

    /// Returns the exact names of the allow entries, each with the ports a plain TCP client may
    /// reach it on: the entry's port, or 80 and 443 for an entry without one. Ports a deny
    /// entry covers are left out, and so is a name left with none. Wildcards match names
    /// without end, so they cannot be listed. `localhost` and the names under `.localhost` are
    /// left out too, so a sandbox's hosts file never moves them off loopback (resolution
    /// rejects such entries, but rules built with [`Rules::from_strings`] may hold them).
    pub fn resolvable_names(&self) -> Vec<(String, Vec<u16>)> {
        const DEFAULT_PORTS: [u16; 2] = [80, 443];
        let mut names: Vec<(String, Vec<u16>)> = Vec::new();
        for rule in &self.allow {
            let RuleHost::Name(name) = &rule.host else { continue };
            if is_loopback_name(name) {
                continue;
            }
            let target = Target::Name(name.clone());
            let ports = rule.port.map_or(DEFAULT_PORTS.to_vec(), |port| vec![port]);
            let ports = ports.into_iter().filter(|&port| self.check_request(&target, port).is_allowed());
            let index = match names.iter().position(|(known, _)| known == name) {
                Some(index) => index,
                None => {
                    names.push((name.clone(), Vec::new()));
                    names.len() - 1
                }
            };
            for port in ports {
                if !names[index].1.contains(&port) {
                    names[index].1.push(port);
                }
            }
        }
        names.retain(|(_, ports)| !ports.is_empty());
        names
    }

    /// Counts the ports palisade serves inside the sandbox besides the proxy's: each of
    /// [`Rules::forwarded_ports`] and, with `resolve_allowed`, each port of each of
    /// [`Rules::resolvable_names`]. Resolution rejects more than [`MAX_SERVED_PORTS`].
    pub fn served_port_count(&self, resolve_allowed: bool) -> usize {
        let name_ports = if resolve_allowed { self.resolvable_name_port_count() } else { 0 };
        self.forwarded_ports().len() + name_ports
    }

    /// Counts the ports of [`Rules::resolvable_names`], all names together.
    pub fn resolvable_name_port_count(&self) -> usize {
        self.resolvable_names().iter().map(|(_, ports)| ports.len()).sum()
    }

    /// Decides on a request before any name is resolved. Deny entries win over allow entries.
    /// A name matches only name and wildcard entries, and an address only IP and CIDR entries,
    /// so `CONNECT 1.2.3.4:443` needs an IP entry even when a name on the list resolves to it.
    ///
    /// An allowed request is not yet a connection: [`Rules::check_address`] must pass every
    /// address the proxy connects to, including an IP target.
    pub fn check_request(&self, target: &Target, port: u16) -> Decision {
        if port == 0 {
            return Decision::deny(None, "port 0 is not a valid destination port".into());
        }
        let destination = authority(target, port);
        if let Some(rule) = self.deny.iter().find(|rule| rule.matches_port(port) && denies_target(rule, target)) {
            return Decision::deny(Some(rule), format!("{destination} matches the deny entry '{rule}'"));
        }
        match self.allow.iter().find(|rule| rule.matches_port(port) && allows_target(rule, target)) {
            Some(rule) => Decision::Allow { rule: rule.text.clone() },
            None => Decision::deny(None, not_listed_reason(target, port, &destination)),
        }
    }

    /// Decides on connecting to `addr` on `port` for a request for `via`: an address `via`
    /// resolved to, or the address `via` is.
    ///
    /// Runs [`Rules::check_request`] for `via` first, then applies deny IP and CIDR entries to
    /// `addr`. An internal address (see [`classify`]) is then allowed only by an allow entry of
    /// type IP or CIDR that covers it and the port, never by a name entry. A cloud metadata
    /// address needs an entry for exactly that address, so `169.254.0.0/16` does not expose it.
    pub fn check_address(&self, addr: IpAddr, port: u16, via: &Target) -> Decision {
        if let Target::Ip(requested) = via {
            if !same_destination(*requested).contains(&addr) {
                return Decision::deny(
                    None,
                    format!(
                        "{addr} is not the requested address {requested}, and the proxy connects only to the address it checked"
                    ),
                );
            }
        }
        let request_rule = match self.check_request(via, port) {
            Decision::Allow { rule } => rule,
            denied @ Decision::Deny { .. } => return denied,
        };

        let related = related_addresses(addr);
        if let Some(rule) = self.deny.iter().find(|rule| rule.matches_port(port) && rule.covers_any(&related)) {
            return Decision::deny(
                Some(rule),
                format!("{}, which matches the deny entry '{rule}'", subject(addr, via)),
            );
        }

        let Some(category) = classify(addr) else {
            return Decision::Allow { rule: request_rule };
        };
        let needs_exact = category == METADATA;
        let same = same_destination(addr);
        let reaching = |rule: &&Rule| {
            rule.matches_port(port) && rule.covers_any(&same) && (!needs_exact || rule.is_single_address())
        };
        match self.allow.iter().find(reaching) {
            Some(rule) => Decision::Allow { rule: rule.text.clone() },
            None => Decision::deny(None, internal_reason(addr, port, via, category, &request_rule)),
        }
    }
}

fn parse_list<S: AsRef<str>>(entries: &[S], list: EntryList, what: &'static str) -> Result<Vec<Rule>, PolicyError> {
    let parse_entry = |entry: &S| {
        parse_syntax(entry.as_ref(), list).map_err(|reason| PolicyError::InvalidValue {
            what,
            value: entry.as_ref().to_owned(),
            origin: "in the resolved policy".into(),
            reason,
        })
    };
    entries.iter().map(parse_entry).collect()
}

fn denies_target(rule: &Rule, target: &Target) -> bool {
    match target {
        Target::Name(name) => rule.matches_name(name),
        Target::Ip(addr) => rule.covers_any(&related_addresses(*addr)),
    }
}

fn allows_target(rule: &Rule, target: &Target) -> bool {
    match target {
        Target::Name(name) => rule.matches_name(name),
        Target::Ip(addr) => rule.covers_any(&same_destination(*addr)),
    }
}

/// Formats `host:port`, with brackets around an IPv6 address.
fn authority(target: &Target, port: u16) -> String {
    match target {
        Target::Name(name) => format!("{name}:{port}"),
        Target::Ip(addr) => SocketAddr::new(*addr, port).to_string(),
    }
}

fn not_listed_reason(target: &Target, port: u16, destination: &str) -> String {
    match target {
        Target::Name(name) if is_loopback_name(name) => format!(
            "{destination} is a loopback name, which no allow entry can list. Add the address entries \
             127.0.0.1:{port} and [::1]:{port} to reach the host's service, and connect to {destination} directly, without the proxy"
        ),
        Target::Name(_) => format!(
            "{destination} is not on the allowlist (add {destination} to [network] allow, or pass --allow-domain {destination})"
        ),
        Target::Ip(addr) => {
            let entry = suggested_entry(*addr, port);
            match classify(*addr) {
                Some(LOOPBACK) if is_forwardable(entry.ip()) => format!(
                    "{destination}, a loopback address, is not on the allowlist. The IP entry {entry} would let the proxy reach \
                     the host's service there and make palisade listen at that address in the sandbox, where the command \
                     reaches its own servers directly, without the proxy"
                ),
                Some(category) => format!(
                    "{destination}, {}, is not on the allowlist (an IP address needs an IP entry such as {entry} in [network] allow, because name entries never match addresses)",
                    address_kind(category)
                ),
                None => format!(
                    "{destination} is not on the allowlist (an IP address needs an IP entry such as {entry} in [network] allow, because name entries never match addresses)"
                ),
            }
        }
    }
}

/// Returns the entry to suggest for `addr`: the IPv4 form of an IPv4-mapped address, which
/// covers both forms, and `addr` itself otherwise.
fn suggested_entry(addr: IpAddr, port: u16) -> SocketAddr {
    let addr = match addr {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(addr, IpAddr::V4),
        IpAddr::V4(_) => addr,
    };
    SocketAddr::new(addr, port)
}

/// Returns `true` if an entry for `addr` with a port is forwarded into the sandbox, as
/// [`Rule::loopback_socket_addr`] decides.
fn is_forwardable(addr: IpAddr) -> bool {
    addr.is_loopback()
}

/// Names the address a decision is about, and the name it came from: "example.com resolved to
/// 10.0.0.5" or "10.0.0.5".
fn subject(addr: IpAddr, via: &Target) -> String {
    match via {
        Target::Name(name) => format!("{name} resolved to {}", describe_address(addr)),
        Target::Ip(_) => describe_address(addr),
    }
}

/// Formats an address, naming the IPv4 address an IPv6 form embeds.
fn describe_address(addr: IpAddr) -> String {
    match addr {
        IpAddr::V6(v6) => match embedded_ipv4(v6) {
            Some((v4, form)) => format!("{addr} (the {form} form of {v4})"),
            None => addr.to_string(),
        },
        IpAddr::V4(_) => addr.to_string(),
    }
}

/// Formats "a loopback address", "an unspecified address" and the like.
fn address_kind(category: &str) -> String {
    let article = if category == UNSPECIFIED { "an" } else { "a" };
    format!("{article} {category} address")
}

/// Explains why an internal address is not reached. `request_rule` is the allow entry that let
/// the request for `via` through, which the IP entry has to join when `via` is a name.
fn internal_reason(addr: IpAddr, port: u16, via: &Target, category: &str, request_rule: &str) -> String {
    let kind = address_kind(category);
    let entry = suggested_entry(addr, port);
    match (via, category == METADATA) {
        (Target::Name(_), true) => format!(
            "{}, {kind}, which only an entry for exactly this address reaches, so add the IP entry {entry} beside {request_rule} in [network] allow",
            subject(addr, via)
        ),
        (Target::Name(_), false) => format!(
            "{}, {kind}, which a name entry never reaches, so add the IP entry {entry} beside {request_rule} in [network] allow",
            subject(addr, via)
        ),
        (Target::Ip(_), true) => format!(
            "{} is {kind}, and only an entry for exactly this address, such as {entry}, in [network] allow reaches it",
            subject(addr, via)
        ),
        (Target::Ip(_), false) => format!(
            "{} is {kind}, and only an IP entry such as {entry} in [network] allow reaches it",
            subject(addr, via)
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn name(text: &str) -> Target {
        Target::Name(text.into())
    }

    fn rules(allow: &[&str], deny: &[&str]) -> Rules {
        Rules::from_strings(allow, deny).unwrap()
    }

    fn network(text: &str, prefix_len: u8) -> RuleHost {
        RuleHost::Network(IpNetwork::new(ip(text), prefix_len).unwrap())
    }

    fn reason(decision: &Decision) -> &str {
        match decision {
            Decision::Deny { reason, .. } => reason,
            Decision::Allow { rule } => panic!("expected a denial, got an allow by '{rule}'"),
        }
    }

    /// Returns the deny entry that decided a denial.
    fn deny_rule(decision: &Decision) -> Option<&str> {
        match decision {
            Decision::Deny { rule, .. } => rule.as_deref(),
            Decision::Allow { rule } => panic!("expected a denial, got an allow by '{rule}'"),
        }
    }

    fn allowed_by(rule: &str) -> Decision {
        Decision::Allow { rule: rule.into() }
    }

    #[test]
    fn rule_parse_accepts_valid_entries() {
        let long_label = "a".repeat(63);
        let long_name = format!("{0}.{0}.{0}.{1}.com", "b".repeat(63), "c".repeat(57));
        assert_eq!(long_name.len(), 253);
        let cases: Vec<(&str, RuleHost, Option<u16>)> = vec![
            ("example.com", RuleHost::Name("example.com".into()), None),
            ("Example.COM.", RuleHost::Name("example.com".into()), None),
            ("example.com:443", RuleHost::Name("example.com".into()), Some(443)),
            ("example.com.:1", RuleHost::Name("example.com".into()), Some(1)),
            ("a.b-c.example.com:65535", RuleHost::Name("a.b-c.example.com".into()), Some(65535)),
            ("xn--bcher-kva.de", RuleHost::Name("xn--bcher-kva.de".into()), None),
            ("localhost", RuleHost::Name("localhost".into()), None),
            ("1.2.3.4.example.com", RuleHost::Name("1.2.3.4.example.com".into()), None),
            ("*.example.com", RuleHost::Wildcard("example.com".into()), None),
            ("*.Example.com.:8443", RuleHost::Wildcard("example.com".into()), Some(8443)),
            ("*.co.uk", RuleHost::Wildcard("co.uk".into()), None),
            ("10.0.0.5", network("10.0.0.5", 32), None),
            ("10.0.0.5:5432", network("10.0.0.5", 32), Some(5432)),
            ("::1", network("::1", 128), None),
            ("[::1]", network("::1", 128), None),
            ("[::1]:8080", network("::1", 128), Some(8080)),
            ("[::ffff:127.0.0.1]", network("::ffff:127.0.0.1", 128), None),
            ("FD00::/8", network("fd00::", 8), None),
            ("[fd00::/8]:443", network("fd00::", 8), Some(443)),
            ("10.0.0.0/8", network("10.0.0.0", 8), None),
            ("10.0.0.0/8:443", network("10.0.0.0", 8), Some(443)),
            ("10.0.0.5/32", network("10.0.0.5", 32), None),
            ("0.0.0.0/1", network("0.0.0.0", 1), None),
        ];
        for (text, host, port) in cases {
            let rule = parse_rule(text).unwrap_or_else(|error| panic!("'{text}' was rejected: {error}"));
            assert_eq!(rule.host(), &host, "{text}");
            assert_eq!(rule.port(), port, "{text}");
            assert_eq!(rule.text(), text);
        }
        for text in [long_label.clone(), format!("{long_label}.com"), long_name] {
            assert!(parse_rule(&text).is_ok(), "{text}");
        }
    }

    #[test]
    fn rule_parse_rejects_with_reason() {
        let long_label = format!("{}.com", "a".repeat(64));
        let long_name = format!("{0}.{0}.{0}.{1}.com", "b".repeat(63), "c".repeat(58));
        let long_wildcard = format!("*.{0}.{0}.{0}.{1}.com", "b".repeat(63), "c".repeat(56));
        let cases: Vec<(&str, &str)> = vec![
            ("", "empty"),
            ("*", "too broad"),
            ("*.com", "too broad"),
            ("*.localhost.", "use the address entries 127.0.0.1:PORT and [::1]:PORT"),
            ("a.*.example.com", "first label"),
            ("*example.com", "first label"),
            ("**.example.com", "first label"),
            ("*.*.example.com", "first label"),
            ("ex*.com", "first label"),
            ("example..com", "empty label"),
            ("example.com..", "empty label"),
            (".example.com", "*.example.com"),
            (&long_label, "63 bytes"),
            (&long_name, "253 bytes"),
            (&long_wildcard, "253 bytes"),
            ("exa_mple.com", "'_'"),
            ("example.com!", "'!'"),
            ("-example.com", "'-'"),
            ("example-.com", "'-'"),
            ("bücher.de", "punycode"),
            ("https://example.com", "scheme"),
            ("https://example.com/path", "scheme"),
            ("example.com/path", "path"),
            ("example.com:443/path", "path"),
            ("user@example.com", "user info"),
            ("user:pw@example.com:443", "user info"),
            ("exa%6dple.com", "percent-encoding"),
            ("example .com", "whitespace"),
            (" example.com", "whitespace"),
            ("example.com\t", "whitespace"),
            ("fe80::1%eth0", "zone"),
            ("[fe80::1%25eth0]:80", "zone"),
            ("127.1", "dotted-quad form 127.0.0.1"),
            ("2130706433", "dotted-quad form 127.0.0.1"),
            ("0x7f000001", "dotted-quad form 127.0.0.1"),
            ("0177.0.0.1", "dotted-quad form 127.0.0.1"),
            ("127.0.0.1.", "dotted-quad form 127.0.0.1"),
            ("127.0.0.1.:443", "dotted-quad form 127.0.0.1"),
            ("010.0.0.0/8", "dotted-quad form 8.0.0.0"),
            ("1.2.3.4.5", "not a valid one"),
            ("999.1.1.1", "not a valid one"),
            ("example.123", "not a valid one"),
            ("example.com:0", "1 to 65535"),
            ("example.com:65536", "1 to 65535"),
            ("example.com:", "missing"),
            ("example.com:http", "not a number"),
            ("example.com:+443", "not a number"),
            ("10.0.0.1/8", "10.0.0.0/8"),
            ("fd00::1/8", "fd00::/8"),
            ("fd00::/7", "fc00::/7"),
            ("10.0.0.0/33", "from 0 to 32"),
            ("fd00::/129", "from 0 to 128"),
            ("10.0.0.0/", "from 0 to 32"),
            ("10.0.0.0/x", "from 0 to 32"),
            ("0.0.0.0/0", "too broad"),
            ("::/0", "too broad"),
            ("[10.0.0.1]", "only for IPv6"),
            ("[example.com]:443", "only for IPv6"),
            ("[::1", "no closing"),
            ("::1]", "no opening"),
            ("[::1]x", "after ']'"),
            ("example.com:443:80", "neither host:port nor an IPv6 address"),
            ("::1:8080:", "neither host:port nor an IPv6 address"),
        ];
        for (text, expected) in cases {
            match parse_rule(text) {
                Ok(rule) => panic!("'{text}' was accepted as {rule:?}"),
                Err(reason) => assert!(reason.contains(expected), "'{text}': '{reason}' lacks '{expected}'"),
            }
        }
    }

    #[test]
    fn target_parse_reads_every_ipv4_spelling() {
        let cases = [
            // Spellings that `inet_aton` and browsers read as 127.0.0.1.
            ("127.0.0.1", "127.0.0.1"),
            ("127.1", "127.0.0.1"),
            ("127.0.1", "127.0.0.1"),
            ("2130706433", "127.0.0.1"),
            ("0x7f000001", "127.0.0.1"),
            ("0X7F000001", "127.0.0.1"),
            ("0x7f.1", "127.0.0.1"),
            ("0x7f.0.0x0.01", "127.0.0.1"),
            ("0177.0.0.1", "127.0.0.1"),
            ("0177.1", "127.0.0.1"),
            ("017700000001", "127.0.0.1"),
            ("127.0.0.1.", "127.0.0.1"),
            ("127.1.", "127.0.0.1"),
            ("127.0.0x0.1", "127.0.0.1"),
            ("0000000127.0.0.1", "87.0.0.1"),
            ("0", "0.0.0.0"),
            ("0x", "0.0.0.0"),
            ("0.0x.0.0", "0.0.0.0"),
            ("169.254.169.254", "169.254.169.254"),
            ("2852039166", "169.254.169.254"),
            ("0xa9.0xfe.0xa9.0xfe", "169.254.169.254"),
            ("0251.0376.0251.0376", "169.254.169.254"),
            ("169.254.43518", "169.254.169.254"),
            ("10.99.0.1", "10.99.0.1"),
            ("10.6488065", "10.99.0.1"),
            ("4294967295", "255.255.255.255"),
            ("1.2.3.255", "1.2.3.255"),
        ];
        for (host, expected) in cases {
            assert_eq!(parse_target(host), Ok(Target::Ip(ip(expected))), "{host}");
        }
    }

    #[test]
    fn target_parse_reads_ipv6_with_or_without_brackets() {
        let cases = [
            ("[::1]", "::1"),
            ("::1", "::1"),
            ("[::ffff:127.0.0.1]", "::ffff:127.0.0.1"),
            ("[::FFFF:7f00:1]", "::ffff:127.0.0.1"),
            ("[64:ff9b::7f00:1]", "64:ff9b::7f00:1"),
            ("[fd00:ec2::254]", "fd00:ec2::254"),
        ];
        for (host, expected) in cases {
            assert_eq!(parse_target(host), Ok(Target::Ip(ip(expected))), "{host}");
        }
    }

    #[test]
    fn target_parse_normalises_names() {
        let cases = [
            ("localhost.", "localhost"),
            ("localhost", "localhost"),
            ("Example.COM.", "example.com"),
            ("a.b.example.com", "a.b.example.com"),
            ("1.2.3.4.example.com", "1.2.3.4.example.com"),
            ("0x7f.example", "0x7f.example"),
            ("127.0.0.1.nip.io", "127.0.0.1.nip.io"),
            ("xn--bcher-kva.de", "xn--bcher-kva.de"),
        ];
        for (host, expected) in cases {
            assert_eq!(parse_target(host), Ok(name(expected)), "{host}");
        }
    }

    #[test]
    fn target_parse_rejects_invalid_hosts() {
        let cases = [
            ("1.2.3.4.5", "no valid IPv4"),
            ("999.1.1.1", "no valid IPv4"),
            ("256.0.0.1", "no valid IPv4"),
            ("1.2.3.256", "no valid IPv4"),
            ("1.2.65536", "no valid IPv4"),
            ("4294967296", "no valid IPv4"),
            ("99999999999999999999999", "no valid IPv4"),
            ("127.0.0.09", "no valid IPv4"),
            ("0x7g.1", "no valid IPv4"),
            ("127..1", "no valid IPv4"),
            ("example.123", "no valid IPv4"),
            ("example.0x1", "no valid IPv4"),
            ("[fe80::1%eth0]", "zone"),
            ("fe80::1%25eth0", "zone"),
            ("%31%32%37.0.0.1", "percent-encoding"),
            ("[::1", "no closing"),
            ("[127.0.0.1]", "not a valid IPv6"),
            ("[::1]:443", "after ']'"),
            ("example.com:443", "not a valid IPv6"),
            ("", "empty"),
            (".", "empty"),
            ("exa mple.com", "whitespace"),
            ("a..b", "empty label"),
            ("*.example.com", "'*'"),
            ("under_score.example.com", "'_'"),
            ("bücher.de", "punycode"),
        ];
        for (host, expected) in cases {
            match parse_target(host) {
                Ok(target) => panic!("'{host}' was accepted as {target:?}"),
                Err(reason) => assert!(reason.contains(expected), "'{host}': '{reason}' lacks '{expected}'"),
            }
        }
    }

    #[test]
    fn classify_names_internal_ranges() {
        let cases = [
            ("127.0.0.1", LOOPBACK),
            ("127.255.255.254", LOOPBACK),
            ("0.0.0.0", UNSPECIFIED),
            ("0.1.2.3", "\"this network\""),
            ("10.0.0.0", "private"),
            ("10.99.0.1", "private"),
            ("172.16.0.1", "private"),
            ("172.31.255.255", "private"),
            ("192.168.1.1", "private"),
            ("100.64.0.1", "carrier-grade NAT"),
            ("100.127.255.255", "carrier-grade NAT"),
            ("169.254.0.1", "link-local"),
            ("169.254.169.254", METADATA),
            ("169.254.170.2", METADATA),
            ("100.100.100.200", METADATA),
            ("168.63.129.16", METADATA),
            ("224.0.0.1", "multicast"),
            ("239.255.255.250", "multicast"),
            ("255.255.255.255", "broadcast"),
            ("240.0.0.1", RESERVED),
            ("192.0.0.8", RESERVED),
            ("198.18.0.1", "benchmarking"),
            ("198.19.255.255", "benchmarking"),
            ("192.0.2.1", "documentation"),
            ("198.51.100.1", "documentation"),
            ("203.0.113.1", "documentation"),
            ("::", UNSPECIFIED),
            ("::1", LOOPBACK),
            ("fe80::1", "link-local"),
            ("febf:ffff::1", "link-local"),
            ("fec0::1", "site-local"),
            ("fc00::1", "unique-local"),
            ("fd12:3456::1", "unique-local"),
            ("fd00:ec2::254", METADATA),
            ("ff02::1", "multicast"),
            ("2001:db8::1", "documentation"),
            ("3fff::1", "documentation"),
            ("2001:2::1", "benchmarking"),
            ("100::1", "discard-only"),
            ("64:ff9b:1::1", "local-use NAT64"),
            ("1::1", RESERVED),
            ("4000::1", RESERVED),
            // IPv6 forms that embed an IPv4 address are judged by that address.
            ("::ffff:127.0.0.1", LOOPBACK),
            ("::ffff:7f00:2", LOOPBACK),
            ("::127.0.0.1", LOOPBACK),
            ("64:ff9b::127.0.0.1", LOOPBACK),
            ("2002:7f00:1::", LOOPBACK),
            ("2001:0:4136:e378:8000:63bf:80ff:fffe", LOOPBACK),
            ("::ffff:169.254.169.254", METADATA),
            ("::169.254.169.254", METADATA),
            ("64:ff9b::a9fe:a9fe", METADATA),
            ("2002:a9fe:a9fe::1", METADATA),
            ("::ffff:10.0.0.1", "private"),
            ("64:ff9b::192.168.0.1", "private"),
            ("::ffff:0.0.0.0", UNSPECIFIED),
            ("::2", "\"this network\""),
        ];
        for (addr, expected) in cases {
            assert_eq!(classify(ip(addr)), Some(expected), "{addr}");
        }
    }

    #[test]
    fn classify_passes_public_addresses() {
        let public = [
            "1.1.1.1",
            "8.8.8.8",
            "93.184.216.34",
            "172.15.255.255",
            "172.32.0.0",
            "100.63.255.255",
            "100.128.0.0",
            "169.253.255.255",
            "198.17.255.255",
            "198.20.0.0",
            "223.255.255.255",
            "2606:4700::1111",
            "2a00:1450:4001::200e",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
            "2002:808:808::1",
            "2001:db7:ffff::1",
        ];
        for addr in public {
            assert_eq!(classify(ip(addr)), None, "{addr}");
        }
    }

    #[test]
    fn classify_tables_have_no_host_bits() {
        for (block, category) in IPV4_BLOCKS.iter().chain(IPV6_BLOCKS) {
            assert_eq!(IpNetwork::new(block.addr, block.prefix_len).as_ref(), Ok(block), "{block} ({category})");
        }
    }

    #[test]
    fn request_deny_wins_over_allow() {
        let rules = rules(&["*.example.com", "example.com"], &["secret.example.com", "example.com:80"]);
        let denied = rules.check_request(&name("secret.example.com"), 443);
        assert_eq!(deny_rule(&denied), Some("secret.example.com"));
        assert_eq!(reason(&denied), "secret.example.com:443 matches the deny entry 'secret.example.com'");
        assert_eq!(deny_rule(&rules.check_request(&name("example.com"), 80)), Some("example.com:80"));
        assert_eq!(rules.check_request(&name("example.com"), 443), allowed_by("example.com"));
        assert_eq!(rules.check_request(&name("api.example.com"), 443), allowed_by("*.example.com"));
    }

    /// Matching a suffix without a label boundary let `nottrusted.net` pass for `trusted.net` in
    /// tinyproxy (tinyproxy/tinyproxy#627).
    #[test]
    fn request_wildcard_needs_one_more_label() {
        let rules = rules(&["*.example.com"], &[]);
        for host in ["a.example.com", "a.b.example.com", "x-1.y.z.example.com"] {
            assert!(rules.check_request(&name(host), 443).is_allowed(), "{host}");
        }
        for host in ["example.com", "badexample.com", "example.com.evil.net", "aexample.com", "com"] {
            assert!(!rules.check_request(&name(host), 443).is_allowed(), "{host}");
        }
    }

    #[test]
    fn request_exact_name_excludes_subdomains() {
        let rules = rules(&["example.com"], &[]);
        assert!(rules.check_request(&name("example.com"), 443).is_allowed());
        assert!(!rules.check_request(&name("www.example.com"), 443).is_allowed());
        let parsed = parse_target("EXAMPLE.com.").unwrap();
        assert!(rules.check_request(&parsed, 443).is_allowed());
    }

    #[test]
    fn request_port_limits_the_entry() {
        let rules = rules(&["example.com:443", "any.example.org", "[::1]:8080", "10.0.0.5:5432"], &[]);
        assert!(rules.check_request(&name("example.com"), 443).is_allowed());
        assert!(!rules.check_request(&name("example.com"), 80).is_allowed());
        for port in [1, 80, 443, 65535] {
            assert!(rules.check_request(&name("any.example.org"), port).is_allowed(), "{port}");
        }
        assert!(rules.check_request(&Target::Ip(ip("::1")), 8080).is_allowed());
        assert!(!rules.check_request(&Target::Ip(ip("::1")), 8081).is_allowed());
        assert!(rules.check_request(&Target::Ip(ip("10.0.0.5")), 5432).is_allowed());
        assert!(!rules.check_request(&Target::Ip(ip("10.0.0.5")), 5433).is_allowed());
    }

    #[test]
    fn request_port_zero_is_denied() {
        let rules = rules(&["example.com"], &[]);
        let decision = rules.check_request(&name("example.com"), 0);
        assert!(reason(&decision).contains("port 0"), "{decision:?}");
    }

    #[test]
    fn request_names_and_addresses_never_cross() {
        let by_name = rules(&["example.com", "localhost"], &[]);
        let decision = by_name.check_request(&Target::Ip(ip("93.184.216.34")), 443);
        assert!(reason(&decision).contains("not on the allowlist"), "{decision:?}");
        assert!(reason(&decision).contains("IP entry such as 93.184.216.34:443"), "{decision:?}");
        let loopback = by_name.check_request(&parse_target("127.0.0.1").unwrap(), 80);
        assert!(!loopback.is_allowed());

        let by_address = rules(&["127.0.0.1", "93.184.216.34:443"], &[]);
        assert!(!by_address.check_request(&name("localhost"), 80).is_allowed());
        assert!(!by_address.check_request(&name("example.com"), 443).is_allowed());
        assert_eq!(by_address.check_request(&Target::Ip(ip("93.184.216.34")), 443), allowed_by("93.184.216.34:443"));
    }

    #[test]
    fn request_unlisted_name_names_the_fix() {
        let decision = rules(&["example.com"], &[]).check_request(&name("example.org"), 443);
        assert_eq!(deny_rule(&decision), None);
        assert_eq!(
            reason(&decision),
            "example.org:443 is not on the allowlist (add example.org:443 to [network] allow, or pass --allow-domain example.org:443)"
        );
    }

    #[test]
    fn request_cidr_edges() {
        let rules = rules(&["10.0.0.0/8", "fd00::/8", "192.168.1.128/25:22"], &[]);
        let cases = [
            ("10.0.0.0", 1, true),
            ("10.255.255.255", 1, true),
            ("9.255.255.255", 1, false),
            ("11.0.0.0", 1, false),
            ("fd00::", 1, true),
            ("fdff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 1, true),
            ("fc00::", 1, false),
            ("fe00::", 1, false),
            ("192.168.1.128", 22, true),
            ("192.168.1.255", 22, true),
            ("192.168.1.127", 22, false),
            ("192.168.1.200", 23, false),
            ("::ffff:10.1.2.3", 1, true),
        ];
        for (addr, port, allowed) in cases {
            assert_eq!(rules.check_request(&Target::Ip(ip(addr)), port).is_allowed(), allowed, "{addr}:{port}");
        }
    }

    #[test]
    fn request_ip_deny_covers_embedded_forms() {
        let rules = rules(&["::/1", "0.0.0.0/1"], &["10.0.0.0/8"]);
        for addr in ["10.0.0.1", "::ffff:10.0.0.1", "64:ff9b::a00:1", "::10.0.0.1"] {
            let decision = rules.check_request(&Target::Ip(ip(addr)), 443);
            assert_eq!(deny_rule(&decision), Some("10.0.0.0/8"), "{addr}");
        }
    }

    /// A proxy that checks names only is bypassed by requesting an address, in any spelling
    /// clients accept. Every one of these reaches a loopback, metadata or private address.
    #[test]
    fn internal_address_spellings_are_denied() {
        let rules = rules(&["example.com", "*.example.com", "localhost"], &[]);
        let hosts = [
            ("127.0.0.1", 18081),
            ("127.1", 18081),
            ("2130706433", 18081),
            ("0x7f000001", 18081),
            ("0177.0.0.1", 18081),
            ("0x7f.1", 18081),
            ("127.0.0.1.", 18081),
            ("[::1]", 18081),
            ("[::ffff:127.0.0.1]", 18081),
            ("[64:ff9b::7f00:1]", 18081),
            ("[2002:7f00:1::]", 18081),
            ("169.254.169.254", 80),
            ("[::ffff:169.254.169.254]", 80),
            ("[fd00:ec2::254]", 80),
            ("10.99.0.1", 80),
            ("127.0.0.3", 18080),
        ];
        for (host, port) in hosts {
            let target = parse_target(host).unwrap();
            let Target::Ip(addr) = target else { panic!("'{host}' was read as a name") };
            assert!(!rules.check_request(&target, port).is_allowed(), "{host}");
            assert!(!rules.check_address(addr, port, &target).is_allowed(), "{host}");
        }

        // localhost is a name, so a name entry allows the request, and the address it resolves
        // to is what the proxy denies.
        for host in ["localhost", "localhost.", "LOCALHOST"] {
            let target = parse_target(host).unwrap();
            assert_eq!(target, name("localhost"));
            assert!(rules.check_request(&target, 18081).is_allowed(), "{host}");
            for addr in ["127.0.0.1", "::1"] {
                let decision = rules.check_address(ip(addr), 18081, &target);
                assert!(reason(&decision).contains("loopback"), "{host} -> {addr}: {decision:?}");
            }
        }
    }

    #[test]
    fn address_loopback_reason_names_the_ip_entry() {
        let rules = rules(&["dev.example.com", "*.example.org", "127.0.0.1:5432"], &[]);
        let decision = rules.check_address(ip("127.0.0.1"), 18081, &name("dev.example.com"));
        assert_eq!(
            reason(&decision),
            "dev.example.com resolved to 127.0.0.1, a loopback address, which a name entry never reaches, \
             so add the IP entry 127.0.0.1:18081 beside dev.example.com in [network] allow"
        );
        let decision = rules.check_address(ip("::ffff:127.0.0.2"), 18080, &name("api.example.org"));
        assert_eq!(
            reason(&decision),
            "api.example.org resolved to ::ffff:127.0.0.2 (the IPv4-mapped form of 127.0.0.2), a loopback address, \
             which a name entry never reaches, so add the IP entry 127.0.0.2:18080 beside *.example.org in [network] allow"
        );

        let direct = Target::Ip(ip("127.0.0.1"));
        for decision in [rules.check_request(&direct, 18081), rules.check_address(ip("127.0.0.1"), 18081, &direct)] {
            assert_eq!(
                reason(&decision),
                "127.0.0.1:18081, a loopback address, is not on the allowlist. The IP entry 127.0.0.1:18081 would let \
                 the proxy reach the host's service there and make palisade listen at that address in the sandbox, \
                 where the command reaches its own servers directly, without the proxy"
            );
        }
        let decision = rules.check_request(&Target::Ip(ip("93.184.216.34")), 443);
        assert!(reason(&decision).starts_with("93.184.216.34:443 is not on the allowlist"), "{decision:?}");
    }

    #[test]
    fn address_loopback_reason_suggests_a_forwarded_entry() {
        let rules = rules(&["example.com"], &[]);
        let cases = [
            ("::1", "[::1]:8080, a loopback address", "The IP entry [::1]:8080 would let"),
            ("::ffff:127.0.0.1", "[::ffff:127.0.0.1]:8080, a loopback address", "The IP entry 127.0.0.1:8080 would let"),
            ("127.0.0.2", "127.0.0.2:8080, a loopback address", "The IP entry 127.0.0.2:8080 would let"),
        ];
        for (addr, start, entry) in cases {
            let decision = rules.check_request(&Target::Ip(ip(addr)), 8080);
            assert!(reason(&decision).starts_with(start), "{addr}: {decision:?}");
            assert!(reason(&decision).contains(entry), "{addr}: {decision:?}");
            assert!(reason(&decision).contains("make palisade listen at that address"), "{addr}: {decision:?}");
        }

        // An entry for a NAT64 form names a different destination and is not forwarded, so the
        // reason does not promise a listener.
        let decision = rules.check_request(&Target::Ip(ip("64:ff9b::7f00:1")), 8080);
        assert_eq!(
            reason(&decision),
            "[64:ff9b::7f00:1]:8080, a loopback address, is not on the allowlist (an IP address needs an IP entry \
             such as [64:ff9b::7f00:1]:8080 in [network] allow, because name entries never match addresses)"
        );
    }

    #[test]
    fn request_loopback_name_names_the_address_entries() {
        let rules = rules(&["example.com"], &[]);
        for host in ["localhost", "LOCALHOST.", "app.localhost"] {
            let target = parse_target(host).unwrap();
            let decision = rules.check_request(&target, 5432);
            let expected = format!(
                "{target}:5432 is a loopback name, which no allow entry can list. Add the address entries \
                 127.0.0.1:5432 and [::1]:5432 to reach the host's service, and connect to {target}:5432 directly, without the proxy"
            );
            assert_eq!(reason(&decision), expected, "{host}");
        }
    }

    #[test]
    fn address_internal_needs_an_ip_entry() {
        let rules = rules(&["localhost", "127.0.0.1:18081", "[::1]:18081", "10.0.0.0/8"], &[]);
        let localhost = name("localhost");
        assert_eq!(rules.check_address(ip("127.0.0.1"), 18081, &localhost), allowed_by("127.0.0.1:18081"));
        assert_eq!(rules.check_address(ip("::1"), 18081, &localhost), allowed_by("[::1]:18081"));
        assert!(!rules.check_address(ip("127.0.0.1"), 18082, &localhost).is_allowed());
        assert!(!rules.check_address(ip("127.0.0.2"), 18081, &localhost).is_allowed());
        assert_eq!(rules.check_address(ip("10.1.2.3"), 22, &localhost), allowed_by("10.0.0.0/8"));
        assert!(!rules.check_address(ip("192.168.0.1"), 22, &localhost).is_allowed());

        // The IPv4-mapped twin is the same destination, so the IPv4 entry covers it. NAT64 and
        // 6to4 forms are different destinations and need their own entry.
        assert!(rules.check_address(ip("::ffff:127.0.0.1"), 18081, &localhost).is_allowed());
        assert!(!rules.check_address(ip("64:ff9b::7f00:1"), 18081, &localhost).is_allowed());
        assert!(!rules.check_address(ip("2002:7f00:1::"), 18081, &localhost).is_allowed());

        let decision = rules.check_address(ip("64:ff9b::7f00:1"), 18081, &localhost);
        assert!(reason(&decision).contains("the NAT64 form of 127.0.0.1"), "{decision:?}");
    }

    #[test]
    fn address_metadata_needs_an_exact_entry() {
        let covered_by_cidr = rules(&["metadata.example.com", "169.254.0.0/16"], &[]);
        let via = name("metadata.example.com");
        for addr in ["169.254.169.254", "::ffff:169.254.169.254"] {
            let decision = covered_by_cidr.check_address(ip(addr), 80, &via);
            assert!(reason(&decision).contains("cloud metadata"), "{addr}: {decision:?}");
            assert!(reason(&decision).contains("exactly this address"), "{addr}: {decision:?}");
        }
        assert_eq!(covered_by_cidr.check_address(ip("169.254.1.1"), 80, &via), allowed_by("169.254.0.0/16"));

        // The CIDR entry lets the request for the address through, and the address check stops it.
        let direct = Target::Ip(ip("169.254.169.254"));
        assert!(covered_by_cidr.check_request(&direct, 80).is_allowed());
        let decision = covered_by_cidr.check_address(ip("169.254.169.254"), 80, &direct);
        assert_eq!(
            reason(&decision),
            "169.254.169.254 is a cloud metadata address, and only an entry for exactly this address, \
             such as 169.254.169.254:80, in [network] allow reaches it"
        );

        let exact = rules(&["169.254.169.254:80"], &[]);
        assert_eq!(exact.check_address(ip("169.254.169.254"), 80, &direct), allowed_by("169.254.169.254:80"));
        assert!(!exact.check_address(ip("169.254.169.254"), 443, &direct).is_allowed());
    }

    #[test]
    fn address_public_is_allowed_by_the_name_entry() {
        let rules = rules(&["example.com"], &[]);
        let via = name("example.com");
        assert_eq!(rules.check_address(ip("93.184.216.34"), 443, &via), allowed_by("example.com"));
        assert_eq!(rules.check_address(ip("2606:2800:220:1::1"), 443, &via), allowed_by("example.com"));
        assert!(!rules.check_address(ip("93.184.216.34"), 443, &name("example.org")).is_allowed());
    }

    #[test]
    fn address_deny_entries_apply_to_resolved_addresses() {
        let rules =
            rules(&["example.com", "*.example.com", "10.0.0.0/8"], &["93.184.216.0/24", "10.1.0.0/16", "[::1]"]);
        let via = name("www.example.com");
        for addr in ["93.184.216.34", "::ffff:93.184.216.34", "64:ff9b::5db8:d822", "2002:5db8:d822::1"] {
            let decision = rules.check_address(ip(addr), 443, &via);
            assert_eq!(deny_rule(&decision), Some("93.184.216.0/24"), "{addr}");
            assert!(reason(&decision).starts_with("www.example.com resolved to"), "{decision:?}");
        }
        // The deny entry wins over the wider allow entry for an internal address too.
        assert_eq!(deny_rule(&rules.check_address(ip("10.1.2.3"), 443, &via)), Some("10.1.0.0/16"));
        assert_eq!(deny_rule(&rules.check_address(ip("::1"), 443, &via)), Some("[::1]"));
        assert!(rules.check_address(ip("10.2.0.1"), 443, &via).is_allowed());
    }

    #[test]
    fn address_rechecks_the_request() {
        let rules = rules(&["example.com", "1.1.1.1"], &["blocked.example.com"]);
        let decision = rules.check_address(ip("1.1.1.1"), 443, &name("blocked.example.com"));
        assert_eq!(deny_rule(&decision), Some("blocked.example.com"));
        let decision = rules.check_address(ip("8.8.8.8"), 443, &Target::Ip(ip("1.1.1.1")));
        assert!(reason(&decision).contains("not the requested address"), "{decision:?}");
        assert!(rules.check_address(ip("::ffff:1.1.1.1"), 443, &Target::Ip(ip("1.1.1.1"))).is_allowed());
    }

    #[test]
    fn address_metadata_via_name_names_both_entries() {
        let rules = rules(&["metadata.example.com:80"], &[]);
        let decision = rules.check_address(ip("::ffff:169.254.169.254"), 80, &name("metadata.example.com"));
        assert_eq!(
            reason(&decision),
            "metadata.example.com resolved to ::ffff:169.254.169.254 (the IPv4-mapped form of 169.254.169.254), \
             a cloud metadata address, which only an entry for exactly this address reaches, so add the IP entry \
             169.254.169.254:80 beside metadata.example.com:80 in [network] allow"
        );
    }

    #[test]
    fn entry_rejects_loopback_names_in_allow() {
        let cases = [
            ("localhost", "127.0.0.1:PORT and [::1]:PORT"),
            ("LOCALHOST.", "127.0.0.1:PORT and [::1]:PORT"),
            ("localhost:5432", "127.0.0.1:5432 and [::1]:5432"),
            ("localhost.:5432", "127.0.0.1:5432 and [::1]:5432"),
            ("*.localhost", "127.0.0.1:PORT and [::1]:PORT"),
            ("*.localhost.:8080", "127.0.0.1:8080 and [::1]:8080"),
            ("app.localhost", "127.0.0.1:PORT and [::1]:PORT"),
            ("a.b.Localhost:3000", "127.0.0.1:3000 and [::1]:3000"),
            ("*.app.localhost", "127.0.0.1:PORT and [::1]:PORT"),
        ];
        for (text, expected) in cases {
            match parse_entry(text, EntryList::Allow) {
                Ok(rule) => panic!("'{text}' was accepted as {rule:?}"),
                Err(reason) => {
                    assert!(reason.contains("resolve to loopback addresses"), "'{text}': {reason}");
                    assert!(reason.contains(expected), "'{text}': '{reason}' lacks '{expected}'");
                }
            }
        }
        for text in ["localhost.example.com", "xlocalhost", "localhost-dev.test:80", "*.localhost.example.com"] {
            assert!(parse_entry(text, EntryList::Allow).is_ok(), "{text}");
        }
    }

    #[test]
    fn entry_accepts_loopback_names_in_deny() {
        for text in ["localhost", "localhost:5432", "app.localhost"] {
            assert!(parse_entry(text, EntryList::Deny).is_ok(), "{text}");
        }
        let reason = parse_entry("*.localhost", EntryList::Deny).unwrap_err();
        assert!(reason.contains("too broad"), "{reason}");
    }

    #[test]
    fn entry_too_broad_hint_fits_the_list() {
        for text in ["*", "0.0.0.0/0", "::/0", "[::/0]:443"] {
            let allow = parse_entry(text, EntryList::Allow).unwrap_err();
            assert!(allow.ends_with("so use --net full to allow every destination"), "'{text}': {allow}");
            let deny = parse_entry(text, EntryList::Deny).unwrap_err();
            assert!(deny.ends_with("so use network mode none (--net none) to reject every destination"), "'{text}': {deny}");
        }
    }

    #[test]
    fn from_strings_keeps_the_deny_hint() {
        let error = Rules::from_strings(&["example.com"], &["*"]).unwrap_err().to_string();
        assert!(error.contains("--net none"), "{error}");
    }

    /// An IPv6 address without brackets takes no port, so what looks like a port is part of the
    /// address. An entry with a port is written `[::1]:8080`.
    #[test]
    fn unbracketed_ipv6_has_no_port() {
        let rule = parse_entry("::1:8080", EntryList::Allow).unwrap();
        assert_eq!(rule.host(), &network("::1:8080", 128));
        assert_eq!(rule.port(), None);
        let bracketed = parse_entry("[::1]:8080", EntryList::Allow).unwrap();
        assert_eq!(bracketed.host(), &network("::1", 128));
        assert_eq!(bracketed.port(), Some(8080));
    }

    /// An IPv6 block that contains `::ffff:0:0/96` reaches every IPv4 address, internal ones
    /// included, in both forms, because an IPv4-mapped address is the same destination as the
    /// IPv4 address it maps.
    #[test]
    fn ipv6_block_covers_mapped_internal_addresses() {
        for block in ["::/1", "::ffff:0:0/96"] {
            let rules = rules(&[block], &[]);
            for addr in ["::ffff:127.0.0.1", "::ffff:10.0.0.1", "::ffff:192.168.1.1", "127.0.0.1", "10.0.0.1"] {
                let target = Target::Ip(ip(addr));
                assert_eq!(rules.check_request(&target, 80), allowed_by(block), "{block} {addr}");
                assert_eq!(rules.check_address(ip(addr), 80, &target), allowed_by(block), "{block} {addr}");
            }
        }
        // The metadata address still needs an entry for exactly itself.
        let rules = rules(&["::ffff:0:0/96"], &[]);
        let target = Target::Ip(ip("::ffff:169.254.169.254"));
        assert!(!rules.check_address(ip("::ffff:169.254.169.254"), 80, &target).is_allowed());
    }

    #[test]
    fn loopback_socket_needs_address_and_port() {
        let cases = [
            ("127.0.0.1:5432", Some("127.0.0.1:5432")),
            ("[::1]:8080", Some("[::1]:8080")),
            ("127.0.0.2:80", Some("127.0.0.2:80")),
            ("127.0.0.1", None),
            ("127.0.0.0/8:80", None),
            ("[::ffff:127.0.0.1]:80", None),
            ("10.0.0.5:22", None),
            ("db.test:5432", None),
        ];
        for (text, expected) in cases {
            let expected = expected.map(|socket| socket.parse::<SocketAddr>().unwrap());
            assert_eq!(parse_rule(text).unwrap().loopback_socket_addr(), expected, "{text}");
        }
    }

    #[test]
    fn served_ports_count_forwards_and_names() {
        let rules = Rules::from_strings(
            &["127.0.0.1:5432", "[::1]:5432", "127.0.0.1:5432", "127.0.0.1:6379", "git.test:22", "api.test", "*.cdn.test"],
            &["127.0.0.1:6379"],
        )
        .unwrap();
        assert_eq!(rules.forwarded_ports().len(), 2);
        assert_eq!(rules.resolvable_name_port_count(), 3);
        assert_eq!(rules.served_port_count(false), 2);
        assert_eq!(rules.served_port_count(true), 5);
    }

    #[test]
    fn resolvable_names_leave_out_loopback_names() {
        let rules = Rules::from_strings(&["localhost", "app.localhost:3000", "git.test:22"], &[]).unwrap();
        assert_eq!(rules.resolvable_names(), [("git.test".to_owned(), vec![22])]);
    }

    #[test]
    fn from_strings_names_the_bad_entry() {
        let error = Rules::from_strings(&["example.com"], &["https://evil.example"]).unwrap_err().to_string();
        assert!(error.contains("[network] deny entry 'https://evil.example'"), "{error}");
        assert!(error.contains("scheme"), "{error}");
        let parsed = Rules::from_strings(&["Example.com:443"], &[]).unwrap();
        assert_eq!(parsed.allow[0].text(), "Example.com:443");
        assert!(parsed.deny.is_empty());
    }

    #[test]
    fn loopback_entries_with_a_port_are_forwarded() {
        let rules = Rules::from_strings(
            &["127.0.0.1:5432", "[::1]:8080", "127.0.0.2", "127.0.0.0/8:80", "10.0.0.5:22", "db.test:5432", "127.0.0.1:6379", "127.0.0.1:5432"],
            &["127.0.0.1:6379"],
        )
        .unwrap();
        let forwarded: Vec<String> = rules.forwarded_ports().iter().map(ToString::to_string).collect();
        assert_eq!(forwarded, ["127.0.0.1:5432", "[::1]:8080"]);
    }

    #[test]
    fn exact_names_are_resolvable_on_their_ports() {
        let rules = Rules::from_strings(
            &["git.test:22", "api.test", "*.cdn.test", "10.0.0.1:80", "git.test:2222", "blocked.test:443"],
            &["api.test:80", "blocked.test"],
        )
        .unwrap();
        let names = rules.resolvable_names();
        assert_eq!(names, [("git.test".to_owned(), vec![22, 2222]), ("api.test".to_owned(), vec![443])]);
    }
}
