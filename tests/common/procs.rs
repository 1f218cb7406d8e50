//! Real processes for the process-level tests (tests/cluster.rs,
//! tests/replay.rs, tests/chaos.rs): `danmaku` roles, and services of a
//! test's own (redis-server, Apache Kafka, MariaDB) where the test kills and
//! restarts them. Every process here is killed when its guard is dropped,
//! also when the test panics.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::StatusCode;

use super::now_ms;

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `DANMAKU_REQUIRE_SERVICES=1`: a missing service fails the test instead of
/// skipping it.
pub fn services_required() -> bool {
    std::env::var("DANMAKU_REQUIRE_SERVICES").as_deref() == Ok("1")
}

/// The URLs in the named environment variables (`DANMAKU_TEST_REDIS_URL`,
/// …), in order; or `None` (the test skips, saying why) when one is unset or
/// empty — a failure with `DANMAKU_REQUIRE_SERVICES=1`.
pub fn service_urls(names: &[&str]) -> Option<Vec<String>> {
    let found: Vec<Option<String>> = names
        .iter()
        .map(|n| std::env::var(n).ok().filter(|v| !v.trim().is_empty()))
        .collect();
    if found.iter().all(Option::is_some) {
        return Some(found.into_iter().flatten().collect());
    }
    assert!(
        !services_required(),
        "DANMAKU_REQUIRE_SERVICES=1 but one of {names:?} is not set (scripts/test.sh sets them)"
    );
    eprintln!("skipping: set {names:?}");
    None
}

/// The replay suites' services: (live Redis, replay Redis, MariaDB) URLs, as
/// [`service_urls`] finds them.
pub fn replay_service_urls() -> Option<(String, String, String)> {
    let urls = service_urls(&[
        "DANMAKU_TEST_REDIS_URL",
        "DANMAKU_TEST_REPLAY_REDIS_URL",
        "DANMAKU_TEST_MYSQL_URL",
    ])?;
    let [live, replay, mysql] = <[String; 3]>::try_from(urls).ok()?;
    Some((live, replay, mysql))
}

/// Whether `program` runs (`program --version` or similar exits at all).
pub fn have_program(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

/// `None` when every program in `programs` is there; otherwise skips (prints
/// why) or, with `DANMAKU_REQUIRE_SERVICES=1`, fails.
pub fn require_programs(programs: &[&str]) -> Option<()> {
    let missing: Vec<&str> = programs
        .iter()
        .copied()
        .filter(|p| !have_program(p))
        .collect();
    if missing.is_empty() {
        return Some(());
    }
    assert!(
        !services_required(),
        "DANMAKU_REQUIRE_SERVICES=1 but {missing:?} not found on PATH (scripts/test.sh installs them)"
    );
    eprintln!("skipping: {missing:?} not found on PATH (scripts/test.sh installs them)");
    None
}

fn wait_port(what: &str, host: &str, port: u16, within: Duration, child: &mut Child) {
    let deadline = Instant::now() + within;
    while std::net::TcpStream::connect((host, port)).is_err() {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{what} exited before opening {host}:{port}: {status}");
        }
        assert!(
            Instant::now() < deadline,
            "{what} did not open {host}:{port} in {within:?}"
        );
        std::thread::sleep(Duration::from_millis(25));
    }
}

fn kill_child(child: &mut Option<Child>) {
    if let Some(mut c) = child.take() {
        let _ = c.kill();
        let _ = c.wait();
    }
}

fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .stderr(Stdio::null())
        .status();
}

/// [`signal`] to a child, if started.
fn signal_child(child: &Option<Child>, sig: &str) {
    if let Some(c) = child {
        signal(c.id(), sig);
    }
}

/// A scratch directory, removed when dropped.
pub struct ScratchDir(pub PathBuf);

impl ScratchDir {
    pub fn new(what: &str) -> ScratchDir {
        let dir = std::env::temp_dir().join(format!(
            "danmaku-{what}-{}-{}-{}",
            std::process::id(),
            now_ms(),
            free_port()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        ScratchDir(dir)
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

// ---- danmaku roles -----------------------------------------------------------

/// Where a node runs: a network namespace (`ip netns exec NETNS`) and the
/// address it listens on there (tests/common/netns.rs).
#[derive(Clone, Debug)]
pub struct Placement {
    pub netns: String,
    pub ip: std::net::Ipv4Addr,
}

/// One `danmaku` process (`front`, `processor`, `archiver`); killed when
/// dropped.
pub struct Node {
    child: Option<Child>,
    pub port: u16,
    pub role: &'static str,
    env: Vec<(String, String)>,
    /// `None`: the test's own network namespace, on loopback.
    placement: Option<Placement>,
}

impl Node {
    pub fn base(&self) -> String {
        format!("http://{}", self.addr())
    }

    /// Where clients reach it.
    pub fn addr(&self) -> std::net::SocketAddr {
        let ip = self
            .placement
            .as_ref()
            .map_or(std::net::Ipv4Addr::LOCALHOST, |p| p.ip);
        (ip, self.port).into()
    }

    /// Starts `danmaku ROLE` on a free port with `env` (plus `DANMAKU_LISTEN`
    /// and `DANMAKU_LOG=warn` unless `env` sets it).
    pub fn spawn(role: &'static str, env: &[(String, String)]) -> Node {
        Self::spawn_at(role, env, None)
    }

    /// [`Node::spawn`], in `placement`'s network namespace when given.
    pub fn spawn_at(
        role: &'static str,
        env: &[(String, String)],
        placement: Option<Placement>,
    ) -> Node {
        let mut node = Node {
            child: None,
            port: free_port(),
            role,
            env: env
                .iter()
                .filter(|(k, _)| k != "DANMAKU_LISTEN")
                .cloned()
                .collect(),
            placement,
        };
        node.start();
        node
    }

    fn start(&mut self) {
        let bin = env!("CARGO_BIN_EXE_danmaku");
        // `ip netns exec` execs the program: the child's pid is danmaku's.
        let mut cmd = match &self.placement {
            None => Command::new(bin),
            Some(p) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", &p.netns, bin]);
                c
            }
        };
        cmd.arg(self.role)
            .env("DANMAKU_LOG", "warn")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("DANMAKU_LISTEN", self.addr().to_string())
            .stdout(node_log(self.role, self.port, &self.env))
            .stderr(Stdio::inherit());
        self.child = Some(cmd.spawn().expect("spawn danmaku"));
    }

    /// `/readyz` answers 200 now.
    pub async fn is_ready(&self, http: &reqwest::Client) -> bool {
        matches!(
            http.get(format!("{}/readyz", self.base())).send().await,
            Ok(r) if r.status() == StatusCode::OK
        )
    }

    /// Waits (up to 30 s) until `/readyz` answers 200.
    pub async fn ready(&self, http: &reqwest::Client) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.is_ready(http).await {
            assert!(
                Instant::now() < deadline,
                "{} on port {} did not become ready",
                self.role,
                self.port
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A sample of the node's `/metrics` (0 when absent).
    pub async fn metric(&self, http: &reqwest::Client, sample: &str) -> f64 {
        let text = http
            .get(format!("{}/metrics", self.base()))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        super::metric_value(&text, sample).unwrap_or(0.0)
    }

    /// SIGKILL, and reap it.
    pub fn sigkill(&mut self) {
        kill_child(&mut self.child);
    }

    /// SIGTERM: the graceful shutdown (drain, close viewers, stop).
    pub fn sigterm(&self) {
        if let Some(c) = &self.child {
            signal(c.id(), "TERM");
        }
    }

    /// The process id (for /proc samples).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Waits (up to `within`) for the process to exit by itself; its exit
    /// status, or `None` if it is still running.
    pub async fn exited(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(status)) = c.try_wait() {
                    return Some(status);
                }
            }
            if Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The same role again (after a kill), on a new port.
    pub fn restart(&mut self) {
        self.sigkill();
        self.port = free_port();
        self.start();
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.sigkill();
    }
}

/// Where a node's log (its stdout) goes: `DANMAKU_TEST_NODE_LOGS=DIR` (in the
/// node's env, for a test that reads its log, or in the test's, for a
/// failure's post-mortem) keeps one file per process there
/// (`ROLE-PORT.log`); otherwise nowhere.
fn node_log(role: &str, port: u16, env: &[(String, String)]) -> Stdio {
    let dir = env
        .iter()
        .find(|(k, _)| k == "DANMAKU_TEST_NODE_LOGS")
        .map(|(_, v)| v.clone())
        .ok_or(())
        .or_else(|()| std::env::var("DANMAKU_TEST_NODE_LOGS"));
    match dir {
        Ok(dir) if !dir.trim().is_empty() => {
            let _ = std::fs::create_dir_all(&dir);
            let path = PathBuf::from(dir).join(format!("{role}-{port}.log"));
            match std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
            {
                Ok(f) => Stdio::from(f),
                Err(_) => Stdio::null(),
            }
        }
        _ => Stdio::null(),
    }
}

// ---- redis-server ------------------------------------------------------------

/// A redis-server of the test's own on a free port, with an AOF fsynced on
/// every write (`appendfsync always`), so whatever Redis acknowledged
/// survives a SIGKILL; it restarts on the same port.
pub struct OwnRedis {
    child: Option<Child>,
    pub port: u16,
    /// The address it binds to.
    host: String,
    dir: ScratchDir,
}

impl OwnRedis {
    pub fn start() -> OwnRedis {
        Self::start_on("127.0.0.1")
    }

    /// Bound to `host` (an address of this network namespace).
    pub fn start_on(host: &str) -> OwnRedis {
        let mut r = OwnRedis {
            child: None,
            port: free_port(),
            host: host.to_string(),
            dir: ScratchDir::new("redis"),
        };
        r.spawn();
        r
    }

    /// Starts redis-server (again) on its port and data directory.
    pub fn spawn(&mut self) {
        let mut child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", &self.host])
            // Clients from other addresses than loopback (network
            // namespaces) are the point of binding elsewhere.
            .args(["--protected-mode", "no"])
            .args([
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
            ])
            .arg("--dir")
            .arg(&self.dir.0)
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server on PATH");
        wait_port(
            "redis-server",
            &self.host,
            self.port,
            Duration::from_secs(10),
            &mut child,
        );
        self.child = Some(child);
    }

    pub fn url(&self) -> String {
        format!("redis://{}:{}", self.host, self.port)
    }

    /// SIGTERM (redis flushes its AOF), wait, start again on the same port.
    pub fn restart(&mut self, down_for: Duration) {
        if let Some(mut c) = self.child.take() {
            signal(c.id(), "TERM");
            let _ = c.wait();
        }
        std::thread::sleep(down_for);
        self.spawn();
    }

    /// SIGKILL: no shutdown of any kind (the AOF holds every write Redis
    /// acknowledged, fsynced).
    pub fn sigkill(&mut self) {
        kill_child(&mut self.child);
    }

    /// SIGSTOP: its connections stay open (the kernel still accepts new
    /// ones) and nothing answers, the shape of a partition that drops
    /// packets, until [`OwnRedis::thaw`].
    pub fn freeze(&self) {
        signal_child(&self.child, "STOP");
    }

    /// SIGCONT after [`OwnRedis::freeze`]: it answers what waited.
    pub fn thaw(&self) {
        signal_child(&self.child, "CONT");
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        kill_child(&mut self.child);
    }
}

// ---- Apache Kafka (scripts/kafka.sh) ------------------------------------------

fn kafka_script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/kafka.sh")
}

/// `Some(())` once the Apache Kafka jars are there (`scripts/kafka.sh fetch`:
/// a no-op when cached, else mvn fetches them); otherwise skips (prints why)
/// or, with `DANMAKU_REQUIRE_SERVICES=1`, fails.
pub fn require_kafka() -> Option<()> {
    let out = Command::new("bash")
        .arg(kafka_script())
        .arg("fetch")
        .stdout(Stdio::null())
        .output();
    let why = match out {
        Ok(o) if o.status.success() => return Some(()),
        Ok(o) => String::from_utf8_lossy(&o.stderr).trim().to_string(),
        Err(e) => format!("bash: {e}"),
    };
    assert!(
        !services_required(),
        "DANMAKU_REQUIRE_SERVICES=1 but scripts/kafka.sh fetch failed (needs java and mvn): {why}"
    );
    eprintln!("skipping: no Apache Kafka (scripts/kafka.sh fetch failed: {why})");
    None
}

/// The line the broker logs once it serves clients.
const KAFKA_READY: &str = "Kafka Server started";
/// Bound of a broker start (JVM start, log recovery, registration).
const KAFKA_START: Duration = Duration::from_secs(120);

/// An Apache Kafka node of the test's own (one KRaft broker + controller,
/// `scripts/kafka.sh run`), restartable on the same ports and log directory.
/// The child is the JVM itself, so [`Kafka::sigkill`] kills the broker with
/// no shutdown of any kind.
pub struct Kafka {
    child: Option<Child>,
    pub port: u16,
    /// The port advertised to clients (the listener's, or a proxy's).
    pub advertised: u16,
    /// The client listener's address (`DANMAKU_KAFKA_HOST` of scripts/kafka.sh).
    host: String,
    controller: u16,
    dir: ScratchDir,
    starts: u32,
}

impl Kafka {
    /// A broker on a free port; panics if it does not come up.
    pub fn start() -> Kafka {
        Self::start_at(free_port(), None)
    }

    /// A broker listening on `port`, advertising `advertised` (a proxy's
    /// port, say) or else its own.
    pub fn start_at(port: u16, advertised: Option<u16>) -> Kafka {
        Self::start_on("127.0.0.1", port, advertised)
    }

    /// A broker whose client listener binds to and advertises `host`.
    pub fn start_on(host: &str, port: u16, advertised: Option<u16>) -> Kafka {
        let mut k = Kafka {
            child: None,
            port,
            advertised: advertised.unwrap_or(port),
            host: host.to_string(),
            controller: free_port(),
            dir: ScratchDir::new("kafka"),
            starts: 0,
        };
        k.spawn();
        k
    }

    pub fn brokers(&self) -> String {
        format!("{}:{}", self.host, self.advertised)
    }

    /// Starts the broker (again) and waits until it serves clients. Each
    /// start logs to its own file in the scratch directory.
    fn spawn(&mut self) {
        self.starts += 1;
        let log = self.dir.0.join(format!("kafka-{}.log", self.starts));
        let out = std::fs::File::create(&log).unwrap();
        let began = Instant::now();
        let mut child = Command::new("bash")
            .arg(kafka_script())
            .arg("run")
            .arg(self.port.to_string())
            .arg(self.dir.0.join("node"))
            .arg(self.controller.to_string())
            .arg(self.advertised.to_string())
            .env("DANMAKU_KAFKA_HOST", &self.host)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("bash scripts/kafka.sh run");
        let tail = |log: &PathBuf| {
            let printed = std::fs::read_to_string(log).unwrap_or_default();
            let lines: Vec<&str> = printed.lines().collect();
            lines[lines.len().saturating_sub(30)..].join("\n")
        };
        loop {
            if std::fs::read_to_string(&log)
                .map(|s| s.contains(KAFKA_READY))
                .unwrap_or(false)
            {
                break;
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "kafka exited before it was ready ({status}):\n{}",
                    tail(&log)
                );
            }
            if began.elapsed() > KAFKA_START {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "kafka was not ready on {}:{} in {KAFKA_START:?}:\n{}",
                    self.host,
                    self.port,
                    tail(&log)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        eprintln!(
            "kafka on {}:{} ready in {:.1} s (start {})",
            self.host,
            self.port,
            began.elapsed().as_secs_f64(),
            self.starts
        );
        self.child = Some(child);
    }

    /// SIGKILL: no shutdown of any kind. Whatever the broker acknowledged is
    /// in its log files (the page cache survives the process).
    pub fn sigkill(&mut self) {
        kill_child(&mut self.child);
    }

    /// Starts again on the same ports and log directory (after a kill).
    pub fn restart(&mut self) {
        self.sigkill();
        self.spawn();
    }

    /// SIGSTOP the JVM: connections stay open and nothing answers (a
    /// produce request waits) until [`Kafka::thaw`].
    pub fn freeze(&self) {
        signal_child(&self.child, "STOP");
    }

    /// SIGCONT after [`Kafka::freeze`]: it serves what waited.
    pub fn thaw(&self) {
        signal_child(&self.child, "CONT");
    }
}

impl Drop for Kafka {
    fn drop(&mut self) {
        kill_child(&mut self.child);
    }
}

// ---- MariaDB -----------------------------------------------------------------

/// A MariaDB of the test's own (scripts/mariadb-test.sh), restartable on the
/// same port and data directory. Stopped when dropped.
pub struct OwnMariaDb {
    pub port: u16,
    dir: ScratchDir,
}

fn mariadb_script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/mariadb-test.sh")
}

impl OwnMariaDb {
    pub fn start() -> OwnMariaDb {
        let m = OwnMariaDb {
            port: free_port(),
            dir: ScratchDir::new("mariadb"),
        };
        m.run_script("start");
        m
    }

    fn run_script(&self, cmd: &str) {
        let status = Command::new("bash")
            .arg(mariadb_script())
            .arg(cmd)
            .arg(self.port.to_string())
            .arg(&self.dir.0)
            .status()
            .expect("bash scripts/mariadb-test.sh");
        assert!(status.success(), "scripts/mariadb-test.sh {cmd} failed");
    }

    /// `mysql://root@127.0.0.1:PORT/danmaku_test`
    pub fn url(&self) -> String {
        format!("mysql://root@127.0.0.1:{}/danmaku_test", self.port)
    }

    fn pid(&self) -> Option<u32> {
        std::fs::read_to_string(self.dir.0.join("mysqld.pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// SIGKILL the server (no shutdown); returns once it is gone.
    pub fn sigkill(&self) {
        let Some(pid) = self.pid() else { return };
        signal(pid, "KILL");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::path::Path::new(&format!("/proc/{pid}")).exists() {
            // A zombie until its parent (nohup'd, re-parented) is reaped.
            let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            if state.split_whitespace().nth(2) == Some("Z") {
                break;
            }
            assert!(Instant::now() < deadline, "mariadbd {pid} did not die");
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = std::fs::remove_file(self.dir.0.join("mysqld.pid"));
    }

    /// Starts the server again on the same port and data (after a kill);
    /// returns once it answers.
    pub fn start_again(&self) {
        self.run_script("start");
    }
}

impl Drop for OwnMariaDb {
    fn drop(&mut self) {
        if self.pid().is_some() {
            let _ = Command::new("bash")
                .arg(mariadb_script())
                .arg("stop")
                .arg(self.port.to_string())
                .arg(&self.dir.0)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}
