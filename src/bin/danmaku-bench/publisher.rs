//! Publishers: viewer posts (`POST /v1/rooms/{room}/danmaku` with a viewer
//! token) or signed gift-backend events (`POST /v1/rooms/{room}/events`), at
//! a fixed open-loop rate over one keep-alive connection each. The text of
//! every message starts with `bench:<send µs>:` so viewers can time it.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use tokio_util::sync::CancellationToken;

use crate::net::{Body, Conn};
use crate::stats::{now_us, STAMP};
use crate::viewer::Ctx;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum PublishKind {
    /// Viewer danmaku (priority low) with a viewer token.
    Danmaku,
    /// Signed gift events (priority high). Each has its own gift id, so no two
    /// combine; the hub still holds every gift for `fanout.combo_window_ms`.
    Gift,
    /// Signed system events (priority whitelist: never rationed).
    System,
}

/// Danmaku lines as a live room sees them: short, Chinese and English
/// mixed, emoji, repeats (`--realistic-text`; BENCHMARKS.md "Wire bytes").
pub const CORPUS: &[&str] = &[
    "主播太强了！！！",
    "666666",
    "哈哈哈哈哈哈哈哈",
    "gg wp, what a play",
    "前方高能预警",
    "这波操作我给满分 👍",
    "first time here, love the stream",
    "awsl 太可爱了",
    "弹幕护体",
    "LOL that timing 😂",
    "主播今天几点下播？",
    "来了来了",
    "clip it! clip it!",
    "这是什么神仙操作",
    "谢谢老板的火箭 🚀",
    "is this ranked?",
    "打call打call",
    "名场面 +1",
    "好家伙 unbelievable",
    "下次一定",
];

pub struct PubConfig {
    pub kind: PublishKind,
    /// Seconds between two sends of one publisher.
    pub period: Duration,
    pub rooms: Vec<Arc<str>>,
    pub gift_secret: String,
    /// Extra text characters after the stamp (message size).
    pub text_pad: usize,
    /// A line of [`CORPUS`] after the stamp.
    pub realistic_text: bool,
    /// Distinguishes runs (client_msg_id / Idempotency-Key are never reused).
    pub run_id: String,
}

#[derive(Debug, Default)]
pub struct PubResult {
    pub sent: u64,
    pub accepted: u64,
    /// Refusals by HTTP status.
    pub refused: BTreeMap<u16, u64>,
    pub errors: u64,
    /// Sends that started more than one period late (the publisher could not keep up).
    pub late: u64,
    pub last_refusal: Option<String>,
}

/// A viewer token: minted locally with `jwt_secret`, else from the server's
/// development endpoint `POST /v1/demo/token`.
pub async fn token(
    ctx: &Ctx,
    p: usize,
    run_id: &str,
    jwt_secret: Option<&str>,
) -> anyhow::Result<String> {
    if let Some(secret) = jwt_secret {
        let mut auth = danmaku::config::Config::embedded().auth;
        auth.jwt_secret = secret.to_string();
        let a = danmaku::auth::Authenticator::new(&auth);
        return Ok(a.issue(
            &format!("bench-{run_id}-{p}"),
            &format!("bench{p}"),
            24 * 3600,
        ));
    }
    let mut conn = Conn::connect(&ctx.target, p, 4096).await?;
    let body = format!(r#"{{"name":"bench{p}"}}"#);
    let req = format!(
        "POST /v1/demo/token HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        ctx.target.host,
        body.len()
    );
    conn.write_all(req.as_bytes()).await?;
    let head = conn.read_head().await?;
    let text = match conn.read_body(&head).await? {
        Body::InBuffer(n) => conn.data()[..n].to_vec(),
        Body::Owned(v) => v,
    };
    if head.status != 200 {
        bail!(
            "POST /v1/demo/token: HTTP {} {} (demo tokens need the development secret; \
             otherwise pass --jwt-secret)",
            head.status,
            String::from_utf8_lossy(&text)
        );
    }
    let v: serde_json::Value = serde_json::from_slice(&text).context("demo token answer")?;
    v["token"]
        .as_str()
        .map(String::from)
        .context("demo token answer has no token")
}

fn request(cfg: &PubConfig, host: &str, token: &str, p: usize, n: u64) -> Vec<u8> {
    let room = &cfg.rooms[(n as usize + p) % cfg.rooms.len()];
    let mut text = format!(
        "{}{}:{p}:{n}",
        std::str::from_utf8(STAMP).unwrap(),
        now_us()
    );
    if cfg.realistic_text {
        text.push(' ');
        text.push_str(CORPUS[(n as usize * 7 + p) % CORPUS.len()]);
    }
    text.extend(std::iter::repeat_n('x', cfg.text_pad));
    let id = format!("b{}-{p}-{n}", cfg.run_id);
    match cfg.kind {
        PublishKind::Danmaku => {
            let body = format!(r#"{{"client_msg_id":"{id}","text":"{text}"}}"#);
            format!(
                "POST /v1/rooms/{room}/danmaku HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n\
                 Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .into_bytes()
        }
        PublishKind::Gift | PublishKind::System => {
            let body = if cfg.kind == PublishKind::Gift {
                format!(
                    r#"{{"kind":"gift","user":{{"id":"bench{p}","name":"bench{p}"}},"text":"{text}","gift":{{"gift_id":"g{n}","count":1,"value":1}}}}"#
                )
            } else {
                format!(
                    r#"{{"kind":"system","user":{{"id":"bench{p}","name":"bench{p}"}},"text":"{text}"}}"#
                )
            };
            let ts = danmaku::auth::unix_now().to_string();
            let path = format!("/v1/rooms/{room}/events");
            let sig = danmaku::auth::sign_gift_request(
                &cfg.gift_secret,
                &ts,
                "POST",
                &path,
                &id,
                body.as_bytes(),
            );
            format!(
                "POST /v1/rooms/{room}/events HTTP/1.1\r\nHost: {host}\r\nX-Timestamp: {ts}\r\n\
                 X-Signature: {sig}\r\nIdempotency-Key: {id}\r\nContent-Type: application/json\r\n\
                 Content-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .into_bytes()
        }
    }
}

/// Sends at `cfg.period` (starting `offset` in) until `stop`.
pub async fn publisher(
    ctx: Arc<Ctx>,
    cfg: Arc<PubConfig>,
    p: usize,
    token: String,
    offset: Duration,
    stop: CancellationToken,
) -> PubResult {
    let mut r = PubResult::default();
    let mut conn: Option<Conn> = None;
    let start = tokio::time::Instant::now() + offset;
    let mut n: u64 = 0;
    loop {
        let due = start + cfg.period.mul_f64(n as f64);
        tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep_until(due) => {}
        }
        if tokio::time::Instant::now() > due + cfg.period {
            r.late += 1;
        }
        if conn.is_none() {
            match Conn::connect(&ctx.target, p, 4096).await {
                Ok(c) => conn = Some(c),
                Err(_) => {
                    r.errors += 1;
                    ctx.counters.publish_errors.fetch_add(1, Relaxed);
                    n += 1;
                    continue;
                }
            }
        }
        let c = conn.as_mut().expect("connected");
        let req = request(&cfg, &ctx.target.host, &token, p, n);
        n += 1;
        let t0 = now_us();
        r.sent += 1;
        ctx.counters.published.fetch_add(1, Relaxed);
        let res = async {
            c.write_all(&req).await?;
            let head = c.read_head().await?;
            let body = c.read_body(&head).await?;
            let text = match body {
                Body::InBuffer(n) => {
                    let t = if head.status == 202 {
                        String::new()
                    } else {
                        String::from_utf8_lossy(&c.data()[..n]).into_owned()
                    };
                    c.consume(n);
                    t
                }
                Body::Owned(v) => String::from_utf8_lossy(&v).into_owned(),
            };
            Ok::<_, std::io::Error>((head.status, text))
        }
        .await;
        match res {
            Ok((202, _)) => {
                r.accepted += 1;
                ctx.counters.accepted.fetch_add(1, Relaxed);
                if ctx.measuring.load(Relaxed) {
                    ctx.publish_rtt.record(now_us().saturating_sub(t0));
                }
            }
            Ok((status, text)) => {
                *r.refused.entry(status).or_default() += 1;
                ctx.counters.rejected.fetch_add(1, Relaxed);
                r.last_refusal = Some(text.chars().take(200).collect());
            }
            Err(_) => {
                r.errors += 1;
                ctx.counters.publish_errors.fetch_add(1, Relaxed);
                conn = None;
            }
        }
    }
    r
}
