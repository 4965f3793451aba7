//! The ticket-granting cookie (CAS 3.0 §3.6): its value is the TGT id; `HttpOnly`, `SameSite=Lax`, path = the CAS
//! base path, a session cookie, and `Secure` unless the config allows plain http for development.

use axum::http::HeaderMap;
use axum::http::header::COOKIE;

/// The name of the warn cookie, as Apereo names it.
const WARN_COOKIE: &str = "CASPRIVACY";

/// A cookie's value in the request, if the browser sent it.
fn read_cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim_matches('"').to_owned())
}

#[derive(Clone, Debug)]
pub struct TgcCookie {
    pub name: String,
    pub path: String,
    pub secure: bool,
}

impl TgcCookie {
    /// The cookie's value in the request, if the browser sent one.
    pub fn read(&self, headers: &HeaderMap) -> Option<String> {
        read_cookie(headers, &self.name)
    }

    /// The `warn` cookie (Apereo's `CASPRIVACY`): set by a login with the `warn` box ticked, it makes every later
    /// single sign-on of this browser stop at a page naming the application (CAS 3.0 §2.1.1 `warn`).
    pub fn warn_set(&self) -> String {
        format!("{WARN_COOKIE}=true; {}", self.attributes())
    }

    pub fn warn_clear(&self) -> String {
        format!("{WARN_COOKIE}=; Max-Age=0; Expires=Thu, 01 Jan 1970 00:00:00 GMT; {}", self.attributes())
    }

    pub fn warns(&self, headers: &HeaderMap) -> bool {
        read_cookie(headers, WARN_COOKIE).is_some_and(|v| v == "true")
    }

    pub fn set(&self, value: &str) -> String {
        format!("{}={value}; {}", self.name, self.attributes())
    }

    /// A remember-me session's cookie: persistent (it survives the browser's restart) for `max_age`.
    pub fn set_persistent(&self, value: &str, max_age: std::time::Duration) -> String {
        format!("{}={value}; Max-Age={}; {}", self.name, max_age.as_secs(), self.attributes())
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
