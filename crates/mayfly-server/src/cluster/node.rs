//! This node's part in the cluster, as the broker's state holds it: its identity, its own lease,
//! the single-doer leases it holds, and what it heard of due hints. The tasks that fill it are in
//! `mod.rs`; this is a leaf (the state holds it without importing the broker).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use mayfly_core::Timestamp;
use mayfly_store::{Claimant, LeaseFence};

/// The lease of checkpoint signing (`audit/checkpoint.rs`).
pub const CHECKPOINT_LEASE: &str = "checkpoint";
/// The lease of the orphan sweep (`access/sweep.rs`).
pub const SWEEP_LEASE: &str = "sweep";
/// The lease of scheduled admin-secret rotations (`access/rotation.rs`).
pub const ADMIN_ROTATION_LEASE: &str = "admin-rotation";
/// Every single-doer lease a node takes when it can.
pub const LEASES: [&str; 3] = [CHECKPOINT_LEASE, SWEEP_LEASE, ADMIN_ROTATION_LEASE];

/// This node's part in the cluster, shared by its tasks (held by the broker's state).
#[derive(Debug)]
pub struct Cluster {
    /// The node's name and its current generation, once registered (and not lapsed).
    pub(super) me: RwLock<Option<Claimant>>,
    /// Until when (unix ms, broker clock) this node's own lease runs, as last extended.
    pub(super) lease_until_ms: AtomicI64,
    /// The single-doer leases this node holds, and until when.
    pub(super) held: Mutex<HashMap<String, (LeaseFence, i64)>>,
    /// One wake-up per lease, notified when this node newly takes it (the work runs at once:
    /// the previous holder may have left it undone).
    pub(super) acquired: HashMap<&'static str, Arc<tokio::sync::Notify>>,
    /// The earliest end of another live node's lease, as last read (unix ms; 0: none).
    pub(super) next_lapse_ms: AtomicI64,
    /// Whether due hints wake the expiry engine (tests switch them off to prove the poll).
    pub(super) hints_on: AtomicBool,
    /// Due hints that woke this node's expiry engine.
    pub(super) n_hint_wakeups: AtomicU64,
    /// The last due hints heard (while on), newest last, at most [`HINTS_KEPT`].
    pub(super) hints_heard: Mutex<std::collections::VecDeque<i64>>,
    /// Whether the store's listening connection is up (none on a store without hints).
    pub(super) hints_listening: Mutex<Option<Arc<AtomicBool>>>,
}

/// How many of the last due hints are kept (for tests and the debug log).
pub(super) const HINTS_KEPT: usize = 64;

impl Default for Cluster {
    fn default() -> Self {
        Cluster {
            me: RwLock::new(None),
            lease_until_ms: AtomicI64::new(0),
            held: Mutex::new(HashMap::new()),
            acquired: LEASES
                .iter()
                .map(|name| (*name, Arc::new(tokio::sync::Notify::new())))
                .collect(),
            next_lapse_ms: AtomicI64::new(0),
            hints_on: AtomicBool::new(true),
            n_hint_wakeups: AtomicU64::new(0),
            hints_heard: Mutex::new(std::collections::VecDeque::new()),
            hints_listening: Mutex::new(None),
        }
    }
}

impl Cluster {
    /// This node as a claimant of due grants, while it is registered.
    pub fn claimant(&self) -> Option<Claimant> {
        self.me.read().ok().and_then(|me| me.clone())
    }

    /// The fence of the lease `name`, if this node holds it and it has not ended at `now`.
    pub fn fence(&self, name: &str, now: Timestamp) -> Option<LeaseFence> {
        let held = self.held.lock().ok()?;
        let (fence, until) = held.get(name)?;
        (*until > now.unix_ms()).then(|| fence.clone())
    }

    /// Woken when this node newly takes the lease `name`.
    pub fn acquired(&self, name: &str) -> Option<Arc<tokio::sync::Notify>> {
        self.acquired.get(name).cloned()
    }

    /// When another live node's lease ends if it is not renewed: the moment its claims would
    /// become claimable.
    pub fn next_lapse(&self) -> Option<Timestamp> {
        match self.next_lapse_ms.load(Ordering::SeqCst) {
            0 => None,
            ms => Some(Timestamp::from_unix_ms(ms)),
        }
    }

    /// Lets due hints wake the expiry engine, or not (the poll alone).
    pub fn set_due_hints(&self, on: bool) {
        self.hints_on.store(on, Ordering::SeqCst);
    }

    /// How many due hints woke this node's expiry engine.
    pub fn n_hint_wakeups(&self) -> u64 {
        self.n_hint_wakeups.load(Ordering::SeqCst)
    }

    /// Whether this node listens for due hints now (its connection is up).
    pub fn hints_listening(&self) -> bool {
        self.hints_listening
            .lock()
            .ok()
            .and_then(|listening| listening.as_ref().map(|l| l.load(Ordering::SeqCst)))
            .unwrap_or(false)
    }

    /// Whether a due hint for `at` was heard lately (while hints were on).
    pub fn heard_hint(&self, at: Timestamp) -> bool {
        self.hints_heard
            .lock()
            .is_ok_and(|heard| heard.contains(&at.unix_ms()))
    }

    pub(super) fn set_me(&self, me: Option<Claimant>) {
        if let Ok(mut slot) = self.me.write() {
            *slot = me;
        }
    }

    /// Records the leases `got` (held until `until`), and with `all`, forgets those not in it
    /// (another node holds them now); returns those newly taken.
    pub(super) fn keep_leases(
        &self,
        me: &Claimant,
        got: &[(String, i64)],
        until: i64,
        all: bool,
    ) -> Vec<String> {
        let Ok(mut held) = self.held.lock() else {
            return Vec::new();
        };
        if all {
            held.retain(|name, _| got.iter().any(|(n, _)| n == name));
        }
        let mut new = Vec::new();
        for (name, epoch) in got {
            let fence = LeaseFence {
                name: name.clone(),
                holder: me.name.clone(),
                generation: me.generation,
                epoch: *epoch,
            };
            if held.get(name).is_none_or(|(old, _)| old != &fence) {
                new.push(name.clone());
            }
            held.insert(name.clone(), (fence, until));
        }
        new
    }

    pub(super) fn drop_leases(&self) {
        if let Ok(mut held) = self.held.lock() {
            held.clear();
        }
    }
}
