"""The SQL surface is a contract: names, signatures, volatility, parallel safety, schema."""

from helpers import one

EXPECTED = {
    # name(identity args) -> (result, volatility, parallel)
    "verify_jwt(token text)": ("jsonb", "s", "s"),
    "verify_jwt(token text, key text, algorithm text)": ("jsonb", "s", "s"),
    "jws_verify(jws text, key text)": ("bytea", "i", "s"),
    "jws_verify(jws text, key text, algorithm text)": ("bytea", "i", "s"),
    "sign_jwt(claims jsonb, key text, algorithm text)": ("text", "v", "s"),
    "sign_jwt(claims jsonb, key text, algorithm text, header jsonb)": ("text", "v", "s"),
    "jwt_decode_unverified(token text)": ("jsonb", "i", "s"),
    "jwt_explain(token text)": ("TABLE(\"check\" text, ok boolean, detail text)", "s", "s"),
    "get_user_id()": ("text", "s", "s"),
    "get_claims()": ("jsonb", "s", "s"),
    "get_claim(name text)": ("jsonb", "s", "s"),
    "get_email()": ("text", "s", "s"),
    "get_token_identifier()": ("text", "s", "s"),
    "get_org_code()": ("text", "s", "s"),
    "has_permission(permission text)": ("boolean", "s", "s"),
    "has_role(role_key text)": ("boolean", "s", "s"),
    "get_feature_flag(name text)": ("jsonb", "s", "s"),
    "refresh_jwks()": ("integer", "v", "u"),
    "jwks_status()": ("TABLE(issuer text, source text, keys integer, fetched_at timestamp with time zone, "
                      "expires_at timestamp with time zone, last_error text, ignored_keys text[], "
                      "warning text)", "v", "r"),
    "kinde_rls_stats()": ("TABLE(issuer text, verified bigint, cache_hits bigint, fast_path bigint, "
                          "anonymous bigint, trusted_claims bigint, refused_format bigint, "
                          "refused_algorithm bigint, refused_key bigint, refused_signature bigint, "
                          "refused_exp bigint, refused_nbf bigint, refused_iss bigint, refused_aud bigint, "
                          "refused_sub bigint, refused_scope bigint, fetches_ok bigint, fetches_failed bigint, "
                          "fetches_rate_limited bigint, verify_time_us bigint, verify_time_max_us bigint, "
                          "last_refusal timestamp with time zone, log_suppressed bigint, clock_skew_s bigint, "
                          "clock_skew_at timestamp with time zone, scope text, "
                          "stats_reset timestamp with time zone)", "v", "r"),
    "kinde_rls_stats_reset()": ("void", "v", "u"),
    "kinde_rls_check()": ("TABLE(level text, setting text, message text, hint text)", "v", "r"),
}


def test_functions_have_their_contract_signatures(su_conn):
    rows = su_conn.execute(
        """SELECT p.proname || '(' || pg_get_function_identity_arguments(p.oid) || ')',
                  pg_get_function_result(p.oid), p.provolatile::text, p.proparallel::text, n.nspname
           FROM pg_proc p JOIN pg_depend d ON d.objid = p.oid AND d.deptype = 'e'
           JOIN pg_extension e ON e.oid = d.refobjid AND e.extname = 'kinde_rls'
           JOIN pg_namespace n ON n.oid = p.pronamespace"""
    ).fetchall()
    got = {r[0]: (r[1], r[2], r[3]) for r in rows}
    assert got == EXPECTED
    assert {r[4] for r in rows} == {"public"}


def test_defaults_are_hs256(su_conn):
    args = one(su_conn, "SELECT pg_get_function_arguments('verify_jwt(text,text,text)'::regprocedure)")
    assert args == "token text, key text, algorithm text DEFAULT 'HS256'::text"
    args = one(su_conn, "SELECT pg_get_function_arguments('sign_jwt(jsonb,text,text)'::regprocedure)")
    assert args == "claims jsonb, key text, algorithm text DEFAULT 'HS256'::text"


def test_extension_is_trusted_and_not_relocatable(su_conn):
    row = su_conn.execute(
        "SELECT superuser, trusted, relocatable FROM pg_available_extension_versions WHERE name = 'kinde_rls'"
    ).fetchone()
    assert row == (True, True, False)


def test_get_user_id_drives_an_index_scan(su_conn):
    su_conn.execute("SET enable_seqscan = off")
    plan = "\n".join(r[0] for r in su_conn.execute("EXPLAIN SELECT * FROM todos WHERE user_id = get_user_id()"))
    assert "Index" in plan and "todos_user_id_idx" in plan, plan
