//! Agents' routes (issue 22): the list of agents and the kill switch, for admins.

use axum::Extension;
use axum::extract::{Path, State};
use mayfly_api::{AgentDisabled, AgentInfo, ErrorBody};

use crate::api::json::ApiJson;
use crate::auth::Caller;
use crate::error::BrokerError;
use crate::origin::Origin;
use crate::state::Broker;

type ApiResult<T> = Result<ApiJson<T>, BrokerError>;

#[utoipa::path(get, path = "/v1/agents",
    responses((status = 200, body = Vec<AgentInfo>), (status = 403, body = ErrorBody)))]
pub async fn list_agents(
    State(broker): State<Broker>,
    caller: Caller,
) -> ApiResult<Vec<AgentInfo>> {
    broker.agents(caller.principal()).await.map(ApiJson)
}

#[utoipa::path(post, path = "/v1/agents/{name}/disable",
    responses((status = 200, body = AgentDisabled), (status = 400, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn disable_agent(
    State(broker): State<Broker>,
    Extension(meta): Extension<Origin>,
    caller: Caller,
    Path(name): Path<String>,
) -> ApiResult<AgentDisabled> {
    broker
        .disable_agent(&meta, caller.principal(), &name)
        .await
        .map(ApiJson)
}

#[utoipa::path(post, path = "/v1/agents/{name}/enable",
    responses((status = 204), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 409, body = ErrorBody)))]
pub async fn enable_agent(
    State(broker): State<Broker>,
    Extension(meta): Extension<Origin>,
    caller: Caller,
    Path(name): Path<String>,
) -> Result<axum::http::StatusCode, BrokerError> {
    broker
        .enable_agent(&meta, caller.principal(), &name)
        .await?;
    Ok(axum::http::StatusCode::NO_CONTENT)
}
