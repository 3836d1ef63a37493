//! Targets and policies as the broker's operations use them: a target's live client (from the
//! registry, else built from its record and its admin secret in the barrier), the policy set
//! parsed once per text.

use std::sync::Arc;

use mayfly_core::policy::Policies;
use mayfly_crypto::SecretString;
use mayfly_targets::Target;

use crate::error::BrokerError;
use crate::state::Broker;

use super::registry::build_target;
use super::target_secret_path;

impl Broker {
    pub async fn target(&self, name: &str) -> Result<Arc<dyn Target>, BrokerError> {
        if let Some(target) = self.inner.targets.targets.lock().await.get(name) {
            return Ok(target.clone());
        }
        let keys = self.require_unsealed().await?;
        let record = self
            .store()
            .target(name)
            .await?
            .ok_or_else(|| BrokerError::NotFound(format!("no target named `{name}`")))?;
        if record.kind == "ssh" || record.kind == "x509" {
            let target = if record.kind == "ssh" {
                self.build_ssh_target(&record.name, &record.url).await?
            } else {
                self.build_x509_target(&record.name, &record.url).await?
            };
            self.inner
                .targets
                .targets
                .lock()
                .await
                .insert(name.to_owned(), target.clone());
            return Ok(target);
        }
        let path = target_secret_path(name);
        let blob = self.store().secret(&path).await?.ok_or_else(|| {
            BrokerError::Internal(format!("the admin secret of `{name}` is missing"))
        })?;
        let password = keys.keyring.open(&path, &blob)?;
        let password = SecretString::from(String::from_utf8_lossy(&password).into_owned());
        let target = build_target(&record, Some(&password))?;
        self.inner
            .targets
            .targets
            .lock()
            .await
            .insert(name.to_owned(), target.clone());
        Ok(target)
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
