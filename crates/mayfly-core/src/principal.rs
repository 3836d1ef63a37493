//! Principals: who asks. A `User` logs in with a password and TOTP; a `Workload` logs in with a
//! signed JWT from its platform and has no stored secret at all.

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
}

impl Principal {
    pub fn kind(&self) -> &'static str {
        match self {
            Principal::User { .. } => "user",
            Principal::Workload { .. } => "workload",
        }
    }

    pub fn name(&self) -> &str {
        match self {
            Principal::User { name, .. } => name,
            Principal::Workload { name, .. } => name,
        }
    }

    pub fn is_admin(&self) -> bool {
        match self {
            Principal::User { groups, .. } => groups.iter().any(|g| g == crate::GroupName::ADMINS),
            Principal::Workload { .. } => false,
        }
    }
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Principal::User { name, .. } => write!(f, "user:{name}"),
            Principal::Workload { role, name } => write!(f, "workload:{role}:{name}"),
        }
    }
}
