//! The verification core against the bare signature check of the same bytes.
//!
//! Input (argv[1]): a JSON file written by bench/bench.py with, per algorithm, a token minted by
//! PyJWT, its public JWK (or HMAC secret) and the raw public key bytes. For each algorithm this
//! measures, interleaved in rounds so that machine noise hits all of them alike:
//! - `core`: `kinde_rls_core::verify` — parse, select the key, check the signature and claims;
//! - `aws_lc`: aws-lc-rs verifying the signature with a key parsed per call (what jsonwebtoken
//!   does, and what a bare call does);
//! - `aws_lc_parsed`: aws-lc-rs with the key parsed once, the floor;
//! - `rust_crypto`: the pure-Rust RustCrypto crates (the other jsonwebtoken backend) on the same
//!   bytes, to choose the backend by measurement.
//!
//! Output: one JSON object per line, `{"alg", "what", "ns"}` (median ns per operation).

use aws_lc_rs::signature::{self as aws, VerificationAlgorithm};
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use kinde_rls_core::{parse_jwks, Key, Policy};
use serde_json::Value;
use std::hint::black_box;
use std::time::Instant;

struct Case {
    alg: String,
    token: String,
    keys: Vec<Key>,
    policy: Policy,
    now: i64,
    msg: Vec<u8>,
    sig: Vec<u8>,
    raw: Vec<u8>,
}

fn aws_alg(alg: &str) -> Option<&'static dyn VerificationAlgorithm> {
    Some(match alg {
        "RS256" => &aws::RSA_PKCS1_2048_8192_SHA256,
        "PS256" => &aws::RSA_PSS_2048_8192_SHA256,
        "ES256" => &aws::ECDSA_P256_SHA256_FIXED,
        "EdDSA" => &aws::ED25519,
        _ => return None,
    })
}

fn bare_aws(c: &Case) -> bool {
    match aws_alg(&c.alg) {
        Some(a) => aws::UnparsedPublicKey::new(a, &c.raw)
            .verify(&c.msg, &c.sig)
            .is_ok(),
        None => {
            let k = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &c.raw);
            aws_lc_rs::hmac::verify(&k, &c.msg, &c.sig).is_ok()
        }
    }
}

enum Parsed {
    Sig(aws::ParsedPublicKey),
    Hmac(aws_lc_rs::hmac::Key),
}

fn parse_aws(c: &Case) -> Parsed {
    match aws_alg(&c.alg) {
        Some(a) => Parsed::Sig(aws::ParsedPublicKey::new(a, &c.raw).expect("public key")),
        None => Parsed::Hmac(aws_lc_rs::hmac::Key::new(
            aws_lc_rs::hmac::HMAC_SHA256,
            &c.raw,
        )),
    }
}

fn parsed_aws(p: &Parsed, c: &Case) -> bool {
    match p {
        Parsed::Sig(k) => k.verify_sig(&c.msg, &c.sig).is_ok(),
        Parsed::Hmac(k) => aws_lc_rs::hmac::verify(k, &c.msg, &c.sig).is_ok(),
    }
}

fn rust_crypto(c: &Case) -> bool {
    use rsa::pkcs1::DecodeRsaPublicKey;
    match c.alg.as_str() {
        "RS256" | "PS256" => {
            let key = rsa::RsaPublicKey::from_pkcs1_der(&c.raw).expect("rsa key");
            let digest = <sha2::Sha256 as sha2::Digest>::digest(&c.msg);
            if c.alg == "RS256" {
                key.verify(rsa::Pkcs1v15Sign::new::<sha2::Sha256>(), &digest, &c.sig)
                    .is_ok()
            } else {
                key.verify(rsa::Pss::new::<sha2::Sha256>(), &digest, &c.sig)
                    .is_ok()
            }
        }
        "ES256" => {
            use p256::ecdsa::signature::Verifier;
            let key = p256::ecdsa::VerifyingKey::from_sec1_bytes(&c.raw).expect("p256 key");
            let sig = p256::ecdsa::Signature::from_slice(&c.sig).expect("p256 sig");
            key.verify(&c.msg, &sig).is_ok()
        }
        "EdDSA" => {
            let raw: [u8; 32] = c.raw.as_slice().try_into().expect("ed25519 key");
            let key = ed25519_dalek::VerifyingKey::from_bytes(&raw).expect("ed25519 key");
            let sig = ed25519_dalek::Signature::from_slice(&c.sig).expect("ed25519 sig");
            key.verify_strict(&c.msg, &sig).is_ok()
        }
        _ => {
            use hmac::Mac;
            let mut m = hmac::Hmac::<sha2::Sha256>::new_from_slice(&c.raw).expect("hmac key");
            m.update(&c.msg);
            m.verify_slice(&c.sig).is_ok()
        }
    }
}

fn load(path: &str) -> Vec<Case> {
    let doc: Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("fixture")).expect("json");
    let now = doc["now"].as_i64().expect("now");
    doc["cases"]
        .as_array()
        .expect("cases")
        .iter()
        .map(|c| {
            let alg = c["alg"].as_str().unwrap().to_string();
            let token = c["token"].as_str().unwrap().to_string();
            let raw = B64.decode(c["raw"].as_str().unwrap()).unwrap();
            let keys = if alg == "HS256" {
                kinde_rls_core::explicit_keys(std::str::from_utf8(&raw).unwrap(), Some("HS256"))
                    .unwrap()
                    .0
            } else {
                parse_jwks(&c["jwk"].to_string(), false).unwrap().keys
            };
            let (signing_input, sig) = token.rsplit_once('.').unwrap();
            Case {
                policy: Policy {
                    issuers: vec![c["iss"].as_str().unwrap().to_string()],
                    audiences: vec![],
                    leeway: 30,
                    require_sub: true,
                },
                alg,
                msg: signing_input.as_bytes().to_vec(),
                sig: B64.decode(sig).unwrap(),
                token,
                keys,
                now,
                raw,
            }
        })
        .collect()
}

/// Median ns/op of `f` over `rounds` rounds of `iters` calls.
fn time(samples: &mut Vec<f64>, iters: u32, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    for _ in 0..iters {
        assert!(black_box(f()), "verification failed");
    }
    samples.push(t.elapsed().as_nanos() as f64 / f64::from(iters));
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let path = std::env::args()
        .nth(1)
        .expect("usage: kinde_rls_bench <fixture.json>");
    let rounds: usize = std::env::var("BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(15);
    for c in load(&path) {
        let iters = if c.alg == "HS256" {
            20_000
        } else if c.alg.starts_with("RS") || c.alg.starts_with("PS") {
            500
        } else {
            1_000
        };
        let parsed = parse_aws(&c);
        let (mut core, mut aws_s, mut aws_p, mut rc) = (vec![], vec![], vec![], vec![]);
        let mut parse = vec![];
        for _ in 0..rounds {
            time(&mut core, iters, || {
                kinde_rls_core::verify(black_box(&c.token), &c.keys, &c.policy, c.now).is_ok()
            });
            time(&mut aws_s, iters, || bare_aws(black_box(&c)));
            time(&mut aws_p, iters, || parsed_aws(&parsed, black_box(&c)));
            time(&mut rc, iters, || rust_crypto(black_box(&c)));
            time(&mut parse, iters, || {
                kinde_rls_core::token::parse(black_box(&c.token)).is_ok()
            });
        }
        for (what, v) in [
            ("core", &mut core),
            ("aws_lc", &mut aws_s),
            ("aws_lc_parsed", &mut aws_p),
            ("rust_crypto", &mut rc),
            ("parse", &mut parse),
        ] {
            println!(
                "{}",
                serde_json::json!({"alg": c.alg, "what": what, "ns": median(v)})
            );
        }
    }
}
