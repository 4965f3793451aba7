//! `GET /cluster` (JSON) and `GET /cluster.html`: the membership as this node sees it. A single node answers 404.
//! Addresses are internal: expose these paths only where operators can reach them.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use minijinja::{Environment, context};

use super::Ops;

/// The status page's template, in the look of the CAS pages.
pub(super) struct Pages {
    env: Environment<'static>,
}

impl Pages {
    pub(super) fn new(base_path: &str) -> Self {
        let mut env = Environment::new();
        env.add_template("base.html", include_str!("../cas/templates/base.html")).expect("built-in template is valid");
        env.add_template("cluster.html", include_str!("templates/cluster.html")).expect("built-in template is valid");
        env.add_global("base_path", base_path.to_owned());
        // The operators' page is in English, in the built-in look.
        env.add_global("t", minijinja::Value::from_serialize(crate::cas::pages::english()));
        env.add_global("lang", "en");
        Self { env }
    }
}

fn single_node() -> Response {
    (StatusCode::NOT_FOUND, "this node runs without a cluster").into_response()
}

pub(super) async fn json(State(ops): State<Arc<Ops>>) -> Response {
    match &ops.cluster {
        Some(c) => Json(c.status.borrow().clone()).into_response(),
        None => single_node(),
    }
}

pub(super) async fn html(State(ops): State<Arc<Ops>>) -> Response {
    let Some(c) = &ops.cluster else { return single_node() };
    let status = c.status.borrow().clone();
    let live = status.view().len();
    let page = ops.pages.env.get_template("cluster.html").and_then(|t| t.render(context! { s => status, live }));
    match page {
        Ok(body) => Html(body).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "cluster page failed");
            (StatusCode::INTERNAL_SERVER_ERROR, "internal error").into_response()
        }
    }
}
