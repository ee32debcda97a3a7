//! Memories: a scope's memories newest first, filtered and paged; one
//! memory with its version timeline, "as of" a time, and edit, delete and
//! revert. Filters are written in the API's own filter language and parsed
//! by the service, so a malformed one gets the same precise message.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Redirect};
use engram_core::filter::Filter;
use engram_core::memory::{Event, HistoryEvent, Memory, MemoryKind};
use engram_core::ports::Cursor;
use engram_core::service::UpdateInput;
use jiff::Timestamp;
use maud::{Markup, html};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::layout::{self, Nav};
use super::{PageError, PageForm, PageQuery, PageResult, ScopeQuery, Ui, parse_uuid, urlencode};
use crate::AppState;

/// Memories per page.
const PAGE: usize = 25;

#[derive(Deserialize, Default)]
pub struct ListQuery {
    #[serde(flatten)]
    scope: ScopeQuery,
    #[serde(default, deserialize_with = "layout::empty_as_none")]
    kind: Option<String>,
    #[serde(default, deserialize_with = "layout::empty_as_none")]
    category: Option<String>,
    #[serde(default, deserialize_with = "layout::empty_as_none")]
    meta_key: Option<String>,
    #[serde(default, deserialize_with = "layout::empty_as_none")]
    meta_value: Option<String>,
    #[serde(default, deserialize_with = "layout::empty_as_none")]
    created_from: Option<String>,
    #[serde(default, deserialize_with = "layout::empty_as_none")]
    created_to: Option<String>,
    #[serde(default, deserialize_with = "layout::empty_as_none")]
    contains: Option<String>,
    #[serde(default, deserialize_with = "layout::empty_as_none")]
    cursor: Option<String>,
}

impl ListQuery {
    /// The filter language form of the page's filters (the scope ids join it in `Filter::with_ids`).
    fn filters(&self) -> Value {
        let mut all = Vec::new();
        if let Some(k) = &self.kind {
            all.push(json!({ "kind": k }));
        }
        if let Some(c) = &self.category {
            all.push(json!({ "categories": { "contains": c } }));
        }
        match (&self.meta_key, &self.meta_value) {
            (Some(k), Some(v)) => all.push(json!({ "metadata": { k: v } })),
            (Some(k), None) => all.push(json!({ "metadata": { k: "*" } })),
            _ => {}
        }
        let mut created = Map::new();
        if let Some(from) = &self.created_from {
            created.insert("gte".into(), json!(from));
        }
        if let Some(to) = &self.created_to {
            created.insert("lte".into(), json!(to));
        }
        if !created.is_empty() {
            all.push(json!({ "created_at": created }));
        }
        if let Some(t) = &self.contains {
            all.push(json!({ "keywords": { "icontains": t } }));
        }
        json!({ "AND": all })
    }

    /// This page's query string without the cursor.
    fn query(&self) -> String {
        let mut parts = vec![self.scope.query()];
        let mut add = |k: &str, v: &Option<String>| {
            if let Some(v) = v {
                parts.push(format!("{k}={}", urlencode(v)));
            }
        };
        add("kind", &self.kind);
        add("category", &self.category);
        add("meta_key", &self.meta_key);
        add("meta_value", &self.meta_value);
        add("created_from", &self.created_from);
        add("created_to", &self.created_to);
        add("contains", &self.contains);
        parts.retain(|p| !p.is_empty());
        parts.join("&")
    }
}

/// The scope id inputs every scoped page shows.
pub fn scope_inputs(q: &ScopeQuery) -> Markup {
    html! {
        @for f in engram_core::memory::ScopeField::ALL {
            span.field {
                label for=(f.as_str()) { (f.as_str()) }
                input id=(f.as_str()) name=(f.as_str()) value=[q.get(f)] size="12";
            }
        }
    }
}

pub async fn list(
    State(app): State<AppState>,
    ui: Ui,
    PageQuery(q): PageQuery<ListQuery>,
) -> PageResult {
    let filter = Filter::with_ids(Some(&q.filters()), &q.scope.scope())?;
    let named = ui.ctx.principal.bind_filter(filter.clone())?.names_scope();
    let form = html! {
        form.filters method="get" action="/ui/memories" {
            fieldset {
                legend { "Scope" }
                (scope_inputs(&q.scope))
            }
            fieldset {
                legend { "Filters" }
                span.field {
                    label for="kind" { "kind" }
                    select #kind name="kind" {
                        option value="" { "any" }
                        @for k in MemoryKind::ALL {
                            option value=(k.as_str()) selected[q.kind.as_deref() == Some(k.as_str())] { (k.as_str()) }
                        }
                    }
                }
                span.field { label for="category" { "category" } input #category name="category" value=[q.category.as_deref()] size="10"; }
                span.field { label for="meta_key" { "metadata key" } input #meta_key name="meta_key" value=[q.meta_key.as_deref()] size="10"; }
                span.field { label for="meta_value" { "metadata value" } input #meta_value name="meta_value" value=[q.meta_value.as_deref()] size="10"; }
                span.field { label for="created_from" { "created from" } input #created_from name="created_from" value=[q.created_from.as_deref()] placeholder="2026-01-31" size="12"; }
                span.field { label for="created_to" { "created to" } input #created_to name="created_to" value=[q.created_to.as_deref()] placeholder="2026-12-31" size="12"; }
                span.field { label for="contains" { "text contains" } input #contains name="contains" value=[q.contains.as_deref()] size="14"; }
            }
            button type="submit" { "Show" }
        }
    };
    if !named {
        let body = html! {
            (form)
            p.empty { "Choose a scope: enter a user, agent, run or app id above, or pick one on "
                a href="/ui/scopes" { "Scopes" } "." }
        };
        return Ok(layout::page(&ui, "Memories", Nav::Memories, body));
    }
    let after = q.cursor.as_deref().map(Cursor::decode).transpose()?;
    let page = app.memory.list(&ui.ctx, &filter, after, PAGE).await?;
    let total = app.memory.count(&ui.ctx, &filter).await?;
    let here = q.query();
    let body = html! {
        (form)
        p.muted { (total) " memories match." }
        @if page.memories.is_empty() {
            p.empty { "No memories match." }
        } @else {
            table.memories {
                thead { tr { th { "memory" } th { "kind" } th { "entities" } th { "created" } th { "updated" } th { "expires" } } }
                tbody {
                    @for m in &page.memories {
                        tr {
                            td { a href={ "/ui/memories/" (m.id) } { (m.text) } br; (layout::scope(&m.scope)) }
                            td { (m.kind.as_str()) }
                            td { @for e in &m.entities { span.chip title=(e.kind) { (e.name) } " " } }
                            td { (layout::time(m.created_at)) }
                            td { (layout::time(m.updated_at)) }
                            td { (layout::time_opt(m.expires_at)) }
                        }
                    }
                }
            }
        }
        nav.pager aria-label="Pages" {
            @if q.cursor.is_some() { a href={ "/ui/memories?" (here) } { "Newest" } " " }
            @if let Some(next) = &page.next {
                a href={ "/ui/memories?" (here) "&cursor=" (urlencode(&next.encode())) } rel="next" { "Older" }
            }
        }
    };
    Ok(layout::page(&ui, "Memories", Nav::Memories, body))
}

#[derive(Deserialize, Default)]
pub struct DetailQuery {
    #[serde(default, deserialize_with = "layout::empty_as_none")]
    as_of: Option<String>,
}

/// The version current at `t`, from the memory's history.
fn as_of(events: &[HistoryEvent], t: Timestamp) -> Option<&HistoryEvent> {
    events.iter().rev().find(|e| e.created_at <= t)
}

fn parse_time(s: &str) -> Result<Timestamp, PageError> {
    engram_core::filter::parse_timestamp(&json!(s), "as_of").map_err(PageError::from)
}

pub async fn detail(
    State(app): State<AppState>,
    ui: Ui,
    Path(raw): Path<String>,
    PageQuery(q): PageQuery<DetailQuery>,
) -> PageResult {
    let id = parse_uuid(&raw, "memory")?;
    let m = app.memory.get(&ui.ctx, id).await?;
    let mut events = app.memory.history(&ui.ctx, id).await?;
    events.sort_by(|a, b| {
        a.created_at
            .cmp(&b.created_at)
            .then(a.version.cmp(&b.version))
    });
    let at = q.as_of.as_deref().map(parse_time).transpose()?;
    let body = html! {
        div.split {
        div {
        section.current aria-labelledby="current" {
            h2 #current { "Current text" }
            blockquote { (m.text) }
            (facts(&m))
        }
        @if ui.can_write() {
            section aria-labelledby="edit" {
                h2 #edit { "Edit" }
                form method="post" action={ "/ui/memories/" (m.id) "/edit" } {
                    (layout::csrf(&ui))
                    input type="hidden" name="version" value=(m.version);
                    label for="text" { "Text" }
                    textarea #text name="text" rows="3" required { (m.text) }
                    button type="submit" { "Save as version " (m.version + 1) }
                }
                form.inline method="post" action={ "/ui/memories/" (m.id) "/delete" } {
                    (layout::csrf(&ui))
                    button.danger type="submit" data-confirm="Delete this memory? Its history is kept." { "Delete memory" }
                }
            }
        }
        }
        div {
        section aria-labelledby="asof" {
            h2 #asof { "As of a time" }
            form.filters method="get" action={ "/ui/memories/" (m.id) } {
                label for="as_of" { "time (RFC 3339 or a date)" }
                input #as_of name="as_of" value=[q.as_of.as_deref()] placeholder="2026-01-31T12:00:00Z";
                button type="submit" { "Show" }
            }
            @if let Some(t) = at {
                @match as_of(&events, t) {
                    None => p role="status" { "At " (layout::time(t)) " this memory did not exist yet." },
                    Some(e) if e.event == Event::Delete => p role="status" { "At " (layout::time(t)) " this memory was deleted." },
                    Some(e) => p role="status" { "At " (layout::time(t)) ", version " (e.version) " said: " q { (e.new_text.as_deref().unwrap_or("")) } },
                }
            }
        }
        section aria-labelledby="timeline" {
            h2 #timeline { "Version timeline" }
            ol.timeline {
                @for (i, e) in events.iter().enumerate() {
                    @let until = events.get(i + 1).map(|n| n.created_at);
                    li {
                        span.event { (e.event.as_str()) }
                        " version " (e.version) " · " (layout::time(e.created_at))
                        @if let Some(u) = until { " → " (layout::time(u)) } @else if e.event != Event::Delete { " → now" }
                        @if let Some(old) = &e.old_text { @if e.event != Event::Add { p.old { "was: " q { (old) } } } }
                        @if let Some(new) = &e.new_text { p.new { "became: " q { (new) } } }
                        p.muted {
                            "by " (e.actor.as_deref().unwrap_or("unknown"))
                            @if let Some(r) = &e.reason { " · reason: " (r) }
                            @if let Some(r) = &e.request_id { " · request " code { (r) } }
                        }
                        @if ui.can_write() && e.version != m.version && matches!(e.event, Event::Add | Event::Update | Event::Revert) {
                            form.inline method="post" action={ "/ui/memories/" (m.id) "/revert" } {
                                (layout::csrf(&ui))
                                input type="hidden" name="version" value=(e.version);
                                button type="submit" { "Revert to version " (e.version) }
                            }
                        }
                    }
                }
            }
        }
        }
        }
    };
    Ok(layout::page(&ui, "Memory", Nav::Memories, body))
}

fn facts(m: &Memory) -> Markup {
    html! {
        table.kv {
            tr { th scope="row" { "id" } td { code { (m.id) } } }
            tr { th scope="row" { "version" } td { (m.version) } }
            tr { th scope="row" { "kind" } td { (m.kind.as_str()) } }
            tr { th scope="row" { "scope" } td { (layout::scope(&m.scope)) } }
            tr { th scope="row" { "said by" } td { (m.role.as_deref().unwrap_or("—")) } }
            tr { th scope="row" { "entities" } td { @for e in &m.entities { span.chip title=(e.kind) { (e.name) } " " } } }
            tr { th scope="row" { "categories" } td { (m.categories.join(", ")) } }
            tr { th scope="row" { "metadata" } td { code { (serde_json::to_string(&m.metadata).unwrap_or_default()) } } }
            tr { th scope="row" { "created" } td { (layout::time(m.created_at)) } }
            tr { th scope="row" { "updated" } td { (layout::time(m.updated_at)) } }
            tr { th scope="row" { "true since" } td { (layout::time_opt(m.valid_at)) } }
            tr { th scope="row" { "expires" } td { (layout::time_opt(m.expires_at)) } }
            tr { th scope="row" { "feedback" } td {
                @match m.feedback {
                    Some(f) => span.(format!("feedback-{}", f.as_str().to_ascii_lowercase())) { (f.as_str()) },
                    None => span.muted { "none" },
                }
            } }
            tr { th scope="row" { "tokens" } td { (m.tokens) } }
        }
    }
}

#[derive(Deserialize)]
pub struct EditForm {
    text: String,
    version: Option<u32>,
}

pub async fn edit(
    State(app): State<AppState>,
    ui: Ui,
    Path(raw): Path<String>,
    PageForm(form): PageForm<EditForm>,
) -> PageResult {
    let id = parse_uuid(&raw, "memory")?;
    // A form rendered for an older version must not overwrite a newer one unseen.
    if let Some(seen) = form.version {
        let current = app.memory.get(&ui.ctx, id).await?;
        if current.version != seen {
            return Err(PageError::new(
                StatusCode::CONFLICT,
                "That changed meanwhile",
                format!(
                    "This memory is at version {} now; you edited version {seen}. Reload it and edit again.",
                    current.version
                ),
            ));
        }
    }
    let input = UpdateInput {
        text: Some(form.text),
        ..UpdateInput::default()
    };
    app.memory.update(&ui.ctx, id, input).await?;
    Ok(Redirect::to(&format!("/ui/memories/{id}")).into_response())
}

pub async fn delete(State(app): State<AppState>, ui: Ui, Path(raw): Path<String>) -> PageResult {
    let id = parse_uuid(&raw, "memory")?;
    let m = app.memory.get(&ui.ctx, id).await?;
    app.memory.delete(&ui.ctx, id).await?;
    let back = m
        .scope
        .iter()
        .last()
        .map(|(f, v)| format!("/ui/memories?{}={}", f.as_str(), urlencode(v)))
        .unwrap_or_else(|| "/ui/memories".to_owned());
    let body = html! {
        p role="status" { "Deleted " q { (m.text) } ". Its history is kept." }
        p { a href=(back) { "Back to the scope's memories" } }
    };
    Ok(layout::page(&ui, "Memory deleted", Nav::Memories, body))
}

#[derive(Deserialize)]
pub struct RevertForm {
    version: u32,
}

pub async fn revert(
    State(app): State<AppState>,
    ui: Ui,
    Path(raw): Path<String>,
    PageForm(form): PageForm<RevertForm>,
) -> PageResult {
    let id = parse_uuid(&raw, "memory")?;
    app.memory.revert(&ui.ctx, id, form.version).await?;
    Ok(Redirect::to(&format!("/ui/memories/{id}")).into_response())
}
