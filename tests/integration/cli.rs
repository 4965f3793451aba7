//! The `casd` binary's subcommands.

use std::process::{Command, Stdio};

fn casd() -> Command {
    Command::new(env!("CARGO_BIN_EXE_casd"))
}

fn temp_file(name: &str, text: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("casd-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write");
    path
}

/// check-config accepts the shipped config and names file, key and value of a bad one.
#[test]
fn check_config_names_file_key_and_value() {
    for shipped in [
        "cluster-configs/single.toml",
        "cluster-configs/lan-multicast.toml",
        "cluster-configs/three-node/node1.toml",
        "cluster-configs/three-node/node2.toml",
        "cluster-configs/three-node/node3.toml",
    ] {
        let ok = casd().args(["check-config", shipped]).output().expect("run");
        assert!(ok.status.success(), "{shipped}: {}", String::from_utf8_lossy(&ok.stderr));
    }
    // The directory examples name hosts that do not exist here: checked without reaching them.
    for shipped in ["cluster-configs/ldap.toml", "cluster-configs/active-directory.toml"] {
        let ok = casd().args(["check-config", "--no-connect", shipped]).output().expect("run");
        assert!(ok.status.success(), "{shipped}: {}", String::from_utf8_lossy(&ok.stderr));
    }
    let bad = temp_file("bad.toml", &casd::config::EMBEDDED_DEFAULT.replace("lt_ttl = \"10m\"", "lt_ttl = \"soon\""));
    let out = casd().arg("check-config").arg(&bad).output().expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.toml") && err.contains("lt_ttl") && err.contains("soon"), "{err}");
    let unknown = temp_file("unknown.toml", &format!("{}\nsurprise = 1\n", casd::config::EMBEDDED_DEFAULT));
    let out = casd().arg("check-config").arg(&unknown).output().expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("surprise"), "{err}");
}

/// hash-password prints an argon2id PHC string that the users file accepts.
#[test]
fn hash_password_and_keygen() {
    let mut child = casd().arg("hash-password").stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().expect("run");
    use std::io::Write;
    child.stdin.take().expect("stdin").write_all(b"hunter2\n").expect("write");
    let out = child.wait_with_output().expect("wait");
    let hash = String::from_utf8(out.stdout).expect("utf8");
    assert!(hash.starts_with("$argon2id$v=19$"), "{hash}");
    let out = casd().arg("keygen").output().expect("run");
    use base64::Engine;
    let key =
        base64::engine::general_purpose::STANDARD.decode(String::from_utf8_lossy(&out.stdout).trim()).expect("b64");
    assert_eq!(key.len(), 32);
}
