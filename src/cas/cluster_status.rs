//! `GET /cluster` (JSON) and `GET /cluster.html`: the membership as this node sees it, for operators. A single node
//! answers 404. Addresses are internal: expose these paths only where operators can reach them.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use super::AppState;

pub async fn json(State(app): State<AppState>) -> Response {
    match &app.cluster {
        Some(status) => Json(status.borrow().clone()).into_response(),
        None => (StatusCode::NOT_FOUND, "this node runs without a cluster").into_response(),
    }
}

pub async fn html(State(app): State<AppState>) -> Response {
    match &app.cluster {
        Some(status) => {
            let snapshot = status.borrow().clone();
            app.pages.cluster(&snapshot)
        }
        None => (StatusCode::NOT_FOUND, "this node runs without a cluster").into_response(),
    }
}
