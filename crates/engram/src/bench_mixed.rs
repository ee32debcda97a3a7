//! `engram bench --mixed`: many clients at once against one node over HTTP,
//! the way a busy deployment sees it. Each of `--clients` clients loops for
//! `--seconds`: one request in five is an add of a single fresh text (the
//! local model embeds it; users spread over 200), the others are searches
//! with queries seen before (their embeddings cached). The store starts
//! empty. Reports requests per second and latency per kind, and errors.

use std::sync::Arc;
use std::time::{Duration, Instant};

use engram_core::memory::Scope;
use engram_core::ports::Store;
use engram_core::service::{KeyService, MemoryService, NewKey};
use engram_server::{AppState, ServerConfig};
use serde_json::{Value, json};

use crate::bench::{NAMES, OBJECTS, TIMES, VERBS, summary};

/// Share of requests that are adds, in percent.
const ADD_PERCENT: u64 = 20;
const USERS: u64 = 200;

const QUERIES: &[&str] = &[
    "what does the user like to eat?",
    "where did they travel last summer?",
    "which instrument is being learned?",
    "any allergies to remember?",
    "what is the name of the dog?",
    "how is the marathon training going?",
    "what did they say about work?",
    "favourite books and authors",
];

#[derive(Default)]
struct Tally {
    adds: Vec<f64>,
    searches: Vec<f64>,
    errors: usize,
    first_error: Option<String>,
}

pub async fn run(
    store: Arc<dyn Store>,
    service: MemoryService,
    keys: KeyService,
    clients: usize,
    seconds: u64,
) -> anyhow::Result<Value> {
    let (_, token) = keys
        .create(
            &engram_core::access::Principal::operator(),
            NewKey {
                name: "bench".into(),
                role: None,
                binding: Scope {
                    org_id: Some("acme".into()),
                    ..Default::default()
                },
                rate_limit: None,
            },
        )
        .await?;
    let config = ServerConfig {
        rate_limit: engram_server::auth::RateLimitConfig {
            per_minute: 0,
            burst: 1,
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
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(clients)
        .timeout(Duration::from_secs(30))
        .build()?;
    // Warm the query cache: the searches measure search, not the model.
    for (i, q) in QUERIES.iter().enumerate() {
        let body = json!({"query": q, "user_id": format!("user-{i}"), "top_k": 10});
        client
            .post(format!("{base}/v1/memories/search"))
            .bearer_auth(&token)
            .json(&body)
            .send()
            .await?
            .error_for_status()?;
    }
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(clients);
    for c in 0..clients {
        let (client, base, token) = (client.clone(), base.clone(), token.clone());
        tasks.push(tokio::spawn(async move {
            let mut tally = Tally::default();
            // xorshift, seeded per client: the same request mix every run.
            let mut s =
                0x9E37_79B9_7F4A_7C15u64 ^ (c as u64 + 1).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            let mut next = move || {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                s
            };
            while Instant::now() < deadline {
                let r = next();
                let user = format!("user-{}", r / 7 % USERS);
                let add = r % 100 < ADD_PERCENT;
                let (url, body) = if add {
                    let pick = |list: &[&'static str], salt: u64| {
                        list[(r / salt % list.len() as u64) as usize]
                    };
                    let text = format!(
                        "{} {} {} {}.",
                        pick(NAMES, 11),
                        pick(VERBS, 13),
                        pick(OBJECTS, 17),
                        pick(TIMES, 23)
                    );
                    (
                        format!("{base}/v1/memories"),
                        json!({"messages": [{"role": "user", "content": text}], "user_id": user}),
                    )
                } else {
                    let q = QUERIES[(r / 19 % QUERIES.len() as u64) as usize];
                    (
                        format!("{base}/v1/memories/search"),
                        json!({"query": q, "user_id": user, "top_k": 10}),
                    )
                };
                let t = Instant::now();
                let outcome = client
                    .post(&url)
                    .bearer_auth(&token)
                    .json(&body)
                    .send()
                    .await;
                let ms = t.elapsed().as_secs_f64() * 1e3;
                match outcome {
                    Ok(resp) if resp.status().is_success() => {
                        let _ = resp.bytes().await;
                        if add {
                            tally.adds.push(ms);
                        } else {
                            tally.searches.push(ms);
                        }
                    }
                    Ok(resp) => {
                        tally.errors += 1;
                        tally
                            .first_error
                            .get_or_insert_with(|| format!("{url} answered {}", resp.status()));
                    }
                    Err(e) => {
                        tally.errors += 1;
                        tally
                            .first_error
                            .get_or_insert_with(|| format!("{url}: {e}"));
                    }
                }
            }
            tally
        }));
    }
    let mut all = Tally::default();
    for t in tasks {
        let t = t.await?;
        all.adds.extend(t.adds);
        all.searches.extend(t.searches);
        all.errors += t.errors;
        if all.first_error.is_none() {
            all.first_error = t.first_error;
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let _ = stop_tx.send(());
    server.await??;
    let stored = store.stats().await?.memories;
    let rate = |n: usize| (n as f64 / secs * 10.0).round() / 10.0;
    Ok(json!({
        "clients": clients,
        "seconds": (secs * 10.0).round() / 10.0,
        "adds_per_second": rate(all.adds.len()),
        "searches_per_second": rate(all.searches.len()),
        "add_latency": summary(all.adds.clone()),
        "search_latency": summary(all.searches.clone()),
        "errors": all.errors,
        "first_error": all.first_error,
        "memories_stored": stored,
    }))
}
