//! Local users and groups: created by an admin (or, for the first admin, with the one-time setup
//! code). Passwords are stored as argon2id hashes; each user's TOTP secret is stored through the
//! barrier and shown once, at enrollment.

use mayfly_api::{
    CreateUserRequest, SetupRequest, TotpEnrollment, UpdateUserRequest, UserCreated, UserSummary,
    UserUpdated,
};
use mayfly_core::audit::Outcome;
use mayfly_core::{GroupName, Principal, Username};
use mayfly_crypto::totp::TotpSecret;
use mayfly_crypto::{ExposeSecret, SecretString};
use mayfly_store::{Change, UserRecord, Write, WriteOutcome};

use crate::auth::Caller;
use crate::error::BrokerError;
use crate::origin::Origin;
use crate::state::{Broker, totp_secret_path};

pub const MIN_PASSWORD_LEN: usize = 12;
const MAX_PASSWORD_LEN: usize = 1024;
pub const TOTP_ISSUER: &str = "Mayfly";

struct NewUser {
    record: UserRecord,
    secrets: Vec<(String, Vec<u8>)>,
    password: Option<SecretString>,
    totp: TotpEnrollment,
}

async fn prepare(
    broker: &Broker,
    username: &str,
    password: Option<String>,
    groups: &[String],
) -> Result<NewUser, BrokerError> {
    let keys = broker.require_unsealed().await?;
    let username = Username::parse(username)
        .map_err(|e| BrokerError::BadRequest(format!("field `username`: {e}")))?;
    let group_names = parse_groups(groups)?;
    let generated = password.is_none();
    let password = match password {
        Some(password) => SecretString::from(password),
        None => mayfly_crypto::password::generate_password()?,
    };
    let length = password.expose_secret().chars().count();
    if !(MIN_PASSWORD_LEN..=MAX_PASSWORD_LEN).contains(&length) {
        return Err(BrokerError::BadRequest(format!(
            "field `password`: must be {MIN_PASSWORD_LEN} to {MAX_PASSWORD_LEN} characters"
        )));
    }
    // On the bounded argon2 pool, like every login's check: never on an async worker.
    let password_hash = broker
        .inner
        .argon2
        .hash(SecretString::from(password.expose_secret().to_owned()))
        .await?;
    let id = uuid::Uuid::now_v7().to_string();
    let totp = TotpSecret::generate()?;
    let path = totp_secret_path(&id);
    let blob = keys.keyring.seal(&path, totp.expose_bytes())?;
    let enrollment = TotpEnrollment {
        otpauth_url: totp
            .otpauth_url(username.as_str(), TOTP_ISSUER)?
            .expose_secret()
            .to_owned(),
        secret_base32: totp.base32().expose_secret().to_owned(),
    };
    Ok(NewUser {
        record: UserRecord {
            id,
            username: username.as_str().to_owned(),
            password_hash,
            groups: group_names,
            disabled: false,
            totp_last_step: None,
            created_at: broker.now(),
        },
        secrets: vec![(path, blob)],
        password: generated.then_some(password),
        totp: enrollment,
    })
}

fn created(user: NewUser) -> UserCreated {
    UserCreated {
        username: user.record.username,
        groups: user.record.groups,
        password: user.password.map(|p| p.expose_secret().to_owned()),
        totp: user.totp,
    }
}

pub async fn create(
    broker: &Broker,
    meta: &Origin,
    actor: &str,
    request: CreateUserRequest,
) -> Result<UserCreated, BrokerError> {
    let user = prepare(broker, &request.username, request.password, &request.groups).await?;
    let mut event = broker
        .draft("user.create", Outcome::Ok)
        .detail("groups", user.record.groups.clone());
    event.actor = Some(actor.to_owned());
    event.subject = Some(format!("user:{}", user.record.username));
    meta.fill(&mut event);
    let change = Change::CreateUser {
        user: user.record.clone(),
        secrets: user.secrets.clone(),
    };
    match broker
        .commit(Write {
            change: Some(change),
            event,
        })
        .await?
    {
        WriteOutcome::Applied { .. } => Ok(created(user)),
        WriteOutcome::Conflict { reason, .. } => Err(BrokerError::Conflict(reason)),
    }
}

fn parse_groups(groups: &[String]) -> Result<Vec<String>, BrokerError> {
    let mut names: Vec<String> = Vec::new();
    for group in groups {
        let group = GroupName::parse(group).map_err(|e| {
            BrokerError::BadRequest(format!(
                "field `groups`: `{}` {e}",
                group.chars().take(64).collect::<String>()
            ))
        })?;
        if !names.iter().any(|n| n == group.as_str()) {
            names.push(group.as_str().to_owned());
        }
    }
    Ok(names)
}

/// Changes a user's groups or disables/enables the user, then revokes at once every active grant
/// that is no longer allowed (continuous verification). Sessions follow by themselves: a session
/// reads its user's groups and state at every call.
pub async fn update(
    broker: &Broker,
    meta: &Origin,
    actor: &Principal,
    username: &str,
    request: UpdateUserRequest,
) -> Result<UserUpdated, BrokerError> {
    let username = Username::parse(username).map_err(|e| {
        BrokerError::BadRequest(format!(
            "user `{}`: {e}",
            username.chars().take(64).collect::<String>()
        ))
    })?;
    if request.groups.is_none() && request.disabled.is_none() {
        return Err(BrokerError::BadRequest(
            "nothing to change: give `groups` and/or `disabled`".into(),
        ));
    }
    let groups = request.groups.as_deref().map(parse_groups).transpose()?;
    if let Principal::User { name, .. } = actor
        && name == username.as_str()
        && (request.disabled == Some(true)
            || groups
                .as_ref()
                .is_some_and(|g| !g.iter().any(|g| g == GroupName::ADMINS)))
    {
        return Err(BrokerError::Conflict(
            "an admin cannot disable itself or leave the admins group; ask another admin".into(),
        ));
    }
    let mut event = broker.draft("user.update", Outcome::Ok);
    if let Some(groups) = &groups {
        event = event.detail("groups", groups.clone());
    }
    if let Some(disabled) = request.disabled {
        event = event.detail("disabled", disabled);
    }
    event.actor = Some(actor.to_string());
    event.subject = Some(format!("user:{}", username.as_str()));
    meta.fill(&mut event);
    let change = Change::UpdateUser {
        username: username.as_str().to_owned(),
        groups,
        disabled: request.disabled,
    };
    match broker
        .commit(Write {
            change: Some(change),
            event,
        })
        .await?
    {
        WriteOutcome::Applied { .. } => {}
        WriteOutcome::Conflict { reason, .. } => return Err(BrokerError::NotFound(reason)),
    }
    let reason = if request.disabled == Some(true) {
        format!("user `{}` was disabled", username.as_str())
    } else {
        format!("the binding of user `{}` changed", username.as_str())
    };
    let key = crate::access::principal_key(&Principal::User {
        id: String::new(),
        name: username.as_str().to_owned(),
        groups: Vec::new(),
    });
    let revoked = crate::access::recheck::recheck_active(
        broker,
        &reason,
        mayfly_store::Principals::Exactly(&key),
    )
    .await?;
    let user = broker
        .store()
        .user_by_name(username.as_str())
        .await?
        .ok_or_else(|| BrokerError::NotFound(format!("no user `{}`", username.as_str())))?;
    Ok(UserUpdated {
        user: crate::views::user_summary(user),
        grants_revoked: revoked as u64,
    })
}

/// Creates the first admin with the one-time setup code printed by `operator init`.
pub async fn setup(
    broker: &Broker,
    meta: &Origin,
    request: SetupRequest,
) -> Result<UserCreated, BrokerError> {
    // The code first: an unauthenticated caller with a wrong code costs a hash and a read, not
    // an argon2 hash of the password it sent (which is what a flood of setups would buy).
    let code_hash = mayfly_crypto::token::hash_setup_code(&request.setup_code);
    let seal = broker
        .store()
        .seal()
        .await?
        .ok_or(BrokerError::NotInitialized)?;
    let code_matches = seal
        .setup_code_hash
        .as_deref()
        .is_some_and(|stored| mayfly_crypto::constant_time_eq(stored, &code_hash));
    if !code_matches {
        let mut event = broker.draft("sys.setup", Outcome::Refused);
        meta.fill(&mut event);
        event.refuse("the setup code is wrong or was already used");
        broker.record(event).await?;
        return Err(BrokerError::Forbidden(
            "the setup code is wrong or was already used".into(),
        ));
    }
    let user = prepare(
        broker,
        &request.username,
        Some(request.password),
        &[GroupName::ADMINS.to_owned()],
    )
    .await?;
    let mut event = broker.draft("sys.setup", Outcome::Ok);
    event.subject = Some(format!("user:{}", user.record.username));
    meta.fill(&mut event);
    let change = Change::SetupFirstAdmin {
        code_hash: code_hash.to_vec(),
        user: user.record.clone(),
        secrets: user.secrets.clone(),
    };
    match broker
        .commit(Write {
            change: Some(change),
            event,
        })
        .await?
    {
        WriteOutcome::Applied { .. } => Ok(created(user)),
        WriteOutcome::Conflict { .. } => Err(BrokerError::Forbidden(
            "the setup code is wrong or was already used".into(),
        )),
    }
}

impl Broker {
    /// Every user, without password hash or TOTP state, for admins.
    pub async fn list_users(&self, caller: &Caller) -> Result<Vec<UserSummary>, BrokerError> {
        caller.require_admin()?;
        let users = self.store().users().await?;
        Ok(users.into_iter().map(crate::views::user_summary).collect())
    }
}
