//! What the CLI prints and how it ends: answers on stdout (text, `--json`, or one `--field`),
//! status and errors on stderr (an `{"error":{"code","message"}}` object with `--json`), and the
//! exit codes `mayfly --help` documents.

use std::process::ExitCode;

use mayfly_api::{ErrorBody, ErrorDetail};
use serde::Serialize;

use crate::client::ApiFailure;

/// The exit codes (docs/cli.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Ok = 0,
    Error = 1,
    Usage = 2,
    /// Denied or expired: a policy or an approver refused, or the request or grant expired.
    Refused = 3,
    /// The audit log was tampered with.
    Tampered = 4,
}

impl From<Exit> for ExitCode {
    fn from(exit: Exit) -> ExitCode {
        ExitCode::from(exit as u8)
    }
}

/// Errors the CLI itself decides on, each with its exit code.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// A missing or malformed argument that clap could not catch.
    #[error("{0}")]
    Usage(String),
    /// The request was denied or expired (`code` says which).
    #[error("{message}")]
    Refused { code: &'static str, message: String },
    /// Waiting for approval took longer than `--timeout`.
    #[error("{0}")]
    Timeout(String),
    /// `--field` names nothing in the answer.
    #[error("{0}")]
    NoField(String),
}

/// How answers are printed, from the global flags.
#[derive(Debug, Clone, Default)]
pub struct Output {
    pub json: bool,
    pub field: Option<String>,
}

impl Output {
    /// Prints an answer on stdout: one field of it (`--field`), JSON (`--json`), or text by `text`.
    pub fn answer<T: Serialize>(&self, value: &T, text: impl FnOnce(&T)) -> anyhow::Result<()> {
        if let Some(field) = &self.field {
            let value = serde_json::to_value(value)?;
            return print_field(&value, field, self.json);
        }
        if self.json {
            return print_json(value);
        }
        text(value);
        Ok(())
    }

    /// An answer that is only a confirmation: `value` as JSON or a field, else `message`.
    pub fn done(&self, value: serde_json::Value, message: &str) -> anyhow::Result<()> {
        self.answer(&value, |_| println!("{message}"))
    }

    /// Refuses `--field` where the output is a stream, not one answer.
    pub fn no_field(&self, command: &str) -> anyhow::Result<()> {
        match &self.field {
            Some(_) => Err(Failure::Usage(format!(
                "--field does not apply to `{command}`: it prints a stream, not one answer"
            ))
            .into()),
            None => Ok(()),
        }
    }

    /// A line of progress for people, on stderr (one JSON object per line with `--json`), never
    /// on stdout, which is the answer's or the command's.
    pub fn status(&self, value: serde_json::Value, text: &str) {
        if self.json {
            eprintln!("{value}");
        } else {
            eprintln!("{text}");
        }
    }
}

/// The child's exit code as ours; 130 (as after Ctrl-C) when it was stopped.
pub(crate) fn child_exit_code(status: Option<std::process::ExitStatus>) -> ExitCode {
    match status.and_then(|s| s.code()) {
        Some(0) => ExitCode::SUCCESS,
        Some(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        None => ExitCode::from(130),
    }
}

pub fn print_json(value: &impl Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// Prints `path` (`a.b`, `0.id`) of `value`: strings as they are (as JSON with `json`), other
/// values as JSON, null as an empty line.
fn print_field(value: &serde_json::Value, path: &str, json: bool) -> anyhow::Result<()> {
    let mut at = value;
    for part in path.split('.') {
        let next = match at {
            serde_json::Value::Object(map) => map.get(part),
            serde_json::Value::Array(items) => {
                part.parse::<usize>().ok().and_then(|i| items.get(i))
            }
            _ => None,
        };
        let Some(next) = next else {
            let known = match at {
                serde_json::Value::Object(map) => {
                    let keys: Vec<&str> = map.keys().map(String::as_str).collect();
                    format!(" (it has: {})", keys.join(", "))
                }
                serde_json::Value::Array(items) => {
                    format!(" (it is a list of {}: use an index)", items.len())
                }
                _ => String::new(),
            };
            return Err(
                Failure::NoField(format!("the answer has no field `{path}`{known}")).into(),
            );
        };
        at = next;
    }
    match at {
        serde_json::Value::String(text) if !json => println!("{text}"),
        serde_json::Value::Null if !json => println!(),
        other => println!("{other}"),
    }
    Ok(())
}

/// The exit code and the `{"error": …}` body for an error.
pub fn classify(error: &anyhow::Error) -> (Exit, ErrorDetail) {
    let message = format!("{error:#}");
    for cause in error.chain() {
        if let Some(failure) = cause.downcast_ref::<ApiFailure>() {
            let refused = failure.status.as_u16() == 403
                || failure.code == "step_up_required"
                || (failure.status.as_u16() == 409 && failure.message.contains("expired"));
            let exit = if refused { Exit::Refused } else { Exit::Error };
            return (exit, detail(&failure.code, &failure.message));
        }
        if let Some(failure) = cause.downcast_ref::<Failure>() {
            return match failure {
                Failure::Usage(_) => (Exit::Usage, detail("usage", &message)),
                Failure::Refused { code, .. } => (Exit::Refused, detail(code, &message)),
                Failure::Timeout(_) => (Exit::Error, detail("timeout", &message)),
                Failure::NoField(_) => (Exit::Error, detail("no_field", &message)),
            };
        }
        if cause.downcast_ref::<crate::client::Unreachable>().is_some() {
            return (Exit::Error, detail("unreachable", &message));
        }
    }
    (Exit::Error, detail("error", &message))
}

fn detail(code: &str, message: &str) -> ErrorDetail {
    ErrorDetail {
        code: code.to_owned(),
        message: message.to_owned(),
    }
}

/// Prints an error on stderr, as text with its hint or as JSON, and returns its exit code.
pub fn report(error: &anyhow::Error, json: bool) -> ExitCode {
    let (exit, detail) = classify(error);
    if json {
        let body = ErrorBody { error: detail };
        match serde_json::to_string(&body) {
            Ok(text) => eprintln!("{text}"),
            Err(_) => eprintln!("error: {error:#}"),
        }
    } else {
        eprintln!("error: {error:#}");
    }
    exit.into()
}

/// A usage error from clap: its own text (or a JSON error with `--json`), exit 2; help and
/// version go to stdout with 0.
pub fn report_usage(error: &clap::Error, json: bool) -> ExitCode {
    use clap::error::ErrorKind;
    let shows_help = matches!(
        error.kind(),
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion
    );
    if json && !shows_help {
        let text = error.render().to_string();
        // What went wrong: the lines before clap's `Usage:`, on one line.
        let message = text
            .lines()
            .take_while(|line| !line.starts_with("Usage:"))
            .map(str::trim)
            .filter(|line| !line.is_empty())
            .collect::<Vec<_>>()
            .join(" ");
        let message = message.trim_start_matches("error: ").to_owned();
        let body = ErrorBody {
            error: detail("usage", &message),
        };
        if let Ok(text) = serde_json::to_string(&body) {
            eprintln!("{text}");
            return Exit::Usage.into();
        }
    }
    let _ = error.print();
    if shows_help {
        Exit::Ok.into()
    } else {
        Exit::Usage.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_map_to_their_exit_codes() {
        let api = |status: u16, code: &str, message: &str| -> anyhow::Error {
            ApiFailure {
                status: reqwest::StatusCode::from_u16(status).unwrap(),
                code: code.into(),
                message: message.into(),
            }
            .into()
        };
        let forbidden = classify(&api(403, "forbidden", "not an approver"));
        assert_eq!(forbidden.0, Exit::Refused);
        assert_eq!(forbidden.1.code, "forbidden");
        assert_eq!(forbidden.1.message, "not an approver");
        let expired = classify(&api(
            409,
            "conflict",
            "the grant has expired; request access again",
        ));
        assert_eq!(expired.0, Exit::Refused);
        assert_eq!(
            classify(&api(409, "conflict", "the grant is already revoked")).0,
            Exit::Error
        );
        assert_eq!(classify(&api(404, "not_found", "no grant")).0, Exit::Error);
        let usage = classify(&Failure::Usage("give --ttl".into()).into());
        assert_eq!((usage.0, usage.1.code.as_str()), (Exit::Usage, "usage"));
        let denied = classify(
            &anyhow::Error::from(Failure::Refused {
                code: "denied",
                message: "no policy permits it".into(),
            })
            .context("exec"),
        );
        assert_eq!(
            (denied.0, denied.1.code.as_str()),
            (Exit::Refused, "denied")
        );
        assert_eq!(classify(&anyhow::anyhow!("disk full")).0, Exit::Error);
    }
}
