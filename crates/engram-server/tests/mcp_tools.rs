//! The MCP tool layer through rmcp's own client over an in-memory pipe,
//! with the real model and a real SQLite store.

use engram_core::access::Principal;
use engram_core::memory::Scope;
use engram_core::service::MemoryService;
use engram_core::service::{JobConfig, JobQueue};
use engram_server::mcp::MemoryMcp;
use rmcp::ServiceExt;
use rmcp::model::{CallToolRequestParams, CallToolResult};
use serde_json::{Value, json};

mod common;

async fn service(dir: &std::path::Path) -> MemoryService {
    common::open(dir).await.1
}

fn call(name: &'static str, args: Value) -> CallToolRequestParams {
    CallToolRequestParams::new(name).with_arguments(args.as_object().cloned().unwrap_or_default())
}

fn text(r: &CallToolResult) -> String {
    serde_json::to_value(&r.content).unwrap().to_string()
}

#[tokio::test]
async fn tools_scope_and_errors() {
    let dir = tempfile::tempdir().unwrap();
    let svc = service(dir.path()).await;
    let (server_io, client_io) = tokio::io::duplex(1 << 16);
    let bound = Scope {
        user_id: Some("alice".into()),
        ..Default::default()
    };
    let server = tokio::spawn(async move {
        let running = MemoryMcp::new(
            JobQueue::new(svc, JobConfig::default(), None),
            Some(Principal::operator_bound(bound)),
            "test",
        )
        .serve(server_io)
        .await
        .unwrap();
        let _ = running.waiting().await;
    });
    let client = ().serve(client_io).await.unwrap();

    let tools = client.list_all_tools().await.unwrap();
    let mut names: Vec<String> = tools.iter().map(|t| t.name.to_string()).collect();
    names.sort();
    assert_eq!(
        names,
        [
            "add_memory",
            "delete_all_memories",
            "delete_memory",
            "get_memory",
            "list_memories",
            "search_memory",
            "update_memory"
        ]
    );
    let search = tools.iter().find(|t| t.name == "search_memory").unwrap();
    assert_eq!(
        search.annotations.as_ref().and_then(|a| a.read_only_hint),
        Some(true)
    );
    assert!(search.output_schema.is_some());

    let added = client
        .call_tool(call(
            "add_memory",
            json!({"text": "Alice keeps bees in her garden."}),
        ))
        .await
        .unwrap();
    assert_eq!(added.is_error, Some(false));
    let id = added.structured_content.as_ref().unwrap()["results"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();

    let found = client
        .call_tool(call(
            "search_memory",
            json!({"query": "what hobby does alice have?"}),
        ))
        .await
        .unwrap();
    let hits = &found.structured_content.as_ref().unwrap()["results"];
    assert_eq!(hits[0]["id"], json!(id));
    assert_eq!(hits[0]["user_id"], json!("alice"));

    // The bound scope cannot be changed by a call.
    let other = client
        .call_tool(call(
            "search_memory",
            json!({"query": "bees", "user_id": "mallory"}),
        ))
        .await
        .unwrap();
    assert_eq!(other.is_error, Some(true));
    assert!(
        text(&other).contains("bound to user_id=alice"),
        "{}",
        text(&other)
    );

    // Bad input is a tool error with a message, not a protocol failure.
    let bad = client
        .call_tool(call("get_memory", json!({"id": "nope"})))
        .await
        .unwrap();
    assert_eq!(bad.is_error, Some(true));
    assert!(text(&bad).contains("not a memory id"));
    let refused = client
        .call_tool(call("delete_all_memories", json!({"confirm": false})))
        .await
        .unwrap();
    assert_eq!(refused.is_error, Some(true));

    let updated = client
        .call_tool(call(
            "update_memory",
            json!({"id": id, "text": "Alice keeps bees and chickens."}),
        ))
        .await
        .unwrap();
    assert!(
        updated.structured_content.as_ref().unwrap()["memory"]
            .as_str()
            .unwrap()
            .contains("chickens")
    );
    let deleted = client
        .call_tool(call("delete_memory", json!({"id": id})))
        .await
        .unwrap();
    assert_eq!(
        deleted.structured_content.as_ref().unwrap()["deleted"],
        json!(true)
    );
    let gone = client
        .call_tool(call("get_memory", json!({"id": id})))
        .await
        .unwrap();
    assert_eq!(gone.is_error, Some(true));

    client.cancel().await.unwrap();
    server.await.unwrap();
}
