//! The properties the fuzz targets assert, shared by the targets (`fuzz_targets/`) and by the
//! seed check (`tests/seeds.rs`), which replays the committed verify_token seeds and requires
//! every one to be accepted, so that the corpus cannot rot into tokens that fail early.
//!
//! A property that does not hold panics, which libFuzzer reports as a crash.

use std::collections::BTreeSet;

use aws_lc_rs::signature::{
    EcdsaKeyPair, Ed25519KeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING,
};
use base64::alphabet;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, URL_SAFE_NO_PAD};
use base64::engine::DecodePaddingMode;
use base64::Engine;
use kinde_rls_core::config::{Config, Settings};
use kinde_rls_core::rules::CLAIM_CHECKS;
use kinde_rls_core::{claims, explain, token, verify, Check, Error, ExplainRow, Key, Policy};
use kinde_rls_core::{explain_configured, verify_configured, NoRemote};
use kinde_rls_core::{verify_jws, KeyKind, Verified};
use serde_json::{Map, Value};

/// The verifier's clock: 2027-01-15 08:00:00 UTC. fuzz/seeds/mint.py mints for it.
pub const NOW: i64 = 1_800_000_000;
pub const ISSUER: &str = "https://acme.kinde.com";
pub const AUDIENCE: &str = "api";
pub const LEEWAY: i64 = 30;
pub const SECRET: &str = "kinde-client-secret-0123456789abcdefghijklmnop";
/// The public halves of the test keys below (`mint.py --jwks` prints them).
pub const JWKS: &str = r#"{"keys":[
 {"kty":"OKP","crv":"Ed25519","x":"2cAPWIqgpg97WKgfPj_uWCH72g1qOVf8bH90VNM8PLQ","kid":"ed"},
 {"kty":"EC","crv":"P-256","x":"dh8BkSJplRFfLQpjzO5ss8IjTeIdGl5tDHwLhdCfFRc","y":"tcWRamdrgkkaYEMV_IMiXnpoS9CLTXfLjN-zDzf2-KA","kid":"ec"}]}"#;

/// TEST-ONLY private keys, published on purpose (the same as in fuzz/seeds/mint.py): they sign
/// the seeds and what the target re-signs, and nothing outside fuzz/ trusts them.
const ED25519_TEST_PRIVATE_KEY: &str =
    "MC4CAQAwBQYDK2VwBCIEIGbBSaKkPaEvs/eKvSFuHu0oDnpbPjyPmt1pGt5+4U1l";
const P256_TEST_PRIVATE_KEY: &str =
    "MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgvxXNmGpahvPh14sO\
MIGBlwpiZcbvCN/3wT32xAOO2E6hRANCAAR2HwGRImmVEV8tCmPM7myzwiNN4h0a\
Xm0MfAuF0J8VF7XFkWpna4JJGmBDFfyDIl56aEvQi013y4zfsw839vig";

/// A header for a line of payload JSON that comes without one.
const DEFAULT_HEADER: &str = r#"{"alg":"HS256","typ":"JWT"}"#;

/// Decodes what the verifier's strict decoder refuses (padding, stray trailing bits), so that
/// "decode, then encode canonically, gives the same text" means something.
const LENIENT: GeneralPurpose = GeneralPurpose::new(
    &alphabet::URL_SAFE,
    GeneralPurposeConfig::new()
        .with_decode_padding_mode(DecodePaddingMode::Indifferent)
        .with_decode_allow_trailing_bits(true),
);

struct Fixture {
    /// The configured provider's keys and rules, for `verify`: the same as `config`'s.
    keys: Vec<Key>,
    policy: Policy,
    config: Config,
    ed25519: Ed25519KeyPair,
    p256: EcdsaKeyPair,
}

impl Fixture {
    fn new() -> Self {
        let config = Config::from_settings(&Settings {
            jwks: Some(JWKS),
            secret: Some(SECRET),
            issuer: Some(ISSUER),
            audience: Some(AUDIENCE),
            leeway: LEEWAY,
            require_sub: true,
            ..Default::default()
        })
        .expect("the target's settings are valid");
        assert_eq!(config.providers.len(), 1);
        let p = &config.providers[0];
        let kinds: Vec<KeyKind> = p.keys.iter().map(|k| k.kind).collect();
        assert!(p.ignored.is_empty(), "{:?}", p.ignored);
        for kind in [KeyKind::Hmac, KeyKind::Ed25519, KeyKind::EcP256] {
            assert!(kinds.contains(&kind), "{kinds:?}");
        }
        let der = |b64: &str| {
            base64::engine::general_purpose::STANDARD
                .decode(b64)
                .unwrap()
        };
        let ed25519 = Ed25519KeyPair::from_pkcs8(&der(ED25519_TEST_PRIVATE_KEY)).unwrap();
        let p256 = EcdsaKeyPair::from_pkcs8(
            &ECDSA_P256_SHA256_FIXED_SIGNING,
            &der(P256_TEST_PRIVATE_KEY),
        )
        .unwrap();
        // The private keys are the halves of the public JWKs.
        assert!(JWKS.contains(&URL_SAFE_NO_PAD.encode(ed25519.public_key().as_ref())));
        assert!(JWKS.contains(&URL_SAFE_NO_PAD.encode(&p256.public_key().as_ref()[1..33])));
        Fixture {
            keys: p.keys.clone(),
            policy: p.policy.clone(),
            config,
            ed25519,
            p256,
        }
    }

    /// Sign `input` (`header.payload`) as the header's `alg` says, with the test keys; any
    /// other alg gets an HS256 signature, which will not verify. Independent of the project's
    /// signer: aws-lc-rs directly, over the exact text.
    fn sign(&self, header_json: &[u8], input: &str) -> String {
        let alg = serde_json::from_slice::<Value>(header_json)
            .ok()
            .and_then(|h| h.get("alg").and_then(Value::as_str).map(String::from));
        let sig = match alg.as_deref() {
            Some("EdDSA") => self.ed25519.sign(input.as_bytes()).as_ref().to_vec(),
            Some("ES256") => self
                .p256
                .sign(&aws_lc_rs::rand::SystemRandom::new(), input.as_bytes())
                .unwrap()
                .as_ref()
                .to_vec(),
            _ => {
                let k = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, SECRET.as_bytes());
                aws_lc_rs::hmac::sign(&k, input.as_bytes())
                    .as_ref()
                    .to_vec()
            }
        };
        URL_SAFE_NO_PAD.encode(sig)
    }
}

thread_local! {
    static FIXTURE: Fixture = Fixture::new();
}

/// The token an input stands for. Text starting with `{` is JSON: a header line and a payload
/// (or just a payload, under an HS256 header), base64url-encoded as they are and signed with
/// the test keys. Anything else is a token, taken as it is.
pub fn token_of(data: &[u8]) -> Option<String> {
    let s = std::str::from_utf8(data).ok()?;
    if !s.trim_start().starts_with('{') {
        return Some(s.to_owned());
    }
    let (header, payload) = match s.split_once('\n') {
        Some((h, p)) if serde_json::from_str::<Map<String, Value>>(h).is_ok() => (h, p),
        _ => (DEFAULT_HEADER, s),
    };
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(payload)
    );
    let sig = FIXTURE.with(|f| f.sign(header.as_bytes(), &input));
    Some(format!("{input}.{sig}"))
}

/// The same header and payload segments as `token`, signed anew with the test keys: mutations
/// of a seed's segments then reach the claim checks under a good signature.
fn resigned(token: &str) -> Option<String> {
    let mut parts = token.split('.');
    let (h, p, _, None) = (parts.next()?, parts.next()?, parts.next()?, parts.next()) else {
        return None;
    };
    let header = LENIENT.decode(h).unwrap_or_default();
    let input = format!("{h}.{p}");
    let t = format!("{input}.{}", FIXTURE.with(|f| f.sign(&header, &input)));
    (t != token).then_some(t)
}

/// What [`check`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    pub verify: bool,
    pub configured: bool,
}

/// The verify_token target: the input's token, and the same segments re-signed.
pub fn verify_token(data: &[u8]) {
    if let Some(t) = token_of(data) {
        check(&t);
        if let Some(r) = resigned(&t) {
            check(&r);
        }
    }
}

/// The check `verify` refuses this token at, if it does.
pub fn refusal(token: &str) -> Option<Check> {
    FIXTURE.with(|f| {
        verify(token, &f.keys, &f.policy, NOW)
            .err()
            .map(|r| r.check)
    })
}

/// The explain rows of `verify` for this token, as text, for messages.
pub fn explain_text(token: &str) -> String {
    FIXTURE.with(|f| {
        explain(token, &f.keys, &f.policy, NOW)
            .iter()
            .map(|r| format!("{} {:?}: {}", r.check, r.ok, r.detail))
            .collect::<Vec<_>>()
            .join("\n")
    })
}

/// Every property of one token; panics when one does not hold.
pub fn check(t: &str) -> Verdict {
    FIXTURE.with(|f| {
        let v = verify(t, &f.keys, &f.policy, NOW);
        let rows = explain(t, &f.keys, &f.policy, NOW);
        // verify and explain run the same steps in the same order: the refusal is the first
        // row that did not pass, and a token is accepted exactly when every row passed.
        explain_agrees(t, "verify", v.as_ref().map_err(|r| r.check), &rows, true);
        let c = verify_configured(t, &f.config, NOW, &mut NoRemote).map_err(|e| match e {
            Error::Refused(r) => r,
            Error::Config(c) => panic!("a configuration error for a token: {c:?}"),
        });
        let crows = explain_configured(t, &f.config, NOW, &mut NoRemote);
        // The configured path picks the provider by iss before it looks at keys, so its refusal
        // need not be the first failing row; it must be a failing one.
        explain_agrees(
            t,
            "verify_configured",
            c.as_ref().map_err(|r| r.check),
            &crows,
            false,
        );
        // The same keys and rules through both paths: the same answer, the same result.
        match (&v, &c) {
            (Ok(a), Ok(b)) => assert_eq!(a, b, "{t}"),
            (Err(_), Err(_)) => {}
            _ => panic!("verify says {v:?}, verify_configured says {c:?}: {t}"),
        }
        if let Ok(p) = token::parse(t) {
            parsed_has_claims(&p.payload_json, &p.payload);
        }
        if let Ok(v) = &v {
            accepted(t, v);
        }
        // jws_verify takes the same stages without the claims: it accepts every token whose
        // refusal, if any, is a claim's, returning the payload as sent; and it refuses every
        // token verify refuses at the algorithm, the key or the signature, at the same check.
        // (A format refusal may be the payload's, which jws_verify does not read as JSON.)
        let j = verify_jws(t, &f.keys, None);
        match &v {
            Ok(a) => assert_eq!(Ok(a.payload.as_bytes()), j.as_deref(), "{t}"),
            Err(r) if CLAIM_CHECKS.contains(&r.check) => {
                let p = token::parse(t).expect("a token refused at a claim parses");
                assert_eq!(Ok(p.payload_json.as_bytes()), j.as_deref(), "{t}");
            }
            Err(r) if r.check != Check::Format => {
                assert_eq!(j.map_err(|e| e.check), Err(r.check), "{t}");
            }
            Err(_) => {}
        }
        Verdict {
            verify: v.is_ok(),
            configured: c.is_ok(),
        }
    })
}

fn explain_agrees(
    t: &str,
    what: &str,
    result: Result<&Verified, Check>,
    rows: &[ExplainRow],
    first: bool,
) {
    let checks: Vec<Check> = rows.iter().map(|r| r.check).collect();
    assert_eq!(checks, Check::TOKEN, "{what}: explain rows out of order: {t}");
    let failed: Vec<&ExplainRow> = rows.iter().filter(|r| r.ok != Some(true)).collect();
    match result {
        Ok(_) => assert!(
            failed.is_empty(),
            "{what} accepted a token explain refuses: {failed:?}: {t}"
        ),
        Err(check) => {
            assert!(
                !failed.is_empty(),
                "{what} refused ({check}) a token whose every explain row passed: {t}"
            );
            if first {
                assert_eq!(failed[0].check, check, "{what}: {rows:?}: {t}");
            } else {
                assert!(
                    failed.iter().any(|r| r.check == check),
                    "{what} refused at {check}, a row that passed: {rows:?}: {t}"
                );
            }
        }
    }
}

/// A payload that parses has a claim map, holding the registered claims the checks read, and
/// one-claim lookups (`get_claim()`, `get_feature_flag()`) read the same values as the map.
fn parsed_has_claims(payload_json: &str, registered: &Map<String, Value>) -> Map<String, Value> {
    let claims = token::full_claims(payload_json).unwrap_or_else(|r| {
        panic!("parse accepted a payload full_claims refuses ({r}): {payload_json}")
    });
    for k in token::REGISTERED {
        assert_eq!(registered.get(*k), claims.get(*k), "{k}: {payload_json}");
    }
    assert!(registered
        .keys()
        .all(|k| token::REGISTERED.contains(&k.as_str())));
    spans_agree(payload_json, &claims);
    claims
}

/// The JSON value of a piece of JSON text, read by the project's parser.
fn value_of(text: &str) -> Value {
    let mut m =
        token::full_claims(&format!("{{\"v\":{text}}}")).unwrap_or_else(|r| panic!("{r}: {text}"));
    m.remove("v").unwrap()
}

/// `member_spans` (what `get_claim()` hands out) and the claim map agree on every claim, and so
/// do the two feature-flag readers.
pub fn spans_agree(payload_json: &str, claims: &Map<String, Value>) {
    let spans = token::member_spans(payload_json);
    let a: BTreeSet<&String> = spans.keys().collect();
    let b: BTreeSet<&String> = claims.keys().collect();
    assert_eq!(a, b, "member_spans and full_claims: {payload_json}");
    for (k, &(s, e)) in &spans {
        assert_eq!(
            value_of(&payload_json[s..e]),
            claims[k],
            "{k}: {payload_json}"
        );
    }
    if let Some(&(s, e)) = spans.get("feature_flags") {
        let text = &payload_json[s..e];
        if let Some(Value::Object(flags)) = claims.get("feature_flags") {
            for name in flags.keys() {
                let by_map = claims::feature_flag(claims, name);
                let by_text = claims::feature_flag_json(text, name).map(value_of);
                assert_eq!(by_map, by_text.as_ref(), "flag {name}: {payload_json}");
            }
        }
    }
}

/// What holds for every accepted token, checked against the token's text, not the verifier's
/// reading of it.
fn accepted(t: &str, v: &Verified) {
    // Each segment is canonical unpadded base64url: decoding and encoding again gives it back.
    let segments: Vec<&str> = t.split('.').collect();
    assert_eq!(segments.len(), 3, "{t}");
    let mut decoded = vec![];
    for s in &segments {
        let bytes = LENIENT
            .decode(s)
            .unwrap_or_else(|e| panic!("accepted segment {s:?} is not base64url ({e})"));
        assert_eq!(
            URL_SAFE_NO_PAD.encode(&bytes),
            *s,
            "accepted segment is not canonical: {t}"
        );
        decoded.push(bytes);
    }
    assert!(!decoded[2].is_empty(), "accepted without a signature: {t}");
    // The payload handed out is the one signed, byte for byte.
    assert_eq!(v.payload.as_bytes(), &decoded[1][..], "{t}");
    let claims = parsed_has_claims(&v.payload, &v.registered);
    let parts = token::decode_parts(t).unwrap_or_else(|r| panic!("{r}: {t}"));
    assert_eq!(parts.header, v.header, "{t}");
    assert_eq!(parts.payload, claims, "{t}");
    // The rules, read off the claim map directly.
    assert_eq!(
        claims.get("iss").and_then(Value::as_str),
        Some(ISSUER),
        "{t}"
    );
    let sub = claims.get("sub").and_then(Value::as_str);
    assert!(sub.is_some_and(|s| !s.is_empty()), "{t}");
    assert_eq!(claims::subject(&claims), sub);
    let aud_ok = match claims.get("aud") {
        Some(Value::String(a)) => a == AUDIENCE,
        Some(Value::Array(a)) => {
            a.iter().all(Value::is_string) && a.iter().any(|x| x.as_str() == Some(AUDIENCE))
        }
        _ => false,
    };
    assert!(aud_ok, "aud: {t}");
    let exp = claims
        .get("exp")
        .and_then(Value::as_f64)
        .unwrap_or_else(|| panic!("accepted without a numeric exp: {t}"));
    assert_eq!(exp.floor() as i64, v.exp, "{t}");
    assert!(NOW < v.exp + LEEWAY, "accepted after exp + leeway: {t}");
    match claims.get("nbf") {
        None => {}
        Some(n) => {
            let nbf = n
                .as_f64()
                .unwrap_or_else(|| panic!("nbf not a number: {t}"));
            assert!(
                nbf.floor() as i64 <= NOW + LEEWAY,
                "accepted before nbf: {t}"
            );
        }
    }
    let alg = v.header.get("alg").and_then(Value::as_str);
    assert!(
        matches!(alg, Some("HS256" | "EdDSA" | "ES256")),
        "accepted alg {alg:?}: {t}"
    );
}

/// The parse_token target: every parser a token meets; what `parse` accepts has a claim map
/// and is what `decode_parts` and `parse_jws` read too.
pub fn parse_token(data: &[u8]) {
    let _ = token::parse_object(data, "payload");
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let _ = token::looks_like_compact(s);
    let parts = token::decode_parts(s);
    let jws = token::parse_jws(s);
    if let Ok(p) = token::parse(s) {
        let claims = parsed_has_claims(&p.payload_json, &p.payload);
        let parts = parts.unwrap_or_else(|r| panic!("parse accepts, decode_parts refuses: {r}"));
        assert_eq!(parts.header, p.header);
        assert_eq!(parts.payload, claims);
        assert_eq!(parts.payload_json, p.payload_json);
        assert_eq!(parts.signing_input, p.signing_input);
        assert_eq!(
            token::b64_decode(parts.signature_b64, "signature").ok(),
            Some(p.signature.clone())
        );
        // jws_verify's parser reads every token the token parser reads, the same way.
        let j = jws.unwrap_or_else(|r| panic!("parse accepts, parse_jws refuses: {r}"));
        assert_eq!(j.header, p.header);
        assert_eq!(j.payload, p.payload_json.as_bytes());
        assert_eq!(
            (j.signing_input, j.signature),
            (p.signing_input, p.signature)
        );
        assert_eq!((j.alg, j.kid), (p.alg, p.kid));
    }
}

/// The claims target: the Kinde claim helpers on any object the project's parser builds (as
/// `full_claims` and trusted `request.jwt.claims` do); the first line names what to look up.
pub fn claims(data: &[u8]) {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let (name, json) = s.split_once('\n').unwrap_or(("admin", s));
    let Ok(c) = token::parse_object(json.as_bytes(), "payload") else {
        return;
    };
    let sub = claims::subject(&c);
    let _ = claims::email(&c);
    let _ = claims::org_code(&c);
    let id = claims::token_identifier(&c);
    assert_eq!(
        id.is_some(),
        sub.is_some()
            && c.get("iss")
                .and_then(Value::as_str)
                .is_some_and(|i| !i.is_empty())
    );
    let _ = claims::has_permission(&c, name);
    let _ = claims::has_role(&c, name);
    let _ = claims::feature_flag(&c, name);
    spans_agree(json, &c);
}
