//! The chaos checker (scripts/chaos_check.py) must fail on each kind of violation and pass a clean history, or a
//! green chaos run means nothing.

use std::process::Command;

fn check(name: &str, history: &[serde_json::Value], faults: &[serde_json::Value]) -> (bool, String) {
    let dir = std::env::temp_dir().join(format!("casd-checker-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let lines = |v: &[serde_json::Value]| v.iter().map(|e| e.to_string() + "\n").collect::<String>();
    let (h, f) = (dir.join("history.jsonl"), dir.join("faults.jsonl"));
    std::fs::write(&h, lines(history)).expect("history");
    std::fs::write(&f, lines(faults)).expect("faults");
    let out = Command::new("python3").arg("scripts/chaos_check.py").arg(&h).arg(&f).output().expect("python3 runs");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned())
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
