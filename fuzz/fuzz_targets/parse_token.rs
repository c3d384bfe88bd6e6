//! Token parsing: any bytes, as text, through every parser a token meets.
#![no_main]
use kinde_rls_core::token;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = token::looks_like_compact(s);
        let _ = token::decode_parts(s);
        if let Ok(p) = token::parse(s) {
            // What parse validated, full_claims must be able to build.
            let _ = token::full_claims(&p.payload_json);
        }
        let _ = token::parse_object(data, "payload");
    }
});
