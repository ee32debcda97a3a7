//! `engram mcp`: MCP over stdio for Claude Desktop, Cursor, VS Code and other hosts.
//! stdout carries the protocol; logs go to stderr.

use std::sync::Arc;

use engram_core::clock::SystemClock;
use engram_core::memory::Scope;
use engram_core::service::KeyService;
use engram_server::mcp::MemoryMcp;
use engram_server::{AppState, ServerConfig};
use rmcp::ServiceExt;

use crate::runtime::{JobArgs, LlmArgs, StoreArgs, open_service};

#[derive(clap::Args, Debug)]
pub struct McpArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// Bind every call to this user (calls may not use another).
    #[arg(long, env = "ENGRAM_USER_ID")]
    pub user_id: Option<String>,
    /// Bind every call to this agent.
    #[arg(long, env = "ENGRAM_AGENT_ID")]
    pub agent_id: Option<String>,
    /// Bind every call to this session.
    #[arg(long, env = "ENGRAM_RUN_ID")]
    pub run_id: Option<String>,
    /// Bind every call to this organisation.
    #[arg(long, env = "ENGRAM_ORG_ID")]
    pub org_id: Option<String>,
    /// Bind every call to this application.
    #[arg(long, env = "ENGRAM_APP_ID")]
    pub app_id: Option<String>,
    #[command(flatten)]
    pub llm: LlmArgs,
    #[command(flatten)]
    pub jobs: JobArgs,
    /// Background workers running queued adds in this process [default: 2
    /// with an LLM, else 0: a queue of LLM adds waits for a process that has one].
    #[arg(long, env = "ENGRAM_WORKERS")]
    pub workers: Option<usize>,
}

pub async fn run(args: McpArgs) -> anyhow::Result<()> {
    let scope = Scope {
        org_id: args.org_id,
        app_id: args.app_id,
        user_id: args.user_id,
        agent_id: args.agent_id,
        run_id: args.run_id,
    };
    for (field, value) in scope.iter() {
        engram_core::memory::validate_scope_id(field, value)?;
    }
    let _lock = if args.store.backend.is_postgres() {
        None
    } else {
        Some(crate::serve::DirLock::acquire(&args.store.data_dir, None)?)
    };
    let (service, store) = open_service(&args.store).await?;
    tracing::info!(store = %store.describe(), ?scope, "engram mcp on stdio");
    let principal = if scope.is_empty() {
        engram_core::access::Principal::operator()
    } else {
        engram_core::access::Principal::operator_bound(scope.clone())
    };
    // Adds take the same door as over HTTP: with an LLM they are queued as
    // jobs, which this process's workers run.
    let keys = KeyService::new(store.keys(), Arc::new(SystemClock));
    let pipeline = args.llm.pipeline(&service)?;
    let config = ServerConfig {
        workers: args
            .workers
            .unwrap_or(if pipeline.is_some() { 2 } else { 0 }),
        jobs: args.jobs.config(),
        // Deliveries wait for a server: its flags say which targets are allowed.
        deliver_webhooks: false,
        ..ServerConfig::default()
    };
    let mut state = AppState::new(service.clone(), keys, config);
    if let Some(pipeline) = pipeline {
        state = state.with_pipeline(pipeline);
    }
    let workers = engram_server::spawn_workers(&state);
    let running = MemoryMcp::new(state.jobs.clone(), Some(principal), "stdio")
        .serve(rmcp::transport::stdio())
        .await?;
    running.waiting().await?;
    // A job a worker has started is finished; queued ones wait for the next start.
    state.shutdown.cancel();
    for w in workers {
        let _ = w.await;
    }
    store.flush().await?;
    Ok(())
}
