"""Signing in to PostgreSQL 18 with Kinde: kinde_rls as the OAuth validator
(`oauth_validator_libraries`), and the login's verified user in get_user_id().

A cluster of its own listening on 127.0.0.1, with `oauth` lines in pg_hba.conf naming the loopback
mock issuer. psql from the PostgreSQL 18 build (libpq with libcurl) runs the device authorization
flow against the mock issuer, which approves at once and hands out whatever token the test chose
(minted with PyJWT): so each case is one real login, the way an analyst's psql makes it.
PGOAUTHDEBUG=UNSAFE lets libpq talk plain http to the loopback issuer (tests only).
"""

import os
import subprocess
import tempfile
import time

import pytest

from issuer import MockIssuer
from kinde import Signer
from pg import BINDIR, CRASH_LINES, PG_CONFIG, Cluster, write_server_file

PG_MAJOR = int(subprocess.check_output([PG_CONFIG, "--version"], text=True).split()[1].split(".")[0])
pytestmark = pytest.mark.skipif(PG_MAJOR < 18, reason="OAuth sign-in needs PostgreSQL 18")

AUD = "api://todos"
SCOPE = "openid db"
CLIENT_ID = "psql-analysts"


@pytest.fixture(scope="module")
def kinde():
    i = MockIssuer()
    yield i
    i.stop()


@pytest.fixture(scope="module")
def workos():
    """A second configured provider: its tokens verify, but no pg_hba.conf line names it."""
    i = MockIssuer()
    yield i
    i.stop()


@pytest.fixture(scope="module")
def hmac_issuer():
    """An issuer whose provider verifies with an HMAC secret (inline JWKS, HS256): its tokens
    verify, but a secret shared with applications cannot sign a login."""
    i = MockIssuer()
    yield i
    i.stop()


HMAC_SECRET = "login-hmac-secret-0123456789abcdefghijklmnop"


def hanging_issuer():
    i = MockIssuer()
    i.mode = "hang_keys"
    i.hang_seconds = 30
    return i


@pytest.fixture(scope="module")
def slow():
    """A provider whose key endpoint hangs: a login must still end, refused, in bounded time."""
    i = hanging_issuer()
    yield i
    i.stop()


@pytest.fixture(scope="module")
def slower():
    """Another, so that no earlier failed fetch (and its back-off) stands in its way."""
    i = hanging_issuer()
    yield i
    i.stop()


OTHER_VALIDATOR = "kinde_rls_test_permissive"


def hba_line(role, issuer, scope=SCOPE, extra="map=kinde", validator="kinde_rls"):
    return (f'host app {role} 127.0.0.1/32 oauth issuer="{issuer.iss}" scope="{scope}"'
            f' validator={validator} {extra}\n')


@pytest.fixture(scope="module")
def other_validator():
    """validators/permissive.c, built and installed next to kinde_rls for this module only."""
    src = os.path.join(os.path.dirname(__file__), "validators", "permissive.c")
    inc = subprocess.check_output([PG_CONFIG, "--includedir-server"], text=True).strip()
    pkglib = subprocess.check_output([PG_CONFIG, "--pkglibdir"], text=True).strip()
    target = os.path.join(pkglib, OTHER_VALIDATOR + ".so")
    subprocess.run(["cc", "-shared", "-fPIC", "-O2", "-I", inc, "-o", target, src], check=True)
    yield OTHER_VALIDATOR
    os.unlink(target)


@pytest.fixture(scope="module")
def cluster(kinde, workos, slow, slower, other_validator):
    providers = (
        f'[{{"issuer": "{kinde.iss}", "jwks_url": "{kinde.jwks_url}", "audience": "{AUD}"}},'
        f' {{"issuer": "{workos.iss}", "jwks_url": "{workos.jwks_url}", "audience": "{AUD}"}},'
        f' {{"issuer": "{slow.iss}", "jwks_url": "{slow.jwks_url}", "audience": "{AUD}"}},'
        f' {{"issuer": "{slower.iss}", "jwks_url": "{slower.jwks_url}", "audience": "{AUD}"}}]'
    )
    c = Cluster("oauth", preload=True, conf={
        "listen_addresses": "'127.0.0.1'",
        "oauth_validator_libraries": f"'kinde_rls, {other_validator}'",
        "kinde_rls.providers": "'" + providers.replace("'", "''") + "'",
        "kinde_rls.leeway": "0",
        "kinde_rls.jwks_timeout_ms": "1000",
        "log_connections": "on",
    })
    try:
        hba = os.path.join(c.data, "pg_hba.conf")
        write_server_file(hba, "".join([
            "local all all trust\n",
            hba_line("analyst", kinde),
            hba_line("org_a_role", kinde, extra="map=kinde_org"),
            hba_line("slow_role", slow),
            hba_line("slower_role", slower),
            hba_line("wellknown_role", kinde).replace(
                f'issuer="{kinde.iss}"', f'issuer="{kinde.iss}/.well-known/openid-configuration"'),
            hba_line("delegated", kinde, extra="delegate_ident_mapping=1"),
            hba_line("mallory", kinde, extra="map=other", validator=other_validator),
        ]), 0o600)
        ident = os.path.join(c.data, "pg_ident.conf")
        write_server_file(ident, "".join([
            "kinde /^.*$ analyst\n",
            "kinde_org /^org_a/[^/]+$ org_a_role\n",
            "other kp_alice mallory\n",
        ]), 0o600)
        with c.connect() as su:
            su.execute("CREATE DATABASE app")
        with c.connect(dbname="app") as db:
            db.execute("CREATE EXTENSION kinde_rls")
            root = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
            db.execute(open(os.path.join(root, "sql", "examples", "todos.sql")).read())
            for role in ("analyst", "org_a_role", "slow_role", "slower_role", "delegated", "mallory",
                         "wellknown_role"):
                db.execute(f"CREATE ROLE {role} LOGIN IN ROLE authenticated")
            db.execute("INSERT INTO todos (task, user_id) VALUES"
                       " ('alice: call the bank', 'kp_alice'), ('alice: file taxes', 'kp_alice'),"
                       " ('bob: water plants', 'kp_bob')")
            # Enough rows for a parallel plan when one is forced.
            db.execute("CREATE TABLE big AS SELECT g, CASE WHEN g % 2 = 0 THEN 'kp_alice' ELSE 'kp_bob' END"
                       " AS user_id FROM generate_series(1, 20000) g")
            db.execute("ALTER TABLE big ENABLE ROW LEVEL SECURITY")
            db.execute("CREATE POLICY mine ON big USING (user_id = get_user_id())")
            db.execute("GRANT SELECT ON big TO authenticated")
        c.restart()  # the new pg_hba.conf and pg_ident.conf in force before the first login
        yield c
    finally:
        c.stop()


def token_for(issuer, sub, lifetime=3600, **extra):
    extra.setdefault("aud", [AUD])
    extra.setdefault("scp", ["openid", "profile", "db"])
    return issuer.token(sub, lifetime=lifetime, **extra)


USED_TOKENS = []


def sign_in(cluster, issuer, token, sql, role="analyst", timeout=60, options=None, oauth_issuer=None):
    """psql signs in through the device flow at `issuer`, which hands out `token`, and runs
    `sql` (a script: statements run on after an error). Returns (returncode, stdout, stderr)."""
    USED_TOKENS.append(token)
    issuer.device_token = token
    with tempfile.NamedTemporaryFile("w", suffix=".sql", delete=False) as f:
        f.write("\\set VERBOSITY verbose\n" + sql + "\n")
        script = f.name
    env = dict(os.environ, PGOAUTHDEBUG="UNSAFE", PGCONNECT_TIMEOUT="60")
    libdir = subprocess.check_output([PG_CONFIG, "--libdir"], text=True).strip()
    env["LD_LIBRARY_PATH"] = libdir
    if options:
        env["PGOPTIONS"] = options
    conninfo = (f"host=127.0.0.1 port={cluster.port} dbname=app user={role}"
                f" oauth_issuer={oauth_issuer or issuer.iss} oauth_client_id={CLIENT_ID}")
    try:
        r = subprocess.run([f"{BINDIR}/psql", "-X", "-A", "-t", "-q", "-d", conninfo, "-f", script],
                           capture_output=True, text=True, timeout=timeout, env=env,
                           stdin=subprocess.DEVNULL)
    finally:
        os.unlink(script)
    return r.returncode, r.stdout.strip(), r.stderr


def signed_in(cluster, issuer, token, sql, **kw):
    since = cluster.log_size()
    code, out, err = sign_in(cluster, issuer, token, sql, **kw)
    assert code == 0 and "ERROR" not in err, (code, out, err, cluster.log_since(since))
    return out


def test_libpq_was_built_for_the_device_flow():
    assert "--with-libcurl" in subprocess.check_output([PG_CONFIG, "--configure"], text=True)


def test_a_login_is_the_kinde_user(cluster, kinde):
    kinde.device_requests.clear()
    out = signed_in(cluster, kinde, token_for(kinde, "kp_alice"),
                    "SELECT get_user_id(), system_user, current_user, get_claims()->>'email';")
    assert out == "kp_alice|oauth:kp_alice|analyst|kp_alice@example.com"
    # The device flow asked for the pg_hba.conf line's scope, as the configured client.
    device = [form for endpoint, form in kinde.device_requests if endpoint == "device"]
    assert device and device[-1]["client_id"] == CLIENT_ID and device[-1]["scope"] == SCOPE


def test_rls_shows_only_the_login_users_rows(cluster, kinde):
    out = signed_in(cluster, kinde, token_for(kinde, "kp_alice"), """
        SELECT string_agg(task, ',' ORDER BY task) FROM todos;
        INSERT INTO todos (task) VALUES ('alice: new') RETURNING user_id;
        UPDATE todos SET completed_state = true WHERE user_id = 'kp_bob' RETURNING id;
        SELECT count(*) FROM big;
        SET debug_parallel_query = on;
        SET parallel_setup_cost = 0; SET parallel_tuple_cost = 0; SET min_parallel_table_scan_size = 0;
        SELECT count(*), count(DISTINCT user_id) FROM big;
        SELECT get_user_id(), get_claims()->>'email';
    """)
    assert out.splitlines() == [
        "alice: call the bank,alice: file taxes",
        "kp_alice",
        "10000",
        "10000|1",
        "kp_alice|kp_alice@example.com",
    ]
    with cluster.connect(dbname="app") as su:
        assert su.execute("SELECT count(*) FROM todos WHERE completed_state").fetchone()[0] == 0
        su.execute("DELETE FROM todos WHERE task = 'alice: new'")


def test_an_app_supplies_the_token_through_libpqs_hook(cluster, kinde, monkeypatch):
    """An app that already holds a Kinde token (asked for with its API audience) hands it to
    libpq through the auth-data hook (PQAUTHDATA_OAUTH_BEARER_TOKEN) instead of the device flow:
    what the README shows, through libpq's C API."""
    import ctypes

    monkeypatch.setenv("PGOAUTHDEBUG", "UNSAFE")  # the loopback issuer is plain http
    libdir = subprocess.check_output([PG_CONFIG, "--libdir"], text=True).strip()
    pq = ctypes.CDLL(os.path.join(libdir, "libpq.so.5"))

    class Request(ctypes.Structure):
        _fields_ = [("openid_configuration", ctypes.c_char_p), ("scope", ctypes.c_char_p),
                    ("async_", ctypes.c_void_p), ("cleanup", ctypes.c_void_p),
                    ("token", ctypes.c_void_p), ("user", ctypes.c_void_p)]

    PQAUTHDATA_OAUTH_BEARER_TOKEN = 1
    token = ctypes.create_string_buffer(token_for(kinde, "kp_alice").encode())
    USED_TOKENS.append(token.value.decode())
    asked = []
    hook_type = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p)

    @hook_type
    def hook(kind, conn, data):
        if kind != PQAUTHDATA_OAUTH_BEARER_TOKEN:
            return 0
        req = ctypes.cast(data, ctypes.POINTER(Request)).contents
        asked.append((req.openid_configuration, req.scope))
        req.token = ctypes.addressof(token)
        return 1

    pq.PQsetAuthDataHook(hook)
    pq.PQconnectdb.restype = ctypes.c_void_p
    pq.PQexec.restype = ctypes.c_void_p
    pq.PQexec.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
    pq.PQgetvalue.restype = ctypes.c_char_p
    pq.PQgetvalue.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int]
    pq.PQstatus.argtypes = [ctypes.c_void_p]
    pq.PQerrorMessage.argtypes = [ctypes.c_void_p]
    pq.PQerrorMessage.restype = ctypes.c_char_p
    pq.PQfinish.argtypes = [ctypes.c_void_p]
    pq.PQclear.argtypes = [ctypes.c_void_p]
    conn = pq.PQconnectdb((f"host=127.0.0.1 port={cluster.port} dbname=app user=analyst"
                           f" oauth_issuer={kinde.iss} oauth_client_id={CLIENT_ID}").encode())
    try:
        assert pq.PQstatus(conn) == 0, pq.PQerrorMessage(conn)
        res = pq.PQexec(conn, b"SELECT get_user_id(), system_user")
        assert (pq.PQgetvalue(res, 0, 0), pq.PQgetvalue(res, 0, 1)) == (b"kp_alice", b"oauth:kp_alice")
        pq.PQclear(res)
    finally:
        pq.PQfinish(conn)
        pq.PQsetAuthDataHook(None)
    # The server told the hook where to find the issuer and which scopes to ask for.
    assert asked == [(f"{kinde.iss}/.well-known/openid-configuration".encode(), SCOPE.encode())]


def test_a_request_token_wins_over_the_login(cluster, kinde):
    bob = token_for(kinde, "kp_bob")
    USED_TOKENS.append(bob)
    out = signed_in(cluster, kinde, token_for(kinde, "kp_alice"), f"""
        BEGIN; SET LOCAL kinde_rls.token = '{bob}';
        SELECT get_user_id(), string_agg(task, ',') FROM todos;
        COMMIT;
        SELECT get_user_id();
        RESET ALL; DISCARD ALL;
        SELECT get_user_id(), system_user;
    """)
    assert out.splitlines() == ["kp_bob|bob: water plants", "kp_alice", "kp_alice|oauth:kp_alice"]


def login_refusals(cluster, since):
    return [line for line in cluster.log_since(since).splitlines() if "kinde_rls: login refused" in line]


@pytest.mark.parametrize("case,check", [
    ("expired", "exp"),
    ("other issuer", "iss"),
    ("missing scope", "scope"),
    ("bad signature", "signature"),
    ("unknown key", "key"),
    ("other audience", "aud"),
    ("no sub", "sub"),
    ("not a token", "format"),
])
def test_a_refused_token_is_a_failed_login(cluster, kinde, workos, case, check):
    if case == "expired":
        token = kinde.sign({**kinde.claims("kp_alice", aud=[AUD], scp=["db", "openid"]),
                            "exp": int(time.time()) - 60})
    elif case == "other issuer":
        # Verifies (workos is a configured provider), but the line names the Kinde issuer.
        token = token_for(workos, "kp_alice")
    elif case == "missing scope":
        token = token_for(kinde, "kp_alice", scp=["openid", "profile"])
    elif case == "bad signature":
        h, p, s = token_for(kinde, "kp_alice").split(".")
        token = ".".join([h, p, s[:20] + ("A" if s[20] != "A" else "B") + s[21:]])
    elif case == "unknown key":
        token = kinde.sign(kinde.claims("kp_alice", aud=[AUD], scp=["openid", "db"]), signer=Signer("rsa"))
    elif case == "other audience":
        token = token_for(kinde, "kp_alice", aud=["api://billing"])
    elif case == "no sub":
        claims = kinde.claims("kp_alice", aud=[AUD], scp=["openid", "db"])
        del claims["sub"]
        token = kinde.sign(claims)
    else:
        token = "not-a-jwt"
    since = cluster.log_size()
    code, out, err = sign_in(cluster, kinde, token, "SELECT get_user_id();")
    assert code != 0 and out == "", (code, out, err)
    assert 'OAuth bearer authentication failed for user "analyst"' in err
    lines = login_refusals(cluster, since)
    assert len(lines) == 1, cluster.log_since(since)
    assert f"kinde_rls: login refused: JWT refused: {check} check failed" in lines[0]
    if case == "other issuer":
        # The token's own iss against the line's, not only the keys' issuer.
        assert f'is not the issuer "{kinde.iss}" of the pg_hba.conf line' in cluster.log_since(since)
    log = cluster.log_since(since)
    assert "role=\"analyst\" client=127.0.0.1" in log
    assert token not in log and token.split(".")[-1] not in log


def test_each_refused_login_is_counted_under_its_issuer(cluster, kinde, workos):
    """The refusals of the test above, one per check, in the statistics (server-wide: preloaded)."""
    cols = "refused_format, refused_signature, refused_key, refused_exp, refused_iss, refused_aud, refused_sub, refused_scope"
    with cluster.connect(dbname="app") as su:
        rows = {r[0]: r[1:] for r in su.execute(f"SELECT issuer, {cols} FROM kinde_rls_stats")}
    assert rows[kinde.iss] == (0, 1, 1, 1, 0, 1, 1, 1)
    assert rows[workos.iss] == (0, 0, 0, 0, 1, 0, 0, 0)
    assert rows[None][0] == 1


def test_the_login_identity_ends_at_exp(cluster, kinde):
    """After the login token's exp (leeway 0 here), the session has no identity: every call that
    needs one is refused with 28000, so RLS shows nothing; a request token still works."""
    bob = token_for(kinde, "kp_bob")
    USED_TOKENS.append(bob)
    token = token_for(kinde, "kp_alice", lifetime=10)
    exp = int(time.time()) + 10
    code, out, err = sign_in(cluster, kinde, token, f"""
        SELECT get_user_id();
        SELECT pg_sleep(greatest(0, {exp} + 1.2 - extract(epoch FROM clock_timestamp())));
        SELECT 'after', get_user_id();
        SELECT count(*) FROM todos;
        SELECT system_user;
        BEGIN; SET LOCAL kinde_rls.token = '{bob}'; SELECT get_user_id(); COMMIT;
    """)
    lines = [line for line in out.splitlines() if line]
    assert lines[0] == "kp_alice"
    assert lines[-2:] == ["oauth:kp_alice", "kp_bob"], (out, err)
    assert "after" not in out
    errors = [line for line in err.splitlines() if "ERROR:" in line]
    assert len(errors) == 2, err
    for e in errors:
        assert "ERROR:  28000: JWT refused: exp check failed (the login token expired; sign in again)" in e


def test_the_login_identity_cannot_be_set_or_forged(cluster, kinde):
    """Only the validator sets the login identity; a session that did not sign in with a token
    has none, even when a superuser hands it the setting at connection start."""
    import psycopg
    forged = '{"until": 9999999999, "row": 0, "authn_id": "kp_alice", "payload": "{\\"sub\\":\\"kp_alice\\"}"}'
    with cluster.connect(dbname="app") as su:
        su.execute("CREATE ROLE plain LOGIN IN ROLE authenticated")
    with cluster.connect(user="plain", dbname="app") as c:
        with pytest.raises(psycopg.Error) as ei:
            c.execute("SELECT set_config('kinde_rls.login_identity', %s, false)", (forged,))
        assert ei.value.sqlstate in ("55P02", "42501")
        with pytest.raises(psycopg.Error) as ei:
            c.execute("SELECT current_setting('kinde_rls.login_identity')")
        assert ei.value.sqlstate == "42501"
    opts = "-c kinde_rls.login_identity=" + forged.replace(" ", "\\ ").replace('"', '\\"')
    with psycopg.connect(cluster.conninfo("postgres", "app"), options=opts, autocommit=True) as c:
        assert c.execute("SELECT get_user_id()").fetchone()[0] is None
        c.execute("SET debug_parallel_query = on")
        assert c.execute("SELECT get_user_id() FROM big LIMIT 1").fetchone()[0] is None


def test_a_login_through_another_validator_has_no_identity(cluster, kinde):
    """A session another validator signed in (auth_method oauth too) has no kinde_rls login, in
    its leader and in its parallel workers, even when a role the superuser allowed to set
    kinde_rls.login_identity hands it a forged value at connection start."""
    with cluster.connect(dbname="app") as su:
        su.execute("GRANT SET ON PARAMETER kinde_rls.login_identity TO mallory")
        su.execute("GRANT pg_read_all_settings TO mallory")
    forged_payload = f'{{"iss": "{kinde.iss}", "aud": ["{AUD}"], "sub": "kp_bob", "exp": 9999999999}}'
    forged = ('{"until": 9999999999, "row": 0, "authn_id": "kp_alice", "payload": '
              + '"' + forged_payload.replace('"', '\\"') + '"}')
    options = "-c kinde_rls.login_identity=" + forged.replace("\\", "\\\\").replace(" ", "\\ ")
    sql = """
        SELECT coalesce(get_user_id(), 'nobody'), system_user;
        SELECT count(*) FROM big;
        SET debug_parallel_query = on;
        SET parallel_setup_cost = 0; SET parallel_tuple_cost = 0; SET min_parallel_table_scan_size = 0;
        SELECT count(*) FROM big;
        SET parallel_leader_participation = off;
        SELECT count(*) FROM big;
    """
    try:
        for opts in (None, options):
            out = signed_in(cluster, kinde, "kp_alice", sql, role="mallory", options=opts)
            assert out.splitlines() == ["nobody|oauth:kp_alice", "0", "0", "0"], (opts, out)
        # The forged value did reach the session: only its source kept the workers from it.
        out = signed_in(cluster, kinde, "kp_alice",
                        "SELECT current_setting('kinde_rls.login_identity') <> '';",
                        role="mallory", options=options)
        assert out == "t"
    finally:
        with cluster.connect(dbname="app") as su:
            su.execute("REVOKE SET ON PARAMETER kinde_rls.login_identity FROM mallory")
            su.execute("REVOKE pg_read_all_settings FROM mallory")


@pytest.mark.parametrize("commit", [False, True], ids=["one transaction", "a transaction per loop"])
def test_a_statement_begun_before_exp_does_not_keep_the_identity(cluster, kinde, commit):
    """The identity of a login ends at exp also inside one long statement, and inside a DO
    block that commits in a loop (whose statement clock stands still): the loop is refused."""
    token = token_for(kinde, "kp_alice", lifetime=8)
    code, out, err = sign_in(cluster, kinde, token, f"""
        SET statement_timeout = '40s';
        DO $$
        DECLARE n int;
        BEGIN
          LOOP
            SELECT count(*) INTO n FROM big;
            RAISE NOTICE 'rows %', n;
            PERFORM pg_sleep(0.5);
            {"COMMIT;" if commit else ""}
          END LOOP;
        END $$;
    """)
    assert "NOTICE:  00000: rows 10000" in err
    errors = [line for line in err.splitlines() if "ERROR:" in line]
    assert len(errors) == 1 and "ERROR:  28000: JWT refused: exp check failed (the login token expired" in errors[0], err


def test_the_validator_needs_preloading(kinde):
    """Without shared_preload_libraries each login would fetch keys on its own (no shared cache,
    no shared rate limit): every login is refused, without a fetch, and the log says why."""
    providers = f'[{{"issuer": "{kinde.iss}", "jwks_url": "{kinde.jwks_url}", "audience": "{AUD}"}}]'
    c = Cluster("oauth-nopreload", preload=False, conf={
        "listen_addresses": "'127.0.0.1'",
        "oauth_validator_libraries": "'kinde_rls'",
        "kinde_rls.providers": "'" + providers + "'",
    })
    try:
        write_server_file(os.path.join(c.data, "pg_hba.conf"),
                          "local all all trust\n" + hba_line("analyst", kinde), 0o600)
        write_server_file(os.path.join(c.data, "pg_ident.conf"), "kinde /^.*$ analyst\n", 0o600)
        with c.connect() as su:
            su.execute("CREATE DATABASE app")
            su.execute("CREATE ROLE analyst LOGIN")
        c.restart()
        kinde.reset_counts()
        code, out, err = sign_in(c, kinde, token_for(kinde, "kp_alice"), "SELECT 1;")
        assert code != 0 and out == ""
        assert kinde.count("jwks") == 0
        log = c.server_log()
        assert "kinde_rls: login refused: kinde_rls is not in shared_preload_libraries" in log
        with c.connect(dbname="app") as su:
            su.execute("CREATE EXTENSION kinde_rls")
            found = su.execute("SELECT level, setting FROM kinde_rls_check()").fetchall()
        assert found[0] == ("error", "oauth_validator_libraries"), found
    finally:
        c.stop()


def test_a_role_per_organisation_through_pg_ident(cluster, kinde):
    """kinde_rls.login_authn_id = 'org_code, sub' makes the identity org/sub, which a pg_ident.conf
    regex maps to a role per organisation; another organisation's user cannot take that role."""
    with cluster.connect(dbname="app") as su:
        su.execute("ALTER SYSTEM SET kinde_rls.login_authn_id = 'org_code, sub'")
        su.execute("SELECT pg_reload_conf()")
    time.sleep(1)
    try:
        out = signed_in(cluster, kinde, token_for(kinde, "kp_carol", org_code="org_a"),
                        "SELECT get_user_id(), system_user, current_user;", role="org_a_role")
        assert out == "kp_carol|oauth:org_a/kp_carol|org_a_role"
        code, out, err = sign_in(cluster, kinde, token_for(kinde, "kp_dave", org_code="org_b"),
                                 "SELECT 1;", role="org_a_role")
        assert code != 0 and out == ""
        # An organisation code that would read as two claims is refused before any map.
        since = cluster.log_size()
        code, out, err = sign_in(cluster, kinde, token_for(kinde, "kp_eve", org_code="org_a/kp_x"),
                                 "SELECT 1;", role="org_a_role")
        assert code != 0
        assert "JWT refused: sub check failed" in "".join(login_refusals(cluster, since))
    finally:
        with cluster.connect(dbname="app") as su:
            su.execute("ALTER SYSTEM RESET kinde_rls.login_authn_id")
            su.execute("SELECT pg_reload_conf()")
        time.sleep(1)


def test_a_login_needs_pinned_keys_and_the_issuers_signature(hmac_issuer):
    """The single-provider settings of Kinde's Supabase guide: an HMAC secret next to the issuer.
    An HS256 token passes every claim rule and is a valid request token, but the secret is shared
    with the applications: it cannot sign a login. Nor can keys that accept any issuer."""
    import jwt
    c = Cluster("oauth-hmac", preload=True, conf={
        "listen_addresses": "'127.0.0.1'",
        "oauth_validator_libraries": "'kinde_rls'",
    })
    try:
        secret = os.path.join(c.dir, "secret")
        write_server_file(secret, HMAC_SECRET + "\n", 0o600)
        write_server_file(os.path.join(c.data, "pg_hba.conf"),
                          "local all all trust\n" + hba_line("analyst", hmac_issuer), 0o600)
        write_server_file(os.path.join(c.data, "pg_ident.conf"), "kinde /^.*$ analyst\n", 0o600)
        with c.connect() as su:
            su.execute("CREATE DATABASE app")
            su.execute("CREATE ROLE analyst LOGIN")
            su.execute(f"ALTER SYSTEM SET kinde_rls.secret_file = '{secret}'")
            su.execute(f"ALTER SYSTEM SET kinde_rls.issuer = '{hmac_issuer.iss}'")
        c.restart()
        with c.connect(dbname="app") as su:
            su.execute("CREATE EXTENSION kinde_rls")
        claims = hmac_issuer.claims("kp_alice", aud=[AUD], scp=["openid", "db"])
        token = jwt.encode(claims, HMAC_SECRET, algorithm="HS256")
        USED_TOKENS.append(token)
        with c.connect(dbname="app") as su:
            assert su.execute("SELECT verify_jwt(%s)->>'sub'", (token,)).fetchone()[0] == "kp_alice"
        for issuer_setting, check in ((hmac_issuer.iss, "algorithm"), (None, "iss")):
            if issuer_setting is None:
                with c.connect() as su:
                    su.execute("ALTER SYSTEM RESET kinde_rls.issuer")
                    su.execute("ALTER SYSTEM SET kinde_rls.jwks_url = %s" % f"'{hmac_issuer.jwks_url}'")
                    su.execute("SELECT pg_reload_conf()")
                time.sleep(1)
                token = hmac_issuer.token("kp_alice", aud=[AUD], scp=["openid", "db"])
                USED_TOKENS.append(token)
            since = c.log_size()
            code, out, err = sign_in(c, hmac_issuer, token, "SELECT 1;")
            assert code != 0 and out == ""
            lines = login_refusals(c, since)
            assert len(lines) == 1 and f"JWT refused: {check} check failed" in lines[0], c.log_since(since)
    finally:
        c.stop()


def test_a_discovery_url_as_the_line_issuer_is_refused_with_the_reason(cluster, kinde):
    since = cluster.log_size()
    code, out, err = sign_in(cluster, kinde, token_for(kinde, "kp_alice"), "SELECT 1;",
                             role="wellknown_role",
                             oauth_issuer=f"{kinde.iss}/.well-known/openid-configuration")
    assert code != 0 and out == ""
    assert "names a discovery URL as its issuer" in cluster.log_since(since)


def test_delegate_ident_mapping_is_refused(cluster, kinde):
    """With delegate_ident_mapping the validator alone would decide the role: any valid token
    could sign in as any role the line allows. kinde_rls refuses to serve such a line."""
    since = cluster.log_size()
    code, out, err = sign_in(cluster, kinde, token_for(kinde, "kp_alice"), "SELECT 1;", role="delegated")
    assert code != 0 and out == ""
    assert login_refusals(cluster, since) == [login_refusals(cluster, since)[0]]
    assert "sets delegate_ident_mapping" in cluster.log_since(since)


def test_a_hanging_key_fetch_ends_the_login_in_bounded_time(cluster, slow):
    since = cluster.log_size()
    started = time.monotonic()
    code, out, err = sign_in(cluster, slow, token_for(slow, "kp_alice"), "SELECT 1;", role="slow_role")
    took = time.monotonic() - started
    assert code != 0 and out == ""
    # jwks_timeout_ms = 1000, plus the device flow's own polling.
    assert took < 15, took
    assert "JWT refused: key check failed" in "".join(login_refusals(cluster, since))


def test_authentication_timeout_ends_a_login_waiting_for_keys(cluster, slower):
    """A key fetch during a login wakes up for authentication_timeout, as for a cancel."""
    with cluster.connect(dbname="app") as su:
        su.execute("ALTER SYSTEM SET kinde_rls.jwks_timeout_ms = 20000")
        su.execute("ALTER SYSTEM SET authentication_timeout = '2s'")
        su.execute("SELECT pg_reload_conf()")
    time.sleep(1)
    try:
        since = cluster.log_size()
        started = time.monotonic()
        code, out, err = sign_in(cluster, slower, token_for(slower, "kp_alice"), "SELECT 1;",
                                 role="slower_role")
        took = time.monotonic() - started
        assert code != 0 and out == ""
        assert took < 10, took
        assert "canceling authentication due to timeout" in cluster.log_since(since)
    finally:
        with cluster.connect(dbname="app") as su:
            su.execute("ALTER SYSTEM RESET kinde_rls.jwks_timeout_ms")
            su.execute("ALTER SYSTEM RESET authentication_timeout")
            su.execute("SELECT pg_reload_conf()")
        time.sleep(1)


def test_the_readme_sign_in_as_written(kinde):
    """README's "Sign in to PostgreSQL with Kinde": its postgresql.conf, pg_hba.conf and
    pg_ident.conf blocks and its psql parameters, as written, with the mock issuer in place of
    https://acme.kinde.com. Only what a test bench cannot have changes: host (no TLS) instead of
    hostssl, and 127.0.0.1 instead of every address."""
    import re
    root = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
    text = open(os.path.join(root, "README.md")).read()
    text = text[text.index("## Sign in to PostgreSQL with Kinde"):]
    text = text[:text.index("\n## ", 5)]
    blocks = [b for _, b in re.findall(r"```(\w*)\n(.*?)```", text, re.S)]
    ours = lambda b: b.replace("https://acme.kinde.com", kinde.iss)  # noqa: E731
    conf_block = next(b for b in blocks if "oauth_validator_libraries" in b)
    hba = next(b for b in blocks if " oauth issuer=" in b)
    ident = next(b for b in blocks if b.startswith("# MAPNAME"))
    psql = next(b for b in blocks if b.startswith("psql "))
    conf = {"listen_addresses": "'127.0.0.1'"}
    for line in ours(conf_block).splitlines():
        name, value = line.split("=", 1)
        conf[name.strip()] = value.split("#")[0].strip()
    assert conf["shared_preload_libraries"] == "'kinde_rls'" and conf["oauth_validator_libraries"] == "'kinde_rls'"
    c = Cluster("readme-signin", preload=False, conf=conf)
    try:
        hba = ours(hba).replace("hostssl", "host   ").replace("0.0.0.0/0", "127.0.0.1/32")
        write_server_file(os.path.join(c.data, "pg_hba.conf"), "local all all trust\n" + hba, 0o600)
        write_server_file(os.path.join(c.data, "pg_ident.conf"), ident, 0o600)
        with c.connect() as su:
            su.execute("CREATE DATABASE app")
            su.execute("CREATE ROLE analyst LOGIN")
        c.restart()
        assert f"oauth_issuer={kinde.iss} oauth_client_id=" in ours(psql)
        token = token_for(kinde, "kp_alice", aud=[conf["kinde_rls.audience"].strip("'")], scp=["openid"])
        with c.connect(dbname="app") as su:
            su.execute("CREATE EXTENSION kinde_rls")
        out = signed_in(c, kinde, token, "SELECT get_user_id(), system_user, current_user;")
        assert out == "kp_alice|oauth:kp_alice|analyst"
        # kinde_rls.audience as the README sets it: a token for another API cannot sign in.
        since = c.log_size()
        other = token_for(kinde, "kp_alice", aud=["api://billing"], scp=["openid"])
        code, out, err = sign_in(c, kinde, other, "SELECT 1;")
        assert code != 0 and out == ""
        assert "kinde_rls: login refused: JWT refused: aud check failed" in c.log_since(since)
    finally:
        c.stop()


def test_no_token_reaches_the_server_log(cluster):
    log = cluster.server_log()
    assert USED_TOKENS
    # (The other validator's "tokens" are user names, logged as its identities.)
    for t in (t for t in USED_TOKENS if "." in t):
        assert t not in log
        if t.count(".") == 2:
            assert t.split(".")[2] not in log
    assert not CRASH_LINES.search(log)
