//! Who and what a webhook may reach: the SSRF guard, the key's binding,
//! erasures and dead jobs announced inside it.

use super::*;

#[tokio::test]
async fn private_targets_are_refused_without_the_flag_even_behind_a_name() {
    let w = world(config(false, 20)).await;
    let hosts = HashMap::from([
        (
            "evil.example".to_owned(),
            vec!["127.0.0.1".parse::<IpAddr>().unwrap()],
        ),
        (
            "meta.example".to_owned(),
            vec!["169.254.169.254".parse().unwrap()],
        ),
        (
            "public.example".to_owned(),
            vec!["93.184.215.14".parse().unwrap()],
        ),
    ]);
    let state = w
        .state
        .clone()
        .with_webhook_sender(Arc::new(HttpSender::with_hosts(false, hosts).unwrap()));
    let router = app(state.clone());
    let admin = w.key(org("acme"), Role::Admin).await;
    let post = |url: &str| {
        let router = router.clone();
        let body = json!({"url": url, "events": ["memory.created"]}).to_string();
        let admin = admin.clone();
        async move {
            let resp = router
                .oneshot(
                    Request::post("/v1/webhooks")
                        .header("authorization", format!("Bearer {admin}"))
                        .header("content-type", "application/json")
                        .body(Body::from(body))
                        .unwrap(),
                )
                .await
                .unwrap();
            let status = resp.status();
            let bytes = resp.into_body().collect().await.unwrap().to_bytes();
            (status, String::from_utf8_lossy(&bytes).into_owned())
        }
    };
    for url in [
        "http://127.0.0.1:9/hook",
        "http://[::1]/hook",
        "http://localhost/hook",
        "http://169.254.169.254/latest/meta-data/",
        "http://10.0.0.5/hook",
        "http://evil.example/hook",
        "http://meta.example/hook",
        "ftp://public.example/hook",
        "http://user:pw@public.example/hook",
    ] {
        let (s, body) = post(url).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{url}: {body}");
        assert!(
            body.contains("application/problem+json") || body.contains("\"status\":400"),
            "{body}"
        );
    }
    let (s, body) = post("http://evil.example/hook").await;
    assert!(body.contains("resolves to 127.0.0.1"), "{s} {body}");
    let (s, created) = post("https://public.example/hook").await;
    assert_eq!(s, StatusCode::CREATED, "{created}");
    assert_eq!(
        w.store.store.webhook_list().await.unwrap().len(),
        1,
        "refusals stored nothing"
    );

    // DNS changes after creation (rebinding): the delivery is refused at send time.
    let id: Value = serde_json::from_str(&created).unwrap();
    let rebound = HashMap::from([(
        "public.example".to_owned(),
        vec!["127.0.0.1".parse().unwrap()],
    )]);
    let state = w
        .state
        .clone()
        .with_webhook_sender(Arc::new(HttpSender::with_hosts(false, rebound).unwrap()));
    w.add("Goes nowhere.", scope("acme", "u1")).await;
    let runner = JobRunner::new(w.memory.clone(), jobs_fast(), "w")
        .with_webhooks(Some(state.webhooks.clone()));
    w.drain(&runner).await;
    let attempts = w
        .memory
        .store()
        .webhook_attempts(id["id"].as_str().unwrap().parse().unwrap(), 10)
        .await
        .unwrap();
    assert_eq!(attempts.len(), 1, "refused once, not retried: {attempts:?}");
    assert_eq!(attempts[0].outcome, "refused");
    assert!(attempts[0].error.as_deref().unwrap().contains("127.0.0.1"));
}

#[tokio::test]
async fn webhooks_stay_inside_the_keys_binding() {
    let w = world(config(true, 20)).await;
    let (_recv, url) = Receiver::start().await;
    let acme_u1 = w.key(scope("acme", "u1"), Role::Admin).await;
    let acme = w.key(org("acme"), Role::Admin).await;
    let globex = w.key(org("globex"), Role::Admin).await;
    let writer = w.key(org("acme"), Role::ReadWrite).await;
    let body = |extra: Value| {
        let mut b = json!({"url": url, "events": ["memory.created"]});
        b.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        b
    };
    let (s, _) = w
        .call(&writer, "POST", "/v1/webhooks", Some(body(json!({}))))
        .await;
    assert_eq!(
        s,
        StatusCode::FORBIDDEN,
        "read-write keys cannot manage webhooks"
    );
    let (s, _) = w
        .call(
            &acme_u1,
            "POST",
            "/v1/webhooks",
            Some(body(json!({"scope": {"user_id": "u2"}}))),
        )
        .await;
    assert_eq!(
        s,
        StatusCode::FORBIDDEN,
        "a user-bound admin cannot watch another user"
    );
    let (s, mine) = w
        .call(&acme_u1, "POST", "/v1/webhooks", Some(body(json!({}))))
        .await;
    assert_eq!(s, StatusCode::CREATED);
    assert_eq!(mine["scope"]["user_id"], "u1");
    let (s, theirs) = w
        .call(&globex, "POST", "/v1/webhooks", Some(body(json!({}))))
        .await;
    assert_eq!(s, StatusCode::CREATED);
    let theirs = theirs["id"].as_str().unwrap();

    // Each sees its own; the org admin sees the user's too; nobody sees globex's.
    let ids = |v: Value| -> Vec<String> {
        v["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h["id"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(
        ids(w.call(&acme_u1, "GET", "/v1/webhooks", None).await.1).len(),
        1
    );
    assert_eq!(
        ids(w.call(&acme, "GET", "/v1/webhooks", None).await.1).len(),
        1
    );
    for (m, p, b) in [
        ("GET", format!("/v1/webhooks/{theirs}"), None),
        (
            "PATCH",
            format!("/v1/webhooks/{theirs}"),
            Some(json!({"enabled": false})),
        ),
        ("DELETE", format!("/v1/webhooks/{theirs}"), None),
        ("POST", format!("/v1/webhooks/{theirs}/rotate-secret"), None),
        ("GET", format!("/v1/webhooks/{theirs}/deliveries"), None),
    ] {
        let (s, _) = w.call(&acme, m, &p, b).await;
        assert_eq!(s, StatusCode::NOT_FOUND, "{m} {p}");
    }
    let (_, h) = w
        .call(&globex, "GET", &format!("/v1/webhooks/{theirs}"), None)
        .await;
    assert_eq!(h["enabled"], true, "unchanged by acme's attempts");

    // Bad input: unknown event, unknown field, no events, bad id.
    for bad in [
        json!({"url": url, "events": ["memory.exploded"]}),
        json!({"url": url, "events": []}),
        json!({"url": url, "events": ["memory.created"], "secret": "mine"}),
        json!({"url": "not a url", "events": ["memory.created"]}),
    ] {
        let (s, p) = w
            .call(&acme, "POST", "/v1/webhooks", Some(bad.clone()))
            .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{bad} → {p}");
    }
    let (s, _) = w.call(&acme, "GET", "/v1/webhooks/nope", None).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn erasure_and_dead_jobs_are_announced() {
    let w = world(config(true, 20)).await;
    let (recv, url) = Receiver::start().await;
    let admin = w.key(org("acme"), Role::Admin).await;
    w.call(
        &admin,
        "POST",
        "/v1/webhooks",
        Some(json!({"url": url, "events": ["scope.erased", "job.dead"]})),
    )
    .await;
    // A webhook bound to the erased user goes with the erasure.
    let u1 = w.key(scope("acme", "u1"), Role::Admin).await;
    let (_, own) = w
        .call(
            &u1,
            "POST",
            "/v1/webhooks",
            Some(json!({"url": url, "events": ["scope.erased"]})),
        )
        .await;
    w.add("To be erased.", scope("acme", "u1")).await;
    // An operator's erasure of a user in another org (no org named) is not
    // told to acme's webhook: no tenant learns another's ids.
    w.add("Globex's user.", scope("globex", "g7")).await;
    w.memory
        .erase(&RequestCtx::operator("test"), ScopeField::User, "g7", false)
        .await
        .unwrap();
    // acme's admin erases u1: the erased scope names acme.
    let (s, receipt) = w.call(&admin, "DELETE", "/v1/users/u1", None).await;
    assert_eq!(s, StatusCode::OK, "{receipt}");
    let (s, _) = w
        .call(
            &admin,
            "GET",
            &format!("/v1/webhooks/{}", own["id"].as_str().unwrap()),
            None,
        )
        .await;
    assert_eq!(
        s,
        StatusCode::NOT_FOUND,
        "the erased user's webhook is gone"
    );

    // An add job that cannot succeed dies at once.
    let bad = engram_core::ports::Job {
        id: uuid::Uuid::now_v7(),
        kind: "add".into(),
        state: engram_core::ports::JobState::Queued,
        payload: json!({"not": "an add"}),
        principal: Principal::operator(),
        scope: scope("acme", "u2"),
        request_id: None,
        attempts: 0,
        max_attempts: 3,
        last_error: None,
        result: None,
        created_at: w.memory.now(),
        updated_at: w.memory.now(),
        run_after: w.memory.now(),
        lease_owner: None,
        lease_until: None,
        ordering: None,
    };
    w.memory.store().job_insert(&bad).await.unwrap();
    let runner = w.runner("w");
    w.drain(&runner).await;
    let bodies = recv.bodies();
    assert_eq!(bodies.len(), 2, "{bodies:?}");
    let erased = bodies.iter().find(|b| b["type"] == "scope.erased").unwrap();
    assert_eq!(erased["data"]["user_id"], "u1");
    assert_eq!(erased["data"]["org_id"], "acme");
    assert_eq!(erased["data"]["receipt_id"], receipt["receipt_id"]);
    let dead = bodies.iter().find(|b| b["type"] == "job.dead").unwrap();
    assert_eq!(dead["data"]["job_id"], bad.id.to_string());
    assert!(
        dead["data"]["error"]
            .as_str()
            .unwrap()
            .contains("not an add")
    );
}
