//! The one mapping from core failures to PostgreSQL errors.
//!
//! | failure                     | SQLSTATE | message / detail / hint                     |
//! |-----------------------------|----------|---------------------------------------------|
//! | token refused ([`Refusal`]) | 28000    | names the check; DETAIL says what was found |
//! | bad setting or argument     | 22023    | says what is wrong; HINT names the setting  |
//!
//! Neither carries a secret or a whole token: the core only ever quotes short claim values.

use kinde_rls_core::{ConfigError, Error, Refusal};
use pgrx::pg_sys::panic::ErrorReport;
use pgrx::{PgLogLevel, PgSqlErrorCode};

pub fn refuse(r: &Refusal) -> ! {
    ErrorReport::new(
        PgSqlErrorCode::ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION,
        r.message(),
        "kinde_rls",
    )
    .set_detail(r.detail.clone())
    .report(PgLogLevel::ERROR);
    unreachable!("ERROR does not return")
}

pub fn config(c: &ConfigError) -> ! {
    ErrorReport::new(
        PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
        c.message.clone(),
        "kinde_rls",
    )
    .set_hint(c.hint.clone())
    .report(PgLogLevel::ERROR);
    unreachable!("ERROR does not return")
}

/// Every key fetch `refresh_jwks()` tried failed.
pub fn fetch_failed(detail: &str) -> ! {
    ErrorReport::new(
        PgSqlErrorCode::ERRCODE_CONNECTION_EXCEPTION,
        "kinde_rls: could not fetch keys from any issuer",
        "kinde_rls",
    )
    .set_detail(detail.to_string())
    .report(PgLogLevel::ERROR);
    unreachable!("ERROR does not return")
}

pub fn raise(e: &Error) -> ! {
    match e {
        Error::Refused(r) => refuse(r),
        Error::Config(c) => config(c),
    }
}

/// Run pure core code, turning a panic (a bug, never expected) into a refusal instead of letting
/// it surface as XX000: the token is not trusted when the verifier misbehaves.
pub fn guarded<T>(
    f: impl FnOnce() -> Result<T, Error> + std::panic::UnwindSafe,
) -> Result<T, Error> {
    use pgrx::pg_sys::panic::{CaughtError, ErrorReportWithLevel};
    std::panic::catch_unwind(f).unwrap_or_else(|payload| {
        // A PostgreSQL ERROR (a cancel, an out-of-memory, an ereport from a key fetch) travels
        // as a panic too: it is not ours to swallow.
        if payload.is::<CaughtError>()
            || payload.is::<ErrorReportWithLevel>()
            || payload.is::<ErrorReport>()
        {
            std::panic::resume_unwind(payload);
        }
        Err(Error::Refused(Refusal::new(
            kinde_rls_core::Check::Format,
            "the verifier failed on this token; it is refused",
        )))
    })
}
