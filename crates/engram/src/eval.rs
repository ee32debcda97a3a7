//! `engram eval locomo`: turn-level evidence retrieval on LoCoMo.
//!
//! Each conversation is ingested turn by turn into its own user scope
//! (`<speaker>: <text>`, plus the image caption when a turn shares an
//! image; the `dia_id` in metadata, never in the text; the session's date
//! as the memory's time). Each question is asked with its text only; a
//! turn split into several memories counts once, at its best rank.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, bail};
use engram_core::clock::Clock;
use engram_core::config::{RetrievalConfig, SignalWeights};
use engram_core::ctx::RequestCtx;
use engram_core::filter::Filter;
use engram_core::memory::Scope;
use engram_core::service::{AddInput, Content, MemoryService, Message, SearchInput};
use engram_sqlite::{SqliteOptions, SqliteStore};
use jiff::Timestamp;
use serde::Serialize;
use serde_json::{Value, json};

use crate::runtime::{RetrievalArgs, load_embedder};

#[derive(clap::Subcommand, Debug)]
pub enum EvalCommand {
    /// LoCoMo (Maharana et al., ACL 2024): evidence recall of each question's turns.
    Locomo(LocomoArgs),
    /// Memory correctness: conversations replayed, then checks of what is
    /// remembered (docs/scenarios.md). No LLM, `--replay`, or a live model.
    Scenarios(crate::scenarios::ScenarioArgs),
}

#[derive(clap::Args, Debug)]
pub struct LocomoArgs {
    /// Path to a LoCoMo JSON file (e.g. data/locomo10.json from the LoCoMo repository).
    pub path: PathBuf,
    /// Cut-offs for recall@k.
    #[arg(long, value_delimiter = ',', default_value = "1,5,10,20")]
    pub k: Vec<usize>,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
    /// Also score each signal alone (semantic, keyword, entity) and report their headlines.
    #[arg(long)]
    pub signals: bool,
    /// Extra retrieval settings to score on the same ingest, `;`-separated:
    /// `semantic,keyword,entity[@half_life_days[:floor]][#candidates][/max][+context_weight][/rrf]`, e.g. `0.5,0.5,0@0;0.4,0.4,0.2#100`,
    /// or `key=value` pairs over the base settings, e.g. `speaker=0.2 norm=calibrated sem_low=0.15`
    /// (keys: semantic keyword entity context candidates speaker speaker_factor question norm sem_low sem_high kw_half).
    #[arg(long)]
    pub sweep: Option<String>,
    /// With `--sweep`: choose among the configurations by leave-one-conversation-out
    /// (pick the best on every other conversation, score it on the one left out) and
    /// report that estimate of recall@10 on categories 1–4.
    #[arg(long)]
    pub loco: bool,
    /// Only the first N conversations.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Sentence-transformers model directory.
    #[arg(long, env = "ENGRAM_MODEL_DIR")]
    pub model_dir: Option<PathBuf>,
    #[command(flatten)]
    pub retrieval: RetrievalArgs,
}

/// One question's outcome.
struct Scored {
    /// Which conversation (index in the file) it belongs to.
    conv: usize,
    category: u64,
    /// Rank (1-based) of each evidence turn found in the top `max_k`.
    ranks: Vec<Option<usize>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Metrics(BTreeMap<String, Value>);

fn metrics(items: &[&Scored], ks: &[usize]) -> Metrics {
    let n = items.len().max(1) as f64;
    let mut m = BTreeMap::new();
    for &k in ks {
        let r: f64 = items
            .iter()
            .map(|s| {
                s.ranks.iter().filter(|r| r.is_some_and(|r| r <= k)).count() as f64
                    / s.ranks.len() as f64
            })
            .sum::<f64>()
            / n;
        m.insert(format!("recall@{k}"), json!(round(r)));
    }
    let mrr: f64 = items
        .iter()
        .map(|s| {
            s.ranks
                .iter()
                .flatten()
                .min()
                .map_or(0.0, |r| 1.0 / *r as f64)
        })
        .sum::<f64>()
        / n;
    let ndcg: f64 = items
        .iter()
        .map(|s| {
            let dcg: f64 = s
                .ranks
                .iter()
                .flatten()
                .filter(|r| **r <= 10)
                .map(|r| 1.0 / ((*r as f64) + 1.0).log2())
                .sum();
            let ideal: f64 = (1..=s.ranks.len().min(10))
                .map(|i| 1.0 / ((i as f64) + 1.0).log2())
                .sum();
            if ideal > 0.0 { dcg / ideal } else { 0.0 }
        })
        .sum::<f64>()
        / n;
    m.insert("mrr".into(), json!(round(mrr)));
    m.insert("ndcg@10".into(), json!(round(ndcg)));
    m.insert("questions".into(), json!(items.len()));
    Metrics(m)
}

fn round(x: f64) -> f64 {
    (x * 10_000.0).round() / 10_000.0
}

/// Normalises evidence ids: `D:11:26` → `D11:26`; splits `D8:6; D9:17`.
pub fn evidence_ids(raw: &Value) -> Vec<String> {
    let mut out = Vec::new();
    for item in raw.as_array().into_iter().flatten() {
        let Some(s) = item.as_str() else { continue };
        for part in s.split(|c: char| c == ';' || c == ',' || c.is_whitespace()) {
            let p = part.trim().trim_end_matches('.');
            let Some(rest) = p.strip_prefix('D') else {
                continue;
            };
            let rest = rest.trim_start_matches(':');
            let mut nums = rest.split(':').filter(|x| !x.is_empty());
            let (Some(a), Some(b)) = (nums.next(), nums.next()) else {
                continue;
            };
            if a.chars().all(|c| c.is_ascii_digit()) && b.chars().all(|c| c.is_ascii_digit()) {
                let id = format!("D{a}:{b}");
                if !out.contains(&id) {
                    out.push(id);
                }
            }
        }
    }
    out
}

/// Parses LoCoMo's `1:56 pm on 8 May, 2023` as UTC.
pub fn session_time(s: &str) -> Option<Timestamp> {
    let (time, date) = s.split_once(" on ")?;
    let mut t = time.split_whitespace();
    let hm = t.next()?;
    let ampm = t.next().unwrap_or("am").to_lowercase();
    let (h, m) = hm.split_once(':')?;
    let mut hour: i8 = h.parse().ok()?;
    let minute: i8 = m.parse().ok()?;
    if ampm == "pm" && hour < 12 {
        hour += 12;
    }
    if ampm == "am" && hour == 12 {
        hour = 0;
    }
    let date = date.replace(',', "");
    let mut d = date.split_whitespace();
    let day: i8 = d.next()?.parse().ok()?;
    let month = d.next()?.to_lowercase();
    let year: i16 = d.next()?.parse().ok()?;
    let month = engram_core::text::month_number(&month)?;
    jiff::civil::date(year, month, day)
        .at(hour, minute, 0, 0)
        .to_zoned(jiff::tz::TimeZone::UTC)
        .ok()
        .map(|z| z.timestamp())
}

/// A clock that stands still (questions are asked right after the conversation).
struct FixedClock(Timestamp);
impl Clock for FixedClock {
    fn now(&self) -> Timestamp {
        self.0
    }
}

struct Turn {
    dia_id: String,
    speaker: String,
    text: String,
    at: Timestamp,
}

fn turns(conv: &Value) -> anyhow::Result<Vec<Turn>> {
    let obj = conv
        .as_object()
        .context("`conversation` is not an object")?;
    let mut sessions: Vec<(usize, &Value)> = obj
        .iter()
        .filter_map(|(k, v)| {
            k.strip_prefix("session_")
                .and_then(|n| n.parse().ok())
                .map(|n: usize| (n, v))
        })
        .filter(|(_, v)| v.is_array())
        .collect();
    sessions.sort_by_key(|(n, _)| *n);
    let mut out = Vec::new();
    for (n, session) in sessions {
        let date = obj
            .get(&format!("session_{n}_date_time"))
            .and_then(Value::as_str)
            .unwrap_or_default();
        let base = session_time(date)
            .with_context(|| format!("session {n}: cannot read date `{date}`"))?;
        for (i, turn) in session.as_array().into_iter().flatten().enumerate() {
            let mut text = turn["text"].as_str().unwrap_or_default().to_owned();
            if let Some(caption) = turn.get("blip_caption").and_then(Value::as_str) {
                text = format!("{text} [image: {caption}]");
            }
            out.push(Turn {
                dia_id: turn["dia_id"].as_str().unwrap_or_default().to_owned(),
                speaker: turn["speaker"].as_str().unwrap_or("speaker").to_owned(),
                text,
                // Turns keep their order within a session.
                at: base + jiff::SignedDuration::from_secs(i as i64),
            });
        }
    }
    Ok(out)
}

pub async fn run(cmd: EvalCommand) -> anyhow::Result<()> {
    let args = match cmd {
        EvalCommand::Locomo(args) => args,
        EvalCommand::Scenarios(args) => return crate::scenarios::run(args).await,
    };
    let raw = std::fs::read_to_string(&args.path).with_context(|| {
        format!("cannot read {} (LoCoMo data: data/locomo10.json in the snap-research/LoCoMo repository)", args.path.display())
    })?;
    let mut samples: Vec<Value> =
        serde_json::from_str(&raw).context("the file is not a LoCoMo JSON list")?;
    if let Some(n) = args.limit {
        samples.truncate(n);
    }
    if samples.is_empty() {
        bail!("no conversations in {}", args.path.display());
    }

    let dir = tempfile::tempdir()?;
    let model_dir = args
        .model_dir
        .clone()
        .unwrap_or_else(engram_embed::default_model_dir);
    let embedder = load_embedder(model_dir).await?;
    let store = SqliteStore::open_async(dir.path().to_owned(), SqliteOptions::default()).await?;
    let mut latest = Timestamp::UNIX_EPOCH;
    let mut all_turns = Vec::new();
    for s in &samples {
        let t = turns(&s["conversation"])?;
        latest = latest.max(t.iter().map(|t| t.at).max().unwrap_or(latest));
        all_turns.push(t);
    }
    let clock = Arc::new(FixedClock(latest + jiff::SignedDuration::from_hours(24)));
    let base_cfg = args.retrieval.retrieval();
    let service = MemoryService::new(
        Arc::new(store),
        embedder,
        RetrievalConfig {
            default_token_budget: 0,
            ..base_cfg.clone()
        },
        args.retrieval.ingest(),
        100_000,
        clock,
    )
    .await?;

    // Ingest.
    let started = std::time::Instant::now();
    let ctx = RequestCtx::operator("eval");
    let mut memories = 0usize;
    let mut corrected = Vec::new();
    for (sample, turns) in samples.iter().zip(&all_turns) {
        let user = sample["sample_id"]
            .as_str()
            .unwrap_or("conversation")
            .to_owned();
        for chunk in turns.chunks(64) {
            let inputs: Vec<AddInput> = chunk
                .iter()
                .map(|t| AddInput {
                    content: Content::Messages(vec![Message {
                        role: "user".into(),
                        content: t.text.clone(),
                        name: Some(t.speaker.clone()),
                    }]),
                    scope: Scope {
                        user_id: Some(user.clone()),
                        ..Default::default()
                    },
                    metadata: json!({"dia_id": t.dia_id})
                        .as_object()
                        .cloned()
                        .unwrap_or_default(),
                    categories: Vec::new(),
                    kind: Default::default(),
                    expires_at: None,
                    ttl: None,
                    timestamp: Some(t.at),
                })
                .collect();
            let out = service.add_batch(&ctx, inputs).await?;
            memories += out
                .iter()
                .flatten()
                .filter(|r| r.event.as_str() == "ADD")
                .count();
            corrected.extend(
                out.iter()
                    .flatten()
                    .filter(|r| r.event.as_str() == "UPDATE")
                    .map(|r| r.id),
            );
        }
    }
    let ingest_secs = started.elapsed().as_secs_f64();
    // Corrections the no-LLM duplicate rule made (a new version of a turn).
    let mut supersessions = Vec::new();
    for id in &corrected {
        for h in service.history(&ctx, *id).await? {
            if h.event.as_str() == "UPDATE" {
                supersessions
                    .push(json!({"old": h.old_text, "new": h.new_text, "reason": h.reason}));
            }
        }
    }
    if !args.json {
        eprintln!(
            "{} supersessions by the correction rule",
            supersessions.len()
        );
        for s in supersessions.iter().take(20) {
            eprintln!("  {}", s);
        }
    }
    let n_turns: usize = all_turns.iter().map(Vec::len).sum();
    if !args.json {
        eprintln!(
            "ingested {} conversations, {n_turns} turns → {memories} memories in {ingest_secs:.1}s",
            samples.len()
        );
    }

    let mut configs: Vec<(String, RetrievalConfig)> = vec![("fused".into(), base_cfg.clone())];
    if args.signals {
        for (name, w) in [
            (
                "semantic",
                SignalWeights {
                    semantic: 1.0,
                    keyword: 0.0,
                    entity: 0.0,
                },
            ),
            (
                "keyword",
                SignalWeights {
                    semantic: 0.0,
                    keyword: 1.0,
                    entity: 0.0,
                },
            ),
            (
                "entity",
                SignalWeights {
                    semantic: 0.0,
                    keyword: 0.0,
                    entity: 1.0,
                },
            ),
        ] {
            configs.push((
                name.into(),
                RetrievalConfig {
                    weights: w,
                    context_weight: 0.0,
                    ..base_cfg.clone()
                },
            ));
        }
    }
    for spec in args
        .sweep
        .iter()
        .flat_map(|s| s.split(';'))
        .map(str::trim)
        .filter(|s| !s.is_empty())
    {
        if spec.contains('=') {
            configs.push((format!("sweep {spec}"), keyed(spec, &base_cfg)?));
            continue;
        }
        let (rest, rrf) = match spec.strip_suffix("/rrf") {
            Some(r) => (r, true),
            None => (spec, false),
        };
        let (rest, context) = rest
            .split_once('+')
            .map_or((rest, None), |(r, c)| (r, Some(c)));
        let (rest, max_norm) = match rest.strip_suffix("/max") {
            Some(r) => (r, true),
            None => (rest, false),
        };
        let (rest, cands) = rest
            .split_once('#')
            .map_or((rest, None), |(r, c)| (r, Some(c)));
        let (w, hl) = rest
            .split_once('@')
            .map_or((rest, None), |(w, h)| (w, Some(h)));
        let parts: Vec<f32> = w
            .split(',')
            .map(|x| x.trim().parse::<f32>())
            .collect::<Result<_, _>>()
            .context("--sweep weights")?;
        let [semantic, keyword, entity] = parts[..] else {
            bail!("--sweep entry `{spec}` needs three weights")
        };
        let mut cfg = RetrievalConfig {
            weights: SignalWeights {
                semantic,
                keyword,
                entity,
            },
            ..base_cfg.clone()
        };
        if let Some(h) = hl {
            let (h, floor) = h.split_once(':').map_or((h, None), |(h, f)| (h, Some(f)));
            cfg.half_life_days =
                engram_core::config::HalfLives::all(h.parse().context("--sweep half-life")?);
            if let Some(f) = floor {
                cfg.decay_floor = f.parse().context("--sweep decay floor")?;
            }
        }
        if let Some(c) = cands {
            cfg.candidates = c.parse().context("--sweep candidates")?;
        }
        if rrf {
            cfg.fusion = engram_core::config::FusionMethod::Rrf;
        }
        if let Some(c) = context {
            cfg.context_weight = c.parse().context("--sweep context weight")?;
        }
        if max_norm {
            cfg.normalization = engram_core::config::Normalization::Max;
        }
        configs.push((format!("sweep {spec}"), cfg));
    }
    let max_k = args.k.iter().copied().max().unwrap_or(20).max(10);
    let mut report = serde_json::Map::new();
    let mut signals = serde_json::Map::new();
    // Per configuration: the headline questions' recall@10, per conversation.
    let mut per_conv: Vec<(String, Vec<(f64, usize)>)> = Vec::new();
    for (name, cfg) in configs {
        let svc = service.with_retrieval(RetrievalConfig {
            default_token_budget: 0,
            candidates: cfg.candidates.max(max_k),
            ..cfg
        });
        let started = std::time::Instant::now();
        let scored = ask_all(&svc, &samples, max_k).await?;
        let search_secs = started.elapsed().as_secs_f64();
        let all: Vec<&Scored> = scored.iter().collect();
        let headline: Vec<&Scored> = scored
            .iter()
            .filter(|s| (1..=4).contains(&s.category))
            .collect();
        let mut convs = vec![(0.0, 0usize); samples.len()];
        for s in &headline {
            convs[s.conv].0 += recall_at(s, 10);
            convs[s.conv].1 += 1;
        }
        per_conv.push((name.clone(), convs));
        if name == "fused" {
            report.insert(
                "overall".into(),
                serde_json::to_value(metrics(&all, &args.k))?,
            );
            let mut by_cat = serde_json::Map::new();
            for (cat, label) in [
                (1, "multi-hop"),
                (2, "temporal"),
                (3, "open-domain"),
                (4, "single-hop"),
                (5, "adversarial"),
            ] {
                let items: Vec<&Scored> = scored.iter().filter(|s| s.category == cat).collect();
                let mut v = serde_json::to_value(metrics(&items, &args.k))?;
                v["category"] = json!(label);
                by_cat.insert(cat.to_string(), v);
            }
            report.insert("by_category".into(), Value::Object(by_cat));
            report.insert(
                "headline".into(),
                serde_json::to_value(metrics(&headline, &args.k))?,
            );
            report.insert(
                "run".into(),
                json!({"conversations": samples.len(), "turns": n_turns, "memories": memories,
                       "supersessions": supersessions.len(),
                       "supersession_samples": supersessions.iter().take(20).collect::<Vec<_>>(),
                       "ingest_seconds": round(ingest_secs), "search_seconds": round(search_secs),
                       "questions_per_second": round(scored.len() as f64 / search_secs.max(1e-9))}),
            );
        } else {
            let mut v = serde_json::to_value(metrics(&headline, &args.k))?;
            for cat in 1..=5u64 {
                let items: Vec<&Scored> = scored.iter().filter(|s| s.category == cat).collect();
                v[format!("recall@10_cat{cat}")] = metrics(&items, &[10]).0["recall@10"].clone();
            }
            signals.insert(name, v);
        }
    }
    if !signals.is_empty() {
        report.insert("signals".into(), Value::Object(signals));
    }
    if args.loco {
        let sweep: Vec<_> = per_conv
            .iter()
            .filter(|(n, _)| n == "fused" || n.starts_with("sweep "))
            .cloned()
            .collect();
        report.insert("loco".into(), loco(&sweep, &samples));
    }
    if args.json {
        println!("{}", serde_json::to_string(&Value::Object(report))?);
    } else {
        print_table(&report);
    }
    Ok(())
}

/// Share of a question's evidence turns in the top `k`.
fn recall_at(s: &Scored, k: usize) -> f64 {
    s.ranks.iter().filter(|r| r.is_some_and(|r| r <= k)).count() as f64 / s.ranks.len() as f64
}

/// Leave-one-conversation-out: for each conversation, the configuration with
/// the best recall@10 on all the others, scored on it; the estimate is the
/// mean over every question so scored.
fn loco(per_conv: &[(String, Vec<(f64, usize)>)], samples: &[Value]) -> Value {
    let n = per_conv.first().map_or(0, |(_, c)| c.len());
    let (mut sum, mut questions) = (0.0, 0usize);
    let mut picks = serde_json::Map::new();
    for held in 0..n {
        let mean_without = |convs: &Vec<(f64, usize)>| {
            let (s, q) = convs
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != held)
                .fold((0.0, 0usize), |a, (_, c)| (a.0 + c.0, a.1 + c.1));
            s / q.max(1) as f64
        };
        let Some((name, convs)) = per_conv
            .iter()
            .max_by(|a, b| mean_without(&a.1).total_cmp(&mean_without(&b.1)))
        else {
            continue;
        };
        sum += convs[held].0;
        questions += convs[held].1;
        let id = samples[held]["sample_id"]
            .as_str()
            .unwrap_or("?")
            .to_owned();
        picks.insert(id, json!({"config": name, "recall@10": round(convs[held].0 / convs[held].1.max(1) as f64)}));
    }
    json!({"recall@10": round(sum / questions.max(1) as f64), "questions": questions,
           "configs": per_conv.len(), "picks": picks})
}

/// A `--sweep` entry of `key=value` pairs over `base`.
fn keyed(spec: &str, base: &RetrievalConfig) -> anyhow::Result<RetrievalConfig> {
    let mut cfg = base.clone();
    for pair in spec.split_whitespace() {
        let (k, v) = pair
            .split_once('=')
            .with_context(|| format!("--sweep: `{pair}` is not key=value"))?;
        let num = || -> anyhow::Result<f32> {
            v.parse::<f32>()
                .with_context(|| format!("--sweep: `{k}` wants a number, not `{v}`"))
        };
        match k {
            "semantic" => cfg.weights.semantic = num()?,
            "keyword" => cfg.weights.keyword = num()?,
            "entity" => cfg.weights.entity = num()?,
            "context" => cfg.context_weight = num()?,
            "candidates" => cfg.candidates = num()? as usize,
            "speaker" => cfg.speaker_weight = num()?,
            "question" => cfg.question_factor = num()?,
            "speaker_factor" => cfg.speaker_factor = num()?,
            "sem_low" => cfg.calibration.semantic_low = num()?,
            "sem_high" => cfg.calibration.semantic_high = num()?,
            "kw_half" => cfg.calibration.keyword_half = num()?,
            "norm" => {
                cfg.normalization = match v {
                    "minmax" => engram_core::config::Normalization::MinMax,
                    "max" => engram_core::config::Normalization::Max,
                    "calibrated" => engram_core::config::Normalization::Calibrated,
                    other => bail!("--sweep: unknown norm `{other}`"),
                }
            }
            other => bail!("--sweep: unknown key `{other}`"),
        }
    }
    Ok(cfg)
}

async fn ask_all(
    service: &MemoryService,
    samples: &[Value],
    max_k: usize,
) -> anyhow::Result<Vec<Scored>> {
    let mut out = Vec::new();
    let ctx = RequestCtx::operator("eval");
    for (conv, sample) in samples.iter().enumerate() {
        let user = sample["sample_id"]
            .as_str()
            .unwrap_or("conversation")
            .to_owned();
        let filter = Filter::from_scope(&Scope {
            user_id: Some(user.clone()),
            ..Default::default()
        });
        for qa in sample["qa"].as_array().into_iter().flatten() {
            let evidence = evidence_ids(&qa["evidence"]);
            if evidence.is_empty() {
                continue;
            }
            let question = qa["question"].as_str().unwrap_or_default();
            let hits = service
                .search(
                    &ctx,
                    SearchInput {
                        query: question.to_owned(),
                        filter: filter.clone(),
                        top_k: Some(max_k.min(100)),
                        threshold: None,
                        token_budget: Some(0),
                        explain: false,
                    },
                )
                .await?
                .hits;
            // A turn split into several memories counts once, at its best rank.
            let mut ranked: Vec<String> = Vec::new();
            let mut seen = HashSet::new();
            for h in hits {
                if let Some(id) = h.memory.metadata.get("dia_id").and_then(Value::as_str)
                    && seen.insert(id.to_owned())
                {
                    ranked.push(id.to_owned());
                }
            }
            let ranks = evidence
                .iter()
                .map(|e| ranked.iter().position(|r| r == e).map(|p| p + 1))
                .collect();
            out.push(Scored {
                conv,
                category: qa["category"].as_u64().unwrap_or(0),
                ranks,
            });
        }
    }
    Ok(out)
}

fn print_table(report: &serde_json::Map<String, Value>) {
    let cols = [
        "recall@1",
        "recall@5",
        "recall@10",
        "recall@20",
        "mrr",
        "ndcg@10",
        "questions",
    ];
    println!(
        "{:<24}{}",
        "",
        cols.iter().map(|c| format!("{c:>11}")).collect::<String>()
    );
    let row = |label: &str, m: &Value| {
        let cells: String = cols
            .iter()
            .map(|c| {
                format!(
                    "{:>11}",
                    m.get(*c).map(|v| v.to_string()).unwrap_or_default()
                )
            })
            .collect();
        println!("{label:<24}{cells}");
    };
    if let Some(h) = report.get("headline") {
        row("headline (cat. 1-4)", h);
    }
    if let Some(o) = report.get("overall") {
        row("overall", o);
    }
    if let Some(Value::Object(cats)) = report.get("by_category") {
        for (k, v) in cats {
            row(
                &format!("  {k} {}", v["category"].as_str().unwrap_or("")),
                v,
            );
        }
    }
    if let Some(Value::Object(s)) = report.get("signals") {
        for (k, v) in s {
            row(&format!("{k} alone (1-4)"), v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evidence_normalisation() {
        assert_eq!(
            evidence_ids(&json!(["D1:3", "D:11:26", "D8:6; D9:17", "garbage"])),
            vec!["D1:3", "D11:26", "D8:6", "D9:17"]
        );
        assert!(evidence_ids(&json!([])).is_empty());
    }

    #[test]
    fn session_dates() {
        let t = session_time("1:56 pm on 8 May, 2023").unwrap();
        assert_eq!(t.to_string(), "2023-05-08T13:56:00Z");
        assert_eq!(
            session_time("12:09 am on 13 September, 2023")
                .unwrap()
                .to_string(),
            "2023-09-13T00:09:00Z"
        );
        assert!(session_time("yesterday").is_none());
    }

    #[test]
    fn metric_maths() {
        let a = Scored {
            conv: 0,
            category: 1,
            ranks: vec![Some(1), None],
        };
        let b = Scored {
            conv: 0,
            category: 2,
            ranks: vec![Some(3)],
        };
        let m = metrics(&[&a, &b], &[1, 5]).0;
        assert_eq!(m["recall@1"], json!(0.25)); // (1/2 + 0) / 2
        assert_eq!(m["recall@5"], json!(0.75)); // (1/2 + 1) / 2
        assert_eq!(m["mrr"], json!(round((1.0 + 1.0 / 3.0) / 2.0)));
    }
}
