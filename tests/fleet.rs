//! A fleet of real processes in cluster mode, started by `scripts/fleet.sh`: api pods
//! and worker pods of the binary behind HAProxy, against the services of this machine
//! (databases, queues, Redis keys and topics of each test's own).
//!
//! What an operator of a fleet relies on: a burst spread over the api pods sells
//! exactly the stock; one Idempotency-Key sent to two pods at once makes one order; the
//! per-user rate limit holds across pods; a worker killed mid-sale is replaced and
//! every accepted order completes; a rolling restart answers only 201/409/503 and
//! keeps every 201; each pod's tree holds only its role's actors; the fleet view lists
//! the pods and drops a stopped or killed one.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use flashsale::auth::Tokens;
use flashsale::domain::UserId;
use serde_json::{json, Value};

#[path = "api/helpers/wait.rs"]
mod wait;

use wait::eventually;

const ADMIN: &str = "fleet-test-admin-token-0123456789";
const JWT: &str = "fleet-test-jwt-secret-0123456789-0123456789";

/// A fleet started by `scripts/fleet.sh up`; `down` when dropped.
struct Fleet {
    dir: PathBuf,
    port: u16,
    client: reqwest::Client,
    tokens: Tokens,
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/fleet.sh")
}

/// The settings of one test's fleet: its own databases, Redis keys, queues and topics.
fn config(id: &str) -> String {
    format!(
        r#"mode = "cluster"
[http]
workers = 2
[auth]
jwt_secret = "{JWT}"
[catalog]
url = "postgres://postgres@127.0.0.1:5432/fs_test_{id}_catalog"
[shards]
urls = ["postgres://postgres@127.0.0.1:5432/fs_test_{id}_shard_0", "postgres://postgres@127.0.0.1:5432/fs_test_{id}_shard_1"]
pool_size = 2
[inventory]
urls = ["redis://127.0.0.1:6380/14", "redis://127.0.0.1:6381/15"]
key_prefix = "t{id}"
[queue]
url = "amqp://guest:guest@127.0.0.1:5672/%2f"
orders_queue = "fstest.{id}.orders"
notifications_queue = "fstest.{id}.notifications"
[events]
brokers = "127.0.0.1:9092"
topic_prefix = "fstest.{id}."
group_prefix = "fstest.{id}"
delivery_timeout_ms = 3000
[supervision]
backoff_base_ms = 50
backoff_max_ms = 1000
max_restarts = 50
[shutdown]
drain_secs = 2
grace_secs = 20
[pod]
heartbeat_secs = 1
gone_after_secs = 3
"#
    )
}

impl Fleet {
    async fn up(apis: usize, workers: usize) -> Fleet {
        let id = format!("fleet{}", &uuid::Uuid::new_v4().simple().to_string()[..10]);
        let dir = std::env::temp_dir().join(format!("fs_{id}"));
        std::fs::create_dir_all(&dir).unwrap();
        let cfg = dir.join("cluster.toml");
        std::fs::write(&cfg, config(&id)).unwrap();
        // Ports from a base of this test's own (fleet.sh uses base .. base+1101+M for
        // HAProxy, its stats and the pods), all below Linux's ephemeral range (32768 up),
        // where outgoing connections could hold one. Tests of one run take bases in
        // turn from a random start, 2,000 apart, so their ports never meet.
        static START: std::sync::OnceLock<u16> = std::sync::OnceLock::new();
        static NEXT: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);
        let turn = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let slot = (START.get_or_init(|| rand_u16() % 10) + turn) % 10;
        let port = 10_000 + slot * 2_000;
        let fleet = Fleet {
            dir,
            port,
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap(),
            tokens: Tokens::new(JWT.as_bytes(), 3600),
        };
        let out = fleet
            .run(&[
                "up",
                "--api",
                &apis.to_string(),
                "--workers",
                &workers.to_string(),
                "--port",
                &port.to_string(),
                "--config",
                cfg.to_str().unwrap(),
                "--bin",
                env!("CARGO_BIN_EXE_flashsale"),
            ])
            .await;
        assert!(out.contains("fleet is up"), "{out}");
        fleet
    }

    /// Runs `fleet.sh ARGS --dir DIR`; panics with its output when it fails.
    async fn run(&self, args: &[&str]) -> String {
        let out = tokio::process::Command::new("bash")
            .arg(script())
            .args(args)
            .arg("--dir")
            .arg(&self.dir)
            .env("FLASHSALE__ADMIN__TOKEN", ADMIN)
            .stdin(Stdio::null())
            .output()
            .await
            .expect("bash runs");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "fleet.sh {args:?} failed:\n{text}");
        text
    }

    fn public(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn pod_public(&self, i: u16) -> String {
        format!("http://127.0.0.1:{}", self.port + 1 + i)
    }

    fn api_admin(&self, i: u16) -> String {
        format!("http://127.0.0.1:{}", self.port + 1001 + i)
    }

    fn worker_admin(&self, j: u16) -> String {
        format!("http://127.0.0.1:{}", self.port + 1101 + j)
    }

    fn pid(&self, pod: &str) -> i32 {
        std::fs::read_to_string(self.dir.join(format!("{pod}.pid")))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }

    fn signal(&self, pod: &str, signal: &str) {
        let ok = std::process::Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid(pod).to_string())
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{signal} {pod}");
    }

    async fn admin(&self, base: &str, method: reqwest::Method, path: &str, body: Value) -> Value {
        let r = self
            .client
            .request(method, format!("{base}{path}"))
            .bearer_auth(ADMIN)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = r.status();
        let body: Value = r.json().await.unwrap_or_default();
        assert!(status.is_success(), "{path}: {status} {body}");
        body
    }

    async fn get(&self, base: &str, path: &str) -> Value {
        self.admin(base, reqwest::Method::GET, path, Value::Null)
            .await
    }

    /// A product with an open sale of `stock` units, `limit` per buyer.
    async fn sale(&self, stock: i64, limit: i64) -> i64 {
        let admin = self.api_admin(0);
        let p = self
            .admin(
                &admin,
                reqwest::Method::POST,
                "/admin/products",
                json!({"name": "fleet", "priceCents": 100}),
            )
            .await;
        let id = p["id"].as_i64().unwrap();
        let path = format!("/admin/flash-sales/{id}");
        let body = json!({"stock": stock, "perUserLimit": limit});
        self.admin(&admin, reqwest::Method::PUT, &path, body).await;
        id
    }

    fn buyer(&self) -> String {
        self.tokens.issue(&UserId::new_random()).token
    }

    async fn order(&self, base: &str, token: &str, product: i64, key: &str) -> (u16, Value, bool) {
        let r = self
            .client
            .post(format!("{base}/orders/flash-sale/{product}"))
            .bearer_auth(token)
            .header("Idempotency-Key", key)
            .send()
            .await
            .expect("an answer");
        let status = r.status().as_u16();
        let retry_after = r.headers().contains_key("retry-after");
        (status, r.json().await.unwrap_or_default(), retry_after)
    }

    /// Waits until every order of `orders` (id, buyer token) is `completed`.
    async fn all_complete(&self, orders: &[(String, String)]) {
        let deadline = Instant::now() + Duration::from_secs(90);
        let mut left: Vec<&(String, String)> = orders.iter().collect();
        while !left.is_empty() {
            assert!(
                Instant::now() < deadline,
                "{} accepted orders never completed, e.g. {:?}",
                left.len(),
                left[0].0
            );
            let mut still = Vec::new();
            for o in left {
                let r = self
                    .client
                    .get(format!("{}/orders/{}", self.public(), o.0))
                    .bearer_auth(&o.1)
                    .send()
                    .await;
                let done = match r {
                    Ok(r) if r.status() == 200 => {
                        let v: Value = r.json().await.unwrap_or_default();
                        assert_ne!(
                            v["status"], "cancelled",
                            "an accepted order was cancelled: {v}"
                        );
                        v["status"] == "completed"
                    }
                    _ => false,
                };
                if !done {
                    still.push(o);
                }
            }
            left = still;
            if !left.is_empty() {
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }
    }

    /// The fleet as one pod's admin API shows it, by pod id.
    async fn view(&self, admin: &str) -> HashMap<String, Value> {
        let v = self.get(admin, "/admin/fleet").await;
        v["pods"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| (p["id"].as_str().unwrap().to_string(), p.clone()))
            .collect()
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        let _ = std::process::Command::new("bash")
            .arg(script())
            .args(["down", "--dir"])
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn rand_u16() -> u16 {
    (uuid::Uuid::new_v4().as_u128() % 65_536) as u16
}

/// Every actor name in a tree.
fn names(tree: &Value) -> HashSet<String> {
    let mut out = HashSet::new();
    fn walk(n: &Value, out: &mut HashSet<String>) {
        out.insert(n["name"].as_str().unwrap().to_string());
        for c in n["children"].as_array().into_iter().flatten() {
            walk(c, out);
        }
    }
    walk(tree, &mut out);
    out
}

/// How many order requests a pod has answered (its own metrics).
async fn orders_served(fleet: &Fleet, admin: &str) -> u64 {
    let text = fleet
        .client
        .get(format!("{admin}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|l| {
            l.starts_with("flashsale_http_requests_total")
                && l.contains("route=\"/orders/flash-sale/{productId}\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_api_pods_and_a_worker_behind_the_balancer_keep_every_promise() {
    let fleet = Fleet::up(2, 1).await;

    // A burst through HAProxy, spread over both api pods, sells exactly the stock.
    let report = std::env::temp_dir().join(format!("fs_fleet_{}.json", rand_u16()));
    let argv = [
        "flashsale-load".to_string(),
        "--quiet".into(),
        format!("--target={}", fleet.public()),
        format!("--admin-url={}", fleet.api_admin(0)),
        format!("--admin-token={ADMIN}"),
        format!("--jwt-secret={JWT}"),
        format!("--report-json={}", report.display()),
        "--deadline-secs=90".into(),
        "burst".into(),
        "--buyers=400".into(),
        "--stock=60".into(),
        "--window-ms=500".into(),
    ];
    let code = flashsale_load::main_with(flashsale_load::Cli::parse_from(argv)).await;
    let json: Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    let _ = std::fs::remove_file(&report);
    assert_eq!(code, 0, "{json:#}");
    assert_eq!(json["accepted"], 60, "{json:#}");
    assert_eq!(json["violations"], json!([]));
    for i in 0..2 {
        let served = orders_served(&fleet, &fleet.api_admin(i)).await;
        assert!(served > 50, "api-{i} answered {served} of the 400 orders");
    }

    // One Idempotency-Key sent to both api pods at once makes one order.
    let product = fleet.sale(1_000, 5).await;
    for round in 0..5 {
        let token = fleet.buyer();
        let key = format!("both-pods-{round}");
        let (first, second) = (fleet.pod_public(0), fleet.pod_public(1));
        let (a, b) = tokio::join!(
            fleet.order(&first, &token, product, &key),
            fleet.order(&second, &token, product, &key)
        );
        let mut statuses = [a.0, b.0];
        statuses.sort();
        assert_eq!(statuses, [200, 201], "{a:?} {b:?}");
        assert_eq!(a.1["orderId"], b.1["orderId"], "one order for one key");
        let orders = fleet
            .client
            .get(format!("{}/users/me/orders", fleet.public()))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .json::<Value>()
            .await
            .unwrap();
        let n = orders["orders"].as_array().map_or(0, Vec::len);
        assert!(n <= 1, "one key made {n} orders: {orders}");
    }

    // The per-user rate limit (10 a minute) holds across pods.
    let token = fleet.buyer();
    let mut limited = 0;
    let mut answered = 0;
    let hungry = fleet.sale(1_000, 1_000).await;
    for n in 0..14u16 {
        let (status, body, _) = fleet
            .order(&fleet.pod_public(n % 2), &token, hungry, &format!("k{n}"))
            .await;
        match status {
            429 => limited += 1,
            201 => answered += 1,
            other => panic!("order {n}: {other} {body}"),
        }
    }
    assert_eq!(
        (answered, limited),
        (10, 4),
        "ten a minute, across both pods"
    );

    // Each role's tree holds only that role's actors; the fleet view proxies them.
    let api = names(&fleet.get(&fleet.api_admin(0), "/admin/actors").await);
    let worker = names(&fleet.get(&fleet.worker_admin(0), "/admin/actors").await);
    for name in [
        "reconciler",
        "order-publisher-0",
        "inventory-0",
        "shard-0",
        "pod-registry",
    ] {
        assert!(api.contains(name), "api pod lacks {name}: {api:?}");
    }
    for name in [
        "order-consumer-0",
        "notification-consumer-0",
        "relay-catalog",
        "analytics-consumer",
        "events",
    ] {
        assert!(!api.contains(name), "api pod runs {name}");
        assert!(worker.contains(name), "worker lacks {name}: {worker:?}");
    }
    for name in ["shard-0", "inventory-0", "catalog", "pod-registry"] {
        assert!(worker.contains(name), "worker lacks {name}: {worker:?}");
    }
    for name in ["reconciler", "order-publisher-0"] {
        assert!(!worker.contains(name), "worker runs {name}");
    }
    let proxied = fleet
        .get(&fleet.api_admin(0), "/admin/fleet/worker-0/actors")
        .await;
    assert_eq!(names(&proxied), worker);
    // A worker has no public listener, and is ready on its admin one.
    let ready: Value = fleet
        .client
        .get(format!("{}/readyz", fleet.worker_admin(0)))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready["ready"], true, "{ready}");
    assert_eq!(ready["role"], "worker");

    // The fleet view, from any pod: every pod, its role, up, ready, with a summary.
    let view = fleet.view(&fleet.worker_admin(0)).await;
    let roles: HashMap<&str, &str> = view
        .iter()
        .map(|(id, p)| (id.as_str(), p["role"].as_str().unwrap()))
        .collect();
    assert_eq!(
        roles,
        HashMap::from([("api-0", "api"), ("api-1", "api"), ("worker-0", "worker")])
    );
    for (id, pod) in &view {
        assert_eq!(pod["status"], "up", "{id}: {pod}");
        assert_eq!(pod["ready"], true, "{id}: {pod}");
        assert!(
            pod["summary"]["actors"].as_u64().unwrap() > 3,
            "{id}: {pod}"
        );
        assert!(pod["error"].is_null(), "{id}: {pod}");
    }

    // The terminal draws the same fleet.
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_flashsale"))
        .args([
            "tree",
            "--fleet",
            "--admin-url",
            &fleet.api_admin(1),
            "--admin-token",
            ADMIN,
        ])
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    for line in [
        "pod api-0  api  up  ready",
        "pod api-1  api  up  ready",
        "pod worker-0  worker  up  ready",
    ] {
        assert!(text.contains(line), "no {line:?} in:\n{text}");
    }
    assert!(
        text.contains("order-consumer-0") && text.contains("reconciler"),
        "{text}"
    );
}

/// Sends orders at about `rate` a second through the balancer, each from a new buyer,
/// until `stop` is set; records (status, Retry-After present, order id, token).
type Answers = Arc<Mutex<Vec<(u16, bool, Option<String>, String)>>>;

fn steady(
    fleet: &Fleet,
    product: i64,
    rate: u32,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> (Answers, tokio::task::JoinHandle<()>) {
    let answers: Answers = Arc::default();
    let (client, public) = (fleet.client.clone(), fleet.public());
    let tokens = Tokens::new(JWT.as_bytes(), 3600);
    let out = answers.clone();
    let task = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / rate as u64));
        let mut inflight = Vec::new();
        let mut n = 0u64;
        while !stop.load(std::sync::atomic::Ordering::SeqCst) {
            tick.tick().await;
            n += 1;
            let token = tokens.issue(&UserId::new_random()).token;
            let (client, public, out) = (client.clone(), public.clone(), out.clone());
            inflight.push(tokio::spawn(async move {
                let r = client
                    .post(format!("{public}/orders/flash-sale/{product}"))
                    .bearer_auth(&token)
                    .header("Idempotency-Key", format!("steady-{n}"))
                    .send()
                    .await;
                let answer = match r {
                    Ok(r) => {
                        let status = r.status().as_u16();
                        let retry = r.headers().contains_key("retry-after");
                        let body: Value = r.json().await.unwrap_or_default();
                        let id = body["orderId"].as_str().map(String::from);
                        (status, retry, id, token)
                    }
                    Err(_) => (0, false, None, token),
                };
                out.lock().unwrap().push(answer);
            }));
        }
        for t in inflight {
            let _ = t.await;
        }
    });
    (answers, task)
}

/// Waits until at least `n` of the answers after the first `from` are `201`s. A stretch
/// of the steady load is measured in orders accepted rather than in time, so that a
/// slow machine gets the same stretch, only later.
async fn accepted_after(answers: &Answers, from: usize, n: usize, what: &str) {
    eventually(Duration::from_secs(30), what, || async {
        let accepted = answers.lock().unwrap()[from..]
            .iter()
            .filter(|a| a.0 == 201)
            .count();
        if accepted >= n {
            Ok(())
        } else {
            Err(format!("{accepted} of {n} orders accepted"))
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_worker_is_replaced_and_the_fleet_view_drops_stopped_and_killed_pods() {
    let fleet = Fleet::up(1, 1).await;
    let product = fleet.sale(100_000, 1).await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (answers, driver) = steady(&fleet, product, 50, stop.clone());
    accepted_after(&answers, 0, 50, "the sale is under way").await;

    // SIGKILL the worker mid-sale: intake keeps selling.
    fleet.signal("worker-0", "KILL");
    let before = answers.lock().unwrap().len();
    accepted_after(&answers, before, 21, "intake sells without the worker").await;

    // The fleet view marks the killed worker gone within a minute.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let view = fleet.view(&fleet.api_admin(0)).await;
        if view["worker-0"]["status"] == "gone" {
            assert!(view["worker-0"]["summary"].is_null());
            break;
        }
        assert!(
            Instant::now() < deadline,
            "worker-0 still shows as {}",
            view["worker-0"]
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // A new worker completes every accepted order.
    fleet.run(&["restart", "worker-0"]).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    driver.await.unwrap();
    let accepted: Vec<(String, String)> = answers
        .lock()
        .unwrap()
        .iter()
        .filter(|a| a.0 == 201)
        .map(|a| (a.2.clone().unwrap(), a.3.clone()))
        .collect();
    assert!(accepted.len() > 100, "{} accepted", accepted.len());
    fleet.all_complete(&accepted).await;
    assert_eq!(
        fleet.view(&fleet.api_admin(0)).await["worker-0"]["status"],
        "up"
    );

    // A pod that stops cleanly (SIGTERM: exit 0) leaves the fleet at once.
    fleet.signal("api-0", "TERM");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !fleet.dir.join("api-0.exit").exists() {
        assert!(Instant::now() < deadline, "api-0 did not exit");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let code = std::fs::read_to_string(fleet.dir.join("api-0.exit")).unwrap();
    assert_eq!(code.trim(), "0", "the api pod's exit code");
    let view = fleet.view(&fleet.worker_admin(0)).await;
    assert!(
        !view.contains_key("api-0"),
        "a stopped pod is still listed: {view:?}"
    );
    assert_eq!(view.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_during_a_steady_sale_keeps_every_accepted_order() {
    let fleet = Fleet::up(2, 1).await;
    let product = fleet.sale(100_000, 1).await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (answers, driver) = steady(&fleet, product, 40, stop.clone());
    accepted_after(&answers, 0, 40, "the sale is under way").await;

    // Each pod in turn: SIGTERM, wait for its exit, start it again, wait until ready.
    let out = fleet.run(&["roll"]).await;
    for pod in ["api-0", "api-1", "worker-0"] {
        assert!(
            out.contains(&format!("{pod} stopped (exit code 0)")),
            "{pod} did not exit 0:\n{out}"
        );
        assert!(out.contains(&format!("{pod} ready again")), "{out}");
    }
    let rolled = answers.lock().unwrap().len();
    accepted_after(&answers, rolled, 40, "the fleet sells again after the roll").await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    driver.await.unwrap();

    let answers = answers.lock().unwrap().clone();
    let mut counts: HashMap<u16, usize> = HashMap::new();
    for a in &answers {
        *counts.entry(a.0).or_default() += 1;
    }
    for (status, n) in &counts {
        assert!(
            [201, 409, 503].contains(status),
            "{n} answers of {status} (0: no answer) during the roll: {counts:?}"
        );
    }
    assert!(
        answers.iter().filter(|a| a.0 == 503).all(|a| a.1),
        "a 503 without Retry-After"
    );
    let accepted: Vec<(String, String)> = answers
        .iter()
        .filter(|a| a.0 == 201)
        .map(|a| (a.2.clone().unwrap(), a.3.clone()))
        .collect();
    assert!(
        accepted.len() * 10 > answers.len() * 9,
        "most orders were accepted during the roll: {counts:?}"
    );
    fleet.all_complete(&accepted).await;
}
