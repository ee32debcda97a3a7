//! The page shell (head, navigation, who is signed in) and the small
//! renderers every page shares: times, scope chips, bars and charts drawn as
//! SVG on the server (no inline style: the CSP forbids it).

use axum::response::{IntoResponse, Response};
use jiff::Timestamp;
use maud::{DOCTYPE, Markup, html};
use serde::Deserialize;

use engram_core::memory::Scope;

use super::Ui;

/// The menu entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nav {
    Overview,
    Scopes,
    Memories,
    Search,
    Jobs,
    Audit,
    Keys,
}

/// A page outside the signed-in shell (sign-in, errors).
pub fn bare(title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(title))
            body { (body) }
        }
    }
}

fn head(title: &str) -> Markup {
    html! {
        head {
            meta charset="utf-8";
            meta name="viewport" content="width=device-width, initial-scale=1";
            title { (title) " · Engram" }
            link rel="stylesheet" href="/ui/assets/ui.css";
            link rel="icon" href="/ui/assets/favicon.svg" type="image/svg+xml";
            script src="/ui/assets/ui.js" defer {}
        }
    }
}

/// A signed-in page: the menu, who is signed in, and `body`.
pub fn page(ui: &Ui, title: &str, active: Nav, body: Markup) -> Response {
    let items: &[(Nav, &str, &str)] = &[
        (Nav::Overview, "/ui", "Overview"),
        (Nav::Scopes, "/ui/scopes", "Scopes"),
        (Nav::Memories, "/ui/memories", "Memories"),
        (Nav::Search, "/ui/search", "Search"),
        (Nav::Jobs, "/ui/jobs", "Jobs"),
        (Nav::Audit, "/ui/audit", "Audit log"),
        (Nav::Keys, "/ui/keys", "Keys"),
    ];
    let admin_only = |n: Nav| matches!(n, Nav::Audit | Nav::Keys);
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(title))
            body {
                a.skip href="#main" { "Skip to content" }
                header.top {
                    a.brand href="/ui" { "Engram" }
                    nav aria-label="Main" {
                        ul {
                            @for (nav, href, label) in items {
                                @if !admin_only(*nav) || ui.is_admin() {
                                    li { a href=(href) aria-current=[(*nav == active).then_some("page")] { (label) } }
                                }
                            }
                            li { a href="/docs" { "API reference" } }
                        }
                    }
                    div.who {
                        span title="Signed in as" { (ui.who) }
                        form method="post" action="/ui/logout" {
                            input type="hidden" name="csrf" value=(ui.csrf);
                            button.link type="submit" { "Sign out" }
                        }
                    }
                }
                main #main { h1 { (title) } (body) }
            }
        }
    }
    .into_response()
}

/// The hidden CSRF field every state-changing form carries.
pub fn csrf(ui: &Ui) -> Markup {
    html! { input type="hidden" name="csrf" value=(ui.csrf); }
}

/// A time as `2026-12-03 12:37:44 UTC`, with the RFC 3339 form in `datetime`.
pub fn time(t: Timestamp) -> Markup {
    let shown = t.strftime("%Y-%m-%d %H:%M:%S UTC").to_string();
    html! { time datetime=(t.to_string()) { (shown) } }
}

pub fn time_opt(t: Option<Timestamp>) -> Markup {
    match t {
        Some(t) => time(t),
        None => html! { span.muted { "—" } },
    }
}

/// A scope's ids as chips, each a link to that scope's memories.
pub fn scope(s: &Scope) -> Markup {
    html! {
        span.scope {
            @for (f, v) in s.iter() {
                a.chip href={ "/ui/memories?" (f.as_str()) "=" (super::urlencode(v)) } { (f.as_str()) "=" (v) }
                " "
            }
        }
    }
}

/// A horizontal bar for a value in [0, `max`], with its number.
pub fn bar(value: f32, max: f32, label: &str) -> Markup {
    let w = if max > 0.0 {
        (value / max).clamp(0.0, 1.0) * 100.0
    } else {
        0.0
    };
    html! {
        span.barcell {
            svg.bar width="100" height="10" viewBox="0 0 100 10" role="img" aria-label={ (label) " " (format!("{value:.3}")) } {
                rect.track x="0" y="0" width="100" height="10" {}
                rect.fill x="0" y="0" width=(format!("{w:.1}")) height="10" {}
            }
            " " span.num { (format!("{value:.3}")) }
        }
    }
}

/// A column chart of `values` (oldest first), `label` for screen readers.
pub fn columns(values: &[u64], label: &str) -> Markup {
    let max = values.iter().copied().max().unwrap_or(0).max(1) as f32;
    let n = values.len().max(1) as f32;
    let w = 300.0 / n;
    html! {
        svg.chart width="300" height="60" viewBox="0 0 300 60" role="img" aria-label=(label) {
            rect.track x="0" y="0" width="300" height="60" {}
            @for (i, v) in values.iter().enumerate() {
                @let h = (*v as f32 / max) * 56.0;
                rect.fill x=(format!("{:.1}", i as f32 * w)) y=(format!("{:.1}", 60.0 - h))
                    width=(format!("{:.1}", (w - 1.0).max(0.5))) height=(format!("{h:.1}")) {
                    title { (v) }
                }
            }
        }
    }
}

/// `1.2 MB`.
pub fn bytes(n: u64) -> String {
    let units = ["B", "kB", "MB", "GB", "TB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1000.0 && u + 1 < units.len() {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", units[u])
    }
}

/// Milliseconds from seconds, `1.23 ms`.
pub fn ms(seconds: Option<f64>) -> String {
    seconds.map_or("—".to_owned(), |s| format!("{:.2} ms", s * 1000.0))
}

/// A query field left empty in a form is absent.
pub fn empty_as_none<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let v = Option::<String>::deserialize(d)?;
    Ok(v.map(|s| s.trim().to_owned()).filter(|s| !s.is_empty()))
}

/// Pretty JSON, escaped.
pub fn json(v: &serde_json::Value) -> Markup {
    let text = serde_json::to_string_pretty(v).unwrap_or_default();
    html! { pre.json { (text) } }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_are_escaped_and_bounded() {
        let s = bar(2.0, 1.0, "x").into_string();
        assert!(s.contains("width=\"100.0\""), "clamped: {s}");
        let html = json(&serde_json::json!("<script>alert(1)</script>")).into_string();
        assert!(html.contains("&lt;script&gt;"));
        assert_eq!(bytes(999), "999 B");
        assert_eq!(bytes(1_500_000), "1.5 MB");
        assert_eq!(ms(Some(0.00123)), "1.23 ms");
        let c = columns(&[0, 5, 10], "chart").into_string();
        assert!(c.contains("height=\"56.0\""), "{c}");
    }
}
