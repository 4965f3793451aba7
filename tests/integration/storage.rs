//! The journal on disk (issue 14): sessions, their services and logouts survive a restart; bad directories and keys
//! are refused with the path; a `kill -9` under `sync` loses no acknowledged login.

use std::path::{Path, PathBuf};
use std::time::Duration;

use casd::config::{DurabilityMode, Secret};
use casd::{Config, Node};

use crate::support::*;

const KEY: &str = "9V6uaeOXRhIrrvwhidEp8f3qh1qSGaJjn3xrVijg7hQ=";

fn data_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("casd-storage-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn durable(dir: &Path, mode: DurabilityMode) -> impl FnOnce(&mut Config) + use<> {
    let dir = dir.to_owned();
    move |c: &mut Config| {
        c.storage.durability = mode;
        c.storage.dir = Some(dir);
        c.storage.key = Some(Secret(KEY.into()));
    }
}

/// A session opened before a restart gives SSO after it, with the services it reached (single logout still reaches
/// them); a session logged out before the restart stays logged out.
#[tokio::test]
async fn a_single_node_keeps_its_sessions_and_logouts_over_a_restart() {
    for mode in [DurabilityMode::Sync, DurabilityMode::Interval] {
        let dir = data_dir(&format!("restart-{mode:?}"));
        let app = AppServer::start().await;
        let node = start(durable(&dir, mode)).await;
        let mut kept = Browser::new(&node);
        let st = kept.login(&app.url).await;
        let body = call(&node, "/serviceValidate", &[("service", &app.url), ("ticket", &st)]).await;
        assert_eq!(user_of(&body).as_deref(), Some(USER), "{body}");
        let mut ended = Browser::new(&node);
        ended.login(&app.url).await;
        let ended_tgc = ended.tgc.clone().expect("a session");
        assert_eq!(ended.get("/logout").await.status, 200);
        wait_until(Duration::from_secs(5), "the first single logout", || async { app.bodies().len() == 1 }).await;
        node.shutdown().await;

        let node = start(durable(&dir, mode)).await;
        let after = AppServer::start().await;
        let mut kept = Browser { base: node.base_url(), ..kept };
        let st2 = kept.sso(&after.url).await;
        let body = call(&node, "/p3/serviceValidate", &[("service", &after.url), ("ticket", &st2)]).await;
        assert_eq!(user_of(&body).as_deref(), Some(USER), "{mode:?}: the session survived: {body}");
        assert!(body.contains("<cas:memberOf>staff</cas:memberOf>"), "with its attributes: {body}");
        let mut ended = Browser { tgc: Some(ended_tgc), ..Browser::new(&node) };
        let page = ended.get(&format!("/login?service={}", enc(&app.url))).await;
        assert_eq!((page.status, page.location), (200, None), "{mode:?}: the logged-out session stays dead");
        assert_eq!(kept.get("/logout").await.status, 200);
        wait_until(Duration::from_secs(5), "single logout of the restored session", || async {
            app.bodies().len() == 2 && after.bodies().len() == 1
        })
        .await;
        assert!(app.bodies()[1].contains(&st), "the service reached before the restart is told: {:?}", app.bodies());
        assert!(after.bodies()[0].contains(&st2), "{:?}", after.bodies());
        node.shutdown().await;
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// The journal holds no ticket id, user name or attribute in the clear.
#[tokio::test]
async fn the_journal_is_sealed() {
    let dir = data_dir("sealed");
    let node = start(durable(&dir, DurabilityMode::Sync)).await;
    let mut b = Browser::new(&node);
    b.login("http://127.0.0.1:9/app").await;
    let tgc = b.tgc.clone().expect("session");
    node.shutdown().await;
    let bytes = std::fs::read(dir.join("journal")).expect("journal");
    for secret in [tgc.as_str(), USER, "staff", "TGT-"] {
        assert!(!bytes.windows(secret.len()).any(|w| w == secret.as_bytes()), "{secret} is in the clear");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Another key, a newer format and a directory in use are refused at start, naming the path, and the data that
/// was there is untouched.
#[tokio::test]
async fn another_key_a_newer_format_and_a_directory_in_use_are_refused() {
    let dir = data_dir("refused");
    let node = start(durable(&dir, DurabilityMode::Sync)).await;
    Browser::new(&node).login("http://127.0.0.1:9/app").await;
    let in_use = Node::start(config(durable(&dir, DurabilityMode::Sync))).await.err().expect("refused");
    assert!(
        in_use.to_string().contains("another casd process") && in_use.to_string().contains(&dir.display().to_string())
    );
    node.shutdown().await;
    let journal = dir.join("journal");
    let before = std::fs::read(&journal).expect("journal");

    let other_key = config(durable(&dir, DurabilityMode::Sync));
    let mut other_key = other_key;
    other_key.storage.key = Some(Secret("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=".into()));
    let e = Node::start(other_key).await.err().expect("refused").to_string();
    assert!(e.contains(&journal.display().to_string()) && e.contains("another key"), "{e}");

    let mut newer = before.clone();
    newer[8..12].copy_from_slice(&2u32.to_be_bytes());
    std::fs::write(&journal, &newer).expect("write");
    let e = Node::start(config(durable(&dir, DurabilityMode::Sync))).await.err().expect("refused").to_string();
    assert!(e.contains(&journal.display().to_string()) && e.contains("newer"), "{e}");
    assert_eq!(std::fs::read(&journal).expect("journal"), newer, "a refused journal is left as it was");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A torn last record (a crash in the middle of a write) is cut at start; everything before it is kept.
#[tokio::test]
async fn a_torn_tail_is_cut_and_the_rest_kept() {
    let dir = data_dir("torn");
    let node = start(durable(&dir, DurabilityMode::Sync)).await;
    let mut b = Browser::new(&node);
    b.login("http://127.0.0.1:9/app").await;
    node.shutdown().await;
    let journal = dir.join("journal");
    let good = std::fs::read(&journal).expect("journal").len();
    let mut f = std::fs::OpenOptions::new().append(true).open(&journal).expect("open");
    std::io::Write::write_all(&mut f, &[0, 0, 1, 0, 42, 42, 42]).expect("torn bytes");
    drop(f);
    let node = start(durable(&dir, DurabilityMode::Sync)).await;
    assert_eq!(std::fs::metadata(&journal).expect("journal").len() as usize, good, "cut back to the good records");
    let mut b = Browser { base: node.base_url(), ..b };
    let page = b.get(&format!("/login?service={}", enc("http://127.0.0.1:9/app"))).await;
    assert_eq!(page.status, 302, "the session before the torn record is kept");
    node.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}
