//! `engram keys create|list|revoke`: API key management on a data directory.
//! Works beside a running server (it opens only the key table).

use std::path::PathBuf;
use std::sync::Arc;

use engram_core::access::{Principal, Role};
use engram_core::clock::SystemClock;
use engram_core::memory::Scope;
use engram_core::ports::ApiKey;
use engram_core::service::{KeyService, NewKey};
use serde_json::json;

#[derive(clap::Subcommand, Debug)]
pub enum KeysCommand {
    /// Create a key; it is printed once and only its hash is stored.
    Create(CreateArgs),
    /// List keys (never their secrets).
    List(DirArgs),
    /// Revoke a key by id; it stops working at once (within 5 s on other nodes).
    Revoke {
        /// The key's id (the 16 hex digits after `engram_`).
        id: String,
        #[command(flatten)]
        dir: DirArgs,
    },
}

#[derive(clap::Args, Debug)]
pub struct DirArgs {
    /// Data directory.
    #[arg(long, env = "ENGRAM_DATA_DIR", default_value = "./engram-data")]
    pub data_dir: PathBuf,
    #[command(flatten)]
    pub backend: crate::runtime::BackendArgs,
    #[command(flatten)]
    pub encryption: crate::runtime::EncryptionArgs,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Args, Debug)]
pub struct CreateArgs {
    /// The org the key is bound to.
    #[arg(long = "org", alias = "org-id")]
    pub org_id: String,
    /// Also bind it to this app.
    #[arg(long = "app", alias = "app-id")]
    pub app_id: Option<String>,
    /// Also bind it to this user.
    #[arg(long = "user", alias = "user-id")]
    pub user_id: Option<String>,
    /// Also bind it to this agent.
    #[arg(long = "agent", alias = "agent-id")]
    pub agent_id: Option<String>,
    /// operator (also store-wide operations: re-embedding), admin,
    /// read_write or read_only.
    #[arg(long, default_value = "read_write")]
    pub role: String,
    /// What the key is for.
    #[arg(long, default_value = "default")]
    pub name: String,
    /// Requests per minute (default: the server's per-key limit).
    #[arg(long)]
    pub rate_limit: Option<u32>,
    #[command(flatten)]
    pub dir: DirArgs,
}

async fn open(dir: &DirArgs) -> anyhow::Result<KeyService> {
    let store = dir
        .backend
        .open_keys(&dir.data_dir, &dir.encryption)
        .await?;
    Ok(KeyService::new(store, Arc::new(SystemClock)))
}

fn describe(k: &ApiKey) -> String {
    let binding: Vec<String> = k
        .binding
        .iter()
        .map(|(f, v)| format!("{}={v}", f.as_str()))
        .collect();
    let state = match k.revoked_at {
        Some(at) => format!("revoked {at}"),
        None => "active".to_owned(),
    };
    format!(
        "{}  {:<10}  {:<30}  {}  {}",
        k.id,
        k.role.as_str(),
        binding.join(","),
        state,
        k.name
    )
}

pub async fn run(cmd: KeysCommand) -> anyhow::Result<()> {
    let operator = Principal::operator();
    match cmd {
        KeysCommand::Create(args) => {
            let keys = open(&args.dir).await?;
            let new = NewKey {
                name: args.name,
                role: Some(Role::parse(&args.role)?),
                binding: Scope {
                    org_id: Some(args.org_id),
                    app_id: args.app_id,
                    user_id: args.user_id,
                    agent_id: args.agent_id,
                    run_id: None,
                },
                rate_limit: args.rate_limit,
            };
            let (key, token) = keys.create(&operator, new).await?;
            if args.dir.json {
                println!(
                    "{}",
                    json!({"key": token, "id": key.id, "role": key.role, "binding": key.binding, "name": key.name})
                );
            } else {
                println!("{token}");
                eprintln!(
                    "Created {} key {} ({}). This is the only time the key is shown; store it now.",
                    key.role,
                    key.id,
                    describe(&key).split("  ").nth(2).unwrap_or("").trim()
                );
            }
        }
        KeysCommand::List(dir) => {
            let keys = open(&dir).await?.list(&operator).await?;
            if dir.json {
                println!("{}", serde_json::to_string_pretty(&keys)?);
            } else if keys.is_empty() {
                println!("no keys");
            } else {
                for k in &keys {
                    println!("{}", describe(k));
                }
            }
        }
        KeysCommand::Revoke { id, dir } => {
            let key = open(&dir).await?.revoke(&operator, &id).await?;
            if dir.json {
                println!("{}", serde_json::to_string_pretty(&key)?);
            } else {
                println!("revoked {}", describe(&key));
            }
        }
    }
    Ok(())
}
