//! What the operator sees of a token: the issuer its counters are kept under, and the audit
//! line of a refusal. Nothing here decides whether a token is accepted.
//!
//! Counters are kept per *configured* issuer ([`issuer_of`]), never per `iss` a token claims:
//! a flood of tokens naming made-up issuers must not grow the statistics table.
//!
//! An audit line names the check, the configured issuer, the `kid` and — only when the
//! signature verified — the `sub`. Every value taken from the token is quoted ([`quote`]:
//! JSON-escaped, at most 64 characters), so a token cannot forge log lines with a newline.
//! The token itself, its signature and any key never appear.

use serde_json::{Map, Value};

use crate::config::Config;
use crate::error::{quote, Check, Refusal};
use crate::pipeline::pick_provider;
use crate::token::parse;

/// The configured provider a token's claims belong to, by name ([`crate::Provider::name`]):
/// `None` when no provider accepts its `iss`.
pub fn issuer_of(config: &Config, claims: &Map<String, Value>) -> Option<String> {
    pick_provider(config, claims).ok().map(|p| p.name())
}

/// What the audit log says about one refused token.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Audit {
    /// The configured issuer the token was judged under (see [`issuer_of`]).
    pub issuer: Option<String>,
    /// The `iss` the token claims, quoted, when no configured issuer accepts it.
    pub claimed_iss: Option<String>,
    /// The header's `kid`, quoted.
    pub kid: Option<String>,
    /// The `sub`, quoted: only when the refusal came after the signature verified.
    pub sub: Option<String>,
}

/// Whether a refusal of a configured verification means the signature had verified: the claim
/// rules `exp`, `nbf`, `aud` and `sub`, and a login's `scope`, run only after it ([`crate::pipeline::run`]); `iss` is
/// judged before any key is looked at (it picks the provider).
pub fn after_signature(check: Check) -> bool {
    matches!(
        check,
        Check::Exp | Check::Nbf | Check::Aud | Check::Sub | Check::Scope
    )
}

/// The audit facts of `token`, refused by `refusal` under `config`. The token is parsed again
/// (refusals are not the per-row path); a token that does not parse has none.
pub fn audit(token: &str, config: Option<&Config>, refusal: &Refusal) -> Audit {
    let Ok(p) = parse(token) else {
        return Audit::default();
    };
    let issuer = config.and_then(|c| issuer_of(c, &p.payload));
    let claimed_iss = match (&issuer, p.payload.get("iss")) {
        (None, Some(Value::String(s))) => Some(quote(s)),
        (None, Some(_)) => Some("(not a string)".into()),
        _ => None,
    };
    let sub = after_signature(refusal.check)
        .then(|| crate::claims::subject(&p.payload).map(quote))
        .flatten();
    Audit {
        issuer,
        claimed_iss,
        kid: p.kid.as_deref().map(quote),
        sub,
    }
}

impl Audit {
    /// The facts as `name=value` pairs, for the log line's DETAIL.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        match (&self.issuer, &self.claimed_iss) {
            (Some(i), _) => parts.push(format!("issuer={}", quote(i))),
            (None, Some(c)) => parts.push(format!("claimed issuer={c}")),
            (None, None) => {}
        }
        if let Some(k) = &self.kid {
            parts.push(format!("kid={k}"));
        }
        if let Some(s) = &self.sub {
            parts.push(format!("sub={s}"));
        }
        parts.join(" ")
    }
}

/// An HTTP `Date` header (RFC 9110 §5.6.7, the IMF-fixdate form every current server sends:
/// `Sun, 06 Nov 1994 08:49:37 GMT`) as seconds since the epoch. Other forms are `None`.
pub fn http_date(text: &str) -> Option<i64> {
    let rest = text.trim().split_once(", ")?.1;
    let mut it = rest.split(' ');
    let (day, mon, year, time, zone) = (it.next()?, it.next()?, it.next()?, it.next()?, it.next()?);
    if it.next().is_some() || zone != "GMT" || day.len() != 2 || year.len() != 4 {
        return None;
    }
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let m = MONTHS.iter().position(|x| *x == mon)? as i64 + 1;
    let num = |s: &str| -> Option<i64> {
        s.bytes()
            .all(|b| b.is_ascii_digit())
            .then(|| s.parse().ok())
            .flatten()
    };
    let (d, y) = (num(day)?, num(year)?);
    let mut hms = time.split(':');
    let (h, mi, s) = (num(hms.next()?)?, num(hms.next()?)?, num(hms.next()?)?);
    if hms.next().is_some() || !(1..=31).contains(&d) || h > 23 || mi > 59 || s > 60 {
        return None;
    }
    // Days from the civil date (H. Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + h * 3600 + mi * 60 + s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Settings;
    use base64::Engine;

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
    }

    fn token(header: &str, payload: &str) -> String {
        format!("{}.{}.{}", b64(header), b64(payload), b64("sig"))
    }

    fn config() -> Config {
        Config::from_settings(&Settings {
            issuer: Some("https://a.kinde.com"),
            secret: Some("0123456789abcdef0123456789abcdef"),
            leeway: 30,
            require_sub: true,
            ..Settings::default()
        })
        .unwrap()
    }

    #[test]
    fn http_dates() {
        assert_eq!(
            http_date("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(784_111_777)
        );
        assert_eq!(http_date("Thu, 01 Jan 1970 00:00:00 GMT"), Some(0));
        assert_eq!(
            http_date("Sun, 29 Nov 2026 08:18:36 GMT"),
            Some(1_795_940_316)
        );
        assert_eq!(
            http_date("Tue, 29 Feb 2028 23:59:59 GMT"),
            Some(1_835_481_599)
        );
        for bad in [
            "",
            "Sunday, 06-Nov-94 08:49:37 GMT",
            "Sun Nov  6 08:49:37 1994",
            "Sun, 06 Nov 1994 08:49:37 UTC",
            "Sun, 06 Nov 1994 08:49:37 GMT x",
            "Sun, 6 Nov 1994 08:49:37 GMT",
            "Sun, 06 Foo 1994 08:49:37 GMT",
            "Sun, 06 Nov 1994 24:00:00 GMT",
            "Sun, +6 Nov 1994 08:49:37 GMT",
        ] {
            assert_eq!(http_date(bad), None, "{bad}");
        }
    }

    #[test]
    fn the_audit_names_only_what_can_be_trusted() {
        let c = config();
        let exp = Refusal::new(Check::Exp, "expired");
        let sig = Refusal::new(Check::Signature, "bad");
        let t = token(
            r#"{"alg":"HS256","kid":"k1"}"#,
            r#"{"iss":"https://a.kinde.com","sub":"kp_1"}"#,
        );
        // After the signature: the sub is named.
        let a = audit(&t, Some(&c), &exp);
        assert_eq!(a.issuer.as_deref(), Some("https://a.kinde.com"));
        assert_eq!(a.sub.as_deref(), Some("\"kp_1\""));
        assert_eq!(
            a.describe(),
            r#"issuer="https://a.kinde.com" kid="k1" sub="kp_1""#
        );
        // Before it: the sub is anyone's guess and is not named.
        assert_eq!(audit(&t, Some(&c), &sig).sub, None);
        // An issuer nobody configured is quoted as claimed; a newline cannot start a new line.
        let t = token(
            r#"{"alg":"HS256","kid":"a\nb"}"#,
            r#"{"iss":"evil\nLOG: x"}"#,
        );
        let a = audit(&t, Some(&c), &Refusal::new(Check::Iss, "no"));
        assert_eq!(a.issuer, None);
        assert_eq!(a.describe(), r#"claimed issuer="evil\nLOG: x" kid="a\nb""#);
        assert!(!a.describe().contains('\n'));
        // Not a token: nothing.
        assert_eq!(audit("abc", Some(&c), &sig), Audit::default());
        assert_eq!(Audit::default().describe(), "");
    }

    #[test]
    fn only_claim_rules_after_the_key_mean_a_verified_signature() {
        for c in Check::ALL {
            let expected = matches!(
                c,
                Check::Exp | Check::Nbf | Check::Aud | Check::Sub | Check::Scope
            );
            assert_eq!(after_signature(c), expected, "{c}");
        }
    }
}
