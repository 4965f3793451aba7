//! `/samlValidate` (CAS 3.0 §4.2): SAML 1.1 validation of a service ticket, which is how mod_auth_cas and
//! python-cas's SAML client receive attributes.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use quick_xml::events::Event;
use rand::Rng;

use super::AppState;
use super::params::Query;
use super::render::xml_escape;
use super::services::same_service;
use crate::clock::now_ms;
use crate::ticket::{ExpiryPolicy, Principal};

/// What the SOAP request carries.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct SamlRequest {
    pub request_id: Option<String>,
    pub artifact: Option<String>,
}

/// Reads `RequestID` and `AssertionArtifact` from the SOAP body, matching local names so any prefix works.
pub fn parse_request(body: &[u8]) -> SamlRequest {
    let mut reader = quick_xml::Reader::from_reader(body);
    let mut out = SamlRequest::default();
    let mut in_artifact = false;
    let mut buf = Vec::new();
    loop {
        match reader.read_event_into(&mut buf) {
            Ok(Event::Start(e)) | Ok(Event::Empty(e)) => {
                let name = e.local_name();
                if name.as_ref() == b"Request" {
                    out.request_id = e
                        .attributes()
                        .flatten()
                        .find(|a| a.key.local_name().as_ref() == b"RequestID")
                        .and_then(|a| a.unescape_value().ok().map(|v| v.into_owned()));
                }
                in_artifact = name.as_ref() == b"AssertionArtifact";
            }
            Ok(Event::Text(t)) if in_artifact => {
                out.artifact = t.unescape().ok().map(|v| v.trim().to_owned());
                in_artifact = false;
            }
            Ok(Event::End(_)) => in_artifact = false,
            Ok(Event::Eof) | Err(_) => break,
            _ => {}
        }
        buf.clear();
    }
    out
}

#[tracing::instrument(skip_all)]
pub async fn validate(State(app): State<AppState>, Query(p): Query, body: Bytes) -> Response {
    let request = parse_request(&body);
    let target = p.get("TARGET").unwrap_or_default().to_owned();
    let in_response_to = request.request_id.clone().unwrap_or_default();
    let now = SystemTime::now();
    let outcome = match (&request.artifact, target.is_empty()) {
        (None, _) | (_, true) => Err("Both TARGET and an AssertionArtifact are required".to_owned()),
        (Some(artifact), false) => match app.registry.consume(artifact, false, now_ms()).await {
            Err(e) => Err(format!("Ticket not valid: {e}")),
            Ok(c) if !same_service(&c.ticket.service, &target) => {
                Err("Ticket was not issued for this TARGET".to_owned())
            }
            Ok(c) => match app.services.find(&c.ticket.service) {
                None => Err("The service is no longer registered".to_owned()),
                Some(r) if !r.enabled => Err("The service is not allowed to use this CAS server".to_owned()),
                Some(r) if r.st_ttl.is_some_and(|ttl| ExpiryPolicy::older_than(c.ticket.created, ttl, now_ms())) => {
                    Err("Ticket not valid: it has expired".to_owned())
                }
                Some(registered) => {
                    // CAS 3.0 §4.2: attributes MUST NOT be released to a non-SSL site. The user is still authenticated.
                    let secure = target.get(..8).is_some_and(|s| s.eq_ignore_ascii_case("https://"));
                    let service = Some(registered.clone()).filter(|_| secure);
                    let principal = Principal {
                        id: registered.username(&c.tgt.principal).to_owned(),
                        attributes: c
                            .tgt
                            .principal
                            .attributes
                            .iter()
                            .filter(|(k, _)| service.as_ref().is_some_and(|s| s.releases(k)))
                            .map(|(k, v)| (k.clone(), v.clone()))
                            .collect(),
                    };
                    let authenticated = UNIX_EPOCH + Duration::from_millis(c.tgt.created);
                    Ok(success(&principal, &target, &in_response_to, authenticated, now))
                }
            },
        },
    };
    let body = outcome.unwrap_or_else(|message| failure(&message, &target, &in_response_to, now));
    (StatusCode::OK, [(CONTENT_TYPE, "text/xml; charset=UTF-8")], body).into_response()
}

fn random_id() -> String {
    let mut rng = rand::rng();
    let hex: String = (0..32).map(|_| char::from(b"0123456789abcdef"[rng.random_range(0..16)])).collect();
    format!("_{hex}")
}

fn instant(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

const ENVELOPE_OPEN: &str =
    "<SOAP-ENV:Envelope xmlns:SOAP-ENV=\"http://schemas.xmlsoap.org/soap/envelope/\"><SOAP-ENV:Header/><SOAP-ENV:Body>";
const ENVELOPE_CLOSE: &str = "</SOAP-ENV:Body></SOAP-ENV:Envelope>";

fn response_open(target: &str, in_response_to: &str, now: SystemTime) -> String {
    format!(
        "<saml1p:Response xmlns:saml1p=\"urn:oasis:names:tc:SAML:1.0:protocol\" xmlns:saml1=\"urn:oasis:names:tc:SAML:1.0:assertion\" IssueInstant=\"{}\" MajorVersion=\"1\" MinorVersion=\"1\" Recipient=\"{}\" ResponseID=\"{}\" InResponseTo=\"{}\">",
        instant(now),
        xml_escape(target),
        random_id(),
        xml_escape(in_response_to)
    )
}

/// A SAML 1.1 success with one assertion: conditions valid for 30 s, the authentication statement and the released
/// attributes in the CAS attribute namespace.
pub fn success(
    principal: &Principal,
    target: &str,
    in_response_to: &str,
    authenticated: SystemTime,
    now: SystemTime,
) -> String {
    let user = xml_escape(&principal.id);
    let subject = format!(
        "<saml1:Subject><saml1:NameIdentifier>{user}</saml1:NameIdentifier><saml1:SubjectConfirmation><saml1:ConfirmationMethod>urn:oasis:names:tc:SAML:1.0:cm:artifact</saml1:ConfirmationMethod></saml1:SubjectConfirmation></saml1:Subject>"
    );
    let mut attributes = String::new();
    for (name, values) in principal.attributes.iter() {
        attributes.push_str(&format!(
            "<saml1:Attribute AttributeName=\"{}\" AttributeNamespace=\"http://www.ja-sig.org/products/cas/\">",
            xml_escape(name)
        ));
        for v in values {
            attributes.push_str(&format!("<saml1:AttributeValue>{}</saml1:AttributeValue>", xml_escape(v)));
        }
        attributes.push_str("</saml1:Attribute>");
    }
    let attribute_statement = if attributes.is_empty() {
        String::new()
    } else {
        format!("<saml1:AttributeStatement>{subject}{attributes}</saml1:AttributeStatement>")
    };
    format!(
        "{ENVELOPE_OPEN}{}<saml1p:Status><saml1p:StatusCode Value=\"saml1p:Success\"/></saml1p:Status><saml1:Assertion AssertionID=\"{}\" IssueInstant=\"{}\" Issuer=\"casd\" MajorVersion=\"1\" MinorVersion=\"1\"><saml1:Conditions NotBefore=\"{}\" NotOnOrAfter=\"{}\"><saml1:AudienceRestrictionCondition><saml1:Audience>{}</saml1:Audience></saml1:AudienceRestrictionCondition></saml1:Conditions><saml1:AuthenticationStatement AuthenticationInstant=\"{}\" AuthenticationMethod=\"urn:oasis:names:tc:SAML:1.0:am:password\">{subject}</saml1:AuthenticationStatement>{attribute_statement}</saml1:Assertion></saml1p:Response>{ENVELOPE_CLOSE}",
        response_open(target, in_response_to, now),
        random_id(),
        instant(now),
        instant(now),
        instant(now + Duration::from_secs(30)),
        xml_escape(target),
        instant(authenticated),
    )
}

pub fn failure(message: &str, target: &str, in_response_to: &str, now: SystemTime) -> String {
    format!(
        "{ENVELOPE_OPEN}{}<saml1p:Status><saml1p:StatusCode Value=\"saml1p:Requester\"><saml1p:StatusCode Value=\"saml1p:RequestDenied\"/></saml1p:StatusCode><saml1p:StatusMessage>{}</saml1p:StatusMessage></saml1p:Status></saml1p:Response>{ENVELOPE_CLOSE}",
        response_open(target, in_response_to, now),
        xml_escape(message)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_artifact_and_request_id_whatever_the_prefix() {
        let body = br#"<SOAP-ENV:Envelope xmlns:SOAP-ENV="http://schemas.xmlsoap.org/soap/envelope/"><SOAP-ENV:Header/><SOAP-ENV:Body><samlp:Request xmlns:samlp="urn:oasis:names:tc:SAML:1.0:protocol" MajorVersion="1" MinorVersion="1" RequestID="_192.168.16.51.1024506224022" IssueInstant="2002-06-19T17:03:44.022Z"><samlp:AssertionArtifact> ST-1-abc </samlp:AssertionArtifact></samlp:Request></SOAP-ENV:Body></SOAP-ENV:Envelope>"#;
        let r = parse_request(body);
        assert_eq!(r.request_id.as_deref(), Some("_192.168.16.51.1024506224022"));
        assert_eq!(r.artifact.as_deref(), Some("ST-1-abc"));
        assert_eq!(parse_request(b"not xml <<"), SamlRequest::default());
    }
}
