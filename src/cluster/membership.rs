//! From chitchat's per-node key/values to typed members and a view. Pure: the async side gathers the facts.

use std::collections::BTreeMap;

use serde::Serialize;

/// Keys this node publishes in its chitchat state. Kept to a handful: the digest of every node travels in every SYN.
pub const KEY_HTTP: &str = "http";
pub const KEY_REPLICATION: &str = "repl";
pub const KEY_STATUS: &str = "status";

/// Where a member is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MemberStatus {
    /// Started, not yet serving (state transfer).
    Joining,
    Ready,
    /// Shutting down gracefully: peers should stop waiting for it.
    Leaving,
    /// Published something this version does not know.
    Unknown,
}

impl MemberStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Joining => "joining",
            Self::Ready => "ready",
            Self::Leaving => "leaving",
            Self::Unknown => "unknown",
        }
    }

    pub fn parse(s: Option<&str>) -> Self {
        match s {
            Some("joining") => Self::Joining,
            Some("ready") => Self::Ready,
            Some("leaving") => Self::Leaving,
            _ => Self::Unknown,
        }
    }
}

/// One member as this node sees it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct MemberInfo {
    pub node: String,
    /// Boot generation (start time in ms): a restarted node comes back with a higher one.
    pub generation: u64,
    pub gossip_addr: String,
    pub http_addr: Option<String>,
    pub replication_addr: Option<String>,
    pub status: MemberStatus,
    /// Whether the failure detector holds it alive.
    pub alive: bool,
    pub heartbeat: u64,
    /// Milliseconds since its heartbeat last rose, as seen here.
    pub last_heartbeat_ms: u64,
    /// Phi-accrual suspicion: silence divided by the mean heartbeat gap. Dead above the threshold.
    pub phi: f64,
    pub is_self: bool,
}

/// The live members by node name. A node seen in several generations counts once, with its newest generation.
pub type View = BTreeMap<String, MemberInfo>;

/// Builds the view from every known member: alive ones only, newest generation per node.
pub fn view_of(members: &[MemberInfo]) -> View {
    let mut view = View::new();
    for m in members.iter().filter(|m| m.alive) {
        if view.get(&m.node).is_none_or(|known| known.generation < m.generation) {
            view.insert(m.node.clone(), m.clone());
        }
    }
    view
}

/// Phi from the silence and chitchat's adaptive timeout (`threshold x mean gap`), so it reads on the same scale as
/// the configured threshold.
pub fn phi(silence_ms: u64, detection_timeout_ms: Option<u64>, threshold: f64) -> f64 {
    match detection_timeout_ms {
        Some(timeout) if timeout > 0 => silence_ms as f64 * threshold / timeout as f64,
        _ => 0.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(node: &str, generation: u64, alive: bool) -> MemberInfo {
        MemberInfo {
            node: node.into(),
            generation,
            gossip_addr: "127.0.0.1:1".into(),
            http_addr: None,
            replication_addr: None,
            status: MemberStatus::Ready,
            alive,
            heartbeat: 0,
            last_heartbeat_ms: 0,
            phi: 0.0,
            is_self: false,
        }
    }

    #[test]
    fn view_keeps_live_members_newest_generation_first() {
        let view = view_of(&[member("a", 1, true), member("a", 2, true), member("b", 5, false), member("c", 1, true)]);
        assert_eq!(view.keys().collect::<Vec<_>>(), vec!["a", "c"]);
        assert_eq!(view["a"].generation, 2);
    }

    #[test]
    fn status_round_trips_and_phi_scales_to_the_threshold() {
        for s in [MemberStatus::Joining, MemberStatus::Ready, MemberStatus::Leaving] {
            assert_eq!(MemberStatus::parse(Some(s.as_str())), s);
        }
        assert_eq!(MemberStatus::parse(None), MemberStatus::Unknown);
        assert_eq!(phi(1600, Some(1600), 8.0), 8.0);
        assert_eq!(phi(400, Some(1600), 8.0), 2.0);
        assert_eq!(phi(400, None, 8.0), 0.0);
    }
}
