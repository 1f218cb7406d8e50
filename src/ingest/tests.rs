use super::*;
use crate::bus::memory::MemoryBus;
use crate::config::Config;
use crate::message::Gift;
use crate::store::memory::MemoryStore;
use crate::store::StoreError;
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
        vip: None,
        rooms: None,
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
/// delivery timeout), then works; or, `stuck`, whose publishes never
/// answer (a node hung in its publish, about to die).
struct FlakyBus {
    inner: MemoryBus,
    failed: std::sync::atomic::AtomicBool,
    stuck: bool,
    ids: parking_lot::Mutex<Vec<String>>,
}

#[async_trait::async_trait]
impl Bus for FlakyBus {
    async fn publish(&self, records: Vec<crate::bus::BusRecord>) -> Result<(), BusError> {
        self.ids
            .lock()
            .extend(records.iter().map(|r| r.message.id.clone()));
        if self.stuck {
            return std::future::pending().await;
        }
        self.inner.publish(records).await?;
        if !self.failed.swap(true, std::sync::atomic::Ordering::SeqCst) {
            return Err(BusError::Unavailable("delivery timed out".into()));
        }
        Ok(())
    }
    async fn publish_markers(
        &self,
        markers: Vec<(u32, crate::bus::LiveEnd)>,
    ) -> Result<(), BusError> {
        self.inner.publish_markers(markers).await
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

/// An ingest on a [`FlakyBus`] and the store `store(config)` makes (a
/// user burst of 1000: retries are not rate limited).
fn ingest_on_flaky_bus(
    store: impl FnOnce(&Config) -> Arc<dyn LiveStore>,
) -> (Ingest, Arc<FlakyBus>) {
    ingest_on_bus(false, false, store)
}

/// An ingest on a [`FlakyBus`] (`failed`: its failure already spent) over
/// the store `store(config)` makes.
fn ingest_on_bus(
    stuck: bool,
    failed: bool,
    store: impl FnOnce(&Config) -> Arc<dyn LiveStore>,
) -> (Ingest, Arc<FlakyBus>) {
    let mut c = Config::embedded();
    c.ingest.user_burst = 1000.0;
    let bus = Arc::new(FlakyBus {
        inner: MemoryBus::new(2, 1000),
        failed: failed.into(),
        stuck,
        ids: Default::default(),
    });
    let store = store(&c);
    let ing = Ingest::new(
        c.ingest,
        bus.clone(),
        store,
        Arc::new(Metrics::new()),
        Control::in_memory(c.ration, Arc::new(Metrics::new())),
    );
    (ing, bus)
}

#[tokio::test]
async fn a_retry_after_a_failed_publish_reuses_the_message_id() {
    let (ing, bus) = ingest_on_flaky_bus(|c| Arc::new(MemoryStore::new(c.store.clone())));
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

/// A node dies while it publishes: its claim stays pending. A retry on
/// another node waits while the claim is fresh (409), then takes it over and
/// publishes the dead node's message id (stored once if both land).
#[tokio::test]
async fn a_dead_nodes_pending_claim_is_taken_over_under_its_message_id() {
    let store: Arc<dyn LiveStore> = Arc::new(MemoryStore::new(Config::embedded().store));
    let (dying, stuck) = ingest_on_bus(true, false, |_| store.clone());
    let (live, bus) = ingest_on_bus(false, true, |_| store.clone());
    let live = live.with_claim_takeover_after(std::time::Duration::from_millis(300));
    let v = viewer("u1");
    let first = {
        let v = v.clone();
        tokio::spawn(async move { dying.danmaku("r", &v, IP, req("m1", "hi")).await })
    };
    while stuck.ids.lock().is_empty() {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    first.abort();
    let busy = live
        .danmaku("r", &v, IP, req("m1", "hi"))
        .await
        .unwrap_err();
    assert_eq!(
        (busy.status, busy.code),
        (StatusCode::CONFLICT, "in_progress")
    );
    tokio::time::sleep(std::time::Duration::from_millis(350)).await;
    let ok = live.danmaku("r", &v, IP, req("m1", "hi")).await.unwrap();
    let dead_id = stuck.ids.lock()[0].clone();
    assert_eq!(
        *bus.ids.lock(),
        vec![dead_id.clone()],
        "published once, under the dead node's id"
    );
    assert!(ok.body.contains(&dead_id), "{}", ok.body);
    assert!(!ok.replayed);
    // Its answer is recorded: a retry replays it.
    let again = live.danmaku("r", &v, IP, req("m1", "hi")).await.unwrap();
    assert!(again.replayed && again.body == ok.body);
}

/// A store whose `set_claim` fails the first `fails` times (a Redis that
/// timed out), and works otherwise (a [`MemoryStore`]).
struct MarkFlakyStore {
    inner: MemoryStore,
    fails: std::sync::atomic::AtomicUsize,
}

#[async_trait::async_trait]
impl LiveStore for MarkFlakyStore {
    async fn append_in_epoch(
        &self,
        room: &str,
        batch: Vec<crate::message::Message>,
    ) -> Result<crate::store::Appended, StoreError> {
        self.inner.append_in_epoch(room, batch).await
    }
    async fn head(&self, room: &str) -> Result<crate::store::StreamHead, StoreError> {
        self.inner.head(room).await
    }
    async fn read_range(
        &self,
        room: &str,
        after: u64,
        until: u64,
        limit: usize,
    ) -> Result<crate::store::StreamRead, StoreError> {
        self.inner.read_range(room, after, until, limit).await
    }
    async fn retract(
        &self,
        room: &str,
        id: &str,
    ) -> Result<Option<crate::store::Retraction>, StoreError> {
        self.inner.retract(room, id).await
    }
    async fn claim(
        &self,
        key: &str,
        value: &str,
        ttl: std::time::Duration,
    ) -> Result<crate::store::Claim, StoreError> {
        self.inner.claim(key, value, ttl).await
    }
    async fn get_value(&self, key: &str) -> Result<Option<String>, StoreError> {
        self.inner.get_value(key).await
    }
    async fn set_claim(
        &self,
        key: &str,
        value: &str,
        ttl: std::time::Duration,
    ) -> Result<(), StoreError> {
        let failing = self.fails.fetch_update(
            std::sync::atomic::Ordering::SeqCst,
            std::sync::atomic::Ordering::SeqCst,
            |n| n.checked_sub(1),
        );
        if failing.is_ok() {
            return Err(StoreError::Unavailable("timed out".into()));
        }
        self.inner.set_claim(key, value, ttl).await
    }
    async fn release(&self, key: &str) -> Result<(), StoreError> {
        self.inner.release(key).await
    }
    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }
    async fn exchange_presence(
        &self,
        node: &str,
        local: &[(String, u64)],
        ttl: std::time::Duration,
    ) -> Result<Vec<u64>, StoreError> {
        self.inner.exchange_presence(node, local, ttl).await
    }
    async fn notify(&self, rooms: Vec<crate::store::RoomNotice>) -> Result<(), StoreError> {
        self.inner.notify(rooms).await
    }
    fn updates(
        &self,
    ) -> tokio::sync::broadcast::Receiver<std::sync::Arc<crate::store::RoomNotice>> {
        self.inner.updates()
    }
}

/// A publish that failed (it may still land) while the store could not take
/// the retry mark: retries answer 409 until the mark lands in the
/// background, then publish the same id. Releasing the key instead let a
/// retry publish a second id: the message stored twice.
#[tokio::test]
async fn a_failed_publish_whose_mark_failed_is_never_published_under_another_id() {
    let (ing, bus) = ingest_on_flaky_bus(|c| {
        Arc::new(MarkFlakyStore {
            inner: MemoryStore::new(c.store.clone()),
            fails: 2.into(),
        })
    });
    let v = viewer("u1");
    let e = ing.danmaku("r", &v, IP, req("m1", "hi")).await.unwrap_err();
    assert_eq!(e.code, "bus_unavailable");
    // The mark failed, and so does its first try in the background: the key
    // is still pending.
    let busy = ing.danmaku("r", &v, IP, req("m1", "hi")).await.unwrap_err();
    assert_eq!(
        (busy.status, busy.code),
        (StatusCode::CONFLICT, "in_progress")
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let ok = loop {
        match ing.danmaku("r", &v, IP, req("m1", "hi")).await {
            Ok(ok) => break ok,
            Err(e) => assert_eq!(e.code, "in_progress", "{e:?}"),
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the mark never landed"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    let ids = bus.ids.lock().clone();
    assert_eq!(ids.len(), 2, "published twice: {ids:?}");
    assert_eq!(
        ids[0], ids[1],
        "with the same message id: the store keeps one"
    );
    assert!(ok.body.contains(&ids[0]));
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

/// An ingest over a memory store the test can share gears into.
fn ingest_over_store(
    mutate: impl FnOnce(&mut IngestConfig),
) -> (Ingest, Arc<MemoryBus>, Arc<MemoryStore>) {
    let mut c = Config::embedded();
    mutate(&mut c.ingest);
    let bus = Arc::new(MemoryBus::new(2, 1000));
    let store = Arc::new(MemoryStore::new(c.store.clone()));
    let metrics = Arc::new(Metrics::new());
    let ing = Ingest::new(
        c.ingest,
        bus.clone(),
        store.clone(),
        metrics.clone(),
        Control::in_memory(c.ration, metrics),
    );
    (ing, bus, store)
}

/// What a processor would tell fronts: (room, kind) is `delay_ms` behind.
async fn behind(store: &MemoryStore, room: &str, kind: Kind, delay_ms: u64) {
    let shared = crate::gears::Shared { gear: 3, delay_ms };
    crate::gears::share(
        store,
        room,
        kind,
        shared,
        std::time::Duration::from_secs(10),
    )
    .await
    .unwrap();
}

fn gift() -> EventRequest {
    EventRequest {
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
    }
}

fn notice() -> EventRequest {
    EventRequest {
        kind: Kind::System,
        user: UserRef {
            id: "sys".into(),
            name: "System".into(),
        },
        text: Some("hello".into()),
        gift: None,
        priority: None,
    }
}

fn vip_viewer(sub: &str, vip: u32) -> ViewerClaims {
    ViewerClaims {
        vip: Some(vip),
        rooms: None,
        ..viewer(sub)
    }
}

/// Shedding goes by the delay of the message's own (room, kind): low past
/// `shed_low_delay_ms`, high past `shed_high_delay_ms`, whitelist never; a
/// behind room does not shed another room or another kind.
#[tokio::test]
async fn sheds_by_the_delay_of_its_own_room_and_kind() {
    let (ing, bus, store) = ingest_over_store(|c| {
        c.shed_low_delay_ms = 2000;
        c.shed_high_delay_ms = 8000;
        c.user_burst = 100.0;
        c.whitelist_users = vec!["boss".into()];
    });
    behind(&store, "hot", Kind::Danmaku, 5000).await;
    behind(&store, "hot", Kind::Gift, 9000).await;
    behind(&store, "hot", Kind::System, 60_000).await;
    let e = ing
        .danmaku("hot", &viewer("u"), IP, req("1", "a"))
        .await
        .unwrap_err();
    assert_eq!(
        (e.status, e.code),
        (StatusCode::TOO_MANY_REQUESTS, "overloaded")
    );
    assert!(e.message.contains("5000 ms behind"), "{}", e.message);
    assert_eq!(e.retry_after_s, Some(5));
    // High (a VIP) rides it out, whitelist always; other rooms are not behind.
    ing.danmaku("hot", &vip_viewer("v", 1), IP, req("2", "a"))
        .await
        .unwrap();
    ing.danmaku("hot", &viewer("boss"), IP, req("3", "a"))
        .await
        .unwrap();
    ing.danmaku("quiet", &viewer("u"), IP, req("4", "a"))
        .await
        .unwrap();
    // Gifts past the high threshold are shed too, single or batched; notices never.
    let e = ing.event("hot", "k1", b"1", gift()).await.unwrap_err();
    assert_eq!(e.code, "overloaded");
    ing.event("hot", "k2", b"2", notice()).await.unwrap();
    let item = |key: &str| {
        Ok(BatchItem {
            idempotency_key: key.into(),
            fingerprint_source: key.as_bytes().to_vec(),
            req: gift(),
        })
    };
    let hot = ing.events("hot", vec![item("b1")]).await;
    assert_eq!(hot[0].as_ref().unwrap_err().code, "overloaded");
    let quiet = ing.events("quiet", vec![item("b2")]).await;
    assert!(quiet[0].is_ok(), "the quiet room's gifts go");
    assert_eq!(bus.pending(), 5, "exactly the accepted ones were published");
}

/// Past `bus_full_pending` (all rooms) low and high get 503 bus_full;
/// whitelist still goes (the bus's own capacity bounds it).
#[tokio::test]
async fn a_full_bus_refuses_low_and_high_but_not_whitelist() {
    let (ing, bus, _) = ingest_over_store(|c| {
        c.bus_full_pending = 2;
        c.user_burst = 100.0;
        c.whitelist_users = vec!["boss".into()];
    });
    ing.danmaku("a", &viewer("u"), IP, req("1", "a"))
        .await
        .unwrap();
    ing.event("b", "k1", b"1", gift()).await.unwrap();
    let e = ing
        .danmaku("c", &viewer("u"), IP, req("2", "a"))
        .await
        .unwrap_err();
    assert_eq!(
        (e.status, e.code),
        (StatusCode::SERVICE_UNAVAILABLE, "bus_full")
    );
    assert_eq!(e.retry_after_s, Some(2));
    let e = ing.event("c", "k2", b"2", gift()).await.unwrap_err();
    assert_eq!(e.code, "bus_full");
    ing.danmaku("c", &viewer("boss"), IP, req("3", "a"))
        .await
        .unwrap();
    ing.event("c", "k3", b"3", notice()).await.unwrap();
    assert_eq!(bus.pending(), 4);
}

/// A `vip` claim at or above the level posts as high: the room's level
/// first, then `ingest.vip_high_level`; 0 turns ranking off; whitelist
/// users stay whitelist.
#[tokio::test]
async fn vip_levels_map_to_high_by_room_then_config() {
    let (ing, bus, _) = ingest_over_store(|c| {
        c.vip_high_level = 2;
        c.user_burst = 100.0;
        c.whitelist_users = vec!["boss".into()];
    });
    for (room, level) in [("strict", 5), ("flat", 0)] {
        let body = serde_json::json!({ "vip_high_level": level });
        let change = crate::rooms::patch_fields(body.as_object().unwrap());
        ing.control
            .plane()
            .change_settings(room, &change)
            .await
            .unwrap();
        ing.control.reload(room).await.unwrap();
    }
    let cases = [
        ("any", viewer("u"), Priority::Low),
        ("any", vip_viewer("u", 0), Priority::Low),
        ("any", vip_viewer("u", 1), Priority::Low),
        ("any", vip_viewer("u", 2), Priority::High),
        ("any", vip_viewer("u", 9), Priority::High),
        ("strict", vip_viewer("u", 4), Priority::Low),
        ("strict", vip_viewer("u", 5), Priority::High),
        ("flat", vip_viewer("u", 9), Priority::Low),
        ("any", vip_viewer("boss", 9), Priority::Whitelist),
    ];
    let mut consumer = bus.consumer().await.unwrap();
    for (i, (room, v, want)) in cases.into_iter().enumerate() {
        ing.danmaku(room, &v, IP, req(&i.to_string(), "a"))
            .await
            .unwrap();
        let got = consumer
            .poll(1, std::time::Duration::from_millis(100))
            .await
            .unwrap();
        assert_eq!(
            got[0].message().unwrap().priority,
            want,
            "case {i}: {room} {:?}",
            v.vip
        );
    }
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
