//! The pieces of issue 22 that other parts of the broker provide (the act chain on requests,
//! call approvals, the agents' kill switch), as the MCP tools call them. Until they
//! land this adapter keeps the tools compiling; it is replaced by the real calls after merging.

#![allow(
    dead_code,
    reason = "the adapter's types mirror the interfaces other branches provide"
)]

use mayfly_api::RequestInfo;
use mayfly_core::policy::Tool;
use mayfly_core::{Principal, Timestamp};

use crate::access::NewRequest;
use crate::error::BrokerError;
use crate::origin::Origin;
use crate::state::Broker;

/// One exact call, as an approval is bound to it.
pub struct CallKey {
    pub tool: Tool,
    pub args_sha256: String,
    pub subject: String,
    pub actors: Vec<String>,
}

pub enum CallGate {
    Proceed {
        approval_id: String,
        approver: String,
    },
    Waiting {
        approval_id: String,
        url: String,
        expires_at: Timestamp,
    },
    Refused {
        approval_id: String,
        reason: String,
    },
}

fn missing(what: &str) -> BrokerError {
    BrokerError::Unavailable(format!("{what} is not available on this broker yet"))
}

pub async fn create_request_as(
    broker: &Broker,
    meta: &Origin,
    principal: &Principal,
    _actors: &[String],
    new: NewRequest,
) -> Result<RequestInfo, BrokerError> {
    broker.create_request(meta, principal, None, new).await
}

pub async fn gate_call(
    _broker: &Broker,
    _meta: &Origin,
    _key: &CallKey,
    _summary: &str,
    _policies: &[String],
) -> Result<CallGate, BrokerError> {
    Err(missing("a person's approval of one call"))
}

pub async fn disabled_agent(
    _broker: &Broker,
    _keys: &[&str],
) -> Result<Option<String>, BrokerError> {
    Ok(None)
}
