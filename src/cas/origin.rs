//! Login CSRF defence: a login form may only be posted from a page of this server. Browsers send `Origin` with
//! every POST (and `Referer` unless told not to); a request carrying one that names another site is refused. A
//! request with neither comes from no browser (a script or a CAS client library), and a forged cross-site POST
//! cannot strip both, so it is let through.

use axum::http::HeaderMap;
use axum::http::header::{HOST, ORIGIN, REFERER};

/// Whether the request was sent by a page of the host it is addressed to, as far as its headers tell.
pub fn same_origin(headers: &HeaderMap) -> bool {
    let header = |name| headers.get(name).and_then(|v| v.to_str().ok());
    let Some(host) = header(HOST) else { return false };
    match header(ORIGIN).or_else(|| header(REFERER)) {
        None => true,
        Some(source) => url::Url::parse(source).is_ok_and(|url| names_host(&url, host)),
    }
}

/// Whether `url`'s host and port are `host` (a `Host` header: a name, and a port unless it is the default).
fn names_host(url: &url::Url, host: &str) -> bool {
    let Some(url_host) = url.host_str() else { return false };
    let (name, port) = match host.rsplit_once(':') {
        Some((name, port)) if !name.ends_with(']') || host.starts_with('[') => (name, port.parse::<u16>().ok()),
        _ => (host, None),
    };
    let name = name.trim_start_matches('[').trim_end_matches(']');
    let url_name = url_host.trim_start_matches('[').trim_end_matches(']');
    // Behind a TLS-terminating proxy the scheme the browser saw is not this server's, so the port is compared only
    // when the Host header names one.
    url_name.eq_ignore_ascii_case(name) && port.is_none_or(|p| url.port_or_known_default() == Some(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        pairs.iter().map(|(k, v)| (k.parse().expect("name"), v.parse().expect("value"))).collect()
    }

    #[test]
    fn only_pages_of_this_host_may_post() {
        let h = "cas.example.org";
        assert!(same_origin(&headers(&[("host", h), ("origin", "https://cas.example.org")])));
        assert!(same_origin(&headers(&[("host", "127.0.0.1:8080"), ("origin", "http://127.0.0.1:8080")])));
        assert!(same_origin(&headers(&[("host", h), ("referer", "https://cas.example.org/cas/login?service=x")])));
        assert!(same_origin(&headers(&[("host", h)])), "no browser: nothing to check");
        assert!(!same_origin(&headers(&[("host", h), ("origin", "http://evil.example")])));
        assert!(!same_origin(&headers(&[("host", h), ("origin", "null")])), "an opaque origin is not this site");
        assert!(!same_origin(&headers(&[("host", h), ("referer", "https://evil.example/cas.example.org")])));
        assert!(!same_origin(&headers(&[("host", "127.0.0.1:8080"), ("origin", "http://127.0.0.1:9090")])));
        assert!(!same_origin(&headers(&[("host", h), ("origin", "https://cas.example.org.evil.example")])));
        assert!(!same_origin(&headers(&[("origin", "https://cas.example.org")])), "no Host: refused");
    }
}
