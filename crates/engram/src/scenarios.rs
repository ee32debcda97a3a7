//! `engram eval scenarios`: conversations replayed through the real memory
//! service, then checks of what it remembers (docs/scenarios.md has the
//! format). Three modes answer three questions:
//!
//! - no LLM (the default): the verbatim path, the floor a user gets with no model;
//! - `--replay`: each scenario's recorded model answers, deterministically
//!   (`make test` requires every check to pass) — a test of the pipeline,
//!   its prompts' contract and the service, not of a model;
//! - `--llm-base-url …`: a live model, to answer "which model should I run?".

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{Context, bail};
use async_trait::async_trait;
use engram_core::clock::Clock;
use engram_core::config::{IngestConfig, RetrievalConfig};
use engram_core::ctx::RequestCtx;
use engram_core::filter::Filter;
use engram_core::memory::{MemoryId, Scope};
use engram_core::pipeline::Pipeline;
use engram_core::ports::{ChatRequest, ChatResponse, Llm, LlmState, Usage};
use engram_core::service::{
    AddInput, Content, JobConfig, JobQueue, MemoryService, Message, SearchInput,
};
use engram_core::{Error, ErrorCode};
use engram_sqlite::{SqliteOptions, SqliteStore};
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::runtime::{LlmArgs, load_embedder};

#[derive(clap::Args, Debug)]
pub struct ScenarioArgs {
    /// A scenario file, or a directory of them (`*.json`).
    #[arg(default_value = "eval/scenarios")]
    pub path: PathBuf,
    /// Replay the answers each scenario recorded instead of calling a model.
    #[arg(long, conflicts_with = "llm_base_url")]
    pub replay: bool,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
    /// Fail (exit 1) when the accuracy is below this (0–1).
    #[arg(long)]
    pub min_accuracy: Option<f64>,
    /// Sentence-transformers model directory.
    #[arg(long, env = "ENGRAM_MODEL_DIR")]
    pub model_dir: Option<PathBuf>,
    #[command(flatten)]
    pub llm: LlmArgs,
}

/// One scenario file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub name: String,
    pub family: String,
    #[serde(default)]
    pub description: String,
    pub sessions: Vec<Session>,
    pub checks: Vec<Check>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Session {
    pub date: Timestamp,
    #[serde(default)]
    pub user_id: Option<String>,
    #[serde(default)]
    pub agent_id: Option<String>,
    #[serde(default)]
    pub run_id: Option<String>,
    pub messages: Vec<Message>,
    /// A model's answers to this session's calls, in order (for `--replay`).
    #[serde(default)]
    pub recorded: Vec<Value>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Check {
    /// Some current memory contains `text`.
    Contains {
        text: String,
        #[serde(flatten)]
        scope: CheckScope,
    },
    /// No current memory contains `text`.
    NotContains {
        text: String,
        #[serde(flatten)]
        scope: CheckScope,
    },
    /// A search's top hit contains `expect`.
    SearchFirst {
        query: String,
        expect: String,
        #[serde(flatten)]
        scope: CheckScope,
    },
    /// A search as of `at`: its top hit contains `expect`.
    AsOf {
        at: Timestamp,
        query: String,
        expect: String,
        #[serde(flatten)]
        scope: CheckScope,
    },
    /// The one memory whose latest text contains `memory` has these history events.
    History {
        memory: String,
        events: Vec<String>,
        #[serde(flatten)]
        scope: CheckScope,
    },
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CheckScope {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<String>,
}

/// The service's clock, set to each session's date.
struct ScenarioClock(Mutex<Timestamp>);

impl ScenarioClock {
    fn set(&self, t: Timestamp) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = t;
    }
}

impl Clock for ScenarioClock {
    fn now(&self) -> Timestamp {
        *self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Answers calls from a session's recorded answers, in order. A recorded
/// consolidation names its target by the memory's text; the alias the
/// request showed for that text is put in its place.
struct ReplayLlm {
    answers: Mutex<VecDeque<Value>>,
}

impl ReplayLlm {
    fn load(&self, answers: &[Value]) {
        *self.answers.lock().unwrap_or_else(|e| e.into_inner()) = answers.iter().cloned().collect();
    }

    fn left(&self) -> usize {
        self.answers.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

/// `target` texts → the aliases the consolidation request showed.
fn resolve_targets(mut answer: Value, request: &ChatRequest) -> Value {
    let shown: Vec<(String, String)> = request
        .messages
        .last()
        .and_then(|m| serde_json::from_str::<Value>(&m.content).ok())
        .and_then(|v| v["existing"].as_array().cloned())
        .unwrap_or_default()
        .iter()
        .filter_map(|e| Some((e["id"].as_str()?.to_owned(), e["text"].as_str()?.to_owned())))
        .collect();
    if let Some(ops) = answer["operations"].as_array_mut() {
        for op in ops {
            let Some(target) = op["target"].as_str().map(str::to_owned) else {
                continue;
            };
            let alias = shown
                .iter()
                .find(|(_, t)| *t == target)
                .or_else(|| shown.iter().find(|(_, t)| t.contains(&target)));
            if let Some((alias, _)) = alias {
                op["target"] = json!(alias);
            }
        }
    }
    answer
}

#[async_trait]
impl Llm for ReplayLlm {
    fn model(&self) -> &str {
        "replay"
    }

    async fn chat(&self, request: ChatRequest) -> engram_core::Result<ChatResponse> {
        let next = self
            .answers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop_front();
        let Some(answer) = next else {
            return Err(Error::new(
                ErrorCode::LlmFailure,
                "the scenario recorded no answer for this call",
            ));
        };
        let answer = match request.schema.as_ref().map(|s| s.name()) {
            Some("operations") => resolve_targets(answer, &request),
            _ => answer,
        };
        Ok(ChatResponse {
            content: answer.to_string(),
            usage: Usage::default(),
            truncated: false,
        })
    }

    fn state(&self) -> LlmState {
        LlmState::Closed
    }
}

#[derive(Debug, Clone, Serialize)]
struct CheckResult {
    #[serde(flatten)]
    check: Check,
    passed: bool,
    /// What was found, when it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
struct ScenarioResult {
    name: String,
    family: String,
    description: String,
    seconds: f64,
    checks: usize,
    passed: usize,
    /// Adds that failed (the checks still ran).
    errors: Vec<String>,
    results: Vec<CheckResult>,
}

#[derive(Debug, Clone, Default, Serialize)]
struct FamilyResult {
    scenarios: usize,
    checks: usize,
    passed: usize,
    accuracy: f64,
    seconds: f64,
}

fn load(path: &Path) -> anyhow::Result<Vec<Scenario>> {
    let files: Vec<PathBuf> = if path.is_dir() {
        let mut files: Vec<PathBuf> = std::fs::read_dir(path)
            .with_context(|| format!("cannot read {}", path.display()))?
            .map_while(std::io::Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .collect();
        files.sort();
        files
    } else {
        vec![path.to_owned()]
    };
    let mut out = Vec::new();
    for f in files {
        let text =
            std::fs::read_to_string(&f).with_context(|| format!("cannot read {}", f.display()))?;
        let s: Scenario = serde_json::from_str(&text)
            .with_context(|| format!("{} is not a scenario", f.display()))?;
        if s.sessions.is_empty() || s.checks.is_empty() {
            bail!("{}: a scenario needs sessions and checks", f.display());
        }
        out.push(s);
    }
    if out.is_empty() {
        bail!("no scenarios in {}", path.display());
    }
    Ok(out)
}

struct Runner {
    memory: MemoryService,
    queue: JobQueue,
    clock: Arc<ScenarioClock>,
    replay: Option<Arc<ReplayLlm>>,
}

fn lower(s: &str) -> String {
    s.to_lowercase()
}

impl Runner {
    fn scope(&self, s: &Scenario, user: Option<&str>, agent: Option<&str>) -> Scope {
        Scope {
            org_id: Some(s.name.clone()),
            user_id: Some(user.unwrap_or("u1").to_owned()),
            agent_id: agent.map(str::to_owned),
            ..Default::default()
        }
    }

    async fn run(&self, s: &Scenario) -> ScenarioResult {
        let started = Instant::now();
        let ctx = RequestCtx::operator("eval");
        let mut errors = Vec::new();
        let mut ids: Vec<MemoryId> = Vec::new();
        for (i, session) in s.sessions.iter().enumerate() {
            self.clock.set(session.date);
            if let Some(r) = &self.replay {
                r.load(&session.recorded);
            }
            let mut scope = self.scope(s, session.user_id.as_deref(), session.agent_id.as_deref());
            scope.run_id = session.run_id.clone();
            let mut input = AddInput::new(Content::Messages(session.messages.clone()), scope);
            input.timestamp = Some(session.date);
            match self.queue.add_now(&ctx, input, None).await {
                Ok(results) => ids.extend(results.iter().map(|r| r.id)),
                Err(e) => errors.push(format!("session {}: {}: {}", i + 1, e.code, e.message)),
            }
            if let Some(r) = &self.replay
                && r.left() > 0
            {
                errors.push(format!(
                    "session {}: {} recorded answers were not asked for",
                    i + 1,
                    r.left()
                ));
            }
        }
        let last = s.sessions.iter().map(|x| x.date).max().unwrap_or_default();
        self.clock.set(last + jiff::SignedDuration::from_mins(1));
        let mut results = Vec::new();
        for check in &s.checks {
            let (passed, detail) = match self.check(s, check, &ids).await {
                Ok(None) => (true, None),
                Ok(Some(why)) => (false, Some(why)),
                Err(e) => (false, Some(format!("{}: {}", e.code, e.message))),
            };
            results.push(CheckResult {
                check: check.clone(),
                passed,
                detail,
            });
        }
        let passed = results.iter().filter(|r| r.passed).count();
        ScenarioResult {
            name: s.name.clone(),
            family: s.family.clone(),
            description: s.description.clone(),
            seconds: started.elapsed().as_secs_f64(),
            checks: results.len(),
            passed,
            errors,
            results,
        }
    }

    async fn current(&self, scope: &Scope) -> engram_core::Result<Vec<String>> {
        let ctx = RequestCtx::operator("eval");
        let page = self
            .memory
            .list(&ctx, &Filter::from_scope(scope), None, 100)
            .await?;
        Ok(page.memories.into_iter().map(|m| m.text).collect())
    }

    async fn top(
        &self,
        scope: &Scope,
        query: &str,
        at: Option<Timestamp>,
    ) -> engram_core::Result<Option<String>> {
        let ctx = RequestCtx::operator("eval");
        let input = SearchInput {
            query: query.to_owned(),
            filter: Filter::from_scope(scope),
            top_k: Some(5),
            threshold: None,
            token_budget: Some(0),
            explain: false,
        };
        let out = match at {
            Some(at) => self.memory.search_as_of(&ctx, input, at).await?,
            None => self.memory.search(&ctx, input).await?,
        };
        Ok(out.hits.into_iter().next().map(|h| h.memory.text))
    }

    /// `None` when the check passes, else what was found.
    async fn check(
        &self,
        s: &Scenario,
        check: &Check,
        ids: &[MemoryId],
    ) -> engram_core::Result<Option<String>> {
        let scope_of = |c: &CheckScope| self.scope(s, c.user_id.as_deref(), c.agent_id.as_deref());
        Ok(match check {
            Check::Contains { text, scope } => {
                let all = self.current(&scope_of(scope)).await?;
                (!all.iter().any(|m| lower(m).contains(&lower(text))))
                    .then(|| format!("no current memory contains it; they are {all:?}"))
            }
            Check::NotContains { text, scope } => {
                let all = self.current(&scope_of(scope)).await?;
                all.iter()
                    .find(|m| lower(m).contains(&lower(text)))
                    .map(|m| format!("{m:?} contains it"))
            }
            Check::SearchFirst {
                query,
                expect,
                scope,
            } => match self.top(&scope_of(scope), query, None).await? {
                Some(t) if lower(&t).contains(&lower(expect)) => None,
                other => Some(format!("the top hit is {other:?}")),
            },
            Check::AsOf {
                at,
                query,
                expect,
                scope,
            } => match self.top(&scope_of(scope), query, Some(*at)).await? {
                Some(t) if lower(&t).contains(&lower(expect)) => None,
                other => Some(format!("the top hit as of {at} is {other:?}")),
            },
            Check::History {
                memory,
                events,
                scope,
            } => {
                let ctx = RequestCtx::operator("eval");
                let want_scope = scope_of(scope);
                let mut seen = Vec::new();
                let mut matches = Vec::new();
                for id in ids {
                    if seen.contains(id) || id.is_nil() {
                        continue;
                    }
                    seen.push(*id);
                    let Ok(history) = self.memory.history(&ctx, *id).await else {
                        continue;
                    };
                    let Some(last) = history.last() else { continue };
                    if last.scope.user_id != want_scope.user_id
                        || last.scope.agent_id != want_scope.agent_id
                    {
                        continue;
                    }
                    let text = last.new_text.as_ref().or(last.old_text.as_ref());
                    if text.is_some_and(|t| lower(t).contains(&lower(memory))) {
                        matches.push(
                            history
                                .iter()
                                .map(|h| h.event.as_str().to_owned())
                                .collect::<Vec<_>>(),
                        );
                    }
                }
                match matches.as_slice() {
                    [one] if one == events => None,
                    [one] => Some(format!("its history is {one:?}")),
                    [] => Some("no memory's latest text contains it".into()),
                    many => Some(format!("{} memories contain it: {many:?}", many.len())),
                }
            }
        })
    }
}

fn round(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

pub async fn run(args: ScenarioArgs) -> anyhow::Result<()> {
    let scenarios = load(&args.path)?;
    let dir = tempfile::tempdir()?;
    let model_dir = args
        .model_dir
        .clone()
        .unwrap_or_else(engram_embed::default_model_dir);
    let embedder = load_embedder(model_dir).await?;
    let store = SqliteStore::open_async(dir.path().to_owned(), SqliteOptions::default()).await?;
    let clock = Arc::new(ScenarioClock(Mutex::new(Timestamp::UNIX_EPOCH)));
    let memory = MemoryService::new(
        Arc::new(store),
        embedder,
        RetrievalConfig::default(),
        IngestConfig::default(),
        1000,
        clock.clone(),
    )
    .await?;
    let (mode, model, pipeline, replay) = if args.replay {
        let replay = Arc::new(ReplayLlm {
            answers: Mutex::new(VecDeque::new()),
        });
        let pipeline = Pipeline::new(memory.clone(), replay.clone());
        ("replay", "replay".to_owned(), Some(pipeline), Some(replay))
    } else {
        match args.llm.pipeline(&memory)? {
            Some(p) => ("llm", args.llm.llm_model.clone(), Some(p), None),
            None => ("no-llm", "none".to_owned(), None, None),
        }
    };
    let queue = JobQueue::new(memory.clone(), JobConfig::default(), pipeline);
    let runner = Runner {
        memory,
        queue,
        clock,
        replay,
    };
    let started = Instant::now();
    let mut results = Vec::new();
    for s in &scenarios {
        let r = runner.run(s).await;
        if !args.json {
            eprintln!(
                "{:<32} {:>2}/{:<2} {:>6.1}s{}",
                r.name,
                r.passed,
                r.checks,
                r.seconds,
                if r.errors.is_empty() {
                    ""
                } else {
                    "  (errors)"
                }
            );
        }
        results.push(r);
    }
    let mut by_family: BTreeMap<String, FamilyResult> = BTreeMap::new();
    for r in &results {
        let f = by_family.entry(r.family.clone()).or_default();
        f.scenarios += 1;
        f.checks += r.checks;
        f.passed += r.passed;
        f.seconds += r.seconds;
    }
    for f in by_family.values_mut() {
        f.accuracy = round(f.passed as f64 / f.checks.max(1) as f64);
        f.seconds = round(f.seconds);
    }
    let checks: usize = results.iter().map(|r| r.checks).sum();
    let passed: usize = results.iter().map(|r| r.passed).sum();
    let accuracy = round(passed as f64 / checks.max(1) as f64);
    let seconds = round(started.elapsed().as_secs_f64());
    if args.json {
        println!(
            "{}",
            json!({
                "mode": mode, "model": model, "scenarios": results.len(), "checks": checks,
                "passed": passed, "accuracy": accuracy, "seconds": seconds,
                "by_family": by_family, "results": results,
            })
        );
    } else {
        println!(
            "\nmode {mode}, model {model}: {passed}/{checks} checks passed (accuracy {accuracy:.3}) in {seconds:.1}s\n"
        );
        println!("| family | scenarios | checks | passed | accuracy | seconds |");
        println!("|---|---:|---:|---:|---:|---:|");
        for (name, f) in &by_family {
            println!(
                "| {name} | {} | {} | {} | {:.3} | {:.1} |",
                f.scenarios, f.checks, f.passed, f.accuracy, f.seconds
            );
        }
        for r in &results {
            for e in &r.errors {
                println!("{}: {e}", r.name);
            }
            for c in r.results.iter().filter(|c| !c.passed) {
                println!(
                    "{}: FAILED {} — {}",
                    r.name,
                    serde_json::to_string(&c.check).unwrap_or_default(),
                    c.detail.as_deref().unwrap_or("")
                );
            }
        }
    }
    if let Some(min) = args.min_accuracy
        && accuracy < min
    {
        bail!("accuracy {accuracy:.3} is below --min-accuracy {min}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use engram_core::ports::{ChatMessage, JsonSchema};

    #[test]
    fn recorded_targets_become_the_aliases_shown() {
        let request = ChatRequest {
            messages: vec![
                ChatMessage::system("s"),
                ChatMessage::user(
                    json!({"existing": [{"id": "m1", "text": "Lives in Oslo"},
                                        {"id": "m2", "text": "Works at Initech"}],
                           "new_facts": []})
                    .to_string(),
                ),
            ],
            schema: Some(JsonSchema::new("operations", "{}").unwrap()),
            temperature: 0.0,
            max_tokens: None,
        };
        let answer = json!({"operations": [
            {"fact": "f1", "event": "UPDATE", "target": "Works at Initech"},
            {"fact": "f2", "event": "ADD", "target": null},
            {"fact": "f3", "event": "DELETE", "target": "never shown"}]});
        let out = resolve_targets(answer, &request);
        assert_eq!(out["operations"][0]["target"], "m2");
        assert_eq!(out["operations"][1]["target"], Value::Null);
        assert_eq!(out["operations"][2]["target"], "never shown");
    }

    #[test]
    fn the_shipped_scenarios_parse_and_cover_every_family() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../eval/scenarios");
        let all = load(&dir).unwrap();
        assert!(all.len() >= 20, "{} scenarios", all.len());
        let families: std::collections::BTreeSet<&str> =
            all.iter().map(|s| s.family.as_str()).collect();
        for f in [
            "changing-fact",
            "correction",
            "contradiction",
            "duplicate",
            "preference-flip",
            "injected",
            "assistant-fact",
            "procedural",
            "relative-date",
            "multi-party",
            "non-english",
            "negation",
        ] {
            assert!(families.contains(f), "no scenario of family {f}");
        }
        for s in &all {
            for (i, session) in s.sessions.iter().enumerate() {
                assert!(
                    !session.recorded.is_empty(),
                    "{} session {}: nothing recorded",
                    s.name,
                    i + 1
                );
            }
        }
    }
}
