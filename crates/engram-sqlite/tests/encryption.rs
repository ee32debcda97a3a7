//! Encryption at rest: with a key, no file of the data directory holds a
//! memory's text (database, WAL, no graph file); a wrong or missing key is a
//! clear error that leaves every file as it was; `rekey` moves between
//! plaintext, one key and another, and back.

use std::path::Path;

use engram_core::filter::Filter;
use engram_core::memory::Scope;
use engram_core::ports::{Store, Visibility, WriteOp};
use engram_sqlite::{DbKey, GRAPH_FILE, SqliteOptions, SqliteStore, rekey};
use engram_store_tests::{insert, memory, model, user, vector};

const SECRET: &str = "Zelda's passport number is X93-417-PLUM";
const MARKER: &[u8] = b"X93-417-PLUM";

fn key(k: &str) -> DbKey {
    DbKey::new(k).unwrap()
}

fn raw() -> DbKey {
    key("3f1c9a4be07d25586a1e9f0c4d7b2e8a19c6f3b5d0e7a2c4b8f1d6e3a9c5b7d2")
}

fn options(k: Option<DbKey>) -> SqliteOptions {
    SqliteOptions {
        key: k,
        ..SqliteOptions::default()
    }
}

/// Every file under `dir` (recursively), with its bytes.
fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(files(&path));
        } else {
            out.push((path.display().to_string(), std::fs::read(&path).unwrap()));
        }
    }
    out.sort();
    out
}

fn holding(dir: &Path, needle: &[u8]) -> Vec<String> {
    files(dir)
        .into_iter()
        .filter(|(_, bytes)| bytes.windows(needle.len()).any(|w| w == needle))
        .map(|(name, _)| name)
        .collect()
}

async fn write_secret(dir: &Path, k: Option<DbKey>) {
    let store = SqliteStore::open_async(dir.to_owned(), options(k))
        .await
        .unwrap();
    store.bind_model(&model()).await.unwrap();
    let m = memory(SECRET, user("zelda"), 0);
    store.apply(vec![insert(&m, vector(0, 0.0))]).await.unwrap();
    let other = memory("Zelda likes hiking", user("zelda"), 1);
    store
        .apply(vec![insert(&other, vector(1, 0.0))])
        .await
        .unwrap();
    store.flush().await.unwrap();
}

async fn read_secret(dir: &Path, k: Option<DbKey>) -> engram_core::Result<Vec<String>> {
    let store = SqliteStore::open_async(dir.to_owned(), options(k)).await?;
    let vis = Visibility {
        now: jiff::Timestamp::now(),
    };
    let filter = Filter::from_scope(&Scope {
        user_id: Some("zelda".into()),
        ..Default::default()
    });
    let hits = store
        .vector_search(&filter, vis, &vector(0, 0.0), 1)
        .await?;
    let found = store
        .get_many(
            &hits.hits.iter().map(|(id, _)| *id).collect::<Vec<_>>(),
            vis,
        )
        .await?;
    Ok(found.into_iter().map(|m| m.text).collect())
}

#[tokio::test]
async fn an_encrypted_directory_holds_no_memory_text() {
    let dir = tempfile::tempdir().unwrap();
    write_secret(dir.path(), Some(raw())).await;
    let names: Vec<String> = files(dir.path()).into_iter().map(|(n, _)| n).collect();
    assert!(names.iter().any(|n| n.ends_with("engram.db")), "{names:?}");
    assert!(
        !dir.path().join(GRAPH_FILE).exists(),
        "no plaintext graph: {names:?}"
    );
    assert_eq!(holding(dir.path(), MARKER), Vec::<String>::new());
    assert_eq!(holding(dir.path(), b"hiking"), Vec::<String>::new());
    // The same key reads it back (the graph rebuilt from the database).
    assert_eq!(
        read_secret(dir.path(), Some(raw())).await.unwrap(),
        vec![SECRET]
    );

    // The control: the same writes without a key leave the text in the files.
    let plain = tempfile::tempdir().unwrap();
    write_secret(plain.path(), None).await;
    assert!(!holding(plain.path(), MARKER).is_empty());
}

/// An encrypted store keeps its graph inside the encrypted database, so a
/// restart loads it instead of rebuilding it — and still no file holds the
/// memory text or a plaintext graph.
#[tokio::test]
async fn an_encrypted_store_reloads_its_graph_from_inside_the_database() {
    let dir = tempfile::tempdir().unwrap();
    write_secret(dir.path(), Some(raw())).await;
    let store = SqliteStore::open_async(dir.path().to_owned(), options(Some(raw())))
        .await
        .unwrap();
    assert!(store.graph_loaded(), "the snapshot was loaded, not rebuilt");
    drop(store);
    assert!(!dir.path().join(GRAPH_FILE).exists());
    assert_eq!(holding(dir.path(), MARKER), Vec::<String>::new());
    assert_eq!(
        read_secret(dir.path(), Some(raw())).await.unwrap(),
        vec![SECRET]
    );
    // The plaintext store loads its file the same way.
    let plain = tempfile::tempdir().unwrap();
    write_secret(plain.path(), None).await;
    let store = SqliteStore::open_async(plain.path().to_owned(), options(None))
        .await
        .unwrap();
    assert!(store.graph_loaded());
}

#[test]
fn keys_with_control_characters_are_refused() {
    assert!(DbKey::new("abc\u{0}def").is_err());
    assert!(DbKey::new("abc\ndef").is_err());
    assert!(DbKey::new("   ").is_err());
    assert!(format!("{:?}", key("hunter2")).find("hunter2").is_none());
}

#[tokio::test]
async fn a_wrong_or_missing_key_is_a_clear_error_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    write_secret(dir.path(), Some(raw())).await;
    let before = files(dir.path());
    let e = read_secret(dir.path(), Some(key("not the key")))
        .await
        .unwrap_err();
    assert!(e.message.contains("wrong encryption key"), "{}", e.message);
    let e = read_secret(dir.path(), None).await.unwrap_err();
    assert!(e.message.contains("it is encrypted"), "{}", e.message);
    let e = SqliteStore::open_async(dir.path().to_owned(), options(Some(key("nope"))))
        .await
        .err()
        .unwrap();
    assert!(e.message.contains("wrong encryption key"), "{}", e.message);
    assert!(files(dir.path()) == before, "a refused open wrote nothing");
    assert_eq!(
        read_secret(dir.path(), Some(raw())).await.unwrap(),
        vec![SECRET]
    );
}

#[tokio::test]
async fn rekey_encrypts_changes_the_key_and_decrypts() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write_secret(d, None).await;
    assert!(d.join(GRAPH_FILE).exists());
    assert!(!holding(d, MARKER).is_empty());

    // Plaintext → encrypted (a passphrase): the text and the graph file are gone.
    let pass = key("correct horse battery staple");
    assert_eq!(rekey(d, None, Some(&pass)).unwrap(), 2);
    assert_eq!(holding(d, MARKER), Vec::<String>::new());
    assert!(!d.join(GRAPH_FILE).exists());
    assert_eq!(
        read_secret(d, Some(pass.clone())).await.unwrap(),
        vec![SECRET]
    );
    assert!(read_secret(d, None).await.is_err());

    // Passphrase → raw key: only the new key opens it.
    rekey(d, Some(&pass), Some(&raw())).unwrap();
    assert!(read_secret(d, Some(pass.clone())).await.is_err());
    assert_eq!(read_secret(d, Some(raw())).await.unwrap(), vec![SECRET]);
    // A wrong current key changes nothing.
    let e = rekey(d, Some(&pass), None).unwrap_err();
    assert!(e.message.contains("wrong encryption key"), "{}", e.message);
    assert_eq!(read_secret(d, Some(raw())).await.unwrap(), vec![SECRET]);

    // Encrypted → plaintext, and the store still migrates and writes.
    rekey(d, Some(&raw()), None).unwrap();
    assert_eq!(read_secret(d, None).await.unwrap(), vec![SECRET]);
    let store = SqliteStore::open_async(d.to_owned(), options(None))
        .await
        .unwrap();
    let m = memory("Zelda moved to Oslo", user("zelda"), 2);
    store
        .apply(vec![WriteOp::Insert {
            history: engram_core::memory::HistoryEvent {
                id: uuid::Uuid::now_v7(),
                memory_id: m.id,
                event: engram_core::memory::Event::Add,
                old_text: None,
                new_text: Some(m.text.clone()),
                version: 1,
                actor: None,
                reason: None,
                request_id: None,
                scope: m.scope.clone(),
                created_at: m.created_at,
            },
            memory: m,
            embedding: vector(2, 0.0),
        }])
        .await
        .unwrap();
}
