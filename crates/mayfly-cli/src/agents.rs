//! `mayfly agent …`: the agents the broker knows, the kill switch, and a token for an agent to act
//! for you over MCP (token exchange with `actor=agent:NAME`, `may_act=agent:NAME`).

use anyhow::Context;
use mayfly_api::{AgentDisabled, AgentInfo};
use reqwest::Method;

use crate::client::Client;
use crate::grammar::AgentCommand;
use crate::output::{Failure, Output};

const GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
const TYPE_SESSION: &str = "urn:mayfly:token-type:session";

pub async fn agent(client: &Client, command: AgentCommand, out: &Output) -> anyhow::Result<()> {
    match command {
        AgentCommand::Ls => {
            let agents: Vec<AgentInfo> = client.call(Method::GET, "/v1/agents", none()).await?;
            out.answer(&agents, |agents| {
                if agents.is_empty() {
                    println!("no agents");
                }
                for agent in agents {
                    let state = if agent.disabled {
                        "DISABLED"
                    } else {
                        "enabled"
                    };
                    let login = if agent.jwt_role {
                        "jwt role"
                    } else {
                        "delegated"
                    };
                    println!("agent:{:<24} {state:<9} {login}", agent.name);
                }
            })
        }
        AgentCommand::Disable { name } => {
            let done: AgentDisabled = client
                .call(
                    Method::POST,
                    &format!("/v1/agents/{}", path_segment(&name, "disable")?),
                    none(),
                )
                .await?;
            out.answer(&done, |done| {
                println!(
                    "agent `{}` disabled: its sessions and pending calls ended, {} grants being revoked, {} requests withdrawn",
                    done.name, done.grants_revoked, done.requests_withdrawn
                );
            })
        }
        AgentCommand::Enable { name } => {
            client
                .call_raw(
                    Method::POST,
                    &format!("/v1/agents/{}", path_segment(&name, "enable")?),
                    none(),
                )
                .await?;
            out.done(
                serde_json::json!({"ok": true, "agent": name}),
                &format!("agent `{name}` enabled"),
            )
        }
        AgentCommand::Token {
            name,
            ttl,
            audience,
        } => {
            let session = client
                .token()
                .map(str::to_owned)
                .ok_or_else(|| Failure::Usage("no session: run `mayfly login` first".into()))?;
            let audience = match audience {
                Some(audience) => audience,
                None => mcp_resource(client).await,
            };
            let actor = format!("agent:{name}");
            let mut fields = vec![
                ("grant_type", GRANT_TYPE.to_owned()),
                ("subject_token", session),
                ("subject_token_type", TYPE_SESSION.to_owned()),
                ("audience", audience),
                ("actor", actor.clone()),
                ("may_act", actor),
            ];
            if let Some(ttl) = ttl {
                fields.push(("expires_in", ttl.as_secs().to_string()));
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

/// The broker's MCP resource: the `resource` of its protected-resource metadata (RFC 9728), or
/// `<address>/mcp` when it publishes none.
async fn mcp_resource(client: &Client) -> String {
    let metadata = client
        .call_raw(
            Method::GET,
            "/.well-known/oauth-protected-resource/mcp",
            none(),
        )
        .await;
    if let Ok(metadata) = metadata
        && let Some(resource) = metadata.get("resource").and_then(serde_json::Value::as_str)
    {
        return resource.to_owned();
    }
    format!("{}/mcp", client.addr())
}

/// `NAME/ACTION` for a URL path, refusing a name that is no agent's (it would change the path).
fn path_segment(name: &str, action: &str) -> anyhow::Result<String> {
    let ok = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_-.".contains(&b));
    if !ok {
        return Err(Failure::Usage(format!(
            "`{name}` is not an agent's name (lowercase letters, digits, `_`, `-`, `.`)"
        ))
        .into());
    }
    Ok(format!("{name}/{action}"))
}

fn none() -> Option<&'static ()> {
    None
}
