//! Single sign-on: `mayfly login --oidc` (the loopback flow, as `gh` and `tsh` do it) and the
//! providers' administration (`mayfly sso add|ls|rm`).
//!
//! The loopback flow: a listener on `127.0.0.1:0`; a PKCE verifier of the CLI's own, whose S256
//! challenge goes to the broker with the listener's URL; the browser logs in at the provider,
//! the broker's callback sends it to the listener with a one-time code; the CLI trades the code
//! and its verifier for a session. The code alone is worth nothing to whoever sees it.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use mayfly_api::{
    LoginResponse, SsoProviderInfo, SsoProviderList, SsoProviderRequest, SsoStartRequest,
    SsoStarted, SsoTokenRequest,
};
use reqwest::Method;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::client::Client;
use crate::grammar::SsoCommand;
use crate::local::read_secret;
use crate::output::{Failure, Output};

/// How long the CLI waits for the browser to come back.
const WAIT_FOR_BROWSER: Duration = Duration::from_secs(300);
const PAGE: &str = "<!doctype html><meta charset=utf-8><title>Mayfly</title><p>Mayfly: you can close this window and go back to the terminal.</p>";

/// Logs in through provider `provider` (or the broker's only one) in the browser.
pub async fn login(
    client: &Client,
    provider: Option<String>,
    no_browser: bool,
) -> anyhow::Result<LoginResponse> {
    let provider = match provider {
        Some(provider) => provider,
        None => {
            let providers: SsoProviderList = client
                .call(Method::GET, "/v1/sso/providers", None::<&()>)
                .await?;
            match providers.names().as_slice() {
                [only] => (*only).to_owned(),
                [] => return Err(Failure::Usage("the broker has no SSO provider".into()).into()),
                several => {
                    return Err(Failure::Usage(format!(
                        "give --provider, one of: {}",
                        several.join(", ")
                    ))
                    .into());
                }
            }
        }
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .context("cannot listen on 127.0.0.1")?;
    let port = listener.local_addr()?.port();
    let redirect_uri = format!("http://127.0.0.1:{port}/callback");
    let verifier = URL_SAFE_NO_PAD.encode(mayfly_crypto::random_bytes::<32>()?);
    let challenge = URL_SAFE_NO_PAD.encode(mayfly_crypto::sha256(verifier.as_bytes()));
    let request = SsoStartRequest {
        provider,
        redirect_uri: Some(redirect_uri),
        code_challenge: Some(challenge),
    };
    let started: SsoStarted = client
        .call(Method::POST, "/v1/sso/start", Some(&request))
        .await?;
    eprintln!(
        "Open this URL in a browser to log in:\n\n  {}\n",
        started.authorization_url
    );
    if !no_browser {
        open_browser(&started.authorization_url);
    }
    let code = tokio::time::timeout(WAIT_FOR_BROWSER, wait_for_code(&listener))
        .await
        .map_err(|_| Failure::Timeout("the browser did not come back within 5 minutes".into()))??;
    let request = SsoTokenRequest {
        code,
        code_verifier: verifier,
    };
    client
        .call(Method::POST, "/v1/sso/token", Some(&request))
        .await
}

fn open_browser(url: &str) {
    let opener = if cfg!(target_os = "macos") {
        "open"
    } else {
        "xdg-open"
    };
    let _ = std::process::Command::new(opener)
        .arg(url)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn();
}

/// Serves the listener until the browser arrives at `/callback` with a code (other paths get a
/// 404 and the wait goes on); answers it a page saying to go back to the terminal.
async fn wait_for_code(listener: &tokio::net::TcpListener) -> anyhow::Result<String> {
    loop {
        let (mut stream, _) = listener.accept().await?;
        let mut buffer = Vec::new();
        let mut chunk = [0u8; 1024];
        while !buffer.windows(4).any(|w| w == b"\r\n\r\n") && buffer.len() < 8192 {
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                break;
            }
            buffer.extend_from_slice(chunk.get(..n).unwrap_or_default());
        }
        let text = String::from_utf8_lossy(&buffer);
        let target = text
            .lines()
            .next()
            .and_then(|line| line.split(' ').nth(1))
            .unwrap_or("/");
        let url = reqwest::Url::parse(&format!("http://127.0.0.1{target}")).ok();
        let Some(url) = url.filter(|url| url.path() == "/callback") else {
            let _ = stream
                .write_all(
                    b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                )
                .await;
            continue;
        };
        let query: BTreeMap<String, String> = url.query_pairs().into_owned().collect();
        let answer = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/html; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{PAGE}",
            PAGE.len()
        );
        let _ = stream.write_all(answer.as_bytes()).await;
        return match query.get("code") {
            Some(code) => Ok(code.clone()),
            None => Err(anyhow::anyhow!("the browser came back without a code")),
        };
    }
}

pub async fn sso(client: &Client, command: SsoCommand, out: &Output) -> anyhow::Result<()> {
    match command {
        SsoCommand::Add {
            name,
            issuer,
            client_id,
            client_secret_file,
            groups_claim,
            map_groups,
            username_claim,
            scopes,
            step_up_acr_values,
        } => {
            let client_secret = if client_secret_file.as_os_str() == "-" {
                read_secret(None, "Client secret: ")?
            } else {
                read_secret(Some(&client_secret_file), "")?
            };
            let mut group_map = BTreeMap::new();
            for pair in &map_groups {
                let Some((theirs, ours)) = pair.split_once('=') else {
                    return Err(Failure::Usage(format!(
                        "--map-group `{pair}`: give IDP-GROUP=MAYFLY-GROUP"
                    ))
                    .into());
                };
                group_map.insert(theirs.to_owned(), ours.to_owned());
            }
            let request = SsoProviderRequest {
                issuer,
                client_id,
                client_secret: client_secret.trim().to_owned(),
                groups_claim,
                group_map,
                username_claim: Some(username_claim),
                scopes,
                step_up_acr_values,
            };
            let info: SsoProviderInfo = client
                .call(
                    Method::PUT,
                    &format!("/v1/sso/providers/{name}"),
                    Some(&request),
                )
                .await?;
            out.answer(&info, |info| {
                println!(
                    "provider `{}` saved (issuer {}); register this redirect URI at the provider: {}",
                    info.name, info.issuer, info.redirect_uri
                );
            })
        }
        SsoCommand::Ls => {
            let providers: SsoProviderList = client
                .call(Method::GET, "/v1/sso/providers", None::<&()>)
                .await?;
            out.answer(&providers, |providers| match providers {
                SsoProviderList::Full(list) => {
                    for provider in list {
                        println!(
                            "{:<16} {:<48} client {}  redirect {}",
                            provider.name,
                            provider.issuer,
                            provider.client_id,
                            provider.redirect_uri
                        );
                    }
                }
                SsoProviderList::Public(list) => {
                    for provider in list {
                        println!(
                            "{:<16} {:<48} redirect {}",
                            provider.name, provider.issuer, provider.redirect_uri
                        );
                    }
                }
            })
        }
        SsoCommand::Rm { name } => {
            client
                .call_raw(
                    Method::DELETE,
                    &format!("/v1/sso/providers/{name}"),
                    None::<&()>,
                )
                .await?;
            out.answer(&serde_json::json!({"removed": name}), |_| {
                println!("provider `{name}` removed");
            })
        }
    }
}
