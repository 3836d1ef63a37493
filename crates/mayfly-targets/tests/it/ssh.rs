//! The SSH target through the certificate contract, against a real sshd (Debian's openssh-server,
//! installed by `scripts/services.sh`) trusting a CA of the test's (`TrustedUserCAKeys`) and
//! reading the KRL the server makes from the store (`RevokedKeys`); the target asks the server's
//! `StoreList` over that store.

use std::path::Path;
use std::sync::Arc;

use mayfly_crypto::ssh::SshCa;
use mayfly_store::Store;
use mayfly_targets::ssh::SshTarget;
use mayfly_targets::{RoleSpec, TargetKind};
use mayfly_testkit::sshd::{self, Sshd};
use secrecy::{ExposeSecret, SecretString};

use crate::conformance::{self, BoxFuture, CertificateBroker, CertificateProbe};

/// The target's name: its list holds only its own certificates.
const TARGET: &str = "hosts";

struct SshProbe {
    ca: Arc<SshCa>,
    sshd: Sshd,
    user: String,
    files: tempfile::TempDir,
}

fn write_private(path: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

impl CertificateProbe for SshProbe {
    fn new_key(&self) -> (String, SecretString) {
        let (private, public) = mayfly_crypto::ssh::generate_user_key().unwrap();
        (public, SecretString::from(private.as_str().to_owned()))
    }

    /// The KRL as `/v1/ssh/krl` serves it, written where sshd reads it at each login.
    fn publish<'a>(&'a self, store: &'a dyn Store) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            let krl = mayfly_server::ssh::krl(store, TARGET, &self.ca, conformance::now())
                .await
                .map_err(|e| e.to_string())?;
            self.sshd.write_krl(&krl);
            Ok(())
        })
    }

    fn present<'a>(
        &'a self,
        certificate: &'a str,
        key: &'a SecretString,
    ) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            let name = uuid::Uuid::now_v7().simple().to_string();
            let key_path = self.files.path().join(&name);
            let certificate_path = self.files.path().join(format!("{name}-cert.pub"));
            write_private(&key_path, key.expose_secret());
            std::fs::write(&certificate_path, certificate).unwrap();
            let result = sshd::login(&self.sshd, &key_path, &certificate_path, &self.user);
            let _ = std::fs::remove_file(&key_path);
            let _ = std::fs::remove_file(&certificate_path);
            result.map(|out| assert_eq!(out.trim(), "mayfly-ok"))
        })
    }
}

async fn setup() -> (SshTarget, RoleSpec, SshProbe, CertificateBroker) {
    let seed = SshCa::generate_seed().unwrap();
    let ca = Arc::new(SshCa::from_seed(&seed).unwrap());
    let sshd = sshd::start(&ca.public_key_openssh(), &ca.krl(1, 0, &[]).unwrap()).await;
    let user = sshd::whoami();
    let role = RoleSpec {
        name: "login".into(),
        creation_sql: format!(r#"{{"principals": ["{user}"], "extensions": ["permit-pty"]}}"#),
        revocation_sql: None,
        max_ttl: std::time::Duration::from_secs(3600),
    };
    let url = format!("ssh://127.0.0.1:{}", sshd.port);
    let broker = CertificateBroker::start(TargetKind::Ssh, TARGET, &url, &role).await;
    let target = SshTarget::new(TARGET, &url, ca.clone(), broker.list()).unwrap();
    let probe = SshProbe {
        ca,
        sshd,
        user,
        files: tempfile::tempdir().unwrap(),
    };
    (target, role, probe, broker)
}

#[tokio::test]
async fn ssh_conformance() {
    let (target, role, probe, broker) = setup().await;
    conformance::certificate_lifecycle(&target, &role, &probe, &broker).await;
    conformance::certificate_batch(&target, &role, &probe, &broker).await;
    conformance::certificate_unreachable_then_back(&target, &role, &probe, &broker).await;
    broker.finish().await;
}

/// A principal the role does not give is refused by sshd, and an SSH grant without a key is
/// refused by the target before anything is signed.
#[tokio::test]
async fn ssh_certificates_carry_only_the_roles_principals() {
    let (target, role, probe, broker) = setup().await;
    let (_, certificate, key) =
        conformance::certify(&target, &role, &probe, &broker, conformance::in_minutes(5)).await;
    let other = SshProbe {
        user: "nobody".into(),
        ..probe
    };
    assert!(other.present(&certificate, &key).await.is_err());
    let error = mayfly_targets::Target::issue(
        &target,
        &mayfly_targets::IssuePlan {
            login: &conformance::new_login(),
            secret: &conformance::new_secret(),
            role: &role,
            expires_at: conformance::in_minutes(5),
            issued_at: conformance::in_minutes(0),
            public_key: None,
        },
    )
    .await
    .unwrap_err();
    assert!(error.to_string().contains("public_key"), "{error}");
    broker.finish().await;
}
