//! Administration of workload login: trusted JWT issuers and the roles that map their tokens'
//! claims to workloads. Deleting a role ends the sessions it gave.

use mayfly_api::*;
use mayfly_core::audit::Outcome;
use mayfly_store::{Change, Write, WriteOutcome};

use crate::auth::Caller;
use crate::error::BrokerError;
use crate::origin::Origin;
use crate::state::Broker;

fn check_config_name(name: &str) -> Result<(), BrokerError> {
    mayfly_core::GroupName::parse(name).map_err(|e| {
        BrokerError::BadRequest(format!(
            "name `{}`: {e}",
            name.chars().take(64).collect::<String>()
        ))
    })?;
    Ok(())
}

impl Broker {
    /// Adds or replaces a trusted JWT issuer, for admins.
    pub async fn put_jwt_issuer(
        &self,
        meta: &Origin,
        caller: &Caller,
        name: String,
        mut config: JwtIssuerConfig,
    ) -> Result<(), BrokerError> {
        caller.require_admin()?;
        check_config_name(&name)?;
        crate::auth::jwt::check_issuer(&config)?;
        if config.discover {
            // At configuration time only: the URL found is stored, and logins fetch it as a
            // configured `jwks_url` (see auth/discovery.rs).
            let jwks_url =
                crate::auth::discovery::discover_jwks_url(&self.inner.http, &config.issuer).await?;
            config.jwks_url = Some(jwks_url);
        }
        let mut event = self
            .draft("auth.jwt.issuer.put", Outcome::Ok)
            .detail("issuer", config.issuer.clone())
            .detail("jwks_url", config.jwks_url.clone())
            .detail("discovered", config.discover)
            .detail("n_public_keys", config.public_keys.len());
        event.actor = Some(caller.principal().to_string());
        event.subject = Some(format!("jwt-issuer:{name}"));
        meta.fill(&mut event);
        let config =
            serde_json::to_value(&config).map_err(|e| BrokerError::Internal(e.to_string()))?;
        self.commit(Write {
            change: Some(Change::PutJwtIssuer { name, config }),
            event,
        })
        .await?;
        Ok(())
    }

    /// Adds or replaces a JWT login role, for admins.
    pub async fn put_jwt_role(
        &self,
        meta: &Origin,
        caller: &Caller,
        name: String,
        config: JwtRoleConfig,
    ) -> Result<(), BrokerError> {
        caller.require_admin()?;
        check_config_name(&name)?;
        crate::auth::jwt::check_role(&config)?;
        if self.store().jwt_issuer(&config.issuer).await?.is_none() {
            return Err(BrokerError::BadRequest(format!(
                "field `issuer`: no issuer named `{}`",
                config.issuer
            )));
        }
        let mut event = self.draft("auth.jwt.role.put", Outcome::Ok).detail(
            "config",
            serde_json::to_value(&config).map_err(|e| BrokerError::Internal(e.to_string()))?,
        );
        event.actor = Some(caller.principal().to_string());
        event.subject = Some(format!("jwt-role:{name}"));
        meta.fill(&mut event);
        let config =
            serde_json::to_value(&config).map_err(|e| BrokerError::Internal(e.to_string()))?;
        self.commit(Write {
            change: Some(Change::PutJwtRole { name, config }),
            event,
        })
        .await?;
        Ok(())
    }

    /// Deletes a JWT login role and ends the sessions it gave.
    pub async fn delete_jwt_role(
        &self,
        meta: &Origin,
        caller: &Caller,
        name: String,
    ) -> Result<BindingRemoved, BrokerError> {
        caller.require_admin()?;
        check_config_name(&name)?;
        let mut event = self.draft("auth.jwt.role.deleted", Outcome::Ok);
        event.actor = Some(caller.principal().to_string());
        event.subject = Some(format!("jwt-role:{name}"));
        meta.fill(&mut event);
        match self
            .commit(Write {
                change: Some(Change::DeleteJwtRole { name: name.clone() }),
                event,
            })
            .await?
        {
            WriteOutcome::Applied { .. } => {}
            WriteOutcome::Conflict { reason, .. } => return Err(BrokerError::NotFound(reason)),
        }
        // Continuous verification: the workloads of that binding lose their grants now.
        let workloads = format!("workload:{name}:");
        let revoked = crate::access::recheck::recheck_active(
            self,
            &format!("the workload binding `{name}` was removed"),
            mayfly_store::Principals::StartingWith(&workloads),
        )
        .await?;
        Ok(BindingRemoved {
            name,
            grants_revoked: revoked as u64,
        })
    }

    /// Ends the caller's own session.
    pub async fn revoke_self(&self, meta: &Origin, caller: &Caller) -> Result<(), BrokerError> {
        let mut event = self.draft("auth.token.revoke", Outcome::Ok);
        event.actor = Some(caller.principal().to_string());
        event.subject = Some(format!("session:{}", caller.session.id));
        meta.fill(&mut event);
        let change = Change::RevokeSession {
            id: caller.session.id.clone(),
            at: self.now(),
        };
        match self
            .commit(Write {
                change: Some(change),
                event,
            })
            .await?
        {
            WriteOutcome::Applied { .. } => Ok(()),
            WriteOutcome::Conflict { reason, .. } => Err(BrokerError::Conflict(reason)),
        }
    }
}
