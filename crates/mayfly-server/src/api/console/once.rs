//! The one-time credential view. An activation answers a redirect to `/ui/credential/{id}`; the
//! credential waits in this node's memory (zeroized when dropped) for that one GET by the same
//! session, at most [`VIEW_TTL`], and is taken out when shown: a reload, the back button or a
//! copied link finds nothing. Nothing of it is stored or logged. (Held by the node that
//! activated: behind a load balancer the console wants sticky sessions, docs/console.md.)

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use mayfly_core::Timestamp;
use zeroize::Zeroizing;

/// How long an activated credential waits to be shown.
pub const VIEW_TTL: Duration = Duration::from_secs(120);
/// At most this many waiting views; the oldest go first.
const MAX_VIEWS: usize = 1024;

/// What the page shows, once.
pub struct CredentialView {
    pub grant_id: String,
    pub kind: String,
    pub host: String,
    pub port: u16,
    pub database: String,
    pub username: String,
    pub password: Zeroizing<String>,
    pub certificate: Option<String>,
    pub private_key: Option<Zeroizing<String>>,
    /// A new user's TOTP enrolment (`otpauth://…`), for the admin who made the user.
    pub totp_url: Option<Zeroizing<String>>,
    pub expires_at_ms: i64,
}

impl std::fmt::Debug for CredentialView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CredentialView")
            .field("grant_id", &self.grant_id)
            .field("password", &"[redacted]")
            .finish_non_exhaustive()
    }
}

struct Waiting {
    session_id: String,
    until: Timestamp,
    view: CredentialView,
}

/// The views waiting to be shown, by their random id.
#[derive(Default)]
pub struct OneTimeViews {
    views: Mutex<HashMap<String, Waiting>>,
}

impl OneTimeViews {
    /// Keeps `view` for the session `session_id`; answers the id of its one URL.
    pub fn put(
        &self,
        session_id: &str,
        now: Timestamp,
        view: CredentialView,
    ) -> Result<String, crate::error::BrokerError> {
        let id = mayfly_crypto::random_bytes::<16>()
            .map(hex::encode)
            .map_err(|_| crate::error::BrokerError::Internal("no randomness".into()))?;
        let mut views = self
            .views
            .lock()
            .map_err(|_| crate::error::BrokerError::Internal("the credential views".into()))?;
        views.retain(|_, waiting| waiting.until > now);
        if views.len() >= MAX_VIEWS
            && let Some(oldest) = views
                .iter()
                .min_by_key(|(_, waiting)| waiting.until)
                .map(|(id, _)| id.clone())
        {
            views.remove(&oldest);
        }
        views.insert(
            id.clone(),
            Waiting {
                session_id: session_id.to_owned(),
                until: now.saturating_add(VIEW_TTL),
                view,
            },
        );
        Ok(id)
    }

    /// Takes the view `id` out if it is this session's and still waiting. Another session's id
    /// leaves it where it is (and finds nothing).
    pub fn take(&self, id: &str, session_id: &str, now: Timestamp) -> Option<CredentialView> {
        let mut views = self.views.lock().ok()?;
        let mine = views
            .get(id)
            .is_some_and(|waiting| waiting.session_id == session_id && waiting.until > now);
        if !mine {
            return None;
        }
        views.remove(id).map(|waiting| waiting.view)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view() -> CredentialView {
        CredentialView {
            grant_id: "g".into(),
            kind: "postgres".into(),
            host: "h".into(),
            port: 5432,
            database: "d".into(),
            username: "u".into(),
            password: Zeroizing::new("p".into()),
            certificate: None,
            private_key: None,
            totp_url: None,
            expires_at_ms: 0,
        }
    }

    #[test]
    fn a_view_is_shown_once_to_its_own_session_only() {
        let views = OneTimeViews::default();
        let now = Timestamp::from_unix_secs(1000);
        let id = views.put("s1", now, view()).expect("put");
        assert!(views.take(&id, "s2", now).is_none());
        assert!(views.take(&id, "s1", now).is_some());
        assert!(views.take(&id, "s1", now).is_none());
    }

    #[test]
    fn a_view_not_shown_in_time_is_gone() {
        let views = OneTimeViews::default();
        let now = Timestamp::from_unix_secs(1000);
        let id = views.put("s1", now, view()).expect("put");
        let later = now.saturating_add(VIEW_TTL);
        assert!(views.take(&id, "s1", later).is_none());
    }
}
