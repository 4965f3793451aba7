//! The ticket registry: the typed operations the protocol layer needs (issue, read, consume, change, destroy) over
//! one [`TicketMap`] per ticket kind. This is the seam between CAS and the cluster: the protocol layer sees only this
//! API, and a single node runs it over local maps.

pub mod journal;
pub mod map;
pub mod persist;
pub mod replicated;

use std::sync::Arc;

pub use map::{Ended, LocalMap, MapError, TicketMap};
use replicated::{MapPolicy, ReplicatedMap};

use crate::cluster::MapSet;
use crate::cluster::replication::replica::{MapId, MapReplica, Replicas};
use crate::store::Reopened;

use crate::clock::EpochMs;
use crate::ticket::{
    ExpiryPolicy, IdGenerator, LoginTicket, Pgt, Principal, ServiceTicket, Tgt, TgtChange, Ticket, TicketId, TicketKind,
};

/// One map per ticket kind. PGTIOUs are never stored: they live only in the validation response and the callback.
#[derive(Clone)]
pub struct Maps {
    pub tgt: Arc<dyn TicketMap<Tgt>>,
    pub st: Arc<dyn TicketMap<ServiceTicket>>,
    pub pt: Arc<dyn TicketMap<ServiceTicket>>,
    pub pgt: Arc<dyn TicketMap<Pgt>>,
    pub lt: Arc<dyn TicketMap<LoginTicket>>,
    /// The same maps as replication serves them to peers; empty for a single node's local maps.
    served: Vec<(MapId, Arc<dyn MapReplica>)>,
}

impl MapSet for Maps {
    fn replicas(&self) -> Vec<(MapId, Arc<dyn MapReplica>)> {
        self.served.clone()
    }
}

impl Maps {
    /// Maps replicated to the whole cluster through `replicas`, each with its [`MapPolicy`]; `session_min_copies`
    /// is `cluster.min_copies`.
    pub fn replicated(replicas: Arc<dyn Replicas>, expiry: &ExpiryPolicy, session_min_copies: usize) -> Self {
        Self::replicated_with(replicas, expiry, session_min_copies, None)
    }

    /// As [`Maps::replicated`]; with a journal, the maps every node holds (TGT, PGT) are first restored from the
    /// records read back from it, then record every change in it, and compactions read them.
    pub fn replicated_with(
        replicas: Arc<dyn Replicas>,
        expiry: &ExpiryPolicy,
        session_min_copies: usize,
        journal: Option<Reopened>,
    ) -> Self {
        let policy = |map| MapPolicy::of(map, expiry, session_min_copies);
        let tgt = Arc::new(ReplicatedMap::<Tgt>::new(policy(MapId::Tgt), replicas.clone()));
        let st = Arc::new(ReplicatedMap::<ServiceTicket>::new(policy(MapId::St), replicas.clone()));
        let pt = Arc::new(ReplicatedMap::<ServiceTicket>::new(policy(MapId::Pt), replicas.clone()));
        let pgt = Arc::new(ReplicatedMap::<Pgt>::new(policy(MapId::Pgt), replicas.clone()));
        let lt = Arc::new(ReplicatedMap::<LoginTicket>::new(policy(MapId::Lt), replicas));
        if let Some((store, records)) = journal {
            let mut unreadable = 0usize;
            for (map, entry) in &records {
                let read = match map {
                    MapId::Tgt => tgt.restore(entry),
                    MapId::Pgt => pgt.restore(entry),
                    // One-time tickets are never written (the generation rule makes a kept copy useless).
                    MapId::St | MapId::Pt | MapId::Lt => true,
                };
                unreadable += usize::from(!read);
            }
            if unreadable > 0 {
                tracing::error!(unreadable, path = %store.path().display(),
                    "journal records this casd cannot decode (written by another version?) were skipped");
            }
            drop(records);
            tgt.persist_to(store.clone());
            pgt.persist_to(store.clone());
            let entries = tgt.held() + pgt.held();
            let (t, p) = (tgt.clone(), pgt.clone());
            store.compact_from(
                Arc::new(move |f| {
                    t.for_each_entry(&mut |e| f(MapId::Tgt, e));
                    p.for_each_entry(&mut |e| f(MapId::Pgt, e));
                }),
                entries,
            );
        }
        let served: Vec<(MapId, Arc<dyn MapReplica>)> = vec![
            (MapId::Tgt, tgt.clone()),
            (MapId::St, st.clone()),
            (MapId::Pt, pt.clone()),
            (MapId::Pgt, pgt.clone()),
            (MapId::Lt, lt.clone()),
        ];
        Self { tgt, st, pt, pgt, lt, served }
    }

    /// In-memory maps for a single node.
    pub fn local() -> Self {
        Self {
            tgt: Arc::new(LocalMap::default()),
            st: Arc::new(LocalMap::default()),
            pt: Arc::new(LocalMap::default()),
            pgt: Arc::new(LocalMap::default()),
            lt: Arc::new(LocalMap::default()),
            served: Vec::new(),
        }
    }
}

/// Refusals (the ticket is not good) are kept apart from outages (the registry could not answer).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RegistryError {
    #[error("ticket not recognized")]
    NotFound,
    #[error("ticket expired")]
    Expired,
    #[error("ticket is of the wrong kind for this use")]
    WrongKind,
    #[error("the ticket-granting ticket behind this ticket has ended")]
    SessionEnded,
    #[error(transparent)]
    Map(#[from] MapError),
}

/// The registry of one node.
pub struct TicketRegistry {
    ids: IdGenerator,
    policy: ExpiryPolicy,
    maps: Maps,
    /// The sessions this node opened per user, oldest first, for the per-user cap.
    sessions_by_user: dashmap::DashMap<String, std::collections::VecDeque<(TicketId, EpochMs)>>,
    max_sessions_per_user: usize,
    /// Nodes (this one included) that must hold a logout's removal before it is confirmed (`cluster.logout_quorum`).
    logout_quorum: usize,
    /// The chaos lab's record of successful consumes (`lab.consume_journal`); `None` outside the lab.
    journal: Option<journal::ConsumeJournal>,
}

/// What a logout did.
#[derive(Debug)]
pub struct Logout {
    /// The session it ended, when this node held it (for single logout).
    pub tgt: Option<Arc<Tgt>>,
    /// Whether the removal reached the logout quorum. When it did not, the node keeps sending it to the peers that
    /// missed it until they have it (repair), but cannot promise that no node still gives SSO meanwhile.
    pub confirmed: bool,
}

/// A consumed service or proxy ticket with the TGT it was granted under.
#[derive(Clone, Debug)]
pub struct Consumed {
    pub kind: TicketKind,
    pub ticket: Arc<ServiceTicket>,
    pub tgt: Arc<Tgt>,
}

impl TicketRegistry {
    pub fn new(ids: IdGenerator, policy: ExpiryPolicy, maps: Maps) -> Self {
        Self::with_session_cap(ids, policy, maps, usize::MAX)
    }

    /// A registry that keeps at most `max_sessions_per_user` SSO sessions per user opened on this node.
    pub fn with_session_cap(ids: IdGenerator, policy: ExpiryPolicy, maps: Maps, max_sessions_per_user: usize) -> Self {
        Self {
            ids,
            policy,
            maps,
            sessions_by_user: Default::default(),
            max_sessions_per_user,
            logout_quorum: 1,
            journal: None,
        }
    }

    /// Rebuilds the per-user session counts after a restart from the sessions this node opened (their ids end with
    /// `node`, whatever the boot) that the journal brought back: without it, the cap started from zero and a user
    /// could hold its limit again after every restart. Merged with logins made meanwhile, oldest first.
    pub fn rebuild_session_counts(&self, node: &str, now: EpochMs) -> usize {
        let mut per_user: std::collections::HashMap<String, Vec<(TicketId, EpochMs)>> = Default::default();
        for (id, tgt) in self.maps.tgt.live_entries() {
            if id.origin().is_some_and(|o| o.node == node) && !tgt.is_expired(&self.policy, now) {
                per_user.entry(tgt.principal.id.clone()).or_default().push((id, tgt.created));
            }
        }
        let restored = per_user.values().map(Vec::len).sum();
        for (user, sessions) in per_user {
            let mut queue = self.sessions_by_user.entry(user).or_default();
            let mut all: Vec<_> = queue.drain(..).chain(sessions).collect();
            all.sort_by_key(|(_, created)| *created);
            all.dedup_by(|a, b| a.0 == b.0);
            queue.extend(all);
        }
        restored
    }

    /// The same registry, recording every successful consume of a one-time ticket in `journal` (the chaos lab).
    pub fn with_journal(mut self, journal: Option<journal::ConsumeJournal>) -> Self {
        self.journal = journal;
        self
    }

    /// The same registry, confirming a logout only once `quorum` nodes (this one included) hold it.
    pub fn with_logout_quorum(mut self, quorum: usize) -> Self {
        self.logout_quorum = quorum.max(1);
        self
    }

    /// Records `tgt` as `user`'s newest session and ends the oldest ones past the per-user cap (one account cannot
    /// fill the maps with sessions: issue 12 saw 1,055 in 20 s). Returns the ended sessions, for single logout.
    pub async fn cap_sessions(&self, user: &str, tgt: &TicketId, now: EpochMs) -> Vec<Arc<Tgt>> {
        let max_age = self.policy.tgt_max_lifetime.as_millis() as u64;
        let evict: Vec<TicketId> = {
            let mut sessions = self.sessions_by_user.entry(user.to_owned()).or_default();
            // Oldest first (pushed as they open): dropping the expired front is O(1) per login, where a scan of
            // the whole queue cost O(sessions) and slowed every login of a user with many (measured: a soak of
            // logins by one user with a high cap fell from 1.9k to 1.3k/s in four minutes).
            while sessions.front().is_some_and(|(_, created)| now.saturating_sub(*created) >= max_age) {
                sessions.pop_front();
            }
            sessions.push_back((tgt.clone(), now));
            let over = sessions.len().saturating_sub(self.max_sessions_per_user);
            sessions.drain(..over).map(|(id, _)| id).collect()
        };
        let mut ended = Vec::new();
        for id in evict {
            if let Ok(Some(old)) = self.destroy_tgt(id.as_str()).await {
                tracing::info!(tgt = %id.redacted(), "oldest session of a user ended: per-user session cap");
                ended.push(old);
            }
        }
        ended
    }

    pub fn policy(&self) -> &ExpiryPolicy {
        &self.policy
    }

    /// How many tickets each map holds, expired ones the sweeper has not reached included.
    pub fn sizes(&self) -> [(TicketKind, usize); 5] {
        [
            (TicketKind::Tgt, self.maps.tgt.len()),
            (TicketKind::St, self.maps.st.len()),
            (TicketKind::Pt, self.maps.pt.len()),
            (TicketKind::Pgt, self.maps.pgt.len()),
            (TicketKind::Lt, self.maps.lt.len()),
        ]
    }

    pub async fn issue_lt(&self, now: EpochMs) -> Result<TicketId, RegistryError> {
        let id = self.ids.mint(TicketKind::Lt);
        self.maps.lt.insert(&id, LoginTicket { created: now }).await?;
        Ok(id)
    }

    /// Uses up a login ticket; it is gone afterwards whatever the login's outcome (CAS 3.0 §3.5.1).
    pub async fn consume_lt(&self, raw: &str, now: EpochMs) -> Result<(), RegistryError> {
        let id = self.parse_kind(raw, &[TicketKind::Lt])?;
        let lt = self.maps.lt.take(&id).await?.ok_or(RegistryError::NotFound)?;
        if lt.is_expired(&self.policy, now) {
            return Err(RegistryError::Expired);
        }
        Ok(())
    }

    pub async fn issue_tgt(&self, principal: Principal, now: EpochMs) -> Result<TicketId, RegistryError> {
        self.issue_session(principal, now, false).await
    }

    /// A new SSO session; `long_term` for a remember-me login (its own limits, when the policy allows them).
    pub async fn issue_session(
        &self,
        principal: Principal,
        now: EpochMs,
        long_term: bool,
    ) -> Result<TicketId, RegistryError> {
        let id = self.ids.mint(TicketKind::Tgt);
        let long_term = long_term && self.policy.remember_me;
        let tgt = Tgt { principal, created: now, last_used: now, services: Default::default(), long_term };
        self.maps.tgt.insert(&id, tgt).await?;
        Ok(id)
    }

    /// The TGT behind a cookie value, if it exists and has not expired.
    pub async fn live_tgt(&self, raw: &str, now: EpochMs) -> Result<(TicketId, Arc<Tgt>), RegistryError> {
        let id = self.parse_kind(raw, &[TicketKind::Tgt])?;
        let tgt = self.maps.tgt.get(&id).await.ok_or(RegistryError::NotFound)?;
        if tgt.is_expired(&self.policy, now) {
            return Err(RegistryError::Expired);
        }
        Ok((id, tgt))
    }

    /// The live TGT a stored ticket was granted under. Its id came from this registry, not from a client, so its mac
    /// is not checked again: that check (an HMAC) was the costliest step of a validation after the HTTP work.
    async fn granting_tgt(&self, raw: &str, now: EpochMs) -> Option<Arc<Tgt>> {
        let id = TicketId::parse(raw).ok()?;
        let tgt = self.maps.tgt.get(&id).await?;
        (!tgt.is_expired(&self.policy, now)).then_some(tgt)
    }

    /// Grants a service ticket under a live TGT and records the service in the TGT for single logout.
    pub async fn grant_st(
        &self,
        tgt_id: &TicketId,
        service: &str,
        from_new_login: bool,
        now: EpochMs,
    ) -> Result<TicketId, RegistryError> {
        self.live_tgt(tgt_id.as_str(), now).await?;
        let st = ServiceTicket {
            service: service.to_owned(),
            tgt: tgt_id.to_string(),
            from_new_login,
            created: now,
            proxies: Vec::new(),
        };
        self.grant(TicketKind::St, tgt_id, st, now).await
    }

    async fn grant(
        &self,
        kind: TicketKind,
        tgt_id: &TicketId,
        ticket: ServiceTicket,
        now: EpochMs,
    ) -> Result<TicketId, RegistryError> {
        let id = self.ids.mint(kind);
        let map = if kind == TicketKind::Pt { &self.maps.pt } else { &self.maps.st };
        let service = ticket.service.clone();
        map.insert(&id, ticket).await?;
        let change = TgtChange::Granted { ticket: id.to_string(), service, at: now };
        let (granted, on_disk) = self.maps.tgt.change_deferred(tgt_id, change).await?;
        if !granted {
            // The TGT ended (logout) between the check and the grant: the new ticket must not outlive it.
            let _ = map.take(&id).await;
            return Err(RegistryError::SessionEnded);
        }
        // Under durability `sync` the grant (which single logout needs after a restart) must be on disk before the
        // application learns who the user is: the ticket's validation waits for it, not its issue. The browser's
        // trip to the application hides the sync; a node that dies before it refuses the ticket anyway.
        map.hold(&id, on_disk);
        Ok(id)
    }

    /// Consumes a service ticket (and, when `accept_pt`, a proxy ticket) whatever the outcome of the validation that
    /// follows: CAS 3.0 §3.1.1 makes every validation attempt use the ticket up.
    pub async fn consume(&self, raw: &str, accept_pt: bool, now: EpochMs) -> Result<Consumed, RegistryError> {
        let id = self.parse_kind(raw, &[TicketKind::St, TicketKind::Pt])?;
        let kind = id.kind();
        let map = if kind == TicketKind::Pt { &self.maps.pt } else { &self.maps.st };
        let ticket = map.take(&id).await?.ok_or(RegistryError::NotFound)?;
        if kind == TicketKind::Pt && !accept_pt {
            return Err(RegistryError::WrongKind);
        }
        if ticket.is_expired(&self.policy, now) {
            return Err(RegistryError::Expired);
        }
        let tgt = self.granting_tgt(&ticket.tgt, now).await.ok_or(RegistryError::SessionEnded)?;
        if let Some(journal) = &self.journal {
            journal.record(&id, now);
        }
        Ok(Consumed { kind, ticket, tgt })
    }

    /// Mints a PGT id and an independent PGTIOU. Nothing is stored until the callback has succeeded.
    pub fn mint_pgt(&self) -> (TicketId, TicketId) {
        (self.ids.mint(TicketKind::Pgt), self.ids.mint(TicketKind::PgtIou))
    }

    pub async fn store_pgt(&self, id: &TicketId, pgt: Pgt) -> Result<(), RegistryError> {
        Ok(self.maps.pgt.insert(id, pgt).await?)
    }

    /// Grants a proxy ticket for `target` with a live PGT. The PT carries the PGT's proxy chain.
    pub async fn grant_pt(&self, raw_pgt: &str, target: &str, now: EpochMs) -> Result<TicketId, RegistryError> {
        let pgt_id = self.parse_kind(raw_pgt, &[TicketKind::Pgt])?;
        let pgt = self.maps.pgt.get(&pgt_id).await.ok_or(RegistryError::NotFound)?;
        if pgt.is_expired(&self.policy, now) {
            return Err(RegistryError::Expired);
        }
        let (tgt_id, _) = self.live_tgt(&pgt.tgt, now).await.map_err(|_| RegistryError::SessionEnded)?;
        let pt = ServiceTicket {
            service: target.to_owned(),
            tgt: pgt.tgt.clone(),
            from_new_login: false,
            created: now,
            proxies: pgt.proxies.clone(),
        };
        self.grant(TicketKind::Pt, &tgt_id, pt, now).await
    }

    /// Ends an SSO session: removes the TGT and every PGT under it. Returns the TGT for single logout.
    pub async fn destroy_tgt(&self, raw: &str) -> Result<Option<Arc<Tgt>>, RegistryError> {
        Ok(self.logout(raw).await?.tgt)
    }

    /// Ends the session `raw` names, with its PGTs, and says whether the logout quorum holds the removal. A value
    /// that is no TGT of this cluster ends nothing and needs no confirmation.
    pub async fn logout(&self, raw: &str) -> Result<Logout, RegistryError> {
        let Ok(id) = self.parse_kind(raw, &[TicketKind::Tgt]) else { return Ok(Logout { tgt: None, confirmed: true }) };
        let ended = self.maps.tgt.end(&id).await?;
        if ended.value.is_some() {
            let tgt_id = id.to_string();
            self.maps.pgt.remove_where(&move |p: &Pgt| p.tgt == tgt_id).await;
        }
        Ok(Logout { tgt: ended.value, confirmed: ended.copies >= self.logout_quorum })
    }

    /// Removes every expired ticket and every PGT whose TGT is gone; returns the expired TGTs for single logout.
    pub async fn sweep(&self, now: EpochMs) -> Vec<(TicketId, Arc<Tgt>)> {
        let max_age = self.policy.tgt_max_lifetime.as_millis() as u64;
        self.sessions_by_user.retain(|_, sessions| {
            // Oldest first (pushed as they open): dropping the expired front is O(1) per login, where a scan of
            // the whole queue cost O(sessions) and slowed every login of a user with many (measured: a soak of
            // logins by one user with a high cap fell from 1.9k to 1.3k/s in four minutes).
            while sessions.front().is_some_and(|(_, created)| now.saturating_sub(*created) >= max_age) {
                sessions.pop_front();
            }
            !sessions.is_empty()
        });
        let policy = &self.policy;
        self.maps.st.sweep(policy, now).await;
        self.maps.pt.sweep(policy, now).await;
        self.maps.lt.sweep(policy, now).await;
        self.maps.pgt.sweep(policy, now).await;
        let expired = self.maps.tgt.sweep(policy, now).await;
        for (id, _) in &expired {
            let tgt_id = id.to_string();
            self.maps.pgt.remove_where(&move |p: &Pgt| p.tgt == tgt_id).await;
        }
        expired
    }
}

impl TicketRegistry {
    /// The id in `raw`, if it is one of `kinds` and was minted in this cluster: anything else is refused before any
    /// lookup, so made-up ids cost no map access and no replicated write.
    fn parse_kind(&self, raw: &str, kinds: &[TicketKind]) -> Result<TicketId, RegistryError> {
        let id = TicketId::parse(raw).map_err(|_| RegistryError::NotFound)?;
        if !self.ids.recognises(&id) {
            return Err(RegistryError::NotFound);
        }
        if kinds.contains(&id.kind()) { Ok(id) } else { Err(RegistryError::WrongKind) }
    }
}

#[cfg(test)]
mod tests;
