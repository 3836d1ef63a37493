//! Passwords: argon2id with the crate's default (OWASP) parameters, stored as PHC strings.
//! Verification is constant-time inside argon2; an unknown user pays for the same work against
//! a fixed dummy hash, so timing does not reveal whether a user exists.

use argon2::{Argon2, PasswordHash, PasswordHasher, PasswordVerifier};
use secrecy::{ExposeSecret, SecretString};

use crate::CryptoError;

pub fn hash_password(password: &SecretString) -> Result<String, CryptoError> {
    let hash: PasswordHash = Argon2::default()
        .hash_password(password.expose_secret().as_bytes())
        .map_err(|_| CryptoError::PasswordHash)?;
    Ok(hash.to_string())
}

/// `true` only if `password` matches the PHC string; a malformed stored hash is `false`.
pub fn verify_password(password: &SecretString, phc: &str) -> bool {
    let Ok(hash) = PasswordHash::new(phc) else {
        return false;
    };
    Argon2::default()
        .verify_password(password.expose_secret().as_bytes(), &hash)
        .is_ok()
}

/// A fixed argon2id hash with the default parameters (of a password nobody uses). A constant,
/// not computed at first use, so the first unknown user costs the same as every other.
const DUMMY_PHC: &str = "$argon2id$v=19$m=19456,t=2,p=1$m2BPo6D0Yt79itPWkmEEEQ$P6zVKpHa6fbzq1Uj5EG9V7DlKpjpyKtigrgfMyl6kjM";

/// The same work as [`verify_password`] against a fixed hash; always `false`.
pub fn verify_password_dummy(password: &SecretString) -> bool {
    let _ = std::hint::black_box(verify_password(password, DUMMY_PHC));
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_and_verify() {
        let password = SecretString::from("correct horse battery staple".to_owned());
        let phc = hash_password(&password).unwrap();
        assert!(phc.starts_with("$argon2id$"));
        assert!(!phc.contains("correct horse"));
        assert!(verify_password(&password, &phc));
        assert!(!verify_password(
            &SecretString::from("wrong".to_owned()),
            &phc
        ));
        assert!(!verify_password(&password, "not a hash"));
        assert!(!verify_password_dummy(&password));
        // The dummy really runs argon2 with today's default parameters (same cost as a real
        // check), and is a valid hash: its own password verifies.
        let params = |phc: &str| phc.rsplitn(3, '$').nth(2).map(str::to_owned);
        assert_eq!(params(DUMMY_PHC), params(&phc));
        assert!(verify_password(
            &SecretString::from("mayfly dummy password, never valid".to_owned()),
            DUMMY_PHC
        ));
        assert!(!verify_password_dummy(&SecretString::from(
            "mayfly dummy password, never valid".to_owned()
        )));
        // Salted: the same password hashes differently.
        assert_ne!(phc, hash_password(&password).unwrap());
    }
}
