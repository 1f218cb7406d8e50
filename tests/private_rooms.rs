//! Private rooms and the platform's signed tokens, on real processes: two
//! `serve` nodes on one Redis. A room made private on node A is enforced on
//! node B on every watch route (WebSocket, SSE, long-poll, snapshot, replay,
//! lives) with the documented 401/403 bodies; RS256 and ES256 tokens from
//! the key file verify, algorithm confusion is refused, the key file rotates
//! without a restart, and a private watcher whose token runs out is closed.
//! Also: a flood of requests on random room names cannot fill
//! `fanout.max_rooms`.
//!
//! The pair needs `DANMAKU_TEST_REDIS_URL` (skips without it unless
//! `DANMAKU_REQUIRE_SERVICES=1`, where it fails) and the `openssl` CLI
//! (test keys are generated here, never committed); the flood runs on the
//! engine `DANMAKU_TEST_ENGINE` names (memory by default).

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use base64::Engine;
use common::pair::{unique, within, Pair};
use common::procs::ScratchDir;
use common::{test_redis_url, unix_now, TestServer, WsEnd, WsViewer};
use danmaku::auth::ViewerClaims;
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use reqwest::StatusCode;
use serde_json::{json, Value};

/// A key pair made with the `openssl` CLI: the public key as PEM, the
/// private key as the DER jsonwebtoken signs with (PKCS#1 for RSA, PKCS#8
/// for EC).
struct TestKey {
    public_pem: String,
    signing: EncodingKey,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("the openssl CLI runs");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn rsa_key(dir: &Path, name: &str) -> TestKey {
    let key = format!("{name}.key");
    openssl(
        dir,
        &[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
            &key,
        ],
    );
    let der = format!("{name}.der");
    openssl(
        dir,
        &[
            "rsa",
            "-in",
            &key,
            "-outform",
            "DER",
            "-traditional",
            "-out",
            &der,
        ],
    );
    let public = format!("{name}.pub");
    openssl(dir, &["pkey", "-in", &key, "-pubout", "-out", &public]);
    TestKey {
        public_pem: std::fs::read_to_string(dir.join(public)).unwrap(),
        signing: EncodingKey::from_rsa_der(&std::fs::read(dir.join(der)).unwrap()),
    }
}

fn ec_key(dir: &Path, name: &str) -> TestKey {
    let key = format!("{name}.key");
    openssl(
        dir,
        &[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            &key,
        ],
    );
    let der = format!("{name}.der");
    // PKCS#8 (ring signs only with that form; `pkey` writes SEC1 here).
    openssl(
        dir,
        &[
            "pkcs8", "-topk8", "-nocrypt", "-in", &key, "-outform", "DER", "-out", &der,
        ],
    );
    let public = format!("{name}.pub");
    openssl(dir, &["pkey", "-in", &key, "-pubout", "-out", &public]);
    TestKey {
        public_pem: std::fs::read_to_string(dir.join(public)).unwrap(),
        signing: EncodingKey::from_ec_der(&std::fs::read(dir.join(der)).unwrap()),
    }
}

/// The PEM key file form: a `kid:` line before each block.
fn pem_file(keys: &[(&str, &TestKey)]) -> String {
    keys.iter()
        .map(|(kid, k)| format!("kid: {kid}\n{}", k.public_pem))
        .collect::<Vec<_>>()
        .join("\n")
}

fn claims(rooms: &[&str], ttl_s: i64) -> ViewerClaims {
    ViewerClaims {
        sub: "fan1".into(),
        name: "Fan".into(),
        exp: (unix_now() as i64 + ttl_s) as u64,
        nbf: None,
        vip: None,
        rooms: Some(rooms.iter().map(|r| r.to_string()).collect()),
    }
}

fn sign(alg: Algorithm, kid: Option<&str>, key: &EncodingKey, claims: &ViewerClaims) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(String::from);
    encode(&header, claims, key).expect("signs")
}

/// `{"alg":"none"}` and no signature.
fn alg_none(claims: &ViewerClaims) -> String {
    let b64 = |v: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
    let header = b64(br#"{"alg":"none","typ":"JWT"}"#);
    let body = b64(serde_json::to_string(claims).unwrap().as_bytes());
    format!("{header}.{body}.")
}

/// One watch route's answer: status, error code (if any), Cache-Control.
#[derive(Debug)]
struct Answer {
    status: u16,
    code: Option<String>,
    cache_control: Option<String>,
}

async fn get(http: &reqwest::Client, url: &str, token: Option<&str>) -> Answer {
    let mut req = http.get(url);
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let res = req.send().await.expect("request");
    let status = res.status().as_u16();
    let cache_control = res
        .headers()
        .get("cache-control")
        .map(|v| v.to_str().unwrap().to_string());
    let event_stream = res
        .headers()
        .get("content-type")
        .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
    // An open SSE stream is not read to its end.
    let body: Value = if event_stream {
        Value::Null
    } else {
        res.json().await.unwrap_or(Value::Null)
    };
    let code = body["error"]["code"].as_str().map(String::from);
    Answer {
        status,
        code,
        cache_control,
    }
}

/// Every watch route of `room` on `base`, with `token` (or none): the HTTP
/// ones with `Authorization: Bearer`, SSE and WebSocket with `?token=`.
async fn watch_all(
    http: &reqwest::Client,
    base: &str,
    room: &str,
    token: Option<&str>,
) -> Vec<(&'static str, Answer)> {
    let mut out = Vec::new();
    for (route, path) in [
        ("snapshot", format!("/v1/rooms/{room}/snapshot")),
        ("poll", format!("/v1/rooms/{room}/poll?wait_ms=0")),
        ("replay", format!("/v1/rooms/{room}/replay")),
        ("lives", format!("/v1/rooms/{room}/lives")),
    ] {
        out.push((route, get(http, &format!("{base}{path}"), token).await));
    }
    let q = token.map(|t| format!("?token={t}")).unwrap_or_default();
    out.push((
        "sse",
        get(http, &format!("{base}/v1/rooms/{room}/sse{q}"), None).await,
    ));
    let ws = format!("{}/v1/rooms/{room}/ws{q}", base.replace("http://", "ws://"));
    let answer = match tokio_tungstenite::connect_async(&ws).await {
        Ok(_) => Answer {
            status: 101,
            code: None,
            cache_control: None,
        },
        Err(tokio_tungstenite::tungstenite::Error::Http(res)) => {
            let body: Value =
                serde_json::from_slice(res.body().as_deref().unwrap_or(b"{}")).unwrap_or_default();
            Answer {
                status: res.status().as_u16(),
                code: body["error"]["code"].as_str().map(String::from),
                cache_control: None,
            }
        }
        Err(e) => panic!("WebSocket {ws}: {e}"),
    };
    out.push(("ws", answer));
    out
}

/// Every route refused with `status` and `code`.
async fn assert_refused(
    http: &reqwest::Client,
    base: &str,
    room: &str,
    token: Option<&str>,
    status: u16,
    code: &str,
) {
    for (route, a) in watch_all(http, base, room, token).await {
        assert_eq!(
            (a.status, a.code.as_deref()),
            (status, Some(code)),
            "{route} of {room} on {base} with {token:?}: {a:?}"
        );
    }
}

/// Every route lets the watcher in (replay and lives may have nothing
/// archived: 404, never 401/403); private answers are never cacheable.
async fn assert_admitted(http: &reqwest::Client, base: &str, room: &str, token: &str) {
    for (route, a) in watch_all(http, base, room, Some(token)).await {
        assert!(
            a.status < 400 || (a.status == 404 && matches!(route, "replay" | "lives")),
            "{route} of {room} refused: {a:?}"
        );
        if matches!(route, "snapshot" | "replay") && a.status == 200 {
            assert_eq!(
                a.cache_control.as_deref(),
                Some("private, no-store"),
                "{route}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_rooms_on_both_fronts_with_platform_tokens_and_key_rotation() {
    let Some(redis) = test_redis_url() else {
        return;
    };
    let dir = ScratchDir::new("private-rooms");
    let rsa = rsa_key(&dir.0, "rsa1");
    let ec = ec_key(&dir.0, "ec1");
    let keys_path = dir.0.join("viewer-keys.pem");
    std::fs::write(&keys_path, pem_file(&[("rsa-1", &rsa), ("ec-1", &ec)])).unwrap();
    let keys_env = keys_path.to_str().unwrap().to_string();
    let p = Pair::start(
        &redis,
        &[
            ("DANMAKU_AUTH__VIEWER_KEYS_FILE", &keys_env),
            ("DANMAKU_AUTH__JWT_LEEWAY_S", "0"),
            ("DANMAKU_FANOUT__PING_S", "1"),
        ],
    )
    .await;
    let (a, b) = (p.a.base(), p.b.base());
    let room = unique("priv");
    let http = &p.http;

    // Public: watchable without a token, the snapshot stays CDN-cacheable.
    let snap = get(http, &format!("{b}/v1/rooms/{room}/snapshot"), None).await;
    assert_eq!(snap.status, 200, "{snap:?}");
    assert_ne!(snap.cache_control.as_deref(), Some("private, no-store"));
    // Watchers on B before the room turns private: one without a token,
    // one whose token names the room.
    let hs_named = p.auth.issue_claims(&claims(&[&room], 600));
    let mut anonymous =
        WsViewer::connect(&format!("{}/v1/rooms/{room}/ws", b.replace("http", "ws"))).await;
    let mut named = WsViewer::connect(&format!(
        "{}/v1/rooms/{room}/ws?token={hs_named}",
        b.replace("http", "ws")
    ))
    .await;

    let path = format!("/v1/admin/rooms/{room}/settings");
    let (s, body) = p
        .admin(&p.a, "PATCH", &path, Some(json!({"private": true})))
        .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(body["settings"]["private"], true, "{body}");
    let on_b = within(Duration::from_secs(3), || async {
        get(http, &format!("{b}/v1/rooms/{room}/snapshot"), None)
            .await
            .status
            == 401
    })
    .await;
    assert!(on_b, "the private setting reached node B");

    // The watcher without a token is closed (within a ping); the named one stays.
    match anonymous.until_closed(Duration::from_secs(5)).await.0 {
        WsEnd::Closed(Some((1008, reason))) => assert_eq!(reason, "room is private"),
        other => panic!("an anonymous watcher of a room turned private: {other:?}"),
    }
    named.send_json(&json!({"type": "ping"})).await;
    let pong = named.next_json(Duration::from_secs(3)).await;
    assert!(matches!(&pong, Ok(v) if v["type"] == "pong"), "{pong:?}");

    // Refusals, the same on both fronts.
    let other_room = sign(
        Algorithm::RS256,
        Some("rsa-1"),
        &rsa.signing,
        &claims(&["elsewhere"], 600),
    );
    let expired = sign(
        Algorithm::ES256,
        Some("ec-1"),
        &ec.signing,
        &claims(&[&room], -60),
    );
    let unknown_kid = sign(
        Algorithm::RS256,
        Some("rsa-9"),
        &rsa.signing,
        &claims(&[&room], 600),
    );
    // Algorithm confusion: the RSA public key's PEM bytes as an HS256 secret
    // under the RSA kid; an ES256 token under the RSA kid; `alg: none`.
    let rsa_as_hmac = sign(
        Algorithm::HS256,
        Some("rsa-1"),
        &EncodingKey::from_secret(rsa.public_pem.as_bytes()),
        &claims(&[&room], 600),
    );
    let ec_under_rsa_kid = sign(
        Algorithm::ES256,
        Some("rsa-1"),
        &ec.signing,
        &claims(&[&room], 600),
    );
    let none = alg_none(&claims(&[&room], 600));
    for base in [&a, &b] {
        assert_refused(http, base, &room, None, 401, "missing_token").await;
        assert_refused(http, base, &room, Some(&other_room), 403, "room_forbidden").await;
        assert_refused(http, base, &room, Some(&expired), 401, "token_expired").await;
        assert_refused(http, base, &room, Some(&unknown_kid), 401, "unknown_key").await;
        assert_refused(http, base, &room, Some(&rsa_as_hmac), 401, "invalid_token").await;
        assert_refused(
            http,
            base,
            &room,
            Some(&ec_under_rsa_kid),
            401,
            "invalid_token",
        )
        .await;
        assert_refused(http, base, &room, Some(&none), 401, "invalid_token").await;
    }

    // Admitted: RS256 and ES256 from the key file, HS256 with the secret.
    let rs256 = sign(
        Algorithm::RS256,
        Some("rsa-1"),
        &rsa.signing,
        &claims(&[&room], 600),
    );
    let es256 = sign(
        Algorithm::ES256,
        Some("ec-1"),
        &ec.signing,
        &claims(&["x", &room], 600),
    );
    for base in [&a, &b] {
        for token in [&rs256, &es256, &hs_named] {
            assert_admitted(http, base, &room, token).await;
        }
    }

    // A private watcher is closed (1008) when its token runs out, unless
    // it renewed it with `auth`.
    let ws_b = b.replace("http", "ws");
    let short = sign(
        Algorithm::RS256,
        Some("rsa-1"),
        &rsa.signing,
        &claims(&[&room], 2),
    );
    let mut lapsing = WsViewer::connect(&format!("{ws_b}/v1/rooms/{room}/ws?token={short}")).await;
    let mut renewing = WsViewer::connect(&format!("{ws_b}/v1/rooms/{room}/ws?token={short}")).await;
    renewing
        .send_json(&json!({"type": "auth", "token": es256}))
        .await;
    let ok = renewing.next_json(Duration::from_secs(3)).await;
    assert!(matches!(&ok, Ok(v) if v["type"] == "auth_ok"), "{ok:?}");
    match lapsing.until_closed(Duration::from_secs(8)).await.0 {
        WsEnd::Closed(Some((1008, reason))) => assert_eq!(reason, "token expired"),
        other => panic!("an expired private watcher: {other:?}"),
    }
    renewing.send_json(&json!({"type": "ping"})).await;
    let pong = renewing.next_json(Duration::from_secs(3)).await;
    assert!(
        matches!(&pong, Ok(v) if v["type"] == "pong"),
        "renewed socket stays: {pong:?}"
    );
    // A renewal naming other rooms is refused; the old token stays.
    renewing
        .send_json(&json!({"type": "auth", "token": other_room}))
        .await;
    let refused = renewing.next_json(Duration::from_secs(3)).await.unwrap();
    assert_eq!(refused["code"], "room_forbidden", "{refused}");

    // Key rotation without a restart: rsa-1 goes, rsa-2 comes.
    let rsa2 = rsa_key(&dir.0, "rsa2");
    std::fs::write(&keys_path, pem_file(&[("rsa-2", &rsa2), ("ec-1", &ec)])).unwrap();
    let rs256_new = sign(
        Algorithm::RS256,
        Some("rsa-2"),
        &rsa2.signing,
        &claims(&[&room], 600),
    );
    for base in [&a, &b] {
        let snapshot = format!("{base}/v1/rooms/{room}/snapshot");
        let rotated = within(Duration::from_secs(6), || async {
            get(http, &snapshot, Some(&rs256_new)).await.status == 200
        })
        .await;
        assert!(rotated, "{base} took the new key without a restart");
        let old = get(http, &snapshot, Some(&rs256)).await;
        assert_eq!(
            (old.status, old.code.as_deref()),
            (401, Some("unknown_key")),
            "{old:?}"
        );
    }
    // A broken rewrite keeps the keys in force, and is counted.
    std::fs::write(&keys_path, "kid: half\n-----BEGIN PUBLIC KEY-----\nAAAA").unwrap();
    let failed = within(Duration::from_secs(6), || async {
        p.b.metric(http, "danmaku_viewer_key_reloads_total{result=\"failed\"}")
            .await
            >= 1.0
    })
    .await;
    assert!(failed, "the failed read is counted");
    let still = get(
        http,
        &format!("{b}/v1/rooms/{room}/snapshot"),
        Some(&rs256_new),
    )
    .await;
    assert_eq!(still.status, 200, "previous keys stay: {still:?}");

    // Public again: open to all, the snapshot cacheable again.
    let (s, _) = p
        .admin(&p.b, "PATCH", &path, Some(json!({"private": false})))
        .await;
    assert_eq!(s, StatusCode::OK);
    let public = within(Duration::from_secs(3), || async {
        get(http, &format!("{a}/v1/rooms/{room}/snapshot"), None)
            .await
            .status
            == 200
    })
    .await;
    assert!(public, "public again on node A");
}

#[tokio::test]
async fn a_flood_of_random_rooms_cannot_fill_max_rooms() {
    let t = TestServer::start_with(|c| c.fanout.max_rooms = 3).await;
    // Snapshots and answered polls of 30 rooms no one watches.
    for i in 0..30 {
        let room = t.room(&format!("flood{i}"));
        let (s, body, _) = t.get(&format!("/v1/rooms/{room}/snapshot")).await;
        assert_eq!(s, StatusCode::OK, "{body}");
        let (s, body, _) = t.get(&format!("/v1/rooms/{room}/poll?wait_ms=0")).await;
        assert_eq!(s, StatusCode::OK, "{body}");
    }
    // Real viewers still open rooms: no 503 too_many_rooms.
    let viewers = [
        t.ws(&t.room("real1"), &[]).await,
        t.ws(&t.room("real2"), &[]).await,
        t.ws(&t.room("real3"), &[]).await,
    ];
    assert!(viewers.iter().all(|v| v.hello["type"] == "hello"));
    assert!(t.metric("danmaku_hubs_evicted_total").await >= 27.0);
    // Rooms with viewers are never evicted: a 4th watched room is refused.
    match tokio_tungstenite::connect_async(t.ws_url(&t.room("real4"), &[])).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(res)) => {
            assert_eq!(res.status().as_u16(), 503)
        }
        other => panic!("a 4th watched room must be refused: {other:?}"),
    }
}
