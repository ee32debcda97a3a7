//! `engram bench`'s dashboard phase: signs in to `/ui` with a key, then
//! renders the memories page and the search playground for many scopes and
//! reports the server-side time of each render (its `Server-Timing`), and the
//! round trip over loopback HTTP.

use std::time::Instant;

use anyhow::Context;
use serde_json::{Value, json};

use crate::bench::summary;

/// The value of cookie `name` that `resp` sets.
fn set_cookie(resp: &reqwest::Response, name: &str) -> anyhow::Result<String> {
    resp.headers()
        .get_all(reqwest::header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|c| c.split(';').next()?.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
        .with_context(|| format!("the dashboard set no `{name}` cookie"))
}

/// Milliseconds the server spent, from `Server-Timing: app;dur=…`.
fn server_ms(resp: &reqwest::Response) -> anyhow::Result<f64> {
    resp.headers()
        .get("server-timing")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split("dur=").nth(1))
        .and_then(|v| v.parse().ok())
        .context("the dashboard sent no Server-Timing")
}

/// Renders `/ui/memories` and `/ui/search` for `pages` scopes; `scope(i)` is the
/// i-th scope's query (`user_id=user-7`), `query(i)` a search text.
pub async fn dashboard(
    base: &str,
    key: &str,
    pages: usize,
    scope: impl Fn(usize) -> String,
    query: impl Fn(usize) -> String,
) -> anyhow::Result<Value> {
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let form = client.get(format!("{base}/ui/login")).send().await?;
    let login = set_cookie(&form, "engram_login")?;
    let html = form.text().await?;
    let csrf = html
        .split(r#"name="csrf" value=""#)
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .context("no CSRF field on the sign-in form")?
        .to_owned();
    // Both values are hex and `_`: nothing to encode.
    let signed_in = client
        .post(format!("{base}/ui/login"))
        .header(reqwest::header::COOKIE, format!("engram_login={login}"))
        .header(
            reqwest::header::CONTENT_TYPE,
            "application/x-www-form-urlencoded",
        )
        .body(format!("csrf={csrf}&api_key={key}"))
        .send()
        .await?;
    anyhow::ensure!(
        signed_in.status() == reqwest::StatusCode::SEE_OTHER,
        "sign-in answered {}",
        signed_in.status()
    );
    let session = format!(
        "engram_session={}",
        set_cookie(&signed_in, "engram_session")?
    );
    let mut out = serde_json::Map::new();
    for (name, path) in [("memories_page", "memories"), ("search_page", "search")] {
        let (mut server, mut round_trip) = (Vec::new(), Vec::new());
        for i in 0..pages {
            let mut url = format!("{base}/ui/{path}?{}", scope(i));
            if path == "search" {
                url.push_str(&format!("&q={}", query(i).replace(' ', "+")));
            }
            let t = Instant::now();
            let resp = client
                .get(&url)
                .header(reqwest::header::COOKIE, &session)
                .send()
                .await?;
            anyhow::ensure!(
                resp.status().is_success(),
                "{url} answered {}",
                resp.status()
            );
            let ms = server_ms(&resp)?;
            let _ = resp.bytes().await?;
            round_trip.push(t.elapsed().as_secs_f64() * 1e3);
            server.push(ms);
        }
        out.insert(
            name.to_owned(),
            json!({"server_ms": summary(server), "round_trip_ms": summary(round_trip)}),
        );
    }
    Ok(Value::Object(out))
}
