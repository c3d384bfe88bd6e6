//! Wycheproof (C2SP) primitive test vectors against the one signature check,
//! [`verify_signature`], with keys built by the parsers production uses ([`key_from_pem`], and
//! [`key_from_jwk`] where the group gives a JWK, which must read the same key).
//!
//! `valid` cases must verify and `invalid` ones must not; `acceptable` ones may go either way,
//! and the tally says which way they went. Where kinde_rls deliberately refuses what Wycheproof
//! calls valid — a key its rules refuse, a MAC a JWS never carries — the case or group is in
//! [`LISTED`] with the reason. Any other difference fails the test, and so does a listed one
//! that no longer differs. The files are in `tests/vectors/wycheproof/`, unmodified.

use serde_json::Value;

use crate::alg::{verify_signature, Alg, KeyData};
use crate::keys::{key_from_jwk, key_from_pem, Key};

/// What a listed difference covers: one case, or a whole test group (by its position in the
/// file's `testGroups`, from 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scope {
    Case(u64),
    Group(usize),
}

/// Where kinde_rls refuses what Wycheproof calls valid, on purpose: (file, scope, reason).
/// Every case a listed scope covers must be refused, and it must hold a `valid` case.
const LISTED: &[(&str, Scope, &str)] = &[
    ("hmac_sha256_test.json", Scope::Group(1), TRUNCATED_MAC),
    ("hmac_sha256_test.json", Scope::Group(3), TRUNCATED_MAC),
    ("hmac_sha256_test.json", Scope::Group(5), TRUNCATED_MAC),
];

const TRUNCATED_MAC: &str = "tagSize 128: HMAC-SHA256 truncated to 16 bytes; a JWS HS256 MAC is \
    the whole 32-byte tag (RFC 7518 §3.2), so every case is refused, valid ones included";

/// The public key of a signature test group, from its PEM, checked against its JWK when the
/// group gives one: both parsers must agree on whether the key is usable, and on its bytes.
fn group_key(
    file: &str,
    index: usize,
    group: &Value,
    problems: &mut Vec<String>,
) -> Result<KeyData, String> {
    let pem = key_from_pem(str_member(group, "publicKeyPem"));
    if let Some(jwk) = group.get("publicKeyJwk").or_else(|| group.get("keyJwk")) {
        let agree = match (&pem, key_from_jwk(jwk, false)) {
            (Ok(a), Ok(b)) => a.data == b.data,
            (Err(_), Err(_)) => true,
            _ => false,
        };
        if !agree {
            problems.push(format!(
                "{file} group #{index}: the PEM and the JWK read differently ({:?} / {:?})",
                pem.as_ref().map(|k| k.kind),
                key_from_jwk(jwk, false).map(|k| k.kind)
            ));
        }
    }
    pem.map(|k| k.data)
}

fn str_member<'a>(v: &'a Value, name: &str) -> &'a str {
    v[name]
        .as_str()
        .unwrap_or_else(|| panic!("member {name} is not a string"))
}

fn hex(v: &Value, name: &str) -> Vec<u8> {
    let s = str_member(v, name).as_bytes();
    assert!(s.len().is_multiple_of(2), "member {name}: odd hex length");
    let digit = |c: u8| match c {
        b'0'..=b'9' => c - b'0',
        b'a'..=b'f' => c - b'a' + 10,
        b'A'..=b'F' => c - b'A' + 10,
        _ => panic!("member {name}: not hex"),
    };
    s.chunks(2)
        .map(|p| digit(p[0]) << 4 | digit(p[1]))
        .collect()
}

/// How a file's cases came out.
#[derive(Default)]
struct Tally {
    cases: usize,
    valid_verified: usize,
    invalid_refused: usize,
    /// `acceptable` cases by tcId, and whether they verified.
    acceptable: Vec<(u64, bool)>,
    /// Listed differences met, and the cases they cover.
    listed: usize,
    listed_cases: usize,
    listed_valid: usize,
    /// Groups whose key the parsers refused (every case of theirs is refused).
    keys_refused: usize,
}

impl Tally {
    fn line(&self, name: &str) -> String {
        let acceptable = if self.acceptable.is_empty() {
            "0 acceptable".to_string()
        } else {
            let which: Vec<String> = self
                .acceptable
                .iter()
                .map(|(id, ok)| format!("tcId {id} {}", if *ok { "verified" } else { "refused" }))
                .collect();
            format!(
                "{} acceptable ({})",
                self.acceptable.len(),
                which.join(", ")
            )
        };
        let listed_cases = if self.listed_cases == self.listed {
            String::new()
        } else {
            format!(
                " ({} cases, {} of them valid)",
                self.listed_cases, self.listed_valid
            )
        };
        let keys_refused = match self.keys_refused {
            0 => String::new(),
            n => format!("; {n} group keys refused"),
        };
        format!(
            "wycheproof {name}: {} cases: {} valid verified, {} invalid refused, {acceptable}, {} listed differences{listed_cases}{keys_refused}",
            self.cases, self.valid_verified, self.invalid_refused, self.listed
        )
    }
}

/// Which key a file's cases are checked with.
#[derive(Clone, Copy)]
enum Keys {
    /// The group's public key (`publicKeyPem`, and its JWK), for this algorithm.
    Public(Alg),
    /// Each case's own `key`, as an HS256 secret; the MAC is the case's `tag`.
    Hs256,
}

/// Run every case of `tests/vectors/wycheproof/<name>_test.json` and print the tally; panic
/// with every problem found, listed.
fn run(name: &str, keys: Keys) {
    let file = format!("{name}_test.json");
    let path = format!(
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/vectors/wycheproof/{}"
        ),
        file
    );
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let doc: Value = serde_json::from_str(&text).expect("the vector file is JSON");
    let listed: Vec<(Scope, &str)> = LISTED
        .iter()
        .filter(|(f, _, _)| *f == file)
        .map(|(_, s, r)| (*s, *r))
        .collect();
    let mut met = vec![false; listed.len()];
    let mut problems = Vec::new();
    let mut tally = Tally::default();
    let groups = doc["testGroups"].as_array().expect("testGroups");
    for (gi, group) in groups.iter().enumerate() {
        let key = match keys {
            Keys::Public(_) => Some(group_key(&file, gi, group, &mut problems)),
            Keys::Hs256 => None,
        };
        tally.keys_refused += usize::from(matches!(key, Some(Err(_))));
        let group_listed = listed.iter().position(|(s, _)| *s == Scope::Group(gi));
        if let Keys::Hs256 = keys {
            // A JWS HS256 MAC is the whole 32-byte tag (RFC 7518 §3.2); a truncated one is
            // never valid in a JWS, so such groups must be refused whole, and listed.
            if group["tagSize"] != 256 && group_listed.is_none() {
                problems.push(format!(
                    "{file} group #{gi}: tagSize {} is a truncated MAC and must be listed",
                    group["tagSize"]
                ));
            }
        }
        let mut group_has_valid = false;
        let tests = group["tests"].as_array().expect("tests");
        for case in tests {
            tally.cases += 1;
            let id = case["tcId"].as_u64().expect("tcId");
            let result = str_member(case, "result");
            let msg = hex(case, "msg");
            let (alg, key, sig) = match keys {
                Keys::Public(alg) => (alg, key.clone().unwrap(), hex(case, "sig")),
                // The minimum secret length (32 bytes for HS256) is a key rule, not part of
                // the primitive: this test builds the key past it on purpose, so that the
                // 16-byte keys of the vectors exercise the MAC check too.
                Keys::Hs256 => (
                    Alg::HS256,
                    Ok(Key::hmac(&hex(case, "key")).data),
                    hex(case, "tag"),
                ),
            };
            let verified = match &key {
                Ok(k) => verify_signature(alg, k, &msg, &sig),
                Err(_) => false,
            };
            let why = || {
                format!(
                    "{file} tcId {id} ({result}, {:?}, flags {}): {}",
                    str_member(case, "comment"),
                    case["flags"],
                    match &key {
                        Ok(_) => "the signature check",
                        Err(e) => e.as_str(),
                    }
                )
            };
            if result == "invalid" && verified {
                problems.push(format!("{} ACCEPTED an invalid case", why()));
                continue;
            }
            let case_listed = listed.iter().position(|(s, _)| *s == Scope::Case(id));
            if let Some(i) = group_listed.or(case_listed) {
                met[i] = true;
                if verified {
                    problems.push(format!(
                        "{} verified: listed ({}) but no longer differs",
                        why(),
                        listed[i].1
                    ));
                } else if group_listed.is_some() {
                    group_has_valid |= result == "valid";
                    tally.listed_cases += 1;
                    tally.listed_valid += usize::from(result == "valid");
                } else if result == "valid" {
                    tally.listed += 1;
                    tally.listed_cases += 1;
                    tally.listed_valid += 1;
                } else {
                    problems.push(format!("{}: listed, but not a valid case", why()));
                }
                continue;
            }
            match (result, verified) {
                ("valid", true) => tally.valid_verified += 1,
                ("valid", false) => problems.push(format!("{} refused a valid case", why())),
                ("invalid", false) => tally.invalid_refused += 1,
                ("acceptable", v) => tally.acceptable.push((id, v)),
                _ => problems.push(format!("{}: unknown result", why())),
            }
        }
        if let Some(i) = group_listed {
            if group_has_valid {
                tally.listed += 1;
            } else {
                problems.push(format!(
                    "{file} group #{gi}: listed ({}) but holds no refused valid case",
                    listed[i].1
                ));
            }
        }
    }
    for (i, (scope, reason)) in listed.iter().enumerate() {
        if !met[i] {
            problems.push(format!(
                "{file}: listed {scope:?} ({reason}) never applied: no such case or group, \
                 or the case is in a listed group"
            ));
        }
    }
    let declared = doc["numberOfTests"].as_u64().expect("numberOfTests");
    assert_eq!(tally.cases as u64, declared, "{file}: cases run");
    println!("{}", tally.line(name));
    assert!(problems.is_empty(), "{file}:\n{}", problems.join("\n"));
}

#[test]
fn wycheproof_ecdsa_p256_sha256_p1363() {
    run("ecdsa_secp256r1_sha256_p1363", Keys::Public(Alg::ES256));
}

#[test]
fn wycheproof_ecdsa_p384_sha384_p1363() {
    run("ecdsa_secp384r1_sha384_p1363", Keys::Public(Alg::ES384));
}

#[test]
fn wycheproof_ecdsa_p521_sha512_p1363() {
    run("ecdsa_secp521r1_sha512_p1363", Keys::Public(Alg::ES512));
}

#[test]
fn wycheproof_rsa_pkcs1_2048_sha256() {
    run("rsa_signature_2048_sha256", Keys::Public(Alg::RS256));
}

#[test]
fn wycheproof_rsa_pss_2048_sha256_mgf1_32() {
    run("rsa_pss_2048_sha256_mgf1_32", Keys::Public(Alg::PS256));
}

#[test]
fn wycheproof_ed25519() {
    run("ed25519", Keys::Public(Alg::EdDSA));
}

#[test]
fn wycheproof_hmac_sha256() {
    run("hmac_sha256", Keys::Hs256);
}
