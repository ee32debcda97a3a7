//! How memories age: expiry policies (session TTL from last use, per-org and
//! per-app defaults, the episodic cap) and the settings of the sweep that
//! removes expired memories. Pure rules; the service applies them.
//!
//! A memory's expiry is either **fixed** (`expires_at` given by the caller)
//! or **sliding** (`idle_ttl`: every use — a write, a search that returns
//! it, a get of it — moves `expires_at` to that time plus the TTL; listings
//! are not uses). Session memories (those
//! with a `run_id`) get the session TTL of their scope's policy; other
//! memories the policy's memory TTL, if it has one. An expired memory is
//! invisible at once (every read checks `expires_at` against the clock) and
//! removed, with all its versions and history, by the next sweep.

use std::fmt;
use std::str::FromStr;

use jiff::SignedDuration;
use serde::{Deserialize, Serialize};

use crate::memory::Scope;
use crate::{Error, Result};

/// Expiry rules for memories of one scope (the global defaults, or an
/// org/app override). `None` fields inherit from the less specific level.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PolicyRules {
    /// Sliding TTL of session (`run_id`) memories; zero means they never expire.
    pub session_ttl: Option<SignedDuration>,
    /// Sliding TTL of every other memory; zero means none.
    pub memory_ttl: Option<SignedDuration>,
    /// Keep at most this many current episodic memories per scope (the most
    /// recent); older ones expire when a new one arrives. Zero means no cap.
    pub episodic_cap: Option<usize>,
    /// The longest TTL a request may ask for (`ttl` on an add); zero means no bound.
    pub max_ttl: Option<SignedDuration>,
}

impl PolicyRules {
    fn overlay(&mut self, over: &PolicyRules) {
        if over.session_ttl.is_some() {
            self.session_ttl = over.session_ttl;
        }
        if over.memory_ttl.is_some() {
            self.memory_ttl = over.memory_ttl;
        }
        if over.episodic_cap.is_some() {
            self.episodic_cap = over.episodic_cap;
        }
        if over.max_ttl.is_some() {
            self.max_ttl = over.max_ttl;
        }
    }
}

/// An org's or app's override of the defaults. With both ids it applies to
/// that app within that org only.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScopePolicy {
    pub org_id: Option<String>,
    pub app_id: Option<String>,
    #[serde(flatten)]
    pub rules: PolicyRules,
}

impl ScopePolicy {
    fn applies_to(&self, scope: &Scope) -> bool {
        let same = |want: &Option<String>, have: &Option<String>| {
            want.as_ref().is_none_or(|w| have.as_ref() == Some(w))
        };
        same(&self.org_id, &scope.org_id) && same(&self.app_id, &scope.app_id)
    }

    /// org-only < app-only < org and app.
    fn specificity(&self) -> u8 {
        u8::from(self.org_id.is_some()) + 2 * u8::from(self.app_id.is_some())
    }
}

impl FromStr for ScopePolicy {
    type Err = Error;

    /// `org_id=acme,app_id=support,session_ttl=7d,memory_ttl=0,episodic_cap=200,max_ttl=90d`
    /// (at least one of `org_id`, `app_id`, and at least one rule).
    fn from_str(s: &str) -> Result<ScopePolicy> {
        let mut p = ScopePolicy {
            org_id: None,
            app_id: None,
            rules: PolicyRules::default(),
        };
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (key, value) = part.split_once('=').ok_or_else(|| {
                Error::invalid(format!("policy part `{part}` is not `key=value`"))
            })?;
            let value = value.trim();
            match key.trim() {
                "org_id" => p.org_id = Some(value.to_owned()),
                "app_id" => p.app_id = Some(value.to_owned()),
                "session_ttl" => p.rules.session_ttl = Some(parse_duration(value)?),
                "memory_ttl" => p.rules.memory_ttl = Some(parse_duration(value)?),
                "max_ttl" => p.rules.max_ttl = Some(parse_duration(value)?),
                "episodic_cap" => {
                    p.rules.episodic_cap = Some(value.parse().map_err(|_| {
                        Error::invalid(format!("`episodic_cap={value}` is not a count"))
                    })?)
                }
                other => {
                    return Err(Error::invalid(format!(
                        "unknown policy key `{other}`; expected org_id, app_id, session_ttl, memory_ttl, episodic_cap or max_ttl"
                    )));
                }
            }
        }
        if p.org_id.is_none() && p.app_id.is_none() {
            return Err(Error::invalid(
                "a scope policy names `org_id`, `app_id` or both",
            ));
        }
        if p.rules == PolicyRules::default() {
            return Err(Error::invalid(
                "a scope policy sets at least one of session_ttl, memory_ttl, episodic_cap, max_ttl",
            ));
        }
        Ok(p)
    }
}

impl fmt::Display for ScopePolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        if let Some(o) = &self.org_id {
            parts.push(format!("org_id={o}"));
        }
        if let Some(a) = &self.app_id {
            parts.push(format!("app_id={a}"));
        }
        let r = &self.rules;
        for (k, v) in [
            ("session_ttl", r.session_ttl),
            ("memory_ttl", r.memory_ttl),
            ("max_ttl", r.max_ttl),
        ] {
            if let Some(v) = v {
                parts.push(format!("{k}={}", format_duration(v)));
            }
        }
        if let Some(c) = r.episodic_cap {
            parts.push(format!("episodic_cap={c}"));
        }
        f.write_str(&parts.join(","))
    }
}

/// The rules in force for one scope, every field resolved.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Policy {
    pub session_ttl: Option<SignedDuration>,
    pub memory_ttl: Option<SignedDuration>,
    pub episodic_cap: Option<usize>,
    pub max_ttl: Option<SignedDuration>,
}

/// Lifecycle settings: the default rules, per-scope overrides and the sweep.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LifecycleConfig {
    pub defaults: PolicyRules,
    pub policies: Vec<ScopePolicy>,
    /// How often each node sweeps expired memories away.
    pub sweep_interval: SignedDuration,
    /// Memories removed per sweep transaction.
    pub sweep_batch: usize,
}

/// The shortest TTL a request may ask for.
pub const MIN_TTL: SignedDuration = SignedDuration::from_secs(60);

impl Default for LifecycleConfig {
    fn default() -> Self {
        LifecycleConfig {
            defaults: PolicyRules {
                session_ttl: Some(SignedDuration::from_hours(30 * 24)),
                memory_ttl: None,
                episodic_cap: None,
                max_ttl: None,
            },
            policies: Vec::new(),
            sweep_interval: SignedDuration::from_secs(300),
            sweep_batch: 1000,
        }
    }
}

impl LifecycleConfig {
    /// The rules for `scope`: the defaults, then every matching policy from
    /// the least to the most specific.
    pub fn policy(&self, scope: &Scope) -> Policy {
        let mut rules = self.defaults.clone();
        let mut matching: Vec<&ScopePolicy> = self
            .policies
            .iter()
            .filter(|p| p.applies_to(scope))
            .collect();
        matching.sort_by_key(|p| p.specificity());
        for p in matching {
            rules.overlay(&p.rules);
        }
        let positive = |d: Option<SignedDuration>| d.filter(|d| d.is_positive());
        Policy {
            session_ttl: positive(rules.session_ttl),
            memory_ttl: positive(rules.memory_ttl),
            episodic_cap: rules.episodic_cap.filter(|c| *c > 0),
            max_ttl: positive(rules.max_ttl),
        }
    }
}

impl Policy {
    /// The sliding TTL a new memory in `scope` gets: the request's own
    /// (checked against the bounds) or the policy's.
    pub fn idle_ttl(
        &self,
        scope: &Scope,
        requested: Option<SignedDuration>,
    ) -> Result<Option<SignedDuration>> {
        if let Some(ttl) = requested {
            if ttl < MIN_TTL {
                return Err(Error::invalid(format!(
                    "`ttl` is {}; the shortest allowed is {}",
                    format_duration(ttl),
                    format_duration(MIN_TTL)
                )));
            }
            let ceiling = SignedDuration::from_hours(100 * 365 * 24);
            if ttl > ceiling {
                return Err(Error::invalid(format!(
                    "`ttl` is longer than {}; use no expiry instead",
                    format_duration(ceiling)
                )));
            }
            if let Some(max) = self.max_ttl
                && ttl > max
            {
                return Err(Error::invalid(format!(
                    "`ttl` is {}; this scope allows at most {}",
                    format_duration(ttl),
                    format_duration(max)
                )));
            }
            return Ok(Some(ttl));
        }
        Ok(if scope.run_id.is_some() {
            self.session_ttl
        } else {
            self.memory_ttl
        })
    }
}

/// Whether a sliding expiry is worth moving at `now`: only once it has used up
/// a twentieth of its TTL, so a memory read on every turn is written at most
/// ~20 times per TTL, not once per read.
pub fn needs_touch(expires_at: jiff::Timestamp, ttl: SignedDuration, now: jiff::Timestamp) -> bool {
    let fresh = now.checked_add(ttl).unwrap_or(now);
    let slack = ttl / 20;
    expires_at > now
        && fresh
            .as_millisecond()
            .saturating_sub(expires_at.as_millisecond())
            > slack.as_millis() as i64
}

/// `90s`, `15m`, `12h`, `7d`, `2w` or plain seconds; `0` (any unit) means none.
pub fn parse_duration(s: &str) -> Result<SignedDuration> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    let n: i64 = digits.parse().map_err(|_| {
        Error::invalid(format!(
            "`{s}` is not a duration; write e.g. 90s, 15m, 12h, 7d or 2w"
        ))
    })?;
    let secs_per = match unit.trim() {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        other => {
            return Err(Error::invalid(format!(
                "unknown duration unit `{other}` in `{s}`; use s, m, h, d or w"
            )));
        }
    };
    n.checked_mul(secs_per)
        .filter(|secs| *secs <= 100 * 365 * 86_400)
        .map(SignedDuration::from_secs)
        .ok_or_else(|| Error::invalid(format!("duration `{s}` is longer than 100 years")))
}

/// The largest whole unit: `7d`, `36h`, `90s`.
pub fn format_duration(d: SignedDuration) -> String {
    let secs = d.as_secs();
    for (unit, per) in [("w", 7 * 86_400), ("d", 86_400), ("h", 3600), ("m", 60)] {
        if secs != 0 && secs % per == 0 {
            return format!("{}{unit}", secs / per);
        }
    }
    format!("{secs}s")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scope(org: Option<&str>, app: Option<&str>, run: Option<&str>) -> Scope {
        Scope {
            org_id: org.map(Into::into),
            app_id: app.map(Into::into),
            user_id: Some("u".into()),
            agent_id: None,
            run_id: run.map(Into::into),
        }
    }

    #[test]
    fn durations_parse_and_print() {
        assert_eq!(parse_duration("90").unwrap(), SignedDuration::from_secs(90));
        assert_eq!(
            parse_duration("7d").unwrap(),
            SignedDuration::from_hours(168)
        );
        assert_eq!(parse_duration("0").unwrap(), SignedDuration::ZERO);
        for bad in ["", "d", "7y", "-1d", "1.5h", "999999999999w"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        for s in ["2w", "3d", "36h", "15m", "90s"] {
            assert_eq!(format_duration(parse_duration(s).unwrap()), s);
        }
    }

    #[test]
    fn the_most_specific_policy_wins_field_by_field() {
        let cfg = LifecycleConfig {
            policies: vec![
                "org_id=acme,session_ttl=7d,episodic_cap=50"
                    .parse()
                    .unwrap(),
                "org_id=acme,app_id=support,session_ttl=1d".parse().unwrap(),
                "app_id=support,memory_ttl=90d,session_ttl=2d"
                    .parse()
                    .unwrap(),
            ],
            ..LifecycleConfig::default()
        };
        let day = SignedDuration::from_hours(24);
        let p = cfg.policy(&scope(Some("acme"), Some("support"), None));
        assert_eq!(p.session_ttl, Some(day));
        assert_eq!(p.memory_ttl, Some(day * 90));
        assert_eq!(p.episodic_cap, Some(50));
        let p = cfg.policy(&scope(Some("acme"), None, None));
        assert_eq!((p.session_ttl, p.memory_ttl), (Some(day * 7), None));
        let p = cfg.policy(&scope(Some("other"), None, None));
        assert_eq!(p.session_ttl, Some(day * 30));
        assert_eq!(p.episodic_cap, None);
    }

    #[test]
    fn zero_turns_a_rule_off_and_requests_stay_within_bounds() {
        let cfg = LifecycleConfig {
            policies: vec!["org_id=acme,session_ttl=0,max_ttl=1d".parse().unwrap()],
            ..LifecycleConfig::default()
        };
        let s = scope(Some("acme"), None, Some("r1"));
        let p = cfg.policy(&s);
        assert_eq!(p.idle_ttl(&s, None).unwrap(), None);
        let hour = SignedDuration::from_hours(1);
        assert_eq!(p.idle_ttl(&s, Some(hour)).unwrap(), Some(hour));
        let e = p.idle_ttl(&s, Some(hour * 25)).unwrap_err();
        assert!(e.message.contains("at most 1d"), "{}", e.message);
        let e = p
            .idle_ttl(&s, Some(SignedDuration::from_secs(5)))
            .unwrap_err();
        assert!(e.message.contains("shortest"), "{}", e.message);
    }

    #[test]
    fn bad_policies_say_what_is_wrong() {
        for (text, says) in [
            ("session_ttl=7d", "names `org_id`"),
            ("org_id=a", "at least one of"),
            ("org_id=a,ttl=3d", "unknown policy key `ttl`"),
            ("org_id=a,episodic_cap=-1", "not a count"),
            ("org_id=a,session_ttl", "not `key=value`"),
        ] {
            let e = text.parse::<ScopePolicy>().unwrap_err();
            assert!(e.message.contains(says), "{text}: {}", e.message);
        }
        let p: ScopePolicy = "org_id=a,app_id=b,session_ttl=7d,episodic_cap=3"
            .parse()
            .unwrap();
        assert_eq!(
            p.to_string(),
            "org_id=a,app_id=b,session_ttl=1w,episodic_cap=3"
        );
    }

    #[test]
    fn touches_are_rationed() {
        let now = jiff::Timestamp::from_second(1_000_000).unwrap();
        let ttl = SignedDuration::from_hours(20);
        // Just written: nothing to do.
        assert!(!needs_touch(now + ttl, ttl, now));
        // An hour (1/20) used up: still nothing; more than that: move it.
        assert!(!needs_touch(
            now + ttl - SignedDuration::from_hours(1),
            ttl,
            now
        ));
        assert!(needs_touch(now + SignedDuration::from_hours(18), ttl, now));
        // Already expired: never brought back.
        assert!(!needs_touch(now, ttl, now));
    }
}
