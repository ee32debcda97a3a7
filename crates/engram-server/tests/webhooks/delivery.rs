//! Deliveries: signed, in order, retried, dead-lettered, once across nodes,
//! never for a rolled-back write; the sweep's and other workers' part.

use super::*;

#[tokio::test]
async fn every_change_is_delivered_signed_in_order_and_only_inside_the_scope() {
    let w = world(config(true, 20)).await;
    let (recv, url) = Receiver::start().await;
    let admin = w.key(org("acme"), Role::Admin).await;
    let (s, created) = w
        .call(
            &admin,
            "POST",
            "/v1/webhooks",
            Some(json!({"url": url, "events": ["memory.created", "memory.updated", "memory.deleted"], "description": "crm sync"})),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{created}");
    let secret = created["secret"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("whsec_"));
    let id = created["id"].as_str().unwrap().to_owned();
    assert_eq!(created["scope"]["org_id"], "acme", "bound to the key's org");

    // Listed and read without the secret.
    let (_, list) = w.call(&admin, "GET", "/v1/webhooks", None).await;
    assert_eq!(list["results"].as_array().unwrap().len(), 1);
    assert!(!list.to_string().contains(&secret), "{list}");
    let (_, one) = w
        .call(&admin, "GET", &format!("/v1/webhooks/{id}"), None)
        .await;
    assert!(one.get("secret").is_none());

    let mem = w
        .add("Alice moved to Lisbon in May.", scope("acme", "u1"))
        .await;
    w.add("Someone else's memory.", scope("globex", "u9")).await;
    w.memory
        .update(
            &RequestCtx::operator("test"),
            mem,
            UpdateInput {
                text: Some("Alice moved to Porto in May.".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    w.memory
        .delete(&RequestCtx::operator("test"), mem)
        .await
        .unwrap();
    let runner = w.runner("w1");
    w.drain(&runner).await;

    let got = recv.got();
    assert_eq!(
        got.len(),
        3,
        "globex's memory is outside the webhook: {got:?}"
    );
    for r in &got {
        assert!(verify(&secret, r), "signature of {}", r.body);
        assert!(
            r.headers["webhook-id"]
                .to_str()
                .unwrap()
                .starts_with("msg_")
        );
        assert_eq!(r.headers["content-type"], "application/json");
    }
    let bodies = recv.bodies();
    let types: Vec<&str> = bodies.iter().map(|b| b["type"].as_str().unwrap()).collect();
    assert_eq!(
        types,
        ["memory.created", "memory.updated", "memory.deleted"]
    );
    assert_eq!(bodies[0]["data"]["id"], mem.to_string());
    assert_eq!(bodies[0]["data"]["text"], "Alice moved to Lisbon in May.");
    assert_eq!(bodies[0]["data"]["user_id"], "u1");
    assert_eq!(bodies[1]["data"]["version"], 2);
    assert_eq!(
        bodies[1]["data"]["previous_text"],
        "Alice moved to Lisbon in May."
    );
    assert_eq!(bodies[1]["data"]["text"], "Alice moved to Porto in May.");
    assert!(bodies[0]["timestamp"].as_str().unwrap().ends_with('Z'));

    // A tampered body or another secret does not verify.
    let mut forged = got[0].clone();
    forged.body = forged.body.replace("Lisbon", "Paris");
    assert!(!verify(&secret, &forged));

    // The attempts, newest first.
    let (s, deliveries) = w
        .call(
            &admin,
            "GET",
            &format!("/v1/webhooks/{id}/deliveries"),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let d = deliveries["results"].as_array().unwrap();
    assert_eq!(d.len(), 3);
    assert!(
        d.iter()
            .all(|a| a["outcome"] == "delivered" && a["status_code"] == 200)
    );
    assert_eq!(d[0]["event"], "memory.deleted");

    // Rotation: the new secret signs, the old one no longer does.
    let (s, rotated) = w
        .call(
            &admin,
            "POST",
            &format!("/v1/webhooks/{id}/rotate-secret"),
            None,
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let new_secret = rotated["secret"].as_str().unwrap();
    assert_ne!(new_secret, secret);
    w.add("Bob likes tea.", scope("acme", "u2")).await;
    w.drain(&runner).await;
    let last = recv.got().pop().unwrap();
    assert!(verify(new_secret, &last) && !verify(&secret, &last));

    // Text can be kept out of payloads.
    let (s, _) = w
        .call(
            &admin,
            "PATCH",
            &format!("/v1/webhooks/{id}"),
            Some(json!({"include_text": false})),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    w.add("Carol's secret diagnosis.", scope("acme", "u3"))
        .await;
    // A worker that cannot send webhooks (the CLI's) leaves the delivery alone.
    let cli = JobRunner::new(w.memory.clone(), jobs_fast(), "cli");
    assert!(!cli.run_once().await.unwrap(), "no delivery claimed");
    assert_eq!(w.memory.store().webhook_pending().await.unwrap(), 1);
    w.drain(&runner).await;
    let last = recv.got().pop().unwrap();
    assert!(!last.body.contains("diagnosis"), "{}", last.body);
    assert!(
        verify(new_secret, &last),
        "a settings change after the rotation kept the new secret"
    );
    // Delivered: the queue keeps no memory text, and /v1/jobs shows no delivery.
    let jobs = w.memory.store().job_list(None, None, 1000).await.unwrap();
    let deliveries: Vec<_> = jobs.iter().filter(|j| j.kind == "webhook").collect();
    assert_eq!(deliveries.len(), 5);
    for j in &deliveries {
        assert_eq!(j.payload, json!({}), "{j:?}");
        let (s, _) = w
            .call(&admin, "GET", &format!("/v1/jobs/{}", j.id), None)
            .await;
        assert_eq!(s, StatusCode::NOT_FOUND);
    }

    // Deleted: nothing more arrives.
    let (s, _) = w
        .call(&admin, "DELETE", &format!("/v1/webhooks/{id}"), None)
        .await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    let before = recv.got().len();
    w.add("After deletion.", scope("acme", "u1")).await;
    w.drain(&runner).await;
    assert_eq!(recv.got().len(), before);
    let (s, _) = w
        .call(&admin, "GET", &format!("/v1/webhooks/{id}"), None)
        .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_failing_receiver_is_retried_then_dead_lettered_and_the_webhook_disabled() {
    let w = world(config(true, 4)).await;
    let (recv, url) = Receiver::start().await;
    let admin = w.key(org("acme"), Role::Admin).await;
    let (_, hook) = w
        .call(
            &admin,
            "POST",
            "/v1/webhooks",
            Some(json!({"url": url, "events": ["memory.created"]})),
        )
        .await;
    let id = hook["id"].as_str().unwrap().to_owned();
    let runner = w.runner("w1");

    // Two 500s, then accepted: delivered on the third attempt, same webhook-id each time.
    recv.script.lock().unwrap().extend([500, 503]);
    w.add("Retried until delivered.", scope("acme", "u1")).await;
    w.drain(&runner).await;
    let got = recv.got();
    assert_eq!(
        got.iter().map(|r| r.status).collect::<Vec<_>>(),
        [500, 503, 200]
    );
    let ids: Vec<_> = got
        .iter()
        .map(|r| r.headers["webhook-id"].clone())
        .collect();
    assert!(ids.windows(2).all(|p| p[0] == p[1]), "{ids:?}");
    let (_, d) = w
        .call(
            &admin,
            "GET",
            &format!("/v1/webhooks/{id}/deliveries"),
            None,
        )
        .await;
    let outcomes: Vec<&str> = d["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(outcomes, ["delivered", "failed", "failed"]);
    let (_, h) = w
        .call(&admin, "GET", &format!("/v1/webhooks/{id}"), None)
        .await;
    assert_eq!(h["consecutive_failures"], 0, "a delivery resets the count");

    // A 4xx other than 408/429 is not retried, nor is a redirect (never followed).
    recv.script.lock().unwrap().push_back(410);
    w.add("Refused by the receiver.", scope("acme", "u1")).await;
    w.drain(&runner).await;
    assert_eq!(recv.got().last().unwrap().status, 410);
    recv.script.lock().unwrap().push_back(302);
    w.add("Redirected by the receiver.", scope("acme", "u1"))
        .await;
    w.drain(&runner).await;
    let n = recv.got().len();
    assert_eq!(recv.got()[n - 1].status, 302);
    let (_, d) = w
        .call(
            &admin,
            "GET",
            &format!("/v1/webhooks/{id}/deliveries?limit=2"),
            None,
        )
        .await;
    let last = &d["results"][0];
    assert_eq!(last["outcome"], "dead", "{d}");
    assert!(
        last["error"]
            .as_str()
            .unwrap()
            .contains("redirects are not followed"),
        "{d}"
    );
    assert_eq!(d["results"][1]["status_code"], 410);

    // Always failing: after 4 failures in a row the webhook is disabled and
    // its delivery dead; later changes queue nothing.
    *recv.always.lock().unwrap() = Some(500);
    w.add("Never delivered.", scope("acme", "u1")).await;
    w.drain(&runner).await;
    // 410 and 302 were the first two failures in a row: two more 500s disable it.
    assert_eq!(recv.got().len(), n + 2);
    let (_, h) = w
        .call(&admin, "GET", &format!("/v1/webhooks/{id}"), None)
        .await;
    assert_eq!(h["enabled"], false, "{h}");
    assert!(
        h["disabled_reason"]
            .as_str()
            .unwrap()
            .contains("4 delivery attempts failed"),
        "{h}"
    );
    let (_, d) = w
        .call(
            &admin,
            "GET",
            &format!("/v1/webhooks/{id}/deliveries?limit=1"),
            None,
        )
        .await;
    assert_eq!(d["results"][0]["outcome"], "dead");
    w.add("After disabling.", scope("acme", "u1")).await;
    assert_eq!(w.memory.store().webhook_pending().await.unwrap(), 0);
    // Changing a setting does not re-enable it (only `enabled: true` does).
    let (s, h) = w
        .call(
            &admin,
            "PATCH",
            &format!("/v1/webhooks/{id}"),
            Some(json!({"description": "still off"})),
        )
        .await;
    assert_eq!((s, &h["enabled"]), (StatusCode::OK, &json!(false)), "{h}");

    // Re-enabled: deliveries resume.
    *recv.always.lock().unwrap() = None;
    let (s, h) = w
        .call(
            &admin,
            "PATCH",
            &format!("/v1/webhooks/{id}"),
            Some(json!({"enabled": true})),
        )
        .await;
    assert_eq!(
        (s, &h["enabled"], &h["consecutive_failures"]),
        (StatusCode::OK, &json!(true), &json!(0))
    );
    w.add("Delivered again.", scope("acme", "u1")).await;
    w.drain(&runner).await;
    assert_eq!(recv.got().last().unwrap().status, 200);
}

#[tokio::test]
async fn a_slow_receiver_times_out_and_is_retried() {
    let mut cfg = config(true, 20);
    cfg.webhooks.timeout = Duration::from_millis(200);
    let w = world(cfg).await;
    let (recv, url) = Receiver::start().await;
    let admin = w.key(org("acme"), Role::Admin).await;
    let (_, hook) = w
        .call(
            &admin,
            "POST",
            "/v1/webhooks",
            Some(json!({"url": url, "events": ["memory.created"]})),
        )
        .await;
    *recv.delay.lock().unwrap() = Duration::from_millis(600);
    w.add("Slow to land.", scope("acme", "u1")).await;
    let runner = w.runner("w");
    assert!(runner.run_once().await.unwrap());
    *recv.delay.lock().unwrap() = Duration::ZERO;
    w.drain(&runner).await;
    let (_, d) = w
        .call(
            &admin,
            "GET",
            &format!("/v1/webhooks/{}/deliveries", hook["id"].as_str().unwrap()),
            None,
        )
        .await;
    let d = d["results"].as_array().unwrap();
    assert_eq!(d.len(), 2, "{d:?}");
    assert_eq!(
        (d[0]["outcome"].as_str(), d[1]["outcome"].as_str()),
        (Some("delivered"), Some("failed"))
    );
    assert!(
        d[1]["error"].as_str().unwrap().contains("timed out"),
        "{d:?}"
    );
    assert!(d[1]["status_code"].is_null());
}

#[tokio::test]
async fn a_memorys_events_wait_for_the_one_before() {
    let w = world(config(true, 20)).await;
    let (recv, url) = Receiver::start().await;
    let admin = w.key(org("acme"), Role::Admin).await;
    w.call(
        &admin,
        "POST",
        "/v1/webhooks",
        Some(json!({"url": url, "events": ["memory.created", "memory.updated"]})),
    )
    .await;
    recv.script.lock().unwrap().push_back(500);
    let mem = w.add("Version one.", scope("acme", "u1")).await;
    w.memory
        .update(
            &RequestCtx::operator("test"),
            mem,
            UpdateInput {
                text: Some("Version two.".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    // Two workers: the update is due at once, the create waits for its retry.
    let (a, b) = (w.runner("a"), w.runner("b"));
    for _ in 0..500 {
        let ran = a.run_once().await.unwrap() | b.run_once().await.unwrap();
        if !ran && w.memory.store().webhook_pending().await.unwrap() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let seen: Vec<(u16, String)> = recv
        .got()
        .iter()
        .map(|r| {
            let b: Value = serde_json::from_str(&r.body).unwrap();
            (r.status, b["type"].as_str().unwrap().to_owned())
        })
        .collect();
    assert_eq!(
        seen,
        [
            (500, "memory.created".to_owned()),
            (200, "memory.created".to_owned()),
            (200, "memory.updated".to_owned())
        ]
    );
}

#[tokio::test]
async fn a_write_that_rolls_back_announces_nothing() {
    let w = world(config(true, 20)).await;
    let (recv, url) = Receiver::start().await;
    let admin = w.key(org("acme"), Role::Admin).await;
    w.call(
        &admin,
        "POST",
        "/v1/webhooks",
        Some(json!({"url": url, "events": ["memory.created", "memory.deleted"]})),
    )
    .await;
    let ctx = RequestCtx::operator("test");
    // A batch whose second op fails (deleting a memory that does not exist):
    // the first op's insert and its delivery roll back together.
    let (mut ops, _) = w
        .memory
        .prepare_add(
            &ctx,
            vec![AddInput::new(
                Content::Text("Rolled back.".into()),
                scope("acme", "u1"),
            )],
        )
        .await
        .unwrap();
    assert!(!ops.is_empty());
    let missing = uuid::Uuid::now_v7();
    let history = engram_core::memory::HistoryEvent {
        id: uuid::Uuid::now_v7(),
        memory_id: missing,
        event: engram_core::memory::Event::Delete,
        old_text: None,
        new_text: None,
        version: 1,
        actor: None,
        reason: None,
        request_id: None,
        scope: scope("acme", "u1"),
        created_at: w.memory.now(),
    };
    ops.push(WriteOp::Delete {
        id: missing,
        at: w.memory.now(),
        history,
    });
    assert!(w.memory.store().apply(ops).await.is_err());
    assert_eq!(w.memory.store().webhook_pending().await.unwrap(), 0);
    w.drain(&w.runner("w")).await;
    assert!(recv.got().is_empty(), "{:?}", recv.got());
}

#[tokio::test]
async fn two_nodes_deliver_each_event_once() {
    let w = world(config(true, 20)).await;
    let (recv, url) = Receiver::start().await;
    let admin = w.key(org("acme"), Role::Admin).await;
    w.call(
        &admin,
        "POST",
        "/v1/webhooks",
        Some(json!({"url": url, "events": ["memory.created", "memory.updated"]})),
    )
    .await;
    // A second node: its own service and state over the same store.
    let other = common::service(w.store.store.clone()).await;
    let other_state = AppState::new(
        other.clone(),
        KeyService::new(w.store.keys(), Arc::new(SystemClock)),
        config(true, 20),
    );
    // Each user's facts differ only in a number: the first is a memory.created,
    // the rest correct it (memory.updated), so each memory's events must also
    // arrive in order while four workers on two nodes race for them.
    let n = 40;
    for i in 0..n {
        w.add(
            &format!("The launch budget is {} dollars.", 1000 + i),
            scope("acme", &format!("u{}", i % 5)),
        )
        .await;
    }
    let runners: Vec<JobRunner> = (0..4)
        .map(|i| {
            let (memory, state) = if i % 2 == 0 {
                (w.memory.clone(), &w.state)
            } else {
                (other.clone(), &other_state)
            };
            JobRunner::new(memory, jobs_fast(), format!("node{}-{i}", i % 2))
                .with_webhooks(Some(state.webhooks.clone()))
        })
        .collect();
    let store = w.memory.store().clone();
    let tasks: Vec<_> = runners
        .into_iter()
        .map(|r| {
            let store = store.clone();
            tokio::spawn(async move {
                for _ in 0..5000 {
                    if !r.run_once().await.unwrap() {
                        if store.webhook_pending().await.unwrap() == 0 {
                            return;
                        }
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let got = recv.got();
    let mut ids: Vec<String> = got
        .iter()
        .map(|r| r.headers["webhook-id"].to_str().unwrap().to_owned())
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!((got.len(), ids.len()), (n, n), "each event exactly once");
    let mut versions: HashMap<String, Vec<u64>> = HashMap::new();
    for b in recv.bodies() {
        versions
            .entry(b["data"]["id"].as_str().unwrap().to_owned())
            .or_default()
            .push(b["data"]["version"].as_u64().unwrap());
    }
    assert_eq!(versions.len(), 5, "one memory per user");
    for (id, v) in versions {
        assert_eq!(
            v,
            (1..=8).collect::<Vec<u64>>(),
            "memory {id}'s events in order"
        );
    }
}

#[tokio::test]
async fn the_expiry_sweep_announces_what_it_removes() {
    let w = world(config(true, 20)).await;
    let (recv, url) = Receiver::start().await;
    let admin = w.key(org("acme"), Role::Admin).await;
    w.call(
        &admin,
        "POST",
        "/v1/webhooks",
        Some(json!({"url": url, "events": ["memory.expired"]})),
    )
    .await;
    let mut input = AddInput::new(
        Content::Text("A code valid for a moment.".into()),
        scope("acme", "u1"),
    );
    input.expires_at = Some(w.memory.now() + jiff::SignedDuration::from_millis(50));
    let id = w
        .memory
        .add(&RequestCtx::operator("test"), input)
        .await
        .unwrap()[0]
        .id;
    w.add("A lasting fact.", scope("acme", "u1")).await;
    tokio::time::sleep(Duration::from_millis(80)).await;
    let report = w.memory.sweep().await.unwrap();
    assert_eq!(report.memories, 1, "{report:?}");
    w.drain(&w.runner("w")).await;
    let bodies = recv.bodies();
    assert_eq!(bodies.len(), 1, "{bodies:?}");
    assert_eq!(bodies[0]["type"], "memory.expired");
    assert_eq!(bodies[0]["data"]["id"], id.to_string());
    assert_eq!(bodies[0]["data"]["text"], "A code valid for a moment.");
    assert_eq!(bodies[0]["data"]["reason"], "expired");

    // Metrics: deliveries by outcome, latency, the queue's depth.
    let resp = w
        .router
        .clone()
        .oneshot(Request::get("/metrics").body(Body::empty()).unwrap())
        .await
        .unwrap();
    let text = String::from_utf8(
        resp.into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec(),
    )
    .unwrap();
    for name in [
        "engram_webhook_deliveries_total",
        "engram_webhook_delivery_seconds",
        "engram_webhook_queue",
    ] {
        assert!(text.contains(name), "{name} missing from /metrics");
    }
}

#[tokio::test]
async fn workers_told_not_to_deliver_leave_deliveries_to_those_that_do() {
    // `engram mcp` on stdio: workers that run adds but never send webhooks.
    let mut cfg = config(true, 20);
    cfg.workers = 1;
    cfg.deliver_webhooks = false;
    let w = world(cfg).await;
    let (recv, url) = Receiver::start().await;
    let admin = w.key(org("acme"), Role::Admin).await;
    w.call(
        &admin,
        "POST",
        "/v1/webhooks",
        Some(json!({"url": url, "events": ["memory.created"]})),
    )
    .await;
    let workers = engram_server::spawn_workers(&w.state);
    w.add("Left for a server.", scope("acme", "u1")).await;
    w.state.job_ready.notify_one();
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(recv.got().is_empty());
    assert_eq!(w.memory.store().webhook_pending().await.unwrap(), 1);
    // A server's worker sends it.
    w.drain(&w.runner("server")).await;
    assert_eq!(recv.got().len(), 1);
    w.state.shutdown.cancel();
    for t in workers {
        let _ = t.await;
    }
}
