//! Building the service from configuration.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use engram_core::clock::SystemClock;
use engram_core::config::{
    FusionMethod, HalfLives, IngestConfig, Normalization, RetrievalConfig, SignalWeights,
};
use engram_core::lifecycle::{self, LifecycleConfig, PolicyRules, ScopePolicy};
use engram_core::ports::Store;
use engram_core::ports::{Embedder, KeyStore};
use engram_core::service::MemoryService;
use engram_embed::BertEmbedder;
use engram_index::IndexConfig;
use engram_postgres::{PgOptions, PgStore};
use engram_sqlite::{SqliteOptions, SqliteStore};
use jiff::SignedDuration;

/// Logging options.
#[derive(Args, Debug, Clone)]
pub struct LogArgs {
    /// Log filter (tracing EnvFilter syntax), e.g. `info` or `engram=debug`.
    #[arg(
        id = "log_level",
        long = "log-level",
        env = "ENGRAM_LOG",
        default_value = "info",
        global = true
    )]
    pub level: String,
    /// Log as JSON lines.
    #[arg(
        id = "log_json",
        long = "log-json",
        env = "ENGRAM_LOG_JSON",
        global = true
    )]
    pub json: bool,
    /// Send spans to this OpenTelemetry collector over OTLP/HTTP (e.g.
    /// `http://127.0.0.1:4318`). Needs a build with `--features otlp`; unset, nothing is sent.
    #[arg(long, env = "ENGRAM_OTLP_ENDPOINT", global = true)]
    pub otlp_endpoint: Option<String>,
}

/// Keeps the tracing pipeline alive; on drop, flushes spans still queued for OTLP.
pub struct TracingGuard {
    #[cfg(feature = "otlp")]
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl Drop for TracingGuard {
    fn drop(&mut self) {
        #[cfg(feature = "otlp")]
        if let Some(p) = self.provider.take() {
            let _ = p.shutdown();
        }
    }
}

type BoxedLayer = Box<dyn tracing_subscriber::Layer<tracing_subscriber::Registry> + Send + Sync>;

/// Logs to stderr (text, or JSON lines), and optionally spans to an OTLP collector.
pub fn init_tracing(log: &LogArgs) -> anyhow::Result<TracingGuard> {
    use std::io::IsTerminal;
    use tracing_subscriber::Layer;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;

    let filter = tracing_subscriber::EnvFilter::try_new(&log.level)
        .map_err(|e| anyhow::anyhow!("--log-level `{}`: {e}", log.level))?;
    let fmt = tracing_subscriber::fmt::layer()
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    #[cfg_attr(not(feature = "otlp"), allow(unused_mut))]
    let mut layers: Vec<BoxedLayer> = vec![if log.json {
        fmt.json().boxed()
    } else {
        fmt.boxed()
    }];
    #[cfg_attr(not(feature = "otlp"), allow(unused_mut))]
    let mut guard = TracingGuard {
        #[cfg(feature = "otlp")]
        provider: None,
    };
    if let Some(endpoint) = &log.otlp_endpoint {
        #[cfg(feature = "otlp")]
        {
            let (layer, provider) = otlp_layer(endpoint)?;
            layers.push(layer);
            guard.provider = Some(provider);
        }
        #[cfg(not(feature = "otlp"))]
        anyhow::bail!(
            "--otlp-endpoint {endpoint}: this build has no OpenTelemetry support; rebuild with `cargo build --release -p engram --features otlp`"
        );
    }
    tracing_subscriber::registry()
        .with(layers.with_filter(filter))
        .try_init()
        .map_err(|e| anyhow::anyhow!("cannot install the logger: {e}"))?;
    Ok(guard)
}

/// A tracing layer that exports spans in batches over OTLP/HTTP.
#[cfg(feature = "otlp")]
fn otlp_layer(
    endpoint: &str,
) -> anyhow::Result<(BoxedLayer, opentelemetry_sdk::trace::SdkTracerProvider)> {
    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_otlp::WithExportConfig;
    use tracing_subscriber::Layer;

    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(format!("{}/v1/traces", endpoint.trim_end_matches('/')))
        .build()
        .map_err(|e| anyhow::anyhow!("--otlp-endpoint {endpoint}: {e}"))?;
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(
            opentelemetry_sdk::Resource::builder()
                .with_service_name("engram")
                .build(),
        )
        .build();
    let tracer = provider.tracer("engram");
    Ok((
        tracing_opentelemetry::layer().with_tracer(tracer).boxed(),
        provider,
    ))
}

/// Where data and the model live, and how retrieval behaves.
#[derive(Args, Debug, Clone)]
pub struct StoreArgs {
    /// Data directory (SQLite file and vector index); unused with a Postgres `--store`.
    #[arg(long, env = "ENGRAM_DATA_DIR", default_value = "./engram-data")]
    pub data_dir: PathBuf,
    #[command(flatten)]
    pub backend: BackendArgs,
    #[command(flatten)]
    pub encryption: EncryptionArgs,
    /// Sentence-transformers model directory [default: $ENGRAM_MODEL_DIR or ~/.local/share/engram/models/all-MiniLM-L6-v2].
    #[arg(long, env = "ENGRAM_MODEL_DIR")]
    pub model_dir: Option<PathBuf>,
    /// Use an OpenAI-compatible embeddings endpoint instead of the local model (e.g. `https://api.openai.com/v1`).
    #[arg(long, env = "ENGRAM_EMBED_BASE_URL")]
    pub embed_base_url: Option<String>,
    /// The remote embedding model (with --embed-base-url).
    #[arg(
        long,
        env = "ENGRAM_EMBED_MODEL",
        default_value = "text-embedding-3-small"
    )]
    pub embed_model: String,
    /// API key for --embed-base-url.
    #[arg(long, env = "ENGRAM_EMBED_API_KEY", hide_env_values = true)]
    pub embed_api_key: Option<String>,
    #[command(flatten)]
    pub retrieval: RetrievalArgs,
    #[command(flatten)]
    pub lifecycle: LifecycleArgs,
}

/// How queued jobs are retried and leased (every process that runs workers).
#[derive(Args, Debug, Clone)]
pub struct JobArgs {
    /// Attempts before a job is moved to the dead-letter queue.
    #[arg(long, env = "ENGRAM_JOB_MAX_ATTEMPTS", default_value_t = 5,
        value_parser = clap::value_parser!(u32).range(1..))]
    pub job_max_attempts: u32,
    /// Seconds a worker's lease on a job lasts; the worker renews it every
    /// quarter lease while it works, so another worker takes the job over
    /// only when this one died.
    #[arg(long, env = "ENGRAM_JOB_LEASE_SECS", default_value_t = 120,
        value_parser = clap::value_parser!(u64).range(1..))]
    pub job_lease_secs: u64,
    /// One attempt at a job may run this many leases (its LLM time budget);
    /// past it the attempt is abandoned and retried later.
    #[arg(long, env = "ENGRAM_JOB_ATTEMPT_LEASES", default_value_t = 5,
        value_parser = clap::value_parser!(u32).range(1..=100))]
    pub job_attempt_leases: u32,
    /// Jobs one org may have queued or running at once; more asynchronous
    /// adds get 429 `queue_full` (with Retry-After) until some finish.
    #[arg(long, env = "ENGRAM_MAX_PENDING_JOBS_PER_ORG", default_value_t = 10_000,
        value_parser = clap::value_parser!(u64).range(1..))]
    pub max_pending_jobs_per_org: u64,
}

impl JobArgs {
    pub fn config(&self) -> engram_core::service::JobConfig {
        engram_core::service::JobConfig {
            max_attempts: self.job_max_attempts,
            lease: std::time::Duration::from_secs(self.job_lease_secs),
            attempt_leases: self.job_attempt_leases,
            max_pending_per_org: self.max_pending_jobs_per_org,
            ..Default::default()
        }
    }
}

/// The LLM that extracts and consolidates facts (any OpenAI-compatible
/// chat endpoint); without one, adds store messages verbatim.
#[derive(Args, Debug, Clone)]
pub struct LlmArgs {
    /// OpenAI-compatible chat endpoint for fact extraction and consolidation
    /// (e.g. `https://api.openai.com/v1`, `http://127.0.0.1:11434/v1` for Ollama). Unset: no LLM.
    #[arg(long, env = "ENGRAM_LLM_BASE_URL")]
    pub llm_base_url: Option<String>,
    /// The chat model (with --llm-base-url).
    #[arg(long, env = "ENGRAM_LLM_MODEL", default_value = "gpt-4o-mini")]
    pub llm_model: String,
    /// API key for --llm-base-url.
    #[arg(long, env = "ENGRAM_LLM_API_KEY", hide_env_values = true)]
    pub llm_api_key: Option<String>,
    /// Seconds per LLM call before it is abandoned (and retried). The
    /// default suits a small model on a CPU (llama.cpp, Ollama) on a busy machine.
    #[arg(long, env = "ENGRAM_LLM_TIMEOUT_SECS", default_value_t = 180,
        value_parser = clap::value_parser!(u64).range(1..))]
    pub llm_timeout_secs: u64,
    /// Retries of a failed LLM call (backoff with jitter, Retry-After honoured).
    #[arg(long, env = "ENGRAM_LLM_MAX_RETRIES", default_value_t = 3)]
    pub llm_max_retries: u32,
    /// LLM calls in flight at once towards the endpoint; more wait their
    /// turn (a local server with one slot answers one call at a time).
    #[arg(long, env = "ENGRAM_LLM_CONCURRENCY", default_value_t = 2,
        value_parser = clap::value_parser!(u64).range(1..=256))]
    pub llm_concurrency: u64,
}

impl LlmArgs {
    /// The LLM pipeline over `service`, when an endpoint is configured.
    pub fn pipeline(
        &self,
        service: &MemoryService,
    ) -> anyhow::Result<Option<engram_core::pipeline::Pipeline>> {
        let Some(url) = &self.llm_base_url else {
            tracing::info!(
                "no LLM configured (--llm-base-url): adds store messages verbatim, split per turn and sentence"
            );
            return Ok(None);
        };
        let mut cfg = engram_llm::ClientConfig::new(url.clone(), self.llm_model.clone());
        cfg.api_key = self.llm_api_key.clone();
        cfg.timeout = std::time::Duration::from_secs(self.llm_timeout_secs);
        cfg.max_retries = self.llm_max_retries;
        cfg.concurrency = self.llm_concurrency as usize;
        let chat = engram_llm::OpenAiChat::new(
            cfg,
            Arc::new(engram_llm::TokioSleeper),
            Arc::new(SystemClock),
        )?;
        tracing::info!(url = %url, model = %self.llm_model, "LLM configured: adds extract and consolidate facts in the background");
        Ok(Some(engram_core::pipeline::Pipeline::new(
            service.clone(),
            Arc::new(chat),
        )))
    }
}

/// Encryption at rest of the SQLite store (docs/operations.md, "Encryption at rest").
#[derive(Args, Clone, Default)]
pub struct EncryptionArgs {
    /// Encrypt the SQLite database (SQLCipher) with this key: 64 hex digits
    /// (a raw 256-bit key, e.g. `openssl rand -hex 32`) or a passphrase.
    /// Prefer --encryption-key-file.
    #[arg(
        long,
        env = "ENGRAM_ENCRYPTION_KEY",
        hide_env_values = true,
        conflicts_with = "encryption_key_file"
    )]
    pub encryption_key: Option<String>,
    /// File holding the encryption key (only its first line is used).
    #[arg(long, env = "ENGRAM_ENCRYPTION_KEY_FILE")]
    pub encryption_key_file: Option<PathBuf>,
}

impl std::fmt::Debug for EncryptionArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EncryptionArgs")
            .field("encryption_key", &self.encryption_key.as_ref().map(|_| "…"))
            .field("encryption_key_file", &self.encryption_key_file)
            .finish()
    }
}

impl EncryptionArgs {
    /// The key of the SQLite store `backend` names; a key given for a
    /// Postgres store is refused rather than silently ignored.
    pub fn key_for(&self, backend: &BackendArgs) -> anyhow::Result<Option<engram_sqlite::DbKey>> {
        let key = self.key()?;
        if key.is_some() && backend.is_postgres() {
            anyhow::bail!(
                "an encryption key applies to the embedded SQLite store only; with a Postgres \
                 --store use the database's own storage encryption (and unset the key)"
            );
        }
        Ok(key)
    }

    /// The key, from the flag / variable or the file; `None` for a plaintext store.
    pub fn key(&self) -> anyhow::Result<Option<engram_sqlite::DbKey>> {
        let text = match (&self.encryption_key, &self.encryption_key_file) {
            (Some(k), _) => k.clone(),
            (None, Some(path)) => std::fs::read_to_string(path)
                .with_context(|| format!("reading the encryption key file {}", path.display()))?
                .lines()
                .next()
                .unwrap_or_default()
                .to_owned(),
            (None, None) => return Ok(None),
        };
        Ok(Some(
            engram_sqlite::DbKey::new(&text).map_err(|e| anyhow::anyhow!(e.message))?,
        ))
    }
}

/// How memories expire (docs/operations.md, "Expiry and decay").
#[derive(Args, Debug, Clone)]
pub struct LifecycleArgs {
    /// Session (`run_id`) memories expire this long after their last use (`90s`, `15m`, `12h`, `30d`, `2w`; 0 = never).
    #[arg(long, env = "ENGRAM_SESSION_TTL", default_value = "30d", value_parser = parse_ttl)]
    pub session_ttl: SignedDuration,
    /// Every other memory expires this long after its last use (0 = never).
    #[arg(long, env = "ENGRAM_MEMORY_TTL", default_value = "0", value_parser = parse_ttl)]
    pub memory_ttl: SignedDuration,
    /// Keep at most this many episodic memories per scope, the most recent (0 = no cap).
    #[arg(long, env = "ENGRAM_EPISODIC_CAP", default_value_t = 0)]
    pub episodic_cap: usize,
    /// The longest `ttl_seconds` an add may ask for (0 = no bound).
    #[arg(long, env = "ENGRAM_MAX_TTL", default_value = "0", value_parser = parse_ttl)]
    pub max_ttl: SignedDuration,
    /// Per-org / per-app overrides, e.g. `org_id=acme,session_ttl=7d,episodic_cap=200`
    /// (repeat the flag; in the environment separate policies with `;`).
    #[arg(long = "scope-policy", env = "ENGRAM_SCOPE_POLICIES", value_delimiter = ';', value_parser = parse_policy)]
    pub scope_policies: Vec<ScopePolicy>,
    /// How often each node sweeps expired memories away.
    #[arg(long, env = "ENGRAM_SWEEP_INTERVAL", default_value = "5m", value_parser = parse_ttl)]
    pub sweep_interval: SignedDuration,
    /// Memories removed per sweep transaction.
    #[arg(long, env = "ENGRAM_SWEEP_BATCH", default_value_t = LifecycleConfig::default().sweep_batch)]
    pub sweep_batch: usize,
}

fn parse_ttl(s: &str) -> Result<SignedDuration, String> {
    lifecycle::parse_duration(s).map_err(|e| e.message)
}

fn parse_policy(s: &str) -> Result<ScopePolicy, String> {
    s.parse::<ScopePolicy>().map_err(|e| e.message)
}

impl LifecycleArgs {
    pub fn config(&self) -> LifecycleConfig {
        LifecycleConfig {
            defaults: PolicyRules {
                session_ttl: Some(self.session_ttl),
                memory_ttl: Some(self.memory_ttl),
                episodic_cap: Some(self.episodic_cap),
                max_ttl: Some(self.max_ttl),
            },
            policies: self.scope_policies.clone(),
            sweep_interval: self.sweep_interval,
            sweep_batch: self.sweep_batch.max(1),
        }
    }
}

/// Which store: the embedded SQLite file (default) or a shared Postgres.
#[derive(Args, Debug, Clone, Default)]
pub struct BackendArgs {
    /// Shared store URL, `postgres://user:password@host:5432/db` (Postgres with pgvector);
    /// any number of nodes may use the same one. Default: SQLite in --data-dir.
    #[arg(long = "store", env = "ENGRAM_STORE", hide_env_values = true, value_parser = parse_store_url)]
    pub store_url: Option<String>,
    /// Connections per node to the Postgres store.
    #[arg(long, env = "ENGRAM_PG_POOL_SIZE", default_value_t = PgOptions::default().pool_size)]
    pub pg_pool_size: usize,
    /// Server-side timeout of any one Postgres statement, seconds.
    #[arg(long, env = "ENGRAM_PG_STATEMENT_TIMEOUT_SECS", default_value_t = PgOptions::default().statement_timeout.as_secs())]
    pub pg_statement_timeout_secs: u64,
    /// SQLite: `full` syncs every commit to disk (acknowledged writes survive a
    /// power loss; an fsync per write); `normal` survives a crash of the
    /// process, and a power loss may undo the last writes. Erasures are
    /// always synced. (Postgres follows its own `synchronous_commit`.)
    #[arg(long, env = "ENGRAM_DURABILITY", value_enum, default_value_t = Durability::Normal)]
    pub durability: Durability,
}

/// How hard a SQLite commit is pushed to disk.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    #[default]
    Normal,
    Full,
}

fn parse_store_url(s: &str) -> Result<String, String> {
    if s.starts_with("postgres://") || s.starts_with("postgresql://") {
        Ok(s.to_owned())
    } else {
        Err(
            "`--store` takes a Postgres URL (postgres://user:password@host:5432/db); \
             leave it out to use SQLite in --data-dir"
                .into(),
        )
    }
}

impl BackendArgs {
    pub fn is_postgres(&self) -> bool {
        self.store_url.is_some()
    }

    pub fn pg_options(&self, exact_threshold: usize) -> PgOptions {
        PgOptions {
            pool_size: self.pg_pool_size.max(2),
            statement_timeout: std::time::Duration::from_secs(
                self.pg_statement_timeout_secs.max(1),
            ),
            exact_threshold,
            ..PgOptions::default()
        }
    }

    /// Just the key table of the configured store (for `engram keys`).
    pub async fn open_keys(
        &self,
        data_dir: &std::path::Path,
        encryption: &EncryptionArgs,
    ) -> anyhow::Result<Arc<dyn KeyStore>> {
        let key = encryption.key_for(self)?;
        match &self.store_url {
            Some(url) => {
                let store =
                    PgStore::connect(url, self.pg_options(IndexConfig::default().exact_threshold))
                        .await
                        .context("opening the Postgres store")?;
                Ok(Arc::new(store))
            }
            None => Ok(Arc::new(engram_sqlite::SqliteKeys::open(
                data_dir,
                key.as_ref(),
            )?)),
        }
    }
}

/// The opened store, with what only one backend does.
#[derive(Clone)]
pub enum Backend {
    Sqlite(SqliteStore),
    Postgres(PgStore),
}

impl Backend {
    pub fn store(&self) -> Arc<dyn Store> {
        match self {
            Backend::Sqlite(s) => Arc::new(s.clone()),
            Backend::Postgres(s) => Arc::new(s.clone()),
        }
    }

    pub fn keys(&self) -> Arc<dyn KeyStore> {
        match self {
            Backend::Sqlite(s) => Arc::new(s.clone()),
            Backend::Postgres(s) => Arc::new(s.clone()),
        }
    }

    /// Where the data is, for logs and messages.
    pub fn describe(&self) -> String {
        match self {
            Backend::Sqlite(s) => s.dir().display().to_string(),
            Backend::Postgres(s) => format!("postgres {}", s.target()),
        }
    }

    pub async fn flush(&self) -> engram_core::Result<()> {
        self.store().flush().await
    }
}

/// Retrieval and ingest tunables.
#[derive(Args, Debug, Clone)]
pub struct RetrievalArgs {
    /// Fusion of the signals: `weighted` (normalised scores) or `rrf` (reciprocal ranks).
    #[arg(long, env = "ENGRAM_FUSION", default_value = "weighted", value_parser = parse_fusion)]
    pub fusion: FusionMethod,
    /// Score normalisation before weighting: `minmax`, `max` or `calibrated` (fixed scales).
    #[arg(long, env = "ENGRAM_NORMALIZATION", default_value = "minmax", value_parser = parse_normalization)]
    pub normalization: Normalization,
    /// Signal weights `semantic,keyword,entity`.
    #[arg(long, env = "ENGRAM_WEIGHTS", default_value = "0.45,0.45,0.1", value_parser = parse_weights)]
    pub weights: SignalWeights,
    /// Recency half-life in days (0 = no decay), for every kind without its own below.
    #[arg(long, env = "ENGRAM_HALF_LIFE_DAYS", default_value_t = RetrievalConfig::default().half_life_days.semantic)]
    pub half_life_days: f64,
    /// Half-life of semantic memories (facts), days.
    #[arg(long, env = "ENGRAM_HALF_LIFE_DAYS_SEMANTIC")]
    pub half_life_days_semantic: Option<f64>,
    /// Half-life of episodic memories (events), days.
    #[arg(long, env = "ENGRAM_HALF_LIFE_DAYS_EPISODIC")]
    pub half_life_days_episodic: Option<f64>,
    /// Half-life of procedural memories (instructions), days.
    #[arg(long, env = "ENGRAM_HALF_LIFE_DAYS_PROCEDURAL")]
    pub half_life_days_procedural: Option<f64>,
    /// Lowest recency decay factor.
    #[arg(long, env = "ENGRAM_DECAY_FLOOR", default_value_t = RetrievalConfig::default().decay_floor)]
    pub decay_floor: f64,
    /// Share of a neighbouring turn's score a memory inherits (0 = off).
    #[arg(long, env = "ENGRAM_CONTEXT_WEIGHT", default_value_t = RetrievalConfig::default().context_weight)]
    pub context_weight: f32,
    /// Share of a full score added to a memory whose speaker the query names (0 = off).
    #[arg(long, env = "ENGRAM_SPEAKER_WEIGHT", default_value_t = RetrievalConfig::default().speaker_weight)]
    pub speaker_weight: f32,
    /// How many times more a memory counts when the query names its speaker
    /// (other memories' scores are divided by it); 1 = off.
    #[arg(long, env = "ENGRAM_SPEAKER_FACTOR", default_value_t = RetrievalConfig::default().speaker_factor)]
    pub speaker_factor: f32,
    /// Factor on the score of a turn that only asks a question (ends with `?`); 1 = off.
    #[arg(long, env = "ENGRAM_QUESTION_FACTOR", default_value_t = RetrievalConfig::default().question_factor)]
    pub question_factor: f32,
    /// Factor on the score of a memory a user rated NEGATIVE (1 = ignore feedback).
    #[arg(long, env = "ENGRAM_NEGATIVE_FEEDBACK_FACTOR", default_value_t = RetrievalConfig::default().negative_feedback_factor,
          value_parser = unit_interval)]
    pub negative_feedback_factor: f32,
    /// Keep memories rated VERY_NEGATIVE in search results (weighed like
    /// NEGATIVE ones) instead of leaving them out.
    #[arg(long, env = "ENGRAM_SEARCH_VERY_NEGATIVE")]
    pub search_very_negative: bool,
    /// Token budget of a search when the request gives none (0 = unlimited).
    #[arg(long, env = "ENGRAM_TOKEN_BUDGET", default_value_t = RetrievalConfig::default().default_token_budget)]
    pub token_budget: usize,
    /// Candidates per signal before fusion.
    #[arg(long, env = "ENGRAM_CANDIDATES", default_value_t = RetrievalConfig::default().candidates)]
    pub candidates: usize,
    /// Cosine similarity at or above which a new memory duplicates one in the same scope.
    #[arg(long, env = "ENGRAM_DEDUP_THRESHOLD", default_value_t = IngestConfig::default().dedup_threshold)]
    pub dedup_threshold: f32,
    /// Cosine similarity at or above which a new memory that restates one in
    /// the same scope with only a number, date, name or negation changed
    /// supersedes it (a new version, no LLM needed).
    #[arg(long, env = "ENGRAM_CORRECTION_THRESHOLD", default_value_t = IngestConfig::default().correction_threshold)]
    pub correction_threshold: f32,
    /// Turns longer than this many tokens are split by sentence.
    #[arg(long, env = "ENGRAM_MAX_CHUNK_TOKENS", default_value_t = IngestConfig::default().max_chunk_tokens)]
    pub max_chunk_tokens: usize,
    /// Filtered sets estimated below this size are scanned exactly instead of through the HNSW graph.
    #[arg(long, env = "ENGRAM_EXACT_THRESHOLD", default_value_t = IndexConfig::default().exact_threshold)]
    pub exact_threshold: usize,
    /// Query embeddings kept in the LRU cache (0 disables it).
    #[arg(long, env = "ENGRAM_QUERY_CACHE", default_value_t = 10_000)]
    pub query_cache: usize,
}

fn parse_fusion(s: &str) -> Result<FusionMethod, String> {
    match s {
        "weighted" => Ok(FusionMethod::Weighted),
        "rrf" => Ok(FusionMethod::Rrf),
        other => Err(format!("unknown fusion `{other}`: use weighted or rrf")),
    }
}

fn parse_normalization(s: &str) -> Result<Normalization, String> {
    match s {
        "minmax" => Ok(Normalization::MinMax),
        "max" => Ok(Normalization::Max),
        "calibrated" => Ok(Normalization::Calibrated),
        other => Err(format!(
            "unknown normalization `{other}`: use minmax, max or calibrated"
        )),
    }
}

fn parse_weights(s: &str) -> Result<SignalWeights, String> {
    let parts: Vec<f32> = s
        .split(',')
        .map(|p| {
            p.trim()
                .parse::<f32>()
                .map_err(|_| format!("`{p}` is not a number"))
        })
        .collect::<Result<_, _>>()?;
    match parts[..] {
        [semantic, keyword, entity]
            if parts.iter().all(|w| *w >= 0.0) && parts.iter().sum::<f32>() > 0.0 =>
        {
            Ok(SignalWeights {
                semantic,
                keyword,
                entity,
            })
        }
        _ => Err(
            "weights are three non-negative numbers `semantic,keyword,entity`, not all zero".into(),
        ),
    }
}

impl RetrievalArgs {
    pub fn retrieval(&self) -> RetrievalConfig {
        RetrievalConfig {
            fusion: self.fusion,
            normalization: self.normalization,
            weights: self.weights,
            half_life_days: HalfLives {
                semantic: self.half_life_days_semantic.unwrap_or(self.half_life_days),
                episodic: self.half_life_days_episodic.unwrap_or(self.half_life_days),
                procedural: self
                    .half_life_days_procedural
                    .unwrap_or(self.half_life_days),
            },
            context_weight: self.context_weight,
            speaker_weight: self.speaker_weight,
            question_factor: self.question_factor,
            speaker_factor: self.speaker_factor,
            decay_floor: self.decay_floor,
            default_token_budget: self.token_budget,
            candidates: self.candidates,
            negative_feedback_factor: self.negative_feedback_factor,
            exclude_very_negative: !self.search_very_negative,
            ..RetrievalConfig::default()
        }
    }

    pub fn ingest(&self) -> IngestConfig {
        IngestConfig {
            dedup_threshold: self.dedup_threshold,
            correction_threshold: self.correction_threshold,
            max_chunk_tokens: self.max_chunk_tokens,
            ..IngestConfig::default()
        }
    }

    pub fn index(&self) -> IndexConfig {
        IndexConfig {
            exact_threshold: self.exact_threshold,
            ..IndexConfig::default()
        }
    }
}

impl StoreArgs {
    pub fn model_dir(&self) -> PathBuf {
        self.model_dir
            .clone()
            .unwrap_or_else(engram_embed::default_model_dir)
    }
}

/// Loads the embedding model (blocking work on the blocking pool).
pub async fn load_embedder(dir: PathBuf) -> anyhow::Result<Arc<BertEmbedder>> {
    let embedder = tokio::task::spawn_blocking(move || BertEmbedder::load(&dir)).await??;
    Ok(Arc::new(embedder))
}

/// The configured embedder: a remote OpenAI-compatible endpoint, or the local model.
async fn embedder(args: &StoreArgs) -> anyhow::Result<Arc<dyn engram_core::ports::Embedder>> {
    match &args.embed_base_url {
        Some(url) => remote_embedder(url, &args.embed_model, args.embed_api_key.clone()).await,
        None => Ok(load_embedder(args.model_dir()).await?),
    }
}

/// `model` served by the OpenAI-compatible embeddings endpoint at `url`.
pub async fn remote_embedder(
    url: &str,
    model: &str,
    api_key: Option<String>,
) -> anyhow::Result<Arc<dyn engram_core::ports::Embedder>> {
    let mut cfg = engram_llm::ClientConfig::new(url.to_owned(), model.to_owned());
    cfg.api_key = api_key;
    let e = engram_llm::OpenAiEmbedder::connect(
        cfg,
        Arc::new(engram_llm::TokioSleeper),
        Arc::new(SystemClock),
    )
    .await
    .with_context(|| format!("connecting to the embeddings endpoint {url}"))?;
    tracing::info!(model = %e.model_info().id, dim = e.model_info().dim, "remote embeddings");
    Ok(Arc::new(e))
}

/// The model `requested` names among the operator's `--reembed-model`
/// entries: `(directory or remote model name, remote endpoint)`. A
/// directory entry answers to its path and to its last component; a
/// `NAME=URL` entry to NAME.
pub fn allowed_model(allowed: &[String], requested: &str) -> Option<(String, Option<String>)> {
    allowed.iter().find_map(|spec| match spec.split_once('=') {
        Some((name, url)) if name == requested => Some((name.to_owned(), Some(url.to_owned()))),
        Some(_) => None,
        None => {
            let dir = std::path::Path::new(spec);
            let name = dir.file_name().and_then(|n| n.to_str());
            (spec == requested || name == Some(requested)).then(|| (spec.clone(), None))
        }
    })
}

/// Loads the model a re-embedding moves to.
pub async fn load_model(
    model: &str,
    base_url: Option<&str>,
    api_key: Option<String>,
) -> anyhow::Result<Arc<dyn Embedder>> {
    match base_url {
        Some(url) => remote_embedder(url, model, api_key).await,
        None => Ok(load_embedder(model.into()).await?),
    }
}

/// Opens the store and model and builds the service.
pub async fn open_service(args: &StoreArgs) -> anyhow::Result<(MemoryService, Backend)> {
    let embedder = embedder(args).await?;
    let key = args.encryption.key_for(&args.backend)?;
    let store = match &args.backend.store_url {
        Some(url) => {
            let options = args.backend.pg_options(args.retrieval.exact_threshold);
            Backend::Postgres(
                PgStore::connect(url, options)
                    .await
                    .context("opening the Postgres store")?,
            )
        }
        None => {
            let options = SqliteOptions {
                index: args.retrieval.index(),
                key,
                durable: args.backend.durability == Durability::Full,
                ..SqliteOptions::default()
            };
            Backend::Sqlite(
                SqliteStore::open_async(args.data_dir.clone(), options)
                    .await
                    .with_context(|| format!("opening the store in {}", args.data_dir.display()))?,
            )
        }
    };
    let service = MemoryService::new(
        store.store(),
        embedder,
        args.retrieval.retrieval(),
        args.retrieval.ingest(),
        args.retrieval.query_cache,
        Arc::new(SystemClock),
    )
    .await?
    .with_lifecycle(args.lifecycle.config());
    Ok((service, store))
}

/// A factor in [0, 1].
fn unit_interval(s: &str) -> Result<f32, String> {
    match s.parse::<f32>() {
        Ok(v) if (0.0..=1.0).contains(&v) => Ok(v),
        _ => Err(format!("`{s}` is not a number between 0 and 1")),
    }
}
