//! This host's own interface addresses, read with `getifaddrs(3)`.
//!
//! A node bound to loopback (the default, `127.0.0.1`) still hears a stock
//! browser on the same machine: browsers never gather loopback candidates,
//! so their checks come from an interface address of this host to
//! `127.0.0.1`. Those sources are this host and are accepted; the set is
//! re-read at most once a second when an unknown source shows up, so an
//! address added after start (DHCP, a VPN) is picked up.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};

/// How often an unknown source may trigger a re-read of the interfaces.
const REFRESH: Duration = Duration::from_secs(1);

/// The set of this host's interface addresses.
#[derive(Debug, Default)]
pub(crate) struct OwnAddrs {
    addrs: Vec<IpAddr>,
    read_at: Option<Instant>,
}

impl OwnAddrs {
    /// Whether `ip` is one of this host's addresses (re-reading the
    /// interfaces if `ip` is unknown and the last read is old enough).
    pub(crate) fn contains(&mut self, ip: IpAddr, now: Instant) -> bool {
        let ip = canonical(ip);
        if self.addrs.contains(&ip) {
            return true;
        }
        if self
            .read_at
            .is_none_or(|t| now.saturating_duration_since(t) >= REFRESH)
        {
            self.addrs = interface_addrs();
            self.read_at = Some(now);
            return self.addrs.contains(&ip);
        }
        false
    }
}

/// An IPv4-mapped IPv6 address as the IPv4 address it carries.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Every address of every interface of this host (empty if it cannot be
/// read).
pub(crate) fn interface_addrs() -> Vec<IpAddr> {
    let mut out = Vec::new();
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list we free below; on
    // failure it returns -1 and leaves nothing to free.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return out;
    }
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list getifaddrs returned, alive
        // until freeifaddrs.
        let ifa = unsafe { &*cur };
        if !ifa.ifa_addr.is_null() {
            // SAFETY: `ifa_addr` points at a sockaddr whose family tells
            // which struct it is.
            let family = i32::from(unsafe { (*ifa.ifa_addr).sa_family });
            if family == libc::AF_INET {
                // SAFETY: the family says this is a sockaddr_in.
                let sin = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
                out.push(IpAddr::V4(Ipv4Addr::from(u32::from_be(
                    sin.sin_addr.s_addr,
                ))));
            } else if family == libc::AF_INET6 {
                // SAFETY: the family says this is a sockaddr_in6.
                let sin6 = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in6) };
                out.push(IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr)));
            }
        }
        cur = ifa.ifa_next;
    }
    // SAFETY: `head` came from a successful getifaddrs.
    unsafe { libc::freeifaddrs(head) };
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_is_among_this_hosts_addresses() {
        let all = interface_addrs();
        assert!(all.contains(&IpAddr::V4(Ipv4Addr::LOCALHOST)), "{all:?}");
    }

    #[test]
    fn a_documentation_address_is_not_ours_and_is_not_reread_at_once() {
        let mut own = OwnAddrs::default();
        let now = Instant::now();
        let foreign = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 77));
        assert!(!own.contains(foreign, now));
        let read = own.read_at;
        assert!(!own.contains(foreign, now + Duration::from_millis(10)));
        assert_eq!(own.read_at, read, "no re-read within the refresh period");
        assert!(own.contains(IpAddr::V4(Ipv4Addr::LOCALHOST), now));
    }

    #[test]
    fn mapped_addresses_are_compared_as_ipv4() {
        let mapped = IpAddr::V6(Ipv4Addr::LOCALHOST.to_ipv6_mapped());
        assert_eq!(canonical(mapped), IpAddr::V4(Ipv4Addr::LOCALHOST));
        let mut own = OwnAddrs::default();
        assert!(own.contains(mapped, Instant::now()));
    }
}
