//! Every `kinde_rls.*` setting, registered once from `_PG_init`.
//!
//! Trust-bearing settings are `SUSET`: only a superuser sets them, per session, role, database or
//! cluster. PostgreSQL (15+) applies a value that a session `SET` before the library was loaded
//! with the privileges of the role that set it, so a non-superuser's early `SET` is refused too.
//! Assign hooks bump [`CONFIG_GEN`] / [`TOKEN_GEN`] on every change (including the revert of a
//! `SET LOCAL` at transaction end), which is how caches know they are stale without comparing
//! strings on every row.
//!
//! Registered with `DefineCustom*Variable` directly, not pgrx's `GucRegistry`: that cannot attach
//! the check, assign and show hooks (nor the `GucSource`-aware checks) these settings rely on.

use kinde_rls_core::{Check, ConfigError, Refusal};
use pgrx::guc::{GucFlags, GucSetting};
use pgrx::pg_guard;
use pgrx::pg_sys;
use std::ffi::{c_char, c_void, CStr, CString};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

/// Set when the library was loaded from `shared_preload_libraries`: then every backend has the
/// real (superuser-only) `kinde_rls.secret` from its start, and never a readable placeholder.
pub static PRELOADED: AtomicBool = AtomicBool::new(false);

/// Bumped whenever a setting that affects verification changes.
pub static CONFIG_GEN: AtomicU64 = AtomicU64::new(1);
/// Bumped whenever `kinde_rls.token` changes.
pub static TOKEN_GEN: AtomicU64 = AtomicU64::new(1);
/// Bumped whenever `request.headers`, `request.jwt` or `request.jwt.claims` changes, once
/// kinde_rls watches them (see [`watch_request_settings`]).
pub static REQUEST_GEN: AtomicU64 = AtomicU64::new(1);
/// Set when this backend defined the three request settings itself, so that [`REQUEST_GEN`]
/// moves with every change of them; unset when another library had defined one of them first
/// (then each lookup compares their text).
pub static WATCHING_REQUEST: AtomicBool = AtomicBool::new(false);
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
pub static ANONYMOUS_ROLES: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(Some(c"anon, service_role"));
pub static REQUEST_HEADERS: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
pub static REQUEST_JWT: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
pub static REQUEST_JWT_CLAIMS: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(None);
pub static WATCH_REQUEST_SETTINGS: GucSetting<bool> = GucSetting::<bool>::new(true);
pub static REQUIRE_SUB: GucSetting<bool> = GucSetting::<bool>::new(true);
pub static CACHE_SIZE: GucSetting<i32> = GucSetting::<i32>::new(10_000);
pub static DOMAIN: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
pub static JWKS_URL: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
pub static PROVIDERS: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
pub static JWKS_TIMEOUT_MS: GucSetting<i32> = GucSetting::<i32>::new(2000);
pub static JWKS_CACHE_TTL: GucSetting<i32> = GucSetting::<i32>::new(600);
pub static JWKS_MIN_REFRESH: GucSetting<i32> = GucSetting::<i32>::new(30);
pub static JWKS_MAX_STALE: GucSetting<i32> = GucSetting::<i32>::new(86_400);
/// The claims that make a PostgreSQL 18 login's authenticated identity ([`crate::oauth`]).
#[cfg(feature = "pg18")]
pub static LOGIN_AUTHN_ID: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
/// The verified claims a PostgreSQL 18 login signed in with, for the session's parallel workers
/// (which did not authenticate): set by the validator only ([`crate::oauth`]).
#[cfg(feature = "pg18")]
pub static LOGIN_IDENTITY: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);
/// The audit log (`src/audit.rs`) and its lines per second.
pub static LOG_REFUSALS: GucSetting<bool> = GucSetting::<bool>::new(false);
pub static LOG_REFUSALS_PER_SECOND: GucSetting<i32> = GucSetting::<i32>::new(20);
/// Key sets the shared cache holds; read once, at server start (defined only when preloaded).
pub static JWKS_CACHE_SLOTS: GucSetting<i32> = GucSetting::<i32>::new(16);

/// Every hook below is `#[pg_guard]`: a PostgreSQL error raised in a call it makes (an
/// out-of-memory in `pstrdup`, a catalog lookup in `superuser()`) becomes an ordinary ERROR
/// instead of unwinding through PostgreSQL's C frames.

#[pg_guard]
unsafe extern "C-unwind" fn config_changed_str(_new: *const c_char, _extra: *mut c_void) {
    CONFIG_GEN.fetch_add(1, Ordering::Relaxed);
}
#[pg_guard]
unsafe extern "C-unwind" fn config_changed_int(_new: i32, _extra: *mut c_void) {
    CONFIG_GEN.fetch_add(1, Ordering::Relaxed);
}
#[pg_guard]
unsafe extern "C-unwind" fn config_changed_bool(_new: bool, _extra: *mut c_void) {
    CONFIG_GEN.fetch_add(1, Ordering::Relaxed);
}
#[pg_guard]
unsafe extern "C-unwind" fn token_changed(_new: *const c_char, _extra: *mut c_void) {
    TOKEN_GEN.fetch_add(1, Ordering::Relaxed);
    TOKEN_SET_AT.store(XACT_COUNT.load(Ordering::Relaxed), Ordering::Relaxed);
}

/// Where each request setting's current value came from ([`Request`] order): the
/// `GucSource` its check hook saw, carried to the assign hook in `extra`, so that it is right
/// after a `SET LOCAL` ends, a `RESET`, or in a parallel worker (which restores the leader's
/// values with their sources).
static REQUEST_SOURCE: [AtomicU32; 3] = [AtomicU32::new(0), AtomicU32::new(0), AtomicU32::new(0)];

/// Memory for a GUC `extra`, which PostgreSQL frees itself: `malloc` before 16, `guc_malloc`
/// (its own memory context) since.
///
/// # Safety
/// Called from a check hook, whose `extra` PostgreSQL takes over (and frees).
unsafe fn guc_extra(size: usize) -> *mut c_void {
    #[cfg(any(feature = "pg13", feature = "pg14", feature = "pg15"))]
    {
        extern "C" {
            fn malloc(size: usize) -> *mut c_void;
        }
        malloc(size)
    }
    #[cfg(not(any(feature = "pg13", feature = "pg14", feature = "pg15")))]
    {
        pg_sys::guc_malloc(pg_sys::LOG as i32, size)
    }
}

/// Remember the value's source in its `extra`. As for `kinde_rls.token` (see [`check_token`]),
/// a value that may carry a token is refused from a role, database, function, server or
/// connection default: it would not be a request's identity (such values are ignored), and
/// `pg_db_role_setting`, `pg_proc.proconfig` and `SHOW` would show the token to every role.
/// Empty and `{}` (the unset values) are accepted from anywhere.
#[pg_guard]
unsafe extern "C-unwind" fn request_check(
    newval: *mut *mut c_char,
    extra: *mut *mut c_void,
    source: pg_sys::GucSource::Type,
) -> bool {
    let unset = !newval.is_null()
        && !(*newval).is_null()
        && CStr::from_ptr(*newval).to_bytes().trim_ascii() == b"{}";
    // A parallel worker replays the leader's values with their sources: the leader took them.
    if !unset
        && !pg_sys::InitializingParallelWorker
        && !allow_source(
            newval,
            source,
            session_only,
            (
                c"request settings can only be set in a session: as a role, database, function, server or connection default a token there would be readable by every role and would not be a request's",
                c"Set them per transaction, as PostgREST, Storage and Realtime do: set_config('request.jwt', $1, true).",
            ),
        )
    {
        return false;
    }
    let p = guc_extra(std::mem::size_of::<u32>()) as *mut u32;
    if p.is_null() {
        // Out of memory: refuse the value rather than lose track of where it came from.
        return false;
    }
    p.write(source);
    *extra = p.cast();
    true
}

/// # Safety
/// `extra` is the assign hook's argument: NULL, or what [`request_check`] stored (a `u32`).
unsafe fn request_assigned(r: Request, extra: *mut c_void) {
    let source = if extra.is_null() {
        pg_sys::GucSource::PGC_S_DEFAULT
    } else {
        *(extra as *const u32)
    };
    REQUEST_SOURCE[r as usize].store(source, Ordering::Relaxed);
    REQUEST_GEN.fetch_add(1, Ordering::Relaxed);
}

#[pg_guard]
unsafe extern "C-unwind" fn headers_assigned(_new: *const c_char, extra: *mut c_void) {
    request_assigned(Request::Headers, extra);
}
#[pg_guard]
unsafe extern "C-unwind" fn jwt_assigned(_new: *const c_char, extra: *mut c_void) {
    request_assigned(Request::Jwt, extra);
}
#[pg_guard]
unsafe extern "C-unwind" fn claims_assigned(_new: *const c_char, extra: *mut c_void) {
    request_assigned(Request::Claims, extra);
}

#[pg_guard]
unsafe extern "C-unwind" fn xact_ended(event: pg_sys::XactEvent::Type, _arg: *mut c_void) {
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

/// A check hook's verdict on a value from `source`: allowed when it is empty (a `RESET`) or
/// `allowed(source)`; otherwise refused with `message` and `hint` (which name no value: the
/// value may be a secret or a token).
///
/// # Safety
/// `newval` is the check hook's argument.
unsafe fn allow_source(
    newval: *mut *mut c_char,
    source: pg_sys::GucSource::Type,
    allowed: fn(pg_sys::GucSource::Type) -> bool,
    (message, hint): (&CStr, &CStr),
) -> bool {
    let empty = newval.is_null() || (*newval).is_null() || *(*newval) == 0;
    if empty || allowed(source) {
        return true;
    }
    pg_sys::GUC_check_errmsg_string = pg_sys::pstrdup(message.as_ptr());
    pg_sys::GUC_check_errhint_string = pg_sys::pstrdup(hint.as_ptr());
    false
}

/// Set while `_PG_init` defines the settings. PostgreSQL then re-applies values set before the
/// library was loaded (postgresql.conf at server start, a session's early `SET`); a check hook
/// that refused one would drop it and leave the setting unset — an issuer not checked, or the
/// single-provider settings in force where `providers` was meant. So those are accepted here
/// and fail at use, as a configuration error.
static DEFINING: AtomicBool = AtomicBool::new(false);

/// Refuse a malformed key or provider setting when it is set (`SET`, `ALTER SYSTEM`,
/// `ALTER DATABASE/ROLE … SET`, a reload) with the error verification would give later. A
/// value applied from a role or database default at connection is not judged here (refusing it
/// would silently fall back to a wider setting): it fails at use.
///
/// # Safety
/// `newval` is the check hook's argument.
unsafe fn check_config(
    name: &str,
    newval: *mut *mut c_char,
    source: pg_sys::GucSource::Type,
) -> bool {
    use pg_sys::GucSource::*;
    // postgresql.conf values are judged only for ALTER SYSTEM, which runs in a statement. At a
    // reload (no statement running) PostgreSQL would keep the refused line's previous value
    // while applying the file's other changes — a removed kinde_rls.issuer next to a refused
    // kinde_rls.providers leaves nothing checked — so the value is taken and fails at use.
    let reload = source == PGC_S_FILE && pg_sys::ActivePortal.is_null();
    // A parallel worker replays the leader's values, which the leader already has in force.
    if DEFINING.load(Ordering::Relaxed)
        || pg_sys::InitializingParallelWorker
        || reload
        || !matches!(
            source,
            PGC_S_FILE | PGC_S_SESSION | PGC_S_TEST | PGC_S_INTERACTIVE
        )
        || newval.is_null()
        || (*newval).is_null()
    {
        return true;
    }
    let fail = |message: String, hint: String| {
        let c = |t: String| CString::new(t).unwrap_or_else(|_| c"(a message with a NUL)".into());
        pg_sys::GUC_check_errmsg_string = pg_sys::pstrdup(c(message).as_ptr());
        pg_sys::GUC_check_errhint_string = pg_sys::pstrdup(c(hint).as_ptr());
        false
    };
    match CStr::from_ptr(*newval).to_str() {
        Err(_) => fail(
            format!("{name} is not valid UTF-8"),
            format!("Set {name} from a database whose encoding is UTF8."),
        ),
        Ok(v) => match kinde_rls_core::config::validate_setting(name, v) {
            Ok(()) => true,
            Err(e) => fail(e.message, e.hint),
        },
    }
}

macro_rules! config_check_hook {
    ($fn:ident, $name:literal) => {
        #[pg_guard]
        unsafe extern "C-unwind" fn $fn(
            newval: *mut *mut c_char,
            _extra: *mut *mut c_void,
            source: pg_sys::GucSource::Type,
        ) -> bool {
            check_config($name, newval, source)
        }
    };
}
config_check_hook!(check_providers, "kinde_rls.providers");
config_check_hook!(check_jwks, "kinde_rls.jwks");
config_check_hook!(check_domain, "kinde_rls.domain");
config_check_hook!(check_jwks_url, "kinde_rls.jwks_url");
config_check_hook!(check_issuer, "kinde_rls.issuer");
config_check_hook!(check_audience, "kinde_rls.audience");
config_check_hook!(check_secret_file, "kinde_rls.secret_file");
#[cfg(feature = "pg18")]
config_check_hook!(check_login_authn_id, "kinde_rls.login_authn_id");

/// `pg_db_role_setting` and `pg_proc.proconfig` are readable by every role, so a secret stored
/// with `ALTER DATABASE/ROLE … SET` or a function's `SET` clause is public. Those values reach
/// us with source `PGC_S_TEST` (when stored) or `PGC_S_DATABASE`/`USER`/`DATABASE_USER`/
/// `GLOBAL` (when applied at connection — `GLOBAL` is `ALTER ROLE ALL SET`, which may have
/// been stored while the library was not loaded to refuse it); all are refused.
#[pg_guard]
unsafe extern "C-unwind" fn check_secret(
    newval: *mut *mut c_char,
    _extra: *mut *mut c_void,
    source: pg_sys::GucSource::Type,
) -> bool {
    use pg_sys::GucSource::*;
    allow_source(
        newval,
        source,
        |s| !matches!(s, PGC_S_TEST | PGC_S_GLOBAL | PGC_S_DATABASE | PGC_S_USER | PGC_S_DATABASE_USER),
        (
            c"kinde_rls.secret must not be stored in database, role or function settings: every role can read those",
            c"Put the secret in a file only the server can read and set kinde_rls.secret_file, or set kinde_rls.secret in postgresql.conf with kinde_rls in shared_preload_libraries; a secret that was stored in a readable place must be rotated.",
        ),
    )
}

/// The sources an identity may come from: set in a session (`SET`, `SET LOCAL`,
/// `set_config()`, a function's `SET` clause) or the built-in default — never a role, database,
/// function, server or connection default, which outlives `RESET ALL` and `DISCARD ALL`.
fn session_only(source: pg_sys::GucSource::Type) -> bool {
    use pg_sys::GucSource::*;
    matches!(
        source,
        PGC_S_DEFAULT | PGC_S_DYNAMIC_DEFAULT | PGC_S_SESSION | PGC_S_INTERACTIVE | PGC_S_OVERRIDE
    )
}

/// `kinde_rls.token` is an identity for the current session (or transaction), so it may only be
/// set in one: `SET`, `SET LOCAL`, `set_config()`. A value stored in a role, database or
/// function setting (`ALTER ROLE … SET`, readable by every role — and any role may set its own
/// defaults), in postgresql.conf, or sent as a connection option would become the connection's
/// *reset* value: it survives `RESET ALL` and `DISCARD ALL`, and a session-mode pooler would hand
/// it to the next client. Those sources are refused: when stored (`PGC_S_TEST`, an ERROR), and
/// when applied (a WARNING at connection, or an ERROR for a connection option).
#[pg_guard]
unsafe extern "C-unwind" fn check_token(
    newval: *mut *mut c_char,
    _extra: *mut *mut c_void,
    source: pg_sys::GucSource::Type,
) -> bool {
    allow_source(
        newval,
        source,
        session_only,
        (
            c"kinde_rls.token can only be set in a session: as a role, database, function, server or connection default it would outlive RESET ALL and DISCARD ALL",
            c"Set the token per transaction: SET LOCAL kinde_rls.token = ..., or set_config('kinde_rls.token', $1, true).",
        ),
    )
}

/// What `SHOW kinde_rls.secret` and `current_setting('kinde_rls.secret')` print for a role that
/// is not a superuser but may read superuser-only settings (`pg_read_all_settings`, and so
/// `pg_monitor`).
const SECRET_MASK: &CStr = c"(set; only superusers can read it)";

/// PostgreSQL lets members of `pg_read_all_settings` read a `GUC_SUPERUSER_ONLY` setting, and
/// monitoring roles are granted it; they see [`SECRET_MASK`] instead of the secret. Other roles
/// are refused before this hook runs; superusers see the value. Outside a transaction (no way
/// to ask who is asking) the mask is shown.
#[pg_guard]
unsafe extern "C-unwind" fn show_secret() -> *const c_char {
    let p = *SECRET.as_ptr();
    if p.is_null() || *p == 0 {
        return c"".as_ptr();
    }
    if pg_sys::IsTransactionState() && pg_sys::superuser() {
        return p;
    }
    SECRET_MASK.as_ptr()
}

/// # Safety
/// Called only from [`define_all`] (see the SAFETY note there).
#[allow(clippy::too_many_arguments)]
unsafe fn define_string(
    name: &'static CStr,
    short: &'static CStr,
    long: &'static CStr,
    setting: &'static GucSetting<Option<CString>>,
    context: pg_sys::GucContext::Type,
    flags: GucFlags,
    (check, assign, show): (
        pg_sys::GucStringCheckHook,
        pg_sys::GucStringAssignHook,
        pg_sys::GucShowHook,
    ),
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
        show,
    );
}

/// # Safety
/// As for [`define_string`].
#[allow(clippy::too_many_arguments)]
unsafe fn define_int(
    name: &'static CStr,
    short: &'static CStr,
    long: &'static CStr,
    setting: &'static GucSetting<i32>,
    (default, min, max): (i32, i32, i32),
    context: pg_sys::GucContext::Type,
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
        context,
        flags.bits(),
        None,
        assign,
        None,
    );
}

pub fn init() {
    DEFINING.store(true, Ordering::Relaxed);
    define_all();
    DEFINING.store(false, Ordering::Relaxed);
}

fn define_all() {
    use pg_sys::GucContext::{PGC_SUSET, PGC_USERSET};
    let none = GucFlags::empty();
    // SAFETY: called once, from `_PG_init`, in the process loading the library, as PostgreSQL
    // requires for `DefineCustom*Variable`; every name, description and boot value is a
    // `'static` C string, every variable a `'static` `GucSetting` that PostgreSQL writes
    // through `as_ptr()` for the life of the process, and every hook an `extern "C-unwind"`
    // function with the signature PostgreSQL calls it with.
    unsafe {
        PRELOADED.store(
            pg_sys::process_shared_preload_libraries_in_progress,
            Ordering::Relaxed,
        );
        define_string(
            c"kinde_rls.issuer",
            c"Accepted token issuers (iss), comma-separated, exact match.",
            c"Unset: iss is not checked. For Kinde: https://<business>.kinde.com",
            &ISSUER,
            PGC_SUSET,
            none,
            (Some(check_issuer), Some(config_changed_str), None),
        );
        define_string(
            c"kinde_rls.domain",
            c"Your Kinde domain, e.g. https://acme.kinde.com: the accepted issuer and where keys are fetched.",
            c"Keys come from the domain's OpenID discovery jwks_uri, falling back to <domain>/.well-known/jwks.",
            &DOMAIN,
            PGC_SUSET,
            none,
            (Some(check_domain), Some(config_changed_str), None),
        );
        define_string(
            c"kinde_rls.jwks_url",
            c"URL of the issuer's JWKS (https://, or http:// to loopback only).",
            c"Fetched keys are cached for kinde_rls.jwks_cache_ttl seconds.",
            &JWKS_URL,
            PGC_SUSET,
            none,
            (Some(check_jwks_url), Some(config_changed_str), None),
        );
        define_string(
            c"kinde_rls.providers",
            c"Several token issuers as a JSON array of {issuer, jwks_url | domain | jwks, audience, algorithms}.",
            c"When set it is the whole configuration; a token's iss selects its provider.",
            &PROVIDERS,
            PGC_SUSET,
            none,
            (Some(check_providers), Some(config_changed_str), None),
        );
        define_string(
            c"kinde_rls.audience",
            c"Accepted audiences (aud), comma-separated; a token's aud must contain one.",
            c"Unset: aud is not checked.",
            &AUDIENCE,
            PGC_SUSET,
            none,
            (Some(check_audience), Some(config_changed_str), None),
        );
        define_string(
            c"kinde_rls.jwks",
            c"The issuer's public keys as JWKS JSON (or one JWK).",
            c"",
            &JWKS,
            PGC_SUSET,
            none,
            (Some(check_jwks), Some(config_changed_str), None),
        );
        define_string(
            c"kinde_rls.secret",
            c"HMAC secret for HS256/384/512 tokens (e.g. the Kinde client secret).",
            c"Used only when kinde_rls is in shared_preload_libraries (otherwise any role could read it); kinde_rls.secret_file is better.",
            &SECRET,
            PGC_SUSET,
            GucFlags::SUPERUSER_ONLY | GucFlags::NO_SHOW_ALL,
            (Some(check_secret), Some(config_changed_str), Some(show_secret)),
        );
        define_string(
            c"kinde_rls.secret_file",
            c"A file holding the HMAC secret, readable only by the server's OS user.",
            c"The setting holds a path, not the secret: safe in postgresql.conf and in the server log.",
            &SECRET_FILE,
            PGC_SUSET,
            none,
            (Some(check_secret_file), Some(config_changed_str), None),
        );
        #[cfg(feature = "pg18")]
        define_string(
            c"kinde_rls.login_authn_id",
            c"The claims that make the identity of a PostgreSQL 18 login (SYSTEM_USER, pg_ident.conf), comma-separated; default sub.",
            c"Several claims are joined with '/': 'org_code, sub' gives oauth:org_abc/kp_123. Read at login, from the server-wide settings.",
            &LOGIN_AUTHN_ID,
            PGC_SUSET,
            none,
            (Some(check_login_authn_id), None, None),
        );
        #[cfg(feature = "pg18")]
        define_string(
            c"kinde_rls.login_identity",
            c"The verified claims of this session's login, for its parallel workers (set by kinde_rls only).",
            c"",
            &LOGIN_IDENTITY,
            pg_sys::GucContext::PGC_SU_BACKEND,
            GucFlags::SUPERUSER_ONLY
                | GucFlags::NO_SHOW_ALL
                | GucFlags::DISALLOW_IN_FILE
                | GucFlags::DISALLOW_IN_AUTO_FILE
                | GucFlags::NO_RESET_ALL,
            (None, None, None),
        );
        define_string(
            c"kinde_rls.token",
            c"The raw JWT of the current request; set it with SET LOCAL or set_config(..., true).",
            c"",
            &TOKEN,
            PGC_USERSET,
            // Not NO_RESET_ALL: RESET ALL and DISCARD ALL, which session-mode poolers run
            // between clients, must forget the previous client's token.
            GucFlags::NO_SHOW_ALL,
            (Some(check_token), Some(token_changed), None),
        );
        define_int(
            c"kinde_rls.leeway",
            c"Seconds of clock skew allowed on exp and nbf.",
            c"",
            &LEEWAY,
            (30, 0, 3600),
            PGC_SUSET,
            GucFlags::UNIT_S,
            Some(config_changed_int),
        );
        define_int(
            c"kinde_rls.jwks_timeout_ms",
            c"Time allowed for fetching an issuer's keys (discovery, redirects and JWKS together).",
            c"",
            &JWKS_TIMEOUT_MS,
            (2000, 100, 60_000),
            PGC_SUSET,
            GucFlags::UNIT_MS,
            None,
        );
        define_int(
            c"kinde_rls.jwks_cache_ttl",
            c"How long fetched keys are used before they are fetched again.",
            c"",
            &JWKS_CACHE_TTL,
            (600, 1, 7 * 86_400),
            PGC_SUSET,
            GucFlags::UNIT_S,
            None,
        );
        define_int(
            c"kinde_rls.jwks_min_refresh",
            c"Least time between two fetches of one issuer's keys (unknown kid, failed fetch).",
            c"Bounds the requests a flood of tokens with made-up kids can cause.",
            &JWKS_MIN_REFRESH,
            (30, 0, 3600),
            PGC_SUSET,
            GucFlags::UNIT_S,
            None,
        );
        define_int(
            c"kinde_rls.jwks_max_stale",
            c"How long past kinde_rls.jwks_cache_ttl fetched keys keep verifying while the issuer cannot be reached.",
            c"After that a key the issuer may have retired (because it leaked) stops verifying: tokens are refused until a fetch succeeds.",
            &JWKS_MAX_STALE,
            (86_400, 0, 30 * 86_400),
            PGC_SUSET,
            GucFlags::UNIT_S,
            Some(config_changed_int),
        );
        // PGC_POSTMASTER settings can only be defined while preloading (PostgreSQL refuses them
        // later), and only then is there a shared cache to size.
        if pg_sys::process_shared_preload_libraries_in_progress {
            define_int(
                c"kinde_rls.jwks_cache_slots",
                c"Key sets (one per key URL or domain) the shared-memory cache holds; set at server start.",
                c"Each slot takes about 66 kB of shared memory. A key URL that finds no slot is cached per backend.",
                &JWKS_CACHE_SLOTS,
                (16, 1, 1024),
                pg_sys::GucContext::PGC_POSTMASTER,
                GucFlags::empty(),
                None,
            );
        }
        define_int(
            c"kinde_rls.cache_size",
            c"Verified tokens cached per backend (0 disables the cache).",
            c"",
            &CACHE_SIZE,
            (10_000, 0, 1_000_000),
            PGC_SUSET,
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
            c"kinde_rls.log_refusals".as_ptr(),
            c"Log each refused token (the check, issuer, kid, verified sub, role and client; never the token) and each session that trusts request.jwt.claims.".as_ptr(),
            c"At LOG level, at most kinde_rls.log_refusals_per_second lines per second; the rest are counted (kinde_rls_stats.log_suppressed) and the next line says how many.".as_ptr(),
            LOG_REFUSALS.as_ptr(),
            false,
            PGC_SUSET,
            0,
            None,
            None,
            None,
        );
        define_int(
            c"kinde_rls.log_refusals_per_second",
            c"Most refusal lines kinde_rls.log_refusals writes per second (for the server when preloaded, else per session).",
            c"",
            &LOG_REFUSALS_PER_SECOND,
            (20, 1, 10_000),
            PGC_SUSET,
            GucFlags::empty(),
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
        pg_sys::DefineCustomStringVariable(
            c"kinde_rls.anonymous_roles".as_ptr(),
            c"Values of a token's role claim that mark an anonymous credential (a Supabase anon or service key), comma-separated.".as_ptr(),
            c"A token with no sub whose role is listed reads as no token at all: get_user_id() is NULL, with no error.".as_ptr(),
            ANONYMOUS_ROLES.as_ptr(),
            c"anon, service_role".as_ptr(),
            PGC_SUSET,
            0,
            None,
            Some(config_changed_str),
            None,
        );
        watch_request_settings();
        pg_sys::RegisterXactCallback(Some(xact_ended), std::ptr::null_mut());
        #[cfg(not(any(feature = "pg13", feature = "pg14")))]
        pg_sys::MarkGUCPrefixReserved(c"kinde_rls".as_ptr());
        #[cfg(any(feature = "pg13", feature = "pg14"))]
        pg_sys::EmitWarningsOnPlaceholders(c"kinde_rls".as_ptr());
    }
}

/// The settings other services put a request's user in (see the README's "Running on a
/// Supabase-style stack"). They are ordinary user settings that nobody defines, so PostgreSQL
/// keeps them as placeholders, and reading one means a search by name: three per row on the
/// PostgREST path. Unless `kinde_rls.watch_request_settings` is off, kinde_rls defines them
/// itself (same names, `USERSET`, hidden from `SHOW ALL` like a placeholder) with hooks that
/// bump [`REQUEST_GEN`] and record each value's source, so that a lookup can tell "unchanged"
/// from one counter. A value set before the library was loaded is carried over by PostgreSQL.
/// Unset, the two JSON settings read `{}` (so `current_setting(…, true)::jsonb` still works
/// where no service set them) and `request.jwt` reads `''`.
///
/// Should another library have defined one of them first, PostgreSQL refuses the second
/// definition; kinde_rls then compares the settings' text on each lookup.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request {
    Headers = 0,
    Jwt = 1,
    Claims = 2,
}

impl Request {
    pub const ALL: [Request; 3] = [Request::Headers, Request::Jwt, Request::Claims];

    pub fn name(self) -> &'static CStr {
        match self {
            Request::Headers => c"request.headers",
            Request::Jwt => c"request.jwt",
            Request::Claims => c"request.jwt.claims",
        }
    }

    fn setting(self) -> &'static GucSetting<Option<CString>> {
        match self {
            Request::Headers => &REQUEST_HEADERS,
            Request::Jwt => &REQUEST_JWT,
            Request::Claims => &REQUEST_JWT_CLAIMS,
        }
    }

    /// What an unset value reads as.
    fn boot(self) -> &'static CStr {
        match self {
            Request::Jwt => c"",
            Request::Headers | Request::Claims => c"{}",
        }
    }

    fn assign_hook(self) -> pg_sys::GucStringAssignHook {
        match self {
            Request::Headers => Some(headers_assigned),
            Request::Jwt => Some(jwt_assigned),
            Request::Claims => Some(claims_assigned),
        }
    }
}

/// Define the request settings (see [`Request`]) unless `kinde_rls.watch_request_settings` is
/// off; if any of them was defined already, watch none of them.
///
/// # Safety
/// As for [`define_string`].
unsafe fn watch_request_settings() {
    pg_sys::DefineCustomBoolVariable(
        c"kinde_rls.watch_request_settings".as_ptr(),
        c"Define request.headers, request.jwt and request.jwt.claims, so that get_user_id() notices their changes without a lookup per row.".as_ptr(),
        c"Read when the library loads (at server start when preloaded). Turn off only if another library defines one of these settings and is loaded after kinde_rls.".as_ptr(),
        WATCH_REQUEST_SETTINGS.as_ptr(),
        true,
        pg_sys::GucContext::PGC_SIGHUP,
        0,
        None,
        None,
        None,
    );
    if !WATCH_REQUEST_SETTINGS.get() {
        return;
    }
    let mut all = true;
    for r in Request::ALL {
        let defined = pgrx::PgTryBuilder::new(|| {
            pg_sys::DefineCustomStringVariable(
                r.name().as_ptr(),
                c"Set per request by PostgREST, Storage or Realtime; read by kinde_rls.".as_ptr(),
                c"Defined by kinde_rls so that a change is noticed without a lookup per row."
                    .as_ptr(),
                r.setting().as_ptr(),
                r.boot().as_ptr(),
                pg_sys::GucContext::PGC_USERSET,
                GucFlags::NO_SHOW_ALL.bits(),
                Some(request_check),
                r.assign_hook(),
                None,
            );
            true
        })
        .catch_others(|_| false)
        .execute();
        all &= defined;
    }
    WATCHING_REQUEST.store(all, Ordering::Relaxed);
}

/// A setting's bytes as text: `Ok(None)` when unset or empty; `Err(())` when they are not
/// UTF-8 (a `SQL_ASCII` database lets any bytes in). Never "unset" for unreadable bytes: an
/// issuer or audience that cannot be read must not mean "not checked".
///
/// # Safety
/// `p` is NULL or a NUL-terminated string PostgreSQL keeps valid until the setting next changes,
/// which cannot happen while one of our functions runs; callers copy what they keep.
unsafe fn text_of(p: *const c_char) -> Result<Option<&'static str>, ()> {
    if p.is_null() {
        return Ok(None);
    }
    match CStr::from_ptr(p).to_str() {
        Ok("") => Ok(None),
        Ok(v) => Ok(Some(v)),
        Err(_) => Err(()),
    }
}

/// A trust-bearing string setting; bytes that are not UTF-8 are a configuration error naming it.
pub fn str_setting(
    s: &GucSetting<Option<CString>>,
    name: &str,
) -> Result<Option<&'static str>, ConfigError> {
    // SAFETY: a string setting's pointer is NULL or a C string PostgreSQL keeps until the
    // setting changes, which it cannot while this runs (see text_of).
    unsafe { text_of(*s.as_ptr()) }.map_err(|()| {
        ConfigError::new(
            name,
            format!("{name} is not valid UTF-8"),
            format!("Set {name} again, from a database whose encoding is UTF8 (a SQL_ASCII database accepts any bytes)."),
        )
    })
}

/// Where a request's token comes from (`kinde_rls.token`, PostgREST's `request.*` settings):
/// bytes that are not UTF-8 are a refused token, never "no token".
fn request_text(p: *const c_char, name: &str) -> Result<Option<&'static str>, Refusal> {
    // SAFETY: `p` is a setting's value as PostgreSQL keeps it, valid until the setting
    // changes, which it cannot while this runs (see text_of).
    unsafe { text_of(p) }
        .map_err(|()| Refusal::new(Check::Format, format!("{name} is not valid UTF-8")))
}

/// `kinde_rls.token`.
pub fn token() -> Result<Option<&'static str>, Refusal> {
    // SAFETY: the pointer is read, not kept.
    request_text(unsafe { *TOKEN.as_ptr() }, "kinde_rls.token")
}

/// A request setting's value, `Ok(None)` when it is unset or does not exist.
pub fn request_setting(r: Request) -> Result<Option<&'static str>, Refusal> {
    let p = if WATCHING_REQUEST.load(Ordering::Relaxed) {
        // SAFETY: the pointer is read, not kept.
        unsafe { *r.setting().as_ptr() }
    } else {
        // SAFETY: GetConfigOption returns NULL for an unknown name when missing_ok.
        unsafe { pg_sys::GetConfigOption(r.name().as_ptr(), true, false) }
    };
    request_text(p, r.name().to_str().unwrap_or("request setting"))
}

/// A request setting's value when it was set in the session ([`set_in_session`]), else
/// `Ok(None)`; an inherited default is not read at all.
pub fn request_value(r: Request) -> Result<Option<&'static str>, Refusal> {
    if WATCHING_REQUEST.load(Ordering::Relaxed) {
        if !set_in_session(r, "") {
            return Ok(None);
        }
        return request_setting(r);
    }
    Ok(request_setting(r)?.filter(|v| set_in_session(r, v)))
}

/// Was this request setting set in the session (`SET`, `SET LOCAL`, `set_config()`, a
/// function's `SET` clause), rather than inherited as the session's reset value — a role,
/// database, server or connection default? Defaults survive `RESET ALL` and `DISCARD ALL`, and
/// any role may set its own (`ALTER ROLE … SET request.headers = …`), which would make its
/// identity every later connection's: they are not a request's. When kinde_rls watches the
/// settings this is the value's recorded source, which parallel workers restore with the value;
/// otherwise the text is compared with the reset value. Called only when a value changed.
fn set_in_session(r: Request, value: &str) -> bool {
    if WATCHING_REQUEST.load(Ordering::Relaxed) {
        return REQUEST_SOURCE[r as usize].load(Ordering::Relaxed)
            == pg_sys::GucSource::PGC_S_SESSION;
    }
    // SAFETY: the setting exists (its value was just read); the reset value is copied out
    // before anything else can change it.
    let reset = unsafe { text_of(pg_sys::GetConfigOptionResetString(r.name().as_ptr())) };
    !matches!(reset, Ok(Some(r)) if r == value)
}
