//! A slow or looping model (issue 16, part 2), with a scripted
//! OpenAI-compatible server on a real socket, the real model and store:
//! a cut-off answer is its own failure and the retry changes the request;
//! a worker's heartbeat keeps a slow job from a second worker; an answer
//! slower than twice the timeout ends the job with a clear error, within the
//! attempt's budget; a model that keeps failing falls back to verbatim.
//! Runs on SQLite, and on Postgres with `ENGRAM_TEST_STORE=postgres`.

use std::time::Duration;

use engram_core::ctx::RequestCtx;
use engram_core::filter::Filter;
use engram_core::memory::Scope;
use engram_core::pipeline::Pipeline;
use engram_core::ports::JobState;
use engram_core::service::{
    AddInput, Content, JobConfig, JobQueue, JobRunner, MemoryService, Message,
};
use engram_testkit::{Reply, ScriptedLlm};
use serde_json::{Value, json};

mod common;

struct World {
    memory: MemoryService,
    llm: ScriptedLlm,
    pipeline: Pipeline,
    _store: common::Opened,
    _dir: tempfile::TempDir,
}

async fn world(timeout: Duration) -> World {
    let dir = tempfile::tempdir().unwrap();
    let (store, memory) = common::open(dir.path()).await;
    let (llm, pipeline) = common::scripted_pipeline(&memory, |c| c.timeout = timeout).await;
    World {
        memory,
        llm,
        pipeline,
        _store: store,
        _dir: dir,
    }
}

fn ctx() -> RequestCtx {
    RequestCtx::operator("test")
}

fn sam() -> Scope {
    Scope {
        user_id: Some("sam".into()),
        ..Default::default()
    }
}

fn said(text: &str) -> AddInput {
    AddInput::new(
        Content::Messages(vec![Message {
            role: "user".into(),
            content: text.into(),
            name: None,
        }]),
        sam(),
    )
}

fn fact(text: &str) -> Value {
    json!({"text": text, "speaker": "user", "kind": "semantic", "entities": [], "valid_at": null})
}

impl World {
    fn jobs(&self, config: JobConfig) -> JobQueue {
        JobQueue::new(self.memory.clone(), config, Some(self.pipeline.clone()))
    }

    fn runner(&self, config: JobConfig, name: &str) -> JobRunner {
        JobRunner::new(self.memory.clone(), config, name).with_pipeline(Some(self.pipeline.clone()))
    }

    async fn texts(&self) -> Vec<String> {
        self.memory
            .list(&ctx(), &Filter::from_scope(&sam()), None, 100)
            .await
            .unwrap()
            .memories
            .into_iter()
            .map(|m| m.text)
            .collect()
    }
}

fn config(lease_ms: u64, max_attempts: u32) -> JobConfig {
    JobConfig {
        max_attempts,
        lease: Duration::from_millis(lease_ms),
        attempt_leases: 5,
        backoff_base: Duration::ZERO,
        backoff_max: Duration::ZERO,
        ..JobConfig::default()
    }
}

/// The issue's quiet-machine failure: the model loops inside a fact until
/// `max_tokens`. The budget follows the input, the cut-off answer is not
/// sent back for "repair", and the second call says what went wrong; an
/// answer cut off after whole facts keeps them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_looping_answer_is_cut_and_the_retry_changes_the_request() {
    let w = world(Duration::from_secs(30)).await;
    let looping = format!(
        r#"{{"facts": [{{"text": "I am allergic{}"#,
        " to to to".repeat(200)
    );
    w.llm.push([
        Reply::truncated(&looping),
        Reply::chat_json(json!({"facts": [fact("Is allergic to penicillin")]})),
    ]);
    let q = w.jobs(config(60_000, 3));
    let results = q
        .add_now(
            &ctx(),
            said("I'm allergic to penicillin, please remember."),
            None,
        )
        .await
        .unwrap();
    assert_eq!(results.len(), 1, "{results:?}");
    assert_eq!(w.texts().await, vec!["Is allergic to penicillin"]);
    let sent = w.llm.received();
    assert_eq!(sent.len(), 2, "one retry, no repair round: {sent:?}");
    let budget = sent[0]["max_tokens"].as_u64().unwrap();
    assert!(budget <= 512, "the budget follows a short input: {budget}");
    let first: Vec<Value> = sent[0]["messages"].as_array().unwrap().clone();
    let second: Vec<Value> = sent[1]["messages"].as_array().unwrap().clone();
    assert_eq!(second.len(), first.len() + 1);
    let note = second.last().unwrap()["content"].as_str().unwrap();
    assert!(note.contains("cut off") && note.contains("once"), "{note}");
    // The schema asks for the fact's text first.
    let raw = &w.llm.received_raw()[0];
    let items = &raw[raw.find("\"items\"").unwrap()..];
    assert!(
        items.find("\"text\"").unwrap() < items.find("\"entities\"").unwrap(),
        "{items}"
    );

    // Cut off after one whole fact and a loop: the whole fact and the loop's first sentence stay.
    w.llm.push([
        Reply::truncated(
            r#"{"facts": [{"text": "Works as a nurse", "speaker": "user", "kind": "semantic", "entities": [], "valid_at": null}, {"text": "Has a dog called Biscuit. Has a dog called Biscuit. Has a dog"#,
        ),
        Reply::chat_json(json!({"operations": [
            {"fact": "f1", "event": "ADD", "target": null, "text": null, "reason": "new"},
            {"fact": "f2", "event": "ADD", "target": null, "text": null, "reason": "new"}]})),
    ]);
    let results = q
        .add_now(
            &ctx(),
            said("I work as a nurse and my dog is called Biscuit."),
            None,
        )
        .await
        .unwrap();
    let mut stored: Vec<String> = results.into_iter().map(|r| r.memory).collect();
    stored.sort();
    assert_eq!(
        stored,
        vec!["Has a dog called Biscuit.", "Works as a nurse"]
    );
    assert_eq!(w.llm.received().len(), 4, "extraction not asked again");
}

/// The busy-machine failure: a call slower than the lease. The worker's
/// heartbeat renews the lease, so a second worker never starts the job;
/// the job completes once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_heartbeat_keeps_a_slow_job_from_a_second_worker() {
    let w = world(Duration::from_secs(30)).await;
    // The extraction answers after three leases.
    w.llm.push([
        Reply::chat_json(json!({"facts": [fact("Is allergic to penicillin")]}))
            .after(Duration::from_millis(900)),
    ]);
    let cfg = config(300, 3);
    let q = w.jobs(cfg.clone());
    let job = q
        .enqueue_add(&ctx(), said("I'm allergic to penicillin."), true)
        .await
        .unwrap();
    let (w1, w2) = (w.runner(cfg.clone(), "w1"), w.runner(cfg.clone(), "w2"));
    let first = tokio::spawn(async move { w1.run_once().await.unwrap() });
    // w1 holds the job before w2 starts asking.
    while q.get(&ctx(), job.id).await.unwrap().state != JobState::Running {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut second_claimed = false;
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        second_claimed |= w2.run_once().await.unwrap();
    }
    assert!(first.await.unwrap(), "w1 ran the job");
    assert!(
        !second_claimed,
        "w2 never got the job while w1 worked on it"
    );
    let done = q.get(&ctx(), job.id).await.unwrap();
    assert_eq!((done.state, done.attempts), (JobState::Done, 1), "{done:?}");
    assert_eq!(w.texts().await, vec!["Is allergic to penicillin"]);
    assert_eq!(w.llm.received_count(), 1, "one call, never two chains");
}

/// A provider answering after twice the timeout: each attempt fails with a
/// clear error, and the job ends dead after its attempts, with that error —
/// it does not hang and is not run twice at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_after_twice_the_timeout_ends_the_job_with_a_clear_error() {
    let w = world(Duration::from_millis(400)).await;
    w.llm.respond_with(|_, _| {
        Reply::chat_json(json!({"facts": [fact("too late")]})).after(Duration::from_millis(800))
    });
    let cfg = config(60_000, 2);
    let q = w.jobs(cfg.clone());
    let job = q
        .enqueue_add(&ctx(), said("I'm allergic to penicillin."), true)
        .await
        .unwrap();
    let runner = w.runner(cfg, "w1");
    assert!(runner.run_once().await.unwrap());
    assert!(runner.run_once().await.unwrap());
    let dead = q.get(&ctx(), job.id).await.unwrap();
    assert_eq!((dead.state, dead.attempts), (JobState::Dead, 2), "{dead:?}");
    let error = dead.last_error.unwrap();
    assert!(error.contains("no answer within 400ms"), "{error}");
    assert!(w.texts().await.is_empty());

    // The attempt's budget derives from the lease: two leases of 200 ms end an
    // attempt whose call would take a second, whatever the call's own timeout.
    let w = world(Duration::from_secs(30)).await;
    w.llm.respond_with(|_, _| {
        Reply::chat_json(json!({"facts": [fact("too late")]})).after(Duration::from_secs(1))
    });
    let cfg = JobConfig {
        attempt_leases: 2,
        ..config(200, 1)
    };
    let q = w.jobs(cfg.clone());
    let job = q
        .enqueue_add(&ctx(), said("I'm allergic to penicillin."), true)
        .await
        .unwrap();
    let started = std::time::Instant::now();
    assert!(w.runner(cfg, "w1").run_once().await.unwrap());
    assert!(
        started.elapsed() < Duration::from_millis(900),
        "{:?}",
        started.elapsed()
    );
    let dead = q.get(&ctx(), job.id).await.unwrap();
    let error = dead.last_error.unwrap();
    assert!(
        error.contains("longer than its budget of 400ms (2 leases of 200ms)"),
        "{error}"
    );
}

/// A model that keeps answering what cannot be used: after the first
/// attempts fail, the job stores the messages verbatim and says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_that_keeps_failing_falls_back_to_verbatim() {
    let w = world(Duration::from_secs(30)).await;
    w.llm
        .respond_with(|_, _| Reply::chat("I cannot help with that."));
    let cfg = config(60_000, 3);
    let q = w.jobs(cfg.clone());
    let job = q
        .enqueue_add(&ctx(), said("My sister Maya lives in Portland."), true)
        .await
        .unwrap();
    let runner = w.runner(cfg, "w1");
    for _ in 0..3 {
        assert!(runner.run_once().await.unwrap());
    }
    let done = q.get(&ctx(), job.id).await.unwrap();
    assert_eq!((done.state, done.attempts), (JobState::Done, 3), "{done:?}");
    let result = done.result.unwrap();
    assert_eq!(result["fallback"], "verbatim", "{result}");
    assert!(
        result["llm_error"]
            .as_str()
            .unwrap()
            .contains("did not answer with JSON"),
        "{result}"
    );
    assert_eq!(w.texts().await, vec!["My sister Maya lives in Portland."]);
}
