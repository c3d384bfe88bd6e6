//! kinde_rls: verify Kinde (or any OpenID Connect) JWTs inside PostgreSQL and hand the verified
//! identity to row-level-security policies.
//!
//! The SQL functions here are thin: verification, keys and claim logic live in the
//! `kinde_rls_core` crate; settings in [`gucs`]; the request identity and its caches in
//! [`identity`]; fetched keys in [`jwks`]; the SQLSTATE mapping in [`errors`]; how arguments
//! and `jsonb` results cross into Rust in [`args`] and [`jsonb`].

#![warn(clippy::undocumented_unsafe_blocks)]

use pgrx::prelude::*;

mod args;
mod audit;
mod check;
mod errors;
mod gucs;
mod identity;
mod jsonb;
mod jwks;
#[cfg(feature = "pg18")]
mod oauth;
mod stats;

use args::{arg_text, obj_or_raise, token_arg, Jsonb, Text};
use jsonb::RawJsonB;
use kinde_rls_core::{claims, explicit_keys, Error, Policy};

::pgrx::pg_module_magic!(name, version);

#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    gucs::init();
    jwks::init();
    // SAFETY: registers a callback with the signature PostgreSQL calls it with, once per load.
    unsafe { pg_sys::RegisterXactCallback(Some(at_transaction_end), std::ptr::null_mut()) };
}

/// The per-row fast path's hits, counted at the end of each transaction.
#[pg_guard]
unsafe extern "C-unwind" fn at_transaction_end(
    _event: pg_sys::XactEvent::Type,
    _arg: *mut std::ffi::c_void,
) {
    identity::flush_stats();
}

// ---------------------------------------------------------------------------------------------
// Verification

/// Verify a token against the configured keys and rules; returns its claims.
#[pg_extern(stable, strict, parallel_safe)]
fn verify_jwt(token: Text) -> RawJsonB {
    let id = identity::verify_configured(token_arg(&token)).unwrap_or_else(|e| errors::raise(&e));
    RawJsonB::new(id.payload_json())
}

/// Verify a token with an explicit key (HMAC secret, PEM public key, or JWK/JWKS JSON text).
/// Checks the signature and the time claims (`exp` required, `nbf` honoured).
#[pg_extern(name = "verify_jwt", stable, strict, parallel_safe)]
fn verify_jwt_with_key(token: Text, key: Text, algorithm: default!(Text, "'HS256'")) -> RawJsonB {
    let token = token_arg(&token).to_owned();
    let (keys, alg) = explicit_keys(
        arg_text(&key, "key"),
        Some(arg_text(&algorithm, "algorithm")),
    )
    .unwrap_or_else(|e| errors::config(&e));
    let policy = Policy {
        issuers: vec![],
        audiences: vec![],
        leeway: i64::from(gucs::LEEWAY.get()),
        require_sub: false,
    };
    let now = identity::now();
    let verified = errors::guarded(move || {
        kinde_rls_core::verify_expecting(&token, &keys, &policy, now, alg).map_err(Error::from)
    })
    .unwrap_or_else(|e| errors::raise(&e));
    RawJsonB::new(&verified.payload)
}

/// Verify a compact JWS's signature with an explicit key and return its payload, whatever bytes
/// it holds: no claim rules. The key (HMAC secret, PEM public key, JWK or JWKS JSON text)
/// decides the algorithm family; the header's `alg` must fit it.
#[pg_extern(immutable, strict, parallel_safe)]
fn jws_verify(jws: Text, key: Text) -> Vec<u8> {
    verify_jws(&jws, &key, None)
}

/// [`jws_verify`], also requiring the header's `alg` to be `algorithm`.
#[pg_extern(name = "jws_verify", immutable, strict, parallel_safe)]
fn jws_verify_with_algorithm(jws: Text, key: Text, algorithm: Text) -> Vec<u8> {
    verify_jws(&jws, &key, Some(&algorithm))
}

fn verify_jws(jws: &Text, key: &Text, algorithm: Option<&Text>) -> Vec<u8> {
    let jws = token_arg(jws);
    let key = arg_text(key, "key");
    let algorithm = algorithm.map(|a| arg_text(a, "algorithm"));
    errors::guarded(move || {
        let (keys, alg) = explicit_keys(key, algorithm)?;
        Ok(kinde_rls_core::verify_jws(jws, &keys, alg)?)
    })
    .unwrap_or_else(|e| errors::raise(&e))
}

/// Sign claims into a compact JWS. For tests, demos and the HS256 re-signing flow.
#[pg_extern(volatile, strict, parallel_safe)]
fn sign_jwt(claims: Jsonb, key: Text, algorithm: default!(Text, "'HS256'")) -> String {
    let claims = obj_or_raise(claims, "claims");
    let (key, algorithm) = (arg_text(&key, "key"), arg_text(&algorithm, "algorithm"));
    kinde_rls_core::sign::sign(&claims, key, algorithm, None).unwrap_or_else(|e| errors::config(&e))
}

/// Sign with extra protected-header members, e.g. `'{"kid": "k1"}'`.
#[pg_extern(name = "sign_jwt", volatile, strict, parallel_safe)]
fn sign_jwt_with_header(claims: Jsonb, key: Text, algorithm: Text, header: Jsonb) -> String {
    let claims = obj_or_raise(claims, "claims");
    let header = obj_or_raise(header, "header");
    let (key, algorithm) = (arg_text(&key, "key"), arg_text(&algorithm, "algorithm"));
    kinde_rls_core::sign::sign(&claims, key, algorithm, Some(&header))
        .unwrap_or_else(|e| errors::config(&e))
}

/// `{"header": …, "payload": …}` of a token, WITHOUT verifying anything. For debugging only.
#[pg_extern(immutable, strict, parallel_safe)]
fn jwt_decode_unverified(token: Text) -> RawJsonB {
    let token = token_arg(&token);
    let parts = kinde_rls_core::token::decode_parts(token).unwrap_or_else(|r| errors::refuse(&r));
    // As sent (numbers unrounded), like verify_jwt() returns the payload.
    RawJsonB::new(&format!(
        r#"{{"header": {}, "payload": {}}}"#,
        parts.header_json, parts.payload_json
    ))
}

/// One row per rule, against the current settings: why a token would be accepted or refused.
#[pg_extern(stable, strict, parallel_safe)]
fn jwt_explain(
    token: Text,
) -> TableIterator<
    'static,
    (
        name!(check, String),
        name!(ok, Option<bool>),
        name!(detail, String),
    ),
> {
    // A tool for finding out what is wrong: a configuration mistake is its answer (a `config`
    // row naming the setting, with the hint), not an error.
    let config = match identity::current_config() {
        Ok(c) => c,
        Err(e) => {
            return TableIterator::new(vec![("config".to_string(), Some(false), config_text(&e))]);
        }
    };
    let now = identity::now();
    // Bytes that are not UTF-8 are explained too: they fail the format row.
    let token = String::from_utf8_lossy(token.0).trim().to_owned();
    let _ = jwks::take_events();
    let rows = errors::guarded(move || {
        Ok(kinde_rls_core::explain_configured(
            &token,
            &config,
            now,
            &mut jwks::Source::default(),
        ))
    })
    .unwrap_or_default();
    // Keys fetched to explain are counted under no issuer.
    identity::count_fetches(0, jwks::take_events());
    TableIterator::new(
        rows.into_iter()
            .map(|r| (r.check.as_str().to_string(), r.ok, r.detail))
            .collect::<Vec<_>>(),
    )
}

// ---------------------------------------------------------------------------------------------
// Keys fetched from issuers

/// Fetch every configured key URL now, whatever the cache holds; returns the number of keys
/// loaded. Failures are WARNINGs; if every fetch fails, an ERROR (SQLSTATE 08000).
#[pg_extern(volatile, parallel_unsafe)]
fn refresh_jwks() -> i32 {
    let sources = remote_sources();
    if sources.is_empty() {
        errors::config(&kinde_rls_core::ConfigError::new(
            "kinde_rls.domain",
            "no key URL is configured: there is nothing to refresh",
            "Set kinde_rls.domain, kinde_rls.jwks_url or kinde_rls.providers (with jwks_url or domain) as a superuser.",
        ));
    }
    let mut loaded = 0usize;
    let mut failures = Vec::new();
    for (name, src) in &sources {
        let _ = jwks::take_events();
        let result = jwks::refresh(src);
        identity::count_fetches(stats::row_of(Some(name)), jwks::take_events());
        match result {
            Ok(n) => loaded += n,
            Err(e) => {
                pgrx::warning!(
                    "kinde_rls: could not fetch the keys of {}: {e}",
                    src.label()
                );
                failures.push(format!("{}: {e}", src.label()));
            }
        }
    }
    if failures.len() == sources.len() {
        errors::fetch_failed(&failures.join("; "));
    }
    i32::try_from(loaded).unwrap_or(i32::MAX)
}

/// One row per key source of the current configuration: what is cached and how it went, the
/// keys of the set that are ignored (and why), and what is unsafe about the provider's rules.
#[pg_extern(volatile, parallel_restricted)]
#[allow(clippy::type_complexity)]
fn jwks_status() -> TableIterator<
    'static,
    (
        name!(issuer, Option<String>),
        name!(source, String),
        name!(keys, i32),
        name!(fetched_at, Option<TimestampWithTimeZone>),
        name!(expires_at, Option<TimestampWithTimeZone>),
        name!(last_error, Option<String>),
        name!(ignored_keys, Vec<String>),
        name!(warning, Option<String>),
    ),
> {
    let config = match identity::current_config() {
        Ok(c) => c,
        // Reported, not raised: this is where a user looks to see what is wrong.
        Err(e) => {
            return TableIterator::new(vec![(
                None,
                "configuration".to_string(),
                0,
                None,
                None,
                Some(config_text(&e)),
                Vec::new(),
                None,
            )]);
        }
    };
    let mut rows = Vec::new();
    for p in &config.providers {
        let warning = p.audience_warning();
        if !p.keys.is_empty() || !p.ignored.is_empty() {
            let n = i32::try_from(p.keys.len()).unwrap_or(i32::MAX);
            rows.push((
                issuer_label(p),
                "configured".to_string(),
                n,
                None,
                None,
                None,
                p.ignored.iter().map(ToString::to_string).collect(),
                warning.clone(),
            ));
        }
        if let Some(src) = &p.remote {
            let st = jwks::status(src);
            let warning = match (warning.clone(), jwks::slot_warning(src)) {
                (Some(a), Some(b)) => Some(format!("{a}; {b}")),
                (a, b) => a.or(b),
            };
            rows.push((
                issuer_label(p),
                src.label().to_string(),
                st.keys,
                st.fetched_at.map(pgrx::datetime::to_timestamp),
                st.expires_at.map(pgrx::datetime::to_timestamp),
                st.last_error,
                st.ignored,
                warning,
            ));
        }
    }
    TableIterator::new(rows)
}

pgrx::extension_sql!(
    "REVOKE EXECUTE ON FUNCTION refresh_jwks() FROM PUBLIC;",
    name = "revoke_refresh_jwks",
    requires = [refresh_jwks],
);

// ---------------------------------------------------------------------------------------------
// Operating: statistics and the health check

/// What the verifier did, per configured issuer (see `stats.rs`): the `kinde_rls_stats` view.
#[pg_extern(volatile, parallel_restricted)]
#[allow(clippy::type_complexity)]
fn kinde_rls_stats() -> TableIterator<
    'static,
    (
        name!(issuer, Option<String>),
        name!(verified, i64),
        name!(cache_hits, i64),
        name!(fast_path, i64),
        name!(anonymous, i64),
        name!(trusted_claims, i64),
        name!(refused_format, i64),
        name!(refused_algorithm, i64),
        name!(refused_key, i64),
        name!(refused_signature, i64),
        name!(refused_exp, i64),
        name!(refused_nbf, i64),
        name!(refused_iss, i64),
        name!(refused_aud, i64),
        name!(refused_sub, i64),
        name!(refused_scope, i64),
        name!(fetches_ok, i64),
        name!(fetches_failed, i64),
        name!(fetches_rate_limited, i64),
        name!(verify_time_us, i64),
        name!(verify_time_max_us, i64),
        name!(last_refusal, Option<TimestampWithTimeZone>),
        name!(log_suppressed, i64),
        name!(clock_skew_s, Option<i64>),
        name!(clock_skew_at, Option<TimestampWithTimeZone>),
        name!(scope, String),
        name!(stats_reset, Option<TimestampWithTimeZone>),
    ),
> {
    use kinde_rls_core::Check;
    use stats::Event;
    identity::flush_stats();
    let (rows, reset_us) = stats::snapshot();
    let ts = |us: i64| pgrx::datetime::to_timestamp(us as f64 / 1e6);
    let scope = if stats::shared() { "server" } else { "session" };
    TableIterator::new(
        rows.into_iter()
            .map(|r| {
                (
                    r.issuer.clone(),
                    r.get(Event::Verified),
                    r.get(Event::CacheHit),
                    r.fast_path,
                    r.get(Event::Anonymous),
                    r.get(Event::Trusted),
                    r.get(Event::Refused(Check::Format)),
                    r.get(Event::Refused(Check::Algorithm)),
                    r.get(Event::Refused(Check::Key)),
                    r.get(Event::Refused(Check::Signature)),
                    r.get(Event::Refused(Check::Exp)),
                    r.get(Event::Refused(Check::Nbf)),
                    r.get(Event::Refused(Check::Iss)),
                    r.get(Event::Refused(Check::Aud)),
                    r.get(Event::Refused(Check::Sub)),
                    r.get(Event::Refused(Check::Scope)),
                    r.get(Event::FetchOk),
                    r.get(Event::FetchFailed),
                    r.get(Event::FetchRateLimited),
                    r.verify_us_total,
                    r.verify_us_max,
                    r.last_refusal_us.map(ts),
                    r.get(Event::LogSuppressed),
                    r.skew_s,
                    r.skew_at_us.map(ts),
                    scope.to_string(),
                    Some(ts(reset_us)),
                )
            })
            .collect::<Vec<_>>(),
    )
}

/// Zero every counter of `kinde_rls_stats` (the server's when preloaded, else this session's).
#[pg_extern(volatile, parallel_unsafe)]
fn kinde_rls_stats_reset() {
    identity::flush_stats();
    stats::reset();
}

/// What is unsafe or unhealthy about the setup: one row per finding, none when healthy.
#[pg_extern(volatile, parallel_restricted)]
fn kinde_rls_check() -> TableIterator<
    'static,
    (
        name!(level, String),
        name!(setting, Option<String>),
        name!(message, String),
        name!(hint, String),
    ),
> {
    let mut rows = check::findings();
    let rank = |l: &str| match l {
        "error" => 0,
        "warning" => 1,
        _ => 2,
    };
    rows.sort_by_key(|f| rank(f.level));
    TableIterator::new(
        rows.into_iter()
            .map(|f| (f.level.to_string(), f.setting, f.message, f.hint))
            .collect::<Vec<_>>(),
    )
}

pgrx::extension_sql!(
    r#"
CREATE VIEW kinde_rls_stats AS SELECT * FROM kinde_rls_stats();
REVOKE ALL ON FUNCTION kinde_rls_stats() FROM PUBLIC;
REVOKE ALL ON kinde_rls_stats FROM PUBLIC;
REVOKE ALL ON FUNCTION kinde_rls_stats_reset() FROM PUBLIC;
REVOKE ALL ON FUNCTION kinde_rls_check() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION kinde_rls_stats() TO pg_monitor;
GRANT SELECT ON kinde_rls_stats TO pg_monitor;
GRANT EXECUTE ON FUNCTION kinde_rls_check() TO pg_monitor;
"#,
    name = "operating",
    requires = [kinde_rls_stats, kinde_rls_stats_reset, kinde_rls_check],
);

// ---------------------------------------------------------------------------------------------
// Request identity: STABLE so that `user_id = get_user_id()` can drive an index scan.

/// The verified `sub` of the current request, or NULL when there is no token.
#[pg_extern(stable, parallel_safe)]
fn get_user_id() -> Option<String> {
    current().and_then(|i| i.sub.clone())
}

/// All verified claims of the current request, or NULL.
#[pg_extern(stable, parallel_safe)]
fn get_claims() -> Option<RawJsonB> {
    current().map(|i| RawJsonB::new(i.payload_json()))
}

/// One verified claim, or NULL.
#[pg_extern(stable, strict, parallel_safe)]
fn get_claim(name: Text) -> Option<RawJsonB> {
    let name = name.utf8()?; // no claim has a name that is not UTF-8
    current().and_then(|i| i.claim_json(name).map(RawJsonB::new))
}

/// The verified `email` claim, or NULL.
#[pg_extern(stable, parallel_safe)]
fn get_email() -> Option<String> {
    current().and_then(|i| claims::email(i.claims()).map(String::from))
}

/// `iss || '|' || sub`: unique across issuers.
#[pg_extern(stable, parallel_safe)]
fn get_token_identifier() -> Option<String> {
    current().and_then(|i| claims::token_identifier(i.claims()))
}

/// Kinde `org_code`, or NULL.
#[pg_extern(stable, parallel_safe)]
fn get_org_code() -> Option<String> {
    current().and_then(|i| claims::org_code(i.claims()).map(String::from))
}

/// Does the verified token's Kinde `permissions` array contain `permission`? False when anonymous.
#[pg_extern(stable, strict, parallel_safe)]
fn has_permission(permission: Text) -> bool {
    let Some(permission) = permission.utf8() else {
        return false;
    };
    current().is_some_and(|i| claims::has_permission(i.claims(), permission))
}

/// Does the verified token's Kinde `roles` array hold a role with this `key`? False when anonymous.
#[pg_extern(stable, strict, parallel_safe)]
fn has_role(role_key: Text) -> bool {
    let Some(role_key) = role_key.utf8() else {
        return false;
    };
    current().is_some_and(|i| claims::has_role(i.claims(), role_key))
}

/// The value (`v`) of a Kinde feature flag, or NULL.
#[pg_extern(stable, strict, parallel_safe)]
fn get_feature_flag(name: Text) -> Option<RawJsonB> {
    let name = name.utf8()?;
    current().and_then(|i| {
        let flags = i.claim_json("feature_flags")?;
        claims::feature_flag_json(flags, name).map(RawJsonB::new)
    })
}

// ---------------------------------------------------------------------------------------------
// What the functions above share

/// The identity of the current request; a token that does not verify is raised as an error.
fn current() -> Option<std::rc::Rc<identity::Identity>> {
    identity::current().unwrap_or_else(|e| errors::raise(&e))
}

/// The distinct key URLs of the current configuration, with the provider each serves (by the
/// name its statistics are kept under).
fn remote_sources() -> Vec<(String, kinde_rls_core::RemoteSource)> {
    let config = identity::current_config().unwrap_or_else(|e| errors::config(&e));
    let mut out: Vec<(String, kinde_rls_core::RemoteSource)> = Vec::new();
    for p in &config.providers {
        if let Some(src) = &p.remote {
            if !out.iter().any(|(_, s)| s == src) {
                out.push((p.name(), src.clone()));
            }
        }
    }
    out
}

fn issuer_label(p: &kinde_rls_core::Provider) -> Option<String> {
    (!p.policy.issuers.is_empty()).then(|| p.policy.issuers.join(", "))
}

/// A configuration error as one line for a diagnostic row: the message, then how to fix it.
fn config_text(e: &kinde_rls_core::ConfigError) -> String {
    format!("{} (hint: {})", e.message, e.hint)
}

#[cfg(any(test, feature = "pg_test"))]
mod pg_test_vectors;
#[cfg(any(test, feature = "pg_test"))]
mod pg_tests;

/// Required by `cargo pgrx test`.
#[cfg(test)]
pub mod pg_test {
    pub fn setup(_options: Vec<&str>) {}

    #[must_use]
    pub fn postgresql_conf_options() -> Vec<&'static str> {
        vec!["shared_preload_libraries = 'kinde_rls'"]
    }
}
