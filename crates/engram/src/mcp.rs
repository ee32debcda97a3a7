//! `engram mcp`: MCP over stdio for Claude Desktop, Cursor, VS Code and other hosts.
//! stdout carries the protocol; logs go to stderr.

use engram_core::memory::Scope;
use engram_server::mcp::MemoryMcp;
use rmcp::ServiceExt;

use crate::runtime::{StoreArgs, open_service};

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
    let running = MemoryMcp::new(service, Some(principal), "stdio")
        .serve(rmcp::transport::stdio())
        .await?;
    running.waiting().await?;
    store.flush().await?;
    Ok(())
}
