//! `engram eval scenarios` through the real binary, service, store and
//! model: replaying the recorded answers, every shipped check passes (the
//! pipeline keeps its contract with the prompts); without an LLM, the
//! verbatim floor runs the same scenarios and is reported, not required.

use std::process::Command;

use serde_json::Value;

mod common;

use common::BIN;

fn run(args: &[&str]) -> Value {
    let scenarios = concat!(env!("CARGO_MANIFEST_DIR"), "/../../eval/scenarios");
    let out = Command::new(BIN)
        .args(["eval", "scenarios", scenarios, "--json"])
        .args(args)
        .env_remove("ENGRAM_LLM_BASE_URL")
        .output()
        .expect("run engram eval scenarios");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

#[test]
fn every_recorded_check_passes_in_replay() {
    let r = run(&["--replay", "--min-accuracy", "1"]);
    assert_eq!(r["mode"], "replay");
    assert!(r["scenarios"].as_u64().unwrap() >= 20, "{r}");
    assert!(r["checks"].as_u64().unwrap() >= 100, "{r}");
    let failed: Vec<&Value> = r["results"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| s["results"].as_array().unwrap())
        .filter(|c| c["passed"] != true)
        .collect();
    assert!(failed.is_empty(), "{failed:#?}");
    assert_eq!(r["passed"], r["checks"]);
    assert_eq!(r["accuracy"], 1.0);
    assert_eq!(
        r["by_family"].as_object().unwrap().len(),
        12,
        "{}",
        r["by_family"]
    );
}

#[test]
fn the_no_llm_floor_is_measured_on_the_same_scenarios() {
    let r = run(&[]);
    assert_eq!(r["mode"], "no-llm");
    let accuracy = r["accuracy"].as_f64().unwrap();
    // Verbatim storage gets some checks right (duplicates, injected blocks,
    // corrections of a date) and cannot get others (relative dates).
    assert!(accuracy > 0.2 && accuracy < 1.0, "{accuracy}");
    assert_eq!(r["by_family"]["relative-date"]["passed"], 0);
    assert!(r["by_family"]["duplicate"]["passed"].as_u64().unwrap() > 0);
}
