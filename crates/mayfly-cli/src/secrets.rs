//! `mayfly secrets …` (the secret store) and `mayfly exec --env`. A value never comes from the
//! command line (which `ps` shows) and is never printed except by `secrets get`, on stdout.

use std::io::{IsTerminal, Read};
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, anyhow};
use mayfly_api::*;
use mayfly_core::secret_path::check_name;
use mayfly_core::{SecretPath, SecretScope};
use mayfly_crypto::{ExposeSecret, SecretString};
use reqwest::Method;

use crate::access::none;
use crate::client::Client;
use crate::grammar::SecretsCommand;
use crate::output::{Failure, Output};

/// The largest value the broker takes.
const MAX_VALUE_BYTES: usize = 64 * 1024;

fn secret_path(text: &str) -> anyhow::Result<SecretPath> {
    text.parse::<SecretPath>()
        .map_err(|e| Failure::Usage(format!("`{}`: {e}", printable(text))).into())
}

fn scope(text: &str) -> anyhow::Result<SecretScope> {
    text.parse::<SecretScope>().map_err(|e| {
        Failure::Usage(format!("`{}`: {e} (give PROJECT/ENV)", printable(text))).into()
    })
}

/// At most 80 characters of `text`, control characters escaped: for echoing input in an error.
fn printable(text: &str) -> String {
    text.chars().take(80).flat_map(char::escape_debug).collect()
}

fn url(path: &SecretPath) -> String {
    format!("/v1/secrets/{path}")
}

fn version_query(version: Option<i64>) -> String {
    version.map_or_else(String::new, |v| format!("?version={v}"))
}

/// A value from a file (as it is) or from stdin (asked for, hidden, on a terminal; otherwise all
/// of it, less one final line break).
fn read_value(from_file: Option<&Path>) -> anyhow::Result<SecretString> {
    let text = match from_file {
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("cannot read `{}` as UTF-8 text", path.display()))?,
        None if std::io::stdin().is_terminal() => {
            rpassword::prompt_password("Value: ").context("cannot read from the terminal")?
        }
        None => {
            let mut text = String::new();
            std::io::stdin()
                .lock()
                .take(u64::try_from(MAX_VALUE_BYTES).unwrap_or(u64::MAX) + 2)
                .read_to_string(&mut text)
                .context("cannot read the value from stdin (UTF-8 text)")?;
            if text.ends_with('\n') {
                text.pop();
                if text.ends_with('\r') {
                    text.pop();
                }
            }
            text
        }
    };
    if text.len() > MAX_VALUE_BYTES {
        return Err(
            Failure::Usage(format!("the value is longer than {MAX_VALUE_BYTES} bytes")).into(),
        );
    }
    Ok(SecretString::from(text))
}

/// Refuses a name `mayfly exec --env` would not set (see [`steers_programs`]): stored, it would
/// make every `exec` of its environment fail, so it is refused when written instead.
fn exec_safe(name: &str) -> anyhow::Result<()> {
    if steers_programs(name) {
        return Err(anyhow!(
            "`{name}` is not a name for a secret: a variable of that name changes which code a \
             program loads or runs, so `mayfly exec --env` refuses an environment that holds it. \
             Choose another name (say `APP_{name}`)."
        ));
    }
    Ok(())
}

async fn put(
    client: &Client,
    path: &SecretPath,
    value: &SecretString,
    cas: Option<i64>,
) -> anyhow::Result<SecretWritten> {
    exec_safe(path.name())?;
    let body = SecretPut {
        value: value.expose_secret().to_owned(),
        cas,
    };
    client.call(Method::PUT, &url(path), Some(&body)).await
}

pub async fn secrets(client: &Client, command: SecretsCommand, out: &Output) -> anyhow::Result<()> {
    match command {
        SecretsCommand::Put {
            path,
            from_file,
            cas,
        } => {
            let path = secret_path(&path)?;
            let value = read_value(from_file.as_deref())?;
            let written = put(client, &path, &value, cas).await?;
            out.answer(&written, |w| println!("{} version {}", w.path, w.version))
        }
        SecretsCommand::Get { path, version } => {
            let path = secret_path(&path)?;
            let secret: SecretValue = client
                .call(
                    Method::GET,
                    &format!("{}{}", url(&path), version_query(version)),
                    none(),
                )
                .await?;
            out.answer(&secret, |s| println!("{}", s.value))
        }
        SecretsCommand::Ls { environment } => {
            let scope = scope(&environment)?;
            let list: SecretList = client
                .call(Method::GET, &format!("/v1/secrets/{scope}"), none())
                .await?;
            out.answer(&list, |list| {
                for s in &list.secrets {
                    println!("{:<40} v{:<5} {}", s.name, s.version, age(s.age_secs));
                }
            })
        }
        SecretsCommand::History { path } => {
            let path = secret_path(&path)?;
            let history: SecretHistory = client
                .call(Method::GET, &format!("{}/history", url(&path)), none())
                .await?;
            out.answer(&history, |h| {
                for v in &h.versions {
                    let state = if v.destroyed_at_ms.is_some() {
                        "destroyed"
                    } else if v.deleted_at_ms.is_some() {
                        "deleted"
                    } else {
                        "live"
                    };
                    println!(
                        "v{:<5} {:<10} {}  by {}",
                        v.version,
                        state,
                        time_text(v.created_at_ms),
                        v.created_by
                    );
                }
            })
        }
        SecretsCommand::Rm { path, version } => {
            let path = secret_path(&path)?;
            let changed: SecretVersionsChanged = client
                .call(
                    Method::DELETE,
                    &format!("{}{}", url(&path), version_query(version)),
                    none(),
                )
                .await?;
            out.answer(&changed, |c| {
                println!("{} version {} deleted", c.path, join(&c.versions));
            })
        }
        SecretsCommand::Undelete { path, version } => {
            let path = secret_path(&path)?;
            let changed: SecretVersionsChanged = client
                .call(
                    Method::POST,
                    &format!("{}/undelete{}", url(&path), version_query(version)),
                    none(),
                )
                .await?;
            out.answer(&changed, |c| {
                println!("{} version {} restored", c.path, join(&c.versions));
            })
        }
        SecretsCommand::Destroy { path, versions } => {
            let path = secret_path(&path)?;
            let body = SecretDestroy { versions };
            let changed: SecretVersionsChanged = client
                .call(
                    Method::POST,
                    &format!("{}/destroy", url(&path)),
                    Some(&body),
                )
                .await?;
            out.answer(&changed, |c| {
                println!("{} version {} destroyed", c.path, join(&c.versions));
            })
        }
        SecretsCommand::Import { file, environment } => {
            import(client, &file, &environment, out).await
        }
    }
}

fn join(versions: &[i64]) -> String {
    versions
        .iter()
        .map(i64::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

fn age(secs: i64) -> String {
    match secs {
        s if s < 120 => format!("{s}s ago"),
        s if s < 7200 => format!("{}m ago", s / 60),
        s if s < 172_800 => format!("{}h ago", s / 3600),
        s => format!("{}d ago", s / 86400),
    }
}

fn time_text(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(ms / 1000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| ms.to_string())
}

/// One `KEY=VALUE` of a dotenv file and the line it is on.
struct Entry {
    line: usize,
    name: String,
    value: SecretString,
}

/// Parses a dotenv file: `KEY=VALUE` lines, an optional `export ` before the key, blank lines
/// and `#` comments; a value in double quotes (with `\n`, `\t`, `\"`, `\\`), in single quotes
/// (as it is), or bare (up to a ` #` comment, trimmed). Each key must be a secret name and appear
/// once. An error names the line, never the value.
fn parse_dotenv(text: &str) -> anyhow::Result<Vec<Entry>> {
    let mut entries: Vec<Entry> = Vec::new();
    for (index, raw) in text.lines().enumerate() {
        let line = index + 1;
        let trimmed = raw.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let body = trimmed.strip_prefix("export ").unwrap_or(trimmed);
        let Some((key, rest)) = body.split_once('=') else {
            return Err(Failure::Usage(format!("line {line}: expected `KEY=VALUE`")).into());
        };
        let key = key.trim();
        check_name(key).map_err(|e| {
            Failure::Usage(format!(
                "line {line}: the key `{}` is not a secret name: {e}",
                printable(key)
            ))
        })?;
        if let Some(first) = entries.iter().find(|e| e.name == key) {
            return Err(Failure::Usage(format!(
                "line {line}: `{key}` is set again (first on line {})",
                first.line
            ))
            .into());
        }
        let value = parse_value(rest.trim_start())
            .map_err(|problem| Failure::Usage(format!("line {line} (`{key}`): {problem}")))?;
        if value.len() > MAX_VALUE_BYTES {
            return Err(Failure::Usage(format!(
                "line {line} (`{key}`): the value is longer than {MAX_VALUE_BYTES} bytes"
            ))
            .into());
        }
        entries.push(Entry {
            line,
            name: key.to_owned(),
            value: SecretString::from(value),
        });
    }
    Ok(entries)
}

/// Whether what follows a closing quote is nothing or a comment.
fn only_comment(rest: &str) -> bool {
    let rest = rest.trim();
    rest.is_empty() || rest.starts_with('#')
}

fn parse_value(text: &str) -> Result<String, &'static str> {
    if let Some(inner) = text.strip_prefix('"') {
        let mut value = String::new();
        let mut chars = inner.char_indices();
        while let Some((at, c)) = chars.next() {
            match c {
                '"' => {
                    return if only_comment(inner.get(at + 1..).unwrap_or("")) {
                        Ok(value)
                    } else {
                        Err("unexpected text after the closing quote")
                    };
                }
                '\\' => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, 't')) => value.push('\t'),
                    Some((_, 'r')) => value.push('\r'),
                    Some((_, other @ ('"' | '\\' | '$'))) => value.push(other),
                    Some((_, other)) => {
                        value.push('\\');
                        value.push(other);
                    }
                    None => return Err("the double quote is not closed on its line"),
                },
                c => value.push(c),
            }
        }
        return Err("the double quote is not closed on its line");
    }
    if let Some(inner) = text.strip_prefix('\'') {
        let Some(end) = inner.find('\'') else {
            return Err("the single quote is not closed on its line");
        };
        if !only_comment(inner.get(end + 1..).unwrap_or("")) {
            return Err("unexpected text after the closing quote");
        }
        return Ok(inner.get(..end).unwrap_or("").to_owned());
    }
    let bare = match text.find(" #").or_else(|| text.find("\t#")) {
        Some(at) => text.get(..at).unwrap_or(""),
        None => text,
    };
    Ok(bare.trim_end().to_owned())
}

/// Writes each entry of a dotenv file as a secret of `environment` (a new version each), after
/// checking the whole file: a bad line writes nothing. Progress goes to stderr.
async fn import(
    client: &Client,
    file: &Path,
    environment: &str,
    out: &Output,
) -> anyhow::Result<()> {
    let scope = scope(environment)?;
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("cannot read `{}` as UTF-8 text", file.display()))?;
    let entries = parse_dotenv(&text)?;
    for entry in &entries {
        exec_safe(&entry.name).map_err(|e| anyhow!("line {}: {e}", entry.line))?;
    }
    let total = entries.len();
    let mut written = Vec::new();
    for (index, entry) in entries.iter().enumerate() {
        let path = scope
            .secret(&entry.name)
            .map_err(|e| anyhow!("line {}: {e}", entry.line))?;
        let done = put(client, &path, &entry.value, None)
            .await
            .with_context(|| format!("line {}: writing `{path}`", entry.line))?;
        let n = index + 1;
        if total <= 20 || n % 25 == 0 || n == total {
            out.status(
                serde_json::json!({"imported": n, "of": total, "name": entry.name, "version": done.version}),
                &format!("[{n}/{total}] {} v{}", entry.name, done.version),
            );
        }
        written.push(done);
    }
    out.answer(&written, |_| {
        println!("imported {total} secrets into {scope}");
    })
}

/// `mayfly exec --env PROJECT/ENV -- cmd…`: reads the environment's secrets the caller may read
/// and runs the command with each as a variable of its name (on unix the command takes this
/// process's place, so its exit code is ours). The values are never printed.
pub async fn exec_env(
    client: &Client,
    environment: &str,
    program: &str,
    args: &[String],
    out: &Output,
) -> anyhow::Result<ExitCode> {
    let scope = scope(environment)?;
    let answer: SecretEnvironment = client
        .call(
            Method::POST,
            &format!("/v1/secrets/{scope}/read-all"),
            none(),
        )
        .await?;
    let mut command = std::process::Command::new(program);
    command.args(args);
    for secret in &answer.secrets {
        let name = secret.path.rsplit('/').next().unwrap_or_default();
        check_name(name).map_err(|e| anyhow!("the broker sent a bad secret name: {e}"))?;
        if steers_programs(name) {
            return Err(anyhow!(
                "{scope} holds a secret named {name}, which `mayfly exec` does not set: a variable \
                 of that name changes which code a program loads or runs. Rename the secret \
                 (`mayfly secrets put` under another name, then `mayfly secrets rm`)."
            ));
        }
        command.env(name, &secret.value);
    }
    let mut names: Vec<&str> = answer
        .secrets
        .iter()
        .filter_map(|s| s.path.rsplit('/').next())
        .collect();
    names.sort_unstable();
    let mut text = format!("{} secrets of {scope}: {}", names.len(), names.join(" "));
    if answer.n_refused > 0 {
        text.push_str(&format!(
            " ({} more not permitted to you)",
            answer.n_refused
        ));
    }
    out.status(
        serde_json::json!({"environment": answer.environment, "names": names, "n_refused": answer.n_refused}),
        &text,
    );
    drop(answer);
    run(command, program)
}

#[cfg(unix)]
fn run(mut command: std::process::Command, program: &str) -> anyhow::Result<ExitCode> {
    use std::os::unix::process::CommandExt;
    let error = command.exec();
    Err(anyhow!(error).context(format!("cannot run `{program}`")))
}

#[cfg(not(unix))]
fn run(mut command: std::process::Command, program: &str) -> anyhow::Result<ExitCode> {
    let status = command
        .status()
        .with_context(|| format!("cannot run `{program}`"))?;
    Ok(crate::output::child_exit_code(Some(status)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dotenv() {
        let text = "# a comment\n\nA=1\nexport B = two words # note\nC=\"quoted # not a comment\\n\"\nD='single $x'\nE=\n";
        let entries = parse_dotenv(text).unwrap();
        let got: Vec<(usize, &str, &str)> = entries
            .iter()
            .map(|e| (e.line, e.name.as_str(), e.value.expose_secret()))
            .collect();
        assert_eq!(
            got,
            [
                (3, "A", "1"),
                (4, "B", "two words"),
                (5, "C", "quoted # not a comment\n"),
                (6, "D", "single $x"),
                (7, "E", ""),
            ]
        );
        let error = |text: &str| parse_dotenv(text).err().unwrap().to_string();
        assert!(error("A=1\nBAD-NAME=x\n").contains("line 2"));
        assert!(error("A=1\n1X=x\n").contains("line 2"));
        assert!(error("A=1\nnoequals\n").contains("line 2"));
        assert!(error("A=\"open\n").contains("line 1"));
        assert!(error("A=1\nA=2\n").contains("first on line 1"));
        let secret = error("K=\"hunter2\" trailing\n");
        assert!(!secret.contains("hunter2"), "{secret}");
    }
}

/// Whether an environment variable of this name changes which code a program loads or runs
/// (the dynamic loader, shells' start-up files, interpreters' options, `PATH`): a secret's writer
/// must not be able to run code on every reader's machine through `mayfly exec`.
fn steers_programs(name: &str) -> bool {
    const EXACT: &[&str] = &[
        "PATH",
        "IFS",
        "ENV",
        "BASH_ENV",
        "HOME",
        "SHELL",
        "PS4",
        "PROMPT_COMMAND",
        "RUBYOPT",
        "RUBYLIB",
        "PERLLIB",
        "CDPATH",
        "EDITOR",
        "VISUAL",
        "PAGER",
        "TMPDIR",
    ];
    const PREFIXES: &[&str] = &[
        "LD_",
        "DYLD_",
        "BASH_FUNC_",
        "PYTHON",
        "PERL5",
        "NODE_",
        "GIT_",
        "JAVA_TOOL_",
        "_JAVA_",
        "GCONV_",
        "MALLOC_",
        "GLIBC_",
    ];
    let upper = name.to_ascii_uppercase();
    EXACT.contains(&upper.as_str())
        || PREFIXES.iter().any(|prefix| upper.starts_with(prefix))
        || upper.ends_with("_OPTIONS")
}

#[cfg(test)]
mod steering_tests {
    use super::steers_programs;

    #[test]
    fn loader_shell_and_interpreter_variables_are_not_set_by_exec() {
        for name in [
            "LD_PRELOAD",
            "ld_preload",
            "BASH_ENV",
            "PATH",
            "NODE_OPTIONS",
            "PYTHONSTARTUP",
            "PERL5OPT",
            "GIT_SSH_COMMAND",
            "JAVA_TOOL_OPTIONS",
            "DYLD_INSERT_LIBRARIES",
        ] {
            assert!(steers_programs(name), "{name}");
        }
        for name in ["STRIPE_KEY", "DATABASE_URL", "API_TOKEN", "PATHWAY_KEY"] {
            assert!(!steers_programs(name), "{name}");
        }
    }
}
