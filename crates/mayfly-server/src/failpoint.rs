//! Failpoints for crash tests: in a debug build, `MAYFLY_FAILPOINT=<name>` makes the process
//! abort (as `kill -9` would: nothing is flushed, nothing runs after) when it reaches the point of
//! that name. A release build has none: [`hit`] does nothing.
//!
//! Points: `rotate-admin:after-intent` (the new admin password is committed as an intent, the
//! target not touched yet), `rotate-admin:after-target` (the target has it, the store still has
//! the old one as current).

/// Aborts the process if `MAYFLY_FAILPOINT` names `point` (debug builds only).
pub fn hit(point: &str) {
    #[cfg(debug_assertions)]
    if std::env::var("MAYFLY_FAILPOINT").is_ok_and(|armed| armed == point) {
        tracing::error!(failpoint = point, "failpoint hit: aborting");
        std::process::abort();
    }
    #[cfg(not(debug_assertions))]
    let _ = point;
}
