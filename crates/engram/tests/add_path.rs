//! The binary's own transports take the same door as the server's: with an
//! LLM configured, `engram add` and the MCP `add_memory` tool over stdio
//! queue the add as a job (as `POST /v1/memories` does) instead of storing
//! the text verbatim. The real binary and model; the LLM is a scripted
//! OpenAI-compatible server on a real socket.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use engram_testkit::{Reply, ScriptedLlm};
use serde_json::{Value, json};

mod common;

use common::BIN;

/// Extraction answers the last user line as one fact, prefixed "Fact: ";
/// consolidation answers ADD.
async fn llm() -> ScriptedLlm {
    let llm = ScriptedLlm::start().await;
    llm.respond_with(|_, body| {
        let system = body["messages"][0]["content"].as_str().unwrap_or("");
        if system.starts_with("You extract") {
            let said = body["messages"][1]["content"].as_str().unwrap_or("");
            let line = said
                .lines()
                .last()
                .unwrap_or("")
                .trim_start_matches("user: ");
            Reply::chat_json(
                json!({"facts": [{"text": format!("Fact: {line}"), "kind": "semantic",
                "entities": [], "valid_at": null, "speaker": "user"}]}),
            )
        } else {
            Reply::chat_json(
                json!({"operations": [{"fact": "f1", "event": "ADD", "target": null,
                "text": null, "reason": "new"}]}),
            )
        }
    });
    llm
}

fn cli(args: Vec<String>) -> (bool, String, String) {
    let out = Command::new(BIN)
        .args(&args)
        .env("ENGRAM_LOG", "warn")
        .output()
        .expect("run engram");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_add_with_an_llm_queues_a_job_and_wait_runs_it() {
    let llm = llm().await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data").display().to_string();
    let base: Vec<String> = ["add", "--data-dir", &data, "--user", "ana"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let with_llm = |extra: &[&str], text: &str| -> Vec<String> {
        let mut a = base.clone();
        a.extend(["--llm-base-url", llm.url(), "--llm-model", "scripted"].map(String::from));
        a.extend(extra.iter().map(|s| s.to_string()));
        a.push(text.to_owned());
        a
    };

    let args = with_llm(&[], "I moved to Porto.");
    let (ok, out, err) = tokio::task::spawn_blocking(move || cli(args))
        .await
        .unwrap();
    assert!(ok, "{err}");
    assert!(out.starts_with("QUEUED job "), "{out}");
    assert_eq!(llm.received_count(), 0, "a queued add calls no LLM yet");

    let args = with_llm(&["--wait"], "I play the cello.");
    let (ok, out, err) = tokio::task::spawn_blocking(move || cli(args))
        .await
        .unwrap();
    assert!(ok, "{err}");
    // --wait runs the queue until its job is done: the earlier job may run
    // first, then this one; this add's own fact is printed.
    assert!(out.contains("ADD "), "{out}");
    assert!(out.contains("Fact: I play the cello."), "{out}");

    // Without an LLM the same command stores the text verbatim.
    let mut args = base.clone();
    args.push("Verbatim text.".into());
    let (ok, out, err) = tokio::task::spawn_blocking(move || cli(args))
        .await
        .unwrap();
    assert!(ok, "{err}");
    assert!(
        out.starts_with("ADD ") && out.contains("Verbatim text."),
        "{out}"
    );
}

/// A line-delimited JSON-RPC client of `engram mcp` on stdio.
struct McpStdio {
    child: std::process::Child,
    lines: std::io::Lines<BufReader<std::process::ChildStdout>>,
}

impl McpStdio {
    fn send(&mut self, msg: Value) {
        let stdin = self.child.stdin.as_mut().unwrap();
        writeln!(stdin, "{msg}").unwrap();
        stdin.flush().unwrap();
    }

    /// The response to request `id`.
    fn call(&mut self, id: u64, method: &str, params: Value) -> Value {
        self.send(json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}));
        loop {
            let line = self
                .lines
                .next()
                .expect("engram mcp closed stdout")
                .unwrap();
            let v: Value = serde_json::from_str(&line).unwrap();
            if v["id"] == json!(id) {
                return v;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mcp_stdio_with_an_llm_queues_the_add_and_its_workers_run_it() {
    let llm = llm().await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data").display().to_string();
    let url = llm.url().to_owned();
    let listed = tokio::task::spawn_blocking(move || {
        let mut child = Command::new(BIN)
            .args(["mcp", "--data-dir", &data, "--user-id", "ana"])
            .args([
                "--llm-base-url",
                &url,
                "--llm-model",
                "scripted",
                "--workers",
                "1",
            ])
            .env("ENGRAM_LOG", "warn")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut mcp = McpStdio {
            child,
            lines: BufReader::new(stdout).lines(),
        };
        let init = mcp.call(
            0,
            "initialize",
            json!({"protocolVersion": "2025-06-18", "capabilities": {},
                "clientInfo": {"name": "add-path-test", "version": "1"}}),
        );
        assert!(init.get("result").is_some(), "{init}");
        mcp.send(json!({"jsonrpc": "2.0", "method": "notifications/initialized"}));
        let added = mcp.call(
            1,
            "tools/call",
            json!({"name": "add_memory", "arguments": {"text": "I moved to Porto."}}),
        );
        let out = &added["result"]["structuredContent"];
        assert_eq!(out["results"], json!([]), "{added}");
        assert_eq!(out["job"]["status"], "queued", "{added}");
        // This process's worker runs the job: the extracted fact appears.
        let started = Instant::now();
        let mut id = 2;
        let listed = loop {
            let r = mcp.call(
                id,
                "tools/call",
                json!({"name": "list_memories", "arguments": {}}),
            );
            id += 1;
            let memories = r["result"]["structuredContent"]["results"].clone();
            if memories.as_array().is_some_and(|m| !m.is_empty()) {
                break memories;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "the queued add never ran: {r}"
            );
            std::thread::sleep(Duration::from_millis(100));
        };
        drop(mcp.child.stdin.take());
        let status = mcp.child.wait().unwrap();
        assert!(status.success());
        listed
    })
    .await
    .unwrap();
    assert_eq!(listed[0]["memory"], "Fact: I moved to Porto.", "{listed}");
}
