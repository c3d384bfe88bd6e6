"""Trust-bearing settings are superuser-only, before and after the library loads, and the
secret cannot be read by other roles. Checked from fresh non-superuser connections."""

import os

import psycopg
import pytest
from helpers import one
from kinde import CLIENT_SECRET
from pg import Cluster

TRUST_BEARING = ["issuer", "audience", "jwks", "secret", "secret_file", "leeway", "trust_request_claims", "require_sub",
                 "cache_size", "domain", "jwks_url", "providers", "jwks_timeout_ms", "jwks_cache_ttl", "jwks_min_refresh"]


@pytest.mark.parametrize("name", TRUST_BEARING)
def test_non_superuser_cannot_set_trust_bearing_settings(cluster, name):
    with cluster.connect(user="app_user", dbname="app") as c:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            c.execute(f"SET kinde_rls.{name} = '1'")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            c.execute(f"SELECT set_config('kinde_rls.{name}', '1', true)")


def test_anyone_can_set_the_token(user_conn):
    user_conn.execute("SET kinde_rls.token = 'x'")
    user_conn.execute("RESET kinde_rls.token")


def test_secret_is_not_readable_by_non_superusers(cluster):
    with cluster.connect(user="app_user", dbname="app") as c:
        for sql in ["SHOW kinde_rls.secret", "SELECT current_setting('kinde_rls.secret')"]:
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                c.execute(sql)
        assert one(c, "SELECT count(*) FROM pg_settings WHERE name = 'kinde_rls.secret'") == 0
        assert one(c, "SELECT count(*) FROM pg_settings WHERE setting LIKE %s", (f"%{CLIENT_SECRET}%",)) == 0
    with cluster.connect(dbname="app") as su:
        su.execute(f"SET kinde_rls.secret = '{'s' * 40}'")
        assert one(su, "SHOW kinde_rls.secret") == "s" * 40


def test_secret_file_must_be_private_and_exclusive(cluster, signers, tmp_path):
    from pg import write_server_file

    t = signers["rsa"].sign({"sub": "a", "exp": 9999999999}, "RS256")
    public = os.path.join(cluster.dir, "public_secret")
    write_server_file(public, "p" * 40, 0o644)
    with cluster.connect(dbname="app") as su:
        su.execute(f"SET kinde_rls.secret_file = '{public}'")
        with pytest.raises(psycopg.Error) as ei:
            su.execute("SELECT verify_jwt(%s)", (t,))
        assert ei.value.sqlstate == "22023"
        assert "readable by other OS users" in ei.value.diag.message_primary
        assert "kinde_rls.secret_file" in ei.value.diag.message_hint
        su.execute("RESET kinde_rls.secret_file")
        su.execute(f"SET kinde_rls.secret = '{'s' * 40}'")
        with pytest.raises(psycopg.Error) as ei:
            su.execute("SELECT verify_jwt(%s)", (t,))
        assert ei.value.sqlstate == "22023"
        assert "only one" in ei.value.diag.message_hint
        su.execute("SET kinde_rls.secret_file = '/nonexistent/secret'")
        su.execute("RESET kinde_rls.secret")
        with pytest.raises(psycopg.Error) as ei:
            su.execute("SELECT verify_jwt(%s)", (t,))
        assert ei.value.sqlstate == "22023"


def test_secret_in_database_or_role_settings_is_refused(cluster):
    """pg_db_role_setting is readable by every role: a secret stored there would be public."""
    with cluster.connect(dbname="app") as su:
        for target in ["DATABASE app", "ROLE app_user"]:
            with pytest.raises(psycopg.Error) as ei:
                su.execute(f"ALTER {target} SET kinde_rls.secret = '{'s' * 40}'")
            assert ei.value.sqlstate == "22023"
            assert "every role can read" in ei.value.diag.message_primary
        assert one(su, "SELECT count(*) FROM pg_db_role_setting WHERE array_to_string(setconfig, ',') LIKE '%kinde_rls.secret%'") == 0


def test_short_secret_is_a_config_error_naming_the_setting(cluster, signers):
    with cluster.connect(dbname="app") as su:
        su.execute("RESET kinde_rls.secret_file")
        su.execute("SET kinde_rls.secret = 'too-short'")
        with pytest.raises(psycopg.Error) as ei:
            su.execute("SELECT verify_jwt(%s)", (signers["rsa"].sign({"sub": "a", "exp": 9999999999}, "RS256"),))
        assert ei.value.sqlstate == "22023"
        assert "kinde_rls.secret" in ei.value.diag.message_hint


def test_bad_jwks_is_a_config_error_naming_the_setting(cluster, signers):
    with cluster.connect(dbname="app") as su:
        su.execute("SET kinde_rls.jwks = '{\"keys\": 1}'")
        with pytest.raises(psycopg.Error) as ei:
            su.execute("SELECT verify_jwt(%s)", (signers["rsa"].sign({"sub": "a", "exp": 9999999999}, "RS256"),))
        assert ei.value.sqlstate == "22023"
        assert "kinde_rls.jwks" in ei.value.diag.message_hint


@pytest.fixture(scope="module")
def bare_cluster():
    """A cluster WITHOUT shared_preload_libraries, to pin down what that costs."""
    c = Cluster("nopreload", preload=False)
    try:
        c.psql("CREATE DATABASE app")
        with c.connect(dbname="app") as db:
            db.execute("CREATE EXTENSION kinde_rls")
            db.execute("CREATE ROLE app_user LOGIN")
        yield c
    finally:
        c.stop()


def test_early_set_by_non_superuser_is_refused_when_library_loads(bare_cluster):
    """A non-superuser SETs a placeholder before the library is loaded in that backend; loading
    the library re-checks it with that role's privileges and drops it."""
    with bare_cluster.connect(user="app_user", dbname="app") as c:
        c.execute("SET kinde_rls.issuer = 'https://evil.example'")
        c.execute("SET kinde_rls.trust_request_claims = 'on'")
        assert one(c, "SELECT get_user_id()") is None  # loads the library
        assert one(c, "SELECT current_setting('kinde_rls.issuer')") == ""
        assert one(c, "SELECT current_setting('kinde_rls.trust_request_claims')") == "off"
        with c.transaction():
            c.execute("""SELECT set_config('request.jwt.claims', '{"sub":"kp_peter"}', true)""")
            assert one(c, "SELECT get_user_id()") is None


def test_without_preload_a_conf_secret_is_a_readable_placeholder(bare_cluster):
    """Documented limitation: until a backend loads kinde_rls, a kinde_rls.secret line in
    postgresql.conf is a plain placeholder that any role can read. Hence: preload it."""
    with bare_cluster.connect(dbname="app") as su:
        su.execute("LOAD 'kinde_rls'")
        su.execute("ALTER SYSTEM SET kinde_rls.secret = 'placeholder-secret-0123456789abcdefghij'")
        su.execute("SELECT pg_reload_conf()")
    import time

    time.sleep(0.5)
    with bare_cluster.connect(user="app_user", dbname="app") as c:
        assert one(c, "SELECT current_setting('kinde_rls.secret', true)") == "placeholder-secret-0123456789abcdefghij"
        one(c, "SELECT get_user_id()")  # the library loads: the placeholder becomes the real, protected setting
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            c.execute("SHOW kinde_rls.secret")
    with bare_cluster.connect(dbname="app") as su:
        su.execute("ALTER SYSTEM RESET kinde_rls.secret")
        su.execute("SELECT pg_reload_conf()")


def test_secret_in_a_function_set_clause_is_refused(cluster):
    with cluster.connect(dbname="app") as su:
        with pytest.raises(psycopg.Error) as ei:
            su.execute(f"CREATE FUNCTION leaky() RETURNS int LANGUAGE sql SET kinde_rls.secret = '{'s' * 40}' AS 'SELECT 1'")
        assert ei.value.sqlstate == "22023"


def test_settings_per_role(cluster, signers):
    """A superuser scopes rules to a role: ALTER ROLE … IN DATABASE … SET."""
    from kinde import kinde_access_claims

    t = signers["rsa"].sign(kinde_access_claims("kp_role"), "RS256")
    with cluster.connect(dbname="app") as su:
        su.execute("CREATE ROLE strict_user LOGIN")
        su.execute("ALTER ROLE strict_user IN DATABASE app SET kinde_rls.audience = 'https://api.acme.com'")
    try:
        with cluster.connect(user="strict_user", dbname="app") as c:
            with pytest.raises(psycopg.Error) as ei:
                c.execute("SELECT verify_jwt(%s)", (t,))
            assert ei.value.sqlstate == "28000"
            assert ei.value.diag.message_primary.startswith("JWT refused: aud check failed")
        with cluster.connect(user="app_user", dbname="app") as c:
            assert one(c, "SELECT verify_jwt(%s)->>'sub'", (t,)) == "kp_role"
    finally:
        with cluster.connect(dbname="app") as su:
            su.execute("DROP OWNED BY strict_user")
            su.execute("ALTER ROLE strict_user IN DATABASE app RESET ALL")
            su.execute("DROP ROLE strict_user")
