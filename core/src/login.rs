//! Signing in to PostgreSQL 18 with a token (`oauth` in `pg_hba.conf`): what a login asks of a
//! token beyond what [`crate::verify_configured`] already checked. The `pg_hba.conf` line names
//! the issuer the client was sent to (`issuer=`) and the scopes it asked for (`scope=`); a token
//! that verifies under the configured providers must also come from exactly that issuer and
//! carry every one of those scopes.

use crate::error::{misleading, quote, Check, Refusal};
use crate::{Config, Verified};
use serde_json::{Map, Value};

/// The scopes a token grants: those of `scp` (an array of strings, as Kinde writes it, or a
/// space-separated string) and of `scope` (a space-separated string, RFC 9068 §2.2.3; Kinde's
/// device flow says its granted scopes are carried there). A claim of another shape grants
/// nothing.
pub fn granted_scopes(claims: &Map<String, Value>) -> Vec<&str> {
    fn words(v: &Value) -> Vec<&str> {
        match v {
            Value::String(s) => s.split(' ').filter(|w| !w.is_empty()).collect(),
            Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        }
    }
    ["scp", "scope"]
        .iter()
        .filter_map(|c| claims.get(*c))
        .flat_map(words)
        .collect()
}

/// The checks of a login: `iss` equals the `pg_hba.conf` line's `issuer` byte for byte (libpq
/// compares the issuer's discovery document the same way), and every scope of the line's
/// `scope` (space-separated; none when empty) is granted by the token. Then the `sub`, which
/// becomes the connection's authenticated identity (`SYSTEM_USER` is `oauth:<sub>`).
pub fn check_login<'c>(
    claims: &'c Map<String, Value>,
    hba_issuer: &str,
    hba_scope: Option<&str>,
) -> Result<&'c str, Refusal> {
    match claims.get("iss") {
        Some(Value::String(iss)) if iss == hba_issuer => {}
        Some(Value::String(iss)) => {
            return Err(Refusal::new(
                Check::Iss,
                format!(
                    "iss {} is not the issuer {} of the pg_hba.conf line",
                    quote(iss),
                    quote(hba_issuer)
                ),
            ))
        }
        _ => {
            return Err(Refusal::new(
                Check::Iss,
                format!(
                    "the token names no issuer; the pg_hba.conf line requires {}",
                    quote(hba_issuer)
                ),
            ))
        }
    }
    let granted = granted_scopes(claims);
    let missing: Vec<&str> = hba_scope
        .unwrap_or("")
        .split(' ')
        .filter(|w| !w.is_empty() && !granted.contains(w))
        .collect();
    if !missing.is_empty() {
        let names: Vec<String> = missing.iter().map(|m| quote(m)).collect();
        return Err(Refusal::new(
            Check::Scope,
            format!(
                "the token does not grant the scope {} that the pg_hba.conf line requires",
                names.join(", ")
            ),
        ));
    }
    match crate::claims::subject(claims) {
        Some(sub) if !sub.contains('\0') => Ok(sub),
        _ => Err(Refusal::new(
            Check::Sub,
            "a login needs a sub claim: it becomes the authenticated identity",
        )),
    }
}

/// What a login asks of how its token was verified, beyond the claims: by a provider pinned to
/// the `pg_hba.conf` line's issuer (a provider that accepts any `iss` — keys without
/// `kinde_rls.issuer` — would let whoever holds its keys sign in as any user of that issuer),
/// and with a signature only the issuer makes: an HMAC secret (HS256, Kinde's Supabase guide) is
/// shared with the applications that verify with it, and any of them could mint a login.
pub fn check_signer(config: &Config, verified: &Verified, hba_issuer: &str) -> Result<(), Refusal> {
    let provider = crate::pipeline::pick_provider(config, &verified.registered)?;
    if !provider.policy.issuers.iter().any(|i| i == hba_issuer) {
        return Err(Refusal::new(
            Check::Iss,
            format!(
                "the keys that verified the token accept any issuer; a login needs keys pinned to the issuer {} of the pg_hba.conf line (kinde_rls.issuer or kinde_rls.domain, or the provider's \"issuer\")",
                quote(hba_issuer)
            ),
        ));
    }
    match verified.header.get("alg").and_then(Value::as_str) {
        Some(alg) if alg.starts_with("HS") => Err(Refusal::new(
            Check::Algorithm,
            format!(
                "a login needs the issuer's own signature; {} is made with a secret shared with applications",
                quote(alg)
            ),
        )),
        _ => Ok(()),
    }
}

/// The separator of the claims in an authenticated identity made of several.
pub const AUTHN_SEPARATOR: char = '/';

/// The claims `kinde_rls.login_authn_id` names (comma-separated, in order), checked at set time:
/// at least one, each a plain claim name.
pub fn parse_authn_claims(setting: &str) -> Result<Vec<String>, String> {
    let names: Vec<String> = setting.split(',').map(|n| n.trim().to_owned()).collect();
    for n in &names {
        if n.is_empty()
            || !n
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_-.:".contains(c))
        {
            return Err(format!(
                "{} is not a claim name: list claim names separated by commas, such as \"org_code, sub\"",
                quote(n)
            ));
        }
    }
    Ok(names)
}

/// The connection's authenticated identity (`SYSTEM_USER` is `oauth:` and this, and it is what
/// `pg_ident.conf` maps): the named claims' values joined by `/`. Each must be a non-empty
/// string without `/`, control characters or characters that reorder or break a log line
/// (PostgreSQL logs the identity as it is), so that no value can pass for another claim's
/// (`org_a/kp_1` is organisation `org_a`, user `kp_1`, and nothing else).
pub fn authn_id(claims: &Map<String, Value>, names: &[String]) -> Result<String, Refusal> {
    let mut parts = Vec::with_capacity(names.len());
    for n in names {
        match claims.get(n.as_str()) {
            Some(Value::String(v))
                if !v.is_empty()
                    && !v.contains(AUTHN_SEPARATOR)
                    && !v.chars().any(|c| c.is_control() || misleading(c)) =>
            {
                parts.push(v.as_str())
            }
            _ => {
                return Err(Refusal::new(
                    Check::Sub,
                    format!(
                        "claim {} makes the login's identity (kinde_rls.login_authn_id) and is missing, empty, not a string, or holds \"{}\", a control character or a bidirectional control",
                        quote(n),
                        AUTHN_SEPARATOR
                    ),
                ))
            }
        }
    }
    Ok(parts.join(&AUTHN_SEPARATOR.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn map(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    const ISS: &str = "https://acme.kinde.com";

    #[test]
    fn scopes_from_scp_or_scope() {
        assert_eq!(
            granted_scopes(&map(json!({"scp": ["openid", "db"]}))),
            ["openid", "db"]
        );
        assert_eq!(
            granted_scopes(&map(json!({"scp": "openid  db"}))),
            ["openid", "db"]
        );
        assert_eq!(granted_scopes(&map(json!({"scope": "a b"}))), ["a", "b"]);
        // Both claims grant; non-strings grant nothing.
        assert_eq!(
            granted_scopes(&map(json!({"scp": ["x"], "scope": "y"}))),
            ["x", "y"]
        );
        assert_eq!(granted_scopes(&map(json!({"scp": 7, "scope": "y"}))), ["y"]);
        assert_eq!(granted_scopes(&map(json!({"scp": [1, "x", null]}))), ["x"]);
        assert!(granted_scopes(&map(json!({"scp": {"db": true}}))).is_empty());
        assert!(granted_scopes(&map(json!({}))).is_empty());
    }

    #[test]
    fn a_login_passes_with_the_line_issuer_and_every_scope() {
        let c = map(json!({"iss": ISS, "sub": "kp_1", "scp": ["openid", "db", "x"]}));
        assert_eq!(check_login(&c, ISS, Some("openid db")), Ok("kp_1"));
        assert_eq!(check_login(&c, ISS, None), Ok("kp_1"));
        assert_eq!(check_login(&c, ISS, Some("")), Ok("kp_1"));
        assert_eq!(check_login(&c, ISS, Some("  db  ")), Ok("kp_1"));
    }

    #[test]
    fn another_issuer_is_refused_exactly() {
        for iss in [
            json!("https://acme.kinde.com/"),
            json!("https://ACME.kinde.com"),
            json!(null),
            json!(7),
        ] {
            let c = map(json!({"iss": iss, "sub": "kp_1"}));
            let r = check_login(&c, ISS, None).unwrap_err();
            assert_eq!(r.check, Check::Iss, "{iss}");
        }
        let c = map(json!({"sub": "kp_1"}));
        assert_eq!(check_login(&c, ISS, None).unwrap_err().check, Check::Iss);
    }

    #[test]
    fn a_missing_scope_is_named() {
        let c = map(json!({"iss": ISS, "sub": "kp_1", "scp": ["openid"]}));
        let r = check_login(&c, ISS, Some("openid db dbx")).unwrap_err();
        assert_eq!(r.check, Check::Scope);
        assert_eq!(
            r.detail,
            "the token does not grant the scope \"db\", \"dbx\" that the pg_hba.conf line requires"
        );
        // A scope is a whole word: "db" is not granted by "dbx" or "db:read".
        let c = map(json!({"iss": ISS, "sub": "kp_1", "scope": "dbx db:read"}));
        assert_eq!(
            check_login(&c, ISS, Some("db")).unwrap_err().check,
            Check::Scope
        );
    }

    #[test]
    fn the_authenticated_identity_is_made_of_the_named_claims() {
        let names = parse_authn_claims(" org_code , sub").unwrap();
        assert_eq!(names, ["org_code", "sub"]);
        let c = map(json!({"sub": "kp_1", "org_code": "org_a"}));
        assert_eq!(authn_id(&c, &names).unwrap(), "org_a/kp_1");
        assert_eq!(authn_id(&c, &["sub".into()]).unwrap(), "kp_1");
        // A value that could pass for two claims, or is not a plain string, is refused.
        for org in [
            json!("org_a/kp_2"),
            json!(""),
            json!(null),
            json!(["org_a"]),
            json!("a\nb"),
            json!("org_\u{202e}a"),
            json!("a\u{2028}b"),
            json!("a\u{85}b"),
        ] {
            let c = map(json!({"sub": "kp_1", "org_code": org}));
            assert_eq!(authn_id(&c, &names).unwrap_err().check, Check::Sub, "{org}");
        }
        for bad in ["", "sub,", "org code", "sub;drop", "a/b"] {
            assert!(parse_authn_claims(bad).is_err(), "{bad}");
        }
    }

    fn verified(alg: &str, claims: Value) -> Verified {
        Verified {
            header: map(json!({"alg": alg})),
            registered: map(claims.clone()),
            payload: claims.to_string(),
            exp: 0,
        }
    }

    #[test]
    fn a_login_needs_keys_pinned_to_the_line_issuer_and_an_issuer_signature() {
        use crate::Settings;
        let url = "https://acme.kinde.com/.well-known/jwks";
        let c = map(json!({"iss": ISS, "sub": "kp_1"}));
        let pinned = Config::from_settings(&Settings {
            jwks_url: Some(url),
            issuer: Some(ISS),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(
            check_signer(&pinned, &verified("RS256", json!(c)), ISS),
            Ok(())
        );
        let any = Config::from_settings(&Settings {
            jwks_url: Some(url),
            ..Default::default()
        })
        .unwrap();
        let r = check_signer(&any, &verified("RS256", json!(c)), ISS).unwrap_err();
        assert_eq!(r.check, Check::Iss);
        for alg in ["HS256", "HS384", "HS512"] {
            let r = check_signer(&pinned, &verified(alg, json!(c)), ISS).unwrap_err();
            assert_eq!(r.check, Check::Algorithm, "{alg}");
        }
    }

    #[test]
    fn a_login_needs_a_sub() {
        for sub in [json!(null), json!(""), json!(5), json!("a\u{0}b")] {
            let c = map(json!({"iss": ISS, "sub": sub}));
            assert_eq!(
                check_login(&c, ISS, None).unwrap_err().check,
                Check::Sub,
                "{sub}"
            );
        }
    }
}
