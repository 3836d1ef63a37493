//! Audit events: the persisted, hash-chained record of every fact the broker acts on.
//!
//! An event's *body* is a JSON object; its canonical form is compact JSON with the keys in the
//! order they were written (see [`canonical`]), integers only. The event's hash is SHA-256 of
//! the canonical body, and every body carries the hash of the event before it (`prev`), so the
//! log is a chain. A file line is the body with one more key, `hash`. This format is versioned by
//! the body's `v`.
//!
//! Someone who can write the store could rewrite events *and* recompute every hash. Checkpoints
//! stop that: at intervals the broker signs, with an Ed25519 key only the unsealed broker holds,
//! the hash of the newest event and an 8-byte prefix of the hash of every event since the last
//! checkpoint. The checkpoint is itself an event in the chain. [`Verifier`] checks both.

use std::fmt;
use std::fmt::Write as _;

use serde_json::{Map, Value};

/// Version of the event body format.
pub const FORMAT_VERSION: i64 = 1;
/// The `prev` of the first event.
pub const GENESIS_HASH: [u8; 32] = [0; 32];
/// The kind of a checkpoint event.
pub const CHECKPOINT_KIND: &str = "audit.checkpoint";
/// The kind of the event the orphan sweep records for each login it finds on a target that no
/// live grant knows: a standing credential, which should never exist.
pub const SWEEP_ORPHAN_KIND: &str = "sweep.orphan";
/// Bytes of each event hash listed in a checkpoint.
pub const CHECKPOINT_PREFIX_LEN: usize = 8;

/// How the action an event records ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    Refused,
    Failed,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Refused => "refused",
            Outcome::Failed => "failed",
        }
    }
}

/// An event before the store gives it a sequence number and a place in the chain. Secret values
/// never go in here; put an HMAC of them in `details` instead.
#[derive(Clone, Debug)]
pub struct AuditDraft {
    pub at: crate::Timestamp,
    pub kind: String,
    pub outcome: Outcome,
    pub actor: Option<String>,
    pub source: Option<String>,
    pub request_id: Option<String>,
    pub subject: Option<String>,
    pub details: Map<String, Value>,
    /// The body's members from `at_ms` to `details`, rendered by [`AuditDraft::prerender`] while
    /// the draft waits for its place in the chain, so that the one committer only puts `seq` and
    /// `prev` around them. Cleared by [`AuditDraft::detail`] and [`AuditDraft::refuse`]; a field
    /// changed by hand after `prerender` would not be seen (debug builds check it when chaining).
    rendered: Option<String>,
}

/// The members of a body that a draft knows before its place in the chain, in the body's order
/// (docs/audit.md), serialized without copying the draft.
#[derive(serde::Serialize)]
struct Members<'a> {
    at_ms: i64,
    kind: &'a str,
    outcome: &'a str,
    actor: &'a Option<String>,
    source: &'a Option<String>,
    request_id: &'a Option<String>,
    subject: &'a Option<String>,
    details: &'a Map<String, Value>,
}

impl AuditDraft {
    pub fn new(at: crate::Timestamp, kind: &str, outcome: Outcome) -> AuditDraft {
        AuditDraft {
            at,
            kind: kind.to_owned(),
            outcome,
            actor: None,
            source: None,
            request_id: None,
            subject: None,
            details: Map::new(),
            rendered: None,
        }
    }

    pub fn detail(mut self, key: &str, value: impl Into<Value>) -> AuditDraft {
        self.details.insert(key.to_owned(), value.into());
        self.rendered = None;
        self
    }

    /// Marks the event refused because of a conflict found when it was committed.
    pub fn refuse(&mut self, reason: &str) {
        self.outcome = Outcome::Refused;
        self.details.insert("conflict".into(), reason.into());
        self.rendered = None;
    }

    /// The principal the event is about, as the audit search indexes it: the actor when it is a
    /// principal (`user:…`, `workload:…`, `agent:…`), else the subject when that is one (the broker acting
    /// on someone's grant), else the actor (`broker`, …). Store migration 0013 fills events
    /// written before it by the same rule.
    pub fn search_principal(&self) -> Option<&str> {
        let is_principal = |key: &&String| {
            key.starts_with("user:") || key.starts_with("workload:") || key.starts_with("agent:")
        };
        self.actor
            .as_ref()
            .filter(is_principal)
            .or(self.subject.as_ref().filter(is_principal))
            .or(self.actor.as_ref())
            .map(String::as_str)
    }

    /// The target the event concerns, as the audit search indexes it: `details.target`, else
    /// the target of `details.role` (`TARGET/ROLE`), else the subject's (`target:T`,
    /// `role:T/R`). Store migration 0013 fills events written before it by the same rule.
    pub fn search_target(&self) -> Option<&str> {
        if let Some(Value::String(target)) = self.details.get("target") {
            return Some(target.as_str());
        }
        if let Some(Value::String(role)) = self.details.get("role")
            && let Some((target, _)) = role.split_once('/')
            && !target.is_empty()
        {
            return Some(target);
        }
        let subject = self.subject.as_deref()?;
        if let Some(target) = subject.strip_prefix("target:")
            && !target.is_empty()
        {
            return Some(target);
        }
        let (target, _) = subject.strip_prefix("role:")?.split_once('/')?;
        (!target.is_empty()).then_some(target)
    }

    /// Renders what the body holds besides `seq` and `prev`, ahead of [`AuditDraft::chain`]: the
    /// serialization then happens where the draft is made, in parallel, not in the one committer.
    /// Call it once the draft is final.
    pub fn prerender(&mut self) {
        self.rendered = Some(self.members());
    }

    /// `"at_ms":…,"details":{…}`: the members between `seq` and `prev`, compact, in order.
    fn members(&self) -> String {
        let members = Members {
            at_ms: self.at.unix_ms(),
            kind: &self.kind,
            outcome: self.outcome.as_str(),
            actor: &self.actor,
            source: &self.source,
            request_id: &self.request_id,
            subject: &self.subject,
            details: &self.details,
        };
        let mut object = serde_json::to_string(&members).unwrap_or_default();
        // `{…}` → `…`, in place: no second copy of the text.
        if object.starts_with('{') && object.ends_with('}') {
            object.pop();
            object.remove(0);
        } else {
            object.clear();
        }
        object
    }

    /// The event at `seq` after `prev`: its canonical body and the body's hash. The body's members
    /// are `v`, `seq`, the draft's own (`at_ms` to `details`), then `prev`.
    pub fn chain(&self, seq: i64, prev: &[u8; 32]) -> (String, [u8; 32]) {
        let fresh;
        let members = match &self.rendered {
            Some(rendered) => {
                debug_assert_eq!(
                    *rendered,
                    self.members(),
                    "a draft changed after it was prerendered"
                );
                rendered
            }
            None => {
                fresh = self.members();
                &fresh
            }
        };
        let mut text = String::with_capacity(members.len() + 112);
        // Writing to a String cannot fail.
        let _ = write!(text, "{{\"v\":{FORMAT_VERSION},\"seq\":{seq},");
        text.push_str(members);
        text.push_str(",\"prev\":\"");
        text.push_str(&hex::encode(prev));
        text.push_str("\"}");
        let hash = hash_canonical(text.as_bytes());
        (text, hash)
    }

    /// The body as a JSON tree, built member by member: the tests' reference for
    /// [`AuditDraft::chain`], which is what the broker uses.
    #[cfg(test)]
    fn into_body(self, seq: i64, prev: &[u8; 32]) -> Value {
        let mut body = Map::new();
        body.insert("v".into(), FORMAT_VERSION.into());
        body.insert("seq".into(), seq.into());
        body.insert("at_ms".into(), self.at.unix_ms().into());
        body.insert("kind".into(), self.kind.into());
        body.insert("outcome".into(), self.outcome.as_str().into());
        body.insert("actor".into(), opt(self.actor));
        body.insert("source".into(), opt(self.source));
        body.insert("request_id".into(), opt(self.request_id));
        body.insert("subject".into(), opt(self.subject));
        body.insert("details".into(), Value::Object(self.details));
        body.insert("prev".into(), hex::encode(prev).into());
        Value::Object(body)
    }
}

#[cfg(test)]
fn opt(value: Option<String>) -> Value {
    value.map_or(Value::Null, Value::String)
}

/// Canonical bytes of a body: compact JSON, keys in the order they were written. The broker
/// writes a body's keys in one fixed order (see [`AuditDraft::chain`]), and a body parsed back
/// from a line keeps the line's order (serde_json's `preserve_order`, enabled by this crate), so
/// the same bytes come back and are hashed again.
pub fn canonical(body: &Value) -> Vec<u8> {
    serde_json::to_vec(body).unwrap_or_default()
}

pub fn hash_body(body: &Value) -> [u8; 32] {
    hash_canonical(&canonical(body))
}

/// [`hash_body`] of a body already in its canonical bytes.
pub fn hash_canonical(canonical: &[u8]) -> [u8; 32] {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, canonical);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// What a checkpoint signs: the events `(from_seq, to_seq]`, the full hash of `to_seq`, and an
/// 8-byte prefix of the hash of each event in the range (hex, concatenated).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    pub from_seq: i64,
    pub to_seq: i64,
    pub to_hash: String,
    pub prefixes: String,
    pub key_id: String,
}

impl Checkpoint {
    /// Builds the checkpoint over `hashes`, the hashes of events `from_seq + 1 ..= to_seq` in order.
    pub fn over(from_seq: i64, hashes: &[[u8; 32]], key_id: &str) -> Option<Checkpoint> {
        let last = hashes.last()?;
        let n = i64::try_from(hashes.len()).ok()?;
        let mut prefixes = String::with_capacity(hashes.len() * CHECKPOINT_PREFIX_LEN * 2);
        for hash in hashes {
            prefixes.push_str(&hex::encode(hash.get(..CHECKPOINT_PREFIX_LEN)?));
        }
        Some(Checkpoint {
            from_seq,
            to_seq: from_seq + n,
            to_hash: hex::encode(last),
            prefixes,
            key_id: key_id.to_owned(),
        })
    }

    /// The exact bytes that are signed.
    pub fn message(&self) -> Vec<u8> {
        let mut map = Map::new();
        map.insert("from_seq".into(), self.from_seq.into());
        map.insert("to_seq".into(), self.to_seq.into());
        map.insert("to_hash".into(), self.to_hash.clone().into());
        map.insert("prefixes".into(), self.prefixes.clone().into());
        map.insert("key_id".into(), self.key_id.clone().into());
        let mut out = b"mayfly-audit-checkpoint-v1\n".to_vec();
        out.extend(canonical(&Value::Object(map)));
        out
    }

    /// The event details of a checkpoint event.
    pub fn into_details(self, signature: &[u8]) -> Map<String, Value> {
        let mut map = Map::new();
        map.insert("from_seq".into(), self.from_seq.into());
        map.insert("to_seq".into(), self.to_seq.into());
        map.insert("to_hash".into(), self.to_hash.into());
        map.insert("prefixes".into(), self.prefixes.into());
        map.insert("key_id".into(), self.key_id.into());
        map.insert("signature".into(), hex::encode(signature).into());
        map
    }

    fn from_details(details: &Value) -> Option<(Checkpoint, Vec<u8>)> {
        let checkpoint = Checkpoint {
            from_seq: details.get("from_seq")?.as_i64()?,
            to_seq: details.get("to_seq")?.as_i64()?,
            to_hash: details.get("to_hash")?.as_str()?.to_owned(),
            prefixes: details.get("prefixes")?.as_str()?.to_owned(),
            key_id: details.get("key_id")?.as_str()?.to_owned(),
        };
        let signature = hex::decode(details.get("signature")?.as_str()?).ok()?;
        Some((checkpoint, signature))
    }
}

/// The id of a checkpoint signing key: the first 8 bytes of SHA-256 of the public key, in hex.
pub fn key_id(public_key: &[u8]) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, public_key);
    hex::encode(digest.as_ref().get(..8).unwrap_or_default())
}

/// The first place where a log is not what the broker wrote.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    #[error("line {line}: not a valid audit event: {reason}")]
    Unreadable { line: u64, reason: String },
    #[error("event {seq} was edited: its hash does not match its content")]
    Edited { seq: i64 },
    #[error(
        "event {found} is out of place: expected event {expected} (an event was removed, inserted or reordered)"
    )]
    OutOfSequence { expected: i64, found: i64 },
    #[error(
        "event {seq} does not follow event {previous}: the chain is broken (an event was removed, inserted or reordered)"
    )]
    Unlinked { seq: i64, previous: i64 },
    #[error(
        "event {seq} differs from what checkpoint {checkpoint} signed: events were rewritten from event {seq} on"
    )]
    Rewritten { seq: i64, checkpoint: i64 },
    #[error("checkpoint {checkpoint} has a bad signature")]
    BadSignature { checkpoint: i64 },
    #[error("checkpoint {checkpoint} is malformed")]
    BadCheckpoint { checkpoint: i64 },
    #[error("checkpoint {checkpoint} was signed by key `{key_id}`, not by the given public key")]
    UnknownKey { checkpoint: i64, key_id: String },
    #[error(
        "the log ends at event {last} but the expected head is event {expected}: events {first_missing} to {expected} were cut off"
    )]
    Truncated {
        last: i64,
        first_missing: i64,
        expected: i64,
    },
    #[error(
        "event {seq} is not the expected head: its hash differs (the log was rewritten or belongs to another broker)"
    )]
    HeadDiffers { seq: i64 },
}

/// A summary of a verified log.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    pub n_events: u64,
    pub n_checkpoints: u64,
    pub n_signatures_checked: u64,
    pub last_seq: i64,
    pub last_hash: String,
    /// Events after the last checkpoint: covered by the chain only, not yet by a signature.
    pub n_unsigned_tail: u64,
    /// The last checkpoint seen (its own event's `seq` and `at_ms`, and the last event it covers):
    /// what an operator compares with the broker's head to see that no tail was cut off.
    pub last_checkpoint: Option<CheckpointSeen>,
}

/// A checkpoint as the verifier saw it in the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CheckpointSeen {
    pub seq: i64,
    pub at_ms: i64,
    pub covers_to: i64,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} events, {} checkpoints ({} signatures checked), last event {}, {} events after the last checkpoint",
            self.n_events,
            self.n_checkpoints,
            self.n_signatures_checked,
            self.last_seq,
            self.n_unsigned_tail
        )
    }
}

/// Checks a log event by event, in order. Feed it with [`Verifier::push`], then call
/// [`Verifier::finish`]. With a public key, checkpoint signatures are checked too.
pub struct Verifier {
    public_key: Option<Vec<u8>>,
    hashes: Vec<[u8; 32]>,
    report: Report,
    last_checkpoint_to: i64,
}

impl Verifier {
    pub fn new(public_key: Option<&[u8]>) -> Verifier {
        Verifier {
            public_key: public_key.map(<[u8]>::to_vec),
            hashes: Vec::new(),
            report: Report::default(),
            last_checkpoint_to: 0,
        }
    }

    /// Checks the next event: `body` without `hash`, and the hash that came with it.
    pub fn push(&mut self, line: u64, body: &Value, stored_hash: &str) -> Result<(), ChainError> {
        let unreadable = |reason: &str| ChainError::Unreadable {
            line,
            reason: reason.to_owned(),
        };
        let seq = body
            .get("seq")
            .and_then(Value::as_i64)
            .ok_or_else(|| unreadable("no `seq`"))?;
        let prev = body
            .get("prev")
            .and_then(Value::as_str)
            .ok_or_else(|| unreadable("no `prev`"))?;
        let hash = hash_body(body);
        if hex::encode(hash) != stored_hash {
            return Err(ChainError::Edited { seq });
        }
        let expected = self.report.last_seq + 1;
        if seq != expected {
            return Err(ChainError::OutOfSequence {
                expected,
                found: seq,
            });
        }
        let previous_hash = self.hashes.last().copied().unwrap_or(GENESIS_HASH);
        if prev != hex::encode(previous_hash) {
            return Err(ChainError::Unlinked {
                seq,
                previous: self.report.last_seq,
            });
        }
        if body.get("kind").and_then(Value::as_str) == Some(CHECKPOINT_KIND) {
            self.check_checkpoint(seq, body.get("details").unwrap_or(&Value::Null))?;
            self.report.last_checkpoint = Some(CheckpointSeen {
                seq,
                at_ms: body.get("at_ms").and_then(Value::as_i64).unwrap_or(0),
                covers_to: self.last_checkpoint_to,
            });
        }
        self.hashes.push(hash);
        self.report.n_events += 1;
        self.report.last_seq = seq;
        self.report.last_hash = hex::encode(hash);
        Ok(())
    }

    /// Checks that the log verified so far reaches the head `expected_seq` (as printed by `mayfly
    /// audit head`) and that its event there has `expected_hash`: a tail cut off a file, which the
    /// chain alone cannot show, is found this way. Events after the head (the log grew since) are
    /// fine.
    pub fn expect_head(&self, expected_seq: i64, expected_hash: &str) -> Result<(), ChainError> {
        if self.report.last_seq < expected_seq {
            return Err(ChainError::Truncated {
                last: self.report.last_seq,
                first_missing: self.report.last_seq + 1,
                expected: expected_seq,
            });
        }
        let hash = usize::try_from(expected_seq - 1)
            .ok()
            .and_then(|index| self.hashes.get(index));
        match hash {
            Some(hash) if hex::encode(hash).eq_ignore_ascii_case(expected_hash) => Ok(()),
            _ => Err(ChainError::HeadDiffers { seq: expected_seq }),
        }
    }

    pub fn finish(self) -> Report {
        self.report()
    }

    /// The report of what was verified so far, leaving the verifier to take more events (a
    /// verification kept and continued from where it stopped).
    pub fn report(&self) -> Report {
        let tail = self.report.last_seq - self.last_checkpoint_to;
        let mut report = self.report.clone();
        report.n_unsigned_tail = u64::try_from(tail).unwrap_or(0);
        report
    }

    fn check_checkpoint(&mut self, seq: i64, details: &Value) -> Result<(), ChainError> {
        let malformed = ChainError::BadCheckpoint { checkpoint: seq };
        let (checkpoint, signature) = Checkpoint::from_details(details).ok_or(malformed.clone())?;
        if checkpoint.from_seq < 0 || checkpoint.to_seq <= checkpoint.from_seq {
            return Err(malformed);
        }
        // Compare what was signed with the events as they stand now: the first difference names
        // the first rewritten event, even if every hash after it was recomputed.
        for covered in (checkpoint.from_seq + 1)..=checkpoint.to_seq {
            let index = usize::try_from(covered - 1).map_err(|_| malformed.clone())?;
            let actual = self.hashes.get(index).ok_or(malformed.clone())?;
            let offset = usize::try_from(covered - checkpoint.from_seq - 1)
                .map_err(|_| malformed.clone())?;
            let width = CHECKPOINT_PREFIX_LEN * 2;
            let signed = checkpoint
                .prefixes
                .get(offset * width..(offset + 1) * width)
                .ok_or(malformed.clone())?;
            let actual_prefix =
                hex::encode(actual.get(..CHECKPOINT_PREFIX_LEN).unwrap_or_default());
            if signed != actual_prefix {
                return Err(ChainError::Rewritten {
                    seq: covered,
                    checkpoint: seq,
                });
            }
            if covered == checkpoint.to_seq && hex::encode(actual) != checkpoint.to_hash {
                return Err(ChainError::Rewritten {
                    seq: covered,
                    checkpoint: seq,
                });
            }
        }
        if let Some(public_key) = &self.public_key {
            if checkpoint.key_id != key_id(public_key) {
                return Err(ChainError::UnknownKey {
                    checkpoint: seq,
                    key_id: checkpoint.key_id,
                });
            }
            let key = aws_lc_rs::signature::UnparsedPublicKey::new(
                &aws_lc_rs::signature::ED25519,
                public_key,
            );
            if key.verify(&checkpoint.message(), &signature).is_err() {
                return Err(ChainError::BadSignature { checkpoint: seq });
            }
            self.report.n_signatures_checked += 1;
        }
        self.report.n_checkpoints += 1;
        self.last_checkpoint_to = checkpoint.to_seq;
        Ok(())
    }
}

/// Splits a file line into the body and its hash.
pub fn split_line(line: &str) -> Result<(Value, String), String> {
    let mut value: Value = serde_json::from_str(line).map_err(|e| format!("not JSON: {e}"))?;
    let object = value.as_object_mut().ok_or("not a JSON object")?;
    let hash = object.remove("hash").ok_or("no `hash`")?;
    let hash = hash.as_str().ok_or("`hash` is not a string")?.to_owned();
    Ok((value, hash))
}

/// A file line for a body and its hash.
pub fn to_line(body: &Value, hash: &str) -> String {
    let mut body = body.clone();
    if let Some(object) = body.as_object_mut() {
        object.insert("hash".into(), hash.into());
    }
    String::from_utf8(canonical(&body)).unwrap_or_default()
}

/// The file line of an event stored as its [`canonical`] text, and its hash: the same bytes as
/// [`to_line`] of the parsed body, made without building the body's tree — the text is copied as
/// it is (it is what was hashed) and `"hash"` appended as its last member. `None` if the text is
/// not a JSON object ending in `}` without a `hash` member (then parse it and use [`to_line`]).
/// Whitespace inside the object is kept as stored, not checked: the broker never writes any.
pub fn stored_line(canonical: &str, hash: &str) -> Option<String> {
    use serde_json::value::RawValue;
    let fields: std::collections::HashMap<&str, &RawValue> =
        serde_json::from_str(canonical).ok()?;
    let open = canonical.strip_suffix('}')?;
    if fields.contains_key("hash") || !open.starts_with('{') {
        return None;
    }
    let hash = serde_json::to_string(hash).ok()?;
    let separator = if fields.is_empty() { "" } else { "," };
    Some(format!("{open}{separator}\"hash\":{hash}}}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Timestamp;

    /// The chained text is the canonical body, byte for byte, rendered ahead or not, for
    /// drafts with every kind of field and text that JSON must escape.
    #[test]
    fn a_chained_draft_is_its_canonical_body() {
        let mut full = AuditDraft::new(
            Timestamp::from_unix_ms(1_796_036_448_537),
            "access.certificate",
            Outcome::Refused,
        )
        .detail(
            "quote\"back\\slash",
            "tab\tnew\nline \u{1} \u{7f} é 😀 </script>",
        )
        .detail("n", -5)
        .detail(
            "nested",
            serde_json::json!({"b": [1, 2.5, null, true], "a": {}}),
        )
        .detail("empty", "");
        full.actor = Some("user:admin".into());
        full.source = Some("127.0.0.1".into());
        full.request_id = Some("01a22c1d-5223".into());
        full.subject = None;
        let bare = AuditDraft::new(Timestamp::from_unix_ms(0), "x", Outcome::Ok);
        let prev = [0xab; 32];
        for draft in [full, bare] {
            let expected = canonical(&draft.clone().into_body(42, &prev));
            let (text, hash) = draft.chain(42, &prev);
            assert_eq!(text.as_bytes(), expected.as_slice());
            assert_eq!(hash, hash_canonical(&expected));
            let mut ahead = draft.clone();
            ahead.prerender();
            assert_eq!(ahead.chain(42, &prev), (text.clone(), hash));
            // A detail added or a refusal after prerendering is seen.
            let later = ahead.clone().detail("later", 1);
            assert_eq!(
                later.chain(42, &prev).0.as_bytes(),
                canonical(&later.clone().into_body(42, &prev)).as_slice()
            );
            ahead.refuse("taken");
            assert_eq!(
                ahead.chain(42, &prev).0.as_bytes(),
                canonical(&ahead.clone().into_body(42, &prev)).as_slice()
            );
        }
    }

    struct Log {
        lines: Vec<(Value, String)>,
    }

    fn build(n: i64, checkpoint_every: i64, key: &aws_lc_rs::signature::Ed25519KeyPair) -> Log {
        use aws_lc_rs::signature::KeyPair;
        let public = key.public_key().as_ref().to_vec();
        let mut lines: Vec<(Value, String)> = Vec::new();
        let mut prev = GENESIS_HASH;
        let mut last_cp = 0;
        for i in 1..=n {
            let draft = if i % checkpoint_every == 0 {
                let hashes: Vec<[u8; 32]> = lines[last_cp as usize..]
                    .iter()
                    .map(|(_, h)| hex::decode(h).unwrap().try_into().unwrap())
                    .collect();
                let cp = Checkpoint::over(last_cp, &hashes, &key_id(&public)).unwrap();
                last_cp = cp.to_seq;
                let sig = key.sign(&cp.message());
                let mut d =
                    AuditDraft::new(Timestamp::from_unix_ms(i), CHECKPOINT_KIND, Outcome::Ok);
                d.details = cp.into_details(sig.as_ref());
                d
            } else {
                AuditDraft::new(Timestamp::from_unix_ms(i), "test.event", Outcome::Ok)
                    .detail("i", i)
            };
            let body = draft.into_body(i, &prev);
            prev = hash_body(&body);
            lines.push((body, hex::encode(prev)));
        }
        Log { lines }
    }

    fn verify(lines: &[(Value, String)], public: Option<&[u8]>) -> Result<Report, ChainError> {
        let mut v = Verifier::new(public);
        for (i, (body, hash)) in lines.iter().enumerate() {
            v.push(i as u64 + 1, body, hash)?;
        }
        Ok(v.finish())
    }

    fn keypair() -> aws_lc_rs::signature::Ed25519KeyPair {
        aws_lc_rs::signature::Ed25519KeyPair::generate().unwrap()
    }

    fn rehash_from(lines: &mut [(Value, String)], from: usize) {
        let mut prev: [u8; 32] = if from == 0 {
            GENESIS_HASH
        } else {
            hex::decode(&lines[from - 1].1).unwrap().try_into().unwrap()
        };
        for (seq0, (body, hash)) in lines.iter_mut().enumerate().skip(from) {
            body["seq"] = Value::from(seq0 as i64 + 1);
            body["prev"] = Value::from(hex::encode(prev));
            prev = hash_body(body);
            *hash = hex::encode(prev);
        }
    }

    #[test]
    fn intact_log_verifies_with_signatures() {
        use aws_lc_rs::signature::KeyPair;
        let key = keypair();
        let log = build(50, 10, &key);
        let report = verify(&log.lines, Some(key.public_key().as_ref())).unwrap();
        assert_eq!(report.n_events, 50);
        assert_eq!(report.n_checkpoints, 5);
        assert_eq!(report.n_signatures_checked, 5);
        assert_eq!(report.n_unsigned_tail, 1);
        let line = to_line(&log.lines[3].0, &log.lines[3].1);
        assert_eq!(split_line(&line).unwrap(), log.lines[3]);
    }

    /// A tail cut off the end of a log verifies as a chain (nothing in it is wrong), so the
    /// verifier names the last checkpoint it saw, and a head taken from the broker finds the cut.
    #[test]
    fn a_cut_tail_is_found_against_the_expected_head() {
        let key = keypair();
        let log = build(50, 10, &key);
        let head = (50, log.lines[49].1.clone());
        let verify_to = |n: usize| {
            let mut verifier = Verifier::new(None);
            for (i, (body, hash)) in log.lines[..n].iter().enumerate() {
                verifier.push(i as u64 + 1, body, hash).unwrap();
            }
            verifier
        };
        let whole = verify_to(50);
        assert_eq!(whole.expect_head(head.0, &head.1), Ok(()));
        assert_eq!(whole.expect_head(30, &log.lines[29].1), Ok(()));
        assert_eq!(
            whole.expect_head(30, &log.lines[28].1),
            Err(ChainError::HeadDiffers { seq: 30 })
        );
        let report = whole.finish();
        let seen = report.last_checkpoint.unwrap();
        assert_eq!((seen.seq, seen.at_ms, seen.covers_to), (50, 50, 49));

        let cut = verify_to(43);
        let error = cut.expect_head(head.0, &head.1).unwrap_err();
        assert_eq!(
            error,
            ChainError::Truncated {
                last: 43,
                first_missing: 44,
                expected: 50
            }
        );
        assert!(
            error.to_string().contains("events 44 to 50 were cut off"),
            "{error}"
        );
        let report = cut.finish();
        assert_eq!(report.last_checkpoint.unwrap().seq, 40);
        assert_eq!(report.n_unsigned_tail, 4);
    }

    /// A stored event's line made from its text is, byte for byte, the line made from its tree.
    #[test]
    fn stored_lines_are_the_lines_of_the_parsed_bodies() {
        use aws_lc_rs::signature::KeyPair;
        let key = keypair();
        let log = build(25, 10, &key);
        let mut bodies: Vec<Value> = log.lines.iter().map(|(body, _)| body.clone()).collect();
        bodies.push(serde_json::json!({
            "z": [1, 2.5, -3, null, true], "a": {"b\"q": "é ✓ \n\t\u{1}", "a": {}},
            "gate": "\\", "hash_of": "x", "ha": 1, "key_id": key_id(key.public_key().as_ref()),
        }));
        for body in &bodies {
            let text = String::from_utf8(canonical(body)).unwrap();
            let hash = hex::encode(hash_body(body));
            let line = stored_line(&text, &hash).unwrap();
            assert_eq!(line, to_line(body, &hash));
            // The rule docs/audit.md gives for checking a line by hand.
            let member = format!(",\"hash\":\"{hash}\"}}");
            let bare = format!("{}}}", line.strip_suffix(&member).unwrap());
            assert_eq!(hex::encode(hash_canonical(bare.as_bytes())), hash);
        }
        assert_eq!(stored_line("[1]", "00"), None);
        assert_eq!(stored_line("{}", "00").as_deref(), Some(r#"{"hash":"00"}"#));
        assert_eq!(stored_line(r#"{"hash":"x"}"#, "00"), None);
        assert_eq!(stored_line("{\"a\":1} ", "00"), None);
        assert_eq!(stored_line("{\"a\":", "00"), None);
    }

    #[test]
    fn edits_removals_insertions_and_swaps_are_named() {
        let key = keypair();
        let log = build(30, 10, &key);

        let mut edited = log.lines.clone();
        edited[6].0["details"]["i"] = Value::from(99);
        assert_eq!(verify(&edited, None), Err(ChainError::Edited { seq: 7 }));

        let mut removed = log.lines.clone();
        removed.remove(4);
        assert_eq!(
            verify(&removed, None),
            Err(ChainError::OutOfSequence {
                expected: 5,
                found: 6
            })
        );

        let mut swapped = log.lines.clone();
        swapped.swap(11, 12);
        assert_eq!(
            verify(&swapped, None),
            Err(ChainError::OutOfSequence {
                expected: 12,
                found: 13
            })
        );

        let mut inserted = log.lines.clone();
        inserted.insert(3, inserted[2].clone());
        assert_eq!(
            verify(&inserted, None),
            Err(ChainError::OutOfSequence {
                expected: 4,
                found: 3
            })
        );
    }

    #[test]
    fn recomputed_hashes_are_caught_by_checkpoints_only() {
        use aws_lc_rs::signature::KeyPair;
        let key = keypair();
        let log = build(30, 10, &key);
        let mut forged = log.lines.clone();
        forged[13].0["details"]["i"] = Value::from(1234);
        rehash_from(&mut forged, 13);
        // The chain alone is consistent again ...
        let mut chain_only = Verifier::new(None);
        let mut first_err = None;
        for (i, (b, h)) in forged.iter().enumerate() {
            if let Err(e) = chain_only.push(i as u64, b, h) {
                first_err = Some(e);
                break;
            }
        }
        // ... but the signed prefixes still name event 14.
        assert_eq!(
            first_err,
            Some(ChainError::Rewritten {
                seq: 14,
                checkpoint: 20
            })
        );

        // Deleting an event and renumbering everything after it is also caught.
        let mut deleted = log.lines.clone();
        deleted.remove(4);
        rehash_from(&mut deleted, 4);
        assert_eq!(
            verify(&deleted, Some(key.public_key().as_ref())),
            Err(ChainError::Rewritten {
                seq: 5,
                checkpoint: 9
            })
        );

        // A forged checkpoint signature is refused when the public key is known.
        let mut bad_sig = log.lines.clone();
        let sig = bad_sig[9].0["details"]["signature"]
            .as_str()
            .unwrap()
            .to_owned();
        let flipped = format!(
            "{}{}",
            if sig.starts_with('0') { "1" } else { "0" },
            &sig[1..]
        );
        bad_sig[9].0["details"]["signature"] = Value::from(flipped);
        rehash_from(&mut bad_sig, 9);
        assert_eq!(
            verify(&bad_sig, Some(key.public_key().as_ref())),
            Err(ChainError::BadSignature { checkpoint: 10 })
        );
        let other = keypair();
        assert!(matches!(
            verify(&log.lines, Some(other.public_key().as_ref())),
            Err(ChainError::UnknownKey { checkpoint: 10, .. })
        ));
    }

    /// What the audit search indexes: the principal the event is about and its target, by the
    /// rules store migration 0013 repeats in SQL.
    #[test]
    fn the_search_columns_follow_the_actor_the_subject_and_the_details() {
        #[track_caller]
        fn check(
            actor: Option<&str>,
            subject: Option<&str>,
            details: &[(&str, Value)],
            expect: (Option<&str>, Option<&str>),
        ) {
            let mut draft = AuditDraft::new(Timestamp::from_unix_ms(1), "k", Outcome::Ok);
            draft.actor = actor.map(str::to_owned);
            draft.subject = subject.map(str::to_owned);
            for (key, value) in details {
                draft = draft.detail(key, value.clone());
            }
            assert_eq!((draft.search_principal(), draft.search_target()), expect);
        }
        let s = |text: &str| Value::String(text.into());
        check(
            Some("user:bob"),
            Some("user:alice"),
            &[],
            (Some("user:bob"), None),
        );
        check(
            Some("broker"),
            Some("user:alice"),
            &[("role", s("pg/ro"))],
            (Some("user:alice"), Some("pg")),
        );
        check(
            Some("broker"),
            Some("workload:ci:job"),
            &[],
            (Some("workload:ci:job"), None),
        );
        check(
            Some("broker"),
            Some("session:1"),
            &[],
            (Some("broker"), None),
        );
        check(None, None, &[], (None, None));
        check(None, Some("target:pg"), &[], (None, Some("pg")));
        check(None, Some("role:pg/ro"), &[], (None, Some("pg")));
        check(None, Some("role:/ro"), &[], (None, None));
        check(None, Some("target:"), &[], (None, None));
        check(
            None,
            Some("target:pg"),
            &[("target", s("ssh"))],
            (None, Some("ssh")),
        );
        check(
            None,
            None,
            &[("target", Value::from(3)), ("role", s("db/x"))],
            (None, Some("db")),
        );
        check(None, None, &[("role", s("no-slash"))], (None, None));
    }
}
