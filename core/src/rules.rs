//! The claim rules, the last stage of the pipeline: `exp`, `nbf`, `iss`, `aud` and `sub`, and
//! the [`Policy`] that sets them (one per provider, as jsonwebtoken's `Validation` is one per
//! verification). Each check answers only "passes" or why not; what `jwt_explain()` says about a
//! passing claim is written in [`crate::explain`].

use serde_json::{Map, Value};

use crate::error::{quote, Check, Refusal};

/// Latest `exp`/`nbf` accepted: 9999-12-31T23:59:59Z. Larger numbers are refused as malformed
/// rather than trusted as "never expires".
pub const MAX_NUMERIC_DATE: i64 = 253_402_300_799;

/// The claim rules of one provider (or of an explicit-key call).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Accepted `iss` values (exact match); empty means `iss` is not checked.
    pub issuers: Vec<String>,
    /// Accepted audiences; empty means `aud` is not checked.
    pub audiences: Vec<String>,
    /// Clock skew allowed on `exp` and `nbf`, seconds.
    pub leeway: i64,
    /// Whether a token must carry a non-empty string `sub`.
    pub require_sub: bool,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            issuers: vec![],
            audiences: vec![],
            leeway: 30,
            require_sub: true,
        }
    }
}

/// Split a comma-separated setting into its trimmed, non-empty items.
pub fn split_list(s: Option<&str>) -> Vec<String> {
    s.unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|x| !x.is_empty())
        .map(String::from)
        .collect()
}

/// A token that passed every check.
#[derive(Debug, Clone, PartialEq)]
pub struct Verified {
    pub header: Map<String, Value>,
    /// The registered claims that were checked (`exp`, `nbf`, `iat`, `iss`, `aud`, `sub`).
    pub registered: Map<String, Value>,
    /// The whole payload, validated JSON text; [`Verified::claims`] builds the map.
    pub payload: String,
    /// `exp`, whole seconds since the epoch.
    pub exp: i64,
}

impl Verified {
    /// All claims (parses the payload; keep the result if you need it more than once). Verification
    /// refused every payload whose claims cannot be built, so this is `Ok` for a token that
    /// passed; an error is never turned into an empty map.
    pub fn claims(&self) -> Result<Map<String, Value>, Refusal> {
        crate::token::full_claims(&self.payload)
    }
}

/// Format a Unix time as `YYYY-MM-DD HH:MM:SS UTC` (proleptic Gregorian, days-from-civil inverse).
pub fn format_time(t: i64) -> String {
    let days = t.div_euclid(86_400);
    let secs = t.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + if m <= 2 { 1 } else { 0 };
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// A NumericDate (RFC 7519 §2): a JSON number of seconds, fractions allowed, within range.
pub(crate) fn numeric_date(
    claims: &Map<String, Value>,
    name: &str,
    check: Check,
) -> Result<Option<i64>, Refusal> {
    let v = match claims.get(name) {
        None => return Ok(None),
        Some(v) => v,
    };
    let bad = |why: &str| Refusal::new(check, format!("claim {name} {why}"));
    let n = match v {
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                i
            } else if let Some(f) = n.as_f64() {
                if !f.is_finite() || f.abs() > MAX_NUMERIC_DATE as f64 {
                    return Err(bad("is out of range"));
                }
                f.floor() as i64
            } else {
                return Err(bad("is out of range"));
            }
        }
        _ => return Err(bad("is not a number (NumericDate)")),
    };
    if !(0..=MAX_NUMERIC_DATE).contains(&n) {
        return Err(bad("is out of range"));
    }
    Ok(Some(n))
}

pub fn check_exp(claims: &Map<String, Value>, policy: &Policy, now: i64) -> Result<i64, Refusal> {
    let exp = numeric_date(claims, "exp", Check::Exp)?.ok_or_else(|| {
        Refusal::new(Check::Exp, "the token has no exp claim; exp is required")
            .because("no exp claim")
    })?;
    if now >= exp.saturating_add(policy.leeway) {
        return Err(Refusal::new(
            Check::Exp,
            format!(
                "the token expired at {} (exp {}); now is {}, leeway {} s",
                format_time(exp),
                exp,
                format_time(now),
                policy.leeway
            ),
        ));
    }
    Ok(exp)
}

pub fn check_nbf(claims: &Map<String, Value>, policy: &Policy, now: i64) -> Result<(), Refusal> {
    match numeric_date(claims, "nbf", Check::Nbf)? {
        Some(nbf) if now.saturating_add(policy.leeway) < nbf => Err(Refusal::new(
            Check::Nbf,
            format!(
                "the token is not valid before {} (nbf {}); now is {}, leeway {} s",
                format_time(nbf),
                nbf,
                format_time(now),
                policy.leeway
            ),
        )),
        _ => Ok(()),
    }
}

fn quoted_list(items: &[String]) -> String {
    items
        .iter()
        .map(|s| quote(s))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The token's `iss`, if it has one. The one place `iss` is read: the provider is picked by it
/// ([`crate::pipeline`]) and [`check_iss`] judges it.
pub fn iss_of(claims: &Map<String, Value>) -> Result<Option<&str>, Refusal> {
    match claims.get("iss") {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.as_str())),
        Some(_) => Err(Refusal::new(Check::Iss, "claim iss is not a string")),
    }
}

/// The refusal for an `iss` none of `accepted` is.
pub fn iss_refusal(iss: Option<&str>, accepted: &[String]) -> Refusal {
    Refusal::new(
        Check::Iss,
        match iss {
            Some(i) => format!("iss is {}; accepted: {}", quote(i), quoted_list(accepted)),
            None => format!(
                "the token has no iss claim; accepted: {}",
                quoted_list(accepted)
            ),
        },
    )
}

/// `iss` must be one of the policy's issuers (exact match); no issuers means any.
pub fn check_iss(claims: &Map<String, Value>, policy: &Policy) -> Result<(), Refusal> {
    let iss = iss_of(claims)?;
    if policy.issuers.is_empty() || iss.is_some_and(|i| policy.issuers.iter().any(|a| a == i)) {
        return Ok(());
    }
    Err(iss_refusal(iss, &policy.issuers))
}

/// The audience of the token the policy accepts: `None` when the policy accepts any (no
/// audiences configured). [`check_aud`] and `jwt_explain()` both read it from here.
pub fn accepted_aud<'c>(
    claims: &'c Map<String, Value>,
    policy: &Policy,
) -> Result<Option<&'c str>, Refusal> {
    if policy.audiences.is_empty() {
        return Ok(None);
    }
    let auds: Vec<&str> = match claims.get("aud") {
        None => vec![],
        Some(Value::String(s)) => vec![s.as_str()],
        Some(Value::Array(a)) => {
            let mut v = Vec::with_capacity(a.len());
            for x in a {
                match x {
                    Value::String(s) => v.push(s.as_str()),
                    _ => {
                        return Err(Refusal::new(
                            Check::Aud,
                            "claim aud holds a value that is not a string",
                        ))
                    }
                }
            }
            v
        }
        Some(_) => {
            return Err(Refusal::new(
                Check::Aud,
                "claim aud is neither a string nor an array",
            ))
        }
    };
    match auds
        .iter()
        .find(|a| policy.audiences.iter().any(|x| x == *a))
    {
        Some(a) => Ok(Some(a)),
        None => Err(Refusal::new(
            Check::Aud,
            format!(
                "aud is [{}]; accepted: {}",
                auds.iter().map(|a| quote(a)).collect::<Vec<_>>().join(", "),
                quoted_list(&policy.audiences)
            ),
        )),
    }
}

pub fn check_aud(claims: &Map<String, Value>, policy: &Policy) -> Result<(), Refusal> {
    accepted_aud(claims, policy).map(|_| ())
}

pub fn check_sub(claims: &Map<String, Value>, policy: &Policy) -> Result<(), Refusal> {
    match claims.get("sub") {
        Some(Value::String(s)) if !s.is_empty() => Ok(()),
        Some(Value::String(_)) => Err(Refusal::new(Check::Sub, "claim sub is empty")),
        Some(_) => Err(Refusal::new(Check::Sub, "claim sub is not a string")),
        None if policy.require_sub => Err(Refusal::new(
            Check::Sub,
            "the token has no sub claim (set kinde_rls.require_sub = off to accept machine-to-machine tokens)",
        )
        .because("no sub claim")),
        None => Ok(()),
    }
}

/// The claim checks in the order they run, each with the row it reports on.
pub const CLAIM_CHECKS: [Check; 5] = [Check::Exp, Check::Nbf, Check::Iss, Check::Aud, Check::Sub];

/// One claim check by name (`exp` through `sub`).
pub fn check_claim(
    check: Check,
    claims: &Map<String, Value>,
    policy: &Policy,
    now: i64,
) -> Result<(), Refusal> {
    match check {
        Check::Exp => check_exp(claims, policy, now).map(|_| ()),
        Check::Nbf => check_nbf(claims, policy, now),
        Check::Iss => check_iss(claims, policy),
        Check::Aud => check_aud(claims, policy),
        Check::Sub => check_sub(claims, policy),
        _ => Ok(()),
    }
}

/// Every claim check, stopping at the first failure (claims a trusted party verified, and the
/// last stage of [`crate::pipeline`]). Returns `exp`.
pub fn check_claims(
    claims: &Map<String, Value>,
    policy: &Policy,
    now: i64,
) -> Result<i64, Refusal> {
    let exp = check_exp(claims, policy, now)?;
    for c in &CLAIM_CHECKS[1..] {
        check_claim(*c, claims, policy, now)?;
    }
    Ok(exp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_formatting() {
        assert_eq!(format_time(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(format_time(1_724_626_727), "2024-08-25 22:58:47 UTC");
        assert_eq!(format_time(MAX_NUMERIC_DATE), "9999-12-31 23:59:59 UTC");
    }

    fn claims(j: &str) -> Map<String, Value> {
        serde_json::from_str(j).unwrap()
    }

    #[test]
    fn exp_rules() {
        let p = Policy::default();
        assert_eq!(check_exp(&claims(r#"{"exp":100}"#), &p, 129).unwrap(), 100);
        assert_eq!(
            check_exp(&claims(r#"{"exp":100}"#), &p, 130)
                .unwrap_err()
                .check,
            Check::Exp
        );
        assert_eq!(check_exp(&claims(r#"{"exp":100.9}"#), &p, 0).unwrap(), 100);
        for bad in [
            r#"{}"#,
            r#"{"exp":"100"}"#,
            r#"{"exp":1e300}"#,
            r#"{"exp":-1}"#,
            r#"{"exp":null}"#,
            r#"{"exp":99999999999999}"#,
        ] {
            assert_eq!(
                check_exp(&claims(bad), &p, 0).unwrap_err().check,
                Check::Exp,
                "{bad}"
            );
        }
    }

    #[test]
    fn nbf_rules() {
        let p = Policy::default();
        assert!(check_nbf(&claims(r#"{"nbf":130}"#), &p, 100).is_ok());
        assert_eq!(
            check_nbf(&claims(r#"{"nbf":131}"#), &p, 100)
                .unwrap_err()
                .check,
            Check::Nbf
        );
    }

    #[test]
    fn iss_aud_sub_rules() {
        let p = Policy {
            issuers: vec!["https://acme.kinde.com".into()],
            audiences: vec!["api".into()],
            ..Policy::default()
        };
        assert!(check_iss(&claims(r#"{"iss":"https://acme.kinde.com"}"#), &p).is_ok());
        for bad in [
            r#"{"iss":"https://acme.kinde.com/"}"#,
            r#"{"iss":["https://acme.kinde.com"]}"#,
            r#"{}"#,
        ] {
            assert_eq!(
                check_iss(&claims(bad), &p).unwrap_err().check,
                Check::Iss,
                "{bad}"
            );
        }
        assert!(check_aud(&claims(r#"{"aud":["x","api"]}"#), &p).is_ok());
        assert!(check_aud(&claims(r#"{"aud":"api"}"#), &p).is_ok());
        assert_eq!(
            check_aud(&claims(r#"{"aud":[]}"#), &p).unwrap_err().check,
            Check::Aud
        );
        assert!(check_aud(&claims(r#"{"aud":[]}"#), &Policy::default()).is_ok());
        assert!(check_sub(&claims(r#"{"sub":"kp_1"}"#), &p).is_ok());
        for bad in [r#"{}"#, r#"{"sub":""}"#, r#"{"sub":1}"#] {
            assert_eq!(
                check_sub(&claims(bad), &p).unwrap_err().check,
                Check::Sub,
                "{bad}"
            );
        }
        let lax = Policy {
            require_sub: false,
            ..Policy::default()
        };
        assert!(check_sub(&claims("{}"), &lax).is_ok());
    }

    #[test]
    fn lists() {
        assert_eq!(split_list(Some(" a, b ,,")), vec!["a", "b"]);
        assert!(split_list(None).is_empty());
    }
}
