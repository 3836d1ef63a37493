//! `mayfly dev`: a broker on an embedded SQLite store that initializes and unseals itself from a
//! root key file in its data directory, with demo users and an admin session. For development only:
//! the root key sits on disk next to the data it protects.

use std::io::Write as _;
use std::path::Path;
use std::time::Duration;

use mayfly_api::UserCreated;
use mayfly_core::Principal;
use mayfly_core::audit::Outcome;
use mayfly_crypto::barrier::RootKey;
use mayfly_crypto::{ExposeSecret, SecretString};
use mayfly_store::{Change, SessionRecord, Write, WriteOutcome};

use crate::ServerError;
use crate::origin::Origin;
use crate::state::Broker;

pub const KEY_FILE: &str = "dev-root.key";
const ADMIN_SESSION_TTL: Duration = Duration::from_secs(24 * 3600);

/// What `mayfly dev` prints.
pub struct DevBootstrap {
    pub admin_token: SecretString,
    /// Users created now (passwords shown once); empty when the data directory was reused.
    pub created: Vec<UserCreated>,
}

fn start_error(what: &str) -> impl Fn(String) -> ServerError + '_ {
    move |e| ServerError::Start(format!("{what}: {e}"))
}

/// Initializes (first run) or unseals (later runs) from the key file, then makes sure the demo
/// users exist and mints an admin session.
pub async fn bootstrap(broker: &Broker, data_dir: &Path) -> Result<DevBootstrap, ServerError> {
    let key_file = data_dir.join(KEY_FILE);
    let initialized = broker.store().seal().await?.is_some();
    if !initialized {
        let root = RootKey::generate().map_err(|e| start_error("root key")(e.to_string()))?;
        write_key_file(&key_file, root.expose_bytes())?;
        let seal_id: [u8; 8] =
            mayfly_crypto::random_bytes().map_err(|e| start_error("seal id")(e.to_string()))?;
        broker
            .initialize_with_root(&root, &seal_id, 1, 1)
            .await
            .map_err(|e| start_error("initialize")(e.to_string()))?;
    }
    unseal_from_file(broker, &key_file).await?;

    let meta = Origin::internal("mayfly-dev");
    let mut created = Vec::new();
    for (name, groups) in [
        ("admin", vec!["admins".to_owned()]),
        ("alice", vec!["dev".to_owned()]),
        ("bob", vec!["dev".to_owned()]),
    ] {
        if broker.store().user_by_name(name).await?.is_some() {
            continue;
        }
        let request = mayfly_api::CreateUserRequest {
            username: name.into(),
            password: None,
            groups,
        };
        let user = crate::users::create(broker, &meta, "mayfly-dev", request)
            .await
            .map_err(|e| start_error("demo user")(e.to_string()))?;
        created.push(user);
    }
    let admin = broker
        .store()
        .user_by_name("admin")
        .await?
        .ok_or_else(|| ServerError::Start("the dev admin user is missing".into()))?;
    let (token, token_hash) = mayfly_crypto::token::new_session_token()
        .map_err(|e| start_error("token")(e.to_string()))?;
    let now = broker.now();
    let session = SessionRecord {
        id: uuid::Uuid::now_v7().to_string(),
        token_hash: token_hash.to_vec(),
        principal: Principal::User {
            id: admin.id.clone(),
            name: admin.username.clone(),
            groups: admin.groups.clone(),
        },
        created_at: now,
        expires_at: now.saturating_add(ADMIN_SESSION_TTL),
        revoked_at: None,
        // `mayfly dev`'s admin session is made by whoever holds the root key file: it
        // counts as stepped up at its creation (then `mayfly step-up` like any other).
        factor_at: Some(now),
    };
    let keys = broker
        .unsealed()
        .await
        .ok_or_else(|| ServerError::Start("the broker did not unseal".into()))?;
    let mut event = broker
        .draft("dev.admin-session", Outcome::Ok)
        .detail("session_id", session.id.clone())
        .detail(
            "token_hmac",
            keys.audit_hmac(token.expose_secret().as_bytes()),
        );
    event.actor = Some("mayfly-dev".into());
    event.subject = Some(session.principal.to_string());
    let outcome = broker
        .commit(Write {
            change: Some(Change::CreateSession { session }),
            event,
        })
        .await
        .map_err(|e| start_error("admin session")(e.to_string()))?;
    if !matches!(outcome, WriteOutcome::Applied { .. }) {
        return Err(ServerError::Start(
            "could not create the dev admin session".into(),
        ));
    }
    Ok(DevBootstrap {
        admin_token: token,
        created,
    })
}

pub async fn unseal_from_file(broker: &Broker, key_file: &Path) -> Result<(), ServerError> {
    let bytes = std::fs::read(key_file).map_err(|e| {
        ServerError::Start(format!(
            "cannot read dev key file `{}`: {e}",
            key_file.display()
        ))
    })?;
    let root =
        RootKey::from_bytes(&bytes).map_err(|e| start_error("dev key file")(e.to_string()))?;
    broker
        .unseal_with_root(&root)
        .await
        .map_err(|e| start_error("unseal")(e.to_string()))
}

fn write_key_file(path: &Path, bytes: &[u8]) -> Result<(), ServerError> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path).map_err(|e| {
        ServerError::Start(format!(
            "cannot create dev key file `{}`: {e}",
            path.display()
        ))
    })?;
    file.write_all(bytes)?;
    file.sync_all()?;
    Ok(())
}
