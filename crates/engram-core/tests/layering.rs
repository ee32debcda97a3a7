//! Tidy checks on the workspace's layout (like rust-analyzer's `tidy`
//! tests): rules that keep the architecture in ARCHITECTURE.md true and
//! that the compiler cannot enforce across crates.
//!
//! - A port (`engram-core/src/ports/`) imports only domain modules, the
//!   clock and the error type: never the service, the job queue or the
//!   LLM pipeline, so storage and model traits can be read — and
//!   implemented — on their own.
//! - No transport (`engram-server`, the binary's commands) calls the
//!   service's raw add or reaches for the store: adds go through
//!   `JobQueue`, which decides between the LLM pipeline and the verbatim
//!   add, now or as a job, the same way for every transport.
//! - No source file is longer than [`MAX_LINES`], inline `#[cfg(test)]`
//!   modules aside.

use std::path::{Path, PathBuf};

/// Longest source file, not counting an inline test module at its end.
const MAX_LINES: usize = 900;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Every `.rs` file under `dir`, recursively, with its text.
fn sources(dir: &Path) -> Vec<(PathBuf, String)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let path = e.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|x| x == "rs") {
                let text = std::fs::read_to_string(&path).expect("readable source");
                out.push((path, text));
            }
        }
    }
    out.sort();
    assert!(!out.is_empty(), "no sources under {}", dir.display());
    out
}

/// The code of a file without its inline test module and comments.
fn code(text: &str) -> String {
    text.lines()
        .take_while(|l| !l.starts_with("#[cfg(test)]"))
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The `crate::…` module names a file names, in `use` statements and paths
/// (`crate::{a, b::c}` names `a` and `b`).
fn crate_modules(code: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(i) = rest.find("crate::") {
        rest = &rest[i + "crate::".len()..];
        let names = match rest.strip_prefix('{') {
            Some(group) => &group[..group.find('}').unwrap_or(group.len())],
            None => rest,
        };
        let first = |p: &str| -> String {
            p.trim()
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect()
        };
        if rest.starts_with('{') {
            out.extend(names.split(',').map(first).filter(|n| !n.is_empty()));
        } else {
            out.push(first(names));
        }
    }
    out
}

#[test]
fn ports_import_only_the_domain() {
    const ALLOWED: &[&str] = &[
        "ports",
        "memory",
        "webhook",
        "filter",
        "fusion",
        "access",
        "error",
        "clock",
        "Error",
        "ErrorCode",
        "Result",
    ];
    let dir = workspace().join("crates/engram-core/src/ports");
    let mut bad = Vec::new();
    for (path, text) in sources(&dir) {
        let code = code(&text);
        for m in crate_modules(&code) {
            if !ALLOWED.contains(&m.as_str()) {
                bad.push(format!("{}: imports crate::{m}", path.display()));
            }
        }
        for word in ["JobQueue", "Pipeline", "MemoryService"] {
            if code.contains(word) {
                bad.push(format!("{}: names {word}", path.display()));
            }
        }
    }
    assert!(
        bad.is_empty(),
        "ports must not depend on services:\n{}",
        bad.join("\n")
    );
}

/// Calls that add without the add decision, or reach past the service.
const FORBIDDEN_IN_TRANSPORTS: &[(&str, &str)] = &[
    ("memory.add(", "the raw add (use JobQueue::add)"),
    ("service.add(", "the raw add (use JobQueue::add)"),
    ("memory().add(", "the raw add (use JobQueue::add)"),
    (
        ".add_batch(",
        "the raw batch add (use JobQueue::add_verbatim_batch)",
    ),
    (".prepare_add(", "the raw add's preparation"),
    (".store()", "the store behind the service"),
];

/// The transports: the server crate and the binary's commands (its
/// benchmark and evaluation drive the service directly, on purpose).
fn transport_sources() -> Vec<(PathBuf, String)> {
    let root = workspace();
    let mut files = sources(&root.join("crates/engram-server/src"));
    files.extend(
        sources(&root.join("crates/engram/src"))
            .into_iter()
            .filter(|(p, _)| {
                let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
                // bench/eval measure the verbatim path; runtime, serve and
                // reembed build the store and hand it to the service.
                !["bench.rs", "eval.rs", "runtime.rs", "serve.rs", "keys.rs"].contains(&name)
            }),
    );
    files
}

#[test]
fn transports_add_through_the_job_queue_only() {
    let mut bad = Vec::new();
    for (path, text) in transport_sources() {
        let code: String = code(&text).split_whitespace().collect();
        for (pattern, what) in FORBIDDEN_IN_TRANSPORTS {
            let pattern: String = pattern.split_whitespace().collect();
            if code.contains(&pattern) {
                bad.push(format!("{}: calls {what} (`{pattern}`)", path.display()));
            }
        }
    }
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}

#[test]
fn the_transport_check_sees_a_raw_add() {
    // The check itself: a transport calling the raw add is caught.
    let code: String = "let out = self . memory\n  .add(&ctx, input).await?;"
        .split_whitespace()
        .collect();
    assert!(
        FORBIDDEN_IN_TRANSPORTS
            .iter()
            .any(|(p, _)| code.contains(&p.split_whitespace().collect::<String>()))
    );
    assert!(transport_sources().len() > 10, "transports not found");
}

#[test]
fn no_source_file_is_too_long() {
    let root = workspace().join("crates");
    let mut long = Vec::new();
    for (path, text) in sources(&root) {
        let is_src = path.components().any(|c| c.as_os_str() == "src");
        if !is_src {
            continue;
        }
        let lines = text
            .lines()
            .take_while(|l| !l.starts_with("#[cfg(test)]"))
            .count();
        if lines > MAX_LINES {
            long.push(format!("{}: {lines} lines", path.display()));
        }
    }
    assert!(
        long.is_empty(),
        "split these by feature (at most {MAX_LINES} lines each, inline tests aside):\n{}",
        long.join("\n")
    );
}
