use super::*;
use crate::bus::memory::MemoryBus;
use crate::config::Config;
use crate::message::Gift;
use crate::store::memory::MemoryStore;
use axum::http::StatusCode;

fn ingest(mutate: impl FnOnce(&mut IngestConfig)) -> (Ingest, Arc<MemoryBus>) {
    let mut c = Config::embedded();
    mutate(&mut c.ingest);
    let bus = Arc::new(MemoryBus::new(2, 1000));
    let store = Arc::new(MemoryStore::new(c.store.clone()));
    let metrics = Arc::new(Metrics::new());
    (
        Ingest::new(
            c.ingest,
            bus.clone(),
            store,
            metrics.clone(),
            Control::in_memory(c.ration, metrics),
        ),
        bus,
    )
}

fn viewer(sub: &str) -> ViewerClaims {
    ViewerClaims {
        sub: sub.into(),
        name: "N".into(),
        exp: 0,
        nbf: None,
    }
}

fn req(id: &str, text: &str) -> DanmakuRequest {
    DanmakuRequest {
        client_msg_id: id.into(),
        text: text.into(),
        style: None,
    }
}

const IP: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

/// A bus whose first publish fails after possibly writing (a Kafka
/// delivery timeout), then works.
struct FlakyBus {
    inner: MemoryBus,
    failed: std::sync::atomic::AtomicBool,
    ids: parking_lot::Mutex<Vec<String>>,
}

#[async_trait::async_trait]
impl Bus for FlakyBus {
    async fn publish(&self, records: Vec<crate::bus::BusRecord>) -> Result<(), BusError> {
        self.ids
            .lock()
            .extend(records.iter().map(|r| r.message.id.clone()));
        self.inner.publish(records).await?;
        if !self.failed.swap(true, std::sync::atomic::Ordering::SeqCst) {
            return Err(BusError::Unavailable("delivery timed out".into()));
        }
        Ok(())
    }
    async fn consumer(&self) -> Result<Box<dyn crate::bus::BusConsumer>, BusError> {
        self.inner.consumer().await
    }
    fn pending(&self) -> u64 {
        self.inner.pending()
    }
    fn partitions(&self) -> u32 {
        self.inner.partitions()
    }
    async fn ping(&self) -> Result<(), BusError> {
        Ok(())
    }
}

#[tokio::test]
async fn a_retry_after_a_failed_publish_reuses_the_message_id() {
    let c = Config::embedded();
    let bus = Arc::new(FlakyBus {
        inner: MemoryBus::new(2, 1000),
        failed: Default::default(),
        ids: Default::default(),
    });
    let store = Arc::new(MemoryStore::new(c.store.clone()));
    let ing = Ingest::new(
        c.ingest,
        bus.clone(),
        store,
        Arc::new(Metrics::new()),
        Control::in_memory(c.ration, Arc::new(Metrics::new())),
    );
    let v = viewer("u1");
    let e = ing.danmaku("r", &v, IP, req("m1", "hi")).await.unwrap_err();
    assert_eq!(e.code, "bus_unavailable");
    let ok = ing.danmaku("r", &v, IP, req("m1", "hi")).await.unwrap();
    let ids = bus.ids.lock().clone();
    assert_eq!(ids.len(), 2, "published twice");
    assert_eq!(
        ids[0], ids[1],
        "with the same message id: the store keeps one"
    );
    assert!(ok.body.contains(&ids[0]));
    // A third try is a plain replay.
    let again = ing.danmaku("r", &v, IP, req("m1", "hi")).await.unwrap();
    assert!(again.replayed);
}

#[tokio::test]
async fn validation_codes() {
    let (ing, bus) = ingest(|c| {
        c.blocked_words = vec!["Spam".into()];
        c.user_burst = 100.0;
    });
    let v = viewer("u1");
    let cases = [
        (req("a", ""), "empty_text"),
        (req("a", "   "), "empty_text"),
        (req("a", &"x".repeat(201)), "text_too_long"),
        (req("a", "line\nbreak"), "control_characters"),
        (req("a", "buy SPAM now"), "blocked_content"),
        (req("", "hi"), "bad_id"),
    ];
    for (r, code) in cases {
        let e = ing.danmaku("r", &v, IP, r).await.unwrap_err();
        assert_eq!(e.code, code);
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
    }
    assert_eq!(bus.pending(), 0, "nothing published");
    // 200 multi-byte characters are fine.
    ing.danmaku("r", &v, IP, req("b", &"弹".repeat(200)))
        .await
        .unwrap();
    assert_eq!(bus.pending(), 1);
}

#[tokio::test]
async fn retried_client_msg_id_is_published_once() {
    let (ing, bus) = ingest(|_| {});
    let v = viewer("u1");
    let a = ing.danmaku("r", &v, IP, req("m1", "hi")).await.unwrap();
    let b = ing.danmaku("r", &v, IP, req("m1", "hi")).await.unwrap();
    assert_eq!(a.body, b.body);
    assert!(b.replayed);
    assert_eq!(bus.pending(), 1);
    // Another user may reuse the same client id.
    ing.danmaku("r", &viewer("u2"), IP, req("m1", "hi"))
        .await
        .unwrap();
    assert_eq!(bus.pending(), 2);
}

#[tokio::test]
async fn user_rate_limit_gives_retry_after() {
    let (ing, _) = ingest(|c| {
        c.user_burst = 2.0;
        c.user_rate_per_s = 0.5;
    });
    let v = viewer("u1");
    ing.danmaku("r", &v, IP, req("1", "a")).await.unwrap();
    ing.danmaku("r", &v, IP, req("2", "a")).await.unwrap();
    let e = ing.danmaku("r", &v, IP, req("3", "a")).await.unwrap_err();
    assert_eq!(e.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(e.code, "rate_limited");
    assert_eq!(e.retry_after_s, Some(2));
}

#[tokio::test]
async fn low_is_shed_before_high_and_whitelist_never() {
    let (ing, bus) = ingest(|c| {
        c.shed_low_pending = 1;
        c.shed_high_pending = 2;
        c.user_burst = 100.0;
        c.whitelist_users = vec!["vip".into()];
    });
    ing.danmaku("r", &viewer("u"), IP, req("1", "a"))
        .await
        .unwrap();
    let e = ing
        .danmaku("r", &viewer("u"), IP, req("2", "a"))
        .await
        .unwrap_err();
    assert_eq!(e.code, "overloaded");
    let gift = || EventRequest {
        kind: Kind::Gift,
        user: UserRef {
            id: "g".into(),
            name: "G".into(),
        },
        text: None,
        gift: Some(Gift {
            gift_id: "rose".into(),
            count: 1,
            value: 1,
        }),
        priority: None,
    };
    ing.event("r", "k1", b"1", gift()).await.unwrap();
    assert_eq!(
        ing.event("r", "k2", b"2", gift()).await.unwrap_err().code,
        "overloaded"
    );
    ing.danmaku("r", &viewer("vip"), IP, req("3", "a"))
        .await
        .unwrap();
    assert_eq!(bus.pending(), 3);
}

#[tokio::test]
async fn idempotency_key_reuse_with_other_body_is_refused() {
    let (ing, bus) = ingest(|_| {});
    let ev = EventRequest {
        kind: Kind::System,
        user: UserRef {
            id: "sys".into(),
            name: "System".into(),
        },
        text: Some("hello".into()),
        gift: None,
        priority: None,
    };
    let a = ing.event("r", "k", b"body-1", ev.clone()).await.unwrap();
    let b = ing.event("r", "k", b"body-1", ev.clone()).await.unwrap();
    assert_eq!(a.body, b.body);
    let e = ing.event("r", "k", b"body-2", ev).await.unwrap_err();
    assert_eq!(e.code, "idempotency_key_reused");
    assert_eq!(bus.pending(), 1);
}
