//! The verification pipeline: one token, judged in the order a reader expects.
//!
//! ```text
//! parse → pick the provider → pick the keys → check the signature → check the claims
//! (token)   (by iss)            (kid, alg)      (the one crypto call)   (crate::rules)
//! ```
//!
//! [`run`] drives the stages and records what each found in a [`Trace`]. [`verify`],
//! [`verify_configured`] and [`identify_configured`] stop at the first failure;
//! [`crate::explain`] runs every stage it can and renders the same trace as `jwt_explain()`
//! rows. There is no second path: an explicit key (`verify_jwt(token, key)`) is judged by the
//! same stages, with the caller's keys in place of a provider.

use crate::alg::Alg;
use serde_json::{Map, Value};
use std::rc::Rc;

use crate::alg::verify_signature;
use crate::config::{Config, Provider};
use crate::error::{quote, Check, Error, Refusal};
use crate::fetch::RemoteSource;
use crate::keys::{Key, KeyKind, KeySet};
use crate::rules::{self, Policy, Verified, CLAIM_CHECKS};
use crate::token::{parse, parse_jws, Parsed};

/// Most keys tried for one token. A token names its key with `kid`; without one, every key of
/// the right type is a candidate, and this bounds the work an unsigned flood can cause.
pub const MAX_CANDIDATE_KEYS: usize = 8;

// ---------------------------------------------------------------------------------------------
// Entry points

/// Verify a token against keys and rules at time `now` (seconds since the epoch).
pub fn verify(token: &str, keys: &[Key], policy: &Policy, now: i64) -> Result<Verified, Refusal> {
    verify_expecting(token, keys, policy, now, None)
}

/// [`verify`], additionally requiring the header's `alg` to be `expected` (the explicit-key form,
/// where the caller names the algorithm).
pub fn verify_expecting(
    token: &str,
    keys: &[Key],
    policy: &Policy,
    now: i64,
    expected: Option<Alg>,
) -> Result<Verified, Refusal> {
    let trust = Trust::Explicit {
        keys,
        policy,
        expected,
    };
    run(token, parse(token), &trust, &mut NoRemote, now, false).verdict()
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
    let trust = Trust::Configured(config);
    Ok(run(token, parse(token), &trust, source, now, false).verdict()?)
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
    let parsed = match parse(token) {
        Ok(p) => p,
        Err(_) if crate::claims::is_anonymous_token(token, &config.anonymous_roles) => {
            return Ok(None)
        }
        Err(r) => return Err(r.into()),
    };
    if crate::claims::is_anonymous(&parsed.payload, &config.anonymous_roles) {
        return Ok(None);
    }
    if !config.has_keys() {
        return Err(Config::no_keys_error().into());
    }
    let trust = Trust::Configured(config);
    Ok(Some(
        run(token, Ok(parsed), &trust, source, now, false).verdict()?,
    ))
}

/// Check claims that a party the superuser trusts has verified (`request.jwt.claims` with
/// `kinde_rls.trust_request_claims` on): the provider is picked and every claim rule of its
/// tokens applies (`exp` with leeway, `nbf`, `iss`, `aud`, `sub`); there is no signature to
/// check. Returns `exp`.
pub fn check_trusted_claims(
    claims: &Map<String, Value>,
    config: &Config,
    now: i64,
) -> Result<i64, Refusal> {
    let provider = pick_provider(config, claims)?;
    rules::check_claims(claims, &provider.policy, now)
}

/// Verify a compact JWS whose payload is any bytes (`jws_verify`) with the caller's keys and
/// return the payload. The same stages as a token's — format and header rules, the algorithm,
/// the caller's algorithm, key selection, the signature — without the claim rules.
pub fn verify_jws(jws: &str, keys: &[Key], expected: Option<Alg>) -> Result<Vec<u8>, Refusal> {
    let j = parse_jws(jws)?;
    let alg = Alg::parse(&j.alg).map_err(|e| Refusal::new(Check::Algorithm, e))?;
    // No claim is judged: the policy is never read.
    let unused = Policy::default();
    let judge = Judge {
        provider: None,
        keys,
        policy: &unused,
        expected,
    };
    judge.allows(alg)?;
    let candidates = select_keys(&keys.iter().collect::<Vec<_>>(), alg, j.kid.as_deref())?;
    check_signature(j.signing_input, &j.signature, alg, &candidates)?;
    Ok(j.payload)
}

// ---------------------------------------------------------------------------------------------
// What a token is judged against, and what each stage found

/// What a token is judged against.
pub enum Trust<'c> {
    /// The configured providers: the token's `iss` picks one.
    Configured(&'c Config),
    /// Keys and rules the caller passed (`verify_jwt(token, key, algorithm)`); the header's
    /// `alg` must also be `expected`, when given.
    Explicit {
        keys: &'c [Key],
        policy: &'c Policy,
        expected: Option<Alg>,
    },
}

/// The keys and rules one token is judged by: a configured provider's, or the caller's.
#[derive(Clone, Copy)]
pub struct Judge<'c> {
    /// The configured provider; `None` for explicit keys.
    pub provider: Option<&'c Provider>,
    pub keys: &'c [Key],
    pub policy: &'c Policy,
    /// The caller's algorithm (explicit keys).
    expected: Option<Alg>,
}

/// What one stage found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Passed,
    Failed(Refusal),
    /// The stage could not run; why, in a few words.
    NotChecked(&'static str),
}

/// Every stage's outcome for one token, and what explaining a passed stage needs.
pub struct Trace<'t, 'c> {
    pub token: &'t str,
    pub parsed: Option<Parsed<'t>>,
    pub alg: Option<Alg>,
    /// The provider (or the caller's keys) the token was judged by.
    pub judge: Option<Judge<'c>>,
    /// How many keys could verify the token (the key stage).
    pub candidates: usize,
    /// The key whose signature verified (kept only when explaining).
    pub signer: Option<(KeyKind, Option<String>)>,
    /// Why keys of the provider's sets are ignored (kept only when explaining).
    pub ignored: Vec<String>,
    exp: Option<i64>,
    outcomes: [Outcome; Check::TOKEN.len()],
    /// Run every stage that can run (explain), rather than stop at the first failure.
    every: bool,
}

fn row(c: Check) -> usize {
    Check::TOKEN.iter().position(|x| *x == c).unwrap_or(0)
}

impl<'t, 'c> Trace<'t, 'c> {
    fn new(token: &'t str, every: bool) -> Self {
        Trace {
            token,
            parsed: None,
            alg: None,
            judge: None,
            candidates: 0,
            signer: None,
            ignored: Vec::new(),
            exp: None,
            outcomes: std::array::from_fn(|_| Outcome::NotChecked("not reached")),
            every,
        }
    }

    pub fn outcome(&self, c: Check) -> &Outcome {
        &self.outcomes[row(c)]
    }

    fn set(&mut self, c: Check, o: Outcome) {
        self.outcomes[row(c)] = o;
    }

    /// Record a failure; whether to go on (only when explaining).
    fn fail(&mut self, c: Check, r: Refusal) -> bool {
        self.set(c, Outcome::Failed(r));
        self.every
    }

    /// The verdict: the first failure in the order of the rows, or the verified token.
    pub fn verdict(self) -> Result<Verified, Refusal> {
        let Trace {
            parsed,
            exp,
            outcomes,
            ..
        } = self;
        let mut every_stage_passed = true;
        for o in outcomes {
            match o {
                Outcome::Failed(r) => return Err(r),
                Outcome::Passed => {}
                Outcome::NotChecked(_) => every_stage_passed = false,
            }
        }
        // Every stage ran and passed, so there is a parsed token and an exp; fail closed all the
        // same if not.
        match (parsed, exp) {
            (Some(p), Some(exp)) if every_stage_passed => Ok(Verified {
                header: p.header,
                registered: p.payload,
                payload: p.payload_json,
                exp,
            }),
            _ => Err(Refusal::new(
                Check::Format,
                "the token was not judged by every check",
            )),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The stages, in order

/// Judge `token` (already parsed, or the parse refusal): every stage in order, stopping at the
/// first failure unless `every` (explain) asks for all that can run.
pub fn run<'t, 'c>(
    token: &'t str,
    parsed: Result<Parsed<'t>, Refusal>,
    trust: &Trust<'c>,
    source: &mut dyn KeySource,
    now: i64,
    every: bool,
) -> Trace<'t, 'c> {
    let mut t = Trace::new(token, every);

    // 1. Parse: three base64url segments of JSON, a header we understand, a claim map.
    let p = match parsed {
        Ok(p) => p,
        Err(e) => {
            for c in Check::TOKEN {
                t.set(c, Outcome::NotChecked("the token could not be parsed"));
            }
            if e.check != Check::Format {
                t.set(Check::Format, Outcome::Passed);
            }
            t.set(e.check, Outcome::Failed(e));
            return t;
        }
    };
    t.set(Check::Format, Outcome::Passed);

    // 2. The algorithm the header names: one we verify, never `none`.
    match Alg::parse(&p.alg) {
        Ok(a) => {
            t.alg = Some(a);
            t.set(Check::Algorithm, Outcome::Passed);
        }
        Err(e) => {
            if !t.fail(Check::Algorithm, Refusal::new(Check::Algorithm, e)) {
                return t;
            }
            t.set(Check::Key, Outcome::NotChecked("algorithm refused"));
            t.set(Check::Signature, Outcome::NotChecked("algorithm refused"));
        }
    }

    // 3. Pick the provider by `iss`, so that one provider's keys never verify another's tokens.
    let judge = match trust {
        Trust::Explicit {
            keys,
            policy,
            expected,
        } => Judge {
            provider: None,
            keys,
            policy,
            expected: *expected,
        },
        Trust::Configured(config) => match pick_provider(config, &p.payload) {
            Ok(provider) => Judge::of(provider),
            Err(r) => {
                if !t.fail(Check::Iss, r) {
                    return t;
                }
                match config.providers.as_slice() {
                    // One provider: explain the whole token against it; its iss row says what
                    // is wrong.
                    [only] => Judge::of(only),
                    _ => {
                        t.set(
                            Check::Key,
                            Outcome::NotChecked("no provider accepts this issuer"),
                        );
                        t.set(Check::Signature, Outcome::NotChecked("no provider"));
                        check_claims(&mut t, &p.payload, &config.defaults, now);
                        t.parsed = Some(p);
                        return t;
                    }
                }
            }
        },
    };
    t.judge = Some(judge);

    // 4 and 5. Pick the keys that may verify this token, and check its signature with them.
    if let Some(alg) = t.alg {
        if !keys_and_signature(&mut t, &p, judge, alg, source) {
            return t;
        }
    }
    if every && t.ignored.is_empty() {
        // Explaining a token whose keys were not looked at: the provider's sets may still hold
        // keys that need the issuer's attention.
        if let Some(provider) = judge.provider {
            let fetched = judge.remote().and_then(|src| source.keys(src).ok());
            t.ignored = ignored_in(provider, fetched.as_deref());
        }
    }

    // 6. The claims, by the provider's rules.
    check_claims(&mut t, &p.payload, judge.policy, now);
    t.parsed = Some(p);
    t
}

/// The provider for a token's `iss`: the one that lists it, or the one that accepts any issuer.
pub fn pick_provider<'c>(
    config: &'c Config,
    claims: &Map<String, Value>,
) -> Result<&'c Provider, Refusal> {
    let iss = rules::iss_of(claims)?;
    if let Some(p) = config
        .providers
        .iter()
        .find(|p| p.policy.issuers.is_empty())
    {
        return Ok(p);
    }
    if let Some(i) = iss {
        if let Some(p) = config
            .providers
            .iter()
            .find(|p| p.policy.issuers.iter().any(|x| x == i))
        {
            return Ok(p);
        }
    }
    let accepted: Vec<String> = config
        .providers
        .iter()
        .flat_map(|p| p.policy.issuers.iter().cloned())
        .collect();
    Err(rules::iss_refusal(iss, &accepted))
}

impl<'c> Judge<'c> {
    fn of(provider: &'c Provider) -> Self {
        Judge {
            provider: Some(provider),
            keys: &provider.keys,
            policy: &provider.policy,
            expected: None,
        }
    }

    fn remote(&self) -> Option<&'c RemoteSource> {
        self.provider.and_then(|p| p.remote.as_ref())
    }

    /// The algorithm allow-list: the caller's algorithm, or the provider's `algorithms`.
    fn allows(&self, alg: Alg) -> Result<(), Refusal> {
        if let Some(e) = self.expected.filter(|e| *e != alg) {
            return Err(Refusal::new(
                Check::Algorithm,
                format!(
                    "the token's alg is {}, the caller expects {}",
                    alg.name(),
                    e.name()
                ),
            ));
        }
        match self.provider.and_then(|p| p.algorithms.as_ref()) {
            Some(allowed) if !allowed.contains(&alg) => Err(Refusal::new(
                Check::Algorithm,
                format!(
                    "provider {} accepts only {}",
                    quote(&self.provider.map(Provider::name).unwrap_or_default()),
                    allowed
                        .iter()
                        .map(|a| a.name())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )),
            _ => Ok(()),
        }
    }

    /// The refusal when there is no key at all: none configured, or the fetch failed.
    fn no_keys(&self, fetch_error: Option<&str>) -> Refusal {
        match (fetch_error, self.provider, self.remote()) {
            (Some(e), Some(p), Some(src)) => Refusal::new(
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

    /// A refusal for a `kid` the keys do not have says so plainly when a key set held that
    /// `kid` but ignored it (a weak, malformed or private key): the issuer's problem, not the
    /// token's.
    fn with_ignored(&self, r: Refusal, fetched: Option<&KeySet>, kid: Option<&str>) -> Refusal {
        let (Some(p), Some(kid)) = (self.provider, kid.filter(|_| r.check == Check::Key)) else {
            return r;
        };
        let found = crate::keys::ignored_kid(&p.ignored, kid)
            .map(|i| (i, "configured keys".to_string()))
            .or_else(|| {
                Some((
                    fetched?.ignored_kid(kid)?,
                    self.remote()?.label().to_string(),
                ))
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
}

/// Stages 4 and 5. The candidates are the provider's own keys and its fetched set, borrowed,
/// not copied. When the token names a `kid` nobody has, the issuer may have rotated its keys:
/// refetch once (rate-limited by the source) and select again. Whether to go on.
fn keys_and_signature(
    t: &mut Trace,
    p: &Parsed,
    judge: Judge,
    alg: Alg,
    source: &mut dyn KeySource,
) -> bool {
    if let Err(r) = judge.allows(alg) {
        t.set(
            Check::Key,
            Outcome::NotChecked("the algorithm does not fit any key"),
        );
        t.set(Check::Signature, Outcome::NotChecked("no key"));
        return t.fail(Check::Algorithm, r);
    }
    let kid = p.kid.as_deref();
    let (fetched, fetch_error) = match judge.remote() {
        Some(src) => match source.keys(src) {
            Ok(k) => (Some(k), None),
            Err(e) => (None, Some(e)),
        },
        None => (None, None),
    };
    fn with<'k>(own: &'k [Key], set: Option<&'k KeySet>) -> Vec<&'k Key> {
        own.iter()
            .chain(set.into_iter().flat_map(|s| s.keys.iter()))
            .collect()
    }
    let mut fresh: Option<Rc<KeySet>> = None;
    let own_and_fetched = with(judge.keys, fetched.as_deref());
    let picked = if own_and_fetched.is_empty() {
        Err(judge.no_keys(fetch_error.as_deref()))
    } else {
        match select_keys(&own_and_fetched, alg, kid) {
            Err(r) if r.check == Check::Key && kid.is_some() => match judge.remote() {
                None => Err(judge.with_ignored(r, None, kid)),
                Some(src) => {
                    fresh = source.refresh_for_unknown_kid(src);
                    match fresh.as_deref() {
                        None => Err(judge.with_ignored(r, fetched.as_deref(), kid)),
                        Some(f) => select_keys(&with(judge.keys, Some(f)), alg, kid)
                            .map_err(|r| judge.with_ignored(r, Some(f), kid)),
                    }
                }
            },
            other => other,
        }
    };
    if t.every {
        if let Some(provider) = judge.provider {
            t.ignored = ignored_in(provider, fresh.as_deref().or(fetched.as_deref()));
        }
    }
    let candidates = match picked {
        Ok(c) => c,
        Err(r) => {
            // Key selection reports a key problem, or an algorithm no key fits.
            if r.check == Check::Algorithm {
                t.set(
                    Check::Key,
                    Outcome::NotChecked("the algorithm does not fit any key"),
                );
            }
            t.set(Check::Signature, Outcome::NotChecked("no key"));
            let check = r.check;
            return t.fail(check, r);
        }
    };
    t.candidates = candidates.len();
    t.set(Check::Key, Outcome::Passed);
    match check_signature(p.signing_input, &p.signature, alg, &candidates) {
        Ok(k) => {
            if t.every {
                t.signer = Some((k.kind, k.kid.clone()));
            }
            t.set(Check::Signature, Outcome::Passed);
            true
        }
        Err(r) => t.fail(Check::Signature, r),
    }
}

/// Why keys of a provider's own set and of its fetched set are ignored, for `jwt_explain()`.
fn ignored_in(provider: &Provider, fetched: Option<&KeySet>) -> Vec<String> {
    provider
        .ignored
        .iter()
        .chain(fetched.iter().flat_map(|s| s.ignored.iter()))
        .map(ToString::to_string)
        .collect()
}

/// Choose the keys that may verify this token. A `kid` that matches selects those keys; a `kid`
/// that matches none may still be verified by keys that have no `kid` (a PEM or a secret).
pub fn select_keys<'k>(
    keys: &[&'k Key],
    alg: Alg,
    kid: Option<&str>,
) -> Result<Vec<&'k Key>, Refusal> {
    if keys.is_empty() {
        return Err(
            Refusal::new(Check::Key, "no verification key is configured")
                .because("no key configured"),
        );
    }
    let permitted = |k: &&Key| k.fits(alg);
    let first_reason = |pool: &[&Key]| {
        pool.first()
            .and_then(|k| k.permits(alg).err())
            .unwrap_or_else(|| format!("no configured key can verify {}", alg.name()))
    };
    let fit: Vec<&Key> = if let Some(kid) = kid {
        let matching: Vec<&Key> = keys
            .iter()
            .copied()
            .filter(|k| k.kid.as_deref() == Some(kid))
            .collect();
        if !matching.is_empty() {
            let mut fit: Vec<&Key> = matching.iter().copied().filter(permitted).collect();
            if fit.is_empty() {
                return Err(Refusal::new(Check::Algorithm, first_reason(&matching)));
            }
            // The same key listed twice (a pinned copy of a published key) is one key; two
            // different keys under one kid leave it to chance which one the token meant
            // (RFC 7517 §4.5 allows one kid for keys of different types, which never both fit).
            let mut distinct: Vec<&Key> = Vec::with_capacity(fit.len());
            for k in fit {
                if !distinct.iter().any(|d| d.data == k.data) {
                    distinct.push(k);
                }
            }
            if distinct.len() > 1 {
                return Err(Refusal::new(
                    Check::Key,
                    format!(
                        "kid {} names {} different keys that could verify {}; a kid must name one key",
                        quote(kid),
                        distinct.len(),
                        alg.name()
                    ),
                )
                .because("the kid is ambiguous"));
            }
            fit = distinct;
            fit
        } else {
            let fit: Vec<&Key> = keys
                .iter()
                .copied()
                .filter(|k| k.kid.is_none())
                .filter(permitted)
                .collect();
            if fit.is_empty() {
                let mut known: Vec<String> = keys
                    .iter()
                    .filter_map(|k| k.kid.as_deref())
                    .map(quote)
                    .collect();
                known.truncate(10);
                return Err(Refusal::new(
                    Check::Key,
                    format!(
                        "no configured key has kid {} (known kids: {})",
                        quote(kid),
                        if known.is_empty() {
                            "none".to_string()
                        } else {
                            known.join(", ")
                        }
                    ),
                )
                .because("no key with this kid"));
            }
            fit
        }
    } else {
        let fit: Vec<&Key> = keys.iter().copied().filter(permitted).collect();
        if fit.is_empty() {
            // Prefer the reason of a key of the token's own family (e.g. "HS512 needs a secret
            // of at least 64 bytes") over a generic one.
            let same_family: Vec<&Key> = keys
                .iter()
                .copied()
                .filter(|k| {
                    k.kind
                        .algorithms()
                        .iter()
                        .any(|a| a.family() == alg.family())
                })
                .collect();
            let pool: Vec<&Key> = if same_family.is_empty() {
                keys.to_vec()
            } else {
                same_family
            };
            return Err(Refusal::new(
                Check::Algorithm,
                if pool.len() == 1 {
                    first_reason(&pool)
                } else {
                    format!("no configured key can verify {}", alg.name())
                },
            ));
        }
        fit
    };
    if fit.len() > MAX_CANDIDATE_KEYS {
        return Err(Refusal::new(
            Check::Key,
            format!(
                "{} keys could verify this token; it must name its key with kid",
                fit.len()
            ),
        )
        .because("too many candidate keys"));
    }
    Ok(fit)
}

/// Stage 5, the one cryptographic call: does one of the candidates verify the signature over
/// `signing_input`?
pub fn check_signature<'k>(
    signing_input: &str,
    signature: &[u8],
    alg: Alg,
    candidates: &[&'k Key],
) -> Result<&'k Key, Refusal> {
    if signature.is_empty() {
        return Err(Refusal::new(Check::Signature, "the token has no signature"));
    }
    if let Some(key) = candidates
        .iter()
        .find(|k| verify_signature(alg, &k.data, signing_input.as_bytes(), signature))
    {
        return Ok(key);
    }
    Err(Refusal::new(
        Check::Signature,
        format!(
            "the {} signature does not verify with {}",
            alg.name(),
            if candidates.len() == 1 {
                match &candidates[0].kid {
                    Some(k) => format!("the key with kid {}", quote(k)),
                    None => format!("the configured {}", candidates[0].kind.name()),
                }
            } else {
                format!("any of the {} candidate keys", candidates.len())
            }
        ),
    ))
}

/// Stage 6: the claim rules, in the order of their rows. An `iss` the provider stage already
/// refused is not judged again.
fn check_claims(t: &mut Trace, claims: &Map<String, Value>, policy: &Policy, now: i64) {
    for c in CLAIM_CHECKS {
        if c == Check::Iss && matches!(t.outcome(c), Outcome::Failed(_)) && t.judge.is_none() {
            continue;
        }
        let r = if c == Check::Exp {
            rules::check_exp(claims, policy, now).map(|e| t.exp = Some(e))
        } else {
            rules::check_claim(c, claims, policy, now)
        };
        match r {
            Ok(()) => t.set(c, Outcome::Passed),
            Err(r) => {
                if !t.fail(c, r) {
                    return;
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Keys behind a URL

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::explain::explain;

    const SECRET: &str = "kinde-client-secret-0123456789abcdefghijklmnop";

    /// An HS256 token over this exact payload text.
    fn hs256(payload: &str) -> String {
        jws(r#"{"alg":"HS256","typ":"JWT"}"#, payload.as_bytes())
    }

    /// A validly signed payload whose claim map cannot be built is refused at the format check,
    /// by verify and by explain alike; one that passes always has a claim map.
    #[test]
    fn a_payload_without_a_claim_map_is_refused_at_format() {
        let (keys, _) = crate::explicit_keys(SECRET, Some("HS256")).unwrap();
        let policy = Policy {
            audiences: vec!["api".into()],
            ..Policy::default()
        };
        let ok = hs256(r#"{"sub":"kp_1","exp":2000,"aud":"api","roles":[{"key":"admin"}]}"#);
        let v = verify(&ok, &keys, &policy, 1000).unwrap();
        assert!(crate::claims::has_role(&v.claims().unwrap(), "admin"));
        let deep = format!("{}1{}", "[".repeat(200), "]".repeat(200));
        for bad in [
            r#"{"sub":"kp_1","exp":2000,"aud":"api","x":1e400}"#.to_string(),
            format!(r#"{{"sub":"kp_1","exp":2000,"aud":"api","x":{deep}}}"#),
            r#"{"sub":"kp_1","exp":2000,"aud":"api","x":"\udc00"}"#.to_string(),
        ] {
            let t = hs256(&bad);
            assert_eq!(
                verify(&t, &keys, &policy, 1000).unwrap_err().check,
                Check::Format,
                "{bad}"
            );
            let rows = explain(&t, &keys, &policy, 1000);
            assert_eq!((rows[0].check, rows[0].ok), (Check::Format, Some(false)));
        }
        // A signature that is not base64url: a format refusal, and explain's format row says so.
        let t = format!("{}!", &ok[..ok.len() - 1]);
        assert_eq!(
            verify(&t, &keys, &policy, 1000).unwrap_err().check,
            Check::Format
        );
        let rows = explain(&t, &keys, &policy, 1000);
        assert_eq!((rows[0].check, rows[0].ok), (Check::Format, Some(false)));
        assert!(rows[0].detail.contains("signature"), "{}", rows[0].detail);
        // serde_json's raw-value member name smuggles no audience and no role.
        let t = hs256(
            r#"{"sub":"kp_1","exp":2000,"aud":{"$serde_json::private::RawValue":"\"api\""}}"#,
        );
        assert_eq!(
            verify(&t, &keys, &policy, 1000).unwrap_err().check,
            Check::Aud
        );
        let t = hs256(
            r#"{"sub":"kp_1","exp":2000,"aud":"api","roles":{"$serde_json::private::RawValue":"[\"admin\"]"}}"#,
        );
        let v = verify(&t, &keys, &policy, 1000).unwrap();
        assert!(!crate::claims::has_role(&v.claims().unwrap(), "admin"));
    }

    /// A JWS over any payload bytes, HS256 with [`SECRET`], with this header.
    fn jws(header: &str, payload: &[u8]) -> String {
        let input = format!(
            "{}.{}",
            crate::token::b64_encode(header.as_bytes()),
            crate::token::b64_encode(payload)
        );
        let key = jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes());
        let sig =
            jsonwebtoken::crypto::sign(input.as_bytes(), &key, jsonwebtoken::Algorithm::HS256)
                .unwrap();
        format!("{input}.{sig}")
    }

    #[test]
    fn jws_payloads_are_any_bytes_and_no_claim_is_judged() {
        let (keys, _) = crate::explicit_keys(SECRET, None).unwrap();
        for payload in [&b""[..], b"foo", &[0u8; 20], &[0xff, 0xfe, 0x00]] {
            let t = jws(r#"{"alg":"HS256"}"#, payload);
            assert_eq!(verify_jws(&t, &keys, None).unwrap(), payload);
            assert_eq!(verify_jws(&t, &keys, Some(Alg::HS256)).unwrap(), payload);
            let e = verify_jws(&t, &keys, Some(Alg::HS512)).unwrap_err();
            assert_eq!(e.check, Check::Algorithm);
        }
        // An expired JWT is only bytes here.
        let t = jws(r#"{"alg":"HS256"}"#, br#"{"exp":1}"#);
        assert_eq!(verify_jws(&t, &keys, None).unwrap(), br#"{"exp":1}"#);
        // A token's payload may not be empty.
        let e = verify(
            &jws(r#"{"alg":"HS256"}"#, b""),
            &keys,
            &Policy::default(),
            0,
        );
        assert_eq!(e.unwrap_err().check, Check::Format);
    }

    #[test]
    fn jws_forms_and_headers_that_are_refused() {
        let (keys, _) = crate::explicit_keys(SECRET, None).unwrap();
        let good = jws(r#"{"alg":"HS256"}"#, b"foo");
        let (input, sig) = good.rsplit_once('.').unwrap();
        let (h, p) = input.split_once('.').unwrap();
        let cases: Vec<(String, Check, &str)> = vec![
            (
                format!(r#"{{"payload":"{p}","protected":"{h}","signature":"{sig}"}}"#),
                Check::Format,
                "JSON serialization",
            ),
            (
                format!(r#"{{"a":1}}.{p}.{sig}"#),
                Check::Format,
                "header is not unpadded base64url",
            ),
            (format!("{input}."), Check::Signature, "no signature"),
            (format!("{input}.{sig}."), Check::Format, "4"),
            (format!("{h}.{p}.{sig}.x.y"), Check::Format, "JWE"),
            (format!("{h}.{p}?.{sig}"), Check::Format, "base64url"),
            (
                format!(".{p}.{sig}"),
                Check::Format,
                "header segment is empty",
            ),
            (
                jws(r#"{"alg":"none"}"#, b"foo"),
                Check::Algorithm,
                "never accepted",
            ),
            (
                jws(r#"{"alg":"HS256","b64":false,"crit":["b64"]}"#, b"foo"),
                Check::Format,
                "critical",
            ),
            (
                jws(r#"{"alg":"HS256","b64":false}"#, b"foo"),
                Check::Format,
                "RFC 7797",
            ),
            (
                jws(r#"{"alg":"HS256","crit":["exp"]}"#, b"foo"),
                Check::Format,
                "critical",
            ),
            (
                jws(r#"{"alg":"HS256"}"#, b"foo").replace(sig, "x"),
                Check::Format,
                "signature",
            ),
            (format!("{input}.{}", &sig[1..]), Check::Format, "signature"),
            (
                format!("{}.{p}.{sig}", h.replace('e', "f")),
                Check::Format,
                "header",
            ),
            (
                "a".repeat(crate::token::MAX_JWS_BYTES + 1),
                Check::Format,
                "limit",
            ),
        ];
        for (t, check, words) in cases {
            let e = verify_jws(&t, &keys, None).unwrap_err();
            assert_eq!(e.check, check, "{words}: {}", e.detail);
            assert!(e.detail.contains(words), "{words}: {}", e.detail);
        }
        // b64: true is the default spelled out.
        let t = jws(r#"{"alg":"HS256","b64":true}"#, b"foo");
        assert_eq!(verify_jws(&t, &keys, None).unwrap(), b"foo");
    }

    #[test]
    fn a_kid_naming_two_different_keys_is_ambiguous() {
        let oct = |k: &[u8]| {
            format!(
                r#"{{"kty":"oct","kid":"k","k":"{}"}}"#,
                crate::token::b64_encode(k)
            )
        };
        let ours = oct(SECRET.as_bytes());
        let t = jws(r#"{"alg":"HS256","kid":"k"}"#, b"foo");
        let two = format!(r#"{{"keys":[{ours},{},{ours}]}}"#, oct(&[1u8; 32]));
        let (keys, _) = crate::explicit_keys(&two, None).unwrap();
        let e = verify_jws(&t, &keys, None).unwrap_err();
        assert_eq!(e.check, Check::Key);
        assert!(e.detail.contains("names 2 different keys"), "{}", e.detail);
        // The same key twice is one key.
        let same = format!(r#"{{"keys":[{ours},{ours}]}}"#);
        let (keys, _) = crate::explicit_keys(&same, None).unwrap();
        assert_eq!(verify_jws(&t, &keys, None).unwrap(), b"foo");
    }

    #[test]
    fn es512_signs_and_verifies_end_to_end() {
        use aws_lc_rs::signature::{EcdsaKeyPair, KeyPair, ECDSA_P521_SHA512_FIXED_SIGNING};
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P521_SHA512_FIXED_SIGNING, &rng).unwrap();
        let pair =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P521_SHA512_FIXED_SIGNING, pkcs8.as_ref()).unwrap();
        let point = pair.public_key().as_ref();
        let b64 =
            base64::Engine::encode(&base64::engine::general_purpose::STANDARD, pkcs8.as_ref());
        let private_pem =
            format!("-----BEGIN PRIVATE KEY-----\n{b64}\n-----END PRIVATE KEY-----\n");
        let jwk = format!(
            r#"{{"kty":"EC","crv":"P-521","x":"{}","y":"{}"}}"#,
            crate::token::b64_encode(&point[1..67]),
            crate::token::b64_encode(&point[67..])
        );
        let claims: Map<String, Value> =
            serde_json::from_str(r#"{"sub":"kp_1","exp":2000}"#).unwrap();
        let t = crate::sign::sign(&claims, &private_pem, "ES512", None).unwrap();
        assert!(t.starts_with(&crate::token::b64_encode(br#"{"alg":"ES512","typ":"JWT"}"#)));
        let (keys, alg) = crate::explicit_keys(&jwk, Some("ES512")).unwrap();
        assert_eq!(alg, Some(Alg::ES512));
        let policy = Policy {
            require_sub: false,
            ..Policy::default()
        };
        assert_eq!(verify(&t, &keys, &policy, 1000).unwrap().exp, 2000);
        assert_eq!(
            verify_jws(&t, &keys, None).unwrap(),
            br#"{"exp":2000,"sub":"kp_1"}"#
        );
        // A P-521 key cannot sign ES256 or ES384, and an ES512 signature is 132 bytes.
        for other in ["ES256", "ES384"] {
            let e = crate::sign::sign(&claims, &private_pem, other, None).unwrap_err();
            assert!(e.message.contains("curve"), "{}", e.message);
        }
        let sig = crate::token::b64_decode(t.rsplit('.').next().unwrap(), "signature").unwrap();
        assert_eq!(sig.len(), 132);
    }
}
