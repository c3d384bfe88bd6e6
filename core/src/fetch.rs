//! Fetching an issuer's keys over HTTP(S), bounded in every dimension an issuer could abuse.
//!
//! - `https://` only, certificates checked against the system's roots (rustls with the
//!   platform verifier); plain `http://` only to loopback addresses, for tests, and only when
//!   the configured URL itself is plain loopback `http://`: a redirect or a discovery
//!   `jwks_uri` never takes an `https://` source to `http://`.
//! - One deadline for the whole operation (discovery plus JWKS, redirects included).
//! - At most [`MAX_BODY_BYTES`] read from any response; at most [`MAX_REDIRECTS`] redirects,
//!   each target held to the same URL rule.
//! - No `Authorization` header is ever sent (Kinde's JWKS endpoint answers 403 to one): a URL
//!   carrying `user:password@` is refused, configured or reached by a redirect.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::keys::parse_jwks;

/// `https://acme.kinde.com/` → `https://acme.kinde.com`.
pub fn normalize_domain(domain: &str) -> String {
    domain.trim().trim_end_matches('/').to_string()
}

/// Largest response body read, in bytes. A JWKS with ten RSA-4096 keys is under 10 KiB.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// Redirects followed per request.
pub const MAX_REDIRECTS: usize = 3;

/// Where a provider's keys are fetched from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RemoteSource {
    /// A JWKS URL.
    Jwks(String),
    /// An OIDC issuer: `jwks_uri` from `<domain>/.well-known/openid-configuration`, falling back
    /// to `<domain>/.well-known/jwks` (Kinde's path).
    Discovery(String),
}

impl RemoteSource {
    /// The cache key and the name shown in `jwks_status()`.
    pub fn label(&self) -> &str {
        match self {
            RemoteSource::Jwks(u) | RemoteSource::Discovery(u) => u,
        }
    }
}

/// Is this URL one we may fetch keys from?
pub fn url_allowed(url: &str) -> Result<(), String> {
    // `user:password@` would make the HTTP client send an Authorization header, and quoting the
    // URL in a message would print the password: refused first, without quoting.
    let authority = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = authority.split(['/', '?', '#']).next().unwrap_or("");
    if authority.contains('@') {
        return Err(
            "a key URL must not carry credentials (user:password@); keys are public".to_string(),
        );
    }
    let uri: ureq::http::Uri = url
        .parse()
        .map_err(|_| format!("{} is not a URL", quote_url(url)))?;
    let host = uri
        .host()
        .ok_or_else(|| format!("{} has no host", quote_url(url)))?;
    match uri.scheme_str() {
        Some("https") => Ok(()),
        Some("http") if is_loopback(host) => Ok(()),
        Some("http") => Err(format!(
            "plain http:// is allowed only to loopback addresses, not {}",
            crate::error::quote(host)
        )),
        _ => Err(format!("{} is not an https:// URL", quote_url(url))),
    }
}

/// A URL for a message: quoted, unless it holds an `@` anywhere (in a text that is not a URL
/// there is no telling what is a password), then described without it.
fn quote_url(url: &str) -> String {
    if url.contains('@') {
        "the URL (not shown: it contains '@')".to_string()
    } else {
        crate::error::quote(url)
    }
}

/// May a fetch that started at `origin` (the configured URL) go on to `next` (a redirect target
/// or discovery's `jwks_uri`)? `next` must pass [`url_allowed`], and an `https://` origin never
/// leads to plain `http://`: that would drop the certificate check half way.
pub fn hop_allowed(origin: &str, next: &str) -> Result<(), String> {
    url_allowed(next)?;
    let scheme = |u: &str| u.split_once("://").map(|(s, _)| s.to_ascii_lowercase());
    if scheme(origin).as_deref() != Some("http") && scheme(next).as_deref() == Some("http") {
        return Err(format!(
            "{} is plain http:// but the configured source is https://; it is not followed",
            crate::error::quote(next)
        ));
    }
    Ok(())
}

fn is_loopback(host: &str) -> bool {
    let h = host.trim_start_matches('[').trim_end_matches(']');
    if h.eq_ignore_ascii_case("localhost") {
        return true;
    }
    h.parse::<std::net::IpAddr>()
        .is_ok_and(|ip| ip.is_loopback())
}

fn agent(timeout: Duration) -> ureq::Agent {
    let tls = ureq::tls::TlsConfig::builder()
        .provider(ureq::tls::TlsProvider::Rustls)
        .root_certs(ureq::tls::RootCerts::PlatformVerifier)
        .unversioned_rustls_crypto_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .build();
    ureq::Agent::config_builder()
        .tls_config(tls)
        .timeout_global(Some(timeout))
        .max_redirects(0)
        .http_status_as_error(false)
        .user_agent("kinde_rls")
        .build()
        .new_agent()
}

/// Why a GET failed: the status when the server answered with one, for discovery's "no document
/// here" (404), which is the one failure that means "fall back".
#[derive(Debug)]
pub struct GetError {
    pub status: Option<u16>,
    pub message: String,
}

impl From<String> for GetError {
    fn from(message: String) -> Self {
        GetError {
            status: None,
            message,
        }
    }
}

/// GET `url` and return its body as text, and the server's `Date` header (seconds since the
/// epoch) when it sent a readable one, following redirects by hand so that each hop obeys
/// [`hop_allowed`] from `origin` (the configured URL). Errors are short sentences for logs and
/// `jwks_status()`.
pub fn get(url: &str, origin: &str, deadline: Instant) -> Result<(String, Option<i64>), GetError> {
    let mut url = url.to_string();
    for _ in 0..=MAX_REDIRECTS {
        hop_allowed(origin, &url)?;
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(GetError::from("timed out".to_string()));
        }
        let mut resp = agent(left).get(&url).call().map_err(|e| match e {
            ureq::Error::Timeout(_) => "timed out".to_string(),
            other => format!("request failed: {other}"),
        })?;
        let status = resp.status().as_u16();
        if (300..400).contains(&status) {
            let loc = resp
                .headers()
                .get("location")
                .and_then(|v| v.to_str().ok())
                .ok_or_else(|| format!("HTTP {status} without a Location"))?;
            url = resolve(&url, loc);
            continue;
        }
        if status != 200 {
            return Err(GetError {
                status: Some(status),
                message: format!("HTTP {status}"),
            });
        }
        let date = resp
            .headers()
            .get("date")
            .and_then(|v| v.to_str().ok())
            .and_then(crate::audit::http_date);
        return resp
            .body_mut()
            .with_config()
            .limit(MAX_BODY_BYTES as u64)
            .read_to_string()
            .map_err(|e| match e {
                ureq::Error::BodyExceedsLimit(_) => {
                    format!("the response is larger than {MAX_BODY_BYTES} bytes")
                }
                ureq::Error::Timeout(_) => "timed out".to_string(),
                other => format!("reading the response failed: {other}"),
            })
            .map(|body| (body, date))
            .map_err(GetError::from);
    }
    Err(GetError::from(format!(
        "more than {MAX_REDIRECTS} redirects"
    )))
}

/// Resolve a Location header against the URL it came from (absolute, or absolute-path).
fn resolve(base: &str, loc: &str) -> String {
    if loc.contains("://") {
        return loc.to_string();
    }
    let scheme_end = base.find("://").map(|i| i + 3).unwrap_or(0);
    let host_end = base[scheme_end..]
        .find('/')
        .map(|i| scheme_end + i)
        .unwrap_or(base.len());
    if loc.starts_with('/') {
        format!("{}{}", &base[..host_end], loc)
    } else {
        format!("{}/{}", &base[..host_end], loc)
    }
}

/// A fetched key set: the JWKS text (validated), the URL it came from, and the `Date` the
/// server answered with (seconds since the epoch), to compare clocks with.
#[derive(Debug, Clone)]
pub struct Fetched {
    pub jwks: String,
    pub url: String,
    pub server_date: Option<i64>,
}

/// Fetch a source's JWKS within `timeout`, validating it before returning.
pub fn fetch_jwks(src: &RemoteSource, timeout: Duration) -> Result<Fetched, String> {
    let deadline = Instant::now() + timeout;
    let (url, origin) = match src {
        RemoteSource::Jwks(u) => (u.clone(), u.as_str()),
        RemoteSource::Discovery(domain) => (discover(domain, deadline)?, domain.as_str()),
    };
    let (text, server_date) = get(&url, origin, deadline).map_err(|e| e.message)?;
    parse_jwks(&text, false).map_err(|e| format!("the JWKS at {url} cannot be used: {e}"))?;
    Ok(Fetched {
        jwks: text,
        url,
        server_date,
    })
}

/// OpenID Connect Discovery: `jwks_uri` from `<domain>/.well-known/openid-configuration`, whose
/// `issuer` must be the domain itself (Discovery §4.3: otherwise the document speaks for
/// someone else and its keys are not used). Only when there is no document at all (404) does
/// it fall back to Kinde's `<domain>/.well-known/jwks`; any other failure is an error.
fn discover(domain: &str, deadline: Instant) -> Result<String, String> {
    let config_url = format!("{domain}/.well-known/openid-configuration");
    let doc = match get(&config_url, domain, deadline) {
        Ok((d, _)) => d,
        Err(GetError {
            status: Some(404), ..
        }) => return Ok(format!("{domain}/.well-known/jwks")),
        Err(e) => return Err(format!("discovery ({config_url}) failed: {}", e.message)),
    };
    let doc: serde_json::Value = serde_json::from_str(&doc)
        .map_err(|_| format!("the discovery document at {config_url} is not JSON"))?;
    let issuer = doc.get("issuer").and_then(|i| i.as_str()).ok_or_else(|| {
        format!("the discovery document at {config_url} has no issuer (OpenID Connect Discovery §4.3); its keys are not used")
    })?;
    if normalize_domain(issuer) != domain {
        return Err(format!(
            "the discovery document at {config_url} names issuer {}, not {} (OpenID Connect Discovery §4.3 requires them to be equal); its keys are not used",
            crate::error::quote(issuer),
            crate::error::quote(domain)
        ));
    }
    let uri = doc
        .get("jwks_uri")
        .and_then(|u| u.as_str())
        .ok_or_else(|| format!("the discovery document at {config_url} has no jwks_uri"))?;
    hop_allowed(domain, uri).map_err(|e| format!("discovery's jwks_uri cannot be used: {e}"))?;
    Ok(uri.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpListener;

    /// A one-shot HTTP server on loopback answering each connection with the next response.
    fn serve(responses: Vec<String>) -> String {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", l.local_addr().unwrap());
        serve_on(l, responses);
        base
    }

    fn serve_on(l: TcpListener, responses: Vec<String>) {
        std::thread::spawn(move || {
            for r in responses {
                let (mut s, _) = l.accept().unwrap();
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf);
                let _ = s.write_all(r.as_bytes());
            }
        });
    }

    fn ok(body: &str) -> String {
        format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    }

    const JWKS: &str = r#"{"keys":[{"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo","kid":"a"}]}"#;

    #[test]
    fn fetches_a_jwks() {
        let base = serve(vec![ok(JWKS)]);
        let f = fetch_jwks(
            &RemoteSource::Jwks(format!("{base}/jwks")),
            Duration::from_secs(10),
        )
        .unwrap();
        assert_eq!(f.jwks, JWKS);
        assert_eq!(f.server_date, None);
        // The server's clock, to compare ours with.
        let dated = ok(JWKS).replacen(
            "Connection",
            "Date: Sun, 06 Nov 1994 08:49:37 GMT\r\nConnection",
            1,
        );
        let base = serve(vec![dated]);
        let f = fetch_jwks(
            &RemoteSource::Jwks(format!("{base}/jwks")),
            Duration::from_secs(10),
        )
        .unwrap();
        assert_eq!(f.server_date, Some(784_111_777));
    }

    #[test]
    fn discovery_then_fallback() {
        let base = serve(vec![
            "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".into(),
            ok(JWKS),
        ]);
        let f = fetch_jwks(
            &RemoteSource::Discovery(base.clone()),
            Duration::from_secs(10),
        )
        .unwrap();
        assert_eq!(f.url, format!("{base}/.well-known/jwks"));
    }

    #[test]
    fn refuses_garbage_huge_and_errors() {
        let base = serve(vec![ok("not json")]);
        assert!(
            fetch_jwks(&RemoteSource::Jwks(base), Duration::from_secs(10))
                .unwrap_err()
                .contains("cannot be used")
        );
        let huge = "x".repeat(MAX_BODY_BYTES + 10);
        let base = serve(vec![ok(&huge)]);
        assert!(
            fetch_jwks(&RemoteSource::Jwks(base), Duration::from_secs(10))
                .unwrap_err()
                .contains("larger")
        );
        let base = serve(vec![
            "HTTP/1.1 500 Oops\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".into(),
        ]);
        assert_eq!(
            fetch_jwks(&RemoteSource::Jwks(base), Duration::from_secs(10)).unwrap_err(),
            "HTTP 500"
        );
    }

    #[test]
    fn redirects_are_bounded_and_checked() {
        let base = serve(vec!["HTTP/1.1 302 Found\r\nLocation: http://example.com/jwks\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".into()]);
        assert!(
            fetch_jwks(&RemoteSource::Jwks(base), Duration::from_secs(10))
                .unwrap_err()
                .contains("loopback")
        );
    }

    #[test]
    fn hanging_server_costs_the_timeout() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        std::thread::spawn(move || {
            let (_s, _) = l.accept().unwrap();
            std::thread::sleep(Duration::from_secs(5));
        });
        let t = Instant::now();
        let e = fetch_jwks(
            &RemoteSource::Jwks(format!("http://{addr}/jwks")),
            Duration::from_millis(300),
        )
        .unwrap_err();
        assert_eq!(e, "timed out");
        assert!(t.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn url_rules() {
        assert!(url_allowed("https://acme.kinde.com/.well-known/jwks").is_ok());
        assert!(url_allowed("http://127.0.0.2:1/x").is_ok());
        assert!(url_allowed("http://192.168.1.1/x").is_err());
        assert!(url_allowed("file:///etc/passwd").is_err());
    }

    fn discovery(issuer: &str, jwks_uri: &str) -> String {
        ok(&format!(
            r#"{{"issuer":"{issuer}","jwks_uri":"{jwks_uri}"}}"#
        ))
    }

    #[test]
    fn discovery_issuer_must_be_the_domain() {
        // The listener's address is known only after binding: serve a document naming another
        // issuer, then one naming the right one.
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", l.local_addr().unwrap());
        let responses = vec![
            discovery("https://evil.example", &format!("{base}/jwks")),
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}".to_string(),
            discovery(&format!("{base}/"), &format!("{base}/jwks")),
            ok(JWKS),
        ];
        serve_on(l, responses);
        let src = RemoteSource::Discovery(base.clone());
        let e = fetch_jwks(&src, Duration::from_secs(10)).unwrap_err();
        assert!(e.contains(r#"names issuer "https://evil.example""#), "{e}");
        assert!(e.contains("keys are not used"), "{e}");
        let e = fetch_jwks(&src, Duration::from_secs(10)).unwrap_err();
        assert!(e.contains("has no issuer"), "{e}");
        // A trailing slash is the same issuer.
        let f = fetch_jwks(&src, Duration::from_secs(10)).unwrap();
        assert_eq!(f.url, format!("{base}/jwks"));
    }

    #[test]
    fn discovery_errors_other_than_404_do_not_fall_back() {
        let base = serve(vec![
            "HTTP/1.1 500 Oops\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".into(),
        ]);
        let e = fetch_jwks(&RemoteSource::Discovery(base), Duration::from_secs(10)).unwrap_err();
        assert!(
            e.starts_with("discovery (") && e.ends_with("failed: HTTP 500"),
            "{e}"
        );
    }

    #[test]
    fn https_never_leads_to_http() {
        assert!(hop_allowed("https://acme.kinde.com", "https://cdn.kinde.com/jwks").is_ok());
        let e = hop_allowed("https://acme.kinde.com", "http://127.0.0.1:8080/jwks").unwrap_err();
        assert!(e.contains("configured source is https://"), "{e}");
        assert!(hop_allowed("HTTPS://acme.kinde.com", "HTTP://localhost/jwks").is_err());
        assert!(hop_allowed("http://127.0.0.1:1", "http://localhost:2/jwks").is_ok());
        assert!(hop_allowed("http://127.0.0.1:1", "https://acme.kinde.com/jwks").is_ok());
        assert!(hop_allowed("http://127.0.0.1:1", "http://10.0.0.1/jwks").is_err());
    }

    #[test]
    fn urls_with_credentials_are_refused_without_quoting_them() {
        for url in [
            "https://user:hunter2@acme.kinde.com/jwks",
            "https://hunter2@acme.kinde.com",
            "http://u:hunter2@127.0.0.1:8080/.well-known/jwks",
            "user:hunter2@acme.kinde.com",
        ] {
            let e = url_allowed(url).unwrap_err();
            assert!(e.contains("credentials") && !e.contains("hunter2"), "{e}");
            assert!(hop_allowed("http://127.0.0.1:1", url).is_err());
        }
        // Misspelt schemes are not parsed as URLs; the message still does not show them.
        for url in [
            "https:/kinde:hunter2@acme.kinde.com/.well-known/jwks",
            "https//kinde:hunter2@acme.kinde.com/jwks",
            "ftp://x/hunter2@y",
        ] {
            let e = url_allowed(url).unwrap_err();
            assert!(!e.contains("hunter2"), "{e}");
        }
        // An @ after the authority is part of the path or query, not credentials.
        assert!(url_allowed("https://acme.kinde.com/keys@v2?x=a@b").is_ok());
    }
}
