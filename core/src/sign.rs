//! Signing, for tests, demos and the HS256 re-signing flow. Private keys come as PEM (PKCS#8, or
//! PKCS#1 for RSA); HMAC secrets must be as long as the hash (RFC 7518 §3.2).

use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::{Map, Value};

use crate::error::ConfigError;
use crate::keys::{algorithm_name, min_hmac_bytes, parse_algorithm};
use crate::token::b64_encode;

fn arg_error(arg: &str, message: String, hint: &str) -> ConfigError {
    ConfigError::new(arg, message, hint)
}

/// Sign `claims` with `key` using `algorithm`. `extra_header` members (e.g. `kid`) are added to
/// the protected header; `alg` cannot be overridden.
pub fn sign(
    claims: &Map<String, Value>,
    key: &str,
    algorithm: &str,
    extra_header: Option<&Map<String, Value>>,
) -> Result<String, ConfigError> {
    let alg = parse_algorithm(algorithm).map_err(|e| {
        arg_error("algorithm", e, "Pass as algorithm one of HS256, HS384, HS512, RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA.")
    })?;
    let enc = encoding_key(key, alg)?;
    let mut header = Map::new();
    if let Some(extra) = extra_header {
        for (k, v) in extra {
            header.insert(k.clone(), v.clone());
        }
    }
    header.insert("alg".into(), Value::from(algorithm_name(alg)));
    header.entry("typ").or_insert_with(|| Value::from("JWT"));
    let h = b64_encode(Value::Object(header).to_string().as_bytes());
    let p = b64_encode(Value::Object(claims.clone()).to_string().as_bytes());
    let input = format!("{h}.{p}");
    let sig = jsonwebtoken::crypto::sign(input.as_bytes(), &enc, alg).map_err(|_| {
        arg_error(
            "key",
            format!("the key cannot sign with {}", algorithm_name(alg)),
            "Pass as key a private key of the algorithm's type (RSA for RS*/PS*, EC P-256/P-384 for ES256/ES384, Ed25519 for EdDSA).",
        )
    })?;
    Ok(format!("{input}.{sig}"))
}

fn encoding_key(key: &str, alg: Algorithm) -> Result<EncodingKey, ConfigError> {
    use jsonwebtoken::AlgorithmFamily::*;
    let pem_hint = "Pass as key the private key as PEM (-----BEGIN PRIVATE KEY-----).";
    let bad_pem = |what: &str| {
        arg_error(
            "key",
            format!("the key is not a PEM {what} private key"),
            pem_hint,
        )
    };
    match alg.family() {
        Hmac => {
            crate::keys::check_hmac_secret(key, min_hmac_bytes(alg)).map_err(|p| {
                arg_error(
                    "key",
                    p.describe("the key"),
                    "Pass the HMAC secret as key, or choose the algorithm that fits the key (RFC 7518 §3.2).",
                )
            })?;
            Ok(EncodingKey::from_secret(key.as_bytes()))
        }
        Rsa => EncodingKey::from_rsa_pem(key.as_bytes()).map_err(|_| bad_pem("RSA")),
        Ec => EncodingKey::from_ec_pem(key.as_bytes()).map_err(|_| bad_pem("EC (PKCS#8)")),
        Ed => EncodingKey::from_ed_pem(key.as_bytes()).map_err(|_| bad_pem("Ed25519 (PKCS#8)")),
    }
}
