//! Signing, for tests, demos and the HS256 re-signing flow. Private keys come as PEM (PKCS#8, or
//! PKCS#1 for RSA); HMAC secrets must be as long as the hash (RFC 7518 §3.2).

use aws_lc_rs::{hmac, rand, signature as sig};
use jsonwebtoken::EncodingKey;
use serde_json::{Map, Value};

use crate::alg::{Alg, Family};
use crate::error::ConfigError;
use crate::keys::min_hmac_bytes;
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
    let alg = Alg::parse(algorithm).map_err(|e| {
        arg_error(
            "algorithm",
            e,
            &format!(
                "Pass as algorithm one of {}.",
                Alg::ALL.map(Alg::name).join(", ")
            ),
        )
    })?;
    let signer = signer(key, alg)?;
    let mut header = Map::new();
    if let Some(extra) = extra_header {
        for (k, v) in extra {
            header.insert(k.clone(), v.clone());
        }
    }
    header.insert("alg".into(), Value::from(alg.name()));
    header.entry("typ").or_insert_with(|| Value::from("JWT"));
    let h = b64_encode(Value::Object(header).to_string().as_bytes());
    let p = b64_encode(Value::Object(claims.clone()).to_string().as_bytes());
    let input = format!("{h}.{p}");
    let signature = signer.sign(input.as_bytes()).ok_or_else(|| {
        arg_error(
            "key",
            format!("the key cannot sign with {}", alg.name()),
            "Pass as key a private key of the algorithm's type (RSA for RS*/PS*, EC P-256/P-384/P-521 for ES256/ES384/ES512, Ed25519 for EdDSA).",
        )
    })?;
    Ok(format!("{input}.{}", b64_encode(&signature)))
}

/// A private key ready to sign with one algorithm.
enum Signer {
    Hmac(Box<hmac::Key>),
    Rsa(sig::RsaKeyPair, &'static dyn sig::RsaEncoding),
    Ec(sig::EcdsaKeyPair),
    Ed(sig::Ed25519KeyPair),
}

impl Signer {
    fn sign(&self, message: &[u8]) -> Option<Vec<u8>> {
        let rng = rand::SystemRandom::new();
        match self {
            Signer::Hmac(k) => Some(hmac::sign(k, message).as_ref().to_vec()),
            Signer::Rsa(pair, encoding) => {
                let mut out = vec![0; pair.public_modulus_len()];
                pair.sign(*encoding, &rng, message, &mut out).ok()?;
                Some(out)
            }
            Signer::Ec(pair) => Some(pair.sign(&rng, message).ok()?.as_ref().to_vec()),
            Signer::Ed(pair) => Some(pair.sign(message).as_ref().to_vec()),
        }
    }
}

/// The private key for `alg` from `key`. The PEM framing is read by jsonwebtoken's decoder
/// (PKCS#8; PKCS#1 for RSA); the key itself by aws-lc-rs, which checks that it fits the
/// algorithm's curve.
fn signer(key: &str, alg: Alg) -> Result<Signer, ConfigError> {
    let pem_hint = "Pass as key the private key as PEM (-----BEGIN PRIVATE KEY-----).";
    let bad_pem = |what: &str| {
        arg_error(
            "key",
            format!("the key is not a PEM {what} private key"),
            pem_hint,
        )
    };
    let pem = key.as_bytes();
    match alg.family() {
        Family::Hmac => {
            crate::keys::check_hmac_secret(key, min_hmac_bytes(alg)).map_err(|p| {
                arg_error(
                    "key",
                    p.describe("the key"),
                    "Pass the HMAC secret as key, or choose the algorithm that fits the key (RFC 7518 §3.2).",
                )
            })?;
            Ok(Signer::Hmac(Box::new(crate::alg::hmac_key(alg, pem))))
        }
        Family::Rsa => {
            let der = EncodingKey::from_rsa_pem(pem).map_err(|_| bad_pem("RSA"))?;
            let pair = sig::RsaKeyPair::from_der(der.as_bytes())
                .or_else(|_| sig::RsaKeyPair::from_pkcs8(der.as_bytes()))
                .map_err(|_| bad_pem("RSA"))?;
            let encoding: &'static dyn sig::RsaEncoding = match alg {
                Alg::RS256 => &sig::RSA_PKCS1_SHA256,
                Alg::RS384 => &sig::RSA_PKCS1_SHA384,
                Alg::RS512 => &sig::RSA_PKCS1_SHA512,
                Alg::PS256 => &sig::RSA_PSS_SHA256,
                Alg::PS384 => &sig::RSA_PSS_SHA384,
                _ => &sig::RSA_PSS_SHA512,
            };
            Ok(Signer::Rsa(pair, encoding))
        }
        Family::Ec => {
            let der = EncodingKey::from_ec_pem(pem).map_err(|_| bad_pem("EC (PKCS#8)"))?;
            let curve: &'static sig::EcdsaSigningAlgorithm = match alg {
                Alg::ES256 => &sig::ECDSA_P256_SHA256_FIXED_SIGNING,
                Alg::ES384 => &sig::ECDSA_P384_SHA384_FIXED_SIGNING,
                _ => &sig::ECDSA_P521_SHA512_FIXED_SIGNING,
            };
            sig::EcdsaKeyPair::from_pkcs8(curve, der.as_bytes())
                .map(Signer::Ec)
                .map_err(|_| {
                    arg_error(
                        "key",
                        format!("the EC key is not a key for {}'s curve", alg.name()),
                        "Pass a P-256 key for ES256, P-384 for ES384, P-521 for ES512.",
                    )
                })
        }
        Family::Ed => {
            let der = EncodingKey::from_ed_pem(pem).map_err(|_| bad_pem("Ed25519 (PKCS#8)"))?;
            sig::Ed25519KeyPair::from_pkcs8_maybe_unchecked(der.as_bytes())
                .map(Signer::Ed)
                .map_err(|_| bad_pem("Ed25519 (PKCS#8)"))
        }
    }
}
