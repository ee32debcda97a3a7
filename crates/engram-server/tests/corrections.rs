//! Corrections without an LLM (issue 16, part 1): a near-duplicate that
//! changes a number, date, name or negation is a new version of the memory
//! it corrects, with a history reason naming the change; search returns the
//! new text and `as_of` the old one. Exact and true near-duplicates stay
//! `NOOP`; a near-duplicate saying something else is its own memory.
//! Runs on SQLite, and on Postgres with `ENGRAM_TEST_STORE=postgres`.

use std::sync::Arc;
use std::time::Duration;

use engram_core::config::{IngestConfig, RetrievalConfig};
use engram_core::ctx::RequestCtx;
use engram_core::filter::Filter;
use engram_core::memory::{Event, Scope};
use engram_core::service::{AddInput, AddResult, Content, MemoryService, SearchInput};
use engram_testkit::ManualClock;
use jiff::Timestamp;

mod common;

struct Setup {
    memory: MemoryService,
    clock: Arc<ManualClock>,
    _store: common::Opened,
    _dir: tempfile::TempDir,
}

async fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = common::open(dir.path()).await;
    let clock = ManualClock::new(Timestamp::from_second(1_800_000_000).unwrap());
    let memory = MemoryService::new(
        store.store.clone(),
        common::embedder(),
        RetrievalConfig::default(),
        IngestConfig::default(),
        100,
        clock.clone(),
    )
    .await
    .unwrap();
    Setup {
        memory,
        clock,
        _store: store,
        _dir: dir,
    }
}

fn ctx() -> RequestCtx {
    RequestCtx::operator("test")
}

fn user(id: &str) -> Scope {
    Scope {
        user_id: Some(id.into()),
        ..Default::default()
    }
}

impl Setup {
    async fn add(&self, text: &str, scope: &Scope) -> AddResult {
        self.clock.advance(Duration::from_secs(60));
        let mut r = self
            .memory
            .add(
                &ctx(),
                AddInput::new(Content::Text(text.into()), scope.clone()),
            )
            .await
            .unwrap();
        assert_eq!(r.len(), 1, "{r:?}");
        r.remove(0)
    }

    fn query(&self, q: &str, scope: &Scope) -> SearchInput {
        SearchInput {
            query: q.into(),
            filter: Filter::from_scope(scope),
            top_k: Some(5),
            threshold: None,
            token_budget: Some(0),
            explain: false,
        }
    }

    async fn first(&self, q: &str, scope: &Scope) -> String {
        let out = self
            .memory
            .search(&ctx(), self.query(q, scope))
            .await
            .unwrap();
        out.hits[0].memory.text.clone()
    }

    async fn first_as_of(&self, q: &str, scope: &Scope, at: Timestamp) -> String {
        let out = self
            .memory
            .search_as_of(&ctx(), self.query(q, scope), at)
            .await
            .unwrap();
        out.hits[0].memory.text.clone()
    }

    async fn count(&self, scope: &Scope) -> usize {
        self.memory
            .list(&ctx(), &Filter::from_scope(scope), None, 100)
            .await
            .unwrap()
            .memories
            .len()
    }
}

/// The issue's repro: the second birthday supersedes the first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_date_supersedes_the_memory_it_corrects() {
    let s = setup().await;
    let u = user("u1");
    let first = s.add("My birthday is on July 11.", &u).await;
    assert_eq!(first.event, Event::Add);
    let before = engram_core::clock::Clock::now(s.clock.as_ref());

    let second = s.add("My birthday is on July 12.", &u).await;
    assert_eq!(second.event, Event::Update, "{second:?}");
    assert_eq!(second.id, first.id, "a new version of the same memory");
    assert_eq!(s.count(&u).await, 1);
    assert_eq!(
        s.first("when is my birthday", &u).await,
        "My birthday is on July 12."
    );
    assert_eq!(
        s.first_as_of("when is my birthday", &u, before).await,
        "My birthday is on July 11.",
        "as_of before the correction answers with the old text"
    );

    let history = s.memory.history(&ctx(), first.id).await.unwrap();
    assert_eq!(history.len(), 2, "{history:?}");
    let update = &history[1];
    assert_eq!(update.event, Event::Update);
    assert_eq!(
        update.old_text.as_deref(),
        Some("My birthday is on July 11.")
    );
    assert_eq!(
        update.new_text.as_deref(),
        Some("My birthday is on July 12.")
    );
    assert_eq!(
        update.reason.as_deref(),
        Some(r#"corrected without an LLM: "11" → "12""#)
    );

    // Saying it again, or with other punctuation and case, changes nothing.
    for again in ["My birthday is on July 12.", "my birthday is on july 12"] {
        let r = s.add(again, &u).await;
        assert_eq!((r.event, r.id), (Event::Noop, first.id), "{again}");
    }
    assert_eq!(s.memory.history(&ctx(), first.id).await.unwrap().len(), 2);
}

/// Names and negations are corrections too; another user's memory is never
/// touched; a near-duplicate with another ordinary word is its own memory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_and_negations_correct_and_other_changes_add() {
    let s = setup().await;
    let (ann, bob) = (user("ann"), user("bob"));
    let job = s.add("I work at Google in Zurich.", &ann).await;
    let other = s.add("I work at Google in Zurich.", &bob).await;
    assert_eq!(other.event, Event::Add, "another scope is not a duplicate");

    let moved = s.add("I work at Microsoft in Zurich.", &ann).await;
    assert_eq!((moved.event, moved.id), (Event::Update, job.id));
    let reason = s.memory.history(&ctx(), job.id).await.unwrap()[1]
        .reason
        .clone();
    assert_eq!(
        reason.as_deref(),
        Some(r#"corrected without an LLM: "Google" → "Microsoft""#)
    );
    assert_eq!(
        s.first("where do I work", &bob).await,
        "I work at Google in Zurich.",
        "bob's memory is untouched"
    );

    let meat = s.add("I eat meat.", &ann).await;
    let veg = s.add("I don't eat meat.", &ann).await;
    assert_eq!((veg.event, veg.id), (Event::Update, meat.id));
    assert_eq!(s.first("do I eat meat", &ann).await, "I don't eat meat.");

    let tea = s.add("I love green tea.", &ann).await;
    let hate = s.add("I hate green tea.", &ann).await;
    assert_eq!(hate.event, Event::Add, "{hate:?}");
    assert_ne!(hate.id, tea.id);
    let same = s.add("I really love green tea!", &ann).await;
    assert_eq!((same.event, same.id), (Event::Noop, tea.id));
}

/// Concurrent corrections of one memory: each add decides against the
/// version it saw; when another add replaced it first, the add decides
/// again instead of failing its caller with a conflict (the mixed-load
/// bench saw 75 such 409s in 9,098 adds before).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_corrections_of_one_memory_all_succeed() {
    let s = Arc::new(setup().await);
    let u = user("racer");
    let first = s.add("The flight to Oslo leaves at 11.", &u).await;
    assert_eq!(first.event, Event::Add);
    let tasks: Vec<_> = (12..24)
        .map(|hour| {
            let (s, u) = (s.clone(), u.clone());
            tokio::spawn(async move {
                s.memory
                    .add(
                        &ctx(),
                        AddInput::new(
                            Content::Text(format!("The flight to Oslo leaves at {hour}.")),
                            u,
                        ),
                    )
                    .await
            })
        })
        .collect();
    for t in tasks {
        let results = t.await.unwrap().expect("no add fails with a conflict");
        assert_eq!(results.len(), 1);
        assert_eq!(results[0].id, first.id, "{results:?}");
    }
    assert_eq!(s.count(&u).await, 1, "one memory, many versions");
    let history = s.memory.history(&ctx(), first.id).await.unwrap();
    assert!(history.len() >= 2, "{history:?}");
}
