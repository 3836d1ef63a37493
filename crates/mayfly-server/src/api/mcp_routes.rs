//! The MCP server at `/mcp` (docs/agents.md): the `rmcp` streamable-HTTP transport, stateless
//! (no MCP session is kept: every HTTP request carries its own token and is decided alone), JSON
//! answers, both the 2026-07-28 protocol and the 2025-11-25 `initialize` handshake. In front of
//! it a layer authenticates every request ([`Broker::mcp_caller`]: one of this broker's JWTs for
//! `{public_url}/mcp`, its session live) and answers 401 with `WWW-Authenticate: Bearer
//! resource_metadata=…` otherwise; the protected-resource metadata (RFC 9728) says where tokens
//! come from. The token is never passed on: the tools act as the broker. Each tool call is one
//! [`Broker::mcp_call`].

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::{Request, State};
use axum::http::header::WWW_AUTHENTICATE;
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use mayfly_core::policy::Tool;
use rmcp::ErrorData;
use rmcp::handler::server::ServerHandler;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, CallToolResult, ContentBlock, Implementation,
    ListToolsResult, PaginatedRequestParams, ServerCapabilities, ServerConfig,
};
use rmcp::service::{RequestContext, RoleServer};
use rmcp::transport::streamable_http_server::session::never::NeverSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use serde_json::{Value, json};

use crate::api::error::Audited;
use crate::error::BrokerError;
use crate::mcp::McpCaller;
use crate::origin::Origin;
use crate::state::Broker;

/// The `/mcp` route, its authentication layer, and the protected-resource metadata.
pub fn router(broker: &Broker) -> Router<Broker> {
    let server = McpServer {
        broker: broker.clone(),
    };
    let config = StreamableHttpServerConfig::default()
        .with_allowed_hosts(allowed_hosts(&broker.inner.config.public_url))
        .with_legacy_session_mode(false)
        .with_json_response(true);
    let service = StreamableHttpService::new(
        move || Ok(server.clone()),
        Arc::new(NeverSessionManager::default()),
        config,
    );
    Router::new()
        .route_service("/mcp", service)
        .route_layer(axum::middleware::from_fn_with_state(
            broker.clone(),
            authenticate,
        ))
        .route(
            "/.well-known/oauth-protected-resource",
            get(protected_resource),
        )
        .route(
            "/.well-known/oauth-protected-resource/mcp",
            get(protected_resource),
        )
}

/// The `Host`s the transport accepts (it refuses others, against DNS rebinding): the public
/// URL's, and loopback.
fn allowed_hosts(public_url: &str) -> Vec<String> {
    let mut hosts = vec![
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
    ];
    if let Ok(url) = reqwest::Url::parse(public_url)
        && let Some(host) = url.host_str()
    {
        hosts.push(
            host.trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned(),
        );
        if let Some(port) = url.port() {
            hosts.push(format!("{host}:{port}"));
        }
    }
    hosts
}

/// RFC 9728: the resource, the authorization server that issues its tokens (this broker: token
/// exchange, `POST /v1/token/exchange`), how to send them.
pub async fn protected_resource(State(broker): State<Broker>) -> Json<Value> {
    let issuer = broker.token_issuer();
    Json(json!({
        "resource": broker.mcp_resource(),
        "authorization_servers": [issuer],
        "bearer_methods_supported": ["header"],
        "resource_name": "Mayfly MCP server",
        "resource_documentation": format!("{issuer}/ui/"),
    }))
}

fn resource_metadata_url(broker: &Broker) -> String {
    format!(
        "{}/.well-known/oauth-protected-resource/mcp",
        broker.token_issuer().trim_end_matches('/')
    )
}

/// Authenticates every request to `/mcp` (see [`Broker::mcp_caller`]) and hands the caller to
/// the tools in the request's extensions.
async fn authenticate(State(broker): State<Broker>, mut request: Request, next: Next) -> Response {
    let meta = request
        .extensions()
        .get::<Origin>()
        .cloned()
        .unwrap_or_default();
    let token = request
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| {
            value
                .strip_prefix("Bearer ")
                .or_else(|| value.strip_prefix("bearer "))
        })
        .map(|token| token.trim().to_owned());
    match broker.mcp_caller(&meta, token.as_deref()).await {
        Ok(caller) => {
            request.extensions_mut().insert(caller);
            next.run(request).await
        }
        Err(error) => {
            let unauthorized = matches!(error.error, BrokerError::Unauthorized(_));
            let mut response = error.error.into_response();
            if unauthorized {
                let mut challenge = format!(
                    "Bearer resource_metadata=\"{}\"",
                    resource_metadata_url(&broker)
                );
                if token.is_some() {
                    challenge.push_str(", error=\"invalid_token\"");
                }
                if let Ok(value) = HeaderValue::from_str(&challenge) {
                    response.headers_mut().insert(WWW_AUTHENTICATE, value);
                }
                *response.status_mut() = StatusCode::UNAUTHORIZED;
            }
            if error.audited {
                response.extensions_mut().insert(Audited);
            }
            response
        }
    }
}

/// The MCP server's handler: the tools' list and calls, each answered by the broker.
#[derive(Clone)]
struct McpServer {
    broker: Broker,
}

impl ServerHandler for McpServer {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("mayfly", env!("CARGO_PKG_VERSION")))
            .with_instructions(
                "Mayfly, a just-in-time access broker. Ask for access with request_access, see \
                 what you hold with list_access, act with call_api and run_query: every call is \
                 decided on its arguments, some wait for a person's approval, and no tool ever \
                 answers a credential or a secret.",
            )
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        Ok(ListToolsResult::with_all_items(
            Tool::ALL.into_iter().map(tool_definition).collect(),
        ))
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let parts = context.extensions.get::<Parts>();
        let caller = parts.and_then(|parts| parts.extensions.get::<McpCaller>());
        let Some(caller) = caller else {
            return Err(ErrorData::internal_error("no authenticated caller", None));
        };
        let meta = parts
            .and_then(|parts| parts.extensions.get::<Origin>())
            .cloned()
            .unwrap_or_default();
        let answer = self
            .broker
            .mcp_call(&meta, caller, &request.name, request.arguments.as_ref())
            .await
            .map_err(|error| {
                tracing::warn!(error = %error, "mcp call failed");
                ErrorData::internal_error(
                    "the broker cannot answer now (its store or audit log); try again",
                    None,
                )
            })?;
        if let Some(waiting) = &answer.waiting
            && declares_url_elicitation(&context)
        {
            return Err(url_elicitation(waiting, answer.text()));
        }
        let text = ContentBlock::text(answer.text());
        let mut result = if answer.is_error {
            CallToolResult::error(vec![text])
        } else {
            CallToolResult::success(vec![text])
        };
        result.structured_content = Some(answer.value);
        Ok(result.into())
    }
}

/// Whether the client said it can send its user to a URL (URL-mode elicitation): in the
/// request's `_meta` (2026-07-28) or in its `initialize` (2025-11-25).
fn declares_url_elicitation(context: &RequestContext<RoleServer>) -> bool {
    let declared = context.meta.client_capabilities().or_else(|| {
        context
            .peer
            .peer_info()
            .map(|info| info.capabilities.clone())
    });
    declared
        .and_then(|capabilities| capabilities.elicitation)
        .is_some_and(|elicitation| elicitation.url.is_some())
}

/// A call held for a person, as MCP's URL elicitation tells it (`-32042`,
/// URLElicitationRequiredError): the client shows its user the console's page of the approval;
/// the same call made again after the approval runs once. The client itself never approves.
fn url_elicitation(waiting: &crate::mcp::WaitingCall, message: String) -> ErrorData {
    ErrorData::new(
        rmcp::model::ErrorCode(URL_ELICITATION_REQUIRED),
        message.clone(),
        Some(json!({"elicitations": [{
            "mode": "url",
            "elicitationId": waiting.approval_id,
            "url": waiting.url,
            "message": message,
        }]})),
    )
}

/// MCP's error code for a request that needs URL elicitations first.
const URL_ELICITATION_REQUIRED: i32 = -32042;

fn tool_definition(tool: Tool) -> rmcp::model::Tool {
    let (description, schema) = crate::mcp::args::describe(tool);
    let schema = match schema {
        Value::Object(map) => map,
        _ => serde_json::Map::new(),
    };
    rmcp::model::Tool::new(tool.as_str(), description, Arc::new(schema))
}
