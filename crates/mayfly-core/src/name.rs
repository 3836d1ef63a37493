//! Validated names: user names and group names. Anything that reaches the store or a log as a
//! name has passed through here.

use std::fmt;

/// Why a name was refused. The message names the rule that was broken, never the whole input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("must not be empty")]
    Empty,
    #[error("must be at most {max} characters")]
    TooLong { max: usize },
    #[error(
        "may contain only lowercase letters, digits, `_`, `-` and `.`, and must start with a letter"
    )]
    BadCharacter,
}

const MAX_NAME_LEN: usize = 64;

fn check(input: &str) -> Result<(), NameError> {
    if input.is_empty() {
        return Err(NameError::Empty);
    }
    if input.len() > MAX_NAME_LEN {
        return Err(NameError::TooLong { max: MAX_NAME_LEN });
    }
    let mut chars = input.chars();
    let starts_with_letter = chars.next().is_some_and(|c| c.is_ascii_lowercase());
    let rest_ok = chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "_-.".contains(c));
    if !starts_with_letter || !rest_ok {
        return Err(NameError::BadCharacter);
    }
    Ok(())
}

/// A local user's login name: `[a-z][a-z0-9_.-]{0,63}`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Username(String);

impl Username {
    pub fn parse(input: &str) -> Result<Username, NameError> {
        check(input)?;
        Ok(Username(input.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Username {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A group of users, same alphabet as [`Username`]. The group `admins` may administer the broker.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GroupName(String);

impl GroupName {
    pub const ADMINS: &'static str = "admins";

    pub fn parse(input: &str) -> Result<GroupName, NameError> {
        check(input)?;
        Ok(GroupName(input.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for GroupName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn check_case(input: &str, expect: Result<(), NameError>) {
        assert_eq!(
            Username::parse(input).map(|_| ()),
            expect,
            "input {input:?}"
        );
    }

    #[test]
    fn usernames() {
        check_case("alice", Ok(()));
        check_case("a.b-c_9", Ok(()));
        check_case("", Err(NameError::Empty));
        check_case("Alice", Err(NameError::BadCharacter));
        check_case("9lives", Err(NameError::BadCharacter));
        check_case("bob'; DROP TABLE users; --", Err(NameError::BadCharacter));
        check_case("a b", Err(NameError::BadCharacter));
        check_case("ålice", Err(NameError::BadCharacter));
        check_case(&"a".repeat(65), Err(NameError::TooLong { max: 64 }));
        check_case(&"a".repeat(64), Ok(()));
    }
}
