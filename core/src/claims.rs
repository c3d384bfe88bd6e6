//! Reading identity out of verified claims: the Kinde shapes (`permissions`, `roles`,
//! `feature_flags`, `org_code`) and the standard ones. Every helper treats a missing or oddly
//! typed claim as absent, never as an error: authorization questions answer "no".

use serde_json::{Map, Value};

fn string<'a>(claims: &'a Map<String, Value>, name: &str) -> Option<&'a str> {
    match claims.get(name) {
        Some(Value::String(s)) if !s.is_empty() => Some(s),
        _ => None,
    }
}

pub fn subject(claims: &Map<String, Value>) -> Option<&str> {
    string(claims, "sub")
}

pub fn email(claims: &Map<String, Value>) -> Option<&str> {
    string(claims, "email")
}

pub fn org_code(claims: &Map<String, Value>) -> Option<&str> {
    string(claims, "org_code")
}

/// An anonymous credential: claims with no `sub` member whose `role` is one of `roles` (a
/// Supabase anon or service key: `{"iss": "supabase", "role": "anon", …}`). Such a credential
/// names nobody, so it reads as no token at all.
pub fn is_anonymous(claims: &Map<String, Value>, roles: &[String]) -> bool {
    !claims.contains_key("sub")
        && matches!(claims.get("role"), Some(Value::String(r)) if roles.iter().any(|a| a == r))
}

/// Whether a compact token is an anonymous credential ([`crate::claims::is_anonymous`]), read
/// without checking its signature: anonymous grants nothing that no token would not. A token
/// whose payload cannot be decoded is not anonymous (it is then verified, and refused).
pub fn is_anonymous_token(token: &str, roles: &[String]) -> bool {
    if roles.is_empty() {
        return false;
    }
    crate::token::unverified_payload(token).is_ok_and(|claims| is_anonymous(&claims, roles))
}

/// `iss || '|' || sub`: an identity that stays unique when several issuers are accepted.
pub fn token_identifier(claims: &Map<String, Value>) -> Option<String> {
    Some(format!("{}|{}", string(claims, "iss")?, subject(claims)?))
}

/// Kinde `permissions`: an array of strings.
pub fn has_permission(claims: &Map<String, Value>, permission: &str) -> bool {
    matches!(claims.get("permissions"), Some(Value::Array(a))
        if a.iter().any(|p| p.as_str() == Some(permission)))
}

/// Kinde `roles`: an array of `{id, key, name}`, matched on `key`. Plain strings are accepted
/// too, as other providers send them.
pub fn has_role(claims: &Map<String, Value>, role_key: &str) -> bool {
    matches!(claims.get("roles"), Some(Value::Array(a)) if a.iter().any(|r| match r {
        Value::String(s) => s == role_key,
        Value::Object(o) => o.get("key").and_then(Value::as_str) == Some(role_key),
        _ => false,
    }))
}

/// [`feature_flag`] as the JSON text it was signed as (numbers unrounded), from the text of the
/// `feature_flags` claim.
pub fn feature_flag_json<'a>(feature_flags_json: &'a str, name: &str) -> Option<&'a str> {
    let flag = crate::token::raw_member(feature_flags_json, name)?;
    if flag.trim_start().starts_with('{') {
        if let Some(v) = crate::token::raw_member(flag, "v") {
            return Some(v);
        }
    }
    Some(flag)
}

/// Kinde `feature_flags`: `{name: {"t": type, "v": value}}`; returns `v`. A flag that is not in
/// that shape is returned as it is.
pub fn feature_flag<'a>(claims: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    let flag = claims.get("feature_flags")?.as_object()?.get(name)?;
    match flag {
        Value::Object(o) if o.contains_key("v") => o.get("v"),
        other => Some(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinde() -> Map<String, Value> {
        serde_json::from_str(
            r#"{"aud": [], "azp": "463db732edf24274970e395735e6d3e2", "email": "peter@example.com",
            "exp": 1724626727, "iat": 1724626665, "iss": "https://acme.kinde.com",
            "org_code": "org_95755120efb",
            "feature_flags": {"theme": {"t": "s", "v": "pink"}, "analytics": {"t": "b", "v": true},
                              "limit": {"t": "i", "v": 7}, "cfg": {"t": "j", "v": {"message": "hi"}}},
            "permissions": ["read:todos", "write:todos"],
            "roles": [{"id": "018f17f2-48dc-c606-94a7-0f425996ef57", "key": "admin", "name": "Admin"}],
            "sub": "kp_cfcb1ae5b9254ad99521214014c54f43"}"#,
        )
        .unwrap()
    }

    #[test]
    fn kinde_claims() {
        let c = kinde();
        assert_eq!(subject(&c), Some("kp_cfcb1ae5b9254ad99521214014c54f43"));
        assert_eq!(email(&c), Some("peter@example.com"));
        assert_eq!(org_code(&c), Some("org_95755120efb"));
        assert_eq!(
            token_identifier(&c).as_deref(),
            Some("https://acme.kinde.com|kp_cfcb1ae5b9254ad99521214014c54f43")
        );
        assert!(has_permission(&c, "read:todos"));
        assert!(!has_permission(&c, "delete:todos"));
        assert!(has_role(&c, "admin"));
        assert!(!has_role(&c, "Admin"));
        assert_eq!(feature_flag(&c, "theme"), Some(&Value::from("pink")));
        assert_eq!(feature_flag(&c, "limit"), Some(&Value::from(7)));
        assert_eq!(feature_flag(&c, "cfg").unwrap()["message"], "hi");
        assert_eq!(feature_flag(&c, "missing"), None);
    }

    #[test]
    fn odd_shapes_answer_no() {
        let c: Map<String, Value> =
            serde_json::from_str(r#"{"permissions": "read:todos", "roles": ["admin"], "sub": ""}"#)
                .unwrap();
        assert!(!has_permission(&c, "read:todos"));
        assert!(has_role(&c, "admin"));
        assert_eq!(subject(&c), None);
        assert_eq!(token_identifier(&c), None);
    }
}
