//! The validation endpoints: formats, error codes, single use, service match, expiry.

use std::time::Duration;

use crate::support::*;

const APP: &str = "http://127.0.0.1:9/app";

/// CAS 1.0 `/validate` answers the two-line forms exactly.
#[tokio::test]
async fn v1_validate_answers_yes_user_or_no() {
    let node = start(|_| {}).await;
    let mut b = Browser::new(&node);
    let st = b.login(APP).await;
    assert_eq!(call(&node, "/validate", &[("service", APP), ("ticket", &st)]).await, "yes\ncasuser\n");
    assert_eq!(call(&node, "/validate", &[("service", APP), ("ticket", &st)]).await, "no\n\n");
    assert_eq!(call(&node, "/validate", &[("service", APP)]).await, "no\n\n");
    node.shutdown().await;
}

/// CAS 2.0 success: user (and, by default, attributes); the same ST a second time is INVALID_TICKET.
#[tokio::test]
async fn service_validate_succeeds_once() {
    let node = start(|_| {}).await;
    let mut b = Browser::new(&node);
    let st = b.login(APP).await;
    let body = call(&node, "/serviceValidate", &[("service", APP), ("ticket", &st)]).await;
    assert!(body.contains("<cas:serviceResponse xmlns:cas=\"http://www.yale.edu/tp/cas\">"), "{body}");
    assert_eq!(user_of(&body).as_deref(), Some(USER));
    assert!(body.contains("<cas:mail>casuser@example.org</cas:mail>"), "{body}");
    assert!(!body.contains("proxyGrantingTicket") && !body.contains("<cas:proxies>"));
    let again = call(&node, "/serviceValidate", &[("service", APP), ("ticket", &st)]).await;
    assert_eq!(failure_code(&again).as_deref(), Some("INVALID_TICKET"), "{again}");
    node.shutdown().await;
}

/// With `cas2_attributes = false` the 2.0 endpoints release no attributes; /p3 still does.
#[tokio::test]
async fn cas2_attributes_switch() {
    let node = start(|c| c.protocol.cas2_attributes = false).await;
    let mut b = Browser::new(&node);
    let st = b.login(APP).await;
    let body = call(&node, "/serviceValidate", &[("service", APP), ("ticket", &st)]).await;
    assert_eq!(user_of(&body).as_deref(), Some(USER));
    assert!(!body.contains("<cas:attributes>"), "{body}");
    node.shutdown().await;
}

/// CAS 3.0 attributes: the three authentication attributes, then released ones, multi-valued repeated.
#[tokio::test]
async fn p3_service_validate_releases_attributes() {
    let node = start(|_| {}).await;
    let mut b = Browser::new(&node);
    let st = b.login(APP).await;
    let body = call(&node, "/p3/serviceValidate", &[("service", APP), ("ticket", &st)]).await;
    let date = regex::Regex::new(r"<cas:authenticationDate>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ</cas:authenticationDate>")
        .expect("re");
    assert!(date.is_match(&body), "{body}");
    assert!(
        body.contains("<cas:longTermAuthenticationRequestTokenUsed>false</cas:longTermAuthenticationRequestTokenUsed>")
    );
    assert!(body.contains("<cas:isFromNewLogin>true</cas:isFromNewLogin>"));
    assert!(body.contains("<cas:memberOf>staff</cas:memberOf>") && body.contains("<cas:memberOf>demo</cas:memberOf>"));
    node.shutdown().await;
}

/// Only the attributes a service's release list names reach it.
#[tokio::test]
async fn attribute_release_is_per_service() {
    let node = start(|c| c.services[0].release = vec!["mail".into()]).await;
    let mut b = Browser::new(&node);
    let st = b.login(APP).await;
    let body = call(&node, "/p3/serviceValidate", &[("service", APP), ("ticket", &st)]).await;
    assert!(body.contains("<cas:mail>"), "{body}");
    assert!(!body.contains("memberOf") && !body.contains("displayName"), "{body}");
    assert!(body.contains("<cas:isFromNewLogin>"), "authentication attributes are always there");
    node.shutdown().await;
}

/// `format=JSON` on the four XML endpoints; an unknown format is INVALID_REQUEST.
#[tokio::test]
async fn json_format() {
    let node = start(|_| {}).await;
    let mut b = Browser::new(&node);
    for path in ["/serviceValidate", "/proxyValidate", "/p3/serviceValidate", "/p3/proxyValidate"] {
        let st = b.sso_or_login(APP).await;
        let body = call(&node, path, &[("service", APP), ("ticket", &st), ("format", "JSON")]).await;
        let v: serde_json::Value = serde_json::from_str(&body).expect("json");
        assert_eq!(v["serviceResponse"]["authenticationSuccess"]["user"], USER, "{path}: {body}");
        let body = call(&node, path, &[("service", APP), ("ticket", &st), ("format", "json")]).await;
        let v: serde_json::Value = serde_json::from_str(&body).expect("json");
        assert_eq!(v["serviceResponse"]["authenticationFailure"]["code"], "INVALID_TICKET", "{path}: {body}");
    }
    let st = b.sso(APP).await;
    let body = call(&node, "/p3/serviceValidate", &[("service", APP), ("ticket", &st), ("format", "YAML")]).await;
    assert_eq!(failure_code(&body).as_deref(), Some("INVALID_REQUEST"), "{body}");
    node.shutdown().await;
}

/// Missing parameters are INVALID_REQUEST; an unknown or malformed ticket INVALID_TICKET.
#[tokio::test]
async fn bad_requests_get_cas_codes() {
    let node = start(|_| {}).await;
    for params in [vec![], vec![("service", APP)], vec![("ticket", "ST-1-x")], vec![("service", APP), ("ticket", "")]] {
        let body = call(&node, "/serviceValidate", &params).await;
        assert_eq!(failure_code(&body).as_deref(), Some("INVALID_REQUEST"), "{params:?}: {body}");
    }
    for ticket in ["ST-doesnotexist-casd100000000", "garbage<>", "TGT-x-y", &"ST-".repeat(200)] {
        let body = call(&node, "/serviceValidate", &[("service", APP), ("ticket", ticket)]).await;
        let code = failure_code(&body);
        assert!(matches!(code.as_deref(), Some("INVALID_TICKET" | "INVALID_TICKET_SPEC")), "{ticket}: {body}");
        assert!(!body.contains("<script"), "reflected text is escaped");
    }
    node.shutdown().await;
}

/// A ticket presented for another service is INVALID_SERVICE and used up: the retry is INVALID_TICKET.
#[tokio::test]
async fn wrong_service_consumes_the_ticket() {
    let node = start(|_| {}).await;
    let mut b = Browser::new(&node);
    let st = b.login(APP).await;
    let body = call(&node, "/serviceValidate", &[("service", "http://127.0.0.1:9/other"), ("ticket", &st)]).await;
    assert_eq!(failure_code(&body).as_deref(), Some("INVALID_SERVICE"), "{body}");
    let body = call(&node, "/serviceValidate", &[("service", APP), ("ticket", &st)]).await;
    assert_eq!(failure_code(&body).as_deref(), Some("INVALID_TICKET"), "{body}");
    node.shutdown().await;
}

/// `renew=true` at validation refuses a ticket that came from SSO.
#[tokio::test]
async fn renew_validation_refuses_sso_tickets() {
    let node = start(|_| {}).await;
    let mut b = Browser::new(&node);
    b.login(APP).await;
    let st = b.sso(APP).await;
    let body = call(&node, "/serviceValidate", &[("service", APP), ("ticket", &st), ("renew", "true")]).await;
    assert_eq!(failure_code(&body).as_deref(), Some("INVALID_TICKET"), "{body}");
    node.shutdown().await;
}

/// An ST past its lifetime is refused even though no sweep has run.
#[tokio::test]
async fn expired_service_ticket_is_refused() {
    let node = start(|c| {
        c.tickets.st_ttl = Duration::from_millis(300);
        c.tickets.sweep_interval = Duration::from_secs(3600);
    })
    .await;
    let mut b = Browser::new(&node);
    let st = b.login(APP).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    let body = call(&node, "/serviceValidate", &[("service", APP), ("ticket", &st)]).await;
    assert_eq!(failure_code(&body).as_deref(), Some("INVALID_TICKET"), "{body}");
    assert!(body.contains("expired"), "{body}");
    node.shutdown().await;
}

/// An ST whose SSO session ended (logout) before validation is refused.
#[tokio::test]
async fn ticket_of_a_logged_out_session_is_refused() {
    let node = start(|_| {}).await;
    let mut b = Browser::new(&node);
    let st = b.login(APP).await;
    b.get("/logout").await;
    let body = call(&node, "/serviceValidate", &[("service", APP), ("ticket", &st)]).await;
    assert_eq!(failure_code(&body).as_deref(), Some("INVALID_TICKET"), "{body}");
    node.shutdown().await;
}

impl Browser {
    /// An ST by SSO, logging in first if the browser has no session yet.
    pub async fn sso_or_login(&mut self, service: &str) -> String {
        if self.tgc.is_some() { self.sso(service).await } else { self.login(service).await }
    }
}
