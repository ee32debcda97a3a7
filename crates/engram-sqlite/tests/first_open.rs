//! The first connections of a process, opened by several threads at once,
//! all open. SQLCipher finishes its global initialisation only after SQLite
//! already reports itself initialised, so without a guard a keyed connection
//! opened by a second thread in that window fails its `PRAGMA key` with a
//! bare "SQL logic error". A process has one first open, and the window is
//! short, so the test runs the race in many child processes (this same test
//! binary): without the guard a few in a hundred fail.

use std::process::Command;
use std::sync::{Arc, Barrier};

use engram_sqlite::{DbKey, SqliteOptions, SqliteStore};

const CHILD: &str = "ENGRAM_FIRST_OPEN_CHILD";
const TEST: &str = "concurrent_first_opens_of_encrypted_stores_all_succeed";
const PROCESSES: usize = 60;
const THREADS: usize = 24;

/// In a fresh process: `THREADS` threads open keyed stores at the same moment.
fn race_first_opens() -> Vec<String> {
    let dirs: Vec<_> = (0..THREADS).map(|_| tempfile::tempdir().unwrap()).collect();
    let start = Arc::new(Barrier::new(THREADS));
    let handles: Vec<_> = dirs
        .iter()
        .map(|dir| {
            let path = dir.path().to_owned();
            let start = start.clone();
            std::thread::spawn(move || {
                let options = SqliteOptions {
                    // A raw key: no key stretching, so the opens stay close together.
                    key: Some(DbKey::new(&"5a".repeat(32)).unwrap()),
                    readers: 1,
                    ..SqliteOptions::default()
                };
                start.wait();
                SqliteStore::open(&path, options).map(drop)
            })
        })
        .collect();
    handles
        .into_iter()
        .filter_map(|h| h.join().unwrap().err())
        .map(|e| e.message)
        .collect()
}

#[test]
fn concurrent_first_opens_of_encrypted_stores_all_succeed() {
    if std::env::var_os(CHILD).is_some() {
        assert_eq!(race_first_opens(), Vec::<String>::new());
        return;
    }
    let me = std::env::current_exe().unwrap();
    for round in 0..PROCESSES {
        let out = Command::new(&me)
            .args(["--exact", TEST, "--test-threads=1", "--quiet"])
            .env(CHILD, "1")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "process {round} of {PROCESSES}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
