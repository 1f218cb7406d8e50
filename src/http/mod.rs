//! The HTTP layer (docs/architecture.md, "Layout"): the only module that
//! knows axum's extractors and the router. Each feature module lists its
//! routes ([`routes::Routes`]); [`router`] merges them and adds the
//! contract's 404 / 405 answers. Below this layer nothing imports from it.

mod access_log;
mod admin;
pub mod client_addr;
pub mod cors;
pub mod extract;
pub mod guard;
mod ingest;
pub mod listener;
mod live;
mod moderation;
mod openapi;
mod ops;
pub mod proxy_protocol;
mod replay;
mod retract;
pub mod routes;
pub mod snapshot;
pub mod state;
mod viewer;

use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::Router;

use crate::error::ApiError;
use routes::Routes;

pub use extract::{parse_json, ApiQuery, ClientIp, RawBody, RoomPath};
pub use ingest::{parse_batch, parse_event};
pub use state::{AppInner, AppState};

/// Every route of the front roles, feature by feature.
fn api(body_limit: usize, max_batch_events: usize) -> Routes {
    Routes::new()
        .merge(ops::routes())
        .merge(ingest::routes(body_limit, max_batch_events))
        .merge(snapshot::routes())
        .merge(viewer::routes())
        .merge(replay::routes())
        .merge(live::routes())
        .merge(admin::routes())
        .merge(moderation::routes())
        .merge(retract::routes())
}

/// `(METHOD, path)` of every route [`router`] serves, as the router is
/// built from it (the OpenAPI document is checked against this list).
pub fn route_list() -> Vec<(&'static str, &'static str)> {
    api(0, 0).list()
}

/// The front roles' router: the API, the viewer transports, the page.
pub fn router(state: AppState) -> Router {
    let limit = state.config.server.max_body_bytes;
    let router = api(limit, state.config.ingest.max_batch_events)
        .into_router()
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(limit));
    // Outermost, so preflights never reach a route.
    let router = match cors::CorsLayer::new(&state.config.server.allowed_origins) {
        Some(cors) => router.layer(cors),
        None => router,
    };
    let router = if state.config.log.access {
        router.layer(axum::middleware::from_fn_with_state(
            state.clone(),
            access_log::log_request,
        ))
    } else {
        router
    };
    router.with_state(state)
}

/// Operations only (`processor` role): health, readiness, metrics.
pub fn ops_router(state: AppState) -> Router {
    ops::health_routes()
        .into_router()
        .fallback(not_found)
        .with_state(state)
}

async fn not_found() -> ApiError {
    ApiError::not_found("no such route")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this route does not take that method",
    )
}
