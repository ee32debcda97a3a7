//! The store conformance suite against Postgres + pgvector, on both vector
//! paths, plus Postgres-specific behaviour. Needs the throwaway server from
//! `scripts/pg run` (`make test` provides it).

use std::sync::Arc;

use engram_postgres::{PgOptions, PgStore};
use engram_store_tests::Fixture;

async fn fixture_with(options: PgOptions) -> Fixture {
    let url = engram_testkit::pg::fresh_database().await;
    let store = PgStore::connect(&url, options).await.expect("connect");
    Fixture {
        store: Arc::new(store),
        guard: Box::new(url),
    }
}

async fn postgres() -> Fixture {
    fixture_with(PgOptions::default()).await
}

/// The same suite with every vector search sent through the HNSW index.
async fn postgres_hnsw() -> Fixture {
    fixture_with(PgOptions {
        exact_threshold: 0,
        ..Default::default()
    })
    .await
}

engram_store_tests::store_suite!(postgres);

mod hnsw_path {
    engram_store_tests::store_suite!(super::postgres_hnsw);
}
