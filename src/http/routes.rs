//! The route table as data: each feature module lists its routes with their
//! handlers in a [`Routes`], the router is built from that list, and the
//! same list is what the OpenAPI test compares with `openapi.json` — so the
//! documented, the listed and the served routes cannot drift apart.

use axum::handler::Handler;
use axum::routing::{self, MethodRouter};
use axum::Router;

use super::state::AppState;

/// Routes with their handlers, in the order they were added.
#[derive(Default)]
pub struct Routes {
    entries: Vec<Entry>,
}

struct Entry {
    method: &'static str,
    path: &'static str,
    handler: MethodRouter<AppState>,
}

impl Routes {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn get<H: Handler<T, AppState>, T: 'static>(self, path: &'static str, h: H) -> Self {
        self.add("GET", path, routing::get(h))
    }

    pub fn post<H: Handler<T, AppState>, T: 'static>(self, path: &'static str, h: H) -> Self {
        self.add("POST", path, routing::post(h))
    }

    pub fn put<H: Handler<T, AppState>, T: 'static>(self, path: &'static str, h: H) -> Self {
        self.add("PUT", path, routing::put(h))
    }

    pub fn delete<H: Handler<T, AppState>, T: 'static>(self, path: &'static str, h: H) -> Self {
        self.add("DELETE", path, routing::delete(h))
    }

    pub fn patch<H: Handler<T, AppState>, T: 'static>(self, path: &'static str, h: H) -> Self {
        self.add("PATCH", path, routing::patch(h))
    }

    fn add(mut self, method: &'static str, path: &'static str, h: MethodRouter<AppState>) -> Self {
        self.entries.push(Entry {
            method,
            path,
            handler: h,
        });
        self
    }

    /// Wraps the route added last (a layer for that one route only).
    pub fn with_last(
        mut self,
        wrap: impl FnOnce(MethodRouter<AppState>) -> MethodRouter<AppState>,
    ) -> Self {
        let last = self.entries.pop().expect("a route to wrap");
        self.entries.push(Entry {
            handler: wrap(last.handler),
            ..last
        });
        self
    }

    /// Another feature's routes after these.
    pub fn merge(mut self, other: Routes) -> Self {
        self.entries.extend(other.entries);
        self
    }

    /// The routes whose path `pick` takes, and the others.
    pub fn partition(self, pick: impl Fn(&str) -> bool) -> (Routes, Routes) {
        let (picked, rest) = self.entries.into_iter().partition(|e| pick(e.path));
        (Routes { entries: picked }, Routes { entries: rest })
    }

    /// `(METHOD, path)` of every route, in order.
    pub fn list(&self) -> Vec<(&'static str, &'static str)> {
        self.entries.iter().map(|e| (e.method, e.path)).collect()
    }

    /// The router serving exactly these routes (methods of one path merged).
    pub fn into_router(self) -> Router<AppState> {
        self.entries
            .into_iter()
            .fold(Router::new(), |r, e| r.route(e.path, e.handler))
    }
}
