//! `engram serve`: the HTTP server with graceful shutdown.

use std::fs::File;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use engram_core::clock::SystemClock;
use engram_core::service::KeyService;
use engram_server::auth::{AuthMode, RateLimitConfig};
use engram_server::{AppState, ServerConfig};

use crate::runtime::{Backend, JobArgs, LlmArgs, StoreArgs, open_service};

#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "ENGRAM_LISTEN", default_value = "127.0.0.1:8420")]
    pub listen: SocketAddr,
    #[command(flatten)]
    pub store: StoreArgs,
    /// Largest request body in bytes.
    #[arg(long, env = "ENGRAM_MAX_BODY_BYTES", default_value_t = 1024 * 1024)]
    pub max_body_bytes: usize,
    /// Per-request timeout in seconds.
    #[arg(long, env = "ENGRAM_REQUEST_TIMEOUT_SECS", default_value_t = 30)]
    pub request_timeout_secs: u64,
    /// Seconds shutdown waits for in-flight requests before exiting anyway.
    #[arg(long, env = "ENGRAM_SHUTDOWN_TIMEOUT_SECS", default_value_t = 30)]
    pub shutdown_timeout_secs: u64,
    /// Requests per minute per API key, unless the key sets its own (0: unlimited).
    #[arg(long, env = "ENGRAM_RATE_LIMIT_PER_MINUTE", default_value_t = RateLimitConfig::default().per_minute)]
    pub rate_limit_per_minute: u32,
    /// Requests a key may send at once after being idle.
    #[arg(long, env = "ENGRAM_RATE_LIMIT_BURST", default_value_t = RateLimitConfig::default().burst,
        value_parser = clap::value_parser!(u32).range(1..))]
    pub rate_limit_burst: u32,
    /// Turn authentication off: every request acts as the local operator.
    /// For development on localhost only; refused on a non-loopback address.
    #[arg(long, env = "ENGRAM_INSECURE_NO_AUTH")]
    pub insecure_no_auth: bool,
    /// Browser origins allowed to call the server, besides pages it serves
    /// itself (comma-separated, e.g. `https://app.example`); others get 403.
    #[arg(
        long = "cors-origin",
        alias = "mcp-allowed-origins",
        env = "ENGRAM_CORS_ORIGINS",
        value_delimiter = ','
    )]
    pub cors_origins: Vec<String>,
    /// Host names the server answers to besides loopback names and the listen
    /// address (comma-separated; a reverse proxy's name). On a loopback address
    /// any other `Host` is refused (DNS rebinding); elsewhere, listing names turns
    /// the check on.
    #[arg(
        long = "allowed-host",
        env = "ENGRAM_ALLOWED_HOSTS",
        value_delimiter = ','
    )]
    pub allowed_hosts: Vec<String>,
    /// Dashboard (`/ui`) sessions end after this many minutes without a request.
    #[arg(long, env = "ENGRAM_UI_IDLE_MINUTES", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(1..=10080))]
    pub ui_idle_minutes: u64,
    /// Dashboard sessions end this many hours after sign-in, used or not.
    #[arg(long, env = "ENGRAM_UI_SESSION_HOURS", default_value_t = 12,
          value_parser = clap::value_parser!(u64).range(1..=720))]
    pub ui_session_hours: u64,
    /// Let webhooks target loopback, private and link-local addresses (an
    /// on-premise receiver, tests). Off: such targets are refused at
    /// creation and, after DNS, at every delivery.
    #[arg(long, env = "ENGRAM_ALLOW_PRIVATE_WEBHOOKS")]
    pub allow_private_webhooks: bool,
    /// Failed delivery attempts in a row that disable a webhook.
    #[arg(long, env = "ENGRAM_WEBHOOK_MAX_FAILURES", default_value_t = 20,
          value_parser = clap::value_parser!(u32).range(1..=10000))]
    pub webhook_max_failures: u32,
    /// Seconds one webhook delivery may take (connect, send, answer); at
    /// most half the job lease (`--job-lease-secs`).
    #[arg(long, env = "ENGRAM_WEBHOOK_TIMEOUT_SECS", default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(1..=120))]
    pub webhook_timeout_secs: u64,
    /// Background workers processing queued jobs on this node (0: none).
    #[arg(long, env = "ENGRAM_WORKERS", default_value_t = 2)]
    pub workers: usize,
    #[command(flatten)]
    pub jobs: JobArgs,
    #[command(flatten)]
    pub llm: LlmArgs,
    /// Models `/v1/admin/reembed` may load (comma-separated): a model
    /// directory (asked for by its path or its name), or `NAME=URL` for model
    /// NAME at an OpenAI-compatible endpoint (sent --embed-api-key). Nothing
    /// else is ever loaded or called on a request's word.
    #[arg(
        long = "reembed-model",
        env = "ENGRAM_REEMBED_MODELS",
        value_delimiter = ','
    )]
    pub reembed_models: Vec<String>,
    /// A token Prometheus must send to read /metrics (`Authorization: Bearer
    /// <token>`); unset: /metrics is open, like /healthz.
    #[arg(long, env = "ENGRAM_METRICS_TOKEN", hide_env_values = true)]
    pub metrics_token: Option<String>,
    /// Hours an `Idempotency-Key` record is kept (its replay window).
    #[arg(long, env = "ENGRAM_IDEMPOTENCY_TTL_HOURS", default_value_t = 24,
        value_parser = clap::value_parser!(u64).range(1..))]
    pub idempotency_ttl_hours: u64,
}

impl ServeArgs {
    /// Checks what clap cannot: combinations.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.insecure_no_auth && !self.listen.ip().is_loopback() {
            bail!(
                "--insecure-no-auth turns authentication off, so it is only allowed on a loopback address; \
                 {} is not one. Create an API key (`engram keys create`) instead",
                self.listen
            );
        }
        if self.max_body_bytes < 1024 {
            bail!("--max-body-bytes must be at least 1024");
        }
        if self.request_timeout_secs == 0 {
            bail!("--request-timeout-secs must be at least 1");
        }
        Ok(())
    }
}

/// An exclusive lock on a data directory, held while a server or a CLI command uses it.
pub struct DirLock {
    _file: File,
    path: PathBuf,
}

impl DirLock {
    /// Takes the lock, recording `addr` (the server's address) in the lock file.
    pub fn acquire(dir: &Path, addr: Option<SocketAddr>) -> anyhow::Result<DirLock> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let path = dir.join("engram.lock");
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        if file.try_lock().is_err() {
            let holder = std::fs::read_to_string(&path).unwrap_or_default();
            let holder = holder.trim();
            if holder.is_empty() {
                bail!("{} is in use by another Engram process", dir.display());
            }
            bail!(
                "{} is in use by the Engram server at {holder}; pass --url http://{holder} to go through it",
                dir.display()
            );
        }
        file.set_len(0)?;
        if let Some(addr) = addr {
            write!(file, "{addr}")?;
            file.flush()?;
        }
        Ok(DirLock { _file: file, path })
    }
}

impl Drop for DirLock {
    fn drop(&mut self) {
        if let Ok(f) = std::fs::OpenOptions::new().write(true).open(&self.path) {
            let _ = f.set_len(0);
        }
    }
}

pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    args.validate()?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let addr = listener.local_addr()?;
    // The embedded store belongs to one process; a shared Postgres to many nodes.
    let _lock = if args.store.backend.is_postgres() {
        None
    } else {
        Some(DirLock::acquire(&args.store.data_dir, Some(addr))?)
    };
    let (service, store) = open_service(&args.store).await?;
    let keys = KeyService::new(store.keys(), std::sync::Arc::new(SystemClock));
    let auth = if args.insecure_no_auth {
        tracing::warn!(
            "authentication is OFF (--insecure-no-auth): every request acts as the local operator"
        );
        AuthMode::InsecureNoAuth
    } else {
        if keys.none_yet().await? {
            eprintln!(
                "No API keys yet: every request will be refused. Create the first admin key with\n\n    \
                 engram keys create {} --org <your-org> --role admin --name admin\n\n\
                 (it is printed once), then send it as `Authorization: Bearer <key>`.",
                if args.store.backend.is_postgres() {
                    "--store <the same URL>".to_owned()
                } else {
                    format!("--data-dir {}", args.store.data_dir.display())
                }
            );
        }
        AuthMode::Keys
    };
    let config = ServerConfig {
        max_body_bytes: args.max_body_bytes,
        request_timeout: std::time::Duration::from_secs(args.request_timeout_secs),
        shutdown_timeout: std::time::Duration::from_secs(args.shutdown_timeout_secs),
        auth,
        rate_limit: RateLimitConfig {
            per_minute: args.rate_limit_per_minute,
            burst: args.rate_limit_burst,
        },
        idempotency_ttl: std::time::Duration::from_secs(args.idempotency_ttl_hours * 3600),
        metrics_token: args.metrics_token.clone(),
        guard: engram_server::guard::GuardConfig {
            listen: Some(addr),
            cors_origins: args.cors_origins.clone(),
            allowed_hosts: args.allowed_hosts.clone(),
        },
        workers: args.workers,
        jobs: args.jobs.config(),
        ui_sessions: engram_server::ui::SessionConfig {
            idle: std::time::Duration::from_secs(args.ui_idle_minutes * 60),
            absolute: std::time::Duration::from_secs(args.ui_session_hours * 3600),
            ..engram_server::ui::SessionConfig::default()
        },
        webhooks: engram_core::service::WebhookConfig {
            allow_private: args.allow_private_webhooks,
            max_failures: args.webhook_max_failures,
            // A delivery must end well inside its job's lease, or another
            // worker would take it over and send it again.
            timeout: std::time::Duration::from_secs(
                args.webhook_timeout_secs
                    .min((args.jobs.job_lease_secs / 2).max(1)),
            ),
        },
        deliver_webhooks: true,
    };
    // This process holds the data directory: jobs left running were orphaned
    // by a crash. (With Postgres other nodes may hold live leases: a dead
    // node's leases simply run out and another worker takes its jobs.)
    let resumed = match &store {
        Backend::Sqlite(s) => s.release_orphaned_leases(jiff::Timestamp::now()).await?,
        Backend::Postgres(_) => 0,
    };
    if resumed > 0 {
        tracing::info!(
            jobs = resumed,
            "resuming jobs a previous process left unfinished"
        );
    }
    let mut state = AppState::new(service.clone(), keys, config);
    if let Some(pipeline) = args.llm.pipeline(&service)? {
        state = state.with_pipeline(pipeline);
    }
    let api_key = args.store.embed_api_key.clone();
    let allowed = std::sync::Arc::new(args.reembed_models.clone());
    state = state.with_model_loader(std::sync::Arc::new(move |req| {
        let api_key = api_key.clone();
        let allowed = allowed.clone();
        Box::pin(async move {
            let (model, url) = crate::runtime::allowed_model(&allowed, &req.model).ok_or_else(|| {
                format!(
                    "`{}` is not one of the models this server may load; its operator lists them with --reembed-model",
                    req.model
                )
            })?;
            crate::runtime::load_model(&model, url.as_deref(), api_key)
                .await
                .map_err(|e| {
                    tracing::warn!(error = %format!("{e:#}"), "re-embedding: loading the model failed");
                    format!("`{}` failed to load; the server log says why", req.model)
                })
        })
    }));
    if let Some(s) = store.store().reembed_state().await? {
        tracing::warn!(
            to = %s.to.id, done = s.done, total = s.total,
            "a re-embedding is paused: resume it with `engram reembed --url … --model …` (same model), or cancel it"
        );
    }
    // Handlers are installed before the "listening" line: a supervisor (or a
    // test) that sends SIGTERM right after it must get a graceful shutdown.
    let shutdown = shutdown_signal()?;
    tracing::info!(%addr, store = %store.describe(), "engram listening");
    // Printed on stdout so scripts (and tests) can find the port when listening on :0.
    println!("engram listening on http://{addr}");
    let drained = engram_server::serve(listener, state, shutdown).await?;
    tracing::info!(drained, "shutting down: saving the vector index");
    store.flush().await?;
    tracing::info!("bye");
    Ok(())
}

/// Installs the Ctrl-C and SIGTERM handlers now; the future resolves on either.
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    #[cfg(unix)]
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    let ctrl_c = tokio::signal::ctrl_c();
    Ok(async move {
        #[cfg(unix)]
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
        #[cfg(not(unix))]
        let _ = ctrl_c.await;
    })
}
