//! `engram serve`: the HTTP server with graceful shutdown.

use std::fs::File;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use engram_server::{AppState, ServerConfig};

use crate::runtime::{StoreArgs, open_service};

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
    /// Bearer token for MCP over HTTP at /mcp (unset: /mcp is off).
    #[arg(long, env = "ENGRAM_MCP_TOKEN", hide_env_values = true)]
    pub mcp_token: Option<String>,
    /// Bind every MCP-over-HTTP session to this user.
    #[arg(long, env = "ENGRAM_MCP_USER_ID")]
    pub mcp_user_id: Option<String>,
    /// Browser origins allowed to call /mcp besides loopback (comma-separated).
    #[arg(long, env = "ENGRAM_MCP_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub mcp_allowed_origins: Vec<String>,
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
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let addr = listener.local_addr()?;
    let _lock = DirLock::acquire(&args.store.data_dir, Some(addr))?;
    let (service, store) = open_service(&args.store).await?;
    let state = AppState {
        memory: service,
        config: ServerConfig {
            max_body_bytes: args.max_body_bytes,
            request_timeout: std::time::Duration::from_secs(args.request_timeout_secs),
            mcp: engram_server::mcp::McpHttpConfig {
                token: args.mcp_token.clone().filter(|t| !t.is_empty()),
                scope: engram_core::memory::Scope {
                    user_id: args.mcp_user_id.clone(),
                    ..Default::default()
                },
                allowed_origins: args.mcp_allowed_origins.clone(),
            },
        },
    };
    tracing::info!(%addr, data_dir = %args.store.data_dir.display(), "engram listening; LLM: none configured, ingest stores messages verbatim");
    // Printed on stdout so scripts (and tests) can find the port when listening on :0.
    println!("engram listening on http://{addr}");
    engram_server::serve(listener, state, shutdown_signal()).await?;
    tracing::info!("shutting down: saving the vector index");
    use engram_core::store::Store;
    store.flush().await?;
    tracing::info!("bye");
    Ok(())
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}
