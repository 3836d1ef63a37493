//! Access commands: targets, roles, policies, requests, approvals, grants, `exec`.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use clap::Subcommand;
use mayfly_api::*;
use reqwest::Method;

use crate::client::Client;

#[derive(Debug, Subcommand)]
pub enum TargetCommand {
    /// Add (or replace) a target. The admin password is read from --admin-password-file, or asked for.
    Add {
        /// The kind of target: `postgres`, `mysql` (MariaDB) or `redis`.
        kind: String,
        name: String,
        /// `postgres://HOST:PORT/DB`, `mysql://HOST:PORT` or `redis://HOST:PORT`, without user or
        /// password.
        #[arg(long)]
        url: String,
        /// The account the broker administers logins with (not for `ssh`: hosts trust the CA).
        #[arg(long, default_value = "")]
        admin_user: String,
        #[arg(long)]
        admin_password_file: Option<PathBuf>,
    },
    List,
}

#[derive(Debug, Subcommand)]
pub enum RoleCommand {
    /// Add (or replace) a role: `mayfly role add prod-db/readonly --creation-sql FILE --max-ttl 1h`.
    Add {
        /// TARGET/ROLE
        role: String,
        /// What creates the login: SQL on PostgreSQL, the GRANT statements on MariaDB, the ACL
        /// rules (`~app:* +@read`) on Redis.
        #[arg(long, alias = "rules")]
        creation_sql: PathBuf,
        #[arg(long)]
        revocation_sql: Option<PathBuf>,
        #[arg(long, value_parser = parse_duration)]
        max_ttl: Duration,
    },
    List,
}

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Replace the policy set with the Cedar policies in FILE (validated; refused with diagnostics).
    Put { file: PathBuf },
    /// Print the current policies.
    Show,
    /// Print the Cedar schema policies are written against.
    Schema,
}

#[derive(Debug, clap::Args)]
pub struct RequestArgs {
    /// TARGET/ROLE
    pub role: String,
    #[arg(long, value_parser = parse_duration)]
    pub ttl: Duration,
    #[arg(long)]
    pub reason: String,
    #[arg(long)]
    pub ticket: Option<String>,
    /// Emergency access, where a policy permits `break_glass`: at once, notified, reviewed later.
    #[arg(long)]
    pub break_glass: bool,
    /// Wait while the request is pending approval.
    #[arg(long)]
    pub wait: bool,
}

#[derive(Debug, Subcommand)]
pub enum ReviewCommand {
    /// List break-glass grants waiting for review.
    List,
    /// Acknowledge a break-glass grant.
    Ack { grant: String },
}

/// `15m`, `1h`, `90s`, `1h30m`, or plain seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if let Ok(secs) = text.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    let mut total = 0u64;
    let mut number = String::new();
    for c in text.chars() {
        if c.is_ascii_digit() {
            number.push(c);
            continue;
        }
        let value: u64 = number
            .parse()
            .map_err(|_| format!("`{text}` is not a duration like 15m or 1h"))?;
        number.clear();
        total += match c {
            's' => value,
            'm' => value * 60,
            'h' => value * 3600,
            'd' => value * 86_400,
            _ => return Err(format!("`{text}` is not a duration like 15m or 1h")),
        };
    }
    if !number.is_empty() || total == 0 {
        return Err(format!("`{text}` is not a duration like 15m or 1h"));
    }
    Ok(Duration::from_secs(total))
}

fn split_role(text: &str) -> anyhow::Result<(String, String)> {
    let (target, role) = text
        .split_once('/')
        .ok_or_else(|| anyhow!("`{text}`: give TARGET/ROLE, e.g. prod-db/readonly"))?;
    Ok((target.to_owned(), role.to_owned()))
}

fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

fn none() -> Option<&'static ()> {
    None
}

fn read_file(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("cannot read `{}`", path.display()))
}

pub async fn target(client: &Client, command: TargetCommand, json: bool) -> anyhow::Result<()> {
    match command {
        TargetCommand::Add {
            kind,
            name,
            url,
            admin_user,
            admin_password_file,
        } => {
            // Certificate targets have no account on the target to administer.
            let admin_password = if matches!(kind.as_str(), "ssh" | "x509") {
                String::new()
            } else {
                if admin_user.is_empty() {
                    bail!("give --admin-user: the account the broker administers logins with");
                }
                crate::commands::read_secret(admin_password_file.as_deref(), "Admin password: ")?
            };
            let request = TargetRequest {
                kind,
                name,
                url,
                admin_user,
                admin_password,
            };
            let info: TargetInfo = client
                .call(Method::POST, "/v1/targets", Some(&request))
                .await?;
            if json {
                return print_json(&info);
            }
            println!(
                "target `{}` ({}) saved: {}",
                info.name,
                info.kind,
                info.url.as_deref().unwrap_or("")
            );
        }
        TargetCommand::List => {
            let targets: Vec<TargetInfo> = client.call(Method::GET, "/v1/targets", none()).await?;
            if json {
                return print_json(&targets);
            }
            for target in targets {
                println!(
                    "{:<20} {:<10} {}",
                    target.name,
                    target.kind,
                    target.url.as_deref().unwrap_or("")
                );
            }
        }
    }
    Ok(())
}

pub async fn role(client: &Client, command: RoleCommand, json: bool) -> anyhow::Result<()> {
    match command {
        RoleCommand::Add {
            role,
            creation_sql,
            revocation_sql,
            max_ttl,
        } => {
            let (target, name) = split_role(&role)?;
            let request = RoleRequest {
                target,
                name,
                creation_sql: read_file(&creation_sql)?,
                revocation_sql: revocation_sql.as_deref().map(read_file).transpose()?,
                max_ttl_seconds: max_ttl.as_secs(),
            };
            let info: RoleInfo = client
                .call(Method::POST, "/v1/roles", Some(&request))
                .await?;
            if json {
                return print_json(&info);
            }
            println!(
                "role `{}/{}` saved (max TTL {} s)",
                info.target, info.name, info.max_ttl_seconds
            );
        }
        RoleCommand::List => {
            let roles: Vec<RoleInfo> = client.call(Method::GET, "/v1/roles", none()).await?;
            if json {
                return print_json(&roles);
            }
            for role in roles {
                println!(
                    "{}/{:<20} max TTL {} s",
                    role.target, role.name, role.max_ttl_seconds
                );
            }
        }
    }
    Ok(())
}

pub async fn policy(client: &Client, command: PolicyCommand, json: bool) -> anyhow::Result<()> {
    match command {
        PolicyCommand::Put { file } => {
            let request = PolicyText {
                text: read_file(&file)?,
            };
            let info: PolicyInfo = client
                .call(Method::PUT, "/v1/policy", Some(&request))
                .await?;
            if json {
                return print_json(&info);
            }
            println!("policies saved (version {})", info.version);
        }
        PolicyCommand::Show => {
            let info: PolicyInfo = client.call(Method::GET, "/v1/policy", none()).await?;
            if json {
                return print_json(&info);
            }
            println!("{}", info.text);
        }
        PolicyCommand::Schema => {
            let text = client.call_text(Method::GET, "/v1/policy/schema").await?;
            if json {
                return print_json(&serde_json::json!({ "schema": text }));
            }
            println!("{text}");
        }
    }
    Ok(())
}

fn print_request(request: &RequestInfo) {
    println!(
        "request {}  {}/{}  {}",
        request.id, request.target, request.role, request.state
    );
    match request.state.as_str() {
        "pending" => println!(
            "waiting for {} approval(s) ({} so far); approvers run `mayfly approve {}`",
            request.approvals_needed,
            request.approvers.len(),
            request.id
        ),
        "allowed" => println!(
            "allowed: run `mayfly activate {}` to get the credential",
            request.id
        ),
        _ => println!("{}", request.decision),
    }
}

pub async fn request(
    client: &Client,
    args: RequestArgs,
    json: bool,
) -> anyhow::Result<RequestInfo> {
    let (target, role) = split_role(&args.role)?;
    let body = AccessRequest {
        target,
        role,
        ttl_seconds: args.ttl.as_secs(),
        reason: args.reason,
        ticket: args.ticket,
        break_glass: args.break_glass,
    };
    let mut info: RequestInfo = client
        .call(Method::POST, "/v1/requests", Some(&body))
        .await?;
    if args.wait && info.state == "pending" {
        let interactive = std::io::stderr().is_terminal();
        let mut waited = 0u64;
        while info.state == "pending" {
            if interactive {
                eprint!(
                    "\rwaiting for approval ({}/{})… {waited} s",
                    info.approvers.len(),
                    info.approvals_needed
                );
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
            waited += 2;
            info = client
                .call(Method::GET, &format!("/v1/requests/{}", info.id), none())
                .await?;
        }
        if interactive {
            eprintln!();
        }
    }
    if json {
        print_json(&info)?;
    } else {
        print_request(&info);
    }
    Ok(info)
}

pub async fn decide(
    client: &Client,
    id: &str,
    comment: Option<String>,
    approve: bool,
    json: bool,
) -> anyhow::Result<()> {
    let path = format!(
        "/v1/requests/{id}/{}",
        if approve { "approve" } else { "deny" }
    );
    let body = ApproveRequest {
        comment: comment.unwrap_or_default(),
    };
    let info: RequestInfo = client.call(Method::POST, &path, Some(&body)).await?;
    if json {
        return print_json(&info);
    }
    print_request(&info);
    Ok(())
}

pub async fn requests(client: &Client, pending: bool, json: bool) -> anyhow::Result<()> {
    let path = if pending {
        "/v1/requests?pending=true"
    } else {
        "/v1/requests"
    };
    let requests: Vec<RequestInfo> = client.call(Method::GET, path, none()).await?;
    if json {
        return print_json(&requests);
    }
    for r in requests {
        println!(
            "{}  {:<10} {:<24} {}/{}  {}",
            r.id, r.state, r.principal, r.target, r.role, r.reason
        );
    }
    Ok(())
}

pub async fn activate(client: &Client, id: &str, json: bool) -> anyhow::Result<Credential> {
    let credential: Credential = client
        .call(Method::POST, &format!("/v1/requests/{id}/activate"), none())
        .await?;
    if json {
        print_json(&credential)?;
    } else {
        println!(
            "grant {} active for {} s (shown once):",
            credential.grant.id, credential.grant.seconds_left
        );
        println!(
            "  host {}  port {}  database {}",
            credential.host, credential.port, credential.database
        );
        println!("  user {}", credential.username);
        println!("  password {}", credential.password);
    }
    Ok(credential)
}

pub async fn grants(client: &Client, failing: bool, all: bool, json: bool) -> anyhow::Result<()> {
    let path = if failing {
        "/v1/grants?failing=true"
    } else if all {
        "/v1/grants?all=true"
    } else {
        "/v1/grants"
    };
    let grants: Vec<GrantInfo> = client.call(Method::GET, path, none()).await?;
    if json {
        return print_json(&grants);
    }
    for g in grants {
        let left = if g.state == "active" {
            format!("{} s left", g.seconds_left)
        } else {
            String::new()
        };
        let error = g
            .last_error
            .as_deref()
            .map(|e| format!("  last error: {e} ({} attempts)", g.n_attempts))
            .unwrap_or_default();
        println!(
            "{}  {:<9} {:<24} {}/{}  {left}{error}",
            g.id, g.state, g.principal, g.target, g.role
        );
    }
    Ok(())
}

pub async fn revoke(client: &Client, id: &str, json: bool) -> anyhow::Result<()> {
    let info = revoke_now(client, id).await?;
    if json {
        return print_json(&info);
    }
    println!(
        "grant {} is {}; the broker revokes it now and verifies on the target",
        info.id, info.state
    );
    Ok(())
}

pub async fn renew(client: &Client, id: &str, ttl: Duration, json: bool) -> anyhow::Result<()> {
    let body = RenewRequest {
        ttl_seconds: ttl.as_secs(),
    };
    let info: GrantInfo = client
        .call(Method::POST, &format!("/v1/grants/{id}/renew"), Some(&body))
        .await?;
    if json {
        return print_json(&info);
    }
    println!("grant {} renewed: {} s left", info.id, info.seconds_left);
    Ok(())
}

pub async fn review(client: &Client, command: ReviewCommand, json: bool) -> anyhow::Result<()> {
    match command {
        ReviewCommand::List => {
            let grants: Vec<GrantInfo> = client.call(Method::GET, "/v1/review", none()).await?;
            if json {
                return print_json(&grants);
            }
            for g in grants {
                println!(
                    "{}  {:<9} {:<24} {}/{}",
                    g.id, g.state, g.principal, g.target, g.role
                );
            }
        }
        ReviewCommand::Ack { grant } => {
            client
                .call_raw(Method::POST, &format!("/v1/grants/{grant}/review"), none())
                .await?;
            if json {
                return print_json(&serde_json::json!({"reviewed": grant}));
            }
            println!("grant {grant} reviewed");
        }
    }
    Ok(())
}

/// `mayfly ssh ROLE user@host [-- cmd]`, `mayfly ssh ca TARGET`, `mayfly ssh krl TARGET FILE`.
#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct SshArgs {
    #[command(subcommand)]
    pub list: Option<SshCommand>,
    /// TARGET/ROLE.
    #[arg(required = true)]
    pub role: Option<String>,
    /// user@host.
    pub destination: Option<String>,
    #[arg(long, value_parser = parse_duration)]
    pub ttl: Option<Duration>,
    #[arg(long)]
    pub reason: Option<String>,
    #[arg(long)]
    pub ticket: Option<String>,
    #[arg(long)]
    pub break_glass: bool,
    /// Your private key (its `.pub` beside it is certified); default: a fresh key, deleted after.
    #[arg(long)]
    pub key: Option<PathBuf>,
    /// The host's SSH port (default: the target's).
    #[arg(long)]
    pub port: Option<u16>,
    /// An option for ssh (`-o OPTION`), e.g. `--ssh-option StrictHostKeyChecking=accept-new`.
    #[arg(long = "ssh-option")]
    pub ssh_options: Vec<String>,
    /// The command to run on the host.
    #[arg(last = true)]
    pub command: Vec<String>,
}

/// What a host of an SSH target needs from the broker. Each target has its own CA: a host trusts
/// the CA of its own target only, and loads that target's KRL.
#[derive(Debug, Subcommand)]
pub enum SshCommand {
    /// Print the target's CA public key (for `TrustedUserCAKeys`).
    Ca { target: String },
    /// Write the target's current KRL to FILE, atomically (for `RevokedKeys`).
    Krl { target: String, file: PathBuf },
}

/// What a service of an X.509 target needs from the broker. Each target has its own CA: a
/// service trusts the CA of its own target only, and loads that target's CRL.
#[derive(Debug, Subcommand)]
pub enum X509Command {
    /// Print the target's client CA certificate (PEM), to trust for client certificates.
    Ca { target: String },
    /// Write the target's current CRL (PEM) to FILE, atomically.
    Crl { target: String, file: PathBuf },
}

/// `mayfly x509 ca TARGET`, `mayfly x509 crl TARGET FILE`.
pub async fn x509(client: &Client, command: X509Command) -> anyhow::Result<()> {
    match command {
        X509Command::Ca { target } => {
            print!(
                "{}",
                client
                    .call_text(Method::GET, &ca_path("x509", &target)?)
                    .await?
            );
        }
        X509Command::Crl { target, file } => {
            let path = format!("/v1/x509/crl?target={}", checked_target(&target)?);
            write_list(client, &path, &file, "CRL").await?;
        }
    }
    Ok(())
}

/// `/v1/{kind}/ca?target=TARGET`.
fn ca_path(kind: &str, target: &str) -> anyhow::Result<String> {
    Ok(format!("/v1/{kind}/ca?target={}", checked_target(target)?))
}

/// A target's name as the broker takes it (so it goes in a URL as it is).
fn checked_target(target: &str) -> anyhow::Result<&str> {
    mayfly_core::GroupName::parse(target).map_err(|e| anyhow!("the target name {e}"))?;
    Ok(target)
}

/// `mayfly ssh ROLE user@host [-- cmd]`: requests access, has the broker certify a key (the
/// user's, or a fresh one kept in a private temporary directory and deleted after), runs `ssh` with
/// the certificate, and revokes the grant when ssh ends.
pub async fn ssh(client: &Client, args: SshArgs) -> anyhow::Result<ExitCode> {
    match args.list {
        Some(SshCommand::Ca { target }) => {
            print!(
                "{}",
                client
                    .call_text(Method::GET, &ca_path("ssh", &target)?)
                    .await?
            );
            return Ok(ExitCode::SUCCESS);
        }
        Some(SshCommand::Krl { target, file }) => {
            let path = format!("/v1/ssh/krl?target={}", checked_target(&target)?);
            write_list(client, &path, &file, "KRL").await?;
            return Ok(ExitCode::SUCCESS);
        }
        None => {}
    }
    let Some(role) = args.role else {
        bail!("give the role: `mayfly ssh TARGET/ROLE user@host --ttl 15m --reason R`");
    };
    let Some(destination) = args.destination else {
        bail!("give the host: `mayfly ssh {role} user@host --ttl 15m --reason R`");
    };
    let (Some(ttl), Some(reason)) = (args.ttl, args.reason) else {
        bail!("give --ttl and --reason: `mayfly ssh {role} {destination} --ttl 15m --reason R`");
    };
    let (key, port, command, ssh_options) = (args.key, args.port, args.command, args.ssh_options);
    let dir = tempfile::Builder::new()
        .prefix("mayfly-ssh-")
        .tempdir()
        .context("cannot make a private temporary directory")?;
    let (identity, public_key) = match key {
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
    let public_key = public_key.trim().to_owned();
    let (target, role_name) = split_role(&role)?;
    // One call where the policy needs no approval; else request, wait for approval, activate.
    let one_call = if args.break_glass {
        None
    } else {
        let body = CertificateRequest {
            target: target.clone(),
            role: role_name,
            ttl_seconds: ttl.as_secs(),
            reason: reason.clone(),
            ticket: args.ticket.clone(),
            public_key: Some(public_key.clone()),
            csr: None,
        };
        match client
            .call::<_, Credential>(Method::POST, "/v1/certificates", Some(&body))
            .await
        {
            Ok(credential) => Some(credential),
            Err(error)
                if error
                    .downcast_ref::<crate::client::ApiFailure>()
                    .is_some_and(|f| f.status.as_u16() == 409) =>
            {
                None
            }
            Err(error) => return Err(error),
        }
    };
    let credential = match one_call {
        Some(credential) => credential,
        None => {
            let request_args = RequestArgs {
                role,
                ttl,
                reason,
                ticket: args.ticket,
                break_glass: args.break_glass,
                wait: true,
            };
            let request = request(client, request_args, false).await?;
            if request.state != "allowed" {
                bail!("the request was not allowed: {}", request.decision);
            }
            let body = ActivateRequest {
                public_key: Some(public_key),
                csr: None,
            };
            client
                .call(
                    Method::POST,
                    &format!("/v1/requests/{}/activate", request.id),
                    Some(&body),
                )
                .await?
        }
    };
    let certificate = credential.certificate.clone().ok_or_else(|| {
        anyhow!("the role is not an SSH role: use `mayfly exec` or `mayfly activate`")
    })?;
    let certificate_path = dir.path().join("id-cert.pub");
    write_private(&certificate_path, certificate.as_bytes())?;
    eprintln!(
        "grant {} active for {} s (certificate key id {})",
        credential.grant.id, credential.grant.seconds_left, credential.username
    );
    let mut ssh = tokio::process::Command::new("ssh");
    ssh.arg("-i")
        .arg(&identity)
        .arg("-o")
        .arg(format!("CertificateFile={}", certificate_path.display()))
        .arg("-o")
        .arg("IdentitiesOnly=yes");
    for option in &ssh_options {
        ssh.arg("-o").arg(option);
    }
    ssh.arg("-p")
        .arg(port.unwrap_or(credential.port).to_string())
        .arg(&destination);
    if !command.is_empty() {
        ssh.arg("--").args(&command);
    }
    let mut child = ssh
        .spawn()
        .context("cannot run `ssh` (install openssh-client)")?;
    let status = until_done_or_interrupted(&mut child, "ssh").await?;
    drop(dir);
    match revoke_now(client, &credential.grant.id).await {
        Ok(_) => eprintln!(
            "grant {} revoked: its certificate is in the KRL of `{target}` (/v1/ssh/krl?target={target})",
            credential.grant.id
        ),
        Err(error) => eprintln!(
            "could not revoke grant {} now ({error:#}); its certificate expires at its TTL",
            credential.grant.id
        ),
    }
    Ok(exit_code(status))
}

/// Waits for `child` to end. Ctrl-C, a closed terminal or a `kill` end it early (`None`): the
/// caller revokes the grant all the same.
async fn until_done_or_interrupted(
    child: &mut tokio::process::Child,
    what: &str,
) -> anyhow::Result<Option<std::process::ExitStatus>> {
    Ok(tokio::select! {
        status = child.wait() => Some(status?),
        signal = interrupted() => {
            eprintln!("{signal}: stopping {what} and revoking the grant");
            let _ = child.kill().await;
            None
        }
    })
}

/// Asks the broker to revoke a grant now.
async fn revoke_now(client: &Client, grant_id: &str) -> anyhow::Result<GrantInfo> {
    client
        .call(
            Method::POST,
            &format!("/v1/grants/{grant_id}/revoke"),
            none(),
        )
        .await
}

/// The child's exit code as ours; 130 (as after Ctrl-C) when it was stopped.
fn exit_code(status: Option<std::process::ExitStatus>) -> ExitCode {
    match status.and_then(|s| s.code()) {
        Some(0) => ExitCode::SUCCESS,
        Some(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        None => ExitCode::from(130),
    }
}

/// Writes a file only its owner can read.
fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    let mut file = options
        .open(path)
        .with_context(|| format!("cannot create `{}`", path.display()))?;
    file.write_all(bytes)?;
    Ok(())
}

/// Fetches a revocation list (`what`: the KRL, the CRL) from `path` and replaces `file` with it
/// atomically (sshd or the service never reads half a list).
async fn write_list(client: &Client, path: &str, file: &Path, what: &str) -> anyhow::Result<()> {
    let bytes = client.call_bytes(Method::GET, path).await?;
    let partial = PathBuf::from(format!("{}.partial", file.display()));
    std::fs::write(&partial, &bytes)
        .with_context(|| format!("cannot write `{}`", partial.display()))?;
    std::fs::rename(&partial, file)
        .with_context(|| format!("cannot replace `{}`", file.display()))?;
    eprintln!(
        "{what} written to {} ({} bytes)",
        file.display(),
        bytes.len()
    );
    Ok(())
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

/// Runs `command` with a credential in its environment and revokes it when the command ends,
/// also on Ctrl-C.
pub async fn exec(
    client: &Client,
    args: RequestArgs,
    command: Vec<String>,
) -> anyhow::Result<ExitCode> {
    let Some((program, rest)) = command.split_first() else {
        bail!(
            "give the command to run after `--`, e.g. `mayfly exec prod-db/readonly --ttl 15m --reason R -- psql`"
        );
    };
    let request = request(client, RequestArgs { wait: true, ..args }, false).await?;
    // `request` printed to stdout; the command's own output follows.
    if request.state != "allowed" {
        bail!("the request was not allowed: {}", request.decision);
    }
    // Quiet: the credential goes only into the command's environment, never to the terminal.
    let credential: Credential = client
        .call(
            Method::POST,
            &format!("/v1/requests/{}/activate", request.id),
            none(),
        )
        .await?;
    eprintln!(
        "grant {} active for {} s",
        credential.grant.id, credential.grant.seconds_left
    );
    let mut command = tokio::process::Command::new(program);
    command
        .args(rest)
        .env("MAYFLY_HOST", &credential.host)
        .env("MAYFLY_PORT", credential.port.to_string())
        .env("MAYFLY_USER", &credential.username)
        .env("MAYFLY_PASSWORD", &credential.password)
        .env("MAYFLY_DATABASE", &credential.database);
    // What each system's own client reads. The mysql client and redis-cli take the user name
    // from no variable: pass `-u "$MAYFLY_USER"` / `--user "$MAYFLY_USER"` (docs/targets/).
    match credential.kind.as_str() {
        "mysql" => {
            command
                .env("MYSQL_HOST", &credential.host)
                .env("MYSQL_TCP_PORT", credential.port.to_string())
                .env("MYSQL_PWD", &credential.password);
        }
        "redis" => {
            command.env("REDISCLI_AUTH", &credential.password);
        }
        _ => {
            command
                .env("PGHOST", &credential.host)
                .env("PGPORT", credential.port.to_string())
                .env("PGUSER", &credential.username)
                .env("PGPASSWORD", &credential.password)
                .env("PGDATABASE", &credential.database);
        }
    }
    let mut child = command
        .spawn()
        .with_context(|| format!("cannot run `{program}`"))?;
    let status = until_done_or_interrupted(&mut child, &format!("`{program}`")).await?;
    match revoke_now(client, &credential.grant.id).await {
        Ok(_) => match wait_revoked(client, &credential.grant.id).await {
            Ok(true) => eprintln!("grant {} revoked on the target", credential.grant.id),
            Ok(false) => eprintln!(
                "grant {}: revocation requested; the broker keeps retrying it (see `mayfly grants --failing`)",
                credential.grant.id
            ),
            Err(error) => eprintln!(
                "grant {}: revocation requested; cannot follow it ({error:#}); see `mayfly grants`",
                credential.grant.id
            ),
        },
        Err(error) => eprintln!(
            "could not revoke grant {} now ({error:#}); it expires at its TTL, or run `mayfly revoke {}`",
            credential.grant.id, credential.grant.id
        ),
    }
    Ok(exit_code(status))
}
