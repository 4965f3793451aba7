//! Response bodies of the validation and proxy endpoints: CAS 1.0 text, CAS 2.0/3.0 XML and JSON. Pure functions.

use super::error::CasFailure;

/// One attribute value as released in a validation response.
#[derive(Clone, Debug, PartialEq)]
pub enum AttrValue {
    Text(String),
    Bool(bool),
    /// Principal attributes: always a list in JSON (even with one value), one element per value in XML.
    Many(Vec<String>),
}

/// What a successful validation tells the service.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Success {
    pub user: String,
    /// `None` on endpoints that release no attributes.
    pub attributes: Option<Vec<(String, AttrValue)>>,
    pub pgt_iou: Option<String>,
    /// pgtUrls of the proxies, newest first; empty for a service ticket.
    pub proxies: Vec<String>,
}

const NS: &str = "http://www.yale.edu/tp/cas";

/// Escapes text and attribute values for XML. Characters XML 1.0 cannot carry at all (C0 controls but tab, line
/// feed and carriage return, lone surrogates' stand-ins U+FFFE/U+FFFF) become U+FFFD, so that a client echoing a
/// hostile ticket id still gets a well-formed document.
pub fn xml_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    push_escaped(&mut out, s);
    out
}

/// Appends `s` to `out`, escaped for XML text and attribute values.
fn push_escaped(out: &mut String, s: &str) {
    if !s.bytes().any(|b| matches!(b, b'&' | b'<' | b'>' | b'"' | b'\'' | 0..=0x1f | 0xef)) {
        // Nothing to escape (0xef leads U+FFFE and U+FFFF): one copy, the common case for names and attributes.
        out.push_str(s);
        return;
    }
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\t' | '\n' | '\r' => out.push(c),
            c if c < ' ' || c == '\u{FFFE}' || c == '\u{FFFF}' => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
}

/// `<cas:NAME>VALUE</cas:NAME>` and a newline, with the value escaped, straight into `out`.
fn push_element(out: &mut String, indent: &str, name: &str, value: &str) {
    out.push_str(indent);
    out.push_str("<cas:");
    out.push_str(name);
    out.push('>');
    push_escaped(out, value);
    out.push_str("</cas:");
    out.push_str(name);
    out.push_str(">\n");
}

/// Attribute names become element names, so only XML NCNames can be released in XML.
fn is_ncname(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

/// CAS 1.0 `/validate`: `yes\n<user>\n` (the two-line form every CAS 1.0 client parses; spec 3.0.3's one-line form
/// is an erratum).
pub fn v1_success(user: &str) -> String {
    format!("yes\n{user}\n")
}

pub fn v1_failure() -> &'static str {
    "no\n\n"
}

/// CAS 2.0/3.0 XML success, children in the XSD order: user, attributes, proxyGrantingTicket, proxies.
/// Written into one buffer with no intermediate strings: this is every successful validation's response.
pub fn xml_success(s: &Success) -> String {
    let mut x = String::with_capacity(1024);
    x.push_str("<cas:serviceResponse xmlns:cas=\"");
    x.push_str(NS);
    x.push_str("\">\n  <cas:authenticationSuccess>\n");
    push_element(&mut x, "    ", "user", &s.user);
    if let Some(attributes) = &s.attributes {
        x.push_str("    <cas:attributes>\n");
        for (name, value) in attributes.iter().filter(|(n, _)| is_ncname(n)) {
            match value {
                AttrValue::Text(t) => push_element(&mut x, "      ", name, t),
                AttrValue::Bool(b) => push_element(&mut x, "      ", name, if *b { "true" } else { "false" }),
                AttrValue::Many(v) => v.iter().for_each(|t| push_element(&mut x, "      ", name, t)),
            }
        }
        x.push_str("    </cas:attributes>\n");
    }
    if let Some(iou) = &s.pgt_iou {
        push_element(&mut x, "    ", "proxyGrantingTicket", iou);
    }
    if !s.proxies.is_empty() {
        x.push_str("    <cas:proxies>\n");
        for p in &s.proxies {
            push_element(&mut x, "      ", "proxy", p);
        }
        x.push_str("    </cas:proxies>\n");
    }
    x.push_str("  </cas:authenticationSuccess>\n</cas:serviceResponse>\n");
    x
}

pub fn xml_failure(f: &CasFailure) -> String {
    format!(
        "<cas:serviceResponse xmlns:cas=\"{NS}\">\n  <cas:authenticationFailure code=\"{}\">{}</cas:authenticationFailure>\n</cas:serviceResponse>\n",
        f.code.as_str(),
        xml_escape(&f.description)
    )
}

/// CAS 3.0 §2.5.2 JSON success; absent members are omitted, proxies newest first as in XML.
pub fn json_success(s: &Success) -> String {
    let mut body = serde_json::Map::new();
    body.insert("user".into(), s.user.clone().into());
    if let Some(iou) = &s.pgt_iou {
        body.insert("proxyGrantingTicket".into(), iou.clone().into());
    }
    if !s.proxies.is_empty() {
        body.insert("proxies".into(), s.proxies.clone().into());
    }
    if let Some(attributes) = &s.attributes {
        let attrs: serde_json::Map<String, serde_json::Value> = attributes
            .iter()
            .map(|(k, v)| {
                let value = match v {
                    AttrValue::Text(t) => t.clone().into(),
                    AttrValue::Bool(b) => (*b).into(),
                    AttrValue::Many(v) => v.clone().into(),
                };
                (k.clone(), value)
            })
            .collect();
        body.insert("attributes".into(), attrs.into());
    }
    serde_json::json!({ "serviceResponse": { "authenticationSuccess": body } }).to_string()
}

pub fn json_failure(f: &CasFailure) -> String {
    serde_json::json!({ "serviceResponse": { "authenticationFailure": {
        "code": f.code.as_str(), "description": f.description } } })
    .to_string()
}

/// CAS 2.0 `/proxy` success (§2.7.2).
pub fn proxy_success(pt: &str) -> String {
    format!(
        "<cas:serviceResponse xmlns:cas=\"{NS}\">\n  <cas:proxySuccess>\n    <cas:proxyTicket>{}</cas:proxyTicket>\n  </cas:proxySuccess>\n</cas:serviceResponse>\n",
        xml_escape(pt)
    )
}

pub fn proxy_failure(f: &CasFailure) -> String {
    format!(
        "<cas:serviceResponse xmlns:cas=\"{NS}\">\n  <cas:proxyFailure code=\"{}\">{}</cas:proxyFailure>\n</cas:serviceResponse>\n",
        f.code.as_str(),
        xml_escape(&f.description)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cas::error::CasCode;

    fn success() -> Success {
        Success {
            user: "al<ice>".into(),
            attributes: Some(vec![
                ("authenticationDate".into(), AttrValue::Text("2026-01-01T00:00:00Z".into())),
                ("isFromNewLogin".into(), AttrValue::Bool(true)),
                ("memberOf".into(), AttrValue::Many(vec!["staff".into(), "a&b".into()])),
                ("bad name".into(), AttrValue::Many(vec!["x".into()])),
            ]),
            pgt_iou: Some("PGTIOU-1-n".into()),
            proxies: vec!["https://p2/cb".into(), "https://p1/cb".into()],
        }
    }

    #[test]
    fn characters_xml_cannot_carry_are_replaced() {
        assert_eq!(xml_escape("ST-\u{1}a\u{1b}b\tc\u{FFFF}"), "ST-\u{FFFD}a\u{FFFD}b\tc\u{FFFD}");
        let x = xml_failure(&CasFailure::new(CasCode::InvalidTicket, "ticket 'ST-\u{0}' not recognized"));
        assert!(!x.chars().any(|c| c < ' ' && !matches!(c, '\t' | '\n' | '\r')), "{x:?}");
    }

    #[test]
    fn xml_success_escapes_repeats_and_orders_as_the_xsd() {
        let x = xml_success(&success());
        assert!(x.contains("<cas:user>al&lt;ice&gt;</cas:user>"));
        assert!(x.contains("<cas:memberOf>staff</cas:memberOf>\n      <cas:memberOf>a&amp;b</cas:memberOf>"));
        assert!(!x.contains("bad name"));
        let (u, a, p, px) =
            (x.find("<cas:user>"), x.find("<cas:attributes>"), x.find("<cas:proxyGr"), x.find("<cas:proxies>"));
        assert!(u < a && a < p && p < px, "{x}");
        assert!(x.find("https://p2/cb") < x.find("https://p1/cb"));
    }

    #[test]
    fn json_success_omits_absent_members() {
        let v: serde_json::Value =
            serde_json::from_str(&json_success(&Success { user: "bob".into(), ..Default::default() })).expect("json");
        assert_eq!(v, serde_json::json!({"serviceResponse":{"authenticationSuccess":{"user":"bob"}}}));
        let v: serde_json::Value = serde_json::from_str(&json_success(&success())).expect("json");
        let ok = &v["serviceResponse"]["authenticationSuccess"];
        assert_eq!(ok["attributes"]["isFromNewLogin"], true);
        assert_eq!(ok["attributes"]["memberOf"], serde_json::json!(["staff", "a&b"]));
        assert_eq!(ok["proxies"][0], "https://p2/cb");
    }

    #[test]
    fn failures_carry_code_and_text() {
        let f = CasFailure::new(CasCode::InvalidTicket, "Ticket 'ST-<x>' not recognized");
        assert!(xml_failure(&f).contains("code=\"INVALID_TICKET\">Ticket &apos;ST-&lt;x&gt;&apos; not recognized<"));
        let v: serde_json::Value = serde_json::from_str(&json_failure(&f)).expect("json");
        assert_eq!(v["serviceResponse"]["authenticationFailure"]["code"], "INVALID_TICKET");
        assert_eq!(v1_failure(), "no\n\n");
        assert_eq!(v1_success("alice"), "yes\nalice\n");
    }
}
