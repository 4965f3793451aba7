//! The ticket-granting cookie (CAS 3.0 §3.6): its value is the TGT id; `HttpOnly`, `SameSite=Lax`, path = the CAS
//! base path, a session cookie, and `Secure` unless the config allows plain http for development.

use axum::http::HeaderMap;
use axum::http::header::COOKIE;

#[derive(Clone, Debug)]
pub struct TgcCookie {
    pub name: String,
    pub path: String,
    pub secure: bool,
}

impl TgcCookie {
    /// The cookie's value in the request, if the browser sent one.
    pub fn read(&self, headers: &HeaderMap) -> Option<String> {
        headers
            .get_all(COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .filter_map(|pair| pair.trim().split_once('='))
            .find(|(k, _)| *k == self.name)
            .map(|(_, v)| v.trim_matches('"').to_owned())
    }

    pub fn set(&self, value: &str) -> String {
        format!("{}={value}; {}", self.name, self.attributes())
    }

    pub fn clear(&self) -> String {
        format!("{}=; Max-Age=0; Expires=Thu, 01 Jan 1970 00:00:00 GMT; {}", self.name, self.attributes())
    }

    fn attributes(&self) -> String {
        let secure = if self.secure { "; Secure" } else { "" };
        format!("Path={}; HttpOnly; SameSite=Lax{secure}", self.path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_its_own_cookie_among_others_and_sets_flags() {
        let c = TgcCookie { name: "TGC".into(), path: "/cas".into(), secure: true };
        let mut h = HeaderMap::new();
        h.insert(COOKIE, "a=1; TGC=TGT-abc-n; TGCX=2".parse().expect("header"));
        assert_eq!(c.read(&h).as_deref(), Some("TGT-abc-n"));
        assert_eq!(c.set("v"), "TGC=v; Path=/cas; HttpOnly; SameSite=Lax; Secure");
        assert!(c.clear().starts_with("TGC=; Max-Age=0;"));
    }
}
