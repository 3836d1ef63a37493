//! Scrubbing the injected credentials out of an upstream's answer, chunk by chunk. An upstream
//! that echoes what it received (a debugging endpoint, an error message quoting the request)
//! would otherwise hand the secret to the caller. Each pattern (a secret, the header value made
//! from it, and their encoded forms: see [`forms`]) is replaced by [`REDACTED`] wherever it appears,
//! also across chunk boundaries: the last `longest - 1` bytes that could still begin a match are
//! held back until the next chunk (or the end) decides.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use zeroize::Zeroizing;

/// What replaces a credential in an answer.
pub const REDACTED: &[u8] = b"[REDACTED]";

/// The forms in which an upstream may echo `value`: as is; percent-encoded (a query or form);
/// JSON-escaped as `serde_json` writes a string, also with `/` as `\/` (PHP, some Java) and with
/// every non-ASCII character as `\uXXXX` (Python's `json.dumps`); and standard base64.
pub fn forms(value: &str) -> Vec<Zeroizing<Vec<u8>>> {
    let mut forms = vec![
        Zeroizing::new(value.as_bytes().to_vec()),
        Zeroizing::new(
            form_urlencoded::byte_serialize(value.as_bytes())
                .collect::<String>()
                .into_bytes(),
        ),
        Zeroizing::new(STANDARD.encode(value.as_bytes()).into_bytes()),
    ];
    let quoted = Zeroizing::new(serde_json::Value::from(value).to_string());
    let escaped = quoted
        .strip_prefix('"')
        .and_then(|q| q.strip_suffix('"'))
        .unwrap_or(&quoted);
    forms.push(Zeroizing::new(escaped.as_bytes().to_vec()));
    forms.push(Zeroizing::new(escaped.replace('/', "\\/").into_bytes()));
    let mut ascii = Zeroizing::new(String::with_capacity(escaped.len()));
    for c in escaped.chars() {
        if c.is_ascii() {
            ascii.push(c);
        } else {
            let mut units = [0u16; 2];
            for unit in c.encode_utf16(&mut units) {
                ascii.push_str(&format!("\\u{unit:04x}"));
            }
        }
    }
    forms.push(Zeroizing::new(ascii.as_bytes().to_vec()));
    forms
}

/// The patterns to replace and the bytes held back between chunks. Both are secrets: zeroized
/// when dropped, never printed.
pub struct Scrubber {
    /// Longest first, so that a longer pattern wins over one it contains.
    patterns: Vec<Zeroizing<Vec<u8>>>,
    /// Which bytes begin some pattern, to skip the others quickly.
    first_bytes: [bool; 256],
    longest: usize,
    held: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for Scrubber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Scrubber({} patterns)", self.patterns.len())
    }
}

impl Scrubber {
    /// A scrubber for these patterns (empty ones are ignored; duplicates are fine).
    pub fn new(patterns: impl IntoIterator<Item = Zeroizing<Vec<u8>>>) -> Scrubber {
        let mut patterns: Vec<Zeroizing<Vec<u8>>> =
            patterns.into_iter().filter(|p| !p.is_empty()).collect();
        patterns.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        patterns.dedup();
        let mut first_bytes = [false; 256];
        for pattern in &patterns {
            if let Some(&first) = pattern.first()
                && let Some(slot) = first_bytes.get_mut(usize::from(first))
            {
                *slot = true;
            }
        }
        let longest = patterns.first().map_or(0, |p| p.len());
        Scrubber {
            patterns,
            first_bytes,
            longest,
            held: Zeroizing::new(Vec::new()),
        }
    }

    /// Replaces the patterns in a whole value (a header), with nothing held back.
    pub fn scrub_all(&self, value: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(value.len());
        self.scan(value, true, &mut out);
        out
    }

    /// The next chunk of an answer: what can be passed on now. Bytes that may begin a pattern
    /// the next chunk completes are kept for it.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<u8> {
        if self.patterns.is_empty() {
            return chunk.to_vec();
        }
        let mut buffer = Zeroizing::new(std::mem::take(&mut *self.held));
        buffer.extend_from_slice(chunk);
        let mut out = Vec::with_capacity(buffer.len());
        let consumed = self.scan(&buffer, false, &mut out);
        self.held = Zeroizing::new(buffer.get(consumed..).unwrap_or_default().to_vec());
        out
    }

    /// The end of the answer: what was held back, scrubbed.
    pub fn finish(&mut self) -> Vec<u8> {
        let held = std::mem::take(&mut *self.held);
        let held = Zeroizing::new(held);
        let mut out = Vec::with_capacity(held.len());
        self.scan(&held, true, &mut out);
        out
    }

    /// Copies `input` to `out` with every pattern replaced; unless `last`, stops at the first
    /// position where a pattern might begin but the input ends too soon to tell. Returns how
    /// many bytes of `input` were consumed.
    fn scan(&self, input: &[u8], last: bool, out: &mut Vec<u8>) -> usize {
        let mut at = 0;
        let mut copied_to = 0;
        while at < input.len() {
            let Some(&byte) = input.get(at) else { break };
            if !self
                .first_bytes
                .get(usize::from(byte))
                .copied()
                .unwrap_or(false)
            {
                at += 1;
                continue;
            }
            let rest = input.get(at..).unwrap_or_default();
            if let Some(pattern) = self.patterns.iter().find(|p| rest.starts_with(p)) {
                out.extend_from_slice(input.get(copied_to..at).unwrap_or_default());
                out.extend_from_slice(REDACTED);
                at += pattern.len();
                copied_to = at;
                continue;
            }
            if !last
                && rest.len() < self.longest
                && self.patterns.iter().any(|p| p.starts_with(rest))
            {
                out.extend_from_slice(input.get(copied_to..at).unwrap_or_default());
                return at;
            }
            at += 1;
        }
        out.extend_from_slice(input.get(copied_to..).unwrap_or_default());
        input.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scrubber(patterns: &[&str]) -> Scrubber {
        Scrubber::new(
            patterns
                .iter()
                .map(|p| Zeroizing::new(p.as_bytes().to_vec())),
        )
    }

    /// Feeds `text` in chunks cut at every `cuts` and returns the whole output.
    fn run(patterns: &[&str], chunks: &[&str]) -> String {
        let mut scrubber = scrubber(patterns);
        let mut out = Vec::new();
        for chunk in chunks {
            out.extend(scrubber.push(chunk.as_bytes()));
        }
        out.extend(scrubber.finish());
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn whole_values() {
        let s = scrubber(&["sk_live_123", "Bearer sk_live_123"]);
        assert_eq!(
            s.scrub_all(b"auth: Bearer sk_live_123; again sk_live_123!"),
            b"auth: [REDACTED]; again [REDACTED]!".to_vec()
        );
        assert_eq!(s.scrub_all(b"nothing here"), b"nothing here".to_vec());
        assert_eq!(s.scrub_all(b"sk_live_12"), b"sk_live_12".to_vec());
    }

    #[test]
    fn a_secret_split_across_chunks_is_caught_at_every_cut() {
        let secret = "sk_live_0123456789";
        let text = format!("{{\"echo\":\"Bearer {secret}\",\"x\":\"{secret}{secret}\"}}");
        let expect = "{\"echo\":\"Bearer [REDACTED]\",\"x\":\"[REDACTED][REDACTED]\"}";
        for cut in 0..=text.len() {
            let (a, b) = text.split_at(cut);
            assert_eq!(run(&[secret], &[a, b]), expect, "cut at {cut}");
        }
        // One byte at a time.
        let bytes: Vec<String> = text.chars().map(String::from).collect();
        let chunks: Vec<&str> = bytes.iter().map(String::as_str).collect();
        assert_eq!(run(&[secret], &chunks), expect);
        // Three pieces.
        for i in 0..text.len() {
            for j in i..text.len() {
                let chunks = [&text[..i], &text[i..j], &text[j..]];
                assert!(!run(&[secret, "Bearer sk"], &chunks).contains("sk_live"));
            }
        }
    }

    #[test]
    fn near_misses_and_the_end_pass_through() {
        assert_eq!(run(&["secret"], &["a secre", "t!"]), "a [REDACTED]!");
        assert_eq!(run(&["secret"], &["a secre"]), "a secre");
        assert_eq!(
            run(&["secret"], &["ssssecre", "tsecret"]),
            "sss[REDACTED][REDACTED]"
        );
        assert_eq!(run(&[], &["any", "thing"]), "anything");
        assert_eq!(run(&["aa"], &["aaa"]), "[REDACTED]a");
    }

    #[test]
    fn encoded_forms_of_a_secret_are_scrubbed() {
        let secret = "sk/\"live\\é-0123";
        let s = Scrubber::new(forms(secret));
        let json = serde_json::json!({ "echo": secret }).to_string();
        assert_eq!(
            s.scrub_all(json.as_bytes()),
            br#"{"echo":"[REDACTED]"}"#.to_vec()
        );
        let slashed = json.replace('/', "\\/");
        assert_eq!(
            s.scrub_all(slashed.as_bytes()),
            br#"{"echo":"[REDACTED]"}"#.to_vec()
        );
        let ascii = r#"{"echo":"sk/\"live\\\u00e9-0123"}"#;
        assert_eq!(
            s.scrub_all(ascii.as_bytes()),
            br#"{"echo":"[REDACTED]"}"#.to_vec()
        );
        let b64 = format!("token={}", STANDARD.encode(secret));
        assert_eq!(s.scrub_all(b64.as_bytes()), b"token=[REDACTED]".to_vec());
        let query = format!(
            "k={}",
            form_urlencoded::byte_serialize(secret.as_bytes()).collect::<String>()
        );
        assert_eq!(s.scrub_all(query.as_bytes()), b"k=[REDACTED]".to_vec());
        assert_eq!(s.scrub_all(secret.as_bytes()), b"[REDACTED]".to_vec());
    }

    #[test]
    fn debug_never_shows_a_pattern() {
        let mut s = scrubber(&["hunter2-secret"]);
        s.push(b"xx hunter2-sec");
        assert!(!format!("{s:?}").contains("hunter2"));
    }
}
