"""Keys from the issuer: kinde_rls.domain / jwks_url / providers against a mock Kinde issuer on
127.0.0.1. Discovery, rotation, outages, hangs, hostile bodies, kid floods, provider isolation,
and the two cache homes (shared memory with preload, per backend without).

Every test gets its own issuer and its own database, configured by a superuser with
ALTER DATABASE, and queries as the non-superuser app_user."""

import base64
import itertools
import json
import os
import re
import ssl
import threading
import time
import uuid

import psycopg
from psycopg import sql
import pytest
from helpers import in_thread, one, refused, wait_for_setting
from issuer import MockIssuer
from kinde import Signer, kinde_access_claims
from pg import Cluster

_db_names = itertools.count(1)


@pytest.fixture
def issuer():
    i = MockIssuer()
    yield i
    i.stop()


@pytest.fixture
def make_issuer():
    made = []

    def make(**kw):
        i = MockIssuer(**kw)
        made.append(i)
        return i

    yield make
    for i in made:
        i.stop()


def _keys_db(cluster, settings: dict) -> str:
    name = f"keys_{next(_db_names)}_{os.getpid()}"
    with cluster.connect() as su:
        su.execute(f"CREATE DATABASE {name}")
    with cluster.connect(dbname=name) as su:
        su.execute("CREATE EXTENSION kinde_rls")
        # No HMAC secret is part of these tests.
        settings = {"secret_file": "", **settings}
        for k, v in settings.items():
            su.execute(f"ALTER DATABASE {name} SET kinde_rls.{k} = '{v}'")
    return name


def _keys_db_maker(cluster):
    """A function make(**settings) → connect(): a database with these settings, connecting as
    app_user; the databases are dropped afterwards."""
    made = []

    def make(**settings):
        name = _keys_db(cluster, settings)
        made.append(name)

        def connect(user="app_user", **kw):
            return cluster.connect(user=user, dbname=name, **kw)

        connect.dbname = name
        return connect

    yield make
    with cluster.connect() as su:
        for name in made:
            su.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture(scope="module")
def keys_cluster():
    """Preloaded, for this file's key-fetching tests alone. They count fetches and watch the
    shared key cache, so they must not find its slots taken by the issuers of other test files
    run before them in the same session (a slot is given up only after a minute unused)."""
    c = Cluster("keys", preload=True)
    try:
        with c.connect() as su:
            su.execute("CREATE ROLE app_user LOGIN")
        yield c
    finally:
        c.stop()


@pytest.fixture
def keys_db(keys_cluster):
    """keys_db(domain=..., jwks_min_refresh=...) → a function connecting as app_user to a new
    database of keys_cluster with these settings."""
    yield from _keys_db_maker(keys_cluster)


def notices(conn):
    got = []
    conn.add_notice_handler(lambda d: got.append((d.severity_nonlocalized, d.message_primary)))
    return got


# -- the Kinde quick start ---------------------------------------------------------------------


def test_domain_discovers_keys_and_is_the_issuer(issuer, keys_db):
    connect = keys_db(domain=issuer.base + "/")
    with connect() as c:
        claims = one(c, "SELECT verify_jwt(%s)", (issuer.token("kp_alice"),))
    assert claims["sub"] == "kp_alice"
    assert issuer.count("discovery") == 1
    assert issuer.count("jwks") == 1
    # The domain is the accepted issuer: a token from the same keys with another iss is refused.
    other = issuer.sign(dict(issuer.claims("kp_alice"), iss="https://evil.kinde.com"))
    with connect() as c:
        e = refused(c, "SELECT verify_jwt(%s)", (other,), check="iss")
        assert issuer.base in e.diag.message_detail


def test_discovery_jwks_uri_is_followed(make_issuer, keys_db):
    issuer = make_issuer(jwks_path="/custom/keys.json")
    connect = keys_db(domain=issuer.base)
    with connect() as c:
        assert one(c, "SELECT get_user_id() FROM (SELECT set_config('kinde_rls.token', %s, false)) s",
                   (issuer.token("kp_bob"),)) == "kp_bob"
    assert issuer.count("discovery") == 1 and issuer.count("jwks") == 1
    with connect() as c:
        row = c.execute("SELECT issuer, source, keys, fetched_at IS NOT NULL, expires_at - fetched_at, last_error "
                        "FROM jwks_status()").fetchone()
    assert row[0] == issuer.base and row[1] == issuer.base
    assert row[2] == 1  # the encryption key and the unknown key type were skipped
    assert row[3] is True
    assert row[4].total_seconds() == pytest.approx(600, abs=1)
    assert row[5] is None


def test_discovery_missing_falls_back_to_kinde_path(make_issuer, keys_db):
    issuer = make_issuer(discovery=False)
    connect = keys_db(domain=issuer.base)
    with connect() as c:
        assert one(c, "SELECT verify_jwt(%s)->>'sub'", (issuer.token("kp_carol"),)) == "kp_carol"
    assert issuer.count("other") == 1  # the 404 on discovery
    assert issuer.count("jwks") == 1


def test_quick_start_as_written_without_preload(issuer):
    """README quick start on a cluster without shared_preload_libraries: CREATE EXTENSION,
    ALTER SYSTEM SET kinde_rls.domain, reload. Each backend then caches keys on its own."""
    c = Cluster("quickstart", preload=False)
    try:
        with c.connect() as su:
            su.execute("CREATE EXTENSION kinde_rls")
            su.execute(f"ALTER SYSTEM SET kinde_rls.domain = '{issuer.base}'")
            su.execute("SELECT pg_reload_conf()")
            su.execute("CREATE ROLE app_user LOGIN")
        wait_for_setting(c, "kinde_rls.domain", issuer.base, dbname="postgres")
        for n in range(3):
            with c.connect(user="app_user") as conn:
                assert one(conn, "SELECT verify_jwt(%s)->>'sub'", (issuer.token(f"kp_{n}"),)) == f"kp_{n}"
                # Within one backend the keys are cached.
                assert one(conn, "SELECT verify_jwt(%s)->>'sub'", (issuer.token("kp_again"),)) == "kp_again"
        # Per-backend mode: one fetch per backend.
        assert issuer.count("jwks") == 3
    finally:
        c.stop()


# -- rotation and outages ----------------------------------------------------------------------


def test_rotation_is_picked_up_without_restart(issuer, keys_db):
    connect = keys_db(domain=issuer.base, jwks_min_refresh=1)
    old_token = issuer.token("kp_old")
    with connect() as c:
        assert one(c, "SELECT verify_jwt(%s)->>'sub'", (old_token,)) == "kp_old"
        time.sleep(1.1)
        issuer.rotate()  # the old key leaves the set
        new_token = issuer.token("kp_new")
        assert one(c, "SELECT verify_jwt(%s)->>'sub'", (new_token,)) == "kp_new"
        assert issuer.count("jwks") == 2
        # The retired key verifies nothing any more, not even from this backend's token cache.
        e = refused(c, "SELECT verify_jwt(%s)", (old_token,), check="key")
        assert f'known kids: "{issuer.signer.kid}")' in e.diag.message_detail


def test_unknown_kid_refetch_is_rate_limited(issuer, keys_db):
    connect = keys_db(domain=issuer.base)  # jwks_min_refresh defaults to 30 s
    with connect() as c:
        one(c, "SELECT verify_jwt(%s)", (issuer.token("kp_a"),))
        issuer.rotate(keep_old=True)
        # Within min_refresh of the last fetch the new kid is not fetched: refused, honestly.
        refused(c, "SELECT verify_jwt(%s)", (issuer.token("kp_b"),), check="key")
    assert issuer.count("jwks") == 1


def test_100_random_kids_cause_at_most_a_few_fetches(issuer, keys_db):
    connect = keys_db(domain=issuer.base)
    stranger = Signer("rsa")
    with connect() as c:
        one(c, "SELECT verify_jwt(%s)", (issuer.token("kp_a"),))
        for _ in range(100):
            stranger.kid = uuid.uuid4().hex
            refused(c, "SELECT verify_jwt(%s)", (issuer.sign(issuer.claims("kp_x"), signer=stranger),), check="key")
    with connect() as c2:
        for _ in range(20):
            stranger.kid = uuid.uuid4().hex
            refused(c2, "SELECT verify_jwt(%s)", (issuer.sign(issuer.claims("kp_x"), signer=stranger),), check="key")
    assert issuer.count("jwks") <= 2


def test_outage_keeps_cached_keys_working_with_a_warning(issuer, keys_db):
    connect = keys_db(domain=issuer.base, jwks_cache_ttl=1, jwks_min_refresh=0)
    with connect() as c:
        got = notices(c)
        assert one(c, "SELECT verify_jwt(%s)->>'sub'", (issuer.token("kp_a"),)) == "kp_a"
        issuer.mode = "500"
        time.sleep(1.2)  # the keys expire
        assert one(c, "SELECT verify_jwt(%s)->>'sub'", (issuer.token("kp_b"),)) == "kp_b"
        warnings = [m for s, m in got if s == "WARNING"]
        assert warnings and "HTTP 500" in warnings[0] and "still using the keys" in warnings[0]
        row = c.execute("SELECT keys, last_error FROM jwks_status()").fetchone()
        # Discovery answered 500: an error, not a reason to fall back to /.well-known/jwks.
        assert row == (1, f"discovery ({issuer.base}/.well-known/openid-configuration) failed: HTTP 500")
        issuer.mode = "ok"
        time.sleep(1.2)
        assert one(c, "SELECT verify_jwt(%s)->>'sub'", (issuer.token("kp_c"),)) == "kp_c"
        assert one(c, "SELECT last_error FROM jwks_status()") is None


def test_issuer_down_from_the_start_is_refused_not_anonymous(issuer, keys_db):
    issuer.mode = "500"
    connect = keys_db(domain=issuer.base)
    with connect() as c:
        e = refused(c, "SELECT verify_jwt(%s)", (issuer.token("kp_a"),), check="key")
        assert "could not be fetched" in e.diag.message_detail and "HTTP 500" in e.diag.message_detail
        # The failed fetch is not retried on every query (min_refresh), and RLS stays closed.
        with c.transaction():
            c.execute("SELECT set_config('kinde_rls.token', %s, true)", (issuer.token("kp_a"),))
            refused(c, "SELECT get_user_id()", check="key")
    assert issuer.count("discovery") == 1 and issuer.count("jwks") == 0


def test_hanging_issuer_costs_at_most_the_timeout(issuer, keys_db):
    issuer.mode = "hang"
    connect = keys_db(domain=issuer.base, jwks_timeout_ms=500)
    with connect() as c:
        t0 = time.monotonic()
        e = refused(c, "SELECT verify_jwt(%s)", (issuer.token("kp_a"),), check="key")
        elapsed = time.monotonic() - t0
        assert "timed out" in e.diag.message_detail
        # The issuer hangs for 10 s; the query ends with the 0.5 s timeout. Half the hang is a
        # bound a loaded machine cannot miss, and a fetch without a timeout cannot meet.
        assert elapsed < issuer.hang_seconds / 2, elapsed


def test_hanging_refetch_keeps_cached_keys_within_the_timeout(issuer, keys_db):
    connect = keys_db(domain=issuer.base, jwks_timeout_ms=400, jwks_cache_ttl=1, jwks_min_refresh=0)
    with connect() as c:
        got = notices(c)
        one(c, "SELECT verify_jwt(%s)", (issuer.token("kp_a"),))
        issuer.mode = "hang"
        time.sleep(1.2)
        t0 = time.monotonic()
        assert one(c, "SELECT verify_jwt(%s)->>'sub'", (issuer.token("kp_b"),)) == "kp_b"
        assert time.monotonic() - t0 < issuer.hang_seconds / 2  # the 0.4 s timeout, not the hang
        assert any("timed out" in m for s, m in got if s == "WARNING")


@pytest.mark.parametrize("mode,detail", [("garbage", "cannot be used"), ("huge", "larger than")])
def test_hostile_bodies_are_refused_cleanly(issuer, keys_db, mode, detail):
    issuer.mode = mode
    connect = keys_db(domain=issuer.base)
    with connect() as c:
        e = refused(c, "SELECT verify_jwt(%s)", (issuer.token("kp_a"),), check="key")
        assert detail in e.diag.message_detail
        assert one(c, "SELECT 1") == 1  # the backend lives
    with connect() as c:
        assert one(c, "SELECT last_error FROM jwks_status()").find(detail) >= 0


def test_https_certificates_are_checked(tmp_path, keys_db):
    """An https issuer with a certificate the system does not trust is refused."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    import datetime
    import ipaddress

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .sign(key, hashes.SHA256()))
    (tmp_path / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                         serialization.NoEncryption()))
    issuer = MockIssuer()
    try:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
        issuer.server.socket = ctx.wrap_socket(issuer.server.socket, server_side=True)
        url = f"https://127.0.0.1:{issuer.port}/.well-known/jwks"
        connect = keys_db(jwks_url=url, issuer=issuer.base)
        with connect() as c:
            e = refused(c, "SELECT verify_jwt(%s)", (issuer.token("kp_a"),), check="key")
            assert "could not be fetched" in e.diag.message_detail
            assert "certificate" in e.diag.message_detail.lower() or "unknownissuer" in e.diag.message_detail.lower(), \
                e.diag.message_detail
    finally:
        issuer.stop()


# -- settings ----------------------------------------------------------------------------------


@pytest.mark.parametrize("setting,value", [
    ("jwks_url", "http://example.com/jwks"),
    ("domain", "http://acme.kinde.com"),
    ("jwks_url", "file:///etc/passwd"),
    ("providers", "not json"),
    ("providers", '[{"issuer": "https://a.example"}]'),
    ("providers", '[{"issuer": "a", "jwks_url": "https://a/jwks", "secret": "x"}]'),
    ("providers", '[{"issuer": "https://a.example", "jwks_urll": "https://a.example/jwks"}]'),
    ("jwks", "not json"),
    ("domain", "acme.kinde.com"),
    ("secret_file", "relative/secret_path"),
])
def test_bad_key_settings_are_refused_when_set_naming_the_setting(cluster, setting, value):
    """A mistake is refused when it is made — SET, ALTER DATABASE/ROLE … SET, ALTER SYSTEM —
    with the message and HINT verification would give later (22023), not when a token comes."""
    name = sql.SQL(f"kinde_rls.{setting}")
    stored = "SELECT coalesce(array_agg(c ORDER BY c), '{}') FROM pg_db_role_setting, unnest(setconfig) c"
    with cluster.connect(dbname="app") as su:
        before = one(su, stored)
        for stmt in [sql.SQL("SET {} = {}"), sql.SQL("ALTER DATABASE app SET {} = {}"),
                     sql.SQL("ALTER ROLE app_user SET {} = {}"), sql.SQL("ALTER SYSTEM SET {} = {}")]:
            with pytest.raises(psycopg.Error) as ei:
                su.execute(stmt.format(name, sql.Literal(value)))
            assert ei.value.sqlstate == "22023", stmt
            assert f"kinde_rls.{setting}" in ei.value.diag.message_hint, ei.value.diag.message_hint
            assert f"kinde_rls.{setting}" in ei.value.diag.message_primary, ei.value.diag.message_primary
        assert one(su, stored) == before
        assert value not in open(os.path.join(cluster.data, "postgresql.auto.conf")).read()


def test_refresh_jwks_is_for_superusers_and_counts_keys(issuer, keys_db):
    connect = keys_db(jwks_url=issuer.jwks_url, issuer=issuer.base)
    issuer.rotate(keep_old=True)
    with connect(user="postgres") as su:
        assert one(su, "SELECT refresh_jwks()") == 2
        assert one(su, "SELECT refresh_jwks()") == 2  # forced: not rate-limited
    assert issuer.count("jwks") == 2
    with connect() as c:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            c.execute("SELECT refresh_jwks()")
        assert one(c, "SELECT keys FROM jwks_status()") == 2
    issuer.mode = "500"
    with connect(user="postgres") as su:
        with pytest.raises(psycopg.Error) as ei:
            su.execute("SELECT refresh_jwks()")
        assert ei.value.sqlstate == "08000"
        assert "HTTP 500" in ei.value.diag.message_detail


def test_refresh_jwks_without_urls_is_a_config_error(keys_db):
    connect = keys_db(issuer="https://acme.kinde.com")
    with connect(user="postgres") as su:
        with pytest.raises(psycopg.Error) as ei:
            su.execute("SELECT refresh_jwks()")
    assert ei.value.sqlstate == "22023"
    assert "kinde_rls.domain" in ei.value.diag.message_hint


def test_explain_names_provider_and_key(issuer, keys_db):
    connect = keys_db(domain=issuer.base)
    t = issuer.token("kp_a")
    with connect() as c:
        rows = {r[0]: (r[1], r[2]) for r in c.execute("SELECT * FROM jwt_explain(%s)", (t,))}
    assert rows["key"][0] is True
    assert issuer.base in rows["key"][1] and issuer.signer.kid in rows["key"][1]
    assert rows["signature"][0] is True and rows["iss"][0] is True
    stranger = Signer("rsa")
    with connect() as c:
        rows = {r[0]: (r[1], r[2]) for r in c.execute("SELECT * FROM jwt_explain(%s)",
                                                      (issuer.sign(issuer.claims("kp_a"), signer=stranger),))}
    assert rows["key"][0] is False and stranger.kid in rows["key"][1]
    with connect() as c:
        rows = {r[0]: (r[1], r[2]) for r in c.execute("SELECT * FROM jwt_explain(%s)",
                                                      (issuer.sign(dict(issuer.claims("kp_a"), iss="https://x.example")),))}
    # One provider: the token is explained against it, and the iss row says what is wrong.
    assert rows["iss"][0] is False and issuer.base in rows["iss"][1]
    assert rows["signature"][0] is True


# -- several providers -------------------------------------------------------------------------


def test_providers_are_isolated(make_issuer, keys_db):
    kinde = make_issuer()
    other = make_issuer(kind="p256")
    providers = json.dumps([
        {"domain": kinde.base},
        {"issuer": other.iss, "jwks_url": other.jwks_url, "audience": ["api://other"], "algorithms": ["ES256"]},
    ])
    connect = keys_db(providers=providers, jwks_min_refresh=0)
    with connect() as c:
        assert one(c, "SELECT verify_jwt(%s)->>'sub'", (kinde.token("kp_kinde"),)) == "kp_kinde"
        assert one(c, "SELECT get_token_identifier() FROM (SELECT set_config('kinde_rls.token', %s, false)) s",
                   (other.token("user_9", aud=["api://other"]),)) == f"{other.iss}|user_9"
        # The other provider's audience rule applies to its tokens only.
        refused(c, "SELECT verify_jwt(%s)", (other.token("user_9", aud=["api://wrong"]),), check="aud")
        # A token claiming Kinde's iss but signed with the other provider's key: Kinde's keys decide.
        forged = other.sign(dict(kinde.claims("kp_kinde")))
        refused(c, "SELECT verify_jwt(%s)", (forged,), check="key")
        forged_rsa = kinde.sign(kinde.claims("kp_x"), signer=Signer("rsa", kid=kinde.signer.kid))
        refused(c, "SELECT verify_jwt(%s)", (forged_rsa,), check="signature")
        # And the other way round: an RS256 token for the ES256-only provider.
        refused(c, "SELECT verify_jwt(%s)", (kinde.sign(other.claims("user_9", aud=["api://other"])),),
                check="algorithm")
        # An issuer nobody configured.
        e = refused(c, "SELECT verify_jwt(%s)", (kinde.sign(dict(kinde.claims("kp_a"), iss="https://x.example")),),
                    check="iss")
        assert kinde.base in e.diag.message_detail and other.iss in e.diag.message_detail
        explained = {r[0]: (r[1], r[2]) for r in c.execute(
            "SELECT * FROM jwt_explain(%s)", (kinde.sign(dict(kinde.claims("kp_a"), iss="https://x.example")),))}
        assert explained["iss"][0] is False and explained["key"] == (None, "not checked: no provider accepts this issuer")
        explained = {r[0]: (r[1], r[2]) for r in c.execute("SELECT * FROM jwt_explain(%s)", (other.token("u", aud=["api://other"]),))}
        assert explained["key"][0] is True and other.iss in explained["key"][1] and other.jwks_url in explained["key"][1]
        rows = c.execute("SELECT issuer, source, keys FROM jwks_status() ORDER BY issuer").fetchall()
    assert sorted(rows) == sorted([(kinde.base, kinde.base, 1), (other.iss, other.jwks_url, 1)])


def test_providers_replace_single_provider_settings(make_issuer, keys_db):
    a = make_issuer()
    b = make_issuer()
    connect = keys_db(domain=a.base, providers=json.dumps([{"domain": b.base}]))
    with connect() as c:
        assert one(c, "SELECT verify_jwt(%s)->>'sub'", (b.token("kp_b"),)) == "kp_b"
        refused(c, "SELECT verify_jwt(%s)", (a.token("kp_a"),), check="iss")
    assert a.count("total") == 0


def test_two_issuers_sharing_one_jwks(issuer, keys_db):
    """WorkOS-style: two issuers, one key set, fetched once."""
    providers = json.dumps([
        {"issuer": issuer.iss, "jwks_url": issuer.jwks_url},
        {"issuer": issuer.iss + "/user_management", "jwks_url": issuer.jwks_url},
    ])
    connect = keys_db(providers=providers)
    with connect() as c:
        assert one(c, "SELECT verify_jwt(%s)->>'sub'", (issuer.token("u1"),)) == "u1"
        t2 = issuer.sign(dict(issuer.claims("u2"), iss=issuer.iss + "/user_management"))
        assert one(c, "SELECT verify_jwt(%s)->>'sub'", (t2,)) == "u2"
    assert issuer.count("jwks") == 1


# -- the shared-memory cache -------------------------------------------------------------------


def test_shared_cache_fetches_once_for_many_backends(issuer, keys_db):
    connect = keys_db(domain=issuer.base)
    n = 12
    conns = [connect() for _ in range(n)]
    barrier = threading.Barrier(n)
    results, errors = [], []

    def work(conn, i):
        try:
            barrier.wait()
            results.append(one(conn, "SELECT verify_jwt(%s)->>'sub'", (issuer.token(f"kp_{i}"),)))
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=work, args=(c, i)) for i, c in enumerate(conns)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for c in conns:
        c.close()
    assert not errors, errors
    assert sorted(results) == sorted(f"kp_{i}" for i in range(n))
    assert issuer.count("jwks") == 1
    assert issuer.count("discovery") == 1
    # New backends use the shared cache too.
    with connect() as c:
        assert one(c, "SELECT verify_jwt(%s)->>'sub'", (issuer.token("kp_late"),)) == "kp_late"
    assert issuer.count("jwks") == 1


def test_shared_cache_rotation_reaches_other_backends(issuer, keys_db):
    connect = keys_db(domain=issuer.base, jwks_min_refresh=1)
    with connect() as a, connect() as b:
        old = issuer.token("kp_old")
        assert one(a, "SELECT verify_jwt(%s)->>'sub'", (old,)) == "kp_old"
        assert one(b, "SELECT verify_jwt(%s)->>'sub'", (old,)) == "kp_old"
        time.sleep(1.1)
        issuer.rotate()
        assert one(a, "SELECT verify_jwt(%s)->>'sub'", (issuer.token("kp_new"),)) == "kp_new"
        # b learns the new set from shared memory, without fetching, and drops the retired key.
        refused(b, "SELECT verify_jwt(%s)", (old,), check="key")
        assert one(b, "SELECT verify_jwt(%s)->>'sub'", (issuer.token("kp_new3"),)) == "kp_new3"
    assert issuer.count("jwks") == 2


# -- a fetch answers cancels, timeouts and shutdown --------------------------------------------


def _wait_until_waiting(su, pid, timeout=30.0):
    """Until backend `pid` has been running its statement for a moment (it is then inside the
    fetch): a cancel sent before the statement starts would cancel nothing."""
    deadline = time.monotonic() + timeout
    while one(su, "SELECT state = 'active' AND now() - query_start > interval '150 ms' "
                  "FROM pg_stat_activity WHERE pid = %s", (pid,)) is not True:
        assert time.monotonic() < deadline, f"backend {pid} never started its statement"
        time.sleep(0.02)


def test_statement_timeout_ends_a_hanging_fetch(issuer, keys_db):
    """kinde_rls.jwks_timeout_ms = 10 s, statement_timeout = 300 ms: the query ends with 57014 in
    about 300 ms, and the next statement fetches afresh once the issuer answers again."""
    issuer.mode = "hang"
    connect = keys_db(domain=issuer.base, jwks_timeout_ms=10000)
    with connect() as c:
        c.execute("SET statement_timeout = '300ms'")
        t0 = time.monotonic()
        with pytest.raises(psycopg.Error) as ei:
            c.execute("SELECT verify_jwt(%s)", (issuer.token("kp_a"),))
        elapsed = time.monotonic() - t0
        assert ei.value.sqlstate == "57014", ei.value
        assert ei.value.diag.message_primary == "canceling statement due to statement timeout"
        assert ei.value.diag.message_detail is None  # no Rust backtrace, even with RUST_BACKTRACE set
        # Bounds are fractions of the 10 s hang and fetch timeout, which an uncancellable fetch
        # would take in full: generous for a loaded machine, out of reach for the defect.
        assert elapsed < issuer.hang_seconds / 2, elapsed
        c.execute("RESET statement_timeout")
        issuer.mode = "ok"
        t0 = time.monotonic()
        assert one(c, "SELECT verify_jwt(%s)->>'sub'", (issuer.token("kp_a"),)) == "kp_a"
        assert time.monotonic() - t0 < issuer.hang_seconds / 2


def test_cancel_and_terminate_end_a_hanging_fetch_and_leave_nothing_stuck(issuer, keys_db):
    """pg_cancel_backend() and pg_terminate_backend() end a query waiting on a hanging issuer
    within about a second; afterwards no backend waits for the abandoned fetch."""
    issuer.mode = "hang"
    connect = keys_db(domain=issuer.base, jwks_timeout_ms=10000)
    with connect(user="postgres") as su:
        with connect() as c:
            pid = one(c, "SELECT pg_backend_pid()")
            th, box = in_thread(c, "SELECT verify_jwt(%s)", (issuer.token("kp_a"),))
            _wait_until_waiting(su, pid)
            assert one(su, "SELECT pg_cancel_backend(%s)", (pid,)) is True
            th.join(issuer.hang_seconds)
            assert box["error"].sqlstate == "57014", box
            assert box["t"] < issuer.hang_seconds / 2, box
        c2 = connect()
        pid2 = one(c2, "SELECT pg_backend_pid()")
        th, box = in_thread(c2, "SELECT verify_jwt(%s)", (issuer.token("kp_b"),))
        _wait_until_waiting(su, pid2)
        assert one(su, "SELECT pg_terminate_backend(%s)", (pid2,)) is True
        th.join(issuer.hang_seconds)
        assert isinstance(box["error"], psycopg.OperationalError), box
        assert box["t"] < issuer.hang_seconds / 2, box
        c2.close()
        assert one(su, "SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (pid2,)) == 0
    issuer.mode = "ok"
    t0 = time.monotonic()
    with connect() as c3:
        assert one(c3, "SELECT verify_jwt(%s)->>'sub'", (issuer.token("kp_c"),)) == "kp_c"
    assert time.monotonic() - t0 < issuer.hang_seconds / 2


SIGNALS = {"HUP": 1, "INT": 2, "QUIT": 3, "USR1": 10, "USR2": 12, "ALRM": 14, "TERM": 15}


def _sigblk(pid: int, tid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/task/{tid}/status") as f:
            return int(re.search(r"^SigBlk:\s*([0-9a-f]+)", f.read(), re.M).group(1), 16)
    except OSError:
        return None


def test_threads_of_a_fetch_never_take_postgres_signals(make_issuer, keys_db):
    """While a backend fetches keys from a host name, every thread but the backend's own has
    HUP, INT, QUIT, USR1, USR2, ALRM and TERM blocked (PostgreSQL's handlers must only run on
    the backend's thread); the backend's thread still takes them."""
    issuer = make_issuer()
    issuer.mode = "hang"
    connect = keys_db(jwks_url=f"http://localhost:{issuer.port}/.well-known/jwks", issuer=issuer.base,
                      jwks_timeout_ms=3000)
    with connect() as c:
        pid = one(c, "SELECT pg_backend_pid()")
        th, box = in_thread(c, "SELECT verify_jwt(%s)", (issuer.token("kp_a"),))
        extra, main = {}, []
        while th.is_alive():
            for tid in map(int, os.listdir(f"/proc/{pid}/task")):
                mask = _sigblk(pid, tid)
                if mask is None:
                    continue
                if tid == pid:
                    main.append(mask)
                else:
                    extra[tid] = mask
            time.sleep(0.005)
        th.join()
    assert box["error"].sqlstate == "28000" and "timed out" in box["error"].diag.message_detail
    assert extra, "the fetch ran on no thread of its own"
    for tid, mask in extra.items():
        unblocked = [name for name, n in SIGNALS.items() if not mask & (1 << (n - 1))]
        assert not unblocked, f"thread {tid} of backend {pid} takes {unblocked}"
    for mask in main:
        for name in ("INT", "ALRM", "TERM"):
            assert not mask & (1 << (SIGNALS[name] - 1)), f"the backend's own thread blocks {name}"


# -- discovery speaks for the configured domain only -------------------------------------------


def test_discovery_naming_another_issuer_is_refused(issuer, keys_db):
    """OpenID Connect Discovery §4.3: the document's issuer must be the domain."""
    issuer.discovery_issuer = "https://evil.example"
    connect = keys_db(domain=issuer.base)
    with connect() as c:
        e = refused(c, "SELECT verify_jwt(%s)", (issuer.token("kp_a"),), check="key")
        assert 'names issuer "https://evil.example"' in e.diag.message_detail
        assert "its keys are not used" in e.diag.message_detail
    assert issuer.count("discovery") == 1 and issuer.count("jwks") == 0  # no fallback either


@pytest.mark.parametrize("mode,detail", [("500", "failed: HTTP 500"), ("garbage", "is not JSON")])
def test_a_broken_discovery_document_is_an_error_not_a_fallback(issuer, keys_db, mode, detail):
    issuer.discovery_mode = mode
    connect = keys_db(domain=issuer.base)
    with connect() as c:
        e = refused(c, "SELECT verify_jwt(%s)", (issuer.token("kp_a"),), check="key")
        assert detail in e.diag.message_detail
    assert issuer.count("jwks") == 0


# -- one unusable key does not take the set down -----------------------------------------------


def _off_curve(signer) -> dict:
    jwk = signer.jwk()
    y = bytearray(base64.urlsafe_b64decode(jwk["y"] + "=="))
    y[-1] ^= 1
    jwk["y"] = base64.urlsafe_b64encode(bytes(y)).rstrip(b"=").decode()
    jwk["kid"] = "off-curve"
    return jwk


def test_unusable_keys_are_ignored_and_named(make_issuer, keys_db, signers):
    """RFC 7517 §5: a 1024-bit RSA key, a malformed key, an off-curve EC point, a key whose
    key_ops do not include verify, a leaked private key — each ignored with its reason, and the
    good key still verifies."""
    issuer = make_issuer()
    weak = signers["rsa1024"]
    leaked = signers["ed25519"].jwk()
    leaked.update(kid="leaked", d="AAAA")
    issuer.extra_keys = [
        weak.jwk(),
        {"kty": "RSA", "kid": "malformed", "n": "%%%", "e": "AQAB"},
        _off_curve(signers["p256"]),
        dict(signers["rsa_other"].jwk(), kid="sign-only", key_ops=["sign"]),
        leaked,
    ]
    connect = keys_db(domain=issuer.base)
    with connect() as c:
        assert one(c, "SELECT verify_jwt(%s)->>'sub'", (issuer.token("kp_good"),)) == "kp_good"
        e = refused(c, "SELECT verify_jwt(%s)", (weak.sign(issuer.claims("kp_weak"), "RS256"),), check="key")
        assert f'kid "{weak.kid}"' in e.diag.message_detail
        assert "is ignored: the RSA key has 1024 bits; at least 2048 are required" in e.diag.message_detail
        signer = Signer("rsa", kid="sign-only")
        signer.key = signers["rsa_other"].key
        e = refused(c, "SELECT verify_jwt(%s)", (signer.sign(issuer.claims("kp_x"), "RS256"),), check="key")
        assert 'does not include "verify"' in e.diag.message_detail
        rows = {r[0]: (r[1], r[2]) for r in c.execute(
            "SELECT * FROM jwt_explain(%s)", (weak.sign(issuer.claims("kp_weak"), "RS256"),))}
        assert rows["key"][0] is False and "1024 bits" in rows["key"][1]
        rows = {r[0]: (r[1], r[2]) for r in c.execute("SELECT * FROM jwt_explain(%s)", (issuer.token("kp_good"),))}
        assert rows["key"][0] is True and "; ignored in the key set: " in rows["key"][1]
        assert f'key "{weak.kid}": the RSA key has 1024 bits' in rows["key"][1]
        assert "more (see jwks_status())" in rows["key"][1]
        keys, ignored = c.execute("SELECT keys, ignored_keys FROM jwks_status()").fetchone()
    assert keys == 1
    text = "\n".join(ignored)
    for needle in [f'key "{weak.kid}": the RSA key has 1024 bits', 'key "malformed": ',
                   'key "off-curve": the EC P-256 key is not a point on its curve',
                   'key "sign-only": key_ops ["sign"] does not include "verify"',
                   'key "leaked": it contains private key material (member d)',
                   'key "encryption-key": use "enc" is not "sig"',
                   'key "future-key-type": key type "XYZ" is not supported']:
        assert needle in text, (needle, ignored)


def test_inline_jwks_with_an_unusable_key_keeps_the_good_ones(keys_db, signers):
    doc = json.dumps({"keys": [signers["rsa1024"].jwk(), signers["rsa"].jwk()]})
    connect = keys_db(jwks=doc, issuer="https://acme.kinde.com")
    with connect() as c:
        t = signers["rsa"].sign(kinde_access_claims("kp_inline"), "RS256")
        assert one(c, "SELECT verify_jwt(%s)->>'sub'", (t,)) == "kp_inline"
        row = c.execute("SELECT source, keys, ignored_keys FROM jwks_status()").fetchone()
    assert row[0] == "configured" and row[1] == 1
    assert len(row[2]) == 1 and "1024 bits" in row[2][0]


def test_a_set_with_no_usable_key_is_still_an_error(cluster, signers):
    """Refused when set: a key set none of whose keys can be used verifies nothing."""
    doc = json.dumps({"keys": [signers["rsa1024"].jwk()]})
    with cluster.connect(dbname="app") as su:
        with pytest.raises(psycopg.Error) as ei:
            su.execute(sql.SQL("ALTER DATABASE app SET kinde_rls.jwks = {}").format(sql.Literal(doc)))
    assert ei.value.sqlstate == "22023"
    assert "no usable signing key" in ei.value.diag.message_primary
    assert "kinde_rls.jwks" in ei.value.diag.message_hint


# -- stale keys have a bounded life -----------------------------------------------------------


def test_stale_keys_stop_verifying_after_jwks_max_stale(issuer, keys_db):
    """A key the issuer retired because it leaked must not verify for as long as the issuer is
    unreachable: kinde_rls.jwks_max_stale bounds it, cached verifications included."""
    connect = keys_db(domain=issuer.base, jwks_cache_ttl=1, jwks_min_refresh=0, jwks_max_stale=5)
    early = issuer.token("kp_early")
    with connect() as c:
        t0 = time.monotonic()
        assert one(c, "SELECT verify_jwt(%s)->>'sub'", (early,)) == "kp_early"
        issuer.mode = "500"
        time.sleep(1.5)  # expired, stale for about 0.5 s of the 5 allowed: still used
        assert time.monotonic() - t0 < 1 + 5, "too slow to observe the stale window"
        assert one(c, "SELECT verify_jwt(%s)->>'sub'", (issuer.token("kp_b"),)) == "kp_b"
        time.sleep(max(0.0, t0 + 1 + 5 + 1 - time.monotonic()))  # stale for over 5 s: no longer
        for t in [issuer.token("kp_late"), early]:
            e = refused(c, "SELECT verify_jwt(%s)", (t,), check="key")
            d = e.diag.message_detail
            assert "expired" in d and "kinde_rls.jwks_max_stale (5 s)" in d and "HTTP 500" in d, d
        issuer.mode = "ok"
        assert one(c, "SELECT verify_jwt(%s)->>'sub'", (issuer.token("kp_back"),)) == "kp_back"


# -- more key sources than shared slots --------------------------------------------------------


@pytest.fixture(scope="module")
def small_cache_cluster():
    """Preloaded, with a shared key cache of 8 slots."""
    c = Cluster("smallcache", preload=True, conf={"kinde_rls.jwks_cache_slots": "8"})
    try:
        with c.connect() as su:
            su.execute("CREATE EXTENSION kinde_rls")
            su.execute("CREATE ROLE app_user LOGIN")
        yield c
    finally:
        c.stop()


def test_more_sources_than_slots_do_not_thrash(small_cache_cluster):
    """12 providers, 8 slots, tokens cycling through them: a source is fetched at most twice
    over repeated rounds, a second session refetches only what the shared cache could not hold,
    and unknown-kid floods stay rate-limited whether a source has a slot or not."""
    issuers = [MockIssuer() for _ in range(12)]
    try:
        providers = json.dumps([{"issuer": i.iss, "jwks_url": i.jwks_url} for i in issuers])
        with small_cache_cluster.connect() as su:
            su.execute("SELECT set_config('kinde_rls.providers', %s, false)", (providers,))
            su.execute(f"ALTER DATABASE postgres SET kinde_rls.providers = '{providers}'")
            assert one(su, "SHOW kinde_rls.jwks_cache_slots") == "8"
        tokens = [i.token(f"kp_{n}") for n, i in enumerate(issuers)]
        with small_cache_cluster.connect(user="app_user") as a:
            for _ in range(4):
                for n, t in enumerate(tokens):
                    assert one(a, "SELECT verify_jwt(%s)->>'sub'", (t,)) == f"kp_{n}"
        after_a = [i.count("jwks") for i in issuers]
        assert after_a == [1] * 12, after_a
        with small_cache_cluster.connect(user="app_user") as b:
            for _ in range(3):
                for n, t in enumerate(tokens):
                    assert one(b, "SELECT verify_jwt(%s)->>'sub'", (t,)) == f"kp_{n}"
            stranger = Signer("rsa")
            for _ in range(3):
                for i in issuers:
                    stranger.kid = uuid.uuid4().hex
                    refused(b, "SELECT verify_jwt(%s)", (i.sign(i.claims("kp_x"), signer=stranger),), check="key")
            statuses = b.execute("SELECT keys, warning FROM jwks_status()").fetchall()
        counts = [i.count("jwks") for i in issuers]
        assert max(counts) <= 2, counts
        assert sum(counts) - 12 <= 12 - 8, counts  # only what found no slot was fetched again
        assert [k for k, _ in statuses] == [1] * 12
        # What found no slot says so, and the server log tells the operator to raise the count.
        overflow = [w for _, w in statuses if "no slot in the shared key cache (kinde_rls.jwks_cache_slots = 8)" in w]
        assert len(overflow) == sum(counts) - 12
        assert "the shared key cache is full (kinde_rls.jwks_cache_slots = 8)" in small_cache_cluster.server_log()
    finally:
        for i in issuers:
            i.stop()
        with small_cache_cluster.connect() as su:
            su.execute("ALTER DATABASE postgres RESET kinde_rls.providers")


def test_a_slot_claimed_by_a_cancelled_refetch_keeps_the_rate_limit():
    """A source cached per session (its one slot held by fresh keys of another) takes the slot
    once it frees, with a refetch that is cancelled: the slot is left empty, and the session's
    own keys still count, so the next made-up kids are not refetched within jwks_min_refresh."""
    c = Cluster("oneslot", preload=True, conf={"kinde_rls.jwks_cache_slots": "1"})
    filler, issuer = MockIssuer(), MockIssuer()
    try:
        filler_db = _keys_db(c, {"domain": filler.base, "jwks_cache_ttl": 2})
        target_db = _keys_db(c, {"domain": issuer.base, "jwks_min_refresh": 2})
        with c.connect(dbname=filler_db) as f:
            one(f, "SELECT verify_jwt(%s)", (filler.token("kp_f"),))  # the only slot, fresh for 2 s
        stranger = Signer("rsa")
        with c.connect(dbname=target_db) as s:
            one(s, "SELECT verify_jwt(%s)", (issuer.token("kp_warm"),))
            assert "no slot in the shared key cache" in one(s, "SELECT warning FROM jwks_status()")
            time.sleep(2.1)  # the filler's keys expire: its slot can be taken
            issuer.delay = 0.3
            issuer.reset_counts()
            s.execute("SET statement_timeout = '60ms'")
            t0 = time.monotonic()
            for _ in range(20):
                stranger.kid = uuid.uuid4().hex
                try:
                    s.execute("SELECT verify_jwt(%s)", (issuer.sign(issuer.claims("kp_x"), signer=stranger),))
                except psycopg.Error as e:
                    assert e.sqlstate in ("57014", "28000"), e
            elapsed = time.monotonic() - t0
            time.sleep(1.0)  # every request started in the loop has reached the issuer
        assert issuer.count("jwks") <= 1 + int(elapsed / 2), (issuer.count("jwks"), elapsed)
    finally:
        filler.stop()
        issuer.stop()
        c.stop()


def test_a_second_session_refetches_nothing_cached():
    """A cluster with the default cache (16 slots) and 12 sources: a new session fetches
    nothing."""
    c = Cluster("defaultcache", preload=True)
    issuers = [MockIssuer() for _ in range(12)]
    try:
        providers = json.dumps([{"issuer": i.iss, "jwks_url": i.jwks_url} for i in issuers])
        with c.connect() as su:
            su.execute("CREATE EXTENSION kinde_rls")
            su.execute(f"ALTER DATABASE postgres SET kinde_rls.providers = '{providers}'")
            assert one(su, "SHOW kinde_rls.jwks_cache_slots") == "16"
        tokens = [i.token("kp") for i in issuers]
        for _ in range(2):
            with c.connect() as s:
                for t in tokens:
                    assert one(s, "SELECT verify_jwt(%s)->>'sub'", (t,)) == "kp"
        assert [i.count("jwks") for i in issuers] == [1] * 12
    finally:
        for i in issuers:
            i.stop()
        c.stop()


# -- the audience in domain mode -----------------------------------------------------------


def test_a_missing_audience_is_flagged(issuer, keys_db):
    """Domain mode without kinde_rls.audience accepts any token the Kinde business issues (an ID
    token, an access token for another API): jwks_status() and jwt_explain() say so."""
    connect = keys_db(domain=issuer.base)
    with connect() as c:
        warning = one(c, "SELECT warning FROM jwks_status()")
        assert warning.startswith("no audience is configured: tokens "), warning
        assert "kinde_rls.audience" in warning
        rows = {r[0]: (r[1], r[2]) for r in c.execute("SELECT * FROM jwt_explain(%s)", (issuer.token("kp_a"),))}
        assert rows["aud"][0] is True
        assert rows["aud"][1].startswith("not checked: no audience is configured"), rows["aud"]
    connect = keys_db(domain=issuer.base, audience="https://api.acme.com")
    with connect() as c:
        assert one(c, "SELECT warning FROM jwks_status()") is None
        t = issuer.token("kp_a", aud=["https://api.acme.com"])
        assert one(c, "SELECT verify_jwt(%s)->>'sub'", (t,)) == "kp_a"
        refused(c, "SELECT verify_jwt(%s)", (issuer.token("kp_a"),), check="aud")


def test_repeatedly_cancelled_fetches_leave_other_sessions_unharmed(issuer, keys_db):
    """A role that keeps cancelling its own key fetches (statement_timeout is anyone's to set)
    against a slow issuer: every cancel ends at once, nothing is recorded against the issuer,
    another session fetches as soon as the issuer answers, and this one after its abandoned
    fetches have timed out."""
    issuer.mode = "hang"
    connect = keys_db(domain=issuer.base, jwks_timeout_ms=6000)
    with connect() as c:
        c.execute("SET statement_timeout = '100ms'")
        for _ in range(6):
            with pytest.raises(psycopg.Error) as ei:
                c.execute("SELECT verify_jwt(%s)", (issuer.token("kp_a"),))
            assert ei.value.sqlstate == "57014"
        issuer.mode = "ok"
        t0 = time.monotonic()
        with connect() as other:
            assert one(other, "SELECT verify_jwt(%s)->>'sub'", (issuer.token("kp_other"),)) == "kp_other"
        # Not held up by this session's abandoned fetches (which may take the 6 s timeout).
        assert time.monotonic() - t0 < 3.0
        c.execute("RESET statement_timeout")
        t0 = time.monotonic()
        assert one(c, "SELECT verify_jwt(%s)->>'sub'", (issuer.token("kp_a"),)) == "kp_a"
        assert time.monotonic() - t0 < 6.0 + 3.0


def test_cancelling_does_not_get_around_the_refetch_rate_limit(issuer, keys_db):
    """Tokens with made-up kids from a session that cancels each statement before a slow issuer
    answers: the cancelled refetches count against kinde_rls.jwks_min_refresh like any other."""
    connect = keys_db(domain=issuer.base, jwks_min_refresh=2)
    stranger = Signer("rsa")
    with connect() as c:
        one(c, "SELECT verify_jwt(%s)", (issuer.token("kp_warm"),))
        time.sleep(2.1)
        issuer.delay = 0.3
        issuer.reset_counts()
        c.execute("SET statement_timeout = '60ms'")
        t0 = time.monotonic()
        for _ in range(20):
            stranger.kid = uuid.uuid4().hex
            try:
                c.execute("SELECT verify_jwt(%s)", (issuer.sign(issuer.claims("kp_x"), signer=stranger),))
            except psycopg.Error as e:
                assert e.sqlstate in ("57014", "28000"), e
        elapsed = time.monotonic() - t0
    # One refetch per 2 s window at most; a loaded machine may stretch the loop over several.
    allowed = 1 + int(elapsed / 2)
    assert issuer.count("jwks") <= allowed < 20, (issuer.count("jwks"), elapsed)


def test_a_fast_shutdown_ends_a_hanging_fetch_at_once(issuer):
    """pg_ctl stop -m fast sends every backend SIGTERM: one waiting on a hanging issuer (10 s
    timeout) must exit within about a second, so the server stops, and starts again cleanly."""
    import subprocess

    from pg import BINDIR, _as_postgres

    issuer.mode = "hang"
    c = Cluster("shutdown", preload=True)
    try:
        with c.connect() as su:
            su.execute("CREATE EXTENSION kinde_rls")
            su.execute(f"ALTER DATABASE postgres SET kinde_rls.domain = '{issuer.base}'")
            su.execute("ALTER DATABASE postgres SET kinde_rls.jwks_timeout_ms = 10000")
        conn = c.connect()
        pid = one(conn, "SELECT pg_backend_pid()")
        th, box = in_thread(conn, "SELECT verify_jwt(%s)", (issuer.token("kp_a"),))
        with c.connect() as su:
            _wait_until_waiting(su, pid)
        t0 = time.monotonic()
        _as_postgres([f"{BINDIR}/pg_ctl", "-D", c.data, "-w", "-t", "20", "-m", "fast", "stop"],
                     stdout=subprocess.DEVNULL)
        stopped = time.monotonic() - t0
        th.join(issuer.hang_seconds)
        assert stopped < issuer.hang_seconds / 2, stopped
        assert isinstance(box["error"], psycopg.OperationalError), box
        conn.close()
        issuer.mode = "ok"
        c.start()
        with c.connect() as s:
            assert one(s, "SELECT verify_jwt(%s)->>'sub'", (issuer.token("kp_b"),)) == "kp_b"
    finally:
        c.stop()


def test_cancelled_statements_keep_at_most_two_requests_in_flight(issuer, keys_db):
    """With nothing cached and a hanging issuer, a session that keeps cancelling its statements
    does not start a request per statement: besides the abandoned request it starts one fresh
    one (the issuer may have recovered), then waits for those."""
    issuer.mode = "hang"
    connect = keys_db(domain=issuer.base, jwks_timeout_ms=8000)
    with connect() as c:
        c.execute("SET statement_timeout = '50ms'")
        t0, tries = time.monotonic(), 0
        while time.monotonic() - t0 < 1.5 or tries < 10:
            with pytest.raises(psycopg.Error) as ei:
                c.execute("SELECT verify_jwt(%s)", (issuer.token("kp_a"),))
            assert ei.value.sqlstate == "57014"
            tries += 1
        assert time.monotonic() - t0 < 8.0, "the fetch timeout passed: a third request is allowed then"
    assert issuer.count("discovery") == 2


def test_an_abandoned_answer_never_brings_back_rotated_keys(issuer, keys_db):
    """A fetch cancelled before its slow answer arrived: after the issuer rotated its key, that
    old answer must not come back as this session's next fetch, nor reach other sessions."""
    connect = keys_db(domain=issuer.base, jwks_cache_ttl=1, jwks_min_refresh=0, jwks_timeout_ms=1500)
    old = issuer.token("kp_old")
    issuer.delay = 0.6
    with connect() as a, connect() as b:
        a.execute("SET statement_timeout = '200ms'")
        with pytest.raises(psycopg.Error) as ei:
            a.execute("SELECT verify_jwt(%s)", (old,))
        assert ei.value.sqlstate == "57014"
        a.execute("RESET statement_timeout")
        time.sleep(1.5)  # the abandoned request has answered, with the old key
        issuer.delay = 0
        issuer.rotate()
        new = issuer.token("kp_new")
        assert one(b, "SELECT verify_jwt(%s)->>'sub'", (new,)) == "kp_new"
        time.sleep(2.6)  # b's keys expire; the abandoned answer is past the fetch timeout
        refused(a, "SELECT verify_jwt(%s)", (old,), check="key")  # a fetches: the current keys
        for conn in (a, b):
            refused(conn, "SELECT verify_jwt(%s)", (old,), check="key")
            assert one(conn, "SELECT verify_jwt(%s)->>'sub'", (new,)) == "kp_new"
