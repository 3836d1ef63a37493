//! Group commit. Requests hand their write (a change and its audit event) to one committer task
//! and wait; the task takes everything that queued up while the previous batch was committing and
//! commits it as one transaction, then answers each request. Under load, batches grow by
//! themselves; alone, a request waits for its own transaction only.
//!
//! If the store cannot take a batch, every request in it gets the error: the caller answers 503
//! and performs nothing (fail closed).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use mayfly_store::{Store, StoreError, Write, WriteOutcome};
use tokio::sync::{Notify, mpsc, oneshot};

const MAX_BATCH: usize = 512;
const QUEUE: usize = 8192;

struct Pending {
    write: Write,
    reply: oneshot::Sender<Result<WriteOutcome, String>>,
}

#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    #[error("the audit log could not take the event: {0}")]
    Unavailable(String),
}

#[derive(Clone)]
pub struct Committer {
    sender: mpsc::Sender<Pending>,
    /// Events committed since start; the checkpointer and the sinks watch it.
    pub n_committed: Arc<AtomicU64>,
    pub committed: Arc<Notify>,
}

impl std::fmt::Debug for Committer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Committer").finish_non_exhaustive()
    }
}

impl Committer {
    /// Starts the committer task. With `group_commit` off each write gets its own transaction.
    pub fn start(store: Arc<dyn Store>, group_commit: bool) -> Committer {
        let (sender, receiver) = mpsc::channel(QUEUE);
        let committer = Committer {
            sender,
            n_committed: Arc::new(AtomicU64::new(0)),
            committed: Arc::new(Notify::new()),
        };
        let max_batch = if group_commit { MAX_BATCH } else { 1 };
        let in_process = store.capabilities().commits_in_process;
        let task = run(
            store,
            receiver,
            max_batch,
            committer.n_committed.clone(),
            committer.committed.clone(),
        );
        // A store that commits in this process (SQLite) gives the committer a thread of its own,
        // and the store runs each batch's script on it (blocking it for the commit, `fsync` included): no hand-off to another
        // thread and back, and no wait behind the HTTP tasks in the shared runtime's queues
        // (BENCHMARKS.md). A PostgreSQL pool's sockets stay with the shared runtime that drives
        // them.
        if !in_process {
            tokio::spawn(task);
            return committer;
        }
        // Timers only (the pool's acquire timeout on the long way): nothing here does socket I/O,
        // and without an I/O driver the thread sleeps and wakes on a futex, not through epoll
        // and an eventfd (BENCHMARKS.md).
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build();
        match runtime {
            Ok(runtime) => {
                let spawned = std::thread::Builder::new()
                    .name("mayfly-committer".into())
                    .spawn(move || runtime.block_on(task));
                if let Err(error) = spawned {
                    // Its queue is gone with it: every write is refused (503), none is lost.
                    tracing::error!(error = %error, "could not start the audit committer thread");
                }
            }
            Err(error) => {
                tracing::warn!(error = %error, "no runtime of its own for the audit committer; it shares the broker's");
                tokio::spawn(task);
            }
        }
        committer
    }

    /// Commits one write and its event; returns once it is durable.
    pub async fn commit(&self, mut write: Write) -> Result<WriteOutcome, CommitError> {
        // Rendered here, by the caller's task, in parallel with the others, and not by the one
        // committer, which has only `seq` and `prev` left to add.
        write.event.prerender();
        let (reply, answer) = oneshot::channel();
        self.sender
            .send(Pending { write, reply })
            .await
            .map_err(|_| CommitError::Unavailable("the audit committer stopped".into()))?;
        match answer.await {
            Ok(Ok(outcome)) => Ok(outcome),
            Ok(Err(reason)) => Err(CommitError::Unavailable(reason)),
            Err(_) => Err(CommitError::Unavailable(
                "the audit committer stopped".into(),
            )),
        }
    }

    /// Queues every write before waiting for any, so they share transactions; one answer per
    /// write, in order.
    pub async fn commit_many(&self, writes: Vec<Write>) -> Vec<Result<WriteOutcome, CommitError>> {
        let mut answers = Vec::with_capacity(writes.len());
        for mut write in writes {
            write.event.prerender();
            let (reply, answer) = oneshot::channel();
            let sent = self.sender.send(Pending { write, reply }).await.is_ok();
            answers.push(sent.then_some(answer));
        }
        let mut results = Vec::with_capacity(answers.len());
        for answer in answers {
            results.push(match answer {
                Some(answer) => match answer.await {
                    Ok(Ok(outcome)) => Ok(outcome),
                    Ok(Err(reason)) => Err(CommitError::Unavailable(reason)),
                    Err(_) => Err(CommitError::Unavailable(
                        "the audit committer stopped".into(),
                    )),
                },
                None => Err(CommitError::Unavailable(
                    "the audit committer stopped".into(),
                )),
            });
        }
        results
    }
}

async fn run(
    store: Arc<dyn Store>,
    mut receiver: mpsc::Receiver<Pending>,
    max_batch: usize,
    n_committed: Arc<AtomicU64>,
    committed: Arc<Notify>,
) {
    let mut batch: Vec<Pending> = Vec::with_capacity(max_batch);
    loop {
        if receiver.recv_many(&mut batch, max_batch).await == 0 {
            return;
        }
        let started = std::time::Instant::now();
        let (writes, replies): (Vec<Write>, Vec<_>) =
            batch.drain(..).map(|p| (p.write, p.reply)).unzip();
        let n = writes.len();
        match store.commit(writes).await {
            Ok(outcomes) => {
                n_committed.fetch_add(n as u64, Ordering::Relaxed);
                committed.notify_waiters();
                metrics::counter!("mayfly_audit_events_total").increment(n as u64);
                for (reply, outcome) in replies.into_iter().zip(outcomes) {
                    let _ = reply.send(Ok(outcome));
                }
            }
            Err(error) => {
                tracing::error!(error = %error, n_events = n, "audit batch failed; refusing its requests");
                metrics::counter!("mayfly_audit_failures_total").increment(n as u64);
                let reason = describe(&error);
                for reply in replies {
                    let _ = reply.send(Err(reason.clone()));
                }
            }
        }
        metrics::counter!("mayfly_audit_batches_total").increment(1);
        metrics::histogram!("mayfly_audit_batch_size").record(n as f64);
        metrics::histogram!("mayfly_audit_commit_seconds").record(started.elapsed().as_secs_f64());
    }
}

fn describe(error: &StoreError) -> String {
    match error {
        StoreError::Unavailable(_) => "the store is unavailable".into(),
        other => other.to_string(),
    }
}
