//! `engram import` and `engram export`: versioned JSON Lines (every
//! version, vector and history), one add request per line, or Mem0's
//! export format.

use std::io::BufRead;
use std::path::PathBuf;

use anyhow::Context;
use engram_core::service::{AddInput, JobConfig, JobQueue};
use serde_json::{Value, json};

use crate::target::{
    ScopeArgs, Target, cli_ctx, local, open_with_progress, post, progress, request, send,
};

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

/// One line of an import file: the body of `POST /v1/memories`.
pub(crate) fn import_line(line: &str, n: usize) -> anyhow::Result<AddInput> {
    let req: engram_server::wire::AddRequest =
        serde_json::from_str(line).with_context(|| format!("line {n}: not an add request"))?;
    req.into_input()
        .map_err(|e| anyhow::anyhow!("line {n}: {}", e.detail))
}

/// One Mem0 memory object → the body of `POST /v1/memories`.
pub(crate) fn mem0_memory_to_add(m: &Value, org: Option<&str>) -> anyhow::Result<Value> {
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
pub(crate) fn mem0_to_jsonl(
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

pub(crate) async fn export(args: ExportArgs) -> anyhow::Result<()> {
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
pub(crate) async fn import_export(args: &ImportArgs) -> anyhow::Result<()> {
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

pub(crate) async fn import(mut args: ImportArgs) -> anyhow::Result<()> {
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
