//! Verification keys: HMAC secrets, and RSA / EC / Ed25519 public keys from PEM or JWK(S) text.
//!
//! A key knows its kind, and its kind decides which algorithms it may verify (RFC 8725 §3.1):
//! an RSA, EC or OKP key is never used as an HMAC secret, which is what defeats the
//! algorithm-confusion attack. A JWK's `alg`, when present, pins the key to that one algorithm.

use serde::Deserialize;
use serde_json::Value;

use crate::alg::{Alg, Family, KeyData};
use crate::error::{quote, ConfigError};
use crate::token::b64_decode;

/// Smallest RSA modulus accepted (RFC 7518 §3.3 requires 2048 bits).
pub const MIN_RSA_BITS: usize = 2048;

/// Largest RSA modulus, and longest public exponent, the signature check can use (aws-lc-rs
/// verifies 2048–8192-bit keys with exponents of up to 33 bits).
pub const MAX_RSA_BITS: usize = 8192;
const MAX_RSA_EXPONENT_BITS: usize = 33;

/// Longest explicit key argument, in bytes: as much as a fetched key set may be
/// ([`crate::fetch::MAX_BODY_BYTES`]). No secret, PEM or key set is longer, and the work of
/// reading a key stays bounded.
pub const MAX_KEY_BYTES: usize = crate::fetch::MAX_BODY_BYTES;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    Hmac,
    Rsa,
    EcP256,
    EcP384,
    EcP521,
    Ed25519,
}

impl KeyKind {
    pub fn name(self) -> &'static str {
        match self {
            KeyKind::Hmac => "HMAC secret",
            KeyKind::Rsa => "RSA key",
            KeyKind::EcP256 => "EC P-256 key",
            KeyKind::EcP384 => "EC P-384 key",
            KeyKind::EcP521 => "EC P-521 key",
            KeyKind::Ed25519 => "Ed25519 key",
        }
    }

    /// The algorithms a key of this kind can verify.
    pub fn algorithms(self) -> &'static [Alg] {
        use Alg::*;
        match self {
            KeyKind::Hmac => &[HS256, HS384, HS512],
            KeyKind::Rsa => &[RS256, RS384, RS512, PS256, PS384, PS512],
            KeyKind::EcP256 => &[ES256],
            KeyKind::EcP384 => &[ES384],
            KeyKind::EcP521 => &[ES512],
            KeyKind::Ed25519 => &[EdDSA],
        }
    }
}

/// Minimum HMAC secret length when the algorithm is not known yet (a configured secret serves
/// any HMAC algorithm): HS256's.
pub const MIN_HMAC_BYTES: usize = 32;

/// Minimum HMAC secret length for an algorithm: the hash output size (RFC 7518 §3.2). The one
/// home of the rule: settings, explicit keys, `sign_jwt` and key selection all ask here.
pub fn min_hmac_bytes(alg: Alg) -> usize {
    match alg {
        Alg::HS384 => 48,
        Alg::HS512 => 64,
        _ => MIN_HMAC_BYTES,
    }
}

/// Is this text a PEM block (`-----BEGIN …`)? Such text is read as a public key, never as a
/// secret.
pub fn is_pem(text: &str) -> bool {
    text.trim_start().starts_with("-----BEGIN")
}

/// One verification key.
#[derive(Clone)]
pub struct Key {
    pub kid: Option<String>,
    pub kind: KeyKind,
    /// The one algorithm this key is pinned to (a JWK's `alg`), if any.
    pub alg: Option<Alg>,
    /// Key size in bits (modulus for RSA, secret length for HMAC, curve size otherwise).
    pub bits: usize,
    pub(crate) data: KeyData,
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
    /// An HMAC key from bytes that already passed [`check_hmac_secret`] (or came from an
    /// explicit `oct` JWK). Not public: every secret enters through the one rule.
    pub(crate) fn hmac(secret: &[u8]) -> Key {
        Key {
            kid: None,
            kind: KeyKind::Hmac,
            alg: None,
            bits: secret.len() * 8,
            data: KeyData::Secret(secret.to_vec()),
        }
    }

    /// Can this key verify `alg`? `Err` says why not, in words for a refusal.
    /// [`Key::permits`] without the reason: no allocation, for filtering candidates.
    pub fn fits(&self, alg: Alg) -> bool {
        self.kind.algorithms().contains(&alg)
            && self.alg.is_none_or(|pinned| pinned == alg)
            && !self.too_short_for(alg)
    }

    /// An HMAC secret shorter than `alg`'s hash ([`min_hmac_bytes`]).
    fn too_short_for(&self, alg: Alg) -> bool {
        self.kind == KeyKind::Hmac && self.bits / 8 < min_hmac_bytes(alg)
    }

    pub fn permits(&self, alg: Alg) -> Result<(), String> {
        if !self.kind.algorithms().contains(&alg) {
            return Err(format!(
                "{} cannot be used with an {}{}",
                alg.name(),
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
                    pinned.name(),
                    alg.name()
                ));
            }
        }
        if self.too_short_for(alg) {
            // Never say how long the secret is: that narrows a brute-force search.
            return Err(format!(
                "{} needs a secret of at least {} bytes; the configured secret is shorter",
                alg.name(),
                min_hmac_bytes(alg),
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

/// Modulus and exponent of a PKCS#1 `RSAPublicKey ::= SEQUENCE { modulus INTEGER,
/// publicExponent INTEGER }` (RFC 8017 A.1.1), read exactly: the sequence spans the whole input
/// and ends with a short exponent. Anything looser takes one random secret in some ten thousand
/// for a key.
fn pkcs1_parts(der: &[u8]) -> Option<(&[u8], &[u8])> {
    if *der.first()? != 0x30 {
        return None;
    }
    let (seq_len, used) = der_len(der, 1)?;
    let p = 1 + used;
    if p.checked_add(seq_len)? != der.len() || *der.get(p)? != 0x02 {
        return None;
    }
    let (len, used) = der_len(der, p + 1)?;
    let start = p + 1 + used;
    let modulus = der.get(start..start.checked_add(len)?)?;
    let e = start + len;
    if *der.get(e)? != 0x02 {
        return None;
    }
    let (e_len, used) = der_len(der, e + 1)?;
    if !(1..=8).contains(&e_len) || e + 1 + used + e_len != der.len() {
        return None;
    }
    Some((modulus, &der[e + 1 + used..]))
}

/// Big-endian bytes without their leading zeros (DER integers carry one for the sign).
fn unsigned(be: &[u8]) -> &[u8] {
    let zeros = be.iter().take_while(|b| **b == 0).count();
    &be[zeros..]
}

/// The rules every RSA public key passes, wherever it comes from (PEM, JWK): a modulus of
/// [`MIN_RSA_BITS`] to [`MAX_RSA_BITS`], an odd public exponent of at least 3 (e = 1 makes every
/// "signature" its own message; even exponents are not RSA) and at most 33 bits, and a modulus
/// that is not one of the factorable keys of CVE-2017-15361 (ROCA). Leading zero bytes are not
/// part of the numbers.
fn rsa_key(n: &[u8], e: &[u8]) -> Result<(usize, KeyData), String> {
    let (n, e) = (unsigned(n), unsigned(e));
    let bits = bit_len(n);
    if bits < MIN_RSA_BITS {
        return Err(format!(
            "the RSA key has {bits} bits; at least {MIN_RSA_BITS} are required"
        ));
    }
    if bits > MAX_RSA_BITS {
        return Err(format!(
            "the RSA key has {bits} bits; at most {MAX_RSA_BITS} are supported"
        ));
    }
    if n.last().is_some_and(|b| b % 2 == 0) {
        return Err("the RSA modulus is even: it is not a product of two large primes".into());
    }
    let small_or_even = match e {
        [] => true,
        [.., last] if last % 2 == 0 => true,
        [only] => *only < 3,
        _ => false,
    };
    if small_or_even || bit_len(e) > MAX_RSA_EXPONENT_BITS {
        return Err(format!(
            "the RSA public exponent must be odd, at least 3 and at most {MAX_RSA_EXPONENT_BITS} bits"
        ));
    }
    if roca_fingerprint(n) {
        return Err(
            "the RSA modulus has the structure of the weak keys of CVE-2017-15361 (ROCA), which can be factored; replace the key".into(),
        );
    }
    Ok((
        bits,
        KeyData::Rsa {
            n: n.to_vec(),
            e: e.to_vec(),
        },
    ))
}

/// Does this modulus carry the fingerprint of CVE-2017-15361 (Nemec et al., "The Return of
/// Coppersmith's Attack", CCS 2017)? The affected library made primes `k·M + (65537^a mod M)`
/// with `M` the product of the first primes, so `n mod r` lies in the subgroup 65537 generates
/// modulo every small prime `r` dividing `M`. Every affected key size (992 bits and up) has all
/// the odd primes to 353 in `M`; a random modulus passes all 70 tests with probability about
/// 2^-83.
fn roca_fingerprint(n: &[u8]) -> bool {
    (3u32..=353)
        .filter(|r| (2..*r).take_while(|d| d * d <= *r).all(|d| r % d != 0))
        .all(|r| {
            let rem = n
                .iter()
                .fold(0u32, |acc, b| (acc * 256 + u32::from(*b)) % r);
            let g = 65537 % r;
            let mut x = 1;
            for _ in 0..r {
                if x == rem {
                    return true;
                }
                x = x * g % r;
            }
            false
        })
}

/// The curve of an EC key, by the size of its uncompressed point (`04 || x || y`).
fn ec_kind(point: &[u8]) -> Option<KeyKind> {
    match point.len() {
        65 => Some(KeyKind::EcP256),
        97 => Some(KeyKind::EcP384),
        133 => Some(KeyKind::EcP521),
        _ => None,
    }
}

fn curve_bits(kind: KeyKind) -> usize {
    match kind {
        KeyKind::EcP384 => 384,
        KeyKind::EcP521 => 521,
        _ => 256,
    }
}

/// A public key from PEM text (SPKI `PUBLIC KEY`, PKCS#1 `RSA PUBLIC KEY`, or a `CERTIFICATE`).
/// The PEM and DER framing is read by jsonwebtoken's decoder; the key bytes it finds pass the
/// same rules as a JWK's.
pub fn key_from_pem(pem: &str) -> Result<Key, String> {
    use jsonwebtoken::{DecodingKey, DecodingKeyKind};
    if pem.contains("PRIVATE KEY") {
        return Err("this is a private key; verification takes the public key".into());
    }
    // One block and nothing else: the decoder reads the first block of a text and ignores the
    // rest, which would leave it to chance which of two keys is meant.
    let end = pem
        .find("-----END ")
        .and_then(|at| pem[at + 9..].find("-----").map(|e| at + 9 + e + 5));
    if pem.matches("-----BEGIN ").count() != 1 || end.is_none_or(|e| !pem[e..].trim().is_empty()) {
        return Err("the text must hold exactly one PEM block and nothing after it".into());
    }
    let bytes = pem.as_bytes();
    let key = |kind, bits, data| Key {
        kid: None,
        kind,
        alg: None,
        bits,
        data,
    };
    if let Ok(k) = DecodingKey::from_rsa_pem(bytes) {
        let (n, e) = match k.kind() {
            DecodingKeyKind::SecretOrDer(der) => {
                pkcs1_parts(der).ok_or("the RSA public key is not a well-formed PKCS#1 key")?
            }
            DecodingKeyKind::RsaModulusExponent { n, e } => (&n[..], &e[..]),
        };
        let (bits, data) = rsa_key(n, e)?;
        return Ok(key(KeyKind::Rsa, bits, data));
    }
    if let Ok(k) = DecodingKey::from_ec_pem(bytes) {
        let DecodingKeyKind::SecretOrDer(point) = k.kind() else {
            return Err("the EC public key is not a point".into());
        };
        let kind = ec_kind(point)
            .ok_or("unsupported EC curve or point form (P-256, P-384 and P-521 uncompressed points are supported)")?;
        check_ec_point(kind, point)?;
        return Ok(key(kind, curve_bits(kind), KeyData::Point(point.to_vec())));
    }
    if let Ok(k) = DecodingKey::from_ed_pem(bytes) {
        let DecodingKeyKind::SecretOrDer(x) = k.kind() else {
            return Err("the Ed25519 public key is not 32 bytes".into());
        };
        check_ed25519_key(x)?;
        return Ok(key(KeyKind::Ed25519, 256, KeyData::Point(x.to_vec())));
    }
    Err("not a PEM public key of a supported type (RSA, EC P-256/P-384/P-521, Ed25519)".into())
}

fn b64_member(value: &str, name: &str) -> Result<Vec<u8>, String> {
    b64_decode(value, name).map_err(|r| {
        if name == "k" {
            // Where the decoder stopped would show a character of the secret.
            "member k is not unpadded base64url".to_string()
        } else {
            r.detail
        }
    })
}

/// An EC public key must be a point on its curve: an off-curve point (invalid-curve attacks,
/// or plain corruption) is refused when the key is read, not when a token meets it.
fn check_ec_point(kind: KeyKind, point: &[u8]) -> Result<(), String> {
    use aws_lc_rs::signature::{
        ParsedPublicKey, ECDSA_P256_SHA256_FIXED, ECDSA_P384_SHA384_FIXED, ECDSA_P521_SHA512_FIXED,
    };
    let alg = match kind {
        KeyKind::EcP256 => &ECDSA_P256_SHA256_FIXED,
        KeyKind::EcP384 => &ECDSA_P384_SHA384_FIXED,
        KeyKind::EcP521 => &ECDSA_P521_SHA512_FIXED,
        _ => return Ok(()),
    };
    ParsedPublicKey::new(alg, point)
        .map(|_| ())
        .map_err(|_| format!("the {} is not a point on its curve", kind.name()))
}

/// The encodings of the Ed25519 points of small order, sign bit aside (as libsodium's
/// blocklist): the eight points of the torsion subgroup, and the second encodings of two of
/// them. Under such a "public key" signatures verify without any private key — under the
/// identity, one fixed signature verifies every message — so it is never a key.
const ED25519_SMALL_ORDER: [[u8; 32]; 7] = [
    // y = 0 (order 4)
    [
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x00,
    ],
    // y = 1, the identity (order 1)
    [
        0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x00,
    ],
    // order 8
    [
        0x26, 0xe8, 0x95, 0x8f, 0xc2, 0xb2, 0x27, 0xb0, 0x45, 0xc3, 0xf4, 0x89, 0xf2, 0xef, 0x98,
        0xf0, 0xd5, 0xdf, 0xac, 0x05, 0xd3, 0xc6, 0x33, 0x39, 0xb1, 0x38, 0x02, 0x88, 0x6d, 0x53,
        0xfc, 0x05,
    ],
    // order 8
    [
        0xc7, 0x17, 0x6a, 0x70, 0x3d, 0x4d, 0xd8, 0x4f, 0xba, 0x3c, 0x0b, 0x76, 0x0d, 0x10, 0x67,
        0x0f, 0x2a, 0x20, 0x53, 0xfa, 0x2c, 0x39, 0xcc, 0xc6, 0x4e, 0xc7, 0xfd, 0x77, 0x92, 0xac,
        0x03, 0x7a,
    ],
    // y = p - 1 (order 2)
    [
        0xec, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0x7f,
    ],
    // y = p, a second encoding of 0
    [
        0xed, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0x7f,
    ],
    // y = p + 1, a second encoding of 1
    [
        0xee, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0x7f,
    ],
];

/// An Ed25519 public key is 32 bytes and not a point of small order.
fn check_ed25519_key(x: &[u8]) -> Result<(), String> {
    let Ok(mut y) = <[u8; 32]>::try_from(x) else {
        return Err("an Ed25519 public key is 32 bytes".into());
    };
    y[31] &= 0x7f;
    if ED25519_SMALL_ORDER.contains(&y) {
        return Err(
            "the Ed25519 key is a point of small order, under which signatures can be forged without a private key".into(),
        );
    }
    Ok(())
}

/// Members that only a private (or symmetric) key has. A published key with any of them leaked
/// its private half: it is never used.
const PRIVATE_MEMBERS: &[&str] = &["d", "p", "q", "dp", "dq", "qi", "oth"];

/// A JWK as published (RFC 7517 §4): its type, and what it may be used for. Its key material
/// is read into [`Material`] by `kty`; members neither names (`x5c`, `x5t`…) are ignored.
#[derive(Debug, Deserialize)]
struct Jwk {
    kty: String,
    kid: Option<String>,
    alg: Option<String>,
    #[serde(rename = "use")]
    purpose: Option<String>,
    key_ops: Option<Vec<String>>,
}

/// The key material of each key type (RFC 7518 §6, RFC 8037 §2), base64url members as sent.
#[derive(Debug)]
enum Material {
    Rsa(RsaMembers),
    Ec(EcMembers),
    Okp(OkpMembers),
    Oct(OctMembers),
}

#[derive(Debug, Deserialize)]
struct RsaMembers {
    n: String,
    e: String,
}

#[derive(Debug, Deserialize)]
struct EcMembers {
    crv: String,
    x: String,
    y: String,
}

#[derive(Debug, Deserialize)]
struct OkpMembers {
    crv: String,
    x: String,
}

#[derive(Debug, Deserialize)]
struct OctMembers {
    k: String,
}

impl Material {
    /// The members of key type `kty`, read from the same JWK.
    fn read(kty: &str, jwk: &Value) -> Result<Material, String> {
        fn members<'de, T: Deserialize<'de>>(jwk: &'de Value) -> Result<T, String> {
            serde_path_to_error::deserialize(jwk).map_err(jwk_shape_error)
        }
        Ok(match kty {
            "RSA" => Material::Rsa(members(jwk)?),
            "EC" => Material::Ec(members(jwk)?),
            "OKP" => Material::Okp(members(jwk)?),
            "oct" => Material::Oct(members(jwk)?),
            other => return Err(format!("key type {} is not supported", quote(other))),
        })
    }
}

/// serde's words for a JWK that does not fit [`Jwk`], in the words of the rest of this module,
/// naming the member at fault.
fn jwk_shape_error(e: serde_path_to_error::Error<serde_json::Error>) -> String {
    let member = e.path().to_string();
    let e = e.into_inner().to_string();
    if let Some(rest) = e.strip_prefix("missing field `") {
        return format!("member {} is missing", rest.split('`').next().unwrap_or(""));
    }
    let what = e.split(", expected").next().unwrap_or(&e);
    format!("member {member}: {what}; expected {}", expected(&e))
}

/// What serde expected, from its message ("…, expected a string").
fn expected(serde_message: &str) -> &str {
    serde_message
        .split(", expected ")
        .nth(1)
        .unwrap_or("another type")
}

/// Does the JWK say it may verify signatures? `use` (RFC 7517 §4.2) must be `sig` when present,
/// and `key_ops` (§4.3) must list `verify` when present; both present must agree.
fn check_jwk_purpose(jwk: &Jwk) -> Result<(), String> {
    if let Some(u) = jwk.purpose.as_deref().filter(|u| *u != "sig") {
        return Err(format!("use {} is not \"sig\"", quote(u)));
    }
    let Some(ops) = &jwk.key_ops else {
        return Ok(());
    };
    for (i, op) in ops.iter().enumerate() {
        if ops[..i].contains(op) {
            return Err(format!("member key_ops lists {} twice", quote(op)));
        }
    }
    if ops.iter().any(|o| o == "verify") {
        Ok(())
    } else {
        Err(format!(
            "key_ops [{}] does not include \"verify\"",
            ops.iter().map(|n| quote(n)).collect::<Vec<_>>().join(", ")
        ))
    }
}

/// One JWK (RFC 7517) as JSON, or why it cannot be used: wrong purpose, unsupported type or
/// curve, malformed members, a weak or off-curve key, private material. `allow_oct` admits
/// symmetric (`kty: oct`) keys, which only an explicit key argument may use: a published JWKS
/// must never hold secrets.
pub fn key_from_jwk(value: &Value, allow_oct: bool) -> Result<Key, String> {
    read_jwk(value, allow_oct, true)
}

/// The key a JWK holds, whatever it says it is for (`use`, `key_ops`, `alg` not read): to tell
/// whether an unusable entry is another copy of a usable key.
fn jwk_material(value: &Value) -> Option<KeyData> {
    read_jwk(value, true, false).ok().map(|k| k.data)
}

fn read_jwk(value: &Value, allow_oct: bool, purpose: bool) -> Result<Key, String> {
    let Some(members) = value.as_object() else {
        return Err("it is not a JSON object".into());
    };
    if members.get("kty").and_then(Value::as_str) != Some("oct") {
        if let Some(m) = PRIVATE_MEMBERS.iter().find(|m| members.contains_key(**m)) {
            return Err(format!(
                "it contains private key material (member {m}); a key set publishes public keys only, and this key must be treated as leaked"
            ));
        }
    }
    let jwk: Jwk = serde_path_to_error::deserialize(value).map_err(jwk_shape_error)?;
    let material = Material::read(&jwk.kty, value)?;
    if purpose {
        check_jwk_purpose(&jwk)?;
    }
    let alg = match &jwk.alg {
        None => None,
        Some(_) if !purpose => None,
        Some(a) => Some(
            Alg::parse(a)
                .map_err(|_| format!("alg {} is not a supported signature algorithm", quote(a)))?,
        ),
    };
    let (kind, bits, data) = match &material {
        Material::Rsa(RsaMembers { n, e }) => {
            let (bits, data) = rsa_key(&b64_member(n, "n")?, &b64_member(e, "e")?)?;
            (KeyKind::Rsa, bits, data)
        }
        Material::Ec(EcMembers { crv, x, y }) => {
            let (kind, size) = match crv.as_str() {
                "P-256" => (KeyKind::EcP256, 32),
                "P-384" => (KeyKind::EcP384, 48),
                "P-521" => (KeyKind::EcP521, 66),
                other => return Err(format!("curve {} is not supported", quote(other))),
            };
            let x = b64_member(x, "x")?;
            let y = b64_member(y, "y")?;
            if x.len() != size || y.len() != size {
                return Err(format!("the {crv} coordinates must be {size} bytes each"));
            }
            let mut point = Vec::with_capacity(1 + 2 * size);
            point.push(4);
            point.extend_from_slice(&x);
            point.extend_from_slice(&y);
            check_ec_point(kind, &point)?;
            (kind, curve_bits(kind), KeyData::Point(point))
        }
        Material::Okp(OkpMembers { crv, x }) => {
            if crv != "Ed25519" {
                return Err(format!("curve {} is not supported", quote(crv)));
            }
            let x = b64_member(x, "x")?;
            check_ed25519_key(&x)?;
            (KeyKind::Ed25519, 256, KeyData::Point(x))
        }
        Material::Oct(OctMembers { k }) if allow_oct => {
            let k = b64_member(k, "k")?;
            let what = binary_kind(&k)
                .or_else(|| std::str::from_utf8(&k).ok().and_then(key_material_kind));
            if let Some(what) = what {
                return Err(format!(
                    "member k holds {what}, not a shared secret; pass public keys as PEM or JWK"
                ));
            }
            if k.is_empty() {
                return Err("member k is empty".into());
            }
            (KeyKind::Hmac, k.len() * 8, KeyData::Secret(k))
        }
        Material::Oct(_) => {
            return Err(
                "symmetric (oct) keys are not taken from a key set; use kinde_rls.secret_file"
                    .into(),
            )
        }
    };
    if let Some(a) = alg {
        if !kind.algorithms().contains(&a) {
            return Err(format!("alg {} does not fit an {}", a.name(), kind.name()));
        }
    }
    Ok(Key {
        kid: jwk.kid,
        kind,
        alg,
        bits,
        data,
    })
}

/// A key of a set that was not used, and why (shown by `jwks_status()` and `jwt_explain()`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ignored {
    pub kid: Option<String>,
    /// `key "kid"` or `key #3` (1-based position) when it has no usable `kid`.
    pub label: String,
    pub reason: String,
}

impl std::fmt::Display for Ignored {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.label, self.reason)
    }
}

/// The entry for `kid` in a list of ignored keys.
pub fn ignored_kid<'a>(ignored: &'a [Ignored], kid: &str) -> Option<&'a Ignored> {
    ignored.iter().find(|i| i.kid.as_deref() == Some(kid))
}

/// The keys read from a JWKS (or a single JWK), and those ignored.
#[derive(Debug, Clone, Default)]
pub struct KeySet {
    pub keys: Vec<Key>,
    pub ignored: Vec<Ignored>,
}

impl KeySet {
    /// Why the set holds no key with this `kid`, if it ignored one.
    pub fn ignored_kid(&self, kid: &str) -> Option<&Ignored> {
        ignored_kid(&self.ignored, kid)
    }
}

/// The entries of a JWKS document, or the one JWK (text that [`parse_jwks`] accepted).
fn jwk_entries(text: &str) -> Vec<Value> {
    match crate::token::parse_strict(text) {
        Ok(Value::Object(mut o)) => match o.remove("keys") {
            Some(Value::Array(a)) => a,
            Some(_) => vec![],
            None => vec![Value::Object(o)],
        },
        _ => vec![],
    }
}

/// Parse a JWKS document `{"keys": [...]}` or a single JWK object. Keys that cannot be used —
/// another purpose or type, malformed, weak, off-curve, private — are ignored with a reason
/// (RFC 7517 §5: ignore what you do not understand), so one bad key never takes the good ones
/// down with it. A document that is not a key set, or holds no usable key, is an error.
pub fn parse_jwks(text: &str, allow_oct: bool) -> Result<KeySet, String> {
    let doc = crate::token::parse_strict(text).map_err(|e| format!("not valid JSON ({e})"))?;
    let obj = doc
        .as_object()
        .ok_or("a JWKS or JWK must be a JSON object")?;
    let list: Vec<&Value> = match obj.get("keys") {
        Some(Value::Array(a)) => a.iter().collect(),
        Some(_) => return Err("member keys must be an array".into()),
        None => vec![&doc],
    };
    let mut set = KeySet::default();
    for (i, entry) in list.iter().enumerate() {
        let kid = entry.get("kid").and_then(Value::as_str).map(String::from);
        let label = match &kid {
            Some(k) => format!("key {}", quote(k)),
            None => format!("key #{}", i + 1),
        };
        match key_from_jwk(entry, allow_oct) {
            Ok(k) => set.keys.push(k),
            Err(reason) => set.ignored.push(Ignored { kid, label, reason }),
        }
    }
    if set.keys.is_empty() {
        return Err(if set.ignored.is_empty() {
            "the key set is empty".into()
        } else {
            // A few reasons say what is wrong; thousands would only make the message huge.
            let mut reasons: Vec<String> = set
                .ignored
                .iter()
                .take(5)
                .map(ToString::to_string)
                .collect();
            if set.ignored.len() > reasons.len() {
                reasons.push(format!("and {} more", set.ignored.len() - reasons.len()));
            }
            format!("no usable signing key ({})", reasons.join("; "))
        });
    }
    Ok(set)
}

// ---------------------------------------------------------------------------------------------
// HMAC secrets: the one rule, wherever a secret enters (kinde_rls.secret, the secret file,
// explicit key arguments, sign_jwt, an explicit oct JWK).

/// What public key material this text is, if it is any: such text is never an HMAC secret,
/// because whoever has the public key could then sign tokens (algorithm confusion, RFC 8725
/// §2.1). The test looks through what hides key material from a naive check — byte-order
/// marks, zero-width and other invisible characters, white space anywhere, letter case,
/// escaped line breaks, a JSON string literal, percent-encoding, up to three layers of base64
/// or hex, text around a base64 run — and recognises PEM and RFC 4716 blocks (or their END
/// lines), JWKs and JWKS (JSON, or YAML-like `kty:`), SSH public keys (text or wire format),
/// DER public keys and certificates, and uncompressed EC points on P-256/P-384/P-521 (with or
/// without their `04` prefix). What it cannot tell from a random secret, and so does not
/// refuse: a key's bare numbers — an RSA modulus, an Ed25519 key, a compressed EC point — in
/// whatever encoding. Keep secrets and public keys apart.
pub fn key_material_kind(text: &str) -> Option<&'static str> {
    kind_at_depth(text, 3)
}

fn kind_at_depth(text: &str, depth: u8) -> Option<&'static str> {
    let t = visible(text);
    if let Some(kind) = text_kind(&t) {
        return Some(kind);
    }
    if depth == 0 {
        return None;
    }
    // A JSON string literal, and percent-encoding: one unwrapping each.
    if let Ok(serde_json::Value::String(inner)) = serde_json::from_str::<serde_json::Value>(&t) {
        if let Some(kind) = kind_at_depth(&inner, depth - 1) {
            return Some(kind);
        }
    }
    if t.contains('%') {
        if let Some(kind) = percent_decoded(&t).and_then(|d| kind_at_depth(&d, depth - 1)) {
            return Some(kind);
        }
    }
    decoded_kind(&t, depth)
}

fn percent_decoded(t: &str) -> Option<String> {
    let b = t.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            out.push(u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 3]).ok()?, 16).ok()?);
            i += 3;
        } else {
            out.push(if b[i] == b'+' { b' ' } else { b[i] });
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The text without white space, byte-order marks and other invisible (format) characters,
/// and without escaped line breaks (`\n`, `\r`, `\t` written as two characters).
fn visible(text: &str) -> String {
    text.replace("\\n", "")
        .replace("\\r", "")
        .replace("\\t", "")
        .chars()
        .filter(|c| {
            !c.is_whitespace()
                && !c.is_control()
                && !matches!(
                    c,
                    '\u{00ad}'
                        | '\u{034f}'
                        | '\u{061c}'
                        | '\u{115f}'
                        | '\u{1160}'
                        | '\u{17b4}'
                        | '\u{17b5}'
                        | '\u{180b}'..='\u{180f}'
                        | '\u{200b}'..='\u{200f}'
                        | '\u{202a}'..='\u{202e}'
                        | '\u{2060}'..='\u{206f}'
                        | '\u{3164}'
                        | '\u{fe00}'..='\u{fe0f}'
                        | '\u{feff}'
                        | '\u{ffa0}'
                        | '\u{fff0}'..='\u{fff8}'
                )
        })
        .collect()
}

/// Markers of key material in (visible) text.
fn text_kind(t: &str) -> Option<&'static str> {
    let lower = t.to_ascii_lowercase();
    if lower.contains("----begin") || lower.contains("----end") {
        return Some("a PEM key or certificate");
    }
    if jwk_document(t) || kty_member(&lower) || lower.contains("<rsakeyvalue>") {
        return Some("a JWK or JWKS (or another key document)");
    }
    const SSH: [&str; 6] = [
        "ssh-rsa",
        "ssh-ed25519",
        "ssh-dss",
        "ecdsa-sha2-",
        "sk-ssh-",
        "sk-ecdsa-",
    ];
    if SSH.iter().any(|m| lower.contains(m)) {
        return Some("an SSH public key");
    }
    None
}

/// JSON that is a JWK or a JWKS: an object with `kty` or `keys`, or an array of such objects.
/// (A secret that merely is JSON — a password starting with `{` — is not refused for it.)
fn jwk_document(t: &str) -> bool {
    fn is_jwk(v: &serde_json::Value) -> bool {
        v.as_object()
            .is_some_and(|o| o.contains_key("kty") || o.contains_key("keys"))
    }
    match serde_json::from_str::<serde_json::Value>(t) {
        Ok(serde_json::Value::Array(a)) => a.iter().any(is_jwk),
        Ok(v) => is_jwk(&v),
        Err(_) => false,
    }
}

/// A JWK's `kty` member in any notation — JSON, escaped JSON, a Python or TOML literal, YAML —
/// or an RSA key's `e=AQAB`: the name set off by a quote or a separator, followed (past any
/// quotes and backslashes) by `:` or `=`. `mykty:` is not one.
fn kty_member(lower: &str) -> bool {
    let b = lower.as_bytes();
    let member = |name: &[u8]| {
        b.windows(name.len()).enumerate().any(|(i, w)| {
            if w != name || (i > 0 && b[i - 1].is_ascii_alphanumeric()) {
                return false;
            }
            let rest = &b[i + name.len()..];
            let after = rest.iter().find(|c| !matches!(c, b'"' | b'\'' | b'\\'));
            matches!(after, Some(b':' | b'='))
        })
    };
    member(b"kty") || lower.contains("e=aqab") || lower.contains("\"e\":\"aqab\"")
}

/// Key material behind a layer of base64 (standard or URL alphabet) or hex — of the whole
/// text, or of the longest base64 run in it (a key with a label in front).
fn decoded_kind(t: &str, depth: u8) -> Option<&'static str> {
    use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
    use base64::engine::DecodePaddingMode;
    use base64::{alphabet, Engine};
    const LENIENT: GeneralPurposeConfig = GeneralPurposeConfig::new()
        .with_decode_padding_mode(DecodePaddingMode::Indifferent)
        .with_decode_allow_trailing_bits(true);
    if t.len() < 40 {
        return None;
    }
    let mut candidates: Vec<Vec<u8>> = Vec::new();
    // The whole text, and every long run of one alphabet's characters in it (a key after a
    // label: `KINDE_PUBLIC_KEY=MIIB…`, `pubkey-MIIB…`).
    for (alpha, other) in [(&alphabet::STANDARD, "+/"), (&alphabet::URL_SAFE, "-_")] {
        let engine = GeneralPurpose::new(alpha, LENIENT);
        let runs = t
            .split(|c: char| !(c.is_ascii_alphanumeric() || other.contains(c) || c == '='))
            .flat_map(|run| run.split('=').filter(|piece| !piece.is_empty()).take(8))
            .filter(|piece| piece.len() >= 40);
        for text in std::iter::once(t).chain(runs) {
            if let Ok(b) = engine.decode(text) {
                candidates.push(b);
            }
        }
    }
    // Hex: plain, with colons, or as byte literals (`0x30, 0x82`, `{0x30,0x82,…}`).
    let hex_digits: String = t
        .to_ascii_lowercase()
        .replace("0x", "")
        .chars()
        .filter(|c| !matches!(c, ':' | ',' | '{' | '}' | '[' | ']' | '(' | ')'))
        .collect();
    if hex_digits.len().is_multiple_of(2) && hex_digits.bytes().all(|b| b.is_ascii_hexdigit()) {
        candidates.push(
            hex_digits
                .as_bytes()
                .chunks(2)
                .map(|p| {
                    u8::from_str_radix(std::str::from_utf8(p).unwrap_or("zz"), 16).unwrap_or(0)
                })
                .collect(),
        );
    }
    candidates.into_iter().find_map(|bytes| {
        binary_kind(&bytes).or_else(|| {
            let inner = std::str::from_utf8(&bytes).ok()?;
            kind_at_depth(inner, depth - 1)
        })
    })
}

/// Public key material in binary form.
fn binary_kind(b: &[u8]) -> Option<&'static str> {
    // DER: a SEQUENCE naming a public-key algorithm (SPKI, certificates), or PKCS#1.
    const OIDS: [&[u8]; 3] = [
        &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01], // pkcs-1 (rsaEncryption, RSASSA-PSS)
        &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01],       // id-ecPublicKey
        &[0x06, 0x03, 0x2b, 0x65],                         // id-Ed25519 / X25519 / Ed448
    ];
    if b.first() == Some(&0x30)
        && (OIDS
            .iter()
            .any(|oid| b.windows(oid.len()).any(|w| w == *oid))
            || pkcs1_parts(b).is_some_and(|(n, _)| bit_len(n) >= 512))
    {
        return Some("a DER public key or certificate");
    }
    // SSH wire format: a length-prefixed key type name.
    if b.len() > 11 && b[..3] == [0, 0, 0] && (7..=40).contains(&b[3]) {
        let name = &b[4..(4 + b[3] as usize).min(b.len())];
        if name.starts_with(b"ssh-") || name.starts_with(b"ecdsa-") || name.starts_with(b"sk-") {
            return Some("an SSH public key");
        }
    }
    // An uncompressed EC point (X9.62) on a supported curve, with or without its 04 prefix.
    let point = match b.len() {
        65 | 97 | 133 if b[0] == 4 => b.to_vec(),
        64 | 96 | 132 => [&[4u8][..], b].concat(),
        _ => return None,
    };
    let kind = ec_kind(&point)?;
    check_ec_point(kind, &point)
        .is_ok()
        .then_some("an EC public key (a point on its curve)")
}

/// Why a text cannot be an HMAC secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretProblem {
    /// It is public key material (see [`key_material_kind`]).
    KeyMaterial(&'static str),
    /// Shorter than this many bytes (RFC 7518 §3.2: at least the hash size).
    TooShort(usize),
}

impl SecretProblem {
    /// A sentence naming `what` (a setting or argument); never the secret or its length.
    pub fn describe(self, what: &str) -> String {
        match self {
            SecretProblem::KeyMaterial(kind) => format!(
                "{what} holds {kind}, not a shared secret: anyone who has a public key could sign HMAC tokens with it"
            ),
            SecretProblem::TooShort(n) => format!(
                "{what} is shorter than {n} bytes; HMAC secrets must be at least as long as the hash (RFC 7518 §3.2)"
            ),
        }
    }
}

/// The rule every HMAC secret passes: not key material, and at least `min_bytes` long (32 for
/// any HMAC algorithm; 48/64 when HS384/HS512 is known to be the one).
pub fn check_hmac_secret(secret: &str, min_bytes: usize) -> Result<(), SecretProblem> {
    if let Some(kind) = key_material_kind(secret) {
        return Err(SecretProblem::KeyMaterial(kind));
    }
    if secret.len() < min_bytes {
        return Err(SecretProblem::TooShort(min_bytes));
    }
    Ok(())
}

/// An HMAC key from a secret that passes [`check_hmac_secret`].
pub fn hmac_key(secret: &str, min_bytes: usize) -> Result<Key, SecretProblem> {
    check_hmac_secret(secret, min_bytes)?;
    Ok(Key::hmac(secret.as_bytes()))
}

// ---------------------------------------------------------------------------------------------
// Explicit keys: verify_jwt(token, key, algorithm), jws_verify(jws, key[, algorithm])

const FIT_HINT: &str = "Pass the algorithm that fits the key, e.g. 'RS256' for an RSA public key; a PEM or JWK is never used as an HMAC secret.";

/// Parse an explicit key argument: a PEM public key, a JWK or JWKS JSON text, or else an HMAC
/// secret (which passes [`check_hmac_secret`], like every secret). The key decides the
/// algorithm family: a PEM or JWK is never used as an HMAC secret. With an `algorithm`, it must
/// fit the key; without one (`jws_verify(jws, key)`), the token's `alg` is judged against the
/// keys when it is verified. A key set may not mix shared secrets with public keys: whoever
/// reads the set could not tell which keys are secret.
pub fn explicit_keys(
    key: &str,
    algorithm: Option<&str>,
) -> Result<(Vec<Key>, Option<Alg>), ConfigError> {
    let alg = algorithm
        .map(|a| {
            Alg::parse(a).map_err(|e| {
                ConfigError::new(
                    "algorithm",
                    e,
                    "Pass the algorithm the key is for, e.g. 'RS256' for an RSA public key.",
                )
            })
        })
        .transpose()?;
    let bad_key = |m: String| {
        ConfigError::new(
            "key",
            m,
            "Pass as key an HMAC secret, a PEM public key, or a JWK/JWKS JSON text.",
        )
    };
    if key.len() > MAX_KEY_BYTES {
        return Err(bad_key(format!(
            "the key is {} bytes; the limit is {MAX_KEY_BYTES} bytes",
            key.len()
        )));
    }
    let t = key.trim_start();
    let list = if is_pem(t) {
        vec![key_from_pem(key).map_err(|e| bad_key(format!("the key cannot be used: {e}")))?]
    } else if t.starts_with('{') {
        let KeySet { keys, ignored } =
            parse_jwks(key, true).map_err(|e| bad_key(format!("the key cannot be used: {e}")))?;
        // A published set may carry keys this verifier cannot use (RFC 7517 §5); a caller's set
        // whose kid names a usable key and an unusable *other* key (not the same key published
        // again for another purpose) leaves it to chance which key the caller meant.
        let same_key = |kid: &str, d: Option<&KeyData>| {
            keys.iter()
                .any(|k| k.kid.as_deref() == Some(kid) && d.is_none_or(|d| k.data == *d))
        };
        for e in jwk_entries(key).iter().filter(|_| !ignored.is_empty()) {
            let Some(kid) = e.get("kid").and_then(Value::as_str) else {
                continue;
            };
            let Err(reason) = key_from_jwk(e, true) else {
                continue;
            };
            if same_key(kid, None) && !jwk_material(e).is_some_and(|d| same_key(kid, Some(&d))) {
                return Err(bad_key(format!(
                    "the key set lists kid {} for more than one key, and one of them cannot be used ({reason}); a kid must name one key",
                    quote(kid),
                )));
            }
        }
        if keys.iter().any(|k| k.kind == KeyKind::Hmac)
            && keys.iter().any(|k| k.kind != KeyKind::Hmac)
        {
            return Err(bad_key(
                "the key set mixes shared secrets (kty oct) with public keys; pass one kind".into(),
            ));
        }
        keys
    } else if alg.is_none_or(|a| a.family() == Family::Hmac) {
        let min = alg.map_or(MIN_HMAC_BYTES, min_hmac_bytes);
        vec![hmac_key(key, min).map_err(|p| {
            ConfigError::new(
                "key",
                p.describe("the key"),
                "Pass the full HMAC secret as key, or a public key (PEM, JWK) with the algorithm that fits it.",
            )
        })?]
    } else {
        // Not PEM, not JSON, and the algorithm is not HMAC: whatever it is, it is not a key for
        // this algorithm, and it is never taken as a secret.
        let alg = alg.map_or("the algorithm", Alg::name);
        return Err(ConfigError::new(
            "algorithm",
            format!("{alg} needs a public key (PEM or JWK), and the key is neither"),
            FIT_HINT,
        ));
    };
    if let Some(alg) = alg {
        if list.iter().all(|k| k.permits(alg).is_err()) {
            if let Some(reason) = list.iter().find_map(|k| k.permits(alg).err()) {
                return Err(ConfigError::new("algorithm", reason, FIT_HINT));
            }
        }
    }
    Ok((list, alg))
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
                let alg = Alg::parse(a).unwrap();
                assert_eq!(k.fits(alg), k.permits(alg).is_ok(), "{a}");
            }
        }
    }

    #[test]
    fn none_is_refused_in_every_spelling() {
        for n in ["none", "None", "NONE", "nOnE"] {
            assert!(Alg::parse(n).unwrap_err().contains("never"));
        }
        assert!(Alg::parse("HS257").is_err());
        assert_eq!(Alg::parse("EdDSA").unwrap(), Alg::EdDSA);
    }

    #[test]
    fn family_decides_algorithms() {
        let k = Key::hmac(&[7u8; 40]);
        assert!(k.permits(Alg::HS256).is_ok());
        assert!(k.permits(Alg::HS384).unwrap_err().contains("48 bytes"));
        assert!(k.permits(Alg::RS256).unwrap_err().contains("HMAC"));
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
        assert!(enc.unwrap_err().contains("use \"enc\" is not \"sig\""));
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

    const ED_X: &str = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo";
    // RFC 7517 Appendix A.1's P-256 key.
    const P256_X: &str = "MKBCTNIcKUSDii11ySs3526iDZ8AiTo7Tu6KPAqv7D4";
    const P256_Y: &str = "4Etl6SRW2YiLUrN5vfvVHuhp7x8PxltmWWlbbM4IFyM";

    fn ed(kid: &str, extra: &str) -> String {
        format!(r#"{{"kty":"OKP","crv":"Ed25519","x":"{ED_X}","kid":"{kid}"{extra}}}"#)
    }

    #[test]
    fn one_unusable_key_does_not_poison_the_set() {
        let small_rsa = r#"{"kty":"RSA","kid":"rsa1024","n":"AQAB","e":"AQAB"}"#;
        let no_y = format!(r#"{{"kty":"EC","crv":"P-256","kid":"no-y","x":"{P256_X}"}}"#);
        // The same x with y changed in its last byte: not on the curve.
        let mut y = b64_decode(P256_Y, "y").unwrap();
        *y.last_mut().unwrap() ^= 1;
        let off = format!(
            r#"{{"kty":"EC","crv":"P-256","kid":"off-curve","x":"{P256_X}","y":"{}"}}"#,
            crate::token::b64_encode(&y)
        );
        let on = format!(
            r#"{{"kty":"EC","crv":"P-256","kid":"on-curve","x":"{P256_X}","y":"{P256_Y}"}}"#
        );
        let doc = format!(
            r#"{{"keys":[{small_rsa},{no_y},{off},{},{},7,{},{on}]}}"#,
            ed("leaked", r#","d":"AA""#),
            ed("enc", r#","use":"enc""#),
            ed("good", "")
        );
        let set = parse_jwks(&doc, false).unwrap();
        let kids: Vec<_> = set.keys.iter().map(|k| k.kid.clone().unwrap()).collect();
        assert_eq!(kids, vec!["good", "on-curve"]);
        let why = |kid: &str| set.ignored_kid(kid).unwrap().reason.clone();
        assert!(
            why("rsa1024").contains("at least 2048"),
            "{}",
            why("rsa1024")
        );
        assert_eq!(why("no-y"), "member y is missing");
        assert!(why("off-curve").contains("not a point on its curve"));
        assert!(why("leaked").contains("private key material (member d)"));
        assert!(why("enc").contains("is not \"sig\""));
        assert_eq!(set.ignored[5].label, "key #6");
        assert_eq!(set.ignored.len(), 6);
        // Nothing usable left: an error that says why each key was ignored.
        let e = parse_jwks(&format!(r#"{{"keys":[{small_rsa},{off}]}}"#), false).unwrap_err();
        assert!(
            e.starts_with("no usable signing key (key \"rsa1024\": the RSA key has"),
            "{e}"
        );
        assert!(
            e.contains("key \"off-curve\": the EC P-256 key is not a point"),
            "{e}"
        );
    }

    #[test]
    fn key_ops_is_honoured_like_use() {
        for (ops, ok) in [
            (r#"["verify"]"#, true),
            (r#"["sign","verify"]"#, true),
            (r#"["sign"]"#, false),
            (r#"["encrypt"]"#, false),
            (r#"[]"#, false),
            (r#"["verify","verify"]"#, false),
            (r#""verify""#, false),
            (r#"[1]"#, false),
        ] {
            let r = parse_jwks(&ed("k", &format!(r#","key_ops":{ops}"#)), false);
            assert_eq!(r.is_ok(), ok, "{ops}: {r:?}");
        }
        assert!(parse_jwks(&ed("k", r#","use":"sig","key_ops":["sign"]"#), false).is_err());
    }

    /// Public key material in every disguise tried against the HMAC rule.
    fn disguises() -> Vec<(&'static str, String)> {
        use aws_lc_rs::encoding::AsDer;
        use aws_lc_rs::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
        use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
        use base64::Engine;
        let rsa = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
        let pkcs1 = rsa.public_key().as_ref().to_vec();
        let spki = rsa.public_key().as_der().unwrap().as_ref().to_vec();
        // PKCS#1: SEQUENCE { INTEGER n, INTEGER e }.
        let (_, used) = der_len(&pkcs1, 1).unwrap();
        let (n_len, n_used) = der_len(&pkcs1, 2 + used).unwrap();
        let n_at = 2 + used + n_used;
        let modulus = pkcs1[n_at..n_at + n_len].to_vec();
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let ec =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref()).unwrap();
        let point = ec.public_key().as_ref().to_vec();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(
            &aws_lc_rs::signature::ECDSA_P521_SHA512_FIXED_SIGNING,
            &rng,
        )
        .unwrap();
        let p521 = EcdsaKeyPair::from_pkcs8(
            &aws_lc_rs::signature::ECDSA_P521_SHA512_FIXED_SIGNING,
            pkcs8.as_ref(),
        )
        .unwrap()
        .public_key()
        .as_ref()
        .to_vec();
        let b64 = STANDARD.encode(&spki);
        let pem = format!(
            "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
            b64.as_bytes()
                .chunks(64)
                .map(|c| std::str::from_utf8(c).unwrap())
                .collect::<Vec<_>>()
                .join("\n")
        );
        let jwk = ed("k", "");
        let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
        let ssh_body = {
            let mut w = vec![0, 0, 0, 11];
            w.extend_from_slice(b"ssh-ed25519");
            w.extend_from_slice(&[0, 0, 0, 32]);
            w.extend_from_slice(&b64_decode(ED_X, "x").unwrap());
            STANDARD.encode(w)
        };
        vec![
            ("PEM", pem.clone()),
            ("PEM", format!("# kinde public key\r\n{pem}")),
            ("PEM", pem.to_lowercase()),
            (
                "PEM",
                "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----".into(),
            ),
            (
                "PEM",
                format!(
                    "---- BEGIN SSH2 PUBLIC KEY ----\n{ssh_body}\n---- END SSH2 PUBLIC KEY ----"
                ),
            ),
            ("PEM", STANDARD.encode(&pem)),
            ("JWK", jwk.clone()),
            ("JWK", format!("\u{feff}{jwk}")),
            ("JWK", format!("\u{200b}{{\"keys\":[{jwk}]}}\r\n")),
            ("JWK", URL_SAFE_NO_PAD.encode(&jwk)),
            ("SSH", format!("ssh-ed25519 {ssh_body} user@host")),
            ("SSH", format!("ssh-rsa\t{ssh_body}")),
            (
                "SSH",
                format!("no-pty,from=\"10.0.0.1\" ssh-ed25519 {ssh_body}"),
            ),
            ("SSH", format!("sk-ssh-ed25519@openssh.com {ssh_body}")),
            ("SSH", ssh_body.clone()),
            ("DER", b64.clone()),
            ("DER", URL_SAFE_NO_PAD.encode(&spki)),
            ("DER", format!("\u{feff}{b64}")),
            (
                "DER",
                b64.as_bytes()
                    .chunks(64)
                    .map(|c| std::str::from_utf8(c).unwrap())
                    .collect::<Vec<_>>()
                    .join("\\n"),
            ),
            ("DER", STANDARD.encode(&pkcs1)),
            ("DER", hex(&spki)),
            ("DER", hex(&pkcs1).to_uppercase()),
            (
                "DER",
                spki.iter()
                    .map(|x| format!("{x:02x}"))
                    .collect::<Vec<_>>()
                    .join(":"),
            ),
            ("EC", STANDARD.encode(&point)),
            ("EC", hex(&point)),
            ("EC", URL_SAFE_NO_PAD.encode(&point[1..])),
            ("EC", STANDARD.encode(&p521)),
            ("EC", hex(&p521[1..])),
            ("JWK", serde_json::Value::String(jwk.clone()).to_string()),
            ("JWK", jwk.bytes().map(|b| format!("%{b:02X}")).collect()),
            (
                "JWK",
                format!(
                    "keys:\n- kty: RSA\n  n: {}\n  e: AQAB\n",
                    URL_SAFE_NO_PAD.encode(&modulus)
                ),
            ),
            ("DER", format!("public_key: {b64}")),
            (
                "DER",
                STANDARD.encode(STANDARD.encode(STANDARD.encode(&spki))),
            ),
            ("PEM", pem.lines().skip(1).collect::<Vec<_>>().join("\n")),
            ("DER", format!("KINDE_PUBLIC_KEY={b64}")),
            ("DER", format!("pubkey-{b64}")),
            ("JWK", jwk.replace('"', "'")),
            ("JWK", jwk.replace('"', "\\\"")),
            ("JWK", "kty = \"RSA\"\nn = \"abc\"\ne = \"AQAB\"\n".into()),
            (
                "JWK",
                format!(
                    "<RSAKeyValue><Modulus>{}</Modulus><Exponent>AQAB</Exponent></RSAKeyValue>",
                    STANDARD.encode(&modulus)
                ),
            ),
            (
                "JWK",
                format!("n={}&e=AQAB", URL_SAFE_NO_PAD.encode(&modulus)),
            ),
            (
                "DER",
                spki.iter()
                    .map(|x| format!("0x{x:02x}"))
                    .collect::<Vec<_>>()
                    .join(", "),
            ),
            (
                "DER",
                format!(
                    "{{{}}}",
                    spki.iter()
                        .map(|x| format!("0x{x:02X}"))
                        .collect::<Vec<_>>()
                        .join(",")
                ),
            ),
            ("EC", format!("0x{}", hex(&point))),
        ]
    }

    #[test]
    fn public_key_text_is_never_an_hmac_secret() {
        for (kind, text) in disguises() {
            match check_hmac_secret(&text, 32) {
                Err(SecretProblem::KeyMaterial(k)) => {
                    assert!(k.contains(kind), "{text:?}: {k}")
                }
                other => panic!("{kind}: {text:?}: {other:?}"),
            }
        }
        // Real secrets pass; short ones do not, and the message never says how long they are.
        let kinde = "Ht2ZZ0CGuKuM1NhXGEiTcZPg7Zu3vkWvcyrcvCRn6lr0WsHyLb";
        assert_eq!(check_hmac_secret(kinde, 32), Ok(()));
        assert_eq!(
            check_hmac_secret(kinde, 64),
            Err(SecretProblem::TooShort(64))
        );
        let msg = SecretProblem::TooShort(64).describe("kinde_rls.secret");
        assert!(!msg.contains(&kinde.len().to_string()), "{msg}");
        // An explicit oct JWK whose k is a PEM is refused too.
        let (_, pem) = disguises().remove(0);
        let k = crate::token::b64_encode(pem.as_bytes());
        let e = parse_jwks(&format!(r#"{{"kty":"oct","k":"{k}"}}"#), true).unwrap_err();
        assert!(e.contains("not a shared secret"), "{e}");
    }

    #[test]
    fn random_secrets_are_not_mistaken_for_keys() {
        // Secrets as people make them: alphanumeric, printable passwords, hex, base64 and
        // base64url of 32 to 128 random bytes, and of 256, 384 and 512 (`openssl rand`).
        use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
        use base64::Engine;
        const ALNUM: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
        let printable: Vec<u8> = (0x21u8..0x7f).collect();
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let mut refused = Vec::new();
        for i in 0..3000 {
            let len = match i % 10 {
                0 => 256,
                1 => 384,
                2 => 512,
                _ => 32 + i % 97,
            };
            let mut bytes = vec![0u8; len];
            aws_lc_rs::rand::SecureRandom::fill(&rng, &mut bytes).unwrap();
            let pick = |alphabet: &[u8], n: usize| -> String {
                bytes
                    .iter()
                    .take(n)
                    .map(|b| alphabet[*b as usize % alphabet.len()] as char)
                    .collect()
            };
            let hex: String = bytes.iter().map(|x| format!("{x:02x}")).collect();
            let json_password = format!("[\"{}\"]", pick(ALNUM, 40));
            for s in [
                json_password,
                format!("{{\"pass\":\"{}\"}}", pick(ALNUM, 40)),
                format!("mykty:{}", pick(ALNUM, 40)),
                pick(ALNUM, len),
                pick(&printable, 64),
                hex,
                STANDARD.encode(&bytes),
                URL_SAFE_NO_PAD.encode(&bytes),
            ] {
                if let Some(k) = key_material_kind(&s) {
                    refused.push((s, k));
                }
            }
        }
        assert!(refused.is_empty(), "{:?}", &refused[..refused.len().min(3)]);
    }

    /// serde reads a JWK's shape; what it refuses names the member at fault.
    #[test]
    fn jwk_shape_errors_name_the_member() {
        let why = |j: &str| key_from_jwk(&serde_json::from_str(j).unwrap(), false).unwrap_err();
        assert_eq!(
            why(r#"{"kty":"RSA","n":5,"e":"AQAB"}"#),
            "member n: invalid type: integer `5`; expected a string"
        );
        assert_eq!(
            why(r#"{"kty":"EC","crv":"P-256","x":"AA","y":"AA","kid":7}"#),
            "member kid: invalid type: integer `7`; expected a string"
        );
        assert_eq!(
            why(r#"{"kty":"EC","crv":"P-256","x":"AA","y":"AA","key_ops":["verify",1]}"#),
            "member key_ops[1]: invalid type: integer `1`; expected a string"
        );
        assert_eq!(
            why(r#"{"kty":5}"#),
            "member kty: invalid type: integer `5`; expected a string"
        );
        assert_eq!(why(r#"{"n":"AQAB"}"#), "member kty is missing");
        assert_eq!(
            why(r#"{"kty":"XYZ"}"#),
            r#"key type "XYZ" is not supported"#
        );
        assert_eq!(why("[]"), "it is not a JSON object");
    }

    /// The ROCA key of Wycheproof's json_web_key_test.json (group jws_rsa_roca_key; C2SP
    /// Wycheproof, Apache-2.0).
    const ROCA_N: &str = "AanFpofbj7KjD4Lf-N2hVMKR7yewSyXhhbirIMTGpfYEhZ_lnt5UoK98DnKIgArXGTu3MaW_HhFw16HGaTDUHqPrId7fe4r11CqRw09yBFuW79V8sYIwHdzCaWflUI6auImYbVfoN9_nD5n8N8SY9DwXw7mwZM9wREPXoDPgOoIWl6q_MPsp7n0zs3Z5ZaiQWOOzl1S9OhwAfSiiOwz6efnXEaxuTEtPd7BjSx7NaFka8Dx9U7YqXy2RFj1O9PjyaDGuRh7YXsX3iMUSP_wSyHQg_c_qHRtKUsNSGCT7OZg0hzm2KphtjnayKJvC64vAbROBR4Ubg6Bxg9IQVZ-QYyE";

    fn rsa_jwk(n: &str, e: &str) -> Value {
        serde_json::json!({"kty": "RSA", "n": n, "e": e})
    }

    fn generated_rsa_n() -> Vec<u8> {
        use aws_lc_rs::signature::KeyPair;
        let pair = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
        let der = pair.public_key().as_ref().to_vec();
        pkcs1_parts(&der).unwrap().0.to_vec()
    }

    #[test]
    fn roca_moduli_are_refused_and_generated_ones_are_not() {
        let e = key_from_jwk(&rsa_jwk(ROCA_N, "AQAB"), false).unwrap_err();
        assert!(e.contains("CVE-2017-15361"), "{e}");
        for _ in 0..4 {
            let n = generated_rsa_n();
            assert!(!roca_fingerprint(unsigned(&n)));
            key_from_jwk(&rsa_jwk(&crate::token::b64_encode(&n), "AQAB"), false).unwrap();
        }
    }

    #[test]
    fn rsa_exponents_must_be_odd_and_at_least_three() {
        let n = crate::token::b64_encode(&generated_rsa_n());
        for (e, ok) in [
            ("AQ", false),           // 1
            ("Ag", false),           // 2
            ("AAE", false),          // 1 with a leading zero
            ("AAAAAQ", false),       // still 1
            ("AQAA", false),         // 65536: even
            ("Aw", true),            // 3
            ("AQAB", true),          // 65537
            ("AAEAAQ", true),        // 65537 with a leading zero
            ("AQAAAAAAAAAB", false), // more than 64 bits
        ] {
            assert_eq!(key_from_jwk(&rsa_jwk(&n, e), false).is_ok(), ok, "{e}");
        }
    }

    #[test]
    fn p521_keys_are_read_from_jwk_and_pem_and_pinned_to_es512() {
        use aws_lc_rs::signature::{EcdsaKeyPair, KeyPair, ECDSA_P521_SHA512_FIXED_SIGNING};
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P521_SHA512_FIXED_SIGNING, &rng).unwrap();
        let pair =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P521_SHA512_FIXED_SIGNING, pkcs8.as_ref()).unwrap();
        let point = pair.public_key().as_ref().to_vec();
        assert_eq!(point.len(), 133);
        let jwk = serde_json::json!({"kty": "EC", "crv": "P-521",
            "x": crate::token::b64_encode(&point[1..67]), "y": crate::token::b64_encode(&point[67..])});
        let k = key_from_jwk(&jwk, false).unwrap();
        assert_eq!((k.kind, k.bits), (KeyKind::EcP521, 521));
        assert!(k.permits(Alg::ES512).is_ok());
        for other in [Alg::ES256, Alg::ES384, Alg::HS512, Alg::RS512] {
            assert!(k.permits(other).is_err(), "{other}");
        }
        // The same key as an SPKI PEM (id-ecPublicKey, secp521r1).
        let mut spki = vec![0x30, 0x81, 0x9b, 0x30, 0x10, 0x06, 0x07];
        spki.extend([0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x05]);
        spki.extend([0x2b, 0x81, 0x04, 0x00, 0x23, 0x03, 0x81, 0x86, 0x00]);
        spki.extend(&point);
        let b64 = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &spki);
        let pem = format!("-----BEGIN PUBLIC KEY-----\n{b64}\n-----END PUBLIC KEY-----\n");
        let from_pem = key_from_pem(&pem).unwrap();
        assert_eq!(
            (from_pem.kind, from_pem.data == k.data),
            (KeyKind::EcP521, true)
        );
        // A P-521 curve name with P-256-sized coordinates, and a point off the curve.
        let short = serde_json::json!({"kty": "EC", "crv": "P-521",
            "x": crate::token::b64_encode(&point[1..33]), "y": crate::token::b64_encode(&point[33..65])});
        assert!(key_from_jwk(&short, false)
            .unwrap_err()
            .contains("66 bytes"));
        let mut bent = point.clone();
        bent[132] ^= 1;
        let off = serde_json::json!({"kty": "EC", "crv": "P-521",
            "x": crate::token::b64_encode(&bent[1..67]), "y": crate::token::b64_encode(&bent[67..])});
        assert!(key_from_jwk(&off, false)
            .unwrap_err()
            .contains("not a point"));
        // A JWK naming ES512 fits; one naming the non-algorithm ES521 is not used.
        let mut named = jwk.clone();
        named["alg"] = "ES512".into();
        assert_eq!(key_from_jwk(&named, false).unwrap().alg, Some(Alg::ES512));
        named["alg"] = "ES521".into();
        assert!(key_from_jwk(&named, false).is_err());
    }

    #[test]
    fn explicit_key_sets_do_not_mix_secrets_and_public_keys() {
        let mixed = format!(
            r#"{{"keys":[{{"kty":"oct","k":"{}"}},{}]}}"#,
            crate::token::b64_encode(&[9u8; 32]),
            ed("e1", "")
        );
        let e = explicit_keys(&mixed, None).unwrap_err();
        assert!(e.message.contains("mixes shared secrets"), "{}", e.message);
        assert_eq!(e.setting, "key");
        // A kid that names a usable key and an unusable one.
        let twice = format!(
            r#"{{"keys":[{},{}]}}"#,
            ed("e1", ""),
            ed("e1", r#","use":"enc""#).replace(ED_X, &crate::token::b64_encode(&[7; 32]))
        );
        let e = explicit_keys(&twice, None).unwrap_err();
        assert!(
            e.message.contains("lists kid \"e1\" for more than one key"),
            "{}",
            e.message
        );
        // The same key listed again for another purpose is one key.
        let again = format!(
            r#"{{"keys":[{},{}]}}"#,
            ed("e1", ""),
            ed("e1", r#","use":"enc","alg":"ECDH-ES""#)
        );
        assert_eq!(explicit_keys(&again, None).unwrap().0.len(), 1);
        // Each kind alone is fine.
        assert_eq!(explicit_keys(&ed("e1", ""), None).unwrap().0.len(), 1);
        let (k, alg) = explicit_keys("0123456789abcdef0123456789abcdef", None).unwrap();
        assert_eq!((k[0].kind, alg), (KeyKind::Hmac, None));
        // Without an algorithm a secret still needs HS256's length; with one, that one's.
        assert!(explicit_keys("short", None).is_err());
        assert!(explicit_keys("0123456789abcdef0123456789abcdef", Some("HS384")).is_err());
    }

    #[test]
    fn key_text_is_read_one_way_only() {
        // Duplicate members, at any depth: whichever a reader kept, another reader may differ.
        for text in [
            format!(r#"{{"kty":"OKP","crv":"Ed25519","x":"{ED_X}","use":"enc","use":"sig"}}"#),
            format!(r#"{{"keys":[],"keys":[{}]}}"#, ed("a", "")),
            format!(r#"{{"keys":[{{"kty":"OKP","kty":"oct","crv":"Ed25519","x":"{ED_X}"}}]}}"#),
        ] {
            let e = parse_jwks(&text, true).unwrap_err();
            assert!(e.contains("duplicate member"), "{e}");
        }
        // One PEM block and nothing after it.
        let rsa = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
        let spki = {
            use aws_lc_rs::encoding::AsDer;
            use aws_lc_rs::signature::KeyPair;
            rsa.public_key().as_der().unwrap().as_ref().to_vec()
        };
        let b64 = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &spki);
        let pem = format!("-----BEGIN PUBLIC KEY-----\n{b64}\n-----END PUBLIC KEY-----\n");
        assert!(key_from_pem(&pem).is_ok());
        assert!(key_from_pem(&format!("  {pem}\n\n")).is_ok());
        for bad in [
            format!("{pem}{pem}"),
            format!("{pem}trailing"),
            format!("-----BEGIN PUBLIC KEY-----\n{pem}"),
            pem.replace("-----END PUBLIC KEY-----\n", ""),
        ] {
            let e = key_from_pem(&bad).unwrap_err();
            assert!(e.contains("exactly one PEM block"), "{e}");
        }
    }

    #[test]
    fn a_set_of_unusable_keys_is_refused_in_a_few_words() {
        let many = format!(r#"{{"keys":[{}{{}}]}}"#, "{},".repeat(9999));
        let e = parse_jwks(&many, true).unwrap_err();
        assert!(e.ends_with("and 9995 more)"), "{e}");
        assert!(e.len() < 300, "{e}");
    }

    #[test]
    fn rsa_keys_the_signature_check_cannot_use_are_refused_when_read() {
        let n = generated_rsa_n();
        let b = crate::token::b64_encode;
        // 33-bit exponents are the most the check takes; 34 bits are refused when read.
        assert!(key_from_jwk(&rsa_jwk(&b(&n), &b(&[1, 0, 0, 0, 1])), false).is_ok());
        let e = key_from_jwk(&rsa_jwk(&b(&n), &b(&[3, 0, 0, 0, 1])), false).unwrap_err();
        assert!(e.contains("at most 33 bits"), "{e}");
        // A modulus beyond 8192 bits.
        let mut big = vec![0xc5u8; 1025];
        big[1024] |= 1;
        let e = key_from_jwk(&rsa_jwk(&b(&big), "AQAB"), false).unwrap_err();
        assert!(e.contains("at most 8192"), "{e}");
        // An even modulus is no RSA key.
        let mut even = n.clone();
        *even.last_mut().unwrap() &= 0xfe;
        let e = key_from_jwk(&rsa_jwk(&b(&even), "AQAB"), false).unwrap_err();
        assert!(e.contains("modulus is even"), "{e}");
        // A modulus sent with a leading zero byte is the same key.
        let padded = [&[0u8][..], &n].concat();
        let k = key_from_jwk(&rsa_jwk(&b(&padded), "AQAB"), false).unwrap();
        assert!(k.data == key_from_jwk(&rsa_jwk(&b(&n), "AQAB"), false).unwrap().data);
    }

    #[test]
    fn explicit_keys_are_bounded_and_secrets_stay_unquoted() {
        let huge = "k".repeat(MAX_KEY_BYTES + 1);
        let e = explicit_keys(&huge, None).unwrap_err();
        assert!(
            e.message.contains("the limit is 65536 bytes"),
            "{}",
            e.message
        );
        // A secret in the algorithm's place is not repeated.
        let secret = "Tr0ub4dor-and-3-more-words-hmac-secret-2024";
        let e = explicit_keys("0123456789abcdef0123456789abcdef", Some(secret)).unwrap_err();
        assert!(
            !e.message.contains(secret) && !e.message.contains("Tr0ub"),
            "{}",
            e.message
        );
        let e = explicit_keys("0123456789abcdef0123456789abcdef", Some("XS256")).unwrap_err();
        assert!(
            e.message.contains(r#"algorithm "XS256" is not supported"#),
            "{}",
            e.message
        );
        // Where base64url decoding of a secret stopped is not said.
        let e = explicit_keys(
            r#"{"kty":"oct","k":"abc+defghijklmnopqrstuvwxyz0123456789abcdefgh"}"#,
            None,
        )
        .unwrap_err();
        assert!(
            e.message.contains("member k is not unpadded base64url"),
            "{}",
            e.message
        );
        assert!(
            !e.message.contains("offset") && !e.message.contains("symbol"),
            "{}",
            e.message
        );
    }

    #[test]
    fn small_order_ed25519_keys_are_refused() {
        for (i, y) in ED25519_SMALL_ORDER.iter().enumerate() {
            for sign in [0u8, 0x80] {
                let mut x = *y;
                x[31] |= sign;
                let jwk = serde_json::json!({"kty": "OKP", "crv": "Ed25519",
                    "x": crate::token::b64_encode(&x)});
                let e = key_from_jwk(&jwk, false).unwrap_err();
                assert!(e.contains("small order"), "{i} {sign}: {e}");
            }
        }
        // Under the identity, (R = identity, S = 0) would verify any message: the forgery the
        // rule prevents.
        let identity = KeyData::Point(ED25519_SMALL_ORDER[1].to_vec());
        let forged = [&ED25519_SMALL_ORDER[1][..], &[0u8; 32]].concat();
        for m in [&b"a"[..], b"any message"] {
            assert!(crate::alg::verify_signature(
                Alg::EdDSA,
                &identity,
                m,
                &forged
            ));
        }
        // An ordinary key is fine.
        assert!(key_from_jwk(
            &serde_json::json!({"kty": "OKP", "crv": "Ed25519", "x": ED_X}),
            false
        )
        .is_ok());
    }
}
