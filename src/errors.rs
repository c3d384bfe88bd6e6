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
    std::panic::catch_unwind(f).unwrap_or_else(|_| {
        Err(Error::Refused(Refusal::new(
            kinde_rls_core::Check::Format,
            "the verifier failed on this token; it is refused",
        )))
    })
}
