"""Trust-bearing settings are superuser-only, before and after the library loads, and the
secret cannot be read by other roles. Checked from fresh non-superuser connections."""

import os

import psycopg
import pytest
from helpers import one, wait_for_setting
from kinde import CLIENT_SECRET
from pg import Cluster

TRUST_BEARING = ["issuer", "audience", "jwks", "secret", "secret_file", "leeway", "trust_request_claims", "require_sub",
                 "cache_size", "domain", "jwks_url", "providers", "jwks_timeout_ms", "jwks_cache_ttl", "jwks_min_refresh",
                 "jwks_max_stale", "anonymous_roles"]


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


def test_secret_is_not_readable_by_non_superusers(conf_secret_cluster):
    """The secret is set in postgresql.conf here, so it is there to be found if it leaks."""
    with conf_secret_cluster.connect(user="app_user") as c:
        for sql in ["SHOW kinde_rls.secret", "SELECT current_setting('kinde_rls.secret')"]:
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                c.execute(sql)
        assert one(c, "SELECT count(*) FROM pg_settings WHERE name = 'kinde_rls.secret'") == 0
        assert one(c, "SELECT count(*) FROM pg_settings WHERE name LIKE 'kinde_rls.%'") > 0
        assert SECRET_IN_CONF not in repr(c.execute("SELECT * FROM pg_settings").fetchall())
        assert SECRET_IN_CONF not in repr(c.execute("SELECT * FROM pg_show_all_settings()").fetchall())
    with conf_secret_cluster.connect() as su:
        assert one(su, "SHOW kinde_rls.secret") == SECRET_IN_CONF


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
        assert one(su, "SELECT count(*) FROM pg_db_role_setting WHERE array_to_string(setconfig, ',') LIKE '%kinde_rls.secret=%'") == 0


def test_short_secret_is_a_config_error_naming_the_setting(cluster, signers):
    with cluster.connect(dbname="app") as su:
        su.execute("SET kinde_rls.secret_file = ''")
        su.execute("SET kinde_rls.secret = 'too-short'")
        with pytest.raises(psycopg.Error) as ei:
            su.execute("SELECT verify_jwt(%s)", (signers["rsa"].sign({"sub": "a", "exp": 9999999999}, "RS256"),))
        assert ei.value.sqlstate == "22023"
        assert "kinde_rls.secret" in ei.value.diag.message_hint


def test_bad_jwks_is_a_config_error_naming_the_setting(cluster, signers):
    with cluster.connect(dbname="app") as su:
        with pytest.raises(psycopg.Error) as ei:
            su.execute("SET kinde_rls.jwks = '{\"keys\": 1}'")
        assert ei.value.sqlstate == "22023"
        assert ei.value.diag.message_primary == "kinde_rls.jwks cannot be used: member keys must be an array"
        assert "kinde_rls.jwks" in ei.value.diag.message_hint
        # The database's own key set is still in force.
        token = signers["rsa"].sign({"sub": "a", "exp": 9999999999, "iss": "https://acme.kinde.com"}, "RS256")
        assert one(su, "SELECT verify_jwt(%s) ->> 'sub'", (token,)) == "a"


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


def test_without_preload_kinde_rls_secret_is_refused_because_it_was_readable(bare_cluster):
    """Until a backend loads kinde_rls, a kinde_rls.secret line in postgresql.conf is a plain
    placeholder that any role can read (and then mint tokens for anyone with sign_jwt). So
    without preloading, kinde_rls.secret is not used at all: 22023, with a HINT saying how to
    fix it, from verify_jwt() and get_user_id(); jwt_explain() and jwks_status() report it as a
    row."""
    from kinde import kinde_id_claims

    secret = "placeholder-secret-0123456789abcdefghij"
    with bare_cluster.connect(dbname="app") as su:
        su.execute("LOAD 'kinde_rls'")  # PostgreSQL 15 refuses ALTER SYSTEM on an unloaded name
        su.execute(f"ALTER SYSTEM SET kinde_rls.secret = '{secret}'")
        su.execute("SELECT pg_reload_conf()")
    wait_for_setting(bare_cluster, "kinde_rls.secret", secret)
    t = jwt_hs256(kinde_id_claims("kp_someone"), secret)
    try:
        with bare_cluster.connect(user="app_user", dbname="app") as c:
            # What the library cannot prevent: the placeholder is readable before it loads...
            assert one(c, "SELECT current_setting('kinde_rls.secret', true)") == secret
            # ...which is why it is never used.
            with pytest.raises(psycopg.Error) as ei:
                c.execute("SELECT verify_jwt(%s)", (t,))
            e = ei.value
            assert e.sqlstate == "22023", e
            assert e.diag.message_primary.startswith("kinde_rls.secret is not used: kinde_rls is not in shared_preload_libraries")
            assert "kinde_rls.secret_file" in e.diag.message_hint and "shared_preload_libraries" in e.diag.message_hint
            # The diagnostic tools report it rather than raise it.
            rows = c.execute("SELECT * FROM jwt_explain(%s)", (t,)).fetchall()
            assert len(rows) == 1 and rows[0][:2] == ("config", False), rows
            assert rows[0][2].startswith("kinde_rls.secret is not used: kinde_rls is not in shared_preload_libraries")
            assert "(hint: " in rows[0][2] and "kinde_rls.secret_file" in rows[0][2]
            status = c.execute("SELECT source, keys, last_error FROM jwks_status()").fetchall()
            assert len(status) == 1 and status[0][:2] == ("configuration", 0), status
            assert status[0][2].startswith("kinde_rls.secret is not used")
            assert secret not in repr(rows) + repr(status)
            c.execute("SELECT set_config('kinde_rls.token', %s, false)", (t,))
            with pytest.raises(psycopg.Error) as ei:
                c.execute("SELECT get_user_id()")
            assert ei.value.sqlstate == "22023"
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                c.execute("SHOW kinde_rls.secret")  # once loaded, the real setting is protected
    finally:
        with bare_cluster.connect(dbname="app") as su:
            su.execute("ALTER SYSTEM RESET kinde_rls.secret")
            su.execute("SELECT pg_reload_conf()")
        wait_for_setting(bare_cluster, "kinde_rls.secret", None)


def test_without_preload_the_secret_file_works(bare_cluster):
    from kinde import kinde_id_claims
    from pg import write_server_file

    secret = "file-secret-0123456789abcdefghijklmnopq"
    path = os.path.join(bare_cluster.dir, "secret")
    write_server_file(path, secret, 0o600)
    with bare_cluster.connect(dbname="app") as su:
        su.execute(f"SET kinde_rls.secret_file = '{path}'")
        assert one(su, "SELECT verify_jwt(%s)->>'sub'", (jwt_hs256(kinde_id_claims("kp_file"), secret),)) == "kp_file"


def test_alter_role_all_set_secret_stored_before_the_library_loaded_is_refused():
    """ALTER ROLE ALL SET stores into pg_db_role_setting (readable by every role) without asking
    the library when it is not loaded; once the server preloads it, the value reaches the
    setting with source PGC_S_GLOBAL at every connection, and is refused there."""
    c = Cluster("roleall", preload=False)
    try:
        with c.connect() as su:
            su.execute(f"ALTER ROLE ALL SET kinde_rls.secret = '{'g' * 40}'")
        with open(os.path.join(c.data, "postgresql.conf"), "a") as f:
            f.write("shared_preload_libraries = 'kinde_rls'\n")
        c.restart()
        with c.connect() as su:
            su.execute("CREATE EXTENSION kinde_rls")
            assert one(su, "SHOW kinde_rls.secret") == ""
            assert "every role can read" in c.server_log()
    finally:
        c.stop()


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


# -- the HMAC secret is never public key material (issue: algorithm confusion) ----------------

def _hs256_with(secret: bytes, claims: dict) -> str:
    """HS256 with any bytes as the key (PyJWT rightly refuses a PEM as an HMAC secret; an
    attacker holding the public key does not)."""
    import base64
    import hashlib
    import hmac
    import json

    def b64(b):
        return base64.urlsafe_b64encode(b).rstrip(b"=").decode()

    h = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    p = b64(json.dumps(claims).encode())
    sig = hmac.new(secret, f"{h}.{p}".encode(), hashlib.sha256).digest()
    return f"{h}.{p}.{b64(sig)}"


def _public_texts(signers):
    import json

    from kinde import pem_public

    import base64

    from cryptography.hazmat.primitives import serialization

    pem = pem_public(signers["rsa"].key)
    der = base64.b64decode("".join(pem.splitlines()[1:-1]))
    ssh = signers["ed25519"].key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                           serialization.PublicFormat.OpenSSH).decode()
    body = ssh.split()[1]
    jwks_text = json.dumps({"keys": [signers["rsa"].jwk()]})
    return {
        "pem": pem,
        "pem_after_a_comment": "# kinde public key\n" + pem,
        "pem_lower_case": pem.lower(),
        "jwk": json.dumps(signers["rsa"].jwk()),
        "jwks": jwks_text,
        "jwks_after_a_bom": "\ufeff" + jwks_text + "\r\n",
        "base64_der": "".join(pem.splitlines()[1:-1]),
        "hex_der": der.hex(),
        "ssh": ssh,
        "ssh_rfc4716": f"---- BEGIN SSH2 PUBLIC KEY ----\n{body}\n---- END SSH2 PUBLIC KEY ----\n",
        "ssh_body": body,
        "jwk_as_a_json_string": json.dumps(json.dumps(signers["rsa"].jwk())),
        "jwk_percent_encoded": "".join(f"%{b:02X}" for b in json.dumps(signers["rsa"].jwk()).encode()),
        "der_after_a_label": "public_key: " + "".join(pem.splitlines()[1:-1]),
        "pem_without_its_begin_line": "\n".join(pem.splitlines()[1:]),
        "env_file_line": "KINDE_PUBLIC_KEY=" + "".join(pem.splitlines()[1:-1]) + "\n",
        "python_repr": repr(signers["rsa"].jwk()),
        "ec_point_base64": base64.b64encode(signers["p256"].key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)).decode(),
    }


PUBLIC_FORMS = ["pem", "pem_after_a_comment", "pem_lower_case", "jwk", "jwks", "jwks_after_a_bom", "base64_der",
                "hex_der", "ssh", "ssh_rfc4716", "ssh_body", "jwk_as_a_json_string", "jwk_percent_encoded",
                "der_after_a_label", "pem_without_its_begin_line", "ec_point_base64", "env_file_line",
                "python_repr"]


@pytest.mark.parametrize("form", PUBLIC_FORMS)
def test_public_key_text_in_kinde_rls_secret_is_refused(cluster, signers, form):
    """Whoever has the public key could forge HS256 tokens if it were the HMAC secret."""
    from kinde import kinde_access_claims

    text = _public_texts(signers)[form]
    forged = _hs256_with(text.encode(), kinde_access_claims("kp_victim"))
    with cluster.connect(dbname="app") as su:
        su.execute("SET kinde_rls.secret_file = ''")
        su.execute("SELECT set_config('kinde_rls.secret', %s, false)", (text,))
        with pytest.raises(psycopg.Error) as ei:
            su.execute("SELECT verify_jwt(%s)", (forged,))
        assert ei.value.sqlstate == "22023", ei.value
        assert ei.value.diag.message_primary.startswith("kinde_rls.secret holds "), ei.value.diag.message_primary
        assert "kinde_rls.secret" in ei.value.diag.message_hint
        su.execute("SELECT set_config('kinde_rls.token', %s, false)", (forged,))
        with pytest.raises(psycopg.Error) as ei:
            su.execute("SELECT get_user_id()")
        assert ei.value.sqlstate == "22023"


@pytest.mark.parametrize("form", ["jwks", "jwks_after_a_bom", "ssh_rfc4716", "pem"])
def test_public_key_text_in_the_secret_file_is_refused(cluster, signers, form):
    from kinde import kinde_access_claims
    from pg import write_server_file

    text = _public_texts(signers)[form]
    path = os.path.join(cluster.dir, f"secret_is_{form}")
    write_server_file(path, text + "\n", 0o600)
    # Forged with the file's bytes as the server would read them (less a trailing newline).
    forged = _hs256_with(text.rstrip("\r\n").encode(), kinde_access_claims("kp_victim"))
    with cluster.connect(dbname="app") as su:
        su.execute(f"SET kinde_rls.secret_file = '{path}'")
        with pytest.raises(psycopg.Error) as ei:
            su.execute("SELECT verify_jwt(%s)", (forged,))
    assert ei.value.sqlstate == "22023"
    assert ei.value.diag.message_primary.startswith("kinde_rls.secret_file holds "), ei.value.diag.message_primary
    assert "kinde_rls.secret_file" in ei.value.diag.message_hint


@pytest.mark.parametrize("form", PUBLIC_FORMS)
def test_public_key_text_as_an_explicit_hmac_key_is_refused(user_conn, signers, form):
    from kinde import kinde_access_claims

    text = _public_texts(signers)[form]
    forged = _hs256_with(text.encode(), kinde_access_claims("kp_victim"))
    for sql in ["SELECT verify_jwt(%s, %s)", "SELECT verify_jwt(%s, %s, 'HS256')"]:
        with pytest.raises(psycopg.Error) as ei:
            user_conn.execute(sql, (forged, text))
        assert ei.value.sqlstate == "22023", (sql, ei.value)
    with pytest.raises(psycopg.Error) as ei:
        user_conn.execute("SELECT sign_jwt('{\"sub\":\"x\"}'::jsonb, %s, 'HS256')", (text,))
    assert ei.value.sqlstate == "22023"


def test_secret_length_is_never_told(cluster, signers):
    """A refusal or a configuration error that says how long the secret is narrows a search."""
    import jwt
    from kinde import kinde_id_claims

    with cluster.connect(dbname="app") as su:
        su.execute("SET kinde_rls.secret_file = ''")
        su.execute("SET kinde_rls.secret = 'short-secret-of-23-byte'")
        with pytest.raises(psycopg.Error) as ei:
            su.execute("SELECT verify_jwt(%s)", (signers["rsa"].sign({"sub": "a", "exp": 9999999999}, "RS256"),))
        assert ei.value.sqlstate == "22023"
        assert "23" not in str(ei.value) + (ei.value.diag.message_hint or "")
    # The configured secret (50 bytes) is too short for HS512: the refusal says what is needed only.
    t = jwt.encode(kinde_id_claims("kp_hs"), CLIENT_SECRET, algorithm="HS512")
    with cluster.connect(user="app_user", dbname="app") as c:
        with pytest.raises(psycopg.Error) as ei:
            c.execute("SELECT verify_jwt(%s)", (t,))
        assert ei.value.sqlstate == "28000"
        assert "64 bytes" in ei.value.diag.message_detail
        assert not _mentions_number(ei.value.diag.message_detail, len(CLIENT_SECRET))
        details = " ".join(r[2] for r in c.execute("SELECT * FROM jwt_explain(%s)", (t,)))
        assert not _mentions_number(details, len(CLIENT_SECRET)) and "64 bytes" in details


def _mentions_number(text: str, n: int) -> bool:
    """`n` as a number of its own in `text`, times of day and epoch seconds aside (a token valid
    until 12:50:07 says nothing about a 50-byte secret)."""
    import re

    text = re.sub(r"\d{1,2}:\d{2}(:\d{2})?(\.\d+)?", " ", text)
    text = re.sub(r"\d{4}-\d{2}-\d{2}", " ", text)
    return re.search(rf"(?<![\d.]){n}(?![\d.])", text) is not None


# -- monitoring roles do not read the secret ---------------------------------------------------

SECRET_IN_CONF = "conf-secret-0123456789abcdefghijklmnopqrstuv"


@pytest.fixture(scope="module")
def conf_secret_cluster():
    """Preloaded, with the secret in postgresql.conf (the documented place besides a file), a
    monitoring role and an ordinary one."""
    c = Cluster("confsecret", preload=True, conf={"kinde_rls.secret": f"'{SECRET_IN_CONF}'"})
    try:
        with c.connect() as su:
            su.execute("CREATE EXTENSION kinde_rls")
            su.execute("CREATE ROLE mon LOGIN")
            su.execute("GRANT pg_monitor TO mon")
            su.execute("CREATE ROLE reader LOGIN")
            su.execute("GRANT pg_read_all_settings TO reader")
            su.execute("CREATE ROLE app_user LOGIN")
        yield c
    finally:
        c.stop()


@pytest.mark.parametrize("role", ["mon", "reader"])
def test_monitoring_roles_see_a_mask_not_the_secret(conf_secret_cluster, role):
    with conf_secret_cluster.connect(user=role) as c:
        for sql in ["SHOW kinde_rls.secret", "SELECT current_setting('kinde_rls.secret')",
                    "SELECT current_setting('kinde_rls.secret', true)"]:
            value = one(c, sql)
            assert value == "(set; only superusers can read it)", (sql, value)
        rows = c.execute("SELECT * FROM pg_settings WHERE name LIKE 'kinde_rls.%'").fetchall()
        assert rows and SECRET_IN_CONF not in repr(rows)
        assert SECRET_IN_CONF not in repr(c.execute("SELECT * FROM pg_show_all_settings()").fetchall())
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            c.execute("SELECT * FROM pg_file_settings")


def test_the_secret_from_postgresql_conf_works_and_superusers_read_it(conf_secret_cluster):
    from kinde import kinde_id_claims

    t = jwt_hs256(kinde_id_claims("kp_conf"), SECRET_IN_CONF)
    with conf_secret_cluster.connect(user="app_user") as c:
        assert one(c, "SELECT verify_jwt(%s)->>'sub'", (t,)) == "kp_conf"
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            c.execute("SHOW kinde_rls.secret")
    with conf_secret_cluster.connect() as su:
        assert one(su, "SHOW kinde_rls.secret") == SECRET_IN_CONF


def jwt_hs256(claims, secret):
    import jwt

    return jwt.encode(claims, secret, algorithm="HS256")


# -- a replaced secret file is noticed at the next statement -----------------------------------

def test_replaced_secret_file_takes_effect_at_the_next_statement(cluster):
    """Cache hits and the per-row fast path must not keep an identity the new secret refuses."""
    from kinde import kinde_id_claims
    from pg import write_server_file

    path = os.path.join(cluster.dir, "kinde_client_secret")
    new_secret = "N" * len(CLIENT_SECRET)  # same length: the size alone does not give it away
    old = jwt_hs256(kinde_id_claims("kp_old_secret"), CLIENT_SECRET)
    new = jwt_hs256(kinde_id_claims("kp_new_secret"), new_secret)
    try:
        with cluster.connect(user="app_user", dbname="app") as c:
            c.execute("SELECT set_config('kinde_rls.token', %s, false)", (old,))
            assert one(c, "SELECT get_user_id()") == "kp_old_secret"
            assert one(c, "SELECT verify_jwt(%s)->>'sub'", (old,)) == "kp_old_secret"  # cached
            write_server_file(path, new_secret + "\n", 0o600)  # rewritten in place
            with pytest.raises(psycopg.Error) as ei:
                c.execute("SELECT get_user_id()")
            assert (ei.value.sqlstate, ei.value.diag.message_primary) == \
                ("28000", "JWT refused: signature check failed (invalid signature)")
            with pytest.raises(psycopg.Error) as ei:
                c.execute("SELECT verify_jwt(%s)", (old,))
            assert ei.value.sqlstate == "28000"
            assert one(c, "SELECT verify_jwt(%s)->>'sub'", (new,)) == "kp_new_secret"
            c.execute("SELECT set_config('kinde_rls.token', %s, false)", (new,))
            assert one(c, "SELECT get_user_id()") == "kp_new_secret"
            # Swapped for another file (mv): noticed too.
            tmp = path + ".next"
            write_server_file(tmp, CLIENT_SECRET + "\n", 0o600)
            os.rename(tmp, path)
            with pytest.raises(psycopg.Error) as ei:
                c.execute("SELECT get_user_id()")
            assert ei.value.sqlstate == "28000"
            c.execute("RESET kinde_rls.token")
    finally:
        write_server_file(path, CLIENT_SECRET + "\n", 0o600)


def test_secret_file_is_not_read_when_providers_is_set(cluster, signers):
    """kinde_rls.providers is the whole configuration: a missing secret file is not its business."""
    import json

    from kinde import jwks as jwks_text, kinde_access_claims

    providers = json.dumps([{"issuer": "https://p.example", "jwks": json.loads(jwks_text(signers["rsa"]))}])
    t = signers["rsa"].sign(kinde_access_claims("kp_prov", iss="https://p.example"), "RS256")
    with cluster.connect(dbname="app") as su:
        su.execute("SET kinde_rls.secret_file = '/nonexistent/secret'")
        su.execute("SELECT set_config('kinde_rls.providers', %s, false)", (providers,))
        assert one(su, "SELECT verify_jwt(%s)->>'sub'", (t,)) == "kp_prov"


# -- setting text that is not UTF-8 ------------------------------------------------------------

@pytest.fixture
def sql_ascii_db(cluster):
    """A SQL_ASCII database: PostgreSQL accepts any bytes in its settings there."""
    cluster.psql("CREATE DATABASE ascii_db ENCODING 'SQL_ASCII' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0")
    with cluster.connect(dbname="ascii_db") as su:
        su.execute("CREATE EXTENSION kinde_rls")
        su.execute("GRANT CREATE ON SCHEMA public TO PUBLIC")
    yield "ascii_db"
    cluster.psql("DROP DATABASE ascii_db WITH (FORCE)")


def test_a_setting_that_is_not_utf8_is_a_config_error_not_unset(cluster, signers, sql_ascii_db):
    """An issuer that cannot be read must not mean "iss is not checked"."""
    from kinde import jwks as jwks_text, kinde_access_claims

    foreign = signers["rsa"].sign(kinde_access_claims("kp_evil", iss="https://evil.example"), "RS256")
    with cluster.connect(dbname=sql_ascii_db) as su:
        su.execute(f"SET kinde_rls.jwks = '{jwks_text(signers['rsa'])}'")
        su.execute("SET kinde_rls.secret_file = ''")
        su.execute("SET kinde_rls.issuer = 'https://acme.kinde.com'")
        with pytest.raises(psycopg.Error) as ei:
            su.execute(r"SET kinde_rls.issuer = E'https://acme.kinde.com\xff'")
        assert ei.value.sqlstate == "22023"
        assert ei.value.diag.message_primary == "kinde_rls.issuer is not valid UTF-8"
        assert "kinde_rls.issuer" in ei.value.diag.message_hint
        # Refused, not unset: the issuer set before still refuses a foreign token.
        with pytest.raises(psycopg.Error) as ei:
            su.execute("SELECT verify_jwt(%s)", (foreign,))
        assert ei.value.sqlstate == "28000" and "iss check failed" in ei.value.diag.message_primary


def test_a_token_that_is_not_utf8_is_refused_not_anonymous(cluster, sql_ascii_db):
    with cluster.connect(user="app_user", dbname=sql_ascii_db) as c:
        c.execute(r"SET kinde_rls.token = E'eyJh\xff.eyJi.c2ln'")
        with pytest.raises(psycopg.Error) as ei:
            c.execute("SELECT get_user_id()")
        assert ei.value.sqlstate == "28000"
        assert ei.value.diag.message_detail == "kinde_rls.token is not valid UTF-8"
        c.execute("RESET kinde_rls.token")
        c.execute(r"""SELECT set_config('request.headers', E'{"authorization": "Bearer \xff"}', false)""")
        with pytest.raises(psycopg.Error) as ei:
            c.execute("SELECT get_user_id()")
        assert ei.value.sqlstate == "28000"


# -- non-UTF-8 arguments and unreadable jsonb: never XX000 -------------------------------------

def test_arguments_that_are_not_utf8_are_refused_not_panics(cluster, sql_ascii_db):
    with cluster.connect(user="app_user", dbname=sql_ascii_db) as c:
        for sql in [r"SELECT verify_jwt(E'eyJh\xff.eyJi.c2ln')", r"SELECT jwt_decode_unverified(E'\xff.a.b')"]:
            with pytest.raises(psycopg.Error) as ei:
                c.execute(sql)
            assert ei.value.sqlstate == "28000", (sql, ei.value)
            assert ei.value.diag.message_detail == "the token is not valid UTF-8"
        for sql, arg in [(r"SELECT verify_jwt('a.b.c', E'\xff' || repeat('k', 40), 'HS256')", "key"),
                         (r"SELECT verify_jwt('a.b.c', repeat('k', 40), E'HS\xff')", "algorithm"),
                         (r"SELECT sign_jwt('{}'::jsonb, E'\xff' || repeat('k', 40))", "key")]:
            with pytest.raises(psycopg.Error) as ei:
                c.execute(sql)
            assert ei.value.sqlstate == "22023", (sql, ei.value)
            assert ei.value.diag.message_primary == f"{arg} is not valid UTF-8"
        rows = c.execute(r"""SELECT "check", ok FROM jwt_explain(E'eyJh\xff.eyJi.c2ln')""").fetchall()
        assert rows[0] == (b"format", False)  # SQL_ASCII: text comes back as bytes
        assert one(c, r"SELECT has_role(E'\xff')") is False
        assert one(c, r"SELECT has_permission(E'\xff')") is False
        assert one(c, r"SELECT get_claim(E'\xff')") is None
        assert one(c, r"SELECT get_feature_flag(E'\xff')") is None


@pytest.mark.parametrize("claims", ['{"n": 1e400}', '{"deep": ' + "[" * 200 + "1" + "]" * 200 + "}"])
def test_jsonb_that_cannot_be_read_is_a_bad_argument_not_a_panic(user_conn, claims):
    for sql in ["SELECT sign_jwt(%s::jsonb, repeat('k', 40))",
                "SELECT sign_jwt('{}'::jsonb, repeat('k', 40), 'HS256', %s::jsonb)"]:
        with pytest.raises(psycopg.Error) as ei:
            user_conn.execute(sql, (claims,))
        assert ei.value.sqlstate == "22023", (sql, ei.value)
        assert "cannot be read" in ei.value.diag.message_primary


# -- an identity can only be set in a session ---------------------------------------------------

def test_a_role_cannot_make_its_token_every_connections_default(cluster, signers):
    """Any role may set its own defaults (ALTER ROLE … SET): a token stored there would be the
    identity of every later connection of that role, surviving RESET ALL and DISCARD ALL."""
    from kinde import kinde_access_claims

    mallory = signers["rsa"].sign(kinde_access_claims("kp_mallory"), "RS256")
    with cluster.connect(user="app_user", dbname="app") as c:
        with pytest.raises(psycopg.Error) as ei:
            c.execute(f"ALTER ROLE app_user SET kinde_rls.token = '{mallory}'")
        assert ei.value.sqlstate == "22023"
        assert "can only be set in a session" in ei.value.diag.message_primary
        assert "SET LOCAL" in ei.value.diag.message_hint
    with cluster.connect(dbname="app") as su:
        for sql in [f"CREATE FUNCTION as_mallory() RETURNS int LANGUAGE sql SET kinde_rls.token = '{mallory}' AS 'SELECT 1'",
                    f"ALTER DATABASE app SET kinde_rls.token = '{mallory}'",
                    f"ALTER ROLE ALL SET kinde_rls.token = '{mallory}'"]:
            with pytest.raises(psycopg.Error) as ei:
                su.execute(sql)
            assert ei.value.sqlstate == "22023", sql
    # A connection option is refused too: it would be the session's reset value.
    with pytest.raises(psycopg.Error) as ei:
        psycopg.connect(cluster.conninfo("app_user", "app"), options=f"-c kinde_rls.token={mallory}")
    assert "can only be set in a session" in str(ei.value)


@pytest.mark.parametrize("name", ["request.headers", "request.jwt", "request.jwt.claims"])
def test_request_settings_cannot_be_stored_as_defaults(cluster, signers, name):
    """The same for the request settings, which kinde_rls defines: a token stored as a role,
    database or function default would be readable by every role (pg_db_role_setting,
    pg_proc.proconfig) and is not a request's, so storing one is refused (22023) — by a
    superuser and by a role for itself; so is a connection option. Their unset value `{}`
    may be stored."""
    import json

    from kinde import kinde_access_claims

    mallory = signers["rsa"].sign(kinde_access_claims("kp_mallory"), "RS256")
    value = json.dumps({"authorization": f"Bearer {mallory}"}) if name == "request.headers" else mallory
    with cluster.connect(dbname="app") as su:
        for stmt in [f"ALTER ROLE app_user SET {name} = '{value}'", f"ALTER DATABASE app SET {name} = '{value}'",
                     f"ALTER ROLE ALL SET {name} = '{value}'",
                     f"CREATE FUNCTION as_mallory() RETURNS int LANGUAGE sql SET {name} = '{value}' AS 'SELECT 1'"]:
            with pytest.raises(psycopg.Error) as ei:
                su.execute(stmt)
            assert ei.value.sqlstate == "22023", stmt
            assert "can only be set in a session" in ei.value.diag.message_primary
            assert mallory not in str(ei.value) and mallory not in (ei.value.diag.message_detail or "")
        if name != "request.jwt":
            su.execute(f"ALTER ROLE app_user SET {name} = '{{}}'")
            su.execute(f"ALTER ROLE app_user RESET {name}")
    with cluster.connect(user="app_user", dbname="app") as c:
        with pytest.raises(psycopg.Error) as ei:
            c.execute(f"ALTER ROLE app_user SET {name} = '{value}'")
        assert ei.value.sqlstate == "22023"
        # In the session it is the request's.
        other = signers["rsa"].sign(kinde_access_claims("kp_request"), "RS256")
        c.execute("SELECT set_config(%s, %s, false)",
                  (name, json.dumps({"authorization": f"Bearer {other}"}) if name == "request.headers" else other))
        assert one(c, "SELECT get_user_id()") == "kp_request"
        c.execute("DISCARD ALL")
        assert one(c, "SELECT get_user_id()") is None
    with pytest.raises(psycopg.Error) as ei:
        psycopg.connect(cluster.conninfo("app_user", "app"), options=f"-c {name}={value}")
    assert "can only be set in a session" in str(ei.value)


@pytest.mark.parametrize("name", ["request.headers", "request.jwt.claims"])
def test_a_request_default_stored_before_the_library_loaded_is_not_a_request(bare_cluster, signers, name):
    """A default stored while kinde_rls was not loaded in the storing session is dropped (with a
    WARNING) when the library loads in a later session, and is no identity — also after
    DISCARD ALL; what counts is a value set in the session."""
    import json

    from kinde import jwks, kinde_access_claims

    mallory = signers["rsa"].sign(kinde_access_claims("kp_mallory"), "RS256")
    value = json.dumps({"authorization": f"Bearer {mallory}"}) if name == "request.headers" else mallory
    with bare_cluster.connect(dbname="app") as su:
        su.execute(f"ALTER DATABASE app SET kinde_rls.jwks = '{jwks(signers['rsa'])}'")
        su.execute(f"ALTER ROLE app_user SET {name} = '{value}'")  # library not loaded here
    try:
        with bare_cluster.connect(user="app_user", dbname="app") as c:
            warnings = []
            c.add_notice_handler(lambda d: warnings.append(d.message_primary))
            assert one(c, "SELECT get_user_id()") is None
            assert any("can only be set in a session" in (w or "") for w in warnings), warnings
            assert all(mallory not in (w or "") for w in warnings)
            c.execute("DISCARD ALL")
            assert one(c, "SELECT get_user_id()") is None
            c.execute("SELECT set_config(%s, %s, false)", (name, value))
            assert one(c, "SELECT get_user_id()") == "kp_mallory"
    finally:
        with bare_cluster.connect(dbname="app") as su:
            su.execute(f"ALTER ROLE app_user RESET {name}")
            su.execute("ALTER DATABASE app RESET kinde_rls.jwks")


def test_a_malformed_setting_at_server_start_fails_closed(signers):
    """At server start the library is defined after postgresql.conf was read; refusing the
    value there would leave kinde_rls.providers unset and the single-provider settings (here
    a key set that verifies the token) in force. It is kept instead, and every verification
    fails with its error, which jwks_status() shows."""
    import json

    from kinde import jwks, kinde_access_claims

    conf = {"kinde_rls.providers": "'[{\"issuer\": \"https://a.example\", \"jwks_urll\": \"https://a.example/jwks\"}]'",
            "kinde_rls.jwks": "'" + jwks(signers["rsa"]) + "'"}
    c = Cluster("badconf", preload=True, conf=conf)
    try:
        token = signers["rsa"].sign(kinde_access_claims("kp_start"), "RS256")
        with c.connect() as su:
            su.execute("CREATE EXTENSION kinde_rls")
            assert json.loads(one(su, "SHOW kinde_rls.providers"))[0]["jwks_urll"]
            with pytest.raises(psycopg.Error) as ei:
                su.execute("SELECT verify_jwt(%s)", (token,))
            assert ei.value.sqlstate == "22023" and "kinde_rls.providers" in ei.value.diag.message_hint
            row = su.execute("SELECT source, last_error FROM jwks_status()").fetchone()
            assert row[0] == "configuration" and "kinde_rls.providers" in row[1], row
            # Parallel workers replay the leader's settings: queries that have nothing to do with
            # kinde_rls still run.
            su.execute("CREATE TABLE many AS SELECT i FROM generate_series(1, 20000) i")
            for stmt in ["SET max_parallel_workers_per_gather = 2", "SET parallel_setup_cost = 0",
                         "SET parallel_tuple_cost = 0", "SET min_parallel_table_scan_size = 0",
                         "SET parallel_leader_participation = off"]:
                su.execute(stmt)
            assert "Gather" in "\n".join(r[0] for r in su.execute("EXPLAIN SELECT count(*) FROM many"))
            assert one(su, "SELECT count(*) FROM many") == 20000
            # Set in a session, the same value is refused at once.
            with pytest.raises(psycopg.Error) as ei:
                su.execute("SET kinde_rls.providers = '[{\"issuer\": \"x\", \"jwks_urll\": \"https://x/j\"}]'")
            assert ei.value.sqlstate == "22023"
    finally:
        c.stop()


def test_a_reload_with_a_malformed_setting_fails_closed(signers):
    """The admin moves from issuer/audience to providers, with a typo, and reloads. Refusing the
    providers line would keep it unset while the removal of issuer and audience applied — every
    issuer and audience accepted. It is taken instead, and verification fails with its error,
    in a session open since before the reload and in a new one."""
    import json
    import time

    from kinde import jwks, kinde_access_claims

    keys = jwks(signers["rsa"])
    c = Cluster("reloadconf", preload=True, conf={"kinde_rls.jwks": f"'{keys}'",
                                                   "kinde_rls.issuer": "'https://a.example'",
                                                   "kinde_rls.audience": "'api'"})
    try:
        good = signers["rsa"].sign(kinde_access_claims("kp_a", iss="https://a.example", aud=["api"]), "RS256")
        evil = signers["rsa"].sign(kinde_access_claims("kp_a", iss="https://evil.example", aud=["other"]), "RS256")
        with c.connect() as before:
            before.execute("CREATE EXTENSION kinde_rls")
            assert one(before, "SELECT verify_jwt(%s) ->> 'sub'", (good,)) == "kp_a"
            conf_path = os.path.join(c.data, "postgresql.conf")
            lines = [l for l in open(conf_path).read().splitlines()
                     if not l.startswith(("kinde_rls.issuer", "kinde_rls.audience"))]
            typo = json.dumps([{"issuer": "https://a.example", "jwks": json.loads(keys), "audiences": ["api"]}])
            lines.append(f"kinde_rls.providers = '{typo}'")
            with open(conf_path, "w") as f:
                f.write("\n".join(lines) + "\n")
            loaded = one(before, "SELECT pg_conf_load_time()")
            before.execute("SELECT pg_reload_conf()")
            deadline = time.monotonic() + 60
            while one(before, "SELECT pg_conf_load_time()") == loaded:
                assert time.monotonic() < deadline, "the session never reloaded"
                time.sleep(0.05)
            with c.connect() as after:
                for conn in (before, after):
                    assert one(conn, "SHOW kinde_rls.issuer") == ""
                    for token in (good, evil):
                        with pytest.raises(psycopg.Error) as ei:
                            conn.execute("SELECT verify_jwt(%s)", (token,))
                        assert ei.value.sqlstate == "22023", ei.value
                        assert "kinde_rls.providers" in ei.value.diag.message_hint
    finally:
        c.stop()
