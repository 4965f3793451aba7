//! The REST protocol (`/v1/tickets`): a TGT by POST, service tickets from it, its status, and logout by DELETE,
//! with Apereo's status codes for what goes wrong.

use std::time::Duration;

use crate::support::*;

async fn post_form(url: &str, form: &[(&str, &str)]) -> (u16, reqwest::header::HeaderMap, String) {
    let r = http().post(url).form(form).send().await.expect("request");
    let (status, headers) = (r.status().as_u16(), r.headers().clone());
    (status, headers, r.text().await.expect("body"))
}

/// TGT, then a service ticket that validates with attributes, status, then DELETE: single logout reaches the
/// service, and the TGT is gone for every REST call.
#[tokio::test]
async fn rest_tgt_service_ticket_status_and_logout() {
    let app = AppServer::start().await;
    let node = start(|_| {}).await;
    let base = node.base_url();
    let (status, headers, body) =
        post_form(&format!("{base}/v1/tickets"), &[("username", USER), ("password", PASSWORD)]).await;
    assert_eq!(status, 201, "{body}");
    let location = headers.get("location").and_then(|v| v.to_str().ok()).expect("Location").to_owned();
    assert!(location.starts_with(&format!("{base}/v1/tickets/TGT-")), "{location}");
    assert!(body.contains(&format!("action=\"{location}\"")), "Apereo's form names the TGT URL too: {body}");

    let (status, _, st) = post_form(&location, &[("service", &app.url)]).await;
    assert_eq!(status, 200, "{st}");
    assert!(st.starts_with("ST-"), "{st}");
    let xml = call(&node, "/p3/serviceValidate", &[("service", &app.url), ("ticket", &st)]).await;
    assert_eq!(user_of(&xml).as_deref(), Some(USER), "{xml}");
    assert!(xml.contains("<cas:memberOf>staff</cas:memberOf>"), "{xml}");

    assert_eq!(http().get(&location).send().await.expect("status").status().as_u16(), 200);
    let deleted = http().delete(&location).send().await.expect("delete");
    assert_eq!(deleted.status().as_u16(), 200);
    wait_until(Duration::from_secs(5), "single logout after DELETE", || async { app.bodies().len() == 1 }).await;
    assert!(app.bodies()[0].contains(&st), "{:?}", app.bodies());
    assert_eq!(http().get(&location).send().await.expect("status").status().as_u16(), 404);
    assert_eq!(post_form(&location, &[("service", &app.url)]).await.0, 404, "no ticket from an ended TGT");
    assert_eq!(http().delete(&location).send().await.expect("delete").status().as_u16(), 404);
    node.shutdown().await;
}

/// 400 for a missing field or an unregistered service, 401 for wrong credentials, 415 for a body that is not a
/// form, 403 from another site, 404 for an unknown TGT, 429 (with Retry-After) once throttled.
#[tokio::test]
async fn rest_errors_follow_apereo() {
    let node = start(|c| c.throttle.max_failures = 3).await;
    let base = node.base_url();
    let tickets = format!("{base}/v1/tickets");
    assert_eq!(post_form(&tickets, &[("username", USER)]).await.0, 400);
    let unregistered = [("username", USER), ("password", PASSWORD), ("service", "https://evil.example/")];
    assert_eq!(post_form(&tickets, &unregistered).await.0, 400);
    let json = http()
        .post(&tickets)
        .header("Content-Type", "application/json")
        .body(format!("{{\"username\":\"{USER}\",\"password\":\"{PASSWORD}\"}}"))
        .send()
        .await
        .expect("json");
    assert_eq!(json.status().as_u16(), 415);
    let cross_site = http()
        .post(&tickets)
        .header("Origin", "https://evil.example")
        .form(&[("username", USER), ("password", PASSWORD)])
        .send()
        .await
        .expect("cross-site");
    assert_eq!(cross_site.status().as_u16(), 403);
    let (status, headers, _) = post_form(&tickets, &[("username", USER), ("password", PASSWORD)]).await;
    assert_eq!(status, 201);
    let location = headers.get("location").and_then(|v| v.to_str().ok()).expect("Location").to_owned();
    assert_eq!(post_form(&location, &[("renew", "true")]).await.0, 400, "no service");
    assert_eq!(post_form(&location, &[("service", "https://evil.example/")]).await.0, 400, "unregistered");
    let unknown = format!("{base}/v1/tickets/TGT-0000000000000000000000000000000000-casd1x0000000");
    assert_eq!(post_form(&unknown, &[("service", "http://127.0.0.1:9/app")]).await.0, 404);
    assert_eq!(http().get(&unknown).send().await.expect("status").status().as_u16(), 404);

    for _ in 0..3 {
        assert_eq!(post_form(&tickets, &[("username", USER), ("password", "wrong")]).await.0, 401);
    }
    let (status, headers, _) = post_form(&tickets, &[("username", USER), ("password", PASSWORD)]).await;
    assert_eq!(status, 429, "the account is locked for this address, as for the login form");
    assert!(headers.get("retry-after").is_some());
    node.shutdown().await;
}
