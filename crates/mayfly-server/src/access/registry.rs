//! The live connections to targets, built from the store and the barrier on first use (see
//! `access::targets`), and the last policy set parsed; and how a target client is built from its
//! record.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use mayfly_core::policy::Policies;
use mayfly_crypto::SecretString;
use mayfly_store::{RoleRecord, TargetRecord};
use mayfly_targets::postgres::PostgresTarget;
use mayfly_targets::{RoleSpec, Target};
use tokio::sync::Mutex;

use crate::error::BrokerError;

/// Live connections to targets, built from the store and the barrier on first use; and the last
/// policy set parsed.
#[derive(Default)]
pub struct TargetRegistry {
    pub(crate) targets: Mutex<HashMap<String, Arc<dyn Target>>>,
    pub(crate) policies: std::sync::Mutex<Option<Arc<Policies>>>,
}

impl TargetRegistry {
    pub async fn forget(&self, name: &str) {
        self.targets.lock().await.remove(name);
    }
}

pub fn role_spec(role: &RoleRecord) -> RoleSpec {
    RoleSpec {
        name: role.name.clone(),
        creation_sql: role.creation_sql.clone(),
        revocation_sql: role.revocation_sql.clone(),
        max_ttl: Duration::from_millis(u64::try_from(role.max_ttl_ms).unwrap_or(0)),
    }
}

/// Builds a target client without storing anything (to check a role before it is stored).
pub fn build_target(
    record: &TargetRecord,
    admin_password: Option<&SecretString>,
) -> Result<Arc<dyn Target>, BrokerError> {
    match record.kind.as_str() {
        "postgres" => {
            let target = PostgresTarget::new(&record.name, &record.url, admin_password)
                .map_err(|e| BrokerError::BadRequest(format!("field `url`: {e}")))?;
            Ok(Arc::new(target))
        }
        "mysql" => {
            let target =
                mayfly_targets::mysql::MysqlTarget::new(&record.name, &record.url, admin_password)
                    .map_err(|e| BrokerError::BadRequest(format!("field `url`: {e}")))?;
            Ok(Arc::new(target))
        }
        "redis" => {
            let target =
                mayfly_targets::redis::RedisTarget::new(&record.name, &record.url, admin_password)
                    .map_err(|e| BrokerError::BadRequest(format!("field `url`: {e}")))?;
            Ok(Arc::new(target))
        }
        other => Err(BrokerError::BadRequest(format!(
            "field `kind`: `{}` is not supported (postgres, mysql, redis, ssh)",
            other.chars().take(32).collect::<String>()
        ))),
    }
}
