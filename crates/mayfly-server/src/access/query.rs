//! `run_query`: the broker runs an agent's SQL on a database target as the agent's own grant —
//! the grant's ephemeral login, its password unsealed from the barrier for the call and
//! zeroized after — so the agent never holds the credential. The SQL is classified first
//! ([`mayfly_core::sql::classify`]: one statement, its kind, tables and `WHERE`), which is what
//! the caller's policy decides on (`Broker::query_plan`); what does not classify is refused with
//! a 400 before anything connects. A `select` runs in a read-only transaction, every statement
//! under a 10 s timeout, at most 1,000 rows and 1 MiB of values come back. The login and the
//! password come from the grant, never from input; errors carry the database's message, never
//! the password or a connection URL. Not audited here: the caller (the MCP front end) audits the
//! call with its decision.

use std::time::Duration;

use mayfly_core::grant::GrantState;
use mayfly_core::sql::{QueryKind, QueryShape, SqlDialect, classify};
use mayfly_core::{LoginName, Principal, TargetKind};
use mayfly_crypto::SecretString;
use mayfly_targets::{QueryRequest, TargetError};

use crate::error::BrokerError;
use crate::origin::Origin;
use crate::state::Broker;

use super::{grant_secret_path, principal_key, truncate};

/// The statement timeout of every `run_query` (on the server, and the call a little more).
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(10);
/// The most rows a caller may ask for.
pub const MAX_ROWS: u32 = 1000;
/// The most bytes of values (as text) an answer carries.
pub const MAX_ANSWER_BYTES: usize = 1024 * 1024;

/// A statement that may run for a grant: what the caller decides on before it runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueryPlan {
    pub grant_id: String,
    /// The grant's target and role.
    pub target: String,
    pub role: String,
    /// The statement's shape, as policies see it (`context.query`).
    pub shape: QueryShape,
    /// The target's dialect, the one the SQL was parsed in.
    pub dialect: SqlDialect,
}

/// What the statement answered.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct QueryAnswer {
    pub columns: Vec<String>,
    /// Values as JSON: numbers, strings, booleans, null, JSON columns as JSON; anything else as
    /// its text.
    pub rows: Vec<Vec<serde_json::Value>>,
    /// More rows (or bytes) than the caps were left out.
    pub truncated: bool,
}

impl Broker {
    /// The grant (active, the caller's own — principal_key equal —, on a postgres or mariadb
    /// target) and the SQL's shape; BadRequest naming the problem for SQL that does not
    /// classify; NotFound for another's grant.
    pub async fn query_plan(
        &self,
        caller: &Principal,
        grant_id: &str,
        sql: &str,
    ) -> Result<QueryPlan, BrokerError> {
        let grant = self.own_active_grant(caller, grant_id).await?;
        let dialect = self.dialect_of(&grant.target).await?;
        let shape = classify(dialect, sql)
            .map_err(|e| BrokerError::BadRequest(format!("field `sql`: {e}")))?;
        Ok(QueryPlan {
            grant_id: grant.id,
            target: grant.target,
            role: grant.role,
            shape,
            dialect,
        })
    }

    /// Runs the statement as the grant's own login (its password unsealed from the store,
    /// zeroized after), in a READ ONLY transaction when shape.kind is select, with a statement
    /// timeout (10 s) and at most `max_rows` (1..=1000) rows and 1 MiB of answer; no audit here
    /// (the caller audits).
    ///
    /// The grant is read again (it may have been revoked since the plan) and the SQL classified
    /// again: the transaction is read-only by what `sql` is, whatever the plan says, and SQL of
    /// another shape than the plan's (what the caller decided on), or a plan for another target,
    /// is refused.
    pub async fn run_query(
        &self,
        meta: &Origin,
        caller: &Principal,
        plan: &QueryPlan,
        sql: &str,
        max_rows: u32,
    ) -> Result<QueryAnswer, BrokerError> {
        if !(1..=MAX_ROWS).contains(&max_rows) {
            return Err(BrokerError::BadRequest(format!(
                "field `max_rows`: give 1 to {MAX_ROWS}"
            )));
        }
        let grant = self.own_active_grant(caller, &plan.grant_id).await?;
        let dialect = self.dialect_of(&grant.target).await?;
        let shape = classify(dialect, sql)
            .map_err(|e| BrokerError::BadRequest(format!("field `sql`: {e}")))?;
        if grant.target != plan.target || dialect != plan.dialect || shape != plan.shape {
            return Err(BrokerError::BadRequest(
                "field `sql`: not the statement (or the grant) the plan was made for".into(),
            ));
        }
        let login = LoginName::parse(&grant.login)
            .map_err(|e| BrokerError::Internal(format!("stored login: {e}")))?;
        let secret = self.grant_password(&grant.id).await?;
        let target = self.target(&grant.target).await?;
        let request = QueryRequest {
            login: &login,
            secret: &secret,
            sql,
            read_only: shape.kind == QueryKind::Select,
            max_rows: usize::try_from(max_rows).unwrap_or(1),
            max_bytes: MAX_ANSWER_BYTES,
            timeout: QUERY_TIMEOUT,
        };
        let answer = target.run_query(&request).await;
        drop(secret);
        let rows = answer.map_err(|error| query_error(meta, &grant.id, error))?;
        Ok(QueryAnswer {
            columns: rows.columns,
            rows: rows.rows,
            truncated: rows.truncated,
        })
    }

    /// The caller's own grant, active and not past its expiry. Another principal's grant is
    /// not found, exactly as a grant that does not exist.
    async fn own_active_grant(
        &self,
        caller: &Principal,
        grant_id: &str,
    ) -> Result<mayfly_store::GrantRecord, BrokerError> {
        let not_found = || BrokerError::NotFound(format!("no grant `{}`", truncate(grant_id)));
        if grant_id.is_empty() || grant_id.len() > 64 {
            return Err(not_found());
        }
        let grant = self.store().grant(grant_id).await?.ok_or_else(not_found)?;
        if grant.principal != principal_key(caller) {
            return Err(not_found());
        }
        if grant.state != GrantState::Active || grant.expires_at <= self.now() {
            let state = if grant.state == GrantState::Active {
                "expired"
            } else {
                grant.state.as_str()
            };
            return Err(BrokerError::Conflict(format!(
                "the grant is {state}, not active: request access again"
            )));
        }
        Ok(grant)
    }

    /// The SQL dialect of a database target; other kinds run no queries.
    async fn dialect_of(&self, target: &str) -> Result<SqlDialect, BrokerError> {
        match self.target(target).await?.kind() {
            TargetKind::Postgres => Ok(SqlDialect::Postgres),
            TargetKind::Mysql => Ok(SqlDialect::MySql),
            kind @ (TargetKind::Redis | TargetKind::Ssh | TargetKind::X509) => {
                Err(BrokerError::BadRequest(format!(
                    "field `grant_id`: the grant is on a `{kind}` target, which runs no SQL (postgres and mysql targets do)"
                )))
            }
        }
    }

    /// The grant's password, opened from the barrier; zeroized when dropped.
    async fn grant_password(&self, grant_id: &str) -> Result<SecretString, BrokerError> {
        let keys = self.require_unsealed().await?;
        let path = grant_secret_path(grant_id);
        let blob = self.store().secret(&path).await?.ok_or_else(|| {
            BrokerError::Internal(format!("the secret of grant {grant_id} is missing"))
        })?;
        let bytes = keys.keyring.open(&path, &blob)?;
        let text = std::str::from_utf8(&bytes)
            .map_err(|_| BrokerError::Internal(format!("the secret of grant {grant_id}")))?;
        Ok(SecretString::from(text.to_owned()))
    }
}

/// A target's failure as the caller sees it: the database's message for the statement (a 400:
/// the SQL, a privilege, the read-only transaction), a timeout (504), a refused login (the grant
/// is being revoked: 409), an unreachable target (503, logged).
fn query_error(meta: &Origin, grant_id: &str, error: TargetError) -> BrokerError {
    match error {
        TargetError::Statement {
            timed_out: true,
            reason,
            ..
        } => BrokerError::GatewayTimeout(format!(
            "the statement ran out of time ({} s): {reason}",
            QUERY_TIMEOUT.as_secs()
        )),
        TargetError::Statement { code, reason, .. } => BrokerError::BadRequest(match code {
            Some(code) => format!("the database refused the statement: {reason} (SQLSTATE {code})"),
            None => format!("the database refused the statement: {reason}"),
        }),
        TargetError::Refused { reason, .. } => BrokerError::Conflict(reason),
        TargetError::Unavailable { target, source } => {
            tracing::warn!(
                request_id = %meta.request_id,
                grant_id,
                target_name = %target,
                error = %source,
                "run_query: the target is unreachable"
            );
            BrokerError::Unavailable(format!("target `{target}` is unreachable; try again"))
        }
        other => BrokerError::Conflict(other.to_string()),
    }
}
