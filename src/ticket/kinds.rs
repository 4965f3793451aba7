//! What each ticket kind holds. Tickets refer to each other by id, never by embedding, so a replicated copy is
//! always a plain value (apereo/cas#566 was an object graph serialised while another thread changed it).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::expiry::ExpiryPolicy;
pub use crate::clock::EpochMs;

/// Who logged in, with the attributes the authenticator returned (each possibly multi-valued).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Principal {
    pub id: String,
    pub attributes: Attributes,
}

/// Attribute name to values, sorted by name. A sorted `Vec` rather than a `BTreeMap`: a principal holds a handful
/// of attributes, and one `BTreeMap` node costs over 500 bytes however few entries it holds, in every TGT of every
/// node (the replication notes budget under 1 KiB per TGT).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Attributes(Vec<(String, Vec<String>)>);

impl Attributes {
    pub fn get(&self, name: &str) -> Option<&Vec<String>> {
        self.0.binary_search_by(|(n, _)| n.as_str().cmp(name)).ok().map(|i| &self.0[i].1)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&String, &Vec<String>)> {
        self.0.iter().map(|(n, v)| (n, v))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Collects in any order; a repeated name keeps its last values.
impl FromIterator<(String, Vec<String>)> for Attributes {
    fn from_iter<I: IntoIterator<Item = (String, Vec<String>)>>(items: I) -> Self {
        let mut map: BTreeMap<String, Vec<String>> = BTreeMap::new();
        map.extend(items);
        let mut v: Vec<_> = map.into_iter().collect();
        v.shrink_to_fit();
        Self(v)
    }
}

/// A value kept in one of the ticket maps.
///
/// `Change` is the only way to alter a stored ticket after creation. Changes are designed to commute, so that two
/// nodes changing the same ticket at once both keep their change (the lost-update bug of apereo/cas#875 and #5326).
pub trait Ticket: Clone + Send + Sync + Serialize + serde::de::DeserializeOwned + 'static {
    type Change: Clone + Send + Sync + 'static;

    fn apply(&mut self, change: &Self::Change);
    fn is_expired(&self, policy: &ExpiryPolicy, now: EpochMs) -> bool;

    /// Joins another copy of the same ticket into this one. Must be commutative, associative and idempotent, so
    /// replicas that exchange copies in any order end equal. Immutable tickets have nothing to join.
    fn merge(&mut self, _other: &Self) {}
}

/// Ticket-granting ticket: the SSO session.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tgt {
    pub principal: Principal,
    pub created: EpochMs,
    pub last_used: EpochMs,
    /// The services granted a ticket under this TGT, each with its most recent ticket (the `SessionIndex` single
    /// logout names, as Apereo's default `only-track-most-recent-session`). Keyed by service so the map stays as
    /// small as the set of services, and merged per key, so concurrent grants for different services all survive.
    pub services: BTreeMap<String, Grant>,
    /// Remember-me: the login asked for a long-term session (CAS 3.0 `longTermAuthenticationRequestTokenUsed`).
    pub long_term: bool,
}

/// The latest ticket granted to one service.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Grant {
    pub at: EpochMs,
    pub ticket: String,
}

/// A session that keeps asking for tickets to ever new service URLs must not grow without bound: past this, the
/// oldest grants are forgotten (and get no single logout).
pub const MAX_SERVICES_PER_TGT: usize = 256;

/// A change to a TGT. Both variants commute: `Touch` merges by maximum, `Granted` by union.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TgtChange {
    Touch { at: EpochMs },
    Granted { ticket: String, service: String, at: EpochMs },
}

impl Ticket for Tgt {
    type Change = TgtChange;

    fn apply(&mut self, change: &TgtChange) {
        match change {
            TgtChange::Touch { at } => self.last_used = self.last_used.max(*at),
            TgtChange::Granted { ticket, service, at } => {
                // Per service the greatest (time, ticket) wins, and the set keeps its greatest entries: both are
                // order-independent, so the change commutes.
                let grant = Grant { at: *at, ticket: ticket.clone() };
                if self.services.get(service).is_none_or(|old| *old < grant) {
                    self.services.insert(service.clone(), grant);
                }
                if self.services.len() > MAX_SERVICES_PER_TGT {
                    let oldest = self.services.iter().min_by(|a, b| a.1.cmp(b.1)).map(|(s, _)| s.clone());
                    if let Some(s) = oldest {
                        self.services.remove(&s);
                    }
                }
                self.last_used = self.last_used.max(*at);
            }
        }
    }

    fn is_expired(&self, policy: &ExpiryPolicy, now: EpochMs) -> bool {
        policy.tgt_expired(self.created, self.last_used, self.long_term, now)
    }

    /// Union of the service lists (per service the newest grant), latest use: the same rules as `apply`.
    fn merge(&mut self, other: &Self) {
        self.long_term |= other.long_term;
        for (service, grant) in &other.services {
            self.apply(&TgtChange::Granted { ticket: grant.ticket.clone(), service: service.clone(), at: grant.at });
        }
        self.apply(&TgtChange::Touch { at: other.last_used });
    }
}

/// A service ticket or a proxy ticket: both are one-time proofs for one service.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceTicket {
    pub service: String,
    pub tgt: String,
    /// True when the ticket came straight from a password login (for `renew` and `isFromNewLogin`).
    pub from_new_login: bool,
    pub created: EpochMs,
    /// For a proxy ticket, the pgtUrls of the proxies that asked for it, newest first (CAS 3.0 §2.6.2). Empty for an
    /// ST.
    pub proxies: Vec<String>,
}

impl Ticket for ServiceTicket {
    type Change = std::convert::Infallible;

    fn apply(&mut self, change: &Self::Change) {
        match *change {}
    }

    fn is_expired(&self, policy: &ExpiryPolicy, now: EpochMs) -> bool {
        let ttl = if self.proxies.is_empty() { policy.st_ttl } else { policy.pt_ttl };
        ExpiryPolicy::older_than(self.created, ttl, now)
    }
}

/// Proxy-granting ticket: lets a proxy ask for PTs on the user's behalf while the user's TGT lives.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pgt {
    pub tgt: String,
    /// The pgtUrls of this proxy and of every proxy before it, newest first.
    pub proxies: Vec<String>,
    pub created: EpochMs,
}

impl Ticket for Pgt {
    type Change = std::convert::Infallible;

    fn apply(&mut self, change: &Self::Change) {
        match *change {}
    }

    /// A PGT has the TGT's hard lifetime; it also dies with its TGT, which the registry checks on use.
    fn is_expired(&self, policy: &ExpiryPolicy, now: EpochMs) -> bool {
        ExpiryPolicy::older_than(self.created, policy.tgt_max_lifetime, now)
    }
}

/// Login ticket: makes each login form single-use and lets its POST land on any node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoginTicket {
    pub created: EpochMs,
}

impl Ticket for LoginTicket {
    type Change = std::convert::Infallible;

    fn apply(&mut self, change: &Self::Change) {
        match *change {}
    }

    fn is_expired(&self, policy: &ExpiryPolicy, now: EpochMs) -> bool {
        ExpiryPolicy::older_than(self.created, policy.lt_ttl, now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tgt() -> Tgt {
        Tgt {
            principal: Principal { id: "alice".into(), attributes: Attributes::default() },
            created: 0,
            last_used: 0,
            services: BTreeMap::new(),
            long_term: false,
        }
    }

    #[test]
    fn attributes_are_sorted_and_looked_up_by_name() {
        let a: Attributes =
            [("mail".to_owned(), vec!["x".to_owned()]), ("cn".to_owned(), vec!["y".to_owned()])].into_iter().collect();
        assert_eq!(a.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(), vec!["cn", "mail"]);
        assert_eq!(a.get("mail"), Some(&vec!["x".to_owned()]));
        assert_eq!(a.get("sn"), None);
    }

    #[test]
    fn tgt_changes_commute() {
        let a = TgtChange::Granted { ticket: "ST-1".into(), service: "https://a/".into(), at: 5 };
        let b = TgtChange::Granted { ticket: "ST-2".into(), service: "https://b/".into(), at: 3 };
        let t = TgtChange::Touch { at: 9 };
        let mut one = tgt();
        for c in [&a, &b, &t] {
            one.apply(c);
        }
        let mut two = tgt();
        for c in [&t, &b, &a] {
            two.apply(c);
        }
        assert_eq!(one, two);
        assert_eq!(one.services.len(), 2);
        assert_eq!(one.last_used, 9);
    }

    #[test]
    fn merging_copies_converges_whatever_the_order() {
        let mut a = tgt();
        a.apply(&TgtChange::Granted { ticket: "ST-1".into(), service: "https://a/".into(), at: 1 });
        let mut b = tgt();
        b.apply(&TgtChange::Granted { ticket: "ST-2".into(), service: "https://b/".into(), at: 2 });
        b.apply(&TgtChange::Granted { ticket: "ST-3".into(), service: "https://a/".into(), at: 3 });
        let (mut ab, mut ba) = (a.clone(), b.clone());
        ab.merge(&b);
        ba.merge(&a);
        assert_eq!(ab, ba);
        assert_eq!(ab.services["https://a/"].ticket, "ST-3");
        let before = ab.clone();
        ab.merge(&a);
        assert_eq!(ab, before, "idempotent");
    }

    #[test]
    fn latest_grant_per_service_wins_in_any_order() {
        let early = TgtChange::Granted { ticket: "ST-1".into(), service: "https://a/".into(), at: 1 };
        let late = TgtChange::Granted { ticket: "ST-2".into(), service: "https://a/".into(), at: 2 };
        let (mut one, mut two) = (tgt(), tgt());
        one.apply(&early);
        one.apply(&late);
        two.apply(&late);
        two.apply(&early);
        assert_eq!(one, two);
        assert_eq!(one.services["https://a/"].ticket, "ST-2");
    }

    #[test]
    fn service_list_is_bounded_and_keeps_the_newest() {
        let mut t = tgt();
        for i in 0..(MAX_SERVICES_PER_TGT as u64 + 10) {
            t.apply(&TgtChange::Granted { ticket: format!("ST-{i}"), service: format!("https://s{i}/"), at: i });
        }
        assert_eq!(t.services.len(), MAX_SERVICES_PER_TGT);
        assert!(!t.services.contains_key("https://s9/") && t.services.contains_key("https://s10/"));
    }
}
