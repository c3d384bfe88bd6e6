//! From settings to providers.
//!
//! A provider is one issuer's trust: the `iss` values it answers for, its audiences, its keys
//! (inline JWKS, an HMAC secret, and/or keys fetched from a URL) and optionally an algorithm
//! allow-list. A token's `iss` selects its provider ([`crate::pipeline::pick_provider`]), so one
//! provider's keys never verify another provider's tokens. `kinde_rls.providers` lists
//! providers explicitly (parsed by serde into [`ProviderEntry`]); otherwise the single-provider
//! settings (`domain`, `issuer`, `audience`, `jwks`, `jwks_url`, `secret`) describe one.

use crate::alg::Alg;
use serde::{Deserialize, Deserializer};
use serde_json::Value;

use crate::error::{quote, ConfigError};
use crate::fetch::{normalize_domain, RemoteSource};
use crate::keys::{parse_jwks, Ignored, Key, KeySet};
use crate::rules::{split_list, Policy};

#[derive(Debug, Clone)]
pub struct Provider {
    /// Its rules: accepted `iss` values (empty in single-provider mode without
    /// `kinde_rls.issuer`: any), audiences, leeway and the `sub` rule.
    pub policy: Policy,
    /// Keys known without fetching: an inline JWKS and/or an HMAC secret.
    pub keys: Vec<Key>,
    /// Keys of the inline JWKS that cannot be used, and why.
    pub ignored: Vec<Ignored>,
    pub remote: Option<RemoteSource>,
    pub algorithms: Option<Vec<Alg>>,
}

impl Provider {
    pub fn name(&self) -> String {
        match self.policy.issuers.first() {
            Some(i) => i.clone(),
            None => "(any issuer)".into(),
        }
    }

    /// What is unsafe about this provider's rules, for `jwks_status()`: no audience means a token
    /// the issuer made for any other application or API of the same account is accepted too
    /// (RFC 8725 §3.9).
    pub fn audience_warning(&self) -> Option<String> {
        self.policy.audiences.is_empty().then(|| {
            format!(
                "no audience is configured: tokens {} issues for any application or API are accepted; set kinde_rls.audience (or the provider's audience)",
                if self.policy.issuers.is_empty() {
                    "any issuer".to_string()
                } else {
                    quote(&self.name())
                }
            )
        })
    }
}

/// PostgreSQL's reading of a boolean setting (`parse_bool`): true, yes, on, 1 and their
/// unambiguous prefixes, in any case (for values read back from the catalogs).
pub fn truthy(v: &str) -> bool {
    let v = v.trim().to_ascii_lowercase();
    let prefix_of = |word: &str| !v.is_empty() && word.starts_with(v.as_str());
    prefix_of("true") || prefix_of("yes") || v == "on" || v == "1"
}

/// The settings as text, the way the extension reads them.
#[derive(Debug, Clone, Default)]
pub struct Settings<'a> {
    pub domain: Option<&'a str>,
    pub issuer: Option<&'a str>,
    pub audience: Option<&'a str>,
    pub jwks: Option<&'a str>,
    pub jwks_url: Option<&'a str>,
    pub secret: Option<&'a str>,
    /// Where `secret` came from, for error messages: `kinde_rls.secret` (the default) or
    /// `kinde_rls.secret_file`.
    pub secret_source: Option<&'a str>,
    pub providers: Option<&'a str>,
    pub leeway: i64,
    pub require_sub: bool,
    /// `kinde_rls.anonymous_roles`: comma-separated `role` values of anonymous credentials.
    pub anonymous_roles: Option<&'a str>,
}

/// Everything verification needs, built once per settings generation.
#[derive(Debug, Clone)]
pub struct Config {
    /// At least one.
    pub providers: Vec<Provider>,
    /// The rules every provider shares (leeway, the `sub` rule), with no issuer or audience:
    /// what `jwt_explain()` judges claims by when no provider accepts the token's issuer.
    pub defaults: Policy,
    /// `role` values that mark an anonymous credential ([`crate::claims::is_anonymous`]).
    pub anonymous_roles: Vec<String>,
}

/// An HMAC key from a setting, through the one rule for secrets ([`crate::keys::check_hmac_secret`]).
fn hmac_key(secret: &str, setting: &str) -> Result<Key, ConfigError> {
    crate::keys::hmac_key(secret, crate::keys::MIN_HMAC_BYTES).map_err(|p| {
        ConfigError::new(
            setting,
            p.describe(setting),
            match p {
                crate::keys::SecretProblem::KeyMaterial(_) => format!(
                    "Set {setting} to the HMAC secret (the Kinde client secret); public keys belong in kinde_rls.jwks, or let kinde_rls.domain fetch them."
                ),
                crate::keys::SecretProblem::TooShort(_) => format!(
                    "Set {setting} to the full client secret (RFC 7518 §3.2 requires a secret as long as the hash)."
                ),
            },
        )
    })
}

/// Check a key URL: `https://`, or `http://` to a loopback address (for tests).
pub fn check_url(url: &str, setting: &str) -> Result<(), ConfigError> {
    crate::fetch::url_allowed(url).map_err(|e| {
        ConfigError::new(
            setting,
            format!("{setting} cannot be used: {e}"),
            format!("Set {setting} to an https:// URL (plain http:// is allowed only to loopback addresses)."),
        )
    })
}

impl Config {
    /// Build from settings. Errors name the setting and say how to fix it.
    pub fn from_settings(s: &Settings) -> Result<Config, ConfigError> {
        let defaults = Policy {
            issuers: vec![],
            audiences: vec![],
            leeway: s.leeway,
            require_sub: s.require_sub,
        };
        let providers = match s.providers.filter(|p| !p.trim().is_empty()) {
            Some(text) => parse_providers(text, &defaults)?,
            None => vec![single_provider(s, &defaults)?],
        };
        Ok(Config {
            providers,
            defaults,
            anonymous_roles: split_list(s.anonymous_roles),
        })
    }

    /// Clock skew allowed on `exp` and `nbf`, seconds.
    pub fn leeway(&self) -> i64 {
        self.defaults.leeway
    }

    pub fn has_keys(&self) -> bool {
        self.providers
            .iter()
            .any(|p| !p.keys.is_empty() || p.remote.is_some())
    }

    /// The error for verifying with no key at all.
    pub fn no_keys_error() -> ConfigError {
        ConfigError::new(
            "kinde_rls.domain",
            "no verification key is configured",
            "Set kinde_rls.domain (your Kinde domain), kinde_rls.jwks_url, kinde_rls.jwks or kinde_rls.secret as a superuser.",
        )
    }
}

/// Judge one setting's value alone, as verification would read it, so that a mistake is refused
/// when it is made (`SET`, `ALTER SYSTEM`, `ALTER DATABASE … SET`) with the error verification
/// would raise later. What can only be judged later (a file, a fetch) is not looked at.
pub fn validate_setting(setting: &str, value: &str) -> Result<(), ConfigError> {
    if value.trim().is_empty() {
        return Ok(());
    }
    let one = |s: Settings| single_provider(&s, &Policy::default()).map(|_| ());
    match setting {
        "kinde_rls.providers" => parse_providers(value, &Policy::default()).map(|_| ()),
        "kinde_rls.jwks" => one(Settings {
            jwks: Some(value),
            ..Default::default()
        }),
        "kinde_rls.domain" => one(Settings {
            domain: Some(value),
            ..Default::default()
        }),
        "kinde_rls.jwks_url" => one(Settings {
            jwks_url: Some(value),
            ..Default::default()
        }),
        "kinde_rls.secret_file" => check_secret_path(value),
        "kinde_rls.login_authn_id" => crate::login::parse_authn_claims(value)
            .map(|_| ())
            .map_err(|m| {
                ConfigError::new(
                    setting,
                    m,
                    "Set kinde_rls.login_authn_id to the claims that make a login's identity, such as 'sub' or 'org_code, sub'.",
                )
            }),
        _ => Ok(()),
    }
}

/// `kinde_rls.secret_file` must be an absolute path: a relative one would be read relative to
/// the server's data directory, which nobody means to keep a secret in.
pub fn check_secret_path(path: &str) -> Result<(), ConfigError> {
    if std::path::Path::new(path.trim()).is_absolute() {
        return Ok(());
    }
    Err(ConfigError::new(
        "kinde_rls.secret_file",
        format!(
            "kinde_rls.secret_file {} is not an absolute path (the server would read it relative to its data directory)",
            quote(path)
        ),
        "Set kinde_rls.secret_file to the absolute path of a file owned by the server's OS user with mode 0600 or 0640, e.g. /etc/postgresql/kinde_client_secret.",
    ))
}

fn single_provider(s: &Settings, defaults: &Policy) -> Result<Provider, ConfigError> {
    let mut set = KeySet::default();
    if let Some(jwks) = s.jwks.filter(|j| !j.trim().is_empty()) {
        set = parse_jwks(jwks, false).map_err(|e| {
            ConfigError::new(
                "kinde_rls.jwks",
                format!("kinde_rls.jwks cannot be used: {e}"),
                "Set kinde_rls.jwks to the JSON of the issuer's JWKS ({\"keys\": [...]}) or of one public JWK.",
            )
        })?;
    }
    let KeySet { mut keys, ignored } = set;
    if let Some(secret) = s.secret.filter(|x| !x.is_empty()) {
        keys.push(hmac_key(
            secret,
            s.secret_source.unwrap_or("kinde_rls.secret"),
        )?);
    }
    let domain = s.domain.map(normalize_domain).filter(|d| !d.is_empty());
    if let Some(d) = &domain {
        check_url(d, "kinde_rls.domain")?;
    }
    let remote = match (s.jwks_url.map(str::trim).filter(|u| !u.is_empty()), &domain) {
        (Some(url), _) => {
            check_url(url, "kinde_rls.jwks_url")?;
            Some(RemoteSource::Jwks(url.to_string()))
        }
        (None, Some(d)) => Some(RemoteSource::Discovery(d.clone())),
        (None, None) => None,
    };
    let mut issuers = split_list(s.issuer);
    if issuers.is_empty() {
        if let Some(d) = domain {
            issuers.push(d);
        }
    }
    Ok(Provider {
        policy: Policy {
            issuers,
            audiences: split_list(s.audience),
            ..defaults.clone()
        },
        keys,
        ignored,
        remote,
        algorithms: None,
    })
}

// ---------------------------------------------------------------------------------------------
// kinde_rls.providers

/// One entry of `kinde_rls.providers`, as written: a JSON object (never an array, which serde
/// would read in field order), whose members may be absent but not `null`, except where noted.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderEntry {
    /// Required unless `domain` is given (which is then the issuer).
    #[serde(default, deserialize_with = "present")]
    pub issuer: Option<String>,
    /// An OIDC issuer whose keys are discovered.
    #[serde(default, deserialize_with = "present")]
    pub domain: Option<String>,
    #[serde(default, deserialize_with = "present")]
    pub jwks_url: Option<String>,
    /// An inline JWKS object.
    pub jwks: Option<serde_json::Map<String, Value>>,
    #[serde(default)]
    pub audience: Strings,
    pub algorithms: Option<Strings>,
}

/// A member that, when written, is a string: `null` is refused rather than read as absent, so
/// that `"jwks_url": null` never quietly means "discover the keys instead".
fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    String::deserialize(d).map(Some)
}

/// A string or an array of strings (`null` is none).
#[derive(Debug, Default)]
pub struct Strings(pub Vec<String>);

impl<'de> Deserialize<'de> for Strings {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Strings;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string or an array of strings")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Strings, E> {
                Ok(Strings(vec![s.to_string()]))
            }
            fn visit_unit<E: serde::de::Error>(self) -> Result<Strings, E> {
                Ok(Strings(vec![]))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut a: A,
            ) -> Result<Strings, A::Error> {
                let mut v = Vec::new();
                while let Some(s) = a.next_element::<String>()? {
                    v.push(s);
                }
                Ok(Strings(v))
            }
        }
        d.deserialize_any(V)
    }
}

fn providers_error(msg: String) -> ConfigError {
    ConfigError::new(
        "kinde_rls.providers",
        format!("kinde_rls.providers cannot be used: {msg}"),
        "Set kinde_rls.providers to a JSON array like [{\"issuer\": \"https://acme.kinde.com\", \"jwks_url\": \"https://acme.kinde.com/.well-known/jwks\", \"audience\": [\"api\"], \"algorithms\": [\"RS256\"]}].",
    )
}

fn parse_providers(text: &str, defaults: &Policy) -> Result<Vec<Provider>, ConfigError> {
    let list: Vec<Value> = serde_json::from_str(text).map_err(|e| {
        providers_error(if e.is_data() {
            "it must be a JSON array of objects".into()
        } else {
            format!("not valid JSON ({e})")
        })
    })?;
    if list.is_empty() {
        return Err(providers_error("the array is empty".into()));
    }
    let mut out: Vec<Provider> = Vec::with_capacity(list.len());
    for (i, item) in list.iter().enumerate() {
        let err = |m: String| providers_error(format!("provider #{}: {m}", i + 1));
        if !item.is_object() {
            return Err(err("must be an object".into()));
        }
        let entry: ProviderEntry = serde_path_to_error::deserialize(item).map_err(|e| {
            let member = e.path().to_string();
            let e = e.into_inner().to_string();
            err(if e.starts_with("unknown field `secret`") {
                format!("{e} (secrets do not belong in a readable setting; use kinde_rls.secret_file with the single-provider settings)")
            } else if e.starts_with("unknown field") || member == "." {
                e
            } else {
                format!("{member}: {e}")
            })
        })?;
        let provider = entry.into_provider(defaults).map_err(err)?;
        if out
            .iter()
            .any(|p| p.policy.issuers == provider.policy.issuers)
        {
            return Err(err(format!(
                "issuer {} is listed twice",
                quote(&provider.name())
            )));
        }
        out.push(provider);
    }
    Ok(out)
}

impl ProviderEntry {
    fn into_provider(self, defaults: &Policy) -> Result<Provider, String> {
        let domain = self.domain.as_deref().map(normalize_domain);
        let issuer = match (self.issuer, &domain) {
            (Some(s), _) if !s.is_empty() => s,
            (None, Some(d)) => d.clone(),
            _ => return Err("issuer (a non-empty string) is required".into()),
        };
        let KeySet { keys, ignored } = match self.jwks {
            None => KeySet::default(),
            Some(m) => parse_jwks(&Value::Object(m).to_string(), false)
                .map_err(|e| format!("jwks: {e}"))?,
        };
        let remote = match (self.jwks_url, domain) {
            (Some(u), _) => {
                crate::fetch::url_allowed(&u).map_err(|e| format!("jwks_url: {e}"))?;
                Some(RemoteSource::Jwks(u))
            }
            (None, Some(d)) => {
                crate::fetch::url_allowed(&d).map_err(|e| format!("domain: {e}"))?;
                Some(RemoteSource::Discovery(d))
            }
            (None, None) => None,
        };
        if keys.is_empty() && remote.is_none() {
            return Err("needs keys: jwks_url, domain or jwks".into());
        }
        let algorithms = match self.algorithms {
            None => None,
            Some(Strings(names)) => Some(
                names
                    .iter()
                    .map(|a| Alg::parse(a))
                    .collect::<Result<Vec<_>, _>>()?,
            ),
        };
        Ok(Provider {
            policy: Policy {
                issuers: vec![issuer],
                audiences: self.audience.0,
                ..defaults.clone()
            },
            keys,
            ignored,
            remote,
            algorithms,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::{Check, Error};
    use crate::pipeline::{
        check_trusted_claims, identify_configured, pick_provider, verify_configured, NoRemote,
    };
    use serde_json::Map;

    fn settings() -> Settings<'static> {
        Settings {
            leeway: 30,
            require_sub: true,
            ..Default::default()
        }
    }

    #[test]
    fn trusted_claims_pass_every_claim_rule_of_their_provider() {
        let c = Config::from_settings(&Settings {
            domain: Some("https://acme.kinde.com"),
            audience: Some("api"),
            ..settings()
        })
        .unwrap();
        let now = 1_700_000_000;
        let claims = |extra: serde_json::Value| {
            let mut m: Map<String, Value> = serde_json::from_value(serde_json::json!({
                "iss": "https://acme.kinde.com", "aud": ["api"], "sub": "kp_1",
                "exp": now + 60, "role": "authenticated"}))
            .unwrap();
            for (k, v) in extra.as_object().unwrap() {
                if v.is_null() {
                    m.remove(k);
                } else {
                    m.insert(k.clone(), v.clone());
                }
            }
            m
        };
        assert_eq!(
            check_trusted_claims(&claims(serde_json::json!({})), &c, now),
            Ok(now + 60)
        );
        for (extra, check) in [
            (serde_json::json!({"exp": now - 31}), Check::Exp),
            (serde_json::json!({"exp": null}), Check::Exp),
            (serde_json::json!({"nbf": now + 31}), Check::Nbf),
            (
                serde_json::json!({"iss": "https://evil.kinde.com"}),
                Check::Iss,
            ),
            (serde_json::json!({"iss": null}), Check::Iss),
            (serde_json::json!({"aud": "other"}), Check::Aud),
            (serde_json::json!({"sub": null}), Check::Sub),
            (serde_json::json!({"sub": ""}), Check::Sub),
        ] {
            let e = check_trusted_claims(&claims(extra.clone()), &c, now).unwrap_err();
            assert_eq!(e.check, check, "{extra}");
        }
        // Within the leeway, still accepted.
        assert!(
            check_trusted_claims(&claims(serde_json::json!({"exp": now - 29})), &c, now).is_ok()
        );
    }

    #[test]
    fn identify_reads_anonymous_credentials_as_nobody_and_verifies_the_rest() {
        use crate::token::b64_encode;
        let tok = |h: &str, p: &str| {
            format!(
                "{}.{}.c2ln",
                b64_encode(h.as_bytes()),
                b64_encode(p.as_bytes())
            )
        };
        let now = 1_700_000_000;
        // No keys at all: an anon key is still nobody, a user token is a configuration error.
        let c = Config::from_settings(&Settings {
            anonymous_roles: Some("anon, service_role"),
            ..settings()
        })
        .unwrap();
        let anon = tok(
            r#"{"alg":"HS256","typ":"JWT"}"#,
            r#"{"iss":"supabase","role":"anon","exp":1}"#,
        );
        assert!(identify_configured(&anon, &c, now, &mut NoRemote)
            .unwrap()
            .is_none());
        // A header the parser refuses (alg none) does not make an anon key somebody.
        let none = tok(r#"{"alg":"none"}"#, r#"{"role":"service_role"}"#);
        assert!(identify_configured(&none, &c, now, &mut NoRemote)
            .unwrap()
            .is_none());
        let user = tok(
            r#"{"alg":"HS256"}"#,
            r#"{"role":"anon","sub":"kp_1","exp":1}"#,
        );
        assert!(matches!(
            identify_configured(&user, &c, now, &mut NoRemote),
            Err(Error::Config(_))
        ));
        // verify_configured never applies the rule.
        assert!(verify_configured(&anon, &c, now, &mut NoRemote).is_err());
    }

    #[test]
    fn settings_are_judged_alone_with_the_errors_verification_gives() {
        for (setting, value) in [
            (
                "kinde_rls.providers",
                r#"[{"issuer": "https://a.example", "jwks_ur": "https://a.example/jwks"}]"#,
            ),
            ("kinde_rls.providers", "not json"),
            ("kinde_rls.jwks", "not json"),
            ("kinde_rls.domain", "acme.kinde.com"),
            ("kinde_rls.domain", "http://acme.kinde.com"),
            ("kinde_rls.jwks_url", "ftp://x/jwks"),
        ] {
            let e = validate_setting(setting, value).unwrap_err();
            assert_eq!(e.setting, setting, "{value}");
            // The same error as verification with that setting alone.
            let later = Config::from_settings(&Settings {
                providers: (setting == "kinde_rls.providers").then_some(value),
                jwks: (setting == "kinde_rls.jwks").then_some(value),
                domain: (setting == "kinde_rls.domain").then_some(value),
                jwks_url: (setting == "kinde_rls.jwks_url").then_some(value),
                ..settings()
            })
            .unwrap_err();
            assert_eq!(e, later, "{setting} = {value}");
        }
        for (setting, value) in [
            (
                "kinde_rls.providers",
                r#"[{"issuer": "https://a.example", "jwks_url": "https://a.example/jwks"}]"#,
            ),
            ("kinde_rls.domain", "https://acme.kinde.com/"),
            ("kinde_rls.jwks_url", "http://127.0.0.1:8080/jwks"),
            ("kinde_rls.jwks", ""),
            ("kinde_rls.issuer", "anything, at all"),
        ] {
            assert_eq!(
                validate_setting(setting, value),
                Ok(()),
                "{setting} = {value}"
            );
        }
        let e = validate_setting("kinde_rls.secret_file", "kinde_secret").unwrap_err();
        assert!(e.message.contains("not an absolute path"), "{}", e.message);
        assert_eq!(
            validate_setting("kinde_rls.secret_file", "/etc/kinde"),
            Ok(())
        );
    }

    #[test]
    fn booleans_read_as_postgresql_reads_them() {
        for t in ["on", "ON", "true", "t", "tr", "yes", "y", "1", " On "] {
            assert!(truthy(t), "{t}");
        }
        for f in [
            "off", "of", "o", "false", "f", "no", "n", "0", "", "2", "truex", "yess",
        ] {
            assert!(!truthy(f), "{f}");
        }
    }

    #[test]
    fn anonymous_roles_are_a_list() {
        let c = Config::from_settings(&Settings {
            anonymous_roles: Some(" anon ,service_role,, "),
            ..settings()
        })
        .unwrap();
        assert_eq!(c.anonymous_roles, vec!["anon", "service_role"]);
        assert!(Config::from_settings(&settings())
            .unwrap()
            .anonymous_roles
            .is_empty());
    }

    #[test]
    fn domain_means_issuer_and_discovery() {
        let s = Settings {
            domain: Some("https://acme.kinde.com/"),
            ..settings()
        };
        let c = Config::from_settings(&s).unwrap();
        assert_eq!(
            c.providers[0].policy.issuers,
            vec!["https://acme.kinde.com"]
        );
        assert_eq!(
            c.providers[0].remote,
            Some(RemoteSource::Discovery("https://acme.kinde.com".into()))
        );
    }

    #[test]
    fn urls_must_be_https_or_loopback() {
        for bad in [
            "http://acme.kinde.com",
            "ftp://x",
            "http://10.0.0.1/jwks",
            "not a url",
        ] {
            let s = Settings {
                jwks_url: Some(bad),
                ..settings()
            };
            let e = Config::from_settings(&s).unwrap_err();
            assert_eq!(e.setting, "kinde_rls.jwks_url", "{bad}");
        }
        for good in [
            "https://acme.kinde.com/.well-known/jwks",
            "http://127.0.0.1:8080/jwks",
            "http://localhost/jwks",
            "http://[::1]:9/x",
        ] {
            let s = Settings {
                jwks_url: Some(good),
                ..settings()
            };
            assert!(Config::from_settings(&s).is_ok(), "{good}");
        }
    }

    #[test]
    fn providers_parse_and_select_by_issuer() {
        let p = r#"[{"issuer": "https://a.example", "jwks_url": "https://a.example/jwks", "audience": "api", "algorithms": ["RS256"]},
                    {"domain": "https://b.kinde.com/"}]"#;
        let c = Config::from_settings(&Settings {
            providers: Some(p),
            ..settings()
        })
        .unwrap();
        assert_eq!(c.providers.len(), 2);
        assert_eq!(c.providers[0].policy.audiences, vec!["api"]);
        assert_eq!(c.providers[0].algorithms, Some(vec![Alg::RS256]));
        assert_eq!(c.providers[1].policy.issuers, vec!["https://b.kinde.com"]);
        let claims: Map<String, Value> =
            serde_json::from_str(r#"{"iss":"https://b.kinde.com"}"#).unwrap();
        assert_eq!(
            pick_provider(&c, &claims).unwrap().policy.issuers[0],
            "https://b.kinde.com"
        );
        let claims: Map<String, Value> =
            serde_json::from_str(r#"{"iss":"https://c.example"}"#).unwrap();
        assert_eq!(pick_provider(&c, &claims).unwrap_err().check, Check::Iss);
    }

    #[test]
    fn providers_errors() {
        for bad in [
            "{}",
            "[]",
            r#"[{"jwks_url": "https://a/jwks"}]"#,
            r#"[{"issuer": "a"}]"#,
            r#"[{"issuer": "a", "jwks_url": "http://evil.example/jwks"}]"#,
            r#"[{"issuer": "a", "jwks_url": "https://a/jwks", "secret": "x"}]"#,
            r#"[{"issuer": "a", "jwks_url": "https://a/jwks"}, {"issuer": "a", "jwks_url": "https://a/jwks"}]"#,
            r#"[{"issuer": "a", "jwks_url": "https://a/jwks", "algorithms": ["none"]}]"#,
        ] {
            let e = Config::from_settings(&Settings {
                providers: Some(bad),
                ..settings()
            })
            .unwrap_err();
            assert_eq!(e.setting, "kinde_rls.providers", "{bad}");
        }
    }

    #[test]
    fn a_secret_that_is_key_material_names_its_setting() {
        let pem = "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEA11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo=\n-----END PUBLIC KEY-----\n";
        for (source, expected) in [
            (None, "kinde_rls.secret"),
            (Some("kinde_rls.secret_file"), "kinde_rls.secret_file"),
        ] {
            let e = Config::from_settings(&Settings {
                secret: Some(pem),
                secret_source: source,
                ..settings()
            })
            .unwrap_err();
            assert_eq!(e.setting, expected);
            assert!(
                e.message
                    .starts_with(&format!("{expected} holds a PEM key")),
                "{}",
                e.message
            );
            assert!(e.hint.contains(expected), "{}", e.hint);
        }
        let e = Config::from_settings(&Settings {
            secret: Some("short-secret"),
            ..settings()
        })
        .unwrap_err();
        assert!(!e.message.contains("12"), "{}", e.message);
    }

    #[test]
    fn an_ignored_kid_is_named_in_the_refusal() {
        let jwks = r#"{"keys":[{"kty":"RSA","kid":"weak","n":"AQAB","e":"AQAB"},
            {"kty":"OKP","crv":"Ed25519","kid":"good","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]}"#;
        let c = Config::from_settings(&Settings {
            jwks: Some(jwks),
            issuer: Some("https://acme.kinde.com"),
            ..settings()
        })
        .unwrap();
        assert_eq!(c.providers[0].ignored.len(), 1);
        let header = crate::token::b64_encode(br#"{"alg":"RS256","kid":"weak"}"#);
        let payload = crate::token::b64_encode(
            br#"{"iss":"https://acme.kinde.com","sub":"a","exp":99999999999}"#,
        );
        let t = format!("{header}.{payload}.c2ln");
        let e = verify_configured(&t, &c, 0, &mut NoRemote).unwrap_err();
        let Error::Refused(r) = e else {
            panic!("{e:?}")
        };
        assert_eq!(r.check, Check::Key);
        assert!(
            r.detail.contains(r#"kid "weak""#) && r.detail.contains("is ignored: the RSA key has"),
            "{}",
            r.detail
        );
    }

    /// serde reads kinde_rls.providers; what it refuses names the provider and the member.
    #[test]
    fn provider_shape_errors_name_the_member() {
        let why = |p: &str| {
            validate_setting("kinde_rls.providers", p)
                .unwrap_err()
                .message
                .trim_start_matches("kinde_rls.providers cannot be used: ")
                .to_string()
        };
        assert_eq!(why("[1]"), "provider #1: must be an object");
        // serde would read an array in field order; a provider is an object.
        assert_eq!(
            why(
                r#"[["https://acme.kinde.com",null,"https://a.example/jwks",null,"api",["RS256"]]]"#
            ),
            "provider #1: must be an object"
        );
        // Written members are strings: null is not "absent".
        for m in ["issuer", "domain", "jwks_url"] {
            let mut p = serde_json::json!({
                "issuer": "https://acme.kinde.com",
                "domain": "https://acme.kinde.com",
                "jwks_url": "https://a.example/jwks",
            });
            p[m] = Value::Null;
            assert_eq!(
                why(&format!("[{p}]")),
                format!("provider #1: {m}: invalid type: null, expected a string"),
                "{p}"
            );
        }
        assert_eq!(
            why(r#"[{"issuer":"a","jwks_url":5}]"#),
            "provider #1: jwks_url: invalid type: integer `5`, expected a string"
        );
        assert_eq!(
            why(r#"[{"issuer":"a","jwks_url":"https://a/j","audience":[1]}]"#),
            "provider #1: audience[0]: invalid type: integer `1`, expected a string"
        );
        assert!(
            why(r#"[{"issuer":"a","jwks_url":"https://a/j","secret":"x"}]"#)
                .contains("secrets do not belong in a readable setting")
        );
        assert!(why(r#"[{"issuer":"a","jwks_url":"https://a/j","jwk":{}}]"#)
            .starts_with("provider #1: unknown field `jwk`"));
    }
}
