//! What Redis says it did: `INFO commandstats` (calls per command) and
//! `INFO cpu` (its own CPU seconds), read before and after the measured
//! window so a run reports Redis commands/s by command and Redis CPU.

use std::collections::BTreeMap;

use anyhow::Context;

/// One reading of Redis.
#[derive(Clone, Debug, Default)]
pub struct RedisInfo {
    /// Calls so far per command (lower case), `info` itself left out.
    pub calls: BTreeMap<String, u64>,
    /// used_cpu_user + used_cpu_sys, seconds.
    pub cpu_s: f64,
}

pub struct RedisProbe {
    conn: redis::aio::MultiplexedConnection,
}

impl RedisProbe {
    pub async fn connect(url: &str) -> anyhow::Result<RedisProbe> {
        let client = redis::Client::open(url).with_context(|| format!("Redis URL {url:?}"))?;
        let conn = client
            .get_multiplexed_async_connection()
            .await
            .with_context(|| format!("connecting to {url}"))?;
        Ok(RedisProbe { conn })
    }

    pub async fn read(&mut self) -> anyhow::Result<RedisInfo> {
        let stats: String = redis::cmd("INFO")
            .arg("commandstats")
            .query_async(&mut self.conn)
            .await?;
        let cpu: String = redis::cmd("INFO")
            .arg("cpu")
            .query_async(&mut self.conn)
            .await?;
        Ok(RedisInfo {
            calls: command_calls(&stats),
            cpu_s: cpu_seconds(&cpu),
        })
    }
}

/// `cmdstat_<name>:calls=N,…` lines → name → N (`info` left out: the probe's own).
pub fn command_calls(info: &str) -> BTreeMap<String, u64> {
    info.lines()
        .filter_map(|l| {
            let (name, rest) = l.trim().strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = rest
                .strip_prefix("calls=")?
                .split(',')
                .next()?
                .parse()
                .ok()?;
            (name != "info").then(|| (name.to_string(), calls))
        })
        .collect()
}

fn cpu_seconds(info: &str) -> f64 {
    info.lines()
        .filter_map(|l| {
            let (k, v) = l.trim().split_once(':')?;
            matches!(k, "used_cpu_user" | "used_cpu_sys")
                .then(|| v.parse::<f64>().ok())
                .flatten()
        })
        .sum()
}

/// Commands per second by command between two readings, and their total.
pub fn rates(a: &RedisInfo, b: &RedisInfo, secs: f64) -> (BTreeMap<String, f64>, f64) {
    let by: BTreeMap<String, f64> = b
        .calls
        .iter()
        .filter_map(|(k, n)| {
            let d = n.saturating_sub(a.calls.get(k).copied().unwrap_or(0));
            (d > 0).then(|| (k.clone(), d as f64 / secs))
        })
        .collect();
    let total = by.values().sum();
    (by, total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_commandstats_and_cpu() {
        let stats = "# Commandstats\r\ncmdstat_zrangebyscore:calls=66,usec=10,usec_per_call=0.15,rejected_calls=0,failed_calls=0\r\ncmdstat_info:calls=9,usec=1\r\ncmdstat_publish:calls=5,usec=1\r\n";
        let calls = command_calls(stats);
        assert_eq!(calls.len(), 2);
        assert_eq!(calls["zrangebyscore"], 66);
        assert_eq!(calls["publish"], 5);
        let cpu = "# CPU\r\nused_cpu_sys:1.5\r\nused_cpu_user:2.25\r\nused_cpu_sys_children:9\r\n";
        assert_eq!(cpu_seconds(cpu), 3.75);
        let a = RedisInfo {
            calls: [("publish".to_string(), 5)].into(),
            cpu_s: 0.0,
        };
        let b = RedisInfo {
            calls: [("publish".to_string(), 25), ("get".to_string(), 10)].into(),
            cpu_s: 1.0,
        };
        let (by, total) = rates(&a, &b, 2.0);
        assert_eq!(by["publish"], 10.0);
        assert_eq!(by["get"], 5.0);
        assert_eq!(total, 15.0);
    }
}
