//! The MCP server: memory tools, resources and a prompt over the official
//! Rust SDK (`rmcp`), for stdio (`engram mcp`) and streamable HTTP (`/mcp`).
//!
//! Like the REST handlers, each tool only maps arguments to a service call
//! and the result back; the rules live in `engram_core::service`. Every call
//! runs as a principal: over HTTP the API key the auth middleware resolved
//! (its binding applies to every tool), over stdio the local operator,
//! optionally bound to `--user-id`. Tool arguments may add ids the binding
//! leaves open, never change a bound one.

use std::sync::Arc;

use engram_core::access::Principal;
use engram_core::ctx::RequestCtx;
use engram_core::filter::Filter;
use engram_core::memory::{Memory, Scope, ScopeField};
use engram_core::ports::Cursor;
use engram_core::service::{
    AddInput, Added, Content, DEFAULT_AGENT_PAGE, JobQueue, MemoryService, Message, SearchInput,
    UpdateInput,
};
use engram_core::{Error, ErrorCode};
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{
    CallToolResult, ContentBlock, Extensions, GetPromptRequestParams, GetPromptResponse,
    GetPromptResult, Implementation, ListPromptsResult, ListResourceTemplatesResult,
    ListResourcesResult, PaginatedRequestParams, Prompt, PromptMessage, ReadResourceRequestParams,
    ReadResourceResponse, ReadResourceResult, Resource, ResourceContents, ResourceTemplate, Role,
    ServerCapabilities, ServerConfig,
};
use rmcp::service::RequestContext;
use rmcp::{ErrorData as McpError, RoleServer, ServerHandler, tool, tool_handler, tool_router};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::error::{ApiError, HttpCode};

/// Scope ids a tool call may give to narrow the server's scope.
#[derive(Debug, Default, Deserialize, JsonSchema)]
pub struct ScopeArgs {
    /// The user the memories belong to.
    pub user_id: Option<String>,
    /// The agent the memories belong to.
    pub agent_id: Option<String>,
    /// The session (conversation) the memories belong to.
    pub run_id: Option<String>,
    /// The organisation.
    pub org_id: Option<String>,
    /// The application (project).
    pub app_id: Option<String>,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct MessageArg {
    /// `user` or `assistant`.
    pub role: String,
    pub content: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct AddArgs {
    /// A fact to remember, in one or a few sentences. Give this or `messages`.
    pub text: Option<String>,
    /// Conversation turns to remember verbatim (one memory per turn). Give this or `text`.
    pub messages: Option<Vec<MessageArg>>,
    /// Optional key/value labels, e.g. {"topic": "travel"}.
    pub metadata: Option<Map<String, Value>>,
    #[serde(flatten)]
    pub scope: ScopeArgs,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct SearchArgs {
    /// What you want to know, in natural language, e.g. "what food does the user like?".
    pub query: String,
    /// Most memories to return (1-100, default 10).
    pub top_k: Option<u32>,
    #[serde(flatten)]
    pub scope: ScopeArgs,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct ListArgs {
    /// Page size (1-1000, default 20).
    pub limit: Option<u32>,
    /// `next_cursor` from the previous page.
    pub cursor: Option<String>,
    #[serde(flatten)]
    pub scope: ScopeArgs,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct IdArgs {
    /// The memory id (a UUID returned by add_memory, search_memory or list_memories).
    pub id: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct UpdateArgs {
    /// The memory id.
    pub id: String,
    /// The corrected text that replaces the memory's text.
    pub text: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct DeleteAllArgs {
    /// Must be true: confirms that every memory of the scope is to be deleted.
    pub confirm: bool,
    #[serde(flatten)]
    pub scope: ScopeArgs,
}

/// A memory as tools return it.
#[derive(Debug, Serialize, JsonSchema)]
pub struct MemoryView {
    pub id: String,
    pub memory: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub score: Option<f32>,
    pub kind: String,
    pub created_at: String,
    pub updated_at: String,
    pub metadata: Map<String, Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
}

impl MemoryView {
    fn of(m: Memory, score: Option<f32>) -> MemoryView {
        MemoryView {
            id: m.id.to_string(),
            memory: m.text,
            score,
            kind: m.kind.as_str().to_owned(),
            created_at: m.created_at.to_string(),
            updated_at: m.updated_at.to_string(),
            metadata: m.metadata,
            user_id: m.scope.user_id,
            agent_id: m.scope.agent_id,
            run_id: m.scope.run_id,
        }
    }
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct AddedView {
    pub id: String,
    pub memory: String,
    /// `ADD` (stored) or `NOOP` (a duplicate of an existing memory).
    pub event: String,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct AddOutput {
    /// What was stored; empty when the add was queued (see `job`).
    pub results: Vec<AddedView>,
    /// The background job that will extract and store the memories, when
    /// the server runs adds asynchronously (an LLM is configured).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job: Option<JobView>,
}

/// A queued add, as `GET /v1/jobs/{id}` reports it.
#[derive(Debug, Serialize, JsonSchema)]
pub struct JobView {
    pub id: String,
    /// `queued`.
    pub status: String,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct SearchOutput {
    /// Best first.
    pub results: Vec<MemoryView>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct ListOutput {
    /// Newest first.
    pub results: Vec<MemoryView>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct DeleteOutput {
    pub id: String,
    pub deleted: bool,
}

#[derive(Debug, Serialize, JsonSchema)]
pub struct DeleteAllOutput {
    pub deleted: usize,
}

/// The MCP handler. One per client session; cheap to clone.
#[derive(Clone)]
pub struct MemoryMcp {
    memory: MemoryService,
    /// Where adds go in (the same decision as every transport's).
    jobs: JobQueue,
    /// The principal of every call when the transport carries none (stdio).
    local: Option<Principal>,
    /// Who the audit log names as the caller.
    caller: Arc<str>,
}

const INSTRUCTIONS: &str = "Engram is the user's long-term memory. Before answering, call search_memory with \
what you need to know about the user (preferences, facts, past events). After the user tells you something \
worth remembering across conversations (a preference, a fact about them, a decision, an instruction for you), \
call add_memory with one short, self-contained sentence. Do not store secrets, passwords or one-off chit-chat.";

fn ok<T: Serialize>(value: &T) -> Result<CallToolResult, McpError> {
    let v =
        serde_json::to_value(value).map_err(|e| McpError::internal_error(e.to_string(), None))?;
    Ok(CallToolResult::structured(v))
}

/// A failed call as a tool result the model can read (`isError: true`), never a protocol error.
/// The message and code come from the server's one error table
/// ([`crate::error`]): a 4xx says what went wrong, anything else is internal.
fn fail(e: Error) -> Result<CallToolResult, McpError> {
    let e = ApiError::from(e);
    let code = e.code.as_str();
    let message = format!("{code}: {}", e.public_detail());
    Ok(CallToolResult::error(vec![ContentBlock::text(message)]))
}

macro_rules! try_tool {
    ($e:expr) => {
        match $e {
            Ok(v) => v,
            Err(e) => return fail(e),
        }
    };
}

#[tool_router]
impl MemoryMcp {
    /// A handler whose calls all run as `local` (stdio), or, with `None`, as
    /// the principal the HTTP layer attached to each request.
    pub fn new(jobs: JobQueue, local: Option<Principal>, caller: impl Into<Arc<str>>) -> MemoryMcp {
        MemoryMcp {
            memory: jobs.memory().clone(),
            jobs,
            local,
            caller: caller.into(),
        }
    }

    /// Who is calling: the HTTP request's principal, else the local one.
    fn ctx(&self, ext: &Extensions, tool: &str) -> Result<RequestCtx, Error> {
        let parts = ext.get::<axum::http::request::Parts>();
        let principal = parts
            .and_then(|p| p.extensions.get::<Principal>())
            .or(self.local.as_ref())
            .cloned()
            .ok_or_else(|| Error::new(ErrorCode::Unauthorized, "no API key on this request"))?;
        let request_id = parts
            .and_then(|p| p.headers.get(crate::request_id::HEADER))
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
            .unwrap_or_else(|| format!("mcp-{tool}-{}", uuid::Uuid::now_v7().simple()));
        Ok(RequestCtx::new(
            principal,
            &format!("mcp:{}", self.caller),
            Some(request_id),
        ))
    }

    /// The ids a call names; the service adds the bound ones and refuses others.
    fn scope(&self, args: ScopeArgs) -> Result<Scope, Error> {
        let mut scope = Scope::default();
        let given = [
            (ScopeField::User, args.user_id),
            (ScopeField::Agent, args.agent_id),
            (ScopeField::Run, args.run_id),
            (ScopeField::Org, args.org_id),
            (ScopeField::App, args.app_id),
        ];
        for (field, value) in given {
            let Some(value) = value else { continue };
            engram_core::memory::validate_scope_id(field, &value)?;
            scope.set(field, Some(value));
        }
        Ok(scope)
    }

    /// A memory by id, if it lies inside the caller's binding.
    async fn owned(&self, ctx: &RequestCtx, id: &str) -> Result<Memory, Error> {
        let uuid = id
            .parse()
            .map_err(|_| Error::invalid(format!("`{id}` is not a memory id (a UUID)")))?;
        self.memory.get(ctx, uuid).await
    }

    fn audit(
        &self,
        ext: &Extensions,
        tool: &str,
        detail: &Value,
        result: &Result<CallToolResult, McpError>,
    ) {
        let outcome = match result {
            Ok(r) if r.is_error == Some(true) => "tool_error",
            Ok(_) => "ok",
            Err(_) => "protocol_error",
        };
        let actor = self
            .ctx(ext, tool)
            .map(|c| c.actor())
            .unwrap_or_else(|_| "anonymous".into());
        tracing::info!(target: "engram::audit", caller = %self.caller, actor, tool, args = %detail, outcome, "mcp tool call");
    }

    #[tool(
        description = "Remember something about the user for future conversations. Call this when the user states a \
lasting fact about themselves, a preference, a decision, or an instruction for you (e.g. 'I'm vegetarian', 'call me \
Sam', 'we moved the launch to May'). Pass one short, self-contained sentence in `text` (or the raw turns in \
`messages`). Exact and near-duplicates are detected and not stored twice. Returns each stored memory's id and \
whether it was added (ADD) or was already known (NOOP); when the server extracts facts with an LLM, the add is \
queued instead and the result names the background `job`.",
        output_schema = rmcp::handler::server::common::schema_for_output::<AddOutput>(),
        annotations(title = "Add memory", read_only_hint = false, destructive_hint = false, idempotent_hint = true, open_world_hint = false)
    )]
    async fn add_memory(
        &self,
        Parameters(args): Parameters<AddArgs>,
        ext: Extensions,
    ) -> Result<CallToolResult, McpError> {
        const TOOL: &str = "add_memory";
        let detail =
            json!({"text": "<redacted>", "messages": args.messages.as_ref().map(Vec::len)});
        let result = async {
            let ctx = try_tool!(self.ctx(&ext, TOOL));
            let scope = try_tool!(self.scope(args.scope));
            let messages = args.messages.map(|m| {
                m.into_iter()
                    .map(|m| Message {
                        role: m.role,
                        content: m.content,
                        name: None,
                    })
                    .collect()
            });
            let content = try_tool!(Content::new(messages, args.text));
            let input = AddInput {
                content,
                scope,
                metadata: args.metadata.unwrap_or_default(),
                categories: Vec::new(),
                kind: Default::default(),
                expires_at: None,
                ttl: None,
                timestamp: None,
            };
            let out = match try_tool!(self.jobs.add(&ctx, input, None, None).await) {
                Added::Done(results) => AddOutput {
                    results: results
                        .into_iter()
                        .map(|r| AddedView {
                            id: r.id.to_string(),
                            memory: r.memory,
                            event: r.event.as_str().to_owned(),
                        })
                        .collect(),
                    job: None,
                },
                Added::Queued(job) => AddOutput {
                    results: Vec::new(),
                    job: Some(JobView {
                        id: job.id.to_string(),
                        status: job.state.as_str().to_owned(),
                    }),
                },
            };
            ok(&out)
        }
        .await;
        self.audit(&ext, "add_memory", &detail, &result);
        result
    }

    #[tool(
        description = "Search the user's memories. Call this before answering whenever facts about the user, their \
preferences, or earlier conversations could matter. Pass a natural-language `query` describing what you need to \
know. Returns the most relevant memories, best first, each with its text, id and a relevance score; an empty list \
means nothing relevant is stored.",
        output_schema = rmcp::handler::server::common::schema_for_output::<SearchOutput>(),
        annotations(title = "Search memories", read_only_hint = true, destructive_hint = false, idempotent_hint = true, open_world_hint = false)
    )]
    async fn search_memory(
        &self,
        Parameters(args): Parameters<SearchArgs>,
        ext: Extensions,
    ) -> Result<CallToolResult, McpError> {
        const TOOL: &str = "search_memory";
        let detail = json!({"query": "<redacted>", "top_k": args.top_k});
        let result = async {
            let ctx = try_tool!(self.ctx(&ext, TOOL));
            let scope = try_tool!(self.scope(args.scope));
            let out = try_tool!(
                self.memory
                    .search(
                        &ctx,
                        SearchInput {
                            query: args.query,
                            filter: Filter::from_scope(&scope),
                            top_k: args.top_k.map(|k| k as usize),
                            threshold: None,
                            token_budget: Some(0),
                            explain: false,
                        }
                    )
                    .await
            );
            ok(&SearchOutput {
                results: out
                    .hits
                    .into_iter()
                    .map(|h| MemoryView::of(h.memory, Some(h.score)))
                    .collect(),
            })
        }
        .await;
        self.audit(&ext, "search_memory", &detail, &result);
        result
    }

    #[tool(
        description = "List the user's memories, newest first, one page at a time. Use this to review or audit what \
is stored (not to answer questions; use search_memory for that). Pass `cursor` from the previous page to continue. \
Returns the memories and a `next_cursor` when more remain.",
        output_schema = rmcp::handler::server::common::schema_for_output::<ListOutput>(),
        annotations(title = "List memories", read_only_hint = true, destructive_hint = false, idempotent_hint = true, open_world_hint = false)
    )]
    async fn list_memories(
        &self,
        Parameters(args): Parameters<ListArgs>,
        ext: Extensions,
    ) -> Result<CallToolResult, McpError> {
        const TOOL: &str = "list_memories";
        let detail = json!({"limit": args.limit, "cursor": args.cursor.is_some()});
        let result = async {
            let ctx = try_tool!(self.ctx(&ext, TOOL));
            let scope = try_tool!(self.scope(args.scope));
            let after = match args.cursor.as_deref().map(Cursor::decode).transpose() {
                Ok(c) => c,
                Err(e) => return fail(e),
            };
            let limit = args.limit.map_or(DEFAULT_AGENT_PAGE, |l| l as usize);
            let page = try_tool!(
                self.memory
                    .list(&ctx, &Filter::from_scope(&scope), after, limit)
                    .await
            );
            ok(&ListOutput {
                results: page
                    .memories
                    .into_iter()
                    .map(|m| MemoryView::of(m, None))
                    .collect(),
                next_cursor: page.next.map(|c| c.encode()),
            })
        }
        .await;
        self.audit(&ext, "list_memories", &detail, &result);
        result
    }

    #[tool(
        description = "Get one memory by its id (from add_memory, search_memory or list_memories). Returns its text, \
kind, scope, metadata and timestamps.",
        output_schema = rmcp::handler::server::common::schema_for_output::<MemoryView>(),
        annotations(title = "Get memory", read_only_hint = true, destructive_hint = false, idempotent_hint = true, open_world_hint = false)
    )]
    async fn get_memory(
        &self,
        Parameters(args): Parameters<IdArgs>,
        ext: Extensions,
    ) -> Result<CallToolResult, McpError> {
        const TOOL: &str = "get_memory";
        let detail = json!({"id": args.id});
        let result = async {
            let ctx = try_tool!(self.ctx(&ext, TOOL));
            ok(&MemoryView::of(
                try_tool!(self.owned(&ctx, &args.id).await),
                None,
            ))
        }
        .await;
        self.audit(&ext, "get_memory", &detail, &result);
        result
    }

    #[tool(
        description = "Correct a stored memory: replaces the text of the memory with this id. Call this when the user \
says something you remembered is wrong or has changed (e.g. they moved city). The previous text stays in the \
memory's history. Returns the updated memory.",
        output_schema = rmcp::handler::server::common::schema_for_output::<MemoryView>(),
        annotations(title = "Update memory", read_only_hint = false, destructive_hint = true, idempotent_hint = true, open_world_hint = false)
    )]
    async fn update_memory(
        &self,
        Parameters(args): Parameters<UpdateArgs>,
        ext: Extensions,
    ) -> Result<CallToolResult, McpError> {
        const TOOL: &str = "update_memory";
        let detail = json!({"id": args.id, "text": "<redacted>"});
        let result = async {
            let ctx = try_tool!(self.ctx(&ext, TOOL));
            let m = try_tool!(self.owned(&ctx, &args.id).await);
            let input = UpdateInput {
                text: Some(args.text),
                ..Default::default()
            };
            ok(&MemoryView::of(
                try_tool!(self.memory.update(&ctx, m.id, input).await),
                None,
            ))
        }
        .await;
        self.audit(&ext, "update_memory", &detail, &result);
        result
    }

    #[tool(
        description = "Forget one memory by id. Call this when the user asks you to forget something specific. The \
memory stops appearing in searches; its history is kept. Returns the id and `deleted: true`.",
        output_schema = rmcp::handler::server::common::schema_for_output::<DeleteOutput>(),
        annotations(title = "Delete memory", read_only_hint = false, destructive_hint = true, idempotent_hint = false, open_world_hint = false)
    )]
    async fn delete_memory(
        &self,
        Parameters(args): Parameters<IdArgs>,
        ext: Extensions,
    ) -> Result<CallToolResult, McpError> {
        const TOOL: &str = "delete_memory";
        let detail = json!({"id": args.id});
        let result = async {
            let ctx = try_tool!(self.ctx(&ext, TOOL));
            let m = try_tool!(self.owned(&ctx, &args.id).await);
            try_tool!(self.memory.delete(&ctx, m.id).await);
            ok(&DeleteOutput {
                id: m.id.to_string(),
                deleted: true,
            })
        }
        .await;
        self.audit(&ext, "delete_memory", &detail, &result);
        result
    }

    #[tool(
        description = "Forget every memory of the scope (the user, or the given agent/session). Only call this when \
the user explicitly asks to erase everything you remember about them, and pass `confirm: true`. Returns how many \
memories were deleted.",
        output_schema = rmcp::handler::server::common::schema_for_output::<DeleteAllOutput>(),
        annotations(title = "Delete all memories", read_only_hint = false, destructive_hint = true, idempotent_hint = true, open_world_hint = false)
    )]
    async fn delete_all_memories(
        &self,
        Parameters(args): Parameters<DeleteAllArgs>,
        ext: Extensions,
    ) -> Result<CallToolResult, McpError> {
        const TOOL: &str = "delete_all_memories";
        let detail = json!({"confirm": args.confirm});
        let result = async {
            if !args.confirm {
                return fail(Error::invalid(
                    "`confirm` must be true to delete every memory of the scope",
                ));
            }
            let ctx = try_tool!(self.ctx(&ext, TOOL));
            let scope = try_tool!(self.scope(args.scope));
            let deleted = try_tool!(
                self.memory
                    .delete_all(&ctx, &Filter::from_scope(&scope))
                    .await
            );
            ok(&DeleteAllOutput { deleted })
        }
        .await;
        self.audit(&ext, "delete_all_memories", &detail, &result);
        result
    }
}

fn resource_error(e: Error) -> McpError {
    let e = ApiError::from(e);
    if e.code == HttpCode::Core(ErrorCode::NotFound) {
        McpError::resource_not_found(e.detail, None)
    } else if e.is_client_error() {
        McpError::invalid_params(e.detail, None)
    } else {
        McpError::internal_error(e.public_detail(), None)
    }
}

#[tool_handler]
impl ServerHandler for MemoryMcp {
    fn get_info(&self) -> ServerConfig {
        let caps = ServerCapabilities::builder()
            .enable_tools()
            .enable_resources()
            .enable_prompts()
            .build();
        ServerConfig::new(caps)
            .with_server_info(Implementation::new("engram", env!("CARGO_PKG_VERSION")))
            .with_instructions(INSTRUCTIONS)
    }

    async fn list_resources(
        &self,
        _request: Option<PaginatedRequestParams>,
        context: RequestContext<RoleServer>,
    ) -> Result<ListResourcesResult, McpError> {
        // The newest memories inside the caller's binding (an unbound caller lists none).
        let ctx = self
            .ctx(&context.extensions, "list_resources")
            .map_err(resource_error)?;
        if ctx.principal.binding.is_empty() {
            return Ok(ListResourcesResult::with_all_items(Vec::new()));
        }
        let page = self
            .memory
            .list(&ctx, &Filter::all(), None, 100)
            .await
            .map_err(resource_error)?;
        let resources = page
            .memories
            .into_iter()
            .map(|m| {
                let name: String = m.text.chars().take(60).collect();
                Resource::new(format!("memory://{}", m.id), name).with_mime_type("application/json")
            })
            .collect();
        Ok(ListResourcesResult::with_all_items(resources))
    }

    async fn list_resource_templates(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListResourceTemplatesResult, McpError> {
        let template = ResourceTemplate::new("memory://{id}", "memory")
            .with_description("One memory by id, as JSON")
            .with_mime_type("application/json");
        Ok(ListResourceTemplatesResult::with_all_items(vec![template]))
    }

    async fn read_resource(
        &self,
        request: ReadResourceRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<ReadResourceResponse, McpError> {
        let ctx = self
            .ctx(&context.extensions, "read_resource")
            .map_err(resource_error)?;
        let Some(id) = request.uri.strip_prefix("memory://") else {
            return Err(McpError::invalid_params(
                format!("unknown resource `{}`; use memory://{{id}}", request.uri),
                None,
            ));
        };
        let m = self.owned(&ctx, id).await.map_err(resource_error)?;
        let body = serde_json::to_string(&MemoryView::of(m, None))
            .map_err(|e| McpError::internal_error(e.to_string(), None))?;
        let contents =
            ResourceContents::text(body, request.uri.clone()).with_mime_type("application/json");
        Ok(ReadResourceResult::new(vec![contents]).into())
    }

    async fn list_prompts(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListPromptsResult, McpError> {
        let prompt = Prompt::new(
            "use_memory",
            Some("How to use Engram's memory tools in a conversation"),
            None,
        );
        Ok(ListPromptsResult::with_all_items(vec![prompt]))
    }

    async fn get_prompt(
        &self,
        request: GetPromptRequestParams,
        _context: RequestContext<RoleServer>,
    ) -> Result<GetPromptResponse, McpError> {
        if request.name != "use_memory" {
            return Err(McpError::invalid_params(
                format!("unknown prompt `{}`", request.name),
                None,
            ));
        }
        let text = format!(
            "{INSTRUCTIONS}\n\nWhen to search: at the start of a conversation and whenever the answer depends on who \
the user is or on what was said before. When to add: right after the user reveals a durable fact, preference or \
instruction; store it as one sentence in the third person or the user's own words. When to update: when a stored \
fact changed (use update_memory with the id from search). When to delete: only when the user asks you to forget."
        );
        Ok(
            GetPromptResult::new(vec![PromptMessage::new_text(Role::User, text)])
                .with_description("How to use Engram's memory tools")
                .into(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(r: Result<CallToolResult, McpError>) -> String {
        let r = r.unwrap();
        assert_eq!(r.is_error, Some(true));
        serde_json::to_value(&r.content[0]).unwrap()["text"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// Tool errors come from the server's one table: what REST answers with
    /// a 4xx (a `ModelSwitched` is a 409 there) is the caller's to read over
    /// MCP too; a 5xx says only "internal error".
    #[test]
    fn tool_errors_follow_the_http_table() {
        let switched = Error::new(
            ErrorCode::ModelSwitched,
            "this write was embedded with `a`, but the store switched to `b` meanwhile; retry it",
        );
        assert_eq!(
            text(fail(switched)),
            "model_switched: this write was embedded with `a`, but the store switched to `b` meanwhile; retry it"
        );
        let store = Error::store("disk I/O error at /var/lib/engram/engram.db");
        let shown = text(fail(store));
        assert!(
            shown.starts_with("store_failure: internal error"),
            "{shown}"
        );
        assert!(!shown.contains("/var/lib"), "{shown}");
        assert_eq!(
            text(fail(Error::invalid("`query` must not be empty"))),
            "invalid_request: `query` must not be empty"
        );
    }
}
