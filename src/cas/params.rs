//! Request parameters from a query string or a form body. CAS parameter names are case-sensitive (CAS 3.0 §2.1.1);
//! a repeated parameter keeps its first value, so duplicates never turn into a 400 where the protocol wants a CAS
//! error body.

use axum::extract::{FromRequestParts, RawQuery};
use axum::http::request::Parts;

#[derive(Debug, Default, Clone)]
pub struct Params(Vec<(String, String)>);

impl Params {
    pub fn parse(encoded: &[u8]) -> Self {
        Self(url::form_urlencoded::parse(encoded).into_owned().collect())
    }

    /// The first value of `name`, if present and not blank.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str()).filter(|v| !v.trim().is_empty())
    }

    /// A boolean flag such as `renew` or `gateway`: set when present with any value but `false`/`0`.
    pub fn flag(&self, name: &str) -> bool {
        self.0.iter().find(|(k, _)| k == name).is_some_and(|(_, v)| !v.eq_ignore_ascii_case("false") && v != "0")
    }

    pub fn merged(mut self, other: Params) -> Self {
        self.0.extend(other.0);
        self
    }
}

/// The query string's parameters.
pub struct Query(pub Params);

impl<S: Send + Sync> FromRequestParts<S> for Query {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let RawQuery(raw) = RawQuery::from_request_parts(parts, state).await?;
        Ok(Self(raw.map(|q| Params::parse(q.as_bytes())).unwrap_or_default()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_value_wins_and_names_are_case_sensitive() {
        let p = Params::parse(b"service=https%3A%2F%2Fa%2F%3Fx%3D1&service=evil&Ticket=x&renew=&gateway=false");
        assert_eq!(p.get("service"), Some("https://a/?x=1"));
        assert_eq!(p.get("ticket"), None);
        assert!(p.flag("renew"));
        assert!(!p.flag("gateway"));
        assert!(!p.flag("warn"));
    }
}
