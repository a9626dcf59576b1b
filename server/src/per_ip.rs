//! Connections per client address: `--max-connections-per-ip` (0 = no limit).
//!
//! One address may hold at most that many sockets at once, upgraded or still sending their
//! request head; the next is answered `429` and closed. Counted per node, across its cores,
//! under one lock taken twice per connection (open, close): never on the message path. Behind
//! a proxy or load balancer every client shares its address, so the default is off.

use ahash::AHashMap;
use std::net::IpAddr;
use std::sync::Mutex;

/// Open sockets per client address.
pub struct PerIp {
    limit: u32,
    open: Mutex<AHashMap<IpAddr, u32>>,
}

/// One socket's place in its address's count, given back when dropped.
pub struct Slot<'a> {
    owner: &'a PerIp,
    ip: IpAddr,
}

impl PerIp {
    pub fn new(limit: u32) -> PerIp {
        PerIp {
            limit,
            open: Mutex::new(AHashMap::new()),
        }
    }

    /// A place for one more socket from `ip`, or `None` when it already holds the limit.
    pub fn take(&self, ip: IpAddr) -> Option<Slot<'_>> {
        if self.limit == 0 {
            return Some(Slot { owner: self, ip });
        }
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let n = open.entry(ip).or_insert(0);
        if *n >= self.limit {
            return None;
        }
        *n += 1;
        Some(Slot { owner: self, ip })
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        if self.owner.limit == 0 {
            return;
        }
        let mut open = self.owner.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = open.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_holds_at_most_the_limit_and_gets_its_places_back() {
        let per_ip = PerIp::new(2);
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let first = per_ip.take(a).expect("1 of 2");
        let _second = per_ip.take(a).expect("2 of 2");
        assert!(per_ip.take(a).is_none(), "a third from the same address");
        assert!(
            per_ip.take(b).is_some(),
            "another address has its own count"
        );
        drop(first);
        assert!(per_ip.take(a).is_some(), "a place given back is free again");
        assert!(PerIp::new(0).take(a).is_some(), "0 = no limit");
    }
}
