//! This broker as one node of several on a shared store (docs/cluster.md): its identity and
//! heartbeat, the single-doer leases it holds, and the due hints it listens for.
//!
//! - **Heartbeat** ([`heartbeat`]): the node registers its row in `nodes` with a new generation
//!   at start, then extends its lease (`node_lease`, 1.5 s) every `heartbeat_interval` (0.5 s).
//!   The expiry engine's claims name the node and generation; once the lease ends, the other
//!   nodes claim those grants at once (the grant's epoch fences the late writes of a node that
//!   was only paused). A node that finds its own lease lapsed (a pause, a store outage longer
//!   than the lease) registers again with a new generation and trusts none of its old claims or
//!   leases: they are the others' to take, its own included.
//! - **Leases** ([`LEASES`]): work that must have one doer at a time (checkpoint signing, the
//!   orphan sweep, scheduled admin-secret rotation) runs on the node that holds its lease, renewed
//!   with the heartbeat and taken by another node once it ends. The work's commit carries the
//!   lease's fence ([`Cluster::fence`], `Change::Fenced`), checked in the same transaction: a
//!   lost lease changes nothing and is recorded as `lease.lost`.
//! - **Due hints** ([`listen`]): a commit that makes a grant due sooner sends its due time on
//!   PostgreSQL's `mayfly_due` channel; each node wakes its expiry engine early when that is
//!   before it would look again. A hint may be lost: the engine still polls.
//!
//! The engine also wakes when another node's lease would end if it is not renewed
//! ([`Cluster::next_lapse`]), so a dead node's due grants are taken over as its lease ends.

use std::sync::atomic::Ordering;
use std::time::Duration;

use mayfly_core::Timestamp;
use mayfly_store::{Claimant, LeaseFence, NodeRegistration};

use crate::state::Broker;

pub(crate) mod node;
use node::HINTS_KEPT;
pub use node::{ADMIN_ROTATION_LEASE, CHECKPOINT_LEASE, Cluster, LEASES, SWEEP_LEASE};

impl Broker {
    /// This node's part in the cluster.
    pub fn cluster(&self) -> &Cluster {
        &self.inner.cluster
    }

    /// The fence of the single-doer lease `name`: held already, or taken now if it is free (this
    /// node registered and unsealed). `None`: another node holds it; the work is theirs.
    pub async fn lease_fence(&self, name: &str) -> Option<LeaseFence> {
        let now = self.now();
        if let Some(fence) = self.cluster().fence(name, now) {
            return Some(fence);
        }
        let me = self.cluster().claimant()?;
        self.unsealed().await?;
        let until = now.saturating_add(self.inner.config.node_lease);
        match self.store().acquire_leases(&[name], &me, now, until).await {
            Ok(got) if !got.is_empty() => {
                self.note_leases(&me, &got, until, false, false);
                self.cluster().fence(name, now)
            }
            Ok(_) => None,
            Err(error) => {
                tracing::warn!(lease = name, error = %error, "cannot take a lease");
                None
            }
        }
    }

    /// Keeps the leases `got` (held by `me` until `until`; with `all`, the only ones held) and,
    /// with `wake`, wakes the work of those newly taken (not at a node's start: its work starts
    /// on its own schedule then).
    fn note_leases(
        &self,
        me: &Claimant,
        got: &[(String, i64)],
        until: Timestamp,
        all: bool,
        wake: bool,
    ) {
        let cluster = self.cluster();
        for name in cluster.keep_leases(me, got, until.unix_ms(), all) {
            tracing::info!(lease = %name, node = %me.name, generation = me.generation, "lease taken");
            if wake && let Some(work) = cluster.acquired(&name) {
                work.notify_one();
            }
        }
        for name in LEASES {
            let held = cluster.fence(name, self.now()).is_some();
            metrics::gauge!("mayfly_lease_held", "name" => name).set(if held { 1.0 } else { 0.0 });
        }
    }
}

/// One heartbeat: registers (again) or extends this node's lease, takes or renews the leases
/// while unsealed, and reads the other nodes (alive count, the next lapse). Errors are logged:
/// the next beat tries again.
pub async fn beat_once(broker: &Broker) {
    let cluster = broker.cluster();
    let config = &broker.inner.config;
    let now = broker.now();
    let until = now.saturating_add(config.node_lease);
    // `registered`: by this beat (at start, or after a lapse), so the leases it takes now are
    // not taken over from another running node.
    let (me, registered) = match cluster.claimant() {
        Some(me) => match broker.store().heartbeat_node(&me, now, until).await {
            Ok(true) => (Some(me), false),
            Ok(false) => {
                tracing::warn!(node = %me.name, generation = me.generation, "this node's lease lapsed (paused, or the store was out of reach): registering again; its claims and leases are the others' to take");
                metrics::counter!("mayfly_cluster_lease_lapses_total").increment(1);
                cluster.set_me(None);
                cluster.drop_leases();
                (register(broker, now, until).await, true)
            }
            Err(error) => {
                tracing::warn!(error = %error, "heartbeat failed");
                // Past its lease the node holds nothing, whatever the store says later.
                if now.unix_ms() >= cluster.lease_until_ms.load(Ordering::SeqCst) {
                    cluster.drop_leases();
                }
                (None, false)
            }
        },
        None => (register(broker, now, until).await, true),
    };
    if let Some(me) = &me {
        cluster
            .lease_until_ms
            .store(until.unix_ms(), Ordering::SeqCst);
        if broker.unsealed().await.is_some() {
            match broker.store().acquire_leases(&LEASES, me, now, until).await {
                // Those not renewed are lost: another node holds them now.
                Ok(got) => broker.note_leases(me, &got, until, true, !registered),
                Err(error) => tracing::warn!(error = %error, "cannot renew the leases"),
            }
        } else {
            cluster.drop_leases();
        }
    }
    match broker.store().nodes().await {
        Ok(nodes) => {
            let now_ms = now.unix_ms();
            let alive = nodes.iter().filter(|n| n.lease_until > now_ms).count();
            metrics::gauge!("mayfly_cluster_nodes_alive").set(alive as f64);
            let name = me.as_ref().map(|me| me.name.as_str());
            let next = nodes
                .iter()
                .filter(|n| Some(n.name.as_str()) != name && n.lease_until > now_ms)
                .map(|n| n.lease_until)
                .min()
                .unwrap_or(0);
            cluster.next_lapse_ms.store(next, Ordering::SeqCst);
        }
        Err(error) => tracing::warn!(error = %error, "cannot read the nodes"),
    }
}

async fn register(broker: &Broker, now: Timestamp, until: Timestamp) -> Option<Claimant> {
    let config = &broker.inner.config;
    let node = NodeRegistration {
        name: config.node_name.clone(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        address: config.public_url.clone(),
    };
    match broker.store().register_node(&node, now, until).await {
        Ok(Some(generation)) => {
            tracing::info!(node = %node.name, generation, "node registered");
            let me = Claimant {
                name: node.name,
                generation,
            };
            broker.cluster().set_me(Some(me.clone()));
            // Claims may be waiting for a registered node.
            broker.inner.expiry_wakeup.notify_one();
            Some(me)
        }
        Ok(None) => {
            tracing::warn!(node = %node.name, "a node of this name is alive: waiting for its lease to end (is `node_name` unique?)");
            None
        }
        Err(error) => {
            tracing::warn!(error = %error, "cannot register this node");
            None
        }
    }
}

/// The heartbeat task: a beat every `heartbeat_interval`; at shutdown the node leaves (its lease
/// and leases end at once, so the others take over without waiting).
pub async fn heartbeat(broker: Broker, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    let every = broker.inner.config.heartbeat_interval;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.changed() => break,
        }
        beat_once(&broker).await;
    }
    let cluster = broker.cluster();
    if let Some(me) = cluster.claimant() {
        cluster.drop_leases();
        if let Err(error) = broker.store().leave_node(&me, broker.now()).await {
            tracing::warn!(error = %error, "cannot leave the cluster cleanly; the others take over when the lease ends");
        }
    }
}

/// The due hints task: wakes the expiry engine when a hint is due before it would look again.
/// Nothing to do on a store without hints (SQLite).
pub async fn listen(broker: Broker, mut shutdown: tokio::sync::watch::Receiver<bool>) {
    let Some(mut hints) = broker.store().due_hints() else {
        return;
    };
    if let Ok(mut listening) = broker.cluster().hints_listening.lock() {
        *listening = Some(hints.listening.clone());
    }
    loop {
        let at = tokio::select! {
            received = hints.receiver.recv() => match received {
                Some(at) => at,
                None => return,
            },
            _ = shutdown.changed() => return,
        };
        let cluster = broker.cluster();
        if !cluster.hints_on.load(Ordering::SeqCst) {
            continue;
        }
        if let Ok(mut heard) = cluster.hints_heard.lock() {
            if heard.len() == HINTS_KEPT {
                heard.pop_front();
            }
            heard.push_back(at.unix_ms());
        }
        // 0: the engine is awake; the wake-up is kept for when it is about to sleep (it may
        // have read the store before the hint's commit).
        let next_look = broker.inner.expiry_next_look_ms.load(Ordering::SeqCst);
        if next_look == 0 {
            broker.inner.expiry_wakeup.notify_one();
        } else if at.unix_ms() < next_look {
            cluster.n_hint_wakeups.fetch_add(1, Ordering::SeqCst);
            metrics::counter!("mayfly_cluster_due_hint_wakeups_total").increment(1);
            broker.inner.expiry_wakeup.notify_one();
        }
    }
}

/// How long the expiry engine may sleep at most so that it looks again as another node's lease
/// would end: `wait`, or less.
pub fn bounded_by_lapse(broker: &Broker, wait: Duration) -> Duration {
    match broker.cluster().next_lapse() {
        // A millisecond after: the claim compares `lease_until > now`.
        Some(at) => wait.min(broker.now().until(at) + Duration::from_millis(1)),
        None => wait,
    }
}

impl Broker {
    /// The cluster's status (admins): the nodes and their claims in flight, the leases, the
    /// audit head, this node's sinks and the grants past due. Reads the nodes and leases tables
    /// and the due rows only.
    pub async fn cluster_status(
        &self,
        caller: &crate::auth::Caller,
    ) -> Result<mayfly_api::ClusterStatus, crate::error::BrokerError> {
        caller.require_admin()?;
        let now = self.now();
        let rows = self.store().cluster(now).await?;
        let (seq, hash) = self.store().audit_head().await?;
        let sinks = self.audit_sinks(caller).await?.sinks;
        let now_ms = now.unix_ms();
        let nodes = rows
            .nodes
            .into_iter()
            .map(|node| {
                let claims_in_flight = rows
                    .claims
                    .iter()
                    .find(|(name, _)| name == &node.name)
                    .map_or(0, |(_, n)| *n);
                mayfly_api::ClusterNode {
                    alive: node.lease_until > now_ms,
                    name: node.name,
                    generation: node.generation,
                    started_at_ms: node.started_at,
                    heartbeat_at_ms: node.heartbeat_at,
                    lease_until_ms: node.lease_until,
                    version: node.version,
                    address: node.address,
                    claims_in_flight,
                }
            })
            .collect();
        let leases = rows
            .leases
            .into_iter()
            .map(|lease| mayfly_api::ClusterLease {
                held: lease.until > now_ms,
                name: lease.name,
                holder: lease.holder,
                holder_generation: lease.holder_generation,
                epoch: lease.epoch,
                until_ms: lease.until,
            })
            .collect();
        Ok(mayfly_api::ClusterStatus {
            node: self.inner.config.node_name.clone(),
            now_ms,
            nodes,
            leases,
            audit_head: mayfly_api::AuditHead { seq, hash },
            sinks,
            past_due_grants: i64::try_from(self.past_due_grants().await?).unwrap_or(i64::MAX),
        })
    }
}
