//! The audit log (`kinde_rls.log_refusals`) and the counters of refusals.
//!
//! A refused token is counted under its configured issuer, always; with
//! `kinde_rls.log_refusals = on` it is also written to the server log at LOG level:
//!
//! ```text
//! LOG:  kinde_rls: JWT refused: exp check failed (token expired)
//! DETAIL:  issuer="https://acme.kinde.com" kid="k1" sub="kp_1" role="app" client=10.0.0.7: <why>
//! ```
//!
//! Only what [`kinde_rls_core::audit`] allows is named: never the token, its signature or a
//! key, and the `sub` only when the signature verified. The line hides the statement (which may
//! hold the token as a literal) whatever `log_min_error_statement` says. At most
//! `kinde_rls.log_refusals_per_second` lines are written per second; the rest are counted
//! (`log_suppressed`) and the next line written says how many were not.

use std::ffi::{c_char, c_int, CStr, CString};

use kinde_rls_core::audit::Audit;
use kinde_rls_core::Refusal;
use pgrx::pg_sys;

use crate::gucs;
use crate::stats::{self, Event};

/// Count a refusal under `row` and, when asked to, log it.
pub fn refused(r: &Refusal, audit: &Audit, row: u16) {
    stats::count(row, Event::Refused(r.check));
    // A parallel worker refuses its leader's request: the leader logs it, with the client.
    if !gucs::LOG_REFUSALS.get() || stats::in_parallel_worker() {
        return;
    }
    write_refusal("kinde_rls: ", r, audit, row, who);
}

/// A refused PostgreSQL 18 login ([`crate::oauth`]): counted, and always logged (a failed
/// login is worth a line whatever `kinde_rls.log_refusals` says). `role` and `client` come from
/// the connection: at login there is no current user to ask.
#[cfg(feature = "pg18")]
pub fn login_refused(r: &Refusal, audit: &Audit, row: u16, role: &str, client: &str) {
    stats::count(row, Event::Refused(r.check));
    write_refusal("kinde_rls: login refused: ", r, audit, row, || {
        format!(
            "role={} client={}",
            kinde_rls_core::error::quote(role),
            one_line(client)
        )
    });
}

/// One refusal line, within `kinde_rls.log_refusals_per_second`: the rest are counted as
/// suppressed, and the next line written says how many were not.
fn write_refusal(prefix: &str, r: &Refusal, audit: &Audit, row: u16, who: impl FnOnce() -> String) {
    let limit = u32::try_from(gucs::LOG_REFUSALS_PER_SECOND.get()).unwrap_or(1);
    if !stats::may_log(limit) {
        stats::count(row, Event::LogSuppressed);
        return;
    }
    let facts = audit.describe();
    let mut detail = format!(
        "{}{}{}: {}",
        facts,
        if facts.is_empty() { "" } else { " " },
        who(),
        one_line(&r.detail)
    );
    let unreported = stats::take_unreported();
    if unreported > 0 {
        detail.push_str(&format!(
            " ({unreported} earlier refusals were not logged: kinde_rls.log_refusals_per_second)"
        ));
    }
    log(&format!("{prefix}{}", r.message()), &detail);
}

/// A login that could not be judged at all (a configuration error, a `pg_hba.conf` line
/// kinde_rls cannot serve): always logged, and the login is refused.
#[cfg(feature = "pg18")]
pub fn login_failed(message: &str, detail: &str) {
    log(
        &format!("kinde_rls: login refused: {message}"),
        &one_line(detail),
    );
}

/// The once-per-session line of a session that takes `request.jwt.claims` as verified; whether
/// it was written (when the audit log is off it is not, and is written once it is turned on).
pub fn trusting_claims() -> bool {
    if !gucs::LOG_REFUSALS.get() || stats::in_parallel_worker() {
        return false;
    }
    log(
        "kinde_rls: trusting request.jwt.claims without a signature (kinde_rls.trust_request_claims is on)",
        &format!("{}: logged once per session", who()),
    );
    true
}

fn one_line(s: &str) -> String {
    s.replace('\n', "\\n").replace('\r', "\\r")
}

/// `role=<current user> client=<address>`: who was refused.
fn who() -> String {
    // SAFETY: reads the backend's current user id and its name (missing_ok: a dropped role reads
    // as unknown), and the client port, which is null outside a client connection.
    unsafe {
        let name = pg_sys::GetUserNameFromId(pg_sys::GetUserId(), true);
        let role = if name.is_null() {
            "(unknown)".to_string()
        } else {
            CStr::from_ptr(name).to_string_lossy().into_owned()
        };
        // The client's address as inet_client_addr() gives it; NULL (a unix socket, or no
        // client: a background worker) reads as "local".
        let client =
            pgrx::fcinfo::direct_function_call_as_datum(|f| pg_sys::inet_client_addr(f), &[])
                .and_then(|inet| {
                    pgrx::fcinfo::direct_function_call::<String>(
                        |f| pg_sys::network_host(f),
                        &[Some(inet)],
                    )
                })
                .unwrap_or_else(|| "local".to_string());
        format!(
            "role={} client={}",
            kinde_rls_core::error::quote(&role),
            one_line(&client)
        )
    }
}

unsafe extern "C-unwind" {
    fn errstart(elevel: c_int, domain: *const c_char) -> bool;
    fn errfinish(filename: *const c_char, lineno: c_int, funcname: *const c_char);
    fn errcode(sqlerrcode: c_int) -> c_int;
    fn errmsg_internal(fmt: *const c_char, ...) -> c_int;
    fn errdetail_internal(fmt: *const c_char, ...) -> c_int;
    fn errhidestmt(hide: bool) -> c_int;
    fn errhidecontext(hide: bool) -> c_int;
}

/// One LOG line, to the server log only (`LOG_SERVER_ONLY`: a session that sets
/// `client_min_messages = log` is not told about other sessions' refusals, such as how many
/// were suppressed), without the statement or its context (either may hold a token).
///
/// `errfinish()` ends with `CHECK_FOR_INTERRUPTS()`: a cancel or `statement_timeout` pending
/// there would jump (`longjmp`) over the Rust frames that called us, which hold borrows. So
/// interrupts are held while the line is written (they are served at the next check, as an
/// ordinary error), and the calls go through pgrx's boundary, which turns any error raised
/// inside into an unwinding panic.
fn log(message: &str, detail: &str) {
    let msg = CString::new(message.replace('\0', "")).unwrap_or_default();
    let det = CString::new(detail.replace('\0', "")).unwrap_or_default();
    // SAFETY: LOG does not end the statement; every string outlives the call, and "%s" is given
    // one C string. InterruptHoldoffCount is this backend's (HOLD_INTERRUPTS/RESUME_INTERRUPTS),
    // restored on every path: pg_guard_ffi_boundary returns or panics, and the guard below
    // decrements on both (unless an ERROR already reset it).
    unsafe {
        struct Held;
        impl Drop for Held {
            fn drop(&mut self) {
                // SAFETY: undoes the increment below, in this backend. An ERROR raised inside
                // has already reset the count to 0 (errfinish does before it jumps): then there
                // is nothing to undo.
                unsafe {
                    pg_sys::InterruptHoldoffCount = pg_sys::InterruptHoldoffCount.saturating_sub(1);
                }
            }
        }
        pg_sys::InterruptHoldoffCount += 1;
        let _held = Held;
        pg_sys::ffi::pg_guard_ffi_boundary(|| {
            if errstart(pg_sys::LOG_SERVER_ONLY as c_int, c"kinde_rls".as_ptr()) {
                errcode(pgrx::PgSqlErrorCode::ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION as c_int);
                errmsg_internal(c"%s".as_ptr(), msg.as_ptr());
                errdetail_internal(c"%s".as_ptr(), det.as_ptr());
                errhidestmt(true);
                errhidecontext(true);
                errfinish(
                    c"audit.rs".as_ptr(),
                    line!() as c_int,
                    c"kinde_rls_audit".as_ptr(),
                );
            }
        });
    }
}
