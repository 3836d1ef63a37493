//! `mayfly audit`: verify the log (through the broker, or a file offline), its head, its public
//! key, export, and the forwarding sinks' state. A log found tampered with exits 4.

use std::io::{BufRead, IsTerminal, Write as _};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use mayfly_api::*;
use reqwest::Method;

use crate::admin::format_ms;
use crate::client::Client;
use crate::grammar::AuditCommand;
use crate::output::{Exit, Failure, Output};

fn none() -> Option<&'static ()> {
    None
}

pub async fn audit(
    client: &Client,
    command: AuditCommand,
    out: &Output,
) -> anyhow::Result<ExitCode> {
    match command {
        AuditCommand::Verify {
            file: Some(file),
            public_key,
            expect_head,
        } => verify_file(&file, public_key.as_deref(), expect_head.as_deref(), out),
        AuditCommand::Verify { file: None, .. } => {
            let report: AuditVerifyReport = client
                .call(Method::POST, "/v1/sys/audit/verify", none())
                .await?;
            out.answer(&report, |report| {
                if report.ok {
                    println!(
                        "audit log intact: {} events, {} checkpoints ({} signatures checked), last event {}",
                        report.n_events,
                        report.n_checkpoints,
                        report.n_signatures_checked,
                        report.last_seq
                    );
                } else {
                    println!(
                        "AUDIT LOG TAMPERED: {}",
                        report.error.as_deref().unwrap_or("unknown problem")
                    );
                }
            })?;
            Ok(if report.ok { Exit::Ok } else { Exit::Tampered }.into())
        }
        AuditCommand::Head => {
            let head: AuditHead = client
                .call(Method::GET, "/v1/sys/audit/head", none())
                .await?;
            out.answer(&head, |head| println!("{}:{}", head.seq, head.hash))?;
            Ok(ExitCode::SUCCESS)
        }
        AuditCommand::PublicKey => {
            let key: AuditPublicKey = client
                .call(Method::GET, "/v1/sys/audit/public-key", none())
                .await?;
            out.answer(&key, |key| println!("{}", key.public_key))?;
            Ok(ExitCode::SUCCESS)
        }
        AuditCommand::Sinks => {
            let sinks: AuditSinks = client
                .call(Method::GET, "/v1/sys/audit/sinks", none())
                .await?;
            out.answer(&sinks, |sinks| {
                println!("head {}", sinks.head);
                for s in &sinks.sinks {
                    println!(
                        "{}\t{}\ton_failure={}\t{}\tcursor {}\tbehind {} events, {:.1} s\tfailures {}{}",
                        s.name,
                        s.kind,
                        s.on_failure,
                        s.state,
                        s.cursor,
                        s.lag_events,
                        s.lag_seconds,
                        s.n_failures,
                        s.last_error
                            .as_deref()
                            .map(|e| format!("\tlast error: {e}"))
                            .unwrap_or_default()
                    );
                }
            })?;
            Ok(ExitCode::SUCCESS)
        }
        AuditCommand::Export { output } => {
            export(client, output, out).await?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Writes the log as JSON lines, to a file or stdout. To a file, the answer is how many events
/// were written.
async fn export(client: &Client, output: Option<PathBuf>, out: &Output) -> anyhow::Result<()> {
    if output.is_none() {
        out.no_field("audit export")?;
    }
    let mut writer: Box<dyn std::io::Write> = match &output {
        Some(path) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(path)
                .with_context(|| format!("cannot create `{}`", path.display()))?,
        )),
        None => Box::new(std::io::BufWriter::new(std::io::stdout())),
    };
    let mut after = 0;
    let mut n = 0u64;
    loop {
        let page: AuditEventsPage = client
            .call(
                Method::GET,
                &format!("/v1/sys/audit/events?after={after}&limit=5000"),
                none(),
            )
            .await?;
        if page.lines.is_empty() {
            break;
        }
        for line in &page.lines {
            writeln!(writer, "{line}")?;
        }
        n += page.lines.len() as u64;
        after = page.next_after;
        if output.is_some() && !out.json && std::io::stderr().is_terminal() {
            eprint!("\rexported {n} events");
        }
    }
    writer.flush()?;
    if let Some(path) = output {
        if !out.json && out.field.is_none() && std::io::stderr().is_terminal() {
            eprintln!();
        }
        out.answer(&serde_json::json!({"exported": n, "file": path}), |_| {
            println!("exported {n} events to {}", path.display())
        })?;
    }
    Ok(())
}

/// `SEQ:HASH` as `mayfly audit head` prints it.
fn parse_head(text: &str) -> anyhow::Result<(i64, String)> {
    let parsed = text.split_once(':').and_then(|(seq, hash)| {
        let seq: i64 = seq.parse().ok().filter(|seq| *seq >= 1)?;
        let hex = hash.len() == 64 && hash.bytes().all(|b| b.is_ascii_hexdigit());
        hex.then(|| (seq, hash.to_owned()))
    });
    parsed.ok_or_else(|| {
        Failure::Usage(format!(
            "--expect-head `{text}` is not SEQ:HASH (a positive number, a colon and 64 hex digits); print it with `mayfly audit head`"
        ))
        .into()
    })
}

/// The checkpoint public key: base64, or a file holding it.
fn parse_public_key(text: &str) -> anyhow::Result<Vec<u8>> {
    let text = if Path::new(text).exists() {
        std::fs::read_to_string(text).with_context(|| format!("cannot read `{text}`"))?
    } else {
        text.to_owned()
    };
    let bytes = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, text.trim())
        .map_err(|_| {
            Failure::Usage("--public-key is not base64 (see `mayfly audit public-key`)".into())
        })?;
    if bytes.len() != 32 {
        return Err(
            Failure::Usage("--public-key is not an Ed25519 public key (32 bytes)".into()).into(),
        );
    }
    Ok(bytes)
}

pub fn verify_file(
    path: &Path,
    public_key: Option<&str>,
    expect_head: Option<&str>,
    out: &Output,
) -> anyhow::Result<ExitCode> {
    let expect_head = expect_head.map(parse_head).transpose()?;
    let public_key = public_key.map(parse_public_key).transpose()?;
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot open `{}`", path.display()))?;
    let mut verifier = mayfly_core::audit::Verifier::new(public_key.as_deref());
    let mut failure = None;
    for (index, line) in std::io::BufReader::new(file).lines().enumerate() {
        let number = index as u64 + 1;
        let line = line.with_context(|| format!("cannot read line {number}"))?;
        if line.trim().is_empty() {
            continue;
        }
        let result = mayfly_core::audit::split_line(&line)
            .map_err(|reason| mayfly_core::audit::ChainError::Unreadable {
                line: number,
                reason,
            })
            .and_then(|(body, hash)| verifier.push(number, &body, &hash));
        if let Err(error) = result {
            failure = Some(error);
            break;
        }
    }
    if failure.is_none()
        && let Some((seq, hash)) = &expect_head
    {
        failure = verifier.expect_head(*seq, hash).err();
    }
    let report = verifier.finish();
    let checkpoint = report
        .last_checkpoint
        .map(|seen| {
            format!(
                "last signed checkpoint: event {} at {}, covering events up to {}",
                seen.seq,
                format_ms(seen.at_ms),
                seen.covers_to
            )
        })
        .unwrap_or_else(|| "no signed checkpoint in the file".into());
    let answer = serde_json::json!({
        "ok": failure.is_none(),
        "error": failure.as_ref().map(ToString::to_string),
        "n_events": report.n_events,
        "n_checkpoints": report.n_checkpoints,
        "n_signatures_checked": report.n_signatures_checked,
        "last_seq": report.last_seq,
        "n_unsigned_tail": report.n_unsigned_tail,
        "last_checkpoint": report.last_checkpoint.map(|seen| serde_json::json!({
            "seq": seen.seq, "at_ms": seen.at_ms, "covers_to": seen.covers_to,
        })),
        "head_checked": expect_head.is_some(),
    });
    out.answer(&answer, |_| {
        if let Some(error) = &failure {
            println!("AUDIT LOG TAMPERED: {error}");
            println!("{checkpoint}");
            return;
        }
        println!("audit file intact: {report}");
        println!("{checkpoint}");
        if public_key.is_none() {
            println!(
                "note: checkpoint signatures were not checked; pass --public-key (from `mayfly audit public-key`)"
            );
        }
        if expect_head.is_none() {
            println!(
                "note: a tail cut off the file cannot be seen without the head; pass --expect-head (from `mayfly audit head`)"
            );
        }
    })?;
    Ok(if failure.is_none() {
        Exit::Ok
    } else {
        Exit::Tampered
    }
    .into())
}
