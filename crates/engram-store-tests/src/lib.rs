//! The store conformance suite.
//!
//! Every case is an `async fn(Fixture)`; [`store_suite!`] expands to one
//! `#[tokio::test]` per case for a backend's fixture factory, the way
//! ripgrep's `rgtest!` runs each test per regex engine:
//!
//! ```ignore
//! engram_store_tests::store_suite!(sqlite_fixture);
//! ```
//!
//! Vectors are small synthetic unit vectors so the suite needs no model.

mod fixture;
mod governance;
mod jobs;
mod memories;
mod reads;
mod reembed;

pub use fixture::{DIM, Fixture, insert, memory, model, user, vector};
pub use governance::*;
pub use jobs::*;
pub use memories::*;
pub use reads::*;
pub use reembed::*;

#[macro_export]
macro_rules! store_suite {
    ($factory:path) => {
        $crate::store_suite!(@cases $factory;
            binds_model_and_refuses_mismatch,
            insert_and_get,
            update_versions_and_reindexes,
            delete_hides_but_keeps_history,
            batches_are_atomic,
            reads_never_cross_scopes,
            list_paginates_newest_first,
            filters_apply_to_reads,
            expired_memories_are_invisible,
            keyword_and_entity_ranking,
            keyword_scores_ignore_other_scopes,
            neighbors_are_adjacent_turns_of_the_same_scope,
            stale_update_is_a_conflict,
            keys_round_trip,
            idempotency_records_expire_and_are_capped,
            job_claims_take_turns_across_orgs,
            writable_probe,
            counts_and_scope_ids,
            jobs_lease_finish_retry_and_dead_letter,
            versions_as_they_stood,
            llm_usage_is_tallied,
            audit_records_writes,
            erasure_removes_every_trace,
            erasure_stays_within_the_binding,
            expiry_moves_and_sweep_removes_everything,
            import_writes_a_memory_once,
            reembed_migrates_then_switches,
        );
    };
    (@cases $factory:path; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                $crate::$case($factory().await).await;
            }
        )*
    };
}

#[cfg(test)]
mod tests {
    /// Every `pub async fn` case of the suite's modules is in
    /// [`store_suite!`]'s list, and the list names nothing else: a case
    /// cannot be written and then forgotten by the backends.
    #[test]
    fn store_suite_lists_every_case() {
        let sources = [
            include_str!("memories.rs"),
            include_str!("reads.rs"),
            include_str!("jobs.rs"),
            include_str!("governance.rs"),
            include_str!("reembed.rs"),
        ];
        let mut cases: Vec<&str> = sources
            .iter()
            .flat_map(|s| s.lines())
            .filter_map(|l| l.strip_prefix("pub async fn "))
            .map(|l| l.split(['(', '<']).next().unwrap_or(l))
            .collect();
        let lib = include_str!("lib.rs");
        let start = lib
            .find("store_suite!(@cases $factory;")
            .expect("the macro's case list");
        let list = &lib[start..];
        let list = &list[list.find(';').expect("`;` after $factory") + 1
            ..list.find(");").expect("end of the list")];
        let mut listed: Vec<&str> = list
            .split(',')
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .collect();
        // A new case module must be read above too.
        let modules: Vec<&str> = lib
            .lines()
            .filter_map(|l| l.strip_prefix("mod "))
            .map(|m| m.trim_end_matches(';'))
            .filter(|m| *m != "fixture" && *m != "tests {")
            .collect();
        assert_eq!(
            modules.len(),
            sources.len(),
            "a case module is missing from this test: {modules:?}"
        );
        cases.sort_unstable();
        listed.sort_unstable();
        assert_eq!(
            cases, listed,
            "store_suite!'s list differs from the cases written"
        );
    }
}
