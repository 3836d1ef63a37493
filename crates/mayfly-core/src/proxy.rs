//! The secure proxy's vocabulary: route names and credential injections. A route forwards calls
//! to one upstream and injects credentials the caller never sees; each injection is written as
//! text and parsed here, once, when the route is stored:
//!
//! - `header:NAME=VALUE`: the request header `NAME` set to `VALUE`
//!   (`header:Authorization=Bearer {{secret:shop/prod/STRIPE_KEY}}`);
//! - `basic:USER=PASSWORD`: `Authorization: Basic base64(USER:PASSWORD)`
//!   (`basic:api={{secret:shop/prod/MAILGUN_KEY}}`);
//! - `query:NAME=VALUE`: the query parameter `NAME` set to `VALUE`
//!   (`query:api_key={{secret:shop/prod/MAPS_KEY}}`).
//!
//! A value is text with `{{secret:PROJECT/ENV/NAME}}` references to the secret store; each
//! injection names at least one secret (in `basic:`, in the password).

use std::fmt;
use std::str::FromStr;

use crate::secret_path::SecretPath;

/// Why a route name or an injection was refused. The message names the rule, never a secret
/// (an injection holds secret *paths*, never values).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProxyError {
    #[error(
        "a route name is 1 to 63 characters `a-z`, `0-9` and `-`, starting with a letter or digit"
    )]
    BadRouteName,
    #[error("an injection is `header:NAME=VALUE`, `basic:USER=PASSWORD` or `query:NAME=VALUE`")]
    BadInjection,
    #[error("`{0}` is not a header name this proxy may set")]
    BadHeader(String),
    #[error("a query parameter name is 1 to 128 characters `A-Za-z0-9_.-[]`")]
    BadQueryName,
    #[error("a value holds no control characters and at most 4096 bytes")]
    BadValue,
    #[error("a secret reference is `{{{{secret:PROJECT/ENV/NAME}}}}`: {0}")]
    BadSecretRef(String),
    #[error("the injection names no secret: write `{{{{secret:PROJECT/ENV/NAME}}}}` in its value")]
    NoSecret,
}

/// A route's name: `[a-z0-9][a-z0-9-]{0,62}`. It is also the resource `ProxyRoute::"<name>"` and
/// the `aud` of a token exchanged for the route.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RouteName(String);

impl RouteName {
    pub fn parse(input: &str) -> Result<RouteName, ProxyError> {
        let mut chars = input.chars();
        let first = chars
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
        let rest = chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if !first || !rest || input.len() > 63 {
            return Err(ProxyError::BadRouteName);
        }
        Ok(RouteName(input.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RouteName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One piece of a value: text as written, or a reference to a secret by its path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Part {
    Text(String),
    Secret(String),
}

/// A value with secret references, parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Template {
    pub parts: Vec<Part>,
}

impl Template {
    pub fn parse(text: &str) -> Result<Template, ProxyError> {
        if text.len() > 4096 || text.chars().any(char::is_control) {
            return Err(ProxyError::BadValue);
        }
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(start) = rest.find("{{") {
            let (before, after) = rest.split_at(start);
            if !before.is_empty() {
                parts.push(Part::Text(before.to_owned()));
            }
            let inner = after.get(2..).unwrap_or_default();
            let Some(end) = inner.find("}}") else {
                return Err(ProxyError::BadSecretRef("`{{` is not closed".into()));
            };
            let (reference, tail) = inner.split_at(end);
            let Some(path) = reference.strip_prefix("secret:") else {
                return Err(ProxyError::BadSecretRef(
                    "only `secret:` references are known".into(),
                ));
            };
            check_secret_path(path)?;
            parts.push(Part::Secret(path.to_owned()));
            rest = tail.get(2..).unwrap_or_default();
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_owned()));
        }
        Ok(Template { parts })
    }

    /// The secret paths this value names, in order.
    pub fn secrets(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|part| match part {
            Part::Secret(path) => Some(path.as_str()),
            Part::Text(_) => None,
        })
    }
}

impl fmt::Display for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for part in &self.parts {
            match part {
                Part::Text(text) => f.write_str(text)?,
                Part::Secret(path) => write!(f, "{{{{secret:{path}}}}}")?,
            }
        }
        Ok(())
    }
}

/// A secret's path in the secret store: `PROJECT/ENV/NAME` as [`SecretPath`] parses it.
fn check_secret_path(path: &str) -> Result<(), ProxyError> {
    SecretPath::from_str(path)
        .map(|_| ())
        .map_err(|e| ProxyError::BadSecretRef(e.to_string()))
}

/// How a credential is put into a forwarded call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Injection {
    Header { name: String, value: Template },
    Basic { user: Template, password: Template },
    Query { name: String, value: Template },
}

/// Request headers an injection may not set: those of the connection, the body's framing, and
/// the host, which the proxy owns.
const RESERVED_HEADERS: &[&str] = &[
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
    "content-encoding",
    "accept-encoding",
];

impl Injection {
    pub fn parse(text: &str) -> Result<Injection, ProxyError> {
        let Some((kind, rest)) = text.split_once(':') else {
            return Err(ProxyError::BadInjection);
        };
        let Some((name, value)) = rest.split_once('=') else {
            return Err(ProxyError::BadInjection);
        };
        let injection = match kind {
            "header" => {
                let token = !name.is_empty()
                    && name.len() <= 128
                    && name
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c));
                let lower = name.to_ascii_lowercase();
                if !token || RESERVED_HEADERS.contains(&lower.as_str()) {
                    return Err(ProxyError::BadHeader(name.chars().take(64).collect()));
                }
                Injection::Header {
                    name: name.to_owned(),
                    value: Template::parse(value)?,
                }
            }
            "basic" => {
                let user = Template::parse(name)?;
                if name.contains(':') && user.secrets().next().is_none() {
                    // RFC 7617: the user id cannot hold a colon.
                    return Err(ProxyError::BadValue);
                }
                let password = Template::parse(value)?;
                if password.secrets().next().is_none() {
                    return Err(ProxyError::NoSecret);
                }
                Injection::Basic { user, password }
            }
            "query" => {
                let ok = !name.is_empty()
                    && name.len() <= 128
                    && name
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "_.-[]".contains(c));
                if !ok {
                    return Err(ProxyError::BadQueryName);
                }
                Injection::Query {
                    name: name.to_owned(),
                    value: Template::parse(value)?,
                }
            }
            _ => return Err(ProxyError::BadInjection),
        };
        if injection.secrets().next().is_none() {
            return Err(ProxyError::NoSecret);
        }
        Ok(injection)
    }

    /// The secret paths this injection reads.
    pub fn secrets(&self) -> Box<dyn Iterator<Item = &str> + '_> {
        match self {
            Injection::Header { value, .. } | Injection::Query { value, .. } => {
                Box::new(value.secrets())
            }
            Injection::Basic { user, password } => {
                Box::new(user.secrets().chain(password.secrets()))
            }
        }
    }
}

impl fmt::Display for Injection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Injection::Header { name, value } => write!(f, "header:{name}={value}"),
            Injection::Basic { user, password } => write!(f, "basic:{user}={password}"),
            Injection::Query { name, value } => write!(f, "query:{name}={value}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn check_name(input: &str, ok: bool) {
        assert_eq!(RouteName::parse(input).is_ok(), ok, "{input}");
    }

    #[test]
    fn route_names() {
        check_name("stripe", true);
        check_name("0api-2", true);
        check_name(&"a".repeat(63), true);
        check_name(&"a".repeat(64), false);
        check_name("", false);
        check_name("-stripe", false);
        check_name("Stripe", false);
        check_name("..", false);
        check_name("a/b", false);
        check_name("a%2e", false);
        check_name("strípe", false);
    }

    #[track_caller]
    fn check(input: &str, expect: Result<&str, ProxyError>) {
        let parsed = Injection::parse(input).map(|i| i.to_string());
        assert_eq!(parsed.as_deref().map_err(Clone::clone), expect, "{input}");
    }

    #[test]
    fn injections() {
        let bearer = "header:Authorization=Bearer {{secret:shop/prod/STRIPE_KEY}}";
        check(bearer, Ok(bearer));
        let basic = "basic:api={{secret:shop/prod/MAILGUN}}";
        check(basic, Ok(basic));
        let both = "basic:{{secret:a/b/USER}}={{secret:a/b/PASS}}";
        check(both, Ok(both));
        let query = "query:api_key={{secret:maps/prod/KEY}}";
        check(query, Ok(query));
        check("header:X-Api-Key=static", Err(ProxyError::NoSecret));
        check(
            "basic:{{secret:a/b/USER}}=static",
            Err(ProxyError::NoSecret),
        );
        check("cookie:a={{secret:a/b/c}}", Err(ProxyError::BadInjection));
        check("header:Authorization", Err(ProxyError::BadInjection));
        check(
            "header:Host={{secret:a/b/c}}",
            Err(ProxyError::BadHeader("Host".into())),
        );
        check(
            "header:Bad Name={{secret:a/b/c}}",
            Err(ProxyError::BadHeader("Bad Name".into())),
        );
        check(
            "header:X=a\r\nEvil: 1{{secret:a/b/c}}",
            Err(ProxyError::BadValue),
        );
        check("query:a&b={{secret:a/b/c}}", Err(ProxyError::BadQueryName));
        check("basic:us:er={{secret:a/b/c}}", Err(ProxyError::BadValue));
        for path in ["a/b", "a/b/c/d", "a/../c", "a//c", "a/b/c d", "a/./c"] {
            let input = format!("header:X={{{{secret:{path}}}}}");
            assert!(
                matches!(Injection::parse(&input), Err(ProxyError::BadSecretRef(_))),
                "{input}"
            );
        }
        assert!(matches!(
            Injection::parse("header:X={{vault:a/b/c}}"),
            Err(ProxyError::BadSecretRef(_))
        ));
        assert!(matches!(
            Injection::parse("header:X={{secret:a/b/c"),
            Err(ProxyError::BadSecretRef(_))
        ));
        let parsed = Injection::parse("header:X=k={{secret:a/b/c}};{{secret:a/b/d}}").unwrap();
        assert_eq!(parsed.secrets().collect::<Vec<_>>(), ["a/b/c", "a/b/d"]);
    }
}
