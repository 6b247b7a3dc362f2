//! How many connections one client address holds on a listener
//! (`api.max_connections_per_address`).
//!
//! `api.max_connections` bounds the connections a listener holds, not who holds them: one
//! client that sends its requests' bodies a byte at a time (each within its deadline) can hold
//! every slot, and the listener then never has an idle one to close for anyone else. With a
//! per-address limit a connection from an address that already holds that many is closed as it
//! is accepted, before its TLS handshake, so that one address can take only its share. IPv6
//! clients are counted by their /64, which anyone with one address holds whole; an IPv4-mapped
//! address counts as the IPv4 address it carries.
//!
//! The limit is off by default: behind a reverse proxy or a NAT every client comes from the
//! same address, and a limit would then be a limit on everyone. This is nginx's `limit_conn`,
//! which is opt-in for the same reason.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex};

/// The connections each client address holds on one listener.
pub struct PerAddress {
    /// Most connections one address may hold; 0 is no limit.
    max: usize,
    held: Mutex<HashMap<IpAddr, usize>>,
}

impl PerAddress {
    /// A count for a listener whose clients may each hold `max` connections (0: any number).
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            max,
            held: Mutex::default(),
        })
    }

    /// A slot for one more connection from `ip`, held until the slot is dropped; `None` when
    /// its address already holds the limit.
    pub fn enter(self: &Arc<Self>, ip: IpAddr) -> Option<AddressSlot> {
        if self.max == 0 {
            return Some(AddressSlot { held: None });
        }
        let client = client_of(ip);
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        let count = held.entry(client).or_insert(0);
        if *count >= self.max {
            return None;
        }
        *count += 1;
        Some(AddressSlot {
            held: Some((self.clone(), client)),
        })
    }

    /// Connections `ip`'s address holds now.
    #[cfg(test)]
    fn holding(&self, ip: IpAddr) -> usize {
        let held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        held.get(&client_of(ip)).copied().unwrap_or(0)
    }

    /// Addresses holding a connection now.
    #[cfg(test)]
    fn addresses(&self) -> usize {
        self.held.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

/// One connection's place in its address's count.
pub struct AddressSlot {
    held: Option<(Arc<PerAddress>, IpAddr)>,
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let Some((counts, client)) = self.held.take() else {
            return;
        };
        let mut held = counts.held.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = held.get_mut(&client) {
            *count -= 1;
            if *count == 0 {
                held.remove(&client);
            }
        }
    }
}

/// What a connection from `ip` is counted under: the IPv4 address, or the IPv6 /64.
fn client_of(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !u128::from(u64::MAX))),
        },
    }
}

/// `192.0.2.7`, or `2001:db8:1:2::/64`: the address a refusal names.
pub fn describe_client(ip: IpAddr) -> String {
    match client_of(ip) {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("{v6}/64"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn an_address_holds_at_most_its_limit_and_gets_its_slots_back() {
        let counts = PerAddress::new(2);
        let a = counts.enter(ip("192.0.2.1")).unwrap();
        let b = counts.enter(ip("192.0.2.1")).unwrap();
        assert!(counts.enter(ip("192.0.2.1")).is_none(), "a third slot at 2");
        // Another address is not held back by the first.
        let other = counts.enter(ip("192.0.2.2")).unwrap();
        assert_eq!(counts.holding(ip("192.0.2.1")), 2);
        drop(a);
        assert_eq!(counts.holding(ip("192.0.2.1")), 1);
        let c = counts.enter(ip("192.0.2.1")).unwrap();
        drop((b, c, other));
        assert_eq!(
            counts.addresses(),
            0,
            "an address with no connection is forgotten"
        );
    }

    #[test]
    fn an_ipv6_client_is_counted_by_its_slash_64_and_a_mapped_ipv4_one_by_its_address() {
        let counts = PerAddress::new(1);
        let _first = counts.enter(ip("2001:db8:1:2::1")).unwrap();
        assert!(counts.enter(ip("2001:db8:1:2:ffff::9")).is_none());
        let _next_net = counts.enter(ip("2001:db8:1:3::1")).unwrap();
        let _v4 = counts.enter(ip("192.0.2.1")).unwrap();
        assert!(counts.enter(ip("::ffff:192.0.2.1")).is_none());
        assert_eq!(
            describe_client(ip("2001:db8:1:2:ffff::9")),
            "2001:db8:1:2::/64"
        );
        assert_eq!(describe_client(ip("::ffff:192.0.2.1")), "192.0.2.1");
    }

    #[test]
    fn no_limit_counts_nothing() {
        let counts = PerAddress::new(0);
        let slots: Vec<_> = (0..100)
            .map(|_| counts.enter(ip("192.0.2.1")).unwrap())
            .collect();
        assert_eq!(counts.addresses(), 0);
        drop(slots);
    }
}
