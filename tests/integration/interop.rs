//! Interop with a real third-party CAS client: python-cas (PyPI), unmodified, against a real node.

use std::process::Command;

use crate::support::*;

/// python-cas logs in and validates with CAS 1.0, 2.0, 3.0 and SAML 1.1, and accepts casd's single logout.
/// Needs `pip install -r tests/interop/requirements.txt` (done by `.ci/run`); fails, rather than skips, without it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_cas_client_logs_in_validates_and_logs_out() {
    let node = start(|_| {}).await;
    let base = node.base_url();
    let out = tokio::task::spawn_blocking(move || {
        Command::new("python3").arg("tests/interop/python_cas_flow.py").arg(base).output()
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
}
