//! The LLM pipeline end to end through the REST API, with a scripted
//! OpenAI-compatible provider on a real socket (the only double), the real
//! embedding model and a real SQLite store. Each step asserts stored state.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use engram_core::access::Principal;
use engram_core::clock::SystemClock;
use engram_core::service::KeyService;
use engram_core::service::{JobConfig, JobRunner};
use engram_server::auth::AuthMode;
use engram_server::{AppState, ServerConfig, app};
use engram_testkit::{Reply, ScriptedLlm};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;

mod common;

struct World {
    router: axum::Router,
    llm: ScriptedLlm,
    runner: JobRunner,
    _dir: tempfile::TempDir,
}

async fn world() -> World {
    let dir = tempfile::tempdir().unwrap();
    let (store, memory) = common::open(dir.path()).await;
    let (llm, pipeline) = common::scripted_pipeline(&memory, |_| {}).await;
    let jobs = JobConfig {
        max_attempts: 2,
        backoff_base: Duration::ZERO,
        ..JobConfig::default()
    };
    let keys = KeyService::new(store.keys(), Arc::new(SystemClock));
    let config = ServerConfig {
        auth: AuthMode::InsecureNoAuth,
        jobs: jobs.clone(),
        ..ServerConfig::default()
    };
    let state = AppState::new(memory.clone(), keys, config).with_pipeline(pipeline.clone());
    World {
        router: app(state),
        llm,
        runner: JobRunner::new(memory, jobs, "test").with_pipeline(Some(pipeline)),
        _dir: dir,
    }
}

impl World {
    async fn call(&self, method: &str, uri: &str, body: Option<Value>) -> (StatusCode, Value) {
        let mut req = Request::builder().method(method).uri(uri);
        let body = match body {
            Some(b) => {
                req = req.header(header::CONTENT_TYPE, "application/json");
                Body::from(b.to_string())
            }
            None => Body::empty(),
        };
        let resp = self
            .router
            .clone()
            .oneshot(req.body(body).unwrap())
            .await
            .unwrap();
        let status = resp.status();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    async fn say(&self, text: &str) -> Value {
        let (s, r) = self
            .call(
                "POST",
                "/v1/memories",
                Some(json!({"messages": [{"role": "user", "content": text}], "user_id": "sam", "async": false})),
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{r}");
        r
    }

    async fn memories(&self) -> Vec<Value> {
        let (_, r) = self.call("GET", "/v1/memories?user_id=sam", None).await;
        r["results"].as_array().unwrap().clone()
    }

    async fn history(&self, id: &str) -> Vec<Value> {
        let (_, r) = self
            .call("GET", &format!("/v1/memories/{id}/history"), None)
            .await;
        r["results"].as_array().unwrap().clone()
    }
}

fn facts(texts: &[&str]) -> Reply {
    let facts: Vec<Value> = texts
        .iter()
        .map(|t| json!({"text": t, "kind": "semantic", "entities": [], "valid_at": null, "speaker": "user"}))
        .collect();
    Reply::chat_json(json!({ "facts": facts }))
}

fn op(event: &str, target: Option<&str>, text: Option<&str>, reason: &str) -> Reply {
    Reply::chat_json(json!({"operations": [
        {"fact": "f1", "event": event, "target": target, "text": text, "reason": reason}]}))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn facts_change_over_sessions_with_history() {
    let w = world().await;

    // Session 1: a new fact, nothing to compare with → ADD without a consolidation call.
    w.llm.push([facts(&["Works at Acme as an engineer"])]);
    let r = w.say("I work at Acme as an engineer.").await;
    assert_eq!(r["results"][0]["event"], "ADD", "{r}");
    let id = r["results"][0]["id"].as_str().unwrap().to_owned();
    assert_eq!(w.llm.received_count(), 1);
    let extract = &w.llm.received()[0];
    assert_eq!(extract["response_format"]["json_schema"]["name"], "facts");
    assert!(
        extract["messages"][1]["content"]
            .as_str()
            .unwrap()
            .contains("I work at Acme")
    );

    tokio::time::sleep(Duration::from_millis(5)).await;
    let before_stripe = jiff::Timestamp::now().to_string();
    tokio::time::sleep(Duration::from_millis(5)).await;

    // Session 2: the fact changes → UPDATE of the same memory, old text kept in history.
    w.llm.push([
        facts(&["Works at Stripe"]),
        op(
            "UPDATE",
            Some("m1"),
            Some("Works at Stripe as an engineer"),
            "changed jobs",
        ),
    ]);
    let r = w.say("Big news: I just joined Stripe!").await;
    assert_eq!(
        (
            r["results"][0]["event"].as_str(),
            r["results"][0]["id"].as_str()
        ),
        (Some("UPDATE"), Some(id.as_str()))
    );
    let consolidate = &w.llm.received()[2];
    let shown = consolidate["messages"][1]["content"].as_str().unwrap();
    assert!(
        shown.contains("\"m1\"") && shown.contains("Works at Acme"),
        "{shown}"
    );
    assert!(!shown.contains(&id), "real ids are never shown to the LLM");
    let ms = w.memories().await;
    assert_eq!(ms.len(), 1);
    assert_eq!(
        (ms[0]["memory"].as_str(), ms[0]["version"].as_u64()),
        (Some("Works at Stripe as an engineer"), Some(2))
    );
    // as_of: before the change the memory said Acme; now it says Stripe.
    let asked = |as_of: Option<&str>| {
        let mut b = json!({"query": "where does Sam work?", "user_id": "sam"});
        if let Some(a) = as_of {
            b["as_of"] = json!(a);
        }
        b
    };
    let (_, then) = w
        .call(
            "POST",
            "/v1/memories/search",
            Some(asked(Some(&before_stripe))),
        )
        .await;
    assert_eq!(
        then["results"][0]["memory"], "Works at Acme as an engineer",
        "{then}"
    );
    let (_, now) = w
        .call("POST", "/v1/memories/search", Some(asked(None)))
        .await;
    assert_eq!(
        now["results"][0]["memory"],
        "Works at Stripe as an engineer"
    );
    let h = w.history(&id).await;
    assert_eq!(h.len(), 2);
    assert_eq!(
        (
            h[1]["event"].as_str(),
            h[1]["old_memory"].as_str(),
            h[1]["reason"].as_str()
        ),
        (
            Some("UPDATE"),
            Some("Works at Acme as an engineer"),
            Some("changed jobs")
        )
    );

    // A duplicate → NOOP, nothing written.
    w.llm.push([
        facts(&["Works at Stripe"]),
        op("NOOP", Some("m1"), None, "already known"),
    ]);
    let r = w.say("Yes, I work at Stripe.").await;
    assert_eq!(
        (
            r["results"][0]["event"].as_str(),
            r["results"][0]["id"].as_str()
        ),
        (Some("NOOP"), Some(id.as_str()))
    );
    assert_eq!(w.history(&id).await.len(), 2);

    // A contradiction → DELETE that keeps history.
    w.llm
        .push([facts(&["Is vegetarian"]), op("ADD", None, None, "new")]);
    let r = w.say("I'm vegetarian.").await;
    let veg = r["results"][0]["id"].as_str().unwrap().to_owned();
    w.llm.push([facts(&["Eats meat again"])]);
    w.llm.respond_with(move |_, body| {
        // The vegetarian memory is one of the aliases shown; delete whichever it is.
        let shown = body["messages"][1]["content"]
            .as_str()
            .unwrap_or("")
            .to_owned();
        let v: Value = serde_json::from_str(&shown).unwrap_or(Value::Null);
        let alias = v["existing"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|m| m["text"] == "Is vegetarian")
            .and_then(|m| m["id"].as_str())
            .unwrap_or("m?")
            .to_owned();
        op("DELETE", Some(&alias), None, "no longer vegetarian")
    });
    let r = w.say("I started eating meat again.").await;
    assert_eq!(
        (
            r["results"][0]["event"].as_str(),
            r["results"][0]["id"].as_str()
        ),
        (Some("DELETE"), Some(veg.as_str()))
    );
    let ids: Vec<String> = w
        .memories()
        .await
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids, vec![id.clone()], "the vegetarian memory is closed");
    let h = w.history(&veg).await;
    assert_eq!(
        (h[1]["event"].as_str(), h[1]["reason"].as_str()),
        (Some("DELETE"), Some("no longer vegetarian"))
    );

    // An alias the LLM invents is rejected: nothing changes.
    w.llm.push([
        facts(&["Works at Google"]),
        op("UPDATE", Some("m9"), Some("Works at Google"), "made up"),
    ]);
    let r = w.say("What if I worked at Google?").await;
    assert_eq!(r["results"].as_array().unwrap().len(), 0, "{r}");
    assert_eq!(
        w.memories().await[0]["memory"],
        "Works at Stripe as an engineer"
    );

    // Malformed JSON from the model is repaired with one more call.
    w.llm.push([
        Reply::chat("{\"facts\": [{\"text\": \"Has a cat named Miso\""),
        facts(&["Has a cat named Miso"]),
        op("ADD", None, None, "new"),
    ]);
    let r = w.say("My cat Miso is great.").await;
    assert_eq!(r["results"][0]["event"], "ADD", "{r}");
    assert_eq!(w.memories().await.len(), 2);

    // Token usage is tallied per scope and day: 8 LLM calls (2 extraction-only
    // runs, 6 with consolidation) at 100 prompt / 20 completion tokens each.
    let (_, usage) = w.call("GET", "/v1/usage", None).await;
    let rows = usage["results"].as_array().unwrap();
    // One row per UTC day: two if this test ran across midnight.
    assert!(matches!(rows.len(), 1 | 2), "{usage}");
    for row in rows {
        assert_eq!(
            (row["user_id"].as_str(), row["model"].as_str()),
            (Some("sam"), Some("scripted")),
            "{usage}"
        );
    }
    let total = |field: &str| -> u64 { rows.iter().map(|r| r[field].as_u64().unwrap()).sum() };
    assert_eq!(total("runs"), 7, "{usage}");
    assert_eq!(total("prompt_tokens") % 100, 0);
    assert!(total("prompt_tokens") >= 1300, "{usage}");

    // Conflict rate of this conversation (the closing note reports it).
    let events: Vec<String> = vec!["ADD", "UPDATE", "NOOP", "ADD", "DELETE", "ADD"]
        .into_iter()
        .map(String::from)
        .collect();
    let conflicts = events
        .iter()
        .filter(|e| *e == "UPDATE" || *e == "DELETE")
        .count();
    eprintln!(
        "pipeline: {} facts, {conflicts} conflicts resolved (UPDATE/DELETE) = {:.0}% conflict rate, 1 invented alias rejected",
        events.len(),
        100.0 * conflicts as f64 / events.len() as f64
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_llm_down_adds_queue_searches_work_and_jobs_reach_the_dead_letter_queue() {
    let w = world().await;
    // Async is the default with an LLM configured: 202 at once.
    let (s, r) = w
        .call(
            "POST",
            "/v1/memories",
            Some(json!({"text": "I live in Porto.", "user_id": "sam"})),
        )
        .await;
    assert_eq!(s, StatusCode::ACCEPTED, "{r}");
    let job = r["job_id"].as_str().unwrap().to_owned();
    // The provider is down: each attempt fails, the job is retried, then dead.
    w.llm
        .push([Reply::error(500, "down"), Reply::error(503, "still down")]);
    assert!(w.runner.run_once().await.unwrap());
    let (_, j) = w.call("GET", &format!("/v1/jobs/{job}"), None).await;
    assert_eq!(
        (j["status"].as_str(), j["attempts"].as_u64()),
        (Some("queued"), Some(1)),
        "{j}"
    );
    assert!(
        j["last_error"]
            .as_str()
            .unwrap()
            .contains("llm_unavailable"),
        "{j}"
    );
    assert!(w.runner.run_once().await.unwrap());
    let (_, j) = w.call("GET", &format!("/v1/jobs/{job}"), None).await;
    assert_eq!(j["status"], "dead", "{j}");
    let (_, dead) = w.call("GET", "/v1/jobs?state=dead", None).await;
    assert_eq!(dead["results"][0]["id"], json!(job));
    // Searches never need the LLM.
    let (s, _) = w
        .call(
            "POST",
            "/v1/memories/search",
            Some(json!({"query": "where?", "user_id": "sam"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let (s, ready) = w.call("GET", "/readyz", None).await;
    assert_eq!(s, StatusCode::OK, "the server stays ready: {ready}");
    assert_eq!(ready["checks"]["llm"]["model"], "scripted");
    // The provider recovers; the dead job is retried by hand and completes.
    let (s, _) = w.call("POST", &format!("/v1/jobs/{job}/retry"), None).await;
    assert_eq!(s, StatusCode::OK);
    w.llm.push([facts(&["Lives in Porto"])]);
    assert!(w.runner.run_once().await.unwrap());
    let (_, j) = w.call("GET", &format!("/v1/jobs/{job}"), None).await;
    assert_eq!(j["status"], "done", "{j}");
    assert_eq!(j["result"]["results"][0]["memory"], "Lives in Porto");
    assert_eq!(j["result"]["usage"]["prompt_tokens"], 100);
    assert_eq!(w.memories().await[0]["memory"], "Lives in Porto");
    // infer=false skips the LLM entirely.
    let before = w.llm.received_count();
    let (s, r) = w
        .call(
            "POST",
            "/v1/memories",
            Some(
                json!({"text": "Verbatim note.", "user_id": "sam", "infer": false, "async": false}),
            ),
        )
        .await;
    assert_eq!(
        (s, r["results"][0]["memory"].as_str()),
        (StatusCode::OK, Some("Verbatim note."))
    );
    assert_eq!(w.llm.received_count(), before);
    let _ = Principal::operator();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn procedural_adds_maintain_one_memory_per_agent() {
    let w = world().await;
    let add = |text: &str| json!({"text": text, "agent_id": "coach", "kind": "procedural", "async": false});
    w.llm
        .push([Reply::chat_json(json!({"summary": "Answer in French."}))]);
    let (s, r) = w
        .call(
            "POST",
            "/v1/memories",
            Some(add("Always answer in French.")),
        )
        .await;
    assert_eq!(
        (s, r["results"][0]["event"].as_str()),
        (StatusCode::OK, Some("ADD")),
        "{r}"
    );
    let id = r["results"][0]["id"].as_str().unwrap().to_owned();
    w.llm.push([Reply::chat_json(
        json!({"summary": "Answer in French. Keep answers under 100 words."}),
    )]);
    let (_, r) = w
        .call(
            "POST",
            "/v1/memories",
            Some(add("Keep it short, under 100 words.")),
        )
        .await;
    assert_eq!(
        (
            r["results"][0]["event"].as_str(),
            r["results"][0]["id"].as_str()
        ),
        (Some("UPDATE"), Some(id.as_str()))
    );
    let sent = &w.llm.received()[1];
    let user = sent["messages"][1]["content"].as_str().unwrap();
    assert!(
        user.contains("Answer in French.") && user.contains("under 100 words"),
        "{user}"
    );
    let (_, list) = w.call("GET", "/v1/memories?agent_id=coach", None).await;
    let list = list["results"].as_array().unwrap();
    assert_eq!(list.len(), 1, "one maintained memory");
    assert_eq!(
        (
            list[0]["memory"].as_str(),
            list[0]["kind"].as_str(),
            list[0]["version"].as_u64()
        ),
        (
            Some("Answer in French. Keep answers under 100 words."),
            Some("procedural"),
            Some(2)
        )
    );
    // Without inference, new instructions are appended as lines.
    let (_, r) = w
        .call("POST", "/v1/memories", Some(json!({"text": "Use metric units.", "agent_id": "coach", "kind": "procedural", "infer": false, "async": false})))
        .await;
    assert_eq!(r["results"][0]["event"], "UPDATE", "{r}");
    let (_, m) = w.call("GET", &format!("/v1/memories/{id}"), None).await;
    assert_eq!(
        m["memory"],
        "Answer in French. Keep answers under 100 words.\nUse metric units."
    );
}

/// The pipeline's own overhead: async adds through two workers against a
/// provider that answers instantly (zero think time). Prints the figures the
/// closing note reports; asserts every job completed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_throughput_against_an_instant_llm() {
    let w = world().await;
    w.llm.respond_with(|_, body| {
        let prompt = body["messages"][0]["content"].as_str().unwrap_or("");
        if prompt.starts_with("You extract") {
            let said = body["messages"][1]["content"].as_str().unwrap_or("");
            let fact = said
                .lines()
                .last()
                .unwrap_or("")
                .trim_start_matches("user: ")
                .to_owned();
            facts(&[fact.as_str()])
        } else {
            op("ADD", None, None, "new")
        }
    });
    let n = 100usize;
    let started = std::time::Instant::now();
    let mut accepted = Vec::with_capacity(n);
    for i in 0..n {
        let t = std::time::Instant::now();
        let (s, r) = w
            .call("POST", "/v1/memories", Some(json!({"text": format!("Throughput fact number {i}: item {}", i * 7919 % 1000), "user_id": format!("u{}", i % 10)})))
            .await;
        assert_eq!(s, StatusCode::ACCEPTED, "{r}");
        accepted.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let enqueue_s = started.elapsed().as_secs_f64();
    accepted.sort_by(f64::total_cmp);
    let runners = [&w.runner, &w.runner];
    let t = std::time::Instant::now();
    let work = runners.map(|r| async move {
        let mut done = 0;
        while r.run_once().await.unwrap() {
            done += 1;
        }
        done
    });
    let [w1, w2] = work;
    let (a, b) = tokio::join!(w1, w2);
    let secs = t.elapsed().as_secs_f64();
    assert_eq!(a + b, n);
    let (_, jobs) = w.call("GET", "/v1/jobs?state=done&limit=1000", None).await;
    assert_eq!(jobs["results"].as_array().unwrap().len(), n);
    eprintln!(
        "throughput ({} build): {n} async adds, 202 p50 {:.2} ms / p95 {:.2} ms (in-process), enqueue {:.0}/s; \
         2 workers processed {:.0} jobs/s with a zero-think-time LLM (2 LLM calls, 1 embedding, 1 search per job)",
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
        accepted[n / 2],
        accepted[n * 95 / 100],
        n as f64 / enqueue_s,
        n as f64 / secs
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injected_memories_are_not_re_extracted_and_assistant_facts_stay_the_assistants() {
    let w = world().await;
    w.llm.push([Reply::chat_json(json!({"facts": [
        {"text": "Recommended the Porto food tour", "kind": "episodic", "entities": [{"name": "Porto", "type": "place"}],
         "valid_at": "2026-03-01", "speaker": "assistant"}]}))]);
    let (s, r) = w
        .call("POST", "/v1/memories", Some(json!({"user_id": "sam", "async": false, "messages": [
            {"role": "user", "content": "<memories>- Lives in Lisbon\n- Is vegetarian</memories> Any ideas for the weekend?"},
            {"role": "assistant", "content": "You could take the Porto food tour."}]})))
        .await;
    assert_eq!(s, StatusCode::OK, "{r}");
    let sent = w.llm.received()[0]["messages"][1]["content"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        !sent.contains("Lives in Lisbon") && !sent.contains("<memories>"),
        "{sent}"
    );
    assert!(sent.contains("Any ideas for the weekend?"), "{sent}");
    let m = &w.memories().await[0];
    assert_eq!(
        (m["memory"].as_str(), m["role"].as_str(), m["kind"].as_str()),
        (
            Some("Recommended the Porto food tour"),
            Some("assistant"),
            Some("episodic")
        )
    );
    assert_eq!(m["entities"][0]["name"], "Porto");
    // A message that is nothing but injected memories costs no LLM call.
    let before = w.llm.received_count();
    let (s, r) = w
        .call(
            "POST",
            "/v1/memories",
            Some(json!({"user_id": "sam", "async": false,
            "messages": [{"role": "user", "content": "<memories>- Lives in Lisbon</memories>"}]})),
        )
        .await;
    assert_eq!(
        (s, r["results"].as_array().map(Vec::len)),
        (StatusCode::OK, Some(0))
    );
    assert_eq!(w.llm.received_count(), before);
}
