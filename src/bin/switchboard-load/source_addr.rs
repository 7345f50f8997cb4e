//! Local source addresses for client sockets.
//!
//! One (source address, destination address) pair offers only the kernel's ephemeral
//! port range (~28k ports here), so a run that opens more connections than that to one
//! server port binds each socket to `127.0.0.X:0`, taking X round-robin from a range.
//! Every worker starts at a different offset so the processes spread over the range.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::str::FromStr;

/// Largest number of addresses a range may expand to (a /16).
const MAX_ADDRESSES: u64 = 65_536;

/// A parsed `--source-ips` value: the addresses to bind to, or none (kernel's choice).
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct SourceIps {
    ips: Vec<Ipv4Addr>,
}

impl SourceIps {
    /// Number of addresses (0 when the kernel chooses).
    pub(crate) fn len(&self) -> usize {
        self.ips.len()
    }

    /// True when sockets are not bound explicitly.
    pub(crate) fn is_empty(&self) -> bool {
        self.ips.is_empty()
    }

    /// A round-robin cursor over the addresses, starting at `offset` (mod length).
    pub(crate) fn cursor(&self, offset: u64) -> SourceCursor {
        let start = if self.ips.is_empty() { 0 } else { (offset % self.ips.len() as u64) as usize };
        SourceCursor { ips: self.ips.clone(), next: start }
    }

    /// True when every address is a loopback address (127.0.0.0/8).
    pub(crate) fn all_loopback(&self) -> bool {
        self.ips.iter().all(Ipv4Addr::is_loopback)
    }
}

impl fmt::Debug for SourceIps {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.ips.first(), self.ips.last()) {
            (Some(first), Some(last)) => {
                write!(f, "SourceIps({first}..={last}, {} addresses)", self.ips.len())
            }
            _ => f.write_str("SourceIps(none)"),
        }
    }
}

/// Why a `--source-ips` value was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum SourceIpsError {
    #[error("{0:?} is not an IPv4 address")]
    BadAddress(String),
    #[error("range {0} ends before it starts")]
    Reversed(String),
    #[error("source addresses expand to more than {MAX_ADDRESSES} entries")]
    TooMany,
    #[error("empty source address list (use `none` to let the kernel choose)")]
    Empty,
}

impl FromStr for SourceIps {
    type Err = SourceIpsError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim();
        if text.eq_ignore_ascii_case("none") {
            return Ok(SourceIps { ips: Vec::new() });
        }
        let mut ips = Vec::new();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (first, last) = match part.split_once('-') {
                Some((a, b)) => (parse_ip(a)?, parse_ip(b)?),
                None => {
                    let ip = parse_ip(part)?;
                    (ip, ip)
                }
            };
            let (first, last) = (u32::from(first), u32::from(last));
            if last < first {
                return Err(SourceIpsError::Reversed(part.to_owned()));
            }
            if ips.len() as u64 + u64::from(last - first) + 1 > MAX_ADDRESSES {
                return Err(SourceIpsError::TooMany);
            }
            ips.extend((first..=last).map(Ipv4Addr::from));
        }
        if ips.is_empty() {
            return Err(SourceIpsError::Empty);
        }
        Ok(SourceIps { ips })
    }
}

fn parse_ip(text: &str) -> Result<Ipv4Addr, SourceIpsError> {
    text.trim().parse().map_err(|_| SourceIpsError::BadAddress(text.trim().to_owned()))
}

/// Hands out source addresses round-robin.
#[derive(Debug, Clone)]
pub(crate) struct SourceCursor {
    ips: Vec<Ipv4Addr>,
    next: usize,
}

impl SourceCursor {
    /// The next address to bind to, or `None` when the kernel should choose.
    pub(crate) fn next_ip(&mut self) -> Option<IpAddr> {
        let ip = *self.ips.get(self.next)?;
        self.next = (self.next + 1) % self.ips.len();
        Some(IpAddr::V4(ip))
    }
}

/// Number of ephemeral ports the kernel hands out per source address, from
/// `/proc/sys/net/ipv4/ip_local_port_range` (None if it cannot be read).
pub(crate) fn ephemeral_ports() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    let mut fields = text.split_whitespace().map(str::parse::<u64>);
    let low = fields.next()?.ok()?;
    let high = fields.next()?.ok()?;
    Some(high.saturating_sub(low) + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_expands_inclusively() {
        let ips: SourceIps = "127.0.0.1-127.0.0.50".parse().expect("valid");
        assert_eq!(ips.len(), 50);
        assert!(ips.all_loopback());
    }

    #[test]
    fn lists_and_ranges_combine_across_octets() {
        let ips: SourceIps = "127.0.0.254-127.0.1.1, 127.0.0.9".parse().expect("valid");
        let mut cursor = ips.cursor(0);
        let got: Vec<_> = (0..5).filter_map(|_| cursor.next_ip()).collect();
        let want: Vec<IpAddr> = ["127.0.0.254", "127.0.0.255", "127.0.1.0", "127.0.1.1", "127.0.0.9"]
            .iter()
            .map(|s| s.parse().expect("ip"))
            .collect();
        assert_eq!(got, want);
    }

    #[test]
    fn cursor_is_round_robin_from_offset() {
        let ips: SourceIps = "127.0.0.1-127.0.0.3".parse().expect("valid");
        let mut cursor = ips.cursor(4);
        let got: Vec<String> = (0..4).filter_map(|_| cursor.next_ip()).map(|ip| ip.to_string()).collect();
        assert_eq!(got, ["127.0.0.2", "127.0.0.3", "127.0.0.1", "127.0.0.2"]);
    }

    #[test]
    fn none_means_kernel_choice() {
        let ips: SourceIps = "none".parse().expect("valid");
        assert!(ips.is_empty());
        assert_eq!(ips.cursor(3).next_ip(), None);
    }

    #[test]
    fn bad_values_are_refused() {
        assert_eq!(
            "127.0.0.5-127.0.0.1".parse::<SourceIps>(),
            Err(SourceIpsError::Reversed("127.0.0.5-127.0.0.1".to_owned()))
        );
        assert!(matches!("localhost".parse::<SourceIps>(), Err(SourceIpsError::BadAddress(_))));
        assert_eq!("10.0.0.0-10.2.0.0".parse::<SourceIps>(), Err(SourceIpsError::TooMany));
        assert_eq!(" , ".parse::<SourceIps>(), Err(SourceIpsError::Empty));
    }

    #[test]
    fn ephemeral_port_range_is_readable_here() {
        let ports = ephemeral_ports().expect("procfs");
        assert!(ports > 1000, "{ports}");
    }
}
