//! One-time tickets under concurrency: many validations of one ST race; exactly one wins.

use crate::support::*;

const APP: &str = "http://127.0.0.1:9/app";

/// 16 simultaneous validations of one ST, over 200 rounds: exactly one success each round, the rest INVALID_TICKET.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixteen_racing_validations_of_one_st_succeed_exactly_once() {
    let node = start(|_| {}).await;
    let urls = vec![format!("{}/serviceValidate", node.base_url())];
    let mut b = Browser::new(&node);
    b.login(APP).await;
    for round in 0..200 {
        let st = b.sso(APP).await;
        let wins = race_validations(&urls, &st, APP, 16).await;
        assert_eq!(wins, 1, "round {round}: {wins} validations of {st} succeeded");
    }
    node.shutdown().await;
}
