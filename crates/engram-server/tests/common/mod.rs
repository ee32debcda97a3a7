//! Setup shared by the server's integration tests: a real SQLite store in a
//! directory of the test's, and the real embedding model (loaded once per
//! test binary).

use std::path::Path;
use std::sync::{Arc, OnceLock};

use engram_core::config::{IngestConfig, RetrievalConfig};
use engram_core::service::{MemoryService, SystemClock};
use engram_embed::BertEmbedder;
use engram_sqlite::{SqliteOptions, SqliteStore};

pub fn embedder() -> Arc<BertEmbedder> {
    static MODEL: OnceLock<Arc<BertEmbedder>> = OnceLock::new();
    MODEL
        .get_or_init(|| {
            Arc::new(
                BertEmbedder::load(&engram_embed::default_model_dir())
                    .unwrap_or_else(|e| panic!("{e}")),
            )
        })
        .clone()
}

/// A store in `dir` and the memory service over it, with default settings.
pub async fn open(dir: &Path) -> (SqliteStore, MemoryService) {
    let store = SqliteStore::open_async(dir.to_owned(), SqliteOptions::default())
        .await
        .unwrap();
    let memory = MemoryService::new(
        Arc::new(store.clone()),
        embedder(),
        RetrievalConfig::default(),
        IngestConfig::default(),
        1000,
        Arc::new(SystemClock),
    )
    .await
    .unwrap();
    (store, memory)
}
