//! `danmaku-bench platform`, small: the load tool spawns two `front`
//! processes and a `processor` on Redis + Apache Kafka, spreads a Zipf mix
//! of rooms (plus quiet rooms) over the two fronts and posts at each size
//! class's rate. Every viewer must get every message of its room, whichever
//! front it is on and whichever front the message was posted to, and the
//! report must carry the figures the benchmark is for (per front CPU and
//! RSS, Redis commands/s, latency per class). The full-size run is
//! `benches/platform-bench.sh`.
//!
//! Needs `DANMAKU_TEST_REDIS_URL` and `DANMAKU_TEST_KAFKA_BROKERS` (set by
//! scripts/test.sh); skips without them unless `DANMAKU_REQUIRE_SERVICES=1`.

mod common;

use std::process::Command;

use common::now_ms;
use common::procs::{free_port, services_required};
use serde_json::Value;

#[test]
fn platform_mix_on_two_fronts_loses_nothing() {
    let (Ok(redis), Ok(kafka)) = (
        std::env::var("DANMAKU_TEST_REDIS_URL"),
        std::env::var("DANMAKU_TEST_KAFKA_BROKERS"),
    ) else {
        assert!(
            !services_required(),
            "DANMAKU_REQUIRE_SERVICES=1 but DANMAKU_TEST_REDIS_URL / DANMAKU_TEST_KAFKA_BROKERS are not set"
        );
        eprintln!("skipping: set DANMAKU_TEST_REDIS_URL and DANMAKU_TEST_KAFKA_BROKERS");
        return;
    };
    let unique = format!("{}-{}", std::process::id(), now_ms());
    let json_path = std::env::temp_dir().join(format!("danmaku-platform-{unique}.json"));
    let url = |p: u16| format!("http://127.0.0.1:{p}");
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let out = Command::new(env!("CARGO_BIN_EXE_danmaku-bench"))
        .args(["platform", "--spawn", env!("CARGO_BIN_EXE_danmaku")])
        .args(["--server-cpus", &format!("0-{}", cpus - 1)])
        .args(["--front", &url(free_port()), "--front", &url(free_port())])
        .args(["--processor", &url(free_port()), "--redis-url", &redis])
        .args(["--room", &format!("plat{}", now_ms() % 1_000_000)])
        // Rooms of 26, 11, 8, 6, 5 viewers and 3 quiet rooms of 2: classes
        // big (>= 20), medium (>= 8), small, quiet; 31 viewers per front.
        .args(["--viewers", "56", "--rooms", "5", "--quiet-rooms", "3"])
        .args(["--big-min", "20", "--medium-min", "8", "--top-share", "0.5"])
        .args([
            "--rate-big",
            "10",
            "--rate-medium",
            "4",
            "--rate-small",
            "3",
        ])
        .args(["--duration", "5s", "--warmup", "1s", "--drain", "3s"])
        .args(["--threads", "1", "--quiet", "--json"])
        .arg(&json_path)
        .env("DANMAKU_STORE__ENGINE", "redis")
        .env("DANMAKU_REDIS_URL", &redis)
        .env("DANMAKU_BUS__ENGINE", "kafka")
        .env("DANMAKU_KAFKA_BROKERS", &kafka)
        .env("DANMAKU_BUS__PARTITIONS", "4")
        .env("DANMAKU_BUS__TOPIC", format!("t-plat-{unique}"))
        .env("DANMAKU_BUS__GROUP_ID", format!("g-plat-{unique}"))
        .env("DANMAKU_FANOUT__BIG_ROOM_THRESHOLD", "20")
        .env("DANMAKU_INGEST__USER_RATE_PER_S", "100000")
        .env("DANMAKU_INGEST__USER_BURST", "100000")
        .env("DANMAKU_INGEST__IP_RATE_PER_S", "1000000")
        .env("DANMAKU_INGEST__IP_BURST", "1000000")
        .output()
        .expect("run danmaku-bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let text = std::fs::read_to_string(&json_path)
        .unwrap_or_else(|e| panic!("no JSON report ({e}):\n{stdout}\n{stderr}"));
    let _ = std::fs::remove_file(&json_path);
    let r: Value = serde_json::from_str(&text).unwrap();
    let why = format!("{stdout}\n{stderr}");

    assert_eq!(r["clients"], 62, "{why}");
    assert_eq!(r["connected"], 62, "{why}");
    assert_eq!(r["lost"], 0, "{why}");
    assert_eq!(r["duplicates"], 0, "{why}");
    assert_eq!(r["dropped"], 0, "{why}");
    assert_eq!(r["publish"]["errors"], 0, "{why}");
    assert!(
        r["publish"]["refused"].as_object().unwrap().is_empty(),
        "{why}"
    );
    // Both fronts carried viewers and deliveries, and were measured.
    let fronts = r["fronts"].as_array().unwrap();
    assert_eq!(fronts.len(), 2);
    for f in fronts {
        assert_eq!(f["connected"], 31, "{why}");
        assert!(f["deliveries_per_s"].as_f64().unwrap() > 0.0, "{why}");
        assert!(f["process"]["rss_kb"].as_u64().unwrap() > 0, "{why}");
        assert!(f["process"]["cpu_seconds"].as_f64().is_some(), "{why}");
    }
    assert!(
        r["processor"]["process"]["rss_kb"].as_u64().unwrap() > 0,
        "{why}"
    );
    // Redis did work for the run (the live store's writes and reads).
    let redis_cmds = r["redis"]["commands_per_s"].as_f64().unwrap();
    assert!(redis_cmds > 0.0, "{why}");
    // Each class got what was posted into it, to every viewer: ~10/s into the
    // big room reaches its 26 viewers (deliveries ≈ accepted × viewers per room).
    for class in ["big", "medium", "small"] {
        let c = &r["classes"][class];
        let got = c["deliveries_per_s"].as_f64().unwrap();
        let want = c["expected_deliveries_per_s"].as_f64().unwrap();
        assert!(want > 0.0, "{class}: {why}");
        assert!(
            (got - want).abs() <= 0.25 * want,
            "{class}: {got} deliveries/s, expected {want}: {why}"
        );
        assert!(
            c["latency_ms"]["count"].as_u64().unwrap() > 0,
            "{class}: {why}"
        );
    }
    assert_eq!(r["classes"]["big"]["viewers"], 26);
    assert_eq!(r["classes"]["quiet"]["rooms"], 3);
    assert_eq!(r["classes"]["quiet"]["deliveries_per_s"], 0.0, "{why}");
}
