//! In-database tests: the SQL surface, settings and SQLSTATEs. Client-level tests as a
//! non-superuser, with tokens minted by PyJWT, live in tests/integration.

#[pgrx::pg_schema]
mod tests {
    use pgrx::prelude::*;

    const SECRET: &str = "kinde-client-secret-0123456789abcdefghijklmnop";

    fn sign(claims: &str) -> String {
        Spi::get_one::<String>(&format!("SELECT sign_jwt('{claims}'::jsonb, '{SECRET}')"))
            .unwrap()
            .unwrap()
    }

    fn future() -> i64 {
        Spi::get_one::<i64>("SELECT extract(epoch FROM now())::bigint + 3600")
            .unwrap()
            .unwrap()
    }

    #[pg_test]
    fn hs256_round_trip_and_identity() {
        Spi::run(&format!("SET kinde_rls.secret = '{SECRET}'")).unwrap();
        let t = sign(&format!(
            r#"{{"sub":"kp_a","exp":{},"email":"a@example.com","permissions":["read:todos"]}}"#,
            future()
        ));
        let sub = Spi::get_one::<String>(&format!("SELECT verify_jwt('{t}')->>'sub'")).unwrap();
        assert_eq!(sub.as_deref(), Some("kp_a"));
        Spi::run(&format!("SET kinde_rls.token = '{t}'")).unwrap();
        assert_eq!(
            Spi::get_one::<String>("SELECT get_user_id()")
                .unwrap()
                .as_deref(),
            Some("kp_a")
        );
        assert_eq!(
            Spi::get_one::<String>("SELECT get_email()")
                .unwrap()
                .as_deref(),
            Some("a@example.com")
        );
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
    fn anonymous_is_null() {
        assert_eq!(
            Spi::get_one::<String>("SELECT get_user_id()").unwrap(),
            None
        );
        assert_eq!(
            Spi::get_one::<bool>("SELECT has_role('admin')").unwrap(),
            Some(false)
        );
    }

    #[pg_test(error = "JWT refused: signature check failed (invalid signature)")]
    fn tampered_token_is_refused() {
        Spi::run(&format!("SET kinde_rls.secret = '{SECRET}'")).unwrap();
        let t = sign(&format!(r#"{{"sub":"kp_a","exp":{}}}"#, future()));
        let forged = Spi::get_one::<String>(&format!(
            "SELECT sign_jwt('{{\"sub\":\"kp_a\",\"exp\":{}}}'::jsonb, 'another-secret-0123456789abcdefghijklmnop')",
            future()
        ))
        .unwrap()
        .unwrap();
        let sig = forged.rsplit('.').next().unwrap();
        let (body, _) = t.rsplit_once('.').unwrap();
        Spi::run(&format!("SET kinde_rls.token = '{body}.{sig}'")).unwrap();
        Spi::run("SELECT get_user_id()").unwrap();
    }

    #[pg_test(error = "JWT refused: exp check failed (token expired)")]
    fn expired_is_refused() {
        Spi::run(&format!("SET kinde_rls.secret = '{SECRET}'")).unwrap();
        let t = sign(r#"{"sub":"kp_a","exp":1000}"#);
        Spi::run(&format!("SELECT verify_jwt('{t}')")).unwrap();
    }

    #[pg_test(error = "no verification key is configured")]
    fn no_key_is_a_config_error() {
        let t = sign(&format!(r#"{{"sub":"kp_a","exp":{}}}"#, future()));
        Spi::run(&format!("SELECT verify_jwt('{t}')")).unwrap();
    }

    #[pg_test]
    fn settings_change_invalidates_cache() {
        Spi::run(&format!("SET kinde_rls.secret = '{SECRET}'")).unwrap();
        let t = sign(&format!(
            r#"{{"sub":"kp_a","exp":{},"iss":"https://acme.kinde.com"}}"#,
            future()
        ));
        Spi::run(&format!("SET kinde_rls.token = '{t}'")).unwrap();
        assert_eq!(
            Spi::get_one::<String>("SELECT get_user_id()")
                .unwrap()
                .as_deref(),
            Some("kp_a")
        );
        Spi::run("SET kinde_rls.issuer = 'https://other.kinde.com'").unwrap();
        let r = Spi::get_one::<bool>(&format!(
            "SELECT bool_and(ok) FROM jwt_explain('{t}') WHERE \"check\" = 'iss'"
        ))
        .unwrap();
        assert_eq!(r, Some(false));
    }

    #[pg_test]
    fn explain_lists_every_check() {
        let n = Spi::get_one::<i64>("SELECT count(*) FROM jwt_explain('not.a.token')").unwrap();
        assert_eq!(n, Some(9));
    }

    #[pg_test]
    fn feature_flags_and_roles() {
        Spi::run(&format!("SET kinde_rls.secret = '{SECRET}'")).unwrap();
        let t = sign(&format!(
            r#"{{"sub":"kp_a","exp":{},"org_code":"org_1","roles":[{{"id":"r","key":"admin","name":"Admin"}}],"feature_flags":{{"theme":{{"t":"s","v":"pink"}}}}}}"#,
            future()
        ));
        Spi::run(&format!("SET kinde_rls.token = '{t}'")).unwrap();
        assert_eq!(
            Spi::get_one::<bool>("SELECT has_role('admin')").unwrap(),
            Some(true)
        );
        assert_eq!(
            Spi::get_one::<String>("SELECT get_feature_flag('theme') #>> '{}'")
                .unwrap()
                .as_deref(),
            Some("pink")
        );
        assert_eq!(
            Spi::get_one::<String>("SELECT get_org_code()")
                .unwrap()
                .as_deref(),
            Some("org_1")
        );
    }

    #[pg_test]
    fn jwks_status_lists_configured_keys() {
        Spi::run(&format!("SET kinde_rls.secret = '{SECRET}'")).unwrap();
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
        Spi::run(&format!("SET kinde_rls.secret = '{SECRET}'")).unwrap();
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
