//! The cluster's status (`GET /v1/sys/cluster`, admins; `mayfly status --cluster`): the nodes
//! sharing the store and their heartbeats, the claims each has in flight, who holds each
//! single-doer lease, the audit head and each sink's lag, and the grants past due.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::{AuditHead, AuditSinkStatus};

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ClusterStatus {
    /// The node that answered.
    pub node: String,
    /// Its clock when it answered (unix ms): `alive` and the leases are judged at this time.
    pub now_ms: i64,
    /// Every node that ever registered, by name (a dead one stays, not alive).
    pub nodes: Vec<ClusterNode>,
    /// The single-doer leases, by name.
    pub leases: Vec<ClusterLease>,
    pub audit_head: AuditHead,
    /// The answering node's forwarding sinks and how far behind the head each is.
    pub sinks: Vec<AuditSinkStatus>,
    /// Live grants whose time to be revoked (or retried) has passed, claimed or not.
    pub past_due_grants: i64,
}

/// One node (a running broker) as its row in the store says.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ClusterNode {
    pub name: String,
    /// New at each start, and after the node found its own lease lapsed.
    pub generation: i64,
    pub started_at_ms: i64,
    pub heartbeat_at_ms: i64,
    /// Until when the others trust it is alive.
    pub lease_until_ms: i64,
    pub alive: bool,
    pub version: String,
    /// Where it serves (its public URL).
    pub address: String,
    /// Due grants it has claimed and not finished (claims that have not timed out).
    pub claims_in_flight: i64,
}

/// One single-doer lease (`checkpoint`, `sweep`, `admin-rotation`).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ClusterLease {
    pub name: String,
    /// The node that holds (or last held) it, and its generation.
    pub holder: String,
    pub holder_generation: i64,
    /// Bumped whenever the holder changes: the fence its work is committed under.
    pub epoch: i64,
    pub until_ms: i64,
    /// Whether it has not ended yet.
    pub held: bool,
}
