//! The search playground: a query in a scope with filters, top_k, token
//! budget and `as_of`; each hit with its per-signal scores as bars, the
//! vector path, latency and the tokens the result would inject. It runs the
//! same service call as `POST /v1/memories/search` with `explain: true`.

use std::time::Instant;

use axum::extract::State;
use engram_core::filter::Filter;
use engram_core::service::SearchInput;
use maud::{Markup, html};
use serde::Deserialize;
use serde_json::Value;

use super::layout::{self, Nav};
use super::memories::scope_inputs;
use super::{PageError, PageQuery, PageResult, ScopeQuery, Ui};
use crate::AppState;

#[derive(Deserialize, Default)]
pub struct SearchQuery {
    #[serde(flatten)]
    scope: ScopeQuery,
    #[serde(default, deserialize_with = "layout::empty_as_none")]
    q: Option<String>,
    /// A filter in the API's filter language (JSON).
    #[serde(default, deserialize_with = "layout::empty_as_none")]
    filters: Option<String>,
    #[serde(default, deserialize_with = "layout::empty_as_none")]
    top_k: Option<String>,
    #[serde(default, deserialize_with = "layout::empty_as_none")]
    token_budget: Option<String>,
    #[serde(default, deserialize_with = "layout::empty_as_none")]
    as_of: Option<String>,
}

fn number(v: &Option<String>, name: &str) -> Result<Option<usize>, PageError> {
    v.as_deref()
        .map(|s| {
            s.parse::<usize>().map_err(|_| {
                PageError::new(
                    axum::http::StatusCode::BAD_REQUEST,
                    "That request is not valid",
                    format!("`{name}` must be a whole number, not `{s}`."),
                )
            })
        })
        .transpose()
}

pub async fn page(
    State(app): State<AppState>,
    ui: Ui,
    PageQuery(q): PageQuery<SearchQuery>,
) -> PageResult {
    let top_k = number(&q.top_k, "top_k")?;
    let token_budget = number(&q.token_budget, "token_budget")?;
    let form = html! {
        form.filters method="get" action="/ui/search" {
            fieldset {
                legend { "Query" }
                span.field.wide { label for="q" { "query" } input #q name="q" value=[q.q.as_deref()] size="40" required; }
            }
            fieldset { legend { "Scope" } (scope_inputs(&q.scope)) }
            fieldset {
                legend { "Options" }
                span.field.wide {
                    label for="filters" { "filters (JSON)" }
                    input #filters name="filters" value=[q.filters.as_deref()] placeholder=r#"{"categories": {"contains": "food"}}"# size="40";
                }
                span.field { label for="top_k" { "top_k" } input #top_k name="top_k" inputmode="numeric" value=[q.top_k.as_deref()] size="4"; }
                span.field { label for="token_budget" { "token budget" } input #token_budget name="token_budget" inputmode="numeric" value=[q.token_budget.as_deref()] size="6"; }
                span.field { label for="as_of" { "as of" } input #as_of name="as_of" value=[q.as_of.as_deref()] placeholder="2026-01-31T12:00:00Z" size="20"; }
            }
            button type="submit" { "Search" }
        }
    };
    let Some(query) = q.q.clone() else {
        let body = html! { (form) p.empty { "Type a query to see what an agent would be given, and why." } };
        return Ok(layout::page(&ui, "Search playground", Nav::Search, body));
    };
    let filters: Option<Value> = match &q.filters {
        None => None,
        Some(text) => Some(serde_json::from_str(text).map_err(|e| {
            PageError::new(
                axum::http::StatusCode::BAD_REQUEST,
                "That filter is not valid",
                format!("`filters` is not JSON: {e}."),
            )
        })?),
    };
    let filter = Filter::with_ids(filters.as_ref(), &q.scope.scope())?;
    let at = q
        .as_of
        .as_deref()
        .map(|s| engram_core::filter::parse_timestamp(&Value::String(s.to_owned()), "as_of"))
        .transpose()?;
    let input = SearchInput {
        query,
        filter,
        top_k,
        threshold: None,
        token_budget,
        explain: true,
    };
    let started = Instant::now();
    let out = match at {
        Some(at) => app.memory.search_as_of(&ui.ctx, input, at).await?,
        None => app.memory.search(&ui.ctx, input).await?,
    };
    let elapsed = started.elapsed();
    let body = html! {
        (form)
        p.summary role="status" {
            (out.hits.len()) " hits · " (out.tokens) " tokens to inject · vector path "
            strong { (out.vector_path.as_str()) } " · "
            (format!("{:.2} ms", elapsed.as_secs_f64() * 1000.0))
            @if out.cached_embedding { " (query embedding cached)" }
        }
        @if out.hits.is_empty() { p.empty { "Nothing matched." } }
        ol.hits {
            @for h in &out.hits {
                li {
                    a href={ "/ui/memories/" (h.memory.id) } { (h.memory.text) }
                    " " (layout::scope(&h.memory.scope))
                    @if let Some(e) = &h.explanation { (explanation(e)) }
                }
            }
        }
    };
    Ok(layout::page(&ui, "Search playground", Nav::Search, body))
}

fn explanation(e: &engram_core::service::Explanation) -> Markup {
    let s = &e.signals;
    // Raw BM25 is unbounded: its bar is scaled to the largest plausible score.
    let rows: [(&str, Option<f32>, f32); 10] = [
        ("semantic", s.semantic, 1.0),
        ("keyword", s.keyword, 20.0),
        ("entity", s.entity, 1.0),
        ("context", s.context, 1.0),
        ("speaker named", s.speaker, 1.0),
        ("fused", Some(s.fused), 1.0),
        ("decay", Some(e.decay), 1.0),
        ("kind weight", Some(e.kind_weight), 1.0),
        ("feedback", Some(e.feedback), 1.0),
        ("final", Some(e.score), 1.0),
    ];
    html! {
        table.signals {
            caption.sr { "Why this hit scored what it did" }
            tbody {
                @for (name, value, max) in rows {
                    tr {
                        th scope="row" { (name) }
                        td {
                            @match value {
                                Some(v) => (layout::bar(v, max, name)),
                                None => span.muted { "not a candidate" },
                            }
                        }
                    }
                }
            }
        }
    }
}
