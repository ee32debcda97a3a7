//! Schema migrations, applied in order under an advisory lock (so nodes
//! starting together migrate once) and recorded in `engram_migrations`.
//!
//! Times are milliseconds since the Unix epoch (`bigint`), as in the
//! embedded store, so both backends order and compare identically.

use tokio_postgres::{Client, GenericClient};

/// Each entry moves the schema from version `i` to `i + 1`. Never edit a
/// released migration; append a new one.
const MIGRATIONS: &[&str] = &[
    // 1: records with their keyword and entity indexes, history, keys, jobs,
    // idempotency records, LLM usage. The HNSW index needs the vector
    // dimension, so it is created when the embedding model is bound.
    r#"
    CREATE EXTENSION IF NOT EXISTS vector;

    CREATE TABLE engram_meta (
        key   text PRIMARY KEY,
        value text NOT NULL
    );

    -- One row per memory version; the current version has invalid_at IS NULL.
    CREATE TABLE memories (
        rowid           bigserial PRIMARY KEY,
        id              uuid NOT NULL,
        version         integer NOT NULL,
        text            text NOT NULL,
        kind            text NOT NULL,
        hash            text NOT NULL,
        org_id          text,
        app_id          text,
        user_id         text,
        agent_id        text,
        run_id          text,
        -- As written (json keeps key order); `meta` is its indexed jsonb form.
        metadata        json NOT NULL,
        meta            jsonb GENERATED ALWAYS AS (metadata::jsonb) STORED,
        categories      jsonb NOT NULL,
        entities        jsonb NOT NULL,
        role            text,
        created_at      bigint NOT NULL,
        updated_at      bigint NOT NULL,
        valid_at        bigint,
        invalid_at      bigint,
        expires_at      bigint,
        embedding_model text NOT NULL,
        tokens          integer NOT NULL,
        embedding       vector NOT NULL,
        tsv             tsvector GENERATED ALWAYS AS (to_tsvector('english', text)) STORED,
        UNIQUE (id, version)
    );
    -- At most one current version per memory, even with writers on many nodes.
    CREATE UNIQUE INDEX memories_current ON memories (id) WHERE invalid_at IS NULL;
    CREATE INDEX memories_org ON memories (org_id, created_at) WHERE invalid_at IS NULL;
    CREATE INDEX memories_app ON memories (app_id, created_at) WHERE invalid_at IS NULL;
    CREATE INDEX memories_user ON memories (user_id, created_at) WHERE invalid_at IS NULL;
    CREATE INDEX memories_agent ON memories (agent_id, created_at) WHERE invalid_at IS NULL;
    CREATE INDEX memories_run ON memories (run_id, created_at) WHERE invalid_at IS NULL;
    CREATE INDEX memories_created ON memories (created_at, id) WHERE invalid_at IS NULL;
    -- Conversational neighbours: the closest turns before and after in time.
    CREATE INDEX memories_turns ON memories (created_at, rowid) WHERE invalid_at IS NULL;
    CREATE INDEX memories_as_of ON memories (updated_at);
    CREATE INDEX memories_tsv ON memories USING gin (tsv) WHERE invalid_at IS NULL;

    -- Entity index over current versions: normalised entity name -> version.
    CREATE TABLE entities (
        key    text NOT NULL,
        memory bigint NOT NULL REFERENCES memories (rowid) ON DELETE CASCADE,
        PRIMARY KEY (key, memory)
    );
    CREATE INDEX entities_memory ON entities (memory);

    CREATE TABLE history (
        seq        bigserial PRIMARY KEY,
        id         uuid NOT NULL UNIQUE,
        memory_id  uuid NOT NULL,
        event      text NOT NULL,
        old_text   text,
        new_text   text,
        version    integer NOT NULL,
        actor      text,
        reason     text,
        request_id text,
        org_id     text,
        app_id     text,
        user_id    text,
        agent_id   text,
        run_id     text,
        created_at bigint NOT NULL
    );
    CREATE INDEX history_memory ON history (memory_id, seq);

    -- Only the SHA-256 of a key's secret is kept.
    CREATE TABLE api_keys (
        id          text PRIMARY KEY,
        secret_hash text NOT NULL,
        name        text NOT NULL,
        role        text NOT NULL,
        org_id      text NOT NULL,
        app_id      text,
        user_id     text,
        agent_id    text,
        rate_limit  bigint,
        created_at  bigint NOT NULL,
        created_by  text NOT NULL,
        revoked_at  bigint
    );

    -- One queue shared by every node: claimed with FOR UPDATE SKIP LOCKED, held by a lease.
    CREATE TABLE jobs (
        id           uuid PRIMARY KEY,
        kind         text NOT NULL,
        state        text NOT NULL,
        payload      text NOT NULL,
        principal    text NOT NULL,
        scope        text NOT NULL,
        org_id       text,
        user_id      text,
        request_id   text,
        attempts     integer NOT NULL,
        max_attempts integer NOT NULL,
        last_error   text,
        result       text,
        created_at   bigint NOT NULL,
        updated_at   bigint NOT NULL,
        run_after    bigint NOT NULL,
        lease_owner  text,
        lease_until  bigint
    );
    CREATE INDEX jobs_queued ON jobs (run_after, created_at) WHERE state = 'queued';
    CREATE INDEX jobs_leased ON jobs (lease_until) WHERE state = 'running';
    CREATE INDEX jobs_listing ON jobs (created_at, id);

    CREATE TABLE idempotency (
        principal    text NOT NULL,
        key          text NOT NULL,
        request_hash text NOT NULL,
        status       integer,
        response     text,
        created_at   bigint NOT NULL,
        PRIMARY KEY (principal, key)
    );

    CREATE TABLE llm_usage (
        org_id            text NOT NULL DEFAULT '',
        app_id            text NOT NULL DEFAULT '',
        user_id           text NOT NULL DEFAULT '',
        agent_id          text NOT NULL DEFAULT '',
        run_id            text NOT NULL DEFAULT '',
        day               text NOT NULL,
        model             text NOT NULL,
        runs              bigint NOT NULL,
        prompt_tokens     bigint NOT NULL,
        completion_tokens bigint NOT NULL,
        cost_microdollars bigint NOT NULL,
        PRIMARY KEY (org_id, app_id, user_id, agent_id, run_id, day, model)
    );
    "#,
    // 2: the append-only audit log (no memory text, no scope ids below the
    // org), started from the history of earlier writes.
    r#"
    CREATE TABLE audit (
        seq        bigserial PRIMARY KEY,
        id         uuid NOT NULL UNIQUE,
        at         bigint NOT NULL,
        actor      text NOT NULL,
        action     text NOT NULL,
        org_id     text,
        target     text,
        request_id text,
        detail     jsonb NOT NULL
    );
    CREATE INDEX audit_org ON audit (org_id, seq);
    INSERT INTO audit (id, at, actor, action, org_id, target, request_id, detail)
        SELECT id, created_at, COALESCE(actor, 'unknown'), 'memory.' || lower(event), org_id,
               memory_id::text, request_id, jsonb_build_object('version', version)
        FROM history ORDER BY seq;
    CREATE FUNCTION engram_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN RAISE EXCEPTION 'the audit log is append-only'; END $$;
    CREATE TRIGGER audit_append_only BEFORE UPDATE OR DELETE ON audit
        FOR EACH ROW EXECUTE FUNCTION engram_audit_append_only();
    CREATE TRIGGER audit_no_truncate BEFORE TRUNCATE ON audit
        FOR EACH STATEMENT EXECUTE FUNCTION engram_audit_append_only();
    "#,
    // 3: sliding expiry, the sweep's index of expiring current versions, and
    // every version of a memory by id (export, import).
    r#"
    ALTER TABLE memories ADD COLUMN idle_ttl_ms bigint;
    CREATE INDEX memories_versions ON memories (id, version);
    CREATE INDEX memories_expiring ON memories (expires_at)
        WHERE expires_at IS NOT NULL AND invalid_at IS NULL;
    "#,
    // 4: re-embedding: each version's vector from the next model, kept
    // beside the current one until the switch (`engram_meta` names the
    // model). Untyped `vector`: the next model's dimension may differ.
    r#"
    CREATE TABLE reembed (
        memory    bigint PRIMARY KEY REFERENCES memories (rowid) ON DELETE CASCADE,
        embedding vector NOT NULL
    );
    "#,
    // 5: idempotency records expire (a time to live, purged by the sweeper)
    // and are capped per caller, oldest first.
    r#"
    CREATE INDEX idempotency_age ON idempotency (created_at);
    CREATE INDEX idempotency_caller_age ON idempotency (principal, created_at);
    "#,
    // 6: webhooks and their delivery attempts; deliveries are jobs, and jobs
    // sharing an `ordering` key (one webhook, one memory) run in order. A
    // memory's feedback (Mem0's POSITIVE / NEGATIVE / VERY_NEGATIVE).
    r#"
    CREATE TABLE webhooks (
        id            uuid PRIMARY KEY,
        url           text NOT NULL,
        events        bigint NOT NULL,
        org_id        text,
        app_id        text,
        user_id       text,
        agent_id      text,
        run_id        text,
        name          text,
        description   text,
        format        text NOT NULL,
        project_id    text,
        include_text  boolean NOT NULL,
        enabled       boolean NOT NULL,
        failures      integer NOT NULL,
        disabled_reason text,
        secret        text NOT NULL,
        created_by    text NOT NULL,
        created_at    bigint NOT NULL,
        updated_at    bigint NOT NULL
    );
    CREATE TABLE webhook_attempts (
        id          uuid PRIMARY KEY,
        webhook_id  uuid NOT NULL REFERENCES webhooks (id) ON DELETE CASCADE,
        delivery_id uuid NOT NULL,
        event       text NOT NULL,
        attempt     integer NOT NULL,
        outcome     text NOT NULL,
        status_code integer,
        latency_ms  bigint NOT NULL,
        error       text,
        at          bigint NOT NULL
    );
    CREATE INDEX webhook_attempts_by_hook ON webhook_attempts (webhook_id, id);
    ALTER TABLE jobs ADD COLUMN ordering text;
    CREATE INDEX jobs_ordering ON jobs (ordering, created_at) WHERE ordering IS NOT NULL;
    ALTER TABLE memories ADD COLUMN feedback text;
    "#,
];

/// The lock every node takes while migrating or binding the model, and a
/// re-embedding while it starts, switches or is cancelled.
pub const SCHEMA_LOCK: i64 = 0x656e_6772_616d; // "engram"

/// Takes [`SCHEMA_LOCK`] until the transaction ends: exclusively, or shared
/// (a re-embedding's puts, which may run side by side but never across a
/// start, switch or cancel).
pub async fn lock(tx: &impl GenericClient, shared: bool) -> Result<(), tokio_postgres::Error> {
    let sql = if shared {
        "SELECT pg_advisory_xact_lock_shared($1)"
    } else {
        "SELECT pg_advisory_xact_lock($1)"
    };
    tx.execute(sql, &[&SCHEMA_LOCK]).await.map(|_| ())
}

/// Brings the schema up to date; returns how many migrations ran.
pub async fn migrate(client: &mut Client) -> Result<usize, tokio_postgres::Error> {
    let tx = client.transaction().await?;
    lock(&tx, false).await?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS engram_migrations (
             version    integer PRIMARY KEY,
             applied_at timestamptz NOT NULL DEFAULT now()
         )",
    )
    .await?;
    let current: i32 = tx
        .query_one(
            "SELECT COALESCE(max(version), 0) FROM engram_migrations",
            &[],
        )
        .await?
        .get(0);
    let mut ran = 0;
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current.max(0) as usize) {
        tx.batch_execute(sql).await?;
        let version = i as i32 + 1;
        tx.execute(
            "INSERT INTO engram_migrations (version) VALUES ($1)",
            &[&version],
        )
        .await?;
        ran += 1;
    }
    tx.commit().await?;
    Ok(ran)
}

/// The newest schema version this build knows.
pub fn latest() -> usize {
    MIGRATIONS.len()
}
