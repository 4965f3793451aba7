//! What users and services did to this node, as counters bumped where things happen, and their rendering in the
//! Prometheus text format. The ops endpoints (`crate::ops`) serve them beside the cluster's.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

use super::App;
use super::error::CasCode;
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

pub fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP casd_{name} {help}\n# TYPE casd_{name} {kind}");
}

/// Renders the protocol layer's metrics: logins, tickets, single logout.
pub fn render(app: &App, out: &mut String) {
    let m = &app.metrics;
    let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
    family(out, "logins_total", "counter", "Login attempts by outcome.");
    for (outcome, c) in [("ok", &m.logins_ok), ("failed", &m.logins_failed), ("throttled", &m.logins_throttled)] {
        let _ = writeln!(out, "casd_logins_total{{outcome=\"{outcome}\"}} {}", get(c));
    }
    family(out, "tickets_issued_total", "counter", "Tickets issued by this node, by kind.");
    for (i, kind) in TicketKind::ALL.iter().enumerate() {
        let _ = writeln!(out, "casd_tickets_issued_total{{kind=\"{}\"}} {}", kind.prefix(), get(&m.issued[i]));
    }
    family(out, "tickets_validated_total", "counter", "Successful validations, by ticket kind.");
    for kind in [TicketKind::St, TicketKind::Pt] {
        let _ = writeln!(
            out,
            "casd_tickets_validated_total{{kind=\"{}\"}} {}",
            kind.prefix(),
            get(&m.validated[kind_index(kind)])
        );
    }
    family(out, "tickets_rejected_total", "counter", "Protocol refusals, by CAS error code.");
    for (i, code) in CODES.iter().enumerate() {
        let _ = writeln!(out, "casd_tickets_rejected_total{{code=\"{}\"}} {}", code.as_str(), get(&m.rejected[i]));
    }
    family(out, "tickets_live", "gauge", "Tickets held in each map (expired ones not yet swept included).");
    for (kind, n) in app.registry.sizes() {
        let _ = writeln!(out, "casd_tickets_live{{map=\"{}\"}} {n}", kind.prefix());
    }
    let slo = app.slo.counts();
    family(out, "slo_requests_total", "counter", "Back-channel single-logout requests, by outcome.");
    let _ = writeln!(out, "casd_slo_requests_total{{outcome=\"sent\"}} {}", slo.sent);
    let _ = writeln!(out, "casd_slo_requests_total{{outcome=\"failed\"}} {}", slo.failed);
}
