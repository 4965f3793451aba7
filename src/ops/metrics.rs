//! `GET /metrics` in the Prometheus text format: the protocol layer's counters, then membership, dropped frames,
//! gossip bytes and replication, read at scrape time.

use std::fmt::Write;
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};

use super::{ClusterView, Ops};
use crate::cas::metrics::family;
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
    family(out, "cluster_members", "gauge", "Members this node sees alive, by status.");
    let live = s.live();
    for st in [MemberStatus::Joining, MemberStatus::Ready, MemberStatus::Leaving] {
        let n = live.values().filter(|m| m.status == st).count();
        let _ = writeln!(out, "casd_cluster_members{{status=\"{}\"}} {n}", st.as_str());
    }
    family(out, "cluster_frames_dropped_total", "counter", "Cluster frames dropped, by reason.");
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
    family(out, "gossip_bytes_total", "counter", "Gossip bytes, by direction.");
    let _ = writeln!(out, "casd_gossip_bytes_total{{direction=\"sent\"}} {}", d.bytes_sent);
    let _ = writeln!(out, "casd_gossip_bytes_total{{direction=\"received\"}} {}", d.bytes_received);
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
    family(out, "replication_acks_total", "counter", "Peer acknowledgements of writes, by outcome.");
    let _ = writeln!(out, "casd_replication_acks_total{{outcome=\"ok\"}} {}", r.acks);
    let _ = writeln!(out, "casd_replication_acks_total{{outcome=\"missed\"}} {}", r.ack_failures);
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
