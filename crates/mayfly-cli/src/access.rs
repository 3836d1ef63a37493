//! The access commands: targets, roles, policies, requests and approvals, grants, reviews, and
//! what hosts and services of certificate targets fetch (CA, KRL, CRL).

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use mayfly_api::*;
use mayfly_core::TargetKind;
use reqwest::Method;

use crate::client::Client;
use crate::grammar::{
    PolicyCommand, ProxyCommand, RequestFlags, ReviewCommand, RoleCommand, SshCommand,
    TargetCommand, X509Command,
};
use crate::local::{read_file, read_secret};
use crate::output::{Failure, Output};

pub fn none() -> Option<&'static ()> {
    None
}

/// `TARGET/ROLE` as its two names.
pub fn split_role(text: &str) -> anyhow::Result<(String, String)> {
    let (target, role) = text.split_once('/').ok_or_else(|| {
        Failure::Usage(format!("`{text}`: give TARGET/ROLE, e.g. prod-db/readonly"))
    })?;
    Ok((target.to_owned(), role.to_owned()))
}

pub async fn target(client: &Client, command: TargetCommand, out: &Output) -> anyhow::Result<()> {
    match command {
        TargetCommand::Add {
            kind,
            name,
            url,
            admin_user,
            admin_password_file,
            rotate_admin_every,
        } => {
            let admin_password = if kind.is_certificate() {
                String::new()
            } else {
                if admin_user.is_empty() {
                    return Err(Failure::Usage(
                        "give --admin-user: the account the broker administers logins with".into(),
                    )
                    .into());
                }
                read_secret(admin_password_file.as_deref(), "Admin password: ")?
            };
            let request = TargetRequest {
                kind: kind.to_string(),
                name,
                url,
                admin_user,
                admin_password,
                rotate_admin_every_seconds: rotate_admin_every.map(|every| every.as_secs()),
            };
            let info: TargetInfo = client
                .call(Method::POST, "/v1/targets", Some(&request))
                .await?;
            out.answer(&info, |info| {
                println!(
                    "target `{}` ({}) saved: {}",
                    info.name,
                    info.kind,
                    info.url.as_deref().unwrap_or("")
                );
            })
        }
        TargetCommand::List => {
            let targets: Vec<TargetInfo> = client.call(Method::GET, "/v1/targets", none()).await?;
            out.answer(&targets, |targets| {
                for target in targets {
                    let rotated = match target.admin_rotated_at_ms {
                        Some(at) => format!("admin secret set at {}", crate::admin::format_ms(at)),
                        None => String::new(),
                    };
                    let every = match target.rotate_admin_every_seconds {
                        Some(every) => format!(", rotated every {every} s"),
                        None => String::new(),
                    };
                    let failing = match &target.admin_rotation_error {
                        Some(error) => format!(", ROTATION FAILING: {error}"),
                        None => String::new(),
                    };
                    println!(
                        "{:<20} {:<10} {} {rotated}{every}{failing}",
                        target.name,
                        target.kind,
                        target.url.as_deref().unwrap_or("")
                    );
                }
            })
        }
        TargetCommand::RotateAdmin { name } => {
            if name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                return Err(Failure::Usage(format!(
                    "`{name}` is not a target name: letters, digits, `-` and `_`"
                ))
                .into());
            }
            let path = format!("/v1/targets/{name}/rotate-admin");
            let rotated: AdminRotated = client.call(Method::POST, &path, none()).await?;
            out.answer(&rotated, |rotated| {
                println!(
                    "the admin secret of `{}` is rotated: a fresh password only the broker knows",
                    rotated.target
                );
            })
        }
    }
}

pub async fn role(client: &Client, command: RoleCommand, out: &Output) -> anyhow::Result<()> {
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
            out.answer(&info, |info| {
                println!(
                    "role `{}/{}` saved (max TTL {} s)",
                    info.target, info.name, info.max_ttl_seconds
                );
            })
        }
        RoleCommand::List => {
            let roles: Vec<RoleInfo> = client.call(Method::GET, "/v1/roles", none()).await?;
            out.answer(&roles, |roles| {
                for role in roles {
                    println!(
                        "{}/{:<20} max TTL {} s",
                        role.target, role.name, role.max_ttl_seconds
                    );
                }
            })
        }
    }
}

pub async fn policy(client: &Client, command: PolicyCommand, out: &Output) -> anyhow::Result<()> {
    match command {
        PolicyCommand::Put { file } => {
            let request = PolicyText {
                text: read_file(&file)?,
            };
            let info: PolicyInfo = client
                .call(Method::PUT, "/v1/policy", Some(&request))
                .await?;
            out.answer(&info, |info| {
                println!("policies saved (version {})", info.version);
            })
        }
        PolicyCommand::Show => {
            let info: PolicyInfo = client.call(Method::GET, "/v1/policy", none()).await?;
            out.answer(&info, |info| println!("{}", info.text))
        }
        PolicyCommand::Schema => {
            let text = client.call_text(Method::GET, "/v1/policy/schema").await?;
            out.answer(&serde_json::json!({ "schema": text }), |_| {
                println!("{text}");
            })
        }
    }
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

/// Whether a request's state is a refusal (exit 3).
pub fn refused(state: &str) -> bool {
    matches!(state, "denied" | "expired")
}

/// `mayfly request`: asks, waits when told to, prints the request. Returns it for its exit code.
pub async fn request(
    client: &Client,
    flags: RequestFlags,
    wait: bool,
    timeout: Option<Duration>,
    out: &Output,
) -> anyhow::Result<RequestInfo> {
    let mut info = ask(client, flags).await?;
    if wait {
        info = wait_decided(client, info, timeout, out).await?;
    }
    out.answer(&info, print_request)?;
    Ok(info)
}

/// Asks for access.
pub async fn ask(client: &Client, flags: RequestFlags) -> anyhow::Result<RequestInfo> {
    let (target, role) = split_role(&flags.role)?;
    let body = AccessRequest {
        target,
        role,
        ttl_seconds: flags.ttl.as_secs(),
        reason: flags.reason,
        ticket: flags.ticket,
        break_glass: flags.break_glass,
    };
    client.call(Method::POST, "/v1/requests", Some(&body)).await
}

/// Follows a request while it is pending, for at most `timeout` (then a [`Failure::Timeout`]).
/// Progress goes to stderr, on a terminal only.
pub async fn wait_decided(
    client: &Client,
    mut info: RequestInfo,
    timeout: Option<Duration>,
    out: &Output,
) -> anyhow::Result<RequestInfo> {
    const POLL: Duration = Duration::from_secs(2);
    let started = tokio::time::Instant::now();
    let interactive = !out.json && std::io::stderr().is_terminal();
    while info.state == "pending" {
        let waited = started.elapsed();
        let pause = match timeout {
            Some(timeout) if waited >= timeout => {
                if interactive {
                    eprintln!();
                }
                return Err(Failure::Timeout(format!(
                    "request {} is still pending after {} s: it stays pending (see `mayfly requests --pending`)",
                    info.id,
                    timeout.as_secs()
                ))
                .into());
            }
            Some(timeout) => POLL.min(timeout - waited),
            None => POLL,
        };
        if interactive {
            eprint!(
                "\rwaiting for approval ({}/{})… {} s",
                info.approvers.len(),
                info.approvals_needed,
                waited.as_secs()
            );
        }
        tokio::time::sleep(pause).await;
        info = client
            .call(Method::GET, &format!("/v1/requests/{}", info.id), none())
            .await?;
    }
    if interactive {
        eprintln!();
    }
    Ok(info)
}

pub async fn decide(
    client: &Client,
    id: &str,
    comment: Option<String>,
    approve: bool,
    out: &Output,
) -> anyhow::Result<()> {
    let path = format!(
        "/v1/requests/{id}/{}",
        if approve { "approve" } else { "deny" }
    );
    let body = ApproveRequest {
        comment: comment.unwrap_or_default(),
    };
    let info: RequestInfo = client.call(Method::POST, &path, Some(&body)).await?;
    out.answer(&info, print_request)
}

pub async fn requests(client: &Client, pending: bool, out: &Output) -> anyhow::Result<()> {
    let path = if pending {
        "/v1/requests?pending=true"
    } else {
        "/v1/requests"
    };
    let requests: Vec<RequestInfo> = client.call(Method::GET, path, none()).await?;
    out.answer(&requests, |requests| {
        for r in requests {
            println!(
                "{}  {:<10} {:<24} {}/{}  {}",
                r.id, r.state, r.principal, r.target, r.role, r.reason
            );
        }
    })
}

pub async fn activate(client: &Client, id: &str, out: &Output) -> anyhow::Result<()> {
    let credential: Credential = client
        .call(Method::POST, &format!("/v1/requests/{id}/activate"), none())
        .await?;
    out.answer(&credential, |credential| {
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
        if let Some(certificate) = &credential.certificate {
            println!("  certificate\n{}", certificate.trim_end());
        }
        if let Some(key) = &credential.private_key {
            println!("  private key\n{}", key.trim_end());
        }
    })
}

pub async fn grants(client: &Client, failing: bool, all: bool, out: &Output) -> anyhow::Result<()> {
    let path = if failing {
        "/v1/grants?failing=true"
    } else if all {
        "/v1/grants?all=true"
    } else {
        "/v1/grants"
    };
    let grants: Vec<GrantInfo> = client.call(Method::GET, path, none()).await?;
    out.answer(&grants, |grants| {
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
    })
}

/// Asks the broker to revoke a grant now.
pub async fn revoke_now(client: &Client, grant_id: &str) -> anyhow::Result<GrantInfo> {
    client
        .call(
            Method::POST,
            &format!("/v1/grants/{grant_id}/revoke"),
            none(),
        )
        .await
}

pub async fn revoke(client: &Client, id: &str, out: &Output) -> anyhow::Result<()> {
    let info = revoke_now(client, id).await?;
    out.answer(&info, |info| {
        println!(
            "grant {} is {}; the broker revokes it now and verifies on the target",
            info.id, info.state
        );
    })
}

pub async fn renew(client: &Client, id: &str, ttl: Duration, out: &Output) -> anyhow::Result<()> {
    let body = RenewRequest {
        ttl_seconds: ttl.as_secs(),
    };
    let info: GrantInfo = client
        .call(Method::POST, &format!("/v1/grants/{id}/renew"), Some(&body))
        .await?;
    out.answer(&info, |info| {
        println!("grant {} renewed: {} s left", info.id, info.seconds_left);
    })
}

pub async fn review(client: &Client, command: ReviewCommand, out: &Output) -> anyhow::Result<()> {
    match command {
        ReviewCommand::List => {
            let grants: Vec<GrantInfo> = client.call(Method::GET, "/v1/review", none()).await?;
            out.answer(&grants, |grants| {
                for g in grants {
                    println!(
                        "{}  {:<9} {:<24} {}/{}",
                        g.id, g.state, g.principal, g.target, g.role
                    );
                }
            })
        }
        ReviewCommand::Ack { grant } => {
            client
                .call_raw(Method::POST, &format!("/v1/grants/{grant}/review"), none())
                .await?;
            out.done(
                serde_json::json!({"reviewed": grant}),
                &format!("grant {grant} reviewed"),
            )
        }
    }
}

/// `mayfly notifications [--failing]`: the outbox's undelivered notifications.
pub async fn notifications(client: &Client, failing: bool, out: &Output) -> anyhow::Result<()> {
    let path = if failing {
        "/v1/notifications?failing=true"
    } else {
        "/v1/notifications"
    };
    let list: Vec<NotificationInfo> = client.call(Method::GET, path, none()).await?;
    out.answer(&list, |list| {
        for n in list {
            let state = if n.failing { "failing" } else { "pending" };
            println!(
                "{}  {:<8} {:<18} {:<12} attempts={} {}",
                n.id,
                state,
                n.kind,
                n.channel,
                n.n_attempts,
                n.last_error.as_deref().unwrap_or("")
            );
        }
    })
}

/// `mayfly ssh ca TARGET`, `mayfly ssh krl TARGET FILE`.
pub async fn ssh_lists(client: &Client, command: SshCommand, out: &Output) -> anyhow::Result<()> {
    match command {
        SshCommand::Ca { target } => {
            let key = client
                .call_text(Method::GET, &ca_path(TargetKind::Ssh, &target)?)
                .await?;
            out.answer(&serde_json::json!({ "public_key": key.trim_end() }), |_| {
                print!("{key}");
            })
        }
        SshCommand::Krl { target, file } => {
            let path = format!("/v1/ssh/krl?target={}", checked_target(&target)?);
            write_list(client, &path, &file, "KRL", out).await
        }
    }
}

/// `mayfly x509 ca TARGET`, `mayfly x509 crl TARGET FILE`.
pub async fn x509(client: &Client, command: X509Command, out: &Output) -> anyhow::Result<()> {
    match command {
        X509Command::Ca { target } => {
            let pem = client
                .call_text(Method::GET, &ca_path(TargetKind::X509, &target)?)
                .await?;
            out.answer(&serde_json::json!({ "certificate": pem }), |_| {
                print!("{pem}");
            })
        }
        X509Command::Crl { target, file } => {
            let path = format!("/v1/x509/crl?target={}", checked_target(&target)?);
            write_list(client, &path, &file, "CRL", out).await
        }
    }
}

/// `/v1/{kind}/ca?target=TARGET`.
fn ca_path(kind: TargetKind, target: &str) -> anyhow::Result<String> {
    Ok(format!("/v1/{kind}/ca?target={}", checked_target(target)?))
}

/// A target's name as the broker takes it (so it goes in a URL as it is).
fn checked_target(target: &str) -> anyhow::Result<&str> {
    mayfly_core::GroupName::parse(target)
        .map_err(|e| Failure::Usage(format!("the target name {e}")))?;
    Ok(target)
}

/// Fetches a revocation list (`what`: the KRL, the CRL) from `path` and replaces `file` with it
/// atomically (sshd or the service never reads half a list).
async fn write_list(
    client: &Client,
    path: &str,
    file: &Path,
    what: &str,
    out: &Output,
) -> anyhow::Result<()> {
    let bytes = client.call_bytes(Method::GET, path).await?;
    let partial = PathBuf::from(format!("{}.partial", file.display()));
    std::fs::write(&partial, &bytes)
        .with_context(|| format!("cannot write `{}`", partial.display()))?;
    std::fs::rename(&partial, file)
        .with_context(|| format!("cannot replace `{}`", file.display()))?;
    let answer = serde_json::json!({ "file": file, "bytes": bytes.len() });
    if out.json || out.field.is_some() {
        return out.answer(&answer, |_| {});
    }
    eprintln!(
        "{what} written to {} ({} bytes)",
        file.display(),
        bytes.len()
    );
    Ok(())
}

/// The kind of the target a role belongs to, as the broker lists it to the caller (`None` when
/// it is not listed, the request will say why; or when it is of a kind this CLI does not know).
/// `mayfly proxy add|ls|rm`.
pub async fn proxy(client: &Client, command: ProxyCommand, out: &Output) -> anyhow::Result<()> {
    match command {
        ProxyCommand::Add {
            name,
            upstream,
            inject,
            rate,
            route_rate,
            cors_origins,
            max_request_bytes,
            max_response_bytes,
            timeout,
        } => {
            let request = ProxyRouteRequest {
                name,
                upstream,
                inject,
                per_principal: rate.as_deref().map(parse_rate).transpose()?,
                per_route: route_rate.as_deref().map(parse_rate).transpose()?,
                cors_origins,
                max_request_bytes,
                max_response_bytes,
                timeout_ms: timeout.map(|t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX)),
            };
            let route: ProxyRouteInfo = client
                .call(Method::POST, "/v1/proxy-routes", Some(&request))
                .await?;
            out.answer(&route, |route| {
                println!(
                    "proxy route `{}` saved: /v1/proxy/{}/… → {}",
                    route.name, route.name, route.upstream
                );
            })
        }
        ProxyCommand::Ls => {
            let routes: Vec<ProxyRouteInfo> =
                client.call(Method::GET, "/v1/proxy-routes", none()).await?;
            out.answer(&routes, |routes| {
                for route in routes {
                    println!(
                        "{:<20} {:<40} {}",
                        route.name,
                        route.upstream,
                        route.inject.join(" ")
                    );
                }
            })
        }
        ProxyCommand::Rm { name } => {
            client
                .call_raw(Method::DELETE, &format!("/v1/proxy-routes/{name}"), none())
                .await?;
            out.done(
                serde_json::json!({"name": name, "removed": true}),
                &format!("proxy route `{name}` removed"),
            )
        }
    }
}

/// `RATE[/BURST]`: requests per second, and how many at once (default: twice the rate, at least 1).
fn parse_rate(text: &str) -> anyhow::Result<ProxyRate> {
    let usage = || Failure::Usage(format!("`{text}`: give RATE[/BURST], e.g. 10/20 or 0.5"));
    let (rate, burst) = match text.split_once('/') {
        Some((rate, burst)) => (rate, Some(burst)),
        None => (text, None),
    };
    let per_second: f64 = rate.parse().map_err(|_| usage())?;
    let burst = match burst {
        Some(burst) => burst.parse().map_err(|_| usage())?,
        None => ((per_second * 2.0).ceil() as u32).max(1),
    };
    Ok(ProxyRate { per_second, burst })
}

pub async fn target_kind(client: &Client, target: &str) -> anyhow::Result<Option<TargetKind>> {
    let targets: Vec<TargetInfo> = client
        .call(Method::GET, "/v1/targets", none())
        .await
        .context("cannot list the targets")?;
    Ok(targets
        .into_iter()
        .find(|t| t.name == target)
        .and_then(|t| t.kind.parse().ok()))
}
