//! Erasure and the audit trail through the real binary on a real data
//! directory: after `DELETE /v1/users/{id}` (with its compaction) the erased
//! words are in no file of the data directory — every file's raw bytes are
//! scanned — while another user's words still are; the audit log says that
//! an erasure happened and by whom, and nothing about whom.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{Server, create_key, get_json};
use serde_json::{Value, json};

/// Words that occur nowhere else (the keyword index stores them lowercased).
const ERIN: &str = "quixotrembly";
const FRANK: &str = "zanzibarquo";

/// Every file under `dir` whose bytes contain `needle` (ASCII, any case).
fn files_containing(dir: &Path, needle: &str) -> Vec<String> {
    let needle = needle.to_ascii_lowercase().into_bytes();
    let mut hits = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let bytes = std::fs::read(&path).unwrap().to_ascii_lowercase();
            if bytes.windows(needle.len()).any(|w| w == needle.as_slice()) {
                hits.push(path.display().to_string());
            }
        }
    }
    hits
}

async fn send(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: String,
    key: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = http.request(method, url).bearer_auth(key);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erasure_leaves_no_byte_behind_and_the_audit_keeps_no_name() {
    use reqwest::Method;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let admin = create_key(&data);
    let server = Server::start(&data, "warn");
    let http = reqwest::Client::new();
    let url = |p: &str| format!("{}{p}", server.url);

    // Erin's memories leave traces everywhere: two versions, an idempotent
    // add (stored response), an async add (job payload and result), searches.
    let (s, added) = send(
        &http,
        Method::POST,
        url("/v1/memories"),
        &admin,
        Some(json!({"text": format!("Erin keeps her {ERIN} diary in the blue drawer"), "user_id": "erin", "agent_id": "helper"})),
    )
    .await;
    assert_eq!(s, 200, "{added}");
    let id = added["results"][0]["id"].as_str().unwrap().to_owned();
    let (s, _) = send(
        &http,
        Method::PATCH,
        url(&format!("/v1/memories/{id}")),
        &admin,
        Some(json!({"text": format!("Erin moved her {ERIN} diary to the attic")})),
    )
    .await;
    assert_eq!(s, 200);
    let resp = http
        .post(url("/v1/memories"))
        .bearer_auth(&admin)
        .header("Idempotency-Key", "erin-1")
        .json(
            &json!({"text": format!("Erin's {ERIN} password hint is her cat"), "user_id": "erin"}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let (s, job) = send(
        &http,
        Method::POST,
        url("/v1/memories"),
        &admin,
        Some(json!({"text": format!("Erin's {ERIN} appointment is on Friday"), "user_id": "erin", "async": true})),
    )
    .await;
    assert_eq!(s, 202, "{job}");
    let job_id = job["job_id"].as_str().unwrap().to_owned();
    let deadline = Instant::now() + Duration::from_secs(30);
    while get_json(&http, &url(&format!("/v1/jobs/{job_id}")), &admin).await["status"] != "done" {
        assert!(Instant::now() < deadline, "the job never ran");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (s, _) = send(
        &http,
        Method::POST,
        url("/v1/memories/search"),
        &admin,
        Some(json!({"query": format!("where is the {ERIN} diary?"), "user_id": "erin"})),
    )
    .await;
    assert_eq!(s, 200);
    // Frank's memory must survive, and proves the scan sees plain text.
    let (s, _) = send(
        &http,
        Method::POST,
        url("/v1/memories"),
        &admin,
        Some(
            json!({"text": format!("Frank's locker holds the {FRANK} trophy"), "user_id": "frank"}),
        ),
    )
    .await;
    assert_eq!(s, 200);

    // Who may erase: a read-only key may not; frank's own key may not erase erin.
    let (_, ro) = send(
        &http,
        Method::POST,
        url("/v1/keys"),
        &admin,
        Some(json!({"name": "ro", "role": "read_only"})),
    )
    .await;
    let (_, frank_key) = send(
        &http,
        Method::POST,
        url("/v1/keys"),
        &admin,
        Some(json!({"name": "frank", "role": "read_write", "user_id": "frank"})),
    )
    .await;
    let (ro, frank_key) = (
        ro["key"].as_str().unwrap(),
        frank_key["key"].as_str().unwrap(),
    );
    let (s, body) = send(&http, Method::DELETE, url("/v1/users/erin"), ro, None).await;
    assert_eq!(s, 403, "{body}");
    let (s, _) = send(
        &http,
        Method::DELETE,
        url("/v1/users/erin"),
        frank_key,
        None,
    )
    .await;
    assert_eq!(s, 403);
    let (s, _) = send(&http, Method::GET, url("/v1/audit"), ro, None).await;
    assert_eq!(s, 403, "the audit log is for admins");

    let (s, receipt) = send(&http, Method::DELETE, url("/v1/users/erin"), &admin, None).await;
    assert_eq!(s, 200, "{receipt}");
    let erased = &receipt["erased"];
    assert_eq!(erased["memories"], 3, "{receipt}");
    assert_eq!(erased["versions"], 4, "{receipt}");
    assert_eq!(erased["history_events"], 4, "{receipt}");
    assert_eq!(erased["jobs"], 1, "{receipt}");
    assert!(
        erased["idempotency_records"].as_u64().unwrap() >= 1,
        "{receipt}"
    );
    // The compaction is the node's background job (never inline in the
    // request); the server is stopped right after, and a graceful stop
    // finishes it: the byte scan below proves it.
    assert_eq!(receipt["compaction"], "scheduled", "{receipt}");
    assert_eq!(
        (receipt["field"].as_str(), receipt["id"].as_str()),
        (Some("user_id"), Some("erin"))
    );
    eprintln!("erasure receipt: {receipt}");

    let listed = get_json(&http, &url("/v1/memories?user_id=erin"), &admin).await;
    assert_eq!(listed["results"].as_array().unwrap().len(), 0);
    let (s, _) = send(
        &http,
        Method::GET,
        url(&format!("/v1/memories/{id}/history")),
        &admin,
        None,
    )
    .await;
    assert_eq!(s, 404, "no history left");
    let (s, _) = send(
        &http,
        Method::GET,
        url(&format!("/v1/jobs/{job_id}")),
        &admin,
        None,
    )
    .await;
    assert_eq!(s, 404, "no job left");

    // The audit: every write and admin action, the erasure with its counts, no name, no text.
    let first = get_json(&http, &url("/v1/audit?limit=3"), &admin).await;
    assert_eq!(first["results"].as_array().unwrap().len(), 3);
    let cursor = first["next_cursor"].as_str().unwrap();
    let rest = get_json(
        &http,
        &url(&format!("/v1/audit?cursor={cursor}&limit=1000")),
        &admin,
    )
    .await;
    let mut events: Vec<Value> = first["results"].as_array().unwrap().clone();
    events.extend(rest["results"].as_array().unwrap().iter().cloned());
    let actions: Vec<&str> = events
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    for a in ["key.create", "memory.add", "memory.update", "erasure"] {
        assert!(actions.contains(&a), "{a} in {actions:?}");
    }
    let erasure = events.iter().find(|e| e["action"] == "erasure").unwrap();
    assert_eq!(erasure["target"], receipt["receipt_id"]);
    assert_eq!(erasure["detail"]["versions"], 4);
    assert!(erasure["actor"].as_str().unwrap().starts_with("key:"));
    let all = serde_json::to_string(&events).unwrap();
    assert!(
        !all.contains("erin") && !all.to_lowercase().contains(ERIN),
        "{all}"
    );
    let export = http
        .get(url("/v1/audit/export?action=erasure"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(
        export.headers()["content-type"].to_str().unwrap(),
        "application/x-ndjson"
    );
    let lines: Vec<Value> = export
        .text()
        .await
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["target"], receipt["receipt_id"]);

    // Stop (the server saves its index and checkpoints), then read every byte.
    server.signal("-TERM");
    let mut server = server;
    assert!(server.wait(Duration::from_secs(30)).success());
    let files: Vec<String> = std::fs::read_dir(&data)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        files_containing(&data, ERIN),
        Vec::<String>::new(),
        "erased text on disk (files: {files:?})"
    );
    assert!(
        !files_containing(&data, FRANK).is_empty(),
        "the scan finds text that was not erased"
    );
    eprintln!(
        "byte scan: {} files of the data directory ({files:?}): `{ERIN}` in none, `{FRANK}` still found",
        files.len()
    );

    // Frank's data is intact after a restart.
    let server = Server::start(&data, "warn");
    let found = send(
        &http,
        Method::POST,
        format!("{}/v1/memories/search", server.url),
        &admin,
        Some(json!({"query": "what is in Frank's locker?", "user_id": "frank"})),
    )
    .await
    .1;
    assert!(
        found["results"][0]["memory"]
            .as_str()
            .unwrap()
            .contains(FRANK),
        "{found}"
    );
}
