//! CORS for the origins of `server.allowed_origins` (exact origins, `*` for
//! any): a preflight from an allowed origin is answered here (204 with the
//! Access-Control-* headers) without reaching a route, one from another
//! origin gets a 403 without them; actual responses to an allowed origin
//! name it in `Access-Control-Allow-Origin`. No credentials: the API takes
//! bearer tokens in headers, never cookies.
//!
//! With an empty list the layer is not installed at all. Installed, it adds
//! no allocation: the headers are static and the echoed origin is the
//! request's own value (a shared buffer).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use axum::extract::Request;
use axum::http::header::{self, HeaderValue};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use tower_service::Service;

use crate::error::ApiError;

/// Whether `origin` is one of `allowed` (`*`: any).
pub fn origin_allowed(allowed: &[String], origin: &[u8]) -> bool {
    allowed.iter().any(|a| a == "*" || a.as_bytes() == origin)
}

const ALLOW_METHODS: HeaderValue =
    HeaderValue::from_static("GET, POST, PUT, PATCH, DELETE, OPTIONS");
const ALLOW_HEADERS: HeaderValue = HeaderValue::from_static(
    "authorization, content-type, idempotency-key, x-signature, x-timestamp, last-event-id",
);
const EXPOSE_HEADERS: HeaderValue = HeaderValue::from_static("etag, retry-after");
/// How long a browser may reuse a preflight answer (seconds).
const MAX_AGE: HeaderValue = HeaderValue::from_static("600");
const ORIGIN: HeaderValue = HeaderValue::from_static("origin");

/// The CORS layer, or `None` when no origin is configured.
#[derive(Clone)]
pub struct CorsLayer {
    allowed: Arc<[String]>,
}

impl CorsLayer {
    pub fn new(allowed: &[String]) -> Option<CorsLayer> {
        (!allowed.is_empty()).then(|| CorsLayer {
            allowed: allowed.into(),
        })
    }
}

impl<S> tower_layer::Layer<S> for CorsLayer {
    type Service = Cors<S>;

    fn layer(&self, inner: S) -> Cors<S> {
        Cors {
            inner,
            allowed: self.allowed.clone(),
        }
    }
}

#[derive(Clone)]
pub struct Cors<S> {
    inner: S,
    allowed: Arc<[String]>,
}

impl<S> Service<Request> for Cors<S>
where
    S: Service<Request, Response = Response>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = CorsFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let headers = req.headers();
        let Some(origin) = headers.get(header::ORIGIN) else {
            // Not a cross-origin browser request: only the cache hint.
            return CorsFuture::Inner {
                fut: self.inner.call(req),
                origin: None,
            };
        };
        let allowed = origin_allowed(&self.allowed, origin.as_bytes()).then(|| origin.clone());
        if req.method() == Method::OPTIONS
            && headers.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
        {
            return CorsFuture::Preflight {
                response: Some(preflight(allowed)),
            };
        }
        CorsFuture::Inner {
            fut: self.inner.call(req),
            origin: allowed,
        }
    }
}

/// The answer to a preflight from `origin` (`None`: not allowed).
fn preflight(origin: Option<HeaderValue>) -> Response {
    let Some(origin) = origin else {
        let mut res = ApiError::new(
            StatusCode::FORBIDDEN,
            "origin_not_allowed",
            "this origin may not make cross-origin requests",
        )
        .into_response();
        res.headers_mut().append(header::VARY, ORIGIN);
        return res;
    };
    let mut res = StatusCode::NO_CONTENT.into_response();
    let h = res.headers_mut();
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    h.insert(header::ACCESS_CONTROL_ALLOW_METHODS, ALLOW_METHODS);
    h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, ALLOW_HEADERS);
    h.insert(header::ACCESS_CONTROL_MAX_AGE, MAX_AGE);
    h.append(header::VARY, ORIGIN);
    res
}

/// Marks an actual response: every one varies by `Origin` (a shared cache
/// must not hand one origin's answer to another), and an allowed origin is
/// named.
fn decorate(res: &mut Response, origin: Option<HeaderValue>) {
    let h = res.headers_mut();
    h.append(header::VARY, ORIGIN);
    if let Some(origin) = origin {
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
        h.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, EXPOSE_HEADERS);
    }
}

pin_project_lite::pin_project! {
    #[project = CorsFutureProj]
    pub enum CorsFuture<F> {
        Preflight { response: Option<Response> },
        Inner {
            #[pin]
            fut: F,
            origin: Option<HeaderValue>,
        },
    }
}

impl<F, E> Future for CorsFuture<F>
where
    F: Future<Output = Result<Response, E>>,
{
    type Output = Result<Response, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            CorsFutureProj::Preflight { response } => {
                Poll::Ready(Ok(response.take().expect("polled after completion")))
            }
            CorsFutureProj::Inner { fut, origin } => {
                let mut res = ready!(fut.poll(cx))?;
                decorate(&mut res, origin.take());
                Poll::Ready(Ok(res))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::get;
    use axum::Router;
    use tower_service::Service;

    fn app(allowed: &[&str]) -> Router {
        let allowed: Vec<String> = allowed.iter().map(|s| s.to_string()).collect();
        Router::new()
            .route("/x", get(|| async { ([(header::ETAG, "\"1\"")], "x") }))
            .layer(CorsLayer::new(&allowed).unwrap())
    }

    async fn send(app: &mut Router, method: Method, headers: &[(&str, &str)]) -> Response {
        let mut req = Request::builder().method(method).uri("/x");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(axum::body::Body::empty()).unwrap();
        app.call(req).await.unwrap()
    }

    fn get_h<'a>(res: &'a Response, name: &str) -> Option<&'a str> {
        res.headers().get(name).map(|v| v.to_str().unwrap())
    }

    fn cors_headers(res: &Response) -> Vec<String> {
        res.headers()
            .keys()
            .map(|k| k.as_str().to_string())
            .filter(|k| k.starts_with("access-control-"))
            .collect()
    }

    #[test]
    fn origin_matching() {
        let list = vec!["https://a.example".to_string()];
        assert!(origin_allowed(&list, b"https://a.example"));
        assert!(!origin_allowed(&list, b"https://a.example.evil"));
        assert!(!origin_allowed(&list, b"http://a.example"));
        assert!(!origin_allowed(&[], b"https://a.example"));
        assert!(origin_allowed(&["*".to_string()], b"https://b.example"));
        assert!(CorsLayer::new(&[]).is_none());
    }

    #[tokio::test]
    async fn preflights() {
        let mut a = app(&["https://a.example"]);
        let pre = [
            ("origin", "https://a.example"),
            ("access-control-request-method", "POST"),
        ];
        let res = send(&mut a, Method::OPTIONS, &pre).await;
        assert_eq!(res.status(), StatusCode::NO_CONTENT);
        assert_eq!(
            get_h(&res, "access-control-allow-origin"),
            Some("https://a.example")
        );
        assert!(get_h(&res, "access-control-allow-methods")
            .unwrap()
            .contains("POST"));
        assert!(get_h(&res, "access-control-allow-headers")
            .unwrap()
            .contains("idempotency-key"));
        assert_eq!(get_h(&res, "access-control-max-age"), Some("600"));
        assert_eq!(get_h(&res, "vary"), Some("origin"));
        assert_eq!(get_h(&res, "access-control-allow-credentials"), None);

        let res = send(
            &mut a,
            Method::OPTIONS,
            &[
                ("origin", "https://evil.example"),
                ("access-control-request-method", "POST"),
            ],
        )
        .await;
        assert_eq!(res.status(), StatusCode::FORBIDDEN);
        assert!(cors_headers(&res).is_empty(), "{:?}", cors_headers(&res));

        // "*" echoes whichever origin asks.
        let mut any = app(&["*"]);
        let res = send(
            &mut any,
            Method::OPTIONS,
            &[
                ("origin", "https://b.example"),
                ("access-control-request-method", "GET"),
            ],
        )
        .await;
        assert_eq!(
            get_h(&res, "access-control-allow-origin"),
            Some("https://b.example")
        );
        // An OPTIONS that is no preflight goes to the routes (405 here).
        let res = send(&mut a, Method::OPTIONS, &[("origin", "https://a.example")]).await;
        assert_eq!(res.status(), StatusCode::METHOD_NOT_ALLOWED);
    }

    #[tokio::test]
    async fn actual_responses() {
        let mut a = app(&["https://a.example"]);
        let res = send(&mut a, Method::GET, &[("origin", "https://a.example")]).await;
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(
            get_h(&res, "access-control-allow-origin"),
            Some("https://a.example")
        );
        assert_eq!(
            get_h(&res, "access-control-expose-headers"),
            Some("etag, retry-after")
        );
        assert_eq!(get_h(&res, "vary"), Some("origin"));

        let res = send(&mut a, Method::GET, &[("origin", "https://evil.example")]).await;
        assert_eq!(res.status(), StatusCode::OK, "the browser enforces CORS");
        assert!(cors_headers(&res).is_empty());
        let res = send(&mut a, Method::GET, &[]).await;
        assert!(cors_headers(&res).is_empty());
        assert_eq!(get_h(&res, "vary"), Some("origin"));
    }
}
