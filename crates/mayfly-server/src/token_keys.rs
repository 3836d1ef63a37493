//! The keys that sign the tokens the broker issues, and what it publishes of them (the JWKS at
//! `/.well-known/jwks.json`).
//!
//! Keys come in generations: one key per algorithm ([`TokenAlg::ALL`]: EdDSA, and ES256 for
//! verifiers without EdDSA), made together and stored through the barrier as one immutable secret
//! at `sys/token-keys/<generation>` (created, never replaced, so no node can lose a key by
//! racing another). A generation's id is its creation time in unix ms (13 digits) and a random
//! suffix, so ids sort by age. The newest generation signs. An older one stays published until
//! the generation after it was made plus [`MAX_TOKEN_TTL`] (the longest a token may live) plus
//! [`RETIRE_MARGIN`] (clock skew between nodes, and a node that signed with the old generation
//! just before it learned of the new one): by then every token it signed has expired. Retired
//! generations stay in the store, unread.
//!
//! The first generation is made when one is first needed (the first JWKS or signature), audited
//! as `token.signing_key.created`; `POST /v1/sys/token-keys/rotate` (admins) makes the next one,
//! audited as `token.signing_key.rotated`. The list of generations read from the store is kept
//! for [`IDS_MAX_AGE`](crate::token_key_cache::IDS_MAX_AGE) (2 s): a rotation on this node is followed at once, one by another node on
//! the same store within that time (and at once by a verifier that meets an unknown `kid`); the
//! parsed keys of the published generations, and the verification keys built from them, are kept
//! in memory while unsealed (a generation never changes).

use std::sync::Arc;
use std::time::Duration;

use mayfly_api::{Jwk, Jwks, SigningKeysRotated};
use mayfly_core::Timestamp;
use mayfly_core::audit::Outcome;
use mayfly_crypto::token_key::{self, TokenAlg, TokenKey};
use mayfly_store::{Change, Write, WriteOutcome};

use crate::auth::Caller;
use crate::error::BrokerError;
use crate::origin::Origin;
use crate::state::{Broker, Unsealed};
use crate::token_key_cache::Generation;

/// Under which the generations of token signing keys are kept (through the barrier).
pub const TOKEN_KEYS_PATH: &str = "sys/token-keys";
/// The longest lifetime of a token the broker signs: a key stays published this long (and
/// [`RETIRE_MARGIN`]) after its successor starts signing. Whatever issues tokens must not give
/// them a longer one.
pub const MAX_TOKEN_TTL: Duration = Duration::from_secs(3600);
/// Added to [`MAX_TOKEN_TTL`] before a replaced key leaves the JWKS: for clocks that differ
/// between nodes and a node that signed with the old key just before it saw the new one.
pub const RETIRE_MARGIN: Duration = Duration::from_secs(300);

/// Where the generation `id` is kept.
pub fn generation_path(id: &str) -> String {
    format!("{TOKEN_KEYS_PATH}/{id}")
}

/// A signature made with the current key of an algorithm.
#[derive(Debug, Clone)]
pub struct TokenSignature {
    pub kid: String,
    pub alg: TokenAlg,
    pub signature: Vec<u8>,
}

/// The creation time in a generation id (`<unix ms, 13 digits>-<suffix>`).
fn created_of(id: &str) -> Option<Timestamp> {
    let (ms, suffix) = id.split_once('-')?;
    if ms.len() != 13 || suffix.is_empty() || !ms.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    ms.parse().ok().map(Timestamp::from_unix_ms)
}

/// Which of the generations `ids` (oldest first) are published at `now`, newest first: the newest,
/// and each older one until the one after it was made plus the lifetime and the margin.
pub fn published_ids(ids: &[String], now: Timestamp) -> Vec<(String, Timestamp)> {
    let mut dated: Vec<(String, Timestamp)> = ids
        .iter()
        .filter_map(|id| match created_of(id) {
            Some(created) => Some((id.clone(), created)),
            None => {
                tracing::warn!(generation = %id, "a token key generation with a malformed id is ignored");
                None
            }
        })
        .collect();
    dated.sort_by(|a, b| b.0.cmp(&a.0));
    let mut published = Vec::new();
    let mut successor: Option<Timestamp> = None;
    for (id, created) in dated {
        match successor {
            None => published.push((id, created)),
            Some(next) if now < next + MAX_TOKEN_TTL + RETIRE_MARGIN => {
                published.push((id, created));
            }
            Some(_) => break,
        }
        successor = Some(created);
    }
    published
}

impl Broker {
    /// The published generations, newest (the one that signs) first. Makes the first generation
    /// when there is none.
    pub async fn token_key_generations(&self) -> Result<Vec<Arc<Generation>>, BrokerError> {
        self.generations(false).await
    }

    /// The published generations; `reread` reads the list from the store even if the one kept
    /// is fresh (a token signed with a `kid` this node does not know yet).
    pub(crate) async fn generations(
        &self,
        reread: bool,
    ) -> Result<Vec<Arc<Generation>>, BrokerError> {
        let keys = self.require_unsealed().await?;
        let kept = if reread {
            None
        } else {
            keys.token_keys.fresh_ids()
        };
        let ids = match kept {
            Some(ids) => ids,
            None => {
                let mut ids = self.generation_ids().await?;
                if ids.is_empty() {
                    let mut event = self.draft("token.signing_key.created", Outcome::Ok);
                    event.actor = Some("broker".into());
                    self.create_generation(&keys, event, None).await?;
                    ids = self.generation_ids().await?;
                }
                keys.token_keys.remember_ids(ids)
            }
        };
        let mut generations = Vec::new();
        for (id, created) in published_ids(&ids, self.now()) {
            let generation = match keys.token_keys.get(&id) {
                Some(generation) => generation,
                None => Arc::new(self.open_generation(&keys, &id, created).await?),
            };
            generations.push(generation);
        }
        keys.token_keys.keep(&generations);
        Ok(generations)
    }

    /// The key of `alg` that signs now: the newest generation's.
    pub async fn current_token_key(&self, alg: TokenAlg) -> Result<Arc<TokenKey>, BrokerError> {
        self.token_key_generations()
            .await?
            .iter()
            .find_map(|generation| generation.key(alg).cloned())
            .ok_or_else(|| BrokerError::Internal(format!("no {} token key", alg.jws_name())))
    }

    /// Signs `message` (a JWS signing input, `header.payload`) with the current key of `alg`.
    pub async fn sign_with_current(
        &self,
        alg: TokenAlg,
        message: &[u8],
    ) -> Result<TokenSignature, BrokerError> {
        let key = self.current_token_key(alg).await?;
        Ok(TokenSignature {
            kid: key.kid().to_owned(),
            alg,
            signature: key.sign(message)?,
        })
    }

    /// The JWKS: the public keys of every published generation, newest first.
    pub async fn jwks(&self) -> Result<Jwks, BrokerError> {
        let mut keys = Vec::new();
        for generation in self.token_key_generations().await? {
            for key in &generation.keys {
                let jwk: Jwk = serde_json::from_value(key.public_jwk()?)
                    .map_err(|e| BrokerError::Internal(format!("jwk: {e}")))?;
                keys.push(jwk);
            }
        }
        Ok(Jwks { keys })
    }

    /// Makes the next generation, which signs from now on (admins). The previous ones stay
    /// published until every token they signed has expired.
    pub async fn rotate_token_keys(
        &self,
        meta: &Origin,
        caller: &Caller,
    ) -> Result<SigningKeysRotated, BrokerError> {
        caller.require_admin()?;
        let keys = self.require_unsealed().await?;
        let previous = self.token_key_generations().await?;
        let previous_kids: Vec<String> = previous
            .first()
            .map(|g| g.keys.iter().map(|k| k.kid().to_owned()).collect())
            .unwrap_or_default();
        let mut event = self
            .draft("token.signing_key.rotated", Outcome::Ok)
            .detail("previous_kids", previous_kids);
        event.actor = Some(caller.principal().to_string());
        meta.fill(&mut event);
        let newest = previous.first().map(|g| g.created);
        let generation = self.create_generation(&keys, event, newest).await?;
        Ok(SigningKeysRotated {
            generation: generation.id.clone(),
            keys: generation.info(),
            previous: previous.first().map(|g| g.info()).unwrap_or_default(),
            previous_published_until_ms: generation.created.unix_ms()
                + duration_ms(MAX_TOKEN_TTL + RETIRE_MARGIN),
        })
    }

    async fn generation_ids(&self) -> Result<Vec<String>, BrokerError> {
        let prefix = format!("{TOKEN_KEYS_PATH}/");
        Ok(self
            .store()
            .secret_paths(&prefix)
            .await?
            .into_iter()
            .filter_map(|path| path.strip_prefix(&prefix).map(str::to_owned))
            .filter(|id| !id.contains('/'))
            .collect())
    }

    /// Makes a generation, stores it with `event` (to which its id and kids are added). It is
    /// dated after `newest` (the newest generation's creation), even if the clock is not, so that
    /// it is the newest.
    async fn create_generation(
        &self,
        keys: &Unsealed,
        event: mayfly_core::audit::AuditDraft,
        newest: Option<Timestamp>,
    ) -> Result<Arc<Generation>, BrokerError> {
        let now = self.now();
        let created = match newest {
            Some(newest) if newest >= now => newest + Duration::from_millis(1),
            _ => now,
        };
        let suffix: [u8; 4] = mayfly_crypto::random_bytes()?;
        let id = format!("{:013}-{}", created.unix_ms(), hex::encode(suffix));
        let mut made = Vec::new();
        for alg in TokenAlg::ALL {
            made.push(TokenKey::from_pkcs8(alg, &TokenKey::generate(alg)?)?);
        }
        let path = generation_path(&id);
        let blob = keys.keyring.seal(
            &path,
            &token_key::encode_generation(created.unix_ms(), &made)?,
        )?;
        let kids: Vec<String> = made.iter().map(|k| k.kid().to_owned()).collect();
        let mut event = event.detail("generation", id.clone()).detail("kids", kids);
        event.subject = Some(format!("token-keys:{id}"));
        let outcome = self
            .commit(Write {
                change: Some(Change::CreateSecret {
                    path,
                    blob,
                    at: created,
                }),
                event,
            })
            .await?;
        // Whatever this node does next reads the list again, with the new generation in it.
        keys.token_keys.forget_ids();
        if let WriteOutcome::Conflict { .. } = outcome {
            return Err(BrokerError::Conflict(format!(
                "the token key generation `{id}` exists already"
            )));
        }
        Ok(Arc::new(Generation {
            id,
            created,
            keys: made.into_iter().map(Arc::new).collect(),
        }))
    }

    async fn open_generation(
        &self,
        keys: &Unsealed,
        id: &str,
        created: Timestamp,
    ) -> Result<Generation, BrokerError> {
        let path = generation_path(id);
        let blob = self.store().secret(&path).await?.ok_or_else(|| {
            BrokerError::Internal(format!("the token key generation `{id}` is missing"))
        })?;
        let (stored_created, made) =
            token_key::decode_generation(&keys.keyring.open(&path, &blob)?)?;
        if stored_created != created.unix_ms() {
            return Err(BrokerError::Internal(format!(
                "the token key generation `{id}` does not hold its own creation time"
            )));
        }
        Ok(Generation {
            id: id.to_owned(),
            created,
            keys: made.into_iter().map(Arc::new).collect(),
        })
    }
}

fn duration_ms(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(ms: i64) -> String {
        format!("{ms:013}-abcd")
    }

    #[test]
    fn older_generations_stay_published_until_their_tokens_expired() {
        let keep = duration_ms(MAX_TOKEN_TTL + RETIRE_MARGIN);
        let ids = vec![id(1_000), id(2_000), id(10_000), "junk".to_owned()];
        let at = |ms: i64| {
            published_ids(&ids, Timestamp::from_unix_ms(ms))
                .into_iter()
                .map(|(id, _)| id)
                .collect::<Vec<_>>()
        };
        assert_eq!(at(10_000), [id(10_000), id(2_000), id(1_000)]);
        assert_eq!(at(2_000 + keep), [id(10_000), id(2_000)]);
        assert_eq!(at(10_000 + keep - 1), [id(10_000), id(2_000)]);
        assert_eq!(at(10_000 + keep), [id(10_000)]);
        assert_eq!(at(i64::MAX / 2), [id(10_000)]);
        assert!(published_ids(&[], Timestamp::from_unix_ms(0)).is_empty());
        assert_eq!(created_of("123-x"), None);
        assert_eq!(created_of(&id(5)), Some(Timestamp::from_unix_ms(5)));
    }
}
