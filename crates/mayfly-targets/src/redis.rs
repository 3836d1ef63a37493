//! Redis (6.2 and later) ACL users. A grant is a user `mf_<grant id>` set with
//! `ACL SETUSER name reset on #<sha256 of the password> <the role's rules>`: the password's
//! SHA-256 is sent, never the password (so it is in no `MONITOR` stream or slow log). A role is a
//! list of ACL rules (`~app:* +@read -@dangerous`); rules that would touch the user's state or
//! password (`on`, `off`, `>`, `<`, `#`, `!`, `nopass`, `resetpass`, `reset`, selectors) are refused,
//! since the broker owns those. Each rule travels as its own argument: no rule can add another.
//!
//! Redis has no expiry of its own for a user: there is no second fence on the server, and
//! revocation rests on the broker (see docs/targets/redis.md).
//!
//! Revocation: `ACL SETUSER name off` (no new `AUTH`), `CLIENT KILL USER name` (every connection
//! of that user), then `ACL DELUSER`. Verification: `ACL GETUSER` finds nothing, `CLIENT LIST`
//! shows no client of that user, and `AUTH` with the issued password is refused.

use std::fmt::Write as _;
use std::sync::Arc;

use mayfly_core::{LoginName, Timestamp};
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::Mutex;

use crate::resp::{Reply, Resp, RespError};
use crate::{Connection, IssuePlan, RevocationProof, RoleSpec, Target, TargetError, TargetKind};

/// Idle admin connections kept per target.
const IDLE_CONNECTIONS: usize = 4;
/// The longest single rule accepted.
const MAX_RULE_LEN: usize = 512;

pub struct RedisTarget {
    name: String,
    host: String,
    port: u16,
    /// `rediss://`: TLS verified against the target's CA; `None` only on this machine.
    tls: Option<Arc<rustls::ClientConfig>>,
    admin_user: Option<String>,
    admin_password: Option<SecretString>,
    idle: Mutex<Vec<Resp>>,
}

impl std::fmt::Debug for RedisTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisTarget")
            .field("name", &self.name)
            .field("host", &self.host)
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}

/// Checks a role's rules: printable, no whitespace inside a rule, and only rules about keys,
/// channels and commands.
pub fn parse_rules(text: &str) -> Result<Vec<String>, String> {
    let mut rules = Vec::new();
    for rule in text.split_whitespace() {
        if rule.len() > MAX_RULE_LEN {
            return Err(format!("a rule is longer than {MAX_RULE_LEN} characters"));
        }
        if !rule.chars().all(|c| c.is_ascii_graphic()) {
            return Err("rules are printable ASCII".into());
        }
        let lower = rule.to_ascii_lowercase();
        let allowed = matches!(
            lower.as_str(),
            "allkeys"
                | "allchannels"
                | "allcommands"
                | "nocommands"
                | "resetkeys"
                | "resetchannels"
        ) || ["~", "%r~", "%w~", "%rw~", "&", "+", "-"]
            .iter()
            .any(|prefix| lower.starts_with(prefix) && lower.len() > prefix.len());
        if !allowed {
            return Err(format!(
                "`{}` is not allowed: a role gives keys (~…, %R~…), channels (&…) and commands (+…, -…, +@…); the broker sets the user's state and password",
                rule.chars().take(64).collect::<String>()
            ));
        }
        rules.push(rule.to_owned());
    }
    if rules.is_empty() {
        return Err("give the user's ACL rules, for example `~app:* +@read`".into());
    }
    Ok(rules)
}

/// A TLS client that trusts only the target's CA (no public roots) and checks the host name.
fn tls_config(name: &str, ca_pem: &str) -> Result<Arc<rustls::ClientConfig>, TargetError> {
    let refused = |reason: String| TargetError::Refused {
        target: name.to_owned(),
        reason,
    };
    let mut roots = rustls::RootCertStore::empty();
    for cert in crate::parse_ca_pem(ca_pem).map_err(refused)? {
        roots
            .add(cert)
            .map_err(|e| refused(format!("the CA certificate does not parse: {e}")))?;
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| refused(format!("TLS: {e}")))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(Arc::new(config))
}

/// A command's arguments as a growable list.
fn args<'a>(parts: &[&'a [u8]]) -> Vec<&'a [u8]> {
    parts.to_vec()
}

fn sha256_hex(secret: &SecretString) -> SecretString {
    let digest = mayfly_crypto::sha256(secret.expose_secret().as_bytes());
    let mut text = String::with_capacity(64);
    for byte in digest {
        let _ = write!(text, "{byte:02x}");
    }
    SecretString::from(text)
}

impl RedisTarget {
    /// `url` is `rediss://[USER@]HOST:PORT?ca=…` (TLS verified against the target's CA, see
    /// [`crate::url_with_ca`], and the host name, before `AUTH`) or, for a server on this machine
    /// only, `redis://[USER@]HOST:PORT`; the admin password comes from the barrier (empty: no
    /// `AUTH`, for a server without one).
    pub fn new(
        name: &str,
        url: &str,
        admin_password: Option<&SecretString>,
    ) -> Result<RedisTarget, TargetError> {
        let (url, ca) = crate::take_ca(name, url)?;
        let tls = url.starts_with("rediss://");
        let scheme = if tls { "rediss://" } else { "redis://" };
        let crate::Address { user, host, port } =
            crate::parse_address(name, &url, scheme, Some(6379))?;
        crate::require_verified(
            name,
            &host,
            tls,
            "use `rediss://HOST:PORT` with the target's CA certificate in the URL's `ca=` (see docs/targets/redis.md)",
        )?;
        let tls = match (tls, ca) {
            (true, Some(ca)) => Some(tls_config(name, &ca)?),
            (true, None) => {
                return Err(TargetError::Refused {
                    target: name.to_owned(),
                    reason: "`rediss://` needs the target's CA certificate in the URL's `ca=` (see docs/targets/redis.md)".into(),
                });
            }
            (false, Some(_)) => {
                return Err(TargetError::Refused {
                    target: name.to_owned(),
                    reason: "a CA certificate is for TLS: use `rediss://`".into(),
                });
            }
            (false, None) => None,
        };
        Ok(RedisTarget {
            name: name.to_owned(),
            host,
            port,
            tls,
            admin_user: user.filter(|u| !u.is_empty()),
            admin_password: admin_password
                .filter(|p| !p.expose_secret().is_empty())
                .cloned(),
            idle: Mutex::new(Vec::new()),
        })
    }

    fn error(&self, error: RespError) -> TargetError {
        match error {
            RespError::Server(reason) if reason.starts_with("WRONGPASS") => {
                TargetError::AdminLogin {
                    target: self.name.clone(),
                    reason,
                }
            }
            RespError::Server(reason) => TargetError::Refused {
                target: self.name.clone(),
                reason,
            },
            other => TargetError::Unavailable {
                target: self.name.clone(),
                source: Box::new(other),
            },
        }
    }

    /// A connection, TLS when the URL said `rediss://`.
    async fn connect(&self) -> Result<Resp, RespError> {
        match &self.tls {
            Some(tls) => Resp::connect_tls(&self.host, self.port, tls.clone()).await,
            None => Resp::connect(&self.host, self.port).await,
        }
    }

    async fn open(&self) -> Result<Resp, RespError> {
        let mut connection = self.connect().await?;
        if let Some(password) = &self.admin_password {
            let user = self.admin_user.as_deref().unwrap_or("default");
            connection
                .call(&[
                    b"AUTH",
                    user.as_bytes(),
                    password.expose_secret().as_bytes(),
                ])
                .await?
                .into_result()?;
        }
        Ok(connection)
    }

    /// Runs `commands` on an admin connection (pipelined); a broken connection is not kept. An
    /// idle connection the server closed meanwhile is replaced once by a fresh one (every command
    /// the target sends can be repeated safely).
    async fn run(&self, commands: &[&[&[u8]]]) -> Result<Vec<Reply>, TargetError> {
        let pooled = self.idle.lock().await.pop();
        let fresh = pooled.is_none();
        let mut connection = match pooled {
            Some(connection) => connection,
            None => self.open().await.map_err(|e| self.error(e))?,
        };
        let replies = match connection.pipeline(commands).await {
            Ok(replies) => replies,
            Err(error) if !fresh && error.is_broken() => {
                connection = self.open().await.map_err(|e| self.error(e))?;
                connection
                    .pipeline(commands)
                    .await
                    .map_err(|e| self.error(e))?
            }
            Err(error) => return Err(self.error(error)),
        };
        let mut idle = self.idle.lock().await;
        if idle.len() < IDLE_CONNECTIONS {
            idle.push(connection);
        }
        Ok(replies)
    }

    async fn one(&self, args: &[&[u8]]) -> Result<Reply, TargetError> {
        let mut replies = self.run(&[args]).await?;
        replies
            .pop()
            .ok_or_else(|| self.error(RespError::Protocol("no reply".into())))?
            .into_result()
            .map_err(|e| self.error(e))
    }

    async fn users(&self) -> Result<Vec<String>, TargetError> {
        Ok(self.one(&[b"ACL", b"USERS"]).await?.strings())
    }

    async fn clients_of(&self, login: &LoginName) -> Result<usize, TargetError> {
        let list = self.one(&[b"CLIENT", b"LIST"]).await?;
        let needle = format!(" user={} ", login.as_str());
        Ok(list
            .text()
            .unwrap_or_default()
            .lines()
            .filter(|line| format!("{line} ").contains(&needle))
            .count())
    }

    async fn revoke_batch(
        &self,
        items: &[(LoginName, Option<RoleSpec>)],
    ) -> Result<(), TargetError> {
        let users = self.users().await?;
        let present: Vec<&LoginName> = items
            .iter()
            .map(|(login, _)| login)
            .filter(|login| users.iter().any(|u| u == login.as_str()))
            .collect();
        if present.is_empty() {
            return Ok(());
        }
        // Off first (no new AUTH), then end every connection, then delete: all pipelined.
        let mut commands: Vec<Vec<&[u8]>> = Vec::new();
        for login in &present {
            commands.push(args(&[
                b"ACL",
                b"SETUSER",
                login.as_str().as_bytes(),
                b"off",
            ]));
        }
        for login in &present {
            commands.push(args(&[
                b"CLIENT",
                b"KILL",
                b"USER",
                login.as_str().as_bytes(),
            ]));
        }
        let mut delete = args(&[b"ACL", b"DELUSER"]);
        delete.extend(present.iter().map(|login| login.as_str().as_bytes()));
        commands.push(delete);
        let refs: Vec<&[&[u8]]> = commands.iter().map(Vec::as_slice).collect();
        for reply in self.run(&refs).await? {
            reply.into_result().map_err(|e| self.error(e))?;
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl Target for RedisTarget {
    fn kind(&self) -> TargetKind {
        TargetKind::Redis
    }

    fn check_role(&self, role: &RoleSpec) -> Result<(), TargetError> {
        let invalid = |reason: String| TargetError::InvalidRole {
            role: role.name.clone(),
            reason,
        };
        parse_rules(&role.creation_sql).map_err(invalid)?;
        if role.revocation_sql.is_some() {
            return Err(invalid(
                "Redis roles have no revocation script: the user is deleted".into(),
            ));
        }
        Ok(())
    }

    async fn issue(&self, plan: &IssuePlan<'_>) -> Result<Connection, TargetError> {
        let rules =
            parse_rules(&plan.role.creation_sql).map_err(|reason| TargetError::InvalidRole {
                role: plan.role.name.clone(),
                reason,
            })?;
        let hash = sha256_hex(plan.secret);
        let password = SecretString::from(format!("#{}", hash.expose_secret()));
        // `reset` first: a second call converges to exactly this user.
        let mut command = args(&[
            b"ACL",
            b"SETUSER",
            plan.login.as_str().as_bytes(),
            b"reset",
            b"on",
            password.expose_secret().as_bytes(),
        ]);
        command.extend(rules.iter().map(|r| r.as_bytes()));
        self.one(&command).await?;
        Ok(Connection {
            host: self.host.clone(),
            port: self.port,
            database: "0".into(),
            certificate: None,
            private_key: None,
        })
    }

    /// Redis keeps no expiry of its own for a user: nothing to move.
    async fn extend(&self, _login: &LoginName, _expires_at: Timestamp) -> Result<(), TargetError> {
        Ok(())
    }

    async fn revoke(&self, login: &LoginName, role: Option<&RoleSpec>) -> Result<(), TargetError> {
        self.revoke_batch(&[(login.clone(), role.cloned())]).await
    }

    async fn revoke_many(
        &self,
        items: &[(LoginName, Option<RoleSpec>)],
    ) -> Vec<Result<(), TargetError>> {
        crate::revoke_in_batch(&self.name, items, |batch| self.revoke_batch(batch)).await
    }

    async fn verify_revoked(
        &self,
        login: &LoginName,
        secret: &SecretString,
    ) -> Result<RevocationProof, TargetError> {
        let not_revoked = |reason: String| TargetError::NotRevoked {
            target: self.name.clone(),
            login: login.to_string(),
            reason,
        };
        let mut checks = Vec::new();
        let user = self
            .one(&[b"ACL", b"GETUSER", login.as_str().as_bytes()])
            .await?;
        if !user.is_null() {
            return Err(not_revoked("ACL GETUSER still finds the user".into()));
        }
        checks.push("ACL GETUSER: no such user".to_owned());
        let clients = self.clients_of(login).await?;
        if clients > 0 {
            return Err(not_revoked(format!("{clients} clients of that user left")));
        }
        checks.push("CLIENT LIST: no client of that user".to_owned());
        let mut probe = self.connect().await.map_err(|e| self.error(e))?;
        let answer = probe
            .call(&[
                b"AUTH",
                login.as_str().as_bytes(),
                secret.expose_secret().as_bytes(),
            ])
            .await
            .map_err(|e| self.error(e))?;
        match answer {
            Reply::Error(message) => {
                checks.push(format!("AUTH with the issued password refused: {message}"));
            }
            _ => {
                return Err(not_revoked(
                    "AUTH with the issued password succeeded".into(),
                ));
            }
        }
        Ok(RevocationProof { checks })
    }

    async fn managed_logins(&self) -> Result<Vec<LoginName>, TargetError> {
        Ok(self
            .users()
            .await?
            .iter()
            .filter(|u| u.starts_with("mf_"))
            .filter_map(|u| LoginName::parse(u).ok())
            .collect())
    }

    /// `ACL SETUSER <admin> resetpass #<sha256>` (the `default` user when the URL names none,
    /// which is `requirepass`'s user): the hash is sent, never the password. Connections already
    /// authenticated stay so. In memory only until [`Target::persist_admin`].
    async fn rotate_admin(&self, new_password: &SecretString) -> Result<(), TargetError> {
        let user = self.admin_user.as_deref().unwrap_or("default");
        let hash = SecretString::from(format!("#{}", sha256_hex(new_password).expose_secret()));
        self.one(&[
            b"ACL",
            b"SETUSER",
            user.as_bytes(),
            b"resetpass",
            hash.expose_secret().as_bytes(),
        ])
        .await
        .map(|_| ())
    }

    /// `ACL SAVE` when Redis loads its users from an ACL file (`aclfile`), else `CONFIG REWRITE`
    /// when it was started with a configuration file (`config_file` in `INFO server`);
    /// `Ok(false)` when it has neither, or the admin user may not run them: the password then
    /// lives in memory only, and a restart of Redis brings the previous one back.
    async fn persist_admin(&self) -> Result<bool, TargetError> {
        let aclfile = match self.one(&[b"CONFIG", b"GET", b"aclfile"]).await {
            Ok(reply) => reply.strings().get(1).cloned().unwrap_or_default(),
            Err(TargetError::Refused { .. }) => String::new(),
            Err(error) => return Err(error),
        };
        let command: &[&[u8]] = if !aclfile.is_empty() {
            &[b"ACL", b"SAVE"]
        } else {
            let info = match self.one(&[b"INFO", b"server"]).await {
                Ok(reply) => reply.text().unwrap_or_default(),
                Err(TargetError::Refused { .. }) => String::new(),
                Err(error) => return Err(error),
            };
            let has_config_file = info.lines().any(|line| {
                line.strip_prefix("config_file:")
                    .is_some_and(|path| !path.trim().is_empty())
            });
            if !has_config_file {
                return Ok(false);
            }
            &[b"CONFIG", b"REWRITE"]
        };
        match self.one(command).await {
            Ok(_) => Ok(true),
            Err(TargetError::Refused { reason, .. }) => {
                tracing::warn!(target_name = %self.name, reason = %reason, "the rotated admin password cannot be saved by Redis: it lives in memory only");
                Ok(false)
            }
            Err(error) => Err(error),
        }
    }

    /// Sends every command `issue`, `revoke` and the proof need, each in a form that changes
    /// nothing (a user name with a space, which Redis refuses before creating anything and which
    /// no user can have), in one pipelined round trip: Redis checks the ACL before it looks at
    /// the arguments, so `NOPERM` means the admin user may not run it, any other answer that it
    /// may.
    async fn check_admin(&self) -> Result<(), TargetError> {
        const NOBODY: &[u8] = b"mayfly check";
        let checks: [(&str, &str, &[&[u8]]); 6] = [
            ("ACL SETUSER", "acl|setuser", &[b"ACL", b"SETUSER", NOBODY]),
            ("ACL DELUSER", "acl|deluser", &[b"ACL", b"DELUSER", NOBODY]),
            ("ACL USERS", "acl|users", &[b"ACL", b"USERS"]),
            ("ACL GETUSER", "acl|getuser", &[b"ACL", b"GETUSER", NOBODY]),
            (
                "CLIENT KILL",
                "client|kill",
                &[b"CLIENT", b"KILL", b"USER", NOBODY],
            ),
            (
                "CLIENT LIST",
                "client|list",
                &[b"CLIENT", b"LIST", b"ID", b"0"],
            ),
        ];
        let commands: Vec<&[&[u8]]> = checks.iter().map(|(_, _, command)| *command).collect();
        let replies = self.run(&commands).await?;
        if replies.len() != checks.len() {
            return Err(self.error(RespError::Protocol("a reply is missing".into())));
        }
        let mut missing = Vec::new();
        let mut rules = Vec::new();
        for ((command, rule, _), reply) in checks.iter().zip(&replies) {
            if matches!(reply, Reply::Error(message) if message.starts_with("NOPERM")) {
                missing.push(*command);
                rules.push(format!("+{rule}"));
            }
        }
        if missing.is_empty() {
            return Ok(());
        }
        let user = self.admin_user.as_deref().unwrap_or("default");
        Err(TargetError::Refused {
            target: self.name.clone(),
            reason: format!(
                "the admin user `{user}` may not run {}: allow with `ACL SETUSER {user} {}`",
                missing.join(", "),
                rules.join(" ")
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_are_checked() {
        assert_eq!(
            parse_rules("~app:*  +@read\n-@dangerous").unwrap(),
            vec!["~app:*", "+@read", "-@dangerous"]
        );
        for bad in [
            "",
            "on",
            "off",
            ">pw",
            "<pw",
            "#abc",
            "!abc",
            "nopass",
            "resetpass",
            "reset",
            "(~x +get)",
            "clearselectors",
            "~",
            "+",
            "~a\u{7f}",
        ] {
            assert!(parse_rules(bad).is_err(), "{bad:?} was accepted");
        }
        assert!(parse_rules(&format!("~{}", "a".repeat(600))).is_err());
    }

    #[test]
    fn urls() {
        let t = RedisTarget::new("r", "redis://default@127.0.0.1:6379", None).unwrap();
        assert_eq!((t.host.as_str(), t.port), ("127.0.0.1", 6379));
        assert_eq!(t.admin_user.as_deref(), Some("default"));
        assert!(RedisTarget::new("r", "redis://h ost:1", None).is_err());
        assert!(RedisTarget::new("r", "http://h:1", None).is_err());
        assert!(RedisTarget::new("r", "redis://h:port", None).is_err());
    }
}
