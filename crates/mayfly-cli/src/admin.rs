//! The administrative commands: the seal (`status`, `operator`), sessions (`login`, `token`),
//! users and workload login (`user`, `jwt`).

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context;
use mayfly_api::*;
use reqwest::Method;

use crate::client::Client;
use crate::grammar::{ChatCommand, JwtCommand, LoginArgs, Operator, TokenCommand, UserCommand};
use crate::local::{read_line, read_secret, token_file, write_token_file};
use crate::output::{Failure, Output};

fn none() -> Option<&'static ()> {
    None
}

pub async fn status(client: &Client, out: &Output) -> anyhow::Result<()> {
    let status: SealStatus = client
        .call(Method::GET, "/v1/sys/seal-status", none())
        .await?;
    out.answer(&status, |status| {
        println!(
            "initialized: {}\nsealed:      {}\nshares:      {} (threshold {}, progress {})",
            status.initialized, status.sealed, status.n_shares, status.threshold, status.progress
        );
    })
}

/// `status --cluster`: the nodes, their heartbeats and claims, the leases, the audit head and
/// each sink's lag, the grants past due.
pub async fn cluster_status(client: &Client, out: &Output) -> anyhow::Result<()> {
    let status: ClusterStatus = client.call(Method::GET, "/v1/sys/cluster", none()).await?;
    out.answer(&status, |status| {
        println!(
            "answered by {} at {}",
            status.node,
            format_ms(status.now_ms)
        );
        println!("nodes:");
        for node in &status.nodes {
            let state = if node.alive { "alive" } else { "dead" };
            println!(
                "  {:<28} {:<5} gen {:<4} heartbeat {} ms ago, lease until +{} ms, {} claims in flight, v{} {}",
                node.name,
                state,
                node.generation,
                status.now_ms - node.heartbeat_at_ms,
                node.lease_until_ms - status.now_ms,
                node.claims_in_flight,
                node.version,
                node.address
            );
        }
        println!("leases:");
        for lease in &status.leases {
            let state = if lease.held { "held" } else { "free" };
            println!(
                "  {:<16} {:<4} by {} (gen {}), epoch {}, until +{} ms",
                lease.name,
                state,
                lease.holder,
                lease.holder_generation,
                lease.epoch,
                lease.until_ms - status.now_ms
            );
        }
        println!(
            "audit head: {}:{}",
            status.audit_head.seq, status.audit_head.hash
        );
        for sink in &status.sinks {
            println!(
                "  sink {:<16} {:<10} {} events behind ({:.1} s)",
                sink.name, sink.state, sink.lag_events, sink.lag_seconds
            );
        }
        println!("grants past due: {}", status.past_due_grants);
    })
}

pub async fn operator(client: &Client, command: Operator, out: &Output) -> anyhow::Result<()> {
    match command {
        Operator::Init { shares, threshold } => {
            let answer: InitResponse = client
                .call(
                    Method::POST,
                    "/v1/sys/init",
                    Some(&InitRequest { shares, threshold }),
                )
                .await?;
            out.answer(&answer, |answer| {
                for (i, share) in answer.shares.iter().enumerate() {
                    println!("Unseal share {}: {share}", i + 1);
                }
                println!("\nSetup code: {}\n", answer.setup_code);
                println!(
                    "These are shown once. Give each share to a different key holder; any {} of them unseal the broker.",
                    answer.threshold
                );
                println!(
                    "Next: `mayfly operator unseal` ({} times), then `mayfly operator setup --code CODE --username NAME`.",
                    answer.threshold
                );
            })
        }
        Operator::Unseal { share, reset } => {
            let request = if reset {
                UnsealRequest {
                    share: None,
                    reset: true,
                }
            } else {
                let share = match share {
                    Some(share) => share,
                    None => read_secret(None, "Unseal share: ")?,
                };
                UnsealRequest {
                    share: Some(share),
                    reset: false,
                }
            };
            let status: SealStatus = client
                .call(Method::POST, "/v1/sys/unseal", Some(&request))
                .await?;
            out.answer(&status, |status| {
                if status.sealed {
                    println!(
                        "sealed: {} of {} shares given",
                        status.progress, status.threshold
                    );
                } else {
                    println!("unsealed");
                }
            })
        }
        Operator::Setup {
            code,
            username,
            password_file,
        } => {
            let password = read_secret(password_file.as_deref(), "Password for the first admin: ")?;
            let request = SetupRequest {
                setup_code: code,
                username,
                password,
            };
            let user: UserCreated = client
                .call(Method::POST, "/v1/sys/setup", Some(&request))
                .await?;
            print_user(&user, out)
        }
        Operator::RotateSigningKey => {
            let rotated: SigningKeysRotated = client
                .call(Method::POST, "/v1/sys/token-keys/rotate", none())
                .await?;
            out.answer(&rotated, |rotated| {
                println!("new signing keys (generation {}):", rotated.generation);
                for key in &rotated.keys {
                    println!("  {:<6} {}", key.alg, key.kid);
                }
                if !rotated.previous.is_empty() {
                    println!(
                        "previous keys, published until {}:",
                        format_ms(rotated.previous_published_until_ms)
                    );
                    for key in &rotated.previous {
                        println!("  {:<6} {}", key.alg, key.kid);
                    }
                }
            })
        }
    }
}

/// `mayfly logout [--everywhere]`: ends this session, or every live session of the user; the
/// token file is forgotten either way.
pub async fn logout(client: &Client, everywhere: bool, out: &Output) -> anyhow::Result<()> {
    let path = if everywhere {
        "/v1/auth/token/revoke-all"
    } else {
        "/v1/auth/token/revoke-self"
    };
    client.call_raw(Method::POST, path, none()).await?;
    if let Some(path) = token_file() {
        let _ = std::fs::remove_file(path);
    }
    let message = if everywhere {
        "logged out everywhere: every session of yours is revoked"
    } else {
        "logged out: session revoked"
    };
    out.done(
        serde_json::json!({"revoked": true, "everywhere": everywhere}),
        message,
    )
}

pub async fn token(client: &Client, command: TokenCommand, out: &Output) -> anyhow::Result<()> {
    match command {
        TokenCommand::Lookup => {
            let info: TokenInfo = client
                .call(Method::GET, "/v1/auth/token/lookup-self", none())
                .await?;
            out.answer(&info, |info| {
                println!("session:    {}", info.id);
                println!(
                    "principal:  {}:{}",
                    info.principal.kind, info.principal.name
                );
                if !info.principal.groups.is_empty() {
                    println!("groups:     {}", info.principal.groups.join(", "));
                }
                println!("expires:    {}", format_ms(info.expires_at_ms));
            })
        }
        TokenCommand::Revoke => {
            client
                .call_raw(Method::POST, "/v1/auth/token/revoke-self", none())
                .await?;
            if let Some(path) = token_file() {
                let _ = std::fs::remove_file(path);
            }
            out.done(serde_json::json!({"revoked": true}), "session revoked")
        }
        TokenCommand::Exchange {
            audience,
            scope,
            ttl,
            subject_token_file,
            subject_token_type,
            actor_token_file,
            actor_token_type,
        } => {
            let subject = match &subject_token_file {
                Some(file) => read_token(file)?,
                None => client.token().map(str::to_owned).ok_or_else(|| {
                    Failure::Usage(
                        "no session: run `mayfly login` first, or give --subject-token-file".into(),
                    )
                })?,
            };
            let subject_type = token_type(subject_token_type.as_deref(), &subject)?;
            let mut fields = vec![
                ("grant_type", GRANT_TYPE.to_owned()),
                ("subject_token", subject),
                ("subject_token_type", subject_type),
                ("audience", audience),
            ];
            if let Some(scope) = scope {
                fields.push(("scope", scope));
            }
            if let Some(ttl) = ttl {
                fields.push(("expires_in", ttl.as_secs().to_string()));
            }
            if let Some(file) = &actor_token_file {
                let actor = read_token(file)?;
                fields.push((
                    "actor_token_type",
                    token_type(actor_token_type.as_deref(), &actor)?,
                ));
                fields.push(("actor_token", actor));
            }
            let answer = client.post_form("/v1/token/exchange", &fields).await?;
            if out.json || out.field.is_some() {
                return out.answer(&answer, |_| {});
            }
            let token = answer
                .get("access_token")
                .and_then(serde_json::Value::as_str)
                .context("the broker's answer has no `access_token`")?;
            println!("{token}");
            Ok(())
        }
    }
}

const GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";

/// A token from a file (`-`: stdin), without surrounding white space.
fn read_token(file: &Path) -> anyhow::Result<String> {
    let text = if file.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin()).context("cannot read the token from stdin")?
    } else {
        std::fs::read_to_string(file)
            .with_context(|| format!("cannot read the token file `{}`", file.display()))?
    };
    let token = text.trim();
    if token.is_empty() {
        return Err(Failure::Usage(format!("the token file `{}` is empty", file.display())).into());
    }
    Ok(token.to_owned())
}

/// The token type URN for a `--*-token-type` value; without one, `jwt` for a JWT (three
/// dot-separated parts) and `session` otherwise.
fn token_type(given: Option<&str>, token: &str) -> anyhow::Result<String> {
    let short = match given {
        Some(given) => given,
        None if token.split('.').count() == 3 => "jwt",
        None => "session",
    };
    Ok(match short {
        "session" => "urn:mayfly:token-type:session".to_owned(),
        "jwt" => "urn:ietf:params:oauth:token-type:jwt".to_owned(),
        "access_token" => "urn:ietf:params:oauth:token-type:access_token".to_owned(),
        urn if urn.starts_with("urn:") => urn.to_owned(),
        other => {
            return Err(Failure::Usage(format!(
                "token type `{other}`: use `session`, `jwt`, `access_token` or a URN"
            ))
            .into());
        }
    })
}

pub async fn user(client: &Client, command: UserCommand, out: &Output) -> anyhow::Result<()> {
    let update = |groups: Option<Vec<String>>, disabled: Option<bool>| UpdateUserRequest {
        groups,
        disabled,
    };
    match command {
        UserCommand::Add {
            username,
            groups,
            password_file,
        } => {
            let password = match password_file {
                Some(path) => Some(read_secret(Some(&path), "")?),
                None => None,
            };
            let request = CreateUserRequest {
                username,
                password,
                groups,
            };
            let user: UserCreated = client
                .call(Method::POST, "/v1/users", Some(&request))
                .await?;
            print_user(&user, out)
        }
        UserCommand::List => {
            let users: Vec<UserSummary> = client.call(Method::GET, "/v1/users", none()).await?;
            out.answer(&users, |users| {
                for user in users {
                    let state = if user.disabled { " (disabled)" } else { "" };
                    println!("{:<24} {}{state}", user.username, user.groups.join(","));
                }
            })
        }
        UserCommand::SetGroups { username, groups } => {
            update_user(client, &username, &update(Some(groups), None), out).await
        }
        UserCommand::Disable { username } => {
            update_user(client, &username, &update(None, Some(true)), out).await
        }
        UserCommand::Enable { username } => {
            update_user(client, &username, &update(None, Some(false)), out).await
        }
        UserCommand::LinkSlack {
            username,
            slack_user_id,
            unlink,
        } => {
            let slack_user_id = if unlink { None } else { slack_user_id };
            let request = LinkSlackRequest {
                slack_user_id: slack_user_id.clone(),
            };
            client
                .call_raw(
                    Method::PUT,
                    &format!("/v1/users/{username}/slack"),
                    Some(&request),
                )
                .await?;
            let answer = serde_json::json!({"username": username, "slack_user_id": slack_user_id});
            out.answer(&answer, |_| match &slack_user_id {
                Some(id) => println!("{username} is linked to Slack user {id}"),
                None => println!("{username} is linked to no Slack user"),
            })
        }
    }
}

/// `mayfly step-up`: a TOTP code proves a second factor for the current session now.
pub async fn step_up(client: &Client, code: Option<String>, out: &Output) -> anyhow::Result<()> {
    let totp = match code {
        Some(code) => code,
        None => read_line("TOTP code: ")?,
    };
    let answer: StepUpResponse = client
        .call(
            Method::POST,
            "/v1/auth/step-up",
            Some(&StepUpRequest { totp }),
        )
        .await?;
    out.answer(&answer, |answer| {
        println!(
            "second factor recorded; approving and break-glass work until {}",
            format_ms(answer.fresh_until_ms)
        );
    })
}

/// `mayfly chat …`: setting up approving from chat.
pub async fn chat(client: &Client, command: ChatCommand, out: &Output) -> anyhow::Result<()> {
    match command {
        ChatCommand::SlackSecret { secret_file } => {
            let signing_secret = read_secret(secret_file.as_deref(), "Slack signing secret: ")?;
            client
                .call_raw(
                    Method::PUT,
                    "/v1/chat/slack/signing-secret",
                    Some(&SlackSigningSecretRequest { signing_secret }),
                )
                .await?;
            out.answer(&serde_json::json!({"set": true}), |_| {
                println!("the Slack signing secret is set (sealed; it is not shown again)");
            })
        }
    }
}

async fn update_user(
    client: &Client,
    username: &str,
    request: &UpdateUserRequest,
    out: &Output,
) -> anyhow::Result<()> {
    let updated: UserUpdated = client
        .call(
            Method::PATCH,
            &format!("/v1/users/{username}"),
            Some(request),
        )
        .await?;
    out.answer(&updated, |updated| {
        let state = if updated.user.disabled {
            " (disabled)"
        } else {
            ""
        };
        println!(
            "{} {}{state}; {} active grants revoked",
            updated.user.username,
            updated.user.groups.join(","),
            updated.grants_revoked
        );
    })
}

fn print_user(user: &UserCreated, out: &Output) -> anyhow::Result<()> {
    out.answer(user, |user| {
        println!(
            "user `{}` created (groups: {})",
            user.username,
            user.groups.join(", ")
        );
        if let Some(password) = &user.password {
            println!("password:    {password}");
        }
        println!("TOTP secret: {}", user.totp.secret_base32);
        println!("TOTP URL:    {}", user.totp.otpauth_url);
        println!("These are shown once: add the TOTP secret to an authenticator app now.");
    })
}

pub async fn jwt(client: &Client, command: JwtCommand, out: &Output) -> anyhow::Result<()> {
    match command {
        JwtCommand::DeleteRole { name } => {
            let removed: BindingRemoved = client
                .call(
                    Method::DELETE,
                    &format!("/v1/auth/jwt/roles/{name}"),
                    none(),
                )
                .await?;
            out.answer(&removed, |removed| {
                println!(
                    "role `{}` removed; {} active grants revoked",
                    removed.name, removed.grants_revoked
                );
            })
        }
        JwtCommand::Issuer {
            name,
            issuer,
            jwks_url,
            public_key,
            leeway,
        } => {
            let mut public_keys = Vec::new();
            for spec in public_key {
                let (file, kid) = match spec.rsplit_once(':') {
                    Some((file, kid)) if !Path::new(&spec).exists() => {
                        (file.to_owned(), Some(kid.to_owned()))
                    }
                    _ => (spec.clone(), None),
                };
                let pem = std::fs::read_to_string(&file)
                    .with_context(|| format!("cannot read public key `{file}`"))?;
                public_keys.push(JwtPublicKey { kid, pem });
            }
            // Neither a JWKS URL nor keys: the broker discovers the JWKS URL.
            let discover = jwks_url.is_none() && public_keys.is_empty();
            let config = JwtIssuerConfig {
                issuer,
                discover,
                jwks_url,
                public_keys,
                leeway_seconds: leeway.as_secs(),
            };
            client
                .call_raw(
                    Method::PUT,
                    &format!("/v1/auth/jwt/issuers/{name}"),
                    Some(&config),
                )
                .await?;
            out.done(
                serde_json::json!({"ok": true, "issuer": name}),
                &format!("issuer `{name}` saved"),
            )
        }
        JwtCommand::Role {
            name,
            issuer,
            audiences,
            bound_claims,
            name_claim,
            ttl,
            agent,
        } => {
            let config = JwtRoleConfig {
                issuer,
                audiences,
                bound_claims: claim_matches(&bound_claims)?,
                workload_name_claim: name_claim,
                token_ttl_seconds: ttl.as_secs(),
                agent,
            };
            client
                .call_raw(
                    Method::PUT,
                    &format!("/v1/auth/jwt/roles/{name}"),
                    Some(&config),
                )
                .await?;
            out.done(
                serde_json::json!({"ok": true, "role": name}),
                &format!("role `{name}` saved"),
            )
        }
    }
}

/// `CLAIM=VALUE` flags: one value per claim, or any of several when a claim repeats.
fn claim_matches(specs: &[String]) -> anyhow::Result<BTreeMap<String, ClaimMatch>> {
    let mut claims: BTreeMap<String, ClaimMatch> = BTreeMap::new();
    for spec in specs {
        let (claim, value) = spec
            .split_once('=')
            .ok_or_else(|| Failure::Usage(format!("--bound-claim `{spec}`: use CLAIM=VALUE")))?;
        let next = match claims.remove(claim) {
            None => ClaimMatch::One(value.to_owned()),
            Some(ClaimMatch::One(first)) => ClaimMatch::Any(vec![first, value.to_owned()]),
            Some(ClaimMatch::Any(mut values)) => {
                values.push(value.to_owned());
                ClaimMatch::Any(values)
            }
        };
        claims.insert(claim.to_owned(), next);
    }
    Ok(claims)
}

pub async fn login(client: &Client, args: LoginArgs, out: &Output) -> anyhow::Result<()> {
    let answer: LoginResponse = if args.oidc {
        crate::sso::login(client, args.provider, args.no_browser).await?
    } else if let Some(role) = args.jwt_role {
        let file = args
            .jwt_file
            .ok_or_else(|| Failure::Usage("--jwt-file is required with --jwt-role".into()))?;
        let jwt = if file.as_os_str() == "-" {
            let mut text = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)?;
            text
        } else {
            std::fs::read_to_string(&file)
                .with_context(|| format!("cannot read `{}`", file.display()))?
        };
        let request = JwtLoginRequest {
            role,
            jwt: jwt.trim().to_owned(),
        };
        client
            .call(Method::POST, "/v1/auth/jwt/login", Some(&request))
            .await?
    } else {
        let username = args.username.ok_or_else(|| {
            Failure::Usage("give a user name (`mayfly login alice`), --oidc or --jwt-role".into())
        })?;
        let password = read_secret(args.password_file.as_deref(), "Password: ")?;
        let totp = match args.totp {
            Some(totp) => totp,
            None => read_line("TOTP code: ")?,
        };
        let request = PasswordLoginRequest {
            username,
            password,
            totp,
        };
        client
            .call(Method::POST, "/v1/auth/password/login", Some(&request))
            .await?
    };
    if args.print_token {
        return out.answer(&answer, |answer| println!("{}", answer.token));
    }
    let path = write_token_file(&answer.token)?;
    out.answer(&answer.session, |session| {
        println!(
            "logged in as {}:{} until {}; token saved in {} (0600)",
            session.principal.kind,
            session.principal.name,
            format_ms(session.expires_at_ms),
            path.display()
        );
    })
}

/// A Unix time in milliseconds as RFC 3339.
pub fn format_ms(ms: i64) -> String {
    let Ok(at) = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000) else {
        return format!("{ms} ms");
    };
    at.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| format!("{ms} ms"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repeated_claim_matches_any_of_its_values() {
        let claims =
            claim_matches(&["ref=main".into(), "repo=a".into(), "ref=dev".into()]).unwrap();
        assert!(matches!(claims.get("repo"), Some(ClaimMatch::One(v)) if v == "a"));
        assert!(
            matches!(claims.get("ref"), Some(ClaimMatch::Any(v)) if v == &["main".to_owned(), "dev".to_owned()])
        );
        assert!(claim_matches(&["nothing".into()]).is_err());
    }
}
