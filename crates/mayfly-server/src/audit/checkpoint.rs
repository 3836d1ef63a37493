//! Checkpoints: at least every N events or T seconds the broker signs the chain head with the
//! Ed25519 key it holds through the barrier, and the signed checkpoint joins the chain.
//!
//! One node signs at a time: the holder of the `checkpoint` lease (`cluster/`). Its checkpoint
//! is committed fenced by the lease, so one signed by a node that lost the lease meanwhile (a
//! pause) is refused and recorded as `lease.lost`, never as a checkpoint: the chain of
//! checkpoints stays contiguous whichever node signs. A node that takes the lease signs at once
//! (the previous holder may have died with events unsigned).

use std::sync::atomic::Ordering;
use std::time::Duration;

use mayfly_core::audit::{CHECKPOINT_KIND, Checkpoint, Outcome, key_id};
use mayfly_store::{Change, LeaseFence, StoreError, Write, WriteOutcome};

use crate::cluster::CHECKPOINT_LEASE;
use crate::error::BrokerError;
use crate::state::Broker;

#[derive(Debug, PartialEq, Eq)]
pub enum CheckpointOutcome {
    /// A checkpoint was written at this sequence number.
    Worked(i64),
    /// Nothing new to sign, the broker is sealed, or another node holds the lease.
    Idle,
    /// The lease was lost before the checkpoint was committed: nothing was signed into the log.
    LeaseLost,
}

/// Signs everything after the last checkpoint, if there is anything.
pub async fn run_once(broker: &Broker) -> Result<CheckpointOutcome, BrokerError> {
    if broker.unsealed().await.is_none() {
        return Ok(CheckpointOutcome::Idle);
    }
    let Some(fence) = broker.lease_fence(CHECKPOINT_LEASE).await else {
        return Ok(CheckpointOutcome::Idle);
    };
    sign_under(broker, fence).await
}

/// Signs everything after the last checkpoint, if there is anything, committed only if `fence`
/// (the `checkpoint` lease as this node took it) still holds.
pub async fn sign_under(
    broker: &Broker,
    fence: LeaseFence,
) -> Result<CheckpointOutcome, BrokerError> {
    let Some(keys) = broker.unsealed().await else {
        return Ok(CheckpointOutcome::Idle);
    };
    let store = broker.store();
    let from_seq = last_covered(broker).await?;
    let (head_seq, _) = store.audit_head().await?;
    if head_seq <= from_seq {
        return Ok(CheckpointOutcome::Idle);
    }
    let mut hashes = Vec::new();
    let mut after = from_seq;
    while after < head_seq {
        let page = store
            .audit_events(after, (head_seq - after).min(2000))
            .await?;
        if page.is_empty() {
            break;
        }
        for event in page {
            if event.seq > head_seq {
                break;
            }
            let hash: [u8; 32] = hex::decode(&event.hash)
                .ok()
                .and_then(|h| h.try_into().ok())
                .ok_or_else(|| {
                    BrokerError::Internal(format!("event {} has a malformed hash", event.seq))
                })?;
            hashes.push(hash);
            after = event.seq;
        }
    }
    let public_key = keys.audit_signer.public_key();
    let Some(checkpoint) = Checkpoint::over(from_seq, &hashes, &key_id(&public_key)) else {
        return Ok(CheckpointOutcome::Idle);
    };
    let signature = keys.audit_signer.sign(&checkpoint.message());
    let to_seq = checkpoint.to_seq;
    let mut event = broker.draft(CHECKPOINT_KIND, Outcome::Ok);
    event.actor = Some("broker".into());
    event.details = checkpoint.into_details(&signature);
    let write = Write {
        change: Some(Change::fenced(fence, None)),
        event,
    };
    match broker.commit(write).await? {
        WriteOutcome::Applied { seq } => {
            tracing::debug!(seq, covers = to_seq, "audit checkpoint written");
            metrics::counter!("mayfly_audit_checkpoints_total").increment(1);
            Ok(CheckpointOutcome::Worked(seq))
        }
        WriteOutcome::Conflict { seq, reason } => {
            tracing::warn!(seq, reason = %reason, "checkpoint not written: this node lost the lease");
            Ok(CheckpointOutcome::LeaseLost)
        }
    }
}

async fn last_covered(broker: &Broker) -> Result<i64, StoreError> {
    let Some(last) = broker.store().last_checkpoint().await? else {
        return Ok(0);
    };
    let body: serde_json::Value = serde_json::from_str(&last.body)
        .map_err(|_| StoreError::Corrupt("checkpoint body is not JSON".into()))?;
    // Everything up to and including the checkpoint event itself is covered from here on; the
    // next checkpoint starts after the previous one's `to_seq` so the chain of checkpoints is
    // contiguous.
    Ok(body
        .get("details")
        .and_then(|d| d.get("to_seq"))
        .and_then(serde_json::Value::as_i64)
        .unwrap_or(0))
}

/// How often the holder of the lease looks at the store's head for events the other nodes
/// committed.
const HEAD_LOOK: Duration = Duration::from_secs(1);

/// Loops: a checkpoint every `checkpoint_interval`, or sooner once `checkpoint_every_events`
/// events were committed since the last one — by this node (counted as they commit) or by any
/// node (the store's head, looked at every second while this node holds the lease).
pub async fn run(broker: Broker, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    let interval = broker.inner.config.checkpoint_interval;
    let every = broker.inner.config.checkpoint_every_events.max(1);
    let committed = broker.inner.committer.n_committed.clone();
    let notify = broker.inner.committer.committed.clone();
    let mut last_count = committed.load(Ordering::Relaxed);
    let mut deadline = tokio::time::Instant::now() + interval;
    let taken = broker.cluster().acquired(CHECKPOINT_LEASE);
    // The head as of this node's last checkpoint (0: none yet, or another node's).
    let mut signed_head: i64 = 0;
    let mut look = tokio::time::interval(HEAD_LOOK);
    look.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = look.tick() => {
                if broker.cluster().fence(CHECKPOINT_LEASE, broker.now()).is_none() {
                    continue;
                }
                let Ok((head, _)) = broker.store().audit_head().await else {
                    continue;
                };
                if signed_head == 0 {
                    signed_head = head;
                }
                if u64::try_from(head - signed_head).unwrap_or(0) < every {
                    continue;
                }
            }
            _ = tokio::time::sleep_until(deadline) => {}
            // This node just took the lease: sign what the previous holder left.
            _ = async {
                match &taken {
                    Some(taken) => taken.notified().await,
                    None => std::future::pending().await,
                }
            } => {}
            _ = notify.notified() => {
                let count = committed.load(Ordering::Relaxed);
                if count.saturating_sub(last_count) < every {
                    continue;
                }
            }
            _ = shutdown.changed() => return,
        }
        last_count = committed.load(Ordering::Relaxed);
        deadline = tokio::time::Instant::now() + interval;
        match run_once(&broker).await {
            Ok(CheckpointOutcome::Worked(seq)) => signed_head = seq,
            Ok(CheckpointOutcome::Idle | CheckpointOutcome::LeaseLost) => {}
            Err(error) => {
                tracing::warn!(error = %error, "audit checkpoint failed; retrying soon");
                deadline = tokio::time::Instant::now() + Duration::from_secs(1);
            }
        }
    }
}
