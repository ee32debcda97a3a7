//! Operability of the real binary: graceful shutdown drains in-flight
//! requests and refuses new ones; `kill -9` at random moments loses no
//! acknowledged write and leaves a database that passes `integrity_check`.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{Server, create_key, get_json, next, sentence};

use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_requests_and_refuses_new_ones() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let key = create_key(&data);
    // Generous limits: the slow request must finish however loaded the machine.
    let mut server = Server::start_with(
        &data,
        "warn,engram_server::request_id=debug",
        &[
            "--request-timeout-secs",
            "600",
            "--shutdown-timeout-secs",
            "600",
        ],
    );
    // A slow request: 100 long turns to embed.
    let messages: Vec<Value> = (0..100)
        .map(|i| {
            let turn = format!(
                "Turn {i}: the quarterly planning notes mention budget line {i}, the Lisbon office move, \
                 hiring for the data team and a long discussion about on-call rotations. "
            )
            .repeat(8);
            json!({"role": "user", "content": turn})
        })
        .collect();
    let body = json!({"messages": messages, "user_id": "drain"});
    let http = reqwest::Client::new();
    let slow = tokio::spawn({
        let req = http
            .post(format!("{}/v1/memories", server.url))
            .bearer_auth(&key)
            .json(&body);
        async move {
            let resp = req
                .send()
                .await
                .expect("the in-flight request gets an answer");
            let status = resp.status();
            (status, resp.json::<Value>().await.unwrap_or(Value::Null))
        }
    });
    server.wait_for_log(
        &["request started", "path=/v1/memories"],
        Duration::from_secs(30),
    );
    server.signal("-TERM");
    // New connections are refused while the slow request is still running.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match tokio::net::TcpStream::connect(&server.addr).await {
            // Refused outright, or reset when the attempt raced the listener's close.
            Err(e) => {
                assert!(
                    matches!(
                        e.kind(),
                        std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::ConnectionReset
                    ),
                    "{e}"
                );
                break;
            }
            Ok(_) => {
                assert!(Instant::now() < deadline, "still accepting after SIGTERM");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    assert!(
        !slow.is_finished(),
        "the slow request must still be in flight (make it slower)"
    );
    let (status, added) = slow.await.unwrap();
    assert!(status.is_success(), "{status} {added}");
    let n = added["results"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["event"] == "ADD")
        .count();
    assert!(n >= 10, "{added}");
    let exit = server.wait(Duration::from_secs(60));
    assert!(exit.success(), "exit 0 after draining: {exit:?}");

    // What the drained request wrote is there after a restart.
    let server = Server::start(&data, "warn");
    let resp = http
        .get(format!(
            "{}/v1/memories?user_id=drain&limit=1000",
            server.url
        ))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    let listed: Value = resp.json().await.unwrap();
    assert_eq!(listed["results"].as_array().unwrap().len(), n);
}

fn integrity_check(data: &Path) -> String {
    let conn = rusqlite::Connection::open(data.join("engram.db")).unwrap();
    conn.query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_never_loses_an_acknowledged_write() {
    let rounds: usize = std::env::var("ENGRAM_KILL_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(7)
        | 1;
    eprintln!("kill -9: seed {seed}, {rounds} rounds");
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let key = create_key(&data);
    let http = reqwest::Client::new();
    let mut acked: Vec<(String, Option<String>)> = Vec::new();
    let mut in_doubt = 0usize;
    for round in 0..rounds {
        let server = Server::start(&data, "warn");
        // Everything acknowledged so far is there, with its text.
        for (id, text) in &acked {
            let resp = http
                .get(format!("{}/v1/memories/{id}", server.url))
                .bearer_auth(&key)
                .send()
                .await
                .unwrap();
            assert_eq!(
                resp.status(),
                200,
                "round {round}: acknowledged memory {id} is missing"
            );
            let m: Value = resp.json().await.unwrap();
            if let Some(text) = text {
                assert_eq!(m["memory"].as_str(), Some(text.as_str()));
            }
        }
        // Stream adds from two clients; kill -9 at a random moment.
        let kill_after = Duration::from_millis(50 + next(&mut seed) % 400);
        let writers: Vec<_> = (0..2)
            .map(|c| {
                let (http, url, key) = (http.clone(), server.url.clone(), key.clone());
                let c = c as u64;
                tokio::spawn(async move {
                    let mut ok = Vec::new();
                    let mut failed = 0;
                    for i in 0u64.. {
                        let text = sentence(round as u64 * 100_000 + c * 10_000 + i);
                        let sent = http
                            .post(format!("{url}/v1/memories"))
                            .bearer_auth(&key)
                            .json(&json!({"text": &text, "user_id": format!("u{c}")}))
                            .send()
                            .await;
                        let Ok(resp) = sent else {
                            failed += 1;
                            break;
                        };
                        if resp.status() != 200 {
                            failed += 1;
                            break;
                        }
                        let Ok(body) = resp.json::<Value>().await else {
                            failed += 1;
                            break;
                        };
                        let id = body["results"][0]["id"].as_str().unwrap().to_owned();
                        // A near-duplicate (NOOP) acknowledges an existing memory: it must exist too.
                        let text = (body["results"][0]["event"] == "ADD").then_some(text);
                        ok.push((id, text));
                    }
                    (ok, failed)
                })
            })
            .collect();
        tokio::time::sleep(kill_after).await;
        server.signal("-KILL");
        for w in writers {
            let (ok, failed) = w.await.unwrap();
            acked.extend(ok);
            in_doubt += failed;
        }
        drop(server);
        let report = integrity_check(&data);
        assert_eq!(report, "ok", "round {round}: integrity_check after kill -9");
    }
    // A last start: every acknowledged write is found by search as well.
    let server = Server::start(&data, "warn");
    let added: Vec<_> = acked
        .iter()
        .filter_map(|(id, t)| Some((id, t.as_ref()?)))
        .collect();
    for (id, text) in added.iter().rev().take(20) {
        let resp = http
            .post(format!("{}/v1/memories/search", server.url))
            .bearer_auth(&key)
            .json(&json!({"query": text, "filters": {"user_id": {"in": ["u0", "u1"]}}, "top_k": 3}))
            .send()
            .await
            .unwrap();
        let hits: Value = resp.json().await.unwrap();
        assert_eq!(
            hits["results"][0]["id"].as_str(),
            Some(id.as_str()),
            "{hits}"
        );
    }
    eprintln!(
        "kill -9: {rounds} rounds, {} acknowledged writes all present after restart, {in_doubt} requests cut off unanswered, integrity_check ok each round",
        acked.len()
    );
    assert!(acked.len() >= rounds * 2, "too few writes to mean anything");
}

/// Starts a node with workers on `data`, whose queue was filled by a node
/// without, and kills it (-9) as soon as its first job is done: the kill lands
/// mid-queue however fast or slow the machine. Returns how many jobs were
/// still queued just before the kill.
async fn kill_mid_queue(data: &Path, flags: &[&str], http: &reqwest::Client, key: &str) -> usize {
    let server = Server::start_with(data, "warn", flags);
    let jobs = |state: &str| format!("{}/v1/jobs?state={state}&limit=1000", server.url);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let done = get_json(http, &jobs("done"), key).await;
        if !done["results"].as_array().unwrap().is_empty() {
            let queued = get_json(http, &jobs("queued"), key).await;
            server.signal("-KILL");
            return queued["results"].as_array().unwrap().len();
        }
        assert!(Instant::now() < deadline, "no job finished: {done}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_queue_then_every_job_completes_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let key = create_key(&data);
    let http = reqwest::Client::new();
    // Queued by a node without workers: nothing runs before the kill is set up.
    let server = Server::start_with(&data, "warn", &["--workers", "0"]);
    let n = 120u64;
    let mut jobs = Vec::new();
    let started = Instant::now();
    for i in 0..n {
        let resp = http
            .post(format!("{}/v1/memories", server.url))
            .bearer_auth(&key)
            .json(&json!({"text": sentence(7_000_000 + i), "user_id": "queue", "async": true}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 202);
        let v: Value = resp.json().await.unwrap();
        jobs.push(v["job_id"].as_str().unwrap().to_owned());
    }
    let accept_ms = started.elapsed().as_secs_f64() * 1e3 / n as f64;
    drop(server);
    let left = kill_mid_queue(&data, &[], &http, &key).await;
    assert!(left > 0, "the kill must come mid-queue");
    assert_eq!(integrity_check(&data), "ok");

    let server = Server::start(&data, "warn");
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut results = Vec::new();
    for job in &jobs {
        loop {
            let j = get_json(&http, &format!("{}/v1/jobs/{job}", server.url), &key).await;
            if j["status"] == "done" {
                results.push(j["result"]["results"][0].clone());
                break;
            }
            assert!(j["status"] != "dead", "{j}");
            assert!(Instant::now() < deadline, "job {job} never finished: {j}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    // Exactly once: every job's own run added its memory (a second run would
    // have found the first one's and answered NOOP), one memory per job.
    assert!(results.iter().all(|r| r["event"] == "ADD"), "{results:?}");
    let mut ids: Vec<&str> = results.iter().map(|r| r["id"].as_str().unwrap()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), jobs.len());
    let listed = get_json(
        &http,
        &format!("{}/v1/memories?user_id=queue&limit=1000", server.url),
        &key,
    )
    .await;
    assert_eq!(listed["results"].as_array().unwrap().len(), jobs.len());
    eprintln!(
        "queue: {n} async adds accepted at {accept_ms:.2} ms each (202, debug build), kill -9 with {left} still queued, all {n} completed exactly once after restart"
    );
}

/// The same with the LLM pipeline: a scripted provider (a real socket) answers
/// every extraction with the message as one fact and every consolidation with
/// ADD, a little slowly. A job that ran twice
/// would leave two memories for one message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_queue_with_the_llm_then_every_job_completes_exactly_once() {
    use engram_testkit::{Reply, ScriptedLlm};
    let llm = ScriptedLlm::start().await;
    llm.respond_with(|_, body| {
        let system = body["messages"][0]["content"].as_str().unwrap_or("");
        let reply = if system.starts_with("You extract") {
            let said = body["messages"][1]["content"].as_str().unwrap_or("");
            let fact = said
                .lines()
                .last()
                .unwrap_or("")
                .trim_start_matches("user: ");
            Reply::chat_json(
                json!({"facts": [{"text": fact, "kind": "semantic", "entities": [],
                "valid_at": null, "speaker": "user"}]}),
            )
        } else {
            Reply::chat_json(
                json!({"operations": [{"fact": "f1", "event": "ADD", "target": null,
                "text": null, "reason": "new"}]}),
            )
        };
        reply.after(Duration::from_millis(20))
    });
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let key = create_key(&data);
    let http = reqwest::Client::new();
    let llm_flags = ["--llm-base-url", llm.url(), "--llm-model", "scripted"];
    let no_workers = [&llm_flags[..], &["--workers", "0"]].concat();
    let server = Server::start_with(&data, "warn", &no_workers);
    let url = server.url.clone();
    let n = 40u64;
    let mut jobs = Vec::new();
    for i in 0..n {
        let resp = http
            .post(format!("{url}/v1/memories"))
            .bearer_auth(&key)
            .json(&json!({"text": sentence(9_000_000 + i), "user_id": "llmq"}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 202, "async by default with an LLM");
        let v: Value = resp.json().await.unwrap();
        jobs.push(v["job_id"].as_str().unwrap().to_owned());
    }
    drop(server);
    let left = kill_mid_queue(&data, &llm_flags, &http, &key).await;
    assert!(left > 0, "the kill must come mid-queue");
    assert_eq!(integrity_check(&data), "ok");

    let server = Server::start_with(&data, "warn", &llm_flags);
    let url = server.url.clone();
    let deadline = Instant::now() + Duration::from_secs(120);
    for job in &jobs {
        loop {
            let j = get_json(&http, &format!("{url}/v1/jobs/{job}"), &key).await;
            if j["status"] == "done" {
                assert_eq!(j["result"]["results"][0]["event"], "ADD", "{j}");
                break;
            }
            assert!(j["status"] != "dead", "{j}");
            assert!(Instant::now() < deadline, "job {job} never finished: {j}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let listed = get_json(
        &http,
        &format!("{url}/v1/memories?user_id=llmq&limit=1000"),
        &key,
    )
    .await;
    let mut texts: Vec<&str> = listed["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["memory"].as_str().unwrap())
        .collect();
    texts.sort();
    let before = texts.len();
    texts.dedup();
    assert_eq!(
        (before, texts.len()),
        (jobs.len(), jobs.len()),
        "one memory per message, none twice"
    );
    drop(server);
    eprintln!(
        "llm queue: {n} async adds through the LLM pipeline, kill -9 with {left} queued, all completed exactly once"
    );
}
