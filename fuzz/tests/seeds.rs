//! The verify_token seeds are tokens the target accepts: replay each and fail if one is
//! refused (a changed NOW, key or rule would otherwise leave the fuzzer starting from tokens
//! that fail at the first check). Re-mint them with fuzz/seeds/mint.py.

use std::path::Path;

fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target);
    let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| {
            let p = e.unwrap().path();
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect();
    out.sort();
    out
}

#[test]
fn every_verify_token_seed_is_accepted() {
    let seeds = corpus("verify_token");
    assert!(seeds.len() >= 8, "{} seeds", seeds.len());
    let mut algs = std::collections::BTreeSet::new();
    for (name, data) in &seeds {
        let t = kinde_rls_fuzz::token_of(data).unwrap();
        let v = kinde_rls_fuzz::check(&t);
        assert!(
            v.verify && v.configured,
            "seed {name} is refused ({v:?}):\n{}",
            kinde_rls_fuzz::explain_text(&t)
        );
        let header = kinde_rls_core::token::decode_parts(&t).unwrap().header;
        algs.insert(header["alg"].as_str().unwrap().to_string());
        // And the rest of the target's properties on it.
        kinde_rls_fuzz::verify_token(data);
    }
    assert_eq!(
        algs.into_iter().collect::<Vec<_>>(),
        ["ES256", "EdDSA", "HS256"]
    );
}

#[test]
fn the_other_seeds_hold_their_targets_properties() {
    for (_, data) in corpus("parse_token") {
        kinde_rls_fuzz::parse_token(&data);
    }
    for (_, data) in corpus("claims") {
        kinde_rls_fuzz::claims(&data);
    }
}

/// The rules at their edges, from a payload valid by one second: one step further and the
/// named check refuses, through every property of the target (so `fuzz-check` catches a rule
/// that stopped being applied, as the fuzzer does in seconds).
#[test]
fn one_step_past_each_edge_is_refused_by_its_check() {
    use kinde_rls_core::Check;
    use kinde_rls_fuzz::{AUDIENCE, ISSUER, LEEWAY, NOW};
    let edge = serde_json::json!({
        "sub": "kp_edge", "iss": ISSUER, "aud": [AUDIENCE],
        "exp": NOW - LEEWAY + 1, "nbf": NOW + LEEWAY,
    });
    let past: [(&str, serde_json::Value, Check); 9] = [
        ("exp", (NOW - LEEWAY).into(), Check::Exp),
        ("exp", serde_json::Value::Null, Check::Exp),
        ("nbf", (NOW + LEEWAY + 1).into(), Check::Nbf),
        ("iss", format!("{ISSUER}/").into(), Check::Iss),
        ("aud", "apx".into(), Check::Aud),
        ("aud", serde_json::json!(["x", 1, AUDIENCE]), Check::Aud),
        ("sub", "".into(), Check::Sub),
        ("sub", serde_json::json!(["kp_edge"]), Check::Sub),
        ("sub", serde_json::Value::Null, Check::Sub),
    ];
    for header in [
        r#"{"alg":"HS256"}"#,
        r#"{"alg":"EdDSA","kid":"ed"}"#,
        r#"{"alg":"ES256","kid":"ec"}"#,
    ] {
        let token = |claims: &serde_json::Value| {
            kinde_rls_fuzz::token_of(format!("{header}\n{claims}").as_bytes()).unwrap()
        };
        let t = token(&edge);
        assert!(
            kinde_rls_fuzz::check(&t).verify,
            "{header}: {}",
            kinde_rls_fuzz::explain_text(&t)
        );
        for (claim, value, check) in &past {
            let mut c = edge.clone();
            // Null stands for "without the claim".
            if value.is_null() {
                c.as_object_mut().unwrap().remove(*claim);
            } else {
                c[*claim] = value.clone();
            }
            let t = token(&c);
            let v = kinde_rls_fuzz::check(&t);
            assert!(!v.verify && !v.configured, "{header} {claim}={value}");
            assert_eq!(
                kinde_rls_fuzz::refusal(&t),
                Some(*check),
                "{header} {claim}={value}"
            );
        }
    }
}
