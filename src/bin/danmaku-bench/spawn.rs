//! `--spawn PATH`: the tool starts the server itself for each run (pinned to
//! `--server-cpus`, with `--server-config` and `--server-env`), so a fresh
//! process gives every run the same empty baseline, and stops it afterwards.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

pub struct Spawned {
    child: Child,
    pub log: PathBuf,
}

impl Spawned {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

/// Parses "0", "0,1" or "0-1" into CPU numbers.
pub fn parse_cpus(list: &str) -> anyhow::Result<Vec<usize>> {
    let mut out = Vec::new();
    for part in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (usize, usize) = (a.parse()?, b.parse()?);
                out.extend(a..=b);
            }
            None => out.push(part.parse()?),
        }
    }
    if out.is_empty() || out.iter().any(|&c| c >= libc::CPU_SETSIZE as usize) {
        bail!("bad CPU list {list:?}");
    }
    Ok(out)
}

/// Starts `path <role> --listen <listen> [--config cfg]` with `env` (K=V),
/// pinned to `cpus`; stderr/stdout go to a log file. `role` is `serve`, or
/// `front` / `processor` for the roles as separate processes.
pub fn start(
    path: &Path,
    role: &str,
    listen: &str,
    config: Option<&Path>,
    env: &[String],
    cpus: &[usize],
    run: usize,
) -> anyhow::Result<Spawned> {
    let log = std::env::temp_dir().join(format!(
        "danmaku-bench-{role}-{}-{}-{run}.log",
        std::process::id(),
        listen.replace([':', '.', '[', ']'], "_")
    ));
    let out = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
    let mut cmd = Command::new(path);
    cmd.arg(role).arg("--listen").arg(listen);
    if let Some(c) = config {
        cmd.arg("--config").arg(c);
    }
    if std::env::var_os("DANMAKU_LOG").is_none() {
        cmd.env("DANMAKU_LOG", "warn");
    }
    for kv in env {
        let (k, v) = kv
            .split_once('=')
            .with_context(|| format!("--server-env {kv:?}: expected KEY=VALUE"))?;
        cmd.env(k, v);
    }
    cmd.stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out);
    let cpus = cpus.to_vec();
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        use std::os::unix::process::CommandExt;
        cmd.pre_exec(move || {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            for &c in &cpus {
                libc::CPU_SET(c, &mut set);
            }
            if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .with_context(|| format!("starting {}", path.display()))?;
    Ok(Spawned { child, log })
}

/// SIGTERM, then SIGKILL if it has not exited within `grace`.
pub fn stop(mut s: Spawned, grace: Duration) {
    // SAFETY: signalling our own child.
    unsafe {
        libc::kill(s.child.id() as libc::pid_t, libc::SIGTERM);
    }
    let t0 = Instant::now();
    while t0.elapsed() < grace {
        if let Ok(Some(_)) = s.child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = s.child.kill();
    let _ = s.child.wait();
}

/// True once the spawned process still runs (it may have failed to start).
pub fn running(s: &mut Spawned) -> bool {
    matches!(s.child.try_wait(), Ok(None))
}
