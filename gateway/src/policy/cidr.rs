//! Source-network sets in prefix tries, and the allow/deny decision.
//!
//! Precedence is simple on purpose: **deny wins**. A source matching any
//! deny entry is refused, however specific the allow entry that also
//! matches; otherwise a source matching an allow entry is admitted;
//! anything else is refused (deny by default). There is no "more specific
//! allow punches a hole in a deny": that rule is easy to misread in review.

use std::net::IpAddr;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use prefix_trie::PrefixSet;

/// A set of IPv4 and IPv6 prefixes with allocation-free lookups.
#[derive(Clone, Default)]
pub struct CidrSet {
    v4: PrefixSet<Ipv4Net>,
    v6: PrefixSet<Ipv6Net>,
}

impl CidrSet {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn insert(&mut self, net: IpNet) {
        match net.trunc() {
            IpNet::V4(n) => self.v4.insert(n),
            IpNet::V6(n) => self.v6.insert(n),
        };
    }

    pub fn len(&self) -> usize {
        self.v4.len() + self.v6.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The most specific entry that contains `ip`, if any.
    ///
    /// An IPv4-mapped IPv6 address (`::ffff:10.0.0.1`, as seen on a
    /// dual-stack listener) is looked up as the IPv4 address it is.
    #[inline]
    pub fn lookup(&self, ip: IpAddr) -> Option<IpNet> {
        match ip.to_canonical() {
            IpAddr::V4(a) => {
                let host = Ipv4Net::new(a, 32).expect("/32 is a valid prefix");
                self.v4.get_lpm(&host).map(|n| IpNet::V4(*n))
            }
            IpAddr::V6(a) => {
                let host = Ipv6Net::new(a, 128).expect("/128 is a valid prefix");
                self.v6.get_lpm(&host).map(|n| IpNet::V6(*n))
            }
        }
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        self.lookup(ip).is_some()
    }

    /// Every entry, IPv4 first, in prefix order.
    pub fn iter(&self) -> impl Iterator<Item = IpNet> + '_ {
        self.v4
            .iter()
            .map(|n| IpNet::V4(*n))
            .chain(self.v6.iter().map(|n| IpNet::V6(*n)))
    }
}

impl FromIterator<IpNet> for CidrSet {
    fn from_iter<I: IntoIterator<Item = IpNet>>(iter: I) -> Self {
        let mut set = CidrSet::new();
        for net in iter {
            set.insert(net);
        }
        set
    }
}

impl std::fmt::Debug for CidrSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.iter()).finish()
    }
}

/// Why a source was refused by an [`AccessList`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceRefusal {
    /// Matched this deny entry.
    Denylisted(IpNet),
    /// Matched no allow entry.
    NotAllowlisted,
}

/// A service's source-network policy: deny wins, then allow, else refuse.
#[derive(Clone, Debug, Default)]
pub struct AccessList {
    pub allow: CidrSet,
    pub deny: CidrSet,
}

impl AccessList {
    /// `Ok(entry)` with the allow entry that admitted `ip`.
    #[inline]
    pub fn check(&self, ip: IpAddr) -> Result<IpNet, SourceRefusal> {
        if let Some(hit) = self.deny.lookup(ip) {
            return Err(SourceRefusal::Denylisted(hit));
        }
        self.allow.lookup(ip).ok_or(SourceRefusal::NotAllowlisted)
    }
}

#[cfg(test)]
mod tests;
