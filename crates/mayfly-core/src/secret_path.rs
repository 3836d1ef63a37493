//! Where a stored secret lives: `project/environment/NAME` (e.g. `shop/prod/STRIPE_KEY`), strictly
//! validated so a path is never a traversal, never percent-encoded, and its name is usable as an
//! environment variable.
//!
//! - project and environment: `[a-z0-9][a-z0-9_-]{0,62}`;
//! - name: `[A-Za-z_][A-Za-z0-9_]{0,127}`.
//!
//! Anything else (`..`, `%2e`, a fourth segment, control characters, an empty part) is refused
//! with an error naming the part.

use std::fmt;
use std::str::FromStr;

/// The longest project or environment name.
pub const MAX_SCOPE_LEN: usize = 63;
/// The longest secret name.
pub const MAX_NAME_LEN: usize = 128;

/// Why a secret path (or one of its parts) is refused. The message names the part and never
/// repeats more than a short, printable prefix of the input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretPathError {
    #[error("`{field}` must not be empty")]
    Empty { field: &'static str },
    #[error("`{field}` is longer than {max} characters")]
    TooLong { field: &'static str, max: usize },
    #[error("`{field}` must match {pattern}")]
    Invalid {
        field: &'static str,
        pattern: &'static str,
    },
    #[error("a secret path is `project/environment/NAME`, with exactly three parts")]
    Shape,
}

impl SecretPathError {
    /// The part of the path the error is about (`project`, `environment`, `name`, `path`).
    pub fn field(&self) -> &'static str {
        match self {
            SecretPathError::Empty { field }
            | SecretPathError::TooLong { field, .. }
            | SecretPathError::Invalid { field, .. } => field,
            SecretPathError::Shape => "path",
        }
    }
}

const SCOPE_PATTERN: &str = "[a-z0-9][a-z0-9_-]{0,62}";
const NAME_PATTERN: &str = "[A-Za-z_][A-Za-z0-9_]{0,127}";

/// Checks a project or environment name (`field` names it in the error).
pub fn check_scope(field: &'static str, text: &str) -> Result<(), SecretPathError> {
    let mut bytes = text.bytes();
    let Some(first) = bytes.next() else {
        return Err(SecretPathError::Empty { field });
    };
    if text.len() > MAX_SCOPE_LEN {
        return Err(SecretPathError::TooLong {
            field,
            max: MAX_SCOPE_LEN,
        });
    }
    let ok = (first.is_ascii_lowercase() || first.is_ascii_digit())
        && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if !ok {
        return Err(SecretPathError::Invalid {
            field,
            pattern: SCOPE_PATTERN,
        });
    }
    Ok(())
}

/// Checks a secret name: usable as an environment variable.
pub fn check_name(text: &str) -> Result<(), SecretPathError> {
    let field = "name";
    let mut bytes = text.bytes();
    let Some(first) = bytes.next() else {
        return Err(SecretPathError::Empty { field });
    };
    if text.len() > MAX_NAME_LEN {
        return Err(SecretPathError::TooLong {
            field,
            max: MAX_NAME_LEN,
        });
    }
    let ok = (first.is_ascii_alphabetic() || first == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if !ok {
        return Err(SecretPathError::Invalid {
            field,
            pattern: NAME_PATTERN,
        });
    }
    Ok(())
}

/// A project and an environment: `shop/prod`, where a group of secrets lives (and the Cedar
/// `Environment` entity).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SecretScope {
    project: String,
    environment: String,
}

impl SecretScope {
    pub fn new(project: &str, environment: &str) -> Result<SecretScope, SecretPathError> {
        check_scope("project", project)?;
        check_scope("environment", environment)?;
        Ok(SecretScope {
            project: project.to_owned(),
            environment: environment.to_owned(),
        })
    }

    pub fn project(&self) -> &str {
        &self.project
    }

    pub fn environment(&self) -> &str {
        &self.environment
    }

    /// The secret `name` in this environment.
    pub fn secret(&self, name: &str) -> Result<SecretPath, SecretPathError> {
        check_name(name)?;
        Ok(SecretPath {
            project: self.project.clone(),
            environment: self.environment.clone(),
            name: name.to_owned(),
        })
    }
}

impl FromStr for SecretScope {
    type Err = SecretPathError;

    fn from_str(text: &str) -> Result<SecretScope, SecretPathError> {
        let mut parts = text.split('/');
        match (parts.next(), parts.next(), parts.next()) {
            (Some(project), Some(environment), None) => SecretScope::new(project, environment),
            _ => Err(SecretPathError::Invalid {
                field: "environment",
                pattern: "`project/environment`",
            }),
        }
    }
}

impl fmt::Display for SecretScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.project, self.environment)
    }
}

/// `project/environment/NAME`: the address of a versioned secret.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SecretPath {
    pub project: String,
    pub environment: String,
    pub name: String,
}

impl SecretPath {
    /// Checks each part; the error names the first bad one.
    pub fn new(
        project: &str,
        environment: &str,
        name: &str,
    ) -> Result<SecretPath, SecretPathError> {
        SecretScope::new(project, environment)?.secret(name)
    }

    pub fn project(&self) -> &str {
        &self.project
    }

    pub fn environment(&self) -> &str {
        &self.environment
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The environment the secret is in.
    pub fn scope(&self) -> SecretScope {
        SecretScope {
            project: self.project.clone(),
            environment: self.environment.clone(),
        }
    }
}

impl FromStr for SecretPath {
    type Err = SecretPathError;

    fn from_str(text: &str) -> Result<SecretPath, SecretPathError> {
        let mut parts = text.split('/');
        match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some(project), Some(environment), Some(name), None) => {
                SecretPath::new(project, environment, name)
            }
            _ => Err(SecretPathError::Shape),
        }
    }
}

impl fmt::Display for SecretPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.project, self.environment, self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn check(input: &str, expect: Result<(&str, &str, &str), &str>) {
        let got = input.parse::<SecretPath>();
        match (got, expect) {
            (Ok(path), Ok((p, e, n))) => {
                assert_eq!((path.project(), path.environment(), path.name()), (p, e, n));
                assert_eq!(path.to_string(), input);
            }
            (Err(error), Err(field)) => assert_eq!(error.field(), field, "{input:?}: {error}"),
            (got, expect) => panic!("{input:?}: got {got:?}, expected {expect:?}"),
        }
    }

    #[test]
    fn paths() {
        check("shop/prod/STRIPE_KEY", Ok(("shop", "prod", "STRIPE_KEY")));
        check("a/b/_x9", Ok(("a", "b", "_x9")));
        check("0-shop/dev_1/a", Ok(("0-shop", "dev_1", "a")));
        check("shop/prod", Err("path"));
        check("a/b/c/d", Err("path"));
        check("../prod/X", Err("project"));
        check("shop/../X", Err("environment"));
        check("shop/prod/..", Err("name"));
        check("%2e%2e/prod/X", Err("project"));
        check("shop/prod/%2e", Err("name"));
        check("Shop/prod/X", Err("project"));
        check("-shop/prod/X", Err("project"));
        check("shop/prod/9X", Err("name"));
        check("shop/prod/X-Y", Err("name"));
        check("shop/prod/X\n", Err("name"));
        check("shop/pr\0d/X", Err("environment"));
        check("/prod/X", Err("project"));
        check("shop//X", Err("environment"));
        check("shop/prod/", Err("name"));
        check("shop/prod/ÉTÉ", Err("name"));
        let long = "A".repeat(MAX_NAME_LEN + 1);
        check(&format!("shop/prod/{long}"), Err("name"));
        let ok = "A".repeat(MAX_NAME_LEN);
        check(
            &format!("shop/prod/{ok}"),
            Ok(("shop", "prod", ok.as_str())),
        );
        let long = "a".repeat(MAX_SCOPE_LEN + 1);
        check(&format!("{long}/prod/X"), Err("project"));
        let ok = "a".repeat(MAX_SCOPE_LEN);
        check(&format!("{ok}/prod/X"), Ok((ok.as_str(), "prod", "X")));
    }

    #[test]
    fn scopes() {
        let scope: SecretScope = "shop/prod".parse().unwrap();
        assert_eq!(scope.to_string(), "shop/prod");
        assert!("shop".parse::<SecretScope>().is_err());
        assert!("shop/prod/X".parse::<SecretScope>().is_err());
        assert!("shop/PROD".parse::<SecretScope>().is_err());
        assert_eq!(scope.secret("X").unwrap().to_string(), "shop/prod/X");
    }
}
