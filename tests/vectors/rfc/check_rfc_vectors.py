"""Check the RFC vectors in this directory with an independent implementation (PyJWT on
`cryptography`), before kinde_rls is held to them. Runnable on its own:

    ~/.cache/kinde_rls/venv/bin/python tests/vectors/rfc/check_rfc_vectors.py

For every vector: the key is public (no private member), the payload segment decodes to
`payload_hex`, a `valid` signature verifies under the key and `alg`, and no other algorithm of
the key's family verifies it; the unsecured example is refused. The RFC 7520 compact
serializations are also compared with the same figures in Wycheproof's
json_web_signature_test.json (tcId 345-348), a second copy taken from the RFC independently."""

import base64
import json
import os
import sys

import jwt
from jwt.algorithms import get_default_algorithms

HERE = os.path.dirname(os.path.abspath(__file__))
FILES = ("rfc7515.json", "rfc7520.json", "rfc8037.json")
PRIVATE = ("d", "p", "q", "dp", "dq", "qi", "oth")
FAMILIES = [
    ("HS256", "HS384", "HS512"),
    ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512"),
    ("ES256", "ES384", "ES512"),
    ("EdDSA",),
]
# RFC 7520 section -> the Wycheproof tcId quoting the same figure.
WYCHEPROOF_FIGURES = {"4.1": 345, "4.2": 346, "4.3": 347, "4.4": 348}


def b64url(s: str) -> bytes:
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def load():
    out = []
    for name in FILES:
        with open(os.path.join(HERE, name)) as f:
            out += [(name, v) for v in json.load(f)["vectors"]]
    return out


def key_for(jwk: dict, alg: str):
    algo = get_default_algorithms()[alg]
    return algo.from_jwk(json.dumps(jwk))


def verifies(jws: str, jwk: dict, alg: str) -> bool:
    """Does the signature verify under `jwk` with `alg`, whatever the header says?"""
    try:
        key = key_for(jwk, alg)
    except (jwt.exceptions.InvalidKeyError, ValueError):
        return False
    header, payload, signature = jws.split(".")
    return get_default_algorithms()[alg].verify(f"{header}.{payload}".encode(), key, b64url(signature))


def payload_of(jws: str, jwk: dict, alg: str) -> bytes:
    """The payload PyJWT returns when it verifies the whole JWS (header alg included)."""
    return jwt.api_jws.PyJWS().decode_complete(jws, key_for(jwk, alg), algorithms=[alg])["payload"]


def family(alg: str):
    return next(f for f in FAMILIES if alg in f)


def wycheproof_figures() -> dict:
    path = os.path.join(HERE, "..", "wycheproof", "json_web_signature_test.json")
    with open(path) as f:
        data = json.load(f)
    return {t["tcId"]: t["jws"] for g in data["testGroups"] for t in g["tests"]}


def main() -> int:
    problems = []
    figures = wycheproof_figures()
    vectors = load()
    for name, v in vectors:
        label = f"RFC {v['rfc']} {v['section']} ({v['alg']})"
        jws, jwk, alg = v["jws"], v["key"], v["alg"]
        header, payload, signature = jws.split(".")
        if any(m in jwk for m in PRIVATE):
            problems.append(f"{label}: the key has private members")
        if json.loads(b64url(header))["alg"] != alg:
            problems.append(f"{label}: the header's alg is not {alg}")
        if b64url(payload).hex() != v["payload_hex"]:
            problems.append(f"{label}: the payload segment does not decode to payload_hex")
        if v["result"] == "valid":
            if not verifies(jws, jwk, alg):
                problems.append(f"{label}: the signature does not verify")
            elif payload_of(jws, jwk, alg).hex() != v["payload_hex"]:
                problems.append(f"{label}: PyJWT returns another payload")
            for other in family(alg):
                if other != alg and verifies(jws, jwk, other):
                    problems.append(f"{label}: the signature also verifies as {other}")
        else:
            if alg.lower() != "none" or signature != "":
                problems.append(f"{label}: an invalid vector that is not the unsecured example")
            try:
                jwt.api_jws.PyJWS().decode_complete(jws, key_for(jwk, "HS256"), algorithms=["HS256"])
                problems.append(f"{label}: PyJWT accepted the unsecured example")
            except jwt.exceptions.InvalidTokenError:
                pass
        if v["rfc"] == 7520 and figures.get(WYCHEPROOF_FIGURES[v["section"]]) != jws:
            problems.append(f"{label}: differs from Wycheproof tcId {WYCHEPROOF_FIGURES[v['section']]}")
    for p in problems:
        print("FAIL", p)
    print(f"{len(vectors)} RFC vectors checked with PyJWT {jwt.__version__}: {len(problems)} problems")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
