//! The cluster's status (`GET /v1/sys/cluster`), for admins: nodes, leases, the audit head and
//! its lag on each sink (docs/cluster.md).

use axum::extract::State;
use mayfly_api::{ClusterStatus, ErrorBody};

use crate::api::json::ApiJson;
use crate::auth::Caller;
use crate::error::BrokerError;
use crate::state::Broker;

#[utoipa::path(get, path = "/v1/sys/cluster",
    responses((status = 200, body = ClusterStatus), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody)))]
pub async fn cluster_status(
    State(broker): State<Broker>,
    caller: Caller,
) -> Result<ApiJson<ClusterStatus>, BrokerError> {
    broker.cluster_status(&caller).await.map(ApiJson)
}
