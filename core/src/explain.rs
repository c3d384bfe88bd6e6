//! `jwt_explain()`: the pipeline run with every stage that can run ([`crate::pipeline::run`]),
//! its [`Trace`] rendered as one row per check. The checks only say "passed" or why not; what a
//! passed check is worth saying (which key verified, until when the token is valid) is written
//! here, from the trace, and never on the verification path.

use crate::alg::Alg;

use crate::config::Config;
use crate::error::{quote, Check};
use crate::keys::Key;
use crate::pipeline::{run, KeySource, NoRemote, Outcome, Trace, Trust};
use crate::rules::{self, format_time, Policy};
use crate::token::parse;

/// One row of `jwt_explain()`: `ok` is `None` when the check could not be reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExplainRow {
    pub check: Check,
    pub ok: Option<bool>,
    pub detail: String,
}

/// Every check of `token` against explicit keys and rules. Claim checks run on the decoded
/// payload even when the signature fails, marked as unverified, because seeing every problem at
/// once is the point.
pub fn explain(token: &str, keys: &[Key], policy: &Policy, now: i64) -> Vec<ExplainRow> {
    let trust = Trust::Explicit {
        keys,
        policy,
        expected: None,
    };
    rows(&run(token, parse(token), &trust, &mut NoRemote, now, true))
}

/// `jwt_explain()` against the configuration: which provider and key matched, or why none did.
pub fn explain_configured(
    token: &str,
    config: &Config,
    now: i64,
    source: &mut dyn KeySource,
) -> Vec<ExplainRow> {
    let trust = Trust::Configured(config);
    rows(&run(token, parse(token), &trust, source, now, true))
}

/// The rows of a trace, in the order of [`Check::TOKEN`].
pub fn rows(t: &Trace) -> Vec<ExplainRow> {
    let verified = *t.outcome(Check::Signature) == Outcome::Passed;
    Check::TOKEN
        .iter()
        .map(|&check| {
            let (ok, mut detail) = match t.outcome(check) {
                Outcome::Passed => (Some(true), passed(t, check)),
                Outcome::Failed(r) => (Some(false), r.detail.clone()),
                Outcome::NotChecked(why) => (None, format!("not checked: {why}")),
            };
            let is_claim = rules::CLAIM_CHECKS.contains(&check);
            if is_claim && ok.is_some() && !verified {
                detail.push_str(" (claims not verified)");
            }
            if check == Check::Key {
                detail = key_row(t, detail);
            }
            ExplainRow { check, ok, detail }
        })
        .collect()
}

/// What a passed check found.
fn passed(t: &Trace, check: Check) -> String {
    let Some(p) = &t.parsed else {
        // The parse refused the token after its segments decoded (e.g. its header).
        return "three base64url JSON segments".into();
    };
    let policy = t.judge.map(|j| j.policy);
    let claims = &p.payload;
    match check {
        Check::Format => format!("three base64url JSON segments, {} bytes", t.token.len()),
        Check::Algorithm => format!("{} is supported", name(t.alg)),
        Check::Key => match &p.kid {
            Some(kid) => format!("kid {} matches {} key(s)", quote(kid), t.candidates),
            None => format!("no kid; {} candidate key(s)", t.candidates),
        },
        Check::Signature => match &t.signer {
            Some((kind, Some(kid))) => {
                format!("verified with the {} with kid {}", kind.name(), quote(kid))
            }
            Some((kind, None)) => format!("verified with the configured {}", kind.name()),
            None => "verified".into(),
        },
        Check::Exp => match rules::numeric_date(claims, "exp", Check::Exp) {
            Ok(Some(exp)) => format!("valid until {}", format_time(exp)),
            _ => "valid".into(),
        },
        Check::Nbf => match rules::numeric_date(claims, "nbf", Check::Nbf) {
            Ok(Some(nbf)) => format!("valid since {}", format_time(nbf)),
            _ => "no nbf claim".into(),
        },
        Check::Iss => match rules::iss_of(claims) {
            Ok(Some(i)) if policy.is_some_and(|p| !p.issuers.is_empty()) => {
                format!("iss {} is accepted", quote(i))
            }
            _ => "not checked: no issuer is configured (kinde_rls.issuer or kinde_rls.domain), so a token of any issuer is accepted when a configured key verifies it".into(),
        },
        Check::Aud => match policy.map(|p| rules::accepted_aud(claims, p)) {
            Some(Ok(Some(a))) => format!("aud contains {}", quote(a)),
            _ => "not checked: no audience is configured, so a token this issuer made for any other application or API is accepted too; set kinde_rls.audience, or the provider's \"audience\" in kinde_rls.providers (RFC 8725 §3.9)".into(),
        },
        Check::Sub => match crate::claims::subject(claims) {
            Some(s) => format!("sub is {}", quote(s)),
            None => "no sub claim (allowed: kinde_rls.require_sub is off)".into(),
        },
        Check::Scope => "checked only when signing in to PostgreSQL (the pg_hba.conf line's scope)".into(),
    }
}

fn name(alg: Option<Alg>) -> &'static str {
    alg.map_or("the algorithm", Alg::name)
}

/// The key row names the provider the token was judged by, and the keys of its sets that are
/// ignored (a token that does verify may still come from a set that needs the issuer's
/// attention).
fn key_row(t: &Trace, detail: String) -> String {
    let Some(provider) = t.judge.and_then(|j| j.provider) else {
        return detail;
    };
    let label = match &provider.remote {
        Some(src) => format!(
            "provider {} (keys from {})",
            quote(&provider.name()),
            src.label()
        ),
        None => format!("provider {}", quote(&provider.name())),
    };
    if let Outcome::Failed(r) = t.outcome(Check::Key) {
        if r.check == Check::Key {
            return format!("{label}: {detail}");
        }
    }
    let note = match t.ignored.len() {
        0 => String::new(),
        n if n <= 3 => format!("; ignored in the key set: {}", t.ignored.join("; ")),
        n => format!(
            "; ignored in the key set: {}; and {} more (see jwks_status())",
            t.ignored[..3].join("; "),
            n - 3
        ),
    };
    format!("{label}: {detail}{note}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Settings;
    use crate::token::b64_encode;

    /// The key row names the keys a provider's set ignores, also when the token's algorithm
    /// stopped the key stage before it looked at keys.
    #[test]
    fn the_key_row_names_ignored_keys_whatever_stopped_the_token() {
        let ed = b64_encode(&[9u8; 32]);
        let jwks = format!(
            r#"{{"keys":[{{"kty":"OKP","crv":"Ed25519","x":"{ed}","kid":"ok"}},{{"kty":"OKP","crv":"Ed25519","x":"{ed}","kid":"enc","use":"enc"}}]}}"#
        );
        let config = Config::from_settings(&Settings {
            issuer: Some("https://acme.kinde.com"),
            jwks: Some(&jwks),
            leeway: 30,
            require_sub: true,
            ..Default::default()
        })
        .unwrap();
        let payload = b64_encode(br#"{"iss":"https://acme.kinde.com","sub":"a","exp":2000}"#);
        for header in [r#"{"alg":"none"}"#, r#"{"alg":"EdDSA","kid":"ok"}"#] {
            let token = format!("{}.{payload}.AAAA", b64_encode(header.as_bytes()));
            let rows = explain_configured(&token, &config, 1000, &mut NoRemote);
            let key = rows.iter().find(|r| r.check == Check::Key).unwrap();
            assert!(
                key.detail
                    .starts_with(r#"provider "https://acme.kinde.com": "#)
                    && key.detail.ends_with(
                        r#"; ignored in the key set: key "enc": use "enc" is not "sig""#
                    ),
                "{header}: {}",
                key.detail
            );
        }
    }
}
