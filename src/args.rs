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

macro_rules! unbox {
    () => {
        unsafe fn unbox_arg_unchecked(arg: Arg<'_, 'fcx>) -> Self {
            let index = arg.index();
            // SAFETY: pgrx calls this with an argument of the SQL type declared below.
            unsafe { arg.unbox_arg_using_from_datum() }
                .unwrap_or_else(|| panic!("argument {index} must not be null"))
        }

        unsafe fn unbox_nullable_arg(arg: Arg<'_, 'fcx>) -> Nullable<Self> {
            // SAFETY: as above.
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
