//! Where a request comes from: its TCP peer, or, when that peer is one of
//! the `--trusted-proxies`, the client the proxies name in
//! `X-Forwarded-For` (or `Forwarded: for=`).
//!
//! Why the rightmost address that is not itself a trusted proxy: each proxy
//! appends the address it took the request from, so only the entries our
//! own proxies appended can be believed; anything to the left of them is
//! whatever the client chose to send. Whether the peer is trusted is
//! decided once per connection, so an untrusted peer (every peer, unless
//! the setting is given) costs nothing per request.

use std::{net::IpAddr, str::FromStr};

use http::{Extensions, HeaderMap, HeaderName, header::FORWARDED};
use ipnet::IpNet;
use tonic::transport::server::TcpConnectInfo;

/// The most networks `--trusted-proxies` takes: each check walks them all.
pub const MAX_TRUSTED_PROXIES: usize = 64;

/// The networks whose connections may name the client they forward.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    /// No proxy trusted: every source is the TCP peer.
    pub fn none() -> TrustedProxies {
        TrustedProxies(Vec::new())
    }

    /// Comma-separated addresses or CIDRs (`10.0.0.0/8, ::1`); an empty
    /// text trusts none.
    pub fn parse(text: &str) -> Result<TrustedProxies, String> {
        let mut networks = Vec::new();
        for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let network = match IpNet::from_str(item) {
                Ok(network) => network.trunc(),
                Err(_) => match IpAddr::from_str(item) {
                    Ok(address) => IpNet::from(canonical(address)),
                    Err(_) => {
                        return Err(format!(
                            "{item:?} is not an IP address or a CIDR (such as 10.0.0.0/8 or fd00::/8)"
                        ));
                    }
                },
            };
            networks.push(network);
        }
        if networks.len() > MAX_TRUSTED_PROXIES {
            return Err(format!(
                "{} networks given; at most {MAX_TRUSTED_PROXIES} (use wider CIDRs)",
                networks.len()
            ));
        }
        Ok(TrustedProxies(networks))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `address` (read as IPv4 when it is IPv4-mapped) is one of
    /// the trusted proxies.
    pub fn contains(&self, address: IpAddr) -> bool {
        let address = canonical(address);
        self.0.iter().any(|network| network.contains(&address))
    }

    /// The client behind a request that came from a trusted proxy: the
    /// rightmost address in `X-Forwarded-For` (all such headers, in
    /// order), or when there is none in `Forwarded`'s `for=`, that is not
    /// itself trusted. `None` when the headers name nobody (the proxy
    /// itself is then the source). An entry that is not an address (a
    /// port-less `unknown`, an obfuscated name) ends the walk at the
    /// trusted hop to its right: nothing left of it can be believed.
    pub fn client(&self, headers: &HeaderMap) -> Option<IpAddr> {
        const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
        let mut hops: Vec<&str> = headers
            .get_all(X_FORWARDED_FOR)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .collect();
        if hops.is_empty() {
            hops = headers
                .get_all(FORWARDED)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .filter_map(forwarded_for)
                .collect();
        }
        let mut nearest = None;
        for hop in hops.iter().rev() {
            let Some(address) = hop_address(hop) else {
                break;
            };
            if !self.contains(address) {
                return Some(address);
            }
            nearest = Some(address);
        }
        nearest
    }
}

/// The request's source as the serving layer recorded it: the client a
/// trusted proxy named ([`Forwarded`]), else the TCP peer. `None` for a
/// request that did not come over a socket (the router driven directly).
pub fn of(extensions: &Extensions) -> Option<IpAddr> {
    if let Some(Forwarded(address)) = extensions.get::<Forwarded>() {
        return Some(*address);
    }
    extensions
        .get::<TcpConnectInfo>()
        .and_then(TcpConnectInfo::remote_addr)
        .map(|a| canonical(a.ip()))
}

/// The client a trusted proxy forwarded the request for; put in the
/// request's extensions by the serving layer, read by [`of`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Forwarded(pub IpAddr);

/// Put in a request's extensions by the serving layer when its peer is one
/// of the trusted proxies: only then are the headers a proxy sets about the
/// original request (its method and URI, an audience) believed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ViaTrustedProxy;

/// Whether the request came from a trusted proxy (see [`ViaTrustedProxy`]).
pub fn via_trusted_proxy(extensions: &Extensions) -> bool {
    extensions.get::<ViaTrustedProxy>().is_some()
}

/// What per-source limits count against: an IPv4 address, or an IPv6 /64
/// (one host is usually given a whole /64, so counting each of its
/// addresses apart would give it 2^64 budgets).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Group {
    V4(u32),
    V6(u64),
}

impl Group {
    pub fn of(address: IpAddr) -> Group {
        match canonical(address) {
            IpAddr::V4(a) => Group::V4(a.to_bits()),
            IpAddr::V6(a) => Group::V6((a.to_bits() >> 64) as u64),
        }
    }
}

/// An IPv4-mapped IPv6 address (`::ffff:10.0.0.1`, what a dual-stack
/// socket reports for an IPv4 peer) as the IPv4 address it is.
pub fn canonical(address: IpAddr) -> IpAddr {
    address.to_canonical()
}

/// The `for=` value of one `Forwarded` element (`for=192.0.2.60;proto=http`,
/// `For="[2001:db8::1]:4711"`).
fn forwarded_for(element: &str) -> Option<&str> {
    element.split(';').find_map(|pair| {
        let (name, value) = pair.split_once('=')?;
        name.trim()
            .eq_ignore_ascii_case("for")
            .then(|| value.trim().trim_matches('"'))
    })
}

/// The address in one hop: bare (`192.0.2.1`, `2001:db8::1`), with a port
/// (`192.0.2.1:8080`), or bracketed (`[2001:db8::1]`, `[2001:db8::1]:80`).
fn hop_address(hop: &str) -> Option<IpAddr> {
    let hop = hop.trim();
    if let Ok(address) = IpAddr::from_str(hop) {
        return Some(canonical(address));
    }
    let host = match hop.strip_prefix('[') {
        Some(rest) => rest.split_once(']')?.0,
        None => {
            let (host, port) = hop.rsplit_once(':')?;
            port.parse::<u16>().ok()?;
            host
        }
    };
    IpAddr::from_str(host).ok().map(canonical)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                value.parse().unwrap(),
            );
        }
        headers
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn trusted_proxies_are_addresses_or_networks() {
        let trusted = TrustedProxies::parse(" 10.0.0.0/8, ::1 ,192.168.1.7/16").unwrap();
        assert!(trusted.contains(ip("10.1.2.3")));
        assert!(trusted.contains(ip("::ffff:10.1.2.3")), "IPv4-mapped");
        assert!(trusted.contains(ip("::1")));
        assert!(trusted.contains(ip("192.168.200.1")), "host bits dropped");
        assert!(!trusted.contains(ip("11.0.0.1")));
        assert!(!trusted.contains(ip("::2")));
        assert!(TrustedProxies::parse("").unwrap().is_empty());
        for bad in ["10.0.0.0/33", "example.com", "10.0.0.1:80", "10.0.0.0/8,x"] {
            let error = TrustedProxies::parse(bad).unwrap_err();
            assert!(
                error.contains("not an IP address or a CIDR"),
                "{bad}: {error}"
            );
        }
        let many = vec!["10.0.0.1"; MAX_TRUSTED_PROXIES + 1].join(",");
        assert!(TrustedProxies::parse(&many).is_err());
    }

    #[test]
    fn the_client_is_the_rightmost_untrusted_hop() {
        let trusted = TrustedProxies::parse("10.0.0.0/8").unwrap();
        let client = |pairs: &[(&str, &str)]| trusted.client(&headers(pairs));
        // What the client sent itself (1.1.1.1) is left of the real hop.
        assert_eq!(
            client(&[("x-forwarded-for", "1.1.1.1, 203.0.113.9, 10.0.0.2")]),
            Some(ip("203.0.113.9"))
        );
        // Several header lines are one list, in order.
        assert_eq!(
            client(&[
                ("x-forwarded-for", "1.1.1.1"),
                ("x-forwarded-for", "203.0.113.9:5555, 10.0.0.2")
            ]),
            Some(ip("203.0.113.9"))
        );
        assert_eq!(
            client(&[("x-forwarded-for", "[2001:db8::1]:443")]),
            Some(ip("2001:db8::1"))
        );
        assert_eq!(
            client(&[("x-forwarded-for", "::ffff:203.0.113.9")]),
            Some(ip("203.0.113.9"))
        );
        // Only trusted hops: the furthest one.
        assert_eq!(
            client(&[("x-forwarded-for", "10.0.0.3, 10.0.0.2")]),
            Some(ip("10.0.0.3"))
        );
        // Garbage stops the walk at the trusted hop right of it.
        assert_eq!(
            client(&[("x-forwarded-for", "1.1.1.1, unknown, 10.0.0.2")]),
            Some(ip("10.0.0.2"))
        );
        assert_eq!(client(&[("x-forwarded-for", "nonsense")]), None);
        assert_eq!(client(&[]), None);
        // Forwarded only when there is no X-Forwarded-For.
        assert_eq!(
            client(&[(
                "forwarded",
                "for=1.1.1.1, For=\"[2001:db8:cafe::17]:4711\";proto=https, for=10.0.0.9"
            )]),
            Some(ip("2001:db8:cafe::17"))
        );
        assert_eq!(
            client(&[
                ("forwarded", "for=1.1.1.1"),
                ("x-forwarded-for", "203.0.113.9")
            ]),
            Some(ip("203.0.113.9"))
        );
    }
}
