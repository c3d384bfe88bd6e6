//! Kinde claim helpers on any JSON object: permissions, roles, feature flags, identifiers.
#![no_main]
use kinde_rls_core::claims;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // First line: a name to look up; the rest: the claims.
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let (name, json) = s.split_once('\n').unwrap_or(("admin", s));
    if let Ok(serde_json::Value::Object(c)) = serde_json::from_str::<serde_json::Value>(json) {
        let _ = claims::subject(&c);
        let _ = claims::email(&c);
        let _ = claims::org_code(&c);
        let _ = claims::token_identifier(&c);
        let _ = claims::has_permission(&c, name);
        let _ = claims::has_role(&c, name);
        let _ = claims::feature_flag(&c, name);
    }
});
