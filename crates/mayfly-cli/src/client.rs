//! The HTTP client the CLI commands share: the broker's address, the session token, and error
//! answers turned into messages with a hint about what to do next.

use anyhow::Context;
use reqwest::{Method, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;

pub struct Client {
    http: reqwest::Client,
    addr: String,
    token: Option<String>,
}

/// An error answer of the broker.
#[derive(Debug)]
pub struct ApiFailure {
    pub status: StatusCode,
    pub code: String,
    pub message: String,
}

impl std::fmt::Display for ApiFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.message, self.status.as_u16())?;
        let hint = match (self.status.as_u16(), self.code.as_str()) {
            (_, "step_up_required") => {
                Some("run `mayfly step-up` with your TOTP code, then run this command again")
            }
            (401, _) => Some("run `mayfly login` first, or set MAYFLY_TOKEN"),
            (403, _) => Some("ask an admin for access"),
            (_, "sealed") => Some("unseal the broker with `mayfly operator unseal`"),
            (_, "not_initialized") => Some("initialize the broker with `mayfly operator init`"),
            (429, _) => Some("wait, then try again"),
            _ => None,
        };
        if let Some(hint) = hint {
            write!(f, "\nhint: {hint}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ApiFailure {}

impl Client {
    pub fn new(
        addr: &str,
        token: Option<String>,
        ca_cert: Option<&std::path::Path>,
    ) -> anyhow::Result<Client> {
        let mut builder = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(std::time::Duration::from_secs(60));
        if let Some(path) = ca_cert {
            let pem = std::fs::read(path)
                .with_context(|| format!("cannot read CA certificate `{}`", path.display()))?;
            let cert =
                reqwest::Certificate::from_pem(&pem).context("the CA certificate is not PEM")?;
            builder = builder.add_root_certificate(cert);
        }
        Ok(Client {
            http: builder.build().context("cannot build the HTTP client")?,
            addr: addr.trim_end_matches('/').to_owned(),
            token,
        })
    }

    /// The session token the calls carry, if any.
    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    /// The broker's address, without a trailing `/`.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Posts an `application/x-www-form-urlencoded` body without the session (OAuth endpoints,
    /// whose tokens are in the form); an OAuth error answer (`error`, `error_description`)
    /// becomes an [`ApiFailure`].
    pub async fn post_form(
        &self,
        path: &str,
        fields: &[(&str, String)],
    ) -> anyhow::Result<serde_json::Value> {
        let mut encoder = reqwest::Url::parse("http://form.invalid/").context("form encoder")?;
        encoder.query_pairs_mut().extend_pairs(fields);
        let body = encoder.query().unwrap_or_default().to_owned();
        let url = format!("{}{}", self.addr, path);
        let response = self
            .http
            .post(&url)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .map_err(|e| Unreachable {
                addr: self.addr.clone(),
                reason: e.to_string(),
            })?;
        let status = response.status();
        let bytes = response
            .bytes()
            .await
            .context("cannot read the broker's answer")?;
        let value: Option<serde_json::Value> = serde_json::from_slice(&bytes).ok();
        if status.is_success() {
            return value.context("the broker's answer is not JSON");
        }
        let text = |v: &serde_json::Value, name: &str| {
            v.get(name)
                .and_then(serde_json::Value::as_str)
                .map(str::to_owned)
        };
        let (code, message) = match &value {
            Some(v) if v.get("error").is_some_and(serde_json::Value::is_string) => (
                text(v, "error").unwrap_or_default(),
                text(v, "error_description")
                    .unwrap_or_else(|| text(v, "error").unwrap_or_default()),
            ),
            Some(v) => {
                let error = v.get("error");
                let field = |name: &str| {
                    error
                        .and_then(|e| e.get(name))
                        .and_then(serde_json::Value::as_str)
                };
                (
                    field("code").unwrap_or("unknown").to_owned(),
                    field("message").unwrap_or_default().to_owned(),
                )
            }
            None => ("unknown".into(), format!("the broker answered {status}")),
        };
        Err(ApiFailure {
            status,
            code,
            message,
        }
        .into())
    }

    pub async fn call<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> anyhow::Result<T> {
        let value = self.call_raw(method, path, body).await?;
        serde_json::from_value(value).context("the broker's answer has an unexpected shape")
    }

    /// A call whose answer is plain text.
    pub async fn call_text(&self, method: Method, path: &str) -> anyhow::Result<String> {
        let bytes = self.send(method, path, None::<&()>).await?;
        String::from_utf8(bytes).context("the broker's answer is not text")
    }

    /// A call whose answer is bytes (the KRL).
    pub async fn call_bytes(&self, method: Method, path: &str) -> anyhow::Result<Vec<u8>> {
        self.send(method, path, None::<&()>).await
    }

    pub async fn call_raw<B: Serialize>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> anyhow::Result<serde_json::Value> {
        let bytes = self.send(method, path, body).await?;
        if bytes.is_empty() {
            return Ok(serde_json::Value::Null);
        }
        serde_json::from_slice(&bytes).context("the broker's answer is not JSON")
    }

    /// Sends a call; a success's body, or the broker's error answer as an [`ApiFailure`].
    async fn send<B: Serialize>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> anyhow::Result<Vec<u8>> {
        let url = format!("{}{}", self.addr, path);
        let mut request = self.http.request(method, &url);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.map_err(|e| Unreachable {
            addr: self.addr.clone(),
            reason: e.to_string(),
        })?;
        let status = response.status();
        let bytes = response
            .bytes()
            .await
            .context("cannot read the broker's answer")?;
        if status.is_success() {
            return Ok(bytes.to_vec());
        }
        let body: Option<mayfly_api::ErrorBody> = serde_json::from_slice(&bytes).ok();
        let (code, message) = match body {
            Some(body) => (body.error.code, body.error.message),
            None => ("unknown".into(), format!("the broker answered {status}")),
        };
        Err(ApiFailure {
            status,
            code,
            message,
        }
        .into())
    }
}

/// The broker did not answer.
#[derive(Debug)]
pub struct Unreachable {
    pub addr: String,
    pub reason: String,
}

impl std::fmt::Display for Unreachable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "cannot reach the broker at {}: {}\nhint: is it running? start one with `mayfly dev`, or set MAYFLY_ADDR",
            self.addr, self.reason
        )
    }
}

impl std::error::Error for Unreachable {}
