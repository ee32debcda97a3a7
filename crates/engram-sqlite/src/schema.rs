//! Schema migrations, applied in order and recorded in `PRAGMA user_version`.

use rusqlite::Connection;

/// Each entry moves the schema from version `i` to `i + 1`. Never edit a
/// released migration; append a new one.
const MIGRATIONS: &[&str] = &[
    // 1: records, keyword index, entity index, history.
    r#"
    CREATE TABLE meta (
        key   TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );

    -- One row per memory version. `id` is shared by all versions of a memory;
    -- the current version has `invalid_at IS NULL` (a deleted memory has none).
    -- AUTOINCREMENT: row keys are also vector-index keys and are never reused.
    CREATE TABLE memories (
        rowid           INTEGER PRIMARY KEY AUTOINCREMENT,
        id              TEXT NOT NULL,
        version         INTEGER NOT NULL,
        text            TEXT NOT NULL,
        kind            TEXT NOT NULL,
        hash            TEXT NOT NULL,
        org_id          TEXT,
        app_id          TEXT,
        user_id         TEXT,
        agent_id        TEXT,
        run_id          TEXT,
        metadata        TEXT NOT NULL,
        categories      TEXT NOT NULL,
        entities        TEXT NOT NULL,
        role            TEXT,
        created_at      INTEGER NOT NULL,
        updated_at      INTEGER NOT NULL,
        valid_at        INTEGER,
        invalid_at      INTEGER,
        expires_at      INTEGER,
        embedding_model TEXT NOT NULL,
        tokens          INTEGER NOT NULL,
        embedding       BLOB NOT NULL,
        UNIQUE (id, version)
    );
    CREATE INDEX memories_current ON memories (id) WHERE invalid_at IS NULL;

    -- Keyword index over current versions. Contentless: the text lives only in
    -- `memories`. `scope` holds one opaque token per scope id so a scoped
    -- query intersects postings inside FTS5 instead of filtering afterwards.
    CREATE VIRTUAL TABLE memories_fts USING fts5 (
        text, scope,
        content = '', contentless_delete = 1,
        tokenize = 'porter unicode61 remove_diacritics 2'
    );

    -- Entity index: normalised entity name → memory version.
    CREATE TABLE entities (
        key    TEXT NOT NULL,
        memory INTEGER NOT NULL REFERENCES memories (rowid) ON DELETE CASCADE,
        PRIMARY KEY (key, memory)
    ) WITHOUT ROWID;
    CREATE INDEX entities_memory ON entities (memory);

    CREATE TABLE history (
        seq        INTEGER PRIMARY KEY AUTOINCREMENT,
        id         TEXT NOT NULL UNIQUE,
        memory_id  TEXT NOT NULL,
        event      TEXT NOT NULL,
        old_text   TEXT,
        new_text   TEXT,
        version    INTEGER NOT NULL,
        actor      TEXT,
        reason     TEXT,
        request_id TEXT,
        org_id     TEXT,
        app_id     TEXT,
        user_id    TEXT,
        agent_id   TEXT,
        run_id     TEXT,
        created_at INTEGER NOT NULL
    );
    CREATE INDEX history_memory ON history (memory_id, seq);
    "#,
    // 2: API keys. Only the SHA-256 of a key's secret is kept.
    r#"
    CREATE TABLE api_keys (
        id          TEXT PRIMARY KEY,
        secret_hash TEXT NOT NULL,
        name        TEXT NOT NULL,
        role        TEXT NOT NULL,
        org_id      TEXT NOT NULL,
        app_id      TEXT,
        user_id     TEXT,
        agent_id    TEXT,
        rate_limit  INTEGER,
        created_at  INTEGER NOT NULL,
        created_by  TEXT NOT NULL,
        revoked_at  INTEGER
    );
    "#,
    // 3: durable jobs, and idempotency records for POSTs.
    r#"
    CREATE TABLE jobs (
        id           TEXT PRIMARY KEY,
        kind         TEXT NOT NULL,
        state        TEXT NOT NULL,
        payload      TEXT NOT NULL,
        principal    TEXT NOT NULL,
        scope        TEXT NOT NULL,
        org_id       TEXT,
        user_id      TEXT,
        request_id   TEXT,
        attempts     INTEGER NOT NULL,
        max_attempts INTEGER NOT NULL,
        last_error   TEXT,
        result       TEXT,
        created_at   INTEGER NOT NULL,
        updated_at   INTEGER NOT NULL,
        run_after    INTEGER NOT NULL,
        lease_owner  TEXT,
        lease_until  INTEGER
    );
    CREATE INDEX jobs_due ON jobs (state, run_after);

    CREATE TABLE idempotency (
        principal    TEXT NOT NULL,
        key          TEXT NOT NULL,
        request_hash TEXT NOT NULL,
        status       INTEGER,
        response     TEXT,
        created_at   INTEGER NOT NULL,
        PRIMARY KEY (principal, key)
    );
    "#,
    // 4: LLM usage per scope, day and model.
    r#"
    CREATE TABLE llm_usage (
        org_id            TEXT NOT NULL DEFAULT '',
        app_id            TEXT NOT NULL DEFAULT '',
        user_id           TEXT NOT NULL DEFAULT '',
        agent_id          TEXT NOT NULL DEFAULT '',
        run_id            TEXT NOT NULL DEFAULT '',
        day               TEXT NOT NULL,
        model             TEXT NOT NULL,
        runs              INTEGER NOT NULL,
        prompt_tokens     INTEGER NOT NULL,
        completion_tokens INTEGER NOT NULL,
        cost_microdollars INTEGER NOT NULL,
        PRIMARY KEY (org_id, app_id, user_id, agent_id, run_id, day, model)
    );
    "#,
    // 5: the append-only audit log (no memory text, no scope ids below the
    // org), started from the history of earlier writes.
    r#"
    CREATE TABLE audit (
        seq        INTEGER PRIMARY KEY AUTOINCREMENT,
        id         TEXT NOT NULL UNIQUE,
        at         INTEGER NOT NULL,
        actor      TEXT NOT NULL,
        action     TEXT NOT NULL,
        org_id     TEXT,
        target     TEXT,
        request_id TEXT,
        detail     TEXT NOT NULL
    );
    CREATE INDEX audit_org ON audit (org_id, seq);
    INSERT INTO audit (id, at, actor, action, org_id, target, request_id, detail)
        SELECT id, created_at, COALESCE(actor, 'unknown'), 'memory.' || lower(event), org_id, memory_id,
               request_id, json_object('version', version)
        FROM history ORDER BY seq;
    CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit
        BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
    CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit
        BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
    "#,
    // 6: sliding expiry, the sweep's index of expiring current versions, and
    // every version of a memory by id (export, import).
    r#"
    ALTER TABLE memories ADD COLUMN idle_ttl_ms INTEGER;
    CREATE INDEX memories_versions ON memories (id, version);
    CREATE INDEX memories_expiring ON memories (expires_at)
        WHERE expires_at IS NOT NULL AND invalid_at IS NULL;
    "#,
    // 7: re-embedding: each version's vector from the next model, kept
    // beside the current one until the switch (`meta` names the model).
    r#"
    CREATE TABLE reembed (
        memory    INTEGER PRIMARY KEY REFERENCES memories (rowid) ON DELETE CASCADE,
        embedding BLOB NOT NULL
    );
    "#,
    // 8: idempotency records expire (a time to live, purged by the sweeper)
    // and are capped per caller, oldest first.
    r#"
    CREATE INDEX idempotency_age ON idempotency (created_at);
    CREATE INDEX idempotency_caller_age ON idempotency (principal, created_at);
    "#,
    // 9: webhooks and their delivery attempts; deliveries are jobs, and jobs
    // sharing an `ordering` key (one webhook, one memory) run in order. A
    // memory's feedback (Mem0's POSITIVE / NEGATIVE / VERY_NEGATIVE).
    r#"
    CREATE TABLE webhooks (
        id            TEXT PRIMARY KEY,
        url           TEXT NOT NULL,
        events        INTEGER NOT NULL,
        org_id        TEXT,
        app_id        TEXT,
        user_id       TEXT,
        agent_id      TEXT,
        run_id        TEXT,
        name          TEXT,
        description   TEXT,
        format        TEXT NOT NULL,
        project_id    TEXT,
        include_text  INTEGER NOT NULL,
        enabled       INTEGER NOT NULL,
        failures      INTEGER NOT NULL,
        disabled_reason TEXT,
        secret        TEXT NOT NULL,
        created_by    TEXT NOT NULL,
        created_at    INTEGER NOT NULL,
        updated_at    INTEGER NOT NULL
    );
    CREATE TABLE webhook_attempts (
        id          TEXT PRIMARY KEY,
        webhook_id  TEXT NOT NULL REFERENCES webhooks (id) ON DELETE CASCADE,
        delivery_id TEXT NOT NULL,
        event       TEXT NOT NULL,
        attempt     INTEGER NOT NULL,
        outcome     TEXT NOT NULL,
        status_code INTEGER,
        latency_ms  INTEGER NOT NULL,
        error       TEXT,
        at          INTEGER NOT NULL
    );
    CREATE INDEX webhook_attempts_by_hook ON webhook_attempts (webhook_id, id);
    ALTER TABLE jobs ADD COLUMN ordering TEXT;
    CREATE INDEX jobs_ordering ON jobs (ordering, created_at) WHERE ordering IS NOT NULL;
    ALTER TABLE memories ADD COLUMN feedback TEXT;
    "#,
    // 10: an encrypted store's HNSW graph, serialised in parts (graph_snapshot.rs).
    r#"
    CREATE TABLE graph_snapshot (
        part INTEGER PRIMARY KEY,
        data BLOB NOT NULL
    );
    "#,
];

/// The schema version this build writes.
pub const SCHEMA_VERSION: usize = MIGRATIONS.len();

/// Brings the database up to [`SCHEMA_VERSION`]. Refuses a newer database.
pub fn migrate(conn: &mut Connection) -> rusqlite::Result<Result<(), String>> {
    let current: usize =
        conn.query_row("PRAGMA user_version", [], |r| r.get::<_, i64>(0))? as usize;
    if current > SCHEMA_VERSION {
        return Ok(Err(format!(
            "the database has schema version {current}, newer than this build of Engram understands ({SCHEMA_VERSION}); upgrade Engram"
        )));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        tx.commit()?;
    }
    Ok(Ok(()))
}
