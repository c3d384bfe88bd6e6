//! Arguments taken as PostgreSQL hands them over, so that no input can turn into a panic
//! (SQLSTATE XX000): pgrx's `&str` panics on text that is not UTF-8 (a `SQL_ASCII` database
//! accepts any bytes), and its `JsonB` panics on jsonb that serde_json cannot read (a number
//! beyond `f64`, nesting deeper than 128). Each function decides what such input means: a
//! refused token, a bad key, a name that matches nothing.

use pgrx::callconv::{Arg, ArgAbi};
use pgrx::nullable::Nullable;
use pgrx::pg_sys;
use pgrx::pgrx_sql_entity_graph::metadata::{
    ArgumentError, ReturnsError, ReturnsRef, SqlMappingRef, SqlTranslatable, TypeOrigin,
};
use pgrx::FromDatum;

/// A `text` argument: its bytes, and whether they are UTF-8.
pub struct Text<'a>(pub &'a [u8]);

impl<'a> Text<'a> {
    /// The text, or `None` when its bytes are not UTF-8.
    pub fn utf8(&self) -> Option<&'a str> {
        std::str::from_utf8(self.0).ok()
    }
}

impl FromDatum for Text<'_> {
    unsafe fn from_polymorphic_datum(
        datum: pg_sys::Datum,
        is_null: bool,
        typoid: pg_sys::Oid,
    ) -> Option<Self> {
        // SAFETY: a text datum is a varlena, which is what `&[u8]` reads (detoasted).
        unsafe { <&[u8]>::from_polymorphic_datum(datum, is_null, typoid) }.map(Text)
    }
}

/// A `jsonb` argument: the value, or why serde_json could not read its text.
pub struct Jsonb(pub Result<serde_json::Value, String>);

impl FromDatum for Jsonb {
    unsafe fn from_polymorphic_datum(
        datum: pg_sys::Datum,
        is_null: bool,
        _typoid: pg_sys::Oid,
    ) -> Option<Self> {
        if is_null {
            return None;
        }
        // SAFETY: a jsonb datum; jsonb_out returns a palloc'd C string, which is copied before
        // it is freed with the memory context.
        let text = unsafe {
            pgrx::direct_function_call::<&std::ffi::CStr>(pg_sys::jsonb_out, &[Some(datum)])
        }?
        .to_str()
        .map(str::to_owned);
        Some(Jsonb(match text {
            Ok(t) => kinde_rls_core::token::parse_value(&t).map_err(|e| e.to_string()),
            Err(_) => Err("it is not valid UTF-8".into()),
        }))
    }
}

/// A `jsonb` argument that must be an object (22023 otherwise, naming `arg`).
pub fn obj_or_raise(claims_json: Jsonb, arg: &str) -> serde_json::Map<String, serde_json::Value> {
    let bad = |m: String| -> ! {
        crate::errors::config(&kinde_rls_core::ConfigError::new(
            arg,
            m,
            format!("Pass a jsonb object as {arg}, e.g. '{{\"sub\": \"kp_123\"}}'."),
        ))
    };
    match claims_json.0 {
        Ok(serde_json::Value::Object(m)) => m,
        Ok(_) => bad(format!("{arg} must be a JSON object")),
        Err(e) => bad(format!("{arg} cannot be read: {e}")),
    }
}

/// A token argument: text that is not UTF-8 is not a token (28000, `format`).
pub fn token_arg<'a>(token: &Text<'a>) -> &'a str {
    match token.utf8() {
        // ASCII white space only: the text around a token in a header or a file, not every
        // character Unicode calls a space.
        Some(t) => t.trim_matches(|c: char| c.is_ascii_whitespace()),
        None => crate::errors::refuse(&kinde_rls_core::Refusal::new(
            kinde_rls_core::Check::Format,
            "the token is not valid UTF-8",
        )),
    }
}

/// A key or algorithm argument: text that is not UTF-8 is a bad argument (22023).
pub fn arg_text<'a>(value: &Text<'a>, arg: &str) -> &'a str {
    value.utf8().unwrap_or_else(|| {
        crate::errors::config(&kinde_rls_core::ConfigError::new(
            arg,
            format!("{arg} is not valid UTF-8"),
            format!("Pass {arg} as UTF-8 text."),
        ))
    })
}

macro_rules! unbox {
    () => {
        unsafe fn unbox_arg_unchecked(arg: Arg<'_, 'fcx>) -> Self {
            let index = arg.index();
            // SAFETY: pgrx calls this with an argument of the SQL type declared below.
            unsafe { arg.unbox_arg_using_from_datum() }
                .unwrap_or_else(|| panic!("argument {index} must not be null"))
        }

        unsafe fn unbox_nullable_arg(arg: Arg<'_, 'fcx>) -> Nullable<Self> {
            // SAFETY: pgrx calls this with an argument of the SQL type declared below; a NULL
            // comes back as `None`, not read.
            unsafe { arg.unbox_arg_using_from_datum() }.into()
        }
    };
}

macro_rules! sql_type {
    ($sql:literal) => {
        const TYPE_ORIGIN: TypeOrigin = TypeOrigin::External;
        const ARGUMENT_SQL: Result<SqlMappingRef, ArgumentError> = Ok(SqlMappingRef::literal($sql));
        const RETURN_SQL: Result<ReturnsRef, ReturnsError> =
            Ok(ReturnsRef::One(SqlMappingRef::literal($sql)));
    };
}

// SAFETY: unboxing reads the argument with `FromDatum` for `&[u8]`, which is sound for the
// `text` datum pgrx passes (the SQL type `SqlTranslatable` declares below).
unsafe impl<'fcx> ArgAbi<'fcx> for Text<'fcx> {
    unbox!();
}

// SAFETY: unboxing reads the argument with `FromDatum` for `Jsonb`, which calls `jsonb_out` on
// the `jsonb` datum pgrx passes (the SQL type `SqlTranslatable` declares below).
unsafe impl<'fcx> ArgAbi<'fcx> for Jsonb {
    unbox!();
}

// SAFETY: the SQL types are the ones the datums are read as.
unsafe impl SqlTranslatable for Text<'_> {
    const TYPE_IDENT: &'static str = pgrx::pgrx_resolved_type!(Text<'static>);
    sql_type!("TEXT");
}

// SAFETY: the SQL type is the one the datum is read as (`jsonb`, through `jsonb_out`).
unsafe impl SqlTranslatable for Jsonb {
    const TYPE_IDENT: &'static str = pgrx::pgrx_resolved_type!(Jsonb);
    sql_type!("jsonb");
}
