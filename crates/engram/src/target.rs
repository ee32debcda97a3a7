//! Where a one-off command works: the data directory (or `--store`),
//! opened in this process, or a running server (`--url`) over HTTP.

use anyhow::{Context, bail};
use engram_core::ctx::RequestCtx;
use engram_core::memory::Scope;
use engram_core::service::MemoryService;
use serde_json::{Value, json};

use crate::runtime::StoreArgs;

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

pub(crate) async fn post(client: &ClientArgs, path: &str, body: &Value) -> anyhow::Result<Value> {
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
pub(crate) fn open_with_progress(
    path: &std::path::Path,
) -> anyhow::Result<(std::fs::File, u64, indicatif::ProgressBar)> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let size = file.metadata().map(|m| m.len()).unwrap_or(0);
    let bar = progress(size, "{bar:40} {bytes}/{total_bytes} {msg} ({eta})");
    Ok((file, size, bar))
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
    pub(crate) fn scope(&self) -> Scope {
        Scope {
            org_id: self.org_id.clone(),
            app_id: self.app_id.clone(),
            user_id: self.user_id.clone(),
            agent_id: self.agent_id.clone(),
            run_id: self.run_id.clone(),
        }
    }

    pub(crate) fn json(&self) -> serde_json::Map<String, Value> {
        let mut m = serde_json::Map::new();
        for (field, v) in self.scope().iter() {
            m.insert(field.as_str().to_owned(), json!(v));
        }
        m
    }
}
