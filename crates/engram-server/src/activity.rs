//! The last hour of activity, minute by minute, for the dashboard's overview:
//! searches (with hits, latency and injected tokens) and memory operations.
//!
//! It is read from the metrics the service already records — the process's
//! recorder is the Prometheus one wrapped in [`Observed`], which passes every
//! metric on and also tallies the few the overview charts. Nothing is
//! recorded twice in the service, and nothing here is stored.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, OnceLock};

use engram_core::telemetry::{INJECTED_TOKENS, MEMORY_EVENTS, SEARCH_SECONDS, SEARCHES};
use metrics::{
    Counter, CounterFn, Gauge, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder,
    SharedString, Unit,
};

/// LLM calls by outcome (recorded by engram-llm).
const LLM_REQUESTS: &str = "engram_llm_requests_total";

/// Minutes kept.
pub const MINUTES: usize = 60;
/// Search latencies kept per minute for percentiles (a uniform sample beyond).
const SAMPLES_PER_MINUTE: usize = 2048;

/// One minute's tallies.
#[derive(Debug, Clone, Default)]
pub struct Minute {
    /// Unix minute.
    pub at: i64,
    pub searches: u64,
    pub hits: u64,
    pub injected_tokens: u64,
    /// ADD, UPDATE, DELETE, NOOP.
    pub ops: [u64; 4],
    /// LLM calls answered, and failed (errors or unreachable).
    pub llm_calls: u64,
    pub llm_errors: u64,
    /// Seconds per search (whole service call), sampled.
    latencies: Vec<f64>,
    seen_latencies: u64,
}

/// The ring of recent minutes.
#[derive(Default)]
pub struct Activity {
    minutes: Mutex<VecDeque<Minute>>,
}

fn unix_minute() -> i64 {
    jiff::Timestamp::now().as_second().div_euclid(60)
}

/// A summary of the last hour.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    /// Oldest first, one per minute (zeros where nothing happened), [`MINUTES`] long.
    pub minutes: Vec<Minute>,
    pub searches: u64,
    pub hits: u64,
    pub injected_tokens: u64,
    pub ops: [u64; 4],
    pub llm_calls: u64,
    pub llm_errors: u64,
    /// Seconds.
    pub p50: Option<f64>,
    pub p95: Option<f64>,
}

impl Activity {
    fn with_minute(&self, f: impl FnOnce(&mut Minute)) {
        let now = unix_minute();
        let mut minutes = self.minutes.lock().unwrap_or_else(|e| e.into_inner());
        if minutes.back().is_none_or(|m| m.at != now) {
            minutes.push_back(Minute {
                at: now,
                ..Minute::default()
            });
        }
        while minutes
            .front()
            .is_some_and(|m| m.at <= now - MINUTES as i64)
        {
            minutes.pop_front();
        }
        if let Some(m) = minutes.back_mut() {
            f(m);
        }
    }

    pub fn search(&self, hit: bool) {
        self.with_minute(|m| {
            m.searches += 1;
            m.hits += u64::from(hit);
        });
    }

    pub fn latency(&self, seconds: f64) {
        self.with_minute(|m| {
            m.seen_latencies += 1;
            if m.latencies.len() < SAMPLES_PER_MINUTE {
                m.latencies.push(seconds);
            } else {
                // Reservoir sampling keeps the sample uniform.
                let slot = (fastrand(m.seen_latencies) % m.seen_latencies) as usize;
                if slot < SAMPLES_PER_MINUTE {
                    m.latencies[slot] = seconds;
                }
            }
        });
    }

    pub fn tokens(&self, n: f64) {
        self.with_minute(|m| m.injected_tokens += n.max(0.0) as u64);
    }

    pub fn op(&self, event: &str, n: u64) {
        let i = match event {
            "ADD" => 0,
            "UPDATE" => 1,
            "DELETE" => 2,
            "NOOP" => 3,
            _ => return,
        };
        self.with_minute(|m| m.ops[i] += n);
    }

    pub fn llm(&self, ok: bool) {
        self.with_minute(|m| {
            m.llm_calls += 1;
            m.llm_errors += u64::from(!ok);
        });
    }

    /// The last hour.
    pub fn summary(&self) -> Summary {
        let now = unix_minute();
        let minutes = self.minutes.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = Summary::default();
        let mut latencies = Vec::new();
        for at in now - MINUTES as i64 + 1..=now {
            let m = minutes
                .iter()
                .find(|m| m.at == at)
                .cloned()
                .unwrap_or(Minute {
                    at,
                    ..Minute::default()
                });
            out.searches += m.searches;
            out.hits += m.hits;
            out.injected_tokens += m.injected_tokens;
            out.llm_calls += m.llm_calls;
            out.llm_errors += m.llm_errors;
            for (sum, n) in out.ops.iter_mut().zip(m.ops) {
                *sum += n;
            }
            latencies.extend_from_slice(&m.latencies);
            out.minutes.push(m);
        }
        latencies.sort_by(f64::total_cmp);
        let pick = |q: f64| {
            (!latencies.is_empty())
                .then(|| latencies[((latencies.len() - 1) as f64 * q).round() as usize])
        };
        out.p50 = pick(0.50);
        out.p95 = pick(0.95);
        out
    }
}

/// A cheap deterministic scramble (the reservoir needs spread, not secrecy).
fn fastrand(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

static ACTIVITY: OnceLock<Arc<Activity>> = OnceLock::new();

/// The process's activity (one per process, like the metrics recorder).
pub fn global() -> Arc<Activity> {
    ACTIVITY.get_or_init(Arc::default).clone()
}

/// A recorder that passes everything to `inner` and tallies the overview's metrics.
pub struct Observed<R> {
    pub inner: R,
    pub activity: Arc<Activity>,
}

struct Tap<F> {
    inner: F,
    activity: Arc<Activity>,
    what: What,
}

#[derive(Clone)]
enum What {
    Search { hit: bool },
    Op(String),
    Llm { ok: bool },
    Latency,
    Tokens,
}

impl CounterFn for Tap<Counter> {
    fn increment(&self, value: u64) {
        self.inner.increment(value);
        match &self.what {
            What::Search { hit } => {
                for _ in 0..value {
                    self.activity.search(*hit);
                }
            }
            What::Op(event) => self.activity.op(event, value),
            What::Llm { ok } => {
                for _ in 0..value {
                    self.activity.llm(*ok);
                }
            }
            What::Latency | What::Tokens => {}
        }
    }

    fn absolute(&self, value: u64) {
        self.inner.absolute(value);
    }
}

impl HistogramFn for Tap<Histogram> {
    fn record(&self, value: f64) {
        self.inner.record(value);
        match self.what {
            What::Latency => self.activity.latency(value),
            What::Tokens => self.activity.tokens(value),
            What::Search { .. } | What::Op(_) | What::Llm { .. } => {}
        }
    }
}

fn label<'a>(key: &'a Key, name: &str) -> Option<&'a str> {
    key.labels().find(|l| l.key() == name).map(|l| l.value())
}

impl<R: Recorder> Recorder for Observed<R> {
    fn describe_counter(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.inner.describe_counter(key, unit, description);
    }

    fn describe_gauge(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.inner.describe_gauge(key, unit, description);
    }

    fn describe_histogram(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.inner.describe_histogram(key, unit, description);
    }

    fn register_counter(&self, key: &Key, metadata: &Metadata<'_>) -> Counter {
        let inner = self.inner.register_counter(key, metadata);
        let what = match key.name() {
            SEARCHES => What::Search {
                hit: label(key, "hit") == Some("true"),
            },
            MEMORY_EVENTS => What::Op(label(key, "event").unwrap_or_default().to_owned()),
            LLM_REQUESTS => What::Llm {
                ok: label(key, "outcome") == Some("ok"),
            },
            _ => return inner,
        };
        Counter::from_arc(Arc::new(Tap {
            inner,
            activity: self.activity.clone(),
            what,
        }))
    }

    fn register_gauge(&self, key: &Key, metadata: &Metadata<'_>) -> Gauge {
        self.inner.register_gauge(key, metadata)
    }

    fn register_histogram(&self, key: &Key, metadata: &Metadata<'_>) -> Histogram {
        let inner = self.inner.register_histogram(key, metadata);
        let what = match key.name() {
            SEARCH_SECONDS => What::Latency,
            INJECTED_TOKENS => What::Tokens,
            _ => return inner,
        };
        Histogram::from_arc(Arc::new(Tap {
            inner,
            activity: self.activity.clone(),
            what,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tallies_the_overview_metrics_and_passes_everything_on() {
        let activity = Arc::new(Activity::default());
        let recorder = Observed {
            inner: metrics_util::debugging::DebuggingRecorder::new(),
            activity: activity.clone(),
        };
        let snapshotter = recorder.inner.snapshotter();
        metrics::with_local_recorder(&recorder, || {
            metrics::counter!(SEARCHES, "hit" => "true").increment(2);
            metrics::counter!(SEARCHES, "hit" => "false").increment(1);
            metrics::counter!(MEMORY_EVENTS, "event" => "UPDATE").increment(3);
            for ms in [1.0, 2.0, 3.0, 4.0, 100.0] {
                metrics::histogram!(SEARCH_SECONDS, "path" => "exact").record(ms / 1000.0);
            }
            metrics::histogram!(INJECTED_TOKENS).record(40.0);
            metrics::counter!(LLM_REQUESTS, "client" => "chat", "outcome" => "error").increment(1);
            metrics::counter!("engram_other_total").increment(1);
        });
        let s = activity.summary();
        assert_eq!((s.searches, s.hits, s.injected_tokens), (3, 2, 40));
        assert_eq!(s.ops, [0, 3, 0, 0]);
        assert_eq!((s.llm_calls, s.llm_errors), (1, 1));
        assert_eq!(s.minutes.len(), MINUTES);
        assert_eq!(s.p50, Some(0.003));
        assert_eq!(s.p95, Some(0.1));
        assert_eq!(
            snapshotter.snapshot().into_vec().len(),
            7,
            "every metric reached the inner recorder"
        );
    }
}
