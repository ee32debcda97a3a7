//! `engram reembed`: move every stored vector to another embedding model,
//! on the data directory / Postgres store directly, or through a running
//! server (`--url`, which does the work in its background while it serves).

use std::time::{Duration, Instant};

use anyhow::bail;
use engram_core::ports::ReembedState;
use serde_json::{Value, json};

use crate::target::{Target, cli_ctx, local, progress, request, send};

#[derive(clap::Args, Debug)]
pub struct ReembedArgs {
    /// The new model: a sentence-transformers BERT directory, or with
    /// --to-embed-base-url the model's name at that endpoint. With --url the
    /// directory is on the server's machine.
    #[arg(long, required_unless_present_any = ["status", "cancel"])]
    pub model: Option<String>,
    /// An OpenAI-compatible embeddings endpoint serving --model (its key:
    /// ENGRAM_EMBED_API_KEY).
    #[arg(long)]
    pub to_embed_base_url: Option<String>,
    /// Texts embedded per batch (1–4096).
    #[arg(long, default_value_t = engram_core::service::DEFAULT_BATCH)]
    pub batch: usize,
    /// Print where a re-embedding stands and exit.
    #[arg(long, conflicts_with_all = ["model", "cancel"])]
    pub status: bool,
    /// Abandon the re-embedding in progress (its new vectors are dropped).
    #[arg(long, conflicts_with = "model")]
    pub cancel: bool,
    /// With --url: start it on the server and return at once. Without it the
    /// command follows the server's progress (Ctrl-C stops following, not
    /// the server's run).
    #[arg(long)]
    pub detach: bool,
    #[command(flatten)]
    pub target: Target,
}

pub async fn run(args: ReembedArgs) -> anyhow::Result<()> {
    if args.target.client.url.is_some() {
        return remote(args).await;
    }
    let (service, _lock) = local(&args.target).await?;
    let ctx = cli_ctx();
    if args.status {
        match service.reembed_state(&ctx).await? {
            Some(s) => println!(
                "re-embedding from `{}` to `{}`: {} of {} versions done (resume it with --model)",
                s.from.id, s.to.id, s.done, s.total
            ),
            None => println!(
                "no re-embedding in progress; the store uses `{}`",
                service.embedder().model().id
            ),
        }
        return Ok(());
    }
    if args.cancel {
        let had = service.reembed_cancel(&ctx).await?;
        println!(
            "{}",
            if had {
                "cancelled"
            } else {
                "no re-embedding in progress"
            }
        );
        return Ok(());
    }
    let model = args.model.as_deref().unwrap_or_default();
    let to = crate::runtime::load_model(
        model,
        args.to_embed_base_url.as_deref(),
        args.target.store.embed_api_key.clone(),
    )
    .await?;
    let bar = progress(0, "{bar:40} {pos}/{len} versions {per_sec} ({eta})");
    let started = Instant::now();
    let show = {
        let bar = bar.clone();
        move |s: &ReembedState| {
            bar.set_length(s.total);
            bar.set_position(s.done);
        }
    };
    let report = service.reembed(&ctx, to, args.batch, &show).await?;
    bar.finish_and_clear();
    service.flush().await?;
    println!(
        "switched from `{}` to `{}`: {} versions, {} embedded by this run ({} done before) in {:.1} s \
         ({:.0} versions/s; the switch took {:.1} s)",
        report.from.id,
        report.to.id,
        report.versions,
        report.embedded,
        report.resumed,
        started.elapsed().as_secs_f64(),
        report.embedded as f64 / started.elapsed().as_secs_f64().max(1e-9),
        report.switch_ms as f64 / 1000.0
    );
    if args.to_embed_base_url.is_none() {
        println!("start Engram with --model-dir {model} from now on");
    }
    Ok(())
}

async fn remote(args: ReembedArgs) -> anyhow::Result<()> {
    let client = &args.target.client;
    let path = "/v1/admin/reembed";
    let get = || async {
        let resp = send(client, request(client, reqwest::Method::GET, path)).await?;
        anyhow::Ok(resp.json::<Value>().await?)
    };
    if args.status {
        println!("{}", serde_json::to_string_pretty(&get().await?)?);
        return Ok(());
    }
    if args.cancel {
        let resp = send(client, request(client, reqwest::Method::DELETE, path)).await?;
        println!("{}", resp.json::<Value>().await?);
        return Ok(());
    }
    if args.to_embed_base_url.is_some() {
        bail!(
            "a server loads only the models its operator listed (--reembed-model on `engram serve`); \
             name one with --model, without --to-embed-base-url"
        );
    }
    let body = json!({
        "model": args.model,
        "batch": args.batch,
    });
    let resp = send(
        client,
        request(client, reqwest::Method::POST, path).json(&body),
    )
    .await?;
    let mut status: Value = resp.json().await?;
    if args.detach {
        println!("{status}");
        return Ok(());
    }
    let bar = progress(0, "{bar:40} {pos}/{len} versions {per_sec} ({eta})");
    loop {
        bar.set_length(status["total"].as_u64().unwrap_or(0));
        bar.set_position(status["done"].as_u64().unwrap_or(0));
        match status["state"].as_str().unwrap_or("") {
            "running" => {}
            "switched" => {
                bar.finish_and_clear();
                println!(
                    "switched from `{}` to `{}`: {} versions, {} embedded by this run",
                    status["from"]["id"].as_str().unwrap_or("?"),
                    status["to"]["id"].as_str().unwrap_or("?"),
                    status["total"],
                    status["embedded"]
                );
                return Ok(());
            }
            other => {
                bar.finish_and_clear();
                bail!(
                    "the re-embedding is {other}: {}",
                    status["error"].as_str().unwrap_or("no detail")
                );
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        status = get().await?;
    }
}
