//! Scopes: every user, agent, run, app and org id the caller can see, with
//! memory counts and last activity; erasing one behind a typed confirmation,
//! answered with the erasure receipt.

use axum::extract::State;
use axum::http::StatusCode;
use engram_core::memory::ScopeField;
use maud::html;
use serde::Deserialize;

use super::layout::{self, Nav};
use super::{PageError, PageForm, PageQuery, PageResult, Ui};
use crate::AppState;

#[derive(Deserialize, Default)]
pub struct ScopesQuery {
    #[serde(default, deserialize_with = "layout::empty_as_none")]
    field: Option<String>,
}

pub async fn page(
    State(app): State<AppState>,
    ui: Ui,
    PageQuery(q): PageQuery<ScopesQuery>,
) -> PageResult {
    let field = match q.field.as_deref() {
        None => None,
        Some(f) => Some(ScopeField::from_name(f).ok_or_else(|| {
            PageError::new(
                StatusCode::BAD_REQUEST,
                "That request is not valid",
                format!("`{f}` is not a scope field (org_id, app_id, user_id, agent_id, run_id)."),
            )
        })?),
    };
    let mut ids = app.memory.scope_ids(&ui.ctx).await?;
    ids.retain(|s| field.is_none_or(|f| s.field == f));
    ids.sort_by_key(|s| std::cmp::Reverse(s.last));
    let body = html! {
        form.filters method="get" action="/ui/scopes" {
            label for="field" { "Show" }
            select #field name="field" {
                option value="" { "every kind of scope" }
                @for f in ScopeField::ALL {
                    option value=(f.as_str()) selected[field == Some(f)] { (f.as_str()) }
                }
            }
            button type="submit" { "Filter" }
        }
        @if ids.is_empty() {
            p.empty { "No memories yet in any scope you can see." }
        } @else {
            table {
                thead { tr { th { "scope" } th { "id" } th { "memories" } th { "first" } th { "last activity" } th { "" } } }
                tbody {
                    @for s in &ids {
                        tr {
                            td { (s.field.as_str()) }
                            td { a href={ "/ui/memories?" (s.field.as_str()) "=" (super::urlencode(&s.id)) } { (s.id) } }
                            td { (s.memories) }
                            td { (layout::time(s.first)) }
                            td { (layout::time(s.last)) }
                            td {
                                @if s.field != ScopeField::App && ui.can_write() {
                                    details.erase {
                                        summary { "Erase…" }
                                        form method="post" action="/ui/scopes/erase" {
                                            (layout::csrf(&ui))
                                            input type="hidden" name="field" value=(s.field.as_str());
                                            input type="hidden" name="id" value=(s.id);
                                            p { "Every memory, version, history event, index entry and job of "
                                                strong { (s.field.as_str()) "=" (s.id) } " is deleted for good." }
                                            label for={ "confirm-" (s.field.as_str()) "-" (s.id) } { "Type " code { (s.id) } " to confirm" }
                                            input id={ "confirm-" (s.field.as_str()) "-" (s.id) } name="confirm" autocomplete="off" required;
                                            button.danger type="submit" { "Erase " (s.field.as_str()) }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    };
    Ok(layout::page(&ui, "Scopes", Nav::Scopes, body))
}

#[derive(Deserialize)]
pub struct EraseForm {
    field: String,
    id: String,
    #[serde(default)]
    confirm: String,
}

pub async fn erase(
    State(app): State<AppState>,
    ui: Ui,
    PageForm(form): PageForm<EraseForm>,
) -> PageResult {
    let field = ScopeField::from_name(&form.field).ok_or_else(|| {
        PageError::new(
            StatusCode::BAD_REQUEST,
            "That request is not valid",
            format!("`{}` is not a scope field.", form.field),
        )
    })?;
    if form.confirm.trim() != form.id {
        return Err(PageError::new(
            StatusCode::BAD_REQUEST,
            "Not erased",
            format!(
                "The confirmation did not match: type `{}` exactly to erase it.",
                form.id
            ),
        ));
    }
    // As the REST API's default: the files are compacted in the background, coalesced
    // with other erasures, so one click cannot make every tenant wait.
    let receipt = app.memory.erase(&ui.ctx, field, &form.id, false).await?;
    app.compactor.request();
    let e = &receipt.erased;
    let body = html! {
        p role="status" { "Erased " strong { (receipt.field) "=" (receipt.id) } "." }
        table.kv {
            tr { th scope="row" { "receipt" } td { code { (receipt.receipt_id) } } }
            tr { th scope="row" { "within" } td { (layout::scope(&receipt.scope)) } }
            tr { th scope="row" { "memories" } td { (e.memories) } }
            tr { th scope="row" { "versions" } td { (e.versions) } }
            tr { th scope="row" { "history events" } td { (e.history_events) } }
            tr { th scope="row" { "entity index entries" } td { (e.entity_index_entries) } }
            tr { th scope="row" { "keyword index entries" } td { (e.keyword_index_entries) } }
            tr { th scope="row" { "vector index entries" } td { (e.vector_index_entries) } }
            tr { th scope="row" { "jobs" } td { (e.jobs) } }
            tr { th scope="row" { "idempotency records" } td { (e.idempotency_records) } }
            tr { th scope="row" { "LLM usage rows" } td { (e.llm_usage_rows) } }
            tr { th scope="row" { "API keys" } td { (e.api_keys) } }
            tr { th scope="row" { "bytes on disk" } td { "compaction scheduled on this node" } }
            tr { th scope="row" { "started" } td { (layout::time(receipt.started_at)) } }
            tr { th scope="row" { "finished" } td { (layout::time(receipt.finished_at)) } }
        }
        p { a href="/ui/scopes" { "Back to scopes" } }
    };
    Ok(layout::page(&ui, "Erasure receipt", Nav::Scopes, body))
}
