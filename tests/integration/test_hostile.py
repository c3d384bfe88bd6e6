"""The hostile-token catalogue: every case refused with SQLSTATE 28000, quickly, by both
verify_jwt() and get_user_id(), as a non-superuser; a control token proves the verifier accepts
good tokens; and no case takes the server down."""

import base64
import json
import time

import jwt
import psycopg
import pytest
from helpers import one
from kinde import CLIENT_SECRET, KINDE_ISS, Signer, kinde_access_claims, pem_public

AUD = "https://api.acme.com"
CATALOGUE_SIZE = 58


def b64(b: bytes) -> str:
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def seg(obj) -> str:
    return b64(json.dumps(obj, separators=(",", ":")).encode())


def good_claims(**extra):
    return kinde_access_claims("kp_victim", aud=[AUD], **extra)


def raw(header: dict, payload: dict, sig: str = "") -> str:
    return f"{seg(header)}.{seg(payload)}.{sig}"


def hmac_with(secret: bytes, header: dict, payload: dict) -> str:
    """HS256 over header.payload with an arbitrary byte string as the secret (PyJWT refuses PEM
    secrets, rightly; an attacker does not)."""
    import hashlib
    import hmac

    si = f"{seg(header)}.{seg(payload)}"
    return si + "." + b64(hmac.new(secret, si.encode(), hashlib.sha256).digest())


def catalogue(s):
    """(name, token, expected check or None) for every hostile case."""
    rsa, p256, stranger, small = s["rsa"], s["p256"], s["stranger"], s["rsa1024"]
    good = rsa.sign(good_claims(), "RS256")
    other = rsa.sign(dict(good_claims(), sub="kp_other"), "RS256")
    h_good, p_good, sig_good = good.split(".")
    rsa_pem = pem_public(rsa.key).encode()
    rsa_jwk = json.dumps(rsa.jwk()).encode()
    c = good_claims()
    body = json.dumps(c).encode()[:-1]
    nul_payload = b64(body + b', "x": "a' + bytes([0]) + b'"}')
    dup_payload = b64(body + b', "sub": "kp_admin"}')
    deep_huge = b64(b'{"a":' + b"[" * 100_000)
    deep = b64(b'{"a":' + b"[" * 5_000)
    cases = [
        ("alg none", raw({"alg": "none", "typ": "JWT"}, c), "algorithm"),
        ("alg None", raw({"alg": "None"}, c), "algorithm"),
        ("alg NONE", raw({"alg": "NONE"}, c), "algorithm"),
        ("alg none with a signature", raw({"alg": "none"}, c, sig_good), "algorithm"),
        ("alg missing", raw({"typ": "JWT", "kid": rsa.kid}, c, sig_good), "algorithm"),
        ("alg not a string", raw({"alg": ["RS256"], "kid": rsa.kid}, c, sig_good), "algorithm"),
        ("alg unknown", raw({"alg": "RS1024", "kid": rsa.kid}, c, sig_good), "algorithm"),
        ("HS256 keyed with the RSA public key PEM", hmac_with(rsa_pem, {"alg": "HS256", "kid": rsa.kid}, c), None),
        ("HS256 keyed with the RSA PEM, no kid", hmac_with(rsa_pem, {"alg": "HS256"}, c), "signature"),
        ("HS256 keyed with the RSA public JWK text", hmac_with(rsa_jwk, {"alg": "HS256", "kid": rsa.kid}, c), None),
        ("RS256 header on an ES256 key's kid", p256.sign(c, "ES256", headers={"alg": "ES256"}).replace(
            seg({"alg": "ES256", "kid": p256.kid, "typ": "JWT"}), seg({"alg": "RS256", "kid": p256.kid, "typ": "JWT"})), None),
        ("ES256 header on the RSA key's kid", raw({"alg": "ES256", "kid": rsa.kid}, c, sig_good), None),
        ("PS256 header, RS256 signature", raw({"alg": "PS256", "kid": rsa.kid, "typ": "JWT"}, c, sig_good), "signature"),
        ("stripped signature", f"{h_good}.{p_good}.", "signature"),
        ("truncated signature", f"{h_good}.{p_good}.{sig_good[:-10]}", None),
        ("transplanted signature", f"{other.split('.')[0]}.{other.split('.')[1]}.{sig_good}", "signature"),
        ("signed by a stranger under the RSA kid", Signer("rsa", kid=rsa.kid).sign(c, "RS256"), "signature"),
        ("jwk header injection", stranger.sign(c, "RS256", headers={"jwk": stranger.jwk()}, kid=False), None),
        ("jku header injection", stranger.sign(c, "RS256", headers={"jku": "https://evil.example/jwks"}), "key"),
        ("x5u header injection", stranger.sign(c, "RS256", headers={"x5u": "https://evil.example/cert.pem"}), "key"),
        ("kid path traversal", Signer("rsa", kid="../../../../etc/passwd").sign(c, "RS256"), "key"),
        ("kid SQL text", Signer("rsa", kid="' OR 1=1; DROP TABLE todos; --").sign(c, "RS256"), "key"),
        ("kid 200 KB", Signer("rsa", kid="k" * 200_000).sign(c, "RS256"), "format"),
        ("kid not a string", raw({"alg": "RS256", "kid": 7}, c, sig_good), "format"),
        ("unknown crit", rsa.sign(c, "RS256", headers={"crit": ["b64"], "b64": False}), "format"),
        ("expired", rsa.sign(good_claims(lifetime=-3600), "RS256"), "exp"),
        ("not yet valid", rsa.sign(good_claims(nbf=int(time.time()) + 3600), "RS256"), "nbf"),
        ("exp missing", rsa.sign({k: v for k, v in c.items() if k != "exp"}, "RS256"), "exp"),
        ("exp a string", rsa.sign(dict(c, exp=str(c["exp"])), "RS256"), "exp"),
        ("exp huge", rsa.sign(dict(c, exp=10**30), "RS256"), "exp"),
        ("exp non-finite", raw({"alg": "RS256", "kid": rsa.kid}, c, sig_good).replace(
            seg(c), b64(json.dumps(c).replace(str(c["exp"]), "1e400").encode())), None),
        ("iss wrong", rsa.sign(dict(c, iss="https://evil.kinde.com"), "RS256"), "iss"),
        ("iss look-alike (trailing slash)", rsa.sign(dict(c, iss=KINDE_ISS + "/"), "RS256"), "iss"),
        ("iss look-alike (case)", rsa.sign(dict(c, iss=KINDE_ISS.upper()), "RS256"), "iss"),
        ("iss an array", rsa.sign(dict(c, iss=[KINDE_ISS]), "RS256"), "iss"),
        ("aud wrong", rsa.sign(dict(c, aud=["https://api.evil.com"]), "RS256"), "aud"),
        ("aud empty (Kinde's default)", rsa.sign(dict(c, aud=[]), "RS256"), "aud"),
        ("sub missing", rsa.sign({k: v for k, v in c.items() if k != "sub"}, "RS256"), "sub"),
        ("sub empty", rsa.sign(dict(c, sub=""), "RS256"), "sub"),
        ("sub a number", rsa.sign(dict(c, sub=123), "RS256"), "sub"),
        ("base64 with padding", f"{h_good}=.{p_good}.{sig_good}", "format"),
        ("base64 standard alphabet", f"{h_good}.{p_good}.{sig_good.replace('-', '+').replace('_', '/')}+/", "format"),
        ("whitespace inside", f"{h_good}.{p_good[:20]} {p_good[20:]}.{sig_good}", "format"),
        ("2 segments", f"{h_good}.{p_good}", "format"),
        ("4 segments", f"{h_good}.{p_good}.{sig_good}.x", "format"),
        ("5 segments (JWE)", "a.b.c.d.e", "format"),
        ("header not JSON", f"{b64(b'not json')}.{p_good}.{sig_good}", "format"),
        ("payload not JSON", f"{h_good}.{b64(b'not json')}.{sig_good}", "format"),
        ("payload a JSON array", f"{h_good}.{seg([c])}.{sig_good}", "format"),
        ("payload invalid UTF-8", f"{h_good}.{b64(bytes([0xff, 0xfe, 0x7b]))}.{sig_good}", "format"),
        ("payload with a NUL byte", f"{h_good}.{nul_payload}.{sig_good}", "format"),
        ("duplicate sub", f"{h_good}.{dup_payload}.{sig_good}", "format"),
        ("100,000-deep nesting", f"{h_good}.{deep_huge}.{sig_good}", "format"),
        ("5,000-deep nesting within the size limit", f"{h_good}.{deep}.{sig_good}", "format"),
        ("a 1 MB token", "a" * 1_000_000 + "." + "b" * 10 + "." + "c", "format"),
        ("signed by a 1024-bit RSA key", small.sign(c, "RS256"), "key"),
        ("HS256 with a guessed secret", jwt.encode(c, "secret" * 8, algorithm="HS256"), "signature"),
        ("HS256 with the secret, wrong iss", jwt.encode(dict(c, iss="https://evil.example"), CLIENT_SECRET, algorithm="HS256"), "iss"),
    ]
    return good, cases


@pytest.fixture(scope="module")
def hostile(cluster, signers):
    """A login role whose rules also require an audience, as an API would."""
    with cluster.connect(dbname="app") as su:
        su.execute("CREATE ROLE hostile_user LOGIN")
        su.execute("GRANT authenticated TO hostile_user")
        su.execute("GRANT SELECT ON todos TO hostile_user")
        su.execute(f"ALTER ROLE hostile_user IN DATABASE app SET kinde_rls.audience = '{AUD}'")
        start = one(su, "SELECT pg_postmaster_start_time()")
    yield catalogue(signers)
    with cluster.connect(dbname="app") as su:
        assert one(su, "SELECT pg_postmaster_start_time()") == start, "the server restarted"
        su.execute("ALTER ROLE hostile_user IN DATABASE app RESET ALL")
        su.execute("DROP OWNED BY hostile_user")
        su.execute("DROP ROLE hostile_user")


def test_catalogue_is_large_enough(hostile):
    assert len(hostile[1]) == CATALOGUE_SIZE >= 40


def test_control_token_is_accepted(cluster, hostile):
    good, _ = hostile
    with cluster.connect(user="hostile_user", dbname="app") as c:
        assert one(c, "SELECT verify_jwt(%s)->>'sub'", (good,)) == "kp_victim"
        with c.transaction():
            c.execute("SELECT set_config('kinde_rls.token', %s, true)", (good,))
            assert one(c, "SELECT get_user_id()") == "kp_victim"


def _refused(conn, sql, params, check, name, token):
    t0 = time.monotonic()
    with pytest.raises(psycopg.Error) as ei:
        conn.execute(sql, params)
    elapsed = time.monotonic() - t0
    e = ei.value
    assert e.sqlstate == "28000", (name, e.sqlstate, str(e)[:300])
    if check:
        assert e.diag.message_primary.startswith(f"JWT refused: {check} check failed"), (name, e.diag.message_primary)
    assert elapsed < 0.5, (name, elapsed)
    # Messages never carry the token.
    full = f"{e.diag.message_primary} {e.diag.message_detail or ''}"
    assert len(token) < 40 or token not in full, name


@pytest.mark.parametrize("index", range(CATALOGUE_SIZE))
def test_hostile_token_is_refused_by_verify_jwt_and_get_user_id(cluster, hostile, index):
    _, cases = hostile
    name, token, check = cases[index]
    with cluster.connect(user="hostile_user", dbname="app") as c:
        _refused(c, "SELECT verify_jwt(%s)", (token,), check, name, token)
        with c.transaction():
            c.execute("SELECT set_config('kinde_rls.token', %s, true)", (token,))
            _refused(c, "SELECT get_user_id()", None, check, name, token)
        # Nor does the token leak rows through a policy, and the session is still usable.
        with c.transaction():
            c.execute("SELECT set_config('kinde_rls.token', %s, true)", (token,))
            with pytest.raises(psycopg.Error) as ei:
                c.execute("SELECT count(*) FROM todos")
            assert ei.value.sqlstate == "28000"
        assert one(c, "SELECT 1") == 1


def test_hostile_search_path_changes_nothing(cluster, signers):
    """A role with its own schema shadows get_user_id() and friends and puts its schema first:
    policies still call the extension's functions (bound by OID when the policy was created),
    and the extension's functions themselves run no SQL that a search_path could redirect."""
    with cluster.connect(dbname="app") as su:
        su.execute("CREATE SCHEMA evil AUTHORIZATION app_user")
    try:
        with cluster.connect(user="app_user", dbname="app") as c:
            for fn in ["get_user_id", "current_setting_evil"]:
                c.execute(f"CREATE FUNCTION evil.{fn}() RETURNS text LANGUAGE sql AS $$ SELECT 'kp_admin' $$")
            c.execute("CREATE FUNCTION evil.nullif(text, text) RETURNS text LANGUAGE sql AS $$ SELECT 'kp_admin' $$")
            c.execute("SET search_path = evil, pg_catalog, public")
            t = signers["rsa"].sign(kinde_access_claims("kp_victim"), "RS256")
            with c.transaction():
                c.execute("SELECT set_config('kinde_rls.token', %s, true)", (t,))
                # The unqualified call is the attacker's own function: harmless, it grants nothing.
                assert one(c, "SELECT get_user_id()") == "kp_admin"
                assert one(c, "SELECT public.get_user_id()") == "kp_victim"
                # RLS is unaffected: only kp_victim's rows (none) are visible, never kp_admin's.
                assert one(c, "SELECT count(*) FROM public.todos WHERE user_id <> 'kp_victim'") == 0
                assert one(c, "SELECT public.verify_jwt(%s)->>'sub'", (t,)) == "kp_victim"
            with c.transaction():
                c.execute("SELECT set_config('kinde_rls.token', %s, true)",
                          (signers["stranger"].sign(kinde_access_claims("kp_victim"), "RS256"),))
                with pytest.raises(psycopg.Error) as ei:
                    c.execute("SELECT count(*) FROM public.todos")
                assert ei.value.sqlstate == "28000"
    finally:
        with cluster.connect(dbname="app") as su:
            su.execute("DROP SCHEMA evil CASCADE")
