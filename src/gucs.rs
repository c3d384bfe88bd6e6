//! Every `kinde_rls.*` setting, registered once from `_PG_init`.
//!
//! Trust-bearing settings are `SUSET`: only a superuser sets them, per session, role, database or
//! cluster. PostgreSQL (15+) applies a value that a session `SET` before the library was loaded
//! with the privileges of the role that set it, so a non-superuser's early `SET` is refused too.
//! Assign hooks bump [`CONFIG_GEN`] / [`TOKEN_GEN`] on every change (including the revert of a
//! `SET LOCAL` at transaction end), which is how caches know they are stale without comparing
//! strings on every row.

use pgrx::guc::{GucFlags, GucSetting};
use pgrx::pg_sys;
use std::ffi::{c_char, c_void, CStr, CString};
use std::sync::atomic::{AtomicU64, Ordering};

/// Bumped whenever a setting that affects verification changes.
pub static CONFIG_GEN: AtomicU64 = AtomicU64::new(1);
/// Bumped whenever `kinde_rls.token` changes.
pub static TOKEN_GEN: AtomicU64 = AtomicU64::new(1);
/// Transactions this backend has ended (commit, abort, prepare), counted by an xact callback.
pub static XACT_COUNT: AtomicU64 = AtomicU64::new(0);
/// [`XACT_COUNT`] when `kinde_rls.token` was last assigned. A token still in use after a later
/// transaction ended was set for the whole session, not with `SET LOCAL`.
pub static TOKEN_SET_AT: AtomicU64 = AtomicU64::new(0);

pub static ISSUER: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
pub static AUDIENCE: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
pub static JWKS: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
pub static SECRET: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
pub static SECRET_FILE: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
pub static TOKEN: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
pub static LEEWAY: GucSetting<i32> = GucSetting::<i32>::new(30);
pub static TRUST_REQUEST_CLAIMS: GucSetting<bool> = GucSetting::<bool>::new(false);
pub static REQUIRE_SUB: GucSetting<bool> = GucSetting::<bool>::new(true);
pub static CACHE_SIZE: GucSetting<i32> = GucSetting::<i32>::new(10_000);
pub static DOMAIN: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
pub static JWKS_URL: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
pub static PROVIDERS: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
pub static JWKS_TIMEOUT_MS: GucSetting<i32> = GucSetting::<i32>::new(2000);
pub static JWKS_CACHE_TTL: GucSetting<i32> = GucSetting::<i32>::new(600);
pub static JWKS_MIN_REFRESH: GucSetting<i32> = GucSetting::<i32>::new(30);

unsafe extern "C-unwind" fn config_changed_str(_: *const c_char, _: *mut c_void) {
    CONFIG_GEN.fetch_add(1, Ordering::Relaxed);
}
unsafe extern "C-unwind" fn config_changed_int(_: i32, _: *mut c_void) {
    CONFIG_GEN.fetch_add(1, Ordering::Relaxed);
}
unsafe extern "C-unwind" fn config_changed_bool(_: bool, _: *mut c_void) {
    CONFIG_GEN.fetch_add(1, Ordering::Relaxed);
}
unsafe extern "C-unwind" fn token_changed(_: *const c_char, _: *mut c_void) {
    TOKEN_GEN.fetch_add(1, Ordering::Relaxed);
    TOKEN_SET_AT.store(XACT_COUNT.load(Ordering::Relaxed), Ordering::Relaxed);
}

unsafe extern "C-unwind" fn xact_ended(event: pg_sys::XactEvent::Type, _: *mut c_void) {
    use pg_sys::XactEvent::*;
    if matches!(
        event,
        XACT_EVENT_COMMIT
            | XACT_EVENT_ABORT
            | XACT_EVENT_PREPARE
            | XACT_EVENT_PARALLEL_COMMIT
            | XACT_EVENT_PARALLEL_ABORT
    ) {
        XACT_COUNT.fetch_add(1, Ordering::Relaxed);
    }
}

/// `pg_db_role_setting` and `pg_proc.proconfig` are readable by every role, so a secret stored
/// with `ALTER DATABASE/ROLE … SET` or a function's `SET` clause is public. Those values reach
/// us with source `PGC_S_TEST` (when stored) or `PGC_S_DATABASE`/`USER`/`DATABASE_USER` (when
/// applied at connection); both are refused.
unsafe extern "C-unwind" fn check_secret(
    newval: *mut *mut c_char,
    _extra: *mut *mut c_void,
    source: pg_sys::GucSource::Type,
) -> bool {
    use pg_sys::GucSource::*;
    let empty = newval.is_null() || (*newval).is_null() || *(*newval) == 0;
    if empty
        || !matches!(
            source,
            PGC_S_TEST | PGC_S_DATABASE | PGC_S_USER | PGC_S_DATABASE_USER
        )
    {
        return true;
    }
    pg_sys::GUC_check_errmsg_string = pg_sys::pstrdup(
        c"kinde_rls.secret must not be stored in database, role or function settings: every role can read those".as_ptr(),
    );
    pg_sys::GUC_check_errhint_string = pg_sys::pstrdup(
        c"Set kinde_rls.secret in postgresql.conf or with ALTER SYSTEM, with kinde_rls in shared_preload_libraries.".as_ptr(),
    );
    false
}

#[allow(clippy::too_many_arguments)]
unsafe fn define_string(
    name: &'static CStr,
    short: &'static CStr,
    long: &'static CStr,
    setting: &'static GucSetting<Option<CString>>,
    context: pg_sys::GucContext::Type,
    flags: GucFlags,
    check: pg_sys::GucStringCheckHook,
    assign: pg_sys::GucStringAssignHook,
) {
    pg_sys::DefineCustomStringVariable(
        name.as_ptr(),
        short.as_ptr(),
        long.as_ptr(),
        setting.as_ptr(),
        std::ptr::null(),
        context,
        flags.bits(),
        check,
        assign,
        None,
    );
}

#[allow(clippy::too_many_arguments)]
unsafe fn define_int(
    name: &'static CStr,
    short: &'static CStr,
    long: &'static CStr,
    setting: &'static GucSetting<i32>,
    (default, min, max): (i32, i32, i32),
    flags: GucFlags,
    assign: pg_sys::GucIntAssignHook,
) {
    pg_sys::DefineCustomIntVariable(
        name.as_ptr(),
        short.as_ptr(),
        long.as_ptr(),
        setting.as_ptr(),
        default,
        min,
        max,
        pg_sys::GucContext::PGC_SUSET,
        flags.bits(),
        None,
        assign,
        None,
    );
}

pub fn init() {
    use pg_sys::GucContext::{PGC_SUSET, PGC_USERSET};
    let none = GucFlags::empty();
    unsafe {
        define_string(
            c"kinde_rls.issuer",
            c"Accepted token issuers (iss), comma-separated, exact match.",
            c"Unset: iss is not checked. For Kinde: https://<business>.kinde.com",
            &ISSUER,
            PGC_SUSET,
            none,
            None,
            Some(config_changed_str),
        );
        define_string(
            c"kinde_rls.domain",
            c"Your Kinde domain, e.g. https://acme.kinde.com: the accepted issuer and where keys are fetched.",
            c"Keys come from the domain's OpenID discovery jwks_uri, falling back to <domain>/.well-known/jwks.",
            &DOMAIN,
            PGC_SUSET,
            none,
            None,
            Some(config_changed_str),
        );
        define_string(
            c"kinde_rls.jwks_url",
            c"URL of the issuer's JWKS (https://, or http:// to loopback only).",
            c"Fetched keys are cached for kinde_rls.jwks_cache_ttl seconds.",
            &JWKS_URL,
            PGC_SUSET,
            none,
            None,
            Some(config_changed_str),
        );
        define_string(
            c"kinde_rls.providers",
            c"Several token issuers as a JSON array of {issuer, jwks_url | domain | jwks, audience, algorithms}.",
            c"When set it is the whole configuration; a token's iss selects its provider.",
            &PROVIDERS,
            PGC_SUSET,
            none,
            None,
            Some(config_changed_str),
        );
        define_string(
            c"kinde_rls.audience",
            c"Accepted audiences (aud), comma-separated; a token's aud must contain one.",
            c"Unset: aud is not checked.",
            &AUDIENCE,
            PGC_SUSET,
            none,
            None,
            Some(config_changed_str),
        );
        define_string(
            c"kinde_rls.jwks",
            c"The issuer's public keys as JWKS JSON (or one JWK).",
            c"",
            &JWKS,
            PGC_SUSET,
            none,
            None,
            Some(config_changed_str),
        );
        define_string(
            c"kinde_rls.secret",
            c"HMAC secret for HS256/384/512 tokens (e.g. the Kinde client secret).",
            c"Readable only by superusers once the library is loaded; keep kinde_rls in shared_preload_libraries.",
            &SECRET,
            PGC_SUSET,
            GucFlags::SUPERUSER_ONLY | GucFlags::NO_SHOW_ALL,
            Some(check_secret),
            Some(config_changed_str),
        );
        define_string(
            c"kinde_rls.secret_file",
            c"A file holding the HMAC secret, readable only by the server's OS user.",
            c"The setting holds a path, not the secret: safe in postgresql.conf and in the server log.",
            &SECRET_FILE,
            PGC_SUSET,
            none,
            None,
            Some(config_changed_str),
        );
        define_string(
            c"kinde_rls.token",
            c"The raw JWT of the current request; set it with SET LOCAL or set_config(..., true).",
            c"",
            &TOKEN,
            PGC_USERSET,
            GucFlags::NO_SHOW_ALL | GucFlags::NO_RESET_ALL,
            None,
            Some(token_changed),
        );
        define_int(
            c"kinde_rls.leeway",
            c"Seconds of clock skew allowed on exp and nbf.",
            c"",
            &LEEWAY,
            (30, 0, 3600),
            GucFlags::UNIT_S,
            Some(config_changed_int),
        );
        define_int(
            c"kinde_rls.jwks_timeout_ms",
            c"Time allowed for fetching an issuer's keys (discovery, redirects and JWKS together).",
            c"",
            &JWKS_TIMEOUT_MS,
            (2000, 100, 60_000),
            GucFlags::UNIT_MS,
            None,
        );
        define_int(
            c"kinde_rls.jwks_cache_ttl",
            c"How long fetched keys are used before they are fetched again.",
            c"",
            &JWKS_CACHE_TTL,
            (600, 1, 7 * 86_400),
            GucFlags::UNIT_S,
            None,
        );
        define_int(
            c"kinde_rls.jwks_min_refresh",
            c"Least time between two fetches of one issuer's keys (unknown kid, failed fetch).",
            c"Bounds the requests a flood of tokens with made-up kids can cause.",
            &JWKS_MIN_REFRESH,
            (30, 0, 3600),
            GucFlags::UNIT_S,
            None,
        );
        define_int(
            c"kinde_rls.cache_size",
            c"Verified tokens cached per backend (0 disables the cache).",
            c"",
            &CACHE_SIZE,
            (10_000, 0, 1_000_000),
            GucFlags::empty(),
            Some(config_changed_int),
        );
        pg_sys::DefineCustomBoolVariable(
            c"kinde_rls.trust_request_claims".as_ptr(),
            c"Trust an unsigned JSON object in request.jwt.claims as verified claims.".as_ptr(),
            c"Only behind a gateway that verified the token (PostgREST) or in tests. Off by default.".as_ptr(),
            TRUST_REQUEST_CLAIMS.as_ptr(),
            false,
            PGC_SUSET,
            0,
            None,
            Some(config_changed_bool),
            None,
        );
        pg_sys::DefineCustomBoolVariable(
            c"kinde_rls.require_sub".as_ptr(),
            c"Require a non-empty string sub claim.".as_ptr(),
            c"Turn off to accept machine-to-machine tokens, which may have no sub.".as_ptr(),
            REQUIRE_SUB.as_ptr(),
            true,
            PGC_SUSET,
            0,
            None,
            Some(config_changed_bool),
            None,
        );
        pg_sys::RegisterXactCallback(Some(xact_ended), std::ptr::null_mut());
        #[cfg(not(any(feature = "pg13", feature = "pg14")))]
        pg_sys::MarkGUCPrefixReserved(c"kinde_rls".as_ptr());
        #[cfg(any(feature = "pg13", feature = "pg14"))]
        pg_sys::EmitWarningsOnPlaceholders(c"kinde_rls".as_ptr());
    }
}

/// The current value of a string setting, borrowed; valid until the setting next changes, so
/// callers copy what they keep.
pub fn str_value(s: &GucSetting<Option<CString>>) -> Option<&'static str> {
    // SAFETY: Postgres owns the pointer and keeps it valid until the next assignment, which
    // cannot happen while one of our functions runs.
    unsafe {
        let p = *s.as_ptr();
        if p.is_null() {
            return None;
        }
        CStr::from_ptr(p).to_str().ok().filter(|v| !v.is_empty())
    }
}

/// Any setting by name (e.g. PostgREST's `request.headers`), without error if it does not exist.
pub fn other_setting(name: &CStr) -> Option<&'static str> {
    // SAFETY: as above; GetConfigOption returns NULL for an unknown name when missing_ok.
    unsafe {
        let p = pg_sys::GetConfigOption(name.as_ptr(), true, false);
        if p.is_null() {
            return None;
        }
        CStr::from_ptr(p).to_str().ok().filter(|v| !v.is_empty())
    }
}
