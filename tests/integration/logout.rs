//! `/logout`: ends SSO, clears the cookie, redirects only to registered services.

use crate::support::*;

const APP: &str = "http://127.0.0.1:9/app";

/// After logout the old cookie gives no SSO: the form is shown again.
#[tokio::test]
async fn logout_ends_sso() {
    let node = start(|_| {}).await;
    let mut b = Browser::new(&node);
    b.login(APP).await;
    let tgc = b.tgc.clone().expect("logged in");
    let page = b.get("/logout").await;
    assert_eq!(page.status, 200);
    assert!(page.body.contains("Logout successful"));
    let cleared = page.set_cookie.iter().find(|c| c.starts_with("TGC=;")).expect("cookie cleared");
    assert!(cleared.contains("Max-Age=0") && cleared.contains("Path=/cas"), "{cleared}");
    b.tgc = Some(tgc); // a browser that ignores the cleared cookie gets nothing either
    let page = b.get(&format!("/login?service={}", enc(APP))).await;
    assert_eq!(page.status, 200);
    assert!(page.body.contains("name=\"password\""));
    node.shutdown().await;
}

/// `service` redirects only when registered; `url` is only shown as a link when registered.
#[tokio::test]
async fn logout_redirects_only_to_registered_services() {
    let node = start(|_| {}).await;
    let mut b = Browser::new(&node);
    let page = b.get(&format!("/logout?service={}", enc(APP))).await;
    assert_eq!((page.status, page.location.as_deref()), (302, Some(APP)));
    let page = b.get(&format!("/logout?service={}", enc("https://evil.example/"))).await;
    assert_eq!((page.status, page.location), (200, None));
    let page = b.get(&format!("/logout?url={}", enc(APP))).await;
    assert!(page.body.contains(&format!("href=\"{APP}\"")), "{}", page.body);
    let page = b.get(&format!("/logout?url={}", enc("https://evil.example/"))).await;
    assert!(!page.body.contains("evil.example"), "{}", page.body);
    node.shutdown().await;
}
