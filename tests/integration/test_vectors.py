"""jws_verify() held to published test vectors, through SQL, as the non-superuser app_user:
every case of Wycheproof's JOSE suites (json_web_signature_test, json_web_key_test) and the
examples of RFC 7515, RFC 7520 and RFC 8037 (tests/vectors/, where SOURCE.md says where each
file comes from).

A `valid` case must return exactly its payload bytes (the base64url-decoded middle segment); an
`invalid` one must be refused with SQLSTATE 28000 (a refusal) or 22023 (a key that cannot be
used) and nothing else — never XX000, never a lost connection; an `acceptable` one may do
either. The cases where kinde_rls deliberately answers otherwise than Wycheproof are listed in
LISTED_DIFFERENCES with the reason: each must be refused, and any difference not listed fails
the test. WYCHEPROOF_ERRATA names the `invalid` cases whose token is that of a `valid` case. Each test prints a tally line (pytest -s shows it) and checks that no server process
crashed and that the session it used is the one it started with."""

import base64
import json
import os
import re
from collections import Counter
from dataclasses import dataclass

import psycopg

VECTORS = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "vectors"))
REFUSALS = ("28000", "22023")

# Wycheproof cases kinde_rls refuses on purpose, by suite and tcId. Each must be refused (28000
# or 22023); the test fails when one is answered with the payload, or when a case not listed
# here differs from Wycheproof's verdict.
LISTED_DIFFERENCES: dict[str, dict[int, str]] = {
    "json_web_signature": {
        346: "RFC 7520 Figure 20: the vector's public JWK says \"alg\":\"PS256\" but the token is PS384; "
        "a JWK's alg pins the key to that algorithm (RFC 7517 §4.4), so it is not used (the RFC's own "
        "key has no alg and passes in the RFC suite)",
        350: "RFC 7520 Figure 20 with key_ops: the JWK says \"alg\":\"PS256\", the token is PS384 (as 346)",
        347: "RFC 7520 Figure 27: the vector's JWK says \"alg\":\"ES521\", which is not a JOSE algorithm "
        "(RFC 7518 names ES512); a key with an unknown alg is not used, as json_web_key_test tcId 19 "
        "itself expects",
        351: "RFC 7520 Figure 27 with key_ops: the JWK says \"alg\":\"ES521\" (as 347)",
        372: "a '?' inside the header segment is not base64url; the signature covers the exact bytes sent, "
        "and accepting would take a decoder that skips characters (malleable tokens)",
        373: "a '?' inside the payload segment is not base64url (as 372)",
    },
    "json_web_key": {},
}

# Wycheproof cases whose token is byte for byte the token of a `valid` case of the same group,
# keyed by tcId: the case they repeat. No verifier can refuse one and accept the other; the test
# checks that the two tokens are identical and expects the payload.
WYCHEPROOF_ERRATA: dict[str, dict[int, int]] = {
    # "invalidBase64Padding" and "invalidBase64PaddingInPayload": the padding these cases are
    # named after is not in the published token, which is that of tcId 357 ("ValidMac").
    "json_web_signature": {367: 357, 370: 357},
    "json_web_key": {},
}

# The 3-argument form: for each valid RFC example, another algorithm of the same family, which
# the header does not name. EdDSA is the only algorithm of its family.
OTHER_OF_FAMILY = {"HS256": "HS384", "RS256": "RS384", "PS384": "PS512", "ES256": "ES384", "ES512": "ES384"}


def other_algorithm_refusal(jwk: dict) -> str:
    """The SQLSTATE for naming another algorithm of the family: 28000 when the key could verify
    it (the token and the caller disagree), 22023 when it could not — an EC key's curve fixes its
    algorithm, a JWK's alg pins it — so the arguments contradict each other whatever the token."""
    return "22023" if jwk["kty"] == "EC" or "alg" in jwk else "28000"


def b64url_strict(segment: str) -> bytes:
    """Unpadded base64url with canonical trailing bits, as a compact JWS carries it."""
    if not re.fullmatch(r"[A-Za-z0-9_-]*", segment) or len(segment) % 4 == 1:
        raise ValueError(f"not unpadded base64url: {segment!r}")
    raw = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    if base64.urlsafe_b64encode(raw).rstrip(b"=").decode() != segment:
        raise ValueError(f"non-canonical base64url: {segment!r}")
    return raw


def load(path: str) -> dict:
    with open(os.path.join(VECTORS, path)) as f:
        return json.load(f)


@dataclass
class Outcome:
    payload: bytes | None = None
    sqlstate: str | None = None
    message: str = ""

    def __str__(self):
        if self.sqlstate is None and self.message == "":
            return f"returned {self.payload!r}"
        return f"SQLSTATE {self.sqlstate}: {self.message}"


class Session:
    """app_user's connection, and a fresh one should a case cost the backend its life (so that
    every case is still run and reported)."""

    def __init__(self, cluster, conn):
        self.cluster = cluster
        self.conn = conn
        self.pid = conn.info.backend_pid
        self.lost = 0

    def jws_verify(self, jws: str, key: str, algorithm: str | None = None) -> Outcome:
        if algorithm is None:
            query, params = "SELECT jws_verify(%s, %s)", (jws, key)
        else:
            query, params = "SELECT jws_verify(%s, %s, %s)", (jws, key, algorithm)
        try:
            value = self.conn.execute(query, params).fetchone()[0]
        except psycopg.Error as e:
            message = e.diag.message_primary or str(e).strip()
            if self.conn.closed or self.conn.broken:
                self.lost += 1
                self.conn = self.cluster.connect(user="app_user", dbname="app")
                return Outcome(None, e.sqlstate or "connection lost", message)
            return Outcome(None, e.sqlstate or "no SQLSTATE", message)
        if value is None:
            return Outcome(None, None, "returned NULL")
        return Outcome(bytes(value))

    def alive(self) -> list[str]:
        """Problems with the session itself: lost on the way, or answering from another backend."""
        problems = [f"the connection was lost {self.lost} times"] if self.lost else []
        pid = self.conn.execute("SELECT pg_backend_pid()").fetchone()[0]
        if pid != self.pid:
            problems.append(f"the session ends on backend {pid}, it started on {self.pid}")
        return problems


def refused(out: Outcome, states=REFUSALS) -> bool:
    return out.payload is None and out.sqlstate in states


def judge(expected: str, payload: bytes | None, out: Outcome) -> bool:
    """Does `out` agree with Wycheproof's `expected` verdict?"""
    returned = out.sqlstate is None and out.message == "" and out.payload == payload
    if expected == "valid":
        return returned
    if expected == "invalid":
        return refused(out)
    return returned or refused(out)  # acceptable


def run_wycheproof(session: Session, suite: str) -> tuple[str, list[str]]:
    """Every case of one Wycheproof suite: its tally line and the problems found."""
    data = load(f"wycheproof/{suite}_test.json")
    listed = LISTED_DIFFERENCES[suite]
    errata = WYCHEPROOF_ERRATA[suite]
    tokens = {t["tcId"]: t["jws"] for g in data["testGroups"] for t in g["tests"]}
    seen: set[int] = set()
    tally: Counter = Counter()
    problems = []
    for group in data["testGroups"]:
        key = json.dumps(group["public"] if "public" in group else group["private"])
        for case in group["tests"]:
            tc, expected = case["tcId"], case["result"]
            seen.add(tc)
            out = session.jws_verify(case["jws"], key)
            where = f"tcId {tc} ({case['comment']}, Wycheproof: {expected})"
            if tc in listed:
                if refused(out):
                    tally["listed"] += 1
                else:
                    problems.append(f"{where}: listed as refused, but {out}")
                continue
            if tc in errata:
                if tokens[tc] != tokens.get(errata[tc]):
                    problems.append(f"{where}: listed as the token of tcId {errata[tc]}, but it is not")
                    continue
                expected, where = "valid", f"{where} = tcId {errata[tc]}"
            payload = None
            if expected != "invalid":
                try:
                    payload = b64url_strict(case["jws"].split(".")[1])
                except (ValueError, IndexError) as e:
                    problems.append(f"{where}: no payload to expect ({e})")
                    continue
            if judge(expected, payload, out):
                kind = "errata" if tc in errata else expected
                tally[kind + (" refused" if out.payload is None else " returned")] += 1
                if expected == "invalid":
                    tally[out.sqlstate] += 1
            else:
                problems.append(f"{where}: {out}")
    problems += [f"tcId {tc} is listed but is not in the suite" for tc in sorted((set(listed) | set(errata)) - seen)]
    n = sum(len(g["tests"]) for g in data["testGroups"])
    assert n == data["numberOfTests"], (n, data["numberOfTests"])
    line = (
        f"wycheproof {suite}: {n} cases, {tally['valid returned']} valid returned the payload, "
        f"{tally['invalid refused']} invalid refused (SQLSTATE 28000: {tally['28000']}, 22023: {tally['22023']})"
    )
    if tally["acceptable returned"] or tally["acceptable refused"]:
        line += f", acceptable: {tally['acceptable returned']} returned, {tally['acceptable refused']} refused"
    line += f", {tally['listed']} listed differences"
    if errata:
        line += f", {tally['errata returned']} errata (the token of a valid case) returned the payload"
    return line, problems


def wycheproof_suite(cluster, user_conn, suite: str):
    session = Session(cluster, user_conn)
    with cluster.no_crash(dbname="app"):
        line, problems = run_wycheproof(session, suite)
    print("\n" + line)
    problems += session.alive()
    assert not problems, f"{len(problems)} cases differ from Wycheproof:\n  " + "\n  ".join(problems)


def test_wycheproof_json_web_signature(cluster, user_conn):
    wycheproof_suite(cluster, user_conn, "json_web_signature")


def test_wycheproof_json_web_key(cluster, user_conn):
    """The keyset of each group is passed as it is, `{"keys": [...]}`."""
    wycheproof_suite(cluster, user_conn, "json_web_key")


def rfc_vectors() -> list[dict]:
    return [v for name in ("rfc7515.json", "rfc7520.json", "rfc8037.json") for v in load(f"rfc/{name}")["vectors"]]


def label(v: dict) -> str:
    return f"RFC {v['rfc']} {v['section']} ({v['alg']})"


def test_rfc_examples(cluster, user_conn):
    """Each valid example returns exactly its payload; the unsecured example of RFC 7515 A.5
    (alg none) is refused, whichever of the appendix's keys is passed."""
    vectors = rfc_vectors()
    assert len(vectors) == 10
    session = Session(cluster, user_conn)
    problems, returned, refusals = [], 0, 0
    with cluster.no_crash(dbname="app"):
        for v in vectors:
            key = json.dumps(v["key"])
            out = session.jws_verify(v["jws"], key)
            if v["result"] == "valid":
                if out.sqlstate is None and out.payload == bytes.fromhex(v["payload_hex"]):
                    returned += 1
                else:
                    problems.append(f"{label(v)}: {out}")
                continue
            assert v["alg"] == "none", label(v)
            for other in (w for w in vectors if w["rfc"] == 7515 and w["result"] == "valid"):
                out = session.jws_verify(v["jws"], json.dumps(other["key"]))
                if not refused(out, ("28000",)):
                    problems.append(f"{label(v)} with the key of {other['section']}: {out}")
            refusals += 1
    print(f"\nrfc 7515/7520/8037: {len(vectors)} examples, {returned} valid returned the payload, {refusals} invalid refused")
    problems += session.alive()
    assert not problems, "\n  ".join(["RFC examples not answered as published:"] + problems)


def test_rfc_examples_with_algorithm(cluster, user_conn):
    """jws_verify(jws, key, algorithm): each valid example returns its payload when its own
    algorithm is named, and is refused when another algorithm of the same family is (28000, or
    22023 when the key cannot be used with it); the unsecured example is refused even when an
    algorithm its key fits is named."""
    vectors = rfc_vectors()
    session = Session(cluster, user_conn)
    problems, returned, refusals = [], 0, Counter()
    with cluster.no_crash(dbname="app"):
        for v in vectors:
            key = json.dumps(v["key"])
            if v["result"] != "valid":
                out = session.jws_verify(v["jws"], key, "HS256")
                if not refused(out, ("28000",)):
                    problems.append(f"{label(v)} named HS256: {out}")
                continue
            out = session.jws_verify(v["jws"], key, v["alg"])
            if out.sqlstate is None and out.payload == bytes.fromhex(v["payload_hex"]):
                returned += 1
            else:
                problems.append(f"{label(v)} named {v['alg']}: {out}")
            other = OTHER_OF_FAMILY.get(v["alg"])
            if other is None:
                continue
            out = session.jws_verify(v["jws"], key, other)
            state = other_algorithm_refusal(v["key"])
            if refused(out, (state,)):
                refusals[state] += 1
            else:
                problems.append(f"{label(v)} named {other}: {out}, expected SQLSTATE {state}")
    valid = sum(v["result"] == "valid" for v in vectors)
    print(
        f"\nrfc 3-argument form: {valid} valid examples, {returned} returned the payload with their own "
        f"algorithm, {sum(refusals.values())} refused with another algorithm of the family "
        f"(SQLSTATE 28000: {refusals['28000']}, 22023: {refusals['22023']})"
    )
    problems += session.alive()
    assert not problems, "\n  ".join(["RFC examples not answered as expected:"] + problems)

