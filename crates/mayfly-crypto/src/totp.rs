//! TOTP (RFC 6238 over RFC 4226): HMAC-SHA1, 6 digits, 30-second steps, ±1 step of skew. A code is
//! accepted only for a step after the last one accepted (RFC 6238 §5.2), so it cannot be replayed.

use secrecy::SecretString;
use zeroize::Zeroizing;

use crate::CryptoError;

const STEP_SECONDS: u64 = 30;
const DIGITS: u32 = 6;

/// A TOTP seed (20 random bytes). Zeroized on drop; `Debug` is redacted.
pub struct TotpSecret(Zeroizing<Vec<u8>>);

impl std::fmt::Debug for TotpSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TotpSecret(<redacted>)")
    }
}

impl TotpSecret {
    pub fn generate() -> Result<TotpSecret, CryptoError> {
        let bytes: [u8; 20] = crate::random_bytes()?;
        Ok(TotpSecret(Zeroizing::new(bytes.to_vec())))
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<TotpSecret, CryptoError> {
        if bytes.len() < 16 || bytes.len() > 64 {
            return Err(CryptoError::BadKey);
        }
        Ok(TotpSecret(Zeroizing::new(bytes.to_vec())))
    }

    pub fn expose_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The seed in base32 (RFC 4648, no padding), as authenticator apps take it.
    pub fn base32(&self) -> SecretString {
        SecretString::from(base32(&self.0))
    }

    pub fn otpauth_url(&self, account: &str, issuer: &str) -> Result<SecretString, CryptoError> {
        let label = format!("{}:{}", percent(issuer), percent(account));
        Ok(SecretString::from(format!(
            "otpauth://totp/{label}?secret={}&issuer={}&algorithm=SHA1&digits={DIGITS}&period={STEP_SECONDS}",
            base32(&self.0),
            percent(issuer)
        )))
    }

    /// The code for the step that contains `unix_secs`.
    pub fn code_at(&self, unix_secs: u64) -> String {
        self.code_for_step(unix_secs / STEP_SECONDS)
    }

    fn code_for_step(&self, step: u64) -> String {
        let key =
            aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, &self.0);
        let tag = aws_lc_rs::hmac::sign(&key, &step.to_be_bytes());
        let mac = tag.as_ref();
        let offset = usize::from(mac.last().copied().unwrap_or(0) & 0x0f);
        let mut word = [0u8; 4];
        if let Some(bytes) = mac.get(offset..offset + 4) {
            word.copy_from_slice(bytes);
        }
        let value = u32::from_be_bytes(word) & 0x7fff_ffff;
        format!("{:06}", value % 10u32.pow(DIGITS))
    }

    /// Checks `code` against steps now-1, now and now+1 (constant-time compare) and accepts it
    /// only for a step after `last_step`. Returns the matched step.
    pub fn check(&self, code: &str, unix_secs: u64, last_step: Option<u64>) -> Option<u64> {
        let now = unix_secs / STEP_SECONDS;
        let mut matched = None;
        for step in [now.saturating_sub(1), now, now + 1] {
            let expected = self.code_for_step(step);
            if crate::constant_time_eq(expected.as_bytes(), code.as_bytes()) && matched.is_none() {
                matched = Some(step);
            }
        }
        let step = matched?;
        match last_step {
            Some(last) if step <= last => None,
            _ => Some(step),
        }
    }
}

fn base32(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut out = String::with_capacity(bytes.len().div_ceil(5) * 8);
    let mut buffer: u32 = 0;
    let mut n_bits = 0;
    for byte in bytes {
        buffer = (buffer << 8) | u32::from(*byte);
        n_bits += 8;
        while n_bits >= 5 {
            n_bits -= 5;
            let index = ((buffer >> n_bits) & 0x1f) as usize;
            out.push(char::from(ALPHABET.get(index).copied().unwrap_or(b'A')));
        }
        buffer &= (1 << n_bits) - 1;
    }
    if n_bits > 0 {
        let index = ((buffer << (5 - n_bits)) & 0x1f) as usize;
        out.push(char::from(ALPHABET.get(index).copied().unwrap_or(b'A')));
    }
    out
}

fn percent(text: &str) -> String {
    let mut out = String::new();
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use secrecy::ExposeSecret;

    use super::*;

    #[test]
    fn rfc6238_vectors() {
        // RFC 6238 Appendix B, SHA-1 seed "12345678901234567890" (8-digit codes; we keep 6).
        let secret = TotpSecret::from_bytes(b"12345678901234567890").unwrap();
        assert_eq!(secret.code_at(59), "287082");
        assert_eq!(secret.code_at(1111111109), "081804");
        assert_eq!(secret.code_at(1234567890), "005924");
        assert_eq!(secret.code_at(2000000000), "279037");
        assert_eq!(
            secret.base32().expose_secret(),
            "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ"
        );
    }

    #[test]
    fn skew_and_replay() {
        let secret = TotpSecret::generate().unwrap();
        let now = 1_800_000_015;
        let code = secret.code_at(now);
        let step = now / 30;
        assert_eq!(secret.check(&code, now, None), Some(step));
        assert_eq!(
            secret.check(&code, now + 30, None),
            Some(step),
            "one step late is fine"
        );
        assert_eq!(
            secret.check(&code, now - 30, None),
            Some(step),
            "one step early is fine"
        );
        assert_eq!(
            secret.check(&code, now + 60, None),
            None,
            "two steps late is refused"
        );
        assert_eq!(
            secret.check(&code, now - 60, None),
            None,
            "two steps early is refused"
        );
        assert_eq!(
            secret.check(&code, now, Some(step)),
            None,
            "a used step is refused"
        );
        assert_eq!(secret.check(&code, now, Some(step - 1)), Some(step));
        assert_eq!(secret.check("000000x", now, None), None);
        let url = secret.otpauth_url("alice", "Mayfly").unwrap();
        assert!(
            url.expose_secret()
                .starts_with("otpauth://totp/Mayfly:alice?secret=")
        );
        assert_eq!(format!("{secret:?}"), "TotpSecret(<redacted>)");
        assert!(TotpSecret::from_bytes(&[1; 10]).is_err());
    }
}
