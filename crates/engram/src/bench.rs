//! `engram bench`: latency, throughput and memory on synthetic-but-realistic data.
//!
//! Memories are sentences built from names, activities and times. Their
//! vectors are the normalised sum of the real model's embeddings of their
//! parts (embedding every one of 100k texts would take ~10 minutes here and
//! measure the model, not the store); queries are real embeddings. Most
//! memories belong to one of many users (hundreds each); a third also belong
//! to one large agent scope, so both vector-search paths are exercised.

use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use engram_core::clock::SystemClock;
use engram_core::ctx::RequestCtx;
use engram_core::filter::Filter;
use engram_core::memory::{Event, HistoryEvent, Memory, MemoryKind, Scope, text_hash};
use engram_core::ports::Embedder;
use engram_core::ports::{Store, WriteOp};
use engram_core::service::{AddInput, Content, MemoryService, SearchInput};
use engram_core::text::tag_entities;
use engram_server::{AppState, ServerConfig};
use engram_sqlite::{SqliteOptions, SqliteStore};
use serde_json::{Value, json};

use crate::runtime::{RetrievalArgs, load_embedder};

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// Memories to load.
    #[arg(long, default_value_t = 10_000)]
    pub memories: usize,
    /// Memories per user (users = memories / this).
    #[arg(long, default_value_t = 500)]
    pub per_user: usize,
    /// Search queries per measured series.
    #[arg(long, default_value_t = 300)]
    pub queries: usize,
    /// Memories added through the full pipeline (embedding included) for the ingest figure.
    #[arg(long, default_value_t = 1_000)]
    pub ingest: usize,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
    /// Instead of the full run: time exact scan vs filtered HNSW over filtered sets of these
    /// sizes (comma-separated) inside an index of `--memories` vectors, to place `--exact-threshold`.
    #[arg(long, value_delimiter = ',')]
    pub crossover: Option<Vec<usize>>,
    /// Instead of the full run: webhook delivery latency (commit to receiver)
    /// and deliveries per second, with a receiver on loopback.
    #[arg(long)]
    pub webhooks: bool,
    /// Instead of the full run: `--clients` clients over HTTP for `--seconds`,
    /// one request in five a single-text add, the rest searches (a store
    /// starting empty).
    #[arg(long)]
    pub mixed: bool,
    /// `--mixed`: concurrent clients.
    #[arg(long, default_value_t = 64)]
    pub clients: usize,
    /// `--mixed`: how long to run.
    #[arg(long, default_value_t = 60)]
    pub seconds: u64,
    /// `--webhooks`: memories added one at a time for the latency figure.
    #[arg(long, default_value_t = 300)]
    pub webhook_adds: usize,
    /// `--webhooks`: memories written in one transaction for the throughput figure.
    #[arg(long, default_value_t = 2_000)]
    pub webhook_burst: usize,
    /// `--webhooks`: the server's job workers.
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
    /// Data directory (default: a temporary one, removed afterwards).
    #[arg(long)]
    pub data_dir: Option<std::path::PathBuf>,
    /// Search the memories a previous run loaded into `--data-dir` or
    /// `--store` (no load; the figures that change the store are skipped).
    #[arg(long)]
    pub reuse: bool,
    /// Only the load, the search series and memory: no HTTP, dashboard,
    /// ingest or sweep.
    #[arg(long)]
    pub quick: bool,
    /// Sentence-transformers model directory.
    #[arg(long, env = "ENGRAM_MODEL_DIR")]
    pub model_dir: Option<std::path::PathBuf>,
    #[command(flatten)]
    pub backend: crate::runtime::BackendArgs,
    /// The SQLite store's encryption (start-up of an encrypted store).
    #[command(flatten)]
    pub encryption: crate::runtime::EncryptionArgs,
    #[command(flatten)]
    pub retrieval: RetrievalArgs,
}

pub(crate) const NAMES: &[&str] = &[
    "Alice",
    "Bob",
    "Carmen",
    "Dmitri",
    "Emeka",
    "Fatima",
    "Giulia",
    "Hiro",
    "Ingrid",
    "Jamal",
    "Kavya",
    "Liam",
    "Mei",
    "Nadia",
    "Oscar",
    "Priya",
    "Quentin",
    "Rosa",
    "Sven",
    "Tariq",
    "Uma",
    "Victor",
    "Wen",
    "Ximena",
    "Yusuf",
    "Zoe",
    "My sister",
    "My manager",
    "Our neighbour",
    "The kids",
];
pub(crate) const VERBS: &[&str] = &[
    "started learning",
    "stopped caring about",
    "is allergic to",
    "bought",
    "wants to try",
    "keeps forgetting",
    "moved closer to",
    "wrote a blog post about",
    "complained about",
    "fell in love with",
    "volunteers at",
    "is saving money for",
    "had an argument about",
    "took photos of",
    "signed up for",
    "is reading about",
    "cooked dinner with",
    "lost",
    "recommended",
    "booked tickets for",
];
pub(crate) const OBJECTS: &[&str] = &[
    "the violin",
    "Portuguese lessons",
    "peanuts",
    "a second-hand bike",
    "rock climbing",
    "the dentist appointment",
    "the office in Lisbon",
    "machine learning",
    "the new tax rules",
    "a rescue dog",
    "the animal shelter",
    "a trip to Japan",
    "the mortgage",
    "the sunset at the beach",
    "a marathon in Berlin",
    "Stoic philosophy",
    "homemade ramen",
    "the car keys",
    "a podcast about history",
    "the Coldplay concert",
    "vegetarian recipes",
    "the garden",
    "a pottery class",
    "the quarterly report",
    "a vintage camera",
    "the Python migration",
    "board games night",
    "the wedding in Porto",
    "an electric scooter",
    "the book club",
    "sourdough baking",
    "the kubernetes cluster",
    "a jazz festival",
    "the school play",
    "solar panels",
    "the hiking trail",
    "a new laptop",
    "the cat's vet visit",
    "chess openings",
    "the apartment lease",
];
pub(crate) const TIMES: &[&str] = &[
    "last week",
    "yesterday",
    "in March",
    "over the summer",
    "two years ago",
    "this morning",
    "in 2023",
    "on Sunday",
    "after the holidays",
    "recently",
    "every Friday",
    "since January",
];

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let idx = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

pub(crate) fn summary(mut ms: Vec<f64>) -> Value {
    ms.sort_by(f64::total_cmp);
    let r = |x: f64| (x * 1000.0).round() / 1000.0;
    json!({"p50_ms": r(percentile(&ms, 50.0)), "p95_ms": r(percentile(&ms, 95.0)), "p99_ms": r(percentile(&ms, 99.0)), "n": ms.len()})
}

fn rss_mib() -> (f64, f64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let get = |key: &str| {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .map_or(0.0, |kb| (kb / 1024.0 * 10.0).round() / 10.0)
    };
    (get("VmRSS:"), get("VmHWM:"))
}

fn normalise(mut v: Vec<f32>) -> Vec<f32> {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
    v.iter_mut().for_each(|x| *x /= n);
    v
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    if let Some(sizes) = args.crossover.clone() {
        return crossover(&args, &sizes);
    }
    anyhow::ensure!(
        !args.reuse || args.data_dir.is_some() || args.backend.store_url.is_some(),
        "--reuse needs the --data-dir or --store a previous run loaded"
    );
    let say = |msg: String| {
        if !args.json {
            eprintln!("{msg}");
        }
    };
    let tmp = tempfile::tempdir()?;
    let dir = args
        .data_dir
        .clone()
        .unwrap_or_else(|| tmp.path().to_owned());
    let model_dir = args
        .model_dir
        .clone()
        .unwrap_or_else(engram_embed::default_model_dir);
    let embedder = load_embedder(model_dir).await?;
    let t_open = Instant::now();
    let store = match &args.backend.store_url {
        Some(url) => crate::runtime::Backend::Postgres(
            engram_postgres::PgStore::connect(
                url,
                args.backend.pg_options(args.retrieval.exact_threshold),
            )
            .await?,
        ),
        None => {
            let options = SqliteOptions {
                index: args.retrieval.index(),
                durable: args.backend.durability == crate::runtime::Durability::Full,
                key: args.encryption.key_for(&args.backend)?,
                ..SqliteOptions::default()
            };
            crate::runtime::Backend::Sqlite(SqliteStore::open_async(dir.clone(), options).await?)
        }
    };
    let store_dyn: Arc<dyn Store> = store.store();
    let open_secs = t_open.elapsed().as_secs_f64();
    let service = MemoryService::new(
        store_dyn.clone(),
        embedder.clone(),
        args.retrieval.retrieval(),
        args.retrieval.ingest(),
        100_000,
        Arc::new(SystemClock),
    )
    .await?;
    if args.mixed {
        let keys = engram_core::service::KeyService::new(store.keys(), Arc::new(SystemClock));
        let out =
            crate::bench_mixed::run(store_dyn.clone(), service, keys, args.clients, args.seconds)
                .await?;
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    if args.webhooks {
        let keys = engram_core::service::KeyService::new(store.keys(), Arc::new(SystemClock));
        let out = crate::bench_webhooks::run(
            service,
            keys,
            args.workers,
            args.webhook_adds,
            args.webhook_burst,
        )
        .await?;
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }

    // Part embeddings.
    let t0 = Instant::now();
    let embed_all = |items: &[&str]| {
        let texts: Vec<String> = items.iter().map(|s| s.to_string()).collect();
        let e = embedder.clone();
        async move { e.embed(&texts).await }
    };
    let (names, verbs, objects, times) = (
        embed_all(NAMES).await?,
        embed_all(VERBS).await?,
        embed_all(OBJECTS).await?,
        embed_all(TIMES).await?,
    );
    say(format!(
        "embedded {} parts in {:.1}s",
        NAMES.len() + VERBS.len() + OBJECTS.len() + TIMES.len(),
        t0.elapsed().as_secs_f64()
    ));

    // Load memories straight into the store.
    let users = (args.memories / args.per_user.max(1)).max(1);
    let model_id = embedder.model().id.clone();
    let now = jiff::Timestamp::now();
    let mut to_expire: Vec<uuid::Uuid> = Vec::with_capacity(args.memories / 10 + 1);
    let far = engram_core::clock::to_millis(now + jiff::SignedDuration::from_hours(24 * 365));
    let t_load = Instant::now();
    let mut batch = Vec::with_capacity(1000);
    let to_load = if args.reuse { 0 } else { args.memories };
    for i in 0..to_load {
        let (n, v, o, t) = (
            i % NAMES.len(),
            (i / 7) % VERBS.len(),
            (i / 3) % OBJECTS.len(),
            (i / 11) % TIMES.len(),
        );
        // A per-memory suffix keeps texts distinct, like real memories.
        let text = format!(
            "{} {} {} {} (note {i})",
            NAMES[n], VERBS[v], OBJECTS[o], TIMES[t]
        );
        let vector = normalise(
            (0..names[0].len())
                .map(|d| 0.6 * names[n][d] + verbs[v][d] + 1.2 * objects[o][d] + 0.4 * times[t][d])
                .collect(),
        );
        let scope = Scope {
            user_id: Some(format!("user-{}", (i * 7919) % users)),
            agent_id: (i % 3 == 0).then(|| "assistant".to_owned()),
            org_id: Some("acme".to_owned()),
            ..Default::default()
        };
        let at = now - jiff::SignedDuration::from_secs(((args.memories - i) * 60) as i64);
        // Every tenth memory has a (distant) expiry: the sweep figure expires them.
        let expiring = i % 10 == 5;
        let memory = Memory {
            id: uuid::Uuid::now_v7(),
            version: 1,
            hash: text_hash(&text),
            entities: tag_entities(&text),
            tokens: embedder.count_tokens(&text) as u32,
            feedback: None,
            text: text.clone(),
            kind: MemoryKind::Semantic,
            scope: scope.clone(),
            metadata: Default::default(),
            categories: Vec::new(),
            role: Some("user".into()),
            created_at: at,
            updated_at: at,
            valid_at: None,
            invalid_at: None,
            expires_at: expiring.then_some(far),
            idle_ttl: None,
            embedding_model: model_id.clone(),
        };
        if expiring {
            to_expire.push(memory.id);
        }
        let history = HistoryEvent {
            id: uuid::Uuid::now_v7(),
            memory_id: memory.id,
            event: Event::Add,
            old_text: None,
            new_text: Some(text),
            version: 1,
            actor: Some("bench".into()),
            reason: None,
            request_id: None,
            scope,
            created_at: at,
        };
        batch.push(WriteOp::Insert {
            memory,
            embedding: vector,
            history,
        });
        if batch.len() == 1000 {
            store_dyn.apply(std::mem::take(&mut batch)).await?;
            if !args.json && (i + 1) % 20_000 == 0 {
                eprintln!("  loaded {}", i + 1);
            }
        }
    }
    if !batch.is_empty() {
        store_dyn.apply(batch).await?;
    }
    let load_secs = t_load.elapsed().as_secs_f64();
    // Fresh planner statistics, as autovacuum would soon give a loaded table.
    if let crate::runtime::Backend::Postgres(pg) = &store {
        pg.analyze().await?;
    }
    say(format!(
        "loaded {} memories for {users} users in {load_secs:.1}s",
        args.memories
    ));

    // Queries: real embeddings, warmed into the cache so search timings exclude embedding.
    let queries: Vec<String> = (0..args.queries)
        .map(|i| {
            format!(
                "what does {} think about {}?",
                NAMES[(i * 5) % NAMES.len()],
                OBJECTS[(i * 13) % OBJECTS.len()]
            )
        })
        .collect();
    let t_embed = Instant::now();
    for q in &queries {
        service.query_cache().embed_query(q).await?;
    }
    let warm_secs = t_embed.elapsed().as_secs_f64();

    let search_series = |scope: Box<dyn Fn(usize) -> Scope>| {
        let service = service.clone();
        let queries = queries.clone();
        async move {
            let mut ms = Vec::with_capacity(queries.len());
            let mut paths = std::collections::BTreeMap::<&'static str, usize>::new();
            for (i, q) in queries.iter().enumerate() {
                let filter = Filter::from_scope(&scope(i));
                let t = Instant::now();
                let out = service
                    .search(
                        &RequestCtx::operator("bench"),
                        SearchInput {
                            query: q.clone(),
                            filter,
                            top_k: Some(10),
                            threshold: None,
                            token_budget: None,
                            explain: false,
                        },
                    )
                    .await?;
                ms.push(t.elapsed().as_secs_f64() * 1e3);
                *paths.entry(out.vector_path.as_str()).or_default() += 1;
            }
            anyhow::Ok((summary(ms), paths))
        }
    };
    let (user_lat, user_paths) = search_series(Box::new(move |i| Scope {
        user_id: Some(format!("user-{}", (i * 31) % users)),
        ..Default::default()
    }))
    .await?;
    let (agent_lat, agent_paths) = search_series(Box::new(|_| Scope {
        agent_id: Some("assistant".into()),
        ..Default::default()
    }))
    .await?;
    let big_size = store_dyn
        .count(
            &Filter::from_scope(&Scope {
                agent_id: Some("assistant".into()),
                ..Default::default()
            }),
            engram_core::ports::Visibility {
                now: jiff::Timestamp::now(),
            },
        )
        .await?;
    let big_path = agent_paths
        .iter()
        .max_by_key(|(_, n)| **n)
        .map_or("empty", |(p, _)| *p);
    say(format!(
        "search (server-side, embedding cached): user scope {user_lat}, agent scope {agent_lat}"
    ));

    // Listing the big scope page by page with a cursor: a page should cost
    // about a page, wherever it is.
    let mut list_ms = Vec::new();
    let agent = Filter::from_scope(&Scope {
        agent_id: Some("assistant".into()),
        ..Default::default()
    });
    let lister = RequestCtx::operator("bench");
    let mut after = None;
    for _ in 0..50 {
        let t = Instant::now();
        let page = service.list(&lister, &agent, after, 100).await?;
        list_ms.push(t.elapsed().as_secs_f64() * 1000.0);
        match page.next {
            Some(c) => after = Some(c),
            None => after = None,
        }
    }
    let list_lat = summary(list_ms);
    say(format!(
        "list, agent scope, cursor pages of 100: {list_lat}"
    ));
    if args.quick || args.reuse {
        let (rss, peak) = rss_mib();
        let report = json!({
            "memories": args.memories,
            "users": users,
            "backend": store_dyn.backend(),
            "open_seconds": (open_secs * 100.0).round() / 100.0,
            "big_scope": {"name": "agent_id=assistant", "size": big_size, "path": big_path},
            "load": (!args.reuse).then(|| json!({"seconds": (load_secs * 100.0).round() / 100.0,
                "memories_per_second": (args.memories as f64 / load_secs).round()})),
            "search_server_side_excluding_embedding": {"user_scope": user_lat, "user_scope_paths": user_paths, "agent_scope": agent_lat, "agent_scope_paths": agent_paths},
            "list_page_agent_scope": list_lat,
            "rss_mib": rss,
            "peak_rss_mib": peak,
        });
        store_dyn.flush().await?;
        println!("{}", serde_json::to_string(&report)?);
        return Ok(());
    }

    // Embedding alone (fresh texts, one at a time, as a query would be).
    let mut embed_ms = Vec::new();
    for i in 0..50.min(args.queries) {
        let q = vec![format!(
            "fresh question number {i} about {}",
            OBJECTS[i % OBJECTS.len()]
        )];
        let t = Instant::now();
        embedder.embed(&q).await?;
        embed_ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let embed_lat = summary(embed_ms);

    // End to end over HTTP on a real port.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    // Through authentication, as a client sees it: a key bound to the bench's org.
    let keys = engram_core::service::KeyService::new(store.keys(), Arc::new(SystemClock));
    let (_, token) = keys
        .create(
            &engram_core::access::Principal::operator(),
            engram_core::service::NewKey {
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
    let state = AppState::new(
        service.clone(),
        keys,
        ServerConfig {
            rate_limit: engram_server::auth::RateLimitConfig {
                per_minute: 0,
                burst: 1,
            },
            ..ServerConfig::default()
        },
    );
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(engram_server::serve(listener, state, async {
        let _ = stop_rx.await;
    }));
    let client = reqwest::Client::new();
    let url = format!("http://{addr}/v1/memories/search");
    let http_series = |fresh: bool| {
        let (client, url, queries, token) =
            (client.clone(), url.clone(), queries.clone(), token.clone());
        async move {
            let mut ms = Vec::new();
            let n = if fresh {
                50.min(queries.len())
            } else {
                queries.len()
            };
            for (i, q) in queries.iter().take(n).enumerate() {
                let query = if fresh {
                    format!("{q} (variant {i})")
                } else {
                    q.clone()
                };
                let body = json!({"query": query, "user_id": format!("user-{}", (i * 31) % users), "top_k": 10});
                let t = Instant::now();
                let resp = client
                    .post(&url)
                    .bearer_auth(&token)
                    .json(&body)
                    .send()
                    .await?;
                anyhow::ensure!(
                    resp.status().is_success(),
                    "search answered {}",
                    resp.status()
                );
                let _: Value = resp.json().await?;
                ms.push(t.elapsed().as_secs_f64() * 1e3);
            }
            anyhow::Ok(summary(ms))
        }
    };
    let http_cached = http_series(false).await?;
    let http_uncached = http_series(true).await?;
    // Throughput: 8 clients at once, embeddings cached (each query seen before).
    let t_qps = Instant::now();
    let mut clients = Vec::new();
    for c in 0..8usize {
        let (client, url, queries, token) =
            (client.clone(), url.clone(), queries.clone(), token.clone());
        clients.push(tokio::spawn(async move {
            for (i, q) in queries.iter().enumerate().skip(c).step_by(2) {
                let body = json!({"query": q, "user_id": format!("user-{}", (i * 31) % users), "top_k": 10});
                let resp = client.post(&url).bearer_auth(&token).json(&body).send().await?;
                anyhow::ensure!(resp.status().is_success(), "search answered {}", resp.status());
                let _: Value = resp.json().await?;
            }
            anyhow::Ok(())
        }));
    }
    for c in clients {
        c.await.context("qps client")??;
    }
    let qps = (8 * queries.len() / 2) as f64 / t_qps.elapsed().as_secs_f64();
    // The dashboard's memories page and search playground, in user scopes and the big scope.
    let base = format!("http://{addr}");
    let user = |i: usize| format!("user_id=user-{}", (i * 31) % users);
    let query = |i: usize| queries[i % queries.len()].clone();
    let dashboard_user =
        crate::bench_ui::dashboard(&base, &token, 100.min(queries.len()), user, query).await?;
    let dashboard_big = crate::bench_ui::dashboard(
        &base,
        &token,
        20,
        |_| "agent_id=assistant".to_owned(),
        query,
    )
    .await?;
    let _ = stop_tx.send(());
    server.await.context("server task")??;

    // Ingest through the whole pipeline (embedding, dedup, write).
    let texts: Vec<String> = (0..args.ingest)
        .map(|i| {
            format!(
                "{} {} {} (ingest {i})",
                NAMES[i % NAMES.len()],
                VERBS[(i / 3) % VERBS.len()],
                OBJECTS[(i / 7) % OBJECTS.len()]
            )
        })
        .collect();
    let t_embed_only = Instant::now();
    for chunk in texts.chunks(64) {
        embedder.embed(chunk).await?;
    }
    let embed_only = t_embed_only.elapsed().as_secs_f64();
    let ctx = RequestCtx::operator("bench");
    let t_ingest = Instant::now();
    for (c, chunk) in texts.chunks(64).enumerate() {
        let inputs = chunk
            .iter()
            .map(|t| {
                let scope = Scope {
                    user_id: Some(format!("ingest-user-{}", c % 20)),
                    ..Default::default()
                };
                AddInput::new(Content::Text(t.clone()), scope)
            })
            .collect();
        service.add_batch(&ctx, inputs).await?;
    }
    let ingest_secs = t_ingest.elapsed().as_secs_f64();

    // Single adds, one text and one transaction each (what `--durability`
    // changes): latency of the whole add, embedding included.
    let mut single = Vec::with_capacity(200);
    for (i, t) in texts.iter().take(200).enumerate() {
        let scope = Scope {
            user_id: Some(format!("single-user-{}", i % 20)),
            ..Default::default()
        };
        let input = AddInput::new(Content::Text(format!("{t} (single {i})")), scope);
        let t0 = Instant::now();
        service.add(&ctx, input).await?;
        single.push(t0.elapsed().as_secs_f64() * 1000.0);
    }

    store_dyn.flush().await?;
    let stats = store_dyn.stats().await?;
    let (rss, peak) = rss_mib();

    // The sweep: once with nothing expired (its cost every interval), then
    // with a tenth of the memories expired.
    let idle = service.sweep().await?;
    let expired_at = service.now();
    for ids in to_expire.chunks(1000) {
        let ops = ids
            .iter()
            .map(|id| WriteOp::SetExpiry {
                id: *id,
                version: 1,
                from: Some(far),
                to: Some(expired_at),
            })
            .collect();
        store_dyn.apply(ops).await?;
    }
    let swept = service.sweep().await?;
    anyhow::ensure!(
        swept.memories as usize == to_expire.len(),
        "the sweep removed {} memories; {} had expired",
        swept.memories,
        to_expire.len()
    );
    let report = json!({
        "memories": args.memories,
        "users": users,
        "backend": store_dyn.backend(),
        "open_seconds": (open_secs * 100.0).round() / 100.0,
        "big_scope": {"name": "agent_id=assistant", "size": big_size, "path": big_path},
        "load": {"seconds": (load_secs * 100.0).round() / 100.0, "memories_per_second": (args.memories as f64 / load_secs).round()},
        "search_server_side_excluding_embedding": {"user_scope": user_lat, "user_scope_paths": user_paths, "agent_scope": agent_lat, "agent_scope_paths": agent_paths},
        "embedding_one_query": embed_lat,
        "query_warmup_seconds": (warm_secs * 100.0).round() / 100.0,
        "http_search_end_to_end": {"embedding_cached": http_cached, "embedding_uncached": http_uncached,
            "qps_8_clients_embedding_cached": qps.round()},
        "dashboard": {"user_scope": dashboard_user, "agent_scope": dashboard_big},
        "add_single": summary(single),
        "list_page_agent_scope": list_lat,
        "ingest_pipeline": {"memories": args.ingest, "memories_per_second": (args.ingest as f64 / ingest_secs).round(),
            "embedding_share": ((embed_only / ingest_secs) * 1000.0).round() / 1000.0},
        "store": {"bytes_on_disk": stats.bytes, "versions": stats.versions, "indexed_vectors": stats.indexed_vectors},
        "rss_mib": rss,
        "peak_rss_mib": peak,
        "sweep": {"idle_ms": (idle.seconds * 1e5).round() / 100.0, "expired": swept.memories,
            "seconds": (swept.seconds * 100.0).round() / 100.0, "batches": swept.batches,
            "memories_per_second": (swept.memories as f64 / swept.seconds.max(1e-9)).round()},
    });
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    Ok(())
}

/// Exact scan vs filtered HNSW for filtered sets of growing size in one index.
fn crossover(args: &BenchArgs, sizes: &[usize]) -> anyhow::Result<()> {
    use engram_index::{IndexConfig, VectorIndex};
    const DIM: usize = 384;
    let n = args.memories;
    // Clustered unit vectors (real embeddings cluster by topic), from a fixed-seed xorshift.
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut rnd = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 11) as f32 / (1u64 << 53) as f32 - 0.5
    };
    let centres: Vec<Vec<f32>> = (0..200)
        .map(|_| (0..DIM).map(|_| rnd()).collect())
        .collect();
    let mut point = |c: usize| {
        normalise(
            centres[c % centres.len()]
                .iter()
                .map(|x| x + 0.35 * rnd())
                .collect(),
        )
    };
    let index = VectorIndex::new(DIM, IndexConfig::default())?;
    let t = Instant::now();
    let vectors: Vec<Vec<f32>> = (0..n).map(|i| point(i * 7919)).collect();
    let items: Vec<(u64, &[f32])> = vectors
        .iter()
        .enumerate()
        .map(|(i, v)| (i as u64, v.as_slice()))
        .collect();
    index.insert_arena(&items)?;
    index.rebuild_graph(2)?;
    let build = t.elapsed().as_secs_f64();
    if !args.json {
        eprintln!("built an HNSW graph of {n} vectors in {build:.1}s");
    }
    let queries: Vec<Vec<f32>> = (0..args.queries.max(1))
        .map(|i| point(i * 31 + 5))
        .collect();
    let mut rows = Vec::new();
    for &size in sizes {
        // The filtered set: every (n / size)-th key, spread over the whole index like a real scope.
        let stride = (n / size.max(1)).max(1);
        let members: Vec<u64> = (0..n as u64).step_by(stride).take(size).collect();
        let mut bitmap = vec![false; n];
        for &m in &members {
            bitmap[m as usize] = true;
        }
        let keep = |k: u64| bitmap.get(k as usize).copied().unwrap_or(false);
        let (mut exact_ms, mut hnsw_ms, mut overlap) = (Vec::new(), Vec::new(), 0usize);
        for q in &queries {
            let t = Instant::now();
            let exact = index.exact(q, members.iter().copied(), 10, keep)?;
            exact_ms.push(t.elapsed().as_secs_f64() * 1e3);
            let t = Instant::now();
            // As a search asks: `--candidates` from the vector signal, of
            // which the best ten are what recall@10 judges.
            let mut approx = index.hnsw(q, args.retrieval.candidates.max(10), keep)?;
            approx.truncate(10);
            hnsw_ms.push(t.elapsed().as_secs_f64() * 1e3);
            overlap += approx
                .iter()
                .filter(|(k, _)| exact.iter().any(|(e, _)| e == k))
                .count();
        }
        let recall = overlap as f64 / (queries.len() * 10) as f64;
        let row = json!({"filtered_set": members.len(), "exact": summary(exact_ms), "hnsw": summary(hnsw_ms),
                         "hnsw_recall_at_10": (recall * 1000.0).round() / 1000.0});
        if !args.json {
            eprintln!("{row}");
        }
        rows.push(row);
    }
    println!(
        "{}",
        serde_json::to_string(
            &json!({"vectors": n, "graph_build_seconds": (build * 10.0).round() / 10.0, "rows": rows})
        )?
    );
    Ok(())
}
