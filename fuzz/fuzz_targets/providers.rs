//! Settings text: providers JSON, inline JWKS, the HMAC secret, domain and URL settings, with
//! any input.
#![no_main]
use kinde_rls_core::config::{Config, Settings};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        let base = Settings {
            leeway: 30,
            require_sub: true,
            ..Default::default()
        };
        let _ = Config::from_settings(&Settings {
            providers: Some(s),
            ..base.clone()
        });
        let _ = Config::from_settings(&Settings {
            jwks: Some(s),
            ..base.clone()
        });
        let _ = Config::from_settings(&Settings {
            domain: Some(s),
            ..base.clone()
        });
        // The one rule for HMAC secrets, through the setting.
        let _ = Config::from_settings(&Settings {
            secret: Some(s),
            ..base.clone()
        });
        let _ = Config::from_settings(&Settings {
            jwks_url: Some(s),
            issuer: Some(s),
            audience: Some(s),
            ..base
        });
        let _ = kinde_rls_core::fetch::url_allowed(s);
    }
});
