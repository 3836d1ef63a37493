//! The `mysql_native_password` hash (`*` + upper-case hex of SHA1(SHA1(password))), as MariaDB
//! stores it in `mysql.user`.
//!
//! The broker sends this hash, not the password, in `CREATE USER … IDENTIFIED BY PASSWORD '…'`, so
//! the clear password never reaches the server's general log or processlist. The hash is unsalted
//! and fast: it is only ever used for passwords the broker generated (≥ 128 random bits), for which
//! no guessing is feasible whatever the hash.

use std::fmt::Write as _;

use aws_lc_rs::digest;
use secrecy::{ExposeSecret, SecretString};
use zeroize::Zeroize;

/// `*` and 40 upper-case hex digits.
pub fn native_password_hash(password: &SecretString) -> SecretString {
    let inner = digest::digest(
        &digest::SHA1_FOR_LEGACY_USE_ONLY,
        password.expose_secret().as_bytes(),
    );
    let mut first = inner.as_ref().to_vec();
    let outer = digest::digest(&digest::SHA1_FOR_LEGACY_USE_ONLY, &first);
    first.zeroize();
    let mut text = String::with_capacity(41);
    text.push('*');
    for byte in outer.as_ref() {
        let _ = write!(text, "{byte:02X}");
    }
    SecretString::from(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_servers_password_function() {
        // MariaDB: SELECT PASSWORD('password');
        assert_eq!(
            native_password_hash(&SecretString::from("password")).expose_secret(),
            "*2470C0C06DEE42FD1618BB99005ADCA2EC9D1E19"
        );
    }
}
