//! `/samlValidate`: SAML 1.1 validation with attributes, single use, TARGET match.

use crate::support::*;

const APP: &str = "http://127.0.0.1:9/app";

fn envelope(ticket: &str) -> String {
    format!(
        r#"<SOAP-ENV:Envelope xmlns:SOAP-ENV="http://schemas.xmlsoap.org/soap/envelope/"><SOAP-ENV:Header/><SOAP-ENV:Body><samlp:Request xmlns:samlp="urn:oasis:names:tc:SAML:1.0:protocol" MajorVersion="1" MinorVersion="1" RequestID="_req42" IssueInstant="2026-01-01T00:00:00Z"><samlp:AssertionArtifact>{ticket}</samlp:AssertionArtifact></samlp:Request></SOAP-ENV:Body></SOAP-ENV:Envelope>"#
    )
}

async fn saml(node: &casd::NodeHandle, target: &str, body: String) -> String {
    let r = http()
        .post(format!("{}/samlValidate", node.base_url()))
        .query(&[("TARGET", target)])
        .header("Content-Type", "text/xml")
        .body(body)
        .send()
        .await
        .expect("request");
    assert_eq!(r.status().as_u16(), 200);
    r.text().await.expect("body")
}

#[tokio::test]
async fn saml_validate_succeeds_once_with_attributes() {
    const APP: &str = "https://127.0.0.1:9/app";
    let node = start(|_| {}).await;
    let mut b = Browser::new(&node);
    let st = b.login(APP).await;
    let body = saml(&node, APP, envelope(&st)).await;
    assert!(body.contains(r#"<saml1p:StatusCode Value="saml1p:Success"/>"#), "{body}");
    assert!(body.contains(r#"InResponseTo="_req42""#), "{body}");
    assert!(body.contains("<saml1:NameIdentifier>casuser</saml1:NameIdentifier>"), "{body}");
    assert!(body.contains(r#"AttributeName="memberOf""#), "{body}");
    assert!(body.contains(
        "<saml1:AttributeValue>staff</saml1:AttributeValue><saml1:AttributeValue>demo</saml1:AttributeValue>"
    ));
    assert!(body.contains(&format!("<saml1:Audience>{APP}</saml1:Audience>")), "{body}");
    let again = saml(&node, APP, envelope(&st)).await;
    assert!(!again.contains("saml1p:Success") && again.contains("RequestDenied"), "{again}");
    node.shutdown().await;
}

#[tokio::test]
async fn saml_validate_refuses_wrong_target_and_garbage() {
    let node = start(|_| {}).await;
    let mut b = Browser::new(&node);
    let st = b.login(APP).await;
    let body = saml(&node, "http://127.0.0.1:9/other", envelope(&st)).await;
    assert!(body.contains("RequestDenied") && body.contains("TARGET"), "{body}");
    let body = saml(&node, APP, "<not-soap".into()).await;
    assert!(body.contains("RequestDenied"), "{body}");
    node.shutdown().await;
}

/// CAS 3.0 §4.2: no attributes for a TARGET that is not https. The user is still authenticated.
#[tokio::test]
async fn saml_validate_releases_no_attributes_to_an_http_target() {
    let node = start(|_| {}).await;
    let mut b = Browser::new(&node);
    let st = b.login(APP).await;
    let body = saml(&node, APP, envelope(&st)).await;
    assert!(body.contains(r#"<saml1p:StatusCode Value="saml1p:Success"/>"#), "{body}");
    assert!(body.contains("<saml1:NameIdentifier>casuser</saml1:NameIdentifier>"), "{body}");
    assert!(!body.contains("AttributeStatement") && !body.contains("AttributeValue"), "{body}");
    node.shutdown().await;
}
