//! Export and import over HTTP with real stores and the real model: a scope
//! exported from one store and imported into an empty one gives identical
//! search results, history and versions; importing again changes nothing;
//! another model's vectors are recomputed; a bad file changes nothing.
//! Runs on SQLite, and on Postgres with `ENGRAM_TEST_STORE=postgres`.

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use engram_core::access::{Principal, Role};
use engram_core::ctx::RequestCtx;
use engram_core::filter::Filter;
use engram_core::memory::Scope;
use engram_core::service::NewKey;
use engram_core::service::{AddInput, Content, SearchInput, UpdateInput};
use engram_server::auth::AuthMode;
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;

mod common;

use common::Node;

async fn node(auth: AuthMode) -> Node {
    common::node_with(auth, |s| s).await
}

fn ctx() -> RequestCtx {
    RequestCtx::operator("test")
}

fn user(u: &str) -> Scope {
    Scope {
        org_id: Some("acme".into()),
        user_id: Some(u.into()),
        ..Default::default()
    }
}

async fn add(n: &Node, text: &str, scope: Scope) -> uuid::Uuid {
    let input = AddInput {
        metadata: json!({"source": "chat"})
            .as_object()
            .cloned()
            .unwrap_or_default(),
        categories: vec!["life".into()],
        ..AddInput::new(Content::Text(text.into()), scope)
    };
    n.memory.add(&ctx(), input).await.unwrap()[0].id
}

async fn send(n: &Node, req: Request<Body>, key: Option<&str>) -> (StatusCode, Vec<u8>) {
    let mut req = req;
    if let Some(k) = key {
        let v = format!("Bearer {k}").parse().unwrap();
        req.headers_mut().insert(header::AUTHORIZATION, v);
    }
    let res = n.router.clone().oneshot(req).await.unwrap();
    let status = res.status();
    (
        status,
        res.into_body().collect().await.unwrap().to_bytes().to_vec(),
    )
}

async fn export(n: &Node, query: &str) -> String {
    let (status, body) = send(
        n,
        Request::get(format!("/v1/export?{query}"))
            .body(Body::empty())
            .unwrap(),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    String::from_utf8(body).unwrap()
}

async fn import(n: &Node, body: String, key: Option<&str>) -> (StatusCode, Value) {
    let (status, body) = send(
        n,
        Request::post("/v1/import")
            .header(header::CONTENT_TYPE, "application/x-ndjson")
            .body(Body::from(body))
            .unwrap(),
        key,
    )
    .await;
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

/// (id, text, score) of a search in ann's scope.
async fn search(n: &Node, query: &str) -> Vec<(uuid::Uuid, String, f32)> {
    n.memory
        .search(
            &ctx(),
            SearchInput {
                query: query.into(),
                filter: Filter::from_scope(&user("ann")),
                top_k: Some(10),
                threshold: None,
                token_budget: Some(0),
                explain: false,
            },
        )
        .await
        .unwrap()
        .hits
        .into_iter()
        .map(|h| (h.memory.id, h.memory.text, h.score))
        .collect()
}

fn same_results(a: &[(uuid::Uuid, String, f32)], b: &[(uuid::Uuid, String, f32)], tol: f32) {
    assert_eq!(a.len(), b.len(), "{a:?}\n{b:?}");
    for (x, y) in a.iter().zip(b) {
        assert_eq!((x.0, &x.1), (y.0, &y.1), "{a:?}\n{b:?}");
        assert!((x.2 - y.2).abs() <= tol, "{a:?}\n{b:?}");
    }
}

const QUERIES: [&str; 4] = [
    "does Ann have a dog",
    "where does Ann work",
    "Ann needs a vet",
    "Ann's hobbies",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_then_import_gives_the_same_memories() {
    let a = node(AuthMode::InsecureNoAuth).await;
    add(&a, "Ann adopted a beagle named Rex", user("ann")).await;
    let job = add(&a, "Ann works as a nurse in Lisbon", user("ann")).await;
    a.memory
        .update(
            &ctx(),
            job,
            UpdateInput {
                text: Some("Ann works as a nurse in Porto".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let mut session = user("ann");
    session.run_id = Some("chat-7".into());
    add(&a, "Ann is looking for a vet this week", session).await;
    add(&a, "Ann paints watercolours on weekends", user("ann")).await;
    add(&a, "Bob plays chess on Sundays", user("bob")).await;

    let ann_only = export(&a, "user_id=ann").await;
    assert_eq!(
        ann_only.lines().count(),
        5,
        "a header and ann's four memories"
    );
    assert!(
        !ann_only.contains("chess"),
        "bob's memory is not in ann's export"
    );
    // The whole org, so keyword statistics (BM25) are the same on both sides.
    let file = export(&a, "org_id=acme").await;
    let lines: Vec<&str> = file.lines().collect();
    assert_eq!(lines.len(), 6, "a header and five memories:\n{file}");
    let header: Value = serde_json::from_str(lines[0]).unwrap();
    assert_eq!(header["format"], "engram-export");
    assert_eq!(header["version"], 1);
    assert_eq!(header["embedding_model"]["dim"], 384);
    let job_line: Value = serde_json::from_str(
        lines
            .iter()
            .find(|l| l.contains("Porto"))
            .expect("the updated memory"),
    )
    .unwrap();
    assert_eq!(job_line["versions"].as_array().unwrap().len(), 2);
    assert_eq!(job_line["history"].as_array().unwrap().len(), 2);
    assert_eq!(
        job_line["versions"][0]["embedding"]
            .as_array()
            .unwrap()
            .len(),
        384
    );

    // Into an empty store: the same search results, versions and history.
    let b = node(AuthMode::InsecureNoAuth).await;
    let (status, report) = import(&b, file.clone(), None).await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(
        report,
        json!({"imported": 5, "skipped": 0, "reembedded": 0})
    );
    for q in QUERIES {
        same_results(&search(&a, q).await, &search(&b, q).await, 1e-6);
    }
    assert_eq!(
        a.memory.history(&ctx(), job).await.unwrap(),
        b.memory.history(&ctx(), job).await.unwrap()
    );
    assert_eq!(
        a.memory.store().memory_versions(&[job]).await.unwrap(),
        b.memory.store().memory_versions(&[job]).await.unwrap()
    );
    assert_eq!(
        export(&b, "org_id=acme")
            .await
            .lines()
            .skip(1)
            .collect::<Vec<_>>(),
        lines[1..]
    );

    // Again: nothing changes.
    let (status, report) = import(&b, file.clone(), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        report,
        json!({"imported": 0, "skipped": 5, "reembedded": 0})
    );
    for q in QUERIES {
        same_results(&search(&a, q).await, &search(&b, q).await, 1e-6);
    }

    // From another model: every version's vector is recomputed with ours.
    let c = node(AuthMode::InsecureNoAuth).await;
    let mut other = header.clone();
    other["embedding_model"]["id"] = json!("some-other-model@2");
    let body = std::iter::once(other.to_string())
        .chain(lines[1..].iter().map(|l| l.to_string()))
        .collect::<Vec<_>>()
        .join("\n");
    let (status, report) = import(&c, body, None).await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(
        report,
        json!({"imported": 5, "skipped": 0, "reembedded": 6})
    );
    for q in QUERIES {
        same_results(&search(&a, q).await, &search(&c, q).await, 1e-3);
    }

    // Taken across a re-embedding switch: our model in the header, but one
    // version labelled with another. Only that version is re-embedded, and
    // everything lands labelled with our model.
    let d = node(AuthMode::InsecureNoAuth).await;
    let mut first: Value = serde_json::from_str(lines[1]).unwrap();
    assert!(
        first["versions"][0]["embedding_model"].is_string(),
        "{first}"
    );
    first["versions"][0]["embedding_model"] = json!("some-other-model@2");
    let body = [lines[0].to_string(), first.to_string()]
        .into_iter()
        .chain(lines[2..].iter().map(|l| l.to_string()))
        .collect::<Vec<_>>()
        .join("\n");
    let (status, report) = import(&d, body, None).await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(
        report,
        json!({"imported": 5, "skipped": 0, "reembedded": 1})
    );
    let id: uuid::Uuid = first["id"].as_str().unwrap().parse().unwrap();
    let ours = d.memory.embedder().model().id.clone();
    let versions = d.memory.store().memory_versions(&[id]).await.unwrap();
    assert!(versions.iter().all(|(m, _)| m.embedding_model == ours));
}

/// An empty node without authentication.
async fn a_clone_target() -> Node {
    node(AuthMode::InsecureNoAuth).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_import_changes_nothing() {
    let a = node(AuthMode::InsecureNoAuth).await;
    add(&a, "Ann adopted a beagle named Rex", user("ann")).await;
    add(&a, "Ann works as a nurse in Porto", user("ann")).await;
    let file = export(&a, "user_id=ann").await;
    let lines: Vec<&str> = file.lines().collect();
    assert_eq!(lines.len(), 3);

    let b = node(AuthMode::Keys).await;
    let admin = b
        .keys
        .create(
            &Principal::operator(),
            NewKey {
                name: "globex admin".into(),
                role: Some(Role::Admin),
                binding: Scope {
                    org_id: Some("globex".into()),
                    ..Default::default()
                },
                rate_limit: None,
            },
        )
        .await
        .unwrap()
        .1;
    let count = || async {
        b.memory
            .list(&ctx(), &Filter::from_scope(&user("ann")), None, 100)
            .await
            .unwrap()
            .memories
            .len()
    };
    let problem = |v: &Value| v["detail"].as_str().unwrap_or_default().to_owned();

    // A broken second memory: the whole file is refused, naming the line.
    let broken = format!("{}\n{}\n{{\"id\": 1}}\n", lines[0], lines[1]);
    let (status, body) = import(&b, broken, Some(&admin)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(problem(&body).contains("line 3"), "{body}");
    // A header from the future.
    let future = file.replacen("\"version\":1", "\"version\":9", 1);
    let (status, body) = import(&b, future, Some(&admin)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(problem(&body).contains("version 9"), "{body}");
    // Memories outside the key's binding (acme's, the key is globex's).
    let (status, body) = import(&b, file.clone(), Some(&admin)).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(problem(&body).contains("outside"), "{body}");
    // A vector of the wrong size.
    let mut m: Value = serde_json::from_str(lines[1]).unwrap();
    m["versions"][0]["embedding"] = json!([0.5, 0.5]);
    let (status, body) = import(&b, format!("{}\n{m}", lines[0]), Some(&admin)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(problem(&body).contains("2-dimension"), "{body}");
    // A vector with no direction (cosine would be 0/0).
    let dim = m["versions"][1]["embedding"]
        .as_array()
        .map_or(384, Vec::len);
    let mut zero: Value = serde_json::from_str(lines[1]).unwrap();
    zero["versions"][0]["embedding"] = json!(vec![0.0; dim.max(384)]);
    let (status, body) = import(&b, format!("{}\n{zero}", lines[0]), Some(&admin)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(problem(&body).contains("no direction"), "{body}");
    assert_eq!(count().await, 0, "nothing was stored");

    // History rows must carry the memory's own scope.
    let mut forged: Value = serde_json::from_str(lines[1]).unwrap();
    forged["history"][0]["scope"]["user_id"] = json!("someone-else");
    let (status, body) = import(
        &a_clone_target().await,
        format!("{}\n{forged}", lines[0]),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(problem(&body).contains("another scope"), "{body}");

    // An id the store holds under another scope is not "already present",
    // and the answer does not tell it exists: the memory is imported under
    // an id derived from it and its scope; importing again changes nothing.
    let mut moved: Value = serde_json::from_str(lines[1]).unwrap();
    for v in moved["versions"].as_array_mut().unwrap() {
        v["scope"]["user_id"] = json!("bob");
    }
    for h in moved["history"].as_array_mut().unwrap() {
        h["scope"]["user_id"] = json!("bob");
    }
    let (status, body) = import(&a, format!("{}\n{moved}", lines[0]), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        (body["imported"].as_u64(), body["skipped"].as_u64()),
        (Some(1), Some(0)),
        "{body}"
    );
    let (status, body) = import(&a, format!("{}\n{moved}", lines[0]), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        (body["imported"].as_u64(), body["skipped"].as_u64()),
        (Some(0), Some(1)),
        "{body}"
    );
}
