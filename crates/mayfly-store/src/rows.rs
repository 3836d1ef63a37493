//! Row plumbing: the columns of the rows the store writes, their values bound in order (to sqlx on
//! the long way, to rusqlite in the one-script commit), and the rows it reads mapped to records
//! (`sqlx::FromRow` row structs of plain column types, each turned into its record here).
//!
//! The row structs hold what the `Any` driver decodes (text, integers, blobs); what a column
//! means (a timestamp, a state, a flag, a JSON list) is read in the conversion to the record.

use mayfly_core::{Principal, Timestamp};

use crate::error::StoreError;
use crate::records::{
    ApprovalRecord, AuditRecord, GrantRecord, JwtConfigRecord, RequestRecord, RoleRecord,
    SealRecord, SessionRecord, StoredEvent, TargetRecord, ThrottleRecord, UserRecord,
};

pub(crate) const GRANT_COLUMNS: &str = "id, request_id, principal, target, role, login, state, created_at, expires_at, \
    next_attempt_at, epoch, n_attempts, last_error, revoke_reason, revoked_at, verified_at, break_glass, reviewed_by, actors";

pub(crate) const REQUEST_COLUMNS: &str = "id, principal_kind, principal_name, principal_role, user_id, target, role, reason, \
    ticket, ttl_ms, max_ttl_ms, approvals_needed, state, decision, break_glass, created_at, expires_at, actors";

/// Columns of a request row.
pub(crate) const REQUEST_ARITY: usize = 18;
/// Columns of a grant row.
pub(crate) const GRANT_ARITY: usize = 19;

/// A principal as the columns `principal_kind, principal_name, principal_role, user_id` of the
/// rows that record one (requests, sessions). An agent's `principal_role` is its JWT role, whose
/// name is the agent's.
pub(crate) fn principal_columns(
    principal: &Principal,
) -> (&'static str, &str, Option<&str>, Option<&str>) {
    match principal {
        Principal::User { id, name, .. } => ("user", name, None, Some(id)),
        Principal::Workload { role, name } => ("workload", name, Some(role), None),
        Principal::Agent { name } => ("agent", name, Some(name), None),
    }
}

/// One value of a row we insert, borrowed from its record: what both drivers bind (sqlx on the
/// long way, rusqlite in the one-script commit), so that each row's column order is written once.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Column<'a> {
    Text(&'a str),
    OptText(Option<&'a str>),
    Int(i64),
    OptInt(Option<i64>),
    /// A list of strings, written as a JSON array (an act chain).
    List(&'a [String]),
}

/// A list of strings as the JSON array a column holds.
pub(crate) fn list_json(list: &[String]) -> String {
    serde_json::to_string(list).unwrap_or_else(|_| "[]".into())
}

/// A column holding a JSON array of strings, read back.
pub(crate) fn list_from_json(text: &str, what: &str) -> Result<Vec<String>, StoreError> {
    serde_json::from_str(text)
        .map_err(|_| StoreError::Corrupt(format!("{what} is not a JSON list of strings")))
}

/// One request row's values, in [`REQUEST_COLUMNS`] order.
pub(crate) fn request_values(request: &RequestRecord) -> [Column<'_>; REQUEST_ARITY] {
    use Column::{Int, List, OptText, Text};
    let (kind, name, role, user_id) = principal_columns(&request.principal);
    [
        Text(&request.id),
        Text(kind),
        Text(name),
        OptText(role),
        OptText(user_id),
        Text(&request.target),
        Text(&request.role),
        Text(&request.reason),
        Text(&request.ticket),
        Int(request.ttl_ms),
        Int(request.max_ttl_ms),
        Int(request.approvals_needed),
        Text(request.state.as_str()),
        Text(&request.decision),
        Int(i64::from(request.break_glass)),
        Int(request.created_at.unix_ms()),
        Int(request.expires_at.unix_ms()),
        List(&request.actors),
    ]
}

/// One grant row's values, in [`GRANT_COLUMNS`] order.
pub(crate) fn grant_values(grant: &GrantRecord) -> [Column<'_>; GRANT_ARITY] {
    use Column::{Int, List, OptInt, OptText, Text};
    [
        Text(&grant.id),
        Text(&grant.request_id),
        Text(&grant.principal),
        Text(&grant.target),
        Text(&grant.role),
        Text(&grant.login),
        Text(grant.state.as_str()),
        Int(grant.created_at.unix_ms()),
        Int(grant.expires_at.unix_ms()),
        OptInt(grant.next_attempt_at.map(Timestamp::unix_ms)),
        Int(grant.epoch),
        Int(grant.n_attempts),
        OptText(grant.last_error.as_deref()),
        OptText(grant.revoke_reason.as_deref()),
        OptInt(grant.revoked_at.map(Timestamp::unix_ms)),
        OptInt(grant.verified_at.map(Timestamp::unix_ms)),
        Int(i64::from(grant.break_glass)),
        OptText(grant.reviewed_by.as_deref()),
        List(&grant.actors),
    ]
}

pub(crate) type AnyQuery<'q> = sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments>;

/// Binds `values` to `query`, in order.
pub(crate) fn bind_values<'q>(query: AnyQuery<'q>, values: &[Column<'_>]) -> AnyQuery<'q> {
    values.iter().fold(query, |query, value| match *value {
        Column::Text(text) => query.bind(text.to_owned()),
        Column::OptText(text) => query.bind(text.map(str::to_owned)),
        Column::Int(n) => query.bind(n),
        Column::OptInt(n) => query.bind(n),
        Column::List(list) => query.bind(list_json(list)),
    })
}

/// A duration in milliseconds, for a column of unix milliseconds.
pub(crate) fn duration_ms(duration: std::time::Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

fn ts(ms: Option<i64>) -> Option<Timestamp> {
    ms.map(Timestamp::from_unix_ms)
}

fn groups_from_json(groups: &str) -> Result<Vec<String>, StoreError> {
    serde_json::from_str(groups)
        .map_err(|_| StoreError::Corrupt("user groups are not a JSON list".into()))
}

/// A grant row, in [`GRANT_COLUMNS`].
#[derive(sqlx::FromRow)]
pub(crate) struct GrantRow {
    id: String,
    request_id: String,
    principal: String,
    target: String,
    role: String,
    login: String,
    state: String,
    created_at: i64,
    expires_at: i64,
    next_attempt_at: Option<i64>,
    epoch: i64,
    n_attempts: i64,
    last_error: Option<String>,
    revoke_reason: Option<String>,
    revoked_at: Option<i64>,
    verified_at: Option<i64>,
    break_glass: i64,
    reviewed_by: Option<String>,
    actors: String,
}

impl TryFrom<GrantRow> for GrantRecord {
    type Error = StoreError;

    fn try_from(row: GrantRow) -> Result<GrantRecord, StoreError> {
        Ok(GrantRecord {
            id: row.id,
            request_id: row.request_id,
            principal: row.principal,
            target: row.target,
            role: row.role,
            login: row.login,
            state: row.state.parse().map_err(StoreError::Corrupt)?,
            created_at: Timestamp::from_unix_ms(row.created_at),
            expires_at: Timestamp::from_unix_ms(row.expires_at),
            next_attempt_at: ts(row.next_attempt_at),
            epoch: row.epoch,
            n_attempts: row.n_attempts,
            last_error: row.last_error,
            revoke_reason: row.revoke_reason,
            revoked_at: ts(row.revoked_at),
            verified_at: ts(row.verified_at),
            break_glass: row.break_glass != 0,
            reviewed_by: row.reviewed_by,
            actors: list_from_json(&row.actors, "a grant's act chain")?,
        })
    }
}

/// A request row, in [`REQUEST_COLUMNS`].
#[derive(sqlx::FromRow)]
pub(crate) struct RequestRow {
    id: String,
    principal_kind: String,
    principal_name: String,
    principal_role: Option<String>,
    user_id: Option<String>,
    target: String,
    role: String,
    reason: String,
    ticket: String,
    ttl_ms: i64,
    max_ttl_ms: i64,
    approvals_needed: i64,
    state: String,
    decision: String,
    break_glass: i64,
    created_at: i64,
    expires_at: i64,
    actors: String,
}

impl TryFrom<RequestRow> for RequestRecord {
    type Error = StoreError;

    fn try_from(row: RequestRow) -> Result<RequestRecord, StoreError> {
        let name = row.principal_name;
        let principal = match row.principal_kind.as_str() {
            "user" => Principal::User {
                id: row.user_id.unwrap_or_default(),
                name,
                groups: Vec::new(),
            },
            "agent" => Principal::Agent { name },
            _ => Principal::Workload {
                role: row.principal_role.unwrap_or_default(),
                name,
            },
        };
        Ok(RequestRecord {
            id: row.id,
            principal,
            target: row.target,
            role: row.role,
            reason: row.reason,
            ticket: row.ticket,
            ttl_ms: row.ttl_ms,
            max_ttl_ms: row.max_ttl_ms,
            approvals_needed: row.approvals_needed,
            state: row.state.parse().map_err(StoreError::Corrupt)?,
            decision: row.decision,
            break_glass: row.break_glass != 0,
            created_at: Timestamp::from_unix_ms(row.created_at),
            expires_at: Timestamp::from_unix_ms(row.expires_at),
            actors: list_from_json(&row.actors, "a request's act chain")?,
        })
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct TargetRow {
    name: String,
    kind: String,
    url: String,
    created_at: i64,
}

impl From<TargetRow> for TargetRecord {
    fn from(row: TargetRow) -> TargetRecord {
        TargetRecord {
            name: row.name,
            kind: row.kind,
            url: row.url,
            created_at: Timestamp::from_unix_ms(row.created_at),
        }
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct RoleRow {
    target: String,
    name: String,
    creation_sql: String,
    revocation_sql: Option<String>,
    max_ttl_ms: i64,
}

impl From<RoleRow> for RoleRecord {
    fn from(row: RoleRow) -> RoleRecord {
        RoleRecord {
            target: row.target,
            name: row.name,
            creation_sql: row.creation_sql,
            revocation_sql: row.revocation_sql,
            max_ttl_ms: row.max_ttl_ms,
        }
    }
}

/// What a decision reads: a role, its target's columns and the policy text.
#[derive(sqlx::FromRow)]
pub(crate) struct DecisionRow {
    #[sqlx(flatten)]
    role: RoleRow,
    kind: String,
    url: String,
    created_at: i64,
    policy_text: Option<String>,
}

impl DecisionRow {
    /// The target, the role and the policy text.
    pub(crate) fn into_inputs(self) -> (TargetRecord, RoleRecord, Option<String>) {
        let role = RoleRecord::from(self.role);
        let target = TargetRecord {
            name: role.target.clone(),
            kind: self.kind,
            url: self.url,
            created_at: Timestamp::from_unix_ms(self.created_at),
        };
        (target, role, self.policy_text)
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct ApprovalRow {
    request_id: String,
    approver: String,
    comment: String,
    at: i64,
}

impl From<ApprovalRow> for ApprovalRecord {
    fn from(row: ApprovalRow) -> ApprovalRecord {
        ApprovalRecord {
            request_id: row.request_id,
            approver: row.approver,
            comment: row.comment,
            at: Timestamp::from_unix_ms(row.at),
        }
    }
}

/// A user row.
#[derive(sqlx::FromRow)]
pub(crate) struct UserRow {
    id: String,
    username: String,
    password_hash: String,
    groups: String,
    disabled: i64,
    totp_last_step: i64,
    created_at: i64,
}

impl TryFrom<UserRow> for UserRecord {
    type Error = StoreError;

    fn try_from(row: UserRow) -> Result<UserRecord, StoreError> {
        Ok(UserRecord {
            id: row.id,
            username: row.username,
            password_hash: row.password_hash,
            groups: groups_from_json(&row.groups)?,
            disabled: row.disabled != 0,
            totp_last_step: (row.totp_last_step >= 0).then_some(row.totp_last_step),
            created_at: Timestamp::from_unix_ms(row.created_at),
        })
    }
}

/// A session row joined with its user (`groups`, `disabled`) and its workload binding
/// (`bound_role`), which say whether its principal is still there.
#[derive(sqlx::FromRow)]
pub(crate) struct SessionRow {
    id: String,
    token_hash: Vec<u8>,
    principal_kind: String,
    principal_name: String,
    user_id: Option<String>,
    created_at: i64,
    expires_at: i64,
    revoked_at: Option<i64>,
    factor_at: Option<i64>,
    groups: Option<String>,
    disabled: Option<i64>,
    bound_role: Option<String>,
}

impl SessionRow {
    /// The session with its principal as it is now: `None` if that principal is gone (a disabled
    /// or deleted user, a deleted workload binding).
    pub(crate) fn into_session(self) -> Result<Option<SessionRecord>, StoreError> {
        let name = self.principal_name;
        let principal = match self.principal_kind.as_str() {
            "user" => {
                let (Some(id), Some(groups), Some(0)) = (self.user_id, self.groups, self.disabled)
                else {
                    return Ok(None);
                };
                let groups = groups_from_json(&groups)?;
                Principal::User { id, name, groups }
            }
            "workload" => {
                // A workload's session lasts only as long as the binding (JWT role) it came
                // through.
                let Some(role) = self.bound_role else {
                    return Ok(None);
                };
                Principal::Workload { role, name }
            }
            "agent" => {
                // An agent's session lasts as long as its JWT role; the kill switch revokes it.
                if self.bound_role.is_none() {
                    return Ok(None);
                }
                Principal::Agent { name }
            }
            other => {
                return Err(StoreError::Corrupt(format!(
                    "unknown principal kind `{other}`"
                )));
            }
        };
        Ok(Some(SessionRecord {
            id: self.id,
            token_hash: self.token_hash,
            principal,
            created_at: Timestamp::from_unix_ms(self.created_at),
            expires_at: Timestamp::from_unix_ms(self.expires_at),
            revoked_at: ts(self.revoked_at),
            factor_at: ts(self.factor_at),
        }))
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct ThrottleRow {
    username: String,
    n_failures: i64,
    throttled_until: i64,
}

impl From<ThrottleRow> for ThrottleRecord {
    fn from(row: ThrottleRow) -> ThrottleRecord {
        ThrottleRecord {
            username: row.username,
            n_failures: row.n_failures,
            throttled_until: Timestamp::from_unix_ms(row.throttled_until),
        }
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct JwtConfigRow {
    name: String,
    config: String,
}

impl TryFrom<JwtConfigRow> for JwtConfigRecord {
    type Error = StoreError;

    fn try_from(row: JwtConfigRow) -> Result<JwtConfigRecord, StoreError> {
        Ok(JwtConfigRecord {
            name: row.name,
            config: serde_json::from_str(&row.config)
                .map_err(|_| StoreError::Corrupt("JWT config is not JSON".into()))?,
        })
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct SealRow {
    seal_id: Vec<u8>,
    n_shares: i64,
    threshold: i64,
    kcv: Vec<u8>,
    wrapped_keyring: Vec<u8>,
    setup_code_hash: Option<Vec<u8>>,
    created_at: i64,
}

impl From<SealRow> for SealRecord {
    fn from(row: SealRow) -> SealRecord {
        SealRecord {
            seal_id: row.seal_id,
            n_shares: row.n_shares,
            threshold: row.threshold,
            kcv: row.kcv,
            wrapped_keyring: row.wrapped_keyring,
            setup_code_hash: row.setup_code_hash,
            created_at: Timestamp::from_unix_ms(row.created_at),
        }
    }
}

/// An audit event row as the search reads it (migration 0013's columns too).
#[derive(sqlx::FromRow)]
pub(crate) struct SearchedEventColumns {
    seq: i64,
    at_ms: i64,
    kind: String,
    principal: Option<String>,
    target: Option<String>,
    outcome: Option<String>,
    body: String,
    hash: String,
}

impl From<SearchedEventColumns> for AuditRecord {
    fn from(row: SearchedEventColumns) -> AuditRecord {
        AuditRecord {
            seq: row.seq,
            at: Timestamp::from_unix_ms(row.at_ms),
            kind: row.kind,
            principal: row.principal,
            target: row.target,
            outcome: row.outcome,
            body: row.body,
            hash: row.hash,
        }
    }
}

/// An audit event row as read back: `seq, kind, body, hash`.
#[derive(sqlx::FromRow)]
pub(crate) struct EventColumns {
    seq: i64,
    kind: String,
    body: String,
    hash: String,
}

impl From<EventColumns> for StoredEvent {
    fn from(row: EventColumns) -> StoredEvent {
        StoredEvent {
            seq: row.seq,
            kind: row.kind,
            body: row.body,
            hash: row.hash,
        }
    }
}

/// Maps rows read with `query_as` to their records.
pub(crate) fn records<R, T>(rows: Vec<R>) -> Result<Vec<T>, StoreError>
where
    T: TryFrom<R, Error = StoreError>,
{
    rows.into_iter().map(T::try_from).collect()
}
