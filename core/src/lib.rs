//! The Postgres-free core of kinde_rls: parse a compact JWS, pick a key, verify the signature,
//! check the claims, and read identity out of them. Everything here is plain Rust, unit-tested
//! with `cargo test -p kinde_rls_core` and fuzzable; the extension only wraps it.

pub mod claims;
pub mod config;
pub mod error;
pub mod fetch;
pub mod keycache;
pub mod keys;
pub mod sign;
pub mod token;
pub mod verify;

pub use config::{Config, KeySource, Provider, RemoteSource, Settings};
pub use error::{Check, ConfigError, Error, Refusal};
pub use keys::{parse_jwks, Ignored, Key, KeyKind, KeySet};
pub use verify::{explain, verify, ExplainRow, Policy, Verified};

/// Parse an explicit key argument: a PEM public key, a JWK or JWKS JSON text, or else an HMAC
/// secret (which passes [`keys::check_hmac_secret`], like every secret). `algorithm` must fit
/// the key: a PEM or JWK is never used as an HMAC secret.
pub fn explicit_keys(
    key: &str,
    algorithm: &str,
) -> Result<(Vec<Key>, jsonwebtoken::Algorithm), ConfigError> {
    let alg = keys::parse_algorithm(algorithm).map_err(|e| {
        ConfigError::new(
            "algorithm",
            e,
            "Pass the algorithm the key is for, e.g. 'RS256' for an RSA public key.",
        )
    })?;
    let bad_key = |m: String| {
        ConfigError::new(
            "key",
            m,
            "Pass as key an HMAC secret, a PEM public key, or a JWK/JWKS JSON text.",
        )
    };
    let t = key.trim_start();
    let list = if t.starts_with("-----BEGIN") {
        vec![keys::key_from_pem(key).map_err(|e| bad_key(format!("the key cannot be used: {e}")))?]
    } else if t.starts_with('{') {
        parse_jwks(key, true)
            .map_err(|e| bad_key(format!("the key cannot be used: {e}")))?
            .keys
    } else if alg.family() == jsonwebtoken::AlgorithmFamily::Hmac {
        vec![keys::hmac_key(key, keys::min_hmac_bytes(alg)).map_err(|p| {
            ConfigError::new(
                "key",
                p.describe("the key"),
                "Pass the full HMAC secret as key, or a public key (PEM, JWK) with the algorithm that fits it.",
            )
        })?]
    } else {
        // Not PEM, not JSON, and the algorithm is not HMAC: whatever it is, it is not a key for
        // this algorithm, and it is never taken as a secret.
        return Err(ConfigError::new(
            "algorithm",
            format!(
                "{} needs a public key (PEM or JWK), and the key is neither",
                keys::algorithm_name(alg)
            ),
            "Pass the algorithm that fits the key, e.g. verify_jwt(token, key, 'RS256') for an RSA public key; a PEM or JWK is never used as an HMAC secret.",
        ));
    };
    if let Some(reason) = list
        .iter()
        .map(|k| k.permits(alg))
        .find_map(Result::err)
        .filter(|_| list.iter().all(|k| k.permits(alg).is_err()))
    {
        return Err(ConfigError::new(
            "algorithm",
            reason,
            "Pass the algorithm that fits the key, e.g. verify_jwt(token, key, 'RS256') for an RSA public key; a PEM or JWK is never used as an HMAC secret.",
        ));
    }
    Ok((list, alg))
}
