//! Continuous verification: after a change of policies or of a principal's binding, active
//! grants are decided again and revoked early when no longer allowed.

use mayfly_store::GrantRecord;

use crate::error::BrokerError;
use crate::state::Broker;

/// How many active grants continuous verification reads at a time.
const RECHECK_PAGE: i64 = 500;

/// Continuous verification: after a change of policies or of a principal's binding (a user's
/// groups, a disabled user, a removed workload role), every active grant is decided again with the
/// request it came from; one that is no longer allowed is revoked early, with that reason. The
/// grants are read a page at a time, so memory does not grow with their number.
///
/// `principals` picks the grants by their principal key (`user:alice`, `workload:ROLE:NAME`), in
/// the store's query: a change to one binding reads and re-decides only that principal's grants.
pub async fn recheck_active(
    broker: &Broker,
    reason: &str,
    principals: mayfly_store::Principals<'_>,
) -> Result<usize, BrokerError> {
    let mut revoked = 0;
    let meta = crate::origin::Origin::internal("policy-recheck");
    let mut after = String::new();
    loop {
        let page = broker
            .store()
            .grants_after(
                mayfly_store::GrantFilter::Active,
                principals,
                &after,
                RECHECK_PAGE,
            )
            .await?;
        let Some(last) = page.last() else { break };
        after = last.id.clone();
        revoked += recheck_page(broker, &meta, page, reason).await?;
    }
    // Open requests too: one allowed (or waiting for approvals) under the old rules must not
    // become a grant under the new ones.
    let mut after = String::new();
    let mut withdrawn = 0;
    loop {
        let page = broker
            .store()
            .open_requests_after(&after, RECHECK_PAGE)
            .await?;
        let Some(last) = page.last() else { break };
        after = last.id.clone();
        for request in page {
            let key = crate::access::principal_key(&request.principal);
            let concerned = match principals {
                mayfly_store::Principals::All => true,
                mayfly_store::Principals::Exactly(exactly) => key == exactly,
                mayfly_store::Principals::StartingWith(prefix) => key.starts_with(prefix),
                mayfly_store::Principals::Acting(acting) => {
                    key == acting || request.actors.iter().any(|actor| actor == acting)
                }
            };
            if concerned
                && request.expires_at > broker.now()
                && !broker.still_allowed(&request, None).await?
                && broker.withdraw(&meta, &request, reason).await?
            {
                withdrawn += 1;
            }
        }
    }
    if withdrawn > 0 {
        tracing::info!(n_requests = withdrawn, reason, "open requests withdrawn");
    }
    Ok(revoked)
}

async fn recheck_page(
    broker: &Broker,
    meta: &crate::origin::Origin,
    grants: Vec<GrantRecord>,
    reason: &str,
) -> Result<usize, BrokerError> {
    let mut revoked = 0;
    for grant in grants {
        let Some(request) = broker.store().request(&grant.request_id).await? else {
            continue;
        };
        if broker.still_allowed(&request, None).await? {
            continue;
        }
        match broker.revoke_now(meta, &grant, "broker", reason).await {
            Ok(()) => revoked += 1,
            Err(BrokerError::Conflict(_)) => {}
            Err(error) => return Err(error),
        }
    }
    Ok(revoked)
}
