"""The hostile-token catalogue: every case refused with SQLSTATE 28000 by the very check it is
named after (the message names the check, the detail says why), by both verify_jwt() and
get_user_id(), as a non-superuser, in about the time a good token takes; a control token proves
the verifier accepts good tokens; no case makes the server fetch anything; and no case crashes
a server process.

Each case is signed over its own header and payload text, by a configured key wherever the rule
it is named after comes before or instead of the signature check. So the signature check never
refuses a case in the named rule's place: without that rule, the token would be accepted (or
refused by a later check), and the test would fail.

Check order (core/src/token.rs, then the stages of core/src/pipeline.rs): format (size,
segments, base64url, JSON, unique names, kid, crit) → algorithm (alg, and a kid naming a key of another kind) →
provider by iss → key (kid) → signature → exp, nbf, iss, aud, sub."""

import base64
import datetime
import json
import time

import jwt
import psycopg
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID
from helpers import one
from issuer import MockIssuer
from kinde import CLIENT_SECRET, KINDE_ISS, kinde_access_claims, pem_public
from psycopg import sql

AUD = "https://api.acme.com"
CHECKS = ["format", "algorithm", "key", "signature", "exp", "nbf", "iss", "aud", "sub"]
ALGORITHMS = jwt.algorithms.get_default_algorithms()


def b64(b: bytes) -> str:
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def seg(obj) -> str:
    """A segment: JSON (compact) of a dict or list, or bytes as they are."""
    return b64(obj if isinstance(obj, bytes) else json.dumps(obj, separators=(",", ":")).encode())


def good_claims(**extra):
    return kinde_access_claims("kp_victim", aud=[AUD], **extra)


def self_signed_cert(key) -> str:
    """A certificate for `key` (base64 DER, as in an x5c header)."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "issuer signing key")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30)).sign(key, hashes.SHA256()))
    return base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode()


class Keys:
    """What the cases are built from: the conftest keys, the mock issuer, good claims."""

    def __init__(self, signers, issuer):
        self.rsa, self.p256 = signers["rsa"], signers["p256"]
        self.stranger, self.small = signers["stranger"], signers["rsa1024"]
        self.issuer = issuer
        self.c = good_claims()

    def hdr(self, **extra) -> dict:
        return {"alg": "RS256", "kid": self.rsa.kid, "typ": "JWT", **extra}

    def jws(self, header, payload, alg="RS256", key=None) -> str:
        """header.payload.signature, the signature made with `alg` and `key` (default: RS256
        with the configured RSA key) over exactly these two segments, whatever the header says.
        A header or payload given as a str is used as the segment text, unchanged."""
        h = header if isinstance(header, str) else seg(header)
        p = payload if isinstance(payload, str) else seg(payload)
        si = f"{h}.{p}"
        key = self.rsa.key if key is None else key
        return f"{si}.{b64(ALGORITHMS[alg].sign(si.encode(), key))}"

    def good(self) -> str:
        return self.jws(self.hdr(), self.c)

    def payload_with(self, pred, **extra) -> str:
        """The payload segment of good claims (a fresh jti each try) that satisfies `pred`."""
        for _ in range(1000):
            p = seg(good_claims(**extra))
            if pred(p):
                return p
        raise AssertionError("no payload found")


def _alphabet(k: Keys, part: str) -> str:
    """A valid token with one segment re-encoded in the standard base64 alphabet (+ and /),
    signed over exactly that text when it is the payload."""
    has_url_chars = lambda s: "-" in s or "_" in s  # noqa: E731
    if part == "payload":
        # JSON text is mostly ASCII, whose base64 seldom has a 62 or 63: a claim of "~" has.
        h, p = seg(k.hdr()), k.payload_with(has_url_chars, note="~" * 6)
        std = p.replace("-", "+").replace("_", "/")
        return k.jws(h, std)
    while True:
        h, p, s = k.jws(k.hdr(), k.payload_with(lambda _: True)).split(".")
        if has_url_chars(s):
            return f"{h}.{p}.{s.replace('-', '+').replace('_', '/')}"


def _padded(k: Keys) -> str:
    """The payload segment with its base64 '=' padding, signed over exactly that text."""
    for n in range(3):
        raw = json.dumps(good_claims(pad="x" * n), separators=(",", ":")).encode()
        if len(raw) % 3:
            return k.jws(seg(k.hdr()), base64.urlsafe_b64encode(raw).decode())
    raise AssertionError("unreachable")


def _spliced(k: Keys, tail: bytes) -> str:
    """Good claims as JSON text with `tail` spliced in before the closing brace, signed."""
    body = json.dumps(k.c, separators=(",", ":")).encode()[:-1]
    return k.jws(k.hdr(), body + tail)


def _within_limit(token: str) -> str:
    assert len(token) < 16 * 1024, len(token)
    return token


def _deep(depth: int) -> bytes:
    return b"[" * depth + b"1" + b"]" * depth


# (name, check, what the detail says, how to build it). The check is the first words of the
# message ("JWT refused: <check> check failed"); every string of the detail must be in it.
CASES = [
    # -- the algorithm -------------------------------------------------------------------------
    ("alg none", "algorithm", ["never accepted"],
     lambda k: f"{seg({'alg': 'none', 'typ': 'JWT'})}.{seg(k.c)}."),
    ("alg None", "algorithm", ["never accepted"], lambda k: f"{seg({'alg': 'None'})}.{seg(k.c)}."),
    ("alg NONE", "algorithm", ["never accepted"], lambda k: f"{seg({'alg': 'NONE'})}.{seg(k.c)}."),
    ("alg none with a valid RS256 signature", "algorithm", ["never accepted"],
     lambda k: k.jws({"alg": "none", "kid": k.rsa.kid}, k.c)),
    ("alg missing", "algorithm", ["has no alg"], lambda k: k.jws({"kid": k.rsa.kid, "typ": "JWT"}, k.c)),
    ("alg not a string", "algorithm", ["alg is not a string"], lambda k: k.jws(k.hdr(alg=["RS256"]), k.c)),
    ("alg unknown", "algorithm", ["not supported"], lambda k: k.jws(k.hdr(alg="RS1024"), k.c)),
    # Key confusion: the public key's text as an HMAC secret (PyJWT refuses PEM secrets, an
    # attacker does not).
    ("HS256 keyed with the RSA public key PEM", "algorithm", ["HS256 cannot be used with"],
     lambda k: k.jws(k.hdr(alg="HS256"), k.c, "HS256", pem_public(k.rsa.key).encode())),
    ("HS256 keyed with the RSA public key PEM, no kid", "signature", ["does not verify"],
     lambda k: k.jws({"alg": "HS256", "typ": "JWT"}, k.c, "HS256", pem_public(k.rsa.key).encode())),
    ("HS256 keyed with the RSA public JWK text", "algorithm", ["HS256 cannot be used with"],
     lambda k: k.jws(k.hdr(alg="HS256"), k.c, "HS256", json.dumps(k.rsa.jwk()).encode())),
    ("RS256 header on the ES256 key's kid (signed by the RSA key)", "algorithm", ["RS256 cannot be used with"],
     lambda k: k.jws(k.hdr(kid=k.p256.kid), k.c)),
    ("ES256 header on the RSA key's kid (signed by the P-256 key)", "algorithm", ["ES256 cannot be used with"],
     lambda k: k.jws(k.hdr(alg="ES256"), k.c, "ES256", k.p256.key)),
    ("PS256 header, RS256 (PKCS#1 v1.5) signature", "signature", ["PS256 signature does not verify"],
     lambda k: k.jws(k.hdr(alg="PS256"), k.c)),
    # -- the signature -------------------------------------------------------------------------
    ("stripped signature", "signature", ["has no signature"], lambda k: k.good().rsplit(".", 1)[0] + "."),
    ("truncated signature", "signature", ["does not verify"], lambda k: k.good()[:-10]),
    ("signature not base64url", "format", ["signature is not unpadded base64url"],
     lambda k: k.good()[:-4] + "!!!!"),
    ("transplanted signature", "signature", ["does not verify"],
     lambda k: ".".join(k.jws(k.hdr(), dict(k.c, sub="kp_other")).split(".")[:2] + [k.good().split(".")[2]])),
    ("signed by a stranger under the RSA kid", "signature", ["does not verify"],
     lambda k: k.jws(k.hdr(), k.c, key=k.stranger.key)),
    ("jwk header injection", "signature", ["does not verify"],
     lambda k: k.jws({"alg": "RS256", "jwk": k.stranger.jwk()}, k.c, key=k.stranger.key)),
    ("jwk header injection under the RSA kid", "signature", ["does not verify"],
     lambda k: k.jws(k.hdr(jwk=k.stranger.jwk()), k.c, key=k.stranger.key)),
    # -- keys a token points at: a real issuer's key set and certificate, never fetched ---------
    ("jku header naming an issuer's key set", "key", ["no configured key has kid"],
     lambda k: k.jws({"alg": "RS256", "kid": k.issuer.signer.kid, "jku": k.issuer.jwks_url}, k.c,
                     key=k.issuer.signer.key)),
    ("jku header naming an issuer's key set, no kid", "signature", ["does not verify"],
     lambda k: k.jws({"alg": "RS256", "jku": k.issuer.jwks_url}, k.c, key=k.issuer.signer.key)),
    ("x5u header naming an issuer's certificate", "key", ["no configured key has kid"],
     lambda k: k.jws({"alg": "RS256", "kid": k.issuer.signer.kid, "x5u": k.issuer.base + "/cert.pem"}, k.c,
                     key=k.issuer.signer.key)),
    ("x5c header carrying the signing key's certificate", "key", ["no configured key has kid"],
     lambda k: k.jws({"alg": "RS256", "kid": k.issuer.signer.kid, "x5c": [self_signed_cert(k.issuer.signer.key)]},
                     k.c, key=k.issuer.signer.key)),
    ("x5c header carrying the signing key's certificate, no kid", "signature", ["does not verify"],
     lambda k: k.jws({"alg": "RS256", "x5c": [self_signed_cert(k.issuer.signer.key)]}, k.c,
                     key=k.issuer.signer.key)),
    # -- kid and crit --------------------------------------------------------------------------
    ("kid path traversal", "key", ["no configured key has kid"],
     lambda k: k.jws(k.hdr(kid="../../../../etc/passwd"), k.c)),
    ("kid SQL text", "key", ["no configured key has kid"],
     lambda k: k.jws(k.hdr(kid="' OR 1=1; DROP TABLE todos; --"), k.c)),
    ("kid 200 KB", "format", ["the limit is 16384 bytes"], lambda k: k.jws(k.hdr(kid="k" * 200_000), k.c)),
    ("kid not a string", "format", ["kid is not a string"], lambda k: k.jws(k.hdr(kid=7), k.c)),
    ("kid with a NUL (\\u0000)", "format", ['member "kid" contains a NUL'],
     lambda k: k.jws(k.hdr(kid=k.rsa.kid + "\u0000"), k.c)),
    ("unknown crit", "format", ['extension "urn:x:ext" critical'],
     lambda k: k.jws(k.hdr(crit=["urn:x:ext"], **{"urn:x:ext": 1}), k.c)),
    # The key is in the role's key set (see the fixture), and ignored there for its size.
    ("signed by a 1024-bit RSA key", "key", ["is ignored", "1024 bits"],
     lambda k: k.jws(k.hdr(kid=k.small.kid), k.c, key=k.small.key)),
    # -- claims, each in a token the configured RSA key signed ----------------------------------
    ("expired", "exp", ["expired at"], lambda k: k.jws(k.hdr(), good_claims(lifetime=-3600))),
    ("not yet valid", "nbf", ["not valid before"], lambda k: k.jws(k.hdr(), good_claims(nbf=int(time.time()) + 3600))),
    ("exp missing", "exp", ["no exp claim"], lambda k: k.jws(k.hdr(), {x: v for x, v in k.c.items() if x != "exp"})),
    ("exp a string", "exp", ["not a number"], lambda k: k.jws(k.hdr(), dict(k.c, exp=str(k.c["exp"])))),
    ("exp huge (10**30)", "exp", ["out of range"], lambda k: k.jws(k.hdr(), dict(k.c, exp=10**30))),
    ("exp 1e300", "exp", ["out of range"],
     lambda k: k.jws(k.hdr(), json.dumps(dict(k.c, exp=0)).replace('"exp": 0', '"exp": 1e300').encode())),
    ("exp beyond a double (1e400)", "format", ["number out of range"],
     lambda k: k.jws(k.hdr(), json.dumps(dict(k.c, exp=0)).replace('"exp": 0', '"exp": 1e400').encode())),
    ("iss wrong", "iss", ["evil.kinde.com"], lambda k: k.jws(k.hdr(), dict(k.c, iss="https://evil.kinde.com"))),
    ("iss look-alike (trailing slash)", "iss", ["accepted"], lambda k: k.jws(k.hdr(), dict(k.c, iss=KINDE_ISS + "/"))),
    ("iss look-alike (case)", "iss", ["accepted"], lambda k: k.jws(k.hdr(), dict(k.c, iss=KINDE_ISS.upper()))),
    ("iss an array", "iss", ["not a string"], lambda k: k.jws(k.hdr(), dict(k.c, iss=[KINDE_ISS]))),
    ("aud wrong", "aud", ["api.evil.com"], lambda k: k.jws(k.hdr(), dict(k.c, aud=["https://api.evil.com"]))),
    ("aud empty (Kinde's default)", "aud", ["aud is []"], lambda k: k.jws(k.hdr(), dict(k.c, aud=[]))),
    ("sub missing", "sub", ["no sub claim"], lambda k: k.jws(k.hdr(), {x: v for x, v in k.c.items() if x != "sub"})),
    ("sub empty", "sub", ["sub is empty"], lambda k: k.jws(k.hdr(), dict(k.c, sub=""))),
    ("sub a number", "sub", ["sub is not a string"], lambda k: k.jws(k.hdr(), dict(k.c, sub=123))),
    ("HS256 with a guessed secret", "signature", ["does not verify"],
     lambda k: k.jws({"alg": "HS256", "typ": "JWT"}, k.c, "HS256", b"secret" * 8)),
    ("HS256 with the secret, wrong iss", "iss", ["evil.example"],
     lambda k: k.jws({"alg": "HS256", "typ": "JWT"}, dict(k.c, iss="https://evil.example"), "HS256",
                     CLIENT_SECRET.encode())),
    # -- format: each signed over exactly the text sent, so only the format rule refuses it -----
    ("base64 with padding", "format", ["payload is not unpadded base64url"], _padded),
    ("base64 standard alphabet in the payload", "format", ["payload is not unpadded base64url"],
     lambda k: _alphabet(k, "payload")),
    ("base64 standard alphabet in the signature", "format", ["signature is not unpadded base64url"],
     lambda k: _alphabet(k, "signature")),
    ("whitespace inside", "format", ["payload is not unpadded base64url"],
     lambda k: k.jws(seg(k.hdr()), seg(k.c)[:20] + " " + seg(k.c)[20:])),
    ("2 segments", "format", ["this token has 2"], lambda k: k.good().rsplit(".", 1)[0]),
    ("4 segments", "format", ["this token has 4"], lambda k: k.good() + ".x"),
    ("5 segments (JWE)", "format", ["JWE"], lambda k: k.good() + ".x.y"),
    ("header not JSON", "format", ["header is not a JSON object"], lambda k: k.jws(b"not json", k.c)),
    ("header a JSON array", "format", ["header is not a JSON object"], lambda k: k.jws([k.hdr()], k.c)),
    ("payload not JSON", "format", ["payload is not a JSON object"], lambda k: k.jws(k.hdr(), b"not json")),
    ("payload a JSON array", "format", ["payload is not a JSON object"], lambda k: k.jws(k.hdr(), [k.c])),
    ("payload invalid UTF-8", "format", ["payload is not valid UTF-8"],
     lambda k: _spliced(k, b',"x":"\xff\xfe"}')),
    ("payload with a NUL (\\u0000)", "format", ['claim "x" contains a NUL'], lambda k: k.jws(k.hdr(), dict(k.c, x="a\u0000b"))),
    ("payload with a raw control character", "format", ["payload is not a JSON object", "control character"],
     lambda k: _spliced(k, b',"x":"a\x00b"}')),
    ("duplicate sub", "format", ['duplicate member "sub"'], lambda k: _spliced(k, b',"sub":"kp_admin"}')),
    ("100,000-deep nesting (beyond the size limit)", "format", ["the limit is 16384 bytes"],
     lambda k: _spliced(k, b',"a":' + _deep(100_000) + b"}")),
    ("4,000-deep nesting within the size limit", "format", ["recursion limit"],
     lambda k: _within_limit(_spliced(k, b',"a":' + _deep(4_000) + b"}"))),
    ("a 1 MB token", "format", ["the limit is 16384 bytes"], lambda k: k.jws(k.hdr(), dict(k.c, pad="x" * 1_000_000))),
]
NAMES = [c[0] for c in CASES]


def test_catalogue_covers_every_check():
    """The catalogue is what the refusal tests run: every check of the pipeline is the named
    refusal of some case (so a check whose rule stopped refusing would be seen), and no two
    cases share a name (pytest ids are the names)."""
    assert sorted({c[1] for c in CASES}) == sorted(CHECKS)
    assert len(set(NAMES)) == len(NAMES)


@pytest.fixture(scope="module")
def issuer():
    """An issuer with a real key set and key, that no token's header may make the server fetch."""
    i = MockIssuer()
    yield i
    i.stop()


@pytest.fixture(scope="module")
def hostile(cluster, signers, issuer):
    """A login role whose rules also require an audience, as an API would, and whose key set
    also holds a 1024-bit RSA key (ignored for its size). Yields (control token, {name: token});
    no server process may crash meanwhile."""
    small = signers["rsa1024"]
    with cluster.connect(dbname="app") as su:
        keyset = json.loads(one(su, "SELECT current_setting('kinde_rls.jwks')"))
        assert small.kid not in {k.get("kid") for k in keyset["keys"]}
        keyset["keys"].append(small.jwk())
        su.execute("CREATE ROLE hostile_user LOGIN")
        su.execute("GRANT authenticated TO hostile_user")
        su.execute("GRANT SELECT ON todos TO hostile_user")
        su.execute(f"ALTER ROLE hostile_user IN DATABASE app SET kinde_rls.audience = '{AUD}'")
        su.execute(sql.SQL("ALTER ROLE hostile_user IN DATABASE app SET kinde_rls.jwks = {}")
                   .format(sql.Literal(json.dumps(keyset))))
    k = Keys(signers, issuer)
    try:
        with cluster.no_crash(dbname="app"):
            yield k.good(), {name: build(k) for name, _, _, build in CASES}
        assert issuer.count("total") == 0, dict(issuer.counts)
    finally:
        with cluster.connect(dbname="app") as su:
            su.execute("ALTER ROLE hostile_user IN DATABASE app RESET ALL")
            su.execute("DROP OWNED BY hostile_user")
            su.execute("DROP ROLE hostile_user")


def _verify_jwt(conn, token):
    conn.execute("SELECT verify_jwt(%s)", (token,))


def _get_user_id(conn, token):
    with conn.transaction():
        conn.execute("SELECT set_config('kinde_rls.token', %s, true)", (token,))
        conn.execute("SELECT get_user_id()")


def test_control_token_is_accepted(cluster, hostile):
    good, _ = hostile
    with cluster.connect(user="hostile_user", dbname="app") as c:
        assert one(c, "SELECT verify_jwt(%s)->>'sub'", (good,)) == "kp_victim"
        with c.transaction():
            c.execute("SELECT set_config('kinde_rls.token', %s, true)", (good,))
            assert one(c, "SELECT get_user_id()") == "kp_victim"


def test_the_1024_bit_key_is_in_the_roles_key_set(cluster, signers, hostile):
    """Else its case would be an unknown kid, not a weak key."""
    with cluster.connect(user="hostile_user", dbname="app") as c:
        keys = json.loads(one(c, "SELECT current_setting('kinde_rls.jwks')"))["keys"]
        assert signers["rsa1024"].kid in {k.get("kid") for k in keys}


# Timing. A refusal must cost about what verifying a good token costs; a pathological input
# (deep nesting, a huge token, many candidate keys) would cost far more. A fixed limit per case
# fails falsely on a loaded 2-core machine, where any query can wait its turn for the CPU, so
# each refusal is compared with the control token on the same connection just before it: at
# most FACTOR times the slowest of three control runs, plus SLACK for sending a large token. A
# slow attempt is retried with a fresh control: scheduling noise does not repeat, a
# pathological input does.
FACTOR, SLACK, ATTEMPTS = 20, 0.05, 3


def _elapsed(run, conn, token, refused: bool) -> float:
    t0 = time.monotonic()
    try:
        run(conn, token)
    except psycopg.Error:
        if not refused:
            raise
    return time.monotonic() - t0


def _refusal_is_fast(run, conn, good, token, name):
    tries = []
    for _ in range(ATTEMPTS):
        control = max(_elapsed(run, conn, good, False) for _ in range(3))
        t = _elapsed(run, conn, token, True)
        tries.append((round(t, 4), round(control, 4)))
        if t <= FACTOR * control + SLACK:
            return
    pytest.fail(f"{name}: refusals took {tries} (seconds, control) with {run.__name__}")


@pytest.mark.parametrize("name", NAMES)
def test_hostile_token_is_refused_by_its_named_check(cluster, hostile, issuer, name):
    good, tokens = hostile
    token = tokens[name]
    _, check, details, _ = CASES[NAMES.index(name)]
    fetched = issuer.count("total")
    with cluster.connect(user="hostile_user", dbname="app") as c:
        for run in (_verify_jwt, _get_user_id):
            with pytest.raises(psycopg.Error) as ei:
                run(c, token)
            e = ei.value
            assert e.sqlstate == "28000", (name, e.sqlstate, str(e)[:300])
            assert e.diag.message_primary.startswith(f"JWT refused: {check} check failed"), \
                (name, e.diag.message_primary, e.diag.message_detail)
            for d in details:
                assert d in (e.diag.message_detail or ""), (name, d, e.diag.message_detail)
            # Messages never carry the token.
            full = f"{e.diag.message_primary} {e.diag.message_detail or ''}"
            assert len(token) < 40 or token not in full, name
            _refusal_is_fast(run, c, good, token, name)
        # Nor does the token leak rows through a policy, and the session is still usable.
        with c.transaction():
            c.execute("SELECT set_config('kinde_rls.token', %s, true)", (token,))
            with pytest.raises(psycopg.Error) as ei:
                c.execute("SELECT count(*) FROM todos")
            assert ei.value.sqlstate == "28000"
        assert one(c, "SELECT 1") == 1
    # No header made the server fetch anything, from the issuer it names or any other path.
    assert issuer.count("total") == fetched, (name, dict(issuer.counts))


def test_hostile_search_path_changes_nothing(cluster, signers):
    """A role with its own schema shadows get_user_id() and friends and puts its schema first:
    policies still call the extension's functions (bound by OID when the policy was created),
    and the extension's functions themselves run no SQL that a search_path could redirect."""
    with cluster.connect(dbname="app") as su:
        su.execute("CREATE SCHEMA evil AUTHORIZATION app_user")
        su.execute("INSERT INTO todos (task, user_id) VALUES ('the admin''s', 'kp_admin')")
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
                assert one(c, "SELECT count(*) FROM public.todos") == 0
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
            su.execute("DELETE FROM todos WHERE user_id = 'kp_admin'")
