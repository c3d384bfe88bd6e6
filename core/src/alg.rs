//! The JWS signature algorithms (RFC 7518 §3, RFC 8037 §3.1) and the one function that checks
//! a signature with them.
//!
//! kinde_rls names its algorithms itself rather than borrowing a JWT library's list, so that
//! every algorithm it verifies — ES512 (P-521) included — goes through the same code:
//! [`verify_signature`] is the only place a signature is checked, and it calls aws-lc-rs
//! directly. `none` is not an algorithm here: [`Alg::parse`] refuses it in every spelling.

use aws_lc_rs::{hmac, signature as sig};

use crate::error::quote;

/// A JWS signature algorithm kinde_rls verifies.
#[allow(clippy::upper_case_acronyms)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Alg {
    HS256,
    HS384,
    HS512,
    RS256,
    RS384,
    RS512,
    PS256,
    PS384,
    PS512,
    ES256,
    ES384,
    ES512,
    EdDSA,
}

/// What kind of key an algorithm needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Hmac,
    Rsa,
    Ec,
    Ed,
}

impl Alg {
    pub const ALL: [Alg; 13] = [
        Alg::HS256,
        Alg::HS384,
        Alg::HS512,
        Alg::RS256,
        Alg::RS384,
        Alg::RS512,
        Alg::PS256,
        Alg::PS384,
        Alg::PS512,
        Alg::ES256,
        Alg::ES384,
        Alg::ES512,
        Alg::EdDSA,
    ];

    /// The registered name (`alg` header value), exactly as RFC 7518 spells it.
    pub fn name(self) -> &'static str {
        match self {
            Alg::HS256 => "HS256",
            Alg::HS384 => "HS384",
            Alg::HS512 => "HS512",
            Alg::RS256 => "RS256",
            Alg::RS384 => "RS384",
            Alg::RS512 => "RS512",
            Alg::PS256 => "PS256",
            Alg::PS384 => "PS384",
            Alg::PS512 => "PS512",
            Alg::ES256 => "ES256",
            Alg::ES384 => "ES384",
            Alg::ES512 => "ES512",
            Alg::EdDSA => "EdDSA",
        }
    }

    pub fn family(self) -> Family {
        match self {
            Alg::HS256 | Alg::HS384 | Alg::HS512 => Family::Hmac,
            Alg::RS256 | Alg::RS384 | Alg::RS512 | Alg::PS256 | Alg::PS384 | Alg::PS512 => {
                Family::Rsa
            }
            Alg::ES256 | Alg::ES384 | Alg::ES512 => Family::Ec,
            Alg::EdDSA => Family::Ed,
        }
    }

    /// An algorithm by its registered name, case-sensitive as JOSE names are. `none` (in any
    /// spelling) is refused here, so nothing downstream can ever see it.
    pub fn parse(name: &str) -> Result<Alg, String> {
        if name.eq_ignore_ascii_case("none") {
            return Err("unsigned tokens (alg \"none\") are never accepted".into());
        }
        Alg::ALL
            .into_iter()
            .find(|a| a.name() == name)
            .ok_or_else(|| {
                let supported = Alg::ALL.map(Alg::name).join(", ");
                // A name no algorithm could have is not repeated: it may be a secret passed in
                // the algorithm's place.
                if name.len() <= 16 && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                {
                    format!(
                        "algorithm {} is not supported (supported: {supported})",
                        quote(name)
                    )
                } else {
                    format!("the algorithm is not one of the supported names ({supported})")
                }
            })
    }
}

impl std::fmt::Display for Alg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A verification key's bytes, in the form its algorithms take them.
#[derive(Clone, PartialEq, Eq)]
pub(crate) enum KeyData {
    /// An HMAC secret.
    Secret(Vec<u8>),
    /// An RSA public key: modulus and exponent, big-endian.
    Rsa { n: Vec<u8>, e: Vec<u8> },
    /// An EC public point (uncompressed, `04 || x || y`) or an Ed25519 public key (32 bytes).
    Point(Vec<u8>),
}

/// An HMAC key for one of the HS algorithms (HS256 for any other, which never reaches here).
pub(crate) fn hmac_key(alg: Alg, secret: &[u8]) -> hmac::Key {
    let h = match alg {
        Alg::HS384 => hmac::HMAC_SHA384,
        Alg::HS512 => hmac::HMAC_SHA512,
        _ => hmac::HMAC_SHA256,
    };
    hmac::Key::new(h, secret)
}

/// Does `signature` sign `message` under `key` with `alg`? The one signature check in kinde_rls.
/// Anything that does not verify — a key of another family, a signature of the wrong length,
/// a key the backend rejects — is `false`: fail closed.
pub(crate) fn verify_signature(alg: Alg, key: &KeyData, message: &[u8], signature: &[u8]) -> bool {
    match (alg.family(), key) {
        (Family::Hmac, KeyData::Secret(secret)) => {
            hmac::verify(&hmac_key(alg, secret), message, signature).is_ok()
        }
        (Family::Rsa, KeyData::Rsa { n, e }) => {
            let params: &sig::RsaParameters = match alg {
                Alg::RS256 => &sig::RSA_PKCS1_2048_8192_SHA256,
                Alg::RS384 => &sig::RSA_PKCS1_2048_8192_SHA384,
                Alg::RS512 => &sig::RSA_PKCS1_2048_8192_SHA512,
                Alg::PS256 => &sig::RSA_PSS_2048_8192_SHA256,
                Alg::PS384 => &sig::RSA_PSS_2048_8192_SHA384,
                _ => &sig::RSA_PSS_2048_8192_SHA512,
            };
            sig::RsaPublicKeyComponents { n, e }
                .verify(params, message, signature)
                .is_ok()
        }
        (Family::Ec | Family::Ed, KeyData::Point(point)) => {
            let v: &'static dyn sig::VerificationAlgorithm = match alg {
                Alg::ES256 => &sig::ECDSA_P256_SHA256_FIXED,
                Alg::ES384 => &sig::ECDSA_P384_SHA384_FIXED,
                Alg::ES512 => &sig::ECDSA_P521_SHA512_FIXED,
                _ => &sig::ED25519,
            };
            sig::UnparsedPublicKey::new(v, point)
                .verify(message, signature)
                .is_ok()
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_none_is_refused() {
        for a in Alg::ALL {
            assert_eq!(Alg::parse(a.name()), Ok(a));
        }
        for none in ["none", "None", "NONE", "nOnE"] {
            assert!(Alg::parse(none).unwrap_err().contains("never accepted"));
        }
        // JOSE names are case-sensitive, and ES521 is not one.
        for other in ["hs256", "ES521", "ES224", "RS1", "A256GCM", ""] {
            assert!(
                Alg::parse(other).unwrap_err().contains("not supported"),
                "{other}"
            );
        }
    }

    #[test]
    fn a_key_of_another_family_never_verifies() {
        let secret = KeyData::Secret(vec![7; 32]);
        let mac = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, &[7; 32]), b"m");
        assert!(verify_signature(Alg::HS256, &secret, b"m", mac.as_ref()));
        assert!(!verify_signature(Alg::HS256, &secret, b"n", mac.as_ref()));
        assert!(!verify_signature(Alg::HS384, &secret, b"m", mac.as_ref()));
        for a in [Alg::RS256, Alg::ES256, Alg::ES512, Alg::EdDSA] {
            assert!(!verify_signature(a, &secret, b"m", mac.as_ref()), "{a}");
        }
        let point = KeyData::Point(vec![7; 32]);
        assert!(!verify_signature(Alg::HS256, &point, b"m", mac.as_ref()));
    }
}
