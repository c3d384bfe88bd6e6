"""verify_jwt(), sign_jwt(), jwt_decode_unverified(), jwt_explain(): every algorithm, every
check, exact SQLSTATEs. Tokens come from PyJWT; keys reach the database as a superuser would
configure them (ALTER DATABASE / ALTER SYSTEM) and tests connect as the non-superuser app_user."""

import base64
import json
import time

import jwt
import pytest
from helpers import config_error, one, refused
from kinde import CLIENT_SECRET, KINDE_ISS, hs256_resign, kinde_access_claims, kinde_id_claims, pem_private, pem_public

ASYMMETRIC = [
    ("rsa", "RS256"), ("rsa", "RS384"), ("rsa", "RS512"),
    ("rsa", "PS256"), ("rsa", "PS384"), ("rsa", "PS512"),
    ("p256", "ES256"), ("p384", "ES384"), ("p521", "ES512"), ("ed25519", "EdDSA"),
]


def b64(obj) -> str:
    raw = obj if isinstance(obj, bytes) else json.dumps(obj, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


@pytest.mark.parametrize("kind,alg", ASYMMETRIC)
def test_configured_jwks_verifies_every_asymmetric_algorithm(user_conn, signers, kind, alg):
    t = signers[kind].sign(kinde_access_claims("kp_alg"), alg)
    claims = one(user_conn, "SELECT verify_jwt(%s)", (t,))
    assert claims["sub"] == "kp_alg"
    assert claims["iss"] == KINDE_ISS
    assert claims["aud"] == []


@pytest.mark.parametrize("alg", ["HS256", "HS384"])
def test_configured_secret_verifies_hmac(user_conn, alg):
    t = jwt.encode(kinde_id_claims("kp_hs"), CLIENT_SECRET, algorithm=alg)
    assert one(user_conn, "SELECT verify_jwt(%s)->>'sub'", (t,)) == "kp_hs"


def test_hs512_needs_a_64_byte_secret(user_conn):
    t = jwt.encode(kinde_id_claims("kp_hs"), CLIENT_SECRET, algorithm="HS512")
    e = refused(user_conn, "SELECT verify_jwt(%s)", (t,), check="algorithm")
    assert "64 bytes" in e.diag.message_detail


def test_kinde_supabase_hs256_flow(user_conn):
    """The ID token re-signed with the client secret: header has no kid, claims unchanged."""
    t = hs256_resign(kinde_id_claims("kp_cfcb1ae5b9254ad99521214014c54f43"))
    claims = one(user_conn, "SELECT verify_jwt(%s)", (t,))
    assert claims["sub"] == "kp_cfcb1ae5b9254ad99521214014c54f43"
    assert claims["email_verified"] is True


@pytest.mark.parametrize("kind,alg", ASYMMETRIC)
def test_explicit_pem_key(user_conn, signers, kind, alg):
    s = signers[kind]
    t = s.sign(kinde_access_claims("kp_pem"), alg, kid=False)
    assert one(user_conn, "SELECT verify_jwt(%s, %s, %s)->>'sub'", (t, pem_public(s.key), alg)) == "kp_pem"


@pytest.mark.parametrize("kind,alg", [("rsa", "RS256"), ("p256", "ES256"), ("p521", "ES512"), ("ed25519", "EdDSA")])
def test_explicit_jwk_and_jwks_text(user_conn, signers, kind, alg):
    s = signers[kind]
    t = s.sign(kinde_access_claims("kp_jwk"), alg)
    assert one(user_conn, "SELECT verify_jwt(%s, %s, %s)->>'sub'", (t, json.dumps(s.jwk()), alg)) == "kp_jwk"
    assert one(user_conn, "SELECT verify_jwt(%s, %s, %s)->>'sub'", (t, json.dumps({"keys": [s.jwk()]}), alg)) == "kp_jwk"


def test_explicit_secret_with_default_algorithm(user_conn):
    t = jwt.encode({"sub": "x", "exp": int(time.time()) + 60}, CLIENT_SECRET, algorithm="HS256")
    assert one(user_conn, "SELECT verify_jwt(%s, %s)->>'sub'", (t, CLIENT_SECRET)) == "x"


def test_explicit_key_checks_time_but_not_issuer(user_conn):
    t = jwt.encode({"sub": "x", "iss": "https://elsewhere", "exp": int(time.time()) + 60}, CLIENT_SECRET)
    assert one(user_conn, "SELECT verify_jwt(%s, %s)->>'iss'", (t, CLIENT_SECRET)) == "https://elsewhere"
    t = jwt.encode({"sub": "x", "exp": int(time.time()) - 120}, CLIENT_SECRET)
    refused(user_conn, "SELECT verify_jwt(%s, %s)", (t, CLIENT_SECRET), check="exp")


def test_explicit_key_and_algorithm_must_agree(user_conn, signers):
    s = signers["rsa"]
    t = s.sign(kinde_access_claims("kp"), "RS256")
    # The RSA public key is never an HMAC secret: HS256 (the default) with a PEM is refused.
    config_error(user_conn, "SELECT verify_jwt(%s, %s)", (t, pem_public(s.key)), setting="algorithm")
    # The token says RS256, the caller says PS256.
    refused(user_conn, "SELECT verify_jwt(%s, %s, 'PS256')", (t, pem_public(s.key)), check="algorithm")
    config_error(user_conn, "SELECT verify_jwt(%s, %s, 'XS256')", (t, pem_public(s.key)), setting="algorithm")
    config_error(user_conn, "SELECT verify_jwt(%s, %s, 'RS256')", (t, pem_private(s.key)), setting="key")
    config_error(user_conn, "SELECT verify_jwt(%s, 'short')", (t,), setting="key")


@pytest.mark.parametrize("kind,alg", ASYMMETRIC + [(None, "HS256"), (None, "HS384"), (None, "HS512")])
def test_sign_jwt_tokens_verify_with_pyjwt(user_conn, signers, kind, alg):
    claims = {"sub": "kp_signed", "exp": int(time.time()) + 60, "n": 1}
    if kind:
        key, verify_key = pem_private(signers[kind].key), signers[kind].key.public_key()
    else:
        key = verify_key = CLIENT_SECRET + "x" * 20
    t = one(user_conn, "SELECT sign_jwt(%s::jsonb, %s, %s)", (json.dumps(claims), key, alg))
    assert jwt.decode(t, verify_key, algorithms=[alg]) == claims
    assert jwt.get_unverified_header(t) == {"alg": alg, "typ": "JWT"}


def test_sign_jwt_with_header_and_bad_inputs(user_conn, signers):
    s = signers["rsa"]
    t = one(user_conn, "SELECT sign_jwt('{\"sub\":\"a\"}', %s, 'RS256', %s::jsonb)",
            (pem_private(s.key), json.dumps({"kid": s.kid, "alg": "none"})))
    assert jwt.get_unverified_header(t) == {"alg": "RS256", "kid": s.kid, "typ": "JWT"}
    config_error(user_conn, "SELECT sign_jwt('{}', 'short-secret')", setting="key")
    config_error(user_conn, "SELECT sign_jwt('[1]', %s)", (CLIENT_SECRET,), setting="claims")
    config_error(user_conn, "SELECT sign_jwt('{}', %s, 'none')", (CLIENT_SECRET,), setting="algorithm")
    config_error(user_conn, "SELECT sign_jwt('{}', %s, 'HS256')", (pem_private(s.key),), setting="key")
    config_error(user_conn, "SELECT sign_jwt('{}', %s, 'ES256')", (pem_private(s.key),), setting="key")


MAGIC = "$serde_json::private::RawValue"


def test_sign_jwt_signs_the_jsonb_as_given(user_conn):
    """serde_json reads an object whose only member is its raw-value marker as the JSON text
    inside it; sign_jwt() must sign what the caller wrote, not what that text says."""
    secret = CLIENT_SECRET
    meta = {MAGIC: json.dumps({"sub": "kp_admin", "roles": ["admin"]})}
    claims = {"sub": "kp_user", "exp": int(time.time()) + 60, "user_metadata": meta}
    t = one(user_conn, "SELECT sign_jwt(%s::jsonb, %s)", (json.dumps(claims), secret))
    assert jwt.decode(t, secret, algorithms=["HS256"]) == claims
    whole = {MAGIC: json.dumps({"sub": "kp_admin", "exp": int(time.time()) + 60})}
    t = one(user_conn, "SELECT sign_jwt(%s::jsonb, %s)", (json.dumps(whole), secret))
    assert jwt.decode(t, secret, algorithms=["HS256"], options={"verify_exp": False}) == whole
    t = one(user_conn, "SELECT sign_jwt('{\"sub\":\"a\"}', %s, 'HS256', %s::jsonb)",
            (secret, json.dumps({"kid": {MAGIC: '"k1"'}})))
    header = json.loads(base64.urlsafe_b64decode(t.split(".")[0] + "=="))
    assert header["kid"] == {MAGIC: '"k1"'}


def test_decode_unverified(user_conn, signers):
    t = signers["rsa"].sign({"sub": "kp_x", "exp": 1}, "RS256")
    d = one(user_conn, "SELECT jwt_decode_unverified(%s)", (t,))
    assert d == {"header": {"alg": "RS256", "kid": signers["rsa"].kid, "typ": "JWT"}, "payload": {"sub": "kp_x", "exp": 1}}
    refused(user_conn, "SELECT jwt_decode_unverified('abc')", check="format")


# --- claims --------------------------------------------------------------------------------

def test_exp_is_required(user_conn, signers):
    claims = kinde_access_claims("kp")
    del claims["exp"]
    refused(user_conn, "SELECT verify_jwt(%s)", (signers["rsa"].sign(claims, "RS256"),), check="exp")


def test_expired_and_leeway(user_conn, signers):
    s = signers["rsa"]
    within = s.sign(kinde_access_claims("kp", lifetime=-10), "RS256")
    assert one(user_conn, "SELECT verify_jwt(%s)->>'sub'", (within,)) == "kp"
    expired = s.sign(kinde_access_claims("kp", lifetime=-40), "RS256")
    e = refused(user_conn, "SELECT verify_jwt(%s)", (expired,), check="exp")
    assert "leeway 30 s" in e.diag.message_detail


def test_leeway_is_a_setting(cluster, signers, db_settings):
    db_settings("kinde_rls.leeway", "0")
    t = signers["rsa"].sign(kinde_access_claims("kp", lifetime=-10), "RS256")
    with cluster.connect(user="app_user", dbname="app") as c:
        refused(c, "SELECT verify_jwt(%s)", (t,), check="exp")


def test_nbf_is_honoured(user_conn, signers):
    s = signers["rsa"]
    soon = s.sign(kinde_access_claims("kp", nbf=int(time.time()) + 20), "RS256")
    assert one(user_conn, "SELECT verify_jwt(%s)->>'sub'", (soon,)) == "kp"
    later = s.sign(kinde_access_claims("kp", nbf=int(time.time()) + 300), "RS256")
    refused(user_conn, "SELECT verify_jwt(%s)", (later,), check="nbf")


def test_issuer_exact_match_with_detail(user_conn, signers):
    s = signers["rsa"]
    for iss in ["https://acme.kinde.com/", "https://evil.kinde.com", "https://acme.kinde.com.evil.io"]:
        e = refused(user_conn, "SELECT verify_jwt(%s)", (s.sign(kinde_access_claims("kp", iss=iss), "RS256"),), check="iss")
        assert f'iss is "{iss}"' in e.diag.message_detail
        assert KINDE_ISS in e.diag.message_detail
    refused(user_conn, "SELECT verify_jwt(%s)", (s.sign(kinde_access_claims("kp", iss=[KINDE_ISS]), "RS256"),), check="iss")


def test_issuer_list(cluster, signers, db_settings):
    db_settings("kinde_rls.issuer", f"https://old.example.com, {KINDE_ISS}")
    with cluster.connect(user="app_user", dbname="app") as c:
        for iss in ["https://old.example.com", KINDE_ISS]:
            t = signers["rsa"].sign(kinde_access_claims("kp", iss=iss), "RS256")
            assert one(c, "SELECT verify_jwt(%s)->>'iss'", (t,)) == iss


def test_audience(cluster, signers, db_settings):
    db_settings("kinde_rls.audience", "https://api.acme.com,other")
    s = signers["rsa"]
    with cluster.connect(user="app_user", dbname="app") as c:
        ok = s.sign(kinde_access_claims("kp", aud=["x", "https://api.acme.com"]), "RS256")
        assert one(c, "SELECT verify_jwt(%s)->>'sub'", (ok,)) == "kp"
        ok = s.sign(kinde_access_claims("kp", aud="other"), "RS256")
        assert one(c, "SELECT verify_jwt(%s)->>'sub'", (ok,)) == "kp"
        for aud in [[], ["x"], "https://api.acme.com/"]:
            refused(c, "SELECT verify_jwt(%s)", (s.sign(kinde_access_claims("kp", aud=aud), "RS256"),), check="aud")


def test_unset_audience_accepts_kinde_empty_array(user_conn, signers):
    t = signers["rsa"].sign(kinde_access_claims("kp", aud=[]), "RS256")
    assert one(user_conn, "SELECT verify_jwt(%s)->'aud'", (t,)) == []


@pytest.mark.parametrize("sub", [None, "", 42, ["kp"]])
def test_subject_must_be_a_non_empty_string(user_conn, signers, sub):
    claims = kinde_access_claims("kp")
    if sub is None:
        del claims["sub"]
    else:
        claims["sub"] = sub
    refused(user_conn, "SELECT verify_jwt(%s)", (signers["rsa"].sign(claims, "RS256"),), check="sub")


def test_m2m_tokens_when_sub_not_required(cluster, signers, db_settings):
    db_settings("kinde_rls.require_sub", "off")
    claims = kinde_access_claims("kp")
    del claims["sub"]
    with cluster.connect(user="app_user", dbname="app") as c:
        assert one(c, "SELECT verify_jwt(%s)->>'azp'", (signers["rsa"].sign(claims, "RS256"),)) is not None


def test_subjects_are_opaque_strings(user_conn, signers):
    for sub in ["kp_cfcb1ae5b9254ad99521214014c54f43", "kp:0a1b2c", "2b0f8a6e-9f1e-4c1e-8d7a-1b2c3d4e5f60"]:
        t = signers["rsa"].sign(kinde_access_claims(sub), "RS256")
        assert one(user_conn, "SELECT verify_jwt(%s)->>'sub'", (t,)) == sub


# --- algorithms and keys --------------------------------------------------------------------

def test_alg_none_in_every_spelling(user_conn):
    body = f"{b64(kinde_access_claims('kp'))}"
    for alg in ["none", "None", "NONE"]:
        t = f"{b64({'alg': alg, 'typ': 'JWT'})}.{body}."
        e = refused(user_conn, "SELECT verify_jwt(%s)", (t,), check="algorithm")
        assert "never" in e.diag.message_detail
    refused(user_conn, "SELECT verify_jwt(%s)", (f"{b64({'typ': 'JWT'})}.{body}.c2ln",), check="algorithm")


def test_algorithm_confusion_hmac_with_rsa_public_key(user_conn, signers):
    s = signers["rsa"]
    claims = kinde_access_claims("kp_attacker")
    header = {"alg": "HS256", "typ": "JWT", "kid": s.kid}
    signing_input = f"{b64(header)}.{b64(claims)}"
    import hashlib
    import hmac

    for key_text in [pem_public(s.key), json.dumps(s.jwk())]:
        sig = hmac.new(key_text.encode(), signing_input.encode(), hashlib.sha256).digest()
        t = f"{signing_input}.{b64(sig)}"
        e = refused(user_conn, "SELECT verify_jwt(%s)", (t,), check="algorithm")
        assert "RSA" in e.diag.message_detail
        # The explicit-key form refuses too, whichever way the caller asks.
        refused(user_conn, "SELECT verify_jwt(%s, %s, 'RS256')", (t, pem_public(s.key)), check="algorithm")


def test_header_alg_must_fit_the_key(user_conn, signers):
    # A P-256 key named by kid, header says ES384 / RS256.
    p = signers["p256"]
    t = p.sign(kinde_access_claims("kp"), "ES256")
    h, body, sig = t.split(".")
    for alg in ["ES384", "RS256", "EdDSA", "HS256"]:
        hdr = {"alg": alg, "kid": p.kid, "typ": "JWT"}
        refused(user_conn, "SELECT verify_jwt(%s)", (f"{b64(hdr)}.{body}.{sig}",), check="algorithm")


def test_unknown_kid_and_unknown_key(user_conn, signers):
    e = refused(user_conn, "SELECT verify_jwt(%s)", (signers["stranger"].sign(kinde_access_claims("kp"), "RS256"),), check="key")
    assert signers["stranger"].kid in e.diag.message_detail
    # A stranger's key wearing a known kid: the signature fails.
    t = signers["stranger"].sign(kinde_access_claims("kp"), "RS256", headers={"kid": signers["rsa"].kid})
    refused(user_conn, "SELECT verify_jwt(%s)", (t,), check="signature")


def test_injected_headers_are_never_fetched_or_trusted(user_conn, signers):
    """A listening socket stands where jku/x5u point: nothing may connect to it."""
    import socket

    st = signers["stranger"]
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(8)
        srv.setblocking(False)
        url = f"http://127.0.0.1:{srv.getsockname()[1]}"
        for extra in [{"jwk": st.jwk()}, {"jku": f"{url}/jwks"}, {"x5u": f"{url}/cert"}]:
            t = st.sign(kinde_access_claims("kp"), "RS256", headers={**extra, "kid": signers["rsa"].kid})
            refused(user_conn, "SELECT verify_jwt(%s)", (t,), check="signature")
        with pytest.raises(BlockingIOError):
            srv.accept()


def test_unknown_crit_is_refused(user_conn, signers):
    t = signers["rsa"].sign(kinde_access_claims("kp"), "RS256", headers={"crit": ["exp"], "exp": 1})
    e = refused(user_conn, "SELECT verify_jwt(%s)", (t,), check="format")
    assert "critical" in e.diag.message_detail


def test_small_rsa_keys_are_refused(user_conn, signers):
    s = signers["rsa1024"]
    t = s.sign(kinde_access_claims("kp"), "RS256")
    config_error(user_conn, "SELECT verify_jwt(%s, %s, 'RS256')", (t, pem_public(s.key)), setting="key")
    config_error(user_conn, "SELECT verify_jwt(%s, %s, 'RS256')", (t, json.dumps(s.jwk())), setting="key")


def test_tampered_payload_and_stripped_signature(user_conn, signers):
    t = signers["rsa"].sign(kinde_access_claims("kp_peter"), "RS256")
    h, body, sig = t.split(".")
    forged = b64(kinde_access_claims("kp_mia"))
    refused(user_conn, "SELECT verify_jwt(%s)", (f"{h}.{forged}.{sig}",), check="signature")
    refused(user_conn, "SELECT verify_jwt(%s)", (f"{h}.{body}.",), check="signature")
    # Four characters fewer before the last two is three bytes fewer, still canonical
    # base64url (the tail keeps its zero bits): a wrong signature.
    refused(user_conn, "SELECT verify_jwt(%s)", (f"{h}.{body}.{sig[:-6] + sig[-2:]}",), check="signature")
    # One fewer leaves a length no base64url text has: the token is malformed.
    assert len(sig) % 4 == 2
    refused(user_conn, "SELECT verify_jwt(%s)", (f"{h}.{body}.{sig[:-1]}",), check="format")


@pytest.mark.parametrize("token", [
    "", "abc", "a.b", "a.b.c.d", "a.b.c.d.e", "eyJ.eyJ.", "!!!.???.***",
    "eyJhbGciOiJIUzI1NiJ9=.eyJzdWIiOiJhIn0.c2ln",
])
def test_malformed_tokens(user_conn, token):
    refused(user_conn, "SELECT verify_jwt(%s)", (token,), check="format")


def test_oversized_token_is_refused_by_the_size_limit(user_conn):
    e = refused(user_conn, "SELECT verify_jwt(%s)", ("a" * 1_000_000,), check="format")
    assert "16384" in e.diag.message_detail


# --- errors ------------------------------------------------------------------------------

def test_messages_never_contain_the_token_or_the_secret(user_conn, signers, cluster):
    t = signers["rsa"].sign(kinde_access_claims("kp", lifetime=-3600), "RS256")
    e = refused(user_conn, "SELECT verify_jwt(%s)", (t,), check="exp")
    text = " ".join(filter(None, [e.diag.message_primary, e.diag.message_detail, e.diag.message_hint]))
    assert t.split(".")[2] not in text and t not in text
    bad = jwt.encode(kinde_id_claims("kp"), "x" * 48, algorithm="HS256")
    e = refused(user_conn, "SELECT verify_jwt(%s)", (bad,), check="signature")
    text = " ".join(filter(None, [e.diag.message_primary, e.diag.message_detail, e.diag.message_hint]))
    assert CLIENT_SECRET not in text and bad not in text
    assert CLIENT_SECRET not in cluster.server_log()


def test_jwt_explain_rows(user_conn, signers):
    t = signers["rsa"].sign(kinde_access_claims("kp", iss="https://evil.example", lifetime=-3600), "RS256")
    rows = user_conn.execute("SELECT \"check\", ok, detail FROM jwt_explain(%s)", (t,)).fetchall()
    assert [r[0] for r in rows] == ["format", "algorithm", "key", "signature", "exp", "nbf", "iss", "aud", "sub"]
    ok = {r[0]: r[1] for r in rows}
    assert ok == {"format": True, "algorithm": True, "key": True, "signature": True, "exp": False,
                  "nbf": True, "iss": False, "aud": True, "sub": True}
    detail = {r[0]: r[2] for r in rows}
    assert signers["rsa"].kid in detail["signature"]
    assert "https://evil.example" in detail["iss"]


def test_jwt_explain_unverified_claims_are_marked(user_conn, signers):
    t = signers["stranger"].sign(kinde_access_claims("kp"), "RS256")
    rows = {r[0]: (r[1], r[2]) for r in user_conn.execute("SELECT * FROM jwt_explain(%s)", (t,))}
    assert rows["key"][0] is False
    assert rows["signature"][0] is None
    assert rows["sub"] == (True, 'sub is "kp" (claims not verified)')
    rows = {r[0]: r[1] for r in user_conn.execute("SELECT * FROM jwt_explain('garbage')")}
    assert rows["format"] is False and rows["sub"] is None


# -- characters PostgreSQL cannot hold ---------------------------------------------------------

def _with_raw_payload(payload_json: str) -> str:
    """HS256 over a payload given as JSON text (so it can hold escapes PyJWT would normalise)."""
    return jwt.api_jws.PyJWS().encode(payload_json.encode(), CLIENT_SECRET, algorithm="HS256")


@pytest.mark.parametrize("claim,value,detail", [
    ("org_name", r'"Acme\u0000Evil"', 'claim "org_name" contains a NUL character'),
    ("sub", r'"kp_\u0000"', 'claim "sub" contains a NUL character'),
    ("x", r'{"deep": ["\u0000"]}', 'claim "x" contains a NUL character'),
    ("x", r'"\ud800"', "escape"),
])
def test_unstorable_characters_are_refused_alike_by_every_function(cluster, claim, value, detail):
    """jsonb cannot hold U+0000 and a lone surrogate is not a character: a 28000 `format`
    refusal naming the claim, from every function — never 22P05 from one and {} from another."""
    claims = kinde_id_claims("kp_nul")
    claims.pop(claim, None)
    base = json.dumps(claims)[:-1]
    t = _with_raw_payload(f'{base}, "{claim}": {value}}}')
    with cluster.connect(user="app_user", dbname="app") as c:
        for sql, params in [("SELECT verify_jwt(%s)", (t,)),
                            ("SELECT verify_jwt(%s, %s)", (t, CLIENT_SECRET)),
                            ("SELECT jwt_decode_unverified(%s)", (t,))]:
            e = refused(c, sql, params, check="format")
            assert detail in e.diag.message_detail, (sql, e.diag.message_detail)
        c.execute("SELECT set_config('kinde_rls.token', %s, false)", (t,))
        for sql in ["SELECT get_user_id()", "SELECT get_claims()", "SELECT get_claim('x')",
                    "SELECT has_role('admin')", "SELECT count(*) FROM todos"]:
            e = refused(c, sql, check="format")
            assert detail in e.diag.message_detail, (sql, e.diag.message_detail)
        rows = {r[0]: (r[1], r[2]) for r in c.execute("SELECT * FROM jwt_explain(%s)", (t,))}
        assert rows["format"][0] is False and detail in rows["format"][1]
        c.execute("RESET kinde_rls.token")
        # An escaped backslash before "u0000" is six ordinary characters: accepted.
        full = json.dumps(kinde_id_claims("kp_nul"))[:-1]
        ok = _with_raw_payload(f'{full}, "note": "C:\\\\u0000"}}')
        assert one(c, "SELECT verify_jwt(%s)->>'note'", (ok,)) == "C:\\u0000"


def test_trusted_request_claims_with_a_nul_are_refused(cluster, db_settings):
    db_settings("kinde_rls.trust_request_claims", "on")
    with cluster.connect(user="app_user", dbname="app") as c:
        with c.transaction():
            c.execute("SELECT set_config('request.jwt.claims', %s, true)", ('{"sub":"kp_t","x":"a\\u0000"}',))
            e = refused(c, "SELECT get_claims()", check="format")
            assert 'member "x" contains a NUL character' in e.diag.message_detail


@pytest.mark.parametrize("extra", ['"profile": {"x": 1e400}', '"deep": ' + "[" * 200 + "1" + "]" * 200])
def test_a_payload_the_claim_helpers_could_not_read_is_refused(cluster, extra):
    """A claim that verification could skip but the claim map cannot hold (a number beyond
    f64, nesting beyond 128) would make has_role('banned') answer "no" for a banned user: the
    token is refused instead (28000 format), by every function."""
    claims = kinde_id_claims("kp_banned")
    claims["roles"] = [{"key": "banned"}]
    t = _with_raw_payload(json.dumps(claims)[:-1] + ", " + extra + "}")
    with cluster.connect(user="app_user", dbname="app") as c:
        refused(c, "SELECT verify_jwt(%s)", (t,), check="format")
        c.execute("SELECT set_config('kinde_rls.token', %s, false)", (t,))
        for sql in ["SELECT has_role('banned')", "SELECT get_user_id()", "SELECT get_claims()"]:
            refused(c, sql, check="format")
        c.execute("RESET kinde_rls.token")


def test_claims_read_exactly_as_signed_by_every_function(cluster):
    """get_claim(), get_feature_flag() and jwt_decode_unverified() hand out numbers as they were
    signed, like get_claims() and verify_jwt() do — never rounded through a double."""
    big = "123456789012345678901234567890"
    claims = json.dumps(kinde_id_claims("kp_exact"))[:-1]
    t = _with_raw_payload(claims + f', "n": {big}, "d": 0.1000000000000000055511151231257827, '
                          f'"feature_flags": {{"limit": {{"t": "i", "v": {big}}}}}}}')
    with cluster.connect(user="app_user", dbname="app") as c:
        c.execute("SELECT set_config('kinde_rls.token', %s, false)", (t,))
        assert one(c, "SELECT get_claim('n')::text") == big
        assert one(c, "SELECT get_claims()->>'n'") == big
        assert one(c, "SELECT get_claim('d')::text") == "0.1000000000000000055511151231257827"
        assert one(c, "SELECT get_feature_flag('limit')::text") == big
        assert one(c, "SELECT verify_jwt(%s)->>'n'", (t,)) == big
        assert one(c, "SELECT jwt_decode_unverified(%s)->'payload'->>'n'", (t,)) == big
        c.execute("RESET kinde_rls.token")


@pytest.mark.parametrize("number", ["1e-20000", "0e999999999999"])
def test_numbers_jsonb_cannot_hold_are_refused_alike(cluster, number):
    t = _with_raw_payload(json.dumps(kinde_id_claims("kp_num"))[:-1] + f', "x": {number}}}')
    with cluster.connect(user="app_user", dbname="app") as c:
        e = refused(c, "SELECT verify_jwt(%s)", (t,), check="format")
        assert "exponent is beyond" in e.diag.message_detail
        c.execute("SELECT set_config('kinde_rls.token', %s, false)", (t,))
        for sql in ["SELECT get_user_id()", "SELECT get_claims()", "SELECT has_role('admin')"]:
            refused(c, sql, check="format")
        c.execute("RESET kinde_rls.token")


# ---------------------------------------------------------------------------------------------
# jws_verify(): a signature over any bytes, no claim rules

PAYLOADS = [b"", b"foo", bytes(range(256)), json.dumps({"exp": 1}).encode()]


def pyjws(payload: bytes, key, alg: str, headers=None) -> str:
    return jwt.api_jws.PyJWS().encode(payload, key, algorithm=alg, headers=headers)


@pytest.mark.parametrize("kind,alg", ASYMMETRIC)
def test_jws_verify_returns_the_payload_bytes(user_conn, signers, kind, alg):
    s = signers[kind]
    for payload in PAYLOADS:
        t = pyjws(payload, s.key, alg, {"kid": s.kid})
        for key in (pem_public(s.key), json.dumps(s.jwk()), json.dumps({"keys": [s.jwk()]})):
            assert one(user_conn, "SELECT jws_verify(%s, %s)", (t, key)) == payload
        assert one(user_conn, "SELECT jws_verify(%s, %s, %s)", (t, pem_public(s.key), alg)) == payload


def test_jws_verify_with_secrets_and_oct_keys(user_conn):
    secret = CLIENT_SECRET + "x" * 20
    oct_jwk = json.dumps({"kty": "oct", "k": b64(secret.encode()), "kid": "o1"})
    for alg in ["HS256", "HS384", "HS512"]:
        t = pyjws(b"webhook body", secret, alg)
        assert one(user_conn, "SELECT jws_verify(%s, %s)", (t, secret)) == b"webhook body"
        assert one(user_conn, "SELECT jws_verify(%s, %s)", (t, oct_jwk)) == b"webhook body"
    # The secret must be as long as the token's hash: 50 bytes serve HS384, not HS512.
    t = pyjws(b"x", CLIENT_SECRET, "HS512")
    e = refused(user_conn, "SELECT jws_verify(%s, %s)", (t, CLIENT_SECRET), check="algorithm")
    assert "64 bytes" in e.diag.message_detail


def test_jws_verify_refusals_name_the_check(user_conn, signers):
    s = signers["rsa"]
    pem = pem_public(s.key)
    good = pyjws(b"foo", s.key, "RS256")
    h, p, sig = good.split(".")
    refused(user_conn, "SELECT jws_verify(%s, %s)", (f"{h}.{b64(b'bar')}.{sig}", pem), check="signature")
    refused(user_conn, "SELECT jws_verify(%s, %s)", (f"{h}.{p}.", pem), check="signature")
    refused(user_conn, "SELECT jws_verify(%s, %s, 'PS256')", (good, pem), check="algorithm")
    refused(user_conn, "SELECT jws_verify(%s, %s)", (f"{b64({'alg': 'none'})}.{p}.", pem), check="algorithm")
    refused(user_conn, "SELECT jws_verify(%s, %s)", (good, pem_public(signers["rsa_other"].key)), check="signature")
    # A public key is never an HMAC secret: an HS256 token signed with the PEM text is refused.
    forged = pyjws(b"foo", "x" * 64, "HS256")
    refused(user_conn, "SELECT jws_verify(%s, %s)", (forged, pem), check="algorithm")
    serialized = json.dumps({"payload": p, "protected": h, "signature": sig})
    refused(user_conn, "SELECT jws_verify(%s, %s)", (serialized, pem), check="format")
    crit = pyjws(b"foo", s.key, "RS256", {"b64": False, "crit": ["b64"]})
    refused(user_conn, "SELECT jws_verify(%s, %s)", (crit, pem), check="format")
    refused(user_conn, "SELECT jws_verify(%s, %s)", ("a.b.c.d.e", pem), check="format")
    # Neither the token nor its signature appears in what the client sees.
    e = refused(user_conn, "SELECT jws_verify(%s, %s)", (f"{h}.{b64(b'bar')}.{sig}", pem), check="signature")
    for text in (e.diag.message_primary, e.diag.message_detail or "", e.diag.message_hint or ""):
        assert sig not in text and p not in text


def test_jws_verify_bad_keys_are_argument_errors(user_conn, signers):
    t = pyjws(b"foo", signers["p256"].key, "ES256")
    mixed = json.dumps({"keys": [signers["p256"].jwk(), {"kty": "oct", "k": b64(b"k" * 32)}]})
    e = config_error(user_conn, "SELECT jws_verify(%s, %s)", (t, mixed), setting="key")
    assert "mixes shared secrets" in e.diag.message_primary
    config_error(user_conn, "SELECT jws_verify(%s, %s)", (t, pem_private(signers["p256"].key)), setting="key")
    config_error(user_conn, "SELECT jws_verify(%s, 'short')", (t,), setting="key")
    config_error(user_conn, "SELECT jws_verify(%s, %s, 'ES521')", (t, json.dumps(signers["p256"].jwk())), setting="algorithm")
    config_error(user_conn, "SELECT jws_verify(%s, %s, 'ES512')", (t, json.dumps(signers["p256"].jwk())), setting="algorithm")
    enc = dict(signers["p256"].jwk(), use="enc")
    config_error(user_conn, "SELECT jws_verify(%s, %s)", (t, json.dumps(enc)), setting="key")


def test_jws_verify_is_immutable_and_strict(user_conn, signers):
    assert one(user_conn, "SELECT jws_verify(NULL, 'k') IS NULL")
    s = signers["ed25519"]
    t = pyjws(b"doc", s.key, "EdDSA")
    # Immutable: usable where PostgreSQL needs it, e.g. folded once for a constant argument.
    assert one(user_conn, "SELECT convert_from(jws_verify(%s, %s), 'UTF8')", (t, pem_public(s.key))) == "doc"


def test_jws_verify_hostile_arguments(user_conn, signers):
    s = signers["rsa"]
    t = pyjws(b"foo", s.key, "RS256")
    jwk = s.jwk()
    # A key read one way only: duplicate members, two PEM blocks, a PEM with text after it.
    dup = json.dumps(jwk)[:-1] + ', "use": "enc", "use": "sig"}'
    config_error(user_conn, "SELECT jws_verify(%s, %s)", (t, dup), setting="key")
    two = pem_public(s.key) + pem_public(signers["rsa_other"].key)
    config_error(user_conn, "SELECT jws_verify(%s, %s)", (t, two), setting="key")
    config_error(user_conn, "SELECT jws_verify(%s, %s)", (t, pem_public(s.key) + "trailing"), setting="key")
    # Key text is bounded before any work is done on it.
    e = config_error(user_conn, "SELECT jws_verify(%s, repeat('QUFB', 20000))", (t,), setting="key")
    assert "the limit is 65536 bytes" in e.diag.message_primary
    # Only ASCII white space around the token is dropped.
    assert one(user_conn, "SELECT jws_verify(%s, %s)", (f" \n{t}\t", pem_public(s.key))) == b"foo"
    refused(user_conn, "SELECT jws_verify(%s, %s)", ("\u00a0" + t, pem_public(s.key)), check="format")
    # A secret passed where the algorithm goes is not repeated back.
    secret = "Tr0ub4dor-and-3-more-words-hmac-secret"
    e = config_error(user_conn, "SELECT jws_verify(%s, %s, %s)", (t, "RS256", secret), setting="algorithm")
    assert secret not in str(e) and secret not in (e.diag.message_detail or "")
    # An Ed25519 "key" of small order, under which (identity, 0) verifies every message.
    identity = json.dumps({"kty": "OKP", "crv": "Ed25519", "x": b64(b"\x01" + bytes(31))})
    forged = ".".join([b64({"alg": "EdDSA"}), b64(b"anything"), b64(bytes([1]) + bytes(63))])
    e = config_error(user_conn, "SELECT jws_verify(%s, %s)", (forged, identity), setting="key")
    assert "small order" in e.diag.message_primary
