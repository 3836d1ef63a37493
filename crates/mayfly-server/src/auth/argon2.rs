//! The bounded pool where password hashes are computed and checked, off the async workers.

use std::sync::Arc;

use mayfly_crypto::SecretString;
use mayfly_crypto::password::{
    credit_to_this_thread, hash_password, verifications_on_this_thread, verify_password,
    verify_password_dummy,
};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::BrokerError;

/// Where argon2 runs: on blocking threads, at most `n_threads` at once, so that the async
/// workers keep answering health checks and every other call during a flood of logins. At most
/// `n_waiting` more checks wait for a thread; one beyond that is refused at once (503 with
/// `Retry-After`) instead of queueing without bound.
#[derive(Debug)]
pub struct Argon2Pool {
    admitted: Arc<Semaphore>,
    running: Arc<Semaphore>,
}

/// A place in the [`Argon2Pool`], held until the work it was taken for is done (even if the
/// caller stops waiting for it).
#[derive(Debug)]
pub struct Argon2Place {
    admitted: OwnedSemaphorePermit,
    running: Arc<Semaphore>,
}

impl Argon2Pool {
    pub fn new(n_threads: usize, n_waiting: usize) -> Argon2Pool {
        let n_threads = n_threads.max(1);
        Argon2Pool {
            admitted: Arc::new(Semaphore::new(n_threads.saturating_add(n_waiting))),
            running: Arc::new(Semaphore::new(n_threads)),
        }
    }

    /// A place, or 503 if every thread is busy and the queue is full.
    pub fn admit(&self) -> Result<Argon2Place, BrokerError> {
        match self.admitted.clone().try_acquire_owned() {
            Ok(admitted) => Ok(Argon2Place {
                admitted,
                running: self.running.clone(),
            }),
            Err(_) => {
                metrics::counter!("mayfly_argon2_refused_total").increment(1);
                Err(BrokerError::Busy {
                    retry_after_secs: 1,
                })
            }
        }
    }

    /// Hashes a new password on the pool (or 503 when it is full).
    pub async fn hash(&self, password: SecretString) -> Result<String, BrokerError> {
        self.admit()?
            .run(move || hash_password(&password))
            .await?
            .map_err(|e| BrokerError::Internal(e.to_string()))
    }
}

impl Argon2Place {
    /// Checks `password` against `phc`, or against the dummy hash at the same cost when there is
    /// no user to check it against.
    pub async fn verify(
        self,
        password: SecretString,
        phc: Option<String>,
    ) -> Result<bool, BrokerError> {
        self.run(move || match phc {
            Some(phc) => verify_password(&password, &phc),
            None => verify_password_dummy(&password),
        })
        .await
    }

    /// Runs `work` on a blocking thread once one is free. The verifications it ran are credited
    /// to the waiting thread, whose count then says what its calls cost wherever they ran.
    async fn run<T: Send + 'static>(
        self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, BrokerError> {
        let Argon2Place { admitted, running } = self;
        let running = running
            .acquire_owned()
            .await
            .map_err(|_| BrokerError::Internal("the argon2 pool is closed".into()))?;
        let task = tokio::task::spawn_blocking(move || {
            let (_admitted, _running) = (admitted, running);
            let before = verifications_on_this_thread();
            let out = work();
            (out, verifications_on_this_thread().since(before))
        });
        let (out, done) = task
            .await
            .map_err(|e| BrokerError::Internal(format!("an argon2 task failed: {e}")))?;
        credit_to_this_thread(done);
        Ok(out)
    }
}
