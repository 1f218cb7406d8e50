//! permessage-deflate with a client the server was not written against: the
//! Python `websockets` library (Debian's python3-websockets, installed by
//! scripts/test.sh) connects to a real server offering compression, and
//! inflates the server's compressed frames to every message once, in order
//! (tests/python/ws_deflate_client.py).

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::procs::services_required;
use common::*;
use reqwest::StatusCode;
use serde_json::Value;
use std::io::BufRead;

const MESSAGES: usize = 40;

/// The Python with python3-websockets: Debian's (`DANMAKU_TEST_PYTHON` to
/// choose another).
fn python() -> Option<String> {
    let python =
        std::env::var("DANMAKU_TEST_PYTHON").unwrap_or_else(|_| "/usr/bin/python3".to_string());
    let ok = std::process::Command::new(&python)
        .args(["-c", "import websockets"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if ok {
        return Some(python);
    }
    assert!(
        !services_required(),
        "DANMAKU_REQUIRE_SERVICES=1 but {python} cannot import websockets \
         (apt-get install python3-websockets; scripts/test.sh does)"
    );
    eprintln!("skipping: {python} cannot import websockets");
    None
}

/// A danmaku text long enough that even a one-message frame is over
/// `fanout.ws_compression_min_bytes` (256) and goes compressed.
fn text(i: usize) -> String {
    format!("第{i}条弹幕 主播太强了!!! gg wp, what a play #{i} 哈哈哈哈 ").repeat(2)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_websockets_inflates_the_servers_compressed_frames() {
    let Some(python) = python() else {
        return;
    };
    let t = TestServer::start_with(|c| {
        c.ration.budget_tiers = vec![(0, 100_000)];
        c.ingest.user_rate_per_s = 100_000.0;
        c.ingest.user_burst = 100_000.0;
    })
    .await;
    let room = t.room("python-deflate");
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/python/ws_deflate_client.py"
    );
    let mut child = Python(
        std::process::Command::new(&python)
            .arg(script)
            .arg(format!("{}/v1/rooms/{room}/ws", t.ws_base))
            .arg(MESSAGES.to_string())
            .arg("20")
            .stdout(Stdio::piped())
            .spawn()
            .expect("python runs"),
    );
    // Its output lines, read on a thread of their own.
    let stdout = child.0.stdout.take().unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for l in std::io::BufReader::new(stdout).lines() {
            let Ok(l) = l else { break };
            if tx.send(l).is_err() {
                break;
            }
        }
    });

    let opened = line(&mut rx).await;
    assert_eq!(opened["hello"]["type"], "hello", "{opened}");
    assert_eq!(
        opened["extensions"],
        serde_json::json!(["PerMessageDeflate"]),
        "{opened}"
    );
    assert_eq!(
        opened["answer"],
        "permessage-deflate; server_no_context_takeover; client_no_context_takeover",
        "{opened}"
    );

    let deflated_before = t
        .metric(r#"danmaku_ws_bytes_total{encoding="deflate"}"#)
        .await;
    let token = t.token("u1", "Fan");
    for i in 0..MESSAGES {
        let (s, body, _) = t
            .post_danmaku(&room, &token, &format!("m{i}"), &text(i))
            .await;
        assert_eq!(s, StatusCode::ACCEPTED, "post {i}: {body}");
    }
    let got = line(&mut rx).await;
    let messages = got["messages"].as_array().expect("messages");
    let seqs: Vec<u64> = messages
        .iter()
        .map(|m| m["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(
        seqs,
        (1..=MESSAGES as u64).collect::<Vec<_>>(),
        "every message once, in order"
    );
    let texts: Vec<&str> = messages
        .iter()
        .map(|m| m["text"].as_str().unwrap())
        .collect();
    let want: Vec<String> = (0..MESSAGES).map(text).collect();
    assert_eq!(texts, want, "the texts, inflated intact");
    let compressed = got["compressed_frames"].as_u64().unwrap();
    assert!(
        compressed > 0,
        "frames of {} messages over {} batches came compressed: {got}",
        MESSAGES,
        got["batches"]
    );
    let deflated = t
        .metric(r#"danmaku_ws_bytes_total{encoding="deflate"}"#)
        .await;
    assert!(
        deflated > deflated_before,
        "the server sent compressed bytes: {deflated_before} -> {deflated}"
    );
    assert!(child.0.wait().expect("python exits").success());
}

/// The Python client's next output line, as JSON.
async fn line(rx: &mut tokio::sync::mpsc::UnboundedReceiver<String>) -> Value {
    let l = tokio::time::timeout(Duration::from_secs(30), rx.recv())
        .await
        .expect("the Python client answers in time")
        .expect("a line from the Python client");
    serde_json::from_str(&l).unwrap_or_else(|e| panic!("{e}: {l}"))
}

/// The Python client, killed if the test fails before it exits.
struct Python(std::process::Child);

impl Drop for Python {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
