//! The seal: the root key split into Shamir shares over GF(256) (vsss-rs), any `threshold` of
//! which rebuild it. Shamir shares carry no integrity of their own, so each text share carries a
//! 4-byte checksum bound to the broker's seal id: a typo, a truncated share or a share of another
//! broker is refused on its own. (A combination that still rebuilds a wrong key is caught by the
//! key-check value in [`crate::barrier`].)

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use secrecy::SecretString;
use zeroize::Zeroizing;

use crate::CryptoError;
use crate::barrier::RootKey;

const PREFIX: &str = "mayfly-share-1-";
const SHARE_LEN: usize = 33;
const CHECKSUM_LEN: usize = 4;

/// One share: its index (x) and value bytes. Zeroized on drop; `Debug` is redacted.
pub struct Share(Zeroizing<Vec<u8>>);

impl Share {
    /// The x coordinate; two different shares have different indexes.
    pub fn index(&self) -> u8 {
        self.0.first().copied().unwrap_or(0)
    }
}

impl std::fmt::Debug for Share {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Share({}, <redacted>)", self.index())
    }
}

fn checksum(seal_id: &[u8], share: &[u8]) -> [u8; CHECKSUM_LEN] {
    let mut input = b"mayfly-share".to_vec();
    input.extend_from_slice(seal_id);
    input.extend_from_slice(share);
    let digest = crate::sha256(&input);
    let mut out = [0u8; CHECKSUM_LEN];
    out.copy_from_slice(digest.get(..CHECKSUM_LEN).unwrap_or(&[0; CHECKSUM_LEN]));
    out
}

/// Splits the root key into `n_shares` text shares, any `threshold` of which rebuild it.
pub fn split(
    root: &RootKey,
    threshold: u8,
    n_shares: u8,
    seal_id: &[u8],
) -> Result<Vec<SecretString>, CryptoError> {
    if n_shares == 0 || n_shares > 16 {
        return Err(CryptoError::SealParameters(
            "shares must be between 1 and 16".into(),
        ));
    }
    if threshold == 0 || threshold > n_shares || (threshold == 1 && n_shares > 1) {
        return Err(CryptoError::SealParameters(
            "threshold must be at least 2 and at most the number of shares".into(),
        ));
    }
    let shares: Vec<Zeroizing<Vec<u8>>> = if n_shares == 1 {
        // One share: the key itself, with an index byte, so the format stays the same.
        let mut share = vec![1u8];
        share.extend_from_slice(root.expose_bytes());
        vec![Zeroizing::new(share)]
    } else {
        vsss_rs::Gf256::split_bytes(
            usize::from(threshold),
            usize::from(n_shares),
            root.expose_bytes(),
            rand::rng(),
        )
        .map_err(|_| CryptoError::ShareCombine)?
        .into_iter()
        .map(Zeroizing::new)
        .collect()
    };
    let mut out = Vec::with_capacity(shares.len());
    for share in shares {
        let mut bytes = Zeroizing::new(share.to_vec());
        bytes.extend_from_slice(&checksum(seal_id, &share));
        out.push(SecretString::from(format!(
            "{PREFIX}{}",
            URL_SAFE_NO_PAD.encode(bytes.as_slice())
        )));
    }
    Ok(out)
}

/// Parses one text share and checks its checksum against this broker's seal id.
pub fn parse_share(text: &str, seal_id: &[u8]) -> Result<Share, CryptoError> {
    let encoded = text
        .trim()
        .strip_prefix(PREFIX)
        .ok_or(CryptoError::ShareMalformed)?;
    // Garbage (not base64url at all) is malformed; a well-formed share that fails to decode,
    // has the wrong length or the wrong checksum was mistyped or belongs to another seal.
    if encoded.is_empty()
        || !encoded
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(CryptoError::ShareMalformed);
    }
    let bytes = Zeroizing::new(
        URL_SAFE_NO_PAD
            .decode(encoded)
            .map_err(|_| CryptoError::ShareCorrupted)?,
    );
    if bytes.len() != SHARE_LEN + CHECKSUM_LEN {
        return Err(CryptoError::ShareCorrupted);
    }
    let (share, sum) = bytes.split_at(SHARE_LEN);
    if !crate::constant_time_eq(&checksum(seal_id, share), sum) {
        return Err(CryptoError::ShareCorrupted);
    }
    if share.first() == Some(&0) {
        return Err(CryptoError::ShareCorrupted);
    }
    Ok(Share(Zeroizing::new(share.to_vec())))
}

/// Rebuilds the root key from shares. Fewer than the threshold give a *wrong* key without error:
/// the caller checks the result against the key-check value.
pub fn combine(shares: &[Share]) -> Result<RootKey, CryptoError> {
    let mut seen = Vec::new();
    for share in shares {
        if seen.contains(&share.index()) {
            return Err(CryptoError::ShareDuplicate);
        }
        seen.push(share.index());
    }
    if let [only] = shares {
        return RootKey::from_bytes(only.0.get(1..).unwrap_or_default());
    }
    let raw: Vec<Vec<u8>> = shares.iter().map(|s| s.0.to_vec()).collect();
    let raw = Zeroizing::new(raw);
    let secret = Zeroizing::new(
        vsss_rs::Gf256::combine_bytes(raw.as_slice()).map_err(|_| CryptoError::ShareCombine)?,
    );
    RootKey::from_bytes(&secret)
}

#[cfg(test)]
mod tests {
    use secrecy::ExposeSecret;

    use super::*;
    use crate::barrier::{check_root_key, key_check_value};

    fn parse_all(texts: &[SecretString], seal_id: &[u8]) -> Vec<Share> {
        texts
            .iter()
            .map(|t| parse_share(t.expose_secret(), seal_id).unwrap())
            .collect()
    }

    #[test]
    fn three_of_five() {
        let root = RootKey::generate().unwrap();
        let kcv = key_check_value(&root).unwrap();
        let seal_id = b"seal-one";
        let texts = split(&root, 3, 5, seal_id).unwrap();
        assert_eq!(texts.len(), 5);
        assert!(texts[0].expose_secret().starts_with(PREFIX));
        let shares = parse_all(&texts, seal_id);
        for picks in [[0, 1, 2], [4, 2, 0], [1, 3, 4]] {
            let chosen: Vec<Share> = picks
                .iter()
                .map(|&i| parse_share(texts[i].expose_secret(), seal_id).unwrap())
                .collect();
            let rebuilt = combine(&chosen).unwrap();
            assert_eq!(rebuilt.expose_bytes(), root.expose_bytes());
            assert!(check_root_key(&rebuilt, &kcv));
        }
        // Two are not enough: a wrong key, caught by the key-check value.
        let two = combine(&shares[..2]).unwrap();
        assert_ne!(two.expose_bytes(), root.expose_bytes());
        assert!(!check_root_key(&two, &kcv));
        let dup = vec![
            parse_share(texts[0].expose_secret(), seal_id).unwrap(),
            parse_share(texts[0].expose_secret(), seal_id).unwrap(),
            parse_share(texts[1].expose_secret(), seal_id).unwrap(),
        ];
        assert_eq!(combine(&dup).unwrap_err(), CryptoError::ShareDuplicate);
    }

    #[test]
    fn bad_shares_are_refused() {
        let root = RootKey::generate().unwrap();
        let texts = split(&root, 2, 3, b"seal-one").unwrap();
        let text = texts[0].expose_secret().to_owned();
        // Change one character in the middle.
        let mut chars: Vec<char> = text.chars().collect();
        let i = PREFIX.len() + 10;
        chars[i] = if chars[i] == 'A' { 'B' } else { 'A' };
        let typo: String = chars.into_iter().collect();
        assert_eq!(
            parse_share(&typo, b"seal-one").unwrap_err(),
            CryptoError::ShareCorrupted
        );
        assert_eq!(
            parse_share(&text, b"seal-two").unwrap_err(),
            CryptoError::ShareCorrupted
        );
        assert_eq!(
            parse_share(&text[..text.len() - 2], b"seal-one").unwrap_err(),
            CryptoError::ShareCorrupted
        );
        assert_eq!(
            parse_share("hello", b"seal-one").unwrap_err(),
            CryptoError::ShareMalformed
        );
        assert_eq!(
            parse_share("mayfly-share-1-!!!", b"seal-one").unwrap_err(),
            CryptoError::ShareMalformed
        );
        assert_eq!(
            parse_share("mayfly-share-1-", b"seal-one").unwrap_err(),
            CryptoError::ShareMalformed
        );
        // Surrounding whitespace (copy and paste) is fine.
        let padded = format!("  {text}\n");
        assert!(parse_share(&padded, b"seal-one").is_ok());
        assert!(format!("{:?}", parse_share(&text, b"seal-one").unwrap()).contains("redacted"));
    }

    #[test]
    fn one_share_and_bad_parameters() {
        let root = RootKey::generate().unwrap();
        let texts = split(&root, 1, 1, b"s").unwrap();
        let rebuilt = combine(&parse_all(&texts, b"s")).unwrap();
        assert_eq!(rebuilt.expose_bytes(), root.expose_bytes());
        assert!(split(&root, 1, 3, b"s").is_err());
        assert!(split(&root, 4, 3, b"s").is_err());
        assert!(split(&root, 2, 17, b"s").is_err());
    }
}
