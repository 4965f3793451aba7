//! `/metrics` in the Prometheus text format, `/health` (the process answers) and `/ready` (this node has its full
//! copy of the maps and is not leaving). Counters are plain atomics bumped where things happen; gauges are read at
//! scrape time.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::extract::State;
use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};

use super::AppState;
use super::error::CasCode;
use crate::cluster::membership::MemberStatus;
use crate::ticket::TicketKind;

const CODES: [CasCode; 8] = [
    CasCode::InvalidRequest,
    CasCode::InvalidTicketSpec,
    CasCode::UnauthorizedServiceProxy,
    CasCode::UnauthorizedService,
    CasCode::InvalidProxyCallback,
    CasCode::InvalidTicket,
    CasCode::InvalidService,
    CasCode::InternalError,
];

/// Counters of what users and services did to this node.
#[derive(Default)]
pub struct Metrics {
    pub logins_ok: AtomicU64,
    pub logins_failed: AtomicU64,
    pub logins_throttled: AtomicU64,
    issued: [AtomicU64; 6],
    validated: [AtomicU64; 6],
    rejected: [AtomicU64; 8],
}

fn kind_index(kind: TicketKind) -> usize {
    TicketKind::ALL.iter().position(|k| *k == kind).unwrap_or(0)
}

impl Metrics {
    pub fn issued(&self, kind: TicketKind) {
        self.issued[kind_index(kind)].fetch_add(1, Ordering::Relaxed);
    }

    pub fn validated(&self, kind: TicketKind) {
        self.validated[kind_index(kind)].fetch_add(1, Ordering::Relaxed);
    }

    pub fn rejected(&self, code: CasCode) {
        if let Some(i) = CODES.iter().position(|c| *c == code) {
            self.rejected[i].fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP casd_{name} {help}\n# TYPE casd_{name} {kind}");
}

/// Renders every metric of this node.
pub fn render(app: &AppState) -> String {
    let m = &app.metrics;
    let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let mut out = String::with_capacity(4096);
    family(&mut out, "logins_total", "counter", "Login attempts by outcome.");
    for (outcome, c) in [("ok", &m.logins_ok), ("failed", &m.logins_failed), ("throttled", &m.logins_throttled)] {
        let _ = writeln!(out, "casd_logins_total{{outcome=\"{outcome}\"}} {}", get(c));
    }
    family(&mut out, "tickets_issued_total", "counter", "Tickets issued by this node, by kind.");
    for (i, kind) in TicketKind::ALL.iter().enumerate() {
        let _ = writeln!(out, "casd_tickets_issued_total{{kind=\"{}\"}} {}", kind.prefix(), get(&m.issued[i]));
    }
    family(&mut out, "tickets_validated_total", "counter", "Successful validations, by ticket kind.");
    for kind in [TicketKind::St, TicketKind::Pt] {
        let _ = writeln!(
            out,
            "casd_tickets_validated_total{{kind=\"{}\"}} {}",
            kind.prefix(),
            get(&m.validated[kind_index(kind)])
        );
    }
    family(&mut out, "tickets_rejected_total", "counter", "Protocol refusals, by CAS error code.");
    for (i, code) in CODES.iter().enumerate() {
        let _ = writeln!(out, "casd_tickets_rejected_total{{code=\"{}\"}} {}", code.as_str(), get(&m.rejected[i]));
    }
    family(&mut out, "tickets_live", "gauge", "Tickets held in each map (expired ones not yet swept included).");
    for (kind, n) in app.registry.sizes() {
        let _ = writeln!(out, "casd_tickets_live{{map=\"{}\"}} {n}", kind.prefix());
    }
    let slo = app.slo.counts();
    family(&mut out, "slo_requests_total", "counter", "Back-channel single-logout requests, by outcome.");
    let _ = writeln!(out, "casd_slo_requests_total{{outcome=\"sent\"}} {}", slo.sent);
    let _ = writeln!(out, "casd_slo_requests_total{{outcome=\"failed\"}} {}", slo.failed);
    if let Some(status) = &app.cluster {
        let s = status.borrow().clone();
        family(&mut out, "cluster_members", "gauge", "Members this node sees alive, by status.");
        for st in [MemberStatus::Joining, MemberStatus::Ready, MemberStatus::Leaving] {
            let n = s.view().values().filter(|m| m.status == st).count();
            let _ = writeln!(out, "casd_cluster_members{{status=\"{}\"}} {n}", st.as_str());
        }
        family(&mut out, "cluster_frames_dropped_total", "counter", "Cluster frames dropped, by reason.");
        let d = s.dropped;
        for (reason, n) in [
            ("bad_key", d.bad_tag),
            ("replayed", d.replayed),
            ("stale", d.stale),
            ("malformed", d.malformed),
            ("oversize", d.oversize),
        ] {
            let _ = writeln!(out, "casd_cluster_frames_dropped_total{{reason=\"{reason}\"}} {n}");
        }
        family(&mut out, "gossip_bytes_total", "counter", "Gossip bytes, by direction.");
        let _ = writeln!(out, "casd_gossip_bytes_total{{direction=\"sent\"}} {}", d.bytes_sent);
        let _ = writeln!(out, "casd_gossip_bytes_total{{direction=\"received\"}} {}", d.bytes_received);
    }
    if let Some(r) = app.replication.as_ref().map(|f| f()) {
        family(&mut out, "replication_writes_total", "counter", "Replicated writes started by this node.");
        let _ = writeln!(out, "casd_replication_writes_total {}", r.writes);
        family(
            &mut out,
            "replication_write_seconds",
            "summary",
            "Time writes waited for every peer's acknowledgement (replication lag).",
        );
        let _ = writeln!(out, "casd_replication_write_seconds_sum {:.6}", r.ack_wait_micros as f64 / 1e6);
        let _ = writeln!(out, "casd_replication_write_seconds_count {}", r.writes);
        family(&mut out, "replication_acks_total", "counter", "Peer acknowledgements of writes, by outcome.");
        let _ = writeln!(out, "casd_replication_acks_total{{outcome=\"ok\"}} {}", r.acks);
        let _ = writeln!(out, "casd_replication_acks_total{{outcome=\"missed\"}} {}", r.ack_failures);
        family(
            &mut out,
            "replication_forwarded_consumes_total",
            "counter",
            "One-time tickets forwarded to their owner.",
        );
        let _ = writeln!(out, "casd_replication_forwarded_consumes_total {}", r.forwarded_consumes);
        family(
            &mut out,
            "replication_entries_pulled_total",
            "counter",
            "Entries merged from pulls from peers (state transfer and anti-entropy).",
        );
        let _ = writeln!(out, "casd_replication_entries_pulled_total {}", r.entries_pulled);
    }
    out
}

pub async fn metrics(State(app): State<AppState>) -> Response {
    (StatusCode::OK, [(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], render(&app)).into_response()
}

/// Liveness: the process serves HTTP.
pub async fn health() -> &'static str {
    "ok\n"
}

/// Readiness: a single node is ready when it serves; a clustered one while it publishes `ready` (after state
/// transfer, until it starts leaving).
pub async fn ready(State(app): State<AppState>) -> Response {
    let status = app.cluster.as_ref().map(|s| {
        let s = s.borrow();
        s.members.iter().find(|m| m.is_self).map_or(MemberStatus::Joining, |m| m.status)
    });
    match status {
        None | Some(MemberStatus::Ready) => (StatusCode::OK, "ready\n").into_response(),
        Some(other) => (StatusCode::SERVICE_UNAVAILABLE, format!("{}\n", other.as_str())).into_response(),
    }
}
