//! HTML pages for people: the login form and the message pages. Templates are compiled into the binary and rendered
//! with auto-escaping, so nothing a client sends can inject markup.

use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use minijinja::{Environment, context};

pub struct Pages {
    env: Environment<'static>,
}

/// What the login form shows.
#[derive(Default)]
pub struct LoginForm<'a> {
    pub lt: &'a str,
    pub service: Option<&'a str>,
    pub service_name: Option<&'a str>,
    pub method: Option<&'a str>,
    pub username: &'a str,
    pub error: Option<&'a str>,
    /// The `warn` box starts ticked (the request asked for it, or the browser holds the warn cookie).
    pub warn: bool,
    /// Whether "remember me" is offered (`tickets.remember_me`).
    pub remember_me: bool,
}

#[derive(Clone, Copy)]
pub enum Tone {
    Ok,
    Error,
}

impl Pages {
    pub fn new(base_path: &str) -> Self {
        let mut env = Environment::new();
        for (name, text) in [
            ("base.html", include_str!("templates/base.html")),
            ("login.html", include_str!("templates/login.html")),
            ("message.html", include_str!("templates/message.html")),
            ("post_redirect.html", include_str!("templates/post_redirect.html")),
        ] {
            env.add_template(name, text).expect("built-in templates are valid");
        }
        env.add_global("base_path", base_path.to_owned());
        Self { env }
    }

    fn render(&self, name: &str, ctx: minijinja::Value) -> Html<String> {
        let body = self.env.get_template(name).and_then(|t| t.render(ctx)).unwrap_or_else(|e| {
            tracing::error!(error = %e, template = name, "template failed");
            "<!doctype html><title>Error</title><p>Internal error</p>".into()
        });
        Html(body)
    }

    pub fn login(&self, status: StatusCode, action: &str, form: &LoginForm<'_>) -> Response {
        let ctx = context! {
            action, lt => form.lt, service => form.service, service_name => form.service_name,
            method => form.method, username => form.username, error => form.error, warn => form.warn,
            remember_me => form.remember_me,
        };
        (status, self.render("login.html", ctx)).into_response()
    }

    pub fn message(
        &self,
        status: StatusCode,
        title: &str,
        message: &str,
        tone: Tone,
        link: Option<(&str, &str)>,
    ) -> Response {
        self.message_loading(status, title, message, tone, link, &[])
    }

    /// A message page that also loads `frames` in hidden, sandboxed frames: front-channel single logout.
    pub fn message_loading(
        &self,
        status: StatusCode,
        title: &str,
        message: &str,
        tone: Tone,
        link: Option<(&str, &str)>,
        frames: &[String],
    ) -> Response {
        let tone = match tone {
            Tone::Ok => "ok",
            Tone::Error => "error",
        };
        let (link_url, link_text) = link.unzip();
        let ctx = context! { title, message, tone, link_url, link_text, frames };
        (status, self.render("message.html", ctx)).into_response()
    }

    /// `method=POST` (CAS 3.0 §2.1.1): a form that posts the ticket to the service; a button if scripts are off.
    pub fn post_redirect(&self, service: &str, ticket: &str) -> Response {
        self.render("post_redirect.html", context! { service, ticket }).into_response()
    }
}
