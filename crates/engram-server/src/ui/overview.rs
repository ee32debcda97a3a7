//! Overview: what the store holds (by kind and scope, within the caller's
//! binding), the last hour's activity (from the metrics, via
//! `crate::activity`), the LLM's state and the job queue.

use axum::extract::State;
use engram_core::filter::Filter;
use engram_core::memory::{MemoryKind, ScopeField};
use engram_core::ports::{JobCounts, JobState};
use engram_core::service::MAX_PAGE;
use maud::html;
use serde_json::json;

use super::layout::{self, Nav};
use super::{PageResult, Ui};
use crate::AppState;

/// Scope ids listed per field on the overview.
const TOP_SCOPES: usize = 8;

pub async fn page(State(app): State<AppState>, ui: Ui) -> PageResult {
    let ctx = &ui.ctx;
    let ids = app.memory.scope_ids(ctx).await?;
    // Memories by kind, per top-level scope id the caller sees (orgs, or its own binding).
    let roots: Vec<_> = {
        let bound = ctx
            .principal
            .binding
            .iter()
            .last()
            .map(|(f, v)| (f, v.to_owned()));
        match bound {
            Some(b) => vec![b],
            None => ids
                .iter()
                .filter(|s| s.field == ScopeField::Org)
                .map(|s| (s.field, s.id.clone()))
                .collect(),
        }
    };
    let mut by_kind = [0usize; 3];
    for (field, id) in roots.iter().take(50) {
        for (i, kind) in MemoryKind::ALL.iter().enumerate() {
            let filter = Filter::with_ids(
                Some(&json!({ field.as_str(): id, "kind": kind.as_str() })),
                &Default::default(),
            )?;
            by_kind[i] += app.memory.count(ctx, &filter).await?;
        }
    }
    let total: usize = by_kind.iter().sum();
    let activity = crate::activity::global().summary();
    // Node-wide figures (every tenant's activity, the store's size, the job
    // queue, the LLM's queue) are the operator's; a key bound to an org or
    // below sees its own scopes' figures only.
    let node_wide = ui.principal().role == engram_core::access::Role::Operator
        || ui.principal().binding.is_empty();
    let jobs = if node_wide {
        app.jobs.counts().await?
    } else {
        own_jobs(&app, &ui).await?
    };
    let stats = if node_wide {
        Some(app.memory.store_stats().await?)
    } else {
        None
    };
    let today = app.memory.now().strftime("%Y-%m-%d").to_string();
    let usage = app.memory.llm_usage(ctx, 1000).await?;
    let today_usage = usage.iter().filter(|u| u.day == today);
    let (prompt, completion, cost) = today_usage.fold((0u64, 0u64, 0u64), |a, u| {
        (
            a.0 + u.prompt_tokens,
            a.1 + u.completion_tokens,
            a.2 + u.cost_microdollars,
        )
    });
    let adds: Vec<u64> = activity
        .minutes
        .iter()
        .map(|m| m.ops.iter().sum())
        .collect();
    let searches: Vec<u64> = activity.minutes.iter().map(|m| m.searches).collect();
    let hit_rate = (activity.searches > 0).then(|| activity.hits as f64 / activity.searches as f64);
    let tokens_per_search =
        (activity.searches > 0).then(|| activity.injected_tokens as f64 / activity.searches as f64);
    let body = html! {
        section.cards aria-label="What is stored" {
            div.card {
                h2 { "Memories" }
                p.big { (total) }
                table.kv {
                    @for (i, kind) in MemoryKind::ALL.iter().enumerate() {
                        tr { th scope="row" { (kind.as_str()) } td { (by_kind[i]) } }
                    }
                }
            }
            div.card {
                h2 { "Scopes" }
                table.kv {
                    @for field in ScopeField::ALL {
                        tr {
                            th scope="row" { (field.as_str()) }
                            td { (ids.iter().filter(|s| s.field == field).count()) }
                        }
                    }
                }
                p { a href="/ui/scopes" { "All scopes" } }
            }
            div.card {
                h2 { "Jobs" }
                table.kv {
                    tr { th scope="row" { "queued" } td { (jobs.queued) } }
                    tr { th scope="row" { "running" } td { (jobs.running) } }
                    tr { th scope="row" { "done" } td { (jobs.done) } }
                    tr { th scope="row" { "dead letters" } td { a href="/ui/jobs?state=dead" { (jobs.dead) } } }
                }
            }
            div.card {
                h2 { "LLM" }
                @match app.jobs.pipeline() {
                    None => p { "Not configured: adds are stored verbatim, duplicates skipped." },
                    Some(p) => {
                        @let queue = p.llm().queue();
                        table.kv {
                            tr { th scope="row" { "model" } td { (p.llm().model()) } }
                            tr { th scope="row" { "circuit" } td { (p.llm().state().as_str()) } }
                            @if node_wide {
                                @if let Some(q) = queue {
                                    tr { th scope="row" { "in flight / waiting" } td { (q.in_flight) " / " (q.waiting) " of " (q.limit) } }
                                }
                                tr { th scope="row" { "errors, last hour" } td { (activity.llm_errors) " of " (activity.llm_calls) " calls" } }
                            }
                            tr { th scope="row" { "tokens today" } td { (prompt) " in, " (completion) " out" } }
                            tr { th scope="row" { "cost today" } td { (format!("${:.4}", cost as f64 / 1e6)) } }
                        }
                    }
                }
            }
            @if let Some(s) = stats {
                div.card {
                    h2 { "Store" }
                    table.kv {
                        tr { th scope="row" { "backend" } td { (app.memory.backend()) } }
                        tr { th scope="row" { "size" } td { (layout::bytes(s.bytes)) } }
                        tr { th scope="row" { "versions" } td { (s.versions) } }
                        tr { th scope="row" { "history events" } td { (s.history_events) } }
                        tr { th scope="row" { "indexed vectors" } td { (s.indexed_vectors) } }
                    }
                }
            }
        }
        @if node_wide {
        section aria-labelledby="activity" {
            h2 #activity { "Last hour on this node" }
            div.cards {
                div.card {
                    h3 { "Memory operations per minute" }
                    (layout::columns(&adds, "memory operations per minute, last 60 minutes"))
                    p.muted { (activity.ops[0]) " added, " (activity.ops[1]) " updated, " (activity.ops[2]) " deleted, " (activity.ops[3]) " unchanged" }
                }
                div.card {
                    h3 { "Searches per minute" }
                    (layout::columns(&searches, "searches per minute, last 60 minutes"))
                    p.muted { (activity.searches) " searches" }
                }
                div.card {
                    h3 { "Search" }
                    table.kv {
                        tr { th scope="row" { "p50 / p95" } td { (layout::ms(activity.p50)) " / " (layout::ms(activity.p95)) } }
                        tr { th scope="row" { "hit rate" } td { (hit_rate.map_or("—".into(), |r| format!("{:.0}%", r * 100.0))) } }
                        tr { th scope="row" { "tokens injected per search" } td { (tokens_per_search.map_or("—".into(), |t| format!("{t:.0}"))) } }
                    }
                }
            }
        }
        }
        @if !ids.is_empty() {
            section aria-labelledby="busiest" {
                h2 #busiest { "Largest scopes" }
                table {
                    thead { tr { th { "scope" } th { "memories" } th { "last memory" } } }
                    tbody {
                        @for s in top(&ids) {
                            tr {
                                td { a href={ "/ui/memories?" (s.field.as_str()) "=" (super::urlencode(&s.id)) } { (s.field.as_str()) "=" (s.id) } }
                                td { (s.memories) }
                                td { (layout::time(s.last)) }
                            }
                        }
                    }
                }
            }
        }
    };
    Ok(layout::page(&ui, "Overview", Nav::Overview, body))
}

/// Jobs per state inside the caller's binding (the newest [`MAX_PAGE`] of each).
async fn own_jobs(app: &AppState, ui: &Ui) -> Result<JobCounts, engram_core::Error> {
    let mut c = JobCounts::default();
    for (state, n) in [
        (JobState::Queued, &mut c.queued),
        (JobState::Running, &mut c.running),
        (JobState::Done, &mut c.done),
        (JobState::Dead, &mut c.dead),
    ] {
        *n = app.jobs.list(&ui.ctx, Some(state), MAX_PAGE).await?.len() as u64;
    }
    Ok(c)
}

fn top(ids: &[engram_core::ports::ScopeIdStats]) -> Vec<&engram_core::ports::ScopeIdStats> {
    let mut v: Vec<_> = ids.iter().filter(|s| s.field != ScopeField::Org).collect();
    v.sort_by(|a, b| b.memories.cmp(&a.memories).then(a.id.cmp(&b.id)));
    v.truncate(TOP_SCOPES);
    v
}
