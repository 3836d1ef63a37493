//! `GET /v1/notifications`: the outbox's undelivered notifications, for admins.

use axum::extract::{Query, State};
use mayfly_api::NotificationInfo;

use crate::api::json::ApiJson;
use crate::auth::Caller;
use crate::error::BrokerError;
use crate::notify::listing::NotificationsQuery;
use crate::state::Broker;

#[utoipa::path(get, path = "/v1/notifications", params(("failing" = Option<bool>, Query, description = "only those failing")), responses((status = 200, body = Vec<NotificationInfo>), (status = 403, body = mayfly_api::ErrorBody)))]
pub async fn list_notifications(
    State(broker): State<Broker>,
    caller: Caller,
    query: Result<Query<NotificationsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<ApiJson<Vec<NotificationInfo>>, BrokerError> {
    let Query(query) =
        query.map_err(|e| BrokerError::BadRequest(format!("query: {}", e.body_text())))?;
    broker
        .list_notifications(&caller, &query)
        .await
        .map(ApiJson)
}
