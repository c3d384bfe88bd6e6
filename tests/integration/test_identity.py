"""Request identity: where the token is found, caching, settings changes, and RLS on Kinde's
todo example as PostgREST and pooled apps use it — always as non-superuser roles."""

import json

import psycopg
import pytest
from helpers import one, refused, set_local
from psycopg import sql
from kinde import KINDE_ISS, hs256_resign, kinde_access_claims, kinde_id_claims


@pytest.fixture
def tokens(signers):
    rsa = signers["rsa"]
    return {
        "peter": rsa.sign(kinde_access_claims("kp_peter"), "RS256"),
        "mia": rsa.sign(kinde_access_claims("kp_mia", permissions=["read:todos"], roles=[]), "RS256"),
    }


@pytest.fixture
def seeded(cluster):
    """Rows of two users in todos (inserted by the superuser, who bypasses RLS), so a count that
    should be 0 is 0 because a policy filtered, not because the table is empty."""
    with cluster.connect(dbname="app") as su:
        su.execute("INSERT INTO todos (task, user_id) VALUES ('p', 'kp_peter'), ('m', 'kp_mia')")
    yield
    with cluster.connect(dbname="app") as su:
        su.execute("TRUNCATE todos")


SET_LOCAL_TOKEN = object()


def in_tx(conn, setup_sql, params, query, qparams=None):
    """Run `query` in a transaction after `setup_sql` (SET LOCAL …), the pooled-app pattern."""
    with conn.transaction():
        if setup_sql is SET_LOCAL_TOKEN:
            set_local(conn, "kinde_rls.token", params[0])
        else:
            conn.execute(setup_sql, params)
        return conn.execute(query, qparams).fetchall()


def test_no_token_is_anonymous(user_conn):
    assert one(user_conn, "SELECT get_user_id()") is None
    assert one(user_conn, "SELECT get_claims()") is None
    assert one(user_conn, "SELECT has_permission('read:todos')") is False
    assert one(user_conn, "SELECT has_role('admin')") is False


def test_identity_functions_from_kinde_rls_token(user_conn, tokens, signers):
    with user_conn.transaction():
        user_conn.execute("SELECT set_config('kinde_rls.token', %s, true)", (tokens["peter"],))
        assert one(user_conn, "SELECT get_user_id()") == "kp_peter"
        assert one(user_conn, "SELECT get_email()") == "kp_peter@example.com"
        assert one(user_conn, "SELECT get_org_code()") == "org_95755120efb"
        assert one(user_conn, "SELECT get_token_identifier()") == f"{KINDE_ISS}|kp_peter"
        assert one(user_conn, "SELECT get_claim('azp')") == "463db732edf24274970e395735e6d3e2"
        assert one(user_conn, "SELECT get_claim('nope')") is None
        assert one(user_conn, "SELECT get_claims()->>'jti'") is not None
        assert one(user_conn, "SELECT has_permission('write:todos')") is True
        assert one(user_conn, "SELECT has_permission('delete:todos')") is False
        assert one(user_conn, "SELECT has_role('admin')") is True
        assert one(user_conn, "SELECT get_feature_flag('theme')") == "pink"
        assert one(user_conn, "SELECT get_feature_flag('analytics')") is True
        assert one(user_conn, "SELECT get_feature_flag('limit')") == 7
        assert one(user_conn, "SELECT get_feature_flag('cfg')") == {"message": "hi"}
        assert one(user_conn, "SELECT get_feature_flag('missing')") is None
    # SET LOCAL ended with the transaction: anonymous again.
    assert one(user_conn, "SELECT get_user_id()") is None


def test_token_changes_within_a_session(user_conn, tokens):
    for who in ["peter", "mia", "peter"]:
        rows = in_tx(user_conn, SET_LOCAL_TOKEN, (tokens[who],), "SELECT get_user_id()")
        assert rows == [(f"kp_{who}",)]


def test_postgrest_request_headers(user_conn, tokens):
    headers = json.dumps({"authorization": f"Bearer {tokens['mia']}", "accept": "*/*"})
    rows = in_tx(user_conn, "SELECT set_config('request.headers', %s, true)", (headers,), "SELECT get_user_id()")
    assert rows == [("kp_mia",)]
    headers = json.dumps({"authorization": "Basic dXNlcjpwYXNz"})
    rows = in_tx(user_conn, "SELECT set_config('request.headers', %s, true)", (headers,), "SELECT get_user_id()")
    assert rows == [(None,)]


def test_compact_jwt_in_request_jwt_claims(user_conn, tokens):
    rows = in_tx(user_conn, "SELECT set_config('request.jwt.claims', %s, true)", (tokens["peter"],), "SELECT get_user_id()")
    assert rows == [("kp_peter",)]


def test_kinde_rls_token_wins_over_headers(user_conn, tokens):
    headers = json.dumps({"authorization": f"Bearer {tokens['mia']}"})
    with user_conn.transaction():
        user_conn.execute("SELECT set_config('request.headers', %s, true)", (headers,))
        user_conn.execute("SELECT set_config('kinde_rls.token', %s, true)", (tokens["peter"],))
        assert one(user_conn, "SELECT get_user_id()") == "kp_peter"


def test_spoofed_request_jwt_claims_are_ignored(user_conn, seeded, tokens):
    """The classic recipe trusts this JSON; anyone can SET it. We ignore it by default."""
    with user_conn.transaction():
        user_conn.execute("""SELECT set_config('request.jwt.claims', '{"sub":"kp_peter","role":"authenticated"}', true)""")
        assert one(user_conn, "SELECT get_user_id()") is None
        assert one(user_conn, "SELECT count(*) FROM todos") == 0
    # Control: with Peter's token the same query sees his row.
    rows = in_tx(user_conn, SET_LOCAL_TOKEN, (tokens["peter"],), "SELECT task FROM todos")
    assert rows == [("p",)]


def test_trust_request_claims_is_a_superuser_choice(cluster, db_settings):
    with cluster.connect(user="app_user", dbname="app") as c:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            c.execute("SET kinde_rls.trust_request_claims = on")
    db_settings("kinde_rls.trust_request_claims", "on")
    with cluster.connect(user="app_user", dbname="app") as c:
        claims = json.dumps(kinde_access_claims("kp_trusted", email="t@example.com"))
        rows = in_tx(c, "SELECT set_config('request.jwt.claims', %s, true)",
                     (claims,), "SELECT get_user_id(), get_email()")
        assert rows == [("kp_trusted", "t@example.com")]
        with pytest.raises(psycopg.Error) as ei:
            in_tx(c, "SELECT set_config('request.jwt.claims', %s, true)", ("[1,2]",), "SELECT get_user_id()")
        assert ei.value.sqlstate == "28000"


def test_bad_token_is_an_error_never_anonymous(user_conn, signers):
    bad = signers["stranger"].sign(kinde_access_claims("kp_peter"), "RS256")
    with user_conn.transaction():
        set_local(user_conn, "kinde_rls.token", bad)
        refused(user_conn, "SELECT get_user_id()", check="key")
    bad_headers = json.dumps({"authorization": "Bearer not-a-token"})
    with user_conn.transaction():
        user_conn.execute("SELECT set_config('request.headers', %s, true)", (bad_headers,))
        refused(user_conn, "SELECT count(*) FROM todos", check="format")


def test_expired_cached_token_is_refused_not_served(user_conn, signers):
    import time

    # exp 20 s ago: with the default 30 s leeway it verifies for about 10 more seconds (enough
    # for one query on a loaded machine), then the cached verification must not be served.
    claims = kinde_access_claims("kp_short", lifetime=-20)
    t = signers["rsa"].sign(claims, "RS256")
    with user_conn.transaction():
        set_local(user_conn, "kinde_rls.token", t)
        assert one(user_conn, "SELECT get_user_id()") == "kp_short"
    time.sleep(max(0.0, claims["exp"] + 30 + 1.5 - time.time()))
    with user_conn.transaction():
        set_local(user_conn, "kinde_rls.token", t)
        refused(user_conn, "SELECT get_user_id()", check="exp")


def test_settings_change_takes_effect_at_once(su_conn, tokens):
    """A superuser session: the cached verification must not outlive the rule it was made under."""
    su_conn.execute(sql.SQL("SET kinde_rls.token = {}").format(sql.Literal(tokens["peter"])))
    assert one(su_conn, "SELECT get_user_id()") == "kp_peter"
    su_conn.execute("SET kinde_rls.issuer = 'https://other.kinde.com'")
    refused(su_conn, "SELECT get_user_id()", check="iss")
    su_conn.execute(sql.SQL("SET kinde_rls.issuer = {}").format(sql.Literal(KINDE_ISS)))
    assert one(su_conn, "SELECT get_user_id()") == "kp_peter"
    su_conn.execute("SET kinde_rls.audience = 'api'")
    refused(su_conn, "SELECT get_user_id()", check="aud")
    su_conn.execute("RESET kinde_rls.audience")
    su_conn.execute("SET kinde_rls.jwks = '{\"keys\":[{\"kty\":\"OKP\",\"crv\":\"Ed25519\",\"x\":\"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo\"}]}'")
    refused(su_conn, "SELECT get_user_id()")
    su_conn.execute("RESET kinde_rls.jwks")
    assert one(su_conn, "SELECT get_user_id()") == "kp_peter"


@pytest.mark.parametrize("reset", ["DISCARD ALL", "RESET ALL"])
def test_reset_all_and_discard_all_forget_the_token(cluster, tokens, reset, seeded):
    """What session-mode poolers (PgBouncer's server_reset_query, Pgpool-II, Npgsql) run between
    clients: afterwards the connection is anonymous, also on the per-row fast path."""
    with cluster.connect(user="app_user", dbname="app") as c:
        c.execute("SELECT set_config('kinde_rls.token', %s, false)", (tokens["peter"],))
        assert one(c, "SELECT get_user_id()") == "kp_peter"
        assert one(c, "SELECT get_user_id()") == "kp_peter"  # the fast path is warm
        assert one(c, "SELECT count(*) FROM todos") == 1  # Peter's row
        c.execute(reset)
        assert one(c, "SELECT current_setting('kinde_rls.token', true)") in ("", None)
        assert one(c, "SELECT get_user_id()") is None
        assert one(c, "SELECT get_claims()") is None
        assert one(c, "SELECT count(*) FROM todos") == 0
        # RESET ALL resets what it should, and nothing it should not: setting a token again works.
        c.execute("SELECT set_config('kinde_rls.token', %s, false)", (tokens["mia"],))
        assert one(c, "SELECT get_user_id()") == "kp_mia"


def test_hs256_flow_identity(user_conn):
    t = hs256_resign(kinde_id_claims("kp_hs_user"))
    rows = in_tx(user_conn, SET_LOCAL_TOKEN, (t,), "SELECT get_user_id(), get_email()")
    assert rows == [("kp_hs_user", "kp_hs_user@example.com")]


# --- the todo example under RLS --------------------------------------------------------------

def as_user(conn, role, token, sql, params=None):
    """What PostgREST does per request: SET LOCAL ROLE, the token for this request, the query."""
    with conn.transaction():
        conn.execute(f"SET LOCAL ROLE {role}")
        if token:
            conn.execute("SELECT set_config('request.headers', %s, true)",
                         (json.dumps({"authorization": f"Bearer {token}"}),))
        cur = conn.execute(sql, params)
        return cur.fetchall() if cur.description else cur.rowcount


def test_todos_two_users_each_see_only_their_own(cluster, tokens):
    with cluster.connect(user="authenticator", dbname="app") as c:
        as_user(c, "authenticated", tokens["peter"], "INSERT INTO todos (task) VALUES ('peter 1'), ('peter 2')")
        as_user(c, "authenticated", tokens["mia"], "INSERT INTO todos (task) VALUES ('mia 1')")
        peter = as_user(c, "authenticated", tokens["peter"], "SELECT task, user_id FROM todos ORDER BY task")
        mia = as_user(c, "authenticated", tokens["mia"], "SELECT task, user_id FROM todos ORDER BY task")
        assert peter == [("peter 1", "kp_peter"), ("peter 2", "kp_peter")]
        assert mia == [("mia 1", "kp_mia")]
        assert as_user(c, "anon", None, "SELECT count(*) FROM todos") == [(0,)]
        # Mia cannot touch Peter's rows, nor write rows in his name.
        assert as_user(c, "authenticated", tokens["mia"], "UPDATE todos SET completed_state = true WHERE user_id = 'kp_peter'") == 0
        assert as_user(c, "authenticated", tokens["mia"], "DELETE FROM todos WHERE task LIKE 'peter%'") == 0
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            as_user(c, "authenticated", tokens["mia"], "INSERT INTO todos (task, user_id) VALUES ('forged', 'kp_peter')")
        assert as_user(c, "authenticated", tokens["peter"], "UPDATE todos SET completed_state = true WHERE task = 'peter 1'") == 1
        assert as_user(c, "authenticated", tokens["peter"], "DELETE FROM todos WHERE task = 'peter 2'") == 1
        assert as_user(c, "authenticated", tokens["peter"], "SELECT task, completed_state FROM todos") == [("peter 1", True)]
    with cluster.connect(dbname="app") as su:
        su.execute("TRUNCATE todos")


def test_todos_tampered_token_is_refused(cluster, tokens):
    h, _, sig = tokens["peter"].split(".")
    import base64

    body = base64.urlsafe_b64encode(json.dumps(kinde_access_claims("kp_mia")).encode()).rstrip(b"=").decode()
    with cluster.connect(user="authenticator", dbname="app") as c:
        with pytest.raises(psycopg.Error) as ei:
            as_user(c, "authenticated", f"{h}.{body}.{sig}", "SELECT * FROM todos")
        assert ei.value.sqlstate == "28000"
        assert ei.value.diag.message_primary == "JWT refused: signature check failed (invalid signature)"


def test_pooled_app_pattern_with_set_local(cluster, tokens):
    with cluster.connect(user="app_user", dbname="app") as c:
        with c.transaction():
            set_local(c, "kinde_rls.token", tokens["peter"])
            c.execute("INSERT INTO todos (task) VALUES ('pooled')")
        rows = in_tx(c, SET_LOCAL_TOKEN, (tokens["peter"],), "SELECT task, user_id FROM todos")
        assert rows == [("pooled", "kp_peter")]
        rows = in_tx(c, SET_LOCAL_TOKEN, (tokens["mia"],), "SELECT task FROM todos")
        assert rows == []
        assert c.execute("SELECT count(*) FROM todos").fetchone() == (0,)
    with cluster.connect(dbname="app") as su:
        su.execute("TRUNCATE todos")
