//! Webhooks as the domain sees them: the events a subscription may ask for,
//! which changes reach it (its scope), the payload it receives (Engram's
//! `{type, timestamp, data}` or Mem0's `event_details`), the Standard
//! Webhooks signature, and which targets are refused (the SSRF guard).
//!
//! No I/O here: resolving a host and sending a request are the
//! [`WebhookSender`](crate::ports::WebhookSender) port's; this module says
//! which addresses a sender must refuse ([`blocked_ip`]).

use std::net::{IpAddr, Ipv4Addr};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, KeyInit, Mac};
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::Sha256;
use uuid::Uuid;

use crate::memory::{Event, HistoryEvent, Scope};
use crate::{Error, Result};

/// What a webhook can subscribe to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum WebhookEvent {
    #[serde(rename = "memory.created")]
    MemoryCreated,
    #[serde(rename = "memory.updated")]
    MemoryUpdated,
    #[serde(rename = "memory.deleted")]
    MemoryDeleted,
    #[serde(rename = "memory.expired")]
    MemoryExpired,
    #[serde(rename = "scope.erased")]
    ScopeErased,
    #[serde(rename = "job.dead")]
    JobDead,
}

impl WebhookEvent {
    pub const ALL: [WebhookEvent; 6] = [
        WebhookEvent::MemoryCreated,
        WebhookEvent::MemoryUpdated,
        WebhookEvent::MemoryDeleted,
        WebhookEvent::MemoryExpired,
        WebhookEvent::ScopeErased,
        WebhookEvent::JobDead,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            WebhookEvent::MemoryCreated => "memory.created",
            WebhookEvent::MemoryUpdated => "memory.updated",
            WebhookEvent::MemoryDeleted => "memory.deleted",
            WebhookEvent::MemoryExpired => "memory.expired",
            WebhookEvent::ScopeErased => "scope.erased",
            WebhookEvent::JobDead => "job.dead",
        }
    }

    /// Mem0's name for the event, where Mem0 has one.
    pub fn mem0_name(self) -> Option<&'static str> {
        match self {
            WebhookEvent::MemoryCreated => Some("memory_add"),
            WebhookEvent::MemoryUpdated => Some("memory_update"),
            WebhookEvent::MemoryDeleted => Some("memory_delete"),
            _ => None,
        }
    }

    /// A native name (`memory.created`).
    pub fn parse(s: &str) -> Result<WebhookEvent> {
        WebhookEvent::ALL
            .into_iter()
            .find(|e| e.as_str() == s)
            .ok_or_else(|| {
                Error::invalid(format!(
                    "unknown webhook event `{s}`: use {}",
                    WebhookEvent::ALL.map(WebhookEvent::as_str).join(", ")
                ))
            })
    }

    /// A Mem0 event name. `memory_categorize` is accepted and never sent
    /// (Engram does not categorise memories): `Ok(None)`.
    pub fn parse_mem0(s: &str) -> Result<Option<WebhookEvent>> {
        match s {
            "memory_add" => Ok(Some(WebhookEvent::MemoryCreated)),
            "memory_update" => Ok(Some(WebhookEvent::MemoryUpdated)),
            "memory_delete" => Ok(Some(WebhookEvent::MemoryDeleted)),
            "memory_categorize" => Ok(None),
            _ => Err(Error::invalid(format!(
                "unknown webhook event type `{s}`: use memory_add, memory_update, memory_delete or memory_categorize"
            ))),
        }
    }

    fn bit(self) -> i64 {
        1 << (self as u32)
    }

    /// The events as a bit set (how stores keep them).
    pub fn mask(events: &[WebhookEvent]) -> i64 {
        events.iter().fold(0, |m, e| m | e.bit())
    }

    pub fn from_mask(mask: i64) -> Vec<WebhookEvent> {
        WebhookEvent::ALL
            .into_iter()
            .filter(|e| mask & e.bit() != 0)
            .collect()
    }

    /// The event a history row is, for a webhook (a revert is an update).
    pub fn of_history(h: &HistoryEvent) -> Option<WebhookEvent> {
        match h.event {
            Event::Add => Some(WebhookEvent::MemoryCreated),
            Event::Update | Event::Revert => Some(WebhookEvent::MemoryUpdated),
            Event::Delete => Some(WebhookEvent::MemoryDeleted),
            Event::Noop | Event::Feedback => None,
        }
    }
}

/// Which payload shape a webhook receives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WebhookFormat {
    /// `{type, timestamp, data}` (Standard Webhooks).
    Engram,
    /// Mem0's `{"event_details": {"id", "data": {"memory"}, "event"}}`.
    Mem0,
}

impl WebhookFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            WebhookFormat::Engram => "engram",
            WebhookFormat::Mem0 => "mem0",
        }
    }

    pub fn parse(s: &str) -> Result<WebhookFormat> {
        match s {
            "engram" => Ok(WebhookFormat::Engram),
            "mem0" => Ok(WebhookFormat::Mem0),
            _ => Err(Error::invalid(format!(
                "unknown webhook format `{s}`: use engram or mem0"
            ))),
        }
    }
}

/// A subscription as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Webhook {
    pub id: Uuid,
    pub url: String,
    pub events: Vec<WebhookEvent>,
    /// Changes outside these ids never reach it (the creating key's binding
    /// plus the ids the request named).
    pub scope: Scope,
    pub name: Option<String>,
    pub description: Option<String>,
    pub format: WebhookFormat,
    /// Mem0's project the webhook was created under (Mem0 routes only).
    pub project_id: Option<String>,
    /// Whether payloads carry the memory's text (an org may keep text out
    /// of third-party systems).
    pub include_text: bool,
    pub enabled: bool,
    /// Failed attempts in a row; reaching the node's limit disables the webhook.
    pub consecutive_failures: u32,
    pub disabled_reason: Option<String>,
    /// `whsec_<base64>`: signs every delivery. Shown once, at creation or
    /// rotation; never listed.
    pub secret: String,
    pub created_by: String,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

impl Webhook {
    /// Whether a change of `event` in `scope` reaches this webhook.
    pub fn wants(&self, event: WebhookEvent, scope: &Scope) -> bool {
        self.enabled && self.events.contains(&event) && within(&self.scope, scope)
    }
}

/// Whether `scope` lies inside `bound`: every id `bound` names, `scope` carries.
pub fn within(bound: &Scope, scope: &Scope) -> bool {
    let pairs = [
        (&bound.org_id, &scope.org_id),
        (&bound.app_id, &scope.app_id),
        (&bound.user_id, &scope.user_id),
        (&bound.agent_id, &scope.agent_id),
        (&bound.run_id, &scope.run_id),
    ];
    pairs.iter().all(|(b, s)| b.is_none() || b == s)
}

/// Whether two scopes can hold a common memory: no id both name differs.
pub fn overlaps(a: &Scope, b: &Scope) -> bool {
    let pairs = [
        (&a.org_id, &b.org_id),
        (&a.app_id, &b.app_id),
        (&a.user_id, &b.user_id),
        (&a.agent_id, &b.agent_id),
        (&a.run_id, &b.run_id),
    ];
    pairs
        .iter()
        .all(|(x, y)| x.is_none() || y.is_none() || x == y)
}

/// Deliveries are jobs of this kind.
pub const DELIVERY_KIND: &str = "webhook";
/// Attempts per delivery (with the job queue's backoff, 2 s doubling to
/// 5 min: about 14 minutes of retries) before it is dead.
pub const DELIVERY_ATTEMPTS: u32 = 10;
/// Longest URL accepted.
pub const MAX_URL_LEN: usize = 2048;
/// Most webhooks per org.
pub const MAX_PER_ORG: usize = 100;

/// What a delivery job carries: the webhook, the event and the exact body
/// to sign and send (built when the change committed, so a later change
/// cannot alter what an earlier event said).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeliveryPayload {
    pub webhook_id: Uuid,
    pub event: WebhookEvent,
    pub body: String,
}

/// The body of a delivery for `event` with `data` (the native `{type,
/// timestamp, data}`).
pub fn envelope(event: WebhookEvent, at: Timestamp, data: Value) -> String {
    json!({"type": event.as_str(), "timestamp": at.to_string(), "data": data}).to_string()
}

/// The body a history row makes for `hook`.
pub fn memory_body(hook: &Webhook, event: WebhookEvent, h: &HistoryEvent) -> String {
    let text = if h.event == Event::Delete {
        h.old_text.as_deref()
    } else {
        h.new_text.as_deref()
    };
    match hook.format {
        WebhookFormat::Mem0 => json!({"event_details": {
            "id": h.memory_id.to_string(),
            "data": {"memory": if hook.include_text { text } else { None }},
            "event": h.event.as_str(),
        }})
        .to_string(),
        WebhookFormat::Engram => {
            let mut data = json!({
                "id": h.memory_id.to_string(),
                "event": h.event.as_str(),
                "version": h.version,
                "org_id": h.scope.org_id,
                "app_id": h.scope.app_id,
                "user_id": h.scope.user_id,
                "agent_id": h.scope.agent_id,
                "run_id": h.scope.run_id,
                "actor": h.actor,
                "reason": h.reason,
                "history_id": h.id.to_string(),
            });
            if hook.include_text {
                data["text"] = json!(text);
                if matches!(h.event, Event::Update | Event::Revert) {
                    data["previous_text"] = json!(h.old_text);
                }
            }
            envelope(event, h.created_at, data)
        }
    }
}

/// A new signing secret: `whsec_` and 32 random bytes in base64.
pub fn new_secret() -> Result<String> {
    let mut buf = [0u8; 32];
    getrandom::fill(&mut buf).map_err(|e| Error::internal(format!("no randomness: {e}")))?;
    Ok(format!("whsec_{}", B64.encode(buf)))
}

/// The Standard Webhooks signature header value: `v1,<base64 HMAC-SHA256
/// of "{id}.{timestamp}.{body}">`, keyed with the secret's decoded bytes.
pub fn sign(secret: &str, msg_id: &str, timestamp: i64, body: &str) -> Result<String> {
    let key = secret
        .strip_prefix("whsec_")
        .and_then(|s| B64.decode(s).ok())
        .ok_or_else(|| Error::internal("a webhook secret is not `whsec_<base64>`"))?;
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&key)
        .map_err(|e| Error::internal(format!("webhook secret: {e}")))?;
    mac.update(format!("{msg_id}.{timestamp}.").as_bytes());
    mac.update(body.as_bytes());
    Ok(format!("v1,{}", B64.encode(mac.finalize().into_bytes())))
}

/// Checks a target URL before it is stored: `http`/`https`, a host, no
/// credentials, and — unless private targets are allowed — not a loopback,
/// private, link-local or metadata address or a `localhost` name. A
/// hostname is checked again, after DNS, by the sender at every delivery.
pub fn check_url(raw: &str, allow_private: bool) -> Result<url::Url> {
    if raw.len() > MAX_URL_LEN {
        return Err(Error::invalid(format!(
            "`url` is longer than {MAX_URL_LEN} bytes"
        )));
    }
    let url =
        url::Url::parse(raw).map_err(|e| Error::invalid(format!("`url` is not a URL: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(Error::invalid(format!(
            "`url` must be http or https, not `{}`",
            url.scheme()
        )));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(Error::invalid(
            "`url` must not carry credentials: verify deliveries by their signature",
        ));
    }
    let refused = || {
        Error::invalid(format!(
            "`url` points at a loopback, private or link-local address ({}); \
             such targets need a server started with --allow-private-webhooks",
            url.host_str().unwrap_or_default()
        ))
    };
    match url.host() {
        None => return Err(Error::invalid("`url` has no host")),
        Some(_) if allow_private => {}
        Some(url::Host::Ipv4(ip)) if blocked_ip(IpAddr::V4(ip)) => return Err(refused()),
        Some(url::Host::Ipv6(ip)) if blocked_ip(IpAddr::V6(ip)) => return Err(refused()),
        Some(url::Host::Domain(d)) => {
            let d = d.trim_end_matches('.').to_ascii_lowercase();
            if d == "localhost" || d.ends_with(".localhost") || d.ends_with(".internal") {
                return Err(refused());
            }
        }
        Some(_) => {}
    }
    Ok(url)
}

/// Whether a webhook may not be delivered to `ip` (without
/// `--allow-private-webhooks`): loopback, private, shared (CGNAT),
/// link-local (cloud metadata), unspecified, broadcast, multicast,
/// benchmark and reserved ranges, unique-local IPv6, and IPv4 addresses
/// embedded in IPv6 that are any of those.
pub fn blocked_ip(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => blocked_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return blocked_v4(v4);
            }
            let s = v6.segments();
            let low_v4 = || {
                let [a, b] = s[6].to_be_bytes();
                let [c, d] = s[7].to_be_bytes();
                Ipv4Addr::new(a, b, c, d)
            };
            // NAT64 (64:ff9b::/96) and SIIT (::ffff:0:a.b.c.d) carry an IPv4
            // address in their low bits; 6to4 (2002::/16) in bits 16–48.
            if (s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0; 4])
                || (s[0..4] == [0; 4] && s[4] == 0xffff && s[5] == 0)
            {
                return blocked_v4(low_v4());
            }
            if s[0] == 0x2002 {
                let [a, b] = s[1].to_be_bytes();
                let [c, d] = s[2].to_be_bytes();
                return blocked_v4(Ipv4Addr::new(a, b, c, d));
            }
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00 // unique local fc00::/7
                || (s[0] & 0xffc0) == 0xfe80 // link-local fe80::/10
                || (s[0] & 0xffc0) == 0xfec0 // site-local (deprecated)
                || (s[0] == 0 && s[1..6] == [0; 5]) // IPv4-compatible ::a.b.c.d
                || (s[0] == 0x64 && s[1] == 0xff9b && s[2] == 1) // local-use NAT64 64:ff9b:1::/48
                || (s[0] == 0x2001 && s[1] == 0) // Teredo 2001::/32
                || (s[0] == 0x2001 && s[1] == 0xdb8) // documentation 2001:db8::/32
                || (s[0] == 0x0100 && s[1..4] == [0; 3]) // discard-only 100::/64
        }
    }
}

fn blocked_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_multicast()
        || a == 0
        || (a == 100 && (64..128).contains(&b)) // shared address space 100.64/10
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
        || (a == 198 && (b == 18 || b == 19)) // benchmarking
        || a >= 240 // reserved
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_matches_the_standard_webhooks_example() {
        // The example from the Standard Webhooks specification.
        let sig = sign(
            "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            r#"{"test": 2432232314}"#,
        )
        .unwrap();
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn private_and_metadata_addresses_are_blocked() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "::",
            "fd00:ec2::254",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "::ffff:0:7f00:1",
            "2002:7f00:1::1",
            "2002:a9fe:a9fe::",
            "64:ff9b:1::1",
            "2001::1",
            "2001:db8:1::1",
            "224.0.0.1",
            "255.255.255.255",
        ] {
            assert!(blocked_ip(ip.parse().unwrap()), "{ip}");
        }
        for ip in [
            "93.184.215.14",
            "8.8.8.8",
            "2606:4700::1111",
            "1.1.1.1",
            "2002:5db8:d70e::1",
        ] {
            assert!(!blocked_ip(ip.parse().unwrap()), "{ip}");
        }
    }

    #[test]
    fn urls_are_checked() {
        assert!(check_url("https://hooks.example.com/engram", false).is_ok());
        for bad in [
            "ftp://example.com/",
            "file:///etc/passwd",
            "http://127.0.0.1:8080/",
            "http://[::1]/",
            "http://localhost/",
            "http://LOCALHOST./x",
            "http://api.localhost/",
            "http://metadata.google.internal/",
            "http://169.254.169.254/latest/meta-data",
            "http://user:pw@example.com/",
            "http://2130706433/", // 127.0.0.1 as one number
            "http://0x7f.1/",
            "not a url",
        ] {
            assert!(check_url(bad, false).is_err(), "{bad}");
        }
        assert!(check_url("http://127.0.0.1:8080/", true).is_ok());
        assert!(check_url("ftp://127.0.0.1/", true).is_err());
    }

    #[test]
    fn scopes_and_masks() {
        let bound = Scope {
            org_id: Some("o".into()),
            user_id: Some("u1".into()),
            ..Scope::default()
        };
        let mut s = bound.clone();
        s.run_id = Some("r".into());
        assert!(within(&bound, &s));
        s.user_id = Some("u2".into());
        assert!(!within(&bound, &s));
        assert!(!within(&bound, &Scope::default()));
        assert!(overlaps(&bound, &Scope::default()));
        assert!(!overlaps(&bound, &s), "u2 is not u1");
        let other_org = Scope {
            org_id: Some("p".into()),
            ..Scope::default()
        };
        assert!(!overlaps(&bound, &other_org));
        let events = [WebhookEvent::MemoryCreated, WebhookEvent::JobDead];
        assert_eq!(WebhookEvent::from_mask(WebhookEvent::mask(&events)), events);
        assert!(WebhookEvent::parse("memory.nope").is_err());
        assert_eq!(WebhookEvent::parse_mem0("memory_categorize").unwrap(), None);
    }
}
