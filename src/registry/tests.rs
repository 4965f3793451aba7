use std::sync::Arc;

use super::*;

fn registry() -> TicketRegistry {
    TicketRegistry::new(IdGenerator::new("t", 1, &[7; 32]), ExpiryPolicy::default(), Maps::local())
}

fn alice() -> Principal {
    Principal { id: "alice".into(), attributes: Default::default() }
}

#[tokio::test]
async fn st_is_consumed_once_even_when_the_first_attempt_fails() {
    let r = registry();
    let tgt = r.issue_tgt(alice(), 0).await.expect("tgt");
    let st = r.grant_st(&tgt, "https://app/", true, 0).await.expect("st");
    let first = r.consume(st.as_str(), false, 0).await.expect("first validation");
    assert_eq!(first.ticket.service, "https://app/");
    assert_eq!(r.consume(st.as_str(), false, 0).await.unwrap_err(), RegistryError::NotFound);
}

#[tokio::test]
async fn expired_st_is_refused_without_a_sweep() {
    let r = registry();
    let tgt = r.issue_tgt(alice(), 0).await.expect("tgt");
    let st = r.grant_st(&tgt, "https://app/", true, 0).await.expect("st");
    assert_eq!(r.consume(st.as_str(), false, 10_000).await.unwrap_err(), RegistryError::Expired);
}

#[tokio::test]
async fn pt_is_used_up_at_an_endpoint_that_refuses_it() {
    let r = registry();
    let tgt = r.issue_tgt(alice(), 0).await.expect("tgt");
    let (pgt, _) = r.mint_pgt();
    r.store_pgt(&pgt, Pgt { tgt: tgt.to_string(), proxies: vec!["https://p/cb".into()], created: 0 })
        .await
        .expect("pgt");
    let pt = r.grant_pt(pgt.as_str(), "https://back/", 0).await.expect("pt");
    assert_eq!(r.consume(pt.as_str(), false, 0).await.unwrap_err(), RegistryError::WrongKind);
    assert_eq!(r.consume(pt.as_str(), true, 0).await.unwrap_err(), RegistryError::NotFound);
}

#[tokio::test]
async fn destroying_a_tgt_ends_its_pgts_and_its_outstanding_sts() {
    let r = registry();
    let tgt = r.issue_tgt(alice(), 0).await.expect("tgt");
    let st = r.grant_st(&tgt, "https://app/", true, 0).await.expect("st");
    let (pgt, _) = r.mint_pgt();
    r.store_pgt(&pgt, Pgt { tgt: tgt.to_string(), proxies: vec![], created: 0 }).await.expect("pgt");
    let ended = r.destroy_tgt(tgt.as_str()).await.expect("destroy").expect("was live");
    assert_eq!(ended.services.keys().collect::<Vec<_>>(), vec!["https://app/"]);
    assert_eq!(ended.services["https://app/"].ticket, st.to_string());
    assert_eq!(r.grant_pt(pgt.as_str(), "https://b/", 0).await.unwrap_err(), RegistryError::NotFound);
    assert_eq!(r.consume(st.as_str(), false, 0).await.unwrap_err(), RegistryError::SessionEnded);
    assert_eq!(r.grant_st(&tgt, "https://app/", false, 0).await.unwrap_err(), RegistryError::NotFound);
}

#[tokio::test]
async fn concurrent_grants_under_one_tgt_all_reach_its_service_list() {
    let r = Arc::new(registry());
    let tgt = r.issue_tgt(alice(), 0).await.expect("tgt");
    let grants = (0..50).map(|i| {
        let (r, tgt) = (r.clone(), tgt.clone());
        tokio::spawn(async move { r.grant_st(&tgt, &format!("https://app{i}/"), false, 1).await })
    });
    for g in grants {
        g.await.expect("join").expect("grant");
    }
    let (_, live) = r.live_tgt(tgt.as_str(), 1).await.expect("live");
    assert_eq!(live.services.len(), 50);
}

#[tokio::test]
async fn sweep_returns_expired_tgts_and_keeps_live_ones() {
    let r = registry();
    let old = r.issue_tgt(alice(), 0).await.expect("tgt");
    let h = 3_600_000;
    let young = r.issue_tgt(alice(), 2 * h).await.expect("tgt");
    let swept = r.sweep(2 * h + 1).await;
    assert_eq!(swept.iter().map(|(id, _)| id.clone()).collect::<Vec<_>>(), vec![old]);
    assert!(r.live_tgt(young.as_str(), 2 * h + 1).await.is_ok());
}

#[tokio::test]
async fn login_ticket_is_single_use_and_kind_checked() {
    let r = registry();
    let lt = r.issue_lt(0).await.expect("lt");
    r.consume_lt(lt.as_str(), 1).await.expect("first use");
    assert_eq!(r.consume_lt(lt.as_str(), 1).await.unwrap_err(), RegistryError::NotFound);
    let tgt = r.issue_tgt(alice(), 0).await.expect("tgt");
    assert_eq!(r.consume_lt(tgt.as_str(), 1).await.unwrap_err(), RegistryError::WrongKind);
}
