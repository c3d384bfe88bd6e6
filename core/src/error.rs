//! The two ways verification can fail, kept apart because they mean different things to a caller:
//! a [`Refusal`] is the token's fault (SQLSTATE 28000 in the extension), a [`ConfigError`] is the
//! operator's (SQLSTATE 22023, with a hint naming the setting). Neither ever carries a secret or a
//! whole token: messages quote at most short claim values, truncated by [`quote`].

use std::fmt;

/// The rule a token failed. The names are the rows of `jwt_explain()` and appear in every refusal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    Format,
    Algorithm,
    Key,
    Signature,
    Exp,
    Nbf,
    Iss,
    Aud,
    Sub,
    /// A login's scopes (the `scope` of the `pg_hba.conf` line): PostgreSQL 18 OAuth sign-in only.
    Scope,
}

impl Check {
    /// The checks a token goes through ([`crate::pipeline`], `jwt_explain()` rows), in order.
    pub const TOKEN: [Check; 9] = [
        Check::Format,
        Check::Algorithm,
        Check::Key,
        Check::Signature,
        Check::Exp,
        Check::Nbf,
        Check::Iss,
        Check::Aud,
        Check::Sub,
    ];

    /// Every check: the token's, then a login's ([`crate::login`]).
    pub const ALL: [Check; 10] = {
        let mut all = [Check::Scope; 10];
        let mut i = 0;
        while i < Check::TOKEN.len() {
            all[i] = Check::TOKEN[i];
            i += 1;
        }
        all
    };

    pub fn as_str(self) -> &'static str {
        match self {
            Check::Format => "format",
            Check::Algorithm => "algorithm",
            Check::Key => "key",
            Check::Signature => "signature",
            Check::Exp => "exp",
            Check::Nbf => "nbf",
            Check::Iss => "iss",
            Check::Aud => "aud",
            Check::Sub => "sub",
            Check::Scope => "scope",
        }
    }

    /// A few words for the message: "JWT refused: <check> check failed: <what>".
    fn headline(self) -> &'static str {
        match self {
            Check::Format => "malformed token",
            Check::Algorithm => "algorithm not accepted",
            Check::Key => "no matching key",
            Check::Signature => "invalid signature",
            Check::Exp => "token expired",
            Check::Nbf => "token not yet valid",
            Check::Iss => "issuer not accepted",
            Check::Aud => "audience not accepted",
            Check::Sub => "subject missing or invalid",
            Check::Scope => "scope not granted",
        }
    }
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A token that did not pass one of the checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub check: Check,
    /// Why, in terms of the token and the rules; never contains key material.
    pub detail: String,
    /// The few words after "check failed", when more precise than the check's own
    /// ("keys could not be fetched" rather than "no matching key").
    pub reason: Option<&'static str>,
}

impl Refusal {
    pub fn new(check: Check, detail: impl Into<String>) -> Self {
        Refusal {
            check,
            detail: detail.into(),
            reason: None,
        }
    }

    /// The same refusal, with a more precise short reason for its message.
    pub fn because(mut self, reason: &'static str) -> Self {
        self.reason = Some(reason);
        self
    }

    /// The primary error message, naming the failed check.
    pub fn message(&self) -> String {
        format!(
            "JWT refused: {} check failed ({})",
            self.check,
            self.reason.unwrap_or(self.check.headline())
        )
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.message(), self.detail)
    }
}

/// A setting (or an explicit key/algorithm argument) that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The setting or argument at fault, e.g. `kinde_rls.jwks` or `key`.
    pub setting: String,
    pub message: String,
    pub hint: String,
}

impl ConfigError {
    pub fn new(
        setting: impl Into<String>,
        message: impl Into<String>,
        hint: impl Into<String>,
    ) -> Self {
        ConfigError {
            setting: setting.into(),
            message: message.into(),
            hint: hint.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.message, self.hint)
    }
}

/// Either failure, for functions that can meet both.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    Refused(Refusal),
    Config(ConfigError),
}

impl From<Refusal> for Error {
    fn from(r: Refusal) -> Self {
        Error::Refused(r)
    }
}

impl From<ConfigError> for Error {
    fn from(c: ConfigError) -> Self {
        Error::Config(c)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Refused(r) => r.fmt(f),
            Error::Config(c) => c.fmt(f),
        }
    }
}

/// A character that a reader or a log tool may take as a line break, or that reorders what a
/// human reads: DEL and the C1 controls (NEL), U+2028/U+2029, the bidirectional controls and the
/// byte-order mark. (JSON escapes the C0 controls itself.)
pub fn misleading(c: char) -> bool {
    matches!(c, '\u{7f}'..='\u{9f}' | '\u{2028}' | '\u{2029}' | '\u{200e}' | '\u{200f}'
        | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' | '\u{061c}' | '\u{feff}')
}

/// Quote a claim value for a message: JSON-escaped and cut to a length that keeps an attacker
/// from filling logs (a 200 KB `kid` becomes 64 characters and an ellipsis). Beyond JSON's own
/// escapes (C0 controls, `"`, `\\`), characters that a reader or a log tool may take as a line
/// break or that reorder what a human reads are escaped too: DEL and the C1 controls (NEL),
/// U+2028/U+2029, and the bidirectional controls.
pub fn quote(s: &str) -> String {
    const MAX: usize = 64;
    let mut cut: String = s.chars().take(MAX).collect();
    if cut.len() < s.len() {
        cut.push('…');
    }
    let json = serde_json::Value::String(cut).to_string();
    let mut out = String::with_capacity(json.len());
    for c in json.chars() {
        if misleading(c) {
            out.push_str(&format!("\\u{:04x}", c as u32));
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_check_is_a_tokens_or_a_logins() {
        assert_eq!(Check::ALL[..Check::TOKEN.len()], Check::TOKEN);
        assert_eq!(Check::ALL[Check::TOKEN.len()..], [Check::Scope]);
    }

    #[test]
    fn message_names_the_check() {
        let r = Refusal::new(Check::Exp, "expired at 1");
        assert_eq!(r.message(), "JWT refused: exp check failed (token expired)");
    }

    #[test]
    fn a_reason_says_more_than_the_check() {
        use crate::pipeline::select_keys;
        use crate::rules::{check_exp, Policy};
        let no_exp = check_exp(&serde_json::Map::new(), &Policy::default(), 0).unwrap_err();
        assert_eq!(
            no_exp.message(),
            "JWT refused: exp check failed (no exp claim)"
        );
        let k = crate::token::b64_encode(&[7u8; 32]);
        let set = crate::keys::parse_jwks(&format!(r#"{{"kty":"oct","k":"{k}","kid":"a"}}"#), true)
            .unwrap();
        let refs: Vec<&crate::Key> = set.keys.iter().collect();
        let e = select_keys(&refs, crate::Alg::HS256, Some("nope")).unwrap_err();
        assert_eq!(
            e.message(),
            "JWT refused: key check failed (no key with this kid)"
        );
        let e = select_keys(&[], crate::Alg::HS256, None).unwrap_err();
        assert_eq!(
            e.message(),
            "JWT refused: key check failed (no key configured)"
        );
    }

    #[test]
    fn quote_truncates_and_escapes() {
        assert_eq!(quote("a\"b"), "\"a\\\"b\"");
        // Line breaks and reordering for Unicode-aware readers are escaped too.
        assert_eq!(
            quote("a\u{2028}LOG:  x\u{85}y\u{202e}z\u{7f}"),
            "\"a\\u2028LOG:  x\\u0085y\\u202ez\\u007f\""
        );
        assert_eq!(quote("héllo ✓"), "\"héllo ✓\"");
        let long = "x".repeat(200_000);
        let q = quote(&long);
        assert_eq!(q.chars().count(), 64 + 3);
        assert!(q.ends_with("…\""));
    }
}
