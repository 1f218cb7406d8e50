//! `GET /openapi.json`: the OpenAPI 3.0 document of every route `router`
//! serves (`openapi.json` beside this file). The tests below hold the two in
//! step through the route list the router is built from: adding a route (or
//! a method) without documenting it fails them.

use axum::http::header;
use axum::response::{IntoResponse, Response};

/// The document, as served.
pub const DOCUMENT: &str = include_str!("openapi.json");

pub async fn serve() -> Response {
    (
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "public, max-age=300"),
        ],
        DOCUMENT,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::DOCUMENT;

    const METHODS: [&str; 8] = [
        "get", "put", "post", "delete", "options", "head", "patch", "trace",
    ];

    fn doc() -> serde_json::Value {
        serde_json::from_str(DOCUMENT).expect("openapi.json is valid JSON")
    }

    /// (METHOD, path) of every operation of the document.
    fn documented() -> BTreeSet<(String, String)> {
        let doc = doc();
        let mut out = BTreeSet::new();
        for (path, item) in doc["paths"].as_object().expect("paths") {
            for (method, _) in item.as_object().expect("path item") {
                if METHODS.contains(&method.as_str()) {
                    out.insert((method.to_uppercase(), path.clone()));
                }
            }
        }
        out
    }

    /// Every route the router serves is documented, and nothing else: the
    /// router is built from [`crate::http::route_list`]'s entries.
    #[test]
    fn every_served_route_is_documented_and_nothing_else() {
        let documented = documented();
        let listed = crate::http::route_list();
        let served: BTreeSet<(String, String)> = listed
            .iter()
            .map(|(m, p)| (m.to_string(), p.to_string()))
            .collect();
        assert_eq!(served.len(), listed.len(), "a route is listed twice");
        let undocumented: Vec<_> = served.difference(&documented).collect();
        let not_served: Vec<_> = documented.difference(&served).collect();
        assert!(
            undocumented.is_empty() && not_served.is_empty(),
            "src/http/openapi.json and the route list disagree:\n  served, not documented: \
             {undocumented:?}\n  documented, not served: {not_served:?}"
        );
    }

    /// Every `$ref` resolves, every `{param}` of a path is declared, every
    /// operation has an id and responses, and every 4xx/5xx JSON body is the
    /// contract's error shape.
    #[test]
    fn document_is_consistent() {
        let doc = doc();
        assert!(doc["openapi"].as_str().unwrap().starts_with("3.0"));
        assert!(doc["info"]["title"].is_string() && doc["info"]["version"].is_string());

        fn refs(v: &serde_json::Value, out: &mut Vec<String>) {
            match v {
                serde_json::Value::Object(m) => {
                    if let Some(r) = m.get("$ref").and_then(|r| r.as_str()) {
                        out.push(r.to_string());
                    }
                    m.values().for_each(|v| refs(v, out));
                }
                serde_json::Value::Array(a) => a.iter().for_each(|v| refs(v, out)),
                _ => {}
            }
        }
        let resolve = |r: &str| -> serde_json::Value {
            let pointer = r.strip_prefix('#').expect("local $ref");
            doc.pointer(pointer)
                .unwrap_or_else(|| panic!("unresolved $ref {r}"))
                .clone()
        };
        let mut all = Vec::new();
        refs(&doc, &mut all);
        for r in &all {
            resolve(r);
        }

        let mut ids = BTreeSet::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            let wanted: BTreeSet<&str> = path
                .split('{')
                .skip(1)
                .map(|s| s.split('}').next().unwrap())
                .collect();
            for (method, op) in item.as_object().unwrap() {
                let id = op["operationId"].as_str().expect("operationId");
                assert!(ids.insert(id.to_string()), "duplicate operationId {id}");
                let params: Vec<serde_json::Value> = op["parameters"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .map(|p| match p["$ref"].as_str() {
                                Some(r) => resolve(r),
                                None => p.clone(),
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                let declared: BTreeSet<&str> = params
                    .iter()
                    .filter(|p| p["in"] == "path")
                    .map(|p| p["name"].as_str().unwrap())
                    .collect();
                assert_eq!(wanted, declared, "{method} {path}: path parameters");
                let responses = op["responses"].as_object().expect("responses");
                assert!(!responses.is_empty(), "{method} {path}: no responses");
                for (status, resp) in responses {
                    let resp = match resp["$ref"].as_str() {
                        Some(r) => resolve(r),
                        None => resp.clone(),
                    };
                    assert!(resp["description"].is_string(), "{method} {path} {status}");
                    let code: u16 = status.parse().expect("numeric status");
                    if code >= 400 && !(path == "/readyz" && code == 503) {
                        let schema = &resp["content"]["application/json"]["schema"]["$ref"];
                        assert!(
                            schema == "#/components/schemas/Error"
                                || schema == "#/components/schemas/LiveConflict",
                            "{method} {path} {status}: errors use the Error schema"
                        );
                    }
                }
            }
        }
    }
}
