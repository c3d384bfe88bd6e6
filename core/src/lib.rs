//! The Postgres-free core of kinde_rls: parse a compact JWS, pick a key, verify the signature,
//! check the claims, and read identity out of them. Everything here is plain Rust, unit-tested
//! with `cargo test -p kinde_rls_core` and fuzzable; the extension only wraps it.

//!
//! One token's path, a module at a time: [`token`] parses it, [`pipeline`] picks the provider
//! (from [`config`]) and the keys (from [`keys`], fetched by [`fetch`]), checks the signature
//! (the one call into [`alg`]), and has [`rules`] check the claims; [`error`] says what failed.
//! [`explain`] renders the same run as `jwt_explain()` rows, and [`claims`] reads identity out
//! of what passed. `jws_verify` takes the same stages without the claims
//! ([`pipeline::verify_jws`]).

pub mod alg;
pub mod audit;
pub mod claims;
pub mod config;
pub mod error;
pub mod explain;
pub mod fetch;
pub mod keycache;
pub mod keys;
pub mod login;
pub mod pipeline;
pub mod rules;
pub mod sign;
pub mod token;
#[cfg(test)]
mod vectors;

pub use alg::Alg;
pub use config::{Config, Provider, Settings};
pub use error::{Check, ConfigError, Error, Refusal};
pub use explain::{explain, explain_configured, ExplainRow};
pub use fetch::RemoteSource;
pub use keys::{explicit_keys, parse_jwks, Ignored, Key, KeyKind, KeySet};
pub use pipeline::{
    check_trusted_claims, identify_configured, verify, verify_configured, verify_expecting,
    verify_jws, KeySource, NoRemote,
};
pub use rules::{Policy, Verified};
