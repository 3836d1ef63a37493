//! Approvals bound to one exact tool call (issue 22). When a `@step_up` policy permits a tool
//! call, a person must approve *that* call: its key is the tool, the SHA-256 of its canonical
//! arguments, the subject and the act chain, and an approval of one key never serves another (a
//! retry with other arguments, for another user or through another agent asks again).
//!
//! [`Broker::gate_call`] is asked by the front end (MCP) for each such call: the first time it
//! records a `pending` approval (`call.approval.requested`) and answers where a person approves
//! it (the console's `/ui/calls/{id}`); once approved, the next identical call consumes it in one
//! conditional update (`call.approval.used`: single use, even for calls at once on several
//! nodes) and proceeds; a refusal answers that call refused until its window ends. A pending
//! approval waits `call_approval_window` (10 minutes by default); an approved one is usable for
//! [`CALL_APPROVAL_USABLE`]; past either it is `expired` (`call.approval.expired`, marked when
//! next seen).
//!
//! [`Broker::answer_call`] is the person's answer: a user of the `call_approvers` group (admins by
//! default), neither the subject nor in the act chain, with a second factor proved within the
//! step-up window (`call.approval.approved`, `call.approval.refused`).

use std::time::Duration;

use mayfly_core::Principal;
use mayfly_core::Timestamp;
use mayfly_core::audit::Outcome;
use mayfly_core::policy::Tool;
use mayfly_store::{CallApprovalRecord, CallApprovalState, Change, Write, WriteOutcome};

use crate::error::BrokerError;
use crate::origin::Origin;
use crate::state::Broker;

use super::principal_key;
use super::requests::check_act_chain;

/// How long an approved call may be made (once) after the approval.
pub const CALL_APPROVAL_USABLE: Duration = Duration::from_secs(300);
/// The most an approver is shown of a call: the tool and its arguments as canonical JSON.
pub const MAX_SUMMARY_BYTES: usize = 8 * 1024;
/// Calls of one subject waiting for a person at once; one more is refused until some are
/// answered or expire (an agent cannot flood the approvers).
pub const MAX_PENDING_PER_SUBJECT: i64 = 20;
/// Only the newest approval of a key counts.
const KEY_HISTORY: i64 = 1;

/// What an approval is bound to: exactly one call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallKey {
    pub tool: Tool,
    /// SHA-256 (lower-case hex) of the call's canonical arguments.
    pub args_sha256: String,
    /// The principal key the call is made for (the token's subject).
    pub subject: String,
    /// The act chain, nearest actor first.
    pub actors: Vec<String>,
}

impl CallKey {
    /// SHA-256 (hex) of the key's canonical form: a JSON array of the tool, the arguments'
    /// digest, the subject and the act chain, so no two different keys share one.
    pub fn hash(&self) -> String {
        let canonical = serde_json::json!([
            self.tool.as_str(),
            self.args_sha256,
            self.subject,
            self.actors
        ]);
        hex::encode(mayfly_crypto::sha256(canonical.to_string().as_bytes()))
    }

    fn check(&self) -> Result<(), BrokerError> {
        let hex = self.args_sha256.len() == 64
            && self
                .args_sha256
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if !hex {
            return Err(BrokerError::BadRequest(
                "field `args_sha256`: 64 lower-case hex digits".into(),
            ));
        }
        check_act_chain(std::slice::from_ref(&self.subject))
            .map_err(|_| BrokerError::BadRequest("field `subject`: not a principal key".into()))?;
        check_act_chain(&self.actors)
    }
}

/// What the front end does with a call that needs a person's approval.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CallGate {
    /// An approval of exactly this key, consumed now (single use, atomically).
    Proceed {
        approval_id: String,
        approver: String,
    },
    /// A person must approve at `url` (the console, behind step-up).
    Waiting {
        approval_id: String,
        url: String,
        expires_at: Timestamp,
    },
    /// A person refused exactly this call.
    Refused { approval_id: String, reason: String },
}

impl Broker {
    /// Where the console shows the call approval `id`.
    pub fn call_approval_url(&self, id: &str) -> String {
        format!(
            "{}/ui/calls/{id}",
            self.inner.config.public_url.trim_end_matches('/')
        )
    }

    /// Gates one call whose permitting policy carries `@step_up`. `summary`: what the approver
    /// is shown (tool and arguments as canonical JSON, at most 8 KiB; never a secret);
    /// `policies`: the `@step_up` policies that asked. Audited; the arguments appear in the audit
    /// log only as their digest.
    pub async fn gate_call(
        &self,
        meta: &Origin,
        key: &CallKey,
        summary: &str,
        policies: &[String],
    ) -> Result<CallGate, BrokerError> {
        key.check()?;
        if summary.len() > MAX_SUMMARY_BYTES {
            return Err(BrokerError::BadRequest(format!(
                "field `summary`: at most {MAX_SUMMARY_BYTES} bytes"
            )));
        }
        if policies.len() > 64 || policies.iter().any(|p| p.len() > 256) {
            return Err(BrokerError::BadRequest(
                "field `policies`: at most 64 policy ids of 256 bytes".into(),
            ));
        }
        let mut keys: Vec<&str> = vec![&key.subject];
        keys.extend(key.actors.iter().map(String::as_str));
        if let Some(agent) = self.disabled_agent(&keys).await? {
            return Err(BrokerError::Forbidden(format!(
                "the agent `{agent}` is disabled"
            )));
        }
        let key_hash = key.hash();
        // Twice at most: a pending approval made by a call at the same moment is then found.
        for _ in 0..2 {
            if let Some(gate) = self.current_gate(meta, key, &key_hash).await? {
                return Ok(gate);
            }
            let now = self.now();
            let n_pending = self
                .store()
                .n_pending_call_approvals(&key.subject, now)
                .await?;
            if n_pending >= MAX_PENDING_PER_SUBJECT {
                return Err(BrokerError::RateLimited {
                    retry_after_secs: self.inner.config.call_approval_window.as_secs(),
                });
            }
            let approval = CallApprovalRecord {
                id: uuid::Uuid::now_v7().to_string(),
                key_hash: key_hash.clone(),
                tool: key.tool.as_str().to_owned(),
                args_sha256: key.args_sha256.clone(),
                subject: key.subject.clone(),
                actors: key.actors.clone(),
                summary: summary.to_owned(),
                policies: policies.to_vec(),
                state: CallApprovalState::Pending,
                created_at: now,
                expires_at: now.saturating_add(self.inner.config.call_approval_window),
                answered_by: None,
                answered_at: None,
                usable_until: None,
                used_at: None,
            };
            let event = self
                .call_approval_event("call.approval.requested", &approval, meta)
                .detail("policies", policies.to_vec())
                .detail("expires_at_ms", approval.expires_at.unix_ms());
            let outcome = self
                .commit(Write {
                    change: Some(Change::CreateCallApproval {
                        approval: approval.clone(),
                    }),
                    event,
                })
                .await?;
            if let WriteOutcome::Applied { .. } = outcome {
                return Ok(CallGate::Waiting {
                    url: self.call_approval_url(&approval.id),
                    approval_id: approval.id,
                    expires_at: approval.expires_at,
                });
            }
        }
        Err(BrokerError::Conflict(
            "the approval of this call changed while it was asked for: try again".into(),
        ))
    }

    /// What the newest approvals of `key` say now, `None` when a new one must be asked for.
    /// Marks what it finds past its time `expired`; consumes an approved one.
    async fn current_gate(
        &self,
        meta: &Origin,
        key: &CallKey,
        key_hash: &str,
    ) -> Result<Option<CallGate>, BrokerError> {
        let approvals = self
            .store()
            .call_approvals_of_key(key_hash, KEY_HISTORY)
            .await?;
        let Some(approval) = approvals.into_iter().next() else {
            return Ok(None);
        };
        // The store's key is a hash: the call must be this very one.
        if approval.tool != key.tool.as_str()
            || approval.args_sha256 != key.args_sha256
            || approval.subject != key.subject
            || approval.actors != key.actors
        {
            return Err(BrokerError::Internal(
                "a call approval's key does not match its hash".into(),
            ));
        }
        let now = self.now();
        match approval.state {
            CallApprovalState::Pending if approval.expires_at > now => {
                Ok(Some(CallGate::Waiting {
                    url: self.call_approval_url(&approval.id),
                    approval_id: approval.id,
                    expires_at: approval.expires_at,
                }))
            }
            CallApprovalState::Approved
                if approval.usable_until.is_some_and(|until| until > now) =>
            {
                let event = self
                    .call_approval_event("call.approval.used", &approval, meta)
                    .detail("approver", approval.answered_by.clone().unwrap_or_default());
                let outcome = self
                    .commit(Write {
                        change: Some(Change::UseCallApproval {
                            id: approval.id.clone(),
                            at: now,
                        }),
                        event,
                    })
                    .await?;
                match outcome {
                    WriteOutcome::Applied { .. } => Ok(Some(CallGate::Proceed {
                        approver: approval.answered_by.unwrap_or_default(),
                        approval_id: approval.id,
                    })),
                    // Used by another call at the same moment: this one needs its own.
                    WriteOutcome::Conflict { .. } => Ok(None),
                }
            }
            CallApprovalState::Pending | CallApprovalState::Approved => {
                self.expire_call(meta, &approval).await?;
                Ok(None)
            }
            CallApprovalState::Refused if approval.expires_at > now => {
                let by = approval.answered_by.clone().unwrap_or_default();
                Ok(Some(CallGate::Refused {
                    approval_id: approval.id,
                    reason: format!("`{by}` refused this call"),
                }))
            }
            CallApprovalState::Refused | CallApprovalState::Used | CallApprovalState::Expired => {
                Ok(None)
            }
        }
    }

    /// Marks an approval past its time `expired`, audited; one that moved on meanwhile is left.
    async fn expire_call(
        &self,
        meta: &Origin,
        approval: &CallApprovalRecord,
    ) -> Result<(), BrokerError> {
        let event = self
            .call_approval_event("call.approval.expired", approval, meta)
            .detail("state", approval.state.as_str());
        self.commit(Write {
            change: Some(Change::ExpireCallApproval {
                id: approval.id.clone(),
                at: self.now(),
            }),
            event,
        })
        .await?;
        Ok(())
    }

    /// A person's answer to the call approval `approval_id`: never by the subject or anyone in
    /// the act chain, only by a user of the `call_approvers` group, with a second factor proved
    /// within the step-up window.
    pub async fn answer_call(
        &self,
        meta: &Origin,
        approver: &Principal,
        factor_at: Option<Timestamp>,
        approval_id: &str,
        approve: bool,
    ) -> Result<(), BrokerError> {
        let approval = self.call_approval_for(approver, approval_id).await?;
        let who = principal_key(approver);
        if approval.subject == who || approval.actors.contains(&who) {
            return Err(BrokerError::Forbidden(
                "a call cannot be answered by its subject or by one acting in it".into(),
            ));
        }
        if !self.may_answer_calls(approver) {
            return Err(BrokerError::Forbidden(format!(
                "answering calls needs a person in the group `{}`",
                self.inner.config.call_approvers
            )));
        }
        self.require_step_up(
            approver,
            factor_at,
            self.inner.config.step_up_window,
            "answering a call",
        )?;
        let now = self.now();
        if approval.state == CallApprovalState::Pending && approval.expires_at <= now {
            self.expire_call(meta, &approval).await?;
            return Err(BrokerError::Conflict(
                "the call approval has expired".into(),
            ));
        }
        let kind = if approve {
            "call.approval.approved"
        } else {
            "call.approval.refused"
        };
        let mut event = self.call_approval_event(kind, &approval, meta);
        event.actor = Some(who.clone());
        let usable_until = now.saturating_add(CALL_APPROVAL_USABLE);
        if approve {
            event = event.detail("usable_until_ms", usable_until.unix_ms());
        }
        match self
            .commit(Write {
                change: Some(Change::AnswerCallApproval {
                    id: approval.id.clone(),
                    approve,
                    by: who,
                    at: now,
                    usable_until,
                }),
                event,
            })
            .await?
        {
            WriteOutcome::Applied { .. } => Ok(()),
            WriteOutcome::Conflict { reason, .. } => Err(BrokerError::Conflict(reason)),
        }
    }

    /// The call approval `approval_id` as `viewer` may see it: those who may answer calls and
    /// the call's subject see it; for anyone else it does not exist.
    pub async fn call_approval_for(
        &self,
        viewer: &Principal,
        approval_id: &str,
    ) -> Result<CallApprovalRecord, BrokerError> {
        let not_found = || {
            BrokerError::NotFound(format!(
                "no call approval `{}`",
                approval_id.chars().take(64).collect::<String>()
            ))
        };
        if approval_id.len() > 64 {
            return Err(not_found());
        }
        let approval = self
            .store()
            .call_approval(approval_id)
            .await?
            .ok_or_else(not_found)?;
        if approval.subject != principal_key(viewer) && !self.may_answer_calls(viewer) {
            return Err(not_found());
        }
        Ok(approval)
    }

    /// The pending (not expired) call approvals `viewer` may answer, oldest first.
    pub async fn calls_to_answer(
        &self,
        viewer: &Principal,
    ) -> Result<Vec<CallApprovalRecord>, BrokerError> {
        if !self.may_answer_calls(viewer) {
            return Ok(Vec::new());
        }
        let who = principal_key(viewer);
        let now = self.now();
        Ok(self
            .store()
            .pending_call_approvals(200)
            .await?
            .into_iter()
            .filter(|approval| {
                approval.expires_at > now
                    && approval.subject != who
                    && !approval.actors.contains(&who)
            })
            .collect())
    }

    /// Whether `principal` is a person of the `call_approvers` group.
    pub fn may_answer_calls(&self, principal: &Principal) -> bool {
        match principal {
            Principal::User { groups, .. } => groups
                .iter()
                .any(|group| *group == self.inner.config.call_approvers),
            Principal::Workload { .. } | Principal::Agent { .. } => false,
        }
    }

    /// The audit event of a call approval: its id, tool, arguments' digest, subject and act
    /// chain (never the arguments themselves).
    fn call_approval_event(
        &self,
        kind: &str,
        approval: &CallApprovalRecord,
        meta: &Origin,
    ) -> mayfly_core::audit::AuditDraft {
        let mut event = self
            .draft(kind, Outcome::Ok)
            .detail("approval_id", approval.id.clone())
            .detail("tool", approval.tool.clone())
            .detail("args_sha256", approval.args_sha256.clone());
        if !approval.actors.is_empty() {
            event = event.detail("act", approval.actors.clone());
        }
        event.actor = Some(
            approval
                .actors
                .first()
                .cloned()
                .unwrap_or_else(|| approval.subject.clone()),
        );
        event.subject = Some(approval.subject.clone());
        meta.fill(&mut event);
        event
    }
}
