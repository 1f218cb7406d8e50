//! Single flight: concurrent loads of one key share one load (a replay
//! window's first readers make one replay-Redis read and at most one archive
//! query, a room's first viewers one control-plane load — not one each).

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

use tokio::sync::OnceCell;

pub struct Flights<K, V> {
    /// Loads in progress; an entry is removed once its load is done (its
    /// result is in the caches by then, or was an error worth retrying).
    running: Mutex<HashMap<K, Arc<OnceCell<V>>>>,
}

impl<K: Hash + Eq + Clone, V: Clone> Default for Flights<K, V> {
    fn default() -> Self {
        Flights {
            running: Mutex::new(HashMap::new()),
        }
    }
}

impl<K: Hash + Eq + Clone, V: Clone> Flights<K, V> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Runs `load` for `key`, unless a load of `key` is running: then waits
    /// for it and shares its result (errors too: N waiters on a down archive
    /// make one query, not N in turn). `true` with the result when this call
    /// waited for another's load. If the loading caller goes away (its
    /// request dropped), a waiter takes over (`OnceCell` semantics).
    pub async fn run<F, Fut>(&self, key: K, load: F) -> (V, bool)
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = V>,
    {
        let cell = self
            .running
            .lock()
            .expect("flights lock")
            .entry(key.clone())
            .or_default()
            .clone();
        let mut loaded_here = false;
        let value = cell
            .get_or_init(|| {
                loaded_here = true;
                load()
            })
            .await
            .clone();
        let mut running = self.running.lock().expect("flights lock");
        if running.get(&key).is_some_and(|c| Arc::ptr_eq(c, &cell)) {
            running.remove(&key);
        }
        (value, !loaded_here)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[tokio::test]
    async fn concurrent_loads_of_one_key_run_once_and_later_ones_run_again() {
        let flights = Arc::new(Flights::<u32, Result<u32, String>>::new());
        let loads = Arc::new(AtomicUsize::new(0));
        let tasks: Vec<_> = (0..50)
            .map(|_| {
                let (flights, loads) = (flights.clone(), loads.clone());
                tokio::spawn(async move {
                    flights
                        .run(7, || async {
                            loads.fetch_add(1, Ordering::SeqCst);
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            Err::<u32, _>("down".to_string())
                        })
                        .await
                })
            })
            .collect();
        let mut waited = 0;
        for t in tasks {
            let (v, w) = t.await.unwrap();
            assert_eq!(v, Err("down".to_string()), "the error is shared");
            waited += usize::from(w);
        }
        assert_eq!(loads.load(Ordering::SeqCst), 1);
        assert_eq!(waited, 49);
        // Done: the next call loads again.
        let (v, w) = flights.run(7, || async { Ok(1) }).await;
        assert_eq!((v, w), (Ok(1), false));
        assert!(flights.running.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_dropped_loader_hands_over_to_a_waiter() {
        let flights = Arc::new(Flights::<u32, u32>::new());
        let f = flights.clone();
        let first = tokio::spawn(async move {
            f.run(1, || async {
                tokio::time::sleep(Duration::from_secs(60)).await;
                0
            })
            .await
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        let f = flights.clone();
        let second = tokio::spawn(async move { f.run(1, || async { 2 }).await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        first.abort();
        let (v, _) = tokio::time::timeout(Duration::from_secs(5), second)
            .await
            .expect("the waiter is not stuck")
            .unwrap();
        assert_eq!(v, 2);
    }
}
