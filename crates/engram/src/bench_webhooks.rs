//! `engram bench --webhooks`: what a webhook costs and how fast deliveries
//! go out. A real server on loopback (its worker pool delivering), a real
//! receiver on loopback, one webhook on `memory.created`:
//!
//! - **latency**: memories added one at a time over HTTP; for each, the
//!   time from the add's answer (its transaction has committed) to the
//!   receiver getting the signed delivery;
//! - **throughput**: a batch of memories written in one transaction queues
//!   that many deliveries at once; deliveries per second until the
//!   receiver has them all (one node, `--workers` workers).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use engram_core::ctx::RequestCtx;
use engram_core::memory::Scope;
use engram_core::service::{AddInput, Content, KeyService, MemoryService, NewKey};
use engram_server::{AppState, ServerConfig};
use serde_json::{Value, json};

use crate::bench::summary;

/// Deliveries the receiver got: memory id → when.
type Arrivals = Arc<Mutex<HashMap<String, Instant>>>;

async fn receiver() -> anyhow::Result<(String, Arrivals)> {
    let arrivals: Arrivals = Arc::default();
    let seen = arrivals.clone();
    let router = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |body: String| {
            let at = Instant::now();
            let seen = seen.clone();
            async move {
                if let Ok(v) = serde_json::from_str::<Value>(&body)
                    && let Some(id) = v["data"]["id"].as_str()
                {
                    seen.lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(id.to_owned(), at);
                }
                axum::http::StatusCode::NO_CONTENT
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/hook", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, router).await });
    Ok((url, arrivals))
}

fn got(arrivals: &Arrivals) -> usize {
    arrivals.lock().unwrap_or_else(|e| e.into_inner()).len()
}

async fn wait_for(arrivals: &Arrivals, n: usize, limit: Duration) -> anyhow::Result<()> {
    let start = Instant::now();
    while got(arrivals) < n {
        anyhow::ensure!(
            start.elapsed() < limit,
            "only {} of {n} deliveries arrived within {limit:?}",
            got(arrivals)
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    Ok(())
}

pub async fn run(
    service: MemoryService,
    keys: KeyService,
    workers: usize,
    adds: usize,
    burst: usize,
) -> anyhow::Result<Value> {
    let (hook_url, arrivals) = receiver().await?;
    let acme = Scope {
        org_id: Some("acme".into()),
        ..Default::default()
    };
    let (_, token) = keys
        .create(
            &engram_core::access::Principal::operator(),
            NewKey {
                name: "bench".into(),
                role: Some(engram_core::access::Role::Admin),
                binding: acme.clone(),
                rate_limit: None,
            },
        )
        .await?;
    let config = ServerConfig {
        workers,
        rate_limit: engram_server::auth::RateLimitConfig {
            per_minute: 0,
            burst: 1,
        },
        webhooks: engram_core::service::WebhookConfig {
            allow_private: true,
            ..Default::default()
        },
        ..ServerConfig::default()
    };
    let state = AppState::new(service.clone(), keys, config);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(engram_server::serve(listener, state, async {
        let _ = stop_rx.await;
    }));
    let client = reqwest::Client::new();
    let resp = client
        .post(format!("{base}/v1/webhooks"))
        .bearer_auth(&token)
        .json(&json!({"url": hook_url, "events": ["memory.created"]}))
        .send()
        .await?;
    anyhow::ensure!(
        resp.status().is_success(),
        "creating the webhook answered {}",
        resp.status()
    );

    // Latency: one add at a time, commit (the add's answer) to arrival.
    let mut latency = Vec::with_capacity(adds);
    for i in 0..adds {
        let body = json!({"messages": [{"role": "user", "content": format!("Bench fact {i}: the {} is {}.", ["kettle", "lamp", "desk", "door"][i % 4], ["blue", "red", "green", "tall"][i / 4 % 4])}], "user_id": format!("lat-{i}")});
        let resp = client
            .post(format!("{base}/v1/memories"))
            .bearer_auth(&token)
            .json(&body)
            .send()
            .await?;
        anyhow::ensure!(resp.status().is_success(), "add answered {}", resp.status());
        let answer: Value = resp.json().await?;
        let committed = Instant::now();
        let id = answer["results"][0]["id"]
            .as_str()
            .context("the add answered no id")?
            .to_owned();
        let deadline = Instant::now();
        let arrived = loop {
            if let Some(at) = arrivals.lock().unwrap_or_else(|e| e.into_inner()).get(&id) {
                break *at;
            }
            anyhow::ensure!(
                deadline.elapsed() < Duration::from_secs(30),
                "delivery of {id} never arrived"
            );
            tokio::time::sleep(Duration::from_micros(200)).await;
        };
        latency.push(arrived.saturating_duration_since(committed).as_secs_f64() * 1e3);
    }

    // Throughput: `burst` memories in one transaction queue `burst` deliveries.
    let before = got(&arrivals);
    let inputs: Vec<AddInput> = (0..burst)
        .map(|i| {
            let mut scope = acme.clone();
            scope.user_id = Some(format!("burst-{}", i % 50));
            AddInput::new(
                Content::Text(format!("Burst fact number {i} names a unique thing-{i}.")),
                scope,
            )
        })
        .collect();
    let ctx = RequestCtx::operator("bench");
    let results = state_add_batch(&service, &ctx, inputs).await?;
    let t = Instant::now();
    wait_for(&arrivals, before + results, Duration::from_secs(600)).await?;
    let seconds = t.elapsed().as_secs_f64();
    let _ = stop_tx.send(());
    server.await.context("server task")??;
    Ok(json!({
        "workers": workers,
        "latency_commit_to_receiver": summary(latency),
        "throughput": {
            "deliveries": results,
            "seconds": (seconds * 1000.0).round() / 1000.0,
            "deliveries_per_s": (results as f64 / seconds).round(),
        },
    }))
}

/// Writes `inputs` in one transaction (verbatim); how many memories it created.
async fn state_add_batch(
    service: &MemoryService,
    ctx: &RequestCtx,
    inputs: Vec<AddInput>,
) -> anyhow::Result<usize> {
    let queue = engram_core::service::JobQueue::new(
        service.clone(),
        engram_core::service::JobConfig::default(),
        None,
    );
    let out = queue.add_verbatim_batch(ctx, inputs).await?;
    Ok(out
        .iter()
        .flatten()
        .filter(|r| r.event == engram_core::memory::Event::Add)
        .count())
}
