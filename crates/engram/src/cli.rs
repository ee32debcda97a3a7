//! Command-line interface.

use std::io::BufRead;
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use engram_core::filter::Filter;
use engram_core::memory::Scope;
use engram_core::service::{AddInput, Content, MemoryService, RequestCtx, SearchInput};
use serde_json::{Value, json};

use crate::runtime::{LogArgs, StoreArgs};

/// Engram: long-term memory for AI agents.
#[derive(Parser, Debug)]
#[command(name = "engram", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    #[command(flatten)]
    pub log: LogArgs,
    /// TOML config file; its keys are the settings' env names without `ENGRAM_`, lower case.
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Serve the REST API and MCP over HTTP at /mcp (API keys required).
    Serve(crate::serve::ServeArgs),
    /// Manage API keys on a data directory (works beside a running server).
    Keys {
        #[command(subcommand)]
        command: crate::keys::KeysCommand,
    },
    /// Show the effective configuration.
    Config {
        #[command(subcommand)]
        command: crate::config::ConfigCommand,
    },
    /// Serve MCP over stdio (for Claude Desktop, Cursor, VS Code…).
    Mcp(crate::mcp::McpArgs),
    /// Remember a text.
    Add(AddArgs),
    /// Search memories.
    Search(SearchArgs),
    /// Import memories from a JSON Lines file (one add request per line).
    Import(ImportArgs),
    /// Measure retrieval quality.
    Eval {
        #[command(subcommand)]
        benchmark: crate::eval::EvalCommand,
    },
    /// Measure latency, throughput and memory use.
    Bench(crate::bench::BenchArgs),
}

/// Scope ids on the command line.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct ScopeArgs {
    #[arg(long = "user", alias = "user-id")]
    pub user_id: Option<String>,
    #[arg(long = "agent", alias = "agent-id")]
    pub agent_id: Option<String>,
    #[arg(long = "run", alias = "run-id")]
    pub run_id: Option<String>,
    #[arg(long = "org", alias = "org-id")]
    pub org_id: Option<String>,
    #[arg(long = "app", alias = "app-id")]
    pub app_id: Option<String>,
}

impl ScopeArgs {
    fn scope(&self) -> Scope {
        Scope {
            org_id: self.org_id.clone(),
            app_id: self.app_id.clone(),
            user_id: self.user_id.clone(),
            agent_id: self.agent_id.clone(),
            run_id: self.run_id.clone(),
        }
    }

    fn json(&self) -> serde_json::Map<String, Value> {
        let mut m = serde_json::Map::new();
        for (field, v) in self.scope().iter() {
            m.insert(field.as_str().to_owned(), json!(v));
        }
        m
    }
}

/// How a client command reaches a running server.
#[derive(clap::Args, Debug, Clone)]
pub struct ClientArgs {
    /// Talk to a running server at this URL instead of opening the data directory.
    #[arg(long, env = "ENGRAM_URL")]
    pub url: Option<String>,
    /// API key for --url.
    #[arg(long, env = "ENGRAM_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
}

/// Where a client command sends its work.
#[derive(clap::Args, Debug, Clone)]
pub struct Target {
    #[command(flatten)]
    pub client: ClientArgs,
    #[command(flatten)]
    pub store: StoreArgs,
}

#[derive(clap::Args, Debug)]
pub struct AddArgs {
    /// The text to remember.
    #[arg(required = true)]
    pub text: Vec<String>,
    #[command(flatten)]
    pub scope: ScopeArgs,
    /// Metadata as a JSON object.
    #[arg(long)]
    pub metadata: Option<String>,
    #[command(flatten)]
    pub target: Target,
}

#[derive(clap::Args, Debug)]
pub struct SearchArgs {
    /// What to look for.
    #[arg(required = true)]
    pub query: Vec<String>,
    #[command(flatten)]
    pub scope: ScopeArgs,
    #[arg(long, default_value_t = 10)]
    pub top_k: usize,
    /// Token budget (0 = unlimited).
    #[arg(long)]
    pub budget: Option<usize>,
    /// Show per-signal scores.
    #[arg(long)]
    pub explain: bool,
    /// Print the raw JSON response.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub target: Target,
}

#[derive(clap::Args, Debug)]
pub struct ImportArgs {
    /// JSON Lines file: each line is a `POST /v1/memories` body (or, with
    /// `--from mem0`, Mem0's `get_all` / export JSON).
    pub file: PathBuf,
    /// The file's format: `engram` (add request bodies, one per line) or
    /// `mem0` (a Mem0 `get_all` answer `{"results": [...]}`, a list of Mem0
    /// memories, or one memory per line).
    #[arg(long = "from", default_value = "engram", value_parser = ["engram", "mem0"])]
    pub format: String,
    /// Stamp this org id on every memory that names none (so keys bound to it see them).
    #[arg(long = "org")]
    pub org_id: Option<String>,
    /// Lines per batch.
    #[arg(long, default_value_t = 64)]
    pub batch: usize,
    #[command(flatten)]
    pub target: Target,
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => crate::serve::run(args).await,
        Command::Keys { command } => crate::keys::run(command).await,
        // Printed by `main`, which holds the parsed matches.
        Command::Config { .. } => Ok(()),
        Command::Mcp(args) => crate::mcp::run(args).await,
        Command::Add(args) => add(args).await,
        Command::Search(args) => search(args).await,
        Command::Import(args) => import(args).await,
        Command::Eval { benchmark } => crate::eval::run(benchmark).await,
        Command::Bench(args) => crate::bench::run(args).await,
    }
}

/// Opens the data directory for a one-off command, refusing if a server holds it.
async fn local(target: &Target) -> anyhow::Result<(MemoryService, Option<crate::serve::DirLock>)> {
    let lock = if target.store.backend.is_postgres() {
        None
    } else {
        Some(crate::serve::DirLock::acquire(
            &target.store.data_dir,
            None,
        )?)
    };
    let (service, _) = crate::runtime::open_service(&target.store).await?;
    Ok((service, lock))
}

fn cli_ctx() -> RequestCtx {
    RequestCtx::operator("cli")
}

async fn post(client: &ClientArgs, path: &str, body: &Value) -> anyhow::Result<Value> {
    let url = client.url.as_deref().unwrap_or_default();
    let mut req = reqwest::Client::new()
        .post(format!("{}{path}", url.trim_end_matches('/')))
        .json(body);
    if let Some(key) = &client.api_key {
        req = req.bearer_auth(key);
    }
    let resp = req
        .send()
        .await
        .with_context(|| format!("cannot reach {url}"))?;
    let status = resp.status();
    let value: Value = resp.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        let detail = value
            .get("detail")
            .and_then(Value::as_str)
            .unwrap_or("no detail");
        bail!("server answered {status}: {detail}");
    }
    Ok(value)
}

async fn add(args: AddArgs) -> anyhow::Result<()> {
    let text = args.text.join(" ");
    let metadata: serde_json::Map<String, Value> = match &args.metadata {
        Some(m) => serde_json::from_str(m).context("--metadata must be a JSON object")?,
        None => Default::default(),
    };
    let results = if args.target.client.url.is_some() {
        let mut body = args.scope.json();
        body.insert("text".into(), json!(text));
        body.insert("metadata".into(), Value::Object(metadata));
        post(&args.target.client, "/v1/memories", &Value::Object(body)).await?["results"].clone()
    } else {
        let (service, _lock) = local(&args.target).await?;
        let input = AddInput {
            content: Content::Text(text),
            scope: args.scope.scope(),
            metadata,
            categories: Vec::new(),
            kind: Default::default(),
            expires_at: None,
            ttl: None,
            timestamp: None,
        };
        let out = service.add(&cli_ctx(), input).await?;
        service.store().flush().await?;
        serde_json::to_value(out)?
    };
    for r in results.as_array().into_iter().flatten() {
        println!(
            "{} {} {}",
            r["event"].as_str().unwrap_or("?"),
            r["id"].as_str().unwrap_or("?"),
            r["memory"].as_str().unwrap_or("")
        );
    }
    Ok(())
}

async fn search(args: SearchArgs) -> anyhow::Result<()> {
    let query = args.query.join(" ");
    let response = if args.target.client.url.is_some() {
        let mut body = args.scope.json();
        body.insert("query".into(), json!(query));
        body.insert("top_k".into(), json!(args.top_k));
        body.insert("explain".into(), json!(args.explain));
        if let Some(b) = args.budget {
            body.insert("token_budget".into(), json!(b));
        }
        post(
            &args.target.client,
            "/v1/memories/search",
            &Value::Object(body),
        )
        .await?
    } else {
        let (service, _lock) = local(&args.target).await?;
        let out = service
            .search(
                &cli_ctx(),
                SearchInput {
                    query,
                    filter: Filter::from_scope(&args.scope.scope()),
                    top_k: Some(args.top_k),
                    threshold: None,
                    token_budget: args.budget,
                    explain: args.explain,
                },
            )
            .await?;
        let results: Vec<Value> = out
            .hits
            .into_iter()
            .map(|h| {
                let mut v = serde_json::to_value(engram_server::wire::MemoryOut::from(h.memory))
                    .unwrap_or(Value::Null);
                v["score"] = json!(h.score);
                if let Some(e) = h.explanation {
                    v["explanation"] = serde_json::to_value(e).unwrap_or(Value::Null);
                }
                v
            })
            .collect();
        json!({"results": results, "tokens": out.tokens})
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&response)?);
        return Ok(());
    }
    let results = response["results"].as_array().cloned().unwrap_or_default();
    if results.is_empty() {
        println!("no memories found");
    }
    for r in results {
        println!(
            "{:.3}  {}",
            r["score"].as_f64().unwrap_or(0.0),
            r["memory"].as_str().unwrap_or("")
        );
        if let Some(e) = r.get("explanation") {
            println!("       {e}");
        }
    }
    Ok(())
}

/// One line of an import file: the body of `POST /v1/memories`.
fn import_line(line: &str, n: usize) -> anyhow::Result<AddInput> {
    let req: engram_server::wire::AddRequest =
        serde_json::from_str(line).with_context(|| format!("line {n}: not an add request"))?;
    req.into_input()
        .map_err(|e| anyhow::anyhow!("line {n}: {}", e.detail))
}

/// One Mem0 memory object → the body of `POST /v1/memories`.
fn mem0_memory_to_add(m: &Value, org: Option<&str>) -> anyhow::Result<Value> {
    let text = m["memory"]
        .as_str()
        .or_else(|| m["text"].as_str())
        .context("a Mem0 memory without `memory` text")?;
    let mut body = serde_json::Map::new();
    body.insert("text".into(), json!(text));
    for id in ["user_id", "agent_id", "app_id", "run_id", "org_id"] {
        if let Some(v) = m[id].as_str().filter(|v| !v.is_empty()) {
            body.insert(id.into(), json!(v));
        }
    }
    // Mem0's hosted API calls the run `session_id` in listings.
    if !body.contains_key("run_id")
        && let Some(v) = m["session_id"].as_str().filter(|v| !v.is_empty())
    {
        body.insert("run_id".into(), json!(v));
    }
    if let (Some(org), false) = (org, body.contains_key("org_id")) {
        body.insert("org_id".into(), json!(org));
    }
    if let Some(md) = m["metadata"].as_object() {
        body.insert("metadata".into(), Value::Object(md.clone()));
    }
    if let Some(c) = m["categories"].as_array() {
        let cats: Vec<&str> = c.iter().filter_map(Value::as_str).collect();
        body.insert("categories".into(), json!(cats));
    }
    if let Some(t) = m["created_at"].as_str() {
        body.insert("timestamp".into(), json!(t));
    }
    Ok(Value::Object(body))
}

/// Converts a Mem0 export into an Engram import file (add bodies, one per line).
fn mem0_to_jsonl(
    path: &std::path::Path,
    org: Option<&str>,
) -> anyhow::Result<tempfile::NamedTempFile> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let memories: Vec<Value> = match serde_json::from_str::<Value>(&text) {
        Ok(Value::Object(o)) if o.get("results").is_some_and(Value::is_array) => {
            o["results"].as_array().cloned().unwrap_or_default()
        }
        Ok(Value::Array(items)) => items,
        Ok(v @ Value::Object(_)) => vec![v],
        _ => text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
            .map(|(n, l)| {
                serde_json::from_str(l).with_context(|| format!("line {}: not JSON", n + 1))
            })
            .collect::<anyhow::Result<_>>()?,
    };
    let mut out = tempfile::NamedTempFile::new()?;
    use std::io::Write;
    for (n, m) in memories.iter().enumerate() {
        let body = mem0_memory_to_add(m, org).with_context(|| format!("memory {}", n + 1))?;
        writeln!(out, "{body}")?;
    }
    out.flush()?;
    Ok(out)
}

async fn import(mut args: ImportArgs) -> anyhow::Result<()> {
    let _converted = if args.format == "mem0" {
        let converted = mem0_to_jsonl(&args.file, args.org_id.as_deref())?;
        args.file = converted.path().to_owned();
        Some(converted)
    } else {
        None
    };
    let file = std::fs::File::open(&args.file)
        .with_context(|| format!("opening {}", args.file.display()))?;
    let size = file.metadata().map(|m| m.len()).unwrap_or(0);
    let bar = indicatif::ProgressBar::new(size);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} {msg} ({eta})")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let reader = std::io::BufReader::new(file);
    let local = match &args.target.client.url {
        Some(_) => None,
        None => Some(local(&args.target).await?),
    };
    let (mut added, mut noops, mut read) = (0usize, 0usize, 0u64);
    let mut batch: Vec<(usize, String)> = Vec::new();
    let mut lines = reader.lines().enumerate().peekable();
    while lines.peek().is_some() || !batch.is_empty() {
        while batch.len() < args.batch.max(1) {
            let Some((i, line)) = lines.next() else { break };
            let line = line.context("reading the import file")?;
            read += line.len() as u64 + 1;
            if !line.trim().is_empty() {
                batch.push((i + 1, line));
            }
        }
        if batch.is_empty() {
            break;
        }
        if let (Some(org), "engram") = (&args.org_id, args.format.as_str()) {
            for (n, line) in batch.iter_mut() {
                let mut body: Value =
                    serde_json::from_str(line).with_context(|| format!("line {n}: not JSON"))?;
                if let Some(obj) = body.as_object_mut()
                    && !obj.contains_key("org_id")
                {
                    obj.insert("org_id".into(), json!(org));
                    *line = body.to_string();
                }
            }
        }
        let events: Vec<String> = if args.target.client.url.is_some() {
            let mut events = Vec::new();
            for (n, line) in &batch {
                let body: Value =
                    serde_json::from_str(line).with_context(|| format!("line {n}: not JSON"))?;
                let out = post(&args.target.client, "/v1/memories", &body)
                    .await
                    .with_context(|| format!("line {n}"))?;
                events.extend(
                    out["results"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|r| r["event"].as_str().map(str::to_owned)),
                );
            }
            events
        } else {
            let (service, _) = local.as_ref().context("no local store")?;
            let inputs = batch
                .iter()
                .map(|(n, l)| import_line(l, *n))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let out = service.add_batch(&cli_ctx(), inputs).await?;
            out.into_iter()
                .flatten()
                .map(|r| r.event.as_str().to_owned())
                .collect()
        };
        added += events.iter().filter(|e| *e == "ADD").count();
        noops += events.iter().filter(|e| *e == "NOOP").count();
        batch.clear();
        bar.set_position(read.min(size));
        bar.set_message(format!("{added} added, {noops} duplicates"));
    }
    bar.finish();
    if let Some((service, _)) = &local {
        service.store().flush().await?;
    }
    println!(
        "imported {}: {added} memories added, {noops} duplicates skipped",
        args.file.display()
    );
    Ok(())
}
