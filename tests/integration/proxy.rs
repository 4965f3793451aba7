//! The proxy flow: PGT delivery to an HTTPS callback started by the test, `/proxy`, PT validation and chains.

use crate::support::*;

const APP: &str = "http://127.0.0.1:9/app";
const BACKEND: &str = "http://127.0.0.1:9/backend";
const BACKEND2: &str = "http://localhost:9/backend2";

fn pair(query: &str, name: &str) -> Option<String> {
    url::form_urlencoded::parse(query.as_bytes()).find(|(k, _)| k == name).map(|(_, v)| v.into_owned())
}

fn pgt_iou_of(xml: &str) -> Option<String> {
    let re =
        regex::Regex::new(r"<cas:proxyGrantingTicket>(PGTIOU-[A-Za-z0-9-]+)</cas:proxyGrantingTicket>").expect("re");
    re.captures(xml).map(|c| c[1].to_owned())
}

fn pt_of(xml: &str) -> String {
    let re = regex::Regex::new(r"<cas:proxyTicket>(PT-[A-Za-z0-9-]+)</cas:proxyTicket>").expect("re");
    re.captures(xml).map(|c| c[1].to_owned()).unwrap_or_else(|| panic!("no proxy ticket: {xml}"))
}

/// Validates `ticket` with `pgt_url` and returns the PGT the callback received, checking the IOU pairs up.
async fn obtain_pgt(
    node: &casd::NodeHandle,
    cb: &HttpsApp,
    path: &str,
    service: &str,
    ticket: &str,
    pgt_url: &str,
) -> String {
    let before = cb.queries().len();
    let body = call(node, path, &[("service", service), ("ticket", ticket), ("pgtUrl", pgt_url)]).await;
    let iou = pgt_iou_of(&body).unwrap_or_else(|| panic!("no PGTIOU: {body}"));
    let queries = cb.queries();
    assert_eq!(queries.len(), before + 1, "exactly one callback");
    let q = queries.last().expect("callback");
    assert_eq!(pair(q, "pgtIou").as_deref(), Some(iou.as_str()), "callback and response carry the same IOU");
    let pgt = pair(q, "pgtId").expect("pgtId");
    assert!(pgt.starts_with("PGT-"));
    assert!(!body.contains(&pgt), "the PGT itself never appears in the validation response");
    pgt
}

/// ST + pgtUrl → PGT by callback → PT for a back end → /proxyValidate lists the proxy; chains list newest first.
#[tokio::test]
async fn proxy_flow_with_https_callback_and_chain() {
    let ca = TestCa::new();
    let cb = HttpsApp::start(200, &ca).await;
    let node = start(|c| c.proxy.extra_ca_file = Some(ca.pem_file.clone())).await;
    let mut b = Browser::new(&node);
    let st = b.login(APP).await;
    let cb1 = format!("{}?existing=1", cb.url);
    let pgt = obtain_pgt(&node, &cb, "/serviceValidate", APP, &st, &cb1).await;
    assert_eq!(pair(cb.queries().last().expect("q"), "existing").as_deref(), Some("1"), "query preserved");

    let pt = pt_of(&call(&node, "/proxy", &[("pgt", &pgt), ("targetService", BACKEND)]).await);
    let body = call(&node, "/proxyValidate", &[("service", BACKEND), ("ticket", &pt)]).await;
    assert_eq!(user_of(&body).as_deref(), Some(USER), "{body}");
    assert!(
        body.contains(&format!("<cas:proxies>\n      <cas:proxy>{}</cas:proxy>", cb1.replace('&', "&amp;"))),
        "{body}"
    );

    // The back end proxies further: the chain grows, newest first.
    let pt = pt_of(&call(&node, "/proxy", &[("pgt", &pgt), ("targetService", BACKEND)]).await);
    let cb2 = format!("{}/second", cb.url);
    let pgt2 = obtain_pgt(&node, &cb, "/p3/proxyValidate", BACKEND, &pt, &cb2).await;
    let pt2 = pt_of(&call(&node, "/proxy", &[("pgt", &pgt2), ("targetService", BACKEND2)]).await);
    let body = call(&node, "/p3/proxyValidate", &[("service", BACKEND2), ("ticket", &pt2), ("format", "JSON")]).await;
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    let ok = &v["serviceResponse"]["authenticationSuccess"];
    assert_eq!(ok["user"], USER, "{body}");
    assert_eq!(ok["proxies"], serde_json::json!([cb2, cb1]), "{body}");
    node.shutdown().await;
}

/// A PT is not accepted where only STs are, and is used up by the attempt.
#[tokio::test]
async fn proxy_ticket_at_service_validate_is_refused_and_consumed() {
    let ca = TestCa::new();
    let cb = HttpsApp::start(200, &ca).await;
    let node = start(|c| c.proxy.extra_ca_file = Some(ca.pem_file.clone())).await;
    let mut b = Browser::new(&node);
    let st = b.login(APP).await;
    let pgt = obtain_pgt(&node, &cb, "/serviceValidate", APP, &st, &cb.url).await;
    let pt = pt_of(&call(&node, "/proxy", &[("pgt", &pgt), ("targetService", BACKEND)]).await);
    let body = call(&node, "/serviceValidate", &[("service", BACKEND), ("ticket", &pt)]).await;
    assert_eq!(failure_code(&body).as_deref(), Some("INVALID_TICKET_SPEC"), "{body}");
    assert_eq!(call(&node, "/validate", &[("service", BACKEND), ("ticket", &pt)]).await, "no\n\n");
    let body = call(&node, "/proxyValidate", &[("service", BACKEND), ("ticket", &pt)]).await;
    assert_eq!(failure_code(&body).as_deref(), Some("INVALID_TICKET"), "{body}");
    node.shutdown().await;
}

/// A callback the server cannot trust, a plain-http pgtUrl or a non-200 answer: INVALID_PROXY_CALLBACK, no PGT.
#[tokio::test]
async fn failed_callbacks_issue_no_pgt() {
    let (ca, other_ca) = (TestCa::new(), TestCa::new());
    let untrusted = HttpsApp::start(200, &other_ca).await;
    let not_found = HttpsApp::start(404, &ca).await;
    let node = start(|c| c.proxy.extra_ca_file = Some(ca.pem_file.clone())).await;
    let mut b = Browser::new(&node);
    b.login(APP).await;
    let plain_http = "http://127.0.0.1:9/cb".to_owned();
    for pgt_url in [&untrusted.url, &plain_http, &not_found.url] {
        let st = b.sso(APP).await;
        let body = call(&node, "/serviceValidate", &[("service", APP), ("ticket", &st), ("pgtUrl", pgt_url)]).await;
        assert_eq!(failure_code(&body).as_deref(), Some("INVALID_PROXY_CALLBACK"), "{pgt_url}: {body}");
        let again = call(&node, "/serviceValidate", &[("service", APP), ("ticket", &st)]).await;
        assert_eq!(failure_code(&again).as_deref(), Some("INVALID_TICKET"), "the ST was used up");
    }
    assert!(untrusted.queries().is_empty(), "nothing was sent over an untrusted connection");
    // The 404 callback did receive a PGT id; it must not work.
    let q = not_found.queries();
    let pgt = pair(q.last().expect("404 callback was called"), "pgtId").expect("pgtId");
    let body = call(&node, "/proxy", &[("pgt", &pgt), ("targetService", BACKEND)]).await;
    assert_eq!(failure_code(&body).as_deref(), Some("INVALID_TICKET"), "{body}");
    node.shutdown().await;
}

/// A service without a proxy policy may not ask for a PGT.
#[tokio::test]
async fn service_without_proxy_policy_is_unauthorized() {
    let node = start(|c| c.services[0].proxy_callback_pattern = None).await;
    let mut b = Browser::new(&node);
    let st = b.login(APP).await;
    let body =
        call(&node, "/serviceValidate", &[("service", APP), ("ticket", &st), ("pgtUrl", "https://127.0.0.1:9/cb")])
            .await;
    assert_eq!(failure_code(&body).as_deref(), Some("UNAUTHORIZED_SERVICE_PROXY"), "{body}");
    node.shutdown().await;
}

/// `/proxy` error codes, and PGTs end with the SSO session.
#[tokio::test]
async fn proxy_endpoint_errors_and_pgt_dies_with_its_tgt() {
    let ca = TestCa::new();
    let cb = HttpsApp::start(200, &ca).await;
    let node = start(|c| c.proxy.extra_ca_file = Some(ca.pem_file.clone())).await;
    let body = call(&node, "/proxy", &[("pgt", "PGT-x-y")]).await;
    assert_eq!(failure_code(&body).as_deref(), Some("INVALID_REQUEST"), "{body}");
    let body = call(&node, "/proxy", &[("pgt", "PGT-x-y"), ("targetService", BACKEND)]).await;
    assert_eq!(failure_code(&body).as_deref(), Some("INVALID_TICKET"), "{body}");
    let mut b = Browser::new(&node);
    let st = b.login(APP).await;
    let pgt = obtain_pgt(&node, &cb, "/serviceValidate", APP, &st, &cb.url).await;
    let body = call(&node, "/proxy", &[("pgt", &pgt), ("targetService", "https://unregistered.invalid/")]).await;
    assert_eq!(failure_code(&body).as_deref(), Some("UNAUTHORIZED_SERVICE"), "{body}");
    b.get("/logout").await;
    let body = call(&node, "/proxy", &[("pgt", &pgt), ("targetService", BACKEND)]).await;
    assert_eq!(failure_code(&body).as_deref(), Some("INVALID_TICKET"), "{body}");
    node.shutdown().await;
}

/// CAS 1.0 has no proxying: `/validate` ignores a pgtUrl. The callback is never called, so one answering 404 cannot
/// turn a valid ticket into `no`, and no PGT exists.
#[tokio::test]
async fn cas1_validate_ignores_pgt_url() {
    let ca = TestCa::new();
    let not_found = HttpsApp::start(404, &ca).await;
    let node = start(|c| c.tls.client.extra_ca_file = Some(ca.pem_file.clone())).await;
    let mut b = Browser::new(&node);
    let st = b.login(APP).await;
    let body = call(&node, "/validate", &[("service", APP), ("ticket", &st), ("pgtUrl", &not_found.url)]).await;
    assert_eq!(body, format!("yes\n{USER}\n"));
    assert_eq!(not_found.accepted.load(std::sync::atomic::Ordering::Relaxed), 0, "no connection to the pgtUrl");
    assert!(not_found.queries().is_empty());
    node.shutdown().await;
}
