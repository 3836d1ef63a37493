//! Approving from Slack: the Approve / Deny buttons of a pending request's message call
//! `POST /v1/chat/slack/actions` (Slack's interactivity request URL) with a `block_actions`
//! payload. docs/chat.md tells how to set it up.
//!
//! A click is taken only if, in this order:
//! 1. it carries Slack's signature as Slack documents it: `X-Slack-Signature: v0=` + hex of
//!    HMAC-SHA256(signing secret, `v0:` + `X-Slack-Request-Timestamp` + `:` + the raw body), the
//!    timestamp within 5 minutes of the broker's clock, compared in constant time, over the body
//!    bytes exactly as received (401 otherwise: a sender without the secret learns nothing more);
//! 2. its payload is one `block_actions` action `mayfly_approve` or `mayfly_deny` whose `value` is
//!    a request id (400 otherwise);
//! 3. its Slack user is linked to an enabled Mayfly user (`mayfly user link-slack`);
//! 4. and then it is [`Broker::approve`] or [`Broker::deny`], the very operations every other
//!    channel calls: no self-approval, the approver permitted by Cedar, and a step-up. A click
//!    carries no second factor of its own: it counts the latest factor proved by any live
//!    session of the linked user (a login with TOTP, `mayfly step-up`). When that is stale the
//!    answer links to a page saying how to step up; the person steps up and clicks again.
//!
//! Refusals after the signature are answered `200` with an ephemeral message (Slack shows other
//! statuses as a bare error) and audited here as `chat.slack.refused`. A payload sent twice
//! approves once: the second finds the approval made (or the request decided) and answers
//! "already decided".
//!
//! Slack users are mapped by a linked id only: Mayfly users have no e-mail address to map by.

use std::time::Duration;

use mayfly_api::RequestInfo;
use mayfly_core::Principal;
use mayfly_core::audit::Outcome;
use mayfly_crypto::{ExposeSecret, SecretString};
use mayfly_store::{Change, Write, WriteOutcome};
use serde::Deserialize;

use crate::auth::Caller;
use crate::error::BrokerError;
use crate::origin::Origin;
use crate::state::Broker;

/// Where the signing secret is kept in the barrier.
pub const SIGNING_SECRET_PATH: &str = "sys/chat/slack/signing-secret";
/// The largest interactivity body taken (Slack's payloads carry the message's blocks).
pub const MAX_BODY_BYTES: usize = 256 * 1024;
/// How far the signed timestamp may be from the broker's clock, either way (Slack's advice).
pub const MAX_SKEW: Duration = Duration::from_secs(5 * 60);
pub const APPROVE_ACTION: &str = "mayfly_approve";
pub const DENY_ACTION: &str = "mayfly_deny";

/// An interactivity request as received: the two headers and the raw body.
#[derive(Debug)]
pub struct SlackDelivery<'a> {
    pub timestamp: Option<&'a str>,
    pub signature: Option<&'a str>,
    pub body: &'a [u8],
}

/// What to answer Slack: always an ephemeral text to the person who clicked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlackAnswer {
    pub text: String,
}

/// The parts of a `block_actions` payload that are used; the rest is ignored.
#[derive(Deserialize)]
struct Payload {
    #[serde(rename = "type")]
    kind: String,
    user: PayloadUser,
    #[serde(default)]
    actions: Vec<PayloadAction>,
}

#[derive(Deserialize)]
struct PayloadUser {
    id: String,
}

#[derive(Deserialize)]
struct PayloadAction {
    action_id: String,
    #[serde(default)]
    value: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Click {
    Approve,
    Deny,
}

impl Broker {
    /// Sets (or replaces) the Slack app's signing secret, sealed by the barrier. Admins only.
    pub async fn set_slack_signing_secret(
        &self,
        meta: &Origin,
        caller: &Caller,
        secret: SecretString,
    ) -> Result<(), BrokerError> {
        caller.require_admin()?;
        let keys = self.require_unsealed().await?;
        let text = secret.expose_secret();
        if !(16..=256).contains(&text.len()) || !text.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(BrokerError::BadRequest(
                "field `signing_secret`: 16 to 256 printable characters, as the Slack app shows it"
                    .into(),
            ));
        }
        let blob = keys.keyring.seal(SIGNING_SECRET_PATH, text.as_bytes())?;
        let mut event = self
            .draft("chat.slack.signing_secret", Outcome::Ok)
            .detail("secret_hmac", keys.audit_hmac(text.as_bytes()));
        event.actor = Some(caller.principal().to_string());
        meta.fill(&mut event);
        self.commit(Write {
            change: Some(Change::PutSecret {
                path: SIGNING_SECRET_PATH.to_owned(),
                blob,
                at: self.now(),
            }),
            event,
        })
        .await?;
        Ok(())
    }

    /// Links the Slack user `slack_user_id` to `username` (`None` unlinks). Admins only; a Slack
    /// user is linked to one Mayfly user at most.
    pub async fn link_slack_user(
        &self,
        meta: &Origin,
        caller: &Caller,
        username: &str,
        slack_user_id: Option<&str>,
    ) -> Result<(), BrokerError> {
        caller.require_admin()?;
        if let Some(slack_user_id) = slack_user_id {
            check_slack_user_id(slack_user_id)
                .map_err(|e| BrokerError::BadRequest(format!("field `slack_user_id`: {e}")))?;
        }
        if self.store().user_by_name(username).await?.is_none() {
            return Err(BrokerError::NotFound(format!(
                "no user `{}`",
                truncate(username)
            )));
        }
        let mut event = self.draft("users.link_slack", Outcome::Ok).detail(
            "slack_user_id",
            slack_user_id.unwrap_or_default().to_owned(),
        );
        event.actor = Some(caller.principal().to_string());
        event.subject = Some(format!("user:{username}"));
        meta.fill(&mut event);
        match self
            .commit(Write {
                change: Some(Change::LinkSlackUser {
                    username: username.to_owned(),
                    slack_user_id: slack_user_id.map(str::to_owned),
                }),
                event,
            })
            .await?
        {
            WriteOutcome::Applied { .. } => Ok(()),
            WriteOutcome::Conflict { .. } => Err(BrokerError::Conflict(
                "that Slack user is linked to another user".into(),
            )),
        }
    }

    /// One click on an Approve or Deny button (module doc). `Err` only for a delivery that is not
    /// Slack's (401), a malformed one (400, 413) or a failure of the broker itself; every refusal
    /// of the person who clicked is an `Ok` answer for Slack to show them.
    pub async fn slack_action(
        &self,
        meta: &Origin,
        delivery: SlackDelivery<'_>,
    ) -> Result<SlackAnswer, BrokerError> {
        let keys = self.require_unsealed().await?;
        if delivery.body.len() > MAX_BODY_BYTES {
            return Err(BrokerError::TooLarge(format!(
                "a Slack interaction is at most {MAX_BODY_BYTES} bytes"
            )));
        }
        let Some(blob) = self.store().secret(SIGNING_SECRET_PATH).await? else {
            return Err(BrokerError::Forbidden(
                "approving from Slack is not set up: `mayfly chat slack-secret`".into(),
            ));
        };
        let secret = keys.keyring.open(SIGNING_SECRET_PATH, &blob)?;
        verify_signature(&secret, &delivery, self.now().unix_secs())
            .map_err(|reason| BrokerError::Unauthorized(format!("slack signature: {reason}")))?;

        let (slack_user, click, request_id) = parse_payload(delivery.body)?;
        let user = self
            .store()
            .user_by_slack_id(&slack_user)
            .await?
            .filter(|user| !user.disabled);
        let Some(user) = user else {
            let text = "your Slack user is not linked to a Mayfly user: ask an admin to run \
                        `mayfly user link-slack USER SLACK_USER_ID`";
            self.chat_refused(meta, &format!("slack:{slack_user}"), &request_id, text)
                .await?;
            return Ok(SlackAnswer { text: text.into() });
        };
        let principal = Principal::User {
            id: user.id.clone(),
            name: user.username.clone(),
            groups: user.groups.clone(),
        };
        let factor_at = self.store().latest_factor_at(&user.id, self.now()).await?;
        let comment = "from Slack";
        let decided = match click {
            Click::Approve => {
                self.approve(meta, &principal, factor_at, &request_id, comment)
                    .await
            }
            Click::Deny => {
                self.deny(meta, &principal, factor_at, &request_id, comment)
                    .await
            }
        };
        let actor = principal.to_string();
        let text = match decided {
            Ok(info) => {
                return Ok(SlackAnswer {
                    text: done(click, &info),
                });
            }
            Err(BrokerError::StepUpRequired { window_secs, .. }) => format!(
                "a second factor is needed (in the last {window_secs} s) to decide from Slack: \
                 step up at {}/v1/chat/step-up?request={request_id} then click again",
                self.inner.config.public_url
            ),
            Err(BrokerError::Conflict(reason)) => {
                format!("already decided: {reason}")
            }
            Err(
                BrokerError::Forbidden(reason)
                | BrokerError::NotFound(reason)
                | BrokerError::BadRequest(reason),
            ) => format!("refused: {reason}"),
            Err(error) => return Err(error),
        };
        self.chat_refused(meta, &actor, &request_id, &text).await?;
        Ok(SlackAnswer { text })
    }

    async fn chat_refused(
        &self,
        meta: &Origin,
        actor: &str,
        request_id: &str,
        reason: &str,
    ) -> Result<(), BrokerError> {
        let mut event = self
            .draft("chat.slack.refused", Outcome::Refused)
            .detail("request_id", truncate(request_id))
            .detail("reason", reason.to_owned());
        event.actor = Some(actor.to_owned());
        meta.fill(&mut event);
        self.record(event).await?;
        Ok(())
    }
}

fn done(click: Click, info: &RequestInfo) -> String {
    match click {
        Click::Approve => format!(
            "approved request `{}` ({}/{}): it is now {}",
            info.id, info.target, info.role, info.state
        ),
        Click::Deny => format!(
            "denied request `{}` ({}/{})",
            info.id, info.target, info.role
        ),
    }
}

/// Slack's request signature, as Slack documents it (module doc). `now_secs` is the broker's
/// clock.
fn verify_signature(
    secret: &[u8],
    delivery: &SlackDelivery<'_>,
    now_secs: u64,
) -> Result<(), &'static str> {
    let (Some(timestamp), Some(signature)) = (delivery.timestamp, delivery.signature) else {
        return Err("send `X-Slack-Request-Timestamp` and `X-Slack-Signature`");
    };
    if timestamp.is_empty()
        || timestamp.len() > 12
        || !timestamp.bytes().all(|b| b.is_ascii_digit())
    {
        return Err("the timestamp is not a number of seconds");
    }
    let Ok(at) = timestamp.parse::<u64>() else {
        return Err("the timestamp is not a number of seconds");
    };
    if now_secs.abs_diff(at) > MAX_SKEW.as_secs() {
        return Err("the timestamp is more than 5 minutes from now");
    }
    let Some(hex_mac) = signature.strip_prefix("v0=") else {
        return Err("the signature is not a `v0=` signature");
    };
    let Ok(given) = hex::decode(hex_mac) else {
        return Err("the signature does not match");
    };
    let mut base = Vec::with_capacity(delivery.body.len() + timestamp.len() + 4);
    base.extend_from_slice(b"v0:");
    base.extend_from_slice(timestamp.as_bytes());
    base.push(b':');
    base.extend_from_slice(delivery.body);
    let expected = mayfly_crypto::hmac_sha256(secret, &base);
    if !mayfly_crypto::constant_time_eq(&expected, &given) {
        return Err("the signature does not match");
    }
    Ok(())
}

/// The clicking Slack user, the button and the request id, from the form-encoded `payload`.
fn parse_payload(body: &[u8]) -> Result<(String, Click, String), BrokerError> {
    let bad = |what: &str| BrokerError::BadRequest(format!("field `payload`: {what}"));
    let mut payload = None;
    for (key, value) in form_urlencoded::parse(body) {
        if key == "payload" {
            if payload.is_some() {
                return Err(bad("given twice"));
            }
            payload = Some(value.into_owned());
        }
    }
    let Some(payload) = payload else {
        return Err(bad("missing: send Slack's interaction as `payload=`"));
    };
    let payload: Payload = serde_json::from_str(&payload)
        .map_err(|e| bad(&format!("not a Slack interaction: {e}")))?;
    if payload.kind != "block_actions" {
        return Err(bad("only `block_actions` interactions are taken"));
    }
    check_slack_user_id(&payload.user.id).map_err(|e| bad(&format!("user.id: {e}")))?;
    let [action] = payload.actions.as_slice() else {
        return Err(bad("exactly one action is taken"));
    };
    let click = match action.action_id.as_str() {
        APPROVE_ACTION => Click::Approve,
        DENY_ACTION => Click::Deny,
        _ => return Err(bad("the action is not `mayfly_approve` or `mayfly_deny`")),
    };
    let request_id = action.value.clone().unwrap_or_default();
    if request_id.is_empty()
        || request_id.len() > 64
        || !request_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
    {
        return Err(bad("the action's value is not a request id"));
    }
    Ok((payload.user.id, click, request_id))
}

fn truncate(text: &str) -> String {
    text.chars().take(64).collect()
}

/// A Slack user id: `U` or `W` and up to 31 more upper-case letters and digits.
pub fn check_slack_user_id(id: &str) -> Result<(), &'static str> {
    let mut bytes = id.bytes();
    let first_ok = matches!(bytes.next(), Some(b'U' | b'W'));
    if !first_ok
        || !(3..=32).contains(&id.len())
        || !bytes.all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
    {
        return Err("a Slack user id such as `U024BE7LH`");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn check(timestamp: Option<&str>, signature: Option<&str>, expect: Result<(), &str>) {
        let delivery = SlackDelivery {
            timestamp,
            signature,
            body: b"payload=%7B%7D",
        };
        assert_eq!(
            verify_signature(
                b"8f742231b10e8888abcd99yyyzzz85a5",
                &delivery,
                1_531_420_618
            ),
            expect
        );
    }

    /// Slack's own example (api.slack.com/authentication/verifying-requests-from-slack) checks
    /// the base string and the HMAC; the cases around it check the refusals.
    #[test]
    fn signatures_as_slack_documents_them() {
        let body = b"token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text=&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c";
        let delivery = SlackDelivery {
            timestamp: Some("1531420618"),
            signature: Some("v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503"),
            body,
        };
        assert_eq!(
            verify_signature(
                b"8f742231b10e8888abcd99yyyzzz85a5",
                &delivery,
                1_531_420_618
            ),
            Ok(())
        );
        let good = format!(
            "v0={}",
            hex::encode(mayfly_crypto::hmac_sha256(
                b"8f742231b10e8888abcd99yyyzzz85a5",
                b"v0:1531420618:payload=%7B%7D"
            ))
        );
        check(Some("1531420618"), Some(&good), Ok(()));
        check(
            None,
            Some(&good),
            Err("send `X-Slack-Request-Timestamp` and `X-Slack-Signature`"),
        );
        check(
            Some("1531420618"),
            None,
            Err("send `X-Slack-Request-Timestamp` and `X-Slack-Signature`"),
        );
        check(
            Some("1531420000"),
            Some(&good),
            Err("the timestamp is more than 5 minutes from now"),
        );
        check(
            Some("-1"),
            Some(&good),
            Err("the timestamp is not a number of seconds"),
        );
        check(
            Some("1531420618"),
            Some(&good.replace("v0=", "v1=")),
            Err("the signature is not a `v0=` signature"),
        );
        check(
            Some("1531420619"),
            Some(&good),
            Err("the signature does not match"),
        );
        check(
            Some("1531420618"),
            Some("v0=zz"),
            Err("the signature does not match"),
        );
    }

    #[test]
    fn slack_user_ids() {
        assert!(check_slack_user_id("U024BE7LH").is_ok());
        assert!(check_slack_user_id("W012A3CDE").is_ok());
        for bad in ["", "U", "u024be7lh", "B024BE7LH", "U024 BE7LH", "U<script>"] {
            assert!(check_slack_user_id(bad).is_err(), "{bad}");
        }
    }
}
