//! `auth.viewer_keys_file`, kept current without a restart: token checks
//! look at the file's modification time at most every
//! [`CHECK_EVERY`] and read it again when it changed. A file that no longer
//! parses leaves the previous key set in force (logged, counted): a
//! half-written rotation must not lock every viewer out.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use parking_lot::{Mutex, RwLock};

use super::keys::KeySet;

/// How often a token check may look at the file's modification time.
pub const CHECK_EVERY: Duration = Duration::from_secs(2);

pub struct KeyFile {
    path: PathBuf,
    current: RwLock<Arc<KeySet>>,
    /// When the file was last looked at, and its mtime then.
    checked: Mutex<(Instant, Option<SystemTime>)>,
    /// By result: "ok", "failed".
    reloads: prometheus::IntCounterVec,
}

impl KeyFile {
    /// Reads the file once; a file that cannot be read or parsed starts an
    /// empty set (tokens with a `kid` are refused) and is logged. Reads
    /// are counted in `reloads` (label `result`).
    pub fn open(path: &str, reloads: prometheus::IntCounterVec) -> KeyFile {
        let file = KeyFile {
            path: PathBuf::from(path),
            current: RwLock::new(Arc::default()),
            checked: Mutex::new((Instant::now(), None)),
            reloads,
        };
        let mtime = file.mtime();
        file.load(mtime);
        file
    }

    /// The key set in force, after a look at the file if one is due.
    pub fn keys(&self) -> Arc<KeySet> {
        let changed = {
            let mut checked = self.checked.lock();
            if checked.0.elapsed() < CHECK_EVERY {
                None
            } else {
                let mtime = self.mtime();
                checked.0 = Instant::now();
                (mtime != checked.1).then_some(mtime)
            }
        };
        if let Some(mtime) = changed {
            self.load(mtime);
        }
        self.current.read().clone()
    }

    /// Key sets read successfully, and reads that failed (the old set stayed).
    pub fn counts(&self) -> (u64, u64) {
        (
            self.reloads.with_label_values(&["ok"]).get(),
            self.reloads.with_label_values(&["failed"]).get(),
        )
    }

    fn mtime(&self) -> Option<SystemTime> {
        std::fs::metadata(&self.path)
            .and_then(|m| m.modified())
            .ok()
    }

    fn load(&self, mtime: Option<SystemTime>) {
        let parsed = std::fs::read_to_string(&self.path)
            .map_err(|e| e.to_string())
            .and_then(|text| KeySet::parse(&text));
        match parsed {
            Ok(set) => {
                tracing::info!(path = %self.path.display(), keys = set.len(), "viewer keys loaded");
                *self.current.write() = Arc::new(set);
                self.checked.lock().1 = mtime;
                self.reloads.with_label_values(&["ok"]).inc();
            }
            Err(error) => {
                // The mtime is not recorded: the next look tries again.
                tracing::error!(path = %self.path.display(), %error,
                    "viewer keys file unreadable: keeping the previous keys");
                self.reloads.with_label_values(&["failed"]).inc();
            }
        }
    }
}
