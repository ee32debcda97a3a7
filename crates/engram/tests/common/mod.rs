//! Running the real binary in tests: a server process with its logs, keys,
//! and request helpers (shared by `ops.rs` and `nodes.rs`).
#![allow(dead_code)] // each test binary uses its own share

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_engram");

pub struct Server {
    pub child: Child,
    pub url: String,
    pub addr: String,
    /// Lines the server logs on stderr.
    pub log: mpsc::Receiver<String>,
}

pub fn create_key(data: &Path) -> String {
    create_key_with(data, &[])
}

/// An admin key for org `acme`, with more `keys create` flags (`--store …`).
pub fn create_key_with(data: &Path, extra: &[&str]) -> String {
    create_key_as(data, "admin", extra)
}

/// A key with `role` for org `acme`, with more `keys create` flags.
pub fn create_key_as(data: &Path, role: &str, extra: &[&str]) -> String {
    let out = Command::new(BIN)
        .args([
            "keys",
            "create",
            "--org",
            "acme",
            "--role",
            role,
            "--data-dir",
        ])
        .arg(data)
        .args(extra)
        .env("ENGRAM_LOG", "warn")
        .output()
        .expect("engram keys create");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

impl Server {
    pub fn start(data: &Path, log_filter: &str) -> Server {
        Server::start_with(data, log_filter, &[])
    }

    /// With more `serve` flags.
    pub fn start_with(data: &Path, log_filter: &str, extra: &[&str]) -> Server {
        let mut child = Command::new(BIN)
            // The checks below read every memory back quickly: no rate limit.
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--rate-limit-per-minute",
                "0",
            ])
            .args(extra)
            .arg("--data-dir")
            .arg(data)
            .env("ENGRAM_LOG", log_filter)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start engram serve");
        let (tx, log) = mpsc::channel();
        let stderr = child.stderr.take().expect("stderr");
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("read the listening line");
        let url = line
            .trim()
            .strip_prefix("engram listening on ")
            .unwrap_or_else(|| panic!("unexpected: {line}"))
            .to_owned();
        let addr = url.trim_start_matches("http://").to_owned();
        Server {
            child,
            url,
            addr,
            log,
        }
    }

    pub fn signal(&self, sig: &str) {
        Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .expect("kill");
    }

    pub fn wait(&mut self, limit: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(Instant::now() < deadline, "server did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until a log line contains every needle.
    pub fn wait_for_log(&self, needles: &[&str], limit: Duration) {
        let deadline = Instant::now() + limit;
        while let Ok(line) = self
            .log
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            if needles.iter().all(|n| line.contains(n)) {
                return;
            }
        }
        panic!("no log line with {needles:?}");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// GET `url` with `key`, as JSON.
pub async fn get_json(http: &reqwest::Client, url: &str, key: &str) -> Value {
    http.get(url)
        .bearer_auth(key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// POST `body` to `url` with `key`, the answer as JSON.
pub async fn post_json(http: &reqwest::Client, url: &str, key: &str, body: &Value) -> Value {
    http.post(url)
        .bearer_auth(key)
        .json(body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// xorshift64*.
pub fn next(state: &mut u64) -> u64 {
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    state.wrapping_mul(0x2545_F491_4F6C_DD1D)
}

/// A sentence unlike its neighbours, so near-duplicate detection keeps each one.
pub fn sentence(n: u64) -> String {
    const WORDS: [&str; 32] = [
        "harbour",
        "violin",
        "glacier",
        "pepper",
        "lantern",
        "orchid",
        "tractor",
        "meteor",
        "saddle",
        "cobalt",
        "walnut",
        "sapphire",
        "tundra",
        "pelican",
        "quartz",
        "biscuit",
        "canyon",
        "falcon",
        "marble",
        "nectar",
        "origami",
        "pistachio",
        "rhubarb",
        "sequoia",
        "thimble",
        "umbrella",
        "velvet",
        "wombat",
        "yogurt",
        "zeppelin",
        "anchor",
        "bamboo",
    ];
    let mut state = n.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let words: Vec<&str> = (0..7)
        .map(|_| WORDS[(next(&mut state) % WORDS.len() as u64) as usize])
        .collect();
    format!("Record {n}: {}.", words.join(" "))
}
