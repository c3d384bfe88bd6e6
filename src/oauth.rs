//! Signing in to PostgreSQL 18 with a token: kinde_rls as an OAuth validator module
//! (`oauth_validator_libraries = 'kinde_rls'`, `oauth` in `pg_hba.conf`).
//!
//! A login's token goes through the same verification as `verify_jwt()` (the configured
//! providers, their keys, every claim rule), then through what the `pg_hba.conf` line asks
//! ([`kinde_rls_core::login::check_login`]: its `issuer`, its `scope`). An authorized login's
//! identity (`SYSTEM_USER` is `oauth:` and it, and `pg_ident.conf` maps it) is the `sub`, or the
//! claims `kinde_rls.login_authn_id` names. The verified claims stay with the session: a
//! request without a token of its own is this login ([`crate::identity`]), until the token
//! expires.
//!
//! At login PostgreSQL has read only the server-wide settings (postgresql.conf, `ALTER SYSTEM`):
//! database and role settings apply after authentication, so the login is judged by those. The
//! session judges the login's claims again by its own settings when it uses them.
//!
//! PostgreSQL 18's headers declare the validator's structures (`libpq/oauth.h`), which pgrx does
//! not bind; they are declared here. The `pg_hba.conf` line is read through `MyProcPort`, whose
//! layout (`libpq/libpq-be.h`, `libpq/hba.h`) pgrx does not bind either: the fields up to those
//! read are declared, and checked against what PostgreSQL passes before any is trusted.

use std::cell::RefCell;
use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::rc::Rc;

use kinde_rls_core::{login, Error};
use pgrx::pg_sys;
use pgrx::prelude::*;

use crate::audit;
use crate::gucs;
use crate::identity::{self, Identity};
use crate::jwks;
use crate::stats::{self, Event};

// ---------------------------------------------------------------------------------------------
// libpq/oauth.h

#[repr(C)]
pub struct ValidatorModuleState {
    sversion: c_int,
    private_data: *mut c_void,
}

#[repr(C)]
pub struct ValidatorModuleResult {
    authorized: bool,
    authn_id: *mut c_char,
}

type ValidateCb = unsafe extern "C-unwind" fn(
    *const ValidatorModuleState,
    *const c_char,
    *const c_char,
    *mut ValidatorModuleResult,
) -> bool;

#[repr(C)]
pub struct OAuthValidatorCallbacks {
    magic: u32,
    startup_cb: Option<unsafe extern "C-unwind" fn(*mut ValidatorModuleState)>,
    shutdown_cb: Option<unsafe extern "C-unwind" fn(*mut ValidatorModuleState)>,
    validate_cb: Option<ValidateCb>,
}

const PG_OAUTH_VALIDATOR_MAGIC: u32 = 0x2025_0220;

static CALLBACKS: OAuthValidatorCallbacks = OAuthValidatorCallbacks {
    magic: PG_OAUTH_VALIDATOR_MAGIC,
    startup_cb: None,
    shutdown_cb: None,
    validate_cb: Some(validate),
};

/// What PostgreSQL 18 looks up in a library named by `oauth_validator_libraries`.
#[no_mangle]
pub extern "C-unwind" fn _PG_oauth_validator_module_init() -> *const OAuthValidatorCallbacks {
    &CALLBACKS
}

// ---------------------------------------------------------------------------------------------
// libpq/libpq-be.h (Port, up to `hba`) and libpq/hba.h (HbaLine, up to the oauth options)

#[repr(C)]
struct Port {
    sock: c_int,
    noblock: bool,
    proto: u32,
    laddr: pg_sys::SockAddr,
    raddr: pg_sys::SockAddr,
    remote_host: *mut c_char,
    remote_hostname: *mut c_char,
    remote_hostname_resolv: c_int,
    remote_hostname_errcode: c_int,
    remote_port: *mut c_char,
    local_host: [c_char; 64],
    database_name: *mut c_char,
    user_name: *mut c_char,
    cmdline_options: *mut c_char,
    guc_options: *mut c_void,
    application_name: *mut c_char,
    hba: *mut HbaLine,
}

#[repr(C)]
struct HbaLine {
    sourcefile: *mut c_char,
    linenumber: c_int,
    rawline: *mut c_char,
    conntype: c_int,
    databases: *mut c_void,
    roles: *mut c_void,
    addr: pg_sys::sockaddr_storage,
    addrlen: c_int,
    mask: pg_sys::sockaddr_storage,
    masklen: c_int,
    ip_cmp_method: c_int,
    hostname: *mut c_char,
    auth_method: c_int,
    usermap: *mut c_char,
    pamservice: *mut c_char,
    pam_use_hostname: bool,
    ldaptls: bool,
    ldapscheme: *mut c_char,
    ldapserver: *mut c_char,
    ldapport: c_int,
    ldapbinddn: *mut c_char,
    ldapbindpasswd: *mut c_char,
    ldapsearchattribute: *mut c_char,
    ldapsearchfilter: *mut c_char,
    ldapbasedn: *mut c_char,
    ldapscope: c_int,
    ldapprefix: *mut c_char,
    ldapsuffix: *mut c_char,
    clientcert: c_int,
    clientcertname: c_int,
    krb_realm: *mut c_char,
    include_realm: bool,
    compat_realm: bool,
    upn_username: bool,
    radiusservers: *mut c_void,
    radiusservers_s: *mut c_char,
    radiussecrets: *mut c_void,
    radiussecrets_s: *mut c_char,
    radiusidentifiers: *mut c_void,
    radiusidentifiers_s: *mut c_char,
    radiusports: *mut c_void,
    radiusports_s: *mut c_char,
    oauth_issuer: *mut c_char,
    oauth_scope: *mut c_char,
    oauth_validator: *mut c_char,
    oauth_skip_usermap: bool,
}

/// `uaOAuth` of `UserAuth` (libpq/hba.h), its last value.
const UA_OAUTH: c_int = 15;

/// `ClientConnectionInfo` (libpq/libpq-be.h): how this session authenticated, copied to its
/// parallel workers.
#[repr(C)]
struct ClientConnectionInfo {
    authn_id: *const c_char,
    auth_method: c_int,
}

extern "C" {
    // Written by PostgreSQL at authentication (and in a parallel worker, before any query).
    static mut MyClientConnectionInfo: ClientConnectionInfo;
}

/// What a login is judged by, from its `pg_hba.conf` line and connection.
struct Line {
    issuer: String,
    scope: Option<String>,
    client: String,
}

/// The `pg_hba.conf` line being served. `role` is the pointer PostgreSQL passed to
/// `validate_cb`, which is `MyProcPort->user_name`: finding it where the declared layout says is
/// the check that the layout is this server's, and so is an `oauth` line with an issuer.
///
/// # Safety
/// Called during authentication, with `role` as PostgreSQL passed it.
unsafe fn hba_line(role: *const c_char) -> Result<Line, String> {
    let port = pg_sys::MyProcPort as *const Port;
    if port.is_null() || !std::ptr::eq((*port).user_name, role) || (*port).hba.is_null() {
        return Err("this build does not match the server's connection structures (PostgreSQL 18 is required)".into());
    }
    let hba = &*(*port).hba;
    if hba.auth_method != UA_OAUTH || hba.oauth_issuer.is_null() {
        return Err("this build does not match the server's pg_hba.conf structures".into());
    }
    let text = |p: *const c_char| -> Option<String> {
        (!p.is_null()).then(|| CStr::from_ptr(p).to_string_lossy().into_owned())
    };
    if hba.oauth_skip_usermap {
        return Err(format!(
            "the pg_hba.conf line {} sets delegate_ident_mapping, which would let every valid token sign in as any role it names; kinde_rls leaves roles to pg_ident.conf: remove delegate_ident_mapping and map identities with map=",
            hba.linenumber
        ));
    }
    let issuer = text(hba.oauth_issuer).unwrap_or_default();
    // PostgreSQL also takes a discovery URL as the issuer; the token's iss is the issuer itself.
    if issuer.contains("/.well-known/") {
        return Err(format!(
            "the pg_hba.conf line {} names a discovery URL as its issuer; kinde_rls compares the token's iss with it, so name the issuer itself (issuer=\"https://<your-subdomain>.kinde.com\")",
            hba.linenumber
        ));
    }
    Ok(Line {
        issuer,
        scope: text(hba.oauth_scope),
        client: text((*port).remote_host).unwrap_or_else(|| "local".into()),
    })
}

// ---------------------------------------------------------------------------------------------
// The login

/// `validate_cb`: `authorized` only when every check passed; a refusal is a line in the server
/// log naming the check. Returns false (PostgreSQL's "internal error") never: every failure is a
/// refused login.
#[pg_guard]
unsafe extern "C-unwind" fn validate(
    _state: *const ValidatorModuleState,
    token: *const c_char,
    role: *const c_char,
    result: *mut ValidatorModuleResult,
) -> bool {
    (*result).authorized = false;
    (*result).authn_id = std::ptr::null_mut();
    let role_name = CStr::from_ptr(role).to_string_lossy().into_owned();
    // Without preloading every login would fetch keys on its own (no shared key cache, no shared
    // rate limit): anyone who can reach the port could make the server hammer the issuer.
    if !gucs::PRELOADED.load(std::sync::atomic::Ordering::Relaxed) {
        audit::login_failed(
            "kinde_rls is not in shared_preload_libraries",
            "As a validator kinde_rls needs its shared key cache: add it to shared_preload_libraries and restart.",
        );
        return true;
    }
    let line = match hba_line(role) {
        Ok(line) => line,
        Err(why) => {
            audit::login_failed("kinde_rls cannot serve this login", &why);
            return true;
        }
    };
    // libpq's token is header-safe ASCII (RFC 6750 b64token), so not UTF-8 is not a token.
    let token = CStr::from_ptr(token).to_str().unwrap_or("");
    if let Some(authn_id) = login(token, &line, &role_name) {
        if let Ok(c) = CString::new(authn_id) {
            (*result).authn_id = pg_sys::pstrdup(c.as_ptr());
            (*result).authorized = true;
        }
    }
    true
}

/// Judge a login's token; its authenticated identity when it passes.
fn login(token: &str, line: &Line, role: &str) -> Option<String> {
    let config = match identity::settings_config() {
        Ok(c) => c,
        Err(e) => {
            audit::login_failed(
                &format!("configuration error: {}", e.message),
                &format!("{} (at login only the server-wide settings apply)", e.hint),
            );
            return None;
        }
    };
    let names = match gucs::str_setting(&gucs::LOGIN_AUTHN_ID, "kinde_rls.login_authn_id")
        .map_err(|e| e.message)
        .and_then(|v| {
            login::parse_authn_claims(v.filter(|v| !v.trim().is_empty()).unwrap_or("sub"))
        }) {
        Ok(n) => n,
        Err(why) => {
            audit::login_failed("configuration error: kinde_rls.login_authn_id", &why);
            return None;
        }
    };
    // A login has no statement whose start to use.
    let now = identity::coarse_clock();
    let (outcome, took, fetches) = {
        let config = std::panic::AssertUnwindSafe(&config);
        identity::timed(move || {
            let mut source = jwks::Source::default();
            let v = kinde_rls_core::verify_configured(token, &config, now, &mut source)?;
            let claims = v.claims()?;
            login::check_login(&claims, &line.issuer, line.scope.as_deref())?;
            login::check_signer(&config, &v, &line.issuer)?;
            let id = login::authn_id(&claims, &names)?;
            Ok((v, claims, id))
        })
    };
    match outcome {
        Ok((v, claims, authn_id)) => {
            let issuer = kinde_rls_core::audit::issuer_of(&config, &claims);
            let row = stats::row_of(issuer.as_deref());
            identity::count_fetches(row, fetches);
            stats::verify_time(row, took);
            stats::count(row, Event::Verified);
            let valid_until = v.exp.saturating_add(config.leeway());
            remember(&v.payload, claims, valid_until, row, &authn_id);
            Some(authn_id)
        }
        Err(Error::Refused(r)) => {
            let a = kinde_rls_core::audit::audit(token, Some(&config), &r);
            let row = stats::row_of(a.issuer.as_deref());
            identity::count_fetches(row, fetches);
            stats::verify_time(row, took);
            audit::login_refused(&r, &a, row, role, &line.client);
            None
        }
        Err(Error::Config(e)) => {
            identity::count_fetches(0, fetches);
            audit::login_failed(&format!("configuration error: {}", e.message), &e.hint);
            None
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The session's login identity

thread_local! {
    /// The verified claims this session signed in with, and the identity PostgreSQL recorded
    /// for it (a backend is one thread).
    static LOGIN: RefCell<Option<(Rc<Identity>, String)>> = const { RefCell::new(None) };
}

/// Keep an authorized login's claims for the session, and hand them to its parallel workers
/// through `kinde_rls.login_identity` (set here only: it cannot be set after connection start,
/// and only by a superuser at connection start).
fn remember(
    payload: &str,
    claims: serde_json::Map<String, serde_json::Value>,
    until: i64,
    row: u16,
    authn_id: &str,
) {
    let id = Rc::new(Identity::from_claims(claims, payload, until, row));
    LOGIN.with(|l| *l.borrow_mut() = Some((id, authn_id.to_owned())));
    let value = serde_json::json!({
        "until": until,
        "row": row,
        "authn_id": authn_id,
        "payload": payload,
    });
    if let Ok(value) = CString::new(value.to_string()) {
        // SAFETY: sets a setting this library defined, during authentication (inside the
        // transaction InitPostgres commits: the value is the session's from here on, with a
        // priority, PGC_S_OVERRIDE, that no SQL, startup option or file reaches).
        unsafe {
            pg_sys::SetConfigOption(
                c"kinde_rls.login_identity".as_ptr(),
                value.as_ptr(),
                pg_sys::GucContext::PGC_SU_BACKEND,
                pg_sys::GucSource::PGC_S_OVERRIDE,
            );
        }
    }
}

/// The session's login identity: only in a session PostgreSQL authenticated with `oauth`, and
/// only for the identity it recorded. A parallel worker reads it from its leader's
/// `kinde_rls.login_identity`.
pub fn login_identity() -> Option<Rc<Identity>> {
    // SAFETY: reads of backend globals that PostgreSQL sets at authentication and copies to a
    // parallel worker before it runs any query.
    let recorded = unsafe {
        let info = &*std::ptr::addr_of!(MyClientConnectionInfo);
        if info.auth_method != UA_OAUTH || info.authn_id.is_null() {
            return None;
        }
        CStr::from_ptr(info.authn_id)
    };
    let (id, authn_id) = LOGIN.with(|l| l.borrow().clone()).or_else(|| {
        if !stats::in_parallel_worker() {
            return None;
        }
        let login = from_leader()?;
        LOGIN.with(|l| *l.borrow_mut() = Some(login.clone()));
        Some(login)
    })?;
    (recorded.to_bytes() == authn_id.as_bytes()).then_some(id)
}

/// A parallel worker's copy of its leader's login identity.
fn from_leader() -> Option<(Rc<Identity>, String)> {
    #[derive(serde::Deserialize)]
    struct Copy {
        until: i64,
        row: u16,
        authn_id: String,
        payload: String,
    }
    // Only the validator's own value: it alone sets PGC_S_OVERRIDE, which no SQL, startup
    // option or configuration file can (a session that signed in through another validator
    // must not have its workers take a value handed over any of those ways).
    // SAFETY: looks up a setting this library defined; reads its source.
    let ours = unsafe {
        let g = pg_sys::find_option(
            c"kinde_rls.login_identity".as_ptr(),
            false,
            true,
            pg_sys::WARNING as c_int,
        );
        !g.is_null() && (*g).source == pg_sys::GucSource::PGC_S_OVERRIDE
    };
    if !ours {
        return None;
    }
    let text = gucs::str_setting(&gucs::LOGIN_IDENTITY, "kinde_rls.login_identity").ok()??;
    let c: Copy = serde_json::from_str(text).ok()?;
    let claims = kinde_rls_core::token::full_claims(&c.payload).ok()?;
    let id = Identity::from_claims(claims, &c.payload, c.until, c.row);
    Some((Rc::new(id), c.authn_id))
}
