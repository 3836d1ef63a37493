//! The orphan sweep: logins of this broker's namespace on a target that no live grant knows are
//! revoked and the finding audited (run at start, then every `SWEEP_INTERVAL`). One node sweeps
//! at a time, the holder of the `sweep` lease (`cluster/`); each finding is committed fenced by
//! it, so a node that lost the lease while it swept records `lease.lost` instead (the revocation
//! itself, idempotent, may have been done twice).

use mayfly_core::audit::Outcome;
use mayfly_store::{Change, Write, WriteOutcome};

use crate::cluster::SWEEP_LEASE;
use crate::error::BrokerError;
use crate::state::Broker;

/// The sweep: every role on a target that carries the broker's prefix and namespace (`mf_<namespace>_`) but has no live grant is an
/// orphan (a store restored from an older backup, a crash the intent did not cover, a manual
/// copy): it is revoked and the finding audited. Returns how many were found (0 when another
/// node holds the sweep's lease).
pub async fn sweep(broker: &Broker) -> Result<usize, BrokerError> {
    let Some(keys) = broker.unsealed().await else {
        return Ok(0);
    };
    let Some(fence) = broker.lease_fence(SWEEP_LEASE).await else {
        return Ok(0);
    };
    let mut found = 0;
    for record in broker.store().targets().await? {
        let target = broker.target(&record.name).await?;
        let logins = match target.managed_logins().await {
            // Only this broker's namespace: another broker sharing the server owns the rest.
            Ok(logins) => logins
                .into_iter()
                .filter(|login| keys.namespace.owns(login))
                .collect::<Vec<_>>(),
            Err(error) => {
                tracing::warn!(target = %record.name, error = %error, "sweep cannot list the target's roles");
                continue;
            }
        };
        // Only the target's own logins are looked up, a chunk at a time: memory does not grow
        // with the number of leases in the store.
        let names: Vec<String> = logins.iter().map(ToString::to_string).collect();
        let live = broker.store().live_logins(&names).await?;
        for login in logins {
            if live.contains(login.as_str()) {
                continue;
            }
            // A grant that is already revoked but whose role came back, or no grant at all.
            found += 1;
            let result = target.revoke(&login, None).await;
            let outcome = if result.is_ok() {
                Outcome::Ok
            } else {
                Outcome::Failed
            };
            let mut event = broker
                .draft(mayfly_core::audit::SWEEP_ORPHAN_KIND, outcome)
                .detail("target", record.name.clone())
                .detail("login", login.to_string());
            if let Err(error) = &result {
                event = event.detail("error", error.to_string());
            }
            event.actor = Some("broker".into());
            let write = Write {
                change: Some(Change::fenced(fence.clone(), None)),
                event,
            };
            if let WriteOutcome::Conflict { reason, .. } = broker.commit(write).await? {
                tracing::warn!(reason = %reason, "sweep stopped: this node lost the lease");
                return Ok(found);
            }
            metrics::counter!("mayfly_sweep_orphans_total", "target" => record.name.clone())
                .increment(1);
        }
    }
    Ok(found)
}
