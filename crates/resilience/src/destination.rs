//! Which addresses an upstream may be reached at: an upstream URL (or a DNS answer for it)
//! pointing into the deployment's own networks (loopback, private ranges, link-local and cloud
//! metadata addresses) would let whoever controls the URL or its DNS reach internal services
//! (server-side request forgery). Such addresses are refused unless the upstream's
//! configuration allows their range; a host name is resolved, checked and connected to by the
//! same addresses, so a second DNS answer cannot slip another one in.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

/// A range that is refused unless allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Restricted {
    Loopback,
    Private,
    LinkLocal,
    /// Unspecified, multicast, broadcast, documentation and other special-purpose addresses:
    /// never a real upstream, never allowed by name (a CIDR can still allow one).
    Special,
}

impl Restricted {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Loopback => "loopback",
            Self::Private => "private",
            Self::LinkLocal => "link-local",
            Self::Special => "special-purpose",
        }
    }
}

/// The range `ip` falls in, if it is restricted.
pub fn restricted(ip: IpAddr) -> Option<Restricted> {
    match ip {
        IpAddr::V4(ip) => restricted_v4(ip),
        IpAddr::V6(ip) => match ip.to_ipv4_mapped() {
            Some(mapped) => restricted_v4(mapped),
            None => restricted_v6(ip),
        },
    }
}

fn restricted_v4(ip: Ipv4Addr) -> Option<Restricted> {
    let [a, b, ..] = ip.octets();
    if ip.is_loopback() {
        Some(Restricted::Loopback)
    } else if ip.is_private() || (a == 100 && (64..128).contains(&b)) {
        // RFC 1918 and the carrier-grade NAT range, where cluster networks often live.
        Some(Restricted::Private)
    } else if ip.is_link_local() {
        // 169.254.0.0/16, cloud metadata services included.
        Some(Restricted::LinkLocal)
    } else if ip.is_unspecified()
        || ip.is_multicast()
        || ip.is_broadcast()
        || ip.is_documentation()
        || a == 0
        || a >= 240
    {
        Some(Restricted::Special)
    } else {
        None
    }
}

fn restricted_v6(ip: Ipv6Addr) -> Option<Restricted> {
    let first = ip.segments()[0];
    if ip.is_loopback() {
        Some(Restricted::Loopback)
    } else if first & 0xfe00 == 0xfc00 {
        Some(Restricted::Private)
    } else if first & 0xffc0 == 0xfe80 {
        Some(Restricted::LinkLocal)
    } else if ip.is_unspecified()
        || ip.is_multicast()
        || first == 0x2001 && ip.segments()[1] == 0x0db8
    {
        Some(Restricted::Special)
    } else {
        None
    }
}

/// What an upstream's configuration allows beyond public addresses: `loopback`, `private`,
/// `link-local`, or CIDR ranges (`10.20.0.0/16`, `fd00::/8`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowedNetworks {
    ranges: Vec<Restricted>,
    cidrs: Vec<(IpAddr, u8)>,
}

impl AllowedNetworks {
    pub fn parse<'a>(entries: impl IntoIterator<Item = &'a str>) -> Result<Self, String> {
        let mut allowed = Self::default();
        for entry in entries {
            match entry.trim() {
                "loopback" => allowed.ranges.push(Restricted::Loopback),
                "private" => allowed.ranges.push(Restricted::Private),
                "link-local" => allowed.ranges.push(Restricted::LinkLocal),
                cidr => allowed.cidrs.push(parse_cidr(cidr).ok_or_else(|| {
                    format!(
                        "allowed_networks: {cidr:?} is not loopback, private, link-local or a CIDR range"
                    )
                })?),
            }
        }
        Ok(allowed)
    }

    /// Whether a connection to `ip` may be made.
    pub fn permits(&self, ip: IpAddr) -> Result<(), Restricted> {
        let Some(range) = restricted(ip) else {
            return Ok(());
        };
        if self.ranges.contains(&range)
            || self.cidrs.iter().any(|&(net, bits)| in_cidr(ip, net, bits))
        {
            Ok(())
        } else {
            Err(range)
        }
    }
}

fn parse_cidr(text: &str) -> Option<(IpAddr, u8)> {
    let (address, bits) = text.split_once('/')?;
    let address: IpAddr = address.parse().ok()?;
    let bits: u8 = bits.parse().ok()?;
    let max = if address.is_ipv4() { 32 } else { 128 };
    (bits <= max).then_some((address, bits))
}

fn in_cidr(ip: IpAddr, net: IpAddr, bits: u8) -> bool {
    match (ip, net) {
        (IpAddr::V4(ip), IpAddr::V4(net)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(bits)).unwrap_or(0);
            u32::from(ip) & mask == u32::from(net) & mask
        }
        (IpAddr::V6(ip), IpAddr::V6(net)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(bits)).unwrap_or(0);
            u128::from(ip) & mask == u128::from(net) & mask
        }
        _ => false,
    }
}

/// Checks an address literal in `url` (host names are checked at each resolution); the error
/// names the upstream, the address and its range.
pub fn check_url(upstream: &str, url: &url::Url, allowed: &AllowedNetworks) -> Result<(), String> {
    let literal = match url.host() {
        Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip),
        Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip),
        _ => return Ok(()),
    };
    allowed
        .permits(literal)
        .map_err(|range| refusal(upstream, literal, range))
}

/// The message of a refused address, naming the upstream and what would allow it.
pub fn refusal(upstream: &str, ip: IpAddr, range: Restricted) -> String {
    format!(
        "upstream {upstream}: {ip} is a {} address; refused unless allowed_networks names its range",
        range.as_str()
    )
}

/// The resolver of a guarded upstream: resolves, drops what is not allowed, and hands the rest
/// to the connector (which then connects to exactly these addresses).
#[derive(Debug, Clone)]
pub(crate) struct GuardedResolver {
    pub(crate) upstream: Arc<str>,
    pub(crate) allowed: Arc<AllowedNetworks>,
}

impl GuardedResolver {
    /// The addresses of a resolution that may be connected to; an error naming the first
    /// refused one when none may.
    pub(crate) fn filter(&self, addresses: Vec<SocketAddr>) -> Result<Vec<SocketAddr>, String> {
        let mut refused = None;
        let permitted: Vec<SocketAddr> = addresses
            .into_iter()
            .filter(|address| match self.allowed.permits(address.ip()) {
                Ok(()) => true,
                Err(range) => {
                    refused.get_or_insert((address.ip(), range));
                    false
                }
            })
            .collect();
        match (permitted.is_empty(), refused) {
            (true, Some((ip, range))) => Err(refusal(&self.upstream, ip, range)),
            _ => Ok(permitted),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("address")
    }

    #[test]
    fn internal_ranges_are_restricted_and_public_ones_are_not() {
        assert_eq!(restricted(ip("127.0.0.1")), Some(Restricted::Loopback));
        assert_eq!(restricted(ip("::1")), Some(Restricted::Loopback));
        assert_eq!(restricted(ip("::ffff:10.0.0.1")), Some(Restricted::Private));
        assert_eq!(restricted(ip("172.20.1.1")), Some(Restricted::Private));
        assert_eq!(restricted(ip("100.100.1.1")), Some(Restricted::Private));
        assert_eq!(restricted(ip("fd12::1")), Some(Restricted::Private));
        assert_eq!(
            restricted(ip("169.254.169.254")),
            Some(Restricted::LinkLocal)
        );
        assert_eq!(restricted(ip("fe80::1")), Some(Restricted::LinkLocal));
        assert_eq!(restricted(ip("0.0.0.0")), Some(Restricted::Special));
        assert_eq!(restricted(ip("224.0.0.1")), Some(Restricted::Special));
        assert_eq!(restricted(ip("93.184.216.34")), None);
        assert_eq!(restricted(ip("2606:4700::1111")), None);
    }

    #[test]
    fn only_what_is_named_is_allowed() {
        let none = AllowedNetworks::default();
        assert_eq!(none.permits(ip("127.0.0.1")), Err(Restricted::Loopback));
        assert_eq!(none.permits(ip("93.184.216.34")), Ok(()));
        let loopback = AllowedNetworks::parse(["loopback"]).expect("valid");
        assert_eq!(loopback.permits(ip("127.0.0.1")), Ok(()));
        assert_eq!(loopback.permits(ip("10.0.0.1")), Err(Restricted::Private));
        let cidr = AllowedNetworks::parse(["10.20.0.0/16", "fd00::/8"]).expect("valid");
        assert_eq!(cidr.permits(ip("10.20.3.4")), Ok(()));
        assert_eq!(cidr.permits(ip("10.21.0.1")), Err(Restricted::Private));
        assert_eq!(cidr.permits(ip("fd00::5")), Ok(()));
        assert!(AllowedNetworks::parse(["intranet"]).is_err());
        assert!(AllowedNetworks::parse(["10.0.0.0/33"]).is_err());
    }

    #[test]
    fn a_resolution_keeps_the_permitted_addresses_and_names_a_refused_one() {
        let guard = GuardedResolver {
            upstream: Arc::from("orders"),
            allowed: Arc::new(AllowedNetworks::default()),
        };
        let public: SocketAddr = "93.184.216.34:0".parse().expect("address");
        let internal: SocketAddr = "10.0.0.7:0".parse().expect("address");
        assert_eq!(guard.filter(vec![internal, public]), Ok(vec![public]));
        let error = guard.filter(vec![internal]).expect_err("refused");
        assert!(
            error.contains("orders") && error.contains("10.0.0.7") && error.contains("private"),
            "{error}"
        );
    }
}
