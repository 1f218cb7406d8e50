//! The report of a run: the JSON figures every scenario shares (quantiles,
//! the machine, the publishers), the medians over `--repeat` runs, and the
//! text printed to stdout (BENCHMARKS.md quotes it: keep its format).

use std::collections::BTreeMap;

use serde_json::json;

use crate::cli::LoadArgs;
use crate::publisher::PubResult;
use crate::stats::Hist;
use crate::viewer::Ctx;

/// The figures whose median over runs is reported (JSON pointers).
const MEDIAN_FIELDS: &[&str] = &[
    "/deliveries_per_s",
    "/deliveries_per_s_min_1s",
    "/deliveries_per_server_cpu_s",
    "/ratio_vs_bare_2_5M_per_cpu_s",
    "/messages_per_frame",
    "/frames_per_s",
    "/bytes_per_s",
    "/bytes_per_delivery",
    "/server_cpu_util",
    "/tool_cpu_util",
    "/poll_responses_per_s",
    "/poll_responses_per_server_cpu_s",
    "/latency_ms/p50_ms",
    "/latency_ms/p99_ms",
    "/latency_ms/p999_ms",
    "/poll_rtt_ms/p50_ms",
    "/poll_rtt_ms/p99_ms",
    "/not_modified_per_s",
    "/not_modified_per_s_min_1s",
    "/not_modified_per_server_cpu_s",
    "/ok_per_s",
    "/request_errors",
    "/request_rtt_ms/p50_ms",
    "/request_rtt_ms/p99_ms",
    "/publish/accepted_per_s",
    "/lost",
    "/viewers_with_loss",
    "/duplicates",
    "/dropped",
    "/connected",
    "/server_rss_kb/baseline",
    "/server_rss_kb/after_connect",
    "/server_rss_kb/connected",
    "/server_rss_kb/end",
    "/server_rss_kb/peak",
    "/server_rss_kb_per_connection",
    "/server_rss_kb_per_connection_after_hold",
    "/server_cpu_util_during_hold",
    "/redis/commands_per_s",
    "/redis/cpu_util",
    "/classes/big/latency_ms/p99_ms",
    "/classes/medium/latency_ms/p99_ms",
    "/classes/small/latency_ms/p99_ms",
];

pub fn medians(reports: &[serde_json::Value]) -> serde_json::Value {
    let mut out = serde_json::Map::new();
    for field in MEDIAN_FIELDS {
        let mut v: Vec<f64> = reports
            .iter()
            .filter_map(|r| r.pointer(field).and_then(|x| x.as_f64()))
            .collect();
        if v.is_empty() {
            continue;
        }
        v.sort_by(f64::total_cmp);
        let median = if v.len() % 2 == 1 {
            v[v.len() / 2]
        } else {
            (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0
        };
        out.insert(
            field.trim_start_matches('/').replace('/', "."),
            json!({"median": median, "min": v[0], "max": v[v.len() - 1], "runs": v}),
        );
    }
    serde_json::Value::Object(out)
}

pub fn print_medians(m: &serde_json::Value, runs: usize) {
    println!("== median of {runs} runs ==");
    if let Some(map) = m.as_object() {
        for (k, v) in map {
            let fmt = |x: f64| {
                if x.abs() >= 1e4 {
                    si(x)
                } else if x.fract() == 0.0 {
                    format!("{x:.0}")
                } else {
                    format!("{x:.3}")
                }
            };
            let runs: Vec<String> = v["runs"]
                .as_array()
                .map(|a| a.iter().map(|x| fmt(f(x))).collect())
                .unwrap_or_default();
            println!(
                "{k:<42} {:>10}   [{}]",
                fmt(f(&v["median"])),
                runs.join(", ")
            );
        }
    }
}

pub fn si(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else if v >= 1e4 {
        format!("{:.1}k", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}

pub fn quantiles(h: &Hist) -> serde_json::Value {
    let ms = |us: u64| us as f64 / 1000.0;
    json!({
        "count": h.count(),
        "p50_ms": ms(h.quantile(0.50)),
        "p90_ms": ms(h.quantile(0.90)),
        "p99_ms": ms(h.quantile(0.99)),
        "p999_ms": ms(h.quantile(0.999)),
        "max_ms": ms(h.max()),
    })
}

pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .trim()
        .to_string()
}

pub fn machine() -> serde_json::Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_default();
    let cpus = std::fs::read_to_string("/proc/cpuinfo")
        .map(|s| s.lines().filter(|l| l.starts_with("processor")).count())
        .unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string();
    json!({"cpu": cpu, "cpus": cpus, "kernel": kernel})
}

/// Counts one reason (cut to 80 characters, so that similar ones group).
pub fn tally(reasons: &mut BTreeMap<String, u64>, reason: &str) {
    *reasons
        .entry(reason.chars().take(80).collect())
        .or_default() += 1;
}

/// The publishers' figures for the report.
pub fn publish_report(
    load: &LoadArgs,
    ctx: &Ctx,
    results: &[PubResult],
    accepted_per_s: f64,
) -> serde_json::Value {
    let mut refused: BTreeMap<u16, u64> = BTreeMap::new();
    let mut last_refusal = None;
    let mut total = PubResult::default();
    for p in results {
        total.sent += p.sent;
        total.accepted += p.accepted;
        total.errors += p.errors;
        total.late += p.late;
        for (k, v) in &p.refused {
            *refused.entry(*k).or_default() += v;
        }
        if p.last_refusal.is_some() {
            last_refusal = p.last_refusal.clone();
        }
    }
    json!({
        "kind": format!("{:?}", load.publish).to_lowercase(),
        "publishers": load.publishers,
        "rate_target": if load.publishers > 0 { load.rate } else { 0.0 },
        "accepted_per_s": accepted_per_s,
        "sent": total.sent,
        "accepted": total.accepted,
        "refused": refused,
        "last_refusal": last_refusal,
        "errors": total.errors,
        "late": total.late,
        "rtt_ms": quantiles(&ctx.publish_rtt),
    })
}

fn f(v: &serde_json::Value) -> f64 {
    v.as_f64().unwrap_or(f64::NAN)
}

fn print_run(r: &serde_json::Value) {
    println!("command          {}", r["command"].as_str().unwrap_or(""));
    println!(
        "clients          {} connected / {} (connect errors: {}) in {:.1} s; {} room(s)",
        r["connected"],
        r["clients"],
        r["connect_errors"],
        f(&r["connect_seconds"]),
        r["rooms"]
    );
    println!(
        "window           {:.1} s; published {:.1}/s accepted (target {}), refused {}, errors {}",
        f(&r["window_seconds"]),
        f(&r["publish"]["accepted_per_s"]),
        r["publish"]["rate_target"],
        r["publish"]["refused"],
        r["publish"]["errors"]
    );
}

fn print_rss(r: &serde_json::Value) {
    let rss = &r["server_rss_kb"];
    println!(
        "server RSS       baseline {} MB, after connect {} MB, end {} MB, peak {} MB; tool CPU {:.1}%",
        rss["baseline"].as_u64().unwrap_or(0) / 1024,
        rss["after_connect"].as_u64().unwrap_or(0) / 1024,
        rss["end"].as_u64().unwrap_or(0) / 1024,
        rss["peak"].as_u64().unwrap_or(0) / 1024,
        100.0 * f(&r["tool_cpu_util"])
    );
}

pub fn print_load(r: &serde_json::Value) {
    let l = &r["latency_ms"];
    println!(
        "== {} ({}) ==",
        r["scenario"].as_str().unwrap_or(""),
        r["transport"].as_str().unwrap_or("")
    );
    print_run(r);
    println!(
        "deliveries/s     {} (1-s min {}, median {}); expected {}",
        si(f(&r["deliveries_per_s"])),
        si(f(&r["deliveries_per_s_min_1s"])),
        si(f(&r["deliveries_per_s_median_1s"])),
        si(f(&r["expected_deliveries"]) / f(&r["window_seconds"]))
    );
    println!(
        "frames/s         {} ({:.1} messages/frame)   bytes/s {:.1} MB/s ({:.1} bytes/delivery)",
        si(f(&r["frames_per_s"])),
        f(&r["messages_per_frame"]),
        f(&r["bytes_per_s"]) / 1e6,
        f(&r["bytes_per_delivery"])
    );
    if !r["poll_responses_per_s"].is_null() {
        println!(
            "poll answers/s   {} ({} per server CPU-s); rtt p50 {:.2} ms p99 {:.2} ms",
            si(f(&r["poll_responses_per_s"])),
            si(f(&r["poll_responses_per_server_cpu_s"])),
            f(&r["poll_rtt_ms"]["p50_ms"]),
            f(&r["poll_rtt_ms"]["p99_ms"])
        );
    }
    println!(
        "server CPU       {:.1}% of a core (user {:.2} s, sys {:.2} s); deliveries per server CPU-s {} ({:.2}x the 2.5M bare reference)",
        100.0 * f(&r["server_cpu_util"]),
        f(&r["server_cpu_user_seconds"]),
        f(&r["server_cpu_system_seconds"]),
        si(f(&r["deliveries_per_server_cpu_s"])),
        f(&r["ratio_vs_bare_2_5M_per_cpu_s"])
    );
    print_rss(r);
    println!(
        "latency          p50 {:.1} ms  p90 {:.1} ms  p99 {:.1} ms  p999 {:.1} ms  max {:.1} ms  ({} samples)",
        f(&l["p50_ms"]), f(&l["p90_ms"]), f(&l["p99_ms"]), f(&l["p999_ms"]), f(&l["max_ms"]), l["count"]
    );
    println!(
        "publish rtt      p50 {:.2} ms  p99 {:.2} ms",
        f(&r["publish"]["rtt_ms"]["p50_ms"]),
        f(&r["publish"]["rtt_ms"]["p99_ms"])
    );
    if r["seq_check"].as_bool() == Some(true) {
        println!(
            "loss             {} lost ({} viewers, max {} per viewer); {} duplicates ({} viewers); {} late; {} resets",
            r["lost"], r["viewers_with_loss"], r["max_lost_per_viewer"], r["duplicates"],
            r["viewers_with_duplicates"], r["late_out_of_order"], r["resets"]
        );
    }
    if r["resumes"].as_u64().unwrap_or(0) + r["slow_viewers"].as_u64().unwrap_or(0) > 0 {
        println!(
            "churn            {} resumes by cursor; {} slow viewers, cut {} times (the rules); {} cuts of other viewers",
            r["resumes"], r["slow_viewers"], r["cuts_of_slow_viewers"], r["cuts_of_other_viewers"]
        );
    }
    println!("ended early      {} {}", r["dropped"], r["ended_early"]);
    println!("server metrics   {}", r["server_metrics_delta"]);
    if r["publish"]["last_refusal"].is_string() {
        println!("last refusal     {}", r["publish"]["last_refusal"]);
    }
}

pub fn print_snapshot(r: &serde_json::Value) {
    println!("== snapshot ==");
    print_run(r);
    println!(
        "304/s            {} (1-s min {}, median {}); 200/s {:.1}; errors {:.0} ({:.1}/s)",
        si(f(&r["not_modified_per_s"])),
        si(f(&r["not_modified_per_s_min_1s"])),
        si(f(&r["not_modified_per_s_median_1s"])),
        f(&r["ok_per_s"]),
        f(&r["request_errors"]),
        f(&r["request_errors_per_s"])
    );
    let l = &r["request_rtt_ms"];
    println!(
        "request rtt      p50 {:.2} ms  p90 {:.2} ms  p99 {:.2} ms  p999 {:.2} ms  max {:.2} ms  ({} samples); {:.1} MB/s",
        f(&l["p50_ms"]), f(&l["p90_ms"]), f(&l["p99_ms"]), f(&l["p999_ms"]), f(&l["max_ms"]), l["count"],
        f(&r["bytes_per_s"]) / 1e6
    );
    println!(
        "server CPU       {:.1}% of a core (user {:.2} s, sys {:.2} s); 304s per server CPU-s {}",
        100.0 * f(&r["server_cpu_util"]),
        f(&r["server_cpu_user_seconds"]),
        f(&r["server_cpu_system_seconds"]),
        si(f(&r["not_modified_per_server_cpu_s"]))
    );
    print_rss(r);
    if r["publish"]["publishers"].as_u64() > Some(0) {
        println!(
            "publish rtt      p50 {:.2} ms  p99 {:.2} ms",
            f(&r["publish"]["rtt_ms"]["p50_ms"]),
            f(&r["publish"]["rtt_ms"]["p99_ms"])
        );
    }
    if r["resumes"].as_u64().unwrap_or(0) + r["slow_viewers"].as_u64().unwrap_or(0) > 0 {
        println!(
            "churn            {} resumes by cursor; {} slow viewers, cut {} times (the rules); {} cuts of other viewers",
            r["resumes"], r["slow_viewers"], r["cuts_of_slow_viewers"], r["cuts_of_other_viewers"]
        );
    }
    println!("ended early      {} {}", r["dropped"], r["ended_early"]);
    println!("server metrics   {}", r["server_metrics_delta"]);
}

pub fn print_platform(r: &serde_json::Value) {
    println!("== platform ({}) ==", r["transport"].as_str().unwrap_or(""));
    println!("command          {}", r["command"].as_str().unwrap_or(""));
    println!(
        "viewers          {} connected / {} (connect errors: {}) in {:.1} s; {} rooms (top room {} viewers)",
        r["connected"],
        r["clients"],
        r["connect_errors"],
        f(&r["connect_seconds"]),
        r["mix"]["rooms"],
        r["mix"]["top_room_viewers"]
    );
    println!(
        "window           {:.1} s; published {:.1}/s accepted (target {:.1}), refused {}, errors {}",
        f(&r["window_seconds"]),
        f(&r["publish"]["accepted_per_s"]),
        f(&r["publish"]["rate_target"]),
        r["publish"]["refused"],
        r["publish"]["errors"]
    );
    println!("deliveries/s     {}", si(f(&r["deliveries_per_s"])));
    let empty = Vec::new();
    for (i, fr) in r["fronts"].as_array().unwrap_or(&empty).iter().enumerate() {
        let p = &fr["process"];
        println!(
            "front {i}          {} viewers, {} deliveries/s in {} frames/s, CPU {:.1}% of a core ({} deliveries, {} frames per CPU-s), RSS {} MB (peak {} MB)",
            fr["connected"],
            si(f(&fr["deliveries_per_s"])),
            si(f(&fr["frames_per_s"])),
            100.0 * f(&p["cpu_util"]),
            si(f(&fr["deliveries_per_cpu_s"])),
            si(f(&fr["frames_per_cpu_s"])),
            p["rss_kb"].as_u64().unwrap_or(0) / 1024,
            p["rss_peak_kb"].as_u64().unwrap_or(0) / 1024
        );
    }
    let p = &r["processor"]["process"];
    if !p.is_null() {
        println!(
            "processor        CPU {:.1}% of a core, RSS {} MB",
            100.0 * f(&p["cpu_util"]),
            p["rss_kb"].as_u64().unwrap_or(0) / 1024
        );
    }
    if !r["redis"].is_null() {
        println!(
            "redis            {:.1} commands/s, CPU {:.1}% of a core; by command {}",
            f(&r["redis"]["commands_per_s"]),
            100.0 * f(&r["redis"]["cpu_util"]),
            r["redis"]["by_command_per_s"]
        );
    }
    if let Some(classes) = r["classes"].as_object() {
        for (name, c) in classes {
            let l = &c["latency_ms"];
            println!(
                "{name:<7} rooms    {} rooms, {} viewers, {:.1} msg/s in, {} deliveries/s (expected {}); latency p50 {:.1} ms p99 {:.1} ms; {} lost, {} duplicates",
                c["rooms"],
                c["viewers"],
                f(&c["accepted_per_s"]),
                si(f(&c["deliveries_per_s"])),
                si(f(&c["expected_deliveries_per_s"])),
                f(&l["p50_ms"]),
                f(&l["p99_ms"]),
                c["lost"],
                c["duplicates"]
            );
        }
    }
    println!(
        "loss             {} lost ({} viewers); {} duplicates; ended early {} {}",
        r["lost"], r["viewers_with_loss"], r["duplicates"], r["dropped"], r["ended_early"]
    );
    if r["publish"]["last_refusal"].is_string() {
        println!("last refusal     {}", r["publish"]["last_refusal"]);
    }
}

/// `connect_errors`: how many connections failed; `hold_s`: the measured hold.
pub fn print_idle(r: &serde_json::Value, connect_errors: u64, hold_s: f64) {
    let rss = &r["server_rss_kb"];
    println!("== idle ({}) ==", r["transport"].as_str().unwrap_or(""));
    println!("command          {}", r["command"].as_str().unwrap_or(""));
    println!(
        "connections      {}/{} in {:.1} s ({} errors {}); server gauge {}; {} still open after the hold",
        r["connected"],
        r["clients"],
        f(&r["connect_seconds"]),
        connect_errors,
        r["connect_errors"],
        f(&r["server_connections_gauge"]),
        r["still_open_after_hold"]
    );
    println!(
        "server RSS       baseline {} KB, connected {} KB, after {:.0} s hold {} KB, peak {} KB",
        rss["baseline"], rss["connected"], hold_s, rss["after_hold"], rss["peak"]
    );
    println!(
        "per connection   {:.2} KB (after hold {:.2} KB); server CPU while idle {:.2}% of a core",
        f(&r["server_rss_kb_per_connection"]),
        f(&r["server_rss_kb_per_connection_after_hold"]),
        100.0 * f(&r["server_cpu_util_during_hold"]),
    );
    println!("ended early      {}", r["ended_early"]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_of_runs() {
        let runs = vec![
            json!({"deliveries_per_s": 3.0, "latency_ms": {"p99_ms": 10.0}}),
            json!({"deliveries_per_s": 1.0, "latency_ms": {"p99_ms": 30.0}}),
            json!({"deliveries_per_s": 2.0, "latency_ms": {"p99_ms": 20.0}}),
        ];
        let m = medians(&runs);
        assert_eq!(m["deliveries_per_s"]["median"], 2.0);
        assert_eq!(m["latency_ms.p99_ms"]["median"], 20.0);
        assert_eq!(m["latency_ms.p99_ms"]["max"], 30.0);
    }
}
