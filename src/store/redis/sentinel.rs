//! Redis Sentinel: the live store finds its primary through the sentinels and
//! follows it across failovers (`docs/architecture.md`, "Live store",
//! "Failover").
//!
//! `store.redis_url = "redis+sentinel://[user:password@]h1:p1,h2:p2,h3:p3/<master>[/<db>]"`
//! names the sentinels and the master's name; the password (if any) is the
//! data nodes' (sentinels are asked without one). A watcher task asks the
//! sentinels for the primary's address every [`WATCH_EVERY`]; when it changes
//! and the new address answers `ROLE` with `master`, the connection (and the
//! client the notice subscriber reconnects with) is swapped, and the switch is
//! announced ([`Primary::switches`]): the notice subscriber moves its
//! subscription at once, as the old primary may still be alive (demoted, or
//! cut off from the sentinels) and keep a subscription there open while
//! notices are published on the new one. Calls in flight
//! on the old primary fail as they would on any outage
//! ([`StoreError::Unavailable`]); the callers' retries reach the new one.
//! The replay Redis tier (`replay/redis.rs`) takes the same URLs.

use std::sync::{Arc, Weak};
use std::time::Duration;

use ::redis::aio::{ConnectionManager, ConnectionManagerConfig};
use ::redis::Client;
use parking_lot::{Mutex, RwLock};
use prometheus::IntCounter;
use tokio::sync::watch;

use super::unavailable;
use crate::store::StoreError;

/// The scheme that selects Sentinel.
pub(crate) const SCHEME: &str = "redis+sentinel://";

/// How often the watcher asks the sentinels where the primary is. A
/// failover takes the sentinels `down-after-milliseconds` plus an election
/// (seconds); this adds at most one period to it.
const WATCH_EVERY: Duration = Duration::from_millis(250);
/// Bound on one sentinel's answer, and on checking a new primary's role.
const ASK_TIMEOUT: Duration = Duration::from_millis(500);

/// A parsed `redis+sentinel://` URL.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct SentinelUrl {
    /// `host:port` of each sentinel, in the order given.
    pub sentinels: Vec<String>,
    /// The name the sentinels monitor the primary under.
    pub master: String,
    /// `user:password` or `:password` for the data nodes.
    userinfo: Option<String>,
    db: Option<u32>,
}

/// `None` if `url` is not a Sentinel URL; else the parsed URL or what is
/// wrong with it (never the URL itself: it may hold a password).
pub(crate) fn parse(url: &str) -> Option<Result<SentinelUrl, String>> {
    let rest = url.trim().strip_prefix(SCHEME)?;
    Some(parse_rest(rest))
}

fn parse_rest(rest: &str) -> Result<SentinelUrl, String> {
    let (authority, path) = rest
        .split_once('/')
        .ok_or("a sentinel URL needs /<master name> after the sentinels")?;
    let (userinfo, hosts) = match authority.rsplit_once('@') {
        Some((u, h)) => (Some(u.to_string()), h),
        None => (None, authority),
    };
    let sentinels: Vec<String> = hosts
        .split(',')
        .map(str::trim)
        .filter(|h| !h.is_empty())
        .map(str::to_string)
        .collect();
    if sentinels.is_empty() {
        return Err("a sentinel URL names no sentinel".into());
    }
    if let Some(bad) = sentinels.iter().find(|h| !is_host_port(h)) {
        return Err(format!("sentinel {bad:?} is not host:port"));
    }
    let (master, db) = match path.split_once('/') {
        Some((m, d)) => (m, Some(d)),
        None => (path, None),
    };
    if master.is_empty() {
        return Err("a sentinel URL names no master".into());
    }
    let db = match db.filter(|d| !d.is_empty()) {
        Some(d) => Some(
            d.parse::<u32>()
                .map_err(|_| "the database after the master name is not a number")?,
        ),
        None => None,
    };
    Ok(SentinelUrl {
        sentinels,
        master: master.to_string(),
        userinfo,
        db,
    })
}

fn is_host_port(h: &str) -> bool {
    h.rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok())
}

impl SentinelUrl {
    /// The URL of a data node at `addr` (`host:port`), with the password and db.
    fn node_url(&self, addr: &str) -> String {
        let auth = self
            .userinfo
            .as_deref()
            .map_or(String::new(), |u| format!("{u}@"));
        let db = self.db.map_or(String::new(), |d| format!("/{d}"));
        format!("redis://{auth}{addr}{db}")
    }
}

/// The primary now: its connection and client, swapped by the watcher.
pub(crate) struct Primary {
    current: RwLock<Current>,
    switches: Switches,
    watcher: RwLock<Option<tokio::task::AbortHandle>>,
}

/// The primary's switches: counted in `danmaku_redis_primary_switches_total`
/// (once the node hands the counter over) and announced to whoever watches.
struct Switches {
    /// How many switches so far; sent after each one is installed, so a
    /// receiver told of a change reads the new primary.
    announced: watch::Sender<u64>,
    /// Held across a switch, so that each is counted exactly once however a
    /// switch and [`Switches::count_in`] race.
    counter: Mutex<Option<IntCounter>>,
}

impl Switches {
    fn new() -> Switches {
        Switches {
            announced: watch::Sender::new(0),
            counter: Mutex::new(None),
        }
    }

    /// Counts every switch in `counter`: those made so far, and the next
    /// ones. Only the first counter given is used.
    fn count_in(&self, counter: IntCounter) {
        let mut held = self.counter.lock();
        if held.is_none() {
            counter.inc_by(*self.announced.borrow());
            *held = Some(counter);
        }
    }

    /// Runs `install` (the swap), then counts and announces the switch.
    fn record(&self, install: impl FnOnce()) {
        let counter = self.counter.lock();
        install();
        if let Some(counter) = counter.as_ref() {
            counter.inc();
        }
        self.announced.send_modify(|n| *n += 1);
    }
}

struct Current {
    addr: String,
    client: Client,
    conn: ConnectionManager,
}

impl Drop for Primary {
    fn drop(&mut self) {
        if let Some(w) = self.watcher.get_mut().take() {
            w.abort();
        }
    }
}

impl Primary {
    /// Asks the sentinels for the primary, connects, and starts following it.
    /// Fails if no sentinel names a primary that answers now.
    pub(crate) async fn connect(
        url: SentinelUrl,
        config: ConnectionManagerConfig,
    ) -> Result<Arc<Primary>, StoreError> {
        let addr = ask_sentinels(&url).await.ok_or_else(|| {
            StoreError::Unavailable(format!(
                "redis sentinel: no sentinel names a primary for {:?}",
                url.master
            ))
        })?;
        let current = open(&url, &addr, config.clone())
            .await
            .map_err(StoreError::Unavailable)?;
        let primary = Arc::new(Primary {
            current: RwLock::new(current),
            switches: Switches::new(),
            watcher: RwLock::new(None),
        });
        let task = tokio::spawn(watch(Arc::downgrade(&primary), url, config));
        *primary.watcher.write() = Some(task.abort_handle());
        Ok(primary)
    }

    pub(crate) fn conn(&self) -> ConnectionManager {
        self.current.read().conn.clone()
    }

    pub(super) fn client(&self) -> Client {
        self.current.read().client.clone()
    }

    /// The primary's address and client now: where the store health
    /// gate's prober (`health.rs`) opens a fresh connection.
    pub(super) fn target(&self) -> (String, Client) {
        let current = self.current.read();
        (current.addr.clone(), current.client.clone())
    }

    /// Puts `conn`, a fresh connection to the primary at `addr`, in place of
    /// the one in use (which a partition may have left waiting on TCP
    /// backoff); nothing if the primary moved meanwhile (the watcher has
    /// connected to the new one).
    pub(super) fn renew(&self, addr: &str, conn: ConnectionManager) {
        let mut current = self.current.write();
        if current.addr == addr {
            current.conn = conn;
        }
    }

    /// Changes after every switch to a new primary (the value: switches so
    /// far). Take it *before* reading [`Primary::client`]: a switch between
    /// the two is then still seen as a change.
    pub(super) fn switches(&self) -> watch::Receiver<u64> {
        self.switches.announced.subscribe()
    }

    /// Counts this primary's switches in `counter` (the node's
    /// `danmaku_redis_primary_switches_total`), those made before included.
    pub(crate) fn count_switches_in(&self, counter: IntCounter) {
        self.switches.count_in(counter);
    }

    fn switch_to(&self, current: Current) {
        self.switches.record(|| *self.current.write() = current);
    }
}

/// The first answer of a sentinel, in order, to `SENTINEL
/// get-master-addr-by-name`, as `host:port`.
async fn ask_sentinels(url: &SentinelUrl) -> Option<String> {
    for sentinel in &url.sentinels {
        let ask = async {
            let client = Client::open(format!("redis://{sentinel}"))?;
            let mut c = client.get_multiplexed_async_connection().await?;
            ::redis::cmd("SENTINEL")
                .arg("get-master-addr-by-name")
                .arg(&url.master)
                .query_async::<Option<(String, u16)>>(&mut c)
                .await
        };
        if let Ok(Ok(Some((host, port)))) = tokio::time::timeout(ASK_TIMEOUT, ask).await {
            return Some(format!("{host}:{port}"));
        }
    }
    None
}

/// Connects to `addr` if it answers `ROLE` with `master` (a replica the
/// sentinels are still promoting is not written to).
async fn open(
    url: &SentinelUrl,
    addr: &str,
    config: ConnectionManagerConfig,
) -> Result<Current, String> {
    let client = Client::open(url.node_url(addr)).map_err(|e| format!("bad redis url: {e}"))?;
    let attempt = async {
        let mut conn = ConnectionManager::new_with_config(client.clone(), config).await?;
        let role: Vec<::redis::Value> = ::redis::cmd("ROLE").query_async(&mut conn).await?;
        Ok::<_, ::redis::RedisError>((conn, role))
    };
    let (conn, role) = match tokio::time::timeout(ASK_TIMEOUT * 4, attempt).await {
        Ok(Ok(ok)) => ok,
        Ok(Err(e)) => return Err(unavailable(e).to_string()),
        Err(_) => return Err(format!("redis primary {addr}: no answer")),
    };
    match role.first() {
        Some(::redis::Value::BulkString(b)) if b.as_slice() == b"master" => Ok(Current {
            addr: addr.to_string(),
            client,
            conn,
        }),
        _ => Err(format!("redis {addr} is not a primary (yet)")),
    }
}

/// Follows the primary until the store is dropped.
async fn watch(primary: Weak<Primary>, url: SentinelUrl, config: ConnectionManagerConfig) {
    let mut tick = tokio::time::interval(WATCH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(addr) = ask_sentinels(&url).await else {
            continue;
        };
        let Some(p) = primary.upgrade() else { return };
        if p.current.read().addr == addr {
            continue;
        }
        drop(p);
        match open(&url, &addr, config.clone()).await {
            Ok(current) => {
                let Some(p) = primary.upgrade() else { return };
                tracing::warn!(master = %url.master, primary = %addr, "redis primary changed (sentinel failover); following it");
                p.switch_to(current);
            }
            Err(reason) => {
                tracing::debug!(%reason, "the sentinels' new redis primary is not usable yet")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentinel_urls() {
        let ok = |u: &str| parse(u).expect("a sentinel url").expect("valid");
        let bad = |u: &str| parse(u).expect("a sentinel url").expect_err("invalid");
        let table = [
            (
                "redis+sentinel://a:1,b:2,c:3/mymaster",
                vec!["a:1", "b:2", "c:3"],
                "mymaster",
                "redis://x:9",
            ),
            (
                "redis+sentinel://:pw@a:1/m/2",
                vec!["a:1"],
                "m",
                "redis://:pw@x:9/2",
            ),
            (
                "redis+sentinel://u:pw@a:1, b:2/m/",
                vec!["a:1", "b:2"],
                "m",
                "redis://u:pw@x:9",
            ),
        ];
        for (url, sentinels, master, node) in table {
            let s = ok(url);
            assert_eq!(s.sentinels, sentinels, "{url}");
            assert_eq!(s.master, master, "{url}");
            assert_eq!(s.node_url("x:9"), node, "{url}");
        }
        for url in [
            "redis+sentinel://a:1",
            "redis+sentinel:///m",
            "redis+sentinel://a:1/",
            "redis+sentinel://a/m",
            "redis+sentinel://a:x/m",
            "redis+sentinel://a:1/m/db",
        ] {
            bad(url);
        }
        assert!(parse("redis://a:1/0").is_none());
    }

    #[test]
    fn every_switch_is_counted_once_and_announced_after_it_is_installed() {
        let switches = Switches::new();
        let installed = std::sync::atomic::AtomicU64::new(0);
        let mut rx = switches.announced.subscribe();
        let install = || {
            installed.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        };
        // Before the node hands its counter over: announced, counted later.
        switches.record(install);
        assert!(rx.has_changed().unwrap());
        assert_eq!(*rx.borrow_and_update(), 1);
        assert_eq!(installed.load(std::sync::atomic::Ordering::SeqCst), 1);
        let counter = IntCounter::new("switches", "test").unwrap();
        switches.count_in(counter.clone());
        assert_eq!(counter.get(), 1, "the switch made before is counted");
        switches.record(install);
        switches.record(install);
        assert_eq!(counter.get(), 3);
        assert_eq!(*rx.borrow_and_update(), 3);
        assert!(!rx.has_changed().unwrap(), "nothing more announced");
        // A second counter changes nothing (the node hands one over).
        let other = IntCounter::new("other", "test").unwrap();
        switches.count_in(other.clone());
        assert_eq!((counter.get(), other.get()), (3, 0));
        // A receiver taken now waits for the next switch only.
        let late = switches.announced.subscribe();
        assert!(!late.has_changed().unwrap());
        switches.record(install);
        assert!(late.has_changed().unwrap());
        assert_eq!(counter.get(), 4);
    }

    #[test]
    fn errors_never_echo_the_password() {
        let e = parse("redis+sentinel://:secret@a:1/m/notadb")
            .unwrap()
            .unwrap_err();
        assert!(!e.contains("secret"), "{e}");
    }
}
