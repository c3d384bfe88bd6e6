//! Verification: arbitrary tokens against a fixed key set (HMAC secret, Ed25519 and P-256 JWKs),
//! through verify, the configured path and explain; and arbitrary claim objects signed with the
//! secret, so that the claim checks (which run only after a good signature) are reached too.
#![no_main]
use kinde_rls_core::config::{explain_configured, verify_configured, Config, NoRemote, Settings};
use kinde_rls_core::{explain, explicit_keys, sign, verify, Policy};
use libfuzzer_sys::fuzz_target;

const SECRET: &str = "kinde-client-secret-0123456789abcdefghijklmnop";
const JWKS: &str = r#"{"keys":[
 {"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo","kid":"ed"},
 {"kty":"EC","crv":"P-256","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0","kid":"ec"}]}"#;
const NOW: i64 = 1_800_000_000;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let (keys, _) = explicit_keys(SECRET, "HS256").unwrap();
    let policy = Policy {
        issuers: vec!["https://acme.kinde.com".into()],
        audiences: vec!["api".into()],
        leeway: 30,
        require_sub: true,
    };
    let _ = verify(s, &keys, &policy, NOW);
    let _ = explain(s, &keys, &policy, NOW);
    let config = Config::from_settings(&Settings {
        jwks: Some(JWKS),
        secret: Some(SECRET),
        issuer: Some("https://acme.kinde.com"),
        audience: Some("api"),
        leeway: 30,
        require_sub: true,
        ..Default::default()
    })
    .unwrap();
    let _ = verify_configured(s, &config, NOW, &mut NoRemote);
    let _ = explain_configured(s, &config, NOW, &mut NoRemote);
    // Arbitrary claims, validly signed: reach the claim checks.
    if let Ok(serde_json::Value::Object(claims)) = serde_json::from_slice::<serde_json::Value>(data)
    {
        if let Ok(t) = sign::sign(&claims, SECRET, "HS256", None) {
            let v = verify(&t, &keys, &policy, NOW);
            if let Ok(v) = &v {
                // A token that passed must have an exp in the future and the right issuer.
                assert!(v.exp + 30 > NOW);
                assert_eq!(
                    v.registered.get("iss").and_then(|i| i.as_str()),
                    Some("https://acme.kinde.com")
                );
            }
            let _ = verify_configured(&t, &config, NOW, &mut NoRemote);
        }
    }
});
