//! The secret store: versioned, encrypted key-value secrets addressed as
//! `project/environment/NAME` ([`SecretPath`]).
//!
//! Each write makes a new version, sealed by the barrier under `kv/<path>/<version>` (so a
//! ciphertext opens only as its own path and version) and committed with its audit event; the
//! store sees ciphertext only. Check-and-set: a write names the version it expects to be the
//! current one (the highest ever written; 0 for a new secret), and the store refuses it, naming the
//! current version, if another came first. The current value is the highest version's, if that one
//! is live: deleting the highest version hides the secret (from reads and listings) until it is
//! restored or a new version is written. Destroying versions removes their ciphertext from the
//! database for good.
//!
//! Authorization is Cedar's, deny by default: reads are `read_secret` and writes (put, delete,
//! undelete, destroy) `write_secret`, on `Secret::"p/e/NAME"` in `Environment::"p/e"` in
//! `Project::"p"`. Admins may always write (they administer the broker) but read a value only
//! where a policy permits them, like anyone else. Listings and histories (names, versions, times,
//! never values) are for admins and for whoever may read (or write) the secret. Every read and
//! write is audited with its path and version, never its value; a refused one too.
//!
//! [`Broker::secret_for_injection`] is for the proxy, which decides and audits its own action.

use mayfly_api::{
    SecretEnvironment, SecretHistory, SecretList, SecretListed, SecretValue, SecretVersionInfo,
    SecretVersionsChanged,
};
use mayfly_core::audit::{AuditDraft, Outcome};
use mayfly_core::policy::{Action, Decision};
use mayfly_core::{SecretPath, SecretScope, Timestamp};
use mayfly_store::{Change, KvSecretRecord, Write, WriteOutcome};
use secrecy::{ExposeSecret, SecretString};

use crate::auth::Caller;
use crate::error::{AuditedError, BrokerError};
use crate::origin::Origin;
use crate::state::{Broker, Unsealed};

/// The largest value a secret may hold, in bytes.
pub const MAX_VALUE_BYTES: usize = 64 * 1024;
/// The most versions one destroy names.
pub const MAX_DESTROY_VERSIONS: usize = 100;
/// How many times a write without check-and-set tries again when another writer took the version
/// it was about to write.
const PUT_ATTEMPTS: usize = 5;

/// Where a version's ciphertext is bound in the barrier (its AAD).
pub fn barrier_path(path: &SecretPath, version: i64) -> String {
    format!("kv/{path}/{version}")
}

/// A version of a stored secret and its value (which never prints).
#[derive(Debug, Clone)]
pub struct StoredSecret {
    pub path: SecretPath,
    pub version: i64,
    pub value: SecretString,
    pub created_at: Timestamp,
}

impl StoredSecret {
    /// The wire form: the one place the value leaves as clear text.
    pub fn into_wire(self) -> SecretValue {
        SecretValue {
            path: self.path.to_string(),
            version: self.version,
            value: self.value.expose_secret().to_owned(),
            created_at_ms: self.created_at.unix_ms(),
        }
    }
}

/// Checks a value: at most [`MAX_VALUE_BYTES`] (an empty value is a value).
pub fn check_value(value: &SecretString) -> Result<(), BrokerError> {
    if value.expose_secret().len() > MAX_VALUE_BYTES {
        return Err(BrokerError::BadRequest(format!(
            "field `value`: longer than {MAX_VALUE_BYTES} bytes"
        )));
    }
    Ok(())
}

/// A path from the three parts of a URL, each checked; the error names the part.
pub fn parse_path(project: &str, environment: &str, name: &str) -> Result<SecretPath, BrokerError> {
    SecretPath::new(project, environment, name)
        .map_err(|e| BrokerError::BadRequest(format!("field `{}`: {e}", e.field())))
}

/// An environment from the two parts of a URL, each checked.
pub fn parse_scope(project: &str, environment: &str) -> Result<SecretScope, BrokerError> {
    SecretScope::new(project, environment)
        .map_err(|e| BrokerError::BadRequest(format!("field `{}`: {e}", e.field())))
}

fn check_version(field: &str, version: i64) -> Result<(), BrokerError> {
    if version < 1 {
        return Err(BrokerError::BadRequest(format!(
            "field `{field}`: a version is a whole number from 1"
        )));
    }
    Ok(())
}

fn not_found(path: &SecretPath, version: Option<i64>) -> BrokerError {
    match version {
        Some(version) => BrokerError::NotFound(format!(
            "version {version} of the secret `{path}` does not exist"
        )),
        None => BrokerError::NotFound(format!("the secret `{path}` does not exist")),
    }
}

impl Broker {
    /// Whether `caller` may do `action` on `path` (admins may always write): `Ok(policies)` or
    /// `Err(reason)`.
    pub(crate) async fn secret_decision(
        &self,
        caller: &Caller,
        action: Action,
        path: &SecretPath,
    ) -> Result<Result<Vec<String>, String>, BrokerError> {
        if action == Action::WriteSecret && caller.principal().is_admin() {
            return Ok(Ok(vec!["admins".to_owned()]));
        }
        let policies = self.policies().await?;
        let decision = policies
            .decide_secret(caller.principal(), action, path)
            .map_err(|e| BrokerError::Internal(format!("policy: {e}")))?;
        Ok(match decision.immediate() {
            Decision::Allow { policies, .. } => Ok(policies),
            Decision::Deny { reason } => Err(reason),
        })
    }

    fn secret_event(
        &self,
        meta: &Origin,
        caller: &Caller,
        kind: &str,
        outcome: Outcome,
        path: &SecretPath,
    ) -> AuditDraft {
        let mut event = self.draft(kind, outcome).detail("path", path.to_string());
        event.actor = Some(caller.principal().to_string());
        event.subject = Some(format!("secret:{path}"));
        meta.fill(&mut event);
        event
    }

    /// Decides `action` on `path`; a refusal is audited (`secret.read.refused` or
    /// `secret.write.refused`) and answered 403.
    async fn authorize_secret(
        &self,
        meta: &Origin,
        caller: &Caller,
        action: Action,
        path: &SecretPath,
    ) -> Result<Vec<String>, AuditedError> {
        match self.secret_decision(caller, action, path).await? {
            Ok(policies) => Ok(policies),
            Err(reason) => {
                let kind = match action {
                    Action::ReadSecret => "secret.read.refused",
                    _ => "secret.write.refused",
                };
                let event = self
                    .secret_event(meta, caller, kind, Outcome::Refused, path)
                    .detail("reason", reason.clone());
                self.record(event).await?;
                Err(BrokerError::Forbidden(reason).audited())
            }
        }
    }

    fn open_version(
        keys: &Unsealed,
        record: &KvSecretRecord,
    ) -> Result<Option<StoredSecret>, BrokerError> {
        let Some(blob) = &record.blob else {
            return Ok(None);
        };
        if !record.meta.is_live() {
            return Ok(None);
        }
        let plain = keys
            .keyring
            .open(&barrier_path(&record.path, record.meta.version), blob)?;
        let text = String::from_utf8(plain.to_vec()).map_err(|_| {
            BrokerError::Internal(format!("the stored secret `{}` is not UTF-8", record.path))
        })?;
        Ok(Some(StoredSecret {
            path: record.path.clone(),
            version: record.meta.version,
            value: SecretString::from(text),
            created_at: record.meta.created_at,
        }))
    }

    /// Writes a new version of `path` (`write_secret`); returns its number. With `cas`, only if
    /// the current version is `cas` (0: the secret must not exist); otherwise 409 naming it.
    pub async fn put_secret(
        &self,
        meta: &Origin,
        caller: &Caller,
        path: &SecretPath,
        value: SecretString,
        cas: Option<i64>,
    ) -> Result<i64, AuditedError> {
        check_value(&value)?;
        if let Some(cas) = cas
            && cas < 0
        {
            return Err(BrokerError::BadRequest(
                "field `cas`: a version is a whole number from 0".into(),
            )
            .into());
        }
        let policies = self
            .authorize_secret(meta, caller, Action::WriteSecret, path)
            .await?;
        let keys = self.require_unsealed().await?;
        for _ in 0..PUT_ATTEMPTS {
            let version = match cas {
                Some(cas) => cas.saturating_add(1),
                None => self
                    .store()
                    .kv_secret(path, None)
                    .await?
                    .map_or(0, |r| r.meta.version)
                    .saturating_add(1),
            };
            let blob = keys
                .keyring
                .seal(
                    &barrier_path(path, version),
                    value.expose_secret().as_bytes(),
                )
                .map_err(BrokerError::from)?;
            let mut event = self
                .secret_event(meta, caller, "secret.written", Outcome::Ok, path)
                .detail("version", version)
                .detail("policies", policies.clone());
            if let Some(cas) = cas {
                event = event.detail("cas", cas);
            }
            let now = self.now();
            let outcome = self
                .commit(Write {
                    change: Some(Change::PutKvSecret {
                        path: path.clone(),
                        version,
                        blob,
                        created_by: caller.principal().to_string(),
                        at: now,
                    }),
                    event,
                })
                .await?;
            match outcome {
                WriteOutcome::Applied { .. } => return Ok(version),
                WriteOutcome::Conflict { reason, .. } => {
                    if cas.is_some() {
                        return Err(BrokerError::Conflict(reason).audited());
                    }
                }
            }
        }
        Err(BrokerError::Conflict(format!(
            "`{path}` is being written by others at the same time; try again"
        ))
        .audited())
    }

    /// Reads the current value of `path` or its version `version` (`read_secret`), audited as
    /// `secret.read` with the path and the version.
    pub async fn read_secret_value(
        &self,
        meta: &Origin,
        caller: &Caller,
        path: &SecretPath,
        version: Option<i64>,
    ) -> Result<StoredSecret, AuditedError> {
        if let Some(version) = version {
            check_version("version", version)?;
        }
        let policies = self
            .authorize_secret(meta, caller, Action::ReadSecret, path)
            .await?;
        let keys = self.require_unsealed().await?;
        let record = self
            .store()
            .kv_secret(path, version)
            .await?
            .ok_or_else(|| not_found(path, version))?;
        let secret = Self::open_version(&keys, &record)?.ok_or_else(|| {
            let state = if record.meta.destroyed_at.is_some() {
                "destroyed"
            } else {
                "deleted"
            };
            BrokerError::NotFound(format!(
                "version {} of the secret `{path}` is {state}",
                record.meta.version
            ))
        })?;
        let event = self
            .secret_event(meta, caller, "secret.read", Outcome::Ok, path)
            .detail("version", secret.version)
            .detail("policies", policies);
        self.record(event).await?;
        Ok(secret)
    }

    /// The current value of `path` for the proxy to inject: the highest version, if it is live.
    /// No policy decision and no audit event here: the caller decides and audits its own action.
    pub async fn secret_for_injection(
        &self,
        path: &SecretPath,
    ) -> Result<SecretString, BrokerError> {
        let keys = self.require_unsealed().await?;
        let record = self
            .store()
            .kv_secret(path, None)
            .await?
            .ok_or_else(|| not_found(path, None))?;
        Self::open_version(&keys, &record)?
            .map(|secret| secret.value)
            .ok_or_else(|| not_found(path, None))
    }

    /// The secrets of an environment the caller may see (admins: all; others: those it may read
    /// or write), with their current version and its age, never values. Deleted and destroyed
    /// ones are left out.
    pub async fn list_secrets(
        &self,
        caller: &Caller,
        scope: &SecretScope,
    ) -> Result<SecretList, BrokerError> {
        let now = self.now();
        let records = self
            .store()
            .kv_latest(scope.project(), scope.environment(), false)
            .await?;
        let mut secrets = Vec::new();
        for record in records.into_iter().filter(|r| r.meta.is_live()) {
            if !self.may_see(caller, &record.path).await? {
                continue;
            }
            secrets.push(SecretListed {
                name: record.path.name.clone(),
                version: record.meta.version,
                created_at_ms: record.meta.created_at.unix_ms(),
                age_secs: now
                    .unix_ms()
                    .saturating_sub(record.meta.created_at.unix_ms())
                    / 1000,
            });
        }
        Ok(SecretList {
            environment: scope.to_string(),
            secrets,
        })
    }

    /// Whether the caller may see the name and history of `path`: an admin, or one who may read
    /// or write it.
    async fn may_see(&self, caller: &Caller, path: &SecretPath) -> Result<bool, BrokerError> {
        if caller.principal().is_admin() {
            return Ok(true);
        }
        for action in [Action::ReadSecret, Action::WriteSecret] {
            if self.secret_decision(caller, action, path).await?.is_ok() {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Every version of `path` (times, by whom, deleted, destroyed), never values.
    pub async fn secret_history(
        &self,
        caller: &Caller,
        path: &SecretPath,
    ) -> Result<SecretHistory, BrokerError> {
        if !self.may_see(caller, path).await? {
            return Err(BrokerError::Forbidden(format!(
                "no policy permits `read_secret` or `write_secret` on `{path}`"
            )));
        }
        let versions = self.store().kv_history(path).await?;
        if versions.is_empty() {
            return Err(not_found(path, None));
        }
        Ok(SecretHistory {
            path: path.to_string(),
            versions: versions
                .into_iter()
                .map(|v| SecretVersionInfo {
                    version: v.version,
                    created_at_ms: v.created_at.unix_ms(),
                    created_by: v.created_by,
                    deleted_at_ms: v.deleted_at.map(Timestamp::unix_ms),
                    destroyed_at_ms: v.destroyed_at.map(Timestamp::unix_ms),
                })
                .collect(),
        })
    }

    /// The version a delete or undelete is about: the one named, or the highest.
    async fn version_or_highest(
        &self,
        path: &SecretPath,
        version: Option<i64>,
    ) -> Result<i64, BrokerError> {
        if let Some(version) = version {
            check_version("version", version)?;
            return Ok(version);
        }
        self.store()
            .kv_secret(path, None)
            .await?
            .map(|r| r.meta.version)
            .ok_or_else(|| not_found(path, None))
    }

    async fn commit_secret_change(
        &self,
        event: AuditDraft,
        change: Change,
    ) -> Result<(), AuditedError> {
        match self
            .commit(Write {
                change: Some(change),
                event,
            })
            .await?
        {
            WriteOutcome::Applied { .. } => Ok(()),
            WriteOutcome::Conflict { reason, .. } => Err(BrokerError::Conflict(reason).audited()),
        }
    }

    /// Soft-deletes a version (the highest by default): hidden, its ciphertext kept.
    pub async fn delete_secret(
        &self,
        meta: &Origin,
        caller: &Caller,
        path: &SecretPath,
        version: Option<i64>,
    ) -> Result<SecretVersionsChanged, AuditedError> {
        let policies = self
            .authorize_secret(meta, caller, Action::WriteSecret, path)
            .await?;
        let version = self.version_or_highest(path, version).await?;
        let event = self
            .secret_event(meta, caller, "secret.deleted", Outcome::Ok, path)
            .detail("version", version)
            .detail("policies", policies);
        let change = Change::DeleteKvSecret {
            path: path.clone(),
            version,
            at: self.now(),
        };
        self.commit_secret_change(event, change).await?;
        Ok(SecretVersionsChanged {
            path: path.to_string(),
            versions: vec![version],
        })
    }

    /// Restores a soft-deleted version (the highest by default).
    pub async fn undelete_secret(
        &self,
        meta: &Origin,
        caller: &Caller,
        path: &SecretPath,
        version: Option<i64>,
    ) -> Result<SecretVersionsChanged, AuditedError> {
        let policies = self
            .authorize_secret(meta, caller, Action::WriteSecret, path)
            .await?;
        let version = self.version_or_highest(path, version).await?;
        let event = self
            .secret_event(meta, caller, "secret.undeleted", Outcome::Ok, path)
            .detail("version", version)
            .detail("policies", policies);
        let change = Change::UndeleteKvSecret {
            path: path.clone(),
            version,
        };
        self.commit_secret_change(event, change).await?;
        Ok(SecretVersionsChanged {
            path: path.to_string(),
            versions: vec![version],
        })
    }

    /// Removes the ciphertext of `versions` from the store for good.
    pub async fn destroy_secret(
        &self,
        meta: &Origin,
        caller: &Caller,
        path: &SecretPath,
        versions: Vec<i64>,
    ) -> Result<SecretVersionsChanged, AuditedError> {
        if versions.is_empty() {
            return Err(
                BrokerError::BadRequest("field `versions`: name at least one".into()).into(),
            );
        }
        if versions.len() > MAX_DESTROY_VERSIONS {
            return Err(BrokerError::BadRequest(format!(
                "field `versions`: at most {MAX_DESTROY_VERSIONS} at a time"
            ))
            .into());
        }
        for &version in &versions {
            check_version("versions", version)?;
        }
        let mut versions = versions;
        versions.sort_unstable();
        versions.dedup();
        let policies = self
            .authorize_secret(meta, caller, Action::WriteSecret, path)
            .await?;
        let event = self
            .secret_event(meta, caller, "secret.destroyed", Outcome::Ok, path)
            .detail("versions", versions.clone())
            .detail("policies", policies);
        let change = Change::DestroyKvSecret {
            path: path.clone(),
            versions: versions.clone(),
            at: self.now(),
        };
        self.commit_secret_change(event, change).await?;
        Ok(SecretVersionsChanged {
            path: path.to_string(),
            versions,
        })
    }

    /// The current values of the secrets of an environment that the caller may read
    /// (`read_secret` decided for each), for `mayfly exec --env`. The others are left out and
    /// counted; each secret read is audited as `secret.read` (with its version), and the refused
    /// ones as one `secret.read.refused` naming them.
    pub async fn read_environment(
        &self,
        meta: &Origin,
        caller: &Caller,
        scope: &SecretScope,
    ) -> Result<SecretEnvironment, AuditedError> {
        let keys = self.require_unsealed().await?;
        let records = self
            .store()
            .kv_latest(scope.project(), scope.environment(), true)
            .await?;
        let mut permitted = Vec::new();
        let mut refused = Vec::new();
        for record in records.into_iter().filter(|r| r.meta.is_live()) {
            match self
                .secret_decision(caller, Action::ReadSecret, &record.path)
                .await?
            {
                Ok(policies) => permitted.push((record, policies)),
                Err(_) => refused.push(record.path.name.clone()),
            }
        }
        let mut writes = Vec::new();
        let mut secrets = Vec::new();
        for (record, policies) in &permitted {
            let Some(secret) = Self::open_version(&keys, record)? else {
                continue;
            };
            writes.push(Write {
                change: None,
                event: self
                    .secret_event(meta, caller, "secret.read", Outcome::Ok, &record.path)
                    .detail("version", secret.version)
                    .detail("policies", policies.clone())
                    .detail("via", "read-all"),
            });
            secrets.push(secret);
        }
        if !refused.is_empty() {
            let mut event = self
                .draft("secret.read.refused", Outcome::Refused)
                .detail("environment", scope.to_string())
                .detail("names", refused.clone())
                .detail("via", "read-all");
            event.actor = Some(caller.principal().to_string());
            event.subject = Some(format!("secrets:{scope}"));
            meta.fill(&mut event);
            writes.push(Write {
                change: None,
                event,
            });
        }
        for result in self.commit_many(writes).await {
            result?;
        }
        Ok(SecretEnvironment {
            environment: scope.to_string(),
            secrets: secrets.into_iter().map(StoredSecret::into_wire).collect(),
            n_refused: u64::try_from(refused.len()).unwrap_or(u64::MAX),
        })
    }
}
