//! The settings as a whole: the shipped configs, the layering and the messages a
//! bad value gets.

use super::*;

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

#[test]
fn the_queue_url_asks_for_small_frames_unless_it_names_its_own() {
    let url = |given: &str| {
        let s = Settings::load_with_env(None, env(&[("FLASHSALE__QUEUE__URL", given)]))
            .expect("a valid queue URL");
        s.queue
            .amqp_url()
            .parse::<lapin::uri::AMQPUri>()
            .expect("a URL")
    };
    let plain = url("amqp://guest:guest@127.0.0.1:5672/%2f");
    assert_eq!(plain.query.frame_max, Some(AMQP_FRAME_MAX));
    assert_eq!(plain.query.heartbeat, Some(10));
    let own = url("amqp://guest:guest@127.0.0.1:5672/%2f?frame_max=131072");
    assert_eq!(
        own.query.frame_max,
        Some(131_072),
        "the operator's frame size stays"
    );
}

#[test]
fn trusted_proxies_are_addresses_or_cidr_ranges() {
    let s = Settings::load_with_env(
        None,
        env(&[(
            "FLASHSALE__HTTP__TRUSTED_PROXIES",
            r#"["10.0.0.0/8", "192.168.1.7", "fd00::/8", "::1"]"#,
        )]),
    )
    .expect("ranges and addresses are accepted");
    let nets = &s.http.trusted_proxies;
    let trusted = |ip: &str| nets.iter().any(|n| n.contains(ip.parse().unwrap()));
    assert!(trusted("10.0.0.1") && trusted("10.255.255.255"));
    assert!(
        trusted("::ffff:10.2.3.4"),
        "an IPv4 peer on a dual-stack listener"
    );
    assert!(trusted("192.168.1.7") && !trusted("192.168.1.8"));
    assert!(trusted("fd12:3456::1") && trusted("::1"));
    assert!(!trusted("11.0.0.1") && !trusted("fe80::1") && !trusted("127.0.0.1"));
    let everything: IpNet = "0.0.0.0/0".parse().unwrap();
    assert!(everything.contains("203.0.113.9".parse().unwrap()));
    assert!(!everything.contains("2001:db8::1".parse().unwrap()));
    for bad in [
        "10.0.0.0/33",
        "10.0.0/8",
        "fd00::/129",
        "proxy",
        "10.0.0.1/",
    ] {
        let err = bad.parse::<IpNet>().unwrap_err();
        assert!(err.contains("CIDR"), "{bad}: {err}");
    }
}

#[test]
fn shipped_cluster_config_parses_and_validates() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/cluster.toml");
    let s = Settings::load_with_env(Some(&path), env(&[])).expect("cluster.toml is valid");
    assert_eq!(s.mode, Mode::Cluster);
    assert_eq!(s.shard_count(), 4);
    assert!(s.partition_count() >= 2);
}

#[test]
fn shipped_topology_configs_parse_and_validate() {
    for (file, pooled, sentinel) in [
        ("config/cluster-replicas.toml", false, false),
        ("config/cluster-pgbouncer.toml", true, false),
        ("config/cluster-sentinel.toml", false, true),
    ] {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(file);
        let s = Settings::load_with_env(Some(&path), env(&[])).expect(file);
        assert_eq!(s.shard_count(), 4, "{file}");
        assert_eq!(s.shards.transaction_pooling, pooled, "{file}");
        let sentinels = s
            .inventory
            .urls
            .iter()
            .filter(|u| u.expose().starts_with("redis+sentinel://"));
        assert_eq!(sentinels.count() > 0, sentinel, "{file}");
    }
    let bad = Settings::load_with_env(
        None,
        env(&[
            ("FLASHSALE__MODE", "cluster"),
            ("FLASHSALE__CATALOG__URL", "postgres://h/c"),
            ("FLASHSALE__SHARDS__URLS", r#"["postgres://h/s"]"#),
            ("FLASHSALE__QUEUE__URL", "amqp://h"),
            (
                "FLASHSALE__INVENTORY__URLS",
                r#"["redis+sentinel://h:26379"]"#,
            ),
        ]),
    );
    let message = bad.unwrap_err().to_string();
    assert!(message.contains("names the monitored service"), "{message}");
}

#[test]
fn defaults_are_embedded_and_valid() {
    let s = Settings::load_with_env(None, env(&[])).unwrap();
    assert_eq!(s.mode, Mode::Embedded);
    assert!(s.admin.token.is_none(), "no built-in admin credential");
}

#[test]
fn environment_overrides_file_values() {
    let s = Settings::load_with_env(
        None,
        env(&[
            ("FLASHSALE__HTTP__LISTEN", "127.0.0.1:0"),
            ("FLASHSALE__ADMIN__TOKEN", "0123456789abcdef0123"),
            ("FLASHSALE__LIMITS__RATE_PER_MINUTE", "25"),
            ("FLASHSALE__INVENTORY__KEY_PREFIX", "123"),
        ]),
    )
    .unwrap();
    assert_eq!(s.http.listen, "127.0.0.1:0");
    assert_eq!(s.admin.token.unwrap().expose(), "0123456789abcdef0123");
    assert_eq!(s.limits.rate_per_minute, 25);
    assert_eq!(s.inventory.key_prefix, "123");
}

#[test]
fn bad_values_are_reported_clearly() {
    let err = Settings::load_with_env(None, env(&[("FLASHSALE__HTTP__LISTEN", "nowhere")]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("http.listen"), "{err}");
    let err = Settings::load_with_env(None, env(&[("FLASHSALE__HTTP__NOPE", "1")]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("nope"), "{err}");
    let err = Settings::load_with_env(None, env(&[("FLASHSALE__ADMIN__TOKEN", "short")]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("admin.token"), "{err}");
    let err = Settings::load_with_env(
        None,
        env(&[
            ("FLASHSALE__SHUTDOWN__DRAIN_SECS", "30"),
            ("FLASHSALE__SHUTDOWN__GRACE_SECS", "25"),
        ]),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("shutdown.drain_secs"), "{err}");
    let err = Settings::load_with_env(None, env(&[("FLASHSALE__QUEUE__DEADLINE_MS", "0")]))
        .unwrap_err()
        .to_string();
    assert!(err.contains("queue.deadline_ms"), "{err}");
}

#[test]
fn kafka_properties_come_from_the_file_and_the_environment() {
    let path = std::env::temp_dir().join(format!("flashsale-kafka-{}.toml", std::process::id()));
    std::fs::write(
        &path,
        "[events.kafka]\n\"security.protocol\" = \"plaintext\"\n\
         [events.producer]\n\"linger.ms\" = 20\n\"enable.idempotence\" = true\n",
    )
    .unwrap();
    let s = Settings::load_with_env(
        Some(&path),
        env(&[("FLASHSALE__EVENTS__CONSUMER__FETCH_WAIT_MAX_MS", "100")]),
    )
    .unwrap();
    assert_eq!(s.events.kafka.0, env(&[("security.protocol", "plaintext")]));
    assert_eq!(
        s.events.producer.0,
        env(&[("enable.idempotence", "true"), ("linger.ms", "20")])
    );
    assert_eq!(s.events.consumer.0, env(&[("fetch.wait.max.ms", "100")]));

    // An unquoted dotted name is a TOML table, not a property: say how to write it.
    std::fs::write(&path, "[events.producer]\nlinger.ms = 20\n").unwrap();
    let err = Settings::load_with_env(Some(&path), env(&[]))
        .unwrap_err()
        .to_string();
    std::fs::remove_file(&path).unwrap();
    assert!(err.contains("\"linger\"") && err.contains("quote"), "{err}");
}

#[test]
fn environment_lists_are_toml_arrays() {
    let s = Settings::load_with_env(
        None,
        env(&[
            ("FLASHSALE__MODE", "cluster"),
            ("FLASHSALE__CATALOG__URL", "postgres://db/catalog"),
            (
                "FLASHSALE__SHARDS__URLS",
                r#"["postgres://db/shard_0","postgres://db/shard_1"]"#,
            ),
            ("FLASHSALE__INVENTORY__URLS", r#"["redis://cache:6379/0"]"#),
            ("FLASHSALE__QUEUE__URL", "amqp://queue"),
            ("FLASHSALE__INVENTORY__KEY_PREFIX", "007"),
        ]),
    )
    .unwrap();
    assert_eq!(s.mode, Mode::Cluster);
    assert_eq!(s.shard_count(), 2);
    assert_eq!(s.shards.urls[1].expose(), "postgres://db/shard_1");
    assert_eq!(s.partition_count(), 1);
    assert_eq!(s.inventory.key_prefix, "007");

    // A variable that goes below a value names itself.
    let err = Settings::load_with_env(None, env(&[("FLASHSALE__HTTP__LISTEN__PORT", "1")]))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("FLASHSALE__HTTP__LISTEN__PORT") && err.contains("listen is not a section"),
        "{err}"
    );
}

#[test]
fn secrets_never_print() {
    let s = Secret::new("hunter2-hunter2-hunter2");
    assert_eq!(format!("{s:?}"), "Secret(****)");
}

#[test]
fn rules_across_sections_are_checked_with_the_settings_they_relate() {
    let err = |pairs: &[(&str, &str)]| {
        Settings::load_with_env(None, env(pairs))
            .unwrap_err()
            .to_string()
    };
    let message = err(&[("FLASHSALE__ROLE", "api")]);
    assert!(message.contains("role api needs cluster mode"), "{message}");
    let message = err(&[("FLASHSALE__POD__FORGET_AFTER_SECS", "16")]);
    assert!(
        message.contains("pod.forget_after_secs must not be below"),
        "{message}"
    );
    let message = err(&[
        ("FLASHSALE__QUEUE__PREFETCH", "600"),
        ("FLASHSALE__QUEUE__MAX_BATCH", "500"),
    ]);
    assert!(
        message.contains("queue.prefetch must not be above queue.max_batch"),
        "{message}"
    );
}

#[test]
fn urls_are_parsed_when_the_settings_are_read() {
    let cluster = |extra: &[(&str, &str)]| {
        let mut pairs = vec![
            ("FLASHSALE__MODE", "cluster"),
            ("FLASHSALE__CATALOG__URL", "postgres://db/catalog"),
            ("FLASHSALE__SHARDS__URLS", r#"["postgres://db/shard_0"]"#),
            ("FLASHSALE__INVENTORY__URLS", r#"["redis://cache:6379/0"]"#),
            ("FLASHSALE__QUEUE__URL", "amqp://queue"),
        ];
        pairs.extend_from_slice(extra);
        Settings::load_with_env(None, env(&pairs))
    };
    let s = cluster(&[(
        "FLASHSALE__INVENTORY__URLS",
        r#"["redis://cache:6379/0", "redis+sentinel://a:26379,b/fs-p1/1"]"#,
    )])
    .expect("a server and a monitored primary");
    let urls = s.inventory.redis_urls().unwrap();
    assert!(matches!(&urls[0], RedisUrl::Direct(u) if u == "redis://cache:6379/0"));
    assert!(matches!(&urls[1], RedisUrl::Sentinel(u) if u.service == "fs-p1" && u.db == 1));

    for (key, value, expected) in [
        (
            "FLASHSALE__CATALOG__URL",
            "mysql://db/c",
            "catalog.url must be a postgres:// URL",
        ),
        (
            "FLASHSALE__INVENTORY__URLS",
            r#"["rediss://cache"]"#,
            "inventory.urls: every entry must be a redis:// or redis+sentinel:// URL",
        ),
        (
            "FLASHSALE__QUEUE__URL",
            "http://queue",
            "queue.url must be an amqp:// URL",
        ),
        (
            "FLASHSALE__SHARDS__REPLICA_URLS",
            r#"["redis://r"]"#,
            "shards.replica_urls entry must be a postgres:// URL",
        ),
        (
            "FLASHSALE__TELEMETRY__OTLP_ENDPOINT",
            "jaeger:4318",
            "is not an http:// or https:// URL",
        ),
    ] {
        let message = cluster(&[(key, value)]).unwrap_err().to_string();
        assert!(message.contains(expected), "{key}: {message}");
    }
    let s = cluster(&[(
        "FLASHSALE__TELEMETRY__OTLP_ENDPOINT",
        "http://jaeger:4318/v1/traces",
    )])
    .unwrap();
    let endpoint: &str = s.telemetry.otlp_endpoint.as_deref().unwrap();
    assert_eq!(endpoint, "http://jaeger:4318/v1/traces");
}

#[test]
fn a_value_of_the_wrong_shape_names_its_setting() {
    let err = |key: &str, value: &str| {
        Settings::load_with_env(None, env(&[(key, value)]))
            .unwrap_err()
            .to_string()
    };
    let message = err("FLASHSALE__HTTP__TRUSTED_PROXIES", r#"["proxy"]"#);
    assert!(
        message.contains("http.trusted_proxies") && message.contains("CIDR"),
        "{message}"
    );
    let message = err("FLASHSALE__TELEMETRY__OTLP_ENDPOINT", "jaeger:4318");
    assert!(message.contains("telemetry.otlp_endpoint"), "{message}");
    let message = err("FLASHSALE__LIMITS__RATE_PER_MINUTE", "\"many\"");
    assert!(message.contains("limits.rate_per_minute"), "{message}");
}
