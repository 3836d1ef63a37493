//! The one rule for URLs the broker itself calls (JWKS, OpenID discovery documents, proxy
//! upstreams). A leaf: it imports nothing of the broker's, so `auth` and `proxy` share it without
//! importing each other.

use std::net::IpAddr;

/// Why a URL is not one the broker calls out to (a JWKS, a discovery document, a proxy
/// upstream), if it is not: `https://` to any host, or plain
/// `http://` to a loopback address or `localhost`, without a user name or password. The host is
/// the parsed one, so neither `http://127.0.0.1.nip.io` nor `http://127.0.0.1@evil.example`
/// passes for loopback.
pub(crate) fn outbound_url_problem(text: &str) -> Option<&'static str> {
    let Ok(url) = reqwest::Url::parse(text) else {
        return Some("not a URL");
    };
    if !url.username().is_empty() || url.password().is_some() {
        return Some("must not carry a user name or password");
    }
    // The parser has already turned every spelling of an IP address into its plain form
    // (`http://2130706433/` is `127.0.0.1`) and bracketed IPv6.
    let loopback = match url.host_str() {
        Some("localhost") => true,
        Some(host) => host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
            .is_ok_and(|ip| ip.is_loopback()),
        None => false,
    };
    match url.scheme() {
        "https" if url.host_str().is_some() => None,
        "http" if loopback => None,
        _ => Some("must be https (plain http only on a loopback address or localhost)"),
    }
}
