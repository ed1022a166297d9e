//! The real binary in embedded mode, killed with SIGKILL in the middle of a burst and
//! started again on the same data: every accepted order is kept and completes,
//! nothing is sold twice, and `remaining + sold == stock` once the reconciler has run.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use flashsale::auth::Tokens;
use flashsale::domain::UserId;
use futures_util::future::join_all;
use serde_json::{json, Value};

const ADMIN: &str = "crash-test-admin-token-0123";

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Server {
    child: Child,
    public: String,
    admin: String,
}

fn start(data: &std::path::Path, public: u16, admin: u16) -> Server {
    let child = Command::new(env!("CARGO_BIN_EXE_flashsale"))
        .arg("serve")
        .env("FLASHSALE__HTTP__LISTEN", format!("127.0.0.1:{public}"))
        .env("FLASHSALE__ADMIN__LISTEN", format!("127.0.0.1:{admin}"))
        .env("FLASHSALE__ADMIN__TOKEN", ADMIN)
        .env("FLASHSALE__EMBEDDED__DATA_DIR", data)
        .env("FLASHSALE__INVENTORY__RECONCILE_AFTER_MS", "1000")
        .env("FLASHSALE__INVENTORY__RECONCILE_EVERY_MS", "300")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("the flashsale binary starts");
    Server {
        child,
        public: format!("http://127.0.0.1:{public}"),
        admin: format!("http://127.0.0.1:{admin}"),
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
        tokio::time::sleep(Duration::from_millis(100)).await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_a_burst_loses_no_accepted_order_and_sells_nothing_twice() {
    let data = std::env::temp_dir().join(format!("fs_crash_{}", uuid::Uuid::new_v4().simple()));
    let (public, admin_port) = (free_port(), free_port());
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let mut server = start(&data, public, admin_port);
    wait_ready(&client, &server).await;

    let stock = 1000;
    let product = admin(
        &client,
        &server,
        reqwest::Method::POST,
        "/admin/products",
        json!({"name": "Crash", "priceCents": 1}),
    )
    .await["id"]
        .as_i64()
        .unwrap();
    admin(
        &client,
        &server,
        reqwest::Method::PUT,
        &format!("/admin/flash-sales/{product}"),
        json!({"stock": stock, "perUserLimit": 1}),
    )
    .await;
    let secret = std::fs::read_to_string(data.join("jwt-secret")).unwrap();
    let tokens = Tokens::new(secret.trim().as_bytes(), 3600);
    let buyers: Vec<String> = (0..1500)
        .map(|_| tokens.issue(&UserId::new_random()).token)
        .collect();

    // Buyers keep arriving; the process is killed while they do.
    let url = format!("{}/orders/flash-sale/{product}", server.public);
    let progress = std::sync::atomic::AtomicUsize::new(0);
    let burst = async {
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
                    let body: Value = r.json().await.unwrap();
                    accepted.push((t.clone(), body["orderId"].as_str().unwrap().to_string()));
                }
            }
            progress.store(accepted.len(), std::sync::atomic::Ordering::Relaxed);
        }
        accepted
    };
    let killer = async {
        // Kill once a fifth of the stock is sold, while the next wave is in flight.
        while progress.load(std::sync::atomic::Ordering::Relaxed) < 200 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        server.child.kill().expect("SIGKILL");
        server.child.wait().unwrap();
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

    let server = start(&data, public, admin_port);
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
            tokio::time::sleep(Duration::from_millis(100)).await;
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

    let mut server = server;
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    let _ = std::fs::remove_dir_all(&data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_process_exits_non_zero_when_the_supervisor_tree_gives_up() {
    // An inventory partition that can never connect: its supervisor escalates, the
    // root gives up, and the process exits so that its orchestrator can restart it.
    let id = uuid::Uuid::new_v4().simple().to_string();
    let db = |name: &str| {
        format!(
            "postgres://postgres@127.0.0.1:5432/fs_test_giveup_{}_{name}",
            &id[..8]
        )
    };
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_flashsale"))
        .args([
            "serve",
            "--config",
            concat!(env!("CARGO_MANIFEST_DIR"), "/config/cluster.toml"),
        ])
        .env(
            "FLASHSALE__HTTP__LISTEN",
            format!("127.0.0.1:{}", free_port()),
        )
        .env(
            "FLASHSALE__ADMIN__LISTEN",
            format!("127.0.0.1:{}", free_port()),
        )
        .env("FLASHSALE__ADMIN__TOKEN", ADMIN)
        .env("FLASHSALE__CATALOG__URL", db("catalog"))
        .env(
            "FLASHSALE__SHARDS__URLS",
            format!("[\"{}\"]", db("shard_0")),
        )
        .env(
            "FLASHSALE__INVENTORY__URLS",
            format!("[\"redis://127.0.0.1:{}/0\"]", free_port()),
        )
        .env("FLASHSALE__SUPERVISION__MAX_RESTARTS", "3")
        .env("FLASHSALE__SUPERVISION__BACKOFF_BASE_MS", "20")
        .env("FLASHSALE__SUPERVISION__BACKOFF_MAX_MS", "100")
        .env("RUST_LOG", "error")
        .output()
        .expect("the flashsale binary runs");
    assert!(!out.status.success(), "exit status {:?}", out.status);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("gave up"), "says why: {stderr}");
    assert!(started.elapsed() < Duration::from_secs(60));
}
