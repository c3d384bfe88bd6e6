//! In-database tests: the SQL surface, settings and SQLSTATEs. Client-level tests as a
//! non-superuser, with tokens minted by PyJWT, live in tests/integration.

#[pgrx::pg_schema]
mod tests {
    use pgrx::prelude::*;

    use crate::pg_test_vectors as v;

    fn set(name: &str, value: &str) {
        Spi::run(&format!("SET {name} = '{value}'")).unwrap();
    }

    fn text(sql: &str) -> Option<String> {
        Spi::get_one::<String>(sql).unwrap()
    }

    #[pg_test]
    fn hs256_round_trip_and_identity() {
        set("kinde_rls.secret", v::SECRET);
        assert_eq!(
            text(&format!("SELECT verify_jwt('{}')->>'sub'", v::HS256_KP_A)).as_deref(),
            Some("kp_a")
        );
        set("kinde_rls.token", v::HS256_KP_A);
        assert_eq!(text("SELECT get_user_id()").as_deref(), Some("kp_a"));
        assert_eq!(text("SELECT get_email()").as_deref(), Some("a@example.com"));
        assert_eq!(
            Spi::get_one::<bool>("SELECT has_permission('read:todos')").unwrap(),
            Some(true)
        );
        assert_eq!(
            Spi::get_one::<bool>("SELECT has_permission('write:todos')").unwrap(),
            Some(false)
        );
    }

    #[pg_test]
    fn asymmetric_tokens_from_a_configured_key_set() {
        set("kinde_rls.jwks", v::JWKS);
        set("kinde_rls.issuer", "https://acme.kinde.com");
        for (token, sub) in [(v::RS256_KP_R, "kp_r"), (v::ES256_KP_E, "kp_e")] {
            assert_eq!(
                text(&format!("SELECT verify_jwt('{token}')->>'sub'")).as_deref(),
                Some(sub)
            );
        }
    }

    #[pg_test]
    fn anonymous_is_null() {
        assert_eq!(text("SELECT get_user_id()"), None);
        assert_eq!(
            Spi::get_one::<bool>("SELECT has_role('admin')").unwrap(),
            Some(false)
        );
    }

    #[pg_test(error = "JWT refused: signature check failed (invalid signature)")]
    fn tampered_token_is_refused() {
        set("kinde_rls.secret", v::SECRET);
        set("kinde_rls.token", v::HS256_TAMPERED);
        Spi::run("SELECT get_user_id()").unwrap();
    }

    /// The token cache is hashed on a token's length and signature tail: a token of the same
    /// length reusing a cached token's signature must be compared whole, and refused.
    #[pg_test(error = "JWT refused: signature check failed (invalid signature)")]
    fn same_signature_tail_as_a_cached_token_is_refused() {
        set("kinde_rls.secret", v::SECRET);
        set("kinde_rls.token", v::HS256_KP_A);
        assert_eq!(text("SELECT get_user_id()").as_deref(), Some("kp_a"));
        set("kinde_rls.token", v::HS256_SAME_TAIL_OTHER_PAYLOAD);
        Spi::run("SELECT get_user_id()").unwrap();
    }

    #[pg_test(error = "JWT refused: exp check failed (token expired)")]
    fn expired_is_refused() {
        set("kinde_rls.secret", v::SECRET);
        Spi::run(&format!("SELECT verify_jwt('{}')", v::HS256_EXPIRED)).unwrap();
    }

    #[pg_test(error = "no verification key is configured")]
    fn no_key_is_a_config_error() {
        Spi::run(&format!("SELECT verify_jwt('{}')", v::HS256_KP_A)).unwrap();
    }

    /// The identity cached for a token must not outlive the rules it was verified under: the
    /// same token, the same session, get_user_id() refused once the issuer changes.
    #[pg_test(error = "JWT refused: iss check failed (issuer not accepted)")]
    fn settings_change_invalidates_cache() {
        set("kinde_rls.secret", v::SECRET);
        set("kinde_rls.token", v::HS256_KP_A);
        assert_eq!(text("SELECT get_user_id()").as_deref(), Some("kp_a"));
        assert_eq!(text("SELECT get_user_id()").as_deref(), Some("kp_a"));
        set("kinde_rls.issuer", "https://other.kinde.com");
        Spi::run("SELECT get_user_id()").unwrap();
    }

    /// A panic inside the verifier (a bug) is a refusal of the token, never an XX000 that
    /// could be mistaken for something else; PostgreSQL's own errors pass through unchanged.
    #[pg_test]
    fn a_panic_in_the_verifier_is_a_refusal() {
        let r: Result<(), kinde_rls_core::Error> = crate::errors::guarded(|| panic!("a bug"));
        match r {
            Err(kinde_rls_core::Error::Refused(refusal)) => {
                assert_eq!(refusal.check, kinde_rls_core::Check::Format);
                assert!(
                    !refusal.message().contains("a bug"),
                    "{}",
                    refusal.message()
                );
            }
            other => panic!("not a refusal: {other:?}"),
        }
    }

    #[pg_test]
    fn explain_lists_every_check() {
        let n = Spi::get_one::<i64>("SELECT count(*) FROM jwt_explain('not.a.token')").unwrap();
        assert_eq!(n, Some(9));
    }

    #[pg_test]
    fn feature_flags_and_roles() {
        set("kinde_rls.secret", v::SECRET);
        set("kinde_rls.token", v::HS256_KINDE);
        assert_eq!(
            Spi::get_one::<bool>("SELECT has_role('admin')").unwrap(),
            Some(true)
        );
        assert_eq!(
            text("SELECT get_feature_flag('theme') #>> '{}'").as_deref(),
            Some("pink")
        );
        assert_eq!(text("SELECT get_org_code()").as_deref(), Some("org_1"));
    }

    #[pg_test]
    fn jwks_status_lists_configured_keys() {
        set("kinde_rls.secret", v::SECRET);
        Spi::run("SET kinde_rls.issuer = 'https://acme.kinde.com'").unwrap();
        let row = Spi::get_two::<String, i32>("SELECT source, keys FROM jwks_status()").unwrap();
        assert_eq!(row, (Some("configured".into()), Some(1)));
        Spi::run("SET kinde_rls.domain = 'https://acme.kinde.com'").unwrap();
        let n = Spi::get_one::<i64>(
            "SELECT count(*) FROM jwks_status() WHERE source = 'https://acme.kinde.com' AND fetched_at IS NULL",
        )
        .unwrap();
        assert_eq!(n, Some(1));
    }

    #[pg_test(error = "no key URL is configured: there is nothing to refresh")]
    fn refresh_without_a_url_is_a_config_error() {
        set("kinde_rls.secret", v::SECRET);
        Spi::run("SELECT refresh_jwks()").unwrap();
    }

    #[pg_test(
        error = "kinde_rls.jwks_url cannot be used: plain http:// is allowed only to loopback addresses, not \"example.com\""
    )]
    fn plain_http_to_a_remote_host_is_refused() {
        Spi::run("SET kinde_rls.jwks_url = 'http://example.com/jwks'").unwrap();
        Spi::run("SELECT verify_jwt('a.b.c')").unwrap();
    }
}
