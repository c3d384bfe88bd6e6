//! Verification keys: HMAC secrets, and RSA / EC / Ed25519 public keys from PEM or JWK(S) text.
//!
//! A key knows its kind, and its kind decides which algorithms it may verify (RFC 8725 §3.1):
//! an RSA, EC or OKP key is never used as an HMAC secret, which is what defeats the
//! algorithm-confusion attack. A JWK's `alg`, when present, pins the key to that one algorithm.

use jsonwebtoken::{Algorithm, DecodingKey, DecodingKeyKind};
use serde_json::{Map, Value};
use std::str::FromStr;

use crate::error::quote;
use crate::token::b64_decode;

/// Smallest RSA modulus accepted (RFC 7518 §3.3 requires 2048 bits).
pub const MIN_RSA_BITS: usize = 2048;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    Hmac,
    Rsa,
    EcP256,
    EcP384,
    Ed25519,
}

impl KeyKind {
    pub fn name(self) -> &'static str {
        match self {
            KeyKind::Hmac => "HMAC secret",
            KeyKind::Rsa => "RSA key",
            KeyKind::EcP256 => "EC P-256 key",
            KeyKind::EcP384 => "EC P-384 key",
            KeyKind::Ed25519 => "Ed25519 key",
        }
    }

    /// The algorithms a key of this kind can verify.
    pub fn algorithms(self) -> &'static [Algorithm] {
        use Algorithm::*;
        match self {
            KeyKind::Hmac => &[HS256, HS384, HS512],
            KeyKind::Rsa => &[RS256, RS384, RS512, PS256, PS384, PS512],
            KeyKind::EcP256 => &[ES256],
            KeyKind::EcP384 => &[ES384],
            KeyKind::Ed25519 => &[EdDSA],
        }
    }
}

/// Parse an algorithm name as it appears in a header or an argument. `none` in any spelling is
/// refused here, so nothing downstream can ever see it.
pub fn parse_algorithm(name: &str) -> Result<Algorithm, String> {
    if name.eq_ignore_ascii_case("none") {
        return Err("unsigned tokens (alg \"none\") are never accepted".into());
    }
    Algorithm::from_str(name).map_err(|_| {
        format!(
            "algorithm {} is not supported (supported: HS256, HS384, HS512, RS256, RS384, RS512, \
             PS256, PS384, PS512, ES256, ES384, EdDSA)",
            quote(name)
        )
    })
}

pub fn algorithm_name(alg: Algorithm) -> &'static str {
    use Algorithm::*;
    match alg {
        HS256 => "HS256",
        HS384 => "HS384",
        HS512 => "HS512",
        RS256 => "RS256",
        RS384 => "RS384",
        RS512 => "RS512",
        PS256 => "PS256",
        PS384 => "PS384",
        PS512 => "PS512",
        ES256 => "ES256",
        ES384 => "ES384",
        EdDSA => "EdDSA",
        _ => "unknown",
    }
}

/// Minimum HMAC secret length for an algorithm: the hash output size (RFC 7518 §3.2).
pub fn min_hmac_bytes(alg: Algorithm) -> usize {
    match alg {
        Algorithm::HS384 => 48,
        Algorithm::HS512 => 64,
        _ => 32,
    }
}

/// One verification key.
#[derive(Clone)]
pub struct Key {
    pub kid: Option<String>,
    pub kind: KeyKind,
    /// The one algorithm this key is pinned to (a JWK's `alg`), if any.
    pub alg: Option<Algorithm>,
    /// Key size in bits (modulus for RSA, secret length for HMAC, curve size otherwise).
    pub bits: usize,
    pub(crate) decoding: DecodingKey,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Key")
            .field("kid", &self.kid)
            .field("kind", &self.kind)
            .field("alg", &self.alg)
            .field("bits", &self.bits)
            .finish_non_exhaustive()
    }
}

impl Key {
    pub fn hmac(secret: &[u8]) -> Key {
        Key {
            kid: None,
            kind: KeyKind::Hmac,
            alg: None,
            bits: secret.len() * 8,
            decoding: DecodingKey::from_secret(secret),
        }
    }

    /// Can this key verify `alg`? `Err` says why not, in words for a refusal.
    /// [`Key::permits`] without the reason: no allocation, for filtering candidates.
    pub fn fits(&self, alg: Algorithm) -> bool {
        self.kind.algorithms().contains(&alg)
            && self.alg.is_none_or(|pinned| pinned == alg)
            && (self.kind != KeyKind::Hmac || self.bits / 8 >= min_hmac_bytes(alg))
    }

    pub fn permits(&self, alg: Algorithm) -> Result<(), String> {
        if !self.kind.algorithms().contains(&alg) {
            return Err(format!(
                "{} cannot be used with an {}{}",
                algorithm_name(alg),
                self.kind.name(),
                self.kid_words()
            ));
        }
        if let Some(pinned) = self.alg {
            if pinned != alg {
                return Err(format!(
                    "the {}{} is pinned to {}, the token says {}",
                    self.kind.name(),
                    self.kid_words(),
                    algorithm_name(pinned),
                    algorithm_name(alg)
                ));
            }
        }
        if self.kind == KeyKind::Hmac && self.bits / 8 < min_hmac_bytes(alg) {
            return Err(format!(
                "{} needs a secret of at least {} bytes, the configured one has {}",
                algorithm_name(alg),
                min_hmac_bytes(alg),
                self.bits / 8
            ));
        }
        Ok(())
    }

    fn kid_words(&self) -> String {
        match &self.kid {
            Some(k) => format!(" (kid {})", quote(k)),
            None => String::new(),
        }
    }
}

/// Count the significant bits of a big-endian unsigned integer.
fn bit_len(be: &[u8]) -> usize {
    let mut i = 0;
    while i < be.len() && be[i] == 0 {
        i += 1;
    }
    if i == be.len() {
        return 0;
    }
    (be.len() - i) * 8 - be[i].leading_zeros() as usize
}

/// Read a DER length at `pos`, returning (length, bytes used).
fn der_len(d: &[u8], pos: usize) -> Option<(usize, usize)> {
    let first = *d.get(pos)?;
    if first < 0x80 {
        return Some((first as usize, 1));
    }
    let n = (first & 0x7f) as usize;
    if n == 0 || n > 4 {
        return None;
    }
    let mut len = 0usize;
    for i in 0..n {
        len = (len << 8) | *d.get(pos + 1 + i)? as usize;
    }
    Some((len, 1 + n))
}

/// Modulus size of a PKCS#1 `RSAPublicKey ::= SEQUENCE { modulus INTEGER, ... }`.
fn pkcs1_modulus_bits(der: &[u8]) -> Option<usize> {
    if *der.first()? != 0x30 {
        return None;
    }
    let (_, used) = der_len(der, 1)?;
    let p = 1 + used;
    if *der.get(p)? != 0x02 {
        return None;
    }
    let (len, used) = der_len(der, p + 1)?;
    let start = p + 1 + used;
    Some(bit_len(der.get(start..start + len)?))
}

fn check_rsa_bits(bits: usize) -> Result<(), String> {
    if bits < MIN_RSA_BITS {
        return Err(format!(
            "the RSA key has {bits} bits; at least {MIN_RSA_BITS} are required"
        ));
    }
    Ok(())
}

/// A public key from PEM text (SPKI `PUBLIC KEY`, PKCS#1 `RSA PUBLIC KEY`, or a `CERTIFICATE`).
pub fn key_from_pem(pem: &str) -> Result<Key, String> {
    if pem.contains("PRIVATE KEY") {
        return Err("this is a private key; verification takes the public key".into());
    }
    let bytes = pem.as_bytes();
    if let Ok(k) = DecodingKey::from_rsa_pem(bytes) {
        let bits = match k.kind() {
            DecodingKeyKind::SecretOrDer(der) => pkcs1_modulus_bits(der).unwrap_or(0),
            DecodingKeyKind::RsaModulusExponent { n, .. } => bit_len(n),
        };
        check_rsa_bits(bits)?;
        return Ok(Key {
            kid: None,
            kind: KeyKind::Rsa,
            alg: None,
            bits,
            decoding: k,
        });
    }
    if let Ok(k) = DecodingKey::from_ec_pem(bytes) {
        let kind = match k.kind() {
            DecodingKeyKind::SecretOrDer(point) if point.len() == 65 => KeyKind::EcP256,
            DecodingKeyKind::SecretOrDer(point) if point.len() == 97 => KeyKind::EcP384,
            _ => return Err("unsupported EC curve (P-256 and P-384 are supported)".into()),
        };
        let bits = if kind == KeyKind::EcP256 { 256 } else { 384 };
        return Ok(Key {
            kid: None,
            kind,
            alg: None,
            bits,
            decoding: k,
        });
    }
    if let Ok(k) = DecodingKey::from_ed_pem(bytes) {
        return Ok(Key {
            kid: None,
            kind: KeyKind::Ed25519,
            alg: None,
            bits: 256,
            decoding: k,
        });
    }
    Err("not a PEM public key of a supported type (RSA, EC P-256/P-384, Ed25519)".into())
}

fn jwk_str<'a>(jwk: &'a Map<String, Value>, name: &str) -> Result<&'a str, String> {
    match jwk.get(name) {
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(format!("member {name} is not a string")),
        None => Err(format!("member {name} is missing")),
    }
}

fn jwk_bytes(jwk: &Map<String, Value>, name: &str) -> Result<Vec<u8>, String> {
    b64_decode(jwk_str(jwk, name)?, name).map_err(|r| r.detail)
}

/// Outcome of reading one JWK: a key, a key we deliberately pass over (wrong use, unsupported
/// type), or an error in a key that claims to be a supported signing key.
pub enum JwkOutcome {
    Key(Key),
    Skipped(String),
}

/// One JWK (RFC 7517) as a JSON object. `allow_oct` admits symmetric (`kty: oct`) keys, which
/// only an explicit key argument may use: a published JWKS must never hold secrets.
pub fn key_from_jwk(jwk: &Map<String, Value>, allow_oct: bool) -> Result<JwkOutcome, String> {
    let kid = match jwk.get("kid") {
        None | Some(Value::Null) => None,
        Some(Value::String(k)) => Some(k.clone()),
        Some(_) => return Err("member kid is not a string".into()),
    };
    match jwk.get("use") {
        None | Some(Value::Null) => {}
        Some(Value::String(u)) if u == "sig" => {}
        Some(Value::String(u)) => {
            return Ok(JwkOutcome::Skipped(format!(
                "use {} is not \"sig\"",
                quote(u)
            )))
        }
        Some(_) => return Err("member use is not a string".into()),
    }
    let alg = match jwk.get("alg") {
        None | Some(Value::Null) => None,
        Some(Value::String(a)) => match parse_algorithm(a) {
            Ok(a) => Some(a),
            Err(_) => {
                return Ok(JwkOutcome::Skipped(format!(
                    "alg {} is not a supported signature algorithm",
                    quote(a)
                )))
            }
        },
        Some(_) => return Err("member alg is not a string".into()),
    };
    let kty = jwk_str(jwk, "kty")?;
    let (kind, bits, decoding) = match kty {
        "RSA" => {
            let n = jwk_bytes(jwk, "n")?;
            let e = jwk_bytes(jwk, "e")?;
            let bits = bit_len(&n);
            check_rsa_bits(bits)?;
            if e.is_empty() || bit_len(&e) == 0 {
                return Err("the RSA exponent is empty".into());
            }
            (
                KeyKind::Rsa,
                bits,
                DecodingKey::from_rsa_raw_components(&n, &e),
            )
        }
        "EC" => {
            let crv = jwk_str(jwk, "crv")?;
            let (kind, size) = match crv {
                "P-256" => (KeyKind::EcP256, 32),
                "P-384" => (KeyKind::EcP384, 48),
                other => {
                    return Ok(JwkOutcome::Skipped(format!(
                        "curve {} is not supported",
                        quote(other)
                    )))
                }
            };
            let x = jwk_bytes(jwk, "x")?;
            let y = jwk_bytes(jwk, "y")?;
            if x.len() != size || y.len() != size {
                return Err(format!("the {crv} coordinates must be {size} bytes each"));
            }
            let mut point = Vec::with_capacity(1 + 2 * size);
            point.push(4);
            point.extend_from_slice(&x);
            point.extend_from_slice(&y);
            (kind, size * 8, DecodingKey::from_ec_der(&point))
        }
        "OKP" => {
            let crv = jwk_str(jwk, "crv")?;
            if crv != "Ed25519" {
                return Ok(JwkOutcome::Skipped(format!(
                    "curve {} is not supported",
                    quote(crv)
                )));
            }
            let x = jwk_bytes(jwk, "x")?;
            if x.len() != 32 {
                return Err("an Ed25519 public key is 32 bytes".into());
            }
            (KeyKind::Ed25519, 256, DecodingKey::from_ed_der(&x))
        }
        "oct" if allow_oct => {
            let k = jwk_bytes(jwk, "k")?;
            (KeyKind::Hmac, k.len() * 8, DecodingKey::from_secret(&k))
        }
        "oct" => {
            return Ok(JwkOutcome::Skipped(
                "symmetric (oct) keys are not taken from a key set; use kinde_rls.secret".into(),
            ))
        }
        other => {
            return Ok(JwkOutcome::Skipped(format!(
                "key type {} is not supported",
                quote(other)
            )))
        }
    };
    if jwk.contains_key("d") {
        return Err(
            "this JWK contains a private key (member d); publish only the public part".into(),
        );
    }
    let key = Key {
        kid,
        kind,
        alg,
        bits,
        decoding,
    };
    if let Some(a) = alg {
        if !kind.algorithms().contains(&a) {
            return Err(format!(
                "alg {} does not fit an {}",
                algorithm_name(a),
                kind.name()
            ));
        }
    }
    Ok(JwkOutcome::Key(key))
}

/// The keys read from a JWKS (or a single JWK), and what was passed over.
#[derive(Debug, Clone, Default)]
pub struct KeySet {
    pub keys: Vec<Key>,
    pub skipped: Vec<String>,
}

/// Parse a JWKS document `{"keys": [...]}` or a single JWK object. Keys of unsupported types or
/// with `use` other than `sig` are skipped; a malformed key of a supported type is an error, and
/// so is a set with no usable key.
pub fn parse_jwks(text: &str, allow_oct: bool) -> Result<KeySet, String> {
    let doc: Value = serde_json::from_str(text).map_err(|e| format!("not valid JSON ({e})"))?;
    let obj = doc
        .as_object()
        .ok_or("a JWKS or JWK must be a JSON object")?;
    let list: Vec<&Map<String, Value>> = match obj.get("keys") {
        Some(Value::Array(a)) => a
            .iter()
            .map(|k| {
                k.as_object()
                    .ok_or_else(|| "every entry of keys must be an object".to_string())
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err("member keys must be an array".into()),
        None => vec![obj],
    };
    let mut set = KeySet::default();
    for (i, jwk) in list.iter().enumerate() {
        let label = match jwk.get("kid") {
            Some(Value::String(k)) => format!("key {}", quote(k)),
            _ => format!("key #{}", i + 1),
        };
        match key_from_jwk(jwk, allow_oct).map_err(|e| format!("{label}: {e}"))? {
            JwkOutcome::Key(k) => set.keys.push(k),
            JwkOutcome::Skipped(why) => set.skipped.push(format!("{label}: {why}")),
        }
    }
    if set.keys.is_empty() {
        return Err(if set.skipped.is_empty() {
            "the key set is empty".into()
        } else {
            format!("no usable signing key ({})", set.skipped.join("; "))
        });
    }
    Ok(set)
}

/// Is this text key material (PEM or JSON) rather than an HMAC secret?
pub fn looks_like_key_material(text: &str) -> bool {
    let t = text.trim_start();
    t.starts_with("-----BEGIN") || t.starts_with('{')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fits_agrees_with_permits() {
        let keys = vec![
            Key::hmac(&[7u8; 32]),
            Key::hmac(&[7u8; 64]),
            parse_jwks(r#"{"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo","kid":"a"}"#, false).unwrap().keys.remove(0),
            parse_jwks(r#"{"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo","alg":"EdDSA"}"#, false).unwrap().keys.remove(0),
        ];
        for k in &keys {
            for a in [
                "HS256", "HS384", "HS512", "RS256", "PS384", "ES256", "ES384", "EdDSA",
            ] {
                let alg = parse_algorithm(a).unwrap();
                assert_eq!(k.fits(alg), k.permits(alg).is_ok(), "{a}");
            }
        }
    }

    #[test]
    fn none_is_refused_in_every_spelling() {
        for n in ["none", "None", "NONE", "nOnE"] {
            assert!(parse_algorithm(n).unwrap_err().contains("never"));
        }
        assert!(parse_algorithm("HS257").is_err());
        assert_eq!(parse_algorithm("EdDSA").unwrap(), Algorithm::EdDSA);
    }

    #[test]
    fn family_decides_algorithms() {
        let k = Key::hmac(&[7u8; 40]);
        assert!(k.permits(Algorithm::HS256).is_ok());
        assert!(k
            .permits(Algorithm::HS384)
            .unwrap_err()
            .contains("48 bytes"));
        assert!(k.permits(Algorithm::RS256).unwrap_err().contains("HMAC"));
    }

    #[test]
    fn bit_lengths() {
        assert_eq!(bit_len(&[0, 0, 1]), 1);
        assert_eq!(bit_len(&[0x80, 0]), 16);
        assert_eq!(bit_len(&[]), 0);
    }

    #[test]
    fn jwks_skips_unsupported_and_refuses_empty() {
        let e = parse_jwks(r#"{"keys":[{"kty":"oct","k":"AAAA"}]}"#, false).unwrap_err();
        assert!(e.contains("no usable"), "{e}");
        assert!(parse_jwks(r#"{"keys":[]}"#, false)
            .unwrap_err()
            .contains("empty"));
        assert!(parse_jwks("[1]", false).is_err());
        let e = parse_jwks(r#"{"keys":[{"kty":"RSA","n":"AQAB","e":"AQAB"}]}"#, false).unwrap_err();
        assert!(e.contains("2048"), "{e}");
        let set = parse_jwks(
            r#"{"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo","kid":"e1"}"#,
            false,
        )
        .unwrap();
        assert_eq!(set.keys[0].kind, KeyKind::Ed25519);
        assert_eq!(set.keys[0].kid.as_deref(), Some("e1"));
        let enc = parse_jwks(
            r#"{"keys":[{"kty":"OKP","crv":"Ed25519","use":"enc","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]}"#,
            false,
        );
        assert!(enc.is_err());
    }

    #[test]
    fn private_material_is_refused() {
        assert!(
            key_from_pem("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----").is_err()
        );
        let e = parse_jwks(
            r#"{"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo","d":"AA"}"#,
            false,
        )
        .unwrap_err();
        assert!(e.contains("private"), "{e}");
    }
}
