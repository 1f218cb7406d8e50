//! The heap as the allocator sees it, beside `process_resident_memory_bytes`:
//! what the program holds (`danmaku_heap_allocated_bytes`) and what the
//! allocator keeps resident for it (`danmaku_heap_resident_bytes`). A gap
//! that stays wide means freed memory not yet returned; a rise of both is
//! the program's own growth.
//!
//! jemalloc (feature `jemalloc`) is installed as the process allocator by
//! `src/main.rs`, not by this library, so `danmaku-bare` and the unit tests
//! keep the system allocator. In those jemalloc holds nothing and the series
//! are left out rather than reported as 0.

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::IntGauge;

pub struct AllocatorCollector {
    allocated: IntGauge,
    resident: IntGauge,
    descs: Vec<Desc>,
}

impl AllocatorCollector {
    pub fn new() -> Self {
        let gauge = |name: &str, help: &str| IntGauge::new(name, help).expect("valid metric");
        let allocated = gauge(
            "danmaku_heap_allocated_bytes",
            "Heap bytes the program holds (jemalloc stats.allocated)",
        );
        let resident = gauge(
            "danmaku_heap_resident_bytes",
            "Bytes the allocator keeps resident, freed pages not yet returned included (jemalloc stats.resident)",
        );
        let descs = [&allocated, &resident]
            .iter()
            .flat_map(|g| g.desc())
            .cloned()
            .collect();
        AllocatorCollector {
            allocated,
            resident,
            descs,
        }
    }

    /// Reads jemalloc's counters; `None` where jemalloc is not the
    /// allocator (it holds nothing) or is not built in.
    fn read() -> Option<(u64, u64)> {
        #[cfg(feature = "jemalloc")]
        {
            use tikv_jemalloc_ctl::{epoch, stats};
            // The stats are a snapshot taken at the last epoch advance.
            epoch::advance().ok()?;
            let allocated = stats::allocated::read().ok()? as u64;
            let resident = stats::resident::read().ok()? as u64;
            (allocated > 0).then_some((allocated, resident))
        }
        #[cfg(not(feature = "jemalloc"))]
        None
    }
}

impl Default for AllocatorCollector {
    fn default() -> Self {
        Self::new()
    }
}

impl Collector for AllocatorCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let Some((allocated, resident)) = Self::read() else {
            return Vec::new();
        };
        let clamp = |v: u64| v.min(i64::MAX as u64) as i64;
        self.allocated.set(clamp(allocated));
        self.resident.set(clamp(resident));
        [&self.allocated, &self.resident]
            .iter()
            .flat_map(|g| g.collect())
            .collect()
    }
}
