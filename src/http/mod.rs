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
mod watch_gate;

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

/// Whether a route moves to `server.internal_listen` when that is set:
/// what only operators and their scrapers should reach.
pub fn is_internal(path: &str) -> bool {
    path == "/metrics" || path == "/readyz" || path.starts_with("/v1/admin/")
}

/// The routers a node serves: `public` on `server.listen`; with
/// `server.internal_listen` set, the [`is_internal`] routes on `internal`
/// and not on `public` (`/healthz` on both).
pub struct Routers {
    pub public: Router,
    pub internal: Option<Router>,
}

/// The routers of a node: a front serves the API, the viewer transports and
/// the page; other roles (`front = false`) health, readiness and metrics.
pub fn routers(state: AppState, front: bool) -> Routers {
    let routes = if front {
        api(
            state.config.server.max_body_bytes,
            state.config.ingest.max_batch_events,
        )
    } else {
        ops::health_routes()
    };
    if state.config.server.internal_listen.trim().is_empty() {
        return Routers {
            public: finish(routes, &state, front),
            internal: None,
        };
    }
    let (internal, public) = routes.partition(is_internal);
    let internal = internal.merge(ops::liveness_route());
    Routers {
        public: finish(public, &state, front),
        internal: Some(finish(internal, &state, false)),
    }
}

/// The router serving `routes`: the contract's 404 / 405, the body limit,
/// CORS (browser-facing routers only) and the access log.
fn finish(routes: Routes, state: &AppState, browsers: bool) -> Router {
    let limit = state.config.server.max_body_bytes;
    let router = routes
        .into_router()
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(limit));
    // Outermost, so preflights never reach a route.
    let cors = browsers
        .then(|| cors::CorsLayer::new(&state.config.server.allowed_origins))
        .flatten();
    let router = match cors {
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
    router.with_state(state.clone())
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
