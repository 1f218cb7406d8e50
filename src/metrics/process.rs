//! Process and build facts as Prometheus series: what an operator checks
//! first when a node misbehaves (file descriptors against the cap, memory,
//! CPU, threads) and which build is running.
//!
//! Read from `/proc` only when `/metrics` is scraped (a [`Collector`]), so
//! they cost nothing between scrapes; on a system without `/proc` the
//! series that need it are left out rather than reported as 0.

use std::time::{SystemTime, UNIX_EPOCH};

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{Gauge, IntGauge, IntGaugeVec, Opts};

/// The soft and hard RLIMIT_NOFILE.
pub fn open_file_limit() -> Option<(u64, u64)> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes into the struct it is given.
    (unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0)
        .then_some((lim.rlim_cur, lim.rlim_max))
}

/// The `process_*` series of the Prometheus client conventions plus
/// `danmaku_build_info`.
pub struct ProcessCollector {
    open_fds: IntGauge,
    /// The soft limit: accepts fail with EMFILE beyond it.
    max_fds: IntGauge,
    resident_memory: IntGauge,
    virtual_memory: IntGauge,
    cpu_seconds: Gauge,
    threads: IntGauge,
    start_time: Gauge,
    /// Always 1; the labels say which build runs.
    build_info: IntGaugeVec,
    descs: Vec<Desc>,
}

impl ProcessCollector {
    pub fn new() -> Self {
        let gauge = |name: &str, help: &str| IntGauge::new(name, help).expect("valid metric");
        let float = |name: &str, help: &str| Gauge::new(name, help).expect("valid metric");
        let build_info = IntGaugeVec::new(
            Opts::new(
                "danmaku_build_info",
                "Which build runs (always 1): crate version, profile, commit",
            ),
            &["version", "profile", "commit"],
        )
        .expect("valid metric");
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION"), PROFILE, COMMIT])
            .set(1);
        let start = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        let start_time = float(
            "process_start_time_seconds",
            "Start time of the process since the unix epoch (seconds)",
        );
        start_time.set(start);
        let mut c = ProcessCollector {
            open_fds: gauge("process_open_fds", "Open file descriptors"),
            max_fds: gauge(
                "process_max_fds",
                "Soft limit of open file descriptors (RLIMIT_NOFILE)",
            ),
            resident_memory: gauge("process_resident_memory_bytes", "Resident memory size"),
            virtual_memory: gauge("process_virtual_memory_bytes", "Virtual memory size"),
            cpu_seconds: float(
                "process_cpu_seconds_total",
                "User and system CPU time spent (seconds)",
            ),
            threads: gauge("process_threads", "OS threads of the process"),
            start_time,
            build_info,
            descs: Vec::new(),
        };
        c.descs = c.parts().iter().flat_map(|m| m.desc()).cloned().collect();
        c
    }

    fn parts(&self) -> [&dyn Collector; 8] {
        [
            &self.open_fds,
            &self.max_fds,
            &self.resident_memory,
            &self.virtual_memory,
            &self.cpu_seconds,
            &self.threads,
            &self.start_time,
            &self.build_info,
        ]
    }

    /// Reads `/proc/self` into the gauges; `false` when it is not there.
    fn refresh(&self) -> bool {
        if let Some((soft, _)) = open_file_limit() {
            self.max_fds.set(soft.min(i64::MAX as u64) as i64);
        }
        let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
            return false;
        };
        let Some(fields) = stat_fields(&stat) else {
            return false;
        };
        // After the command name: state is field 3, so field n is at n − 3.
        let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<u64>().ok());
        // SAFETY: sysconf reads a constant of the running system.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1) as u64;
        if let (Some(utime), Some(stime)) = (field(14), field(15)) {
            self.cpu_seconds.set((utime + stime) as f64 / ticks);
        }
        if let Some(threads) = field(20) {
            self.threads.set(threads as i64);
        }
        if let Some(vsize) = field(23) {
            self.virtual_memory.set(vsize as i64);
        }
        if let Some(rss_pages) = field(24) {
            self.resident_memory.set((rss_pages * page) as i64);
        }
        if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
            // The count includes the descriptor read_dir holds itself.
            self.open_fds.set(dir.count().saturating_sub(1) as i64);
        }
        true
    }
}

impl Default for ProcessCollector {
    fn default() -> Self {
        Self::new()
    }
}

impl Collector for ProcessCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let parts: Vec<&dyn Collector> = if self.refresh() {
            self.parts().to_vec()
        } else {
            vec![&self.max_fds, &self.start_time, &self.build_info]
        };
        parts.into_iter().flat_map(|m| m.collect()).collect()
    }
}

/// `/proc/self/stat` after the command name (which may hold spaces and
/// parentheses, so it is skipped up to the last `)`).
fn stat_fields(stat: &str) -> Option<Vec<&str>> {
    let rest = &stat[stat.rfind(')')? + 1..];
    Some(rest.split_whitespace().collect())
}

const PROFILE: &str = if cfg!(debug_assertions) {
    "debug"
} else {
    "release"
};

/// The commit the build came from when the builder says so
/// (`DANMAKU_BUILD_COMMIT=$(git rev-parse --short HEAD) cargo build`).
const COMMIT: &str = match option_env!("DANMAKU_BUILD_COMMIT") {
    Some(c) => c,
    None => "unknown",
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_skip_a_command_name_with_spaces_and_parens() {
        let stat = "42 (my (odd) cmd) S 1 42 42 0 -1 4194560 100 0 0 0 7 3 0 0 20 0 5 0 99 1000 25";
        let f = stat_fields(stat).unwrap();
        assert_eq!(f[0], "S");
        assert_eq!(f[14 - 3], "7"); // utime
        assert_eq!(f[20 - 3], "5"); // threads
        assert_eq!(f[24 - 3], "25"); // rss
    }

    #[test]
    fn scrape_reports_descriptors_under_their_cap_and_the_build() {
        let registry = prometheus::Registry::new();
        registry
            .register(Box::new(ProcessCollector::new()))
            .unwrap();
        let text = super::super::render_registry(&registry);
        let value = |name: &str| -> f64 {
            text.lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
                .unwrap_or_else(|| panic!("{name} missing in\n{text}"))
        };
        let open = value("process_open_fds");
        assert!(open >= 3.0, "stdin/out/err at least: {open}");
        assert!(open <= value("process_max_fds"));
        assert!(value("process_resident_memory_bytes") > 1e6);
        assert!(value("process_threads") >= 1.0);
        assert!(text.contains(&format!(
            "danmaku_build_info{{commit=\"{COMMIT}\",profile=\"{PROFILE}\",version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        )));
    }
}
