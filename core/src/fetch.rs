//! Fetching an issuer's keys over HTTP(S), bounded in every dimension an issuer could abuse.
//!
//! - `https://` only, certificates checked against the system's roots (rustls with the
//!   platform verifier); plain `http://` only to loopback addresses, for tests.
//! - One deadline for the whole operation (discovery plus JWKS, redirects included).
//! - At most [`MAX_BODY_BYTES`] read from any response; at most [`MAX_REDIRECTS`] redirects,
//!   each target held to the same URL rule.
//! - No `Authorization` header is ever sent (Kinde's JWKS endpoint answers 403 to one).

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::RemoteSource;
use crate::keys::parse_jwks;

/// Largest response body read, in bytes. A JWKS with ten RSA-4096 keys is under 10 KiB.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// Redirects followed per request.
pub const MAX_REDIRECTS: usize = 3;

/// Is this URL one we may fetch keys from?
pub fn url_allowed(url: &str) -> Result<(), String> {
    let uri: ureq::http::Uri = url
        .parse()
        .map_err(|_| format!("{} is not a URL", crate::error::quote(url)))?;
    let host = uri
        .host()
        .ok_or_else(|| format!("{} has no host", crate::error::quote(url)))?;
    match uri.scheme_str() {
        Some("https") => Ok(()),
        Some("http") if is_loopback(host) => Ok(()),
        Some("http") => Err(format!(
            "plain http:// is allowed only to loopback addresses, not {}",
            crate::error::quote(host)
        )),
        _ => Err(format!(
            "{} is not an https:// URL",
            crate::error::quote(url)
        )),
    }
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

/// GET `url` and return its body as text, following redirects by hand so that each hop obeys
/// [`url_allowed`]. Errors are short sentences for logs and `jwks_status()`.
pub fn get(url: &str, deadline: Instant) -> Result<String, String> {
    let mut url = url.to_string();
    for _ in 0..=MAX_REDIRECTS {
        url_allowed(&url)?;
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err("timed out".into());
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
            return Err(format!("HTTP {status}"));
        }
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
            });
    }
    Err(format!("more than {MAX_REDIRECTS} redirects"))
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

/// A fetched key set: the JWKS text (validated) and the URL it came from.
#[derive(Debug, Clone)]
pub struct Fetched {
    pub jwks: String,
    pub url: String,
}

/// Fetch a source's JWKS within `timeout`, validating it before returning.
pub fn fetch_jwks(src: &RemoteSource, timeout: Duration) -> Result<Fetched, String> {
    let deadline = Instant::now() + timeout;
    let url = match src {
        RemoteSource::Jwks(u) => u.clone(),
        RemoteSource::Discovery(domain) => discover(domain, deadline)?,
    };
    let text = get(&url, deadline)?;
    parse_jwks(&text, false).map_err(|e| format!("the JWKS at {url} cannot be used: {e}"))?;
    Ok(Fetched { jwks: text, url })
}

/// OIDC discovery: `jwks_uri` from the issuer's configuration, else Kinde's `/.well-known/jwks`.
fn discover(domain: &str, deadline: Instant) -> Result<String, String> {
    let fallback = format!("{domain}/.well-known/jwks");
    let doc = match get(
        &format!("{domain}/.well-known/openid-configuration"),
        deadline,
    ) {
        Ok(d) => d,
        Err(e) if e == "timed out" => return Err(e),
        Err(_) => return Ok(fallback),
    };
    let uri = serde_json::from_str::<serde_json::Value>(&doc)
        .ok()
        .and_then(|v| v.get("jwks_uri").and_then(|u| u.as_str()).map(String::from));
    match uri {
        Some(u) => {
            url_allowed(&u).map_err(|e| format!("discovery's jwks_uri cannot be used: {e}"))?;
            Ok(u)
        }
        None => Ok(fallback),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpListener;

    /// A one-shot HTTP server on loopback answering each connection with the next response.
    fn serve(responses: Vec<String>) -> String {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        std::thread::spawn(move || {
            for r in responses {
                let (mut s, _) = l.accept().unwrap();
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf);
                let _ = s.write_all(r.as_bytes());
            }
        });
        format!("http://{addr}")
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
            Duration::from_secs(2),
        )
        .unwrap();
        assert_eq!(f.jwks, JWKS);
    }

    #[test]
    fn discovery_then_fallback() {
        let base = serve(vec![
            "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".into(),
            ok(JWKS),
        ]);
        let f = fetch_jwks(
            &RemoteSource::Discovery(base.clone()),
            Duration::from_secs(2),
        )
        .unwrap();
        assert_eq!(f.url, format!("{base}/.well-known/jwks"));
    }

    #[test]
    fn refuses_garbage_huge_and_errors() {
        let base = serve(vec![ok("not json")]);
        assert!(
            fetch_jwks(&RemoteSource::Jwks(base), Duration::from_secs(2))
                .unwrap_err()
                .contains("cannot be used")
        );
        let huge = "x".repeat(MAX_BODY_BYTES + 10);
        let base = serve(vec![ok(&huge)]);
        assert!(
            fetch_jwks(&RemoteSource::Jwks(base), Duration::from_secs(2))
                .unwrap_err()
                .contains("larger")
        );
        let base = serve(vec![
            "HTTP/1.1 500 Oops\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".into(),
        ]);
        assert_eq!(
            fetch_jwks(&RemoteSource::Jwks(base), Duration::from_secs(2)).unwrap_err(),
            "HTTP 500"
        );
    }

    #[test]
    fn redirects_are_bounded_and_checked() {
        let base = serve(vec!["HTTP/1.1 302 Found\r\nLocation: http://example.com/jwks\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".into()]);
        assert!(
            fetch_jwks(&RemoteSource::Jwks(base), Duration::from_secs(2))
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
        assert!(t.elapsed() < Duration::from_secs(2));
    }

    #[test]
    fn url_rules() {
        assert!(url_allowed("https://acme.kinde.com/.well-known/jwks").is_ok());
        assert!(url_allowed("http://127.0.0.2:1/x").is_ok());
        assert!(url_allowed("http://192.168.1.1/x").is_err());
        assert!(url_allowed("file:///etc/passwd").is_err());
    }
}
