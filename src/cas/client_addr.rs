//! The client's address, as throttling should see it. Behind a load balancer every connection comes from the
//! balancer, so `X-Forwarded-For` is believed, but only when the connection comes from a configured trusted proxy
//! (anyone can send the header), and only as far as the chain of trusted proxies goes: the client is the
//! rightmost address that is not one of them.

use std::net::IpAddr;

use axum::http::HeaderMap;
use ipnet::IpNet;

pub fn client_addr(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let hops: Vec<IpAddr> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .map(|hop| hop.parse::<IpAddr>())
        .collect::<Result<_, _>>()
        .unwrap_or_default();
    hops.into_iter().rev().find(|hop| !is_trusted(hop)).unwrap_or(peer)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    fn xff(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", value.parse().expect("value"));
        h
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().expect("net")];
        let lb = ip("10.0.0.5");
        assert_eq!(client_addr(lb, &xff("203.0.113.7"), &trusted), ip("203.0.113.7"));
        assert_eq!(client_addr(lb, &xff("198.51.100.1, 203.0.113.7, 10.0.0.9"), &trusted), ip("203.0.113.7"));
        assert_eq!(client_addr(ip("192.0.2.1"), &xff("203.0.113.7"), &trusted), ip("192.0.2.1"), "not a proxy");
        assert_eq!(client_addr(lb, &HeaderMap::new(), &trusted), lb, "no header: the proxy itself");
        assert_eq!(client_addr(lb, &xff("garbage, 203.0.113.7"), &trusted), lb, "a header that does not parse");
        assert_eq!(client_addr(lb, &xff("203.0.113.7"), &[]), lb, "no trusted proxies configured");
    }
}
