//! The OpenAI-compatible clients against a scripted provider on a real socket.
//! Waiting is never real: the retry sleeper records what it was asked to wait,
//! and the circuit breaker reads a manual clock.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use engram_core::ErrorCode;
use engram_core::pipeline::chat_json;
use engram_core::ports::Embedder;
use engram_core::ports::{ChatMessage, ChatRequest, JsonSchema, Llm, LlmState};
use engram_llm::{ClientConfig, OpenAiChat, OpenAiEmbedder, Sleeper};
use engram_testkit::{ManualClock, Reply, ScriptedLlm};
use serde_json::json;

/// Records every wait instead of waiting.
#[derive(Default)]
struct RecordingSleeper(Mutex<Vec<Duration>>);

#[async_trait]
impl Sleeper for RecordingSleeper {
    async fn sleep(&self, d: Duration) {
        self.0.lock().unwrap().push(d);
    }
}

impl RecordingSleeper {
    fn waits(&self) -> Vec<Duration> {
        self.0.lock().unwrap().clone()
    }
}

struct Setup {
    server: ScriptedLlm,
    chat: OpenAiChat,
    sleeper: Arc<RecordingSleeper>,
    clock: Arc<ManualClock>,
}

async fn setup(tweak: impl FnOnce(&mut ClientConfig)) -> Setup {
    let server = ScriptedLlm::start().await;
    let mut cfg = ClientConfig::new(server.url(), "test-model");
    cfg.api_key = Some("sk-test".into());
    // Generous: a loaded machine must not turn a prompt answer into a timeout.
    cfg.timeout = Duration::from_secs(10);
    cfg.max_retries = 2;
    cfg.breaker_threshold = 2;
    tweak(&mut cfg);
    let sleeper = Arc::new(RecordingSleeper::default());
    let clock = ManualClock::new(jiff::Timestamp::from_second(1_800_000_000).unwrap());
    let chat = OpenAiChat::new(cfg, sleeper.clone(), clock.clone()).unwrap();
    Setup {
        server,
        chat,
        sleeper,
        clock,
    }
}

fn request() -> ChatRequest {
    ChatRequest {
        messages: vec![
            ChatMessage::system("Extract facts."),
            ChatMessage::user("I moved to Lisbon."),
        ],
        schema: Some(
            JsonSchema::new(
                "facts",
                r#"{"type": "object", "properties": {"facts": {"type": "array", "items": {"type": "string"}}},
                    "required": ["facts"], "additionalProperties": false}"#,
            )
            .unwrap(),
        ),
        temperature: 0.0,
        max_tokens: Some(500),
    }
}

#[tokio::test]
async fn structured_output_is_requested_and_usage_counted() {
    let s = setup(|_| {}).await;
    s.server
        .push([Reply::chat_json(json!({"facts": ["Lives in Lisbon"]}))]);
    let answer = chat_json(&s.chat, request()).await.unwrap();
    assert_eq!(answer.value, json!({"facts": ["Lives in Lisbon"]}));
    assert_eq!(
        (answer.usage.prompt_tokens, answer.usage.completion_tokens),
        (100, 20)
    );
    assert!(!answer.repaired);
    let sent = &s.server.received()[0];
    assert_eq!(sent["model"], "test-model");
    assert_eq!(sent["response_format"]["type"], "json_schema");
    assert_eq!(sent["response_format"]["json_schema"]["name"], "facts");
    assert_eq!(sent["messages"][1]["content"], "I moved to Lisbon.");
    assert_eq!(s.chat.state(), LlmState::Closed);
}

#[tokio::test]
async fn sloppy_json_is_parsed_and_malformed_json_repaired_once() {
    let s = setup(|_| {}).await;
    s.server.push([Reply::chat(
        "<think>hmm {}</think>\n```json\n{\"facts\": [\"A\"]}\n```",
    )]);
    let a = chat_json(&s.chat, request()).await.unwrap();
    assert_eq!((a.value, a.repaired), (json!({"facts": ["A"]}), false));

    s.server.push([
        Reply::chat("{\"facts\": [\"B\""),
        Reply::chat("{\"facts\": [\"B\"]}"),
    ]);
    let a = chat_json(&s.chat, request()).await.unwrap();
    assert_eq!((a.value, a.repaired), (json!({"facts": ["B"]}), true));
    assert_eq!(a.usage.prompt_tokens, 200, "both calls are counted");
    let repair = &s.server.received()[2];
    let msgs = repair["messages"].as_array().unwrap();
    assert_eq!(msgs[msgs.len() - 2]["content"], "{\"facts\": [\"B\"");
    assert!(
        msgs[msgs.len() - 1]["content"]
            .as_str()
            .unwrap()
            .contains("not valid JSON")
    );

    s.server
        .push([Reply::chat("I'd rather not."), Reply::chat("Still no.")]);
    let e = chat_json(&s.chat, request()).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::LlmFailure);
    assert!(e.message.contains("Still no."), "{}", e.message);
}

#[tokio::test]
async fn retry_after_is_honoured_on_429_and_503() {
    let s = setup(|_| {}).await;
    s.server.push([
        Reply::error(429, "slow down").header("retry-after", "7"),
        Reply::error(503, "busy").header("retry-after", "2"),
        Reply::chat_json(json!({"facts": []})),
    ]);
    chat_json(&s.chat, request()).await.unwrap();
    assert_eq!(
        s.sleeper.waits(),
        vec![Duration::from_secs(7), Duration::from_secs(2)]
    );
    assert_eq!(s.server.received_count(), 3);
}

#[tokio::test]
async fn server_errors_back_off_then_the_circuit_opens_and_recovers() {
    let s = setup(|c| c.backoff_base = Duration::from_millis(100)).await;
    // Three 500s exhaust one call (1 + 2 retries) with growing, jittered waits.
    s.server.push((0..3).map(|_| Reply::error(500, "boom")));
    let e = s.chat.chat(request()).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::LlmUnavailable);
    assert!(e.message.contains("500"), "{}", e.message);
    let waits = s.sleeper.waits();
    assert_eq!(waits.len(), 2);
    assert!(
        waits[0] <= Duration::from_millis(100) && waits[1] <= Duration::from_millis(200),
        "{waits:?}"
    );
    assert_eq!(
        s.chat.state(),
        LlmState::Closed,
        "one failed call is not enough"
    );

    // A second failed call opens the circuit (threshold 2)…
    s.server
        .push((0..3).map(|_| Reply::error(502, "bad gateway")));
    s.chat.chat(request()).await.unwrap_err();
    assert_eq!(s.chat.state(), LlmState::Open);
    // …and calls fail fast without reaching the provider.
    let before = s.server.received_count();
    let e = s.chat.chat(request()).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::LlmUnavailable);
    assert!(e.message.contains("circuit is open"), "{}", e.message);
    assert_eq!(s.server.received_count(), before);

    // After the cool-down one probe goes through; it succeeds, the circuit closes.
    s.clock.advance(Duration::from_secs(31));
    assert_eq!(s.chat.state(), LlmState::HalfOpen);
    s.server.push([Reply::chat_json(json!({"facts": []}))]);
    s.chat.chat(request()).await.unwrap();
    assert_eq!(s.chat.state(), LlmState::Closed);
}

#[tokio::test]
async fn a_failed_probe_reopens_the_circuit() {
    let s = setup(|c| c.max_retries = 0).await;
    s.server.push((0..2).map(|_| Reply::error(500, "down")));
    for _ in 0..2 {
        s.chat.chat(request()).await.unwrap_err();
    }
    assert_eq!(s.chat.state(), LlmState::Open);
    s.clock.advance(Duration::from_secs(31));
    s.server.push([Reply::error(500, "still down")]);
    s.chat.chat(request()).await.unwrap_err();
    assert_eq!(s.chat.state(), LlmState::Open);
}

#[tokio::test]
async fn timeouts_are_retried() {
    let s = setup(|c| c.timeout = Duration::from_secs(1)).await;
    s.server.push([
        // Far past the timeout (the server task ends with the test).
        Reply::chat_json(json!({"facts": ["late"]})).after(Duration::from_secs(60)),
        Reply::chat_json(json!({"facts": ["on time"]})),
    ]);
    let a = chat_json(&s.chat, request()).await.unwrap();
    assert_eq!(a.value, json!({"facts": ["on time"]}));
    assert_eq!(s.sleeper.waits().len(), 1);
}

#[tokio::test]
async fn client_errors_are_not_retried() {
    let s = setup(|_| {}).await;
    s.server.push([Reply::error(401, "bad key")]);
    let e = s.chat.chat(request()).await.unwrap_err();
    assert_eq!(e.code, ErrorCode::LlmFailure);
    assert!(e.message.contains("401"), "{}", e.message);
    assert!(e.message.contains("type scripted"), "{}", e.message);
    assert_eq!(s.server.received_count(), 1);
    assert_eq!(s.chat.state(), LlmState::Closed, "the provider answered");
}

/// A provider's error text can quote the prompt (the user's words), and the
/// error is logged and kept as a job's `last_error`, out of erasure's
/// reach: only the status and the error's type and code are kept.
#[tokio::test]
async fn provider_error_text_is_never_kept() {
    let s = setup(|c| c.max_retries = 0).await;
    let quoted = "Invalid prompt: 'my HIV test came back positive' violates policy";
    s.server.push([Reply::error(400, quoted)]);
    let e = s.chat.chat(request()).await.unwrap_err();
    assert!(!e.message.contains("HIV"), "{}", e.message);
    assert!(
        e.message.contains("400") && e.message.contains("type scripted"),
        "{}",
        e.message
    );
    s.server
        .push([Reply::json(500, json!({"detail": "echo: my HIV test"}))]);
    let e = s.chat.chat(request()).await.unwrap_err();
    assert!(!e.message.contains("HIV"), "{}", e.message);
    s.server.push([Reply::json(
        429,
        json!({"error": {"type": "a b c my HIV test", "code": "rate_limit_exceeded"}}),
    )]);
    let e = s.chat.chat(request()).await.unwrap_err();
    assert!(!e.message.contains("HIV"), "{}", e.message);
    assert!(
        e.message.contains("code rate_limit_exceeded"),
        "{}",
        e.message
    );
}

#[tokio::test]
async fn providers_without_json_schema_get_the_schema_in_the_prompt() {
    let s = setup(|_| {}).await;
    s.server.push([
        Reply::error(
            400,
            "response_format json_schema is not supported by this model",
        ),
        Reply::chat("{\"facts\": [\"C\"]}"),
        Reply::chat("{\"facts\": [\"D\"]}"),
    ]);
    let a = chat_json(&s.chat, request()).await.unwrap();
    assert_eq!(a.value, json!({"facts": ["C"]}));
    let got = s.server.received();
    assert!(got[1].get("response_format").is_none());
    assert!(
        got[1]["messages"][0]["content"]
            .as_str()
            .unwrap()
            .contains("JSON Schema")
    );
    // Remembered: the next call does not try json_schema again.
    chat_json(&s.chat, request()).await.unwrap();
    assert!(s.server.received()[2].get("response_format").is_none());
}

#[tokio::test]
async fn embeddings_learn_the_dimension_and_refuse_a_change() {
    let server = ScriptedLlm::start().await;
    server.push([Reply::embeddings(&[vec![3.0, 4.0, 0.0]])]);
    let cfg = ClientConfig::new(server.url(), "embed-model");
    let clock = ManualClock::new(jiff::Timestamp::UNIX_EPOCH);
    let e = OpenAiEmbedder::connect(cfg, Arc::new(RecordingSleeper::default()), clock)
        .await
        .unwrap();
    assert_eq!(
        (e.model().id.as_str(), e.model().dim),
        ("openai:embed-model", 3)
    );
    server.push([Reply::embeddings(&[
        vec![0.0, 2.0, 0.0],
        vec![1.0, 0.0, 0.0],
    ])]);
    let v = e.embed(&["a".into(), "b".into()]).await.unwrap();
    assert_eq!(
        v,
        vec![vec![0.0, 1.0, 0.0], vec![1.0, 0.0, 0.0]],
        "unit length, in order"
    );
    assert_eq!(server.received()[1]["input"], json!(["a", "b"]));
    server.push([Reply::embeddings(&[vec![1.0, 0.0]])]);
    let err = e.embed(&["c".into()]).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::EmbeddingModelMismatch);
}

/// The schema travels as written: a grammar-constrained decoder emits
/// properties in the schema's order, so `text` must stay before `entities`.
#[tokio::test]
async fn the_schema_keeps_its_property_order_on_the_wire() {
    let s = setup(|_| {}).await;
    s.server.push([Reply::chat_json(json!({"facts": []}))]);
    let mut req = request();
    req.schema = Some(
        JsonSchema::new(
            "facts",
            r#"{"type": "object", "properties": {"text": {"type": "string"}, "entities": {"type": "array"}, "kind": {"type": "string"}}}"#,
        )
        .unwrap(),
    );
    s.chat.chat(req).await.unwrap();
    let raw = &s.server.received_raw()[0];
    let at = |k: &str| {
        raw.find(&format!("\"{k}\":"))
            .unwrap_or_else(|| panic!("{k} in {raw}"))
    };
    assert!(
        at("text") < at("entities") && at("entities") < at("kind"),
        "{raw}"
    );
    assert!(JsonSchema::new("bad", "{not json").is_err());
}

/// `finish_reason: "length"` is reported as a cut-off answer, and
/// `chat_json` hands back what could be salvaged instead of a repair round.
#[tokio::test]
async fn a_cut_off_answer_is_reported_not_repaired() {
    let s = setup(|_| {}).await;
    s.server.push([Reply::truncated(
        r#"{"facts": ["Lives in Lisbon", "Lives in Lis"#,
    )]);
    let answer = chat_json(&s.chat, request()).await.unwrap();
    assert!(answer.truncated);
    assert_eq!(s.server.received_count(), 1, "no repair round");
    s.server.push([Reply::chat_json(json!({"facts": []}))]);
    let plain = s.chat.chat(request()).await.unwrap();
    assert!(!plain.truncated);
}

/// At most `concurrency` calls reach the provider at once; the rest wait
/// their turn (and the queue says so).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_towards_the_provider_is_bounded() {
    let s = setup(|c| c.concurrency = 1).await;
    s.server.respond_with(|_, _| {
        Reply::chat_json(json!({"facts": []})).after(Duration::from_millis(200))
    });
    let chat = Arc::new(s.chat);
    let calls: Vec<_> = (0..3)
        .map(|_| {
            let chat = chat.clone();
            tokio::spawn(async move { chat.chat(request()).await.unwrap() })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let q = chat.queue().unwrap();
    assert_eq!((q.in_flight, q.waiting, q.limit), (1, 2, 1), "{q:?}");
    assert_eq!(s.server.received_count(), 1, "one call at the provider");
    for c in calls {
        c.await.unwrap();
    }
    assert_eq!(s.server.received_count(), 3);
    let q = chat.queue().unwrap();
    assert_eq!((q.in_flight, q.waiting), (0, 0));
}
