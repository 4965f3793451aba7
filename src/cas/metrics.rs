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
    /// Logins refused for a directory's account state (locked, expired...), and not checked for an outage.
    pub logins_refused_account: AtomicU64,
    pub logins_unavailable: AtomicU64,
    /// Operations sent to LDAP directories (shared with the LDAP sources).
    pub ldap_operations: std::sync::Arc<AtomicU64>,
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

/// A family whose samples differ by one label: `casd_<name>{<label>="<value>"} <n>` for each pair.
pub fn labelled<V: std::fmt::Display, N: std::fmt::Display>(
    out: &mut String,
    (name, kind, help): (&str, &str, &str),
    label: &str,
    samples: impl IntoIterator<Item = (V, N)>,
) {
    family(out, name, kind, help);
    for (value, n) in samples {
        let _ = writeln!(out, "casd_{name}{{{label}=\"{value}\"}} {n}");
    }
}

/// Renders the protocol layer's metrics: logins, tickets, single logout.
pub fn render(app: &App, out: &mut String) {
    let m = &app.metrics;
    let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let logins = [
        ("ok", &m.logins_ok),
        ("failed", &m.logins_failed),
        ("throttled", &m.logins_throttled),
        ("account_refused", &m.logins_refused_account),
        ("source_unavailable", &m.logins_unavailable),
    ];
    labelled(
        out,
        ("logins_total", "counter", "Login attempts by outcome."),
        "outcome",
        logins.map(|(o, c)| (o, get(c))),
    );
    family(out, "ldap_operations_total", "counter", "Operations (binds and searches) sent to LDAP directories.");
    let _ = writeln!(out, "casd_ldap_operations_total {}", get(&m.ldap_operations));
    labelled(
        out,
        ("tickets_issued_total", "counter", "Tickets issued by this node, by kind."),
        "kind",
        TicketKind::ALL.iter().enumerate().map(|(i, kind)| (kind.prefix(), get(&m.issued[i]))),
    );
    labelled(
        out,
        ("tickets_validated_total", "counter", "Successful validations, by ticket kind."),
        "kind",
        [TicketKind::St, TicketKind::Pt].map(|kind| (kind.prefix(), get(&m.validated[kind_index(kind)]))),
    );
    labelled(
        out,
        ("tickets_rejected_total", "counter", "Protocol refusals, by CAS error code."),
        "code",
        CODES.iter().enumerate().map(|(i, code)| (code.as_str(), get(&m.rejected[i]))),
    );
    labelled(
        out,
        ("tickets_live", "gauge", "Tickets held in each map (expired ones not yet swept included)."),
        "map",
        app.registry.sizes().map(|(kind, n)| (kind.prefix(), n as u64)),
    );
    let slo = app.slo.counts();
    labelled(
        out,
        ("slo_requests_total", "counter", "Back-channel single-logout requests, by outcome."),
        "outcome",
        [("sent", slo.sent), ("failed", slo.failed)],
    );
}
