use std::sync::atomic::{AtomicUsize, Ordering};

use async_trait::async_trait;

use super::*;
use crate::config::Config;
use crate::store::control::memory::MemoryControl;
use crate::store::control::{Mute, MuteScope, PostGate, PostRate, RoomControl, SettingsChange};

/// The memory engine, counting room loads (what a node pays per room).
struct Counting {
    inner: MemoryControl,
    loads: AtomicUsize,
    /// Notices the engine does not deliver (a lost subscription).
    drop_notices: std::sync::atomic::AtomicBool,
    silent: broadcast::Sender<Arc<VersionedNotice>>,
    /// How long a room load takes (a remote control plane).
    load_pause: Duration,
}

impl Default for Counting {
    fn default() -> Self {
        Counting {
            inner: MemoryControl::new(),
            loads: AtomicUsize::new(0),
            drop_notices: Default::default(),
            silent: broadcast::channel(1).0,
            load_pause: Duration::ZERO,
        }
    }
}

#[async_trait]
impl ControlPlane for Counting {
    async fn load_room(&self, room: &str) -> Result<RoomControl, StoreError> {
        self.loads.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(self.load_pause).await;
        self.inner.load_room(room).await
    }
    async fn change_settings(&self, room: &str, c: &SettingsChange) -> Result<(), StoreError> {
        self.inner.change_settings(room, c).await
    }
    async fn mute(&self, scope: &MuteScope, user: &str, until: u64) -> Result<(), StoreError> {
        self.inner.mute(scope, user, until).await
    }
    async fn unmute(&self, scope: &MuteScope, user: &str) -> Result<bool, StoreError> {
        self.inner.unmute(scope, user).await
    }
    async fn mutes(&self, scope: &MuteScope, limit: usize) -> Result<Vec<Mute>, StoreError> {
        self.inner.mutes(scope, limit).await
    }
    async fn admit_post(&self, user: &str, rate: PostRate) -> Result<PostGate, StoreError> {
        self.inner.admit_post(user, rate).await
    }
    async fn publish(&self, notice: &Notice) -> Result<u64, StoreError> {
        self.inner.publish(notice).await
    }
    fn notices(&self) -> broadcast::Receiver<Arc<VersionedNotice>> {
        if self.drop_notices.load(Ordering::SeqCst) {
            self.silent.subscribe()
        } else {
            self.inner.notices()
        }
    }
    async fn changes_since(&self, after: u64) -> Result<Changes, StoreError> {
        self.inner.changes_since(after).await
    }
}

async fn node(plane: Arc<Counting>) -> (Arc<Control>, CancellationToken) {
    let control = Control::new(
        plane,
        Arc::new(RoomDirectory::new(Config::embedded().ration)),
        Arc::new(Metrics::new()),
        Duration::from_millis(50),
    );
    let stop = CancellationToken::new();
    control.start(stop.clone()).await;
    (control, stop)
}

fn budget(n: u32) -> SettingsChange {
    SettingsChange {
        set: vec![("budget_per_s".into(), n.to_string())],
        clear: vec![],
    }
}

async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    for _ in 0..200 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{what}: not within 2 s");
}

#[tokio::test]
async fn a_notice_reloads_rooms_in_use_and_only_those() {
    let plane = Arc::new(Counting::default());
    let (control, stop) = node(plane.clone()).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    control.room("used").await.unwrap();
    assert_eq!(plane.loads.load(Ordering::SeqCst), 1);
    // Another node changes both rooms.
    for room in ["used", "quiet"] {
        plane.change_settings(room, &budget(7)).await.unwrap();
        plane
            .publish(&Notice::Settings { room: room.into() })
            .await
            .unwrap();
    }
    let rooms = control.rooms().clone();
    eventually("the used room follows", || {
        rooms.get("used").budget_per_s == Some(7)
    })
    .await;
    assert!(
        rooms.cached("quiet").is_none(),
        "a room not in use is not read"
    );
    assert_eq!(plane.loads.load(Ordering::SeqCst), 2, "one load per notice");
    stop.cancel();
}

#[tokio::test]
async fn missed_notices_are_caught_up_from_the_log() {
    let plane = Arc::new(Counting::default());
    plane.drop_notices.store(true, Ordering::SeqCst);
    let (control, stop) = node(plane.clone()).await;
    control.room("r").await.unwrap();
    plane.change_settings("r", &budget(9)).await.unwrap();
    plane
        .publish(&Notice::Settings { room: "r".into() })
        .await
        .unwrap();
    let rooms = control.rooms().clone();
    eventually("caught up without the notice", || {
        rooms.get("r").budget_per_s == Some(9)
    })
    .await;
    stop.cancel();
}

#[tokio::test]
async fn rooms_read_before_they_are_cached_are_loaded() {
    let plane = Arc::new(Counting::default());
    plane.change_settings("r", &budget(3)).await.unwrap();
    let (control, stop) = node(plane.clone()).await;
    let rooms = control.rooms().clone();
    assert_eq!(rooms.get("r").budget_per_s, None, "defaults until loaded");
    eventually("loaded in the background", || {
        rooms.get("r").budget_per_s == Some(3)
    })
    .await;
    stop.cancel();
}

#[tokio::test]
async fn retractions_and_bans_reach_the_roles() {
    let plane = Arc::new(Counting::default());
    let (control, stop) = node(plane.clone()).await;
    let mut forwarded = control.subscribe();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let ban = Notice::Ban {
        room: "r".into(),
        user: "u".into(),
    };
    control.publish(ban.clone()).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(2), forwarded.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(*got, ban);
    stop.cancel();
}

#[tokio::test]
async fn a_rooms_concurrent_first_readers_share_one_load() {
    let plane = Arc::new(Counting {
        load_pause: Duration::from_millis(50),
        ..Counting::default()
    });
    plane.change_settings("hot", &budget(9)).await.unwrap();
    let (control, stop) = node(plane.clone()).await;
    let before = plane.loads.load(Ordering::SeqCst);
    let readers = (0..100).map(|_| control.room("hot"));
    let states = futures_util::future::join_all(readers).await;
    assert_eq!(
        plane.loads.load(Ordering::SeqCst) - before,
        1,
        "one load for 100 readers"
    );
    for state in states {
        assert_eq!(state.unwrap().settings.budget_per_s, Some(9));
    }
    // Cached now: no load at all.
    control.room("hot").await.unwrap();
    assert_eq!(plane.loads.load(Ordering::SeqCst) - before, 1);
    stop.cancel();
}
