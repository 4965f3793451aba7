//! LDAP authentication against a real OpenLDAP `slapd`: the bind modes, ldaps and StartTLS under a test CA,
//! failover, a directory outage, the password policy's answers, attribute release, injection, and the chain
//! with a users file.

use std::time::Duration;

use casd::auth::SourceConfig;
use casd::{Config, NodeHandle};

use crate::directories::*;
use crate::support::*;

const APP: &str = "http://127.0.0.1:9/app";

fn source(toml_text: &str) -> SourceConfig {
    toml::from_str(toml_text).unwrap_or_else(|e| panic!("source config: {e}\n{toml_text}"))
}

/// A search-then-bind source as a service account, over ldaps, reading mail, cn and memberOf (as `groups`).
fn search_source(ldap: &Slapd, urls: &[String]) -> SourceConfig {
    source(&format!(
        r#"type = "ldap"
        urls = {urls:?}
        mode = "search"
        ca_file = "{ca}"
        base_dn = "ou=people,{BASE}"
        filter = "(&(objectClass=inetOrgPerson)(uid={{user}}))"
        service_dn = "{SERVICE_DN}"
        service_password = "{SERVICE_PW}"
        attributes = ["mail", "cn", "memberOf", "uid"]
        attribute_map = {{ memberOf = "groups" }}
        principal_attribute = "uid"
        pool_size = 2
        connect_timeout = "1s"
        operation_timeout = "2s""#,
        ca = ldap.ca.pem_file.display()
    ))
}

async fn node_with(sources: Vec<SourceConfig>, keep_users: bool, adjust: impl FnOnce(&mut Config)) -> NodeHandle {
    start(|c| {
        if !keep_users {
            c.auth.users.clear();
        }
        c.auth.sources = sources;
        adjust(c);
    })
    .await
}

async fn metrics(node: &NodeHandle, line_start: &str) -> u64 {
    let body =
        http().get(format!("{}/metrics", node.base_url())).send().await.expect("metrics").text().await.expect("body");
    body.lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no {line_start} in\n{body}"))
}

/// Logs in by the form; the page the browser gets back.
async fn login(node: &NodeHandle, user: &str, password: &str) -> Page {
    Browser::new(node).login_with(Some(APP), "", user, password).await
}

#[tokio::test]
async fn search_then_bind_over_ldaps_releases_the_directory_attributes_in_two_operations() {
    let ldap = Slapd::start();
    let node = node_with(vec![search_source(&ldap, &[ldap.ldaps_url()])], false, |_| {}).await;
    let st = ticket_of(&login(&node, "alice", "alice-pw").await);
    let xml = call(&node, "/p3/serviceValidate", &[("service", APP), ("ticket", &st)]).await;
    assert_eq!(user_of(&xml).as_deref(), Some("alice"), "{xml}");
    assert!(xml.contains("<cas:mail>alice@example.org</cas:mail>"), "{xml}");
    assert!(xml.contains("<cas:cn>Alice Liddell</cas:cn>"), "{xml}");
    for group in ["cn=staff,ou=groups,dc=example,dc=org", "cn=faculty,ou=groups,dc=example,dc=org"] {
        assert!(xml.contains(&format!("<cas:groups>{group}</cas:groups>")), "memberOf renamed to groups: {xml}");
    }
    assert!(!xml.contains("memberOf"), "{xml}");

    // With warm pools a login costs the search and the user's bind: two operations.
    let before = metrics(&node, "casd_ldap_operations_total").await;
    ticket_of(&login(&node, "alice", "alice-pw").await);
    let after = metrics(&node, "casd_ldap_operations_total").await;
    assert_eq!(after - before, 2, "LDAP operations for one search-then-bind login");

    let page = login(&node, "alice", "wrong").await;
    assert_eq!(page.status, 401, "{}", page.body);
    assert!(page.body.contains("incorrect"), "{}", page.body);
    node.shutdown().await;
}

#[tokio::test]
async fn direct_bind_over_starttls_and_anonymous_search() {
    let ldap = Slapd::start();
    let direct = source(&format!(
        r#"type = "ldap"
        urls = ["{url}"]
        starttls = true
        ca_file = "{ca}"
        mode = "direct"
        bind_dn = "uid={{user}},ou=people,{BASE}"
        attributes = ["mail"]"#,
        url = ldap.ldap_url(),
        ca = ldap.ca.pem_file.display()
    ));
    let node = node_with(vec![direct], false, |_| {}).await;
    let st = ticket_of(&login(&node, "alice", "alice-pw").await);
    let xml = call(&node, "/p3/serviceValidate", &[("service", APP), ("ticket", &st)]).await;
    assert_eq!(user_of(&xml).as_deref(), Some("alice"), "{xml}");
    assert!(xml.contains("<cas:mail>alice@example.org</cas:mail>"), "read as the user after the bind: {xml}");
    assert_eq!(login(&node, "alice", "nope").await.status, 401);
    // A DN-special character in the name is escaped into the DN, not interpreted.
    assert_eq!(login(&node, "alice,ou=people", "alice-pw").await.status, 401);
    node.shutdown().await;

    let anonymous = source(&format!(
        r#"type = "ldap"
        urls = ["{url}"]
        ca_file = "{ca}"
        mode = "search"
        base_dn = "{BASE}"
        filter = "(uid={{user}})""#,
        url = ldap.ldaps_url(),
        ca = ldap.ca.pem_file.display()
    ));
    let node = node_with(vec![anonymous], false, |_| {}).await;
    ticket_of(&login(&node, "alice", "alice-pw").await);
    node.shutdown().await;
}

#[tokio::test]
async fn a_directory_under_an_untrusted_certificate_is_unavailable_not_a_wrong_password() {
    let ldap = Slapd::start();
    let other_ca = TestCa::new();
    let mut s = search_source(&ldap, &[ldap.ldaps_url()]);
    if let SourceConfig::Ldap(l) = &mut s {
        l.ca_file = Some(other_ca.pem_file.clone());
    }
    let node = node_with(vec![s], false, |_| {}).await;
    let page = login(&node, "alice", "alice-pw").await;
    assert_eq!(page.status, 503, "{}", page.body);
    assert!(page.body.contains("cannot reach the user directory"), "{}", page.body);
    node.shutdown().await;
}

#[tokio::test]
async fn failover_to_the_second_url_when_the_first_is_down() {
    let ldap = Slapd::start();
    let dead = format!("ldaps://127.0.0.1:{}", free_port());
    let node = node_with(vec![search_source(&ldap, &[dead, ldap.ldaps_url()])], false, |_| {}).await;
    for _ in 0..3 {
        ticket_of(&login(&node, "alice", "alice-pw").await);
    }
    node.shutdown().await;
}

/// While the directory is down: a directory user is told "service unavailable" (503) and nothing counts against
/// them; the break-glass account in the users file still logs in. When it is back, the user logs in at once.
#[tokio::test]
async fn directory_down_is_service_unavailable_never_a_lockout_and_break_glass_works() {
    let mut ldap = Slapd::start();
    let sources = vec![search_source(&ldap, &[ldap.ldaps_url()]), SourceConfig::Users];
    let node = node_with(sources, true, |c| c.throttle.max_failures = 3).await;
    ticket_of(&login(&node, "alice", "alice-pw").await);
    ldap.stop();
    for _ in 0..5 {
        let page = login(&node, "alice", "alice-pw").await;
        assert_eq!(page.status, 503, "{}", page.body);
        assert!(page.body.contains("cannot reach the user directory"), "{}", page.body);
    }
    ticket_of(&login(&node, USER, PASSWORD).await);
    assert!(metrics(&node, "casd_logins_total{outcome=\"source_unavailable\"}").await >= 5);
    ldap.run();
    // The pooled connections died with the server: the first login after it finds that and reconnects.
    ticket_of(&login(&node, "alice", "alice-pw").await);
    node.shutdown().await;
}

#[tokio::test]
async fn expired_password_and_locked_account_are_told_on_the_login_page() {
    let ldap = Slapd::start();
    let node = node_with(vec![search_source(&ldap, &[ldap.ldaps_url()])], false, |_| {}).await;
    // bob's policy expires a password one second after it was set; slapd counts in whole seconds and wants more
    // than pwdMaxAge, so two full seconds must have passed whatever the phase of the clock.
    tokio::time::sleep(Duration::from_millis(3000)).await;
    let page = login(&node, "bob", "bob-pw").await;
    assert_eq!(page.status, 403, "{}", page.body);
    assert!(page.body.contains("Your password has expired"), "{}", page.body);
    let page = login(&node, "carol", "carol-pw").await;
    assert_eq!(page.status, 403, "{}", page.body);
    assert!(page.body.contains("Your account is locked"), "{}", page.body);
    assert_eq!(metrics(&node, "casd_logins_total{outcome=\"account_refused\"}").await, 2);
    // REST says it too.
    let r = http()
        .post(format!("{}/v1/tickets", node.base_url()))
        .form(&[("username", "carol"), ("password", "carol-pw")])
        .send()
        .await
        .expect("rest");
    assert_eq!(r.status().as_u16(), 401);
    assert_eq!(r.text().await.expect("body").trim(), "account locked");
    node.shutdown().await;
}

#[tokio::test]
async fn ldap_injection_in_the_username_and_an_empty_password_log_nobody_in() {
    let ldap = Slapd::start();
    let node = node_with(vec![search_source(&ldap, &[ldap.ldaps_url()])], false, |_| {}).await;
    // Unescaped, `al*` would match alice alone and her password would log in "al*".
    for name in ["al*", "*", "alice)(uid=*", "alice)(|(uid=*)", "*)(objectClass=*"] {
        let page = login(&node, name, "alice-pw").await;
        assert_eq!(page.status, 401, "{name}: {}", page.body);
    }
    // An empty password would be an unauthenticated bind, which slapd accepts.
    let page = login(&node, "alice", "").await;
    assert_eq!(page.status, 401, "{}", page.body);
    node.shutdown().await;
}

/// A users file after the directory: names the directory knows are decided there (a file entry with the same
/// name and another password does not log in); names it does not know fall through to the file.
#[tokio::test]
async fn the_chain_asks_the_next_source_only_for_names_the_directory_does_not_know() {
    let ldap = Slapd::start();
    let twin = casd::auth::UserRecord {
        username: "casadmin-twin".into(),
        password_hash: casd::auth::hash_password("file-pw").expect("hash"),
        attributes: Default::default(),
    };
    let sources = vec![search_source(&ldap, &[ldap.ldaps_url()]), SourceConfig::Users];
    let node = node_with(sources, true, |c| c.auth.users.push(twin)).await;
    assert_eq!(login(&node, "casadmin-twin", "file-pw").await.status, 401, "the directory decides its own names");
    ticket_of(&login(&node, "casadmin-twin", "twin-pw").await);
    ticket_of(&login(&node, USER, PASSWORD).await);
    assert_eq!(login(&node, "nobody", "x").await.status, 401);
    node.shutdown().await;
}

/// `casd check-config` reaches the directory; `casd test-login` shows the source, principal and attributes and
/// never the password.
#[tokio::test]
async fn check_config_and_test_login_commands() {
    let ldap = Slapd::start();
    let dir = std::env::temp_dir().join(format!("casd-ldapcli-{}", free_port()));
    std::fs::create_dir_all(&dir).expect("dir");
    let config = |urls: &str, filter: &str| {
        format!(
            "[node]\nname = \"n1\"\n[http]\nlisten = \"127.0.0.1:0\"\nallow_plain_http = true\n\
             [[services]]\nid = 1\nname = \"app\"\npattern = 'http://127\\.0\\.0\\.1:9/.*'\nrelease = [\"mail\"]\n\
             [[auth.sources]]\ntype = \"ldap\"\nurls = [{urls}]\nmode = \"search\"\nca_file = \"{ca}\"\n\
             base_dn = \"{BASE}\"\nfilter = \"{filter}\"\nservice_dn = \"{SERVICE_DN}\"\n\
             service_password = \"{SERVICE_PW}\"\nattributes = [\"mail\", \"cn\"]\nconnect_timeout = \"1s\"\n",
            ca = ldap.ca.pem_file.display()
        )
    };
    let run = |args: &[&str], stdin: &str| {
        use std::io::Write;
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_casd"))
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("casd");
        child.stdin.take().expect("stdin").write_all(stdin.as_bytes()).expect("write");
        let out = child.wait_with_output().expect("wait");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let good = dir.join("good.toml");
    std::fs::write(&good, config(&format!("{:?}", ldap.ldaps_url()), "(uid={user})")).expect("write");
    let (ok, out) = run(&["check-config", good.to_str().expect("path")], "");
    assert!(ok && out.contains("auth source ldap: reachable"), "{out}");

    let down = dir.join("down.toml");
    std::fs::write(&down, config(&format!("\"ldaps://127.0.0.1:{}\"", free_port()), "(uid={user})")).expect("write");
    let (ok, out) = run(&["check-config", down.to_str().expect("path")], "");
    assert!(!ok && out.contains("no LDAP server answered"), "{out}");

    let bad = dir.join("bad.toml");
    std::fs::write(&bad, config(&format!("{:?}", ldap.ldaps_url()), "(uid={user}")).expect("write");
    let (ok, out) = run(&["check-config", bad.to_str().expect("path")], "");
    assert!(!ok && out.contains("auth.sources[0].filter") && out.contains("not an LDAP filter"), "{out}");

    let (ok, out) = run(
        &["test-login", "alice", "-c", good.to_str().expect("path"), "--service", "http://127.0.0.1:9/x"],
        "alice-pw\n",
    );
    assert!(ok, "{out}");
    assert!(out.contains("source ldap: accepted, principal \"alice\""), "{out}");
    assert!(
        out.contains("mail = [\"alice@example.org\"]") && !out.contains("cn = "),
        "only what the service is released: {out}"
    );
    assert!(!out.contains("alice-pw"), "the password is never printed: {out}");
    let (ok, out) = run(&["test-login", "alice", "-c", good.to_str().expect("path")], "wrong\n");
    assert!(!ok && out.contains("invalid credentials") && !out.contains("wrong"), "{out}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The real binary's JSON logs through logins that succeed, fail and meet a dead directory: the passwords (the
/// users' and the service account's) appear nowhere; the outage does, naming the server.
#[tokio::test]
async fn no_password_reaches_the_logs() {
    let mut ldap = Slapd::start();
    let dir = std::env::temp_dir().join(format!("casd-ldaplog-{}", free_port()));
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("casd.toml");
    let text = format!(
        "[node]\nname = \"n1\"\n[http]\nlisten = \"127.0.0.1:0\"\nallow_plain_http = true\n[log]\nformat = \"json\"\n\
         [[services]]\nid = 1\nname = \"app\"\npattern = 'http://127\\.0\\.0\\.1:9/.*'\n\
         [[auth.sources]]\ntype = \"ldap\"\nurls = [\"{url}\"]\nmode = \"search\"\nca_file = \"{ca}\"\n\
         base_dn = \"{BASE}\"\nfilter = \"(uid={{user}})\"\nservice_dn = \"{SERVICE_DN}\"\n\
         service_password = \"{SERVICE_PW}\"\nconnect_timeout = \"1s\"\n",
        url = ldap.ldaps_url(),
        ca = ldap.ca.pem_file.display()
    );
    std::fs::write(&path, text).expect("write");
    let ServingBinary { mut child, lines, base } = ServingBinary::start(&path);
    let mut b = Browser { base, client: http(), tgc: None };
    ticket_of(&b.login_with(Some(APP), "", "alice", "alice-pw").await);
    let mut b = Browser { base: b.base.clone(), client: http(), tgc: None };
    assert_eq!(b.login_with(Some(APP), "", "alice", "Wr0ng-Secret").await.status, 401);
    ldap.stop();
    assert_eq!(b.login_with(Some(APP), "", "alice", "alice-pw").await.status, 503);
    let _ = child.kill();
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let _ = child.wait();
    let log = rest.join("\n");
    for secret in ["alice-pw", "Wr0ng-Secret", SERVICE_PW] {
        assert!(!log.contains(secret), "{secret} in the log:\n{log}");
    }
    assert!(log.contains("authentication source could not answer") && log.contains(&ldap.ldaps_url()), "{log}");
    let _ = std::fs::remove_dir_all(&dir);
}
