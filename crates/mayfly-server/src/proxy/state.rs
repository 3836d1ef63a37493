//! What the proxy keeps in memory, as the broker's state holds it (a leaf: the state holds it
//! without importing the proxy's calls, which take the broker).

use std::time::Duration;

use super::limits;
use crate::error::BrokerError;

/// What the proxy keeps in memory: its HTTP client (verified TLS, no redirects followed) and the
/// rate limits' buckets.
#[derive(Debug)]
pub struct ProxyState {
    pub http: reqwest::Client,
    pub limits: limits::ProxyLimits,
    /// The MCP tools' budgets (`crate::mcp`): the same buckets, keyed per tool and per target.
    pub tool_limits: limits::ProxyLimits,
}

impl ProxyState {
    pub fn new() -> Result<ProxyState, BrokerError> {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| BrokerError::Internal(format!("proxy http client: {e}")))?;
        Ok(ProxyState {
            http,
            limits: limits::ProxyLimits::default(),
            tool_limits: limits::ProxyLimits::default(),
        })
    }
}
