//! Kinde claim helpers (permissions, roles, feature flags, identifiers) on any JSON object the
//! project's parser builds. The one-claim readers (member spans, feature_flag_json) must agree
//! with the claim map.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| kinde_rls_fuzz::claims(data));
