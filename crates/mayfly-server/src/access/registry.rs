//! The live connections to targets, built from the store and the barrier on first use (see
//! `access::targets`), and the last policy set parsed; and a role as its target sees it.

use mayfly_core::policy::Policies;
use mayfly_core::time::duration_from_ms;
use mayfly_store::RoleRecord;
use mayfly_targets::{RoleSpec, Target};
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::Mutex;

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
        max_ttl: duration_from_ms(role.max_ttl_ms),
    }
}
