use super::*;

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

#[test]
fn defaults_load_with_dev_secrets() {
    let c = Config::embedded();
    assert_eq!(c.server.listen, "127.0.0.1:8080");
    assert!(c.auth.uses_dev_jwt_secret());
    assert_eq!(c.fanout.tick_ms, 100);
}

#[test]
fn env_overrides_fixed_and_generic() {
    let c = Config::load(
        None,
        env(&[
            ("DANMAKU_TICK_MS", "50"),
            ("DANMAKU_GIFT_SECRETS", "aaaaaaaaaaaaaaaa, bbbbbbbbbbbbbbbb"),
            ("DANMAKU_INGEST__BLOCKED_WORDS", "spam,scam"),
            ("DANMAKU_INGEST__USER_RATE_PER_S", "3.5"),
            ("HOME", "/root"),
        ]),
    )
    .unwrap();
    assert_eq!(c.fanout.tick_ms, 50);
    assert_eq!(
        c.auth.gift_secrets,
        vec!["aaaaaaaaaaaaaaaa", "bbbbbbbbbbbbbbbb"]
    );
    assert_eq!(c.ingest.blocked_words, vec!["spam", "scam"]);
    assert_eq!(c.ingest.user_rate_per_s, 3.5);
}

#[test]
fn unknown_env_key_is_an_error() {
    let e = Config::load(None, env(&[("DANMAKU_FANOUT__TICKMS", "5")])).unwrap_err();
    assert!(format!("{e:#}").contains("unknown config key"));
}

#[test]
fn public_listen_needs_real_secrets() {
    let e = Config::load(None, env(&[("DANMAKU_LISTEN", "0.0.0.0:8080")])).unwrap_err();
    assert!(format!("{e:#}").contains("development secrets"));
    let ok = Config::load(
        None,
        env(&[
            ("DANMAKU_LISTEN", "0.0.0.0:8080"),
            ("DANMAKU_JWT_SECRET", "0123456789abcdef0123"),
            ("DANMAKU_GIFT_SECRETS", "0123456789abcdef0123"),
        ]),
    );
    assert!(ok.is_ok());
}

#[test]
fn internal_listen_is_an_address_other_than_listen() {
    let e = Config::load(None, env(&[("DANMAKU_INTERNAL_LISTEN", "ops-port")])).unwrap_err();
    assert!(format!("{e:#}").contains("server.internal_listen \"ops-port\""));
    let same = env(&[("DANMAKU_INTERNAL_LISTEN", "127.0.0.1:8080")]);
    let e = Config::load(None, same).unwrap_err();
    assert!(format!("{e:#}").contains("is server.listen too"));
    let c = Config::load(None, env(&[("DANMAKU_INTERNAL_LISTEN", "127.0.0.1:9090")])).unwrap();
    assert_eq!(
        c.internal_listen_addr().unwrap(),
        Some("127.0.0.1:9090".parse().unwrap())
    );
}

#[test]
fn redis_store_needs_a_url() {
    let e = Config::load(None, env(&[("DANMAKU_STORE__ENGINE", "redis")])).unwrap_err();
    assert!(format!("{e:#}").contains("redis_url"));
    let c = Config::load(
        None,
        env(&[
            ("DANMAKU_STORE__ENGINE", "redis"),
            ("DANMAKU_REDIS_URL", "redis://127.0.0.1:6379"),
        ]),
    )
    .unwrap();
    assert_eq!(c.store.engine, StoreEngine::Redis);
    assert_eq!(c.store.redis_url, "redis://127.0.0.1:6379");
}

#[test]
fn redis_wait_timeout_is_bounded() {
    let c = Config::load(None, env(&[("DANMAKU_STORE__REDIS_WAIT_REPLICAS", "1")])).unwrap();
    assert_eq!(
        (c.store.redis_wait_replicas, c.store.redis_wait_timeout_ms),
        (1, 500)
    );
    for bad in ["0", "4001"] {
        let e =
            Config::load(None, env(&[("DANMAKU_STORE__REDIS_WAIT_TIMEOUT_MS", bad)])).unwrap_err();
        assert!(
            format!("{e:#}").contains("store.redis_wait_timeout_ms must be within 1..=4000"),
            "{bad}: {e:#}"
        );
    }
}

#[test]
fn an_unknown_engine_names_the_key() {
    let e = Config::load(None, env(&[("DANMAKU_STORE__ENGINE", "mongo")])).unwrap_err();
    let e = format!("{e:#}");
    assert!(
        e.contains("store.engine \"mongo\" is not available in this build (memory, redis)"),
        "{e}"
    );
    let e = Config::load(None, env(&[("DANMAKU_BUS__ENGINE", "nats")])).unwrap_err();
    assert!(format!("{e:#}").contains("bus.engine \"nats\""));
    assert_eq!(StoreEngine::Redis.to_string(), "redis");
    assert_eq!("kafka".parse(), Ok(BusEngine::Kafka));
}

#[test]
fn kafka_bus_needs_brokers() {
    let e = Config::load(None, env(&[("DANMAKU_BUS__ENGINE", "kafka")])).unwrap_err();
    assert!(format!("{e:#}").contains("kafka_brokers"));
    let c = Config::load(
        None,
        env(&[
            ("DANMAKU_BUS__ENGINE", "kafka"),
            ("DANMAKU_KAFKA_BROKERS", "127.0.0.1:9092"),
            ("DANMAKU_BUS__PUBLISH_TIMEOUT_MS", "2000"),
        ]),
    )
    .unwrap();
    assert_eq!(c.bus.engine, BusEngine::Kafka);
    assert_eq!(c.bus.kafka_brokers, "127.0.0.1:9092");
    assert_eq!(c.bus.topic, "danmaku-ingest");
    assert_eq!(c.bus.group_id, "danmaku-processor");
    assert_eq!(c.bus.replication_factor, 1);
    assert_eq!(c.bus.publish_timeout_ms, 2000);
    assert!(c.bus.idempotence);
}

#[test]
fn production_example_is_valid() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/production.example.toml");
    let c = Config::load(
        Some(&path),
        env(&[
            ("DANMAKU_AUTH__JWT_SECRET_FILE", ""),
            ("DANMAKU_AUTH__GIFT_SECRETS_FILE", ""),
            ("DANMAKU_JWT_SECRET", "0123456789abcdef0123"),
            ("DANMAKU_GIFT_SECRETS", "0123456789abcdef0123"),
        ]),
    )
    .unwrap();
    assert_eq!(c.bus.engine, BusEngine::Kafka);
    assert_eq!(c.store.engine, StoreEngine::Redis);
    assert!(!c.auth.demo_tokens);
    assert!(c.archive.url.starts_with("mysql://"), "a shared archive");
    assert!(
        !c.store.replay_redis_url.is_empty(),
        "an isolated replay cache"
    );
}

#[test]
fn secrets_are_not_in_debug_output() {
    let c = Config::load(None, env(&[("DANMAKU_JWT_SECRET", "supersecretvalue123")])).unwrap();
    assert!(!format!("{c:?}").contains("supersecretvalue123"));
}

#[test]
fn legacy_gift_signatures_are_off_unless_asked_for() {
    assert!(!Config::embedded().auth.accept_legacy_signatures);
    let on = Config::load(
        None,
        env(&[("DANMAKU_AUTH__ACCEPT_LEGACY_SIGNATURES", "true")]),
    )
    .unwrap();
    assert!(on.auth.accept_legacy_signatures);
    let debug = format!("{:?}", on.auth);
    assert!(debug.contains("accept_legacy_signatures: true"), "{debug}");
    assert!(!debug.contains(crate::config::DEV_GIFT_SECRET), "{debug}");
}

#[test]
fn proxy_and_origin_lists_come_from_the_environment() {
    let c = Config::load(
        None,
        env(&[
            (
                "DANMAKU_SERVER__TRUSTED_PROXIES",
                "10.0.0.0/8, 127.0.0.1/32,fd00::/8",
            ),
            (
                "DANMAKU_SERVER__ALLOWED_ORIGINS",
                "https://a.example,https://b.example",
            ),
            ("DANMAKU_SERVER__PROXY_PROTOCOL", "true"),
        ]),
    )
    .unwrap();
    let proxies: Vec<String> = c
        .server
        .trusted_proxies
        .iter()
        .map(|c| c.to_string())
        .collect();
    assert_eq!(proxies, vec!["10.0.0.0/8", "127.0.0.1/32", "fd00::/8"]);
    assert_eq!(
        c.server.allowed_origins,
        vec!["https://a.example", "https://b.example"]
    );
    assert!(c.server.proxy_protocol);
    assert!(Config::embedded().server.trusted_proxies.is_empty());
}

#[test]
fn a_bad_trusted_proxy_names_the_key() {
    let e = Config::load(
        None,
        env(&[(
            "DANMAKU_SERVER__TRUSTED_PROXIES",
            "10.0.0.0/8,10.0.0.300/32",
        )]),
    )
    .unwrap_err();
    let e = format!("{e:#}");
    assert!(e.contains("server.trusted_proxies"), "{e}");
    assert!(e.contains("10.0.0.300/32"), "{e}");
}

#[test]
fn proxy_protocol_needs_trusted_proxies() {
    let e = Config::load(None, env(&[("DANMAKU_SERVER__PROXY_PROTOCOL", "true")])).unwrap_err();
    assert!(format!("{e:#}").contains("server.trusted_proxies"), "{e:#}");
}

#[test]
fn an_address_alone_selects_its_shared_engine() {
    let c = Config::load(None, env(&[("DANMAKU_REDIS_URL", "redis://10.0.0.1:6379")])).unwrap();
    assert_eq!(c.store.engine, StoreEngine::Redis);
    assert_eq!(c.bus.engine, BusEngine::Memory);
    let c = Config::load(None, env(&[("DANMAKU_KAFKA_BROKERS", "10.0.0.2:9092")])).unwrap();
    assert_eq!(c.bus.engine, BusEngine::Kafka);
    assert_eq!(c.store.engine, StoreEngine::Memory);
    // The replay Redis is a cache, not the live store: it selects nothing.
    let c = Config::load(
        None,
        env(&[("DANMAKU_REPLAY_REDIS_URL", "redis://10.0.0.3:6379")]),
    )
    .unwrap();
    assert_eq!(c.store.engine, StoreEngine::Memory);
}

#[test]
fn an_address_with_memory_named_stops_start_up() {
    for (engine_var, address_var, keys) in [
        (
            "DANMAKU_STORE__ENGINE",
            ("DANMAKU_REDIS_URL", "redis://h:6379"),
            ("store.redis_url", "store.engine"),
        ),
        (
            "DANMAKU_BUS__ENGINE",
            ("DANMAKU_KAFKA_BROKERS", "h:9092"),
            ("bus.kafka_brokers", "bus.engine"),
        ),
    ] {
        let e = Config::load(None, env(&[(engine_var, "memory"), address_var])).unwrap_err();
        let e = format!("{e:#}");
        assert!(e.contains(keys.0) && e.contains(keys.1), "{e}");
    }
    // Named in a file counts too; the embedded default's "memory" does not.
    let file = temp_config("named-memory", "[store]\nengine = \"memory\"\n");
    let e = Config::load(Some(&file), env(&[("DANMAKU_REDIS_URL", "redis://h:6379")])).unwrap_err();
    assert!(format!("{e:#}").contains("store.redis_url is set"), "{e:#}");
    let c = Config::load(Some(&file), env(&[])).unwrap();
    assert_eq!(c.store.engine, StoreEngine::Memory);
}

fn temp_config(name: &str, text: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("danmaku-{}-{name}.toml", std::process::id()));
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn list_keys_of_numbers_and_pairs_come_from_the_environment() {
    let c = Config::load(
        None,
        env(&[
            ("DANMAKU_GEARS__UP_MS", "100,500,2000"),
            ("DANMAKU_RATION__BUDGET_TIERS", "0:300, 500:120,5000:40"),
        ]),
    )
    .unwrap();
    assert_eq!(c.gears.up_ms, [100, 500, 2000]);
    assert_eq!(
        c.ration.budget_tiers,
        vec![(0, 300), (500, 120), (5000, 40)]
    );
    assert_eq!(c.ration.budget_for(600), 120);
    for (var, value, says) in [
        (
            "DANMAKU_GEARS__UP_MS",
            "100,fast,2000",
            "\"fast\" is not an integer",
        ),
        ("DANMAKU_GEARS__UP_MS", "100,500", "gears.up_ms"),
        ("DANMAKU_RATION__BUDGET_TIERS", "0:300,500", "joined by ':'"),
        ("DANMAKU_RATION__BUDGET_TIERS", "0:x", "ration.budget_tiers"),
    ] {
        let e = format!(
            "{:#}",
            Config::load(None, env(&[(var, value)])).unwrap_err()
        );
        assert!(e.contains(says), "{var}={value}: {e}");
    }
}

#[test]
fn a_file_key_of_the_wrong_type_or_name_is_named() {
    for (text, says) in [
        (
            "[fanout]\ntick_ms = \"fast\"\n",
            "fanout.tick_ms: invalid type: expected integer, found string",
        ),
        (
            "[fanout]\ntickms = 5\n",
            "fanout.tickms: unknown config key",
        ),
        ("[fanot]\ntick_ms = 5\n", "[fanot]: unknown config section"),
        (
            "[gears]\nup_ms = [1, \"2\", 3]\n",
            "gears.up_ms: invalid type: expected array of integer",
        ),
    ] {
        let file = temp_config("shape", text);
        let e = format!("{:#}", Config::load(Some(&file), env(&[])).unwrap_err());
        assert!(e.contains(says), "{text}: {e}");
    }
    // An integer stands for a float.
    let file = temp_config("float", "[ingest]\nuser_rate_per_s = 3\n");
    assert_eq!(
        Config::load(Some(&file), env(&[]))
            .unwrap()
            .ingest
            .user_rate_per_s,
        3.0
    );
}

#[test]
fn url_passwords_are_redacted() {
    for (url, shown) in [
        ("redis://:pw@h:6379/0", "redis://:<redacted>@h:6379/0"),
        (
            "redis+sentinel://u:pw@s1:26379,s2:26379/danmaku/0",
            "redis+sentinel://u:<redacted>@s1:26379,s2:26379/danmaku/0",
        ),
        (
            "mysql://user:pw@h:3306/db",
            "mysql://user:<redacted>@h:3306/db",
        ),
        ("mysql://user@h/db", "mysql://user@h/db"),
        ("redis://h:6379/0?x=a@b", "redis://h:6379/0?x=a@b"),
        ("sqlite::memory:", "sqlite::memory:"),
        ("", ""),
        // A Redis Cluster's nodes: every password, not only the first.
        (
            "redis://:pw@a:1,redis://:pw@b:2, redis://c:3",
            "redis://:<redacted>@a:1,redis://:<redacted>@b:2, redis://c:3",
        ),
    ] {
        assert_eq!(show::redact_url_password(url), shown, "{url}");
    }
}

#[test]
fn the_effective_config_prints_without_secrets() {
    let (_, table) = Config::load_effective(
        None,
        env(&[
            ("DANMAKU_JWT_SECRET", "jwt-secret-0123456789"),
            (
                "DANMAKU_GIFT_SECRETS",
                "gift-secret-aaaaaaaa,gift-secret-bbbbbbbb",
            ),
            ("DANMAKU_ADMIN_TOKEN", "admin-token-0123"),
            ("DANMAKU_REDIS_URL", "redis://:redis-pw@h:6379"),
            ("DANMAKU_ARCHIVE_URL", "mysql://u:mysql-pw@h/db"),
            ("DANMAKU_TICK_MS", "50"),
        ]),
    )
    .unwrap();
    let text = show::redacted_toml(&table);
    for secret in [
        "jwt-secret",
        "gift-secret",
        "admin-token-0123",
        "redis-pw",
        "mysql-pw",
    ] {
        assert!(!text.contains(secret), "{secret} in\n{text}");
    }
    assert!(text.contains("tick_ms = 50\n"), "{text}");
    assert!(text.contains("engine = \"redis\"\n"), "{text}");
    assert!(
        text.contains("gift_secrets = [\"<redacted>\", \"<redacted>\"]"),
        "{text}"
    );
    // What it prints is a config file that loads to the same settings.
    let reparsed: toml::Table = text.parse().unwrap();
    show::check_shape(&DEFAULT_TOML.parse().unwrap(), &reparsed).unwrap();
    assert_eq!(reparsed["fanout"]["tick_ms"].as_integer(), Some(50));
}

#[test]
fn log_format_is_text_or_json() {
    assert!(!Config::embedded().log.json());
    let c = Config::load(None, env(&[("DANMAKU_LOG_FORMAT", "json")])).unwrap();
    assert!(c.log.json());
    let e = Config::load(None, env(&[("DANMAKU_LOG__FORMAT", "yaml")])).unwrap_err();
    assert!(format!("{e:#}").contains("log.format"), "{e:#}");
}

#[test]
fn the_old_name_of_run_archiver_still_works() {
    assert!(Config::embedded().archive.run_archiver);
    let file = temp_config("legacy-copier", "[archive]\ncopier = false\n");
    assert!(
        !Config::load(Some(&file), env(&[]))
            .unwrap()
            .archive
            .run_archiver
    );
    let c = Config::load(None, env(&[("DANMAKU_ARCHIVE__COPIER", "false")])).unwrap();
    assert!(!c.archive.run_archiver);
    let c = Config::load(None, env(&[("DANMAKU_ARCHIVE__RUN_ARCHIVER", "false")])).unwrap();
    assert!(!c.archive.run_archiver);
}
