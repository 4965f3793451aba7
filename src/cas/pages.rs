//! HTML pages for people: the login form and the message pages, in the browser's language, in a theme.
//!
//! Templates are compiled into the binary and rendered with auto-escaping, so nothing a client sends can inject
//! markup. Text comes from message bundles (`messages/en.toml`, `messages/fr.toml`), chosen per request from
//! `Accept-Language`. A theme (`[ui] themes_dir`, one folder per theme; the default `ui.theme`, or a service's
//! `theme`) may override any template (`base.html`, `login.html`, `message.html`), add CSS (`style.css`, inlined
//! after the built-in styles), a logo (`logo.svg` or `logo.png`, served at `<base>/theme/<name>/logo`), and any
//! message (`messages/<lang>.toml`), or add a language with a complete bundle. Themes are read and checked at start
//! (a template that does not parse, an unknown message key: an error naming the file), and again on SIGHUP, when
//! a theme that no longer loads leaves the pages in force as they were.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use axum::http::header::{ACCEPT_LANGUAGE, CACHE_CONTROL, CONTENT_TYPE};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use minijinja::{Environment, context};

const BUILTIN_TEMPLATES: [(&str, &str); 4] = [
    ("base.html", include_str!("templates/base.html")),
    ("login.html", include_str!("templates/login.html")),
    ("message.html", include_str!("templates/message.html")),
    ("post_redirect.html", include_str!("templates/post_redirect.html")),
];

const BUILTIN_BUNDLES: [(&str, &str); 2] =
    [("en", include_str!("messages/en.toml")), ("fr", include_str!("messages/fr.toml"))];

/// The language every bundle is checked against, and the fallback.
const DEFAULT_LANG: &str = "en";

/// A theme that cannot be used: the file and what is wrong.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {detail}")]
pub struct ThemeError {
    pub file: String,
    pub detail: String,
}

type Bundle = HashMap<String, String>;

struct Theme {
    name: Option<String>,
    env: Environment<'static>,
    css: String,
    logo: Option<(&'static str, Vec<u8>)>,
    bundles: BTreeMap<String, Bundle>,
}

/// The pages in force, swapped whole when the themes are read again (SIGHUP). A request takes one snapshot.
pub struct LivePages {
    current: arc_swap::ArcSwap<Pages>,
    base_path: String,
    ui: UiConfig,
}

impl LivePages {
    pub fn new(pages: Pages, base_path: &str, ui: &UiConfig) -> Self {
        Self { current: arc_swap::ArcSwap::from_pointee(pages), base_path: base_path.to_owned(), ui: ui.clone() }
    }

    pub fn current(&self) -> std::sync::Arc<Pages> {
        self.current.load_full()
    }

    /// Reads the themes again (`false`: there are none); a theme that no longer loads leaves the pages in force
    /// as they were.
    pub fn reload(&self) -> Result<bool, ThemeError> {
        if self.ui.themes_dir.is_none() {
            return Ok(false);
        }
        self.current.store(std::sync::Arc::new(Pages::load(&self.base_path, &self.ui)?));
        Ok(true)
    }
}

pub struct Pages {
    builtin: Theme,
    themes: HashMap<String, Theme>,
    default_theme: Option<String>,
}

/// What the login form shows.
#[derive(Default)]
pub struct LoginForm<'a> {
    pub lt: &'a str,
    pub service: Option<&'a str>,
    pub service_name: Option<&'a str>,
    pub method: Option<&'a str>,
    pub username: &'a str,
    /// A message key and its `{placeholders}`.
    pub error: Option<Text>,
    /// The `warn` box starts ticked (the request asked for it, or the browser holds the warn cookie).
    pub warn: bool,
    /// Whether "remember me" is offered (`tickets.remember_me`).
    pub remember_me: bool,
}

/// A message by key, with values for its `{placeholders}`.
#[derive(Clone, Debug)]
pub struct Text {
    pub key: &'static str,
    pub args: Vec<(&'static str, String)>,
}

impl Text {
    pub fn new(key: &'static str) -> Self {
        Self { key, args: Vec::new() }
    }

    pub fn with(mut self, name: &'static str, value: impl ToString) -> Self {
        self.args.push((name, value.to_string()));
        self
    }
}

impl From<&'static str> for Text {
    fn from(key: &'static str) -> Self {
        Self::new(key)
    }
}

#[derive(Clone, Copy)]
pub enum Tone {
    Ok,
    Error,
}

/// `[ui]`: where themes live and which one pages use by default.
#[derive(Clone, Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UiConfig {
    /// A folder with one sub-folder per theme (relative to the config file).
    pub themes_dir: Option<PathBuf>,
    /// The theme of every page whose service names none. Absent: the built-in look.
    pub theme: Option<String>,
}

/// Flattens a bundle's TOML (`[login] title = ...`) into `login.title` keys.
fn parse_bundle(text: &str) -> Result<Bundle, String> {
    let table: toml::Table = toml::from_str(text).map_err(|e| e.to_string())?;
    let mut out = Bundle::new();
    for (section, value) in table {
        let toml::Value::Table(entries) = value else {
            return Err(format!("{section}: expected a [section] of messages"));
        };
        for (key, value) in entries {
            let toml::Value::String(s) = value else { return Err(format!("{section}.{key}: expected a string")) };
            out.insert(format!("{section}.{key}"), s);
        }
    }
    Ok(out)
}

/// The built-in English messages (the operators' pages use them).
pub fn english() -> HashMap<String, String> {
    parse_bundle(BUILTIN_BUNDLES[0].1).expect("built-in bundles parse")
}

fn builtin_bundles() -> BTreeMap<String, Bundle> {
    BUILTIN_BUNDLES
        .iter()
        .map(|(lang, text)| ((*lang).to_owned(), parse_bundle(text).expect("built-in bundles parse")))
        .collect()
}

fn environment(base_path: &str, dir: Option<&Path>) -> Result<Environment<'static>, ThemeError> {
    let mut env = Environment::new();
    for (name, builtin) in BUILTIN_TEMPLATES {
        let (file, text) = match dir.map(|d| d.join(name)).filter(|p| p.is_file()) {
            Some(p) => {
                let text = std::fs::read_to_string(&p)
                    .map_err(|e| ThemeError { file: p.display().to_string(), detail: e.to_string() })?;
                (p.display().to_string(), text)
            }
            None => (format!("built-in {name}"), builtin.to_owned()),
        };
        env.add_template_owned(name, text).map_err(|e| ThemeError { file, detail: e.to_string() })?;
    }
    env.add_global("base_path", base_path.to_owned());
    Ok(env)
}

impl Theme {
    fn builtin(base_path: &str) -> Self {
        Self {
            name: None,
            env: environment(base_path, None).expect("built-in templates are valid"),
            css: String::new(),
            logo: None,
            bundles: builtin_bundles(),
        }
    }

    fn load(base_path: &str, name: &str, dir: &Path) -> Result<Self, ThemeError> {
        let err = |p: &Path, detail: String| ThemeError { file: p.display().to_string(), detail };
        if !dir.is_dir() {
            return Err(err(dir, "no such theme folder".into()));
        }
        let env = environment(base_path, Some(dir))?;
        let css_path = dir.join("style.css");
        let css = match css_path.is_file() {
            true => std::fs::read_to_string(&css_path).map_err(|e| err(&css_path, e.to_string()))?,
            false => String::new(),
        };
        if css.contains("</style") {
            return Err(err(&css_path, "must not contain </style".into()));
        }
        let mut logo = None;
        for (file, content_type) in [("logo.svg", "image/svg+xml"), ("logo.png", "image/png")] {
            let p = dir.join(file);
            if p.is_file() {
                logo = Some((content_type, std::fs::read(&p).map_err(|e| err(&p, e.to_string()))?));
                break;
            }
        }
        let mut bundles = builtin_bundles();
        let english: Vec<String> = bundles[DEFAULT_LANG].keys().cloned().collect();
        let messages = dir.join("messages");
        if messages.is_dir() {
            let entries = std::fs::read_dir(&messages).map_err(|e| err(&messages, e.to_string()))?;
            for entry in entries {
                let p = entry.map_err(|e| err(&messages, e.to_string()))?.path();
                let Some(lang) =
                    p.file_stem().and_then(|s| s.to_str()).filter(|_| p.extension().is_some_and(|e| e == "toml"))
                else {
                    continue;
                };
                let text = std::fs::read_to_string(&p).map_err(|e| err(&p, e.to_string()))?;
                let overrides = parse_bundle(&text).map_err(|e| err(&p, e))?;
                if let Some(unknown) = overrides.keys().find(|k| !bundles[DEFAULT_LANG].contains_key(*k)) {
                    return Err(err(&p, format!("{unknown}: not a message key casd uses")));
                }
                let lang = lang.to_ascii_lowercase();
                match bundles.get_mut(&lang) {
                    Some(b) => b.extend(overrides),
                    None => {
                        // A language of the theme's own must say everything.
                        if let Some(missing) = english.iter().find(|k| !overrides.contains_key(*k)) {
                            return Err(err(&p, format!("{missing}: missing (a new language needs every message)")));
                        }
                        bundles.insert(lang, overrides);
                    }
                }
            }
        }
        Ok(Self { name: Some(name.to_owned()), env, css, logo, bundles })
    }

    fn render(&self, name: &str, ctx: minijinja::Value) -> Html<String> {
        let body = self.env.get_template(name).and_then(|t| t.render(ctx)).unwrap_or_else(|e| {
            tracing::error!(error = %e, template = name, theme = ?self.name, "template failed");
            "<!doctype html><title>Error</title><p>Internal error</p>".into()
        });
        Html(body)
    }

    /// The bundle that best matches `Accept-Language` (q-values honoured; `fr-CA` takes `fr`), else English.
    fn language(&self, headers: &HeaderMap) -> &str {
        let header = headers.get(ACCEPT_LANGUAGE).and_then(|v| v.to_str().ok()).unwrap_or_default();
        let mut wanted: Vec<(f32, String)> = header
            .split(',')
            .take(16)
            .filter_map(|part| {
                let mut bits = part.trim().split(';');
                let tag = bits.next()?.trim().to_ascii_lowercase();
                let q = bits.find_map(|b| b.trim().strip_prefix("q=")?.parse::<f32>().ok()).unwrap_or(1.0);
                (!tag.is_empty() && q > 0.0).then_some((q, tag))
            })
            .collect();
        wanted.sort_by(|a, b| b.0.total_cmp(&a.0));
        for (_, tag) in &wanted {
            let primary = tag.split('-').next().unwrap_or_default();
            for candidate in [tag.as_str(), primary] {
                if let Some((lang, _)) = self.bundles.get_key_value(candidate) {
                    return lang;
                }
            }
        }
        DEFAULT_LANG
    }
}

impl Pages {
    /// The built-in look only.
    pub fn new(base_path: &str) -> Self {
        Self { builtin: Theme::builtin(base_path), themes: HashMap::new(), default_theme: None }
    }

    /// Loads every theme folder of `ui.themes_dir`; `ui.theme` must name one of them.
    pub fn load(base_path: &str, ui: &UiConfig) -> Result<Self, ThemeError> {
        let mut pages = Self::new(base_path);
        if let Some(dir) = &ui.themes_dir {
            let entries = std::fs::read_dir(dir)
                .map_err(|e| ThemeError { file: dir.display().to_string(), detail: e.to_string() })?;
            for entry in entries {
                let path =
                    entry.map_err(|e| ThemeError { file: dir.display().to_string(), detail: e.to_string() })?.path();
                let Some(name) = path.file_name().and_then(|n| n.to_str()).filter(|n| !n.starts_with('.')) else {
                    continue;
                };
                if path.is_dir() {
                    pages.themes.insert(name.to_owned(), Theme::load(base_path, name, &path)?);
                }
            }
        }
        if let Some(name) = &ui.theme {
            if !pages.themes.contains_key(name) {
                let where_ = ui.themes_dir.as_ref().map_or("(no ui.themes_dir)".into(), |d| d.display().to_string());
                return Err(ThemeError { file: where_, detail: format!("ui.theme: no theme folder named {name:?}") });
            }
            pages.default_theme = Some(name.clone());
        }
        Ok(pages)
    }

    /// The names of the loaded themes (for checking services' `theme`).
    pub fn theme_names(&self) -> Vec<String> {
        self.themes.keys().cloned().collect()
    }

    /// The pages one request sees: its service's theme (or the default), in the browser's language.
    pub fn view<'a>(&'a self, headers: &HeaderMap, service_theme: Option<&str>) -> View<'a> {
        let theme =
            service_theme.or(self.default_theme.as_deref()).and_then(|n| self.themes.get(n)).unwrap_or(&self.builtin);
        let lang = theme.language(headers);
        View { theme, lang: lang.to_owned() }
    }

    /// `GET <base>/theme/<name>/logo`.
    pub fn logo(&self, name: &str) -> Response {
        match self.themes.get(name).and_then(|t| t.logo.as_ref()) {
            Some((content_type, bytes)) => {
                ([(CONTENT_TYPE, *content_type), (CACHE_CONTROL, "public, max-age=3600")], bytes.clone())
                    .into_response()
            }
            None => StatusCode::NOT_FOUND.into_response(),
        }
    }
}

/// Pages in one theme and language.
pub struct View<'a> {
    theme: &'a Theme,
    lang: String,
}

impl View<'_> {
    pub fn lang(&self) -> &str {
        &self.lang
    }

    fn bundle(&self) -> &Bundle {
        self.theme.bundles.get(&self.lang).unwrap_or(&self.theme.bundles[DEFAULT_LANG])
    }

    /// A message in this view's language, its placeholders filled in (escaped later, by the template).
    pub fn text(&self, text: &Text) -> String {
        let template = self
            .bundle()
            .get(text.key)
            .or_else(|| self.theme.bundles[DEFAULT_LANG].get(text.key))
            .map_or(text.key, String::as_str);
        let mut out = template.to_owned();
        for (name, value) in &text.args {
            out = out.replace(&format!("{{{name}}}"), value);
        }
        out
    }

    fn context(&self) -> minijinja::Value {
        let logo = self.theme.logo.as_ref().and(self.theme.name.clone());
        context! { t => self.bundle(), lang => self.lang, theme_css => self.theme.css, logo_theme => logo }
    }

    /// `method=POST` (CAS 3.0 §2.1.1): a form that posts the ticket to the service, sent by a script (a button if
    /// scripts are off); with a `warn` question, only by the button.
    pub fn post_redirect(&self, service: &str, ticket: &str, warn: Option<&Text>) -> Response {
        let question = warn.map(|w| self.text(w));
        let ctx = context! { service, ticket, question, auto => question.is_none(), ..self.context() };
        self.theme.render("post_redirect.html", ctx).into_response()
    }

    pub fn login(&self, status: StatusCode, action: &str, form: &LoginForm<'_>) -> Response {
        let error = form.error.as_ref().map(|e| self.text(e));
        let ctx = context! {
            action, lt => form.lt, service => form.service, service_name => form.service_name,
            method => form.method, username => form.username, error, warn => form.warn,
            remember_me => form.remember_me, ..self.context()
        };
        (status, self.theme.render("login.html", ctx)).into_response()
    }

    pub fn message(
        &self,
        status: StatusCode,
        title: impl Into<Text>,
        message: impl Into<Text>,
        tone: Tone,
        link: Option<(&str, Text)>,
    ) -> Response {
        self.message_loading(status, title, message, tone, link, &[])
    }

    /// A message page that also loads `frames` in hidden, sandboxed frames: front-channel single logout.
    pub fn message_loading(
        &self,
        status: StatusCode,
        title: impl Into<Text>,
        message: impl Into<Text>,
        tone: Tone,
        link: Option<(&str, Text)>,
        frames: &[String],
    ) -> Response {
        let tone = match tone {
            Tone::Ok => "ok",
            Tone::Error => "error",
        };
        let (title, message) = (self.text(&title.into()), self.text(&message.into()));
        let (link_url, link_text) = link.map(|(url, text)| (url.to_owned(), self.text(&text))).unzip();
        let ctx = context! { title, message, tone, link_url, link_text, frames, ..self.context() };
        (status, self.theme.render("message.html", ctx)).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(accept: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(ACCEPT_LANGUAGE, accept.parse().expect("header"));
        h
    }

    #[test]
    fn every_built_in_language_says_every_message() {
        let bundles = builtin_bundles();
        let english = &bundles[DEFAULT_LANG];
        for (lang, bundle) in &bundles {
            let mut missing: Vec<_> = english.keys().filter(|k| !bundle.contains_key(*k)).collect();
            missing.sort();
            assert!(missing.is_empty(), "{lang} lacks {missing:?}");
            assert_eq!(bundle.len(), english.len(), "{lang} has keys English has not");
            for (key, value) in bundle {
                for placeholder in ["{seconds}", "{service}"] {
                    assert_eq!(english[key].contains(placeholder), value.contains(placeholder), "{lang} {key}");
                }
            }
        }
    }

    #[test]
    fn accept_language_picks_the_best_bundle() {
        let pages = Pages::new("/cas");
        let lang = |h: &str| pages.view(&headers(h), None).lang().to_owned();
        assert_eq!(lang("fr-CA,fr;q=0.9,en;q=0.8"), "fr");
        assert_eq!(lang("de-DE,de;q=0.9,en;q=0.5"), "en", "no German: the next choice, English");
        assert_eq!(lang("de, fr;q=0.4, en;q=0.3"), "fr");
        assert_eq!(lang("en;q=0.2, fr;q=0.9"), "fr", "q-values, not order");
        assert_eq!(lang("fr;q=0"), "en", "q=0 means not acceptable");
        assert_eq!(lang(""), "en");
        assert_eq!(pages.view(&HeaderMap::new(), None).text(&Text::new("login.title")), "Log in");
        let fr = pages.view(&headers("fr"), None);
        assert!(fr.text(&Text::new("login.throttled_address").with("seconds", 7)).contains("7 secondes"));
    }
}
