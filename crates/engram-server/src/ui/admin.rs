//! Admin pages: the audit log (filter by actor, action and time; export as
//! JSON Lines) and API keys (create — the secret shown once —, list, revoke).
//! The service decides who may: a non-admin gets a clear "not allowed" page.

use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Redirect};
use engram_core::access::Role;
use engram_core::memory::Scope;
use engram_core::ports::AuditQuery;
use engram_core::service::{MAX_PAGE, NewKey};
use maud::html;
use serde::Deserialize;
use serde_json::Value;

use super::layout::{self, Nav};
use super::{PageError, PageForm, PageQuery, PageResult, Ui, urlencode};
use crate::AppState;

/// Audit events per page.
const AUDIT_PAGE: usize = 100;

#[derive(Deserialize, Default, Clone)]
pub struct AuditParams {
    #[serde(default, deserialize_with = "layout::empty_as_none")]
    actor: Option<String>,
    #[serde(default, deserialize_with = "layout::empty_as_none")]
    action: Option<String>,
    #[serde(default, deserialize_with = "layout::empty_as_none")]
    since: Option<String>,
    #[serde(default, deserialize_with = "layout::empty_as_none")]
    until: Option<String>,
    #[serde(default, deserialize_with = "layout::empty_as_none")]
    cursor: Option<String>,
}

impl AuditParams {
    fn query(&self, limit: usize) -> Result<AuditQuery, PageError> {
        let time = |v: &Option<String>, name: &str| {
            v.as_ref()
                .map(|s| engram_core::filter::parse_timestamp(&Value::String(s.clone()), name))
                .transpose()
                .map_err(PageError::from)
        };
        let after = match &self.cursor {
            None => None,
            Some(c) => Some(c.parse::<i64>().ok().filter(|n| *n >= 0).ok_or_else(|| {
                PageError::new(
                    StatusCode::BAD_REQUEST,
                    "That request is not valid",
                    format!("`{c}` is not a page of the audit log."),
                )
            })?),
        };
        Ok(AuditQuery {
            org_id: None,
            action: self.action.clone(),
            actor: self.actor.clone(),
            target: None,
            since: time(&self.since, "since")?,
            until: time(&self.until, "until")?,
            after,
            limit,
        })
    }

    fn link(&self) -> String {
        let mut parts = Vec::new();
        for (k, v) in [
            ("actor", &self.actor),
            ("action", &self.action),
            ("since", &self.since),
            ("until", &self.until),
        ] {
            if let Some(v) = v {
                parts.push(format!("{k}={}", urlencode(v)));
            }
        }
        parts.join("&")
    }
}

pub async fn audit(
    State(app): State<AppState>,
    ui: Ui,
    PageQuery(p): PageQuery<AuditParams>,
) -> PageResult {
    let rows = app.memory.audit(&ui.ctx, p.query(AUDIT_PAGE)?).await?;
    let next = (rows.len() == AUDIT_PAGE)
        .then(|| rows.last().map(|(seq, _)| *seq))
        .flatten();
    let here = p.link();
    let body = html! {
        form.filters method="get" action="/ui/audit" {
            span.field { label for="actor" { "actor" } input #actor name="actor" value=[p.actor.as_deref()] placeholder="key:…" size="16"; }
            span.field { label for="action" { "action" } input #action name="action" value=[p.action.as_deref()] placeholder="memory.update" size="16"; }
            span.field { label for="since" { "since" } input #since name="since" value=[p.since.as_deref()] placeholder="2026-12-01" size="12"; }
            span.field { label for="until" { "until" } input #until name="until" value=[p.until.as_deref()] size="12"; }
            button type="submit" { "Filter" }
            " " a href={ "/ui/audit/export?" (here) } download="engram-audit.jsonl" { "Export JSONL" }
        }
        @if rows.is_empty() {
            p.empty { "No audit events match." }
        } @else {
            table {
                thead { tr { th { "time" } th { "actor" } th { "action" } th { "org" } th { "target" } th { "detail" } } }
                tbody {
                    @for (_, e) in &rows {
                        tr {
                            td { (layout::time(e.at)) }
                            td { code { (e.actor) } }
                            td { (e.action) }
                            td { (e.org_id.as_deref().unwrap_or("—")) }
                            td {
                                @match e.target.as_deref() {
                                    Some(t) if e.action.starts_with("memory.") => a href={ "/ui/memories/" (t) } { code { (t) } },
                                    Some(t) if e.action.starts_with("job.") => a href={ "/ui/jobs/" (t) } { code { (t) } },
                                    Some(t) => code { (t) },
                                    None => "—",
                                }
                            }
                            td { code { (e.detail.to_string()) } }
                        }
                    }
                }
            }
        }
        @if let Some(n) = next {
            nav.pager aria-label="Pages" { a href={ "/ui/audit?" (here) "&cursor=" (n) } rel="next" { "Later events" } }
        }
    };
    Ok(layout::page(&ui, "Audit log", Nav::Audit, body))
}

pub async fn audit_export(
    State(app): State<AppState>,
    ui: Ui,
    PageQuery(p): PageQuery<AuditParams>,
) -> PageResult {
    let mut q = p.query(MAX_PAGE)?;
    let mut out = Vec::new();
    loop {
        let rows = app.memory.audit(&ui.ctx, q.clone()).await?;
        let Some((last, _)) = rows.last() else { break };
        q.after = Some(*last);
        let full = rows.len() == q.limit;
        for (_, e) in rows {
            serde_json::to_writer(&mut out, &crate::governance::AuditOut::from(e))
                .map_err(|e| engram_core::Error::internal(format!("audit export: {e}")))?;
            out.push(b'\n');
        }
        if !full {
            break;
        }
    }
    Ok((
        [
            (header::CONTENT_TYPE, "application/x-ndjson"),
            (
                header::CONTENT_DISPOSITION,
                "attachment; filename=\"engram-audit.jsonl\"",
            ),
        ],
        out,
    )
        .into_response())
}

pub async fn keys(State(app): State<AppState>, ui: Ui) -> PageResult {
    let keys = app.keys.list(&ui.ctx.principal).await?;
    Ok(layout::page(
        &ui,
        "API keys",
        Nav::Keys,
        keys_body(&ui, &keys, None),
    ))
}

fn keys_body(
    ui: &Ui,
    keys: &[engram_core::ports::ApiKey],
    created: Option<(&engram_core::ports::ApiKey, &str)>,
) -> maud::Markup {
    let roles = Role::ALL
        .into_iter()
        .filter(|r| *r <= ui.principal().role && *r != Role::Operator);
    html! {
        @if let Some((k, secret)) = created {
            div.notice role="status" {
                p { "Key " code { (k.id) } " (" (k.name) ") created. Copy its secret now: it is shown only once." }
                p { code.secret #new-secret { (secret) } " " button.copy type="button" data-copy="new-secret" { "Copy" } }
            }
        }
        h2 { "Create a key" }
        form.filters method="post" action="/ui/keys" {
            (layout::csrf(ui))
            span.field { label for="name" { "name" } input #name name="name" required size="16"; }
            span.field {
                label for="role" { "role" }
                select #role name="role" {
                    @for r in roles { option value=(r.as_str()) selected[r == Role::ReadWrite] { (r.as_str()) } }
                }
            }
            @for f in ["org_id", "app_id", "user_id", "agent_id"] {
                span.field { label for={ "new-" (f) } { (f) } input id={ "new-" (f) } name=(f) size="10"; }
            }
            span.field { label for="rate_limit" { "requests / minute" } input #rate_limit name="rate_limit" inputmode="numeric" size="6"; }
            button type="submit" { "Create" }
        }
        p.muted { "A key can only be bound within your own binding; unset ids take yours." }
        h2 { "Keys" }
        table {
            thead { tr { th { "id" } th { "name" } th { "role" } th { "binding" } th { "created" } th { "state" } th { "" } } }
            tbody {
                @for k in keys {
                    tr {
                        td { code { (k.id) } }
                        td { (k.name) }
                        td { (k.role.as_str()) }
                        td { (layout::scope(&k.binding)) }
                        td { (layout::time(k.created_at)) " by " (k.created_by) }
                        td { @match k.revoked_at { Some(t) => { "revoked " (layout::time(t)) }, None => "active" } }
                        td {
                            @if k.revoked_at.is_none() {
                                form.inline method="post" action={ "/ui/keys/" (k.id) "/revoke" } {
                                    (layout::csrf(ui))
                                    button.danger type="submit" data-confirm={ "Revoke key " (k.id) "? Clients using it stop working." } { "Revoke" }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

#[derive(Deserialize)]
pub struct CreateForm {
    name: String,
    role: String,
    #[serde(default, deserialize_with = "layout::empty_as_none")]
    org_id: Option<String>,
    #[serde(default, deserialize_with = "layout::empty_as_none")]
    app_id: Option<String>,
    #[serde(default, deserialize_with = "layout::empty_as_none")]
    user_id: Option<String>,
    #[serde(default, deserialize_with = "layout::empty_as_none")]
    agent_id: Option<String>,
    #[serde(default, deserialize_with = "layout::empty_as_none")]
    rate_limit: Option<String>,
}

pub async fn create_key(
    State(app): State<AppState>,
    ui: Ui,
    PageForm(form): PageForm<CreateForm>,
) -> PageResult {
    let rate_limit = form
        .rate_limit
        .as_deref()
        .map(|s| {
            s.parse::<u32>().map_err(|_| {
                PageError::new(
                    StatusCode::BAD_REQUEST,
                    "That request is not valid",
                    format!("requests / minute must be a whole number, not `{s}`."),
                )
            })
        })
        .transpose()?;
    let new = NewKey {
        name: form.name,
        role: Some(Role::parse(&form.role)?),
        binding: Scope {
            org_id: form.org_id,
            app_id: form.app_id,
            user_id: form.user_id,
            agent_id: form.agent_id,
            run_id: None,
        },
        rate_limit,
    };
    let (key, secret) = app.keys.create(&ui.ctx.principal, new).await?;
    let keys = app.keys.list(&ui.ctx.principal).await?;
    Ok(layout::page(
        &ui,
        "API keys",
        Nav::Keys,
        keys_body(&ui, &keys, Some((&key, &secret))),
    ))
}

pub async fn revoke_key(State(app): State<AppState>, ui: Ui, Path(id): Path<String>) -> PageResult {
    app.keys.revoke(&ui.ctx.principal, &id).await?;
    Ok(Redirect::to("/ui/keys").into_response())
}
