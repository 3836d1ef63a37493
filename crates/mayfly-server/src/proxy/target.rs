//! Where a proxied call goes and what it carries: the path below the route, decoded once into the
//! canonical form the policy decides on and encoded again for the upstream (so `%2e%2e`, `..`,
//! an encoded `/` or `//host` can neither leave the upstream's base path nor slip past a policy
//! written for the plain path), and the headers forwarded (never the caller's credentials,
//! cookies or hop-by-hop headers).

use reqwest::Url;
use reqwest::header::{HeaderMap, HeaderName};

/// The path below a route, checked: its segments decoded (never `.`, `..`, empty in the middle,
/// nor holding `/`, `\`, a control character or invalid UTF-8).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallPath {
    segments: Vec<String>,
    trailing_slash: bool,
}

/// Why a path below a route was refused (the caller's to fix: 400).
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error(
        "the path may not hold `.` or `..` segments, empty segments, encoded `/` or `\\`, `;` (matrix parameters, which some servers read as path), or control characters"
    )]
    Segment,
    #[error("the path is longer than 4096 bytes")]
    TooLong,
}

impl CallPath {
    /// `raw`: the request's path after `/v1/proxy/<route>`, as sent (percent-encoded), empty or
    /// starting with `/`.
    pub fn parse(raw: &str) -> Result<CallPath, PathError> {
        if raw.len() > 4096 {
            return Err(PathError::TooLong);
        }
        let Some(rest) = raw.strip_prefix('/') else {
            if raw.is_empty() {
                return Ok(CallPath {
                    segments: Vec::new(),
                    trailing_slash: false,
                });
            }
            return Err(PathError::Segment);
        };
        let mut segments = Vec::new();
        let pieces: Vec<&str> = rest.split('/').collect();
        let n_pieces = pieces.len();
        let mut trailing_slash = false;
        for (index, piece) in pieces.into_iter().enumerate() {
            if piece.is_empty() {
                if index + 1 == n_pieces {
                    trailing_slash = index > 0;
                    continue;
                }
                return Err(PathError::Segment);
            }
            let decoded = percent_decode(piece).ok_or(PathError::Segment)?;
            let bad = decoded == "."
                || decoded == ".."
                || decoded
                    .chars()
                    .any(|c| c == '/' || c == '\\' || c == ';' || c.is_control());
            if bad {
                return Err(PathError::Segment);
            }
            segments.push(decoded);
        }
        Ok(CallPath {
            segments,
            trailing_slash,
        })
    }

    /// The path the policy decides on: decoded, `/` first (`/v1/charges`; `/` when empty).
    pub fn canonical(&self) -> String {
        let mut path = String::from("/");
        path.push_str(&self.segments.join("/"));
        if self.trailing_slash {
            path.push('/');
        }
        path
    }

    /// The upstream URL of this path below `base` with `query`: the base's scheme, host and port
    /// and its path as a prefix, always (checked after the URL is built).
    pub fn upstream_url(&self, base: &Url, query: Option<&str>) -> Option<Url> {
        let mut url = base.clone();
        let mut path = base.path().trim_end_matches('/').to_owned();
        for segment in &self.segments {
            path.push('/');
            path.push_str(&percent_encode_segment(segment));
        }
        if self.trailing_slash || self.segments.is_empty() {
            path.push('/');
        }
        url.set_path(&path);
        url.set_query(query);
        let same_place = url.scheme() == base.scheme()
            && url.host_str() == base.host_str()
            && url.port_or_known_default() == base.port_or_known_default()
            && url.username().is_empty()
            && url.password().is_none()
            && url.path().starts_with(base.path().trim_end_matches('/'));
        same_place.then_some(url)
    }
}

fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut at = 0;
    while let Some(&byte) = bytes.get(at) {
        if byte == b'%' {
            let hex = bytes.get(at + 1..at + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            at += 3;
        } else {
            out.push(byte);
            at += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Percent-encodes all but RFC 3986's unreserved characters and the sub-delimiters, `:` and `@`
/// allowed in a path segment.
fn percent_encode_segment(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for byte in segment.bytes() {
        let keep = byte.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@".contains(&byte);
        if keep {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// The caller's query without the parameters the route injects (so the caller can neither
/// replace nor shadow them), with the injected ones added; `None` when empty.
pub fn upstream_query(raw: Option<&str>, injected: &[(String, String)]) -> Option<String> {
    if injected.is_empty() {
        return raw.filter(|q| !q.is_empty()).map(str::to_owned);
    }
    let mut query = form_urlencoded::Serializer::new(String::new());
    if let Some(raw) = raw {
        for (name, value) in form_urlencoded::parse(raw.as_bytes()) {
            if !injected.iter().any(|(injected, _)| *injected == name) {
                query.append_pair(&name, &value);
            }
        }
    }
    for (name, value) in injected {
        query.append_pair(name, value);
    }
    Some(query.finish())
}

/// Request headers never forwarded: the caller's credentials and cookies, the connection's own
/// (hop-by-hop), the body's framing (set again), the caller's network details and what the
/// proxy itself reads.
const DROPPED_REQUEST_HEADERS: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "cookie",
    "host",
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
    "accept-encoding",
    "origin",
    "referer",
    "forwarded",
    "x-real-ip",
    "x-mayfly-intent",
    // Headers some servers read as another method, path or host than the one the policy saw.
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
    "x-original-url",
    "x-rewrite-url",
    "x-original-host",
    "x-host",
];

/// The headers forwarded upstream: the caller's, less [`DROPPED_REQUEST_HEADERS`], `x-forwarded-*`,
/// those the `Connection` header names and those the route injects. `Accept-Encoding: identity`
/// asks for an answer the scrubber can read.
pub fn upstream_headers(caller: &HeaderMap, injected: &[HeaderName]) -> HeaderMap {
    let connection_named: Vec<String> = caller
        .get_all("connection")
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(|name| name.trim().to_ascii_lowercase())
        .collect();
    let mut out = HeaderMap::new();
    for (name, value) in caller {
        let lower = name.as_str();
        let dropped = DROPPED_REQUEST_HEADERS.contains(&lower)
            || lower.starts_with("x-forwarded-")
            || connection_named.iter().any(|named| named == lower)
            || injected.contains(name);
        if !dropped {
            out.append(name.clone(), value.clone());
        }
    }
    out.insert(
        reqwest::header::ACCEPT_ENCODING,
        reqwest::header::HeaderValue::from_static("identity"),
    );
    out
}

/// Answer headers never passed back: hop-by-hop, the framing (the scrubbed body may differ in
/// length), cookies of the upstream's, and its CORS headers (the route's own apply).
pub fn passed_back(name: &HeaderName) -> bool {
    let lower = name.as_str();
    !(matches!(
        lower,
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "content-length"
            | "set-cookie"
            | "proxy-authenticate"
    ) || lower.starts_with("access-control-"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn check(raw: &str, expect: Result<&str, PathError>) {
        let got = CallPath::parse(raw).map(|p| p.canonical());
        assert_eq!(got.as_deref(), expect.as_ref().copied(), "{raw}");
    }

    #[test]
    fn paths() {
        check("", Ok("/"));
        check("/", Ok("/"));
        check("/v1/charges", Ok("/v1/charges"));
        check("/v1/charges/", Ok("/v1/charges/"));
        check("/v1/%63harges", Ok("/v1/charges"));
        check("/a%20b", Ok("/a b"));
        for bad in [
            "/..",
            "/v1/../admin",
            "/%2e%2e/admin",
            "/%2E%2e",
            "/.",
            "/%2e",
            "/a%2fb",
            "/a%5cb",
            "/a\\b",
            "//evil.example",
            "/v1//x",
            "/%00",
            "/%0d%0a",
            "/%zz",
            "/%e2",
            "noslash",
        ] {
            check(bad, Err(PathError::Segment));
        }
    }

    #[test]
    fn the_upstream_host_never_changes() {
        let base = Url::parse("https://api.example/base/").unwrap();
        let url = |raw: &str, query: Option<&str>| {
            CallPath::parse(raw)
                .unwrap()
                .upstream_url(&base, query)
                .unwrap()
                .to_string()
        };
        assert_eq!(url("/v1/x", None), "https://api.example/base/v1/x");
        assert_eq!(url("", Some("a=1")), "https://api.example/base/?a=1");
        assert_eq!(
            url("/@evil.example:443/x", None),
            "https://api.example/base/@evil.example:443/x"
        );
        assert_eq!(
            url("/a%3Fb%23c", None),
            "https://api.example/base/a%3Fb%23c"
        );
        assert_eq!(url("/http:x", None), "https://api.example/base/http:x");
    }

    #[test]
    fn injected_query_parameters_cannot_be_shadowed() {
        let injected = vec![("api_key".to_owned(), "s3cret".to_owned())];
        assert_eq!(
            upstream_query(Some("q=1&api_key=mine&api_key=again"), &injected).unwrap(),
            "q=1&api_key=s3cret"
        );
        assert_eq!(upstream_query(Some("q=1"), &[]).unwrap(), "q=1");
        assert_eq!(upstream_query(None, &[]), None);
    }

    #[test]
    fn the_callers_credentials_are_not_forwarded() {
        let mut caller = HeaderMap::new();
        for (name, value) in [
            ("authorization", "Bearer mft_caller"),
            ("cookie", "session=caller"),
            ("connection", "keep-alive, x-secret-hop"),
            ("x-secret-hop", "1"),
            ("x-forwarded-for", "10.0.0.1"),
            ("x-mayfly-intent", "why"),
            ("content-type", "application/json"),
            ("x-api-key", "caller-chosen"),
            ("accept-encoding", "gzip"),
        ] {
            caller.append(
                HeaderName::from_static(name),
                reqwest::header::HeaderValue::from_static(value),
            );
        }
        let out = upstream_headers(&caller, &[HeaderName::from_static("x-api-key")]);
        let names: Vec<&str> = out.keys().map(HeaderName::as_str).collect();
        assert_eq!(names, ["content-type", "accept-encoding"]);
        assert_eq!(out["accept-encoding"], "identity");
    }
}
