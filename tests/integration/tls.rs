//! TLS termination in casd: a test CA on an ephemeral port, certificate reload without a restart.

use std::process::Command;
use std::time::Duration;

use casd::config::TlsConfig;

use crate::support::*;

fn write_leaf(dir: &std::path::Path, ca: &TestCa) -> TlsConfig {
    let (cert, key) = ca.leaf_pem();
    let (cert_file, key_file) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_file, cert).expect("cert");
    std::fs::write(&key_file, key).expect("key");
    TlsConfig { cert_file, key_file }
}

fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("casd-tls-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    dir
}

async fn login_page(client: &reqwest::Client, base: &str) -> Result<u16, reqwest::Error> {
    Ok(client.get(format!("{base}/login")).send().await?.status().as_u16())
}

/// casd serves HTTPS with the configured certificate, sets a Secure cookie, and speaks no plain http there.
#[tokio::test]
async fn serves_https_with_the_configured_certificate() {
    let ca = TestCa::new();
    let tls = write_leaf(&temp_dir("serve"), &ca);
    let node = start(|c| {
        c.http.allow_plain_http = false;
        c.http.tls = Some(tls);
    })
    .await;
    let base = node.base_url();
    assert!(base.starts_with("https://127.0.0.1:"), "{base}");
    let mut b = Browser { base: base.clone(), client: ca.client(), tgc: None };
    let page = b.login_with(Some("https://127.0.0.1:9/app"), "", USER, PASSWORD).await;
    assert_eq!(page.status, 302);
    let cookie = page.set_cookie.iter().find(|c| c.starts_with("TGC=")).expect("cookie");
    assert!(cookie.contains("; Secure"), "{cookie}");
    let plain = http().get(base.replacen("https", "http", 1) + "/login").send().await;
    assert!(plain.is_err() || plain.is_ok_and(|r| r.status().as_u16() >= 400), "no plain http on the TLS port");
    assert!(login_page(&TestCa::new().client(), &base).await.is_err(), "a client not trusting the CA fails");
    node.shutdown().await;
}

/// A renewed certificate is picked up by a reload; a broken one is refused and the old one stays in use.
#[tokio::test]
async fn reload_swaps_the_certificate_and_survives_a_bad_one() {
    let (old_ca, new_ca) = (TestCa::new(), TestCa::new());
    let dir = temp_dir("reload");
    let tls = write_leaf(&dir, &old_ca);
    let node = start(|c| {
        c.http.allow_plain_http = false;
        c.http.tls = Some(tls.clone());
    })
    .await;
    let base = node.base_url();
    assert_eq!(login_page(&old_ca.client(), &base).await.ok(), Some(200));
    std::fs::write(&tls.cert_file, "not a certificate").expect("write");
    assert!(node.reload_tls().is_err(), "a broken file is refused");
    assert_eq!(login_page(&old_ca.client(), &base).await.ok(), Some(200), "and the old certificate stays");
    write_leaf(&dir, &new_ca);
    node.reload_tls().expect("reload");
    assert_eq!(login_page(&new_ca.client(), &base).await.ok(), Some(200));
    assert!(login_page(&old_ca.client(), &base).await.is_err(), "the old certificate is gone");
    node.shutdown().await;
}

/// The binary reloads its certificate on SIGHUP.
#[tokio::test]
async fn sighup_reloads_the_certificate() {
    let (old_ca, new_ca) = (TestCa::new(), TestCa::new());
    let dir = temp_dir("sighup");
    write_leaf(&dir, &old_ca);
    let config = dir.join("casd.toml");
    let text = casd::config::EMBEDDED_DEFAULT
        .replace("listen = \"127.0.0.1:8080\"", "listen = \"127.0.0.1:0\"")
        .replace("allow_plain_http = true", "[http.tls]\ncert_file = \"cert.pem\"\nkey_file = \"key.pem\"")
        .replace("format = \"human\"", "format = \"json\"");
    std::fs::write(&config, text).expect("config");
    let ServingBinary { mut child, base, .. } = ServingBinary::start(&config);
    assert_eq!(login_page(&old_ca.client(), &base).await.ok(), Some(200));
    write_leaf(&dir, &new_ca);
    let pid = child.id().to_string();
    assert!(Command::new("kill").args(["-HUP", &pid]).status().expect("kill").success());
    let client = new_ca.client();
    wait_until(Duration::from_secs(5), "the new certificate after SIGHUP", || {
        let (client, base) = (client.clone(), base.clone());
        async move { login_page(&client, &base).await.ok() == Some(200) }
    })
    .await;
    let _ = child.kill();
    let _ = child.wait();
}
