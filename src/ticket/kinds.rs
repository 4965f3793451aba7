//! What each ticket kind holds. Tickets refer to each other by id, never by embedding, so a replicated copy is
//! always a plain value (apereo/cas#566 was an object graph serialised while another thread changed it).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::expiry::ExpiryPolicy;

/// Milliseconds since the Unix epoch: the one time unit stored in tickets.
pub type EpochMs = u64;

/// Who logged in, with the attributes the authenticator returned (each possibly multi-valued).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Principal {
    pub id: String,
    pub attributes: BTreeMap<String, Vec<String>>,
}

/// A value kept in one of the ticket maps.
///
/// `Change` is the only way to alter a stored ticket after creation. Changes are designed to commute, so that two
/// nodes changing the same ticket at once both keep their change (the lost-update bug of apereo/cas#875 and #5326).
pub trait Ticket: Clone + Send + Sync + 'static {
    type Change: Clone + Send + Sync + 'static;

    fn apply(&mut self, change: &Self::Change);
    fn is_expired(&self, policy: &ExpiryPolicy, now: EpochMs) -> bool;
}

/// Ticket-granting ticket: the SSO session.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tgt {
    pub principal: Principal,
    pub created: EpochMs,
    pub last_used: EpochMs,
    /// Every service ticket granted under this TGT, by ticket id, with the service it was granted for. Kept per
    /// ticket (not per service) so single logout can name each `SessionIndex`, and so that concurrent grants merge
    /// by set union.
    pub services: BTreeMap<String, String>,
}

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
                self.services.insert(ticket.clone(), service.clone());
                self.last_used = self.last_used.max(*at);
            }
        }
    }

    fn is_expired(&self, policy: &ExpiryPolicy, now: EpochMs) -> bool {
        policy.tgt_expired(self.created, self.last_used, now)
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
            principal: Principal { id: "alice".into(), attributes: BTreeMap::new() },
            created: 0,
            last_used: 0,
            services: BTreeMap::new(),
        }
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
}
