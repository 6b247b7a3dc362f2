//! `no_proxy`: the destinations reached directly, read as curl and Go's `httpproxy` read the
//! list, so that the `NO_PROXY` a host already has means the same to certconn.
//!
//! An entry is `*` (everything); a host name, which covers its subdomains too, written alone
//! or with a leading `.` or `*.`; an IP address; or a block of addresses in CIDR notation
//! (`10.0.0.0/8`, `fd00::/8`), which covers destinations written as addresses, not names (a
//! name is not looked up to see whether it falls in a block). A name or an address may carry
//! `:port` to cover that port only.
//!
//! Each entry is read once, when the proxy is opened. In the config a mistake is an error at
//! its line (`check`): read loosely, a URL (`https://ca.corp.example`) or a bad port
//! (`ca.corp.example:99999`) used to pass as some other destination, and a CIDR block as a
//! host name that nothing matches, so the connection went through the proxy unannounced. In
//! `NO_PROXY`, which other tools on the host share, an entry certconn cannot read is left out
//! with a warning.

use std::net::IpAddr;

use super::{port_number, split_host_port};

/// One `no_proxy` entry, read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Entry {
    /// `*`.
    Everything,
    /// A host name and its subdomains (lower case, without a leading or trailing dot).
    Name { domain: String, port: Option<u16> },
    /// One IP address.
    Address { addr: IpAddr, port: Option<u16> },
    /// The addresses whose first `prefix` bits are `network`'s.
    Block { network: IpAddr, prefix: u8 },
}

/// How an entry is written, for the errors that refuse one.
pub(super) const SHAPES: &str = "write a host name (it covers its subdomains; `.corp.example` \
     and `*.corp.example` too), an IP address, a CIDR block (10.0.0.0/8), any of the first two \
     with :port, or * for everything";

impl Entry {
    /// Reads one entry (already trimmed), or says why it is not one.
    pub(super) fn parse(text: &str) -> Result<Self, String> {
        if text == "*" {
            return Ok(Self::Everything);
        }
        if text.is_empty() {
            return Err("an empty entry".into());
        }
        if text.contains("://") {
            return Err("a URL: write the host alone, without scheme or path".into());
        }
        if text
            .chars()
            .any(|c| c.is_whitespace() || c == '@' || c == ',')
        {
            return Err("a space, `@` or `,` in the entry: write one host per entry".into());
        }
        if let Some((network, prefix)) = text.split_once('/') {
            return block(network, prefix);
        }
        let (host, port) = host_and_port(text)?;
        if let Ok(addr) = host.parse::<IpAddr>() {
            return Ok(Self::Address {
                addr: canonical(addr),
                port,
            });
        }
        let name = host
            .strip_prefix("*.")
            .or_else(|| host.strip_prefix('.'))
            .unwrap_or(host);
        let name = name.strip_suffix('.').unwrap_or(name);
        if name.is_empty() || name.contains('*') {
            return Err(
                "a wildcard other than `*` alone or a leading `*.`: no_proxy has no patterns"
                    .into(),
            );
        }
        if name.contains(':') || name.contains('[') || name.contains(']') {
            return Err(
                "not an IPv6 address (write one in brackets to give a port: [fd00::5]:443)".into(),
            );
        }
        if !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_')
        {
            return Err("a host name has letters, digits, `-`, `_` and dots only".into());
        }
        Ok(Self::Name {
            domain: name.to_ascii_lowercase(),
            port,
        })
    }

    /// Whether `host:port` (a name, or an address with or without brackets) is this entry's.
    pub(super) fn covers(&self, host: &str, port: u16) -> bool {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let port_ok = |p: &Option<u16>| p.is_none_or(|p| p == port);
        match (self, host.parse::<IpAddr>()) {
            (Self::Everything, _) => true,
            (Self::Address { addr, port: p }, Ok(ip)) => port_ok(p) && canonical(ip) == *addr,
            (Self::Block { network, prefix }, Ok(ip)) => in_block(canonical(ip), *network, *prefix),
            (Self::Name { domain, port: p }, Err(_)) => {
                let host = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
                port_ok(p)
                    && (host == *domain
                        || host
                            .strip_suffix(domain.as_str())
                            .is_some_and(|rest| rest.ends_with('.')))
            }
            _ => false,
        }
    }
}

/// `host` or `host:port` (IPv6 in brackets), the port checked.
fn host_and_port(text: &str) -> Result<(&str, Option<u16>), String> {
    let bracketed = text.starts_with('[');
    let has_port = if bracketed {
        text.contains("]:")
    } else {
        text.matches(':').count() == 1
    };
    if bracketed && !text.ends_with(']') && !has_port {
        return Err("an IPv6 address in brackets is [address] or [address]:port".into());
    }
    let (host, _) = split_host_port(text);
    let port = if has_port {
        Some(port_number(text.rsplit_once(':').map_or("", |(_, p)| p))?)
    } else {
        None
    };
    if bracketed && host.parse::<std::net::Ipv6Addr>().is_err() {
        return Err(format!("{host:?} in brackets is not an IPv6 address"));
    }
    Ok((host, port))
}

/// `network/prefix`: the network an address, the prefix length within its family's bits.
fn block(network: &str, prefix: &str) -> Result<Entry, String> {
    let network: IpAddr = network
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .map_err(|_| {
            format!("{network:?} is not an IP address: a CIDR block is address/length (10.0.0.0/8)")
        })?;
    let bits = if network.is_ipv4() { 32 } else { 128 };
    let prefix = prefix
        .parse::<u8>()
        .ok()
        .filter(|p| *p <= bits)
        .ok_or_else(|| format!("{prefix:?} is not a prefix length (0 to {bits})"))?;
    Ok(Entry::Block {
        network: canonical(network),
        prefix,
    })
}

/// An IPv4-mapped IPv6 address (`::ffff:10.0.0.5`) as the IPv4 address it is.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

fn in_block(ip: IpAddr, network: IpAddr, prefix: u8) -> bool {
    let (ip, network, bits) = match (ip, network) {
        (IpAddr::V4(a), IpAddr::V4(n)) => (u32::from(a) as u128, u32::from(n) as u128, 32),
        (IpAddr::V6(a), IpAddr::V6(n)) => (u128::from(a), u128::from(n), 128),
        _ => return false,
    };
    if prefix == 0 {
        return true;
    }
    let shift = bits - u32::from(prefix);
    ip >> shift == network >> shift
}

#[cfg(test)]
mod tests {
    use super::*;

    fn covers(entry: &str, host: &str, port: u16) -> bool {
        Entry::parse(entry)
            .unwrap_or_else(|e| panic!("{entry}: {e}"))
            .covers(host, port)
    }

    #[test]
    fn names_cover_themselves_and_their_subdomains_however_written() {
        for entry in [
            "corp.example",
            ".corp.example",
            "*.corp.example",
            "CORP.example.",
        ] {
            assert!(covers(entry, "corp.example", 443), "{entry}");
            assert!(covers(entry, "ndes.corp.example", 443), "{entry}");
            assert!(covers(entry, "NDES.Corp.Example.", 443), "{entry}");
            assert!(!covers(entry, "evilcorp.example", 443), "{entry}");
            assert!(!covers(entry, "corp.example.net", 443), "{entry}");
        }
        assert!(covers("ca.lan:8443", "ca.lan", 8443));
        assert!(!covers("ca.lan:8443", "ca.lan", 443));
        // A name does not cover an address, nor an address a name.
        assert!(!covers("localhost", "127.0.0.1", 80));
        assert!(!covers("127.0.0.1", "localhost", 80));
        assert!(covers("*", "anything.example", 1) && covers("*", "::1", 1));
    }

    #[test]
    fn addresses_and_blocks_cover_addresses_in_either_notation() {
        assert!(covers("10.0.0.7", "10.0.0.7", 80));
        assert!(!covers("10.0.0.7", "10.0.0.8", 80));
        assert!(
            covers("10.0.0.7:8443", "10.0.0.7", 8443) && !covers("10.0.0.7:8443", "10.0.0.7", 443)
        );
        assert!(covers("[::1]", "::1", 443) && covers("::1", "[::1]", 443));
        assert!(
            covers("[fd00::5]:8443", "fd00::5", 8443) && !covers("[fd00::5]:8443", "fd00::5", 1)
        );
        assert!(covers("10.0.0.0/8", "10.200.3.4", 443));
        assert!(!covers("10.0.0.0/8", "11.0.0.1", 443));
        assert!(covers("192.168.4.0/22", "192.168.7.255", 443));
        assert!(!covers("192.168.4.0/22", "192.168.8.0", 443));
        assert!(covers("10.0.0.0/8", "::ffff:10.1.2.3", 443));
        assert!(covers("fd00::/8", "fd12:3456::1", 443));
        assert!(!covers("fd00::/8", "fe80::1", 443));
        assert!(covers("0.0.0.0/0", "203.0.113.9", 1) && !covers("0.0.0.0/0", "::1", 1));
        assert!(covers("10.1.2.3/32", "10.1.2.3", 1) && !covers("10.1.2.3/32", "10.1.2.4", 1));
        // A block covers addresses, not names (no lookup).
        assert!(!covers("10.0.0.0/8", "ca.corp.example", 443));
    }

    #[test]
    fn entries_that_are_not_destinations_are_refused_with_the_reason() {
        for (entry, says) in [
            ("https://ca.corp.example", "URL"),
            ("ca.corp.example:99999", "not a port"),
            ("ca.corp.example:0", "not a port"),
            ("ca.corp.example:https", "not a port"),
            ("10.0.0.0/33", "prefix length"),
            ("10.0.0.0/x", "prefix length"),
            ("ca.example/8", "not an IP address"),
            ("ca.*.example", "wildcard"),
            ("*.", "wildcard"),
            ("ca example", "space"),
            ("a.example,b.example", "one host per entry"),
            ("user@proxy", "`@`"),
            ("fd00::5:8443:x", "IPv6"),
            ("[ca.example]:443", "not an IPv6 address"),
            ("[fd00::5", "brackets"),
            ("ca_é.example", "letters, digits"),
            ("", "empty"),
        ] {
            let err = Entry::parse(entry).expect_err(entry);
            assert!(err.contains(says), "{entry}: {err}");
        }
    }
}
