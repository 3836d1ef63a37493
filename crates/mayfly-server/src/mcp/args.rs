//! The MCP tools' arguments: each tool's JSON Schema (what `tools/list` shows), the parsing of a
//! call's arguments into typed values (unknown fields refused, each problem naming its field) and
//! their canonical JSON, whose SHA-256 is what a policy sees as `context.args_sha256` and what a
//! call approval is bound to.

use std::str::FromStr;

use mayfly_core::policy::Tool;
use mayfly_core::proxy::RouteName;
use mayfly_core::secret_path::SecretScope;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::error::BrokerError;

/// The largest request body `call_api` sends.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;
/// The longest TTL a request may ask for (the role's and the policy's maxima clamp it further).
pub const MAX_TTL_SECONDS: u64 = 30 * 24 * 3600;
/// Rows `run_query` answers when `max_rows` is not given, and at most.
pub const DEFAULT_MAX_ROWS: u32 = 100;
pub const MAX_ROWS: u32 = 1000;

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NoArgs {}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RequestAccessArgs {
    /// `TARGET/ROLE`.
    pub role: String,
    pub reason: String,
    pub ttl_seconds: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ticket: Option<String>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RequestIdArgs {
    pub request_id: String,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CallApiArgs {
    pub route: String,
    pub method: String,
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub intent: Option<String>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RunQueryArgs {
    pub grant_id: String,
    pub sql: String,
    #[serde(default = "default_max_rows")]
    pub max_rows: u32,
}

fn default_max_rows() -> u32 {
    DEFAULT_MAX_ROWS
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SecretNamesArgs {
    /// `project/environment`.
    pub env: String,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct GrantIdArgs {
    pub grant_id: String,
}

/// A call's arguments, parsed and checked.
#[derive(Debug)]
pub enum Args {
    ListAccess(NoArgs),
    RequestAccess {
        args: RequestAccessArgs,
        target: String,
        role: String,
    },
    AccessStatus(RequestIdArgs),
    CallApi(CallApiArgs),
    RunQuery(RunQueryArgs),
    ReadSecretNames {
        args: SecretNamesArgs,
        scope: SecretScope,
    },
    Revoke(GrantIdArgs),
}

fn bad(field: &str, problem: impl std::fmt::Display) -> BrokerError {
    BrokerError::BadRequest(format!("field `{field}`: {problem}"))
}

/// The arguments as typed values: unknown fields and wrong types are refused naming the field.
fn typed<T: DeserializeOwned>(value: &Value) -> Result<T, BrokerError> {
    serde_path_to_error::deserialize(value).map_err(|error| {
        let path = error.path().to_string();
        let inner = error.into_inner().to_string();
        if path == "." || path.is_empty() {
            BrokerError::BadRequest(format!("arguments: {inner}"))
        } else {
            bad(&path, inner)
        }
    })
}

fn printable(field: &str, text: &str, max: usize, allow_empty: bool) -> Result<(), BrokerError> {
    if (!allow_empty && text.trim().is_empty())
        || text.len() > max
        || text.chars().any(char::is_control)
    {
        let least = if allow_empty { 0 } else { 1 };
        return Err(bad(
            field,
            format!("{least} to {max} bytes of printable text"),
        ));
    }
    Ok(())
}

fn id(field: &str, text: &str) -> Result<(), BrokerError> {
    if text.len() > 64 || uuid::Uuid::parse_str(text).is_err() {
        return Err(bad(field, "not an id (a UUID as listed by `list_access`)"));
    }
    Ok(())
}

/// Parses and checks the arguments of `tool` (absent arguments are `{}`).
pub fn parse(tool: Tool, arguments: Option<&Map<String, Value>>) -> Result<Args, BrokerError> {
    let value = Value::Object(arguments.cloned().unwrap_or_default());
    Ok(match tool {
        Tool::ListAccess => Args::ListAccess(typed(&value)?),
        Tool::RequestAccess => {
            let args: RequestAccessArgs = typed(&value)?;
            let Some((target, role)) = args.role.split_once('/') else {
                return Err(bad("role", "`TARGET/ROLE`, as `list_access` lists them"));
            };
            printable("role", &args.role, 257, false)?;
            if target.is_empty() || role.is_empty() || role.contains('/') {
                return Err(bad("role", "`TARGET/ROLE`, as `list_access` lists them"));
            }
            printable("reason", &args.reason, 1024, false)?;
            if let Some(ticket) = &args.ticket {
                printable("ticket", ticket, 256, true)?;
            }
            if args.ttl_seconds == 0 || args.ttl_seconds > MAX_TTL_SECONDS {
                return Err(bad(
                    "ttl_seconds",
                    format!("from 1 to {MAX_TTL_SECONDS} seconds"),
                ));
            }
            let (target, role) = (target.to_owned(), role.to_owned());
            Args::RequestAccess { args, target, role }
        }
        Tool::AccessStatus => {
            let args: RequestIdArgs = typed(&value)?;
            id("request_id", &args.request_id)?;
            Args::AccessStatus(args)
        }
        Tool::CallApi => {
            let args: CallApiArgs = typed(&value)?;
            RouteName::parse(&args.route).map_err(|e| bad("route", e))?;
            if !matches!(
                args.method.as_str(),
                "GET" | "HEAD" | "POST" | "PUT" | "PATCH" | "DELETE"
            ) {
                return Err(bad(
                    "method",
                    "one of GET, HEAD, POST, PUT, PATCH, DELETE (upper case)",
                ));
            }
            if !args.path.starts_with('/') {
                return Err(bad("path", "the path below the route, starting with `/`"));
            }
            printable("path", &args.path, 2048, false)?;
            if let Some(query) = &args.query {
                printable("query", query, 2048, true)?;
                if query.contains('#') || query.starts_with('?') {
                    return Err(bad("query", "the query string without `?` or `#`"));
                }
            }
            if let Some(body) = &args.body
                && body.len() > MAX_BODY_BYTES
            {
                return Err(bad("body", format!("at most {MAX_BODY_BYTES} bytes")));
            }
            if let Some(content_type) = &args.content_type {
                let ok = !content_type.is_empty()
                    && content_type.len() <= 128
                    && content_type.bytes().all(|b| (0x20..0x7f).contains(&b));
                if !ok {
                    return Err(bad("content_type", "1 to 128 printable ASCII characters"));
                }
            }
            if let Some(intent) = &args.intent {
                printable("intent", intent, 256, true)?;
            }
            Args::CallApi(args)
        }
        Tool::RunQuery => {
            let args: RunQueryArgs = typed(&value)?;
            id("grant_id", &args.grant_id)?;
            if args.sql.trim().is_empty() || args.sql.len() > mayfly_core::sql::MAX_SQL_BYTES {
                return Err(bad(
                    "sql",
                    format!(
                        "one SQL statement of 1 to {} bytes",
                        mayfly_core::sql::MAX_SQL_BYTES
                    ),
                ));
            }
            if args.max_rows == 0 || args.max_rows > MAX_ROWS {
                return Err(bad("max_rows", format!("from 1 to {MAX_ROWS}")));
            }
            Args::RunQuery(args)
        }
        Tool::ReadSecretNames => {
            let args: SecretNamesArgs = typed(&value)?;
            let scope = SecretScope::from_str(&args.env).map_err(|e| bad("env", e))?;
            Args::ReadSecretNames { args, scope }
        }
        Tool::Revoke => {
            let args: GrantIdArgs = typed(&value)?;
            id("grant_id", &args.grant_id)?;
            Args::Revoke(args)
        }
    })
}

impl Args {
    /// The arguments as parsed (defaults filled in), as JSON.
    fn value(&self) -> Value {
        let value = match self {
            Args::ListAccess(args) => serde_json::to_value(args),
            Args::RequestAccess { args, .. } => serde_json::to_value(args),
            Args::AccessStatus(args) => serde_json::to_value(args),
            Args::CallApi(args) => serde_json::to_value(args),
            Args::RunQuery(args) => serde_json::to_value(args),
            Args::ReadSecretNames { args, .. } => serde_json::to_value(args),
            Args::Revoke(args) => serde_json::to_value(args),
        };
        value.unwrap_or(Value::Null)
    }

    /// The canonical JSON of the arguments: keys sorted at every level, no spaces, strings and
    /// numbers as `serde_json` writes them. Two calls with the same arguments have the same text
    /// whatever order or spacing their client used.
    pub fn canonical(&self) -> String {
        let mut out = String::new();
        write_canonical(&self.value(), &mut out);
        out
    }
}

fn write_canonical(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(key.clone()).to_string());
                out.push(':');
                if let Some(inner) = map.get(key) {
                    write_canonical(inner, out);
                }
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// SHA-256 of a text, in lower-case hex.
pub fn sha256_hex(text: &str) -> String {
    hex::encode(mayfly_crypto::sha256(text.as_bytes()))
}

/// What `tools/list` shows of a tool: its description and the JSON Schema of its arguments.
pub fn describe(tool: Tool) -> (&'static str, Value) {
    let id = |what: &str| json!({"type": "string", "format": "uuid", "description": what});
    match tool {
        Tool::ListAccess => (
            "What you may ask for (roles with their longest TTL, whether a request waits for \
             approvals), your latest requests and your live grants. Never a credential.",
            json!({"type": "object", "properties": {}, "additionalProperties": false}),
        ),
        Tool::RequestAccess => (
            "Ask for a role for a while. Policy decides at once: allowed (then activated by the \
             broker: you get the grant's id and expiry, never its credential), pending approvals \
             by people, or denied with the reason.",
            json!({
                "type": "object",
                "properties": {
                    "role": {"type": "string", "description": "TARGET/ROLE, as list_access lists it"},
                    "reason": {"type": "string", "description": "why, 1 to 1024 characters"},
                    "ttl_seconds": {"type": "integer", "minimum": 1, "maximum": MAX_TTL_SECONDS},
                    "ticket": {"type": "string", "description": "a ticket reference, optional"}
                },
                "required": ["role", "reason", "ttl_seconds"],
                "additionalProperties": false
            }),
        ),
        Tool::AccessStatus => (
            "The state of one of your requests; an allowed one is activated now (you get the \
             grant's id and expiry, never its credential).",
            json!({
                "type": "object",
                "properties": {"request_id": id("the request's id")},
                "required": ["request_id"],
                "additionalProperties": false
            }),
        ),
        Tool::CallApi => (
            "Call an HTTP API through one of the broker's proxy routes: the broker injects the \
             route's credential, which you never see, and answers the status, a few headers and \
             the body (scrubbed of the credential).",
            json!({
                "type": "object",
                "properties": {
                    "route": {"type": "string", "description": "the proxy route's name"},
                    "method": {"type": "string", "enum": ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]},
                    "path": {"type": "string", "description": "the path below the route, starting with /"},
                    "query": {"type": "string", "description": "the query string, without ?"},
                    "body": {"type": "string", "description": "the request body (text, at most 1 MiB)"},
                    "content_type": {"type": "string", "description": "the body's type, default application/json"},
                    "intent": {"type": "string", "description": "why you make this call (policies may look at it)"}
                },
                "required": ["route", "method", "path"],
                "additionalProperties": false
            }),
        ),
        Tool::RunQuery => (
            "Run one SQL statement on a database you hold a grant on, as the grant's own login; \
             the broker runs it for you (you never hold the password) and answers columns and \
             rows. The statement is classified first (kind, tables, WHERE) and policies decide on \
             that.",
            json!({
                "type": "object",
                "properties": {
                    "grant_id": id("your active grant on a postgres or mariadb target"),
                    "sql": {"type": "string", "description": "one SQL statement"},
                    "max_rows": {"type": "integer", "minimum": 1, "maximum": MAX_ROWS, "default": DEFAULT_MAX_ROWS}
                },
                "required": ["grant_id", "sql"],
                "additionalProperties": false
            }),
        ),
        Tool::ReadSecretNames => (
            "The names of the secrets of an environment that you may read (names only: no tool \
             ever answers a secret's value).",
            json!({
                "type": "object",
                "properties": {"env": {"type": "string", "description": "project/environment"}},
                "required": ["env"],
                "additionalProperties": false
            }),
        ),
        Tool::Revoke => (
            "Revoke one of your grants now (the broker removes the credential from the target \
             and proves it).",
            json!({
                "type": "object",
                "properties": {"grant_id": id("your grant's id")},
                "required": ["grant_id"],
                "additionalProperties": false
            }),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(value: Value) -> Map<String, Value> {
        match value {
            Value::Object(map) => map,
            _ => Map::new(),
        }
    }

    #[track_caller]
    fn refused(tool: Tool, value: Value, field: &str) {
        match parse(tool, Some(&args(value))) {
            Err(BrokerError::BadRequest(message)) => {
                assert!(message.contains(&format!("`{field}`")), "{message}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn arguments_are_checked_field_by_field() {
        let grant = "0192f0c4-0000-7000-8000-000000000001";
        assert!(parse(Tool::ListAccess, None).is_ok());
        refused(Tool::ListAccess, json!({"x": 1}), "x");
        refused(
            Tool::RunQuery,
            json!({"grant_id": "../x", "sql": "SELECT 1"}),
            "grant_id",
        );
        refused(
            Tool::RunQuery,
            json!({"grant_id": grant, "sql": " "}),
            "sql",
        );
        refused(
            Tool::RunQuery,
            json!({"grant_id": grant, "sql": "SELECT 1", "max_rows": 0}),
            "max_rows",
        );
        refused(
            Tool::RunQuery,
            json!({"grant_id": grant, "sql": "SELECT 1", "max_rows": "9"}),
            "max_rows",
        );
        refused(
            Tool::RunQuery,
            json!({"grant_id": grant, "sql": "x".repeat(mayfly_core::sql::MAX_SQL_BYTES + 1)}),
            "sql",
        );
        refused(
            Tool::RequestAccess,
            json!({"role": "db", "reason": "r", "ttl_seconds": 60}),
            "role",
        );
        refused(
            Tool::RequestAccess,
            json!({"role": "db/ro", "reason": "r\u{0}", "ttl_seconds": 60}),
            "reason",
        );
        refused(
            Tool::RequestAccess,
            json!({"role": "db/ro", "reason": "r", "ttl_seconds": 0}),
            "ttl_seconds",
        );
        refused(
            Tool::RequestAccess,
            json!({"role": "db/ro", "reason": "r", "ttl_seconds": -1}),
            "ttl_seconds",
        );
        refused(
            Tool::CallApi,
            json!({"route": "../x", "method": "GET", "path": "/"}),
            "route",
        );
        refused(
            Tool::CallApi,
            json!({"route": "api", "method": "get", "path": "/"}),
            "method",
        );
        refused(
            Tool::CallApi,
            json!({"route": "api", "method": "GET", "path": "x"}),
            "path",
        );
        refused(
            Tool::CallApi,
            json!({"route": "api", "method": "GET", "path": "/", "query": "a#b"}),
            "query",
        );
        refused(Tool::ReadSecretNames, json!({"env": "shop"}), "env");
        refused(Tool::ReadSecretNames, json!({"env": "../etc/x"}), "env");
        refused(Tool::Revoke, json!({}), "grant_id");
    }

    #[test]
    fn the_digest_is_of_the_canonical_arguments() {
        let grant = "0192f0c4-0000-7000-8000-000000000001";
        let a = parse(
            Tool::RunQuery,
            Some(&args(json!({"sql": "SELECT 1", "grant_id": grant}))),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let b = parse(
            Tool::RunQuery,
            Some(&args(
                json!({"grant_id": grant, "max_rows": 100, "sql": "SELECT 1"}),
            )),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(a.canonical(), b.canonical());
        assert_eq!(
            a.canonical(),
            format!(r#"{{"grant_id":"{grant}","max_rows":100,"sql":"SELECT 1"}}"#)
        );
        let c = parse(
            Tool::RunQuery,
            Some(&args(json!({"grant_id": grant, "sql": "SELECT 2"}))),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_ne!(sha256_hex(&a.canonical()), sha256_hex(&c.canonical()));
        assert_eq!(sha256_hex("").len(), 64);
    }
}
