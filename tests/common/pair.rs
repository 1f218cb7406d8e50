//! Two `serve` nodes on one Redis, as behind a load balancer: the harness of
//! the cluster tests that need no Kafka (each node's processor writes its
//! own memory bus into the shared Redis).

use std::time::{Duration, Instant};

use danmaku::auth::Authenticator;
use danmaku::config::Config;
use reqwest::StatusCode;
use serde_json::{json, Value};

use super::now_ms;
use super::procs::Node;

pub const ADMIN: &str = "cluster-admin-token";

pub struct Pair {
    pub a: Node,
    pub b: Node,
    pub http: reqwest::Client,
    pub auth: Authenticator,
    pub env: Vec<(String, String)>,
}

impl Pair {
    pub async fn start(redis: &str, extra: &[(&str, &str)]) -> Pair {
        Self::start_as("serve", redis, extra).await
    }

    /// Two nodes of `role` (`serve`, or `front` beside a processor started
    /// from `env`, as tests/redis_cluster.rs does).
    pub async fn start_as(role: &'static str, redis: &str, extra: &[(&str, &str)]) -> Pair {
        let mut env: Vec<(String, String)> = [
            ("DANMAKU_STORE__ENGINE", "redis"),
            ("DANMAKU_REDIS_URL", redis),
            ("DANMAKU_ADMIN_TOKEN", ADMIN),
            ("DANMAKU_FANOUT__TICK_MS", "50"),
            ("DANMAKU_INGEST__IP_RATE_PER_S", "1000000"),
            ("DANMAKU_INGEST__IP_BURST", "1000000"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(20))
            .build()
            .unwrap();
        // One after the other: a shared archive file is migrated once.
        let a = Node::spawn(role, &env);
        a.ready(&http).await;
        let b = Node::spawn(role, &env);
        b.ready(&http).await;
        Pair {
            a,
            b,
            http,
            auth: Authenticator::new(&Config::embedded().auth),
            env,
        }
    }

    pub async fn call(
        &self,
        node: &Node,
        method: reqwest::Method,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = self
            .http
            .request(method, format!("{}{path}", node.base()))
            .header("authorization", format!("Bearer {token}"));
        if let Some(body) = body {
            req = req.body(body.to_string());
        }
        let res = req.send().await.expect("request");
        let status = res.status();
        (status, res.json().await.unwrap_or(Value::Null))
    }

    pub async fn admin(
        &self,
        node: &Node,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        self.call(node, method, path, ADMIN, body).await
    }

    /// `PUT /v1/admin/rooms/{room}/mutes/{user}` through `node`, as the operator.
    pub async fn mute_in_room(
        &self,
        node: &Node,
        room: &str,
        user: &str,
        duration_s: u64,
    ) -> (StatusCode, Value) {
        let path = format!("/v1/admin/rooms/{room}/mutes/{user}");
        let body = json!({ "duration_s": duration_s });
        self.admin(node, "PUT", &path, Some(body)).await
    }

    /// Whether `user`'s posts to `room` through `node` get `403 muted`
    /// within `within` (each try a new `client_msg_id`).
    pub async fn refused_as_muted(
        &self,
        node: &Node,
        room: &str,
        user: &str,
        within_: Duration,
    ) -> bool {
        let mut n = 0;
        within(within_, || {
            n += 1;
            let id = format!("during{n}");
            async move {
                let (s, body) = self.post(node, room, user, &id).await;
                s == StatusCode::FORBIDDEN && body["error"]["code"] == "muted"
            }
        })
        .await
    }

    pub async fn post(&self, node: &Node, room: &str, user: &str, id: &str) -> (StatusCode, Value) {
        let token = self.auth.issue(user, "Viewer", 600);
        let body = json!({"client_msg_id": id, "text": format!("hello {id}")});
        self.call(
            node,
            reqwest::Method::POST,
            &format!("/v1/rooms/{room}/danmaku"),
            &token,
            Some(body),
        )
        .await
    }
}

pub fn unique(name: &str) -> String {
    format!("{name}-{}-{}", std::process::id(), now_ms() % 1_000_000_000)
}

/// Polls `check` every 50 ms until it holds or `within` passes.
pub async fn within<F, Fut>(within: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
