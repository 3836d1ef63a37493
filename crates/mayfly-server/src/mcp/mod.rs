//! The MCP tools (issue 22): what an AI agent may do through the broker's MCP server, each call
//! decided on its arguments. The server itself (the protocol, the HTTP transport, the 401s and
//! the protected-resource metadata) is the front end in `api/mcp_routes.rs`; this module knows
//! nothing of HTTP. One call, [`Broker::mcp_call`]:
//!
//! 1. the tool by name, the agents of the subject and its `act` chain not disabled (the kill
//!    switch, asked on every call);
//! 2. the arguments parsed and checked (a refusal names the field), their canonical JSON and its
//!    SHA-256 (`context.args_sha256`, what an approval is bound to);
//! 3. what the decision needs besides (the grant's target and role, the SQL's shape);
//! 4. the budgets: a token bucket per (subject, act chain, tool) and one per target;
//! 5. Cedar: the action named after the tool on `Tool::"<name>"`, with the typed arguments; a
//!    `@step_up` on a permitting policy means a person must approve exactly this call
//!    ([`CallKey`]: tool, digest, subject, act chain): waiting, approved once, or refused;
//! 6. `mcp.call` audited (tool, digest, decision, policies, `act`, target) before anything is
//!    done, refusals too; the call; `mcp.call.done` with its effect.
//!
//! No tool answers a credential or a secret's value: an activation made for an agent drops the
//! credential at once, `call_api` goes through the proxy (which injects and scrubs), `run_query`
//! runs as the grant's login inside the broker.

pub mod args;

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use mayfly_api::{ProxyRate, RequestInfo};
use mayfly_core::audit::{AuditDraft, Outcome};
use mayfly_core::policy::{Action, Decision, Tool, ToolArgs, ToolInput};
use mayfly_core::{Principal, Timestamp};
use mayfly_store::{GrantFilter, SessionRecord};
use reqwest::header::{HeaderMap, HeaderValue};
use serde_json::{Map, Value, json};
use zeroize::Zeroize;

use self::args::{Args, sha256_hex};
use crate::access::calls::{CallGate, CallKey};
use crate::access::{NewRequest, QueryPlan, principal_key};
use crate::audit::refused::audit_refusal;
use crate::auth::Caller;
use crate::error::{AuditedError, BrokerError};
use crate::exchange::ExchangeError;
use crate::origin::Origin;
use crate::proxy::target::CallPath;
use crate::proxy::{ProxyCall, ProxyCaller};
use crate::state::Broker;

/// The deepest `act` chain accepted (a token acting through more hands is refused).
pub const MAX_ACT_DEPTH: usize = 8;
/// One caller's budget per tool: a subject through one act chain.
pub const PER_CALLER: ProxyRate = ProxyRate {
    per_second: 5.0,
    burst: 20,
};
/// Every caller of one tool together.
pub const PER_TOOL: ProxyRate = ProxyRate {
    per_second: 200.0,
    burst: 400,
};
/// One caller's calls that reach one target (a database, a proxy route).
pub const PER_CALLER_TARGET: ProxyRate = ProxyRate {
    per_second: 5.0,
    burst: 20,
};
/// Every call that reaches one target.
pub const PER_TARGET: ProxyRate = ProxyRate {
    per_second: 50.0,
    burst: 100,
};
/// The most of an API's answer body `call_api` hands back; the rest is cut (`truncated`).
pub const MAX_ANSWER_BYTES: usize = 256 * 1024;
/// The largest approval summary (the canonical arguments are cut there).
const MAX_SUMMARY_BYTES: usize = 8 * 1024;

/// Who calls a tool: the session the MCP token derives from (its principal is the token's
/// `sub`), the token's scopes and its `act` chain, nearest actor first.
#[derive(Clone, Debug)]
pub struct McpCaller {
    pub session: SessionRecord,
    pub scope: Vec<String>,
    pub actors: Vec<String>,
    /// The token's `iat`: an agent switched off since then (even if enabled again) is refused.
    pub issued_at: Option<Timestamp>,
}

impl McpCaller {
    pub fn principal(&self) -> &Principal {
        &self.session.principal
    }

    pub fn subject(&self) -> String {
        principal_key(self.principal())
    }
}

/// The answer to one call: a result, or an error result the agent reads (a refusal with its
/// reason). Never a credential.
#[derive(Debug)]
pub struct ToolAnswer {
    pub is_error: bool,
    pub value: Value,
    /// A call held for a person's approval: where the person answers it. A client that
    /// declared URL elicitation gets it as one (`-32042`); others read the error result.
    pub waiting: Option<WaitingCall>,
}

/// A call waiting for a person at `url` (the console's page of approval `approval_id`).
#[derive(Debug, Clone)]
pub struct WaitingCall {
    pub approval_id: String,
    pub url: String,
}

impl ToolAnswer {
    fn ok(value: Value) -> ToolAnswer {
        ToolAnswer {
            is_error: false,
            value,
            waiting: None,
        }
    }

    fn error(value: Value) -> ToolAnswer {
        ToolAnswer {
            is_error: true,
            value,
            waiting: None,
        }
    }

    /// The text an MCP client shows: the reason of an error, else the JSON.
    pub fn text(&self) -> String {
        match (&self.value, self.is_error) {
            (Value::Object(map), true) => match map.get("error").and_then(Value::as_str) {
                Some(reason) => reason.to_owned(),
                None => self.value.to_string(),
            },
            _ => self.value.to_string(),
        }
    }
}

/// The `act` chain of a token's claims, nearest actor first: `act.sub`, `act.act.sub`, … At most
/// [`MAX_ACT_DEPTH`] deep; a malformed or deeper chain is refused.
pub fn act_chain(claims: &Map<String, Value>) -> Result<Vec<String>, &'static str> {
    let mut chain = Vec::new();
    let mut act = claims.get("act");
    while let Some(value) = act {
        let Some(object) = value.as_object() else {
            return Err("the token's `act` is not an object");
        };
        let Some(sub) = object.get("sub").and_then(Value::as_str) else {
            return Err("the token's `act` has no `sub`");
        };
        if chain.len() == MAX_ACT_DEPTH {
            return Err("the token's `act` chain is deeper than 8");
        }
        chain.push(sub.to_owned());
        act = object.get("act");
    }
    Ok(chain)
}

/// What the audit events of one call share.
struct Facts {
    tool: String,
    subject: String,
    act: String,
    args_sha256: Option<String>,
    target: Option<String>,
}

/// What a call is decided on besides its arguments.
enum Prepared {
    None,
    Role { target: String },
    Path { path: String },
    Query(QueryPlan),
    Grant { target: String, role: String },
}

impl Broker {
    /// The MCP resource (RFC 8707, RFC 9728): `{public_url}/mcp`. The tokens accepted at `/mcp`
    /// are this broker's exchanged JWTs whose `aud` is exactly this.
    pub fn mcp_resource(&self) -> String {
        format!("{}/mcp", self.token_issuer().trim_end_matches('/'))
    }

    /// The caller of an MCP request, from its bearer token: one of this broker's JWTs for
    /// [`Broker::mcp_resource`], its session live now, its `act` chain well formed. Anything else
    /// (no token, a session token, a JWT for another audience, expired, revoked) is refused with
    /// `Unauthorized`, audited like every unauthenticated call (`mcp.refused`, aggregated; the
    /// token only as an HMAC). The token is never passed on.
    pub async fn mcp_caller(
        &self,
        meta: &Origin,
        token: Option<&str>,
    ) -> Result<McpCaller, AuditedError> {
        let resource = self.mcp_resource();
        let Some(token) = token else {
            return Err(self
                .refuse_mcp_token(meta, None, "no token: send `Authorization: Bearer <token>`")
                .await);
        };
        let mut reason = "the token is unknown, expired, revoked or not for this resource";
        let found = if token.len() > 8192 || !token.contains('.') {
            None
        } else {
            match self.verify_own_jwt(token, Some(&resource)).await {
                Ok(found) => found,
                Err(ExchangeError::OAuth { .. }) => None,
                Err(ExchangeError::Broker(error)) => return Err(error.into()),
            }
        };
        let Some((claims, session)) = found else {
            return Err(self.refuse_mcp_token(meta, Some(token), reason).await);
        };
        let actors = match act_chain(&claims) {
            Ok(actors) => actors,
            Err(why) => {
                reason = why;
                return Err(self.refuse_mcp_token(meta, Some(token), reason).await);
            }
        };
        let scope = claims
            .get("scope")
            .and_then(Value::as_str)
            .unwrap_or("")
            .split_whitespace()
            .map(str::to_owned)
            .collect();
        let issued_at = claims
            .get("iat")
            .and_then(Value::as_i64)
            .map(|iat| Timestamp::from_unix_ms(iat.saturating_mul(1000)));
        Ok(McpCaller {
            session,
            scope,
            actors,
            issued_at,
        })
    }

    async fn refuse_mcp_token(
        &self,
        meta: &Origin,
        token: Option<&str>,
        reason: &str,
    ) -> AuditedError {
        let mut event = self
            .draft("mcp.refused", Outcome::Refused)
            .detail("reason", reason)
            .detail("status", 401);
        if let Some(token) = token
            && let Some(keys) = self.unsealed().await
        {
            event = event.detail("token_hmac", keys.audit_hmac(token.as_bytes()));
        }
        event.subject = Some("mcp".into());
        meta.fill(&mut event);
        if let Err(error) = audit_refusal(self, event).await {
            return error.into();
        }
        BrokerError::Unauthorized(reason.into()).audited()
    }

    /// One tool call (see the module's doc). `Err` only when the broker cannot answer at all
    /// (its store, its audit log); every refusal is an error result with its reason, audited.
    pub async fn mcp_call(
        &self,
        meta: &Origin,
        caller: &McpCaller,
        name: &str,
        arguments: Option<&Map<String, Value>>,
    ) -> Result<ToolAnswer, BrokerError> {
        let subject = caller.subject();
        let mut facts = Facts {
            tool: name.chars().take(64).collect(),
            subject: subject.clone(),
            act: caller.actors.join(","),
            args_sha256: None,
            target: None,
        };
        let Some(tool) = Tool::parse(name) else {
            let reason = format!("no tool named `{}`", facts.tool);
            return self.refuse_tool(meta, &facts, "unknown_tool", reason).await;
        };
        let mut keys: Vec<&str> = vec![&subject];
        keys.extend(caller.actors.iter().map(String::as_str));
        if let Some(agent) = self.agent_cut(&keys, caller.issued_at).await? {
            let reason = format!("the agent `{agent}` is disabled");
            return self
                .refuse_tool(meta, &facts, "agent_disabled", reason)
                .await;
        }
        let args = match args::parse(tool, arguments) {
            Ok(args) => args,
            Err(error) => {
                return self
                    .refuse_tool(meta, &facts, "invalid", error.to_string())
                    .await;
            }
        };
        let canonical = args.canonical();
        let digest = sha256_hex(&canonical);
        facts.args_sha256 = Some(digest.clone());
        let prepared = match self.prepare(caller, &args).await {
            Ok(prepared) => prepared,
            Err(error) if is_refusal(&error) => {
                return self
                    .refuse_tool(meta, &facts, "invalid", error.to_string())
                    .await;
            }
            Err(error) => return Err(error),
        };
        facts.target = target_of(&args, &prepared);
        if let Err(retry_after_secs) = self.take_budget(tool, caller, facts.target.as_deref()) {
            let reason = BrokerError::RateLimited { retry_after_secs }.to_string();
            return self.refuse_tool(meta, &facts, "budget", reason).await;
        }
        let Some(tool_args) = tool_args(&args, &prepared) else {
            return Err(BrokerError::Internal(
                "mcp: arguments and context differ".into(),
            ));
        };
        let decision = self
            .policies()
            .await?
            .decide_tool(&ToolInput {
                principal: caller.principal(),
                actors: &caller.actors,
                args_sha256: &digest,
                hour: self.now().utc_hour(),
                args: tool_args,
            })
            .map_err(|e| BrokerError::Internal(format!("policy: {e}")))?;
        let (policies, step_up) = match decision.immediate() {
            Decision::Allow {
                policies, step_up, ..
            } => (policies, step_up.is_some()),
            Decision::Deny { reason } => {
                return self.refuse_tool(meta, &facts, "deny", reason).await;
            }
        };
        let mut approval = None;
        if step_up {
            let key = CallKey {
                tool,
                args_sha256: digest.clone(),
                subject: subject.clone(),
                actors: caller.actors.clone(),
            };
            let mut summary = format!("{} {canonical}", tool.as_str());
            if summary.len() > MAX_SUMMARY_BYTES {
                let mut end = MAX_SUMMARY_BYTES;
                while !summary.is_char_boundary(end) {
                    end -= 1;
                }
                summary.truncate(end);
            }
            match self.gate_call(meta, &key, &summary, &policies).await {
                Ok(CallGate::Proceed {
                    approval_id,
                    approver,
                }) => approval = Some((approval_id, approver)),
                Ok(CallGate::Waiting {
                    approval_id,
                    url,
                    expires_at,
                }) => {
                    let reason = format!(
                        "this call needs a person's approval: ask someone other than you to \
                         approve it at {url} before it expires, then make exactly the same call \
                         again (other arguments need another approval)"
                    );
                    let waiting = WaitingCall {
                        approval_id: approval_id.clone(),
                        url: url.clone(),
                    };
                    let answer = json!({
                        "error": reason,
                        "approval_id": approval_id,
                        "url": url,
                        "expires_at_ms": expires_at.unix_ms(),
                    });
                    self.record(
                        self.tool_event("mcp.call", Outcome::Refused, meta, &facts)
                            .detail("decision", "approval_waiting")
                            .detail("policies", policies.join(","))
                            .detail("approval_id", approval_id)
                            .detail("effect", "refused"),
                    )
                    .await?;
                    return Ok(ToolAnswer {
                        waiting: Some(waiting),
                        ..ToolAnswer::error(answer)
                    });
                }
                Ok(CallGate::Refused {
                    approval_id,
                    reason,
                }) => {
                    let reason =
                        format!("a person refused this call (approval {approval_id}): {reason}");
                    return self
                        .refuse_tool(meta, &facts, "approval_refused", reason)
                        .await;
                }
                Err(error) if is_refusal(&error) => {
                    return self
                        .refuse_tool(meta, &facts, "approval_unavailable", error.to_string())
                        .await;
                }
                Err(error) => return Err(error),
            }
        }
        let mut event = self
            .tool_event("mcp.call", Outcome::Ok, meta, &facts)
            .detail("decision", "allow")
            .detail("policies", policies.join(","));
        if let Some((approval_id, approver)) = &approval {
            event = event
                .detail("approval_id", approval_id.clone())
                .detail("approver", approver.clone());
        }
        self.record(event).await?;
        let done = self.tool_event("mcp.call.done", Outcome::Ok, meta, &facts);
        match self.execute(meta, caller, args, prepared).await {
            Ok(value) => {
                self.record(done.detail("effect", "ok")).await?;
                Ok(ToolAnswer::ok(value))
            }
            Err(error) => {
                let reason = match &error {
                    BrokerError::Internal(detail) => {
                        tracing::warn!(tool = %facts.tool, error = %detail, "mcp tool failed");
                        "internal error".to_owned()
                    }
                    other => other.to_string(),
                };
                let mut done = done
                    .detail("effect", "error")
                    .detail("reason", reason.clone());
                done.outcome = Outcome::Failed;
                self.record(done).await?;
                Ok(ToolAnswer::error(json!({ "error": reason })))
            }
        }
    }

    fn tool_event(&self, kind: &str, outcome: Outcome, meta: &Origin, facts: &Facts) -> AuditDraft {
        let mut event = self.draft(kind, outcome).detail("tool", facts.tool.clone());
        if let Some(digest) = &facts.args_sha256 {
            event = event.detail("args_sha256", digest.clone());
        }
        if !facts.act.is_empty() {
            event = event.detail("act", facts.act.clone());
        }
        if let Some(target) = &facts.target {
            event = event.detail("target", target.clone());
        }
        event.actor = Some(facts.subject.clone());
        event.subject = Some(
            facts
                .target
                .clone()
                .unwrap_or_else(|| format!("tool:{}", facts.tool)),
        );
        meta.fill(&mut event);
        event
    }

    /// A refused call: audited (in full, `mcp.call` refused with its reason; a spent budget
    /// aggregated like other floods), answered as an error result.
    async fn refuse_tool(
        &self,
        meta: &Origin,
        facts: &Facts,
        decision: &str,
        reason: String,
    ) -> Result<ToolAnswer, BrokerError> {
        let event = self
            .tool_event("mcp.call", Outcome::Refused, meta, facts)
            .detail("decision", decision)
            .detail("reason", format!("{reason} (`{}`)", facts.subject))
            .detail("effect", "refused");
        if decision == "budget" {
            audit_refusal(self, event).await?;
        } else {
            self.record(event).await?;
        }
        Ok(ToolAnswer::error(json!({ "error": reason })))
    }

    /// Takes one token from the caller's bucket for the tool and the tool's, and for a call that
    /// reaches a target one from the caller's bucket there and the target's.
    fn take_budget(&self, tool: Tool, caller: &McpCaller, target: Option<&str>) -> Result<(), u64> {
        let limits = &self.inner.proxy.tool_limits;
        let now = self.now();
        let who = format!("{}|{}", caller.subject(), caller.actors.join(","));
        limits.take(
            &format!("tool:{}", tool.as_str()),
            &who,
            PER_CALLER,
            PER_TOOL,
            now,
        )?;
        if let Some(target) = target {
            limits.take(
                &format!("target:{target}"),
                &who,
                PER_CALLER_TARGET,
                PER_TARGET,
                now,
            )?;
        }
        Ok(())
    }

    /// What the decision needs besides the arguments, read now. Another principal's grant or
    /// request is as unknown as a missing one.
    async fn prepare(&self, caller: &McpCaller, args: &Args) -> Result<Prepared, BrokerError> {
        Ok(match args {
            Args::ListAccess(_) | Args::AccessStatus(_) | Args::ReadSecretNames { .. } => {
                Prepared::None
            }
            Args::RequestAccess { target, .. } => Prepared::Role {
                target: target.clone(),
            },
            Args::CallApi(call) => {
                let path = CallPath::parse(&call.path)
                    .map_err(|e| BrokerError::BadRequest(format!("field `path`: {e}")))?;
                Prepared::Path {
                    path: path.canonical(),
                }
            }
            Args::RunQuery(query) => Prepared::Query(
                self.query_plan(caller.principal(), &query.grant_id, &query.sql)
                    .await?,
            ),
            Args::Revoke(revoke) => {
                let grant = self.own_grant(caller, &revoke.grant_id).await?;
                Prepared::Grant {
                    target: grant.target,
                    role: grant.role,
                }
            }
        })
    }

    async fn own_grant(
        &self,
        caller: &McpCaller,
        grant_id: &str,
    ) -> Result<mayfly_store::GrantRecord, BrokerError> {
        self.store()
            .grant(grant_id)
            .await?
            .filter(|grant| grant.principal == caller.subject())
            .ok_or_else(|| BrokerError::NotFound(format!("no grant `{grant_id}` of yours")))
    }

    /// Does what an allowed call asks.
    async fn execute(
        &self,
        meta: &Origin,
        caller: &McpCaller,
        args: Args,
        prepared: Prepared,
    ) -> Result<Value, BrokerError> {
        match (args, prepared) {
            (Args::ListAccess(_), _) => self.tool_list_access(caller).await,
            (Args::RequestAccess { args, target, role }, _) => {
                let new = NewRequest {
                    target,
                    role,
                    ttl: Duration::from_secs(args.ttl_seconds),
                    reason: args.reason,
                    ticket: args.ticket.unwrap_or_default(),
                    break_glass: false,
                };
                let info = self
                    .create_request_as(meta, caller.principal(), &caller.actors, None, new)
                    .await?;
                self.request_status(meta, caller, info).await
            }
            (Args::AccessStatus(args), _) => {
                let info = self.request_info(&args.request_id).await?;
                if info.principal != caller.subject() {
                    return Err(BrokerError::NotFound(format!(
                        "no request `{}` of yours",
                        args.request_id
                    )));
                }
                self.request_status(meta, caller, info).await
            }
            (Args::CallApi(args), _) => self.tool_call_api(meta, caller, args).await,
            (Args::RunQuery(args), Prepared::Query(plan)) => {
                let answer = self
                    .run_query(meta, caller.principal(), &plan, &args.sql, args.max_rows)
                    .await?;
                Ok(json!({
                    "kind": plan.shape.kind.as_str(),
                    "columns": answer.columns,
                    "rows": answer.rows,
                    "truncated": answer.truncated,
                }))
            }
            (Args::ReadSecretNames { scope, .. }, _) => {
                let as_caller = Caller {
                    session: caller.session.clone(),
                };
                let mut names = Vec::new();
                for record in self
                    .store()
                    .kv_latest(scope.project(), scope.environment(), false)
                    .await?
                {
                    if record.meta.is_live()
                        && self
                            .secret_decision(&as_caller, Action::ReadSecret, &record.path)
                            .await?
                            .is_ok()
                    {
                        names.push(record.path.name.clone());
                    }
                }
                Ok(json!({ "env": scope.to_string(), "names": names }))
            }
            (Args::Revoke(args), _) => {
                let grant = self
                    .request_revoke(meta, caller.principal(), &args.grant_id, "revoked over MCP")
                    .await?;
                Ok(json!({ "grant_id": grant.id, "state": grant.state }))
            }
            (Args::RunQuery(_), _) => Err(BrokerError::Internal("run_query without a plan".into())),
        }
    }

    async fn tool_list_access(&self, caller: &McpCaller) -> Result<Value, BrokerError> {
        let roles: Vec<Value> = self
            .requestable_roles(caller.principal())
            .await?
            .into_iter()
            .map(|role| {
                json!({
                    "role": format!("{}/{}", role.target, role.role),
                    "max_ttl_seconds": role.max_ttl.as_secs(),
                    "approvals": role.approvals,
                    "step_up": role.step_up,
                    "break_glass_only": role.break_glass_only,
                })
            })
            .collect();
        let as_caller = Caller {
            session: caller.session.clone(),
        };
        let (requests, grants) = self.my_access(&as_caller).await?;
        let requests: Vec<Value> = requests
            .into_iter()
            .map(|r| {
                json!({
                    "request_id": r.id,
                    "role": format!("{}/{}", r.target, r.role),
                    "state": r.state,
                    "reason": r.reason,
                    "created_at_ms": r.created_at_ms,
                    "expires_at_ms": r.expires_at_ms,
                })
            })
            .collect();
        let grants: Vec<Value> = grants
            .into_iter()
            .map(|g| {
                json!({
                    "grant_id": g.id,
                    "request_id": g.request_id,
                    "role": format!("{}/{}", g.target, g.role),
                    "state": g.state,
                    "expires_at_ms": g.expires_at_ms,
                    "seconds_left": g.seconds_left,
                })
            })
            .collect();
        Ok(json!({ "roles": roles, "requests": requests, "grants": grants }))
    }

    /// A request's state for the agent; an allowed one is activated now by the broker, for the
    /// requester, and its credential dropped at once (zeroized): the agent learns the grant's
    /// id and expiry, never the credential.
    async fn request_status(
        &self,
        meta: &Origin,
        caller: &McpCaller,
        info: RequestInfo,
    ) -> Result<Value, BrokerError> {
        let mut answer = Map::new();
        let fields = json!({
            "request_id": info.id,
            "role": format!("{}/{}", info.target, info.role),
            "state": info.state,
            "decision": info.decision,
            "approvals_needed": info.approvals_needed,
            "approvers": info.approvers,
            "expires_at_ms": info.expires_at_ms,
        });
        if let Value::Object(fields) = fields {
            answer.extend(fields);
        }
        match info.state.as_str() {
            "allowed" => {
                match self
                    .activate(meta, caller.principal(), None, &info.id, None)
                    .await
                {
                    Ok(mut credential) => {
                        credential.password.zeroize();
                        if let Some(key) = credential.private_key.as_mut() {
                            key.zeroize();
                        }
                        answer.insert("state".into(), json!("activated"));
                        answer.insert("grant_id".into(), json!(credential.grant.id));
                        answer.insert(
                            "grant_expires_at_ms".into(),
                            json!(credential.grant.expires_at_ms),
                        );
                    }
                    Err(error @ BrokerError::Internal(_)) => return Err(error),
                    Err(error) => {
                        answer.insert("activation_error".into(), json!(error.to_string()));
                    }
                }
            }
            "activated" => {
                let grant = self
                    .store()
                    .grants_of(&caller.subject(), GrantFilter::All, 200)
                    .await?
                    .into_iter()
                    .find(|grant| grant.request_id == info.id);
                if let Some(grant) = grant {
                    answer.insert("grant_id".into(), json!(grant.id));
                    answer.insert("grant_state".into(), json!(grant.state.as_str()));
                    answer.insert(
                        "grant_expires_at_ms".into(),
                        json!(grant.expires_at.unix_ms()),
                    );
                }
            }
            _ => {}
        }
        Ok(Value::Object(answer))
    }

    /// `call_api`: through the proxy, as the caller (the proxy decides `proxy` on the route,
    /// injects the credential, audits and scrubs); the answer's status, a few headers and at
    /// most [`MAX_ANSWER_BYTES`] of its body as text.
    async fn tool_call_api(
        &self,
        meta: &Origin,
        caller: &McpCaller,
        args: args::CallApiArgs,
    ) -> Result<Value, BrokerError> {
        let mut headers = HeaderMap::new();
        let bad = |field: &str| {
            BrokerError::BadRequest(format!("field `{field}`: not a valid header value"))
        };
        if args.body.is_some() {
            let content_type = args.content_type.as_deref().unwrap_or("application/json");
            headers.insert(
                reqwest::header::CONTENT_TYPE,
                HeaderValue::from_str(content_type).map_err(|_| bad("content_type"))?,
            );
        }
        if let Some(intent) = &args.intent {
            headers.insert(
                crate::proxy::call::INTENT_HEADER,
                HeaderValue::from_str(intent).map_err(|_| bad("intent"))?,
            );
        }
        let method = reqwest::Method::from_bytes(args.method.as_bytes())
            .map_err(|_| BrokerError::BadRequest("field `method`: not a method".into()))?;
        let call = ProxyCall {
            route: args.route.clone(),
            method,
            raw_path: args.path.clone(),
            query: args.query.clone().filter(|q| !q.is_empty()),
            headers,
        };
        let proxy_caller = ProxyCaller {
            session: caller.session.clone(),
            scope: caller.scope.clone(),
            actor: caller.actors.first().cloned().unwrap_or_default(),
        };
        let body = Bytes::from(args.body.unwrap_or_default());
        let body = futures_util::stream::iter([Ok::<Bytes, Infallible>(body)]);
        let answer = self
            .proxy_as(meta, proxy_caller, call, body)
            .await
            .map_err(|AuditedError { error, .. }| error)?;
        let mut kept = Map::new();
        for name in [
            "content-type",
            "location",
            "retry-after",
            "etag",
            "last-modified",
            "cache-control",
        ] {
            if let Some(value) = answer.headers.get(name).and_then(|v| v.to_str().ok()) {
                kept.insert(name.to_owned(), json!(value));
            }
        }
        let mut bytes = Vec::new();
        let mut truncated = false;
        let mut stream = answer.body;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| BrokerError::BadGateway(e.to_string()))?;
            let room = MAX_ANSWER_BYTES - bytes.len();
            if chunk.len() > room {
                bytes.extend_from_slice(chunk.get(..room).unwrap_or_default());
                truncated = true;
                break;
            }
            bytes.extend_from_slice(&chunk);
        }
        Ok(json!({
            "status": answer.status,
            "headers": kept,
            "body": String::from_utf8_lossy(&bytes),
            "truncated": truncated,
        }))
    }
}

/// Errors that are the caller's (bad input, not found, not allowed, a state that moved on):
/// answered as error results. Anything else is the broker's.
fn is_refusal(error: &BrokerError) -> bool {
    matches!(
        error,
        BrokerError::BadRequest(_)
            | BrokerError::NotFound(_)
            | BrokerError::Forbidden(_)
            | BrokerError::Conflict(_)
            | BrokerError::Unavailable(_)
            | BrokerError::StepUpRequired { .. }
    )
}

/// The target a call reaches (audited, and its budget): a database target, a proxy route.
fn target_of(args: &Args, prepared: &Prepared) -> Option<String> {
    match (args, prepared) {
        (Args::CallApi(call), _) => Some(format!("proxy-route:{}", call.route)),
        (_, Prepared::Query(plan)) => Some(format!("target:{}", plan.target)),
        (_, Prepared::Role { target, .. } | Prepared::Grant { target, .. }) => {
            Some(format!("target:{target}"))
        }
        _ => None,
    }
}

/// The typed arguments the policy sees.
fn tool_args<'a>(args: &'a Args, prepared: &'a Prepared) -> Option<ToolArgs<'a>> {
    Some(match (args, prepared) {
        (Args::ListAccess(_), _) => ToolArgs::ListAccess,
        (Args::RequestAccess { args, target, role }, _) => ToolArgs::RequestAccess {
            target,
            role,
            reason: &args.reason,
            ttl_seconds: args.ttl_seconds,
            ticket: args.ticket.as_deref().unwrap_or(""),
        },
        (Args::AccessStatus(args), _) => ToolArgs::AccessStatus {
            request_id: &args.request_id,
        },
        (Args::CallApi(call), Prepared::Path { path }) => ToolArgs::CallApi {
            route: &call.route,
            method: &call.method,
            path,
            has_query: call.query.as_deref().is_some_and(|q| !q.is_empty()),
            has_body: call.body.is_some(),
        },
        (Args::RunQuery(query), Prepared::Query(plan)) => ToolArgs::RunQuery {
            grant_id: &query.grant_id,
            target: &plan.target,
            role: &plan.role,
            query: &plan.shape,
            max_rows: u64::from(query.max_rows),
        },
        (Args::ReadSecretNames { scope, .. }, _) => ToolArgs::ReadSecretNames {
            project: scope.project(),
            environment: scope.environment(),
        },
        (Args::Revoke(revoke), Prepared::Grant { target, role }) => ToolArgs::Revoke {
            grant_id: &revoke.grant_id,
            target,
            role,
        },
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_act_chain_is_read_nearest_first_and_bounded() {
        let claims = |act: Value| match json!({ "sub": "user:alice", "act": act }) {
            Value::Object(map) => map,
            _ => Map::new(),
        };
        assert_eq!(
            act_chain(&claims(
                json!({"sub": "agent:a", "act": {"sub": "agent:b"}})
            )),
            Ok(vec!["agent:a".to_owned(), "agent:b".to_owned()])
        );
        assert_eq!(act_chain(&Map::new()), Ok(Vec::new()));
        assert!(act_chain(&claims(json!("agent:a"))).is_err());
        assert!(act_chain(&claims(json!({"act": {"sub": "x"}}))).is_err());
        let mut deep = json!({"sub": "agent:last"});
        for i in 0..8 {
            deep = json!({"sub": format!("agent:{i}"), "act": deep});
        }
        assert!(act_chain(&claims(deep)).is_err());
    }
}
