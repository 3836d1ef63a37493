//! Principals: who asks. A `User` logs in with a password and TOTP; a `Workload` logs in with a
//! signed JWT from its platform and has no stored secret at all; an `Agent` (an AI agent) logs in
//! as a workload does, through a JWT role marked as an agent's, or acts for a user by token
//! exchange (the user is then the principal and the agent is in the act chain).
//!
//! A principal's key (its `Display`) is what requests, grants and the audit log record:
//! `user:NAME`, `workload:ROLE:NAME`, `agent:NAME`. An **act chain** is a list of keys, nearest
//! actor first (`act.sub`, then `act.act.sub`, …), at most [`MAX_ACT_CHAIN`] long.

use std::fmt;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Principal {
    User {
        id: String,
        name: String,
        groups: Vec<String>,
    },
    /// `role` is the JWT login role that matched; `name` is the claim value that identifies the
    /// workload (for example `repo:acme/app:ref:refs/heads/main`).
    Workload { role: String, name: String },
    /// An AI agent. `name` is the name of the JWT role it logs in through (an agent role), so
    /// one agent is one key, `agent:NAME`, whichever of its instances logs in.
    Agent { name: String },
}

/// The longest act chain accepted (a token whose `act` nests deeper is refused).
pub const MAX_ACT_CHAIN: usize = 8;

/// The agent's name if `key` is an agent's principal key (`agent:NAME`).
pub fn agent_name(key: &str) -> Option<&str> {
    key.strip_prefix("agent:").filter(|name| !name.is_empty())
}

impl Principal {
    pub fn kind(&self) -> &'static str {
        match self {
            Principal::User { .. } => "user",
            Principal::Workload { .. } => "workload",
            Principal::Agent { .. } => "agent",
        }
    }

    pub fn name(&self) -> &str {
        match self {
            Principal::User { name, .. } => name,
            Principal::Workload { name, .. } => name,
            Principal::Agent { name } => name,
        }
    }

    pub fn is_admin(&self) -> bool {
        match self {
            Principal::User { groups, .. } => groups.iter().any(|g| g == crate::GroupName::ADMINS),
            Principal::Workload { .. } | Principal::Agent { .. } => false,
        }
    }
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Principal::User { name, .. } => write!(f, "user:{name}"),
            Principal::Workload { role, name } => write!(f, "workload:{role}:{name}"),
            Principal::Agent { name } => write!(f, "agent:{name}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_agent_names() {
        let agent = Principal::Agent {
            name: "claude".into(),
        };
        assert_eq!(agent.to_string(), "agent:claude");
        assert_eq!(agent.kind(), "agent");
        assert!(!agent.is_admin());
        assert_eq!(agent_name("agent:claude"), Some("claude"));
        assert_eq!(agent_name("agent:"), None);
        assert_eq!(agent_name("user:agent"), None);
        assert_eq!(agent_name("workload:agent:x"), None);
    }
}
