//! `flashsale reshard`: the dry-run plan for growing the shard count, from live data.

use std::collections::HashMap;

use flashsale::shards::hash::bucket;

use crate::helpers::{spawn_app_with, Options};

async fn reshard(app: &crate::helpers::TestApp, args: &[&str]) -> std::process::Output {
    let urls: Vec<String> = app.shard_urls.iter().map(|u| format!("{u:?}")).collect();
    let config = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/cluster.toml");
    tokio::process::Command::new(env!("CARGO_BIN_EXE_flashsale"))
        .arg("reshard")
        .arg("--config")
        .arg(config)
        .args(args)
        .env("FLASHSALE__SHARDS__URLS", format!("[{}]", urls.join(",")))
        .output()
        .await
        .expect("flashsale runs")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reshard_lists_every_user_that_moves_with_its_orders() {
    let app = spawn_app_with(Options {
        shards: 4,
        ..Options::default()
    })
    .await;
    let product = app.sale(100, 2).await;
    let accepted = app.buy_as_new_buyers(product, 24).await;
    app.assert_completed_once(&accepted).await;
    // Where each user's orders are now (shard, order, user, status).
    let rows = app.all_shard_orders().await;
    let mut users: HashMap<String, (usize, u64)> = HashMap::new();
    for (shard, _, user, _) in &rows {
        users.entry(user.clone()).or_insert((*shard, 0)).1 += 1;
    }

    let out = reshard(&app, &["--to", "8", "--list"]).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed: HashMap<&str, (usize, usize, u64)> = stdout
        .lines()
        .skip(1)
        .take_while(|l| !l.is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (
                f[0],
                (
                    f[1].parse().unwrap(),
                    f[2].parse().unwrap(),
                    f[3].parse().unwrap(),
                ),
            )
        })
        .collect();
    let mut moving = 0;
    for (user, (shard, orders)) in &users {
        let to = bucket(user, 8);
        assert!(to == *shard || to == shard + 4, "{user}: {shard} -> {to}");
        if to == *shard {
            assert!(
                !listed.contains_key(user.as_str()),
                "{user} stays but is listed"
            );
        } else {
            moving += 1;
            assert_eq!(
                listed.get(user.as_str()),
                Some(&(*shard, to, *orders)),
                "{stdout}"
            );
        }
    }
    assert_eq!(listed.len(), moving, "{stdout}");
    assert!(
        stdout.contains(&format!("moving: {moving} of {} users", users.len())),
        "{stdout}"
    );
    assert!(stdout.contains("dry run"), "{stdout}");

    // A count that is not a multiple of today's is refused, with the reason.
    let out = reshard(&app, &["--to", "6"]).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("multiple of today's 4"));
    app.stop().await;
}
