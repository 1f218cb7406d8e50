//! Operator tools (issue 22, part 3) as an operator runs them: the real
//! `danmaku check`, `token` and `sign` processes, and what a running
//! `danmaku serve` makes of their output; a Redis URL alone selects the
//! shared Redis store (two nodes see each other's posts).

mod common;

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::procs::Node;
use common::{gift_body, test_redis_url};
use reqwest::StatusCode;
use serde_json::{json, Value};

const JWT: &str = "ops-test-jwt-secret-0123456789";
const GIFT: &str = "ops-test-gift-secret-0123456789";
const ADMIN: &str = "ops-test-admin-token";

/// `danmaku ARGS` with exactly `env` (nothing inherited but PATH).
fn danmaku(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_danmaku"))
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("DANMAKU_LOG", "warn")
        .envs(env.iter().copied())
        .output()
        .expect("run danmaku")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The tool's answer, which must have succeeded.
fn answer(args: &[&str], env: &[(&str, &str)]) -> String {
    let out = danmaku(args, env);
    assert!(
        out.status.success(),
        "danmaku {args:?}: {}\n{}",
        out.status,
        stderr(&out)
    );
    stdout(&out)
}

fn scratch_file(name: &str, contents: &[u8]) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!(
        "danmaku-ops-{}-{}-{name}",
        std::process::id(),
        common::now_ms()
    ));
    std::fs::write(&path, contents).unwrap();
    path
}

#[test]
fn check_refuses_a_bad_config_naming_the_key() {
    let file = scratch_file("bad.toml", b"[fanout]\ntick_ms = \"fast\"\n");
    let out = danmaku(&["check", "--config", file.to_str().unwrap()], &[]);
    let _ = std::fs::remove_file(&file);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("fanout.tick_ms: invalid type: expected integer, found string"),
        "{}",
        stderr(&out)
    );
    assert_eq!(stdout(&out), "", "nothing printed as the config");

    for (var, value, named) in [
        ("DANMAKU_GEARS__UP_MS", "100,x,2000", "gears.up_ms"),
        ("DANMAKU_FANOUT__TICK_MS", "0", "fanout.tick_ms"),
        ("DANMAKU_FANOUT__TICKMS", "5", "fanout.tickms"),
    ] {
        let out = danmaku(&["check"], &[(var, value)]);
        assert_eq!(out.status.code(), Some(2), "{var}={value}");
        assert!(
            stderr(&out).contains(named),
            "{var}={value}: {}",
            stderr(&out)
        );
    }
    // An address with the memory engine named is a contradiction.
    let out = danmaku(
        &["check"],
        &[
            ("DANMAKU_STORE__ENGINE", "memory"),
            ("DANMAKU_REDIS_URL", "redis://127.0.0.1:1"),
        ],
    );
    assert_eq!(out.status.code(), Some(2));
    let e = stderr(&out);
    assert!(
        e.contains("store.redis_url") && e.contains("store.engine"),
        "{e}"
    );
}

#[test]
fn check_prints_the_effective_config_with_secrets_redacted() {
    let text = answer(
        &["check"],
        &[
            ("DANMAKU_JWT_SECRET", JWT),
            ("DANMAKU_GIFT_SECRETS", &format!("{GIFT},{GIFT}-next")),
            ("DANMAKU_ADMIN_TOKEN", ADMIN),
            ("DANMAKU_REDIS_URL", "redis://:redis-password@127.0.0.1:1/0"),
            (
                "DANMAKU_ARCHIVE_URL",
                "mysql://danmaku:mysql-password@127.0.0.1:1/danmaku",
            ),
            ("DANMAKU_TICK_MS", "40"),
            ("DANMAKU_RATION__BUDGET_TIERS", "0:300,1000:60"),
        ],
    );
    for secret in [JWT, GIFT, ADMIN, "redis-password", "mysql-password"] {
        assert!(!text.contains(secret), "{secret} printed:\n{text}");
    }
    let table: toml::Table = text.parse().expect("check prints TOML");
    let get = |section: &str, key: &str| table[section][key].clone();
    assert_eq!(get("fanout", "tick_ms").as_integer(), Some(40));
    assert_eq!(get("store", "engine").as_str(), Some("redis"), "{text}");
    assert_eq!(
        get("store", "redis_url").as_str(),
        Some("redis://:<redacted>@127.0.0.1:1/0")
    );
    assert_eq!(
        get("archive", "url").as_str(),
        Some("mysql://danmaku:<redacted>@127.0.0.1:1/danmaku")
    );
    assert_eq!(get("auth", "admin_token").as_str(), Some("<redacted>"));
    assert_eq!(
        get("auth", "gift_secrets").as_array().map(Vec::len),
        Some(2)
    );
    assert!(
        text.contains("budget_tiers = [[0, 300], [1000, 60]]"),
        "{text}"
    );
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_and_sign_output_is_accepted_by_a_running_server() {
    let env = [
        ("DANMAKU_JWT_SECRET", JWT),
        ("DANMAKU_GIFT_SECRETS", GIFT),
        ("DANMAKU_ADMIN_TOKEN", ADMIN),
    ];
    let owned: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let node = Node::spawn("serve", &owned);
    let http = http();
    node.ready(&http).await;
    let url = |path: &str| format!("{}{path}", node.base());

    // A viewer token posts a danmaku.
    let token = answer(&["token", "--sub", "u1", "--name", "Alice"], &env);
    let res = http
        .post(url("/v1/rooms/r1/danmaku"))
        .header("authorization", format!("Bearer {}", token.trim()))
        .json(&json!({"client_msg_id": "m1", "text": "hello"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::ACCEPTED, "{:?}", res.text().await);
    // One signed with another secret is refused: the tool used the config's.
    let other = answer(
        &["token", "--sub", "u1", "--name", "Alice"],
        &[("DANMAKU_JWT_SECRET", "another-secret-0123456789")],
    );
    let res = http
        .post(url("/v1/rooms/r1/danmaku"))
        .header("authorization", format!("Bearer {}", other.trim()))
        .json(&json!({"client_msg_id": "m2", "text": "hello"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);

    // A moderator token acts in its rooms only.
    let moderator = answer(
        &["token", "--sub", "mod-1", "--moderator", "--rooms", "r1,r3"],
        &env,
    );
    let mute = |room: &'static str| {
        http.put(url(&format!("/v1/admin/rooms/{room}/mutes/u")))
            .header("authorization", format!("Bearer {}", moderator.trim()))
            .header("content-type", "application/json")
            .body(json!({"duration_s": 60}).to_string())
            .send()
    };
    let res = mute("r1").await.unwrap();
    assert_eq!(res.status(), StatusCode::OK, "{:?}", res.text().await);
    assert_eq!(mute("r2").await.unwrap().status(), StatusCode::FORBIDDEN);
    // No admin token, no moderator tokens.
    let out = danmaku(
        &["token", "--sub", "mod-1", "--moderator", "--rooms", "r1"],
        &env[..2],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("admin token"), "{}", stderr(&out));
    assert_eq!(stdout(&out), "");

    // Signed gift events: from a file, and from stdin.
    let body = gift_body("u9", "Bob", "rocket", 3, 100).to_string();
    let file = scratch_file("gift.json", body.as_bytes());
    let headers = answer(
        &[
            "sign",
            "--path",
            "/v1/rooms/r1/events",
            "--key",
            "order-1",
            "--body",
            file.to_str().unwrap(),
        ],
        &env,
    );
    let _ = std::fs::remove_file(&file);
    let res = post_signed(&http, &url("/v1/rooms/r1/events"), &headers, &body).await;
    assert_eq!(res.0, StatusCode::ACCEPTED, "{headers}{}", res.1);
    // Signed for r1, it is refused in r2 (the tool signs the path).
    let res = post_signed(&http, &url("/v1/rooms/r2/events"), &headers, &body).await;
    assert_eq!(res.0, StatusCode::UNAUTHORIZED, "{}", res.1);
    let headers = sign_stdin("/v1/rooms/r1/events", "order-2", &body, &env);
    let res = post_signed(&http, &url("/v1/rooms/r1/events"), &headers, &body).await;
    assert_eq!(res.0, StatusCode::ACCEPTED, "{headers}{}", res.1);
    assert!(res.1["id"].is_string(), "{}", res.1);
}

/// `danmaku sign --body -` with `body` on its stdin.
fn sign_stdin(path: &str, key: &str, body: &str, env: &[(&str, &str)]) -> String {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_danmaku"))
        .args(["sign", "--path", path, "--key", key, "--body", "-"])
        .env_clear()
        .envs(env.iter().copied())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("run danmaku sign");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    stdout(&out)
}

/// POSTs `body` with the `Name: value` lines `sign` printed.
async fn post_signed(
    http: &reqwest::Client,
    url: &str,
    headers: &str,
    body: &str,
) -> (StatusCode, Value) {
    let mut req = http
        .post(url)
        .header("content-type", "application/json")
        .body(body.to_string());
    let mut names = Vec::new();
    for line in headers.lines() {
        let (name, value) = line.split_once(": ").expect("Name: value");
        names.push(name.to_ascii_lowercase());
        req = req.header(name, value);
    }
    assert_eq!(names, ["x-timestamp", "x-signature", "idempotency-key"]);
    let res = req.send().await.unwrap();
    let status = res.status();
    (status, res.json().await.unwrap_or(Value::Null))
}

/// `DANMAKU_REDIS_URL` alone (no engine named) puts a node on the shared
/// Redis store: what one node takes, the other serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_url_alone_makes_nodes_share_the_store() {
    let Some(redis) = test_redis_url() else {
        return;
    };
    let env = vec![
        ("DANMAKU_REDIS_URL".to_string(), redis),
        ("DANMAKU_FANOUT__TICK_MS".to_string(), "50".to_string()),
    ];
    let (a, b) = (Node::spawn("serve", &env), Node::spawn("serve", &env));
    let http = http();
    a.ready(&http).await;
    b.ready(&http).await;
    let room = format!("ops-shared-{}", common::now_ms());
    let token = answer(&["token", "--sub", "u1", "--name", "Alice"], &[]);
    let res = http
        .post(format!("{}/v1/rooms/{room}/danmaku", a.base()))
        .header("authorization", format!("Bearer {}", token.trim()))
        .json(&json!({"client_msg_id": "shared-1", "text": "from a"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    let id = res.json::<Value>().await.unwrap()["id"]
        .as_str()
        .expect("id")
        .to_string();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let v: Value = http
            .get(format!(
                "{}/v1/rooms/{room}/poll?cursor=0&wait_ms=500",
                b.base()
            ))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let ids: Vec<&str> = v["messages"]
            .as_array()
            .map(|m| m.iter().filter_map(|m| m["id"].as_str()).collect())
            .unwrap_or_default();
        if ids.contains(&id.as_str()) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "node b never served the post taken by node a (separate stores?): {v}"
        );
    }
}

/// `DANMAKU_LOG_FORMAT=json`: every log line a node writes is a JSON object
/// with a level and a message.
#[test]
fn json_log_lines_parse() {
    use std::io::BufRead;
    let mut child = Command::new(env!("CARGO_BIN_EXE_danmaku"))
        .arg("serve")
        .env_clear()
        .env("DANMAKU_LOG", "info")
        .env("DANMAKU_LOG_FORMAT", "json")
        .env(
            "DANMAKU_LISTEN",
            format!("127.0.0.1:{}", common::procs::free_port()),
        )
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn danmaku serve");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines().take(3) {
            let _ = tx.send(line);
        }
    });
    let mut lines = Vec::new();
    while let Ok(line) = rx.recv_timeout(Duration::from_secs(20)) {
        lines.push(line.expect("a log line"));
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(!lines.is_empty(), "no log line in 20 s");
    for line in &lines {
        let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(v["level"].is_string(), "{line}");
        assert!(v["fields"]["message"].is_string(), "{line}");
    }
    // The development-secrets warning is among the first lines.
    assert!(
        lines.iter().any(|l| l.contains("DEVELOPMENT SECRETS")),
        "{lines:?}"
    );
}

/// The access log: a JSON line per request with method, path (no query),
/// status and latency, and never a token from the query string.
#[tokio::test]
async fn access_log_lines_name_the_request_and_never_its_token() {
    let logs = common::procs::ScratchDir::new("access-log");
    let dir = logs.0.to_string_lossy().to_string();
    let env: Vec<(String, String)> = [
        ("DANMAKU_TEST_NODE_LOGS", dir.as_str()),
        ("DANMAKU_LOG", "info"),
        ("DANMAKU_LOG_FORMAT", "json"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let node = Node::spawn("serve", &env);
    let http = http();
    node.ready(&http).await;
    let secret = "SECRET-TOKEN-VALUE";
    let res = http
        .get(format!(
            "{}/v1/rooms/r1/poll?cursor=0&wait_ms=0&token={secret}",
            node.base()
        ))
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    let deadline = Instant::now() + Duration::from_secs(10);
    let (log, line) = loop {
        let log: String = std::fs::read_dir(&logs.0)
            .unwrap()
            .flatten()
            .map(|f| std::fs::read_to_string(f.path()).unwrap_or_default())
            .collect();
        let line = log
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|v| {
                v["target"] == "danmaku::access" && v["fields"]["path"] == "/v1/rooms/r1/poll"
            });
        if let Some(line) = line {
            break (log, line);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no access line: {log}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(line["fields"]["method"], "GET", "{line}");
    assert_eq!(line["fields"]["status"], status, "{line}");
    assert!(line["fields"]["latency_ms"].as_f64().is_some(), "{line}");
    assert!(!log.contains(secret), "a token reached the log");
}

/// The `danmaku` binary runs on jemalloc (feature `jemalloc`, on by
/// default) and says so on `/metrics`: the heap it holds, and what the
/// allocator keeps resident for it, under the process's RSS.
#[cfg(feature = "jemalloc")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_reports_its_heap_from_jemalloc() {
    let node = Node::spawn("serve", &[]);
    let http = http();
    node.ready(&http).await;
    let allocated = node.metric(&http, "danmaku_heap_allocated_bytes").await;
    let resident = node.metric(&http, "danmaku_heap_resident_bytes").await;
    let rss = node.metric(&http, "process_resident_memory_bytes").await;
    assert!(
        allocated > 1e5,
        "heap allocated {allocated} (jemalloc not installed?)"
    );
    assert!(
        allocated <= resident,
        "allocated {allocated} > resident {resident}"
    );
    assert!(
        resident <= rss,
        "jemalloc resident {resident} > process RSS {rss}"
    );
}
