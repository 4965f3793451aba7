//! Test support: a real node on an ephemeral loopback port, a cookie-keeping "browser" that never follows
//! redirects, and small servers standing in for applications (plain http, and https under a test CA).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use casd::{Config, Node, NodeHandle};
use reqwest::header::{LOCATION, SET_COOKIE};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub const USER: &str = "casuser";
pub const PASSWORD: &str = "Mellon";

#[path = "../common/test_cluster.rs"]
mod test_cluster;
pub use test_cluster::*;

/// The embedded demo config on an ephemeral port, changed by `adjust`.
pub fn config(adjust: impl FnOnce(&mut Config)) -> Config {
    let mut c = loopback_config();
    adjust(&mut c);
    c
}

pub async fn start(adjust: impl FnOnce(&mut Config)) -> NodeHandle {
    Node::start(config(adjust)).await.expect("node starts")
}

/// A loopback port free a moment ago, for a node whose address a test must know before the node is up.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

/// Waits for a condition, polling; fails the test with `what` after `timeout`.
pub async fn wait_until<F, Fut>(timeout: Duration, what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if cond().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out after {timeout:?} waiting for {what}");
}

pub fn http() -> reqwest::Client {
    reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().expect("client")
}

/// A browser: keeps the TGC, never follows redirects.
pub struct Browser {
    pub base: String,
    pub client: reqwest::Client,
    pub tgc: Option<String>,
}

pub struct Page {
    pub status: u16,
    pub location: Option<String>,
    pub set_cookie: Vec<String>,
    pub body: String,
}

impl Browser {
    pub fn new(node: &NodeHandle) -> Self {
        Self { base: node.base_url(), client: http(), tgc: None }
    }

    async fn page(&mut self, response: reqwest::Response) -> Page {
        let status = response.status().as_u16();
        let location = response.headers().get(LOCATION).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let set_cookie: Vec<String> =
            response.headers().get_all(SET_COOKIE).iter().filter_map(|v| v.to_str().ok()).map(str::to_owned).collect();
        for c in &set_cookie {
            if let Some(v) = c.strip_prefix("TGC=") {
                let value = v.split(';').next().unwrap_or_default();
                self.tgc = (!value.is_empty()).then(|| value.to_owned());
            }
        }
        let body = unescape_html(&response.text().await.expect("body"));
        Page { status, location, set_cookie, body }
    }

    pub async fn get(&mut self, path_and_query: &str) -> Page {
        let mut req = self.client.get(format!("{}{path_and_query}", self.base));
        if let Some(tgc) = &self.tgc {
            req = req.header("Cookie", format!("TGC={tgc}"));
        }
        let response = req.send().await.expect("request");
        self.page(response).await
    }

    pub async fn post_form(&mut self, path: &str, form: &[(&str, &str)]) -> Page {
        let mut req = self.client.post(format!("{}{path}", self.base)).form(form);
        if let Some(tgc) = &self.tgc {
            req = req.header("Cookie", format!("TGC={tgc}"));
        }
        let response = req.send().await.expect("request");
        self.page(response).await
    }

    /// Opens the login form for `service` (with extra query parameters) and submits the credentials.
    pub async fn login_with(&mut self, service: Option<&str>, extra: &str, user: &str, password: &str) -> Page {
        let query = service.map(|s| format!("?service={}{extra}", enc(s))).unwrap_or_default();
        let form = self.get(&format!("/login{query}")).await;
        assert_eq!(form.status, 200, "login form: {}", form.body);
        let lt = lt_of(&form.body);
        let mut fields = vec![("username", user), ("password", password), ("lt", lt.as_str())];
        if let Some(s) = service {
            fields.push(("service", s));
        }
        let method = extra.split("method=").nth(1).map(|m| m.split('&').next().unwrap_or_default().to_owned());
        if let Some(m) = &method {
            fields.push(("method", m.as_str()));
        }
        self.post_form("/login", &fields).await
    }

    pub async fn login(&mut self, service: &str) -> String {
        let page = self.login_with(Some(service), "", USER, PASSWORD).await;
        ticket_of(&page)
    }

    /// A service ticket by SSO (the browser already holds a TGC).
    pub async fn sso(&mut self, service: &str) -> String {
        let page = self.get(&format!("/login?service={}", enc(service))).await;
        ticket_of(&page)
    }
}

/// Undoes the HTML escaping of attribute values (minijinja also escapes '/'), so tests can look for plain URLs.
pub fn unescape_html(s: &str) -> String {
    s.replace("&#x2f;", "/")
        .replace("&quot;", "\"")
        .replace("&#x27;", "'")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

pub fn enc(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

pub fn lt_of(html: &str) -> String {
    let re = regex::Regex::new(r#"name="lt" value="(LT-[A-Za-z0-9-]+)""#).expect("re");
    re.captures(html).map(|c| c[1].to_owned()).unwrap_or_else(|| panic!("no login ticket in page: {html}"))
}

pub fn ticket_of(page: &Page) -> String {
    assert_eq!(page.status, 302, "expected a redirect with a ticket: {}", page.body);
    let location = page.location.as_deref().expect("Location");
    let url = url::Url::parse(location).expect("absolute redirect");
    url.query_pairs().find(|(k, _)| k == "ticket").map(|(_, v)| v.into_owned()).expect("ticket in redirect")
}

/// GETs an endpoint with query parameters and returns the body.
pub async fn call(node: &NodeHandle, path: &str, params: &[(&str, &str)]) -> String {
    let response = http().get(format!("{}{path}", node.base_url())).query(params).send().await.expect("request");
    assert_eq!(response.status().as_u16(), 200, "protocol answers are HTTP 200");
    response.text().await.expect("body")
}

/// The `code` of an authenticationFailure / proxyFailure, or None on success.
pub fn failure_code(xml: &str) -> Option<String> {
    let re = regex::Regex::new(r#"(?:authentication|proxy)Failure code="([A-Z_]+)">([^<]+)<"#).expect("re");
    re.captures(xml).map(|c| {
        assert!(!c[2].trim().is_empty(), "failure text must not be empty");
        c[1].to_owned()
    })
}

pub fn user_of(xml: &str) -> Option<String> {
    let re = regex::Regex::new(r"<cas:user>([^<]*)</cas:user>").expect("re");
    re.captures(xml).map(|c| c[1].to_owned())
}

/// A plain-http application on loopback that records every request it gets (method, path?query, body).
pub struct AppServer {
    pub url: String,
    pub seen: Arc<Mutex<Vec<(String, String, String)>>>,
}

impl AppServer {
    pub async fn start() -> Self {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}/app", listener.local_addr().expect("addr"));
        let record = seen.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let record = record.clone();
                tokio::spawn(async move { serve_one(stream, record, 200).await });
            }
        });
        Self { url, seen }
    }

    pub fn bodies(&self) -> Vec<String> {
        self.seen.lock().expect("lock").iter().map(|(_, _, b)| b.clone()).collect()
    }
}

/// Reads one HTTP/1.1 request (headers + Content-Length body), records it, answers `status` and closes.
async fn serve_one<S>(mut stream: S, record: Arc<Mutex<Vec<(String, String, String)>>>, status: u16)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let header_end = loop {
        let Ok(n) = stream.read(&mut chunk).await else { return };
        if n == 0 {
            return;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break pos + 4;
        }
        if buf.len() > 1 << 20 {
            return;
        }
    };
    let head = String::from_utf8_lossy(&buf[..header_end]).to_string();
    let length = head
        .lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap_or(0)))
        .unwrap_or(0usize);
    while buf.len() < header_end + length {
        let Ok(n) = stream.read(&mut chunk).await else { return };
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let mut first = head.lines().next().unwrap_or_default().split(' ');
    let method = first.next().unwrap_or_default().to_owned();
    let target = first.next().unwrap_or_default().to_owned();
    let body = String::from_utf8_lossy(&buf[header_end..]).to_string();
    record.lock().expect("lock").push((method, target, body));
    let reply = format!("HTTP/1.1 {status} X\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok");
    let _ = stream.write_all(reply.as_bytes()).await;
    let _ = stream.shutdown().await;
}

/// A test certificate authority; its PEM file is what `proxy.extra_ca_file` points at.
pub struct TestCa {
    key: rcgen::KeyPair,
    cert: rcgen::Certificate,
    pub pem_file: std::path::PathBuf,
}

impl TestCa {
    pub fn new() -> Self {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
        let key = KeyPair::generate().expect("ca key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, "casd test CA");
        let cert = params.self_signed(&key).expect("ca");
        let pem_file = std::env::temp_dir().join(format!("casd-test-ca-{}-{}.pem", std::process::id(), rand_suffix()));
        std::fs::write(&pem_file, cert.pem()).expect("write ca");
        Self { key, cert, pem_file }
    }

    /// A server certificate for localhost and 127.0.0.1 signed by this CA: (certificate PEM, private key PEM).
    pub fn leaf_pem(&self) -> (String, String) {
        let key = rcgen::KeyPair::generate().expect("leaf key");
        let params =
            rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).expect("leaf params");
        let cert = params.signed_by(&key, &self.cert, &self.key).expect("leaf");
        (cert.pem(), key.serialize_pem())
    }

    /// An HTTP client that trusts only this CA.
    pub fn client(&self) -> reqwest::Client {
        let root = reqwest::Certificate::from_pem(self.cert.pem().as_bytes()).expect("ca pem");
        reqwest::Client::builder()
            .tls_built_in_root_certs(false)
            .add_root_certificate(root)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("client")
    }
}

/// An https server on loopback with a certificate for localhost and 127.0.0.1 signed by a [`TestCa`]; answers every
/// request with `status` and records it.
pub struct HttpsApp {
    pub url: String,
    pub seen: Arc<Mutex<Vec<(String, String, String)>>>,
    /// Connections whose TLS handshake completed.
    pub accepted: Arc<std::sync::atomic::AtomicUsize>,
}

impl HttpsApp {
    pub async fn start(status: u16, ca: &TestCa) -> Self {
        Self::start_slow(status, ca, Duration::ZERO).await
    }

    /// As [`HttpsApp::start`], answering each request only after `delay`.
    pub async fn start_slow(status: u16, ca: &TestCa, delay: Duration) -> Self {
        let leaf_key = rcgen::KeyPair::generate().expect("leaf key");
        let leaf_params =
            rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).expect("leaf params");
        let leaf = leaf_params.signed_by(&leaf_key, &ca.cert, &ca.key).expect("leaf");
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into());
        let tls = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(vec![leaf.der().clone()], key)
            .expect("tls config");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("https://127.0.0.1:{}/pgtCallback", listener.local_addr().expect("addr").port());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (record, count) = (seen.clone(), accepted.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (acceptor, record, count) = (acceptor.clone(), record.clone(), count.clone());
                tokio::spawn(async move {
                    if let Ok(tls) = acceptor.accept(stream).await {
                        count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        tokio::time::sleep(delay).await;
                        serve_one(tls, record, status).await;
                    }
                });
            }
        });
        Self { url, seen, accepted }
    }

    /// The query strings of the GETs received.
    pub fn queries(&self) -> Vec<String> {
        self.seen
            .lock()
            .expect("lock")
            .iter()
            .map(|(_, target, _)| target.split_once('?').map(|(_, q)| q.to_owned()).unwrap_or_default())
            .collect()
    }
}

fn rand_suffix() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(1);
    h.finish()
}

/// The `casd` binary serving `config` (which must log JSON), with its stdout lines and the URL it serves at.
pub struct ServingBinary {
    pub child: KillOnDrop,
    pub lines: std::io::Lines<std::io::BufReader<std::process::ChildStdout>>,
    pub base: String,
}

impl ServingBinary {
    pub fn start(config: &std::path::Path) -> Self {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_casd"));
        command.args(["serve", "--config"]).arg(config);
        Self::spawn(command)
    }

    /// As [`ServingBinary::start`], after the shell commands `prelude` (limits, signal dispositions) in the
    /// process that then becomes casd.
    pub fn start_after(prelude: &str, config: &std::path::Path) -> Self {
        let mut command = std::process::Command::new("bash");
        command.arg("-c").arg(format!("{prelude}; exec \"$0\" serve --config \"$1\"")).arg(env!("CARGO_BIN_EXE_casd"));
        command.arg(config);
        Self::spawn(command)
    }

    fn spawn(mut command: std::process::Command) -> Self {
        use std::io::BufRead;
        // Owned by the guard at once: a panic below (a log line that is not JSON) must not leave the server running.
        let mut child = KillOnDrop(
            command
                .env("RUST_LOG", "info")
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("casd starts"),
        );
        let mut lines = std::io::BufReader::new(child.stdout.take().expect("stdout")).lines();
        let base = loop {
            let line = lines.next().expect("a log line before serving").expect("utf8");
            let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|_| panic!("not JSON: {line}"));
            if v["message"] == "serving" {
                break v["url"].as_str().expect("url").to_owned();
            }
        };
        Self { child, lines, base }
    }
}

/// A child process killed (and reaped) when dropped, so that a test that fails half-way leaves no server behind.
pub struct KillOnDrop(pub std::process::Child);

impl std::ops::Deref for KillOnDrop {
    type Target = std::process::Child;

    fn deref(&self) -> &std::process::Child {
        &self.0
    }
}

impl std::ops::DerefMut for KillOnDrop {
    fn deref_mut(&mut self) -> &mut std::process::Child {
        &mut self.0
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Validates `st` at once from `racers` tasks, spread over `urls` (serviceValidate URLs); returns how many won.
/// Every loser must get INVALID_TICKET.
pub async fn race_validations(urls: &[String], st: &str, service: &str, racers: usize) -> usize {
    let barrier = Arc::new(tokio::sync::Barrier::new(racers));
    let client = http();
    let tasks: Vec<_> = (0..racers)
        .map(|i| {
            let (client, url, st, service, barrier) =
                (client.clone(), urls[i % urls.len()].clone(), st.to_owned(), service.to_owned(), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                let r = client.get(url).query(&[("service", service.as_str()), ("ticket", st.as_str())]).send().await;
                r.expect("request").text().await.expect("body")
            })
        })
        .collect();
    let mut wins = 0;
    for task in tasks {
        let body = task.await.expect("join");
        match failure_code(&body) {
            None => {
                assert_eq!(user_of(&body).as_deref(), Some(USER), "{body}");
                wins += 1;
            }
            Some(code) => assert_eq!(code, "INVALID_TICKET", "{body}"),
        }
    }
    wins
}
