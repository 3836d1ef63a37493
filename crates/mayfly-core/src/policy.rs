//! Policy decisions with Cedar. The schema below is what policies are written against (published
//! by `mayfly policy schema`); policies are validated against it when they are stored, never at
//! request time. [`Policies::decide`] is pure: entities and context are built from the arguments.
//!
//! Approval needs are annotations on `permit` policies:
//! - `@approvals("N")`: the request needs N approvals by distinct principals other than the
//!   requester, each permitted the `approve` action on the role. Without it, 0 (allowed at once).
//! - `@max_ttl("SECONDS")`: the longest TTL this policy grants.
//! - `@step_up` or `@step_up("SECONDS")`: activating what this policy allows needs a second
//!   factor (TOTP, or a fresh OIDC login) proved within the window: the broker's
//!   `step_up_window` for the bare form, else the given number of seconds (at least 1).
//!
//! When several `permit` policies match, the request takes the path with the fewest approvals and
//! the smallest `@max_ttl` among the matching policies; a step-up is needed if any of them asks
//! for one, within the shortest window asked. Any matching `forbid` denies. Nothing
//! matching denies (deny by default).

use std::net::IpAddr;
use std::str::FromStr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use std::collections::{HashMap, HashSet};

use cedar_policy::{
    Authorizer, Context, Entities, Entity, EntityId, EntityTypeName, EntityUid, PolicyId,
    PolicySet, Request, RestrictedExpression, Schema, ValidationMode, Validator,
};

use crate::Principal;
use crate::bounded::Bounded;
use crate::secret_path::SecretPath;

/// The Cedar schema of Mayfly's policies.
pub const SCHEMA: &str = r#"
entity Group;
entity User in [Group] { name: String };
entity Workload { name: String, login_role: String };
entity Agent { name: String, on_behalf_of: String };
entity Target { name: String, kind: String };
entity Role in [Target] { name: String, target: String, max_ttl_seconds: Long };
entity Audience { name: String };
entity ProxyRoute { name: String };
entity Project { name: String };
entity Environment in [Project] { name: String, project: String };
entity Secret in [Environment] { name: String, project: String, environment: String };

type RequestContext = {
    reason: String,
    ticket: String,
    ttl_seconds: Long,
    hour: Long,
    weekday: Long,
    source_ip?: ipaddr,
    break_glass: Bool,
};

action request, approve, break_glass, activate appliesTo {
    principal: [User, Workload, Agent],
    resource: [Role, Target],
    context: RequestContext,
};

type ExchangeContext = {
    scope: Set<String>,
    has_actor: Bool,
    actor?: String,
    ttl_seconds: Long,
};

action exchange appliesTo {
    principal: [User, Workload, Agent],
    resource: [Audience],
    context: ExchangeContext,
};

type ProxyContext = {
    method: String,
    path: String,
    intent: String,
    hour: Long,
    scope: Set<String>,
    actor: String,
};

action proxy appliesTo {
    principal: [User, Workload, Agent],
    resource: [ProxyRoute],
    context: ProxyContext,
};

action read_secret, write_secret appliesTo {
    principal: [User, Workload, Agent],
    resource: [Secret],
};

entity Tool { name: String };
type QueryShape = { kind: String, tables: Set<String>, has_where: Bool };

action list_access appliesTo {
    principal: [User, Workload, Agent],
    resource: [Tool],
    context: { actor?: String, actors: Set<String>, args_sha256: String, hour: Long },
};

action request_access appliesTo {
    principal: [User, Workload, Agent],
    resource: [Tool],
    context: {
        actor?: String, actors: Set<String>, args_sha256: String, hour: Long,
        target: String, role: String, reason: String, ttl_seconds: Long, ticket: String,
    },
};

action access_status appliesTo {
    principal: [User, Workload, Agent],
    resource: [Tool],
    context: {
        actor?: String, actors: Set<String>, args_sha256: String, hour: Long,
        request_id: String,
    },
};

action call_api appliesTo {
    principal: [User, Workload, Agent],
    resource: [Tool],
    context: {
        actor?: String, actors: Set<String>, args_sha256: String, hour: Long,
        route: String, method: String, path: String, has_query: Bool, has_body: Bool,
    },
};

action run_query appliesTo {
    principal: [User, Workload, Agent],
    resource: [Tool],
    context: {
        actor?: String, actors: Set<String>, args_sha256: String, hour: Long,
        grant_id: String, target: String, role: String, query: QueryShape, max_rows: Long,
    },
};

action read_secret_names appliesTo {
    principal: [User, Workload, Agent],
    resource: [Tool],
    context: {
        actor?: String, actors: Set<String>, args_sha256: String, hour: Long,
        project: String, environment: String,
    },
};

action revoke appliesTo {
    principal: [User, Workload, Agent],
    resource: [Tool],
    context: {
        actor?: String, actors: Set<String>, args_sha256: String, hour: Long,
        grant_id: String, target: String, role: String,
    },
};
"#;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    Request,
    Approve,
    BreakGlass,
    Activate,
    ReadSecret,
    WriteSecret,
    Proxy,
    Exchange,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Request => "request",
            Action::Approve => "approve",
            Action::BreakGlass => "break_glass",
            Action::Activate => "activate",
            Action::ReadSecret => "read_secret",
            Action::WriteSecret => "write_secret",
            Action::Proxy => "proxy",
            Action::Exchange => "exchange",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("the policies do not parse: {}", problems_text(.0))]
    Parse(Vec<PolicyProblem>),
    #[error("the policies do not validate against the schema: {}", problems_text(.0))]
    Invalid(Vec<PolicyProblem>),
    #[error(
        "annotation `@{annotation}` on policy `{policy}` must be a whole number, got `{value}`"
    )]
    BadAnnotation {
        policy: String,
        annotation: String,
        value: String,
    },
    #[error("cannot evaluate: {0}")]
    Evaluation(String),
}

impl PolicyError {
    /// Each problem with the line and column it is at, when Cedar points at one: what an editor
    /// shows beside the text.
    pub fn problems(&self) -> Vec<PolicyProblem> {
        match self {
            PolicyError::Parse(problems) | PolicyError::Invalid(problems) => problems.clone(),
            PolicyError::BadAnnotation { .. } | PolicyError::Evaluation(_) => vec![PolicyProblem {
                line: None,
                column: None,
                message: self.to_string(),
            }],
        }
    }
}

/// One problem Cedar found in a policy text: where (1-based line and column, in characters, of
/// the start of the span Cedar points at; `None` for a problem of the whole text) and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyProblem {
    pub line: Option<usize>,
    pub column: Option<usize>,
    /// Cedar's message, on one line, with what its label says about the span.
    pub message: String,
}

impl std::fmt::Display for PolicyProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.line, self.column) {
            (Some(line), Some(column)) => {
                write!(f, "line {line}, column {column}: {}", self.message)
            }
            (Some(line), None) => write!(f, "line {line}: {}", self.message),
            _ => f.write_str(&self.message),
        }
    }
}

fn problems_text(problems: &[PolicyProblem]) -> String {
    let texts: Vec<String> = problems.iter().map(ToString::to_string).collect();
    texts.join("; ")
}

/// A Cedar diagnostic as a [`PolicyProblem`] in `text`: the first label's offset turned into a
/// line and column.
fn problem(text: &str, diagnostic: &dyn miette::Diagnostic) -> PolicyProblem {
    let mut message = diagnostic.to_string().replace('\n', " ");
    let label = diagnostic.labels().and_then(|mut labels| labels.next());
    let (line, column) = match &label {
        Some(label) => {
            if let Some(said) = label.label()
                && !said.is_empty()
                && !message.contains(said)
            {
                message = format!("{message} ({said})");
            }
            let (line, column) = line_column(text, label.offset());
            (Some(line), Some(column))
        }
        None => (None, None),
    };
    PolicyProblem {
        line,
        column,
        message,
    }
}

/// The 1-based line and column (in characters) of the byte `offset` of `text`; past the end, the
/// end's.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let mut line = 1;
    let mut column = 1;
    for (at, c) in text.char_indices() {
        if at >= offset {
            break;
        }
        if c == '\n' {
            line += 1;
            column = 1;
        } else {
            column += 1;
        }
    }
    (line, column)
}

/// A problem of the whole text, with no place to point at.
fn whole(message: impl Into<String>) -> Vec<PolicyProblem> {
    vec![PolicyProblem {
        line: None,
        column: None,
        message: message.into(),
    }]
}

/// Who and what a decision is about.
#[derive(Clone, Debug)]
pub struct DecisionInput<'a> {
    pub principal: &'a Principal,
    pub action: Action,
    pub target: &'a str,
    pub target_kind: &'a str,
    pub role: &'a str,
    pub role_max_ttl: Duration,
    pub context: &'a RequestContext,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RequestContext {
    pub reason: String,
    pub ticket: String,
    pub ttl: Duration,
    /// 0..=23, UTC.
    pub hour: u8,
    /// 1 (Monday) ..= 7 (Sunday), UTC.
    pub weekday: u8,
    pub source_ip: Option<IpAddr>,
    pub break_glass: bool,
}

/// What a token exchange is decided on (the action `exchange`): who, for which audience (the
/// resource `Audience::"<aud>"`), and the context: the scopes asked for, the actor when one acts
/// for the principal, and the lifetime asked for.
#[derive(Clone, Debug)]
pub struct ExchangeInput<'a> {
    pub principal: &'a Principal,
    pub audience: &'a str,
    pub scope: &'a [String],
    pub actor: Option<&'a str>,
    pub ttl: Duration,
}

/// What one proxied call is decided on (the action `proxy`): who, on which route (the resource
/// `ProxyRoute::"<name>"`), and the context: the HTTP method (upper case), the path below the
/// route (`/v1/charges`, no query), the caller's stated intent (`""` when none), the hour
/// (0..=23, UTC), the scopes of the caller's exchanged token (none for a session token) and the
/// actor acting for the principal (the token's `act.sub`; `""` when none).
#[derive(Clone, Debug)]
pub struct ProxyInput<'a> {
    pub principal: &'a Principal,
    pub route: &'a str,
    pub method: &'a str,
    pub path: &'a str,
    pub intent: &'a str,
    pub hour: u8,
    pub scope: &'a [String],
    pub actor: &'a str,
}

/// The tools an agent calls over MCP; each is a Cedar action of the same name, on the resource
/// `Tool::"<name>"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Tool {
    ListAccess,
    RequestAccess,
    AccessStatus,
    CallApi,
    RunQuery,
    ReadSecretNames,
    Revoke,
}

impl Tool {
    pub const ALL: [Tool; 7] = [
        Tool::ListAccess,
        Tool::RequestAccess,
        Tool::AccessStatus,
        Tool::CallApi,
        Tool::RunQuery,
        Tool::ReadSecretNames,
        Tool::Revoke,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Tool::ListAccess => "list_access",
            Tool::RequestAccess => "request_access",
            Tool::AccessStatus => "access_status",
            Tool::CallApi => "call_api",
            Tool::RunQuery => "run_query",
            Tool::ReadSecretNames => "read_secret_names",
            Tool::Revoke => "revoke",
        }
    }

    pub fn parse(name: &str) -> Option<Tool> {
        Tool::ALL.into_iter().find(|tool| tool.as_str() == name)
    }
}

/// The typed arguments of one tool call, as its action's context holds them.
#[derive(Clone, Debug)]
pub enum ToolArgs<'a> {
    ListAccess,
    RequestAccess {
        target: &'a str,
        role: &'a str,
        reason: &'a str,
        ttl_seconds: u64,
        /// `""` when none.
        ticket: &'a str,
    },
    AccessStatus {
        request_id: &'a str,
    },
    CallApi {
        route: &'a str,
        /// Upper case.
        method: &'a str,
        /// The decoded path below the route, `/` first.
        path: &'a str,
        has_query: bool,
        has_body: bool,
    },
    RunQuery {
        grant_id: &'a str,
        target: &'a str,
        role: &'a str,
        query: &'a crate::sql::QueryShape,
        max_rows: u64,
    },
    ReadSecretNames {
        project: &'a str,
        environment: &'a str,
    },
    Revoke {
        grant_id: &'a str,
        target: &'a str,
        role: &'a str,
    },
}

impl ToolArgs<'_> {
    pub fn tool(&self) -> Tool {
        match self {
            ToolArgs::ListAccess => Tool::ListAccess,
            ToolArgs::RequestAccess { .. } => Tool::RequestAccess,
            ToolArgs::AccessStatus { .. } => Tool::AccessStatus,
            ToolArgs::CallApi { .. } => Tool::CallApi,
            ToolArgs::RunQuery { .. } => Tool::RunQuery,
            ToolArgs::ReadSecretNames { .. } => Tool::ReadSecretNames,
            ToolArgs::Revoke { .. } => Tool::Revoke,
        }
    }
}

/// What one tool call is decided on (the action named after the tool, on `Tool::"<name>"`): who
/// (the token's subject), the `act` chain (nearest actor first: `context.actor` is its first,
/// `context.actors` all of it; neither when nobody acts for the principal), the SHA-256 of the
/// call's canonical arguments (hex), the hour (0..=23, UTC) and the tool's typed arguments.
#[derive(Clone, Debug)]
pub struct ToolInput<'a> {
    pub principal: &'a Principal,
    pub actors: &'a [String],
    pub args_sha256: &'a str,
    pub hour: u8,
    pub args: ToolArgs<'a>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    Allow {
        approvals: u32,
        max_ttl: Option<Duration>,
        policies: Vec<String>,
        /// Whether (and within what window) a fresh second factor is needed: `@step_up`.
        step_up: Option<StepUp>,
    },
    Deny {
        reason: String,
    },
}

/// What the `@step_up` annotations of the deciding `permit`s ask: a second factor proved within
/// the shortest of their windows. A bare `@step_up` stands for the broker's configured window,
/// which the broker (not this pure crate) knows: [`StepUp::window`] combines the two.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct StepUp {
    /// The shortest window written as `@step_up("SECONDS")`, if any.
    pub shortest: Option<Duration>,
    /// Whether a matching policy has a bare `@step_up` (the broker's window).
    pub bare: bool,
}

impl StepUp {
    /// The window to apply, given the broker's configured one.
    pub fn window(&self, configured: Duration) -> Duration {
        match (self.shortest, self.bare) {
            (Some(shortest), true) => shortest.min(configured),
            (Some(shortest), false) => shortest,
            (None, _) => configured,
        }
    }

    fn and(self, other: StepUp) -> StepUp {
        let shortest = match (self.shortest, other.shortest) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        StepUp {
            shortest,
            bare: self.bare || other.bare,
        }
    }
}

impl Decision {
    /// For actions decided at the moment of a call (reading a secret, a proxied call, a token
    /// exchange), where nobody can approve in between: an allow whose policy asks for approvals
    /// becomes a refusal naming why, so an `@approvals` rule never lets such a call through at once.
    pub fn immediate(self) -> Decision {
        match self {
            Decision::Allow { approvals, .. } if approvals > 0 => Decision::Deny {
                reason: format!(
                    "the permitting policy asks for {approvals} approval(s), which this action \
                     cannot wait for"
                ),
            },
            other => other,
        }
    }

    /// Whether the action is permitted (with or without approvals).
    pub fn allows(&self) -> bool {
        match self {
            Decision::Allow { .. } => true,
            Decision::Deny { .. } => false,
        }
    }
}

pub fn schema() -> Result<&'static Schema, PolicyError> {
    static SCHEMA_CELL: OnceLock<Result<Schema, String>> = OnceLock::new();
    SCHEMA_CELL
        .get_or_init(|| {
            Schema::from_cedarschema_str(SCHEMA)
                .map(|(s, _)| s)
                .map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| PolicyError::Evaluation(format!("schema: {e}")))
}

/// A validated policy set.
#[derive(Clone, Debug)]
pub struct Policies {
    set: PolicySet,
    text: String,
    /// Each policy's `@approvals` and `@max_ttl`, read once at parse time.
    limits: HashMap<PolicyId, (Option<u64>, Option<u64>)>,
    /// The policies with `@step_up`, read once at parse time.
    step_ups: HashMap<PolicyId, StepUp>,
    /// Decisions already made by this set, by their complete input (see [`Policies::decide`]).
    decided: Arc<Bounded<DecisionKey, Decision>>,
}

/// Everything a decision is made from, owned: two inputs with equal keys get the same decision.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct DecisionKey {
    principal: Principal,
    action: Action,
    target: String,
    target_kind: String,
    role: String,
    role_max_ttl: Duration,
    context: RequestContext,
}

impl DecisionKey {
    fn of(input: &DecisionInput<'_>) -> DecisionKey {
        DecisionKey {
            principal: input.principal.clone(),
            action: input.action,
            target: input.target.to_owned(),
            target_kind: input.target_kind.to_owned(),
            role: input.role.to_owned(),
            role_max_ttl: input.role_max_ttl,
            context: input.context.clone(),
        }
    }
}

/// At most this many decisions are kept per policy set; when full, the set starts afresh.
const DECISIONS_KEPT: usize = 4096;

fn annotation_number(
    set: &PolicySet,
    id: &PolicyId,
    key: &str,
) -> Result<Option<u64>, PolicyError> {
    match set.annotation(id, key) {
        None => Ok(None),
        Some(value) => {
            value
                .trim()
                .parse::<u64>()
                .map(Some)
                .map_err(|_| PolicyError::BadAnnotation {
                    policy: id.to_string(),
                    annotation: key.to_owned(),
                    value: value.to_owned(),
                })
        }
    }
}

/// The longest window a `@step_up("SECONDS")` may give (a day, as the broker's own setting).
pub const MAX_STEP_UP_SECS: u64 = 86_400;

/// A policy's `@step_up`: absent, bare (the broker's window) or a whole number of seconds (> 0).
fn annotation_step_up(set: &PolicySet, id: &PolicyId) -> Result<Option<StepUp>, PolicyError> {
    let Some(value) = set.annotation(id, "step_up") else {
        return Ok(None);
    };
    if value.trim().is_empty() {
        return Ok(Some(StepUp {
            shortest: None,
            bare: true,
        }));
    }
    match value.trim().parse::<u64>() {
        Ok(seconds) if seconds > 0 && seconds <= MAX_STEP_UP_SECS => Ok(Some(StepUp {
            shortest: Some(Duration::from_secs(seconds)),
            bare: false,
        })),
        _ => Err(PolicyError::BadAnnotation {
            policy: id.to_string(),
            annotation: "step_up".to_owned(),
            value: format!("{value}` (from 1 to {MAX_STEP_UP_SECS} seconds)`"),
        }),
    }
}

impl Policies {
    /// Parses and validates (strict mode) against [`SCHEMA`]; refuses with Cedar's diagnostics.
    pub fn parse(text: &str) -> Result<Policies, PolicyError> {
        let parsed = PolicySet::from_str(text).map_err(|errors| {
            PolicyError::Parse(errors.iter().map(|e| problem(text, e)).collect())
        })?;
        if parsed.templates().next().is_some() {
            return Err(PolicyError::Parse(whole(
                "templates (`?principal`, `?resource`) are not supported",
            )));
        }
        // Name each policy by its `@id` annotation, so decisions and errors speak of it.
        let mut set = PolicySet::new();
        for policy in parsed.policies() {
            let policy = match policy.annotation("id") {
                Some(id) if !id.is_empty() => policy.new_id(PolicyId::new(id)),
                _ => policy.clone(),
            };
            set.add(policy)
                .map_err(|e| PolicyError::Parse(whole(e.to_string())))?;
        }
        let validator = Validator::new(schema()?.clone());
        let result = validator.validate(&set, ValidationMode::Strict);
        if !result.validation_passed() {
            let errors = result
                .validation_errors()
                .map(|e| problem(text, e))
                .collect();
            return Err(PolicyError::Invalid(errors));
        }
        let mut limits = HashMap::new();
        let mut step_ups = HashMap::new();
        for policy in set.policies() {
            let approvals = annotation_number(&set, policy.id(), "approvals")?;
            let max_ttl = annotation_number(&set, policy.id(), "max_ttl")?;
            limits.insert(policy.id().clone(), (approvals, max_ttl));
            if let Some(step_up) = annotation_step_up(&set, policy.id())? {
                step_ups.insert(policy.id().clone(), step_up);
            }
        }
        Ok(Policies {
            set,
            text: text.to_owned(),
            limits,
            step_ups,
            decided: Arc::new(Bounded::new(DECISIONS_KEPT)),
        })
    }

    /// No policy at all: everything is denied.
    pub fn empty() -> Policies {
        Policies {
            set: PolicySet::new(),
            text: String::new(),
            limits: HashMap::new(),
            step_ups: HashMap::new(),
            decided: Arc::new(Bounded::new(DECISIONS_KEPT)),
        }
    }

    pub fn text(&self) -> &str {
        &self.text
    }

    /// Decides one request: allowed (with its approvals and maximum TTL) or denied, with why.
    ///
    /// A decision is a pure function of the policy set and its input, so the decisions this set
    /// made are kept by their complete input ([`DecisionKey`]: principal with its groups, action,
    /// target, role and its maximum, and the whole context with its hour, weekday and source
    /// address) and given again for an equal input. A changed policy text is a new set with
    /// nothing kept. Errors are not kept.
    pub fn decide(&self, input: &DecisionInput<'_>) -> Result<Decision, PolicyError> {
        let key = DecisionKey::of(input);
        if let Some(decision) = self.decided.get(&key) {
            return Ok(decision);
        }
        let decision = self.evaluate(input)?;
        self.decided.put(key, decision.clone());
        Ok(decision)
    }

    /// The decision, from Cedar.
    fn evaluate(&self, input: &DecisionInput<'_>) -> Result<Decision, PolicyError> {
        let schema = schema()?;
        let eval = |e: String| PolicyError::Evaluation(e);
        // Entities and context are built directly (no JSON round trip); `Request::new` checks the
        // request and its context against the schema, the entities are made here in its shape.
        let string = |text: &str| RestrictedExpression::new_string(text.to_owned());
        let long = |n: u64| RestrictedExpression::new_long(i64::try_from(n).unwrap_or(i64::MAX));
        let principal_uid = principal_uid(input.principal).map_err(eval)?;
        let action_uid = uid("Action", input.action.as_str()).map_err(eval)?;
        let target_uid = uid("Target", input.target).map_err(eval)?;
        let role_uid = uid("Role", &format!("{}/{}", input.target, input.role)).map_err(eval)?;
        let mut entities = vec![
            Entity::new(
                target_uid.clone(),
                HashMap::from([
                    ("name".to_owned(), string(input.target)),
                    ("kind".to_owned(), string(input.target_kind)),
                ]),
                HashSet::new(),
            )
            .map_err(|e| eval(e.to_string()))?,
            Entity::new(
                role_uid.clone(),
                HashMap::from([
                    ("name".to_owned(), string(input.role)),
                    ("target".to_owned(), string(input.target)),
                    (
                        "max_ttl_seconds".to_owned(),
                        long(input.role_max_ttl.as_secs()),
                    ),
                ]),
                HashSet::from([target_uid]),
            )
            .map_err(|e| eval(e.to_string()))?,
        ];
        push_principal(input.principal, principal_uid.clone(), &mut entities).map_err(eval)?;
        // Built without the schema: checking them against it on every call (Cedar makes a view of
        // the schema each time) would only check this function, whose entities have the
        // schema's shape; the policies were validated against the schema when stored. The
        // schema's action entities are added as it would add them.
        entities.extend(action_entities()?.iter().cloned());
        let entities = Entities::from_entities(entities, None).map_err(|e| eval(e.to_string()))?;

        let context = input.context;
        let mut pairs = vec![
            ("reason".to_owned(), string(&context.reason)),
            ("ticket".to_owned(), string(&context.ticket)),
            ("ttl_seconds".to_owned(), long(context.ttl.as_secs())),
            ("hour".to_owned(), long(u64::from(context.hour))),
            ("weekday".to_owned(), long(u64::from(context.weekday))),
            (
                "break_glass".to_owned(),
                RestrictedExpression::new_bool(context.break_glass),
            ),
        ];
        if let Some(ip) = context.source_ip {
            pairs.push(("source_ip".to_owned(), ip_expression(ip)));
        }
        let ctx = Context::from_pairs(pairs).map_err(|e| eval(e.to_string()))?;
        let request = Request::new(principal_uid, action_uid, role_uid, ctx, Some(schema))
            .map_err(|e| eval(e.to_string()))?;
        let response = Authorizer::new().is_authorized(&request, &self.set, &entities);
        Ok(self.conclude(&response, || {
            format!(
                "no policy permits `{}` on `{}/{}`",
                input.action.as_str(),
                input.target,
                input.role
            )
        }))
    }

    /// Decides a token exchange (the action `exchange` on `Audience::"<aud>"`): allowed (with
    /// the policies' `@max_ttl`, if any) or denied. Not kept like [`Policies::decide`]'s: its
    /// context holds the scopes and the actor, seldom twice the same.
    pub fn decide_exchange(&self, input: &ExchangeInput<'_>) -> Result<Decision, PolicyError> {
        let schema = schema()?;
        let eval = |e: String| PolicyError::Evaluation(e);
        let string = |text: &str| RestrictedExpression::new_string(text.to_owned());
        let principal_uid = principal_uid(input.principal).map_err(eval)?;
        let action_uid = uid("Action", Action::Exchange.as_str()).map_err(eval)?;
        let audience_uid = uid("Audience", input.audience).map_err(eval)?;
        let mut entities = vec![
            Entity::new(
                audience_uid.clone(),
                HashMap::from([("name".to_owned(), string(input.audience))]),
                HashSet::new(),
            )
            .map_err(|e| eval(e.to_string()))?,
        ];
        push_principal(input.principal, principal_uid.clone(), &mut entities).map_err(eval)?;
        entities.extend(action_entities()?.iter().cloned());
        let entities = Entities::from_entities(entities, None).map_err(|e| eval(e.to_string()))?;
        let mut pairs = vec![
            (
                "scope".to_owned(),
                RestrictedExpression::new_set(input.scope.iter().map(|s| string(s))),
            ),
            (
                "has_actor".to_owned(),
                RestrictedExpression::new_bool(input.actor.is_some()),
            ),
            (
                "ttl_seconds".to_owned(),
                RestrictedExpression::new_long(
                    i64::try_from(input.ttl.as_secs()).unwrap_or(i64::MAX),
                ),
            ),
        ];
        if let Some(actor) = input.actor {
            pairs.push(("actor".to_owned(), string(actor)));
        }
        let ctx = Context::from_pairs(pairs).map_err(|e| eval(e.to_string()))?;
        let request = Request::new(principal_uid, action_uid, audience_uid, ctx, Some(schema))
            .map_err(|e| eval(e.to_string()))?;
        let response = Authorizer::new().is_authorized(&request, &self.set, &entities);
        Ok(self.conclude(&response, || {
            format!(
                "no policy permits `exchange` for the audience `{}`",
                input.audience
            )
        }))
    }

    /// Decides one proxied call (the action `proxy` on `ProxyRoute::"<route>"`): allowed or
    /// denied. Not kept: the path and intent seldom repeat.
    pub fn decide_proxy(&self, input: &ProxyInput<'_>) -> Result<Decision, PolicyError> {
        let schema = schema()?;
        let eval = |e: String| PolicyError::Evaluation(e);
        let string = |text: &str| RestrictedExpression::new_string(text.to_owned());
        let principal_uid = principal_uid(input.principal).map_err(eval)?;
        let action_uid = uid("Action", Action::Proxy.as_str()).map_err(eval)?;
        let route_uid = uid("ProxyRoute", input.route).map_err(eval)?;
        let mut entities = vec![
            Entity::new(
                route_uid.clone(),
                HashMap::from([("name".to_owned(), string(input.route))]),
                HashSet::new(),
            )
            .map_err(|e| eval(e.to_string()))?,
        ];
        push_principal(input.principal, principal_uid.clone(), &mut entities).map_err(eval)?;
        entities.extend(action_entities()?.iter().cloned());
        let entities = Entities::from_entities(entities, None).map_err(|e| eval(e.to_string()))?;
        let ctx = Context::from_pairs([
            ("method".to_owned(), string(input.method)),
            ("path".to_owned(), string(input.path)),
            ("intent".to_owned(), string(input.intent)),
            (
                "hour".to_owned(),
                RestrictedExpression::new_long(i64::from(input.hour)),
            ),
            (
                "scope".to_owned(),
                RestrictedExpression::new_set(input.scope.iter().map(|s| string(s))),
            ),
            ("actor".to_owned(), string(input.actor)),
        ])
        .map_err(|e| eval(e.to_string()))?;
        let request = Request::new(principal_uid, action_uid, route_uid, ctx, Some(schema))
            .map_err(|e| eval(e.to_string()))?;
        let response = Authorizer::new().is_authorized(&request, &self.set, &entities);
        Ok(self.conclude(&response, || {
            format!(
                "no policy permits `proxy` of `{}` on the route `{}`",
                input.method, input.route
            )
        }))
    }

    /// Decides one tool call (see [`ToolInput`]): allowed, with the permitting policies and any
    /// `@step_up` they carry (which for a tool call means a person's approval of this exact call),
    /// or denied with the reason. Deny by default.
    pub fn decide_tool(&self, input: &ToolInput<'_>) -> Result<Decision, PolicyError> {
        let schema = schema()?;
        let eval = |e: String| PolicyError::Evaluation(e);
        let string = |text: &str| RestrictedExpression::new_string(text.to_owned());
        let long = |n: u64| RestrictedExpression::new_long(i64::try_from(n).unwrap_or(i64::MAX));
        let tool = input.args.tool();
        let principal_uid = principal_uid(input.principal).map_err(eval)?;
        let action_uid = uid("Action", tool.as_str()).map_err(eval)?;
        let tool_uid = uid("Tool", tool.as_str()).map_err(eval)?;
        let mut entities = vec![
            Entity::new(
                tool_uid.clone(),
                HashMap::from([("name".to_owned(), string(tool.as_str()))]),
                HashSet::new(),
            )
            .map_err(|e| eval(e.to_string()))?,
        ];
        push_principal(input.principal, principal_uid.clone(), &mut entities).map_err(eval)?;
        entities.extend(action_entities()?.iter().cloned());
        let entities = Entities::from_entities(entities, None).map_err(|e| eval(e.to_string()))?;
        let mut pairs = vec![
            (
                "actors".to_owned(),
                RestrictedExpression::new_set(input.actors.iter().map(|a| string(a))),
            ),
            ("args_sha256".to_owned(), string(input.args_sha256)),
            (
                "hour".to_owned(),
                RestrictedExpression::new_long(i64::from(input.hour)),
            ),
        ];
        if let Some(actor) = input.actors.first() {
            pairs.push(("actor".to_owned(), string(actor)));
        }
        let mut put =
            |name: &str, value: RestrictedExpression| pairs.push((name.to_owned(), value));
        match &input.args {
            ToolArgs::ListAccess => {}
            ToolArgs::RequestAccess {
                target,
                role,
                reason,
                ttl_seconds,
                ticket,
            } => {
                put("target", string(target));
                put("role", string(role));
                put("reason", string(reason));
                put("ttl_seconds", long(*ttl_seconds));
                put("ticket", string(ticket));
            }
            ToolArgs::AccessStatus { request_id } => put("request_id", string(request_id)),
            ToolArgs::CallApi {
                route,
                method,
                path,
                has_query,
                has_body,
            } => {
                put("route", string(route));
                put("method", string(method));
                put("path", string(path));
                put("has_query", RestrictedExpression::new_bool(*has_query));
                put("has_body", RestrictedExpression::new_bool(*has_body));
            }
            ToolArgs::RunQuery {
                grant_id,
                target,
                role,
                query,
                max_rows,
            } => {
                put("grant_id", string(grant_id));
                put("target", string(target));
                put("role", string(role));
                let shape = RestrictedExpression::new_record([
                    ("kind".to_owned(), string(query.kind.as_str())),
                    (
                        "tables".to_owned(),
                        RestrictedExpression::new_set(query.tables.iter().map(|t| string(t))),
                    ),
                    (
                        "has_where".to_owned(),
                        RestrictedExpression::new_bool(query.has_where),
                    ),
                ])
                .map_err(|e| eval(e.to_string()))?;
                put("query", shape);
                put("max_rows", long(*max_rows));
            }
            ToolArgs::ReadSecretNames {
                project,
                environment,
            } => {
                put("project", string(project));
                put("environment", string(environment));
            }
            ToolArgs::Revoke {
                grant_id,
                target,
                role,
            } => {
                put("grant_id", string(grant_id));
                put("target", string(target));
                put("role", string(role));
            }
        }
        let ctx = Context::from_pairs(pairs).map_err(|e| eval(e.to_string()))?;
        let request = Request::new(principal_uid, action_uid, tool_uid, ctx, Some(schema))
            .map_err(|e| eval(e.to_string()))?;
        let response = Authorizer::new().is_authorized(&request, &self.set, &entities);
        Ok(self.conclude(&response, || {
            format!("no policy permits the tool `{}`", tool.as_str())
        }))
    }

    /// Decides a read or a write of a stored secret (the actions `read_secret`, `write_secret` on
    /// `Secret::"project/environment/NAME"`, whose parent is `Environment::"project/environment"`,
    /// whose parent is `Project::"project"`), so a policy can name one secret, an environment or a
    /// whole project. Allowed or denied; annotations mean nothing here.
    pub fn decide_secret(
        &self,
        principal: &Principal,
        action: Action,
        path: &SecretPath,
    ) -> Result<Decision, PolicyError> {
        let schema = schema()?;
        let eval = |e: String| PolicyError::Evaluation(e);
        let string = |text: &str| RestrictedExpression::new_string(text.to_owned());
        let principal_uid = principal_uid(principal).map_err(eval)?;
        let action_uid = uid("Action", action.as_str()).map_err(eval)?;
        let scope = path.scope().to_string();
        let project_uid = uid("Project", path.project()).map_err(eval)?;
        let environment_uid = uid("Environment", &scope).map_err(eval)?;
        let secret_uid = uid("Secret", &path.to_string()).map_err(eval)?;
        let mut entities = vec![
            Entity::new(
                project_uid.clone(),
                HashMap::from([("name".to_owned(), string(path.project()))]),
                HashSet::new(),
            )
            .map_err(|e| eval(e.to_string()))?,
            Entity::new(
                environment_uid.clone(),
                HashMap::from([
                    ("name".to_owned(), string(path.environment())),
                    ("project".to_owned(), string(path.project())),
                ]),
                HashSet::from([project_uid]),
            )
            .map_err(|e| eval(e.to_string()))?,
            Entity::new(
                secret_uid.clone(),
                HashMap::from([
                    ("name".to_owned(), string(path.name())),
                    ("project".to_owned(), string(path.project())),
                    ("environment".to_owned(), string(path.environment())),
                ]),
                HashSet::from([environment_uid]),
            )
            .map_err(|e| eval(e.to_string()))?,
        ];
        push_principal(principal, principal_uid.clone(), &mut entities).map_err(eval)?;
        entities.extend(action_entities()?.iter().cloned());
        let entities = Entities::from_entities(entities, None).map_err(|e| eval(e.to_string()))?;
        let request = Request::new(
            principal_uid,
            action_uid,
            secret_uid,
            Context::empty(),
            Some(schema),
        )
        .map_err(|e| eval(e.to_string()))?;
        let response = Authorizer::new().is_authorized(&request, &self.set, &entities);
        Ok(self.conclude(&response, || {
            format!("no policy permits `{}` on `{path}`", action.as_str())
        }))
    }

    /// The decision from Cedar's answer: denied (by the `forbid`s that matched, or by default),
    /// or allowed with the fewest approvals and the smallest `@max_ttl` of the `permit`s.
    fn conclude(
        &self,
        response: &cedar_policy::Response,
        nothing_permits: impl FnOnce() -> String,
    ) -> Decision {
        let determining: Vec<PolicyId> = response.diagnostics().reason().cloned().collect();
        if response.decision() == cedar_policy::Decision::Deny {
            let forbids: Vec<String> = determining.iter().map(ToString::to_string).collect();
            let reason = if forbids.is_empty() {
                nothing_permits()
            } else {
                format!("forbidden by policy {}", forbids.join(", "))
            };
            return Decision::Deny { reason };
        }
        let mut approvals: Option<u64> = None;
        let mut max_ttl: Option<u64> = None;
        let mut step_up: Option<StepUp> = None;
        for id in &determining {
            if let Some(asked) = self.step_ups.get(id).copied() {
                step_up = Some(step_up.map_or(asked, |s| s.and(asked)));
            }
            let (needed, ttl) = self.limits.get(id).copied().unwrap_or((None, None));
            let needed = needed.unwrap_or(0);
            approvals = Some(approvals.map_or(needed, |a| a.min(needed)));
            if let Some(ttl) = ttl {
                max_ttl = Some(max_ttl.map_or(ttl, |m| m.min(ttl)));
            }
        }
        Decision::Allow {
            approvals: u32::try_from(approvals.unwrap_or(0)).unwrap_or(u32::MAX),
            max_ttl: max_ttl.map(Duration::from_secs),
            policies: determining.iter().map(ToString::to_string).collect(),
            step_up,
        }
    }
}

/// Adds the principal's entity (and its groups') to `entities`.
fn push_principal(
    principal: &Principal,
    principal_uid: EntityUid,
    entities: &mut Vec<Entity>,
) -> Result<(), String> {
    let string = |text: &str| RestrictedExpression::new_string(text.to_owned());
    match principal {
        Principal::User { name, groups, .. } => {
            let groups = groups
                .iter()
                .map(|g| uid("Group", g))
                .collect::<Result<HashSet<EntityUid>, String>>()?;
            for group in &groups {
                entities.push(Entity::new_no_attrs(group.clone(), HashSet::new()));
            }
            entities.push(
                Entity::new(
                    principal_uid,
                    HashMap::from([("name".to_owned(), string(name))]),
                    groups,
                )
                .map_err(|e| e.to_string())?,
            );
        }
        Principal::Workload { role, name } => entities.push(
            Entity::new(
                principal_uid,
                HashMap::from([
                    ("name".to_owned(), string(name)),
                    ("login_role".to_owned(), string(role)),
                ]),
                HashSet::new(),
            )
            .map_err(|e| e.to_string())?,
        ),
        // An agent logged in on its own acts for nobody: `on_behalf_of` is empty. (An agent
        // acting for a user is in the context's act chain, the user being the principal.)
        Principal::Agent { name } => entities.push(
            Entity::new(
                principal_uid,
                HashMap::from([
                    ("name".to_owned(), string(name)),
                    ("on_behalf_of".to_owned(), string("")),
                ]),
                HashSet::new(),
            )
            .map_err(|e| e.to_string())?,
        ),
    }
    Ok(())
}

/// The schema's action entities, made once; none while no action is in a group (then `action in
/// …` is only equality, and each entity would only make Cedar's transitive closure dearer).
fn action_entities() -> Result<&'static [Entity], PolicyError> {
    static ACTIONS: OnceLock<Result<Vec<Entity>, String>> = OnceLock::new();
    ACTIONS
        .get_or_init(|| {
            let schema = schema().map_err(|e| e.to_string())?;
            let actions: Vec<Entity> = schema
                .action_entities()
                .map_err(|e| e.to_string())?
                .iter()
                .cloned()
                .collect();
            let grouped = actions
                .iter()
                .any(|action| !action.clone().into_inner().2.is_empty());
            Ok(if grouped { actions } else { Vec::new() })
        })
        .as_deref()
        .map_err(|e| PolicyError::Evaluation(format!("schema actions: {e}")))
}

/// `ip("…")` for a source address. Cedar parses the extension's name each time it makes one, so
/// the expressions of the addresses seen lately are kept (at most [`IPS_KEPT`]).
fn ip_expression(ip: IpAddr) -> RestrictedExpression {
    static KEPT: OnceLock<Bounded<IpAddr, RestrictedExpression>> = OnceLock::new();
    let kept = KEPT.get_or_init(|| Bounded::new(IPS_KEPT));
    if let Some(expression) = kept.get(&ip) {
        return expression;
    }
    let expression = RestrictedExpression::new_ip(ip.to_string());
    kept.put(ip, expression.clone());
    expression
}

const IPS_KEPT: usize = 4096;

/// `kind::"id"`, for one of the schema's entity types (any id is allowed).
fn uid(kind: &'static str, id: &str) -> Result<EntityUid, String> {
    static NAMES: OnceLock<HashMap<&'static str, EntityTypeName>> = OnceLock::new();
    let names = NAMES.get_or_init(|| {
        [
            "Action",
            "Group",
            "User",
            "Workload",
            "Agent",
            "Target",
            "Role",
            "Audience",
            "ProxyRoute",
            "Project",
            "Environment",
            "Secret",
            "Tool",
        ]
        .into_iter()
        .filter_map(|name| Some((name, EntityTypeName::from_str(name).ok()?)))
        .collect()
    });
    let name = names
        .get(kind)
        .ok_or_else(|| format!("`{kind}` is not an entity type of the schema"))?;
    Ok(EntityUid::from_type_name_and_id(
        name.clone(),
        EntityId::new(id),
    ))
}

fn principal_uid(principal: &Principal) -> Result<EntityUid, String> {
    match principal {
        Principal::User { name, .. } => uid("User", name),
        Principal::Workload { role, name } => uid("Workload", &format!("{role}:{name}")),
        Principal::Agent { name } => uid("Agent", name),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICIES: &str = r#"
@id("dev-self-service")
@max_ttl("3600")
permit (principal in Group::"dev", action == Action::"request", resource in Target::"dev-db");

@id("prod-needs-two")
@approvals("2")
@max_ttl("900")
permit (principal in Group::"dev", action == Action::"request", resource == Role::"prod-db/readonly")
when { context.reason != "" && context.ttl_seconds <= 3600 };

@id("ops-approve")
permit (principal in Group::"ops", action == Action::"approve", resource in Target::"prod-db");

@id("ci-deploy")
permit (principal is Workload, action == Action::"request", resource == Role::"prod-db/migrator")
when { principal.login_role == "deploy" };

@id("no-weekend-prod")
forbid (principal, action == Action::"request", resource in Target::"prod-db")
when { context.weekday > 5 && !context.break_glass };

@id("oncall-break-glass")
permit (principal in Group::"oncall", action == Action::"break_glass", resource in Target::"prod-db");
"#;

    fn user(name: &str, groups: &[&str]) -> Principal {
        Principal::User {
            id: name.into(),
            name: name.into(),
            groups: groups.iter().map(|g| (*g).to_owned()).collect(),
        }
    }

    /// Every attribute reaches the policies with its type: the source address, the target's
    /// kind, the role's maximum, the principal's groups.
    #[test]
    fn attributes_reach_the_policies() {
        let policies = Policies::parse(
            r#"@id("office") permit (principal in Group::"dev", action == Action::"request", resource)
            when { context has source_ip && context.source_ip.isInRange(ip("10.0.0.0/8"))
                   && resource is Role && resource.max_ttl_seconds == 3600
                   && context.hour == 10 && resource in Target::"db" };
            @id("not-ssh") forbid (principal, action, resource in Target::"db")
            when { context.ticket == "ssh-only" && principal.name == "alice" };"#,
        )
        .unwrap();
        let alice = user("alice", &["dev"]);
        let decide = |ip: Option<&str>, ticket: &str| {
            let mut ctx = context(2);
            ctx.source_ip = ip.map(|ip| ip.parse().unwrap());
            ctx.ticket = ticket.to_owned();
            match policies.decide(&request_db_ro(&alice, &ctx)).unwrap() {
                Decision::Allow { .. } => "allow",
                Decision::Deny { .. } => "deny",
            }
        };
        assert_eq!(decide(Some("10.1.2.3"), ""), "allow");
        assert_eq!(decide(Some("192.168.1.1"), ""), "deny");
        assert_eq!(decide(None, ""), "deny");
        assert_eq!(decide(Some("10.1.2.3"), "ssh-only"), "deny");
    }

    /// `principal` requests `db/ro` (a PostgreSQL role of at most an hour).
    fn request_db_ro<'a>(
        principal: &'a Principal,
        context: &'a RequestContext,
    ) -> DecisionInput<'a> {
        DecisionInput {
            principal,
            action: Action::Request,
            target: "db",
            target_kind: "postgres",
            role: "ro",
            role_max_ttl: Duration::from_secs(3600),
            context,
        }
    }

    /// Kept decisions are exact: with the base decision kept, changing any one part of the input
    /// (each of which the policy reads) gives that input's own decision, not the kept one.
    #[test]
    fn kept_decisions_follow_every_input() {
        let policies = Policies::parse(
            r#"@id("exact") permit (principal in Group::"dev", action == Action::"request", resource in Target::"db")
            when { principal.name == "alice" && resource is Role && resource.name == "ro"
                   && resource.max_ttl_seconds == 3600 && Target::"db".kind == "postgres"
                   && context.reason == "INC-1" && context.ticket == "T-1"
                   && context.ttl_seconds == 900 && context.hour == 10 && context.weekday == 2
                   && context has source_ip && context.source_ip == ip("10.0.0.1")
                   && !context.break_glass };"#,
        )
        .unwrap();
        let alice = user("alice", &["dev"]);
        let mut base_context = context(2);
        base_context.ticket = "T-1".into();
        let base = request_db_ro(&alice, &base_context);
        let allowed = |input: &DecisionInput<'_>| {
            matches!(policies.decide(input).unwrap(), Decision::Allow { .. })
        };
        assert!(allowed(&base));
        assert!(allowed(&base), "the kept decision");
        assert_eq!(policies.decided.len(), 1);

        let bob = user("bob", &["dev"]);
        let alice_ops = user("alice", &["ops"]);
        let contexts: Vec<RequestContext> = vec![
            RequestContext {
                reason: "other".into(),
                ..base_context.clone()
            },
            RequestContext {
                ticket: String::new(),
                ..base_context.clone()
            },
            RequestContext {
                ttl: Duration::from_secs(901),
                ..base_context.clone()
            },
            RequestContext {
                hour: 11,
                ..base_context.clone()
            },
            RequestContext {
                weekday: 3,
                ..base_context.clone()
            },
            RequestContext {
                source_ip: Some("10.0.0.2".parse().unwrap()),
                ..base_context.clone()
            },
            RequestContext {
                source_ip: None,
                ..base_context.clone()
            },
            RequestContext {
                break_glass: true,
                ..base_context.clone()
            },
        ];
        let mut variants = vec![
            DecisionInput {
                principal: &bob,
                ..base.clone()
            },
            DecisionInput {
                principal: &alice_ops,
                ..base.clone()
            },
            DecisionInput {
                action: Action::Approve,
                ..base.clone()
            },
            DecisionInput {
                target: "db2",
                ..base.clone()
            },
            DecisionInput {
                target_kind: "mysql",
                ..base.clone()
            },
            DecisionInput {
                role: "rw",
                ..base.clone()
            },
            DecisionInput {
                role_max_ttl: Duration::from_secs(3601),
                ..base.clone()
            },
        ];
        variants.extend(contexts.iter().map(|context| DecisionInput {
            context,
            ..base.clone()
        }));
        for (i, variant) in variants.iter().enumerate() {
            assert!(
                !allowed(variant),
                "variant {i} was given the kept decision: {variant:?}"
            );
        }
        assert_eq!(policies.decided.len(), 1 + variants.len());
        assert!(allowed(&base));

        // Another policy text is another set: nothing it decides comes from this one.
        let other =
            Policies::parse(r#"@id("none") forbid (principal, action, resource);"#).unwrap();
        assert!(matches!(
            other.decide(&base).unwrap(),
            Decision::Deny { .. }
        ));
    }

    fn context(weekday: u8) -> RequestContext {
        RequestContext {
            reason: "INC-1".into(),
            ticket: String::new(),
            ttl: Duration::from_secs(900),
            hour: 10,
            weekday,
            source_ip: Some("10.0.0.1".parse().unwrap()),
            break_glass: false,
        }
    }

    #[track_caller]
    fn check(
        principal: &Principal,
        action: Action,
        target: &str,
        role: &str,
        ctx: &RequestContext,
        expect: &str,
    ) {
        let policies = Policies::parse(POLICIES).unwrap();
        let decision = policies
            .decide(&DecisionInput {
                principal,
                action,
                target,
                target_kind: "postgres",
                role,
                role_max_ttl: Duration::from_secs(3600),
                context: ctx,
            })
            .unwrap();
        let rendered = match decision {
            Decision::Allow {
                approvals, max_ttl, ..
            } => format!(
                "allow approvals={approvals} max_ttl={:?}",
                max_ttl.map(|d| d.as_secs())
            ),
            Decision::Deny { reason } => format!("deny: {reason}"),
        };
        assert_eq!(rendered, expect);
    }

    #[test]
    fn decisions() {
        let alice = user("alice", &["dev"]);
        let carol = user("carol", &["ops"]);
        check(
            &alice,
            Action::Request,
            "dev-db",
            "rw",
            &context(2),
            "allow approvals=0 max_ttl=Some(3600)",
        );
        check(
            &alice,
            Action::Request,
            "prod-db",
            "readonly",
            &context(2),
            "allow approvals=2 max_ttl=Some(900)",
        );
        check(
            &alice,
            Action::Request,
            "prod-db",
            "readonly",
            &context(6),
            "deny: forbidden by policy no-weekend-prod",
        );
        let mut no_reason = context(2);
        no_reason.reason = String::new();
        check(
            &alice,
            Action::Request,
            "prod-db",
            "readonly",
            &no_reason,
            "deny: no policy permits `request` on `prod-db/readonly`",
        );
        check(
            &carol,
            Action::Request,
            "dev-db",
            "rw",
            &context(2),
            "deny: no policy permits `request` on `dev-db/rw`",
        );
        check(
            &carol,
            Action::Approve,
            "prod-db",
            "readonly",
            &context(2),
            "allow approvals=0 max_ttl=None",
        );
        check(
            &alice,
            Action::Approve,
            "prod-db",
            "readonly",
            &context(2),
            "deny: no policy permits `approve` on `prod-db/readonly`",
        );
        let ci = Principal::Workload {
            role: "deploy".into(),
            name: "repo:acme/app".into(),
        };
        check(
            &ci,
            Action::Request,
            "prod-db",
            "migrator",
            &context(2),
            "allow approvals=0 max_ttl=None",
        );
        let other_ci = Principal::Workload {
            role: "test".into(),
            name: "repo:acme/app".into(),
        };
        check(
            &other_ci,
            Action::Request,
            "prod-db",
            "migrator",
            &context(2),
            "deny: no policy permits `request` on `prod-db/migrator`",
        );
        // Hostile names are data, not policy syntax.
        let mallory = user("x\" || true || \"", &["dev"]);
        check(
            &mallory,
            Action::Request,
            "prod-db",
            "readonly\"); permit(",
            &context(2),
            "deny: no policy permits `request` on `prod-db/readonly\"); permit(`",
        );
    }

    /// `@step_up`: bare (the broker's window) or in seconds; the shortest window of the matching
    /// permits; a value that is not a positive whole number is refused when the set is parsed.
    #[test]
    fn step_up_annotations() {
        let policies = Policies::parse(
            r#"
@id("plain")
permit (principal in Group::"dev", action == Action::"request", resource == Role::"db/plain");

@id("bare")
@step_up
permit (principal in Group::"dev", action == Action::"request", resource == Role::"db/owner");

@id("timed")
@step_up("300")
permit (principal in Group::"dev", action == Action::"request", resource in Target::"db")
when { resource.name == "owner" || resource.name == "timed" };
"#,
        )
        .unwrap();
        let alice = user("alice", &["dev"]);
        let step_up = |role: &str| match policies
            .decide(&DecisionInput {
                principal: &alice,
                action: Action::Request,
                target: "db",
                target_kind: "postgres",
                role,
                role_max_ttl: Duration::from_secs(3600),
                context: &context(2),
            })
            .unwrap()
        {
            Decision::Allow { step_up, .. } => step_up,
            Decision::Deny { reason } => panic!("{reason}"),
        };
        let configured = Duration::from_secs(600);
        assert_eq!(step_up("plain"), None);
        let timed = step_up("timed").unwrap();
        assert_eq!(timed.window(configured), Duration::from_secs(300));
        assert_eq!(
            timed.window(Duration::from_secs(60)),
            Duration::from_secs(300)
        );
        // Both `bare` and `timed` match: the shorter of 300 s and the broker's window.
        let both = step_up("owner").unwrap();
        assert_eq!(both.window(configured), Duration::from_secs(300));
        assert_eq!(
            both.window(Duration::from_secs(60)),
            Duration::from_secs(60)
        );
        for bad in ["\"0\"", "\"-5\"", "\"soon\"", "\"86401\"", "\"999999999\""] {
            let text = format!(
                "@id(\"p\") @step_up({bad}) permit (principal, action == Action::\"request\", resource);"
            );
            let error = Policies::parse(&text).unwrap_err().to_string();
            assert!(error.contains("step_up"), "{error}");
        }
    }

    /// The action `exchange`: on an `Audience`, with the scopes, the actor and the lifetime in
    /// the context; `@max_ttl` caps it; nothing matching denies.
    #[test]
    fn exchange_decisions() {
        let policies = Policies::parse(
            r#"
@id("billing-read")
@max_ttl("300")
permit (principal in Group::"dev", action == Action::"exchange", resource == Audience::"billing")
when { context.scope.containsAll(["read"]) && ["read"].containsAll(context.scope) };

@id("no-delegation")
forbid (principal, action == Action::"exchange", resource)
when { context.has_actor && context has actor && context.actor == "mallory" };
"#,
        )
        .unwrap();
        let alice = user("alice", &["dev"]);
        let read = vec!["read".to_owned()];
        let write = vec!["write".to_owned()];
        let decide = |audience: &str, scope: &[String], actor: Option<&str>| {
            policies
                .decide_exchange(&ExchangeInput {
                    principal: &alice,
                    audience,
                    scope,
                    actor,
                    ttl: Duration::from_secs(60),
                })
                .unwrap()
        };
        match decide("billing", &read, None) {
            Decision::Allow { max_ttl, .. } => assert_eq!(max_ttl, Some(Duration::from_secs(300))),
            other => panic!("{other:?}"),
        }
        assert!(decide("billing", &read, Some("bob")).allows());
        assert!(!decide("billing", &read, Some("mallory")).allows());
        assert!(!decide("billing", &write, None).allows());
        assert!(!decide("payroll", &read, None).allows());
        let bob = user("bob", &["ops"]);
        let denied = policies
            .decide_exchange(&ExchangeInput {
                principal: &bob,
                audience: "billing",
                scope: &read,
                actor: None,
                ttl: Duration::from_secs(60),
            })
            .unwrap();
        assert!(matches!(denied, Decision::Deny { reason } if reason.contains("billing")));
    }

    /// The action `proxy`: on a `ProxyRoute`, with the method, path, intent and hour in the
    /// context; nothing matching denies.
    #[test]
    fn tool_calls_are_decided_on_their_typed_arguments_and_actor() {
        let policies = Policies::parse(
            r#"
@id("dev-tools")
permit (principal in Group::"dev", action in [Action::"list_access", Action::"run_query"], resource);

@id("agents-read-only")
forbid (principal, action == Action::"run_query", resource)
when { context has actor && context.query.kind != "select" };

@id("deletes-need-a-person")
@step_up
permit (principal in Group::"dev", action == Action::"run_query", resource)
when { context.query.kind == "delete" && context.query.has_where };

@id("no-claude-on-payments")
forbid (principal, action == Action::"run_query", resource)
when { context.actors.contains("agent:claude") && context.query.tables.contains("payments") };
"#,
        )
        .unwrap();
        let alice = user("alice", &["dev"]);
        let bob = user("bob", &["ops"]);
        let decide = |principal: &Principal, actors: &[String], sql: &str| {
            let query = crate::sql::classify(crate::sql::SqlDialect::Postgres, sql).unwrap();
            policies
                .decide_tool(&ToolInput {
                    principal,
                    actors,
                    args_sha256: "00",
                    hour: 3,
                    args: ToolArgs::RunQuery {
                        grant_id: "g1",
                        target: "pg",
                        role: "reader",
                        query: &query,
                        max_rows: 10,
                    },
                })
                .unwrap()
        };
        let agent = ["agent:cursor".to_owned()];
        let claude = ["agent:claude".to_owned(), "user:carol".to_owned()];
        assert!(decide(&alice, &agent, "SELECT * FROM orders").allows());
        let denied = decide(&alice, &agent, "DELETE FROM orders WHERE id = 1");
        assert_eq!(
            denied,
            Decision::Deny {
                reason: "forbidden by policy agents-read-only".into()
            }
        );
        // The same statement by the person herself needs a person's approval (`@step_up`).
        match decide(&alice, &[], "DELETE FROM orders WHERE id = 1") {
            Decision::Allow {
                step_up: Some(_),
                policies,
                ..
            } => assert!(policies.contains(&"deletes-need-a-person".to_owned())),
            other => panic!("expected a step-up, got {other:?}"),
        }
        assert!(!decide(&alice, &claude, "SELECT * FROM payments").allows());
        assert!(decide(&alice, &agent, "SELECT * FROM payments").allows());
        // Nothing permits bob: deny by default, with the tool named.
        assert_eq!(
            decide(&bob, &[], "SELECT 1"),
            Decision::Deny {
                reason: "no policy permits the tool `run_query`".into()
            }
        );
        // Another tool is another action.
        let listed = policies
            .decide_tool(&ToolInput {
                principal: &alice,
                actors: &agent,
                args_sha256: "00",
                hour: 3,
                args: ToolArgs::Revoke {
                    grant_id: "g1",
                    target: "pg",
                    role: "reader",
                },
            })
            .unwrap();
        assert!(!listed.allows());
    }

    #[test]
    fn proxy_decisions() {
        let policies = Policies::parse(
            r#"
@id("stripe-read")
permit (principal in Group::"dev", action == Action::"proxy", resource == ProxyRoute::"stripe")
when { context.method == "GET" && context.path like "/v1/charges*" };

@id("refunds-with-intent")
permit (principal in Group::"dev", action == Action::"proxy", resource == ProxyRoute::"stripe")
when { context.method == "POST" && context.path == "/v1/refunds" && context.intent != "" && context.hour >= 8 && context.hour < 18 };
"#,
        )
        .unwrap();
        let alice = user("alice", &["dev"]);
        let decide = |route: &str, method: &str, path: &str, intent: &str, hour: u8| {
            policies
                .decide_proxy(&ProxyInput {
                    principal: &alice,
                    route,
                    method,
                    path,
                    intent,
                    hour,
                    scope: &[],
                    actor: "",
                })
                .unwrap()
                .allows()
        };
        assert!(decide("stripe", "GET", "/v1/charges/ch_1", "", 3));
        assert!(!decide("stripe", "DELETE", "/v1/charges/ch_1", "", 3));
        assert!(!decide("stripe", "GET", "/v1/customers", "", 3));
        assert!(!decide("github", "GET", "/v1/charges", "", 3));
        assert!(decide("stripe", "POST", "/v1/refunds", "refund order 7", 9));
        assert!(!decide("stripe", "POST", "/v1/refunds", "", 9));
        assert!(!decide(
            "stripe",
            "POST",
            "/v1/refunds",
            "refund order 7",
            20
        ));
        let bob = user("bob", &["ops"]);
        let denied = policies
            .decide_proxy(&ProxyInput {
                principal: &bob,
                route: "stripe",
                method: "GET",
                path: "/v1/charges",
                intent: "",
                hour: 3,
                scope: &[],
                actor: "",
            })
            .unwrap();
        assert!(matches!(denied, Decision::Deny { reason } if reason.contains("stripe")));
    }

    /// `read_secret`/`write_secret` on a `Secret` under its `Environment` under its `Project`.
    #[test]
    fn secret_decisions() {
        let policies = Policies::parse(
            r#"
@id("dev-reads-dev")
permit (principal in Group::"dev", action == Action::"read_secret", resource in Environment::"shop/dev");
@id("ops-writes-shop")
permit (principal in Group::"ops", action in [Action::"read_secret", Action::"write_secret"], resource in Project::"shop");
@id("one-secret")
permit (principal in Group::"billing", action == Action::"read_secret", resource == Secret::"shop/prod/STRIPE_KEY");
@id("no-root")
forbid (principal, action, resource is Secret) when { resource.name == "ROOT" };
"#,
        )
        .unwrap();
        let path = |p: &str| p.parse::<SecretPath>().unwrap();
        let dev = user("alice", &["dev"]);
        let ops = user("olga", &["ops"]);
        let billing = user("bill", &["billing"]);
        let allows = |who: &Principal, action: Action, p: &str| {
            policies
                .decide_secret(who, action, &path(p))
                .unwrap()
                .allows()
        };
        assert!(allows(&dev, Action::ReadSecret, "shop/dev/DB_URL"));
        assert!(!allows(&dev, Action::ReadSecret, "shop/prod/DB_URL"));
        assert!(!allows(&dev, Action::WriteSecret, "shop/dev/DB_URL"));
        assert!(!allows(&dev, Action::ReadSecret, "shopx/dev/DB_URL"));
        assert!(allows(&ops, Action::WriteSecret, "shop/prod/DB_URL"));
        assert!(allows(&ops, Action::ReadSecret, "shop/dev/DB_URL"));
        assert!(!allows(&ops, Action::ReadSecret, "other/dev/DB_URL"));
        assert!(allows(&billing, Action::ReadSecret, "shop/prod/STRIPE_KEY"));
        assert!(!allows(
            &billing,
            Action::ReadSecret,
            "shop/prod/STRIPE_KEY2"
        ));
        assert!(!allows(&ops, Action::ReadSecret, "shop/dev/ROOT"));
        let denied = policies
            .decide_secret(&dev, Action::ReadSecret, &path("shop/prod/X"))
            .unwrap();
        assert!(matches!(denied, Decision::Deny { reason } if reason.contains("shop/prod/X")));
        assert!(
            !Policies::empty()
                .decide_secret(&ops, Action::ReadSecret, &path("shop/dev/X"))
                .unwrap()
                .allows()
        );
    }

    #[test]
    fn bad_policies_are_refused_with_diagnostics() {
        let unknown_attr = r#"permit (principal, action == Action::"request", resource) when { context.color == "red" };"#;
        let error = Policies::parse(unknown_attr).unwrap_err();
        assert!(matches!(error, PolicyError::Invalid(_)), "{error}");
        assert!(error.to_string().contains("color"), "{error}");
        assert!(matches!(
            Policies::parse("permit (principal, action, resource"),
            Err(PolicyError::Parse(_))
        ));
        let bad_annotation =
            r#"@approvals("two") permit (principal, action == Action::"request", resource);"#;
        assert!(matches!(
            Policies::parse(bad_annotation),
            Err(PolicyError::BadAnnotation { .. })
        ));
        let empty = Policies::empty();
        let alice = user("alice", &["dev"]);
        let decision = empty
            .decide(&DecisionInput {
                principal: &alice,
                action: Action::Request,
                target: "dev-db",
                target_kind: "postgres",
                role: "rw",
                role_max_ttl: Duration::from_secs(60),
                context: &context(1),
            })
            .unwrap();
        assert!(matches!(decision, Decision::Deny { .. }));
    }

    /// Each problem Cedar finds points at its line and column in the text as given.
    #[test]
    fn problems_name_their_line_and_column() {
        let syntax =
            "@id(\"a\")\npermit (principal, action, resource)\n  when { context.reason like };\n";
        let error = Policies::parse(syntax).unwrap_err();
        let problems = error.problems();
        assert!(matches!(error, PolicyError::Parse(_)), "{error}");
        assert_eq!(problems[0].line, Some(3), "{problems:?}");
        assert!(error.to_string().contains("line 3, column"), "{error}");

        let unknown = "@id(\"b\")\n  permit (principal, action == Action::\"request\", resource) when { context.colour == 1 };";
        let error = Policies::parse(unknown).unwrap_err();
        let problems = error.problems();
        assert!(matches!(error, PolicyError::Invalid(_)), "{error}");
        assert_eq!(problems[0].line, Some(2), "{problems:?}");
        assert!(problems[0].message.contains("colour"), "{problems:?}");

        assert_eq!(line_column("ab\ncd", 0), (1, 1));
        assert_eq!(line_column("ab\ncd", 4), (2, 2));
        assert_eq!(line_column("é\nx", 3), (2, 1));
        assert_eq!(line_column("ab", 99), (1, 3));
    }
}
