"""Promises of the README, INSTALL.md and CONTRIBUTING.md that no other test holds the code to:
the token cache (refusals never cached, cache_size, eviction, whole-token comparison), the
strict token format (canonical base64url, unique header members), what a fetched key set may
and may not do (oct keys, alg pins, the kid-less candidate limit), how keys are fetched
(redirects, credentials, a bounded wait for another session's fetch), the trusted install by a
database owner, the order of token sources, and the statement's start time as the clock.

Every test queries as a non-superuser role of its own; a superuser only configures. Each test
gets its own database (ALTER DATABASE / ALTER ROLE … IN DATABASE settings), dropped afterwards."""

import base64
import itertools
import json
import os
import time

import psycopg
import pytest
from cryptography.hazmat.primitives import hashes, hmac
from cryptography.hazmat.primitives.asymmetric import padding
from helpers import config_error, in_thread, one, refused, set_local
from issuer import MockIssuer
from kinde import KINDE_ISS, Signer, jwks, kinde_access_claims
from psycopg import sql

ROLE = "kr_promises"
_db_names = itertools.count(1)


# -- fixtures and helpers ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def role(cluster):
    """A login role that owns nothing and is no superuser: the way an app connects."""
    with cluster.connect() as su:
        su.execute(f"CREATE ROLE {ROLE} LOGIN")
    yield ROLE
    with cluster.connect() as su:
        su.execute(f"DROP ROLE {ROLE}")


def _set(conn, target: sql.Composable, name: str, value):
    conn.execute(sql.SQL("ALTER {} SET {} = {}").format(target, sql.SQL(name), sql.Literal(str(value))))


@pytest.fixture
def make_db(cluster, role):
    """make_db(jwks=..., issuer=...) → connect(): a new database whose kinde_rls settings a
    superuser stored with ALTER DATABASE; connect() opens a session as the test role there.
    connect.role_set(name, value) stores a setting for the test role in that database only."""
    made = []

    def make(**settings):
        name = f"promises_{next(_db_names)}_{os.getpid()}"
        with cluster.connect() as su:
            su.execute(f"CREATE DATABASE {name}")
        made.append(name)
        with cluster.connect(dbname=name) as su:
            su.execute("CREATE EXTENSION kinde_rls")
            # The main cluster's HMAC secret (ALTER SYSTEM) takes no part here.
            for k, v in {"secret_file": "", **settings}.items():
                _set(su, sql.SQL("DATABASE {}").format(sql.Identifier(name)), f"kinde_rls.{k}", v)

        def connect(user=role, **kw):
            return cluster.connect(user=user, dbname=name, **kw)

        def role_set(setting, value):
            with cluster.connect(dbname=name) as su:
                _set(su, sql.SQL("ROLE {} IN DATABASE {}").format(sql.Identifier(role), sql.Identifier(name)),
                     setting, value)

        connect.dbname = name
        connect.role_set = role_set
        return connect

    yield make
    with cluster.connect() as su:
        for name in made:
            su.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


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


def b64(b: bytes) -> str:
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def unb64(s: str) -> bytes:
    """Lenient base64url: ignores the unused trailing bits, as a sloppy decoder would."""
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def rs256_over(signer: Signer, header_seg: str, payload_seg: str) -> str:
    """An RS256 token whose signature covers exactly these segments, whatever they encode."""
    si = f"{header_seg}.{payload_seg}"
    return si + "." + b64(signer.key.sign(si.encode(), padding.PKCS1v15(), hashes.SHA256()))


def non_canonical(seg: str) -> str:
    """The same bytes with a non-zero unused bit in the last character (RFC 4648 §3.5)."""
    assert len(seg) % 4 in (2, 3), "the last character of this segment has no unused bits"
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    v = alphabet.index(seg[-1])
    assert v & 1 == 0
    out = seg[:-1] + alphabet[v | 1]
    assert unb64(out) == unb64(seg) and out != seg
    return out


def json_with_unused_bits(obj: dict) -> bytes:
    """Compact JSON, padded with white space so that its base64url ends with unused bits."""
    text = json.dumps(obj, separators=(",", ":"))
    while len(text.encode()) % 3 == 0:
        text = text[:-1] + " }"
    return text.encode()


def key_statuses(c):
    return c.execute("SELECT keys, ignored_keys FROM jwks_status()").fetchone()


def wait_for(predicate, timeout=30.0, what="condition"):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


# -- the token cache ---------------------------------------------------------------------------


def test_a_refusal_is_not_cached(make_db, signers):
    """CONTRIBUTING.md, The identity cache: "Refusals are not cached." A token refused because it
    is not valid yet (nbf in the near future, leeway 0) is accepted by the same session once nbf
    has passed — with nothing in between that would clear a cache (no setting, key or token
    change)."""
    rsa = signers["rsa"]
    connect = make_db(jwks=jwks(rsa), issuer=KINDE_ISS)
    connect.role_set("kinde_rls.leeway", 0)
    nbf = int(time.time()) + 4
    t = rsa.sign(kinde_access_claims("kp_early", nbf=nbf), "RS256")
    with connect() as c:
        # Session-level, so that the token generation is the same for every statement below.
        c.execute("SELECT set_config('kinde_rls.token', %s, false)", (t,))
        for _ in range(2):
            refused(c, "SELECT verify_jwt(%s)", (t,), check="nbf")
            refused(c, "SELECT get_user_id()", check="nbf")
            refused(c, "SELECT count(*) FROM generate_series(1, 3) WHERE get_user_id() IS NOT NULL", check="nbf")
        assert time.time() < nbf, "the machine was too slow to refuse before nbf"
        while time.time() < nbf + 0.05:
            time.sleep(0.05)
        assert one(c, "SELECT get_user_id()") == "kp_early"
        assert one(c, "SELECT verify_jwt(%s)->>'sub'", (t,)) == "kp_early"


def _expire_keys(c):
    """Wait until the fetched keys have expired and any verification cached with them too
    (cached verifications last until the keys' expiry, rounded up to a whole second, and are
    compared with the statement's start in whole seconds)."""
    expires = float(one(c, "SELECT extract(epoch FROM max(expires_at)) FROM jwks_status()"))
    wait_for(lambda: one(c, "SELECT extract(epoch FROM clock_timestamp())") >= int(expires) + 1.05,
             what="the keys to expire")


def _misses(connect, issuer, warm: list, sequence: list) -> tuple:
    """Verify `warm` (fresh keys, one statement each), let the keys expire, break the issuer
    (HTTP 500), then verify `sequence` in ONE statement. With jwks_min_refresh = 0 every verification that is not a
    cache hit tries to refetch the expired keys (one request and one WARNING each, then uses the
    stale keys), while a cache hit asks nothing: the issuer counts the misses. One statement,
    because its start time is the clock: a verification cached in it stays valid to its end.
    Returns (subs in order, misses counted by the issuer, WARNINGs)."""
    issuer.mode = "ok"
    with connect() as c:
        # A session's first use of a key set changes its keys epoch, which empties its token
        # cache at the next statement: that happens here, before the tokens to keep are cached.
        one(c, "SELECT verify_jwt(%s)", (issuer.token("kp_prime"),))
        for t in warm:
            one(c, "SELECT verify_jwt(%s)", (t,))
        _expire_keys(c)
        issuer.mode = "500"
        issuer.reset_counts()
        warnings = []
        c.add_notice_handler(lambda d: warnings.append(d.message_primary)
                             if d.severity_nonlocalized == "WARNING" else None)
        subs = [r[0] for r in c.execute("SELECT verify_jwt(t)->>'sub' FROM unnest(%s::text[]) AS u(t)",
                                        (sequence,))]
    return subs, issuer.count("jwks"), [w for w in warnings if "could not refresh the keys" in w]


def _cache_db(make_db, issuer):
    return make_db(jwks_url=issuer.jwks_url, issuer=issuer.iss, jwks_cache_ttl=1, jwks_min_refresh=0)


def test_cache_size_zero_disables_the_token_cache(make_db, make_issuer):
    """Settings: kinde_rls.cache_size "0 disables". What a cache hit changes that SQL can see:
    nothing but what re-verifying costs — here, a refetch of expired keys per verification."""
    issuer = make_issuer()
    a = issuer.token("kp_a")
    connect = _cache_db(make_db, issuer)
    # Control, default cache size: the token is verified once, then served from the cache.
    subs, misses, warnings = _misses(connect, issuer, [a], [a, a, a, a])
    assert subs == ["kp_a"] * 4
    assert misses == 1 and len(warnings) == 1, (misses, warnings)
    connect.role_set("kinde_rls.cache_size", 0)
    subs, misses, warnings = _misses(connect, issuer, [a], [a, a, a, a])
    assert subs == ["kp_a"] * 4
    assert misses == 4 and len(warnings) == 4, (misses, warnings)


def test_a_full_token_cache_evicts_its_oldest_entry(make_db, make_issuer):
    """The identity cache: "up to kinde_rls.cache_size verified tokens … (evicting the oldest first)".
    With room for 2: A, B, C (A leaves), B and C from the cache, A again verified."""
    issuer = make_issuer()
    w, a, b, c_ = (issuer.token(s) for s in ("kp_w", "kp_a", "kp_b", "kp_c"))
    connect = _cache_db(make_db, issuer)
    sequence = [a, b, c_, b, c_, a]
    subs, misses, _ = _misses(connect, issuer, [w], sequence)
    assert subs == ["kp_a", "kp_b", "kp_c", "kp_b", "kp_c", "kp_a"]
    assert misses == 3  # control: the default size holds them all
    connect.role_set("kinde_rls.cache_size", 2)
    subs, misses, _ = _misses(connect, issuer, [w], sequence)
    assert subs == ["kp_a", "kp_b", "kp_c", "kp_b", "kp_c", "kp_a"]
    assert misses == 4


def test_a_reverified_token_keeps_its_place_in_a_full_cache(make_db, make_issuer):
    """A cached verification that expired with its keys is verified again and re-inserted: it
    must then be the newest entry. Room for 2, A and B cached (A older); after the keys expire:
    A (re-verified, now newest), C (evicts B, not A), A — from the cache."""
    issuer = make_issuer()
    a, b, c = issuer.token("kp_a"), issuer.token("kp_b"), issuer.token("kp_c")
    connect = _cache_db(make_db, issuer)
    connect.role_set("kinde_rls.cache_size", 2)
    subs, misses, _ = _misses(connect, issuer, [a, b], [a, c, a])
    assert subs == ["kp_a", "kp_c", "kp_a"]
    assert misses == 2


def test_a_token_sharing_a_cached_tokens_signature_tail_is_verified(make_db, signers):
    """Performance: "the token cache hashes the token's signature tail, not the whole token, and
    compares whole tokens". A genuine token is cached; a tampered one of the same length with
    the same signature (sub kp_alice → kp_alicf) lands in the same bucket and must be refused by
    the signature check — through verify_jwt() and through kinde_rls.token + get_user_id()."""
    rsa = signers["rsa"]
    connect = make_db(jwks=jwks(rsa), issuer=KINDE_ISS)
    genuine = rsa.sign(kinde_access_claims("kp_alice"), "RS256")
    h, p, s = genuine.split(".")
    payload = unb64(p)
    assert payload.count(b'"sub":"kp_alice"') == 1
    forged = payload.replace(b'"sub":"kp_alice"', b'"sub":"kp_alicf"')
    tampered = f"{h}.{b64(forged)}.{s}"
    assert len(tampered) == len(genuine) and tampered[-40:] == genuine[-40:] and tampered != genuine
    with connect() as c:
        assert one(c, "SELECT verify_jwt(%s)->>'sub'", (genuine,)) == "kp_alice"
        e = refused(c, "SELECT verify_jwt(%s)", (tampered,), check="signature")
        assert e.diag.message_detail == f'the RS256 signature does not verify with the key with kid "{rsa.kid}"'
        with c.transaction():
            set_local(c, "kinde_rls.token", genuine)
            assert one(c, "SELECT get_user_id()") == "kp_alice"
        with c.transaction():
            set_local(c, "kinde_rls.token", tampered)
            refused(c, "SELECT get_user_id()", check="signature")
        # The refusals took nothing from the genuine token's cache entry.
        assert one(c, "SELECT verify_jwt(%s)->>'sub'", (genuine,)) == "kp_alice"


# -- the token format --------------------------------------------------------------------------


def test_non_canonical_base64url_is_refused_even_when_it_decodes_to_a_valid_token(make_db, signers):
    """Tokens: "Unpadded base64url with canonical trailing bits". A segment whose last character
    has a non-zero unused bit decodes (leniently) to the same bytes; it is refused with the
    format check — a header or payload validly signed over exactly that text, and a signature
    that decodes to the genuine signature."""
    rsa = signers["rsa"]
    connect = make_db(jwks=jwks(rsa), issuer=KINDE_ISS)
    header = json_with_unused_bits({"alg": "RS256", "kid": rsa.kid, "typ": "JWT"})
    payload = json_with_unused_bits(kinde_access_claims("kp_bits"))
    h, p = b64(header), b64(payload)
    control = rs256_over(rsa, h, p)
    sig = control.split(".")[2]
    cases = {
        "header": rs256_over(rsa, non_canonical(h), p),
        "payload": rs256_over(rsa, h, non_canonical(p)),
        "signature": f"{h}.{p}.{non_canonical(sig)}",
    }
    with connect() as c:
        assert one(c, "SELECT verify_jwt(%s)->>'sub'", (control,)) == "kp_bits"
        for segment, t in cases.items():
            e = refused(c, "SELECT verify_jwt(%s)", (t,), check="format")
            assert e.diag.message_detail.startswith(f"the {segment} is not unpadded base64url"), \
                (segment, e.diag.message_detail)
            with c.transaction():
                set_local(c, "kinde_rls.token", t)
                refused(c, "SELECT get_user_id()", check="format")


def test_duplicate_header_members_are_refused_even_when_signed(make_db, signers):
    """Tokens: "header and payload must be UTF-8 JSON objects with unique top-level member
    names". Two alg or two kid members in a header validly signed over exactly that text are
    refused (format), whichever of the two a lenient parser would pick."""
    rsa = signers["rsa"]
    connect = make_db(jwks=jwks(rsa), issuer=KINDE_ISS)
    p = b64(json.dumps(kinde_access_claims("kp_dup"), separators=(",", ":")).encode())
    kid = json.dumps(rsa.kid)
    cases = {
        "alg": [f'{{"alg":"none","kid":{kid},"alg":"RS256"}}', f'{{"alg":"RS256","kid":{kid},"alg":"RS256"}}'],
        "kid": [f'{{"alg":"RS256","kid":"someone-else","kid":{kid}}}', f'{{"alg":"RS256","kid":{kid},"kid":{kid}}}'],
    }
    with connect() as c:
        control = rs256_over(rsa, b64(f'{{"alg":"RS256","kid":{kid}}}'.encode()), p)
        assert one(c, "SELECT verify_jwt(%s)->>'sub'", (control,)) == "kp_dup"
        for member, headers in cases.items():
            for text in headers:
                t = rs256_over(rsa, b64(text.encode()), p)
                e = refused(c, "SELECT verify_jwt(%s)", (t,), check="format")
                assert f'duplicate member "{member}"' in e.diag.message_detail, e.diag.message_detail
                with c.transaction():
                    set_local(c, "kinde_rls.token", t)
                    refused(c, "SELECT get_user_id()", check="format")


# -- what a key set may do ---------------------------------------------------------------------


def test_an_oct_key_in_a_fetched_key_set_is_never_an_hmac_secret(make_db, make_issuer):
    """Algorithms and keys: an `oct` (symmetric) key in a key set is ignored, with its reason in
    jwks_status().ignored_keys; an HS256 token MACed with its k is refused, with or without its
    kid; the set's RSA key still verifies."""
    issuer = make_issuer()
    secret = os.urandom(32)
    issuer.extra_keys = [{"kty": "oct", "kid": "shared-hs", "k": b64(secret), "alg": "HS256", "use": "sig"}]
    connect = make_db(jwks_url=issuer.jwks_url, issuer=issuer.iss)

    def hs256(header: dict) -> str:
        si = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(issuer.claims('kp_hmac')).encode())}"
        mac = hmac.HMAC(secret, hashes.SHA256())
        mac.update(si.encode())
        return si + "." + b64(mac.finalize())

    reason = "symmetric (oct) keys are not taken from a key set; use kinde_rls.secret_file"
    with connect() as c:
        assert one(c, "SELECT verify_jwt(%s)->>'sub'", (issuer.token("kp_rsa"),)) == "kp_rsa"
        e = refused(c, "SELECT verify_jwt(%s)", (hs256({"alg": "HS256", "typ": "JWT", "kid": "shared-hs"}),),
                    check="key")
        assert e.diag.message_detail == (f'the key with kid "shared-hs" in the key set of "{issuer.iss}" '
                                         f"({issuer.jwks_url}) is ignored: {reason}"), e.diag.message_detail
        e = refused(c, "SELECT verify_jwt(%s)", (hs256({"alg": "HS256", "typ": "JWT"}),), check="algorithm")
        with c.transaction():
            set_local(c, "kinde_rls.token", hs256({"alg": "HS256", "kid": "shared-hs"}))
            refused(c, "SELECT get_user_id()", check="key")
        keys, ignored = key_statuses(c)
    assert keys == 1
    assert f'key "shared-hs": {reason}' in ignored, ignored


def test_a_jwk_alg_pins_its_key(make_db, make_issuer):
    """Algorithms and keys: "a JWK's alg, when present, pins the key to that algorithm". An RSA
    key published with "alg": "RS256" verifies RS256 tokens only: a PS256 token that key signed
    is refused (algorithm), naming it by kid; without a kid the pinned key is not even tried."""
    issuer = make_issuer()
    pinned = Signer("rsa")
    issuer.extra_keys = [pinned.jwk(alg="RS256")]
    connect = make_db(jwks_url=issuer.jwks_url, issuer=issuer.iss)
    claims = issuer.claims("kp_pinned")
    with connect() as c:
        assert one(c, "SELECT verify_jwt(%s)->>'sub'", (pinned.sign(claims, "RS256"),)) == "kp_pinned"
        e = refused(c, "SELECT verify_jwt(%s)", (pinned.sign(claims, "PS256"),), check="algorithm")
        assert "RS256" in e.diag.message_detail and "PS256" in e.diag.message_detail, e.diag.message_detail
        with c.transaction():
            set_local(c, "kinde_rls.token", pinned.sign(claims, "PS256"))
            refused(c, "SELECT get_user_id()", check="algorithm")
        # Kid-less: the unpinned issuer key is the only candidate for PS256.
        e = refused(c, "SELECT verify_jwt(%s)", (pinned.sign(claims, "PS256", kid=False),), check="signature")
        assert e.diag.message_detail == \
            f'the PS256 signature does not verify with the key with kid "{issuer.signer.kid}"'
        # The unpinned key takes either.
        assert one(c, "SELECT verify_jwt(%s)->>'sub'", (issuer.signer.sign(claims, "PS256"),)) == "kp_pinned"


def test_a_kid_less_token_is_refused_when_more_than_8_keys_could_verify_it(make_db):
    """Algorithms and keys: a token without kid is tried against the keys of its type, at most 8
    (MAX_CANDIDATE_KEYS): with 8 P-256 keys (and RSA keys, which do not count for ES256) a token
    signed by the 8th verifies; with 9, a kid-less token is refused (key) whichever key signed
    it, and must name its key."""
    ecs = [Signer("p256", kid=f"ec-{n}") for n in range(9)]
    rsas = [Signer("rsa", kid=f"rsa-{n}") for n in range(2)]
    eight = make_db(jwks=jwks(*ecs[:8], *rsas), issuer=KINDE_ISS)
    nine = make_db(jwks=jwks(*ecs, *rsas), issuer=KINDE_ISS)
    claims = kinde_access_claims("kp_many")
    with eight() as c:
        assert one(c, "SELECT verify_jwt(%s)->>'sub'", (ecs[7].sign(claims, "ES256", kid=False),)) == "kp_many"
        assert one(c, "SELECT verify_jwt(%s)->>'sub'", (rsas[1].sign(claims, "RS256", kid=False),)) == "kp_many"
    with nine() as c:
        for signer in (ecs[0], ecs[8]):
            e = refused(c, "SELECT verify_jwt(%s)", (signer.sign(claims, "ES256", kid=False),), check="key")
            assert e.diag.message_detail == "9 keys could verify this token; it must name its key with kid"
        with c.transaction():
            set_local(c, "kinde_rls.token", ecs[0].sign(claims, "ES256", kid=False))
            refused(c, "SELECT get_user_id()", check="key")
        assert one(c, "SELECT verify_jwt(%s)->>'sub'", (ecs[8].sign(claims, "ES256"),)) == "kp_many"
        assert one(c, "SELECT verify_jwt(%s)->>'sub'", (rsas[0].sign(claims, "RS256", kid=False),)) == "kp_many"


# -- how keys are fetched ----------------------------------------------------------------------


def test_key_fetches_follow_at_most_3_redirects(make_db, make_issuer):
    """Fetching: "at most 3 redirects". Three are followed to the key set; at a fourth the
    fetch stops (the fourth target is never asked for) and the token is refused (key)."""
    issuer = make_issuer()
    three = make_db(jwks_url=issuer.redirect_chain(3, name="three"), issuer=issuer.iss)
    with three() as c:
        assert one(c, "SELECT verify_jwt(%s)->>'sub'", (issuer.token("kp_hops"),)) == "kp_hops"
    assert [p for p, _ in issuer.requests] == ["/three/3", "/three/2", "/three/1", issuer.jwks_path]
    issuer.reset_counts()
    four = make_db(jwks_url=issuer.redirect_chain(4, name="four"), issuer=issuer.iss)
    with four() as c:
        e = refused(c, "SELECT verify_jwt(%s)", (issuer.token("kp_hops"),), check="key")
        assert "more than 3 redirects" in e.diag.message_detail, e.diag.message_detail
        assert one(c, "SELECT last_error FROM jwks_status()") == "more than 3 redirects"
    assert [p for p, _ in issuer.requests] == ["/four/4", "/four/3", "/four/2", "/four/1"]


@pytest.mark.parametrize("hops", [0, 2])
def test_a_redirect_to_plain_http_off_loopback_is_not_followed(make_db, make_issuer, hops):
    """Fetching: redirects are "each held to the same rules": from a loopback http:// source (the
    only plain http allowed), a redirect — the first, or one after two allowed hops — to plain
    http:// on a routable address is refused before any request is made to it."""
    issuer = make_issuer()
    away = "http://192.0.2.1/.well-known/jwks"  # TEST-NET-1: nothing answers there
    issuer.redirects["/away"] = away
    connect = make_db(jwks_url=issuer.redirect_chain(hops, target="/away") if hops else issuer.base + "/away",
                      issuer=issuer.iss, jwks_timeout_ms=5000)
    with connect() as c:
        # The rule's own words, not "timed out" or "request failed": nothing was asked of 192.0.2.1.
        e = refused(c, "SELECT verify_jwt(%s)", (issuer.token("kp_x"),), check="key")
        assert 'plain http:// is allowed only to loopback addresses, not "192.0.2.1"' in e.diag.message_detail, \
            e.diag.message_detail
    assert issuer.count("redirect") == hops + 1 and issuer.count("jwks") == 0


def test_key_fetches_send_no_credentials(make_db, make_issuer):
    """Fetching: "no credentials sent". The issuer sets a cookie with each of two redirects on the
    way to its key set: no request carries it back, nor any Authorization or
    Proxy-Authorization."""
    issuer = make_issuer()
    issuer.redirect_cookie = "kr_session=issued-by-the-issuer; Path=/"
    connect = make_db(jwks_url=issuer.redirect_chain(2, name="cookie"), issuer=issuer.iss)
    with connect() as c:
        assert one(c, "SELECT verify_jwt(%s)->>'sub'", (issuer.token("kp_nocreds"),)) == "kp_nocreds"
    assert [p for p, _ in issuer.requests] == ["/cookie/2", "/cookie/1", issuer.jwks_path]
    seen = set(issuer.headers_seen())
    assert "host" in seen  # the headers were recorded
    assert not seen & {"authorization", "cookie", "proxy-authorization"}, issuer.requests


def test_a_redirect_cannot_make_a_key_fetch_send_credentials(make_db, make_issuer):
    """Fetching: "no credentials sent" (fetch.rs: "No Authorization header is ever sent"). A
    redirect whose Location carries user:password@ must not turn into an Authorization header
    (refusing such a Location, or dropping its user part, both keep the promise)."""
    issuer = make_issuer()
    issuer.redirects["/userinfo"] = issuer.jwks_url.replace("http://", "http://kinde:hunter2@")
    connect = make_db(jwks_url=issuer.base + "/userinfo", issuer=issuer.iss)
    with connect() as c:
        try:
            c.execute("SELECT verify_jwt(%s)", (issuer.token("kp_x"),))
        except psycopg.Error as e:
            assert e.sqlstate == "28000", str(e)
    assert [p for p, _ in issuer.requests][0] == "/userinfo"
    assert "authorization" not in issuer.headers_seen(), issuer.requests


def test_a_configured_key_url_with_credentials_is_a_config_error_that_hides_them(make_db, make_issuer):
    """Refused when set (22023, HINT naming the setting), in a message that does not repeat the
    password; nothing is fetched."""
    issuer = make_issuer()
    connect = make_db(issuer=issuer.iss)
    with connect(user="postgres") as su:
        e = config_error(su, sql.SQL("SET kinde_rls.jwks_url = {}").format(
            sql.Literal(issuer.jwks_url.replace("http://", "http://kinde:hunter2@"))), setting="kinde_rls.jwks_url")
    assert "credentials" in e.diag.message_primary
    assert "hunter2" not in f"{e.diag.message_primary} {e.diag.message_detail} {e.diag.message_hint}"
    assert issuer.count("total") == 0


def test_a_session_waiting_for_anothers_fetch_waits_at_most_its_timeout(cluster, make_db, make_issuer):
    """Fetched keys: with the shared cache, a backend that needs keys another backend is fetching
    waits for it "never longer than kinde_rls.jwks_timeout_ms". The fetching session (a
    superuser's, 30 s timeout) hangs on the issuer; the test role's session (3 s) waits for it
    and is refused (key) with the documented reason within a few times its own timeout, while
    the fetch it waited for still hangs."""
    issuer = make_issuer()
    issuer.mode = "hang"
    issuer.hang_seconds = 60
    timeout_s = 3.0
    connect = make_db(jwks_url=issuer.jwks_url, issuer=issuer.iss, jwks_timeout_ms=int(timeout_s * 1000))
    with connect(user="postgres") as fetcher, connect() as waiter, cluster.connect() as su:
        fetcher.execute("SET kinde_rls.jwks_timeout_ms = 30000")
        fetcher_pid = one(fetcher, "SELECT pg_backend_pid()")
        th_f, box_f = in_thread(fetcher, "SELECT verify_jwt(%s)", (issuer.token("kp_f"),))
        try:
            wait_for(lambda: issuer.count("jwks") == 1, timeout=10, what="the fetch to start")
            t0 = time.monotonic()
            e = refused(waiter, "SELECT verify_jwt(%s)", (issuer.token("kp_w"),), check="key")
            waited = time.monotonic() - t0
            assert "timed out waiting for another session's fetch" in e.diag.message_detail, e.diag.message_detail
            assert waited < 4 * timeout_s, waited
            assert th_f.is_alive(), "the fetch waited for had already ended"
            assert issuer.count("jwks") == 1  # the waiter made no request of its own
        finally:
            su.execute("SELECT pg_cancel_backend(%s)", (fetcher_pid,))
            th_f.join(10)
    assert box_f["error"].sqlstate == "57014", box_f


# -- who may install and configure -------------------------------------------------------------


SUPERUSER_SETTINGS = ["issuer", "audience", "domain", "jwks_url", "jwks", "providers", "secret", "secret_file",
                      "leeway", "require_sub", "trust_request_claims", "cache_size", "jwks_timeout_ms",
                      "jwks_cache_ttl", "jwks_min_refresh", "jwks_max_stale", "anonymous_roles"]


def test_a_database_owner_installs_the_extension_but_configures_nothing(cluster, signers):
    """Security model: "trusted = true: a database owner may CREATE EXTENSION kinde_rls without
    superuser … every trust-bearing setting stays superuser-only whoever installed the
    extension". A CREATEDB role creates a database, installs the extension there, and then
    cannot SET, ALTER DATABASE … SET or ALTER ROLE … SET any superuser-only setting (42501), nor
    run refresh_jwks() or grant it to itself; the functions work for it."""
    owner, db = "kr_promises_owner", f"kr_promises_owned_{os.getpid()}"
    with cluster.connect() as su:
        su.execute(f"CREATE ROLE {owner} LOGIN CREATEDB")
    try:
        with cluster.connect(user=owner) as o:
            assert one(o, "SELECT rolsuper FROM pg_roles WHERE rolname = current_user") is False
            o.execute(f"CREATE DATABASE {db}")
        with cluster.connect(user=owner, dbname=db) as o:
            o.execute("CREATE EXTENSION kinde_rls")
            assert one(o, "SELECT extowner::regrole::text FROM pg_extension WHERE extname = 'kinde_rls'") == owner
            key = json.dumps(signers["rsa"].jwk())
            for name in SUPERUSER_SETTINGS:
                value = "30" if name in ("leeway", "cache_size", "jwks_cache_ttl", "jwks_min_refresh",
                                          "jwks_max_stale") else (
                    "on" if name in ("require_sub", "trust_request_claims") else (
                        "2000" if name == "jwks_timeout_ms" else (key if name == "jwks" else "https://evil.example")))
                for stmt in [sql.SQL("SET {} = {}"), sql.SQL("SET LOCAL {} = {}"),
                             sql.SQL("ALTER DATABASE " + db + " SET {} = {}"),
                             sql.SQL("ALTER ROLE " + owner + " SET {} = {}"),
                             sql.SQL("ALTER ROLE " + owner + " IN DATABASE " + db + " SET {} = {}")]:
                    q = stmt.format(sql.SQL(f"kinde_rls.{name}"), sql.Literal(value))
                    with pytest.raises(psycopg.Error) as ei:
                        with o.transaction():
                            o.execute(q)
                    assert ei.value.sqlstate == "42501", (q.as_string(o), ei.value.sqlstate, str(ei.value))
                    assert ei.value.diag.message_primary == f'permission denied to set parameter "kinde_rls.{name}"', \
                        ei.value.diag.message_primary
                with pytest.raises(psycopg.Error) as ei:
                    o.execute("SELECT set_config(%s, %s, false)", (f"kinde_rls.{name}", value))
                assert ei.value.sqlstate == "42501", (name, str(ei.value))
            for q in ["SELECT refresh_jwks()", "GRANT EXECUTE ON FUNCTION refresh_jwks() TO " + owner]:
                with pytest.raises(psycopg.Error) as ei:
                    o.execute(q)
                assert ei.value.sqlstate == "42501", (q, str(ei.value))
            assert one(o, "SELECT count(*) FROM pg_db_role_setting WHERE (setrole = %s::regrole OR setdatabase = "
                          "(SELECT oid FROM pg_database WHERE datname = %s))", (owner, db)) == 0
            # The extension works for its owner, with what a superuser configured (nothing yet).
            assert one(o, "SELECT get_user_id()") is None
            t = signers["rsa"].sign(kinde_access_claims("kp_owner"), "RS256")
            assert one(o, "SELECT verify_jwt(%s, %s, 'RS256')->>'sub'", (t, json.dumps(signers["rsa"].jwk()))) == \
                "kp_owner"
            refused(o, "SELECT verify_jwt(%s)", (t,), check="key")
    finally:
        with cluster.connect() as su:
            su.execute(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
            su.execute(f"DROP ROLE {owner}")


# -- where get_user_id() finds the token -------------------------------------------------------


def _identity(c, sources: dict):
    """get_user_id() in a transaction that set `sources` (as PostgREST or an app would)."""
    with c.transaction():
        for name, value in sources.items():
            c.execute("SELECT set_config(%s, %s, true)", (name, value))
        return one(c, "SELECT get_user_id()")


def test_token_sources_in_order(make_db, signers):
    """Where get_user_id() finds the token: kinde_rls.token, then request.headers' bearer token,
    then a compact JWT in request.jwt.claims, then (only with kinde_rls.trust_request_claims)
    a JSON object there; the first present wins. A bad token at a higher place is an error
    (28000), never a fall back to a lower one; a bad one lower down is not looked at."""
    rsa = signers["rsa"]
    tok = {who: rsa.sign(kinde_access_claims(f"kp_{who}"), "RS256") for who in ("app", "header", "claims")}
    forged = signers["stranger"].sign(kinde_access_claims("kp_app"), "RS256")
    token = {"kinde_rls.token": tok["app"]}
    header = {"request.headers": json.dumps({"authorization": f"Bearer {tok['header']}"})}
    basic = {"request.headers": json.dumps({"authorization": "Basic dXNlcjpwYXNz", "accept": "*/*"})}
    jwt_claims = {"request.jwt.claims": tok["claims"]}
    json_claims = {"request.jwt.claims": json.dumps(kinde_access_claims("kp_json", role="authenticated"))}
    untrusting = make_db(jwks=jwks(rsa), issuer=KINDE_ISS)
    trusting = make_db(jwks=jwks(rsa), issuer=KINDE_ISS)
    trusting.role_set("kinde_rls.trust_request_claims", "on")
    for connect, trust in [(untrusting, False), (trusting, True)]:
        with connect() as c:
            assert one(c, "SHOW kinde_rls.trust_request_claims") == ("on" if trust else "off")
            cases = [
                ({**token, **header, **jwt_claims}, "kp_app"),
                ({**token, **header}, "kp_app"),
                ({**token, **jwt_claims}, "kp_app"),
                ({**token, **json_claims}, "kp_app"),
                ({**header, **jwt_claims}, "kp_header"),
                ({**header, **json_claims}, "kp_header"),
                ({**basic, **jwt_claims}, "kp_claims"),  # a header without a bearer token is no token
                ({**basic, **json_claims}, "kp_json" if trust else None),
                (json_claims, "kp_json" if trust else None),
                (jwt_claims, "kp_claims"),
                (header, "kp_header"),
                (token, "kp_app"),
                # A bad token lower down is never looked at.
                ({**token, "request.headers": json.dumps({"authorization": f"Bearer {forged}"})}, "kp_app"),
                ({**header, "request.jwt.claims": forged}, "kp_header"),
            ]
            for sources, expected in cases:
                assert _identity(c, sources) == expected, (trust, list(sources), expected)
            # A bad token higher up is an error, never the next source's identity nor anonymous.
            bad = [
                ({"kinde_rls.token": forged, **header, **jwt_claims}, "key"),
                ({"kinde_rls.token": "not-a-token", **header}, "format"),
                ({"kinde_rls.token": forged, **json_claims}, "key"),
                ({"request.headers": json.dumps({"authorization": f"Bearer {forged}"}), **jwt_claims}, "key"),
                ({"request.headers": json.dumps({"authorization": "Bearer x.y"}), **json_claims}, "format"),
                ({"request.jwt.claims": forged}, "key"),
            ]
            for sources, check in bad:
                with pytest.raises(psycopg.Error) as ei:
                    with c.transaction():
                        for name, value in sources.items():
                            c.execute("SELECT set_config(%s, %s, true)", (name, value))
                        c.execute("SELECT get_user_id()")
                assert ei.value.sqlstate == "28000", (trust, list(sources), str(ei.value))
                assert ei.value.diag.message_primary.startswith(f"JWT refused: {check} check failed"), \
                    (trust, list(sources), ei.value.diag.message_primary)


# -- the statement's clock ---------------------------------------------------------------------


def test_the_statements_start_time_is_the_clock_for_the_whole_statement(make_db, signers):
    """Tokens: "Time is the statement's start time, so one statement never changes its mind half
    way through a scan." With leeway 0, a statement that starts before the token's exp and runs
    past it sees the user in every call, through get_user_id() (its per-row fast path) and
    verify_jwt() alike; the next statement is refused (exp)."""
    rsa = signers["rsa"]
    connect = make_db(jwks=jwks(rsa), issuer=KINDE_ISS)
    connect.role_set("kinde_rls.leeway", 0)
    exp = int(time.time()) + 6
    t = rsa.sign(kinde_access_claims("kp_clock", exp=exp), "RS256")
    with connect() as c:
        with c.transaction():
            set_local(c, "kinde_rls.token", t)
            row = c.execute(
                "SELECT extract(epoch FROM statement_timestamp()), get_user_id(), verify_jwt(%s)->>'sub', "
                "pg_sleep_until(to_timestamp(%s)), get_user_id(), verify_jwt(%s)->>'sub', "
                "(SELECT count(*) FROM generate_series(1, 1000) WHERE get_user_id() = 'kp_clock'), "
                "extract(epoch FROM clock_timestamp())",
                (t, exp + 1, t)).fetchone()
            started, before, v_before, _, after, v_after, rows, ended = row
            assert float(started) < exp <= float(ended), (started, exp, ended)
            assert (before, v_before, after, v_after, rows) == ("kp_clock", "kp_clock", "kp_clock", "kp_clock", 1000)
            refused(c, "SELECT get_user_id()", check="exp")
        e = refused(c, "SELECT verify_jwt(%s)", (t,), check="exp")
        assert f"(exp {exp})" in e.diag.message_detail and "leeway 0 s" in e.diag.message_detail
