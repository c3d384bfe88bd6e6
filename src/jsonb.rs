//! `jsonb` results made from JSON text the verification already validated.

use pgrx::pg_sys;

use crate::errors;

/// A `jsonb` result made straight from JSON text that was already validated (a token's payload),
/// skipping the round trip through a `serde_json` map that `JsonB` would make.
pub struct RawJsonB(std::ffi::CString);

impl RawJsonB {
    /// One copy of the text, NUL-terminated for `jsonb_in`. The text is JSON that was parsed
    /// already, so it holds no raw NUL; should one appear, fail closed to JSON null.
    pub fn new(json: &str) -> Self {
        RawJsonB(std::ffi::CString::new(json).unwrap_or_else(|_| c"null".to_owned()))
    }
}

impl pgrx::IntoDatum for RawJsonB {
    fn into_datum(self) -> Option<pg_sys::Datum> {
        // The payload was validated (no NUL, numbers jsonb can hold), so jsonb_in is not
        // expected to refuse it; should it (a \u escape beyond ASCII in a database that is not
        // UTF8), that is a token this database cannot represent: refused, never an error
        // from deep inside (with a Rust backtrace when RUST_BACKTRACE is set).
        let text = std::panic::AssertUnwindSafe(self.0);
        // SAFETY: `jsonb_in` takes one argument, a NUL-terminated C string, which `text` owns
        // and keeps alive for the call; its errors are caught below.
        pgrx::PgTryBuilder::new(move || unsafe {
            pgrx::direct_function_call_as_datum(
                pg_sys::jsonb_in,
                &[Some(pg_sys::Datum::from(text.as_ptr()))],
            )
        })
        .catch_others(|e| {
            let why = match &e {
                pgrx::pg_sys::panic::CaughtError::PostgresError(r)
                | pgrx::pg_sys::panic::CaughtError::ErrorReport(r)
                | pgrx::pg_sys::panic::CaughtError::RustPanic { ereport: r, .. } => {
                    r.message().to_owned()
                }
            };
            errors::refuse(&kinde_rls_core::Refusal::new(
                kinde_rls_core::Check::Format,
                format!("the claims cannot be stored as jsonb in this database ({why})"),
            ))
        })
        .execute()
    }

    fn type_oid() -> pg_sys::Oid {
        pg_sys::JSONBOID
    }
}

// SAFETY: the datum returned is the `jsonb` that `into_datum` made (or SQL NULL), matching
// the return type `SqlTranslatable` declares below.
unsafe impl pgrx::callconv::BoxRet for RawJsonB {
    unsafe fn box_into<'fcx>(
        self,
        fcinfo: &mut pgrx::callconv::FcInfo<'fcx>,
    ) -> pgrx::datum::Datum<'fcx> {
        match pgrx::IntoDatum::into_datum(self) {
            // SAFETY: `d` is a `jsonb` datum, the type this function is declared to return.
            Some(d) => unsafe { fcinfo.return_raw_datum(d) },
            None => fcinfo.return_null(),
        }
    }
}

// SAFETY: declares `jsonb`, the type of the datum `into_datum` returns.
unsafe impl pgrx::pgrx_sql_entity_graph::metadata::SqlTranslatable for RawJsonB {
    const TYPE_IDENT: &'static str = pgrx::pgrx_resolved_type!(RawJsonB);
    const TYPE_ORIGIN: pgrx::pgrx_sql_entity_graph::metadata::TypeOrigin =
        pgrx::pgrx_sql_entity_graph::metadata::TypeOrigin::External;
    const ARGUMENT_SQL: Result<
        pgrx::pgrx_sql_entity_graph::metadata::SqlMappingRef,
        pgrx::pgrx_sql_entity_graph::metadata::ArgumentError,
    > = Ok(pgrx::pgrx_sql_entity_graph::metadata::SqlMappingRef::literal("jsonb"));
    const RETURN_SQL: Result<
        pgrx::pgrx_sql_entity_graph::metadata::ReturnsRef,
        pgrx::pgrx_sql_entity_graph::metadata::ReturnsError,
    > = Ok(pgrx::pgrx_sql_entity_graph::metadata::ReturnsRef::One(
        pgrx::pgrx_sql_entity_graph::metadata::SqlMappingRef::literal("jsonb"),
    ));
}
