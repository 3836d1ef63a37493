//! Targets and policies as the broker's operations use them: a target's live client (from the
//! registry, else built from its record and its admin secret in the barrier or its CA, and a
//! rotation of that secret left half done recovered), the one
//! place a target client is built ([`Broker::build_target`]), the policy set parsed once per text.

use std::sync::Arc;

use mayfly_core::policy::Policies;
use mayfly_targets::{RevocationList, Setup, Target, TargetKind};

use crate::error::BrokerError;
use crate::ssh::StoreList;
use crate::state::Broker;

use super::stored_kind;

impl Broker {
    pub async fn target(&self, name: &str) -> Result<Arc<dyn Target>, BrokerError> {
        if let Some(target) = self.inner.targets.targets.lock().await.get(name) {
            return Ok(target.clone());
        }
        self.require_unsealed().await?;
        let record = self
            .store()
            .target(name)
            .await?
            .ok_or_else(|| BrokerError::NotFound(format!("no target named `{name}`")))?;
        let kind = stored_kind(&record)?;
        let password = match kind {
            // Certificate targets have no admin account: their CA is all they act with.
            TargetKind::Ssh | TargetKind::X509 => None,
            TargetKind::Postgres | TargetKind::Mysql | TargetKind::Redis => {
                Some(self.admin_secret(name).await?)
            }
        };
        let mut target = self
            .build_target(kind, &record.name, &record.url, password.as_ref())
            .await?;
        if password.is_some() {
            // A rotation of the admin secret left half done: the target may have the new one.
            target = self.recover_admin_login(name, target).await?;
        }
        self.inner
            .targets
            .targets
            .lock()
            .await
            .insert(name.to_owned(), target.clone());
        Ok(target)
    }

    /// After the target `name` refused the broker's admin login (its admin secret was rotated by
    /// another node, or a rotation was left half done), its kept client is dropped: the next use
    /// builds it afresh from the store's current secret and recovers a pending rotation.
    pub async fn target_failed(&self, name: &str, error: &mayfly_targets::TargetError) {
        if matches!(error, mayfly_targets::TargetError::AdminLogin { .. }) {
            tracing::warn!(
                target_name = name,
                "the target refused the broker's admin login; its client is built again"
            );
            self.inner.targets.forget(name).await;
        }
    }

    /// The client of a target of `kind` named `name` at `url`, built without storing anything
    /// (to check a target before it is added, or a role before it is stored). A database target
    /// acts with `admin_password`; a certificate target (`admin_password` unused) with its own
    /// CA, made now (audited) if it has none, and the store's view of its revoked certificates.
    /// The target keeps its CA, so signing reads no key.
    pub async fn build_target(
        &self,
        kind: TargetKind,
        name: &str,
        url: &str,
        admin_password: Option<&mayfly_crypto::SecretString>,
    ) -> Result<Arc<dyn Target>, BrokerError> {
        let revoked = || -> Arc<dyn RevocationList> {
            Arc::new(StoreList::new(
                name,
                self.inner.store.clone(),
                self.inner.config.clock.clone(),
            ))
        };
        let setup = match kind {
            TargetKind::Postgres | TargetKind::Mysql | TargetKind::Redis => {
                Setup::AdminPassword(admin_password)
            }
            TargetKind::Ssh => Setup::SshCa(self.ssh_ca(name).await?, revoked()),
            TargetKind::X509 => Setup::X509Ca(self.x509_ca(name).await?, revoked()),
        };
        mayfly_targets::build(kind, name, url, setup)
            .map_err(|e| BrokerError::BadRequest(format!("field `url`: {e}")))
    }

    /// The policies as stored now (read at every decision, so a change on any node counts at
    /// once); parsed only when the text differs from the last one parsed.
    pub async fn policies(&self) -> Result<Arc<Policies>, BrokerError> {
        let text = self.store().policies().await?.map(|(text, _)| text);
        self.parsed_policies(text)
    }

    /// The policies of a text read from the store (`None`: none ever stored, deny all), parsed
    /// only when it differs from the last one parsed.
    pub fn parsed_policies(&self, text: Option<String>) -> Result<Arc<Policies>, BrokerError> {
        let Some(text) = text else {
            return Ok(Arc::new(Policies::empty()));
        };
        let cache = &self.inner.targets.policies;
        if let Some(parsed) = cache.lock().ok().and_then(|c| c.clone())
            && parsed.text() == text
        {
            return Ok(parsed);
        }
        let parsed = Arc::new(
            Policies::parse(&text)
                .map_err(|e| BrokerError::Internal(format!("stored policies: {e}")))?,
        );
        if let Ok(mut cache) = cache.lock() {
            *cache = Some(parsed.clone());
        }
        Ok(parsed)
    }
}
