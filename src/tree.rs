//! `flashsale tree`: the live supervisor tree in a terminal, drawn with box-drawing
//! lines, coloured by status when stdout is a terminal.

use std::fmt::Write as _;
use std::io::IsTerminal;
use std::time::Duration;

use serde_json::Value;

fn colour(status: &str) -> &'static str {
    match status {
        "running" => "\x1b[32m",
        "starting" => "\x1b[34m",
        "restarting" => "\x1b[33m",
        "failed" => "\x1b[31m",
        _ => "\x1b[90m",
    }
}

/// Renders a tree as `/admin/actors` returns it.
pub fn render(node: &Value, colours: bool) -> String {
    let mut out = String::new();
    line(&mut out, node, "", "", colours);
    out
}

fn line(out: &mut String, node: &Value, lead: &str, child_lead: &str, colours: bool) {
    let name = node["name"].as_str().unwrap_or("?");
    let status = node["status"].as_str().unwrap_or("?");
    let (on, off) = if colours {
        (colour(status), "\x1b[0m")
    } else {
        ("", "")
    };
    let _ = write!(
        out,
        "{lead}{name}  {on}{status}{off}  restarts {}",
        node["restarts"]
    );
    if node["kind"] == "supervisor" {
        let _ = write!(
            out,
            "  [{} max {}/{}s]",
            node["strategy"].as_str().unwrap_or("?"),
            node["maxRestarts"],
            node["windowSeconds"]
        );
    } else {
        let _ = write!(
            out,
            "  mailbox {}  processed {}  up {}s",
            node["mailbox"], node["processed"], node["uptimeSeconds"]
        );
        if let Some(r) = node.get("replica").filter(|r| r.is_object()) {
            let state = match (r["up"].as_bool(), r["serving"].as_bool()) {
                (Some(true), Some(true)) => "serving",
                (Some(true), _) => "lagging",
                _ => "down",
            };
            let _ = write!(out, "  replica {state} lag {}s", r["lagSeconds"]);
        }
        if let Some(e) = node["lastError"].as_str() {
            let _ = write!(out, "  last error: {e}");
        }
    }
    out.push('\n');
    let children = node["children"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[]);
    for (i, c) in children.iter().enumerate() {
        let last = i + 1 == children.len();
        let (branch, next) = if last {
            ("└── ", "    ")
        } else {
            ("├── ", "│   ")
        };
        line(
            out,
            c,
            &format!("{child_lead}{branch}"),
            &format!("{child_lead}{next}"),
            colours,
        );
    }
}

/// Renders the fleet: each pod as a top-level node (id, role, status, readiness,
/// heartbeat age), its tree below it, or why it could not be read.
pub fn render_fleet(pods: &[(Value, Result<Value, String>)], colours: bool) -> String {
    let mut out = String::new();
    for (pod, tree) in pods {
        let status = pod["status"].as_str().unwrap_or("?");
        let ready = match pod["ready"].as_bool() {
            Some(true) => "ready",
            Some(false) => "not ready",
            None => "readiness unknown",
        };
        let shown = if status == "up" { "running" } else { "stopped" };
        let (on, off) = if colours {
            (colour(shown), "\x1b[0m")
        } else {
            ("", "")
        };
        let _ = writeln!(
            out,
            "pod {}  {}  {on}{status}{off}  {ready}  heartbeat {}s ago  {}",
            pod["id"].as_str().unwrap_or("?"),
            pod["role"].as_str().unwrap_or("?"),
            pod["heartbeatAgeSeconds"],
            pod["adminUrl"].as_str().unwrap_or("?"),
        );
        match tree {
            Ok(tree) => {
                let mut lines = String::new();
                line(&mut lines, tree, "└── ", "    ", colours);
                out.push_str(&lines);
            }
            Err(why) => {
                let _ = writeln!(out, "└── (no tree: {why})");
            }
        }
    }
    out
}

async fn get_json(client: &reqwest::Client, url: &str, token: &str) -> Result<Value, String> {
    let r = client
        .get(url)
        .bearer_auth(token)
        .send()
        .await
        .map_err(|e| format!("cannot reach {url}: {e}"))?;
    let status = r.status();
    if !status.is_success() {
        let hint = if status == 401 {
            " (check the admin token)"
        } else {
            ""
        };
        let body: Value = r.json().await.unwrap_or_default();
        let message = body["message"]
            .as_str()
            .map(|m| format!(": {m}"))
            .unwrap_or_default();
        return Err(format!("{url} answered {status}{hint}{message}"));
    }
    r.json().await.map_err(|e| format!("{url}: {e}"))
}

/// Fetches and prints the tree (of every pod with `fleet`); with `watch`, redraws it
/// every second until Ctrl-C.
pub async fn run(admin_url: &str, token: &str, watch: bool, fleet: bool) -> Result<(), String> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .map_err(|e| e.to_string())?;
    let base = admin_url.trim_end_matches('/');
    let tty = std::io::stdout().is_terminal();
    loop {
        let text = if fleet {
            let view = get_json(&client, &format!("{base}/admin/fleet"), token).await?;
            let mut pods = Vec::new();
            for pod in view["pods"].as_array().into_iter().flatten() {
                let id = pod["id"].as_str().unwrap_or_default();
                let tree = if pod["status"] == "up" {
                    let url = format!("{base}/admin/fleet/{id}/actors");
                    get_json(&client, &url, token).await
                } else {
                    Err("gone: no heartbeat".to_string())
                };
                pods.push((pod.clone(), tree));
            }
            render_fleet(&pods, tty)
        } else {
            let tree = get_json(&client, &format!("{base}/admin/actors"), token).await?;
            render(&tree, tty)
        };
        if watch && tty {
            print!("\x1b[2J\x1b[H");
        }
        print!("{text}");
        if !watch {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_branches_and_fields() {
        let tree = serde_json::json!({
            "name": "root", "kind": "supervisor", "status": "running", "restarts": 0,
            "strategy": "one_for_one", "maxRestarts": 10, "windowSeconds": 30,
            "children": [
                {"name": "shard-0", "kind": "actor", "status": "failed", "restarts": 2, "mailbox": 3,
                 "processed": 40, "uptimeSeconds": 0.0, "lastError": "connection reset", "children": []},
                {"name": "shard-1", "kind": "actor", "status": "running", "restarts": 0, "mailbox": 0,
                 "processed": 7, "uptimeSeconds": 12.5, "lastError": null, "children": [],
                 "replica": {"up": true, "lagSeconds": 2.5, "serving": false}}
            ]
        });
        let text = render(&tree, false);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].starts_with("root  running"));
        assert!(
            lines[1].starts_with("├── shard-0  failed  restarts 2  mailbox 3"),
            "{}",
            lines[1]
        );
        assert!(lines[1].ends_with("last error: connection reset"));
        assert!(lines[2].starts_with("└── shard-1  running"), "{}", lines[2]);
        assert!(
            lines[2].ends_with("replica lagging lag 2.5s"),
            "{}",
            lines[2]
        );
        assert!(render(&tree, true).contains("\x1b[31mfailed"));
    }

    #[test]
    fn draws_each_pod_over_its_tree() {
        let pod = |id: &str, status: &str| {
            serde_json::json!({"id": id, "role": "api", "status": status, "ready": true,
                "heartbeatAgeSeconds": 1.5, "adminUrl": "http://127.0.0.1:9090"})
        };
        let tree = serde_json::json!({"name": "root", "kind": "supervisor", "status": "running",
            "restarts": 0, "strategy": "one_for_one", "maxRestarts": 10, "windowSeconds": 30,
            "children": []});
        let text = render_fleet(
            &[
                (pod("a-1", "up"), Ok(tree)),
                (pod("b-2", "gone"), Err("gone: no heartbeat".into())),
            ],
            false,
        );
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "{text}");
        assert!(lines[0].starts_with("pod a-1  api  up  ready  heartbeat 1.5s ago"));
        assert!(lines[1].starts_with("└── root  running"), "{}", lines[1]);
        assert!(lines[2].starts_with("pod b-2  api  gone"));
        assert_eq!(lines[3], "└── (no tree: gone: no heartbeat)");
    }
}
