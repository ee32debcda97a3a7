//! Several stateless Engram nodes on one Postgres: what one node writes the
//! others read, their workers share one job queue (each job runs once, none
//! is lost), and when a node is killed mid-queue the others finish its jobs.
//! Needs the throwaway server from `scripts/pg run` (`make test` provides it).

mod common;

use std::time::{Duration, Instant};

use common::{Server, create_key_with, get_json, post_json, sentence};
use serde_json::{Value, json};

struct Cluster {
    key: String,
    nodes: Vec<Server>,
    db: tokio_postgres::Client,
    _dirs: Vec<tempfile::TempDir>,
}

async fn cluster(n: usize, extra: &[&str]) -> Cluster {
    let url = engram_testkit::pg::fresh_database().await;
    let dirs: Vec<_> = (0..n).map(|_| tempfile::tempdir().unwrap()).collect();
    let key = create_key_with(dirs[0].path(), &["--store", &url]);
    let mut flags = vec!["--store", url.as_str(), "--workers", "2"];
    flags.extend_from_slice(extra);
    let nodes = dirs
        .iter()
        .map(|d| Server::start_with(d.path(), "warn", &flags))
        .collect();
    let (db, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    Cluster {
        key,
        nodes,
        db,
        _dirs: dirs,
    }
}

impl Cluster {
    async fn job_states(&self) -> (i64, i64, i64, i64) {
        let row = self
            .db
            .query_one(
                "SELECT count(*) FILTER (WHERE state = 'queued'), count(*) FILTER (WHERE state = 'running'), \
                 count(*) FILTER (WHERE state = 'done'), count(*) FILTER (WHERE state = 'dead') FROM jobs",
                &[],
            )
            .await
            .unwrap();
        (row.get(0), row.get(1), row.get(2), row.get(3))
    }

    async fn wait_all_done(&self, total: i64, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            let (queued, running, done, dead) = self.job_states().await;
            assert_eq!(dead, 0, "a job was dead-lettered");
            if done == total {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "queue not drained: {queued} queued, {running} running, {done} done"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Checks that every job ran exactly once: each finished with one result,
    /// and the memories and ADD history events of `user` are exactly those the
    /// jobs' results name (a second run would have left a memory no result
    /// names). Returns `(added, near-duplicates skipped)`.
    async fn exactly_once(&self, user: &str, jobs: usize) -> (usize, usize) {
        let rows = self.db.query("SELECT result FROM jobs", &[]).await.unwrap();
        assert_eq!(rows.len(), jobs);
        let mut added = std::collections::BTreeSet::new();
        let mut skipped = 0;
        for r in &rows {
            let result: Value = serde_json::from_str(&r.get::<_, String>(0)).unwrap();
            let results = result["results"].as_array().unwrap();
            assert_eq!(results.len(), 1, "{result}");
            match results[0]["event"].as_str() {
                Some("ADD") => assert!(added.insert(results[0]["id"].as_str().unwrap().to_owned())),
                // The embedding model judged it a near-duplicate of an earlier text.
                Some("NOOP") => skipped += 1,
                _ => panic!("unexpected job result {result}"),
            }
        }
        let n = added.len() as i64;
        assert_eq!(
            self.memories_of(user).await,
            (n, n, n),
            "one memory per added job, no more"
        );
        (added.len(), skipped)
    }

    /// `(distinct texts, memories, ADD history events)` of a user.
    async fn memories_of(&self, user: &str) -> (i64, i64, i64) {
        let row = self
            .db
            .query_one(
                "SELECT count(DISTINCT text), count(*), \
                 (SELECT count(*) FROM history WHERE user_id = $1 AND event = 'ADD') \
                 FROM memories WHERE user_id = $1 AND invalid_at IS NULL",
                &[&user],
            )
            .await
            .unwrap();
        (row.get(0), row.get(1), row.get(2))
    }

    /// Enqueues one async add per text, spread over the nodes, 8 at a time.
    async fn enqueue(&self, user: &str, texts: Vec<String>, nodes: &[usize]) -> f64 {
        let http = reqwest::Client::new();
        let started = Instant::now();
        let urls: Vec<String> = nodes.iter().map(|i| self.nodes[*i].url.clone()).collect();
        let mut pending = Vec::new();
        for (i, text) in texts.into_iter().enumerate() {
            let (http, key, url) = (http.clone(), self.key.clone(), urls[i % urls.len()].clone());
            let body = json!({"text": text, "user_id": user, "async": true});
            pending.push(tokio::spawn(async move {
                let resp = http
                    .post(format!("{url}/v1/memories"))
                    .bearer_auth(&key)
                    .json(&body)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(resp.status(), 202);
            }));
            if pending.len() == 8 {
                for p in pending.drain(..) {
                    p.await.unwrap();
                }
            }
        }
        for p in pending {
            p.await.unwrap();
        }
        started.elapsed().as_secs_f64()
    }
}

async fn jobs_done_by(http: &reqwest::Client, node: &Server, key: &str) -> f64 {
    let text = http
        .get(format!("{}/metrics", node.url))
        .bearer_auth(key)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find(|l| l.starts_with("engram_jobs_total{outcome=\"done\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_share_writes_keys_and_one_queue_of_1000_jobs() {
    let c = cluster(2, &[]).await;
    let http = reqwest::Client::new();
    let (a, b) = (&c.nodes[0], &c.nodes[1]);

    // A write through node A is searchable through node B at once.
    let resp = http
        .post(format!("{}/v1/memories", a.url))
        .bearer_auth(&c.key)
        .json(&json!({"text": "Ann moved to Lisbon in May", "user_id": "ann"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let found = post_json(
        &http,
        &format!("{}/v1/memories/search", b.url),
        &c.key,
        &json!({"query": "Where does Ann live now?", "user_id": "ann"}),
    )
    .await;
    assert_eq!(
        found["results"][0]["memory"], "Ann moved to Lisbon in May",
        "{found}"
    );
    // A key created through node B works on node A.
    let created = post_json(
        &http,
        &format!("{}/v1/keys", b.url),
        &c.key,
        &json!({"name": "ann-app", "role": "read_only", "user_id": "ann"}),
    )
    .await;
    let ann_key = created["key"]
        .as_str()
        .unwrap_or_else(|| panic!("{created}"));
    let listed = get_json(
        &http,
        &format!("{}/v1/memories?user_id=ann", a.url),
        ann_key,
    )
    .await;
    assert_eq!(listed["results"].as_array().unwrap().len(), 1, "{listed}");

    // 1,000 async adds through both nodes, drained by 4 workers (2 per node).
    let n = 1000;
    let texts: Vec<String> = (0..n).map(|i| sentence(9_000_000 + i)).collect();
    let started = Instant::now();
    let accept = c.enqueue("queue", texts, &[0, 1]).await;
    c.wait_all_done(n as i64, Duration::from_secs(300)).await;
    let drained = started.elapsed().as_secs_f64();
    let retried: i64 =
        c.db.query_one("SELECT count(*) FROM jobs WHERE attempts <> 1", &[])
            .await
            .unwrap()
            .get(0);
    assert_eq!(retried, 0, "no job ran twice");
    let (added, skipped) = c.exactly_once("queue", n as usize).await;
    let by_a = jobs_done_by(&http, a, &c.key).await;
    let by_b = jobs_done_by(&http, b, &c.key).await;
    assert_eq!(by_a + by_b, n as f64, "every job done by exactly one node");
    assert!(
        by_a > 0.0 && by_b > 0.0,
        "both nodes worked: {by_a} / {by_b}"
    );
    eprintln!(
        "two nodes: {n} async adds accepted in {accept:.1}s, drained in {drained:.1}s ({:.0} jobs/s, debug build) \
         by 4 workers: node A ran {by_a}, node B {by_b}; 0 retried, 0 lost, 0 run twice \
         ({added} added, {skipped} near-duplicates skipped)",
        n as f64 / drained
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_mid_queue_leaves_its_jobs_to_the_others() {
    let c = cluster(2, &["--job-lease-secs", "3"]).await;
    let n = 300;
    let texts: Vec<String> = (0..n).map(|i| sentence(8_000_000 + i)).collect();
    c.enqueue("kill", texts, &[0]).await;
    // Kill node A while it holds leases: more jobs running than B has workers.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (queued, running, _, _) = c.job_states().await;
        if running >= 3 && queued > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "the workers never got going");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    c.nodes[0].signal("-KILL");
    let (queued, running, done, _) = c.job_states().await;
    let killed = Instant::now();
    c.wait_all_done(n as i64, Duration::from_secs(300)).await;
    let taken_over: i64 =
        c.db.query_one("SELECT count(*) FROM jobs WHERE attempts = 2", &[])
            .await
            .unwrap()
            .get(0);
    assert!(taken_over >= 1, "node B took over node A's leased jobs");
    let (added, skipped) = c.exactly_once("kill", n as usize).await;
    eprintln!(
        "kill -9 of node A with {queued} queued, {running} running, {done} done: node B finished all {n} \
         ({taken_over} taken over after their 3 s lease ran out; {added} added, {skipped} near-duplicates) \
         {:.1}s after the kill",
        killed.elapsed().as_secs_f64()
    );
}
