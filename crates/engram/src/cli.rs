//! Command-line interface.

use std::io::BufRead;
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use engram_core::ctx::RequestCtx;
use engram_core::filter::Filter;
use engram_core::memory::Scope;
use engram_core::ports::JobState;
use engram_core::service::{
    AddInput, Added, Content, JobConfig, JobQueue, JobRunner, MemoryService, SearchInput,
};
use serde_json::{Value, json};

use crate::runtime::{LlmArgs, LogArgs, StoreArgs};

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
    /// Import memories from a JSON Lines file: an `engram export` file, or one add request per line.
    Import(ImportArgs),
    /// Export a scope's memories (every version, vector and history) as versioned JSON Lines.
    Export(ExportArgs),
    /// Encrypt, re-key or decrypt the SQLite data directory (stop the server first).
    Rekey(RekeyArgs),
    /// Move every stored vector to another embedding model (resumable; with
    /// --url the server does it in the background and serves meanwhile).
    Reembed(crate::reembed::ReembedArgs),
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
    /// Wait for a queued add (an LLM is configured) to finish and print what it stored.
    #[arg(long)]
    pub wait: bool,
    #[command(flatten)]
    pub llm: LlmArgs,
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
    /// JSON Lines file: an `engram export` file (recognised by its header
    /// line), or one `POST /v1/memories` body per line (or, with `--from
    /// mem0`, Mem0's `get_all` / export JSON).
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

#[derive(clap::Args, Debug)]
pub struct ExportArgs {
    /// Write here (default: standard output).
    #[arg(long, short)]
    pub out: Option<PathBuf>,
    /// The scope to export (at least one id).
    #[command(flatten)]
    pub scope: ScopeArgs,
    #[command(flatten)]
    pub target: Target,
}

#[derive(clap::Args)]
pub struct RekeyArgs {
    /// Data directory.
    #[arg(long, env = "ENGRAM_DATA_DIR", default_value = "./engram-data")]
    pub data_dir: PathBuf,
    /// The current key (give none if the database is not encrypted yet).
    #[command(flatten)]
    pub current: crate::runtime::EncryptionArgs,
    /// The new key: 64 hex digits (a raw key) or a passphrase. Prefer --new-key-file.
    #[arg(long, env = "ENGRAM_NEW_ENCRYPTION_KEY", hide_env_values = true)]
    pub new_key: Option<String>,
    /// File holding the new key (its first line).
    #[arg(long, conflicts_with = "new_key")]
    pub new_key_file: Option<PathBuf>,
    /// Remove the encryption instead of setting a new key.
    #[arg(long, conflicts_with_all = ["new_key", "new_key_file"])]
    pub decrypt: bool,
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
        Command::Export(args) => export(args).await,
        Command::Rekey(args) => rekey(args).await,
        Command::Reembed(args) => crate::reembed::run(args).await,
        Command::Eval { benchmark } => crate::eval::run(benchmark).await,
        Command::Bench(args) => crate::bench::run(args).await,
    }
}

/// Opens the data directory for a one-off command, refusing if a server holds it.
pub(crate) async fn local(
    target: &Target,
) -> anyhow::Result<(MemoryService, Option<crate::serve::DirLock>)> {
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

pub(crate) fn cli_ctx() -> RequestCtx {
    RequestCtx::operator("cli")
}

/// A request to `path` on the `--url` server, with the API key.
pub(crate) fn request(
    client: &ClientArgs,
    method: reqwest::Method,
    path: &str,
) -> reqwest::RequestBuilder {
    let url = client.url.as_deref().unwrap_or_default();
    let req =
        reqwest::Client::new().request(method, format!("{}{path}", url.trim_end_matches('/')));
    match &client.api_key {
        Some(key) => req.bearer_auth(key),
        None => req,
    }
}

/// Sends `req`; an answer other than 2xx is an error with the problem's detail.
pub(crate) async fn send(
    client: &ClientArgs,
    req: reqwest::RequestBuilder,
) -> anyhow::Result<reqwest::Response> {
    let url = client.url.as_deref().unwrap_or_default();
    let resp = req
        .send()
        .await
        .with_context(|| format!("cannot reach {url}"))?;
    let status = resp.status();
    if status.is_success() {
        return Ok(resp);
    }
    if status == reqwest::StatusCode::PAYLOAD_TOO_LARGE {
        bail!(
            "the server refused the request as too large: raise its --max-body-bytes, \
             or work on the data directory directly"
        );
    }
    let value: Value = resp.json().await.unwrap_or(Value::Null);
    let detail = value
        .get("detail")
        .and_then(Value::as_str)
        .unwrap_or("no detail");
    bail!("server answered {status}: {detail}")
}

async fn post(client: &ClientArgs, path: &str, body: &Value) -> anyhow::Result<Value> {
    let req = request(client, reqwest::Method::POST, path).json(body);
    Ok(send(client, req).await?.json().await.unwrap_or(Value::Null))
}

/// A progress bar of `len` with `template` (indicatif syntax).
pub(crate) fn progress(len: u64, template: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(len);
    bar.set_style(
        indicatif::ProgressStyle::with_template(template)
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar
}

/// Opens a file to read with a progress bar over its bytes.
fn open_with_progress(
    path: &std::path::Path,
) -> anyhow::Result<(std::fs::File, u64, indicatif::ProgressBar)> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let size = file.metadata().map(|m| m.len()).unwrap_or(0);
    let bar = progress(size, "{bar:40} {bytes}/{total_bytes} {msg} ({eta})");
    Ok((file, size, bar))
}

/// Runs the local queue in this process until job `id` is finished; its results.
async fn wait_local(queue: &JobQueue, id: uuid::Uuid) -> anyhow::Result<Value> {
    let runner = JobRunner::new(queue.memory().clone(), queue.config().clone(), "cli")
        .with_pipeline(queue.pipeline().cloned());
    loop {
        let job = queue.get(&cli_ctx(), id).await?;
        match job.state {
            JobState::Done => return Ok(job.result.unwrap_or(Value::Null)["results"].clone()),
            JobState::Dead => bail!(
                "job {id} failed: {}",
                job.last_error.as_deref().unwrap_or("no error recorded")
            ),
            JobState::Queued | JobState::Running => {
                if !runner.run_once().await? {
                    // Not due yet (a retry's backoff), or another process holds it.
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                }
            }
        }
    }
}

/// Polls the `--url` server until job `id` is finished; its results.
async fn wait_remote(client: &ClientArgs, id: &str) -> anyhow::Result<Value> {
    loop {
        let req = request(client, reqwest::Method::GET, &format!("/v1/jobs/{id}"));
        let job: Value = send(client, req).await?.json().await?;
        match job["status"].as_str() {
            Some("done") => return Ok(job["result"]["results"].clone()),
            Some("dead") => bail!(
                "job {id} failed: {}",
                job["last_error"].as_str().unwrap_or("no error recorded")
            ),
            _ => tokio::time::sleep(std::time::Duration::from_millis(200)).await,
        }
    }
}

async fn add(args: AddArgs) -> anyhow::Result<()> {
    let text = args.text.join(" ");
    let metadata: serde_json::Map<String, Value> = match &args.metadata {
        Some(m) => serde_json::from_str(m).context("--metadata must be a JSON object")?,
        None => Default::default(),
    };
    let results = if let Some(url) = &args.target.client.url {
        let mut body = args.scope.json();
        body.insert("text".into(), json!(text));
        body.insert("metadata".into(), Value::Object(metadata));
        let out = post(&args.target.client, "/v1/memories", &Value::Object(body)).await?;
        match out["job_id"].as_str() {
            None => out["results"].clone(),
            Some(job) if args.wait => wait_remote(&args.target.client, job).await?,
            Some(job) => {
                println!("QUEUED job {job} (GET {url}/v1/jobs/{job} for its outcome)");
                return Ok(());
            }
        }
    } else {
        let (service, _lock) = local(&args.target).await?;
        let input = AddInput {
            metadata,
            ..AddInput::new(Content::Text(text), args.scope.scope())
        };
        // The same door as every transport: with an LLM the add is a job.
        let queue = JobQueue::new(
            service.clone(),
            JobConfig::default(),
            args.llm.pipeline(&service)?,
        );
        let results = match queue.add(&cli_ctx(), input, None, None).await? {
            Added::Done(results) => serde_json::to_value(results)?,
            Added::Queued(job) if args.wait => wait_local(&queue, job.id).await?,
            Added::Queued(job) => {
                service.flush().await?;
                println!(
                    "QUEUED job {} (it runs when `engram serve` or `engram mcp` next starts on this store; \
                     `--wait` runs it now)",
                    job.id
                );
                return Ok(());
            }
        };
        service.flush().await?;
        results
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

impl std::fmt::Debug for RekeyArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RekeyArgs")
            .field("data_dir", &self.data_dir)
            .field("current", &self.current)
            .field("new_key", &self.new_key.as_ref().map(|_| "…"))
            .field("new_key_file", &self.new_key_file)
            .field("decrypt", &self.decrypt)
            .finish()
    }
}

async fn rekey(args: RekeyArgs) -> anyhow::Result<()> {
    let old = args.current.key()?;
    let new = if args.decrypt {
        None
    } else {
        let new = crate::runtime::EncryptionArgs {
            encryption_key: args.new_key.clone(),
            encryption_key_file: args.new_key_file.clone(),
        }
        .key()?;
        if new.is_none() {
            anyhow::bail!(
                "give the new key (--new-key-file or ENGRAM_NEW_ENCRYPTION_KEY), or --decrypt"
            );
        }
        new
    };
    let _lock = crate::serve::DirLock::acquire(&args.data_dir, None)?;
    let dir = args.data_dir.clone();
    let encrypt = new.is_some();
    let versions =
        tokio::task::spawn_blocking(move || engram_sqlite::rekey(&dir, old.as_ref(), new.as_ref()))
            .await
            .context("rekey task")?
            .map_err(|e| anyhow::anyhow!(e.message))?;
    println!(
        "{}: {versions} memory versions carried over; the database is now {}",
        args.data_dir.display(),
        if encrypt {
            "encrypted with the new key"
        } else {
            "unencrypted"
        }
    );
    Ok(())
}

async fn export(args: ExportArgs) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out: Box<dyn Write> = match &args.out {
        Some(p) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(p).with_context(|| format!("creating {}", p.display()))?,
        )),
        None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
    };
    let scope = args.scope.scope();
    let started = std::time::Instant::now();
    let mut written = 0u64;
    if args.target.client.url.is_some() {
        let mut query: Vec<(&str, &str)> = Vec::new();
        for (k, v) in [
            ("user_id", &scope.user_id),
            ("agent_id", &scope.agent_id),
            ("run_id", &scope.run_id),
            ("org_id", &scope.org_id),
            ("app_id", &scope.app_id),
        ] {
            if let Some(v) = v {
                query.push((k, v));
            }
        }
        let client = &args.target.client;
        let req = request(client, reqwest::Method::GET, "/v1/export").query(&query);
        let mut resp = send(client, req).await?;
        let bar = indicatif::ProgressBar::new_spinner();
        while let Some(chunk) = resp.chunk().await.context("reading the export")? {
            written += chunk.iter().filter(|b| **b == b'\n').count() as u64;
            out.write_all(&chunk)?;
            bar.set_message(format!("{} memories", written.saturating_sub(1)));
            bar.tick();
        }
        bar.finish_and_clear();
        written = written.saturating_sub(1);
    } else {
        let (service, _lock) = local(&args.target).await?;
        let filter = engram_core::filter::Filter::from_scope(&scope);
        let ctx = cli_ctx();
        let total = service.count(&ctx, &filter).await?;
        let bar = progress(total as u64, "{bar:40} {pos}/{len} memories ({eta})");
        let header = engram_core::portable::ExportHeader::new(
            service.now(),
            service.embedder().model().clone(),
        );
        serde_json::to_writer(&mut out, &header)?;
        out.write_all(b"\n")?;
        let mut after = None;
        loop {
            let (page, next) = service.export_page(&ctx, &filter, after, 500).await?;
            for m in &page {
                serde_json::to_writer(&mut out, m)?;
                out.write_all(b"\n")?;
            }
            written += page.len() as u64;
            bar.set_position(written);
            match next {
                Some(c) => after = Some(c),
                None => break,
            }
        }
        bar.finish_and_clear();
    }
    out.flush()?;
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "exported {written} memories in {secs:.1} s ({:.0} memories/s)",
        written as f64 / secs.max(1e-9)
    );
    Ok(())
}

/// Imports an `engram export` file: locally in batches (each one
/// transaction), or to a server in requests under its body limit.
async fn import_export(args: &ImportArgs) -> anyhow::Result<()> {
    use engram_core::portable::{ExportHeader, ExportedMemory, ImportReport};
    let (file, size, bar) = open_with_progress(&args.file)?;
    let mut lines = std::io::BufReader::new(file).lines().enumerate();
    let header_line = loop {
        match lines.next() {
            Some((_, l)) => {
                let l = l.context("reading the import file")?;
                if !l.trim().is_empty() {
                    break l;
                }
            }
            None => anyhow::bail!("{} is empty", args.file.display()),
        }
    };
    let header = ExportHeader::parse(&header_line).map_err(|e| anyhow::anyhow!(e.message))?;
    let local = match &args.target.client.url {
        Some(_) => None,
        None => Some(local(&args.target).await?),
    };
    let started = std::time::Instant::now();
    let mut total = ImportReport::default();
    let mut read = header_line.len() as u64 + 1;
    // Server requests stay well under the default 1 MiB body limit.
    const REQUEST_BYTES: usize = 512 * 1024;
    // Raw lines for a server; parsed memories for the local store.
    let mut batch: Vec<String> = Vec::new();
    let mut parsed: Vec<ExportedMemory> = Vec::new();
    let mut batch_bytes = 0usize;
    let mut lines = lines.peekable();
    // A line that would have pushed the previous request over the limit.
    let mut carry: Option<String> = None;
    while lines.peek().is_some() || carry.is_some() {
        if let Some(line) = carry.take() {
            batch_bytes += line.len() + 1;
            batch.push(line);
        }
        while batch.len() + parsed.len() < args.batch.max(1) && batch_bytes < REQUEST_BYTES {
            let Some((i, line)) = lines.next() else { break };
            let line = line.context("reading the import file")?;
            read += line.len() as u64 + 1;
            if line.trim().is_empty() {
                continue;
            }
            batch_bytes += line.len() + 1;
            if local.is_some() {
                parsed.push(
                    ExportedMemory::parse_line(&line, i + 1)
                        .map_err(|e| anyhow::anyhow!(e.message))?,
                );
                continue;
            }
            if !batch.is_empty() && batch_bytes > REQUEST_BYTES {
                // Sent with the next request (alone, if it is that large).
                carry = Some(line);
                break;
            }
            batch.push(line);
        }
        if batch.is_empty() && parsed.is_empty() {
            break;
        }
        let report = match &local {
            Some((service, _)) => {
                service
                    .import(&cli_ctx(), &header, std::mem::take(&mut parsed))
                    .await?
            }
            None => {
                let mut body = header_line.clone();
                for l in &batch {
                    body.push('\n');
                    body.push_str(l);
                }
                let client = &args.target.client;
                let req = request(client, reqwest::Method::POST, "/v1/import")
                    .header("content-type", "application/x-ndjson")
                    .body(body);
                let text = send(client, req).await?.text().await.unwrap_or_default();
                serde_json::from_str(&text).with_context(|| format!("unexpected answer: {text}"))?
            }
        };
        total.add(&report);
        batch.clear();
        batch_bytes = 0;
        bar.set_position(read.min(size));
        bar.set_message(format!(
            "{} imported, {} already present",
            total.imported, total.skipped
        ));
    }
    bar.finish_and_clear();
    if let Some((service, _)) = &local {
        service.flush().await?;
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "imported {}: {} memories imported, {} already present, {} vectors recomputed ({:.0} memories/s)",
        args.file.display(),
        total.imported,
        total.skipped,
        total.reembedded,
        (total.imported + total.skipped) as f64 / secs.max(1e-9)
    );
    Ok(())
}

async fn import(mut args: ImportArgs) -> anyhow::Result<()> {
    if args.format == "engram" {
        let first = std::fs::File::open(&args.file)
            .ok()
            .and_then(|f| {
                std::io::BufReader::new(f)
                    .lines()
                    .map_while(Result::ok)
                    .find(|l| !l.trim().is_empty())
            })
            .unwrap_or_default();
        if engram_core::portable::ExportHeader::sniff(&first) {
            return import_export(&args).await;
        }
    }
    let _converted = if args.format == "mem0" {
        let converted = mem0_to_jsonl(&args.file, args.org_id.as_deref())?;
        args.file = converted.path().to_owned();
        Some(converted)
    } else {
        None
    };
    let (file, size, bar) = open_with_progress(&args.file)?;
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
            let out = JobQueue::new(service.clone(), JobConfig::default(), None)
                .add_verbatim_batch(&cli_ctx(), inputs)
                .await?;
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
        service.flush().await?;
    }
    println!(
        "imported {}: {added} memories added, {noops} duplicates skipped",
        args.file.display()
    );
    Ok(())
}
