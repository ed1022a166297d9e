//! The fleet view on the admin listener: every pod of the deployment as the registry
//! knows it ([`crate::actors::registry`]), each one's readiness and a summary of its
//! tree gathered from its own admin API (the shared admin token, a short timeout per
//! pod: one that does not answer shows as such and never holds the answer up).
//!
//! The registry is a table any holder of the catalog's credentials can write, so what
//! it names is not trusted blindly: the admin token goes only to an admin URL inside
//! `pod.peer_networks`, and a peer's answer is read up to [`MOST_TREE_BYTES`].

use actix_web::{web, HttpResponse};
use futures_util::future::join_all;
use serde_json::{json, Value};

use super::error::ApiError;
use super::extract::Admin;
use super::{resource, AppState};
use crate::actors::registry::{ListPods, PodRecord};
use crate::config::IpNet;
use crate::domain::{now_ms, rfc3339};

/// What an operator sees first of a pod's tree: how many actors, and the sums of
/// their restarts, mailboxes and processed messages.
pub fn summary(tree: &Value) -> Value {
    fn walk(node: &Value, sum: &mut [u64; 4]) {
        sum[1] += node["restarts"].as_u64().unwrap_or(0);
        if node["kind"] == "actor" {
            sum[0] += 1;
            sum[2] += node["mailbox"].as_u64().unwrap_or(0);
            sum[3] += node["processed"].as_u64().unwrap_or(0);
        }
        for child in node["children"].as_array().into_iter().flatten() {
            walk(child, sum);
        }
    }
    let mut sum = [0u64; 4];
    walk(tree, &mut sum);
    json!({ "actors": sum[0], "restarts": sum[1], "mailbox": sum[2], "processed": sum[3] })
}

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(resource("/admin/fleet").get(fleet))
        .service(resource("/admin/fleet/{podId}/actors").get(pod_actors));
}

/// `GET /admin/fleet`.
async fn fleet(state: web::Data<AppState>, _: Admin) -> Result<HttpResponse, ApiError> {
    let pods = state.registry.call(ListPods).await?;
    let now = now_ms();
    let views = join_all(pods.into_iter().map(|p| pod_view(&state, p, now))).await;
    Ok(HttpResponse::Ok().json(json!({ "answeredBy": state.pod.id, "pods": views })))
}

async fn pod_view(state: &AppState, pod: PodRecord, now: i64) -> Value {
    let age_ms = (now - pod.heartbeat_at).max(0);
    let gone_after = (state.settings.pod.gone_after_secs * 1000) as i64;
    // A heartbeat from further ahead than any clock in step is from no live pod.
    let up = age_ms <= gone_after && pod.heartbeat_at <= now + gone_after;
    let mut view = json!({
        "id": pod.id,
        "role": pod.role,
        "version": pod.version,
        "status": if up { "up" } else { "gone" },
        "adminUrl": pod.admin_url,
        "startedAt": rfc3339(pod.started_at),
        "heartbeatAgeSeconds": (age_ms as f64 / 100.0).round() / 10.0,
        "ready": null,
        "summary": null,
        "error": null,
    });
    if !up {
        return view;
    }
    if pod.id == state.pod.id {
        let tree = serde_json::to_value(state.tree.view(&state.policy)).unwrap_or_default();
        view["ready"] = state.readiness().0.into();
        view["summary"] = summary(&tree);
        return view;
    }
    if let Err(e) = peer_allowed(&pod.admin_url, &state.settings.pod.peer_networks).await {
        view["error"] = e.into();
        return view;
    }
    let (ready, tree) = futures_util::join!(
        state.peers.get(format!("{}/readyz", pod.admin_url)).send(),
        peer_tree(state, &pod)
    );
    match ready {
        Ok(r) => view["ready"] = r.status().is_success().into(),
        Err(e) => view["error"] = format!("unreachable: {}", without_url(&e)).into(),
    }
    match tree {
        Ok(tree) => view["summary"] = summary(&tree),
        Err(e) if view["error"].is_null() => view["error"] = e.into(),
        Err(_) => {}
    }
    view
}

/// A reqwest error without the URL it names (the view shows the URL already).
fn without_url(e: &reqwest::Error) -> String {
    let mut text = if e.is_timeout() {
        "no answer in time".to_string()
    } else if e.is_connect() {
        "connection refused".to_string()
    } else {
        e.to_string()
    };
    if let Some(status) = e.status() {
        text = format!("answered {status}");
    }
    text
}

/// The most of a peer's answer that is read: a tree of thousands of actors is well
/// under it.
pub const MOST_TREE_BYTES: usize = 4 << 20;

/// Whether the admin token may go to `admin_url`: an `http` URL whose host is an
/// address in `networks`, or a name that resolves only to such addresses.
async fn peer_allowed(admin_url: &str, networks: &[IpNet]) -> Result<(), String> {
    let refused = |why: String| Err(format!("not asked: {why} (pod.peer_networks)"));
    let Ok(url) = reqwest::Url::parse(admin_url) else {
        return refused(format!("its admin URL {admin_url:?} does not parse"));
    };
    let port = url.port_or_known_default().unwrap_or(80);
    let Some(host) = url.host_str() else {
        return refused(format!("its admin URL {admin_url:?} names no host"));
    };
    let literal = host.trim_start_matches('[').trim_end_matches(']');
    let addresses: Vec<std::net::IpAddr> = match literal.parse() {
        Ok(ip) => vec![ip],
        Err(_) => match tokio::net::lookup_host((host, port)).await {
            Ok(found) => found.map(|a| a.ip()).collect(),
            Err(e) => return refused(format!("{host} does not resolve: {e}")),
        },
    };
    let outside: Vec<_> = addresses
        .iter()
        .filter(|ip| !networks.iter().any(|n| n.contains(**ip)))
        .collect();
    match (url.scheme(), addresses.is_empty(), outside.first()) {
        ("http" | "https", false, None) => Ok(()),
        (_, _, Some(ip)) => refused(format!("{ip} is outside the pods' networks")),
        (scheme, _, None) => refused(format!("{scheme}:// with no address")),
    }
}

/// A pod's live tree, from its own admin API.
async fn peer_tree(state: &AppState, pod: &PodRecord) -> Result<Value, String> {
    peer_allowed(&pod.admin_url, &state.settings.pod.peer_networks).await?;
    let url = format!("{}/admin/actors", pod.admin_url);
    let mut r = state
        .peers
        .get(&url)
        .bearer_auth(state.admin_token.expose())
        .send()
        .await
        .map_err(|e| format!("unreachable: {}", without_url(&e)))?;
    match r.status().as_u16() {
        200 => {}
        401 => return Err("it refused the admin token (every pod needs the same one)".into()),
        status => return Err(format!("it answered {status}")),
    }
    let too_large = || format!("its tree is larger than {MOST_TREE_BYTES} bytes");
    if r.content_length()
        .is_some_and(|n| n > MOST_TREE_BYTES as u64)
    {
        return Err(too_large());
    }
    let mut body = Vec::new();
    while let Some(chunk) = r
        .chunk()
        .await
        .map_err(|e| format!("its tree did not read: {}", without_url(&e)))?
    {
        if body.len() + chunk.len() > MOST_TREE_BYTES {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    serde_json::from_slice(&body).map_err(|e| format!("its tree did not read: {e}"))
}

/// `GET /admin/fleet/{podId}/actors`: that pod's tree.
async fn pod_actors(
    state: web::Data<AppState>,
    _: Admin,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    if *id == state.pod.id {
        return Ok(HttpResponse::Ok().json(state.tree.view(&state.policy)));
    }
    let pods = state.registry.call(ListPods).await?;
    let pod = pods
        .into_iter()
        .find(|p| p.id == *id)
        .ok_or(ApiError::NotFound)?;
    let tree = peer_tree(&state, &pod)
        .await
        .map_err(|e| ApiError::Unavailable(format!("pod {}: {e}", pod.id)))?;
    Ok(HttpResponse::Ok().json(tree))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_summary_counts_actors_and_sums_their_numbers() {
        let tree = json!({
            "name": "root", "kind": "supervisor", "restarts": 1, "children": [
                {"name": "shards", "kind": "supervisor", "restarts": 0, "children": [
                    {"name": "shard-0", "kind": "actor", "restarts": 2, "mailbox": 3, "processed": 40, "children": []},
                    {"name": "shard-1", "kind": "actor", "restarts": 0, "mailbox": 1, "processed": 7, "children": []}
                ]},
                {"name": "pod-registry", "kind": "actor", "restarts": 0, "mailbox": 0, "processed": 5, "children": []}
            ]
        });
        assert_eq!(
            summary(&tree),
            json!({"actors": 3, "restarts": 3, "mailbox": 4, "processed": 52})
        );
    }
}
