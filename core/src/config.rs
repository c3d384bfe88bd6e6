//! From settings to providers, and verification against them.
//!
//! A provider is one issuer's trust: the `iss` values it answers for, its audiences, its keys
//! (inline JWKS, an HMAC secret, and/or keys fetched from a URL) and optionally an algorithm
//! allow-list. A token's `iss` selects its provider, so one provider's keys never verify another
//! provider's tokens. `kinde_rls.providers` lists providers explicitly; otherwise the
//! single-provider settings (`domain`, `issuer`, `audience`, `jwks`, `jwks_url`, `secret`)
//! describe one.

use jsonwebtoken::Algorithm;
use serde_json::{Map, Value};
use std::rc::Rc;

use crate::error::{quote, Check, ConfigError, Error, Refusal};
use crate::keys::{parse_algorithm, parse_jwks, Ignored, Key, KeySet};
use crate::token::parse;
use crate::verify::{self, split_list, ExplainRow, Policy, Verified};

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

#[derive(Debug, Clone)]
pub struct Provider {
    /// Accepted `iss` values; empty (single-provider mode without `kinde_rls.issuer`) means any.
    pub issuers: Vec<String>,
    pub audiences: Vec<String>,
    /// Keys known without fetching: an inline JWKS and/or an HMAC secret.
    pub keys: Vec<Key>,
    /// Keys of the inline JWKS that cannot be used, and why.
    pub ignored: Vec<Ignored>,
    pub remote: Option<RemoteSource>,
    pub algorithms: Option<Vec<Algorithm>>,
    /// Issuers, audiences, leeway and `sub` rule together, as the checks take them.
    pub policy: Policy,
}

impl Provider {
    pub fn name(&self) -> String {
        match self.issuers.first() {
            Some(i) => i.clone(),
            None => "(any issuer)".into(),
        }
    }

    /// What is unsafe about this provider's rules, for `jwks_status()`: no audience means a token
    /// the issuer made for any other application or API of the same account is accepted too
    /// (RFC 8725 §3.9).
    pub fn audience_warning(&self) -> Option<String> {
        self.audiences.is_empty().then(|| {
            format!(
                "no audience is configured: tokens {} issues for any application or API are accepted; set kinde_rls.audience (or the provider's audience)",
                if self.issuers.is_empty() {
                    "any issuer".to_string()
                } else {
                    quote(&self.name())
                }
            )
        })
    }
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
    pub providers: Vec<Provider>,
    pub leeway: i64,
    pub require_sub: bool,
    /// `role` values that mark an anonymous credential ([`crate::claims::is_anonymous`]).
    pub anonymous_roles: Vec<String>,
}

/// An HMAC key from a setting, through the one rule for secrets ([`crate::keys::check_hmac_secret`]).
fn hmac_key(secret: &str, setting: &str) -> Result<Key, ConfigError> {
    crate::keys::hmac_key(secret, 32).map_err(|p| {
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

/// `https://acme.kinde.com/` → `https://acme.kinde.com`.
pub fn normalize_domain(domain: &str) -> String {
    domain.trim().trim_end_matches('/').to_string()
}

impl Config {
    /// Build from settings. Errors name the setting and say how to fix it.
    pub fn from_settings(s: &Settings) -> Result<Config, ConfigError> {
        let providers = match s.providers.filter(|p| !p.trim().is_empty()) {
            Some(text) => parse_providers(text)?,
            None => vec![single_provider(s)?],
        };
        let mut providers = providers;
        for p in providers.iter_mut() {
            p.policy = Policy {
                issuers: p.issuers.clone(),
                audiences: p.audiences.clone(),
                leeway: s.leeway,
                require_sub: s.require_sub,
            };
        }
        Ok(Config {
            providers,
            leeway: s.leeway,
            require_sub: s.require_sub,
            anonymous_roles: split_list(s.anonymous_roles),
        })
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

    /// The rules for a provider's tokens (built once, with the configuration).
    pub fn policy<'a>(&'a self, p: &'a Provider) -> &'a Policy {
        &p.policy
    }

    /// The provider for a token's `iss`.
    pub fn provider_for(&self, claims: &Map<String, Value>) -> Result<&Provider, Refusal> {
        let iss = match claims.get("iss") {
            None => None,
            Some(Value::String(s)) => Some(s.as_str()),
            Some(_) => return Err(Refusal::new(Check::Iss, "claim iss is not a string")),
        };
        if let Some(p) = self.providers.iter().find(|p| p.issuers.is_empty()) {
            return Ok(p);
        }
        if let Some(i) = iss {
            if let Some(p) = self
                .providers
                .iter()
                .find(|p| p.issuers.iter().any(|x| x == i))
            {
                return Ok(p);
            }
        }
        let accepted: Vec<String> = self
            .providers
            .iter()
            .flat_map(|p| p.issuers.iter())
            .map(|s| quote(s))
            .collect();
        Err(Refusal::new(
            Check::Iss,
            match iss {
                Some(i) => format!("iss is {}; accepted: {}", quote(i), accepted.join(", ")),
                None => format!(
                    "the token has no iss claim; accepted: {}",
                    accepted.join(", ")
                ),
            },
        ))
    }
}

/// Judge one setting's value alone, as verification would read it, so that a mistake is refused
/// when it is made (`SET`, `ALTER SYSTEM`, `ALTER DATABASE … SET`) with the error verification
/// would raise later. What can only be judged later (a file, a fetch) is not looked at.
pub fn validate_setting(setting: &str, value: &str) -> Result<(), ConfigError> {
    if value.trim().is_empty() {
        return Ok(());
    }
    let one = |s: Settings| single_provider(&s).map(|_| ());
    match setting {
        "kinde_rls.providers" => parse_providers(value).map(|_| ()),
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

fn single_provider(s: &Settings) -> Result<Provider, ConfigError> {
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
        issuers,
        audiences: split_list(s.audience),
        keys,
        ignored,
        remote,
        algorithms: None,
        policy: Policy::default(),
    })
}

fn providers_error(msg: String) -> ConfigError {
    ConfigError::new(
        "kinde_rls.providers",
        format!("kinde_rls.providers cannot be used: {msg}"),
        "Set kinde_rls.providers to a JSON array like [{\"issuer\": \"https://acme.kinde.com\", \"jwks_url\": \"https://acme.kinde.com/.well-known/jwks\", \"audience\": [\"api\"], \"algorithms\": [\"RS256\"]}].",
    )
}

fn string_list(v: Option<&Value>, what: &str) -> Result<Vec<String>, String> {
    match v {
        None | Some(Value::Null) => Ok(vec![]),
        Some(Value::String(s)) => Ok(vec![s.clone()]),
        Some(Value::Array(a)) => a
            .iter()
            .map(|x| {
                x.as_str()
                    .map(String::from)
                    .ok_or_else(|| format!("{what} must hold strings"))
            })
            .collect(),
        Some(_) => Err(format!("{what} must be a string or an array of strings")),
    }
}

fn parse_providers(text: &str) -> Result<Vec<Provider>, ConfigError> {
    let doc: Value =
        serde_json::from_str(text).map_err(|e| providers_error(format!("not valid JSON ({e})")))?;
    let list = doc
        .as_array()
        .ok_or_else(|| providers_error("it must be a JSON array".into()))?;
    if list.is_empty() {
        return Err(providers_error("the array is empty".into()));
    }
    let mut out: Vec<Provider> = Vec::with_capacity(list.len());
    for (i, item) in list.iter().enumerate() {
        let n = i + 1;
        let err = |m: String| providers_error(format!("provider #{n}: {m}"));
        let o = item
            .as_object()
            .ok_or_else(|| err("must be an object".into()))?;
        for k in o.keys() {
            if ![
                "issuer",
                "jwks_url",
                "jwks",
                "domain",
                "audience",
                "algorithms",
            ]
            .contains(&k.as_str())
            {
                return Err(err(format!(
                    "unknown member {}{}",
                    quote(k),
                    if k == "secret" {
                        " (secrets do not belong in a readable setting; use kinde_rls.secret_file with the single-provider settings)"
                    } else {
                        ""
                    }
                )));
            }
        }
        let domain = match o.get("domain") {
            None => None,
            Some(Value::String(d)) => Some(normalize_domain(d)),
            Some(_) => return Err(err("domain must be a string".into())),
        };
        let issuer = match (o.get("issuer"), &domain) {
            (Some(Value::String(s)), _) if !s.is_empty() => s.clone(),
            (None, Some(d)) => d.clone(),
            _ => return Err(err("issuer (a non-empty string) is required".into())),
        };
        if out.iter().any(|p| p.issuers.contains(&issuer)) {
            return Err(err(format!("issuer {} is listed twice", quote(&issuer))));
        }
        let KeySet { keys, ignored } = match o.get("jwks") {
            None | Some(Value::Null) => KeySet::default(),
            Some(v @ Value::Object(_)) => {
                parse_jwks(&v.to_string(), false).map_err(|e| err(format!("jwks: {e}")))?
            }
            Some(_) => return Err(err("jwks must be a JWKS object".into())),
        };
        let remote = match (o.get("jwks_url"), &domain) {
            (Some(Value::String(u)), _) => {
                crate::fetch::url_allowed(u).map_err(|e| err(format!("jwks_url: {e}")))?;
                Some(RemoteSource::Jwks(u.clone()))
            }
            (Some(_), _) => return Err(err("jwks_url must be a string".into())),
            (None, Some(d)) => {
                crate::fetch::url_allowed(d).map_err(|e| err(format!("domain: {e}")))?;
                Some(RemoteSource::Discovery(d.clone()))
            }
            (None, None) => None,
        };
        if keys.is_empty() && remote.is_none() {
            return Err(err("needs keys: jwks_url, domain or jwks".into()));
        }
        let audiences = string_list(o.get("audience"), "audience").map_err(err)?;
        let algorithms = match o.get("algorithms") {
            None | Some(Value::Null) => None,
            v => Some(
                string_list(v, "algorithms")
                    .map_err(err)?
                    .iter()
                    .map(|a| parse_algorithm(a).map_err(&err))
                    .collect::<Result<Vec<_>, _>>()?,
            ),
        };
        out.push(Provider {
            issuers: vec![issuer],
            audiences,
            keys,
            ignored,
            remote,
            algorithms,
            policy: Policy::default(),
        });
    }
    Ok(out)
}

/// Keys that live behind a URL. The extension implements this with its caches (per backend or
/// in shared memory); tests implement it with a map.
pub trait KeySource {
    /// The keys for `src`, fetching them if nothing usable is cached.
    fn keys(&mut self, src: &RemoteSource) -> Result<Rc<KeySet>, String>;
    /// A token named a `kid` we do not know: refetch if the rate limit allows; `None` if not.
    fn refresh_for_unknown_kid(&mut self, src: &RemoteSource) -> Option<Rc<KeySet>>;
}

/// A source with nothing behind it.
pub struct NoRemote;

impl KeySource for NoRemote {
    fn keys(&mut self, src: &RemoteSource) -> Result<Rc<KeySet>, String> {
        Err(format!("keys from {} are not available here", src.label()))
    }
    fn refresh_for_unknown_kid(&mut self, _: &RemoteSource) -> Option<Rc<KeySet>> {
        None
    }
}

fn no_keys_refusal(p: &Provider, fetch_error: Option<&str>) -> Refusal {
    match (fetch_error, &p.remote) {
        (Some(e), Some(src)) => Refusal::new(
            Check::Key,
            format!(
                "the keys of {} could not be fetched from {}: {e}",
                quote(&p.name()),
                src.label()
            ),
        )
        .because("the issuer's keys are unavailable"),
        _ => Refusal::new(Check::Key, "no verification key is configured")
            .because("no key configured"),
    }
}

fn check_provider_algorithm(p: &Provider, alg: Algorithm) -> Result<(), Refusal> {
    match &p.algorithms {
        Some(allowed) if !allowed.contains(&alg) => Err(Refusal::new(
            Check::Algorithm,
            format!(
                "provider {} accepts only {}",
                quote(&p.name()),
                allowed
                    .iter()
                    .map(|a| crate::keys::algorithm_name(*a))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )),
        _ => Ok(()),
    }
}

/// A refusal for a `kid` the provider's keys do not have says so plainly when the key set held
/// that `kid` but ignored it (a weak, malformed or private key): the issuer's problem, not
/// the token's.
fn with_ignored(r: Refusal, p: &Provider, fetched: Option<&KeySet>, kid: Option<&str>) -> Refusal {
    let Some(kid) = kid.filter(|_| r.check == Check::Key) else {
        return r;
    };
    let found = crate::keys::ignored_kid(&p.ignored, kid)
        .map(|i| (i, "configured keys".to_string()))
        .or_else(|| {
            let src = p.remote.as_ref()?;
            Some((fetched?.ignored_kid(kid)?, src.label().to_string()))
        });
    match found {
        Some((i, from)) => Refusal::new(
            Check::Key,
            format!(
                "the key with kid {} in the key set of {} ({from}) is ignored: {}",
                quote(kid),
                quote(&p.name()),
                i.reason
            ),
        )
        .because("the key with this kid is unusable"),
        None => r,
    }
}

/// Run `f` on the provider's candidate keys for this token: its own keys plus the fetched set,
/// borrowed, not copied. When the token names a `kid` nobody has, the issuer may have rotated
/// its keys: refetch once (rate-limited by the source) and select again.
fn with_candidates<T>(
    p: &Provider,
    kid: Option<&str>,
    alg: Algorithm,
    source: &mut dyn KeySource,
    f: impl FnOnce(&[&Key]) -> Result<T, Refusal>,
) -> Result<T, Refusal> {
    check_provider_algorithm(p, alg)?;
    let (remote, fetch_error) = match &p.remote {
        Some(src) => match source.keys(src) {
            Ok(k) => (Some(k), None),
            Err(e) => (None, Some(e)),
        },
        None => (None, None),
    };
    let refs: Vec<&Key> = p
        .keys
        .iter()
        .chain(remote.iter().flat_map(|r| r.keys.iter()))
        .collect();
    if refs.is_empty() {
        return Err(no_keys_refusal(p, fetch_error.as_deref()));
    }
    match verify::select_key_refs(&refs, alg, kid) {
        Ok(candidates) => f(&candidates),
        Err(r) if r.check == Check::Key && kid.is_some() => {
            let Some(src) = &p.remote else {
                return Err(with_ignored(r, p, None, kid));
            };
            let Some(fresh) = source.refresh_for_unknown_kid(src) else {
                return Err(with_ignored(r, p, remote.as_deref(), kid));
            };
            let refs: Vec<&Key> = p.keys.iter().chain(fresh.keys.iter()).collect();
            match verify::select_key_refs(&refs, alg, kid) {
                Ok(candidates) => f(&candidates),
                Err(r) => Err(with_ignored(r, p, Some(&fresh), kid)),
            }
        }
        Err(r) => Err(r),
    }
}

/// Verify a token against the configuration.
pub fn verify_configured(
    token: &str,
    config: &Config,
    now: i64,
    source: &mut dyn KeySource,
) -> Result<Verified, Error> {
    if !config.has_keys() {
        return Err(Config::no_keys_error().into());
    }
    verify_parsed(parse(token)?, config, now, source)
}

/// A request's token: `None` for an anonymous credential (no `sub`, a `role` in
/// `config.anonymous_roles`: [`crate::claims::is_anonymous`]), whether or not it would
/// verify; else the token verified as by [`verify_configured`]. The token is parsed once; only
/// a token that does not parse is decoded again, to see whether it is anonymous all the same.
pub fn identify_configured(
    token: &str,
    config: &Config,
    now: i64,
    source: &mut dyn KeySource,
) -> Result<Option<Verified>, Error> {
    let p = match parse(token) {
        Ok(p) => p,
        Err(_) if crate::token::is_anonymous(token, &config.anonymous_roles) => return Ok(None),
        Err(r) => return Err(r.into()),
    };
    if crate::claims::is_anonymous(&p.payload, &config.anonymous_roles) {
        return Ok(None);
    }
    if !config.has_keys() {
        return Err(Config::no_keys_error().into());
    }
    verify_parsed(p, config, now, source).map(Some)
}

fn verify_parsed(
    p: crate::token::Parsed<'_>,
    config: &Config,
    now: i64,
    source: &mut dyn KeySource,
) -> Result<Verified, Error> {
    let alg = verify::check_algorithm(&p)?;
    let provider = config.provider_for(&p.payload)?;
    with_candidates(provider, p.kid.as_deref(), alg, source, |candidates| {
        verify::check_signature(&p, alg, candidates).map(|_| ())
    })?;
    let exp = verify::check_claims(&p.payload, config.policy(provider), now)?;
    Ok(Verified {
        header: p.header,
        registered: p.payload,
        payload: p.payload_json,
        exp,
    })
}

/// Check claims that a party the superuser trusts has verified (`request.jwt.claims` with
/// `kinde_rls.trust_request_claims` on): every claim rule a token of the same issuer must pass
/// (`exp` with leeway, `nbf`, `iss`, `aud`, `sub`), without a signature. Returns `exp`.
pub fn check_trusted_claims(
    claims: &Map<String, Value>,
    config: &Config,
    now: i64,
) -> Result<i64, Refusal> {
    let provider = config.provider_for(claims)?;
    verify::check_claims(claims, config.policy(provider), now)
}

/// `jwt_explain()` against the configuration: which provider and key matched, or why none did.
pub fn explain_configured(
    token: &str,
    config: &Config,
    now: i64,
    source: &mut dyn KeySource,
) -> Vec<ExplainRow> {
    let any = Policy {
        issuers: vec![],
        audiences: vec![],
        leeway: config.leeway,
        require_sub: config.require_sub,
    };
    let parsed = match parse(token) {
        Ok(p) => p,
        Err(_) => return verify::explain(token, &[], &any, now),
    };
    let provider = match config.provider_for(&parsed.payload) {
        Ok(p) => p,
        // One provider: explain the whole token against it; its iss row says what is wrong.
        Err(_) if config.providers.len() == 1 => &config.providers[0],
        Err(r) => {
            let mut rows = verify::explain(token, &[], &any, now);
            for row in rows.iter_mut() {
                match row.check {
                    Check::Key => {
                        row.ok = None;
                        row.detail = "not checked: no provider accepts this issuer".into();
                    }
                    Check::Signature => {
                        row.ok = None;
                        row.detail = "not checked: no provider".into();
                    }
                    Check::Iss => {
                        row.ok = Some(false);
                        row.detail = r.detail.clone();
                    }
                    _ => {}
                }
            }
            return rows;
        }
    };
    let keys = verify::check_algorithm(&parsed).and_then(|alg| {
        with_candidates(provider, parsed.kid.as_deref(), alg, source, |c| {
            Ok(c.iter().map(|k| (*k).clone()).collect::<Vec<Key>>())
        })
    });
    let policy = config.policy(provider);
    let label = match &provider.remote {
        Some(src) => format!(
            "provider {} (keys from {})",
            quote(&provider.name()),
            src.label()
        ),
        None => format!("provider {}", quote(&provider.name())),
    };
    let mut rows = match &keys {
        Ok(k) => verify::explain(token, k, policy, now),
        Err(_) => verify::explain(token, &[], policy, now),
    };
    // The keys of the provider's sets that are ignored, and why: a token that does verify may
    // still come from a set that needs the issuer's attention.
    let fetched = provider
        .remote
        .as_ref()
        .and_then(|src| source.keys(src).ok());
    let ignored: Vec<String> = provider
        .ignored
        .iter()
        .chain(fetched.iter().flat_map(|set| set.ignored.iter()))
        .map(ToString::to_string)
        .collect();
    let ignored_note = match ignored.len() {
        0 => String::new(),
        n if n <= 3 => format!("; ignored in the key set: {}", ignored.join("; ")),
        n => format!(
            "; ignored in the key set: {}; and {} more (see jwks_status())",
            ignored[..3].join("; "),
            n - 3
        ),
    };
    for row in rows.iter_mut() {
        if row.check == Check::Key {
            match &keys {
                Ok(_) => row.detail = format!("{label}: {}{ignored_note}", row.detail),
                Err(r) if r.check == Check::Key => {
                    row.ok = Some(false);
                    row.detail = format!("{label}: {}", r.detail);
                }
                Err(_) => row.detail = format!("{label}: {}{ignored_note}", row.detail),
            }
        }
        if row.check == Check::Algorithm {
            if let Err(r) = &keys {
                if r.check == Check::Algorithm {
                    row.ok = Some(false);
                    row.detail = r.detail.clone();
                }
            }
        }
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(c.providers[0].issuers, vec!["https://acme.kinde.com"]);
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
        assert_eq!(c.providers[0].audiences, vec!["api"]);
        assert_eq!(c.providers[0].algorithms, Some(vec![Algorithm::RS256]));
        assert_eq!(c.providers[1].issuers, vec!["https://b.kinde.com"]);
        let claims: Map<String, Value> =
            serde_json::from_str(r#"{"iss":"https://b.kinde.com"}"#).unwrap();
        assert_eq!(
            c.provider_for(&claims).unwrap().issuers[0],
            "https://b.kinde.com"
        );
        let claims: Map<String, Value> =
            serde_json::from_str(r#"{"iss":"https://c.example"}"#).unwrap();
        assert_eq!(c.provider_for(&claims).unwrap_err().check, Check::Iss);
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
}
