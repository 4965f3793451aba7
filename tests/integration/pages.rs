//! The pages people see: in the browser's language (English, French) and in a theme (templates, CSS, logo and
//! messages from a folder, per service), and bad themes refused at start naming the file.

use std::path::{Path, PathBuf};

use crate::support::*;

const APP: &str = "http://127.0.0.1:9/app";
const CAMPUS_APP: &str = "http://127.0.0.1:9/campus/app";

async fn page(url: String, accept_language: &str, cookie: Option<&str>) -> (u16, String) {
    let mut req = http().get(url).header("Accept-Language", accept_language);
    if let Some(c) = cookie {
        req = req.header("Cookie", format!("TGC={c}"));
    }
    let r = req.send().await.expect("request");
    (r.status().as_u16(), unescape_html(&r.text().await.expect("body")))
}

#[tokio::test]
async fn pages_follow_accept_language() {
    let node = start(|_| {}).await;
    let base = node.base_url();
    let (status, fr) = page(format!("{base}/login?service={}", enc(APP)), "fr-CA,fr;q=0.9,en;q=0.5", None).await;
    assert_eq!(status, 200);
    for text in ["<html lang=\"fr\">", "Connexion", "Mot de passe", "Identifiant", "Service central d'authentification"]
    {
        assert!(fr.contains(text), "{text} in\n{fr}");
    }
    let (_, en) = page(format!("{base}/login"), "de-DE,de;q=0.9", None).await;
    assert!(en.contains("<html lang=\"en\">") && en.contains("Password"), "German is not offered: English\n{en}");

    // A wrong password, told in French; the logout page too.
    let client = http();
    let lt = lt_of(&fr);
    let r = client
        .post(format!("{base}/login"))
        .header("Accept-Language", "fr")
        .form(&[("username", USER), ("password", "faux"), ("lt", lt.as_str()), ("service", APP)])
        .send()
        .await
        .expect("post");
    assert_eq!(r.status().as_u16(), 401);
    let body = unescape_html(&r.text().await.expect("body"));
    assert!(body.contains("L'identifiant ou le mot de passe saisi est incorrect."), "{body}");
    let (_, bye) = page(format!("{base}/logout"), "fr", None).await;
    assert!(bye.contains("Déconnexion réussie"), "{bye}");
    let (_, bye) = page(format!("{base}/logout"), "en", None).await;
    assert!(bye.contains("Logout successful"), "{bye}");
    node.shutdown().await;
}

fn themes_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("casd-themes-{}-{}", std::process::id(), free_port()));
    let campus = dir.join("campus");
    std::fs::create_dir_all(campus.join("messages")).expect("dir");
    std::fs::write(campus.join("style.css"), ":root { --brand: #7a1f5c; }\n").expect("css");
    std::fs::write(campus.join("logo.svg"), "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"32\" height=\"32\"/>")
        .expect("logo");
    std::fs::write(campus.join("messages/en.toml"), "[login]\ntitle = \"Campus sign-in\"\n").expect("messages");
    std::fs::write(campus.join("messages/fr.toml"), "[login]\ntitle = \"Connexion au campus\"\n").expect("messages");
    dir
}

fn campus_service() -> casd::cas::services::ServiceDefinition {
    toml::from_str(&format!(
        "id = 5\nname = \"Campus portal\"\norder = -1\npattern = '{}'\ntheme = \"campus\"\n",
        regex::escape(CAMPUS_APP)
    ))
    .expect("service")
}

#[tokio::test]
async fn a_service_with_a_theme_gets_its_css_logo_and_messages() {
    let dir = themes_dir();
    let d = dir.clone();
    let node = start(move |c| {
        c.ui.themes_dir = Some(d);
        c.services.push(campus_service());
    })
    .await;
    let base = node.base_url();
    let (_, themed) = page(format!("{base}/login?service={}", enc(CAMPUS_APP)), "en", None).await;
    assert!(themed.contains("Campus sign-in") && themed.contains("--brand: #7a1f5c"), "{themed}");
    assert!(themed.contains("/theme/campus/logo"), "{themed}");
    let (_, themed_fr) = page(format!("{base}/login?service={}", enc(CAMPUS_APP)), "fr", None).await;
    assert!(themed_fr.contains("Connexion au campus") && themed_fr.contains("Mot de passe"), "{themed_fr}");
    let (_, plain) = page(format!("{base}/login?service={}", enc(APP)), "en", None).await;
    assert!(plain.contains("<h1>Log in</h1>") && !plain.contains("#7a1f5c"), "other services keep the built-in look");
    let logo = http().get(format!("{base}/theme/campus/logo")).send().await.expect("logo");
    assert_eq!(logo.status().as_u16(), 200);
    assert_eq!(logo.headers()["content-type"], "image/svg+xml");
    assert_eq!(http().get(format!("{base}/theme/nope/logo")).send().await.expect("logo").status().as_u16(), 404);

    // Themes are read again on SIGHUP (NodeHandle::reload_pages); a broken one leaves the pages in force.
    let campus = dir.join("campus");
    std::fs::write(campus.join("messages/en.toml"), "[login]\ntitle = \"Campus sign-in, renewed\"\n").expect("write");
    assert!(node.reload_pages().expect("reloads"), "themes were read again");
    let (_, renewed) = page(format!("{base}/login?service={}", enc(CAMPUS_APP)), "en", None).await;
    assert!(renewed.contains("Campus sign-in, renewed"), "{renewed}");
    std::fs::write(campus.join("login.html"), "{% if %}").expect("write");
    let e = node.reload_pages().expect_err("a broken template");
    assert!(e.to_string().contains("login.html"), "{e}");
    let (status, kept) = page(format!("{base}/login?service={}", enc(CAMPUS_APP)), "en", None).await;
    assert!(status == 200 && kept.contains("Campus sign-in, renewed"), "the pages in force stay: {kept}");
    node.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

fn refused(themes: &Path, theme: Option<&str>) -> String {
    let mut c = config(|_| {});
    c.ui.themes_dir = Some(themes.to_owned());
    c.ui.theme = theme.map(str::to_owned);
    match c.resolve() {
        Ok(_) => panic!("accepted"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn a_bad_theme_is_refused_at_start_naming_the_file() {
    let dir = themes_dir();
    let campus = dir.join("campus");
    std::fs::write(campus.join("login.html"), "{% extends \"base.html\" %}{% block content %}{% if %}{% endblock %}")
        .expect("write");
    let e = refused(&dir, None);
    assert!(e.contains("login.html"), "{e}");
    std::fs::remove_file(campus.join("login.html")).expect("rm");

    std::fs::write(campus.join("messages/en.toml"), "[login]\ntitel = \"typo\"\n").expect("write");
    let e = refused(&dir, None);
    assert!(e.contains("messages/en.toml") && e.contains("login.titel"), "{e}");
    std::fs::write(campus.join("messages/en.toml"), "[login]\ntitle = \"ok\"\n").expect("write");

    std::fs::write(campus.join("messages/de.toml"), "[login]\ntitle = \"Anmelden\"\n").expect("write");
    let e = refused(&dir, None);
    assert!(e.contains("messages/de.toml") && e.contains("missing"), "a new language must be complete: {e}");
    std::fs::remove_file(campus.join("messages/de.toml")).expect("rm");

    let e = refused(&dir, Some("harbour"));
    assert!(e.contains("harbour"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}
