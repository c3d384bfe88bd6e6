//! The verification pipeline: parse → algorithm → key → signature → claims.
//!
//! Each step is a function of its own so that [`verify`] (which stops at the first failure) and
//! [`explain`] (which reports every step) run the very same code.

use jsonwebtoken::Algorithm;
use serde_json::{Map, Value};

use crate::error::{quote, Check, Refusal};
use crate::keys::{algorithm_name, parse_algorithm, Key};
use crate::token::{parse, Parsed};

/// Latest `exp`/`nbf` accepted: 9999-12-31T23:59:59Z. Larger numbers are refused as malformed
/// rather than trusted as "never expires".
pub const MAX_NUMERIC_DATE: i64 = 253_402_300_799;

/// Most keys tried for one token. A token names its key with `kid`; without one, every key of
/// the right type is a candidate, and this bounds the work an unsigned flood can cause.
pub const MAX_CANDIDATE_KEYS: usize = 8;

/// The claim rules, from settings.
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
fn numeric_date(
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

pub fn check_algorithm(p: &Parsed) -> Result<Algorithm, Refusal> {
    parse_algorithm(&p.alg).map_err(|e| Refusal::new(Check::Algorithm, e))
}

/// Choose the keys that may verify this token. A `kid` that matches selects those keys; a `kid`
/// that matches none may still be verified by keys that have no `kid` (a PEM or a secret).
pub fn select_keys<'k>(
    keys: &'k [Key],
    alg: Algorithm,
    kid: Option<&str>,
) -> Result<Vec<&'k Key>, Refusal> {
    let refs: Vec<&Key> = keys.iter().collect();
    select_key_refs(&refs, alg, kid)
}

/// [`select_keys`] over borrowed keys (keys from several places, none copied).
pub fn select_key_refs<'k>(
    keys: &[&'k Key],
    alg: Algorithm,
    kid: Option<&str>,
) -> Result<Vec<&'k Key>, Refusal> {
    if keys.is_empty() {
        return Err(
            Refusal::new(Check::Key, "no verification key is configured")
                .because("no key configured"),
        );
    }
    let permitted = |k: &&Key| k.fits(alg);
    let first_reason = |pool: &[&Key]| {
        pool.first()
            .and_then(|k| k.permits(alg).err())
            .unwrap_or_else(|| format!("no configured key can verify {}", algorithm_name(alg)))
    };
    let fit: Vec<&Key> = if let Some(kid) = kid {
        let matching: Vec<&Key> = keys
            .iter()
            .copied()
            .filter(|k| k.kid.as_deref() == Some(kid))
            .collect();
        if !matching.is_empty() {
            let fit: Vec<&Key> = matching.iter().copied().filter(permitted).collect();
            if fit.is_empty() {
                return Err(Refusal::new(Check::Algorithm, first_reason(&matching)));
            }
            fit
        } else {
            let fit: Vec<&Key> = keys
                .iter()
                .copied()
                .filter(|k| k.kid.is_none())
                .filter(permitted)
                .collect();
            if fit.is_empty() {
                let mut known: Vec<String> = keys
                    .iter()
                    .filter_map(|k| k.kid.as_deref())
                    .map(quote)
                    .collect();
                known.truncate(10);
                return Err(Refusal::new(
                    Check::Key,
                    format!(
                        "no configured key has kid {} (known kids: {})",
                        quote(kid),
                        if known.is_empty() {
                            "none".to_string()
                        } else {
                            known.join(", ")
                        }
                    ),
                )
                .because("no key with this kid"));
            }
            fit
        }
    } else {
        let fit: Vec<&Key> = keys.iter().copied().filter(permitted).collect();
        if fit.is_empty() {
            // Prefer the reason of a key of the token's own family (e.g. "HS512 needs a secret
            // of at least 64 bytes") over a generic one.
            let same_family: Vec<&Key> = keys
                .iter()
                .copied()
                .filter(|k| {
                    k.kind
                        .algorithms()
                        .iter()
                        .any(|a| a.family() == alg.family())
                })
                .collect();
            let pool: Vec<&Key> = if same_family.is_empty() {
                keys.to_vec()
            } else {
                same_family
            };
            return Err(Refusal::new(
                Check::Algorithm,
                if pool.len() == 1 {
                    first_reason(&pool)
                } else {
                    format!("no configured key can verify {}", algorithm_name(alg))
                },
            ));
        }
        fit
    };
    if fit.len() > MAX_CANDIDATE_KEYS {
        return Err(Refusal::new(
            Check::Key,
            format!(
                "{} keys could verify this token; it must name its key with kid",
                fit.len()
            ),
        )
        .because("too many candidate keys"));
    }
    Ok(fit)
}

pub fn check_signature<'k>(
    p: &Parsed,
    alg: Algorithm,
    candidates: &[&'k Key],
) -> Result<&'k Key, Refusal> {
    if p.signature_b64.is_empty() {
        return Err(Refusal::new(Check::Signature, "the token has no signature"));
    }
    // parse checked that the signature is unpadded base64url.
    for key in candidates {
        // An error here (a key the backend rejects, a signature of the wrong length) is a failed
        // verification like any other: fail closed.
        if let Ok(true) = jsonwebtoken::crypto::verify(
            p.signature_b64,
            p.signing_input.as_bytes(),
            &key.decoding,
            alg,
        ) {
            return Ok(key);
        }
    }
    Err(Refusal::new(
        Check::Signature,
        format!(
            "the {} signature does not verify with {}",
            algorithm_name(alg),
            if candidates.len() == 1 {
                match &candidates[0].kid {
                    Some(k) => format!("the key with kid {}", quote(k)),
                    None => format!("the configured {}", candidates[0].kind.name()),
                }
            } else {
                format!("any of the {} candidate keys", candidates.len())
            }
        ),
    ))
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

pub fn check_nbf(
    claims: &Map<String, Value>,
    policy: &Policy,
    now: i64,
) -> Result<String, Refusal> {
    match numeric_date(claims, "nbf", Check::Nbf)? {
        None => Ok("no nbf claim".into()),
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
        Some(nbf) => Ok(format!("valid since {}", format_time(nbf))),
    }
}

fn quoted_list(items: &[String]) -> String {
    items
        .iter()
        .map(|s| quote(s))
        .collect::<Vec<_>>()
        .join(", ")
}

pub fn check_iss(claims: &Map<String, Value>, policy: &Policy) -> Result<String, Refusal> {
    let iss = match claims.get("iss") {
        None => None,
        Some(Value::String(s)) => Some(s.as_str()),
        Some(_) => return Err(Refusal::new(Check::Iss, "claim iss is not a string")),
    };
    if policy.issuers.is_empty() {
        return Ok(
            "not checked: no issuer is configured (kinde_rls.issuer or kinde_rls.domain), so a token of any issuer is accepted when a configured key verifies it"
                .into(),
        );
    }
    match iss {
        Some(i) if policy.issuers.iter().any(|a| a == i) => {
            Ok(format!("iss {} is accepted", quote(i)))
        }
        Some(i) => Err(Refusal::new(
            Check::Iss,
            format!(
                "iss is {}; accepted: {}",
                quote(i),
                quoted_list(&policy.issuers)
            ),
        )),
        None => Err(Refusal::new(
            Check::Iss,
            format!(
                "the token has no iss claim; accepted: {}",
                quoted_list(&policy.issuers)
            ),
        )),
    }
}

pub fn check_aud(claims: &Map<String, Value>, policy: &Policy) -> Result<String, Refusal> {
    if policy.audiences.is_empty() {
        return Ok(
            "not checked: no audience is configured, so a token this issuer made for any other application or API is accepted too; set kinde_rls.audience, or the provider's \"audience\" in kinde_rls.providers (RFC 8725 §3.9)"
                .into(),
        );
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
        Some(a) => Ok(format!("aud contains {}", quote(a))),
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

pub fn check_sub(claims: &Map<String, Value>, policy: &Policy) -> Result<String, Refusal> {
    match claims.get("sub") {
        Some(Value::String(s)) if !s.is_empty() => Ok(format!("sub is {}", quote(s))),
        Some(Value::String(_)) => Err(Refusal::new(Check::Sub, "claim sub is empty")),
        Some(_) => Err(Refusal::new(Check::Sub, "claim sub is not a string")),
        None if policy.require_sub => Err(Refusal::new(
            Check::Sub,
            "the token has no sub claim (set kinde_rls.require_sub = off to accept machine-to-machine tokens)",
        )
        .because("no sub claim")),
        None => Ok("no sub claim (allowed: kinde_rls.require_sub is off)".into()),
    }
}

/// Check the claims of a token whose signature has been verified. Returns `exp`.
pub fn check_claims(
    claims: &Map<String, Value>,
    policy: &Policy,
    now: i64,
) -> Result<i64, Refusal> {
    let exp = check_exp(claims, policy, now)?;
    check_nbf(claims, policy, now)?;
    check_iss(claims, policy)?;
    check_aud(claims, policy)?;
    check_sub(claims, policy)?;
    Ok(exp)
}

/// Verify a token against keys and rules at time `now` (seconds since the epoch).
pub fn verify(token: &str, keys: &[Key], policy: &Policy, now: i64) -> Result<Verified, Refusal> {
    verify_expecting(token, keys, policy, now, None)
}

/// [`verify`], additionally requiring the header's `alg` to be `expected` (the explicit-key form,
/// where the caller names the algorithm).
pub fn verify_expecting(
    token: &str,
    keys: &[Key],
    policy: &Policy,
    now: i64,
    expected: Option<Algorithm>,
) -> Result<Verified, Refusal> {
    let p = parse(token)?;
    let alg = check_algorithm(&p)?;
    if let Some(e) = expected.filter(|e| *e != alg) {
        return Err(Refusal::new(
            Check::Algorithm,
            format!(
                "the token's alg is {}, the caller expects {}",
                algorithm_name(alg),
                algorithm_name(e)
            ),
        ));
    }
    let candidates = select_keys(keys, alg, p.kid.as_deref())?;
    check_signature(&p, alg, &candidates)?;
    let exp = check_claims(&p.payload, policy, now)?;
    Ok(Verified {
        header: p.header,
        registered: p.payload,
        payload: p.payload_json,
        exp,
    })
}

/// One row of `jwt_explain()`: `ok` is `None` when the check could not be reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExplainRow {
    pub check: Check,
    pub ok: Option<bool>,
    pub detail: String,
}

/// Run every check and say what each found. Claim checks run on the decoded payload even when
/// the signature fails, marked as unverified, because seeing every problem at once is the point.
pub fn explain(token: &str, keys: &[Key], policy: &Policy, now: i64) -> Vec<ExplainRow> {
    let mut rows = Vec::with_capacity(9);
    let mut push = |check: Check, r: Result<String, Refusal>| {
        rows.push(match r {
            Ok(d) => ExplainRow {
                check,
                ok: Some(true),
                detail: d,
            },
            Err(e) => ExplainRow {
                check,
                ok: Some(false),
                detail: e.detail,
            },
        })
    };
    let p = match parse(token) {
        Ok(p) => p,
        Err(e) => {
            let format_failed = e.check == Check::Format;
            push(
                Check::Format,
                if format_failed {
                    Err(e.clone())
                } else {
                    Ok("three base64url JSON segments".into())
                },
            );
            let mut rows = rows;
            for c in &Check::ALL[1..] {
                if !format_failed && *c == Check::Algorithm {
                    rows.push(ExplainRow {
                        check: *c,
                        ok: Some(false),
                        detail: e.detail.clone(),
                    });
                } else {
                    rows.push(ExplainRow {
                        check: *c,
                        ok: None,
                        detail: "not checked: the token could not be parsed".into(),
                    });
                }
            }
            return rows;
        }
    };
    push(
        Check::Format,
        Ok(format!(
            "three base64url JSON segments, {} bytes",
            token.len()
        )),
    );
    let alg = check_algorithm(&p);
    push(
        Check::Algorithm,
        alg.as_ref()
            .map(|a| format!("{} is supported", algorithm_name(*a)))
            .map_err(Clone::clone),
    );
    let mut verified = false;
    match alg {
        Ok(alg) => match select_keys(keys, alg, p.kid.as_deref()) {
            Ok(c) => {
                let which = match &p.kid {
                    Some(kid) => format!("kid {} matches {} key(s)", quote(kid), c.len()),
                    None => format!("no kid; {} candidate key(s)", c.len()),
                };
                push(Check::Key, Ok(which));
                let sig = check_signature(&p, alg, &c).map(|k| match &k.kid {
                    Some(kid) => format!(
                        "verified with the {} with kid {}",
                        k.kind.name(),
                        quote(kid)
                    ),
                    None => format!("verified with the configured {}", k.kind.name()),
                });
                verified = sig.is_ok();
                push(Check::Signature, sig);
            }
            Err(e) => {
                let c = e.check;
                // select_keys reports either a key or an algorithm problem; show it on its row.
                if c == Check::Algorithm {
                    rows.pop();
                    rows.push(ExplainRow {
                        check: Check::Algorithm,
                        ok: Some(false),
                        detail: e.detail,
                    });
                    rows.push(ExplainRow {
                        check: Check::Key,
                        ok: None,
                        detail: "not checked: the algorithm does not fit any key".into(),
                    });
                } else {
                    rows.push(ExplainRow {
                        check: Check::Key,
                        ok: Some(false),
                        detail: e.detail,
                    });
                }
                rows.push(ExplainRow {
                    check: Check::Signature,
                    ok: None,
                    detail: "not checked: no key".into(),
                });
            }
        },
        Err(_) => {
            rows.push(ExplainRow {
                check: Check::Key,
                ok: None,
                detail: "not checked: algorithm refused".into(),
            });
            rows.push(ExplainRow {
                check: Check::Signature,
                ok: None,
                detail: "not checked: algorithm refused".into(),
            });
        }
    }
    let note = |r: Result<String, Refusal>| -> Result<String, Refusal> {
        if verified {
            r
        } else {
            r.map(|d| format!("{d} (claims not verified)"))
                .map_err(|mut e| {
                    e.detail = format!("{} (claims not verified)", e.detail);
                    e
                })
        }
    };
    let claims = &p.payload;
    let exp = check_exp(claims, policy, now).map(|e| format!("valid until {}", format_time(e)));
    let rest = [
        (Check::Exp, exp),
        (Check::Nbf, check_nbf(claims, policy, now)),
        (Check::Iss, check_iss(claims, policy)),
        (Check::Aud, check_aud(claims, policy)),
        (Check::Sub, check_sub(claims, policy)),
    ];
    for (c, r) in rest {
        let r = note(r);
        rows.push(match r {
            Ok(d) => ExplainRow {
                check: c,
                ok: Some(true),
                detail: d,
            },
            Err(e) => ExplainRow {
                check: c,
                ok: Some(false),
                detail: e.detail,
            },
        });
    }
    rows
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

    const SECRET: &str = "kinde-client-secret-0123456789abcdefghijklmnop";

    /// An HS256 token over this exact payload text.
    fn hs256(payload: &str) -> String {
        let h = crate::token::b64_encode(br#"{"alg":"HS256","typ":"JWT"}"#);
        let input = format!("{h}.{}", crate::token::b64_encode(payload.as_bytes()));
        let key = jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes());
        let sig = jsonwebtoken::crypto::sign(input.as_bytes(), &key, Algorithm::HS256).unwrap();
        format!("{input}.{sig}")
    }

    /// A validly signed payload whose claim map cannot be built is refused at the format check,
    /// by verify and by explain alike; one that passes always has a claim map.
    #[test]
    fn a_payload_without_a_claim_map_is_refused_at_format() {
        let (keys, _) = crate::explicit_keys(SECRET, "HS256").unwrap();
        let policy = Policy {
            audiences: vec!["api".into()],
            ..Policy::default()
        };
        let ok = hs256(r#"{"sub":"kp_1","exp":2000,"aud":"api","roles":[{"key":"admin"}]}"#);
        let v = verify(&ok, &keys, &policy, 1000).unwrap();
        assert!(crate::claims::has_role(&v.claims().unwrap(), "admin"));
        let deep = format!("{}1{}", "[".repeat(200), "]".repeat(200));
        for bad in [
            r#"{"sub":"kp_1","exp":2000,"aud":"api","x":1e400}"#.to_string(),
            format!(r#"{{"sub":"kp_1","exp":2000,"aud":"api","x":{deep}}}"#),
            r#"{"sub":"kp_1","exp":2000,"aud":"api","x":"\udc00"}"#.to_string(),
        ] {
            let t = hs256(&bad);
            assert_eq!(
                verify(&t, &keys, &policy, 1000).unwrap_err().check,
                Check::Format,
                "{bad}"
            );
            let rows = explain(&t, &keys, &policy, 1000);
            assert_eq!((rows[0].check, rows[0].ok), (Check::Format, Some(false)));
        }
        // A signature that is not base64url: a format refusal, and explain's format row says so.
        let t = format!("{}!", &ok[..ok.len() - 1]);
        assert_eq!(
            verify(&t, &keys, &policy, 1000).unwrap_err().check,
            Check::Format
        );
        let rows = explain(&t, &keys, &policy, 1000);
        assert_eq!((rows[0].check, rows[0].ok), (Check::Format, Some(false)));
        assert!(rows[0].detail.contains("signature"), "{}", rows[0].detail);
        // serde_json's raw-value member name smuggles no audience and no role.
        let t = hs256(
            r#"{"sub":"kp_1","exp":2000,"aud":{"$serde_json::private::RawValue":"\"api\""}}"#,
        );
        assert_eq!(
            verify(&t, &keys, &policy, 1000).unwrap_err().check,
            Check::Aud
        );
        let t = hs256(
            r#"{"sub":"kp_1","exp":2000,"aud":"api","roles":{"$serde_json::private::RawValue":"[\"admin\"]"}}"#,
        );
        let v = verify(&t, &keys, &policy, 1000).unwrap();
        assert!(!crate::claims::has_role(&v.claims().unwrap(), "admin"));
    }
}
