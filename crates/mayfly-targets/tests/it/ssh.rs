//! The SSH target through the certificate contract, against a real sshd (Debian's openssh-server,
//! installed by `scripts/services.sh`) trusting a CA of the test's (`TrustedUserCAKeys`) and
//! reading the KRL the broker's encoder makes (`RevokedKeys`).

use std::path::Path;
use std::sync::Arc;

use mayfly_crypto::ssh::SshCa;
use mayfly_targets::RoleSpec;
use mayfly_targets::ssh::SshTarget;
use mayfly_testkit::sshd::{self, Sshd};
use secrecy::{ExposeSecret, SecretString};

use crate::conformance::{self, BoxFuture, CertificateProbe, MemoryList};

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

    fn publish<'a>(&'a self, revoked: &'a [String]) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let now = conformance::in_minutes(0).unix_ms();
            let krl = self
                .ca
                .krl(now.unsigned_abs(), now.unsigned_abs() / 1000, revoked)
                .unwrap();
            self.sshd.write_krl(&krl);
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

async fn setup() -> (SshTarget, RoleSpec, SshProbe, Arc<MemoryList>) {
    let seed = SshCa::generate_seed().unwrap();
    let ca = Arc::new(SshCa::from_seed(&seed).unwrap());
    let sshd = sshd::start(&ca.public_key_openssh(), &ca.krl(1, 0, &[]).unwrap()).await;
    let list = Arc::new(MemoryList::default());
    let target = SshTarget::new(
        "hosts",
        &format!("ssh://127.0.0.1:{}", sshd.port),
        ca.clone(),
        list.clone(),
    )
    .unwrap();
    let user = sshd::whoami();
    let role = RoleSpec {
        name: "login".into(),
        creation_sql: format!(r#"{{"principals": ["{user}"], "extensions": ["permit-pty"]}}"#),
        revocation_sql: None,
        max_ttl: std::time::Duration::from_secs(3600),
    };
    let probe = SshProbe {
        ca,
        sshd,
        user,
        files: tempfile::tempdir().unwrap(),
    };
    (target, role, probe, list)
}

#[tokio::test]
async fn ssh_conformance() {
    let (target, role, probe, list) = setup().await;
    conformance::certificate_lifecycle(&target, &role, &probe, &list).await;
    conformance::certificate_batch(&target, &role, &probe, &list).await;
    conformance::certificate_unreachable_then_back(&target, &role, &probe, &list).await;
}

/// A principal the role does not give is refused by sshd, and an SSH grant without a key is
/// refused by the target before anything is signed.
#[tokio::test]
async fn ssh_certificates_carry_only_the_roles_principals() {
    let (target, role, probe, list) = setup().await;
    let (_, certificate, key) =
        conformance::certify(&target, &role, &probe, &list, conformance::in_minutes(5)).await;
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
}
