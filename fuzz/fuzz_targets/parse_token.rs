//! Token parsing: any bytes, as text, through every parser a token meets. What `parse` accepts
//! must have a claim map (full_claims) holding its registered claims, one-claim lookups that
//! agree with that map, and the same reading by decode_parts.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| kinde_rls_fuzz::parse_token(data));
