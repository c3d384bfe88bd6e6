//! Parsing a compact JWS (RFC 7515 §7.1) without trusting any of it yet.
//!
//! The parser is strict on purpose: a size limit checked before any work, exactly three segments,
//! unpadded base64url with canonical trailing bits, UTF-8 JSON objects for header and payload, and
//! no duplicate member names at the top level (RFC 7519 §4 allows rejecting them; two parsers that
//! pick different duplicates are how claim-smuggling bugs happen).

use base64::alphabet;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::Engine;
use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::{Map, Value};
use std::fmt;

use crate::error::{quote, Check, Refusal};

/// Longest token accepted, in bytes. Real access tokens are 1–4 KB; HTTP servers cap a header at
/// 8–16 KB. Anything longer is refused before it is split or decoded.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// Longest JWS `jws_verify` accepts, in bytes: signed documents and webhook bodies are larger
/// than access tokens, and the work stays linear in the size.
pub const MAX_JWS_BYTES: usize = 1024 * 1024;

/// Header parameters this implementation understands and may be listed in `crit`: none. Any
/// `crit` therefore refuses the token (RFC 7515 §4.1.11).
const UNDERSTOOD_CRIT: &[&str] = &[];

pub(crate) const B64URL: GeneralPurpose = GeneralPurpose::new(
    &alphabet::URL_SAFE,
    GeneralPurposeConfig::new()
        .with_encode_padding(false)
        .with_decode_padding_mode(DecodePaddingMode::RequireNone)
        .with_decode_allow_trailing_bits(false),
);

/// The four parts of a compact JWS, decoded where they are JSON.
#[derive(Debug, Clone)]
pub struct Parts<'a> {
    pub header: Map<String, Value>,
    pub payload: Map<String, Value>,
    /// Header and payload as the validated JSON text they were sent as (numbers unrounded).
    pub header_json: String,
    pub payload_json: String,
    pub signing_input: &'a str,
    pub signature_b64: &'a str,
}

/// A token split and decoded, its signature not yet checked.
#[derive(Debug, Clone)]
pub struct Parsed<'a> {
    pub header: Map<String, Value>,
    /// The registered claims the checks read (`exp`, `nbf`, `iat`, `iss`, `aud`, `sub`); the
    /// rest of the payload is validated (JSON object, unique member names) but not built.
    pub payload: Map<String, Value>,
    /// The whole payload as JSON text, for [`full_claims`] when someone asks for all claims.
    pub payload_json: String,
    /// `base64url(header) || '.' || base64url(payload)`: the bytes the signature covers.
    pub signing_input: &'a str,
    /// The signature, decoded.
    pub signature: Vec<u8>,
    /// The `alg` header, which must be a string.
    pub alg: String,
    pub kid: Option<String>,
}

/// A compact JWS whose payload is any bytes (`jws_verify`), split and decoded, its signature
/// not yet checked.
#[derive(Debug, Clone)]
pub struct Jws<'a> {
    pub header: Map<String, Value>,
    pub payload: Vec<u8>,
    pub signing_input: &'a str,
    pub signature: Vec<u8>,
    pub alg: String,
    pub kid: Option<String>,
}

fn malformed(detail: impl Into<String>) -> Refusal {
    Refusal::new(Check::Format, detail)
}

/// Decode one base64url segment strictly.
pub fn b64_decode(segment: &str, what: &str) -> Result<Vec<u8>, Refusal> {
    B64URL
        .decode(segment)
        .map_err(|e| malformed(format!("the {what} is not unpadded base64url ({e})")))
}

pub fn b64_encode(bytes: &[u8]) -> String {
    B64URL.encode(bytes)
}

/// A JSON value built exactly as its text says. serde_json's own [`Value`], with the
/// `raw_value` feature this crate enables, reads an object whose first member is named
/// `$serde_json::private::RawValue` as the JSON text held in that member's string: a payload
/// `{"roles":{"$serde_json::private::RawValue":"[{\"key\":\"admin\"}]"}}` would read as a
/// roles array holding `admin` to the claim helpers and as `aud: "api"` to the audience check,
/// while PostgreSQL's jsonb (`get_claims()`, `get_claim()`) sees an object with one odd member;
/// and when that string is not JSON, the claim map could not be built at all. Every header and
/// claim value is built through this instead: that member name is a name like any other.
///
/// `Built<true>` ([`Strict`]) also refuses a repeated member name in any object, at any depth:
/// for keys and key sets, where a reader that keeps the first of two `use` or `kty` members and
/// one that keeps the last would see different keys. `Built<false>` ([`Plain`]) keeps the last,
/// as `jsonb` does.
struct Built<const UNIQUE: bool>(Value);

type Plain = Built<false>;
type Strict = Built<true>;

impl<'de, const UNIQUE: bool> Deserialize<'de> for Built<UNIQUE> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<const UNIQUE: bool>;
        impl<'de, const UNIQUE: bool> Visitor<'de> for V<UNIQUE> {
            type Value = Built<UNIQUE>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON value")
            }
            fn visit_bool<E>(self, b: bool) -> Result<Self::Value, E> {
                Ok(Built(Value::Bool(b)))
            }
            fn visit_i64<E>(self, n: i64) -> Result<Self::Value, E> {
                Ok(Built(Value::Number(n.into())))
            }
            fn visit_u64<E>(self, n: u64) -> Result<Self::Value, E> {
                Ok(Built(Value::Number(n.into())))
            }
            fn visit_f64<E: serde::de::Error>(self, n: f64) -> Result<Self::Value, E> {
                serde_json::Number::from_f64(n)
                    .map(|n| Built(Value::Number(n)))
                    .ok_or_else(|| E::custom("a number that is not finite"))
            }
            fn visit_str<E>(self, s: &str) -> Result<Self::Value, E> {
                Ok(Built(Value::String(s.to_owned())))
            }
            fn visit_string<E>(self, s: String) -> Result<Self::Value, E> {
                Ok(Built(Value::String(s)))
            }
            fn visit_unit<E>(self) -> Result<Self::Value, E> {
                Ok(Built(Value::Null))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut a: A,
            ) -> Result<Self::Value, A::Error> {
                let mut out = Vec::with_capacity(a.size_hint().unwrap_or(0).min(64));
                while let Some(v) = a.next_element::<Built<UNIQUE>>()? {
                    out.push(v.0);
                }
                Ok(Built(Value::Array(out)))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Self::Value, A::Error> {
                let mut out = Map::new();
                while let Some(k) = m.next_key::<String>()? {
                    let v = m.next_value::<Built<UNIQUE>>()?.0;
                    if UNIQUE && out.contains_key(&k) {
                        return Err(serde::de::Error::custom(format!(
                            "duplicate member {}",
                            quote(&k)
                        )));
                    }
                    out.insert(k, v);
                }
                Ok(Built(Value::Object(out)))
            }
        }
        d.deserialize_any(V::<UNIQUE>)
    }
}

/// Parse JSON text whose objects have unique member names at every depth (keys, key sets).
pub fn parse_strict(text: &str) -> Result<Value, serde_json::Error> {
    serde_json::from_str::<Strict>(text).map(|s| s.0)
}

/// A JSON object whose top-level member names are unique.
struct UniqueObject(Map<String, Value>);

impl<'de> Deserialize<'de> for UniqueObject {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = UniqueObject;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<UniqueObject, A::Error> {
                let mut out = Map::new();
                while let Some(k) = m.next_key::<String>()? {
                    let v = m.next_value::<Plain>()?.0;
                    if out.contains_key(&k) {
                        return Err(serde::de::Error::custom(format!(
                            "duplicate member {}",
                            quote(&k)
                        )));
                    }
                    out.insert(k, v);
                }
                Ok(UniqueObject(out))
            }
        }
        d.deserialize_any(V)
    }
}

/// Parse a JSON object with unique top-level names. serde_json's recursion limit (128) bounds
/// nesting, so a 100,000-deep document is an error, not a stack overflow.
/// Claims the checks need (`role` for the anonymous-credential rule). Everything else is
/// skipped while parsing (still validated).
pub const REGISTERED: &[&str] = &["exp", "nbf", "iat", "iss", "aud", "sub", "role"];

struct Registered(Map<String, Value>);

impl<'de> Deserialize<'de> for Registered {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Registered;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Registered, A::Error> {
                let mut out = Map::new();
                // Member names seen, to refuse duplicates without building the values. Borrowed
                // from the input unless they contain escapes.
                let mut seen: Vec<std::borrow::Cow<'de, str>> = Vec::with_capacity(32);
                while let Some(k) = m.next_key::<std::borrow::Cow<'de, str>>()? {
                    if seen.contains(&k) {
                        return Err(serde::de::Error::custom(format!(
                            "duplicate member {}",
                            quote(&k)
                        )));
                    }
                    if REGISTERED.contains(&k.as_ref()) {
                        let v = m.next_value::<Plain>()?.0;
                        out.insert(k.to_string(), v);
                    } else {
                        m.next_value::<Checked>()?;
                    }
                    seen.push(k);
                }
                Ok(Registered(out))
            }
        }
        d.deserialize_map(V)
    }
}

/// A JSON value read and dropped, but held to exactly what a [`Plain`] value accepts — numbers
/// within `f64`, nesting within serde_json's limit of 128 — unlike [`serde::de::IgnoredAny`],
/// which skips both. The two are twins (the same `deserialize_any`, the same visits, the same
/// errors), so a payload that [`parse`] accepts is one [`full_claims`] can build: a token that
/// passed never has claims the helpers cannot read (`has_role()` answering "no" to a role
/// that is there). The fuzz targets assert it.
struct Checked;

impl<'de> Deserialize<'de> for Checked {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Checked;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON value")
            }
            fn visit_bool<E>(self, _: bool) -> Result<Checked, E> {
                Ok(Checked)
            }
            fn visit_i64<E>(self, _: i64) -> Result<Checked, E> {
                Ok(Checked)
            }
            fn visit_u64<E>(self, _: u64) -> Result<Checked, E> {
                Ok(Checked)
            }
            fn visit_f64<E: serde::de::Error>(self, n: f64) -> Result<Checked, E> {
                if n.is_finite() {
                    Ok(Checked)
                } else {
                    Err(E::custom("a number that is not finite"))
                }
            }
            fn visit_str<E>(self, _: &str) -> Result<Checked, E> {
                Ok(Checked)
            }
            fn visit_unit<E>(self) -> Result<Checked, E> {
                Ok(Checked)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut a: A,
            ) -> Result<Checked, A::Error> {
                while a.next_element::<Checked>()?.is_some() {}
                Ok(Checked)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Checked, A::Error> {
                while m.next_key::<Checked>()?.is_some() {
                    m.next_value::<Checked>()?;
                }
                Ok(Checked)
            }
        }
        d.deserialize_any(V)
    }
}

/// Parse a payload: the registered claims as a map, the whole as validated JSON text.
fn parse_payload(bytes: Vec<u8>) -> Result<(Map<String, Value>, String), Refusal> {
    let text = String::from_utf8(bytes).map_err(|_| malformed("the payload is not valid UTF-8"))?;
    let reg = serde_json::from_str::<Registered>(&text)
        .map_err(|e| malformed(format!("the payload is not a JSON object ({e})")))?;
    refuse_nul(&text, "payload", "claim")?;
    Ok((reg.0, text))
}

/// PostgreSQL's `numeric` (and so `jsonb`) refuses a number whose decimal exponent is beyond
/// this before version 18 (`NUMERIC_MAX_PRECISION`), while serde_json reads `1e-2000` or
/// `0e99999` as 0. One limit for every supported version: no claim means one thing on 18 and
/// another on 17.
const MAX_EXPONENT: i64 = 1000;

/// Does this (valid) JSON text hold a number written with an exponent beyond
/// [`MAX_EXPONENT`]? One pass over the bytes, strings skipped.
fn number_beyond_numeric(text: &str) -> bool {
    let b = text.as_bytes();
    let mut i = 0;
    let mut in_string = false;
    while i < b.len() {
        let c = b[i];
        if in_string {
            match c {
                b'\\' => i += 1,
                b'"' => in_string = false,
                _ => {}
            }
        } else if c == b'"' {
            in_string = true;
        } else if c == b'e' || c == b'E' {
            // Outside strings, an e is only ever a number's exponent (true, false, null have
            // none... except "true"/"false": their e is followed by a letter or delimiter).
            let mut j = i + 1;
            if matches!(b.get(j), Some(b'+' | b'-')) {
                j += 1;
            }
            let start = j;
            while j < b.len() && b[j].is_ascii_digit() {
                j += 1;
            }
            if j > start {
                let digits = &text[start..j];
                let big = digits.trim_start_matches('0').len() > 4
                    || digits.parse::<i64>().is_ok_and(|e| e > MAX_EXPONENT);
                if big {
                    return true;
                }
            }
            i = j;
            continue;
        }
        i += 1;
    }
    false
}

/// Does this JSON text hold an escape that PostgreSQL cannot store or that the validating parse
/// skipped over: `\u0000`, or a UTF-16 surrogate (`\uD800`–`\uDFFF`), which must come in
/// pairs? Raw NUL bytes are not valid JSON; escapes are the only way in. An escaped backslash
/// followed by the letters `u0000` is not one.
fn has_suspect_escape(text: &str) -> bool {
    let b = text.as_bytes();
    let mut i = 0;
    while let Some(off) = b[i..].iter().position(|&c| c == b'\\') {
        i += off;
        if b.get(i + 1) == Some(&b'u') {
            if let Some(hex) = b.get(i + 2..i + 6) {
                let surrogate = hex[0].eq_ignore_ascii_case(&b'd')
                    && matches!(hex[1].to_ascii_lowercase(), b'8'..=b'9' | b'a'..=b'f');
                if hex == b"0000" || surrogate {
                    return true;
                }
            }
        }
        i += 2; // the backslash and the character it escapes
        if i >= b.len() {
            break;
        }
    }
    false
}

fn value_has_nul(v: &Value) -> bool {
    match v {
        Value::String(s) => s.contains('\0'),
        Value::Array(a) => a.iter().any(value_has_nul),
        Value::Object(o) => o.iter().any(|(k, v)| k.contains('\0') || value_has_nul(v)),
        _ => false,
    }
}

/// PostgreSQL's `text` and `jsonb` cannot hold a NUL character, and a lone UTF-16 surrogate is
/// not a character at all, so a header or payload with either anywhere is refused as malformed
/// here — naming the member — and every function refuses it alike, instead of one failing
/// later with SQLSTATE 22P05 or 22P02 and another silently seeing no claims.
fn refuse_nul(text: &str, what: &str, member: &str) -> Result<(), Refusal> {
    if number_beyond_numeric(text) {
        return Err(malformed(format!(
            "the {what} holds a number whose exponent is beyond ±{MAX_EXPONENT}, which PostgreSQL's jsonb cannot hold (before version 18)"
        )));
    }
    if !has_suspect_escape(text) {
        return Ok(());
    }
    let map = match serde_json::from_str::<Plain>(text).map(|p| p.0) {
        Ok(Value::Object(map)) => map,
        Ok(_) => return Err(malformed(format!("the {what} is not a JSON object"))),
        Err(e) => {
            return Err(malformed(format!(
                "the {what} holds an invalid \\u escape ({e})"
            )))
        }
    };
    match map
        .iter()
        .find(|(k, v)| k.contains('\0') || value_has_nul(v))
    {
        None => Ok(()),
        Some((k, _)) => Err(malformed(format!(
            "{member} {} contains a NUL character (\\u0000), which PostgreSQL text and jsonb cannot hold",
            quote(k)
        ))),
    }
}

/// Where each top-level member's value sits in a payload that [`parse`] validated: byte ranges
/// of the JSON text, so a claim is handed out exactly as it was signed (a big integer or a long
/// decimal unrounded), as `get_claims()` hands out the whole.
pub fn member_spans(payload_json: &str) -> std::collections::HashMap<String, (usize, usize)> {
    let base = payload_json.as_ptr() as usize;
    serde_json::from_str::<std::collections::HashMap<String, &serde_json::value::RawValue>>(
        payload_json,
    )
    .map(|m| {
        m.into_iter()
            .map(|(k, raw)| {
                let start = raw.get().as_ptr() as usize - base;
                (k, (start, start + raw.get().len()))
            })
            .collect()
    })
    .unwrap_or_default()
}

/// One member's value of a JSON object text, as text.
pub fn raw_member<'a>(object_json: &'a str, name: &str) -> Option<&'a str> {
    serde_json::from_str::<
        std::collections::HashMap<std::borrow::Cow<'a, str>, &'a serde_json::value::RawValue>,
    >(object_json)
    .ok()?
    .get(name)
    .map(|raw| raw.get())
}

/// Any JSON text as it is written (serde_json's [`Value`] would read the `raw_value` magic
/// member name as embedded JSON; see [`Plain`]): for JSON the extension reads from SQL
/// arguments and request settings, so what it signs or looks at is what the caller wrote.
pub fn parse_value(text: &str) -> Result<Value, serde_json::Error> {
    serde_json::from_str::<Plain>(text).map(|p| p.0)
}

/// All claims of a payload that [`parse`] validated. [`parse`] refuses every payload whose claims
/// cannot be built (see [`Checked`]), so for a verified payload this is `Ok`; an error is
/// returned, never an empty map, so that a caller cannot mistake "could not read the claims"
/// for "no claims" (`has_role()` answering "no" for a role that is there).
pub fn full_claims(payload_json: &str) -> Result<Map<String, Value>, Refusal> {
    parse_object(payload_json.as_bytes(), "payload")
}

pub fn parse_object(bytes: &[u8], what: &str) -> Result<Map<String, Value>, Refusal> {
    let text = std::str::from_utf8(bytes)
        .map_err(|_| malformed(format!("the {what} is not valid UTF-8")))?;
    let map = serde_json::from_str::<UniqueObject>(text)
        .map(|o| o.0)
        .map_err(|e| malformed(format!("the {what} is not a JSON object ({e})")))?;
    refuse_nul(
        text,
        what,
        if what == "payload" { "claim" } else { "member" },
    )?;
    Ok(map)
}

/// Split and decode a compact JWS into header, payload, signing input and signature, checking
/// only the format. `jwt_decode_unverified()` stops here; [`parse`] goes on to the header rules.
/// Split a compact JWS into its three segments, refusing wrong shapes before any decoding.
fn split(token: &str) -> Result<(&str, &str, &str), Refusal> {
    let (h, p, s) = split_within(token, MAX_TOKEN_BYTES)?;
    if p.is_empty() {
        return Err(malformed("the header or payload segment is empty"));
    }
    Ok((h, p, s))
}

/// [`split`] for any JWS up to `limit` bytes, whose payload may be empty.
fn split_within(token: &str, limit: usize) -> Result<(&str, &str, &str), Refusal> {
    if token.len() > limit {
        return Err(malformed(format!(
            "the token is {} bytes; the limit is {limit} bytes",
            token.len(),
        )));
    }
    let trimmed = token.trim();
    if trimmed.starts_with('{') && trimmed.ends_with('}') {
        return Err(malformed(
            "this is a JWS in JSON serialization; only the compact form (header.payload.signature) is accepted",
        ));
    }
    if token.is_empty() {
        return Err(malformed("the token is empty"));
    }
    let dots = token.bytes().filter(|&b| b == b'.').count();
    if dots == 4 {
        return Err(malformed(
            "the token has 5 segments: encrypted tokens (JWE) are not supported",
        ));
    }
    if dots != 2 {
        return Err(malformed(format!(
            "a compact JWS has 3 dot-separated segments, this token has {}",
            dots + 1
        )));
    }
    let mut parts = token.splitn(3, '.');
    let (h, p, s) = match (parts.next(), parts.next(), parts.next()) {
        (Some(h), Some(p), Some(s)) => (h, p, s),
        _ => return Err(malformed("the token does not have 3 segments")),
    };
    if h.is_empty() {
        return Err(malformed("the header segment is empty"));
    }
    Ok((h, p, s))
}

/// Decode a token's header and whole payload (for `jwt_decode_unverified`).
pub fn decode_parts(token: &str) -> Result<Parts<'_>, Refusal> {
    let (h, p, s) = split(token)?;
    let header_bytes = b64_decode(h, "header")?;
    let payload_bytes = b64_decode(p, "payload")?;
    let header = parse_object(&header_bytes, "header")?;
    let payload = parse_object(&payload_bytes, "payload")?;
    Ok(Parts {
        header,
        payload,
        // parse_object checked both are UTF-8.
        header_json: String::from_utf8_lossy(&header_bytes).into_owned(),
        payload_json: String::from_utf8_lossy(&payload_bytes).into_owned(),
        signing_input: &token[..h.len() + 1 + p.len()],
        signature_b64: s,
    })
}

/// The payload's claims, decoded without looking at the header or the signature: for
/// [`crate::claims::is_anonymous_token`] only.
pub fn unverified_payload(token: &str) -> Result<Map<String, Value>, Refusal> {
    let (_, payload, _) = split(token)?;
    parse_object(&b64_decode(payload, "payload")?, "payload")
}

/// Split and decode a compact JWS. Checks format and the header rules that need no key.
pub fn parse(token: &str) -> Result<Parsed<'_>, Refusal> {
    let (h, p, s) = split(token)?;
    let header = parse_object(&b64_decode(h, "header")?, "header")?;
    let (payload, payload_json) = parse_payload(b64_decode(p, "payload")?)?;
    // The signature is checked later, but its encoding is the format's: a refusal for it is a
    // format refusal in verify and in explain alike, before any key is looked at.
    let signature = b64_decode(s, "signature")?;
    let (alg, kid) = header_rules(&header)?;
    Ok(Parsed {
        header,
        payload,
        payload_json,
        signing_input: &token[..h.len() + 1 + p.len()],
        signature,
        alg,
        kid,
    })
}

/// Split and decode a compact JWS whose payload is any bytes, even none (`jws_verify`), up to
/// [`MAX_JWS_BYTES`]. The same format and header rules as [`parse`].
pub fn parse_jws(jws: &str) -> Result<Jws<'_>, Refusal> {
    let (h, p, s) = split_within(jws, MAX_JWS_BYTES)?;
    let header = parse_object(&b64_decode(h, "header")?, "header")?;
    let payload = b64_decode(p, "payload")?;
    let signature = b64_decode(s, "signature")?;
    let (alg, kid) = header_rules(&header)?;
    Ok(Jws {
        header,
        payload,
        signing_input: &jws[..h.len() + 1 + p.len()],
        signature,
        alg,
        kid,
    })
}

/// The header rules that need no key: `alg` is a string, `kid` a string if present, no
/// extension is marked critical (`crit`, RFC 7515 §4.1.11), and the payload is base64url
/// encoded (`b64`, RFC 7797, is absent or `true`). Returns `alg` and `kid`.
fn header_rules(header: &Map<String, Value>) -> Result<(String, Option<String>), Refusal> {
    let alg = match header.get("alg") {
        Some(Value::String(a)) => a.clone(),
        Some(_) => {
            return Err(Refusal::new(
                Check::Algorithm,
                "the header's alg is not a string",
            ))
        }
        None => return Err(Refusal::new(Check::Algorithm, "the header has no alg")),
    };
    let kid = match header.get("kid") {
        None | Some(Value::Null) => None,
        Some(Value::String(k)) => Some(k.clone()),
        Some(_) => return Err(malformed("the header's kid is not a string")),
    };
    if let Some(crit) = header.get("crit") {
        let names = match crit {
            Value::Array(a) if !a.is_empty() => a,
            _ => {
                return Err(malformed(
                    "the header's crit must be a non-empty array of names",
                ))
            }
        };
        for n in names {
            match n {
                Value::String(n) if UNDERSTOOD_CRIT.contains(&n.as_str()) => {}
                Value::String(n) => {
                    return Err(malformed(format!(
                        "the header marks extension {} critical and it is not implemented (RFC 7515 §4.1.11)",
                        quote(n)
                    )))
                }
                _ => return Err(malformed("the header's crit must list names (strings)")),
            }
        }
    }
    match header.get("b64") {
        None | Some(Value::Bool(true)) => {}
        Some(_) => {
            return Err(malformed(
                "the header's b64 says the payload is not base64url encoded (RFC 7797); such tokens are not accepted",
            ))
        }
    }
    Ok((alg, kid))
}

/// Does this text look like a compact JWS (three base64url segments)? Used to tell a token from
/// a JSON document in `request.jwt.claims`.
pub fn looks_like_compact(text: &str) -> bool {
    let t = text.trim();
    !t.is_empty()
        && t.bytes().filter(|&b| b == b'.').count() == 2
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(json: &str) -> String {
        b64_encode(json.as_bytes())
    }

    fn tok(h: &str, p: &str) -> String {
        format!("{}.{}.c2ln", seg(h), seg(p))
    }

    #[test]
    fn anonymous_credentials_have_no_sub_and_a_listed_role() {
        let roles = vec!["anon".to_string(), "service_role".to_string()];
        let h = r#"{"alg":"HS256","typ":"JWT"}"#;
        let anon = tok(
            h,
            r#"{"iss":"supabase","ref":"x","role":"anon","iat":1,"exp":2}"#,
        );
        assert!(crate::claims::is_anonymous_token(&anon, &roles));
        assert!(crate::claims::is_anonymous_token(
            &tok(h, r#"{"role":"service_role"}"#),
            &roles
        ));
        // Not anonymous: a sub (even null or empty), another role, no role, a role that is not
        // a string, an undecodable payload, duplicate members, no roles configured.
        for p in [
            r#"{"role":"anon","sub":"kp_1"}"#,
            r#"{"role":"anon","sub":null}"#,
            r#"{"role":"anon","sub":""}"#,
            r#"{"role":"authenticated"}"#,
            r#"{"role":"Anon"}"#,
            r#"{}"#,
            r#"{"role":["anon"]}"#,
            r#"{"role":"anon","role":"anon"}"#,
            r#"{"role":"anon","x":1e400}"#,
            r#"["anon"]"#,
        ] {
            assert!(
                !crate::claims::is_anonymous_token(&tok(h, p), &roles),
                "{p}"
            );
        }
        assert!(!crate::claims::is_anonymous_token(&anon, &[]));
        assert!(!crate::claims::is_anonymous_token("not.a.token!", &roles));
        assert!(!crate::claims::is_anonymous_token("abc", &roles));
        let five = format!("{anon}.x.y");
        assert!(!crate::claims::is_anonymous_token(&five, &roles));
    }

    #[test]
    fn parse_value_reads_the_raw_value_member_name_as_a_name() {
        let magic = r#"{"roles":{"$serde_json::private::RawValue":"[\"admin\"]"}}"#;
        let v = parse_value(magic).unwrap();
        assert!(v["roles"].is_object(), "{v}");
        assert_eq!(v["roles"]["$serde_json::private::RawValue"], "[\"admin\"]");
        let whole = r#"{"$serde_json::private::RawValue":"{\"sub\":\"kp_admin\"}"}"#;
        assert!(parse_value(whole).unwrap().get("sub").is_none());
        // serde_json's own Value is what this guards against.
        let plain: Value = serde_json::from_str(whole).unwrap();
        assert_eq!(plain["sub"], "kp_admin");
    }

    #[test]
    fn parses_a_well_formed_token() {
        let t = tok(
            r#"{"alg":"RS256","kid":"k1","typ":"JWT"}"#,
            r#"{"sub":"kp_1","exp":5}"#,
        );
        let p = parse(&t).unwrap();
        assert_eq!(p.alg, "RS256");
        assert_eq!(p.kid.as_deref(), Some("k1"));
        assert_eq!(p.payload["sub"], "kp_1");
        assert_eq!(p.signature, b"sig");
        assert_eq!(format!("{}.c2ln", p.signing_input), t);
    }

    fn check_of(t: &str) -> Check {
        parse(t).unwrap_err().check
    }

    #[test]
    fn refuses_bad_shapes() {
        assert_eq!(check_of(""), Check::Format);
        assert_eq!(check_of("a.b"), Check::Format);
        assert_eq!(check_of("a.b.c.d"), Check::Format);
        assert!(parse("a.b.c.d.e").unwrap_err().detail.contains("JWE"));
        let big = "a".repeat(MAX_TOKEN_BYTES + 1);
        assert!(parse(&big).unwrap_err().detail.contains("limit"));
    }

    #[test]
    fn refuses_non_canonical_base64() {
        let h = seg(r#"{"alg":"HS256"}"#);
        let p = seg(r#"{"sub":"a"}"#);
        assert_eq!(check_of(&format!("{h}=.{p}.x")), Check::Format);
        // A header whose encoding has both URL-safe characters; in the standard alphabet it
        // decodes to the same bytes, and only the alphabet rule refuses it.
        let h2 = seg(r#"{"alg":"HS256","x":"~~~???"}"#);
        assert!(h2.contains('-') && h2.contains('_'), "{h2}");
        let std_alpha = h2.replace('-', "+").replace('_', "/");
        assert!(parse(&format!("{h2}.{p}.c2ln")).is_ok());
        let e = parse(&format!("{std_alpha}.{p}.c2ln")).unwrap_err();
        assert_eq!(e.check, Check::Format);
        assert!(e.detail.contains("base64url"), "{}", e.detail);
        assert_eq!(check_of(&format!("{h} .{p}.x")), Check::Format);
        // The signature segment too, before the header rules or any key.
        for sig in ["c2ln=", "c2l+", "c2l/", "AB", "c2ln!", "c2 ln"] {
            let e = parse(&format!("{h}.{p}.{sig}")).unwrap_err();
            assert_eq!(e.check, Check::Format, "{sig}");
            assert!(
                e.detail.contains("signature is not unpadded base64url"),
                "{sig}"
            );
        }
        assert_eq!(
            check_of(&format!("{}.{p}.c2l+", seg(r#"{"alg":"none"}"#))),
            Check::Format
        );
    }

    #[test]
    fn refuses_non_objects_and_duplicates() {
        assert_eq!(check_of(&tok("[1]", "{}")), Check::Format);
        assert_eq!(check_of(&tok(r#"{"alg":"HS256"}"#, "[]")), Check::Format);
        assert_eq!(
            check_of(&tok(r#"{"alg":"HS256"}"#, r#"{"sub":"a","sub":"b"}"#)),
            Check::Format
        );
        let bad_utf8 = format!(
            "{}.{}.x",
            seg(r#"{"alg":"HS256"}"#),
            b64_encode(&[0xff, 0xfe])
        );
        assert_eq!(check_of(&bad_utf8), Check::Format);
        let deep = "[".repeat(100_000);
        let d = format!(
            "{}.{}.x",
            seg(r#"{"alg":"HS256"}"#),
            b64_encode(format!("{{\"a\":{deep}").as_bytes())
        );
        assert!(d.len() > MAX_TOKEN_BYTES);
        // Well-formed, within the size limit, refused for its depth alone.
        let d = format!(
            "{}.{}.c2ln",
            seg(r#"{"alg":"HS256"}"#),
            b64_encode(format!("{{\"a\":{}{}}}", "[".repeat(4_000), "]".repeat(4_000)).as_bytes())
        );
        assert!(d.len() < MAX_TOKEN_BYTES);
        let e = parse(&d).unwrap_err();
        assert_eq!(e.check, Check::Format);
        assert!(e.detail.contains("recursion limit"), "{}", e.detail);
    }

    #[test]
    fn header_rules() {
        assert_eq!(check_of(&tok(r#"{"typ":"JWT"}"#, "{}")), Check::Algorithm);
        assert_eq!(check_of(&tok(r#"{"alg":1}"#, "{}")), Check::Algorithm);
        assert_eq!(
            check_of(&tok(r#"{"alg":"HS256","kid":7}"#, "{}")),
            Check::Format
        );
        let e = parse(&tok(r#"{"alg":"HS256","crit":["exp"],"exp":1}"#, "{}")).unwrap_err();
        assert!(e.detail.contains("critical"), "{}", e.detail);
        assert_eq!(
            check_of(&tok(r#"{"alg":"HS256","crit":[]}"#, "{}")),
            Check::Format
        );
    }

    #[test]
    fn compact_detection() {
        assert!(looks_like_compact("eyJh.eyJi.c2ln"));
        assert!(!looks_like_compact(r#"{"sub":"a.b.c"}"#));
        assert!(!looks_like_compact(""));
    }

    #[test]
    fn nul_and_lone_surrogates_are_refused_naming_the_claim() {
        let h = r#"{"alg":"HS256"}"#;
        let e = parse(&tok(h, r#"{"sub":"kp_1","org_name":"a\u0000b"}"#)).unwrap_err();
        assert_eq!(e.check, Check::Format);
        assert!(
            e.detail
                .starts_with("claim \"org_name\" contains a NUL character"),
            "{}",
            e.detail
        );
        let e = parse(&tok(h, r#"{"sub":"kp_1","x":{"deep":["\u0000"]}}"#)).unwrap_err();
        assert!(e.detail.starts_with("claim \"x\""), "{}", e.detail);
        let e = parse(&tok(h, r#"{"a\u0000":1}"#)).unwrap_err();
        assert!(
            e.detail.starts_with(r#"claim "a\u0000" contains"#),
            "{}",
            e.detail
        );
        let e = parse(&tok(r#"{"alg":"HS256","kid":"k\u0000"}"#, "{}")).unwrap_err();
        assert!(e.detail.starts_with("member \"kid\""), "{}", e.detail);
        // A lone surrogate in a claim the checks do not read: refused, not silently skipped.
        let e = parse(&tok(h, r#"{"sub":"kp_1","x":"\ud800"}"#)).unwrap_err();
        assert!(e.detail.contains("escape"), "{}", e.detail);
        // An escaped backslash followed by u0000 is six ordinary characters, and a surrogate
        // pair is one character: both fine.
        let t = tok(h, r#"{"sub":"kp_1","x":"\\u0000","y":"\ud83d\ude00"}"#);
        let ok = parse(&t).unwrap();
        assert_eq!(full_claims(&ok.payload_json).unwrap()["x"], "\\u0000");
        assert!(has_suspect_escape(r#""\u0000""#));
        assert!(has_suspect_escape(r#""\uDC00""#));
        assert!(!has_suspect_escape(r#""\\u0000\\""#));
        assert!(!has_suspect_escape(r#""\u00e9""#));
    }

    #[test]
    fn a_payload_that_parses_is_one_the_claim_map_can_read() {
        let h = r#"{"alg":"HS256"}"#;
        // Numbers beyond f64 and nesting beyond 128 are refused, not skipped: otherwise the
        // claim helpers would see an empty map for a token that verified.
        for bad in [
            r#"{"sub":"a","roles":[{"key":"banned"}],"profile":{"x":1e400}}"#.to_string(),
            format!(
                r#"{{"sub":"a","deep":{}1{}}}"#,
                "[".repeat(200),
                "]".repeat(200)
            ),
        ] {
            assert_eq!(check_of(&tok(h, &bad)), Check::Format, "{bad}");
        }
        let ok = format!(
            r#"{{"sub":"a","roles":[{{"key":"banned"}}],"n":1e300,"deep":{}1{}}}"#,
            "[".repeat(100),
            "]".repeat(100)
        );
        let t = tok(h, &ok);
        let p = parse(&t).unwrap();
        let claims = full_claims(&p.payload_json).unwrap();
        assert!(crate::claims::has_role(&claims, "banned"));
    }

    #[test]
    fn numbers_jsonb_cannot_hold_are_refused() {
        let h = r#"{"alg":"HS256"}"#;
        for bad in [
            r#"{"x":1e-20000}"#,
            r#"{"x":0e999999999999}"#,
            r#"{"x":[1,{"y":2E-1001}]}"#,
        ] {
            let e = parse(&tok(h, bad)).unwrap_err();
            assert!(
                e.detail.contains("exponent is beyond"),
                "{bad}: {}",
                e.detail
            );
        }
        for ok in [
            r#"{"x":1e-400,"t":true,"f":false,"s":"1e99999","n":null}"#,
            r#"{"x":2E+300}"#,
        ] {
            assert!(parse(&tok(h, ok)).is_ok(), "{ok}");
        }
    }

    #[test]
    fn full_claims_fails_loudly_not_as_an_empty_map() {
        for bad in ["[1]", "{", "", r#"{"a":1,"a":2}"#, r#"{"x":1e400}"#] {
            assert_eq!(full_claims(bad).unwrap_err().check, Check::Format, "{bad}");
        }
        assert!(full_claims("{}").unwrap().is_empty());
    }

    /// serde_json's `Value` (with `raw_value`) reads an object whose first member is named
    /// `$serde_json::private::RawValue` as the JSON text in its string. Here it is a member
    /// name like any other, in the registered claims, in the claim map and in the header.
    #[test]
    fn serde_jsons_raw_value_member_name_is_an_ordinary_name() {
        const RAW: &str = "$serde_json::private::RawValue";
        let h = r#"{"alg":"HS256"}"#;
        // Not JSON inside: the claim map can still be built, as the text says.
        let t = tok(h, &format!(r#"{{"sub":"a","x":{{"{RAW}":"[1"}}}}"#));
        let p = parse(&t).unwrap();
        let claims = full_claims(&p.payload_json).unwrap();
        assert_eq!(claims["x"][RAW], "[1");
        // JSON inside: not a roles array in disguise.
        let t = tok(
            h,
            &format!(r#"{{"sub":"a","roles":{{"{RAW}":"[{{\"key\":\"admin\"}}]"}}}}"#),
        );
        let claims = full_claims(&parse(&t).unwrap().payload_json).unwrap();
        assert!(claims["roles"].is_object());
        assert!(!crate::claims::has_role(&claims, "admin"));
        // Nor an audience or an issuer in disguise.
        let t = tok(h, &format!(r#"{{"aud":{{"{RAW}":"\"api\""}}}}"#));
        assert!(parse(&t).unwrap().payload["aud"].is_object());
        let t = tok(&format!(r#"{{"alg":{{"{RAW}":"\"HS256\""}}}}"#), "{}");
        assert_eq!(check_of(&t), Check::Algorithm);
        // Trusted request claims go through the same parser.
        let m = parse_object(
            format!(r#"{{"sub":{{"{RAW}":"\"kp_1\""}}}}"#).as_bytes(),
            "x",
        );
        assert!(m.unwrap()["sub"].is_object());
    }

    /// What `parse` accepts, `full_claims` builds, and the registered claims are the claim
    /// map's: over payloads at every edge the two parsers could disagree on.
    #[test]
    fn parse_and_full_claims_agree() {
        let h = r#"{"alg":"HS256"}"#;
        let payloads = [
            r#"{"x":1e400}"#.to_string(),
            r#"{"x":-1e308,"y":1e-400,"z":18446744073709551616}"#.to_string(),
            r#"{"exp":1e400}"#.to_string(),
            r#"{"x":"\ud800"}"#.to_string(),
            r#"{"x":"\ud83d\ude00","aud":["\u0061pi"]}"#.to_string(),
            r#"{"x":{"a":1,"a":2},"sub":"s"}"#.to_string(),
            r#"{"sub":"s","s\u0075b":"t"}"#.to_string(),
            r#"{"x":{"$serde_json::private::Number":"1"}}"#.to_string(),
            r#"{"x":{"$serde_json::private::RawValue":1}}"#.to_string(),
            r#"{"x":1} "#.to_string(),
            r#"{"x":1} x"#.to_string(),
            format!(r#"{{"d":{}1{}}}"#, "[".repeat(126), "]".repeat(126)),
            format!(r#"{{"d":{}1{}}}"#, "[".repeat(127), "]".repeat(127)),
            format!(r#"{{"exp":{}1{}}}"#, "[".repeat(127), "]".repeat(127)),
            format!(r#"{{"d":{}{}}}"#, r#"{"a":"#.repeat(127), "}".repeat(127)),
        ];
        for text in &payloads {
            let t = tok(h, text);
            let parsed = parse(&t);
            let full = full_claims(text);
            assert_eq!(
                parsed.is_ok(),
                full.is_ok(),
                "{text}: {parsed:?} / {full:?}"
            );
            if let (Ok(p), Ok(full)) = (parsed, full) {
                for (k, v) in &p.payload {
                    assert_eq!(full.get(k), Some(v), "{text}: {k}");
                }
                for k in REGISTERED {
                    assert_eq!(p.payload.get(*k), full.get(*k), "{text}: {k}");
                }
            }
        }
    }
}
