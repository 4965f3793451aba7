//! The chaos checker (scripts/chaos_check.py) must fail on each kind of violation and pass a clean history, or a
//! green chaos run means nothing.

use std::process::Command;

fn check(name: &str, history: &[serde_json::Value], faults: &[serde_json::Value]) -> (bool, String) {
    check_with_journals(name, history, faults, &[], false)
}

/// Runs the checker with one journal per entry of `journals` (lines of `lab.consume_journal`).
fn check_with_journals(
    name: &str,
    history: &[serde_json::Value],
    faults: &[serde_json::Value],
    journals: &[Vec<String>],
    durable: bool,
) -> (bool, String) {
    let dir = std::env::temp_dir().join(format!("casd-checker-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let lines = |v: &[serde_json::Value]| v.iter().map(|e| e.to_string() + "\n").collect::<String>();
    let (h, f) = (dir.join("history.jsonl"), dir.join("faults.jsonl"));
    std::fs::write(&h, lines(history)).expect("history");
    std::fs::write(&f, lines(faults)).expect("faults");
    let mut cmd = Command::new("python3");
    cmd.arg("scripts/chaos_check.py").arg(&h).arg(&f);
    for (i, journal) in journals.iter().enumerate() {
        let path = dir.join(format!("h{i}.consumed"));
        std::fs::write(&path, journal.iter().map(|l| format!("{l}\n")).collect::<String>()).expect("journal");
        cmd.arg("--journal").arg(path);
    }
    if durable {
        cmd.arg("--durable");
    }
    let out = cmd.output().expect("python3 runs");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A journal line for ticket `st` consumed on `node` at `t` seconds.
fn consumed(st: &str, node: &str, t: f64) -> String {
    use sha2::Digest;
    let hash: String = sha2::Sha256::digest(st.as_bytes()).iter().map(|b| format!("{b:02x}")).collect();
    format!("{hash} {node} {}", (t * 1000.0) as u64)
}

fn fault(t: f64, kind: &str, extra: serde_json::Value) -> serde_json::Value {
    let mut f = serde_json::json!({"t": t, "fault": kind, "nodes": []});
    if let (Some(f), Some(extra)) = (f.as_object_mut(), extra.as_object()) {
        f.extend(extra.clone());
    }
    f
}

fn op(op: &str, node: u32, start: f64, ok: bool, extra: serde_json::Value) -> serde_json::Value {
    let mut e = serde_json::json!({"worker": 0, "node": node, "op": op, "start": start, "end": start + 0.01, "ok": ok});
    if let (Some(e), Some(extra)) = (e.as_object_mut(), extra.as_object()) {
        e.extend(extra.clone());
    }
    e
}

fn session(tgt: &str) -> Vec<serde_json::Value> {
    vec![
        op("login", 1, 100.0, true, serde_json::json!({"tgt": tgt, "st": "ST-a-n1"})),
        op("validate", 2, 100.5, true, serde_json::json!({"st": "ST-a-n1", "tgt": tgt})),
        op("final-sso", 1, 200.0, true, serde_json::json!({"tgt": tgt})),
        op("final-sso", 2, 200.0, true, serde_json::json!({"tgt": tgt})),
    ]
}

#[test]
fn a_clean_history_passes() {
    let (ok, out) = check("clean", &session("TGT-x-n1"), &[]);
    assert!(ok, "{out}");
    assert!(out.contains("0 violations"), "{out}");
}

#[test]
fn each_violation_is_caught() {
    let tgt = "TGT-x-n1";
    let mut twice = session(tgt);
    twice.push(op("validate", 3, 100.6, true, serde_json::json!({"st": "ST-a-n1", "tgt": tgt})));
    let mut late = session(tgt);
    late.push(op("sso", 1, 101.0, true, serde_json::json!({"tgt": tgt, "st": "ST-b-n1"})));
    late.push(op("validate", 1, 150.0, true, serde_json::json!({"st": "ST-b-n1", "tgt": tgt})));
    let mut resurrected = session(tgt);
    resurrected.push(op("logout", 2, 120.0, true, serde_json::json!({"tgt": tgt})));
    let lost: Vec<_> = session(tgt)
        .into_iter()
        .map(|mut e| {
            if e["op"] == "final-sso" {
                e["ok"] = false.into();
            }
            e
        })
        .collect();
    let mut split = session(tgt);
    split[3]["ok"] = false.into();
    for (name, history, invariant) in [
        ("twice", twice, "I1"),
        ("late", late, "I4"),
        ("resurrected", resurrected, "I3"),
        ("lost", lost, "I2"),
        ("split", split, "VIOLATION C"),
    ] {
        let (ok, out) = check(name, &history, &[]);
        assert!(!ok, "{name}: the checker passed a broken history:\n{out}");
        assert!(out.contains(invariant), "{name}: expected {invariant}:\n{out}");
    }
}

/// The servers' journals catch a second success that no client saw (its client timed out), and a success a client
/// saw that no node recorded.
#[test]
fn the_journals_count_successes_clients_never_saw() {
    let tgt = "TGT-x-n1";
    let once = vec![consumed("ST-a-n1", "h2", 100.5)];
    let (ok, out) = check_with_journals("journal-clean", &session(tgt), &[], &[once.clone(), vec![]], false);
    assert!(ok, "{out}");
    let mut twice = session(tgt);
    twice.push(op("validate", 3, 100.6, false, serde_json::json!({"st": "ST-a-n1", "status": 0})));
    let (ok, out) =
        check_with_journals("journal-twice", &twice, &[], &[once, vec![consumed("ST-a-n1", "h3", 100.6)]], false);
    assert!(!ok && out.contains("VIOLATION I1") && out.contains("consumed 2 times"), "{out}");
    let (ok, out) = check_with_journals("journal-missing", &session(tgt), &[], &[vec![], vec![]], false);
    assert!(!ok && out.contains("in no node's journal"), "{out}");
}

/// A session made on a node cut off from every other is excused only if that node died before the heal took
/// effect; killed seconds after the heal, losing it is a violation.
#[test]
fn only_the_durability_bound_excuses_a_lost_session() {
    let tgt = "TGT-y-n1";
    let lost = |t: f64| {
        vec![
            op("login", 1, t, true, serde_json::json!({"tgt": tgt, "st": "ST-y-n1"})),
            op("final-sso", 1, 200.0, false, serde_json::json!({"tgt": tgt})),
            op("final-sso", 2, 200.0, false, serde_json::json!({"tgt": tgt})),
        ]
    };
    let faults = |kill_at: f64| {
        vec![
            fault(90.0, "isolate", serde_json::json!({"nodes": [1]})),
            fault(110.0, "heal", serde_json::json!({})),
            fault(kill_at, "kill", serde_json::json!({"nodes": [1]})),
            fault(kill_at + 3.0, "restart", serde_json::json!({"nodes": [1]})),
        ]
    };
    let (ok, out) = check("bound-before-heal", &lost(100.0), &faults(110.5));
    assert!(ok, "killed before the heal took effect: excused\n{out}");
    assert!(out.contains("1 lost within the durability bound"), "{out}");
    let (ok, out) = check("bound-after-heal", &lost(100.0), &faults(116.0));
    assert!(!ok && out.contains("VIOLATION I2"), "killed 6 s after the heal: lost\n{out}");
    let (ok, out) = check("bound-not-cut", &lost(80.0), &faults(110.5));
    assert!(!ok && out.contains("VIOLATION I2"), "made before the cut: it reached the others\n{out}");
    // Under durability sync the issuer's disk held it: the same loss is a violation (issue 14).
    let (ok, out) = check_with_journals("bound-durable", &lost(100.0), &faults(110.5), &[], true);
    assert!(!ok && out.contains("VIOLATION I2") && out.contains("none excused"), "durable: no excuse\n{out}");
}

/// I3 during the run: the old cookie gives SSO after a confirmed logout while the cluster was whole; the same
/// during a cut is no violation, and an unconfirmed (202) logout is counted apart, not checked.
#[test]
fn sso_after_a_confirmed_logout_is_caught_during_the_run() {
    let tgt = "TGT-z-n1";
    let mut history = session(tgt);
    history.push(op("logout", 2, 120.0, true, serde_json::json!({"tgt": tgt})));
    history.push(op("sso-after-logout", 3, 120.3, true, serde_json::json!({"tgt": tgt})));
    for e in history.iter_mut().filter(|e| e["op"] == "final-sso") {
        e["ok"] = false.into();
    }
    let (ok, out) = check("i3-whole", &history, &[]);
    assert!(!ok && out.contains("VIOLATION I3") && out.contains("whole throughout"), "{out}");
    let cut = vec![fault(119.0, "partition", serde_json::json!({"groups": [[1, 2], [3]]}))];
    let (ok, out) = check("i3-cut", &history, &cut);
    assert!(ok, "node 3 was cut off: it could not know\n{out}");
    let mut unconfirmed = session(tgt);
    unconfirmed.push(op(
        "logout",
        2,
        120.0,
        false,
        serde_json::json!({"tgt": tgt, "unconfirmed": true, "status": 202}),
    ));
    let (ok, out) = check("i3-unconfirmed", &unconfirmed, &[]);
    assert!(ok && out.contains("1 unconfirmed"), "{out}");
}

/// The second final round catches a session that came back after the first.
#[test]
fn the_second_final_round_is_checked_too() {
    let tgt = "TGT-w-n1";
    let mut history = session(tgt);
    history.push(op("logout", 2, 120.0, true, serde_json::json!({"tgt": tgt})));
    for e in history.iter_mut().filter(|e| e["op"] == "final-sso") {
        e["ok"] = false.into();
    }
    history.push(op("final-sso", 1, 210.0, false, serde_json::json!({"tgt": tgt, "round": 2})));
    history.push(op("final-sso", 2, 210.0, true, serde_json::json!({"tgt": tgt, "round": 2})));
    let (ok, out) = check("round-two", &history, &[]);
    assert!(!ok && out.contains("round 2") && out.contains("VIOLATION I3"), "{out}");
}
