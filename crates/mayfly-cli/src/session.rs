//! The session runners: `mayfly exec` (any command, any kind of target) and `mayfly ssh`. Each
//! gets access, runs its command with the credential, and revokes the grant when the command
//! ends, also on Ctrl-C. Their own messages go to stderr: stdout is the command's alone.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, anyhow};
use mayfly_api::*;
use mayfly_core::TargetKind;
use reqwest::Method;

use crate::access::{ask, none, refused, revoke_now, split_role, target_kind, wait_decided};
use crate::client::{ApiFailure, Client};
use crate::grammar::{ExecArgs, RequestFlags, SshArgs};
use crate::local::{private_dir, write_private};
use crate::output::{Failure, Output};

/// A key the broker certifies: an SSH public key, or for X.509 none (the broker makes one).
enum Certify {
    Ssh { public_key: String },
    X509,
}

/// Runs `command` with a credential in its environment and revokes it when the command ends.
pub async fn exec(client: &Client, args: ExecArgs, out: &Output) -> anyhow::Result<ExitCode> {
    out.no_field("exec")?;
    let Some((program, rest)) = args.command.split_first() else {
        return Err(Failure::Usage(
            "give the command to run after `--`, e.g. `mayfly exec prod-db/readonly --ttl 15m --reason R -- psql`".into(),
        )
        .into());
    };
    if let Some(environment) = &args.environment {
        return crate::secrets::exec_env(client, environment, program, rest, out).await;
    }
    let Some(flags) = args.flags() else {
        return Err(Failure::Usage(
            "give TARGET/ROLE with --ttl and --reason, or --env PROJECT/ENV".into(),
        )
        .into());
    };
    let (target, _) = split_role(&flags.role)?;
    let kind = target_kind(client, &target).await?;
    let dir = private_dir("mayfly-exec-")?;
    let mut command = tokio::process::Command::new(program);
    command.args(rest);
    let credential = match kind {
        Some(TargetKind::Ssh) => {
            let (private, public) = mayfly_crypto::ssh::generate_user_key()
                .map_err(|e| anyhow!("cannot make a key: {e}"))?;
            let key_file = dir.path().join("id_ed25519");
            write_private(&key_file, private.as_bytes())?;
            let certify = Certify::Ssh {
                public_key: public.trim().to_owned(),
            };
            let credential = certified(client, flags, args.timeout, certify, out).await?;
            let cert_file = dir.path().join("id_ed25519-cert.pub");
            write_private(&cert_file, certificate(&credential)?.as_bytes())?;
            command
                .env("MAYFLY_KEY_FILE", &key_file)
                .env("MAYFLY_CERT_FILE", &cert_file);
            credential
        }
        Some(TargetKind::X509) => {
            let credential = certified(client, flags, args.timeout, Certify::X509, out).await?;
            let key = credential
                .private_key
                .as_deref()
                .ok_or_else(|| anyhow!("the broker returned no private key for the certificate"))?;
            let key_file = dir.path().join("key.pem");
            write_private(&key_file, key.as_bytes())?;
            let cert_file = dir.path().join("cert.pem");
            write_private(&cert_file, certificate(&credential)?.as_bytes())?;
            command
                .env("MAYFLY_KEY_FILE", &key_file)
                .env("MAYFLY_CERT_FILE", &cert_file);
            credential
        }
        Some(TargetKind::Postgres | TargetKind::Mysql | TargetKind::Redis) | None => {
            let credential = requested(client, flags, args.timeout, None, out).await?;
            database_env(&mut command, &credential);
            credential
        }
    };
    command
        .env("MAYFLY_GRANT_ID", &credential.grant.id)
        .env("MAYFLY_HOST", &credential.host)
        .env("MAYFLY_PORT", credential.port.to_string())
        .env("MAYFLY_USER", &credential.username)
        .env("MAYFLY_PASSWORD", &credential.password)
        .env("MAYFLY_DATABASE", &credential.database);
    let grant = &credential.grant;
    out.status(
        serde_json::json!({"grant": grant.id, "state": "active", "seconds_left": grant.seconds_left}),
        &format!("grant {} active for {} s", grant.id, grant.seconds_left),
    );
    let status = match command.spawn() {
        Ok(mut child) => until_done_or_interrupted(&mut child, &format!("`{program}`"), out).await,
        Err(error) => Err(anyhow!(error).context(format!("cannot run `{program}`"))),
    };
    // The key and certificate go with the command, before anything else can fail.
    drop(dir);
    end_grant(client, &credential.grant.id, out).await;
    Ok(crate::output::child_exit_code(status?))
}

/// What each system's own client reads. The mysql client and redis-cli take the user name from
/// no variable: pass `-u "$MAYFLY_USER"` / `--user "$MAYFLY_USER"` (docs/targets/).
fn database_env(command: &mut tokio::process::Command, credential: &Credential) {
    // A kind this CLI does not know (or none, from an older broker) is PostgreSQL, as it always
    // was; so is a certificate of a target the listing did not show (exec chose by the listing).
    match credential.kind.parse::<TargetKind>() {
        Ok(TargetKind::Mysql) => {
            command
                .env("MYSQL_HOST", &credential.host)
                .env("MYSQL_TCP_PORT", credential.port.to_string())
                .env("MYSQL_PWD", &credential.password);
        }
        Ok(TargetKind::Redis) => {
            command.env("REDISCLI_AUTH", &credential.password);
        }
        Ok(TargetKind::Postgres | TargetKind::Ssh | TargetKind::X509) | Err(_) => {
            command
                .env("PGHOST", &credential.host)
                .env("PGPORT", credential.port.to_string())
                .env("PGUSER", &credential.username)
                .env("PGPASSWORD", &credential.password)
                .env("PGDATABASE", &credential.database);
        }
    }
}

fn certificate(credential: &Credential) -> anyhow::Result<&str> {
    credential.certificate.as_deref().ok_or_else(|| {
        anyhow!("the broker returned no certificate: is the role a certificate role?")
    })
}

/// Revokes the grant after the command and follows the revocation for a while; never fails
/// (the grant expires at its TTL anyway), says what happened on stderr.
async fn end_grant(client: &Client, grant_id: &str, out: &Output) {
    let (state, text) = match revoke_now(client, grant_id).await {
        Ok(_) => match wait_revoked(client, grant_id).await {
            Ok(true) => ("revoked", format!("grant {grant_id} revoked on the target")),
            Ok(false) => (
                "revoking",
                format!(
                    "grant {grant_id}: revocation requested; the broker keeps retrying it (see `mayfly grants --failing`)"
                ),
            ),
            Err(error) => (
                "revoking",
                format!(
                    "grant {grant_id}: revocation requested; cannot follow it ({error:#}); see `mayfly grants`"
                ),
            ),
        },
        Err(error) => (
            "active",
            format!(
                "could not revoke grant {grant_id} now ({error:#}); it expires at its TTL, or run `mayfly revoke {grant_id}`"
            ),
        ),
    };
    out.status(
        serde_json::json!({"grant": grant_id, "state": state}),
        &text,
    );
}

/// Requests access, waits while it is pending (up to `timeout`), and activates it with `body`.
/// A request denied or expired is a [`Failure::Refused`].
async fn requested(
    client: &Client,
    flags: RequestFlags,
    timeout: Option<Duration>,
    body: Option<&ActivateRequest>,
    out: &Output,
) -> anyhow::Result<Credential> {
    let info = ask(client, flags).await?;
    if info.state == "pending" {
        out.status(
            serde_json::json!({"request": info.id, "state": "pending"}),
            &format!(
                "request {} waits for {} approval(s); approvers run `mayfly approve {}`",
                info.id, info.approvals_needed, info.id
            ),
        );
    }
    let info = wait_decided(client, info, timeout, out).await?;
    if refused(&info.state) {
        let code = if info.state == "expired" {
            "expired"
        } else {
            "denied"
        };
        return Err(Failure::Refused {
            code,
            message: format!("request {} was {}: {}", info.id, info.state, info.decision),
        }
        .into());
    }
    if info.state != "allowed" {
        return Err(anyhow!(
            "request {} is {}, not allowed: {}",
            info.id,
            info.state,
            info.decision
        ));
    }
    client
        .call(
            Method::POST,
            &format!("/v1/requests/{}/activate", info.id),
            body,
        )
        .await
}

/// A certificate for `key`: in one call where the policy needs no approval, else by request,
/// approval and activation.
async fn certified(
    client: &Client,
    flags: RequestFlags,
    timeout: Option<Duration>,
    key: Certify,
    out: &Output,
) -> anyhow::Result<Credential> {
    let (public_key, csr) = match key {
        Certify::Ssh { public_key } => (Some(public_key), None),
        Certify::X509 => (None, None),
    };
    if !flags.break_glass {
        let (target, role) = split_role(&flags.role)?;
        let body = CertificateRequest {
            target,
            role,
            ttl_seconds: flags.ttl.as_secs(),
            reason: flags.reason.clone(),
            ticket: flags.ticket.clone(),
            public_key: public_key.clone(),
            csr: csr.clone(),
        };
        match client
            .call::<_, Credential>(Method::POST, "/v1/certificates", Some(&body))
            .await
        {
            Ok(credential) => return Ok(credential),
            // The policy wants approvals (or more): the long way.
            Err(error)
                if error
                    .downcast_ref::<ApiFailure>()
                    .is_some_and(|f| f.status.as_u16() == 409) => {}
            Err(error) => return Err(error),
        }
    }
    let body = ActivateRequest { public_key, csr };
    requested(client, flags, timeout, Some(&body), out).await
}

/// `mayfly ssh ROLE user@host [-- cmd]`: has the broker certify a key (the user's, or a fresh one
/// kept in a private temporary directory and deleted after), runs `ssh` with the certificate,
/// and revokes the grant when ssh ends.
pub async fn ssh(client: &Client, args: SshArgs, out: &Output) -> anyhow::Result<ExitCode> {
    if let Some(command) = args.list {
        crate::access::ssh_lists(client, command, out).await?;
        return Ok(ExitCode::SUCCESS);
    }
    out.no_field("ssh")?;
    let usage = |message: String| -> anyhow::Error { Failure::Usage(message).into() };
    let Some(role) = args.role else {
        return Err(usage(
            "give the role: `mayfly ssh TARGET/ROLE user@host --ttl 15m --reason R`".into(),
        ));
    };
    let Some(destination) = args.destination else {
        return Err(usage(format!(
            "give the host: `mayfly ssh {role} user@host --ttl 15m --reason R`"
        )));
    };
    let (Some(ttl), Some(reason)) = (args.ttl, args.reason) else {
        return Err(usage(format!(
            "give --ttl and --reason: `mayfly ssh {role} {destination} --ttl 15m --reason R`"
        )));
    };
    let dir = private_dir("mayfly-ssh-")?;
    let (identity, public_key) = match args.key {
        Some(path) => {
            let public_path = PathBuf::from(format!("{}.pub", path.display()));
            let public = std::fs::read_to_string(&public_path).with_context(|| {
                format!(
                    "cannot read `{}` (the public half of --key)",
                    public_path.display()
                )
            })?;
            (path, public)
        }
        None => {
            let (private, public) = mayfly_crypto::ssh::generate_user_key()
                .map_err(|e| anyhow!("cannot make a key: {e}"))?;
            let path = dir.path().join("id_ed25519");
            write_private(&path, private.as_bytes())?;
            (path, public)
        }
    };
    let (target, _) = split_role(&role)?;
    let flags = RequestFlags {
        role,
        ttl,
        reason,
        ticket: args.ticket,
        break_glass: args.break_glass,
    };
    let certify = Certify::Ssh {
        public_key: public_key.trim().to_owned(),
    };
    let credential = certified(client, flags, args.timeout, certify, out).await?;
    let certificate = certificate(&credential).map_err(|_| {
        anyhow!("the role is not an SSH role: use `mayfly exec` or `mayfly activate`")
    })?;
    let certificate_path = dir.path().join("id-cert.pub");
    write_private(&certificate_path, certificate.as_bytes())?;
    let grant = &credential.grant;
    out.status(
        serde_json::json!({"grant": grant.id, "state": "active", "seconds_left": grant.seconds_left, "key_id": credential.username}),
        &format!(
            "grant {} active for {} s (certificate key id {})",
            grant.id, grant.seconds_left, credential.username
        ),
    );
    let mut ssh = tokio::process::Command::new("ssh");
    ssh_command(&mut ssh, &identity, &certificate_path, &args.ssh_options);
    ssh.arg("-p")
        .arg(args.port.unwrap_or(credential.port).to_string())
        .arg(&destination);
    if !args.command.is_empty() {
        ssh.arg("--").args(&args.command);
    }
    let status = match ssh.spawn() {
        Ok(mut child) => until_done_or_interrupted(&mut child, "ssh", out).await,
        Err(error) => Err(anyhow!(error).context("cannot run `ssh` (install openssh-client)")),
    };
    drop(dir);
    let (state, text) = match revoke_now(client, &grant.id).await {
        Ok(_) => (
            "revoked",
            format!(
                "grant {} revoked: its certificate is in the KRL of `{target}` (/v1/ssh/krl?target={target})",
                grant.id
            ),
        ),
        Err(error) => (
            "active",
            format!(
                "could not revoke grant {} now ({error:#}); its certificate expires at its TTL",
                grant.id
            ),
        ),
    };
    out.status(
        serde_json::json!({"grant": grant.id, "state": state}),
        &text,
    );
    Ok(crate::output::child_exit_code(status?))
}

fn ssh_command(
    ssh: &mut tokio::process::Command,
    identity: &Path,
    certificate: &Path,
    options: &[String],
) {
    ssh.arg("-i")
        .arg(identity)
        .arg("-o")
        .arg(format!("CertificateFile={}", certificate.display()))
        .arg("-o")
        .arg("IdentitiesOnly=yes");
    for option in options {
        ssh.arg("-o").arg(option);
    }
}

/// Waits for `child` to end. Ctrl-C, a closed terminal or a `kill` end it early (`None`): the
/// caller revokes the grant all the same.
pub(crate) async fn until_done_or_interrupted(
    child: &mut tokio::process::Child,
    what: &str,
    out: &Output,
) -> anyhow::Result<Option<std::process::ExitStatus>> {
    Ok(tokio::select! {
        status = child.wait() => Some(status?),
        signal = interrupted() => {
            out.status(
                serde_json::json!({"signal": signal}),
                &format!("{signal}: stopping {what} and revoking the grant"),
            );
            let _ = child.kill().await;
            None
        }
    })
}

/// Follows a grant whose revocation was requested until the target has dropped it (`true`), for
/// at most 30 s (`false`: the broker goes on retrying).
async fn wait_revoked(client: &Client, grant_id: &str) -> anyhow::Result<bool> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let grant: GrantInfo = client
            .call(Method::GET, &format!("/v1/grants/{grant_id}"), none())
            .await?;
        if matches!(grant.state.as_str(), "revoked" | "verified") {
            return Ok(true);
        }
        if tokio::time::Instant::now() >= deadline {
            return Ok(false);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits for SIGINT, SIGTERM or SIGHUP and names it.
#[cfg(unix)]
async fn interrupted() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::hangup()),
    ) else {
        let _ = tokio::signal::ctrl_c().await;
        return "interrupted";
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => "interrupted",
        _ = term.recv() => "terminated",
        _ = hup.recv() => "hung up",
    }
}

#[cfg(not(unix))]
async fn interrupted() -> &'static str {
    let _ = tokio::signal::ctrl_c().await;
    "interrupted"
}
