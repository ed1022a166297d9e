//! The real binary in embedded mode, killed with SIGKILL in the middle of a burst and
//! started again on the same data: every accepted order is kept and completes,
//! nothing is sold twice, and `remaining + sold == stock` once the reconciler has run.

use std::process::Stdio;
use std::time::{Duration, Instant};

use flashsale::auth::Tokens;
use flashsale::domain::UserId;
use futures_util::future::join_all;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

const ADMIN: &str = "crash-test-admin-token-0123";

/// The binary, serving; killed when dropped (a failing test leaves no process).
struct Server {
    child: Child,
    public: String,
    admin: String,
}

/// A data directory, removed when dropped.
struct DataDir(std::path::PathBuf);

impl Drop for DataDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Starts the binary with both listeners on port 0, and reads the addresses it
/// bound from what it prints at start ("What a run prints" in the README).
async fn start(data: &std::path::Path) -> Server {
    let mut child = Command::new(env!("CARGO_BIN_EXE_flashsale"))
        .arg("serve")
        .env("FLASHSALE__HTTP__LISTEN", "127.0.0.1:0")
        .env("FLASHSALE__ADMIN__LISTEN", "127.0.0.1:0")
        .env("FLASHSALE__ADMIN__TOKEN", ADMIN)
        .env("FLASHSALE__EMBEDDED__DATA_DIR", data)
        .env("FLASHSALE__INVENTORY__RECONCILE_AFTER_MS", "1000")
        .env("FLASHSALE__INVENTORY__RECONCILE_EVERY_MS", "300")
        .env("FLASHSALE__PAYMENTS__SWEEP_EVERY_MS", "100")
        .env("FLASHSALE__SHUTDOWN__DRAIN_SECS", "2")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("the flashsale binary starts");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let (mut public, mut admin) = (None, None);
    let mut printed = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(60), async {
        while public.is_none() || admin.is_none() {
            let Some(line) = lines.next_line().await.expect("its stdout") else {
                break; // it exited
            };
            let url = line.split_whitespace().last().unwrap_or_default();
            if line.trim_start().starts_with("public API") {
                public = Some(url.to_string());
            } else if line.trim_start().starts_with("admin API") {
                admin = Some(url.trim_end_matches("/admin").to_string());
            }
            printed.push(line);
        }
    })
    .await;
    let (Ok(()), Some(public), Some(admin)) = (read, public, admin) else {
        panic!("the server did not print both addresses: {printed:?}");
    };
    // It prints nothing more that matters; keep its pipe drained all the same.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Server {
        child,
        public,
        admin,
    }
}

async fn wait_ready(client: &reqwest::Client, server: &Server) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok(r) = client.get(format!("{}/readyz", server.public)).send().await {
            if r.status().is_success() {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the server did not become ready");
}

async fn admin(
    client: &reqwest::Client,
    server: &Server,
    method: reqwest::Method,
    path: &str,
    body: Value,
) -> Value {
    let r = client
        .request(method, format!("{}{path}", server.admin))
        .bearer_auth(ADMIN)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{path}: {}", r.status());
    r.json().await.unwrap()
}

/// A product with a sale of `definition` (the body of its PUT); answers its id.
async fn sale(client: &reqwest::Client, server: &Server, definition: Value) -> i64 {
    let product = admin(
        client,
        server,
        reqwest::Method::POST,
        "/admin/products",
        json!({"name": "Crash", "priceCents": 100}),
    )
    .await["id"]
        .as_i64()
        .unwrap();
    let path = format!("/admin/flash-sales/{product}");
    admin(client, server, reqwest::Method::PUT, &path, definition).await;
    product
}

/// The binary serving, ready, on a data directory of its own; and a client for it.
async fn fresh_server() -> (DataDir, reqwest::Client, Server) {
    let dir =
        DataDir(std::env::temp_dir().join(format!("fs_crash_{}", uuid::Uuid::new_v4().simple())));
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let server = start(&dir.0).await;
    wait_ready(&client, &server).await;
    (dir, client, server)
}

/// How the process is stopped in the middle of the burst.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Stop {
    /// SIGKILL: nothing is finished.
    Kill,
    /// SIGTERM: requests in flight are served, then the process exits 0.
    Term,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_a_burst_loses_no_accepted_order_and_sells_nothing_twice() {
    stop_during_a_burst(Stop::Kill).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_a_burst_exits_zero_and_loses_no_accepted_order() {
    stop_during_a_burst(Stop::Term).await
}

async fn stop_during_a_burst(stop: Stop) {
    let (dir, client, mut server) = fresh_server().await;
    let data = &dir.0;

    // Enough stock that the drain period (two seconds of serving on) cannot sell it out.
    let stock = 2500;
    let product = sale(&client, &server, json!({"stock": stock, "perUserLimit": 1})).await;
    let secret = std::fs::read_to_string(data.join("jwt-secret")).unwrap();
    let tokens = Tokens::new(secret.trim().as_bytes(), 3600);
    let buyers: Vec<String> = (0..3000)
        .map(|_| tokens.issue(&UserId::new_random()).token)
        .collect();

    // Buyers keep arriving; the process is killed while they do.
    let url = format!("{}/orders/flash-sale/{product}", server.public);
    let (progress, mut accepted_so_far) = tokio::sync::watch::channel(0);
    let burst = async {
        let progress = progress; // dropped when the burst ends, which ends the wait below
        let mut accepted = Vec::new();
        for wave in buyers.chunks(40) {
            let replies = join_all(wave.iter().map(|t| {
                client
                    .post(&url)
                    .bearer_auth(t)
                    .header("Idempotency-Key", "crash")
                    .send()
            }))
            .await;
            for (t, r) in wave.iter().zip(replies) {
                let Ok(r) = r else { continue };
                if r.status() == reqwest::StatusCode::CREATED {
                    // A body cut off by the kill names no order to check.
                    let Ok(body) = r.json::<Value>().await else {
                        continue;
                    };
                    accepted.push((t.clone(), body["orderId"].as_str().unwrap().to_string()));
                }
            }
            progress.send_replace(accepted.len());
            // Buyers keep arriving at a pace, not all at once.
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        accepted
    };
    let killer = async {
        // Stop once 200 orders are accepted, while the next wave is in flight.
        accepted_so_far
            .wait_for(|n| *n >= 200)
            .await
            .expect("the burst reaches 200 accepted orders");
        match stop {
            Stop::Kill => server.child.kill().await.expect("SIGKILL"),
            Stop::Term => {
                signal(&server, "TERM").await;
                // Draining: no longer ready, still serving.
                let deadline = Instant::now() + Duration::from_secs(3);
                let readiness = loop {
                    let r = client
                        .get(format!("{}/readyz", server.public))
                        .send()
                        .await
                        .expect("the listener still serves while draining");
                    if r.status() == reqwest::StatusCode::SERVICE_UNAVAILABLE
                        || Instant::now() > deadline
                    {
                        break r;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                };
                assert_eq!(readiness.status(), reqwest::StatusCode::SERVICE_UNAVAILABLE);
                let body: Value = readiness.json().await.unwrap();
                assert_eq!(body["draining"], true, "{body}");
                let exited = tokio::time::timeout(Duration::from_secs(60), server.child.wait())
                    .await
                    .expect("a drained process exits")
                    .unwrap();
                assert!(exited.success(), "SIGTERM exits 0: {exited}");
            }
        }
    };
    let (accepted, ()) = tokio::join!(burst, killer);
    assert!(
        !accepted.is_empty(),
        "some orders were accepted before the kill"
    );
    assert!(
        accepted.len() < stock as usize,
        "the kill came in the middle of the sale ({} accepted)",
        accepted.len()
    );

    let server = start(data).await;
    wait_ready(&client, &server).await;

    for (token, id) in &accepted {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let r = client
                .get(format!("{}/orders/{id}", server.public))
                .bearer_auth(token)
                .send()
                .await
                .unwrap();
            let status = r.status();
            let body: Value = r.json().await.unwrap_or(Value::Null);
            if status.is_success() && body["status"] == "completed" {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "accepted order {id} never completed: {status} {body}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    // Once the reconciler has released what was reserved but never published, the
    // books balance exactly.
    let deadline = Instant::now() + Duration::from_secs(30);
    let counters = loop {
        let c = admin(
            &client,
            &server,
            reqwest::Method::GET,
            &format!("/admin/flash-sales/{product}"),
            Value::Null,
        )
        .await;
        if c["pending"] == 0 && c["sold"] == c["completed"] {
            break c;
        }
        assert!(Instant::now() < deadline, "never balanced: {c}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let sold = counters["sold"].as_i64().unwrap();
    assert_eq!(counters["remaining"].as_i64().unwrap() + sold, stock);
    assert!(
        sold >= accepted.len() as i64,
        "every accepted order is sold: {counters}"
    );

    let mut rows = Vec::new();
    for i in 0..4 {
        let path = data.join(format!("shard-{i}.db"));
        let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", path.display()))
            .await
            .unwrap();
        let ids: Vec<(String, String)> = sqlx::query_as("SELECT order_id, status FROM orders")
            .fetch_all(&pool)
            .await
            .unwrap();
        rows.extend(ids);
        pool.close().await;
    }
    let completed: Vec<_> = rows.iter().filter(|(_, s)| s == "completed").collect();
    assert_eq!(
        completed.len() as i64,
        sold,
        "one completed order per sold unit"
    );
    let unique: std::collections::HashSet<_> = rows.iter().map(|(id, _)| id).collect();
    assert_eq!(unique.len(), rows.len(), "no order stored twice");
}

/// Hundreds of orders of a sale with a payment window, never paid, expire at once;
/// the process is killed (SIGKILL) while their units go back on sale, one order at a
/// time (the shards still owe some: the test checks it before the restart). Started
/// again, every expired unit is back exactly once: the stock sells again in full, and
/// no further.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_expiry_returns_each_unpaid_unit_once() {
    let (dir, client, mut server) = fresh_server().await;
    let data = &dir.0;
    let stock: i64 = 600;
    let definition = json!({"stock": stock, "perUserLimit": 1, "paymentWindowSecs": 8});
    let product = sale(&client, &server, definition).await;
    let sale_path = format!("/admin/flash-sales/{product}");
    let secret = std::fs::read_to_string(data.join("jwt-secret")).unwrap();
    let tokens = Tokens::new(secret.trim().as_bytes(), 3600);
    let url = format!("{}/orders/flash-sale/{product}", server.public);
    let buy = |token: String| {
        let (client, url) = (&client, &url);
        async move {
            client
                .post(url)
                .bearer_auth(token)
                .header("Idempotency-Key", "expiry")
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    for _ in 0..stock / 50 {
        let wave = (0..50).map(|_| buy(tokens.issue(&UserId::new_random()).token));
        for status in join_all(wave).await {
            assert_eq!(status, reqwest::StatusCode::CREATED);
        }
    }

    // Every order is stored and awaits payment; from then on, a unit neither held by
    // an order awaiting payment (read first) nor back on sale (read after) belongs to
    // an order that expired and has not given it back yet.
    let stored = |c: &Value| c["awaitingPayment"] == stock;
    sale_until(
        &client,
        &server,
        &sale_path,
        50,
        "the orders are stored",
        stored,
    )
    .await;
    let owed = |c: &Value| {
        c["remaining"].as_i64().unwrap() + c["awaitingPayment"].as_i64().unwrap() < stock
    };
    sale_until(
        &client,
        &server,
        &sale_path,
        5,
        "an expired unit is owed back",
        owed,
    )
    .await;
    server.child.kill().await.expect("SIGKILL");
    assert!(
        restocks_due(data).await > 0,
        "the kill came while expired units were still owed back"
    );

    let server = start(data).await;
    wait_ready(&client, &server).await;
    let settled = |c: &Value| {
        assert!(
            c["remaining"].as_i64() <= Some(stock),
            "a unit came back twice: {c}"
        );
        c["expired"] == stock && c["awaitingPayment"] == 0 && c["remaining"] == stock
    };
    let counters = sale_until(
        &client,
        &server,
        &sale_path,
        100,
        "every unit is back",
        settled,
    )
    .await;
    assert_eq!(counters["sold"], 0, "{counters}");
    assert_eq!(
        restocks_due(data).await,
        0,
        "every expired unit is confirmed back"
    );

    // The stock sells again, exactly: new buyers until one is told it is sold out.
    let url = format!("{}/orders/flash-sale/{product}", server.public);
    let mut sold = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let token = tokens.issue(&UserId::new_random()).token;
        let r = client
            .post(&url)
            .bearer_auth(&token)
            .header("Idempotency-Key", "again")
            .send()
            .await
            .unwrap();
        let status = r.status();
        let body: Value = r.json().await.unwrap_or(Value::Null);
        match status {
            reqwest::StatusCode::CREATED => sold += 1,
            reqwest::StatusCode::CONFLICT if body["error"] == "out_of_stock" => break,
            reqwest::StatusCode::SERVICE_UNAVAILABLE => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            other => panic!("unexpected {other}: {body}"),
        }
        assert!(Instant::now() < deadline, "the stock did not sell out");
    }
    assert_eq!(sold, stock, "each expired unit came back once");
}

/// Reads the sale's counters every `every_ms` until `done` holds (30 s at most);
/// answers the counters that made it hold.
async fn sale_until(
    client: &reqwest::Client,
    server: &Server,
    path: &str,
    every_ms: u64,
    what: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let c = admin(client, server, reqwest::Method::GET, path, Value::Null).await;
        if done(&c) {
            return c;
        }
        assert!(Instant::now() < deadline, "{what}: not within 30 s: {c}");
        tokio::time::sleep(Duration::from_millis(every_ms)).await;
    }
}

/// Expired orders whose units the shards (read from their files) still owe back.
async fn restocks_due(data: &std::path::Path) -> i64 {
    let mut due = 0;
    for i in 0..4 {
        let path = data.join(format!("shard-{i}.db"));
        let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", path.display()))
            .await
            .unwrap();
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM restocks WHERE reason = 'expired'")
            .fetch_one(&pool)
            .await
            .unwrap();
        due += n;
        pool.close().await;
    }
    due
}

async fn signal(server: &Server, name: &str) {
    let pid = server.child.id().expect("running").to_string();
    let sent = Command::new("kill")
        .args([&format!("-{name}"), &pid])
        .status()
        .await
        .expect("kill");
    assert!(sent.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_stop_signal_exits_at_once() {
    let data =
        DataDir(std::env::temp_dir().join(format!("fs_crash_{}", uuid::Uuid::new_v4().simple())));
    let client = reqwest::Client::new();
    let mut server = start(&data.0).await;
    wait_ready(&client, &server).await;
    signal(&server, "TERM").await;
    // The first signal is being handled: the server drains (no longer ready).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = client.get(format!("{}/readyz", server.public)).send().await;
        if r.is_ok_and(|r| r.status() == reqwest::StatusCode::SERVICE_UNAVAILABLE) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the first signal starts the drain"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    signal(&server, "INT").await;
    // The drain period (2 s) is not waited out.
    let exited = tokio::time::timeout(Duration::from_millis(1_500), server.child.wait())
        .await
        .expect("exits at once")
        .unwrap();
    assert_eq!(exited.code(), Some(1), "{exited}");
}

/// PostgreSQL databases, dropped when this is dropped (a failing test too).
struct Databases(Vec<String>);

impl Drop for Databases {
    fn drop(&mut self) {
        let names = std::mem::take(&mut self.0);
        // Drop cannot await: a runtime of its own, on a thread of its own.
        let _ = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(async {
                    let url = "postgres://postgres@127.0.0.1:5432/postgres";
                    let Ok(pool) = sqlx::PgPool::connect(url).await else {
                        return;
                    };
                    for name in names {
                        let sql = format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)");
                        let _ = sqlx::query(&sql).execute(&pool).await;
                    }
                    pool.close().await;
                })
        })
        .join();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_process_exits_non_zero_when_the_supervisor_tree_gives_up() {
    // An inventory partition that can never connect: its supervisor escalates, the
    // root gives up, and the process exits so that its orchestrator can restart it.
    let id = &uuid::Uuid::new_v4().simple().to_string()[..8];
    let dbs = Databases(
        ["catalog", "shard_0"]
            .iter()
            .map(|name| format!("fs_test_giveup_{id}_{name}"))
            .collect(),
    );
    let url = |db: &String| format!("postgres://postgres@127.0.0.1:5432/{db}");
    // A port this test holds without listening: every connection to it is refused.
    let refusing = tokio::net::TcpSocket::new_v4().unwrap();
    refusing.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let dead_redis = refusing.local_addr().unwrap();
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_flashsale"))
        .args([
            "serve",
            "--config",
            concat!(env!("CARGO_MANIFEST_DIR"), "/config/cluster.toml"),
        ])
        .env("FLASHSALE__HTTP__LISTEN", "127.0.0.1:0")
        .env("FLASHSALE__ADMIN__LISTEN", "127.0.0.1:0")
        .env("FLASHSALE__ADMIN__TOKEN", ADMIN)
        .env("FLASHSALE__CATALOG__URL", url(&dbs.0[0]))
        .env(
            "FLASHSALE__SHARDS__URLS",
            format!("[\"{}\"]", url(&dbs.0[1])),
        )
        .env(
            "FLASHSALE__INVENTORY__URLS",
            format!("[\"redis://{dead_redis}/0\"]"),
        )
        .env("FLASHSALE__SUPERVISION__MAX_RESTARTS", "3")
        .env("FLASHSALE__SUPERVISION__BACKOFF_BASE_MS", "20")
        .env("FLASHSALE__SUPERVISION__BACKOFF_MAX_MS", "100")
        .env("RUST_LOG", "error")
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(60), out)
        .await
        .expect("the process exits within a minute")
        .expect("the flashsale binary runs");
    assert!(!out.status.success(), "exit status {:?}", out.status);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("gave up"), "says why: {stderr}");
    assert!(started.elapsed() < Duration::from_secs(60));
    drop(refusing);
}

/// What `serve` prints at start in embedded mode, through its demo line; the process is
/// killed afterwards.
async fn start_output(data: &std::path::Path, admin_token: Option<&str>) -> String {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_flashsale"));
    cmd.arg("serve")
        .env("FLASHSALE__HTTP__LISTEN", "127.0.0.1:0")
        .env("FLASHSALE__ADMIN__LISTEN", "127.0.0.1:0")
        .env("FLASHSALE__EMBEDDED__DATA_DIR", data)
        .env_remove("FLASHSALE__ADMIN__TOKEN")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    if let Some(token) = admin_token {
        cmd.env("FLASHSALE__ADMIN__TOKEN", token);
    }
    let mut child = cmd.spawn().expect("the flashsale binary starts");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut printed = String::new();
    let read = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = lines.next_line().await.expect("its stdout") {
            printed.push_str(&line);
            printed.push('\n');
            if line.contains("--jwt-secret-file") {
                return true;
            }
        }
        false
    })
    .await;
    assert!(matches!(read, Ok(true)), "no demo line in: {printed}");
    child.kill().await.unwrap();
    printed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_token_is_printed_only_when_generated() {
    let data = DataDir(std::env::temp_dir().join(format!("fs_test_token_{}", std::process::id())));
    let configured = "configured-admin-token-0123456789";
    let out = start_output(&data.0, Some(configured)).await;
    assert!(
        !out.contains(configured),
        "a configured token is never printed: {out}"
    );
    assert!(out.contains("$FLASHSALE__ADMIN__TOKEN"), "{out}");

    let other =
        DataDir(std::env::temp_dir().join(format!("fs_test_token2_{}", std::process::id())));
    let first = start_output(&other.0, None).await;
    let generated = std::fs::read_to_string(other.0.join("admin-token")).unwrap();
    assert!(
        first.contains(generated.trim()),
        "a generated token is printed once: {first}"
    );
    let again = start_output(&other.0, None).await;
    assert!(
        !again.contains(generated.trim()),
        "not at every start: {again}"
    );
    assert!(
        again.contains("admin-token)"),
        "the demo line reads the kept file: {again}"
    );
}
