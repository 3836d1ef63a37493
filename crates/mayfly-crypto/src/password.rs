//! Passwords: argon2id with the crate's default (OWASP) parameters, stored as PHC strings.
//! Verification is constant-time inside argon2; an unknown user pays for the same work against
//! a fixed dummy hash, so timing does not reveal whether a user exists. Each thread counts the
//! verifications it runs ([`verifications_on_this_thread`]) and those another thread ran on its
//! behalf ([`credit_to_this_thread`], [`verifications_for_this_thread`]), so a test can prove that
//! equal work is done, and where, by counting it rather than by timing it.

use std::cell::Cell;

use argon2::{Argon2, PasswordHash, PasswordHasher, PasswordVerifier};
use secrecy::{ExposeSecret, SecretString};

use crate::CryptoError;

/// How many argon2 verifications a thread has run, by what they were checked against.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Verifications {
    /// Against a stored hash ([`verify_password`]).
    pub n_stored: u64,
    /// Against the dummy hash ([`verify_password_dummy`]).
    pub n_dummy: u64,
}

impl Verifications {
    /// The verifications counted since `before` (an earlier reading of the same count).
    pub fn since(self, before: Verifications) -> Verifications {
        Verifications {
            n_stored: self.n_stored.saturating_sub(before.n_stored),
            n_dummy: self.n_dummy.saturating_sub(before.n_dummy),
        }
    }

    fn plus(self, other: Verifications) -> Verifications {
        Verifications {
            n_stored: self.n_stored.saturating_add(other.n_stored),
            n_dummy: self.n_dummy.saturating_add(other.n_dummy),
        }
    }
}

/// The verifications run so far on the calling thread itself. Per thread, not per process: a
/// test that drives a broker on its own current-thread runtime sees only its own logins,
/// whatever other tests do at the same time on other threads. A thread-local increment is
/// nothing next to the 19 MiB argon2 pass it counts, so it is always on.
pub fn verifications_on_this_thread() -> Verifications {
    N_RUN.with(Cell::get)
}

/// The verifications run on the calling thread plus those credited to it: run on another thread
/// (a blocking pool) for work this thread waited on.
pub fn verifications_for_this_thread() -> Verifications {
    N_RUN.with(Cell::get).plus(N_CREDITED.with(Cell::get))
}

/// Credits `done` (verifications another thread ran for the caller, measured there with
/// [`verifications_on_this_thread`] and [`Verifications::since`]) to the calling thread.
pub fn credit_to_this_thread(done: Verifications) {
    N_CREDITED.with(|count| count.set(count.get().plus(done)));
}

pub fn hash_password(password: &SecretString) -> Result<String, CryptoError> {
    let hash: PasswordHash = Argon2::default()
        .hash_password(password.expose_secret().as_bytes())
        .map_err(|_| CryptoError::PasswordHash)?;
    Ok(hash.to_string())
}

/// `true` only if `password` matches the PHC string; a malformed stored hash is `false`.
pub fn verify_password(password: &SecretString, phc: &str) -> bool {
    argon2_verify(password, phc, Against::Stored)
}

/// A fixed argon2id hash with the default parameters (of a password nobody uses). A constant,
/// not computed at first use, so the first unknown user costs the same as every other.
const DUMMY_PHC: &str = "$argon2id$v=19$m=19456,t=2,p=1$m2BPo6D0Yt79itPWkmEEEQ$P6zVKpHa6fbzq1Uj5EG9V7DlKpjpyKtigrgfMyl6kjM";

/// The same work as [`verify_password`] against a fixed hash; always `false`.
pub fn verify_password_dummy(password: &SecretString) -> bool {
    let _ = std::hint::black_box(argon2_verify(password, DUMMY_PHC, Against::Dummy));
    false
}

thread_local! {
    static N_RUN: Cell<Verifications> = const {
        Cell::new(Verifications { n_stored: 0, n_dummy: 0 })
    };
    static N_CREDITED: Cell<Verifications> = const {
        Cell::new(Verifications { n_stored: 0, n_dummy: 0 })
    };
}

enum Against {
    Stored,
    Dummy,
}

fn argon2_verify(password: &SecretString, phc: &str, against: Against) -> bool {
    let Ok(hash) = PasswordHash::new(phc) else {
        return false;
    };
    // Counted only once argon2 really runs: a malformed stored hash costs nothing and is no
    // verification.
    let one = match against {
        Against::Stored => Verifications {
            n_stored: 1,
            n_dummy: 0,
        },
        Against::Dummy => Verifications {
            n_stored: 0,
            n_dummy: 1,
        },
    };
    N_RUN.with(|count| count.set(count.get().plus(one)));
    Argon2::default()
        .verify_password(password.expose_secret().as_bytes(), &hash)
        .is_ok()
}

/// Generated passwords: 24 characters from a 62-letter alphabet (≈142 bits, above the 128 a
/// generated credential must carry).
pub const PASSWORD_LEN: usize = 24;

/// A password strong enough to show once, from the operating system's CSPRNG.
pub fn generate_password() -> Result<SecretString, CryptoError> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut out = String::with_capacity(PASSWORD_LEN);
    while out.len() < PASSWORD_LEN {
        let bytes: [u8; 32] = crate::random_bytes()?;
        for byte in bytes {
            // Rejection sampling: 248 = 4 * 62, so every letter is equally likely.
            if byte < 248
                && out.len() < PASSWORD_LEN
                && let Some(c) = ALPHABET.get(usize::from(byte % 62))
            {
                out.push(char::from(*c));
            }
        }
    }
    Ok(SecretString::from(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verifications_are_counted_by_what_they_check_against() {
        let password = SecretString::from("some password".to_owned());
        let before = verifications_on_this_thread();
        assert!(!verify_password_dummy(&password));
        assert!(!verify_password(&password, DUMMY_PHC));
        assert!(!verify_password(&password, "not a hash"));
        let after = verifications_on_this_thread();
        assert_eq!(
            after.since(before),
            Verifications {
                n_stored: 1,
                n_dummy: 1
            }
        );
    }

    #[test]
    fn work_run_elsewhere_is_credited_to_the_thread_that_waited_for_it() {
        let password = SecretString::from("some password".to_owned());
        let (run_before, for_before) = (
            verifications_on_this_thread(),
            verifications_for_this_thread(),
        );
        let done = std::thread::spawn(move || {
            let before = verifications_on_this_thread();
            verify_password_dummy(&password);
            verifications_on_this_thread().since(before)
        })
        .join()
        .unwrap();
        credit_to_this_thread(done);
        let one_dummy = Verifications {
            n_stored: 0,
            n_dummy: 1,
        };
        assert_eq!(done, one_dummy);
        assert_eq!(
            verifications_on_this_thread().since(run_before),
            Verifications::default()
        );
        assert_eq!(verifications_for_this_thread().since(for_before), one_dummy);
    }

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

    #[test]
    fn generated_passwords_are_long_distinct_and_alphanumeric() {
        let a = generate_password().unwrap();
        let b = generate_password().unwrap();
        assert_eq!(a.expose_secret().len(), PASSWORD_LEN);
        assert!(a.expose_secret().chars().all(|c| c.is_ascii_alphanumeric()));
        assert_ne!(a.expose_secret(), b.expose_secret());
    }
}
