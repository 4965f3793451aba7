//! One-time tickets under concurrency: many validations of one ST race; exactly one wins.

use std::sync::Arc;

use crate::support::*;

const APP: &str = "http://127.0.0.1:9/app";

/// 16 simultaneous validations of one ST, over 200 rounds: exactly one success each round, the rest INVALID_TICKET.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixteen_racing_validations_of_one_st_succeed_exactly_once() {
    let node = start(|_| {}).await;
    let url = Arc::new(format!("{}/serviceValidate", node.base_url()));
    let client = http();
    let mut b = Browser::new(&node);
    b.login(APP).await;
    for round in 0..200 {
        let st = b.sso(APP).await;
        let barrier = Arc::new(tokio::sync::Barrier::new(16));
        let racers: Vec<_> = (0..16)
            .map(|_| {
                let (client, url, st, barrier) = (client.clone(), url.clone(), st.clone(), barrier.clone());
                tokio::spawn(async move {
                    barrier.wait().await;
                    let r = client.get(url.as_str()).query(&[("service", APP), ("ticket", &st)]).send().await;
                    r.expect("request").text().await.expect("body")
                })
            })
            .collect();
        let mut wins = 0;
        for racer in racers {
            let body = racer.await.expect("join");
            match failure_code(&body) {
                None => {
                    assert_eq!(user_of(&body).as_deref(), Some(USER), "{body}");
                    wins += 1;
                }
                Some(code) => assert_eq!(code, "INVALID_TICKET", "{body}"),
            }
        }
        assert_eq!(wins, 1, "round {round}: {wins} validations of {st} succeeded");
    }
    node.shutdown().await;
}
