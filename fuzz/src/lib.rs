//! Shared setup of the fuzz targets: a current-thread runtime, an ingest over
//! the embedded bus and store (fresh per input, so every run is
//! deterministic), the authenticator, and oracles on accepted messages.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use danmaku::auth::Authenticator;
use danmaku::bus::memory::MemoryBus;
use danmaku::bus::Bus;
use danmaku::config::Config;
use danmaku::error::ApiError;
use danmaku::ingest::Ingest;
use danmaku::message::{Message, Style};
use danmaku::metrics::Metrics;
use danmaku::control::Control;
use danmaku::store::memory::MemoryStore;

pub const ROOM: &str = "r1";
pub const IP: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
pub const JWT_SECRET: &str = "fuzz-jwt-secret-of-a-reasonable-length";
pub const GIFT_SECRETS: [&str; 2] = ["fuzz-gift-secret-old", "fuzz-gift-secret-new"];
/// Lowercase; matched case-insensitively by ingest.
pub const BLOCKED_WORD: &str = "spam";
/// A user whose danmaku is whitelisted.
pub const VIP: &str = "vip";

pub struct Harness {
    rt: tokio::runtime::Runtime,
    pub config: Config,
    metrics: Arc<Metrics>,
    /// Room settings and the post gate (embedded engine).
    control: Arc<Control>,
    pub auth: Authenticator,
}

impl Harness {
    pub fn get() -> &'static Harness {
        static H: OnceLock<Harness> = OnceLock::new();
        H.get_or_init(|| {
            let mut config = Config::embedded();
            config.auth.jwt_secret = JWT_SECRET.into();
            config.auth.gift_secrets = GIFT_SECRETS.iter().map(|s| s.to_string()).collect();
            config.ingest.blocked_words = vec!["SPAM".into()];
            config.ingest.whitelist_users = vec![VIP.into()];
            // No rate limiting: every input gets to validation.
            config.ingest.user_burst = 1e12;
            config.ingest.user_rate_per_s = 1e12;
            config.ingest.ip_burst = 1e12;
            config.ingest.ip_rate_per_s = 1e12;
            Harness {
                rt: tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("runtime"),
                metrics: Arc::new(Metrics::new()),
                control: Control::in_memory(config.ration.clone(), Arc::new(Metrics::new())),
                auth: Authenticator::new(&config.auth),
                config,
            }
        })
    }

    pub fn block_on<F: Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    /// An ingest with an empty bus and store (no dedup state from earlier inputs).
    pub fn ingest(&self) -> (Ingest, Arc<MemoryBus>) {
        let bus = Arc::new(MemoryBus::new(2, 100_000));
        let store = Arc::new(MemoryStore::new(self.config.store.clone()));
        let ingest = Ingest::new(
            self.config.ingest.clone(),
            bus.clone(),
            store,
            self.metrics.clone(),
            self.control.clone(),
        );
        (ingest, bus)
    }

    /// Everything published so far, committed (the bus is empty afterwards).
    pub fn drain(&self, bus: &MemoryBus) -> Vec<Message> {
        self.block_on(async {
            let mut consumer = bus.consumer().await.expect("consumer");
            let mut out = Vec::new();
            loop {
                let got = consumer
                    .poll(1000, Duration::ZERO)
                    .await
                    .expect("memory poll");
                if got.is_empty() {
                    break;
                }
                consumer.commit(&got).await.expect("memory commit");
                out.extend(got.iter().filter_map(|d| d.message().cloned()));
            }
            assert_eq!(bus.pending(), 0, "drained bus still has pending messages");
            out
        })
    }
}

/// A refusal of a well-formed request must be a client error with a known code.
pub fn assert_validation_error(e: &ApiError, codes: &[&str]) {
    assert_eq!(e.status.as_u16(), 400, "unexpected status for {e:?}");
    assert!(
        codes.contains(&e.code),
        "unexpected code {:?} ({e:?})",
        e.code
    );
}

/// What ingest promises about the text of an accepted message.
pub fn assert_valid_text(text: &str, max_chars: usize) {
    assert!(!text.trim().is_empty(), "accepted empty text {text:?}");
    assert!(text.chars().count() <= max_chars, "accepted long text");
    assert!(
        !text.chars().any(char::is_control),
        "accepted control characters in {text:?}"
    );
    assert!(
        !text.to_lowercase().contains(BLOCKED_WORD),
        "accepted a blocked word in {text:?}"
    );
}

/// Ids and keys: 1-64 visible ASCII characters without `|`, `{`, `}`.
pub fn assert_valid_id(id: &str) {
    assert!(
        !id.is_empty()
            && id.len() <= 64
            && id
                .bytes()
                .all(|b| b.is_ascii_graphic() && !b"|{}".contains(&b)),
        "accepted id {id:?}"
    );
}

pub fn assert_valid_style(style: &Option<Style>) {
    if let Some(color) = style.as_ref().and_then(|s| s.color.as_deref()) {
        let hex = color.strip_prefix('#').unwrap_or("");
        assert!(
            hex.len() == 6 && hex.bytes().all(|b| b.is_ascii_hexdigit()),
            "accepted color {color:?}"
        );
    }
}

/// The acknowledgement body is `{"id": <message id>}`.
pub fn assert_answer_names(body: &str, message: &Message) {
    let v: serde_json::Value = serde_json::from_str(body).expect("answer is JSON");
    assert_eq!(v, serde_json::json!({ "id": message.id }), "answer {body}");
}

/// A message re-encodes to JSON that decodes to the same message, both as
/// the contract type and in its stored (pre-encoded, with seq) form.
pub fn assert_round_trip(message: &Message) {
    let json = serde_json::to_vec(message).expect("message serialises");
    let back: Message = serde_json::from_slice(&json).expect("message JSON parses");
    assert_eq!(
        &back,
        message,
        "round trip of {}",
        String::from_utf8_lossy(&json)
    );
    let stored = message.clone().into_stored(42);
    assert_eq!(stored.seq, 42);
    assert_eq!(stored.id, message.id);
    assert_eq!(stored.priority, message.priority);
    let back: Message = serde_json::from_slice(&stored.json).expect("stored JSON parses");
    assert_eq!(back.seq, 42);
    assert_eq!(
        Message { seq: 0, ..back },
        Message {
            seq: 0,
            ..message.clone()
        }
    );
}
