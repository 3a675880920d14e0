//! Which IP addresses a plugin's HTTP request may connect to.
//!
//! Only *public unicast* addresses are reachable by default. Everything the
//! IANA special-purpose registries set aside — loopback, RFC 1918 private
//! networks, carrier-grade NAT, link-local (where cloud metadata services
//! such as `169.254.169.254` live), unique-local IPv6, multicast, broadcast,
//! unspecified, documentation, benchmarking and reserved ranges — is refused
//! unless the operator lists it in `http_allow_private`. IPv6 forms that
//! embed an IPv4 address (IPv4-mapped, IPv4-compatible, NAT64, 6to4) are
//! judged by the embedded address; Teredo is refused outright. So is every
//! address of one of this machine's own interfaces ([`own_address`]): a
//! public address there is reached over loopback, past a firewall that
//! guards it from outside.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A CIDR range such as `10.0.0.0/8` or `fd00::/8`; a bare address is a
/// range of one (`127.0.0.1` = `127.0.0.1/32`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IpRange {
    network: IpAddr,
    prefix: u8,
}

impl IpRange {
    /// Parse `address[/prefix]`.
    ///
    /// # Errors
    /// A message naming the text when it is not an address, the prefix is
    /// too long for the address family, or the address has bits set past
    /// the prefix (`10.0.0.1/8`: write `10.0.0.0/8`).
    pub fn parse(text: &str) -> Result<IpRange, String> {
        let (addr, prefix) = match text.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (text, None),
        };
        let network: IpAddr = addr
            .parse()
            .map_err(|_| format!("`{text}` is not an IP address or CIDR range"))?;
        let max = match network {
            IpAddr::V4(_) => 32,
            IpAddr::V6(_) => 128,
        };
        let prefix = match prefix {
            None => max,
            Some(p) => match p.parse::<u8>() {
                // Plain decimal only: no sign, no leading zeros.
                Ok(n) if n <= max && p == n.to_string() => n,
                _ => {
                    return Err(format!(
                        "`{text}`: prefix length must be a number from 0 to {max}"
                    ));
                }
            },
        };
        let range = IpRange { network, prefix };
        if range.mask(network) != network {
            return Err(format!(
                "`{text}` has bits set past the /{prefix} prefix; write `{}/{prefix}`",
                range.mask(network)
            ));
        }
        Ok(range)
    }

    fn mask(&self, ip: IpAddr) -> IpAddr {
        match ip {
            IpAddr::V4(v4) => {
                let bits = u32::from(v4);
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                IpAddr::V4(Ipv4Addr::from(bits & mask))
            }
            IpAddr::V6(v6) => {
                let bits = u128::from(v6);
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                IpAddr::V6(Ipv6Addr::from(bits & mask))
            }
        }
    }

    /// Whether `ip` lies in this range (IPv4-mapped IPv6 addresses count as
    /// their IPv4 address).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        match (self.network, ip) {
            (IpAddr::V4(_), IpAddr::V4(_)) | (IpAddr::V6(_), IpAddr::V6(_)) => {
                self.mask(ip) == self.network
            }
            _ => false,
        }
    }
}

impl fmt::Display for IpRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let max = match self.network {
            IpAddr::V4(_) => 32,
            IpAddr::V6(_) => 128,
        };
        if self.prefix == max {
            write!(f, "{}", self.network)
        } else {
            write!(f, "{}/{}", self.network, self.prefix)
        }
    }
}

impl Serialize for IpRange {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for IpRange {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<IpRange, D::Error> {
        let text = String::deserialize(deserializer)?;
        IpRange::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// Why an address is not public, or `None` for a public unicast address.
///
/// # Security
/// This is the DNS-rebinding and SSRF guard: every address a request would
/// connect to goes through it, after resolution, and the connection is made
/// to the vetted address itself.
pub(crate) fn special_purpose(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => special_v4(v4),
        IpAddr::V6(v6) => special_v6(v6),
    }
}

/// How long a listing of this machine's addresses is used before it is
/// made again (an address added to an interface is refused from then on).
const OWN_ADDRESSES_TTL: Duration = Duration::from_secs(5);

/// A listing of this machine's interface addresses (or why there is none)
/// and when it was made.
type Listing = (Instant, Result<Vec<IpAddr>, String>);

/// The last listing.
static OWN_ADDRESSES: Mutex<Option<Listing>> = Mutex::new(None);

/// Why `ip` may not be reached for being this machine's own: an address of
/// one of its interfaces (a public one among them is reached over
/// loopback, past any firewall that guards it from outside), or any
/// address at all while the interfaces cannot be listed (fail closed).
pub(crate) fn own_address(ip: IpAddr) -> Option<String> {
    let ip = ip.to_canonical();
    let mut cached = OWN_ADDRESSES.lock().unwrap_or_else(PoisonError::into_inner);
    let fresh = cached
        .as_ref()
        .is_some_and(|(listed, _)| listed.elapsed() < OWN_ADDRESSES_TTL);
    if !fresh {
        let listed = if_addrs::get_if_addrs()
            .map(|interfaces| {
                interfaces
                    .iter()
                    .map(|interface| interface.ip().to_canonical())
                    .collect()
            })
            .map_err(|e| e.to_string());
        // Said once a failing spell, where the operator looks: every
        // plugin's HTTP is refused until it lists again.
        let was_listed = cached.as_ref().is_none_or(|(_, last)| last.is_ok());
        if let Err(e) = &listed
            && was_listed
        {
            tracing::error!(
                target: "airlock::http",
                error = %e,
                "this machine's interface addresses cannot be listed (getifaddrs needs an AF_NETLINK socket): every plugin HTTP request is refused until they can be"
            );
        }
        *cached = Some((Instant::now(), listed));
    }
    match cached.as_ref().map(|(_, listed)| listed) {
        Some(Ok(own)) => judge_own(ip, own),
        Some(Err(e)) => Some(format!(
            "not checked against this machine's own addresses, which could not be listed ({e})"
        )),
        None => Some("not checked against this machine's own addresses".to_owned()),
    }
}

/// For tests: this machine's listing, with `extra` among its addresses,
/// used for the next [`OWN_ADDRESSES_TTL`] (a public address of its own
/// cannot be added to a test machine).
#[cfg(test)]
pub(crate) fn pretend_own(extra: IpAddr) {
    let mut listed: Vec<IpAddr> = if_addrs::get_if_addrs()
        .unwrap_or_default()
        .iter()
        .map(|interface| interface.ip().to_canonical())
        .collect();
    listed.push(extra);
    *OWN_ADDRESSES.lock().unwrap_or_else(PoisonError::into_inner) = Some((Instant::now(), Ok(listed)));
}

fn judge_own(ip: IpAddr, own: &[IpAddr]) -> Option<String> {
    own.contains(&ip)
        .then(|| "an address of this machine's own interfaces".to_owned())
}

fn in_v4(ip: Ipv4Addr, network: [u8; 4], prefix: u32) -> bool {
    let mask = u32::MAX.checked_shl(32 - prefix).unwrap_or(0);
    u32::from(ip) & mask == u32::from(Ipv4Addr::from(network)) & mask
}

fn special_v4(ip: Ipv4Addr) -> Option<&'static str> {
    // (network, prefix, reason), most specific first where ranges nest.
    const RANGES: &[([u8; 4], u32, &str)] = &[
        ([0, 0, 0, 0], 32, "unspecified"),
        ([0, 0, 0, 0], 8, "\"this network\" (0.0.0.0/8)"),
        ([10, 0, 0, 0], 8, "private (10.0.0.0/8)"),
        ([100, 64, 0, 0], 10, "carrier-grade NAT (100.64.0.0/10)"),
        ([127, 0, 0, 0], 8, "loopback"),
        (
            [169, 254, 169, 254],
            32,
            "link-local: the cloud metadata service",
        ),
        ([169, 254, 0, 0], 16, "link-local (169.254.0.0/16)"),
        ([172, 16, 0, 0], 12, "private (172.16.0.0/12)"),
        // Not special to IANA, but reached only from inside Azure, where
        // it is the host agent (WireServer): goal state, extension
        // settings — the platform's metadata service in all but name.
        (
            [168, 63, 129, 16],
            32,
            "Azure's host agent (WireServer, 168.63.129.16): a cloud metadata service",
        ),
        (
            [192, 0, 0, 0],
            24,
            "IETF protocol assignments (192.0.0.0/24)",
        ),
        ([192, 0, 2, 0], 24, "documentation (192.0.2.0/24)"),
        ([192, 88, 99, 0], 24, "6to4 relay anycast (192.88.99.0/24)"),
        ([192, 168, 0, 0], 16, "private (192.168.0.0/16)"),
        ([198, 18, 0, 0], 15, "benchmarking (198.18.0.0/15)"),
        ([198, 51, 100, 0], 24, "documentation (198.51.100.0/24)"),
        ([203, 0, 113, 0], 24, "documentation (203.0.113.0/24)"),
        ([224, 0, 0, 0], 4, "multicast"),
        ([255, 255, 255, 255], 32, "broadcast"),
        ([240, 0, 0, 0], 4, "reserved (240.0.0.0/4)"),
    ];
    RANGES
        .iter()
        .find(|(network, prefix, _)| in_v4(ip, *network, *prefix))
        .map(|(_, _, reason)| *reason)
}

fn in_v6(ip: Ipv6Addr, network: [u16; 8], prefix: u32) -> bool {
    let mask = u128::MAX.checked_shl(128 - prefix).unwrap_or(0);
    u128::from(ip) & mask == u128::from(Ipv6Addr::from(network)) & mask
}

fn embedded_v4(bits: u128) -> Ipv4Addr {
    // The low 32 bits; truncation is the point.
    Ipv4Addr::from((bits & 0xffff_ffff) as u32)
}

fn special_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let bits = u128::from(ip);
    if ip.is_unspecified() {
        return Some("unspecified");
    }
    if ip.is_loopback() {
        return Some("loopback");
    }
    // ::ffff:a.b.c.d reaches the IPv4 address.
    if in_v6(ip, [0, 0, 0, 0, 0, 0xffff, 0, 0], 96) {
        return special_v4(embedded_v4(bits));
    }
    // The deprecated IPv4-compatible ::a.b.c.d has no legitimate use.
    if in_v6(ip, [0; 8], 96) {
        return special_v4(embedded_v4(bits)).or(Some("IPv4-compatible IPv6 (::/96)"));
    }
    // NAT64 well-known prefix: judged by the IPv4 address it translates to.
    if in_v6(ip, [0x64, 0xff9b, 0, 0, 0, 0, 0, 0], 96) {
        return special_v4(embedded_v4(bits));
    }
    if in_v6(ip, [0x64, 0xff9b, 1, 0, 0, 0, 0, 0], 48) {
        return Some("local-use NAT64 (64:ff9b:1::/48)");
    }
    // 6to4: 2002:AABB:CCDD::/48 routes to AA.BB.CC.DD.
    if in_v6(ip, [0x2002, 0, 0, 0, 0, 0, 0, 0], 16) {
        let v4 = Ipv4Addr::from(((bits >> 80) & 0xffff_ffff) as u32);
        return special_v4(v4);
    }
    const RANGES: &[([u16; 8], u32, &str)] = &[
        ([0x100, 0, 0, 0, 0, 0, 0, 0], 64, "discard-only (100::/64)"),
        ([0x2001, 0, 0, 0, 0, 0, 0, 0], 32, "Teredo (2001::/32)"),
        (
            [0x2001, 0x2, 0, 0, 0, 0, 0, 0],
            48,
            "benchmarking (2001:2::/48)",
        ),
        (
            [0x2001, 0x10, 0, 0, 0, 0, 0, 0],
            28,
            "ORCHID (2001:10::/28)",
        ),
        (
            [0x2001, 0x20, 0, 0, 0, 0, 0, 0],
            28,
            "ORCHIDv2 (2001:20::/28)",
        ),
        (
            [0x2001, 0xdb8, 0, 0, 0, 0, 0, 0],
            32,
            "documentation (2001:db8::/32)",
        ),
        (
            [0x3fff, 0, 0, 0, 0, 0, 0, 0],
            20,
            "documentation (3fff::/20)",
        ),
        (
            [0x5f00, 0, 0, 0, 0, 0, 0, 0],
            16,
            "segment routing (5f00::/16)",
        ),
        ([0xfc00, 0, 0, 0, 0, 0, 0, 0], 7, "unique local (fc00::/7)"),
        ([0xfe80, 0, 0, 0, 0, 0, 0, 0], 10, "link-local (fe80::/10)"),
        ([0xfec0, 0, 0, 0, 0, 0, 0, 0], 10, "site-local (fec0::/10)"),
        ([0xff00, 0, 0, 0, 0, 0, 0, 0], 8, "multicast"),
    ];
    if let Some((_, _, reason)) = RANGES
        .iter()
        .find(|(network, prefix, _)| in_v6(ip, *network, *prefix))
    {
        return Some(reason);
    }
    // Only 2000::/3 is allocated for global unicast; the rest is reserved.
    if !in_v6(ip, [0x2000, 0, 0, 0, 0, 0, 0, 0], 3) {
        return Some("reserved (outside 2000::/3)");
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn why(ip: &str) -> Option<&'static str> {
        special_purpose(ip.parse().unwrap())
    }

    #[test]
    fn this_machines_own_addresses_are_refused() {
        let own: Vec<IpAddr> = vec!["93.184.216.34".parse().unwrap(), "2a00:1450::1".parse().unwrap()];
        for ip in ["93.184.216.34", "2a00:1450::1"] {
            let why = judge_own(ip.parse().unwrap(), &own).unwrap();
            assert!(why.contains("this machine"), "{ip}: {why}");
        }
        assert_eq!(judge_own("93.184.216.35".parse().unwrap(), &own), None);
        // The listing is this machine's: loopback is among its addresses,
        // also written as IPv4-mapped IPv6.
        assert!(own_address("127.0.0.1".parse().unwrap()).is_some());
        assert!(own_address("::ffff:127.0.0.1".parse().unwrap()).is_some());
        assert_eq!(own_address("93.184.216.34".parse().unwrap()), None);
    }

    #[test]
    fn public_addresses_pass() {
        for ip in [
            "1.1.1.1",
            "8.8.8.8",
            "93.184.216.34",
            "168.63.129.15",
            "168.63.129.17",
            "100.63.255.255",
            "100.128.0.0",
            "172.15.255.255",
            "172.32.0.0",
            "192.167.255.255",
            "223.255.255.255",
            "2606:4700:4700::1111",
            "2a00:1450:4001:80b::200e",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
            "2002:808:808::1",
        ] {
            assert_eq!(why(ip), None, "{ip}");
        }
    }

    #[test]
    fn special_ipv4_addresses_are_refused_with_their_reason() {
        for (ip, reason) in [
            ("127.0.0.1", "loopback"),
            ("127.255.255.254", "loopback"),
            ("10.1.2.3", "private"),
            ("172.16.0.1", "private"),
            ("172.31.255.255", "private"),
            ("192.168.1.1", "private"),
            ("100.64.0.1", "carrier-grade NAT"),
            ("100.100.100.200", "carrier-grade NAT"),
            ("169.254.169.254", "metadata"),
            ("168.63.129.16", "metadata"),
            ("::ffff:168.63.129.16", "metadata"),
            ("169.254.0.1", "link-local"),
            ("0.0.0.0", "unspecified"),
            ("0.1.2.3", "this network"),
            ("224.0.0.1", "multicast"),
            ("239.255.255.250", "multicast"),
            ("255.255.255.255", "broadcast"),
            ("240.0.0.1", "reserved"),
            ("192.0.2.1", "documentation"),
            ("198.51.100.7", "documentation"),
            ("203.0.113.9", "documentation"),
            ("198.18.0.1", "benchmarking"),
            ("192.0.0.8", "IETF"),
        ] {
            let got = why(ip).unwrap_or_else(|| panic!("{ip} passed"));
            assert!(got.contains(reason), "{ip}: {got}");
        }
    }

    #[test]
    fn special_ipv6_addresses_are_refused_with_their_reason() {
        for (ip, reason) in [
            ("::1", "loopback"),
            ("::", "unspecified"),
            ("fe80::1", "link-local"),
            ("fc00::1", "unique local"),
            ("fd00:ec2::254", "unique local"),
            ("ff02::1", "multicast"),
            ("2001:db8::1", "documentation"),
            ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "Teredo"),
            ("fec0::1", "site-local"),
            ("100::1", "discard"),
            ("4000::1", "reserved"),
            ("64:ff9b:1::1", "local-use NAT64"),
        ] {
            let got = why(ip).unwrap_or_else(|| panic!("{ip} passed"));
            assert!(got.contains(reason), "{ip}: {got}");
        }
    }

    #[test]
    fn ipv6_forms_embedding_ipv4_are_judged_by_the_ipv4_address() {
        for (ip, reason) in [
            ("::ffff:127.0.0.1", "loopback"),
            ("::ffff:169.254.169.254", "metadata"),
            ("::ffff:10.0.0.1", "private"),
            ("::127.0.0.1", "loopback"),
            ("::8.8.8.8", "IPv4-compatible"),
            ("64:ff9b::7f00:1", "loopback"),
            ("64:ff9b::a9fe:a9fe", "metadata"),
            ("2002:7f00:1::", "loopback"),
            ("2002:c0a8:101::1", "private"),
        ] {
            let got = why(ip).unwrap_or_else(|| panic!("{ip} passed"));
            assert!(got.contains(reason), "{ip}: {got}");
        }
    }

    #[test]
    fn ranges_parse_and_match() {
        let one = IpRange::parse("127.0.0.1").unwrap();
        assert!(one.contains("127.0.0.1".parse().unwrap()));
        assert!(one.contains("::ffff:127.0.0.1".parse().unwrap()));
        assert!(!one.contains("127.0.0.2".parse().unwrap()));
        assert!(!one.contains("::1".parse().unwrap()));
        assert_eq!(one.to_string(), "127.0.0.1");
        let net = IpRange::parse("10.0.0.0/8").unwrap();
        assert!(net.contains("10.255.0.1".parse().unwrap()));
        assert!(!net.contains("11.0.0.0".parse().unwrap()));
        let v6 = IpRange::parse("fd00::/8").unwrap();
        assert!(v6.contains("fd12::1".parse().unwrap()));
        assert!(!v6.contains("fe80::1".parse().unwrap()));
        let all = IpRange::parse("0.0.0.0/0").unwrap();
        assert!(all.contains("8.8.8.8".parse().unwrap()));
        for (bad, reason) in [
            ("10.0.0.1/8", "write `10.0.0.0/8`"),
            ("10.0.0.0/33", "from 0 to 32"),
            ("10.0.0.0/+8", "from 0 to 32"),
            ("10.0.0.0/08", "from 0 to 32"),
            ("::/129", "from 0 to 128"),
            ("localhost", "not an IP address"),
            ("10.0.0.0/", "from 0 to 32"),
        ] {
            let e = IpRange::parse(bad).unwrap_err();
            assert!(e.contains(reason), "{bad}: {e}");
        }
    }
}
