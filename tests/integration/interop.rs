//! Interop with a real third-party CAS client: python-cas (PyPI), unmodified, against a real node.

use std::process::Command;

use crate::support::*;

/// python-cas logs in and validates with CAS 1.0, 2.0, 3.0 and SAML 1.1, and accepts casd's single logout; then
/// the REST protocol, a remember-me cookie that survives a browser restart, and single logout over https to an
/// application behind a private CA.
/// Needs `pip install -r tests/interop/requirements.txt` (done by `.ci/run`); fails, rather than skips, without it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_cas_client_logs_in_validates_and_logs_out() {
    let ca = TestCa::new();
    let (cert, key) = ca.leaf_pem();
    let dir = std::env::temp_dir().join(format!("casd-interop-{}", free_port()));
    std::fs::create_dir_all(&dir).expect("dir");
    let (cert_file, key_file) = (dir.join("app.pem"), dir.join("app.key"));
    std::fs::write(&cert_file, cert).expect("cert");
    std::fs::write(&key_file, key).expect("key");
    let ca_file = ca.pem_file.clone();
    let node = start(move |c| {
        c.tickets.remember_me = true;
        c.tls.client.extra_ca_file = Some(ca_file);
    })
    .await;
    let base = node.base_url();
    let out = tokio::task::spawn_blocking(move || {
        Command::new("python3")
            .arg("tests/interop/python_cas_flow.py")
            .arg(base)
            .env("CASD_INTEROP_TLS_CERT", cert_file)
            .env("CASD_INTEROP_TLS_KEY", key_file)
            .output()
    })
    .await
    .expect("join")
    .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("ModuleNotFoundError"),
        "python-cas is not installed: pip install -r tests/interop/requirements.txt\n{stderr}"
    );
    assert!(out.status.success(), "python-cas flow failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains(" passed, 0 failed"), "{stdout}");
    node.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}
