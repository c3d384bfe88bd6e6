//! Key material: JWKS and JWK text, PEM text, and the explicit-key parser, with any input.
#![no_main]
use kinde_rls_core::keys::{key_from_pem, parse_jwks};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = parse_jwks(s, false);
        let _ = parse_jwks(s, true);
        let _ = key_from_pem(s);
        for alg in ["HS256", "RS256", "ES256", "EdDSA", "PS512", "none"] {
            let _ = kinde_rls_core::explicit_keys(s, Some(alg));
        }
    }
});
