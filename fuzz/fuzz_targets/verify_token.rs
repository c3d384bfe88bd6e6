//! Verification against a fixed configuration (an HMAC secret, Ed25519 and P-256 JWKs, one
//! issuer and audience, a fixed clock), from seeds that it accepts. Each input is checked as
//! it is and with its segments re-signed by the test keys, so that mutated claims are judged
//! under a good signature. Properties (kinde_rls_fuzz::check): verify accepts exactly when
//! explain passes every row, and refuses at the first row that fails; verify_configured
//! agrees with verify and with its own explain; what is accepted has canonical segments, the
//! payload that was signed, a claim map that agrees with the registered claims and with
//! one-claim lookups, and claims that satisfy the rules read directly.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| kinde_rls_fuzz::verify_token(data));
