//! Command-line interface.

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use engram_core::filter::Filter;
use engram_core::ports::JobState;
use engram_core::service::{AddInput, Added, Content, JobQueue, JobRunner, SearchInput};
use serde_json::{Value, json};

use crate::runtime::{JobArgs, LlmArgs, LogArgs};
use crate::target::{ClientArgs, ScopeArgs, Target, cli_ctx, local, post, request, send};
use crate::transfer::{ExportArgs, ImportArgs, export, import};

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
    /// Wait for a queued add (an LLM is configured) to finish and print what
    /// it stored: locally this process runs the queue meanwhile.
    #[arg(long)]
    pub wait: bool,
    /// Longest wait with --wait, in seconds.
    #[arg(long, default_value_t = 600, requires = "wait")]
    pub wait_secs: u64,
    #[command(flatten)]
    pub llm: LlmArgs,
    #[command(flatten)]
    pub jobs: JobArgs,
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

/// Runs the local queue in this process until job `id` is finished; its
/// results. The queue is first come, first served: jobs queued before it
/// run first.
async fn wait_local(
    queue: &JobQueue,
    id: uuid::Uuid,
    deadline: std::time::Instant,
) -> anyhow::Result<Value> {
    let worker = format!("cli-{}", uuid::Uuid::now_v7().simple());
    let runner = JobRunner::new(queue.memory().clone(), queue.config().clone(), worker)
        .with_pipeline(queue.pipeline().cloned());
    loop {
        if std::time::Instant::now() > deadline {
            bail!("job {id} is not finished yet; it stays queued (see --wait-secs)");
        }
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
async fn wait_remote(
    client: &ClientArgs,
    id: &str,
    deadline: std::time::Instant,
) -> anyhow::Result<Value> {
    loop {
        if std::time::Instant::now() > deadline {
            bail!("job {id} is not finished yet; it stays queued on the server (see --wait-secs)");
        }
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
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(args.wait_secs);
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
            Some(job) if args.wait => wait_remote(&args.target.client, job, deadline).await?,
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
            args.jobs.config(),
            args.llm.pipeline(&service)?,
        );
        let results = match queue.add(&cli_ctx(), input, None, None).await? {
            Added::Done(results) => serde_json::to_value(results)?,
            Added::Queued(job) if args.wait => wait_local(&queue, job.id, deadline).await?,
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
