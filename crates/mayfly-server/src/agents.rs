//! Agents as principals (issue 22) and their kill switch. An agent is `agent:NAME`: it logs in
//! through a JWT role marked as an agent's (NAME is the role's name), or acts for a user by
//! token exchange (the user is the subject, the agent in the `act` chain). `mayfly agent disable
//! NAME` stops it at once, wherever it is: in one commit the agent is marked disabled, the
//! sessions of its JWT logins are revoked and its pending call approvals refused; then every
//! grant whose principal or act chain holds it is revoked and its open requests withdrawn. From
//! then on every check that reads the switch refuses it: a session lookup (revoked), token
//! exchange and introspection, a new request, an activation, a call through the MCP front end
//! ([`Broker::disabled_agent`], asked on every call).

use mayfly_api::{AgentDisabled, AgentInfo, JwtRoleConfig};
use mayfly_core::audit::Outcome;
use mayfly_core::grant::GrantState;
use mayfly_core::principal::agent_name;
use mayfly_core::{GroupName, Principal};
use mayfly_store::{Change, GrantFilter, Principals, Write, WriteOutcome};

use crate::access::principal_key;
use crate::error::BrokerError;
use crate::origin::Origin;
use crate::state::Broker;

/// How many grants or requests the kill switch reads at a time.
const PAGE: i64 = 500;
/// The most principal keys [`Broker::disabled_agent`] takes (a subject and an act chain).
const MAX_KEYS: usize = 16;

/// An agent's name, checked as a JWT role's name is (the alphabet of group names).
pub fn check_agent_name(name: &str) -> Result<(), BrokerError> {
    GroupName::parse(name).map_err(|e| {
        BrokerError::BadRequest(format!(
            "field `name`: agent `{}`: {e}",
            name.chars().take(64).collect::<String>()
        ))
    })?;
    Ok(())
}

impl Broker {
    /// The first of these principal keys (a subject and its act chain) that names a disabled
    /// agent. Keys that name no agent cost nothing; agents cost one store read.
    pub async fn disabled_agent(&self, keys: &[&str]) -> Result<Option<String>, BrokerError> {
        self.agent_cut(keys, None).await
    }

    /// As [`Broker::disabled_agent`], also naming an agent switched off at or after `issued_at`
    /// though enabled since: what a token issued then may no longer do.
    pub async fn agent_cut(
        &self,
        keys: &[&str],
        issued_at: Option<mayfly_core::Timestamp>,
    ) -> Result<Option<String>, BrokerError> {
        let names: Vec<&str> = keys.iter().filter_map(|key| agent_name(key)).collect();
        if names.is_empty() {
            return Ok(None);
        }
        if names.len() > MAX_KEYS {
            return Err(BrokerError::BadRequest(format!(
                "field `act`: at most {MAX_KEYS} principals"
            )));
        }
        let disabled = self.store().disabled_agents(&names, issued_at).await?;
        Ok(keys
            .iter()
            .find(|key| agent_name(key).is_some_and(|name| disabled.iter().any(|d| d == name)))
            .map(|key| (*key).to_owned()))
    }

    /// Admin only. At once: marks the agent disabled, revokes its sessions, revokes every grant
    /// whose principal or act chain holds it, withdraws its pending requests, refuses its
    /// pending call approvals. Audited (`agent.disabled`, then each revocation and withdrawal).
    pub async fn disable_agent(
        &self,
        meta: &Origin,
        caller: &Principal,
        name: &str,
    ) -> Result<AgentDisabled, BrokerError> {
        require_admin(caller)?;
        check_agent_name(name)?;
        let by = principal_key(caller);
        let key = format!("agent:{name}");
        let mut event = self.draft("agent.disabled", Outcome::Ok);
        event.actor = Some(by.clone());
        event.subject = Some(key.clone());
        meta.fill(&mut event);
        match self
            .commit(Write {
                change: Some(Change::DisableAgent {
                    name: name.to_owned(),
                    by: by.clone(),
                    at: self.now(),
                }),
                event,
            })
            .await?
        {
            WriteOutcome::Applied { .. } => {}
            WriteOutcome::Conflict { reason, .. } => return Err(BrokerError::Conflict(reason)),
        }
        let reason = format!("the agent `{name}` was disabled");
        let mut grants_revoked = 0;
        let mut after = String::new();
        loop {
            let page = self
                .store()
                .grants_after(GrantFilter::Live, Principals::Acting(&key), &after, PAGE)
                .await?;
            let Some(last) = page.last() else { break };
            after = last.id.clone();
            for grant in page {
                if !matches!(grant.state, GrantState::Active | GrantState::Issuing) {
                    continue;
                }
                match self.revoke_now(meta, &grant, &by, &reason).await {
                    Ok(()) => grants_revoked += 1,
                    Err(BrokerError::Conflict(_)) => {}
                    Err(error) => return Err(error),
                }
            }
        }
        let mut requests_withdrawn = 0;
        let mut after = String::new();
        loop {
            let page = self.store().open_requests_after(&after, PAGE).await?;
            let Some(last) = page.last() else { break };
            after = last.id.clone();
            for request in page {
                let concerned =
                    principal_key(&request.principal) == key || request.actors.contains(&key);
                if concerned && self.withdraw(meta, &request, &reason).await? {
                    requests_withdrawn += 1;
                }
            }
        }
        tracing::warn!(agent = %name, by = %by, grants_revoked, requests_withdrawn, "agent disabled");
        Ok(AgentDisabled {
            name: name.to_owned(),
            grants_revoked,
            requests_withdrawn,
        })
    }

    /// Admin only. Lifts the kill switch; nothing the agent had comes back (sessions, grants and
    /// approvals are asked for again). Audited (`agent.enabled`).
    pub async fn enable_agent(
        &self,
        meta: &Origin,
        caller: &Principal,
        name: &str,
    ) -> Result<(), BrokerError> {
        require_admin(caller)?;
        check_agent_name(name)?;
        let mut event = self.draft("agent.enabled", Outcome::Ok);
        event.actor = Some(principal_key(caller));
        event.subject = Some(format!("agent:{name}"));
        meta.fill(&mut event);
        match self
            .commit(Write {
                change: Some(Change::EnableAgent {
                    name: name.to_owned(),
                }),
                event,
            })
            .await?
        {
            WriteOutcome::Applied { .. } => Ok(()),
            WriteOutcome::Conflict { reason, .. } => Err(BrokerError::Conflict(reason)),
        }
    }

    /// Admin only. The agents the broker knows: its agent JWT roles, the agents seen acting by
    /// token exchange, and those disabled; by name.
    pub async fn agents(&self, caller: &Principal) -> Result<Vec<AgentInfo>, BrokerError> {
        require_admin(caller)?;
        let mut agents: Vec<AgentInfo> = self
            .store()
            .agents()
            .await?
            .into_iter()
            .map(|agent| AgentInfo {
                name: agent.name,
                disabled: agent.disabled_at.is_some(),
                disabled_at_ms: agent.disabled_at.map(|at| at.unix_ms()),
                disabled_by: agent.disabled_by,
                last_seen_at_ms: agent.last_seen_at.map(|at| at.unix_ms()),
                jwt_role: false,
            })
            .collect();
        for record in self.store().jwt_roles().await? {
            let Ok(role) = serde_json::from_value::<JwtRoleConfig>(record.config) else {
                continue;
            };
            if !role.agent {
                continue;
            }
            match agents.iter_mut().find(|agent| agent.name == record.name) {
                Some(agent) => agent.jwt_role = true,
                None => agents.push(AgentInfo {
                    name: record.name,
                    disabled: false,
                    disabled_at_ms: None,
                    disabled_by: None,
                    last_seen_at_ms: None,
                    jwt_role: true,
                }),
            }
        }
        agents.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(agents)
    }
}

fn require_admin(caller: &Principal) -> Result<(), BrokerError> {
    if caller.is_admin() {
        return Ok(());
    }
    Err(BrokerError::Forbidden(
        "this needs a member of the `admins` group".into(),
    ))
}
