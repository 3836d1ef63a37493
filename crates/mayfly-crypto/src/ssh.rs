//! The broker's OpenSSH user certificate authority: an Ed25519 key (its 32-byte seed is kept
//! through the barrier), user certificates for a grant, and the key revocation list (KRL, OpenSSH's
//! `PROTOCOL.krl`) that hosts use as `RevokedKeys`.

use ssh_key::certificate::{Builder, CertType};
use ssh_key::private::Ed25519Keypair;
use ssh_key::{LineEnding, PrivateKey, PublicKey};
use zeroize::Zeroizing;

use crate::CryptoError;

/// How far `valid_after` is set before now, for hosts whose clock runs behind.
pub const SKEW_SECONDS: u64 = 60;

/// The most principals, extensions or options a certificate carries.
const MAX_ITEMS: usize = 32;

pub struct SshCa {
    key: PrivateKey,
    /// The same key in aws-lc, which signs several times faster than ed25519-dalek without its
    /// precomputed tables (and does not re-derive the public key at every signature). Ed25519 is
    /// deterministic: both give the same signature.
    signer: FastSigner,
}

struct FastSigner {
    key: aws_lc_rs::signature::Ed25519KeyPair,
    public: ssh_key::public::KeyData,
}

impl signature::Signer<ssh_key::Signature> for FastSigner {
    fn try_sign(&self, message: &[u8]) -> Result<ssh_key::Signature, signature::Error> {
        let signature = self.key.sign(message);
        ssh_key::Signature::new(ssh_key::Algorithm::Ed25519, signature.as_ref().to_vec())
            .map_err(|_| signature::Error::new())
    }
}

impl ssh_key::SigningKey for FastSigner {
    fn public_key(&self) -> ssh_key::public::KeyData {
        self.public.clone()
    }
}

impl std::fmt::Debug for SshCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SshCa")
            .field("public_key", &self.public_key_openssh())
            .finish_non_exhaustive()
    }
}

/// What a user certificate says.
#[derive(Clone, Debug, Default)]
pub struct UserCertificate<'a> {
    /// The user's public key, as in `authorized_keys` (`ssh-ed25519 AAAA… comment`).
    pub public_key: &'a str,
    /// The grant id: shown in sshd's log, and what the KRL revokes by.
    pub key_id: &'a str,
    pub serial: u64,
    pub principals: &'a [String],
    /// `permit-pty`, `permit-port-forwarding`, … (empty values).
    pub extensions: &'a [String],
    /// `force-command`, `source-address`.
    pub critical_options: &'a [(String, String)],
    /// Unix seconds.
    pub valid_after: u64,
    /// Unix seconds: the grant's expiry.
    pub valid_before: u64,
}

fn bad(what: &str) -> CryptoError {
    CryptoError::Ssh(what.to_owned())
}

/// The user's public key from an `authorized_keys`-style line: Ed25519 (also on a security key),
/// or RSA of at least 2048 bits.
pub fn parse_public_key(line: &str) -> Result<PublicKey, CryptoError> {
    let line = line.trim();
    if line.len() > 16 * 1024 || line.contains('\n') {
        return Err(bad(
            "the public key must be one line, as in authorized_keys",
        ));
    }
    let key = PublicKey::from_openssh(line)
        .map_err(|_| bad("not an OpenSSH public key (`ssh-ed25519 AAAA…`)"))?;
    match key.key_data() {
        ssh_key::public::KeyData::Ed25519(_) | ssh_key::public::KeyData::SkEd25519(_) => Ok(key),
        ssh_key::public::KeyData::Rsa(rsa) => {
            let bits = rsa.n.as_positive_bytes().map_or(0, |n| n.len() * 8);
            if bits >= 2048 {
                Ok(key)
            } else {
                Err(bad("RSA keys must have at least 2048 bits"))
            }
        }
        _ => Err(bad(
            "unsupported key type: use ssh-ed25519 (or ssh-rsa of 2048 bits or more)",
        )),
    }
}

/// The SHA-256 fingerprint of a public key line, as `ssh-keygen -l` prints it (`SHA256:…`).
pub fn fingerprint(line: &str) -> Result<String, CryptoError> {
    Ok(parse_public_key(line)?
        .fingerprint(ssh_key::HashAlg::Sha256)
        .to_string())
}

impl SshCa {
    pub fn from_seed(seed: &[u8; 32]) -> Result<SshCa, CryptoError> {
        let key = PrivateKey::from(Ed25519Keypair::from_seed(seed));
        let fast = aws_lc_rs::signature::Ed25519KeyPair::from_seed_unchecked(seed)
            .map_err(|_| bad("the CA seed is not an Ed25519 key"))?;
        let signer = FastSigner {
            key: fast,
            public: key.public_key().key_data().clone(),
        };
        Ok(SshCa { key, signer })
    }

    /// A new random seed (to be stored through the barrier).
    pub fn generate_seed() -> Result<Zeroizing<[u8; 32]>, CryptoError> {
        Ok(Zeroizing::new(crate::random_bytes()?))
    }

    /// The line for `TrustedUserCAKeys`.
    pub fn public_key_openssh(&self) -> String {
        self.key
            .public_key()
            .to_openssh()
            .unwrap_or_else(|_| String::new())
    }

    /// Signs a user certificate; returns it as one `…-cert-v01@openssh.com` line.
    pub fn sign_user(&self, request: &UserCertificate<'_>) -> Result<String, CryptoError> {
        let subject = parse_public_key(request.public_key)?;
        if request.principals.is_empty() {
            return Err(bad("a certificate needs at least one principal"));
        }
        if request.principals.len() > MAX_ITEMS
            || request.extensions.len() > MAX_ITEMS
            || request.critical_options.len() > MAX_ITEMS
        {
            return Err(bad("too many principals, extensions or options"));
        }
        if request.valid_before <= request.valid_after {
            return Err(bad("the validity window is empty"));
        }
        let nonce: [u8; 32] = crate::random_bytes()?;
        let mut builder = Builder::new(
            nonce.to_vec(),
            subject.key_data().clone(),
            request.valid_after,
            request.valid_before,
        )
        .map_err(|e| CryptoError::Ssh(e.to_string()))?;
        let ssh = |e: ssh_key::Error| CryptoError::Ssh(e.to_string());
        builder
            .serial(request.serial)
            .map_err(ssh)?
            .key_id(request.key_id)
            .map_err(ssh)?
            .cert_type(CertType::User)
            .map_err(ssh)?;
        for principal in request.principals {
            builder.valid_principal(principal.as_str()).map_err(ssh)?;
        }
        for extension in request.extensions {
            builder.extension(extension.as_str(), "").map_err(ssh)?;
        }
        for (name, value) in request.critical_options {
            builder
                .critical_option(name.as_str(), value.as_str())
                .map_err(ssh)?;
        }
        let certificate = builder.sign(&self.signer).map_err(ssh)?;
        certificate.to_openssh().map_err(ssh)
    }

    /// An OpenSSH KRL revoking the certificates of this CA with the given key ids.
    pub fn krl(
        &self,
        version: u64,
        generated_at: u64,
        key_ids: &[String],
    ) -> Result<Vec<u8>, CryptoError> {
        const MAGIC: &[u8; 8] = b"SSHKRL\n\0";
        const FORMAT_VERSION: u32 = 1;
        const SECTION_CERTIFICATES: u8 = 1;
        const CERT_KEY_ID: u8 = 0x23;
        let ca_blob = self
            .key
            .public_key()
            .to_bytes()
            .map_err(|e| CryptoError::Ssh(e.to_string()))?;
        let mut out = Vec::new();
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&FORMAT_VERSION.to_be_bytes());
        out.extend_from_slice(&version.to_be_bytes());
        out.extend_from_slice(&generated_at.to_be_bytes());
        out.extend_from_slice(&0u64.to_be_bytes()); // flags
        put_string(&mut out, b""); // reserved
        put_string(&mut out, b"mayfly"); // comment
        if !key_ids.is_empty() {
            let mut ids = Vec::new();
            for id in key_ids {
                put_string(&mut ids, id.as_bytes());
            }
            let mut section = Vec::new();
            put_string(&mut section, &ca_blob);
            put_string(&mut section, b""); // reserved
            section.push(CERT_KEY_ID);
            put_string(&mut section, &ids);
            out.push(SECTION_CERTIFICATES);
            put_string(&mut out, &section);
        }
        Ok(out)
    }
}

/// An SSH `string`: a big-endian u32 length and the bytes.
fn put_string(out: &mut Vec<u8>, bytes: &[u8]) {
    let length = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&length.to_be_bytes());
    out.extend_from_slice(bytes);
}

/// A fresh Ed25519 key pair for a user who has none: the private key in OpenSSH format (to be
/// written 0600 and deleted after use) and the public key line.
pub fn generate_user_key() -> Result<(Zeroizing<String>, String), CryptoError> {
    let seed = SshCa::generate_seed()?;
    let key = PrivateKey::from(Ed25519Keypair::from_seed(&seed));
    let private = key
        .to_openssh(LineEnding::LF)
        .map_err(|e| CryptoError::Ssh(e.to_string()))?;
    let public = key
        .public_key()
        .to_openssh()
        .map_err(|e| CryptoError::Ssh(e.to_string()))?;
    Ok((Zeroizing::new(private.to_string()), public))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signs_a_user_certificate() {
        let ca = SshCa::from_seed(&[7u8; 32]).unwrap();
        let (_, user) = generate_user_key().unwrap();
        let principals = vec!["deploy".to_owned()];
        let extensions = vec!["permit-pty".to_owned()];
        let options = vec![("source-address".to_owned(), "127.0.0.1/32".to_owned())];
        let line = ca
            .sign_user(&UserCertificate {
                public_key: &user,
                key_id: "grant-1",
                serial: 1,
                principals: &principals,
                extensions: &extensions,
                critical_options: &options,
                valid_after: 1_700_000_000,
                valid_before: 1_700_000_900,
            })
            .unwrap();
        let cert = ssh_key::Certificate::from_openssh(&line).unwrap();
        assert_eq!(cert.key_id(), "grant-1");
        assert_eq!(cert.valid_principals(), principals.as_slice());
        assert_eq!(cert.valid_before(), 1_700_000_900);
        let ca_key = PublicKey::from_openssh(&ca.public_key_openssh()).unwrap();
        assert_eq!(cert.signature_key(), ca_key.key_data());
        // The signature (made by aws-lc) verifies with ed25519-dalek, for this CA only.
        let fingerprint = ca_key.fingerprint(ssh_key::HashAlg::Sha256);
        cert.validate_at(1_700_000_100, [&fingerprint]).unwrap();
        let other = SshCa::from_seed(&[8u8; 32]).unwrap();
        let other = PublicKey::from_openssh(&other.public_key_openssh()).unwrap();
        assert!(
            cert.validate_at(
                1_700_000_100,
                [&other.fingerprint(ssh_key::HashAlg::Sha256)]
            )
            .is_err()
        );
        // Deterministic Ed25519: aws-lc and ed25519-dalek sign alike.
        let message = b"mayfly";
        let fast = signature::Signer::<ssh_key::Signature>::try_sign(&ca.signer, message).unwrap();
        let dalek = signature::Signer::<ssh_key::Signature>::try_sign(
            ca.key.key_data().ed25519().unwrap(),
            message,
        )
        .unwrap();
        assert_eq!(fast, dalek);
    }

    #[test]
    fn refuses_bad_requests() {
        let ca = SshCa::from_seed(&[7u8; 32]).unwrap();
        let (_, user) = generate_user_key().unwrap();
        let none: Vec<String> = Vec::new();
        let base = UserCertificate {
            public_key: &user,
            key_id: "g",
            principals: &none,
            valid_after: 10,
            valid_before: 20,
            ..UserCertificate::default()
        };
        assert!(ca.sign_user(&base).is_err(), "no principal");
        let principals = vec!["a".to_owned()];
        assert!(
            ca.sign_user(&UserCertificate {
                principals: &principals,
                valid_before: 10,
                ..base.clone()
            })
            .is_err(),
            "empty window"
        );
        for key in [
            "",
            "ssh-ed25519",
            "ssh-ed25519 AAAA\nssh-ed25519 AAAA",
            "hello world",
        ] {
            assert!(parse_public_key(key).is_err(), "{key:?}");
        }
    }

    #[test]
    fn krl_layout() {
        let ca = SshCa::from_seed(&[7u8; 32]).unwrap();
        let empty = ca.krl(1, 2, &[]).unwrap();
        assert!(empty.starts_with(b"SSHKRL\n\0"));
        let one = ca.krl(2, 3, &["grant-1".to_owned()]).unwrap();
        assert!(one.len() > empty.len());
        assert!(one.windows(7).any(|w| w == b"grant-1"));
    }
}
