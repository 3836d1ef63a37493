//! Opaque tokens: session tokens (256 random bits, only their SHA-256 is stored) and the one-time
//! setup code for the first admin.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use secrecy::SecretString;

use crate::CryptoError;

pub const SESSION_TOKEN_PREFIX: &str = "mft_";

/// A new session token and the hash the store keeps.
pub fn new_session_token() -> Result<(SecretString, [u8; 32]), CryptoError> {
    let bytes: [u8; 32] = crate::random_bytes()?;
    let token = format!("{SESSION_TOKEN_PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes));
    let hash = hash_token(&token);
    Ok((SecretString::from(token), hash))
}

pub fn hash_token(token: &str) -> [u8; 32] {
    crate::sha256(token.as_bytes())
}

/// A setup code: 128 random bits as 8 groups of 4 letters from an unambiguous alphabet.
pub fn new_setup_code() -> Result<(SecretString, [u8; 32]), CryptoError> {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    let bytes: [u8; 20] = crate::random_bytes()?;
    let mut code = String::new();
    // 32 letters of 5 bits each = 160 bits, from 20 random bytes.
    let mut buffer: u32 = 0;
    let mut n_bits = 0;
    let mut n_letters = 0;
    for byte in bytes {
        buffer = (buffer << 8) | u32::from(byte);
        n_bits += 8;
        while n_bits >= 5 {
            n_bits -= 5;
            if n_letters > 0 && n_letters % 4 == 0 {
                code.push('-');
            }
            let index = ((buffer >> n_bits) & 0x1f) as usize;
            code.push(char::from(ALPHABET.get(index).copied().unwrap_or(b'A')));
            n_letters += 1;
        }
        buffer &= (1 << n_bits) - 1;
    }
    let hash = hash_setup_code(&code);
    Ok((SecretString::from(code), hash))
}

/// Hash of a setup code, ignoring case, dashes and spaces.
pub fn hash_setup_code(code: &str) -> [u8; 32] {
    let normalized: String = code
        .chars()
        .filter(|c| !matches!(c, '-' | ' '))
        .map(|c| c.to_ascii_uppercase())
        .collect();
    crate::sha256(normalized.as_bytes())
}

#[cfg(test)]
mod tests {
    use secrecy::ExposeSecret;

    use super::*;

    #[test]
    fn tokens() {
        let (token, hash) = new_session_token().unwrap();
        let text = token.expose_secret();
        assert!(text.starts_with("mft_"));
        assert_eq!(URL_SAFE_NO_PAD.decode(&text[4..]).unwrap().len(), 32);
        assert_eq!(hash_token(text), hash);
        let (other, _) = new_session_token().unwrap();
        assert_ne!(other.expose_secret(), text);
        assert!(!format!("{token:?}").contains(text));
    }

    #[test]
    fn setup_codes() {
        let (code, hash) = new_setup_code().unwrap();
        let text = code.expose_secret();
        assert_eq!(text.len(), 32 + 7);
        assert_eq!(
            hash_setup_code(&text.to_lowercase().replace('-', " ")),
            hash
        );
        assert_ne!(hash_setup_code("AAAA"), hash);
    }
}
