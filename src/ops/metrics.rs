//! `GET /metrics` in the Prometheus text format: the protocol layer's counters, then membership, dropped frames,
//! gossip bytes and replication, read at scrape time.

use std::fmt::Write;
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};

use super::{ClusterView, Ops};
use crate::cas::metrics::{family, labelled};
use crate::cluster::membership::MemberStatus;

pub(super) async fn metrics(State(ops): State<Arc<Ops>>) -> Response {
    let mut out = String::with_capacity(4096);
    crate::cas::metrics::render(&ops.cas, &mut out);
    if let Some(cluster) = &ops.cluster {
        render_cluster(cluster, &mut out);
    }
    (StatusCode::OK, [(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], out).into_response()
}

fn render_cluster(cluster: &ClusterView, out: &mut String) {
    let s = cluster.status.borrow().clone();
    let live = s.live();
    labelled(
        out,
        ("cluster_members", "gauge", "Members this node sees alive, by status."),
        "status",
        [MemberStatus::Joining, MemberStatus::Ready, MemberStatus::Leaving]
            .map(|st| (st.as_str(), live.values().filter(|m| m.status == st).count())),
    );
    let d = s.dropped;
    labelled(
        out,
        ("cluster_frames_dropped_total", "counter", "Cluster frames dropped, by reason."),
        "reason",
        [
            ("bad_key", d.bad_tag),
            ("replayed", d.replayed),
            ("stale", d.stale),
            ("malformed", d.malformed),
            ("oversize", d.oversize),
            ("unknown_destination", d.unknown_destination),
        ],
    );
    labelled(
        out,
        ("gossip_bytes_total", "counter", "Gossip bytes, by direction."),
        "direction",
        [("sent", d.bytes_sent), ("received", d.bytes_received)],
    );
    let r = cluster.replication();
    family(out, "replication_writes_total", "counter", "Replicated writes started by this node.");
    let _ = writeln!(out, "casd_replication_writes_total {}", r.writes);
    family(
        out,
        "replication_write_seconds",
        "summary",
        "Time writes waited for every peer's acknowledgement (replication lag).",
    );
    let _ = writeln!(out, "casd_replication_write_seconds_sum {:.6}", r.ack_wait_micros as f64 / 1e6);
    let _ = writeln!(out, "casd_replication_write_seconds_count {}", r.writes);
    labelled(
        out,
        ("replication_acks_total", "counter", "Peer acknowledgements of writes, by outcome."),
        "outcome",
        [("ok", r.acks), ("missed", r.ack_failures)],
    );
    family(out, "replication_forwarded_consumes_total", "counter", "One-time tickets forwarded to their owner.");
    let _ = writeln!(out, "casd_replication_forwarded_consumes_total {}", r.forwarded_consumes);
    family(
        out,
        "replication_entries_pulled_total",
        "counter",
        "Entries merged from pulls from peers (state transfer and anti-entropy).",
    );
    let _ = writeln!(out, "casd_replication_entries_pulled_total {}", r.entries_pulled);
}
