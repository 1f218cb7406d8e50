//! Cluster state across real processes (`docs/architecture.md`, "Control
//! plane"): two `serve` nodes on one Redis, as behind a load balancer.
//! Settings, mutes and the per-user post rate set or spent on one node hold
//! on the other; moderators act only on their rooms.
//!
//! Needs `DANMAKU_TEST_REDIS_URL` (scripts/test.sh sets it); skips without
//! it unless `DANMAKU_REQUIRE_SERVICES=1`, where it fails.

mod common;

use std::time::{Duration, Instant};

use common::pair::{unique, within, Pair, ADMIN};
use common::procs::ScratchDir;
use common::{test_redis_url, WsViewer};
use danmaku::auth::moderator::Moderators;
use reqwest::StatusCode;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_put_on_one_node_hold_on_the_other_and_after_its_restart() {
    let Some(redis) = test_redis_url() else {
        return;
    };
    let mut p = Pair::start(&redis, &[]).await;
    let room = unique("settings");
    let path = format!("/v1/admin/rooms/{room}/settings");
    // B has the room cached with its defaults before A changes it.
    let (s, before) = p.admin(&p.b, "GET", &path, None).await;
    assert_eq!(s, StatusCode::OK, "{before}");
    assert!(before["settings"].get("budget_per_s").is_none(), "{before}");
    let (s, _) = p.post(&p.b, &room, "early", "m0").await;
    assert_eq!(s, StatusCode::ACCEPTED);

    let (s, body) = p
        .admin(
            &p.a,
            "PUT",
            &path,
            Some(json!({"budget_per_s": 37, "blocked_words": ["zzbad"]})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let on_b = within(Duration::from_secs(2), || async {
        let (_, v) = p.admin(&p.b, "GET", &path, None).await;
        v["settings"]["budget_per_s"] == 37
    })
    .await;
    assert!(on_b, "settings reached node B within 2 s");
    let token = p.auth.issue("writer", "W", 600);
    let (s, body) = p
        .call(
            &p.b,
            reqwest::Method::POST,
            &format!("/v1/rooms/{room}/danmaku"),
            &token,
            Some(json!({"client_msg_id": "bad1", "text": "so ZZBAD here"})),
        )
        .await;
    assert_eq!(
        s,
        StatusCode::BAD_REQUEST,
        "room blocked word applies on B: {body}"
    );

    p.b.restart();
    p.b.ready(&p.http).await;
    let (_, after) = p.admin(&p.b, "GET", &path, None).await;
    assert_eq!(
        after["settings"]["budget_per_s"], 37,
        "kept across a restart: {after}"
    );
    assert_eq!(after["settings"]["blocked_words"], json!(["zzbad"]));
    assert_eq!(after["effective"]["budget_per_s"], 37);

    // Clearing on B shows on A.
    let (s, _) = p
        .admin(&p.b, "PATCH", &path, Some(json!({"budget_per_s": null})))
        .await;
    assert_eq!(s, StatusCode::OK);
    let cleared = within(Duration::from_secs(2), || async {
        let (_, v) = p.admin(&p.a, "GET", &path, None).await;
        v["settings"].get("budget_per_s").is_none()
    })
    .await;
    assert!(cleared, "a cleared setting is cleared on A too");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_muted_on_one_node_is_refused_on_the_other_until_unmuted() {
    let Some(redis) = test_redis_url() else {
        return;
    };
    let p = Pair::start(&redis, &[]).await;
    let room = unique("mute");
    let user = unique("loud");
    let (s, _) = p.post(&p.b, &room, &user, "before").await;
    assert_eq!(s, StatusCode::ACCEPTED, "posts before the mute");
    let token = p.auth.issue(&user, "Loud", 600);
    let mut ws = WsViewer::connect(&format!(
        "ws://127.0.0.1:{}/v1/rooms/{room}/ws?token={token}",
        p.b.port
    ))
    .await;

    let (s, body) = p.mute_in_room(&p.a, &room, &user, 60).await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(body["mute"]["by"], "operator");
    let refused = p
        .refused_as_muted(&p.b, &room, &user, Duration::from_secs(2))
        .await;
    assert!(refused, "HTTP posts on B get 403 muted within 2 s");
    ws.send_json(&json!({"type": "send", "client_msg_id": "ws1", "text": "hi"}))
        .await;
    let answer = loop {
        let v = ws
            .next_json(Duration::from_secs(5))
            .await
            .expect("an answer");
        if v["type"] != "batch" {
            break v;
        }
    };
    assert_eq!(answer["type"], "error", "{answer}");
    assert_eq!(answer["code"], "muted", "{answer}");

    let (_, list) = p
        .admin(&p.b, "GET", &format!("/v1/admin/rooms/{room}/mutes"), None)
        .await;
    assert_eq!(list["mutes"][0]["user"], user.as_str(), "{list}");
    let (s, _) = p
        .admin(
            &p.a,
            "DELETE",
            &format!("/v1/admin/rooms/{room}/mutes/{user}"),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let mut n = 0;
    let back = within(Duration::from_secs(2), || {
        n += 1;
        let id = format!("after{n}");
        let p = &p;
        let room = &room;
        let user = &user;
        async move { p.post(&p.b, room, user, &id).await.0 == StatusCode::ACCEPTED }
    })
    .await;
    assert!(back, "unmuted, the user posts again on B");
    assert_eq!(
        error_of(
            p.admin(
                &p.a,
                "DELETE",
                &format!("/v1/admin/rooms/{room}/mutes/{user}"),
                None,
            )
            .await
        ),
        (StatusCode::NOT_FOUND, "not_muted".to_string())
    );

    // A global mute (operators) holds in every room, on both nodes.
    let (s, _) = p
        .admin(
            &p.b,
            "PUT",
            &format!("/v1/admin/mutes/{user}"),
            Some(json!({"duration_s": 30})),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(
        error_of(p.post(&p.a, &unique("elsewhere"), &user, "g1").await),
        (StatusCode::FORBIDDEN, "muted".to_string())
    );
    let (s, _) = p
        .admin(&p.a, "DELETE", &format!("/v1/admin/mutes/{user}"), None)
        .await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = p.post(&p.b, &room, &user, "g2").await;
    assert_eq!(s, StatusCode::ACCEPTED, "global unmute holds at once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_posting_through_both_nodes_gets_one_users_rate() {
    let Some(redis) = test_redis_url() else {
        return;
    };
    let (rate, burst) = (5.0, 5.0);
    let p = Pair::start(
        &redis,
        &[
            ("DANMAKU_INGEST__USER_RATE_PER_S", "5"),
            ("DANMAKU_INGEST__USER_BURST", "5"),
        ],
    )
    .await;
    let room = unique("rate");
    let user = unique("fast");
    let started = Instant::now();
    let (mut accepted, mut limited) = (0u32, 0u32);
    let mut i = 0;
    while started.elapsed() < Duration::from_secs(3) {
        let node = if i % 2 == 0 { &p.a } else { &p.b };
        let (s, body) = p.post(node, &room, &user, &format!("r{i}")).await;
        match s {
            StatusCode::ACCEPTED => accepted += 1,
            StatusCode::TOO_MANY_REQUESTS => {
                assert_eq!(body["error"]["code"], "rate_limited");
                limited += 1;
            }
            other => panic!("unexpected {other}: {body}"),
        }
        i += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let secs = started.elapsed().as_secs_f64();
    let one_user = burst + rate * secs;
    assert!(
        limited > 0,
        "the rate bites ({accepted} accepted in {secs:.1} s)"
    );
    assert!(
        f64::from(accepted) <= one_user + 1.0,
        "{accepted} accepted through two nodes in {secs:.1} s; one user's rate allows {one_user:.0}"
    );
    assert!(
        f64::from(accepted) >= one_user - burst,
        "{accepted} accepted: the user still gets its rate"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moderators_act_on_their_rooms_only_and_are_named() {
    let Some(redis) = test_redis_url() else {
        return;
    };
    let logs = ScratchDir::new("moderator-logs");
    let dir = logs.0.to_string_lossy().to_string();
    let p = Pair::start(
        &redis,
        &[
            ("DANMAKU_TEST_NODE_LOGS", dir.as_str()),
            ("DANMAKU_LOG", "info"),
        ],
    )
    .await;
    let (mine, theirs) = (unique("mine"), unique("theirs"));
    let moderator = Moderators::new(ADMIN, 0).issue("mod-ann", &[mine.as_str()], 600);
    let put = reqwest::Method::PUT;
    let body = Some(json!({"duration_s": 60}));
    let (s, ok) = p
        .call(
            &p.a,
            put.clone(),
            &format!("/v1/admin/rooms/{mine}/mutes/troll"),
            &moderator,
            body.clone(),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{ok}");
    assert_eq!(ok["mute"]["by"], "moderator:mod-ann");
    assert_eq!(
        error_of(
            p.call(
                &p.b,
                put.clone(),
                &format!("/v1/admin/rooms/{theirs}/mutes/troll"),
                &moderator,
                body.clone(),
            )
            .await
        ),
        (StatusCode::FORBIDDEN, "forbidden_room".to_string())
    );
    assert_eq!(
        error_of(
            p.call(
                &p.b,
                put.clone(),
                "/v1/admin/mutes/troll",
                &moderator,
                body.clone(),
            )
            .await
        ),
        (StatusCode::FORBIDDEN, "operators_only".to_string())
    );
    let (_, list) = p
        .admin(
            &p.a,
            "GET",
            &format!("/v1/admin/rooms/{theirs}/mutes"),
            None,
        )
        .await;
    assert_eq!(list["mutes"], json!([]), "the refused mute changed nothing");
    let forged = Moderators::new("not-the-admin-token", 0).issue("mod-eve", &[mine.as_str()], 600);
    let (s, _) = p
        .call(
            &p.a,
            put,
            &format!("/v1/admin/rooms/{mine}/mutes/x"),
            &forged,
            body,
        )
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);

    let logged = within(Duration::from_secs(3), || async {
        let all: String = std::fs::read_dir(&logs.0)
            .into_iter()
            .flatten()
            .flatten()
            .map(|f| std::fs::read_to_string(f.path()).unwrap_or_default())
            .collect();
        all.lines()
            .any(|l| l.contains("mod-ann") && l.contains(&theirs) && l.contains("refused"))
            && all
                .lines()
                .any(|l| l.contains("moderator:mod-ann") && l.contains(&mine) && l.contains("mute"))
    })
    .await;
    assert!(
        logged,
        "the refusal and the action are logged with the moderator's name"
    );
    drop(p.env);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_moderation_input_is_refused_and_changes_nothing() {
    let Some(redis) = test_redis_url() else {
        return;
    };
    let p = Pair::start(&redis, &[]).await;
    let room = unique("bad");
    let settings = format!("/v1/admin/rooms/{room}/settings");
    let mute = format!("/v1/admin/rooms/{room}/mutes/someone");
    for (method, path, body, code) in [
        (
            "PUT",
            settings.as_str(),
            json!({"budget_per_s": 10, "no_such_key": 1}),
            "invalid_body",
        ),
        (
            "PUT",
            settings.as_str(),
            json!({"high_share": 3}),
            "invalid_settings",
        ),
        (
            "PUT",
            mute.as_str(),
            json!({"duration_s": -5}),
            "invalid_duration",
        ),
        (
            "PUT",
            mute.as_str(),
            json!({"duration_s": 0}),
            "invalid_duration",
        ),
        (
            "PUT",
            mute.as_str(),
            json!({"duration_s": 1.5}),
            "invalid_duration",
        ),
        (
            "PUT",
            mute.as_str(),
            json!({"duration_s": 10, "why": "x"}),
            "invalid_body",
        ),
        (
            "PUT",
            &format!("/v1/admin/rooms/{room}/bans/someone"),
            json!({}),
            "invalid_body",
        ),
        (
            "PUT",
            &format!("/v1/admin/rooms/{room}/mutes/a%01b"),
            json!({"duration_s": 10}),
            "bad_user",
        ),
        (
            "PUT",
            "/v1/admin/rooms/bad%20room/mutes/x",
            json!({"duration_s": 10}),
            "bad_room",
        ),
    ] {
        let (s, answer) = p.admin(&p.a, method, path, Some(body.clone())).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{path} {body}: {answer}");
        assert_eq!(answer["error"]["code"], code, "{path} {body}: {answer}");
    }
    let (_, view) = p.admin(&p.b, "GET", &settings, None).await;
    assert!(
        view["settings"].get("budget_per_s").is_none(),
        "nothing changed: {view}"
    );
    let (_, list) = p
        .admin(&p.b, "GET", &format!("/v1/admin/rooms/{room}/mutes"), None)
        .await;
    assert_eq!(list["mutes"], json!([]));
    let (s, _) = p
        .call(
            &p.a,
            reqwest::Method::GET,
            &format!("/v1/admin/rooms/{room}/mutes"),
            "wrong",
            None,
        )
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
}

/// An answer's status and error code.
fn error_of((status, body): (StatusCode, serde_json::Value)) -> (StatusCode, String) {
    (
        status,
        body["error"]["code"].as_str().unwrap_or("").to_string(),
    )
}

/// A WebSocket viewer on `node` (with `token`, if any).
async fn viewer_on(node: &common::procs::Node, room: &str, token: Option<&str>) -> WsViewer {
    let query = token.map(|t| format!("?token={t}")).unwrap_or_default();
    WsViewer::connect(&format!(
        "ws://127.0.0.1:{}/v1/rooms/{room}/ws{query}",
        node.port
    ))
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_retracted_on_one_node_disappears_on_the_other() {
    let Some(redis) = test_redis_url() else {
        return;
    };
    let scratch = ScratchDir::new("retract-archive");
    let archive = format!("sqlite://{}/archive.db?mode=rwc", scratch.0.display());
    let p = Pair::start(&redis, &[("DANMAKU_ARCHIVE_URL", archive.as_str())]).await;
    let room = unique("retract");
    let (s, body) = p
        .admin(
            &p.a,
            "POST",
            &format!("/v1/admin/rooms/{room}/live/start"),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{body}");
    let live = body["live"]["id"].as_str().unwrap().to_string();
    let mut on_b = viewer_on(&p.b, &room, None).await;
    let mut ids = Vec::new();
    for i in 0..3 {
        let (s, body) = p
            .post(&p.a, &room, &format!("u{i}"), &format!("m{i}"))
            .await;
        assert_eq!(s, StatusCode::ACCEPTED, "{body}");
        ids.push(body["id"].as_str().unwrap().to_string());
    }
    let got = on_b.collect(3, Duration::from_secs(10)).await;
    assert_eq!(got.len(), 3, "B's viewer saw the posts");
    let (_, snapshot_before, _) = common::into_parts(
        p.http
            .get(format!("{}/v1/rooms/{room}/snapshot", p.b.base()))
            .send()
            .await
            .unwrap(),
    )
    .await;

    let (s, body) = p
        .admin(
            &p.a,
            "DELETE",
            &format!("/v1/admin/rooms/{room}/messages/{}", ids[1]),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    // B's viewer gets the retract frame.
    let frame = loop {
        let v = on_b
            .next_json(Duration::from_secs(3))
            .await
            .expect("a retract frame on B");
        if v["type"] == "retract" {
            break v;
        }
    };
    assert_eq!(frame["ids"], json!([ids[1]]), "{frame}");
    // A poll from cursor 0 on B, and B's snapshot, omit it.
    let (_, poll) = p
        .call(
            &p.b,
            reqwest::Method::GET,
            &format!("/v1/rooms/{room}/poll?cursor=0&wait_ms=0"),
            "",
            None,
        )
        .await;
    let polled: Vec<&str> = poll["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(polled, vec![ids[0].as_str(), ids[2].as_str()], "{poll}");
    let (_, snapshot, _) = common::into_parts(
        p.http
            .get(format!("{}/v1/rooms/{room}/snapshot", p.b.base()))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert!(
        !snapshot.to_string().contains(ids[1].as_str()),
        "B's snapshot omits it: {snapshot}"
    );
    assert!(
        snapshot_before.to_string().contains(ids[1].as_str()),
        "it was there before"
    );

    // The live's replay, read on B, omits it.
    let (s, body) = p
        .admin(
            &p.b,
            "POST",
            &format!("/v1/admin/rooms/{room}/live/end"),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    let deadline = Instant::now() + Duration::from_secs(30);
    let replayed = loop {
        let (s, body) = p
            .call(
                &p.b,
                reqwest::Method::GET,
                &format!("/v1/rooms/{room}/replay?live={live}&from_ms=0&to_ms=300000"),
                "",
                None,
            )
            .await;
        let messages = body["messages"].as_array().cloned().unwrap_or_default();
        if s == StatusCode::OK && messages.len() >= 2 {
            break messages;
        }
        assert!(
            Instant::now() < deadline,
            "the live replays within 30 s: {s} {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let replayed: Vec<&str> = replayed.iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert_eq!(replayed, vec![ids[0].as_str(), ids[2].as_str()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ban_on_one_node_closes_the_users_sockets_on_the_other() {
    let Some(redis) = test_redis_url() else {
        return;
    };
    let p = Pair::start(&redis, &[]).await;
    let room = unique("ban");
    let user = unique("troll");
    let token = p.auth.issue(&user, "Troll", 600);
    let mut troll = viewer_on(&p.b, &room, Some(&token)).await;
    let mut bystander = viewer_on(&p.b, &room, Some(&p.auth.issue("calm", "Calm", 600))).await;
    let mut elsewhere = viewer_on(&p.b, &unique("other-room"), Some(&token)).await;

    let (s, body) = p
        .admin(
            &p.a,
            "PUT",
            &format!("/v1/admin/rooms/{room}/bans/{user}"),
            Some(json!({"duration_s": 60})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(body["ban"]["user"], user.as_str());
    let (end, _) = troll.until_closed(Duration::from_secs(3)).await;
    assert_eq!(
        end,
        common::WsEnd::Closed(Some((1008, "banned".into()))),
        "the banned user's socket on B"
    );
    let (s, body) = p.post(&p.b, &room, &user, "after-ban").await;
    assert_eq!(
        (s, body["error"]["code"].clone()),
        (StatusCode::FORBIDDEN, json!("muted")),
        "a ban mutes"
    );
    // Others in the room, and the user in other rooms, stay.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(bystander
        .next_json(Duration::from_millis(200))
        .await
        .is_err_and(|e| e == common::WsEnd::Timeout));
    assert!(elsewhere
        .next_json(Duration::from_millis(200))
        .await
        .is_err_and(|e| e == common::WsEnd::Timeout));
}
