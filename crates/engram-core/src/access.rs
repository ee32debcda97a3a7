//! Who is asking and what they may touch.
//!
//! Every call into the service carries a [`Principal`]: an API key's id, its
//! [`Role`] and its binding (the scope ids it is tied to), or the local
//! operator (CLI, MCP over stdio, `--insecure-no-auth`). The service — not a
//! transport — intersects each request with the binding:
//!
//! - a write takes the bound ids, and naming a different one is `forbidden`;
//! - a read is the request's filter AND the binding, and a filter that names
//!   an id outside the binding is `forbidden`;
//! - a memory outside the binding is `not_found` (its existence is not revealed).

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::filter::{Cond, Filter, StrOp};
use crate::memory::{Scope, ScopeField};
use crate::{Error, ErrorCode, Result};

/// What a key may do. Ordered: each role can do everything the previous can.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Search, list, get, history.
    ReadOnly,
    /// Also add, update and delete memories.
    ReadWrite,
    /// Also manage API keys (within its own binding).
    Admin,
    /// Also operations on the whole store (re-embedding), beyond its
    /// binding. Only the local operator (`engram keys create`) mints these.
    Operator,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::ReadOnly, Role::ReadWrite, Role::Admin, Role::Operator];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::ReadOnly => "read_only",
            Role::ReadWrite => "read_write",
            Role::Admin => "admin",
            Role::Operator => "operator",
        }
    }

    pub fn parse(s: &str) -> Result<Role> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| {
                Error::invalid(format!(
                    "unknown role `{s}`: use operator, admin, read_write or read_only"
                ))
            })
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The caller of a service function.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Principal {
    /// The API key's id; `None` for the local operator.
    pub key_id: Option<String>,
    pub role: Role,
    /// Scope ids every memory this principal touches must carry. Empty: unrestricted.
    pub binding: Scope,
    /// Requests per minute this principal may make (`None`: the server default).
    pub rate_limit: Option<u32>,
}

impl Principal {
    /// The local operator: the CLI, MCP over stdio, or a server started with
    /// `--insecure-no-auth`. Admin, bound to nothing.
    pub fn operator() -> Principal {
        Principal {
            key_id: None,
            role: Role::Operator,
            binding: Scope::default(),
            rate_limit: None,
        }
    }

    /// The operator, bound to `binding` (MCP over stdio started with `--user-id`).
    pub fn operator_bound(binding: Scope) -> Principal {
        Principal {
            binding,
            role: Role::ReadWrite,
            ..Principal::operator()
        }
    }

    /// How history rows and audit lines name this principal.
    pub fn actor(&self, transport: &str) -> String {
        match &self.key_id {
            Some(id) => format!("key:{id}"),
            None => transport.to_owned(),
        }
    }

    /// Fails with `forbidden` unless the role is at least `needed`.
    pub fn require(&self, needed: Role, action: &str) -> Result<()> {
        if self.role >= needed {
            return Ok(());
        }
        Err(Error::new(
            ErrorCode::Forbidden,
            format!(
                "this API key is {}; {action} needs a {needed} key{}",
                self.role,
                match needed {
                    Role::Admin | Role::Operator => "",
                    Role::ReadOnly | Role::ReadWrite => " (or admin)",
                }
            ),
        ))
    }

    fn conflict(&self, field: ScopeField, bound: &str, named: &str) -> Error {
        let f = field.as_str();
        let who = if self.key_id.is_some() {
            "this API key"
        } else {
            "this server"
        };
        Error::new(
            ErrorCode::Forbidden,
            format!("{who} is bound to {f}={bound}; the request names {f}={named}"),
        )
    }

    /// The scope a write lands in: the request's ids plus the bound ones.
    /// Naming an id that differs from a bound one is `forbidden`.
    pub fn bind_scope(&self, mut scope: Scope) -> Result<Scope> {
        for (field, bound) in self.binding.iter() {
            match scope.get(field) {
                Some(named) if named != bound => return Err(self.conflict(field, bound, named)),
                Some(_) => {}
                None => scope.set(field, Some(bound.to_owned())),
            }
        }
        Ok(scope)
    }

    /// The filter a read runs: `filter` AND the binding. A filter that asks
    /// (outside a NOT) for an id other than a bound one is `forbidden`.
    pub fn bind_filter(&self, filter: Filter) -> Result<Filter> {
        if self.binding.is_empty() {
            return Ok(filter);
        }
        self.check_named_ids(&filter)?;
        Ok(Filter::from_scope(&self.binding).and(filter))
    }

    fn check_named_ids(&self, filter: &Filter) -> Result<()> {
        match filter {
            Filter::And(children) | Filter::Or(children) => {
                children.iter().try_for_each(|c| self.check_named_ids(c))
            }
            // A negation excludes ids; it never widens what the binding lets through.
            Filter::Not(_) => Ok(()),
            Filter::Cond(Cond::Scope {
                field,
                op: StrOp::In(values),
            }) => match self.binding.get(*field) {
                Some(bound) => match values.iter().find(|v| v.as_str() != bound) {
                    Some(named) => Err(self.conflict(*field, bound, named)),
                    None => Ok(()),
                },
                None => Ok(()),
            },
            Filter::Cond(_) => Ok(()),
        }
    }

    /// Whether a memory (or key) with `scope` lies inside the binding.
    pub fn covers(&self, scope: &Scope) -> bool {
        self.binding
            .iter()
            .all(|(field, bound)| scope.get(field) == Some(bound))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn key(org: &str, user: Option<&str>, role: Role) -> Principal {
        Principal {
            key_id: Some("k1".into()),
            role,
            binding: Scope {
                org_id: Some(org.into()),
                user_id: user.map(Into::into),
                ..Default::default()
            },
            rate_limit: None,
        }
    }

    fn mem(scope: Scope) -> crate::memory::Memory {
        let now = jiff::Timestamp::UNIX_EPOCH;
        crate::memory::Memory {
            id: uuid::Uuid::nil(),
            version: 1,
            text: "x".into(),
            kind: Default::default(),
            hash: String::new(),
            scope,
            metadata: Default::default(),
            categories: vec![],
            entities: vec![],
            role: None,
            created_at: now,
            updated_at: now,
            valid_at: None,
            invalid_at: None,
            expires_at: None,
            idle_ttl: None,
            embedding_model: String::new(),
            tokens: 1,
            feedback: None,
        }
    }

    fn scope(org: Option<&str>, user: Option<&str>) -> Scope {
        Scope {
            org_id: org.map(Into::into),
            user_id: user.map(Into::into),
            ..Default::default()
        }
    }

    #[test]
    fn writes_take_the_binding_and_refuse_other_ids() {
        let p = key("acme", None, Role::ReadWrite);
        let s = p.bind_scope(scope(None, Some("alice"))).unwrap();
        assert_eq!(s, scope(Some("acme"), Some("alice")));
        let e = p
            .bind_scope(scope(Some("globex"), Some("alice")))
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::Forbidden);
        assert!(e.message.contains("org_id=acme"), "{}", e.message);
    }

    #[test]
    fn reads_are_intersected_with_the_binding() {
        let p = key("acme", Some("alice"), Role::ReadOnly);
        let f = p
            .bind_filter(Filter::parse(&json!({"agent_id": "bot"})).unwrap())
            .unwrap();
        let inside = mem(Scope {
            org_id: Some("acme".into()),
            user_id: Some("alice".into()),
            agent_id: Some("bot".into()),
            ..Default::default()
        });
        let mut outside = inside.clone();
        outside.scope.user_id = Some("bob".into());
        assert!(f.matches(&inside));
        assert!(!f.matches(&outside));
        // OR branches cannot reach outside either: naming bob is refused.
        let named = Filter::parse(&json!({"OR": [{"user_id": "alice"}, {"user_id": "bob"}]}));
        let e = p.bind_filter(named.unwrap()).unwrap_err();
        assert_eq!(e.code, ErrorCode::Forbidden);
        // Excluding an id is fine.
        let not = Filter::parse(&json!({"NOT": {"user_id": "bob"}})).unwrap();
        assert!(p.bind_filter(not).is_ok());
        assert!(p.covers(&inside.scope));
        assert!(!p.covers(&outside.scope));
    }

    #[test]
    fn roles_are_ordered() {
        let ro = key("acme", None, Role::ReadOnly);
        assert_eq!(
            ro.require(Role::ReadWrite, "adding memories")
                .unwrap_err()
                .code,
            ErrorCode::Forbidden
        );
        assert!(ro.require(Role::ReadOnly, "searching").is_ok());
        assert!(Principal::operator().require(Role::Admin, "x").is_ok());
        assert!(Principal::operator().covers(&Scope::default()));
        assert_eq!(Role::parse("admin").unwrap(), Role::Admin);
        assert!(Role::parse("root").is_err());
    }
}
