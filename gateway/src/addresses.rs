//! Which address a client really connects from, and the optional cap on websockets per
//! address (`MAX_CONNECTIONS_PER_IP`). Behind a proxy every connection comes from the
//! proxy, so the client's address is taken from `X-Forwarded-For` — but only when the
//! peer is one of `TRUSTED_PROXIES`: anyone else could write any address there. The
//! address used is the rightmost one in the header that is not itself a trusted proxy
//! (what the last trusted hop saw), as nginx's `real_ip_recursive` does.

use std::collections::HashMap;
use std::net::IpAddr;
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use hyper::header::HeaderMap;

/// An address or a CIDR block, e.g. `10.0.0.0/8`, `127.0.0.1`, `::1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpBlock {
    network: IpAddr,
    prefix: u8,
}

impl FromStr for IpBlock {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (address, prefix) = match s.trim().split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (s.trim(), None),
        };
        let network: IpAddr = address
            .parse()
            .map_err(|_| format!("{s:?} is not an IP address or CIDR block"))?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{s:?}: the prefix length must be 0 to {max}"))?,
        };
        Ok(Self { network, prefix })
    }
}

impl IpBlock {
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, canonical(ip)) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// IPv4 addresses that arrive mapped into IPv6 (`::ffff:a.b.c.d`) compare as IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

/// The client's address: the peer's, or from `X-Forwarded-For` when the peer is trusted.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[IpBlock]) -> IpAddr {
    let peer = canonical(peer);
    let is_trusted = |ip: IpAddr| trusted.iter().any(|block| block.contains(ip));
    if !is_trusted(peer) {
        return peer;
    }
    // Every X-Forwarded-For header, in order, as one list; walk it from the right.
    let forwarded: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    let mut client = peer;
    for hop in forwarded.iter().rev() {
        match hop.parse::<IpAddr>() {
            Ok(ip) => {
                client = canonical(ip);
                if !is_trusted(client) {
                    break;
                }
            }
            // Garbage: stop at the last address a trusted hop vouched for.
            Err(_) => break,
        }
    }
    client
}

/// Open websockets per client address, when capped.
#[derive(Default)]
pub struct PerAddress {
    counts: Mutex<HashMap<IpAddr, usize>>,
}

/// One counted connection; dropping it uncounts it.
pub struct AddressGuard {
    ip: IpAddr,
    table: Arc<PerAddress>,
}

impl PerAddress {
    /// Counts a connection from `ip`, or refuses it when `ip` has `max` already.
    pub fn try_enter(self: &Arc<Self>, ip: IpAddr, max: usize) -> Option<AddressGuard> {
        let mut counts = self.lock();
        let count = counts.entry(ip).or_insert(0);
        if *count >= max {
            return None;
        }
        *count += 1;
        Some(AddressGuard {
            ip,
            table: self.clone(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, usize>> {
        self.counts.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for AddressGuard {
    fn drop(&mut self) {
        let mut counts = self.table.lock();
        if let Some(count) = counts.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn blocks(list: &[&str]) -> Vec<IpBlock> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    fn forwarded(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-for", value.parse().unwrap());
        headers
    }

    #[test]
    fn blocks_parse_and_match() {
        let block: IpBlock = "10.0.0.0/8".parse().unwrap();
        assert!(block.contains(ip("10.1.2.3")));
        assert!(!block.contains(ip("11.0.0.1")));
        assert!(block.contains(ip("::ffff:10.9.9.9")), "IPv4-mapped");
        let one: IpBlock = "127.0.0.1".parse().unwrap();
        assert!(one.contains(ip("127.0.0.1")) && !one.contains(ip("127.0.0.2")));
        let v6: IpBlock = "fd00::/8".parse().unwrap();
        assert!(v6.contains(ip("fd12::1")) && !v6.contains(ip("fe80::1")));
        let all: IpBlock = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(ip("8.8.8.8")));
        assert!("10.0.0.0/33".parse::<IpBlock>().is_err());
        assert!("proxy".parse::<IpBlock>().is_err());
    }

    #[test]
    fn forwarded_for_is_believed_only_from_a_trusted_proxy() {
        let trusted = blocks(&["10.0.0.0/8"]);
        let headers = forwarded("203.0.113.7");
        assert_eq!(
            client_ip(ip("10.0.0.5"), &headers, &trusted),
            ip("203.0.113.7")
        );
        assert_eq!(
            client_ip(ip("198.51.100.1"), &headers, &trusted),
            ip("198.51.100.1"),
            "an untrusted peer cannot choose its address"
        );
        assert_eq!(
            client_ip(ip("10.0.0.5"), &HeaderMap::new(), &trusted),
            ip("10.0.0.5"),
            "no header: the proxy itself"
        );
    }

    #[test]
    fn the_rightmost_untrusted_hop_is_the_client() {
        let trusted = blocks(&["10.0.0.0/8"]);
        // The client wrote a fake first entry; the proxy appended what it saw.
        let headers = forwarded("1.2.3.4, 203.0.113.7, 10.0.0.9");
        assert_eq!(
            client_ip(ip("10.0.0.5"), &headers, &trusted),
            ip("203.0.113.7")
        );
        let garbage = forwarded("nonsense, 10.0.0.9");
        assert_eq!(
            client_ip(ip("10.0.0.5"), &garbage, &trusted),
            ip("10.0.0.9")
        );
    }

    #[test]
    fn the_cap_counts_open_connections_per_address() {
        let table = Arc::new(PerAddress::default());
        let a = ip("203.0.113.7");
        let first = table.try_enter(a, 2).unwrap();
        let _second = table.try_enter(a, 2).unwrap();
        assert!(table.try_enter(a, 2).is_none(), "third refused");
        assert!(
            table.try_enter(ip("203.0.113.8"), 2).is_some(),
            "others unaffected"
        );
        drop(first);
        assert!(
            table.try_enter(a, 2).is_some(),
            "a closed one frees a place"
        );
    }
}
