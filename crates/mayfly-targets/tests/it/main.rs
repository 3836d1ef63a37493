//! The target conformance suite, run against each real system, plus per-target cases (hostile
//! input, the second fence, an unreachable target).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "tests: a failed step should stop the test loudly"
)]

mod conformance;
mod least_privilege;
mod mysql;
mod postgres;
mod redis;
mod ssh;
mod tls;
mod x509;
