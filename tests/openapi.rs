//! The OpenAPI document (`GET /openapi.json`, src/http/openapi.json) against
//! the route list the router is built from (`danmaku::http::route_list`) and
//! the running server: the document and the list name the same operations,
//! every one is served (never the router's 404 / 405), every other method on
//! a listed path is 405, and real answers — successes and errors — have a
//! documented status, content type and a body that matches the documented
//! schema.

mod common;

use std::time::{Duration, Instant};

use common::*;
use reqwest::header::HeaderMap;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

const ADMIN: &str = "openapi-test-admin-token";

async fn start() -> TestServer {
    TestServer::start_with(|c| {
        c.auth.admin_token = ADMIN.into();
        // Probing a long-poll must not hold it for 25 s.
        c.poll.default_wait_ms = 10;
        c.archive.settle_ms = 0;
        c.archive.poll_interval_ms = 50;
    })
    .await
}

struct Doc(Value);

impl Doc {
    async fn fetch(t: &TestServer) -> Doc {
        let res = t.http.get(t.url("/openapi.json")).send().await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        let ct = res.headers()["content-type"].to_str().unwrap().to_string();
        assert!(ct.starts_with("application/json"), "content-type {ct}");
        let text = res.text().await.unwrap();
        assert_eq!(
            text,
            include_str!("../src/http/openapi.json"),
            "/openapi.json serves src/http/openapi.json"
        );
        let doc: Value = serde_json::from_str(&text).expect("valid JSON");
        assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
        assert!(doc["info"]["title"].is_string());
        assert!(doc["info"]["version"].is_string());
        assert!(doc["paths"].as_object().is_some_and(|p| p.len() >= 15));
        assert!(doc["components"]["schemas"]["Error"].is_object());
        Doc(doc)
    }

    /// Follows `$ref`s.
    fn resolve<'a>(&'a self, mut v: &'a Value) -> &'a Value {
        while let Some(r) = v.get("$ref").and_then(Value::as_str) {
            v = self
                .0
                .pointer(r.strip_prefix('#').expect("local $ref"))
                .unwrap_or_else(|| panic!("unresolved $ref {r}"));
        }
        v
    }

    fn operations(&self) -> Vec<(Method, String)> {
        let mut out = Vec::new();
        for (path, item) in self.0["paths"].as_object().unwrap() {
            for method in item.as_object().unwrap().keys() {
                out.push((method.to_uppercase().parse().unwrap(), path.clone()));
            }
        }
        out
    }

    fn op(&self, method: &Method, path: &str) -> &Value {
        let op = &self.0["paths"][path][method.as_str().to_lowercase()];
        assert!(op.is_object(), "{method} {path} is not documented");
        op
    }

    /// Checks a real answer against the operation's documented responses:
    /// the status is listed, the content type is the documented one, and a
    /// JSON body matches the schema.
    fn check(&self, what: &str, method: &Method, path: &str, got: &(StatusCode, Value, HeaderMap)) {
        let (status, body, headers) = got;
        let responses = &self.op(method, path)["responses"];
        let Some(resp) = responses.get(status.as_str()) else {
            panic!(
                "{what}: {method} {path} answered {status}, not documented (documented: {:?}); body {body}",
                responses.as_object().unwrap().keys().collect::<Vec<_>>()
            );
        };
        let resp = self.resolve(resp);
        let ct = headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let Some(content) = resp.get("content").and_then(Value::as_object) else {
            assert!(
                ct.is_empty() && body.is_null(),
                "{what}: {status} documents no body, got {ct:?} {body}"
            );
            return;
        };
        let (media, media_obj) = content
            .iter()
            .find(|(m, _)| ct.split(';').next().unwrap().trim() == m.as_str())
            .unwrap_or_else(|| {
                panic!(
                    "{what}: content-type {ct:?} is not among {:?}",
                    content.keys().collect::<Vec<_>>()
                )
            });
        if media == "application/json" {
            if let Err(e) = self.validate(&media_obj["schema"], body, "$") {
                panic!(
                    "{what}: {method} {path} {status}: body does not match the schema: {e}\n{body}"
                );
            }
        }
        if let Some(hs) = resp.get("headers").and_then(Value::as_object) {
            for (name, h) in hs {
                let h = self.resolve(h);
                if h["required"] == true {
                    assert!(headers.contains_key(name.as_str()), "{what}: header {name}");
                }
            }
        }
    }

    /// A small JSON Schema (OpenAPI 3.0 dialect) validator: enough for this
    /// document's keywords.
    fn validate(&self, schema: &Value, v: &Value, at: &str) -> Result<(), String> {
        let s = self.resolve(schema);
        if v.is_null() {
            return if s["nullable"] == true || s.get("type").is_none() {
                Ok(())
            } else {
                Err(format!("{at}: null"))
            };
        }
        if let Some(t) = s.get("type").and_then(Value::as_str) {
            let ok = match t {
                "object" => v.is_object(),
                "array" => v.is_array(),
                "string" => v.is_string(),
                "integer" => v.is_u64() || v.is_i64(),
                "number" => v.is_number(),
                "boolean" => v.is_boolean(),
                other => return Err(format!("{at}: unknown type {other}")),
            };
            if !ok {
                return Err(format!("{at}: {v} is not of type {t}"));
            }
        }
        if let Some(e) = s.get("enum").and_then(Value::as_array) {
            if !e.contains(v) {
                return Err(format!("{at}: {v} not in {e:?}"));
            }
        }
        if let Some(n) = v.as_f64() {
            if s.get("minimum")
                .and_then(Value::as_f64)
                .is_some_and(|m| n < m)
            {
                return Err(format!("{at}: {n} below minimum"));
            }
            if s.get("maximum")
                .and_then(Value::as_f64)
                .is_some_and(|m| n > m)
            {
                return Err(format!("{at}: {n} above maximum"));
            }
        }
        if let Some(text) = v.as_str() {
            let n = text.chars().count() as u64;
            if s.get("minLength")
                .and_then(Value::as_u64)
                .is_some_and(|m| n < m)
                || s.get("maxLength")
                    .and_then(Value::as_u64)
                    .is_some_and(|m| n > m)
            {
                return Err(format!("{at}: length {n} out of bounds"));
            }
        }
        if let Some(items) = v.as_array() {
            let n = items.len() as u64;
            if s.get("minItems")
                .and_then(Value::as_u64)
                .is_some_and(|m| n < m)
                || s.get("maxItems")
                    .and_then(Value::as_u64)
                    .is_some_and(|m| n > m)
            {
                return Err(format!("{at}: {n} items out of bounds"));
            }
            if let Some(item) = s.get("items") {
                for (i, x) in items.iter().enumerate() {
                    self.validate(item, x, &format!("{at}[{i}]"))?;
                }
            }
        }
        if let Some(obj) = v.as_object() {
            for r in s["required"].as_array().into_iter().flatten() {
                let r = r.as_str().unwrap();
                if !obj.contains_key(r) {
                    return Err(format!("{at}: missing required {r}"));
                }
            }
            let props = s.get("properties").and_then(Value::as_object);
            for (k, x) in obj {
                match props.and_then(|p| p.get(k)) {
                    Some(ps) => self.validate(ps, x, &format!("{at}.{k}"))?,
                    None if s["additionalProperties"] == false => {
                        return Err(format!("{at}: unexpected property {k}"))
                    }
                    None => {}
                }
            }
        }
        Ok(())
    }
}

/// Sends `method` to `path` and reads the answer (for an event stream: the
/// status and headers only).
async fn send(
    t: &TestServer,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<Vec<u8>>,
) -> (StatusCode, Value, HeaderMap) {
    let mut req = t.stream_http.request(method, t.url(path));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    if let Some(b) = body {
        req = req.header("content-type", "application/json").body(b);
    }
    let res = tokio::time::timeout(WAIT, req.send())
        .await
        .expect("answer in time")
        .expect("request");
    let streaming = res
        .headers()
        .get("content-type")
        .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
    if streaming {
        return (res.status(), Value::Null, res.headers().clone());
    }
    let status = res.status();
    let headers = res.headers().clone();
    let bytes = tokio::time::timeout(WAIT, res.bytes())
        .await
        .expect("body in time")
        .expect("body");
    let json_body = headers
        .get("content-type")
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    let body = if bytes.is_empty() {
        Value::Null
    } else if json_body {
        serde_json::from_slice(&bytes).expect("a JSON content type has a JSON body")
    } else {
        Value::String(String::from_utf8_lossy(&bytes).into_owned())
    };
    (status, body, headers)
}

fn is_route_miss(got: &(StatusCode, Value, HeaderMap)) -> bool {
    got.0 == StatusCode::NOT_FOUND && got.1["error"]["message"] == "no such route"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_operation_is_served_and_other_methods_are_405() {
    let t = start().await;
    let doc = Doc::fetch(&t).await;
    let room = t.room("oa");

    // The discriminator: what the router answers for a route it lacks.
    let miss = send(&t, Method::GET, "/v1/no-such-route", &[], None).await;
    assert!(is_route_miss(&miss), "route miss: {:?}", miss.1);

    let ops = doc.operations();
    assert!(ops.len() >= 20, "{} operations", ops.len());
    let mut listed: Vec<(Method, String)> = danmaku::http::route_list()
        .into_iter()
        .map(|(m, p)| (m.parse().unwrap(), p.to_string()))
        .collect();
    let mut documented = ops.clone();
    listed.sort_by(|a, b| (a.0.as_str(), &a.1).cmp(&(b.0.as_str(), &b.1)));
    documented.sort_by(|a, b| (a.0.as_str(), &a.1).cmp(&(b.0.as_str(), &b.1)));
    assert_eq!(listed, documented, "route list and openapi.json");
    let paths: std::collections::BTreeSet<&String> = ops.iter().map(|(_, p)| p).collect();
    for path in paths {
        let concrete = path.replace("{room}", &room);
        for method in [
            Method::GET,
            Method::POST,
            Method::PUT,
            Method::PATCH,
            Method::DELETE,
        ] {
            let documented = ops.iter().any(|(m, p)| *m == method && p == path);
            let body = (method != Method::GET).then(|| b"{}".to_vec());
            let got = send(&t, method.clone(), &concrete, &[], body).await;
            let what = format!("probe {method} {path}");
            if documented {
                assert!(!is_route_miss(&got), "{what}: documented but not routed");
                assert_ne!(got.0, StatusCode::METHOD_NOT_ALLOWED, "{what}: documented");
                doc.check(&what, &method, path, &got);
            } else {
                assert_error(
                    &format!("{what} (undocumented method)"),
                    &got,
                    StatusCode::METHOD_NOT_ALLOWED,
                    "method_not_allowed",
                );
            }
        }
    }
    t.shutdown().await;
}

/// What, headers, body, expected status and error code.
type BadPost<'a> = (
    &'a str,
    &'a [(&'a str, &'a str)],
    Vec<u8>,
    StatusCode,
    &'a str,
);

fn admin() -> (&'static str, String) {
    ("authorization", format!("Bearer {ADMIN}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_answers_match_the_documented_ones() {
    let t = start().await;
    let doc = Doc::fetch(&t).await;
    let room = t.room("oa");
    let token = t.token("u1", "Alice");
    let bearer = format!("Bearer {token}");
    let auth = [("authorization", bearer.as_str())];
    let (a, admin_value) = admin();
    let admin = [(a, admin_value.as_str())];
    let r = |suffix: &str| format!("/v1/rooms/{room}/{suffix}");
    let danmaku = "/v1/rooms/{room}/danmaku";

    // Operations.
    for (path, what) in [
        ("/", "page"),
        ("/app.js", "script"),
        ("/healthz", "healthz"),
        ("/readyz", "readyz"),
        ("/metrics", "metrics"),
        ("/openapi.json", "openapi"),
    ] {
        let got = send(&t, Method::GET, path, &[], None).await;
        assert!(got.0.is_success(), "{what}: {}", got.0);
        doc.check(what, &Method::GET, path, &got);
    }

    // Viewer writes: errors, then successes.
    let post = Method::POST;
    let cases: [BadPost; 6] = [
        (
            "malformed",
            &auth,
            b"{\"text\":".to_vec(),
            StatusCode::BAD_REQUEST,
            "malformed_json",
        ),
        (
            "unknown field",
            &auth,
            br#"{"client_msg_id":"m0","text":"hi","colour":1}"#.to_vec(),
            StatusCode::BAD_REQUEST,
            "invalid_body",
        ),
        (
            "bad style",
            &auth,
            br##"{"client_msg_id":"m0","text":"hi","style":{"color":"red"}}"##.to_vec(),
            StatusCode::BAD_REQUEST,
            "bad_style",
        ),
        (
            "too long",
            &auth,
            json!({"client_msg_id": "m0", "text": "x".repeat(201)})
                .to_string()
                .into_bytes(),
            StatusCode::BAD_REQUEST,
            "text_too_long",
        ),
        (
            "no token",
            &[],
            br#"{"client_msg_id":"m0","text":"hi"}"#.to_vec(),
            StatusCode::UNAUTHORIZED,
            "missing_token",
        ),
        (
            "huge",
            &auth,
            vec![b' '; 20_000],
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
        ),
    ];
    for (what, headers, body, status, code) in cases {
        let got = send(&t, post.clone(), &r("danmaku"), headers, Some(body)).await;
        assert_error(what, &got, status, code);
        doc.check(what, &post, danmaku, &got);
    }
    let bad_room = send(
        &t,
        post.clone(),
        "/v1/rooms/no.dots/danmaku",
        &auth,
        Some(b"{}".to_vec()),
    )
    .await;
    assert_error("bad room", &bad_room, StatusCode::BAD_REQUEST, "bad_room");
    doc.check("bad room", &post, danmaku, &bad_room);

    let body = json!({"client_msg_id": "m1", "text": "hello", "style": {"color": "#ff8800", "mode": "top"}});
    let first = send(
        &t,
        post.clone(),
        &r("danmaku"),
        &auth,
        Some(body.to_string().into_bytes()),
    )
    .await;
    assert_eq!(first.0, StatusCode::ACCEPTED, "{}", first.1);
    doc.check("danmaku", &post, danmaku, &first);
    let again = send(
        &t,
        post.clone(),
        &r("danmaku"),
        &auth,
        Some(body.to_string().into_bytes()),
    )
    .await;
    assert_eq!(again.0, StatusCode::ACCEPTED);
    assert_eq!(again.2["idempotent-replayed"], "true");
    doc.check("danmaku retry", &post, danmaku, &again);
    let changed = json!({"client_msg_id": "m1", "text": "other"})
        .to_string()
        .into_bytes();
    let reused = send(&t, post.clone(), &r("danmaku"), &auth, Some(changed)).await;
    assert_error(
        "reused id",
        &reused,
        StatusCode::UNPROCESSABLE_ENTITY,
        "idempotency_key_reused",
    );
    doc.check("reused id", &post, danmaku, &reused);

    // Gift backend.
    let events = "/v1/rooms/{room}/events";
    let gift = json!({"kind": "gift", "user": {"id": "u9", "name": "Bob"}, "gift": {"gift_id": "rocket", "count": 3, "value": 100}});
    let got = t.post_event(&room, "order-1", &gift).await;
    assert_eq!(got.0, StatusCode::ACCEPTED, "{}", got.1);
    doc.check("event", &post, events, &got);
    let ts = unix_now().to_string();
    let unsigned = t
        .post_event_raw(
            &room,
            Some(&ts),
            Some("v2=00"),
            Some("k"),
            gift.to_string().into_bytes(),
        )
        .await;
    assert_error(
        "bad signature",
        &unsigned,
        StatusCode::UNAUTHORIZED,
        "bad_signature",
    );
    doc.check("bad signature", &post, events, &unsigned);
    let danmaku_kind = t
        .post_event(
            &room,
            "k2",
            &json!({"kind": "danmaku", "user": {"id": "u", "name": "n"}}),
        )
        .await;
    assert_error(
        "kind danmaku",
        &danmaku_kind,
        StatusCode::BAD_REQUEST,
        "bad_kind",
    );
    doc.check("kind danmaku", &post, events, &danmaku_kind);

    let batch = json!({"events": [
        {"idempotency_key": "b1", "kind": "system", "user": {"id": "sys", "name": "System"}, "text": "welcome"},
        {"idempotency_key": "b2", "kind": "gift", "user": {"id": "u9", "name": "Bob"}},
    ]})
    .to_string()
    .into_bytes();
    let path = r("events:batch");
    let sig = danmaku::auth::sign_gift_request(t.gift_secret(), &ts, "POST", &path, "", &batch);
    let signed = [("x-timestamp", ts.as_str()), ("x-signature", sig.as_str())];
    let got = send(&t, post.clone(), &path, &signed, Some(batch)).await;
    assert_eq!(got.0, StatusCode::MULTI_STATUS, "{}", got.1);
    doc.check("batch", &post, "/v1/rooms/{room}/events:batch", &got);
    assert_eq!(got.1["results"][0]["status"], 202);
    assert_eq!(got.1["results"][1]["error"]["code"], "missing_gift");

    // Readers see what was stored, as documented (danmaku, gift, system).
    t.wait_stored(&room, 3).await;
    let got = send(&t, Method::GET, &r("poll?cursor=0&wait_ms=0"), &[], None).await;
    doc.check("poll", &Method::GET, "/v1/rooms/{room}/poll", &got);
    assert_eq!(
        got.1["messages"].as_array().map(Vec::len),
        Some(3),
        "{}",
        got.1
    );
    let bad_query = send(&t, Method::GET, &r("poll?cursor=-1"), &[], None).await;
    assert_error(
        "poll bad query",
        &bad_query,
        StatusCode::BAD_REQUEST,
        "bad_query",
    );
    doc.check(
        "poll bad query",
        &Method::GET,
        "/v1/rooms/{room}/poll",
        &bad_query,
    );

    let snap_path = "/v1/rooms/{room}/snapshot";
    let snap = send(&t, Method::GET, &r("snapshot"), &[], None).await;
    doc.check("snapshot", &Method::GET, snap_path, &snap);
    let etag = snap.2["etag"].to_str().unwrap().to_string();
    let not_modified = send(
        &t,
        Method::GET,
        &r("snapshot"),
        &[("if-none-match", &etag)],
        None,
    )
    .await;
    assert_eq!(not_modified.0, StatusCode::NOT_MODIFIED);
    doc.check("snapshot 304", &Method::GET, snap_path, &not_modified);

    let sse_path = "/v1/rooms/{room}/sse";
    let sse = send(&t, Method::GET, &r("sse"), &[], None).await;
    doc.check("sse", &Method::GET, sse_path, &sse);
    let bad_id = send(&t, Method::GET, &r("sse"), &[("last-event-id", "x")], None).await;
    assert_error(
        "sse bad id",
        &bad_id,
        StatusCode::BAD_REQUEST,
        "bad_last_event_id",
    );
    doc.check("sse bad id", &Method::GET, sse_path, &bad_id);
    let ws = send(&t, Method::GET, &r("ws"), &[], None).await;
    assert_error(
        "plain GET ws",
        &ws,
        StatusCode::BAD_REQUEST,
        "websocket_required",
    );
    doc.check("plain GET ws", &Method::GET, "/v1/rooms/{room}/ws", &ws);

    // Operators.
    let settings = "/v1/admin/rooms/{room}/settings";
    let patch = Method::PATCH;
    let settings_url = format!("/v1/admin/rooms/{room}/settings");
    let body = br#"{"budget_per_s":50,"whitelist_users":["vip"]}"#.to_vec();
    let got = send(&t, patch.clone(), &settings_url, &admin, Some(body)).await;
    assert_eq!(got.0, StatusCode::OK, "{}", got.1);
    doc.check("settings patch", &patch, settings, &got);
    let got = send(
        &t,
        patch.clone(),
        &settings_url,
        &admin,
        Some(br#"{"high_share":2}"#.to_vec()),
    )
    .await;
    assert_error(
        "settings range",
        &got,
        StatusCode::BAD_REQUEST,
        "invalid_settings",
    );
    doc.check("settings range", &patch, settings, &got);
    let got = send(&t, Method::GET, &settings_url, &[], None).await;
    assert_error(
        "settings no token",
        &got,
        StatusCode::UNAUTHORIZED,
        "invalid_admin_token",
    );
    doc.check("settings no token", &Method::GET, settings, &got);
    let got = send(
        &t,
        Method::PUT,
        &settings_url,
        &admin,
        Some(br#"{"high_share":null}"#.to_vec()),
    )
    .await;
    doc.check("settings put", &Method::PUT, settings, &got);
    assert_eq!(got.1["settings"]["budget_per_s"], 50);

    let start = format!("/v1/admin/rooms/{room}/live/start");
    let end = format!("/v1/admin/rooms/{room}/live/end");
    let start_doc = "/v1/admin/rooms/{room}/live/start";
    let end_doc = "/v1/admin/rooms/{room}/live/end";
    let got = send(&t, post.clone(), &end, &admin, None).await;
    assert_error("end without live", &got, StatusCode::CONFLICT, "no_live");
    doc.check("end without live", &post, end_doc, &got);
    let got = send(&t, post.clone(), &start, &admin, None).await;
    assert_eq!(got.0, StatusCode::CREATED, "{}", got.1);
    doc.check("live start", &post, start_doc, &got);
    let got = send(&t, post.clone(), &start, &admin, None).await;
    assert_eq!(got.0, StatusCode::CONFLICT);
    assert_eq!(got.1["error"]["code"], "live_already_started");
    doc.check("live start again", &post, start_doc, &got);
    let got = t.post_danmaku(&room, &token, "m2", "during the live").await;
    assert_eq!(got.0, StatusCode::ACCEPTED);
    t.wait_stored(&room, 4).await;
    let got = send(&t, post.clone(), &end, &admin, None).await;
    assert_eq!(got.0, StatusCode::OK, "{}", got.1);
    doc.check("live end", &post, end_doc, &got);
    let got = send(&t, Method::GET, &r("lives"), &[], None).await;
    doc.check("lives", &Method::GET, "/v1/rooms/{room}/lives", &got);

    let replay = "/v1/rooms/{room}/replay";
    let got = send(&t, Method::GET, &r("replay?from_ms=10&to_ms=5"), &[], None).await;
    assert_error("bad window", &got, StatusCode::BAD_REQUEST, "bad_window");
    doc.check("bad window", &Method::GET, replay, &got);
    let deadline = Instant::now() + WAIT;
    let got = loop {
        let got = send(
            &t,
            Method::GET,
            &r("replay?from_ms=0&to_ms=300000"),
            &[],
            None,
        )
        .await;
        doc.check("replay", &Method::GET, replay, &got);
        if got.0 != StatusCode::CONFLICT && got.0 != StatusCode::NOT_FOUND {
            break got;
        }
        assert!(
            Instant::now() < deadline,
            "live archived in time: {}",
            got.1
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(got.0, StatusCode::OK);
    assert_eq!(
        got.1["messages"].as_array().map(Vec::len),
        Some(1),
        "{}",
        got.1
    );
    // The last window of the u64 range (an overflow once).
    let top = u64::MAX;
    let got = send(
        &t,
        Method::GET,
        &r(&format!("replay?from_ms={}&to_ms={top}", top - 10)),
        &[],
        None,
    )
    .await;
    assert_eq!(got.0, StatusCode::OK, "{}", got.1);
    doc.check("replay at the top", &Method::GET, replay, &got);

    // Development token.
    let demo = "/v1/demo/token";
    let got = send(
        &t,
        post.clone(),
        demo,
        &[],
        Some(br#"{"name":"carol"}"#.to_vec()),
    )
    .await;
    assert_eq!(got.0, StatusCode::OK);
    doc.check("demo token", &post, demo, &got);
    let got = send(
        &t,
        post.clone(),
        demo,
        &[],
        Some(br#"{"name":"  "}"#.to_vec()),
    )
    .await;
    assert_error("demo blank name", &got, StatusCode::BAD_REQUEST, "bad_name");
    doc.check("demo blank name", &post, demo, &got);

    t.shutdown().await;
}
