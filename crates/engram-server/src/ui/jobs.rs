//! Jobs: queued, running, done and dead (the dead-letter queue) with their
//! last error; one job's result — the ADD / UPDATE / DELETE / NOOP
//! operations it produced, linked to the memories — and retrying a dead one.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect};
use engram_core::ports::{Job, JobState};
use maud::html;
use serde::Deserialize;

use super::layout::{self, Nav};
use super::{PageError, PageQuery, PageResult, Ui, parse_uuid};
use crate::AppState;

/// Jobs listed per page.
const LIMIT: usize = 50;

#[derive(Deserialize, Default)]
pub struct JobsQuery {
    #[serde(default, deserialize_with = "layout::empty_as_none")]
    state: Option<String>,
}

pub async fn list(
    State(app): State<AppState>,
    ui: Ui,
    PageQuery(q): PageQuery<JobsQuery>,
) -> PageResult {
    let state = q
        .state
        .as_deref()
        .map(JobState::parse)
        .transpose()
        .map_err(|_| {
            PageError::new(
                StatusCode::BAD_REQUEST,
                "That request is not valid",
                "`state` is one of queued, running, done, dead.",
            )
        })?;
    let jobs = app.jobs.list(&ui.ctx, state, LIMIT).await?;
    let states = ["queued", "running", "done", "dead"];
    let body = html! {
        nav.tabs aria-label="Job states" {
            a href="/ui/jobs" aria-current=[state.is_none().then_some("page")] { "all" }
            @for s in states {
                " " a href={ "/ui/jobs?state=" (s) } aria-current=[(state.map(|x| x.as_str()) == Some(s)).then_some("page")] { (s) }
            }
        }
        @if jobs.is_empty() {
            p.empty { "No jobs here." }
        } @else {
            table {
                thead { tr { th { "job" } th { "state" } th { "scope" } th { "attempts" } th { "created" } th { "last error" } } }
                tbody {
                    @for j in &jobs {
                        tr {
                            td { a href={ "/ui/jobs/" (j.id) } { code { (short(j)) } } }
                            td { span class={ "state " (j.state.as_str()) } { (j.state.as_str()) } }
                            td { (layout::scope(&j.scope)) }
                            td { (j.attempts) " / " (j.max_attempts) }
                            td { (layout::time(j.created_at)) }
                            td { (j.last_error.as_deref().unwrap_or("")) }
                        }
                    }
                }
            }
        }
    };
    Ok(layout::page(&ui, "Jobs", Nav::Jobs, body))
}

fn short(j: &Job) -> String {
    j.id.to_string().chars().take(13).collect()
}

pub async fn detail(State(app): State<AppState>, ui: Ui, Path(raw): Path<String>) -> PageResult {
    let id = parse_uuid(&raw, "job")?;
    let j = app.jobs.get(&ui.ctx, id).await?;
    let results = j
        .result
        .as_ref()
        .and_then(|r| r.get("results"))
        .and_then(|r| r.as_array())
        .cloned()
        .unwrap_or_default();
    let body = html! {
        table.kv {
            tr { th scope="row" { "id" } td { code { (j.id) } } }
            tr { th scope="row" { "state" } td { span class={ "state " (j.state.as_str()) } { (j.state.as_str()) } } }
            tr { th scope="row" { "scope" } td { (layout::scope(&j.scope)) } }
            tr { th scope="row" { "attempts" } td { (j.attempts) " of " (j.max_attempts) } }
            tr { th scope="row" { "created" } td { (layout::time(j.created_at)) } }
            tr { th scope="row" { "updated" } td { (layout::time(j.updated_at)) } }
            tr { th scope="row" { "last error" } td { (j.last_error.as_deref().unwrap_or("—")) } }
            @if let Some(r) = &j.request_id { tr { th scope="row" { "request" } td { code { (r) } } } }
        }
        @if j.state == JobState::Dead && ui.can_write() {
            form method="post" action={ "/ui/jobs/" (j.id) "/retry" } {
                (layout::csrf(&ui))
                button type="submit" { "Retry this job" }
            }
        }
        @if !results.is_empty() {
            h2 { "Operations" }
            table {
                thead { tr { th { "operation" } th { "memory" } } }
                tbody {
                    @for r in &results {
                        tr {
                            td { span.event { (r.get("event").and_then(|v| v.as_str()).unwrap_or("?")) } }
                            td {
                                @match r.get("id").and_then(|v| v.as_str()) {
                                    Some(id) => a href={ "/ui/memories/" (id) } { (r.get("memory").and_then(|v| v.as_str()).unwrap_or(id)) },
                                    None => (r.get("memory").and_then(|v| v.as_str()).unwrap_or("")),
                                }
                            }
                        }
                    }
                }
            }
        }
        @if let Some(r) = &j.result { details { summary { "Result (JSON)" } (layout::json(r)) } }
        details { summary { "Request (JSON)" } (layout::json(&j.payload)) }
    };
    Ok(layout::page(&ui, "Job", Nav::Jobs, body))
}

pub async fn retry(State(app): State<AppState>, ui: Ui, Path(raw): Path<String>) -> PageResult {
    let id = parse_uuid(&raw, "job")?;
    app.jobs.retry(&ui.ctx, id).await?;
    Ok(Redirect::to(&format!("/ui/jobs/{id}")).into_response())
}
