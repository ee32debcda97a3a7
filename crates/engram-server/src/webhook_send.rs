//! The HTTP side of webhooks: [`HttpSender`] sends signed deliveries with
//! the SSRF guard's second check — every address a target's host resolves
//! to is checked again at delivery time, inside the connection's own DNS
//! step, so a name cannot pass the check and then connect elsewhere (DNS
//! rebinding). No redirects are followed, no proxy from the environment is
//! used, and at most [`MAX_ANSWER`] bytes of an answer are read.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use engram_core::ports::{Outgoing, Sent, WebhookSender};
use engram_core::webhook::{blocked_ip, check_url};
use engram_core::{Error, Result};
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// Bytes of an answer read (then the connection is dropped or reused).
pub const MAX_ANSWER: usize = 4096;

/// How long creating a webhook waits for its host's DNS answer.
const DNS_CHECK: Duration = Duration::from_secs(3);

/// Why the guarded resolver refused a name (found again in reqwest's error chain).
#[derive(Debug)]
struct Blocked(String);

impl std::fmt::Display for Blocked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Blocked {}

/// DNS with the guard: addresses the SSRF rules refuse are dropped, and a
/// name left with none is an error. `hosts` answers for names first (the
/// tests' stand-in for a DNS record).
#[derive(Clone, Default)]
struct GuardedDns {
    allow_private: bool,
    hosts: Arc<HashMap<String, Vec<IpAddr>>>,
}

impl GuardedDns {
    async fn lookup(
        &self,
        host: &str,
    ) -> std::result::Result<Vec<SocketAddr>, Box<dyn std::error::Error + Send + Sync>> {
        let all: Vec<SocketAddr> = match self.hosts.get(host) {
            Some(ips) => ips.iter().map(|ip| SocketAddr::new(*ip, 0)).collect(),
            None => tokio::net::lookup_host((host, 0)).await?.collect(),
        };
        if self.allow_private {
            return Ok(all);
        }
        let allowed: Vec<SocketAddr> = all
            .iter()
            .copied()
            .filter(|a| !blocked_ip(a.ip()))
            .collect();
        if allowed.is_empty() && !all.is_empty() {
            return Err(Box::new(Blocked(format!(
                "{host} resolves to {}, a loopback, private or link-local address; \
                 such targets need a server started with --allow-private-webhooks",
                all[0].ip()
            ))));
        }
        Ok(allowed)
    }
}

impl Resolve for GuardedDns {
    fn resolve(&self, name: Name) -> Resolving {
        let dns = self.clone();
        Box::pin(async move {
            let addrs = dns.lookup(name.as_str()).await?;
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

/// Sends webhook deliveries over HTTP(S).
pub struct HttpSender {
    client: reqwest::Client,
    dns: GuardedDns,
}

impl HttpSender {
    pub fn new(allow_private: bool) -> Result<HttpSender> {
        HttpSender::with_hosts(allow_private, HashMap::new())
    }

    /// With fixed answers for some names (tests: a public-looking name that
    /// resolves to 127.0.0.1).
    pub fn with_hosts(
        allow_private: bool,
        hosts: HashMap<String, Vec<IpAddr>>,
    ) -> Result<HttpSender> {
        let dns = GuardedDns {
            allow_private,
            hosts: Arc::new(hosts),
        };
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .dns_resolver(Arc::new(dns.clone()))
            .connect_timeout(Duration::from_secs(5))
            .pool_idle_timeout(Duration::from_secs(60))
            .user_agent(concat!("Engram-Webhooks/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| Error::internal(format!("webhook HTTP client: {e}")))?;
        Ok(HttpSender { client, dns })
    }
}

/// Whether `e` (or what caused it) is the guard's refusal.
fn blocked(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(b) = err.downcast_ref::<Blocked>() {
            return Some(b.0.clone());
        }
        cur = err.source();
    }
    None
}

/// An error and its causes on one line.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(err) = cur {
        let s = err.to_string();
        if !out.contains(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
        cur = err.source();
    }
    out
}

#[async_trait]
impl WebhookSender for HttpSender {
    async fn send(&self, out: Outgoing) -> Sent {
        // An address written in the URL never reaches the resolver.
        if let Err(e) = check_url(&out.url, self.dns.allow_private) {
            return Sent::Refused { error: e.message };
        }
        let mut req = self
            .client
            .post(&out.url)
            .timeout(out.timeout)
            .body(out.body);
        for (name, value) in out.headers {
            req = req.header(name, value);
        }
        match req.send().await {
            Ok(mut resp) => {
                let status = resp.status().as_u16();
                let mut read = 0;
                // Drain a little of the answer (lets the connection be reused); never more.
                while read < MAX_ANSWER {
                    match resp.chunk().await {
                        Ok(Some(c)) => read += c.len(),
                        _ => break,
                    }
                }
                Sent::Answered { status }
            }
            Err(e) => match blocked(&e) {
                Some(error) => Sent::Refused { error },
                None if e.is_timeout() => Sent::Failed {
                    error: format!("timed out after {:?}", out.timeout),
                },
                None => Sent::Failed { error: chain(&e) },
            },
        }
    }

    async fn check(&self, url: &str) -> Result<()> {
        let parsed = check_url(url, self.dns.allow_private)?;
        // A resolver that does not answer must not hold the request: after
        // DNS_CHECK the name counts as unresolvable (checked at delivery).
        let lookup = |host: &str| {
            let dns = self.dns.clone();
            let host = host.to_owned();
            async move {
                match tokio::time::timeout(DNS_CHECK, dns.lookup(&host)).await {
                    Ok(r) => r,
                    Err(_) => Err(format!("no DNS answer within {DNS_CHECK:?}").into()),
                }
            }
        };
        if let Some(url::Host::Domain(host)) = parsed.host()
            && let Err(e) = lookup(host).await
        {
            match blocked(e.as_ref()) {
                Some(msg) => return Err(Error::invalid(format!("`url`: {msg}"))),
                // Unresolvable now: every delivery resolves and checks again.
                None => tracing::info!(host, error = %e, "a webhook's host does not resolve yet"),
            }
        }
        Ok(())
    }
}

/// Stands in when no HTTP client could be built: every delivery fails, saying why.
pub struct NoSender(pub String);

#[async_trait]
impl WebhookSender for NoSender {
    async fn send(&self, _: Outgoing) -> Sent {
        Sent::Failed {
            error: format!("this node has no HTTP client: {}", self.0),
        }
    }

    async fn check(&self, _: &str) -> Result<()> {
        Err(Error::internal(format!(
            "this node has no HTTP client for webhooks: {}",
            self.0
        )))
    }
}
