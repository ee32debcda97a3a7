//! Who is asking, and through what: every service call carries one.

use crate::access::Principal;

/// Who is asking (and through what), for access checks, history and logs.
#[derive(Debug, Clone)]
pub struct RequestCtx {
    pub principal: Principal,
    /// The transport (`api`, `mcp:http`, `cli`…); names the actor when no key is involved.
    pub transport: String,
    pub request_id: Option<String>,
}

impl RequestCtx {
    pub fn new(principal: Principal, transport: &str, request_id: Option<String>) -> RequestCtx {
        RequestCtx {
            principal,
            transport: transport.to_owned(),
            request_id,
        }
    }

    /// The local operator through `transport` (CLI, MCP over stdio, evaluations).
    pub fn operator(transport: &str) -> RequestCtx {
        RequestCtx::new(Principal::operator(), transport, None)
    }

    /// `key:<id>` for an API key, else the transport.
    pub fn actor(&self) -> String {
        self.principal.actor(&self.transport)
    }
}
