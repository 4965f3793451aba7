//! Service definitions in files: access strategy (enabled, SSO allowed, required attributes), per-service ticket
//! lifetime and user name, evaluation order, and reloads (on a file change, on SIGHUP, a bad file kept out).

use std::path::{Path, PathBuf};
use std::time::Duration;

use casd::NodeHandle;

use crate::support::*;

const STAFF: &str = "http://127.0.0.1:9/staff/app";
const ADMIN: &str = "http://127.0.0.1:9/admin/app";
const NO_SSO: &str = "http://127.0.0.1:9/nosso/app";
const OFF: &str = "http://127.0.0.1:9/off/app";

fn services_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("casd-services-{}-{}", std::process::id(), free_port()));
    std::fs::create_dir_all(&dir).expect("dir");
    // order -1: evaluated before the demo's catch-all localhost service (order 0, id 1).
    write(
        &dir,
        "10-staff.toml",
        &format!(
            "id = 10\nname = \"Staff wiki\"\norder = -1\npattern = '{}'\nrelease = [\"*\"]\n\
         required_attributes = {{ memberOf = [\"staff\", \"faculty\"] }}\nusername_attribute = \"mail\"\nst_ttl = \"1s\"\n",
            regex::escape(STAFF)
        ),
    );
    write(
        &dir,
        "20-admin.toml",
        &format!(
            "id = 20\nname = \"Admin console\"\norder = -1\npattern = '{}'\nrequired_attributes = {{ memberOf = [\"admins\"] }}\n",
            regex::escape(ADMIN)
        ),
    );
    write(
        &dir,
        "30-nosso.json",
        &format!(
            r#"{{"id": 30, "name": "Payroll", "order": -1, "pattern": "{}", "sso": false}}"#,
            regex::escape(NO_SSO).replace('\\', "\\\\")
        ),
    );
    write(
        &dir,
        "40-off.toml",
        &format!("id = 40\nname = \"Retired app\"\norder = -1\npattern = '{}'\nenabled = false\n", regex::escape(OFF)),
    );
    dir
}

fn write(dir: &Path, name: &str, text: &str) {
    std::fs::write(dir.join(name), text).expect("write service file");
}

async fn node(dir: &Path, watch: Duration) -> NodeHandle {
    let dir = dir.to_owned();
    start(move |c| {
        c.service_registry.dir = Some(dir);
        c.service_registry.watch_interval = watch;
    })
    .await
}

#[tokio::test]
async fn access_strategy_username_attribute_and_ticket_lifetime_per_service() {
    let dir = services_dir();
    let node = node(&dir, Duration::from_secs(3600)).await;
    let mut b = Browser::new(&node);

    // Staff: admitted (memberOf holds staff); the user name is the mail attribute.
    let st = b.login(STAFF).await;
    let xml = call(&node, "/p3/serviceValidate", &[("service", STAFF), ("ticket", &st)]).await;
    assert_eq!(user_of(&xml).as_deref(), Some("casuser@example.org"), "{xml}");
    // Its tickets live 1 s (the global st_ttl is 10 s).
    let st = b.sso(STAFF).await;
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let xml = call(&node, "/serviceValidate", &[("service", STAFF), ("ticket", &st)]).await;
    assert_eq!(failure_code(&xml).as_deref(), Some("INVALID_TICKET"), "{xml}");

    // Admin: not admitted, by SSO and by a password login alike; no ticket.
    let page = b.get(&format!("/login?service={}", enc(ADMIN))).await;
    assert_eq!(page.status, 403, "{}", page.body);
    assert!(page.body.contains("not authorized to use this application"), "{}", page.body);
    let page = Browser::new(&node).login_with(Some(ADMIN), "", USER, PASSWORD).await;
    assert_eq!(page.status, 403, "{}", page.body);
    assert!(page.location.is_none() && page.set_cookie.iter().any(|c| c.starts_with("TGC=")), "logged in, no ticket");
    // The REST protocol applies the same strategy.
    let r = http()
        .post(format!("{}/v1/tickets", node.base_url()))
        .form(&[("username", USER), ("password", PASSWORD)])
        .send()
        .await
        .expect("rest");
    let tgt_url = r.headers().get("location").and_then(|v| v.to_str().ok()).expect("TGT location").to_owned();
    let r = http().post(&tgt_url).form(&[("service", ADMIN)]).send().await.expect("rest st");
    assert_eq!(r.status().as_u16(), 403);

    // No SSO: the form, although the browser holds a session.
    let page = b.get(&format!("/login?service={}", enc(NO_SSO))).await;
    assert_eq!(page.status, 200);
    assert!(page.body.contains("name=\"lt\""), "the login form: {}", page.body);
    let st = ticket_of(&b.login_with(Some(NO_SSO), "", USER, PASSWORD).await);
    let xml = call(&node, "/serviceValidate", &[("service", NO_SSO), ("ticket", &st)]).await;
    assert_eq!(user_of(&xml).as_deref(), Some(USER), "{xml}");

    // Disabled: refused before any form.
    let page = b.get(&format!("/login?service={}", enc(OFF))).await;
    assert_eq!(page.status, 403);
    assert!(page.body.contains("not allowed to use this single sign-on service"), "{}", page.body);
    node.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// A changed file is picked up; a bad one is kept out and the registry in force stays; fixed, it applies.
#[tokio::test]
async fn a_changed_file_reloads_and_a_bad_one_leaves_the_registry_in_force() {
    let dir = services_dir();
    let node = node(&dir, Duration::from_millis(100)).await;
    let mut b = Browser::new(&node);
    b.login(STAFF).await;
    let status = |b: &Browser, service: &'static str| {
        let (client, url) = (b.client.clone(), format!("{}/login?service={}", b.base, enc(service)));
        let tgc = b.tgc.clone().expect("session");
        async move { client.get(url).header("Cookie", format!("TGC={tgc}")).send().await.expect("get").status().as_u16() }
    };
    assert_eq!(status(&b, STAFF).await, 302);

    // Disable the staff wiki by editing its file.
    let staff = std::fs::read_to_string(dir.join("10-staff.toml")).expect("read");
    write(&dir, "10-staff.toml", &format!("{staff}enabled = false\n"));
    wait_until(Duration::from_secs(5), "the edited file to apply", || async { status(&b, STAFF).await == 403 }).await;

    // A broken file (an unknown key): nothing changes, the edit above stays in force.
    write(&dir, "10-staff.toml", &format!("{staff}enabeld = true\n"));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(status(&b, STAFF).await, 403, "the last good registry stays");
    assert!(node.reload_services().expect_err("still broken").to_string().contains("enabeld"));

    // Fixed: it applies.
    write(&dir, "10-staff.toml", &staff);
    wait_until(Duration::from_secs(5), "the fixed file to apply", || async { status(&b, STAFF).await == 302 }).await;

    // A file removed: its service is gone (the catch-all demo service now answers for that URL, with SSO).
    std::fs::remove_file(dir.join("40-off.toml")).expect("rm");
    wait_until(Duration::from_secs(5), "the removal to apply", || async { status(&b, OFF).await == 302 }).await;
    node.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// The real binary reloads its service files on SIGHUP (the watcher is set to an hour), and check-config
/// reports a bad file by name and key.
#[tokio::test]
async fn sighup_reloads_and_check_config_reads_the_directory() {
    let services = services_dir();
    let config = services.with_extension("toml");
    let text = casd::config::EMBEDDED_DEFAULT
        .replace("listen = \"127.0.0.1:8080\"", "listen = \"127.0.0.1:0\"")
        .replace("format = \"human\"", "format = \"json\"")
        + &format!("\n[service_registry]\ndir = {:?}\nwatch_interval = \"1h\"\n", services.display().to_string());
    std::fs::write(&config, text).expect("config");
    let out =
        std::process::Command::new(env!("CARGO_BIN_EXE_casd")).arg("check-config").arg(&config).output().expect("run");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("(5 services)"), "{}", String::from_utf8_lossy(&out.stdout));

    let served = ServingBinary::start(&config);
    let mut b = Browser { base: served.base.clone(), client: http(), tgc: None };
    b.login(STAFF).await;
    let staff = std::fs::read_to_string(services.join("10-staff.toml")).expect("read");
    write(&services, "10-staff.toml", &format!("{staff}enabled = false\n"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(b.get(&format!("/login?service={}", enc(STAFF))).await.status, 302, "no reload without SIGHUP");
    let pid = rustix::process::Pid::from_child(&served.child);
    rustix::process::kill_process(pid, rustix::process::Signal::HUP).expect("SIGHUP");
    let base = b.base.clone();
    let tgc = b.tgc.clone().expect("session");
    wait_until(Duration::from_secs(5), "SIGHUP to reload the services", || {
        let (url, tgc) = (format!("{base}/login?service={}", enc(STAFF)), tgc.clone());
        async move { http().get(url).header("Cookie", format!("TGC={tgc}")).send().await.expect("get").status() == 403 }
    })
    .await;

    write(&services, "50-bad.json", r#"{"id": 10, "name": "dup", "pattern": "https://x/"}"#);
    let out =
        std::process::Command::new(env!("CARGO_BIN_EXE_casd")).arg("check-config").arg(&config).output().expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("50-bad.json") && err.contains("id") && err.contains("10-staff.toml"),
        "{err}"
    );
    drop(served);
    let _ = std::fs::remove_dir_all(&services);
    let _ = std::fs::remove_file(&config);
}
