#!/usr/bin/env python3
"""Mint the verify_token seed corpus with an independent JOSE implementation (PyJWT).

Every seed is a token the verify_token target must accept: valid at the target's fixed NOW, for
its issuer and audience, signed with its HMAC secret or with the private half of a public JWK in
fuzz/src/lib.rs. fuzz/tests/seeds.rs replays them and fails if one is no longer accepted.

    ~/.cache/kinde_rls/venv/bin/python fuzz/seeds/mint.py          # rewrite the seeds
    ~/.cache/kinde_rls/venv/bin/python fuzz/seeds/mint.py --jwks   # print the public JWKS

ES256 signatures are randomized, so the ES256 seeds change on every run; the others do not.

THE PRIVATE KEYS BELOW ARE TEST DATA, PUBLISHED ON PURPOSE. They exist only so that these seeds
can be re-minted; nothing outside fuzz/ trusts them. Never use them for anything else.
"""
import base64
import json
import pathlib
import sys

import jwt
from cryptography.hazmat.primitives.serialization import (Encoding, PublicFormat,
                                                          load_pem_private_key)

# Must match fuzz/src/lib.rs.
NOW = 1_800_000_000
ISSUER = "https://acme.kinde.com"
AUDIENCE = "api"
SECRET = "kinde-client-secret-0123456789abcdefghijklmnop"

# TEST-ONLY private keys (see the module docstring): Ed25519 (kid "ed") and P-256 (kid "ec").
ED25519_TEST_PRIVATE_KEY = b"""-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VwBCIEIGbBSaKkPaEvs/eKvSFuHu0oDnpbPjyPmt1pGt5+4U1l
-----END PRIVATE KEY-----
"""
P256_TEST_PRIVATE_KEY = b"""-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgvxXNmGpahvPh14sO
MIGBlwpiZcbvCN/3wT32xAOO2E6hRANCAAR2HwGRImmVEV8tCmPM7myzwiNN4h0a
Xm0MfAuF0J8VF7XFkWpna4JJGmBDFfyDIl56aEvQi013y4zfsw839vig
-----END PRIVATE KEY-----
"""

OUT = pathlib.Path(__file__).resolve().parent.parent / "corpus" / "verify_token"


def b64(b: bytes) -> str:
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def public_jwks() -> dict:
    ed = load_pem_private_key(ED25519_TEST_PRIVATE_KEY, None).public_key()
    x = ed.public_bytes(Encoding.Raw, PublicFormat.Raw)
    ec = load_pem_private_key(P256_TEST_PRIVATE_KEY, None).public_key().public_numbers()
    return {"keys": [
        {"kty": "OKP", "crv": "Ed25519", "x": b64(x), "kid": "ed"},
        {"kty": "EC", "crv": "P-256", "x": b64(ec.x.to_bytes(32, "big")),
         "y": b64(ec.y.to_bytes(32, "big")), "kid": "ec"},
    ]}


def kinde_claims(sub: str, **extra) -> dict:
    """An access token as Kinde issues it, valid for an hour around NOW."""
    c = {
        "aud": [AUDIENCE],
        "azp": "463db732edf24274970e395735e6d3e2",
        "email": f"{sub}@example.com",
        "exp": NOW + 3600,
        "iat": NOW - 60,
        "iss": ISSUER,
        "jti": "cdf6c77a-5d60-42e9-bdd5-0c87dd3c9e4f",
        "org_code": "org_95755120efb",
        "org_name": "Acme",
        "feature_flags": {
            "theme": {"t": "s", "v": "pink"},
            "analytics": {"t": "b", "v": True},
            "limit": {"t": "i", "v": 7},
            "cfg": {"t": "j", "v": {"message": "hi"}},
        },
        "permissions": ["read:todos", "write:todos"],
        "roles": [{"id": "018f17f2-48dc-c606-94a7-0f425996ef57", "key": "admin", "name": "Admin"}],
        "scp": ["openid", "profile", "email", "offline"],
        "sub": sub,
    }
    c.update(extra)
    return c


def main() -> None:
    if sys.argv[1:] == ["--jwks"]:
        print(json.dumps(public_jwks()))
        return
    ed = load_pem_private_key(ED25519_TEST_PRIVATE_KEY, None)
    ec = load_pem_private_key(P256_TEST_PRIVATE_KEY, None)
    hs = SECRET.encode()
    minimal = {"sub": "kp_min", "iss": ISSUER, "aud": AUDIENCE, "exp": NOW + 600.5,
               "nbf": NOW - 10}
    seeds = {
        # Tokens, as an application would send them.
        "hs256_kinde": jwt.encode(kinde_claims("kp_hs"), hs, "HS256"),
        "hs256_minimal": jwt.encode(minimal, hs, "HS256"),
        "eddsa_kinde": jwt.encode(kinde_claims("kp_ed"), ed, "EdDSA", headers={"kid": "ed"}),
        "eddsa_no_kid": jwt.encode(minimal, ed, "EdDSA"),
        "es256_kinde": jwt.encode(kinde_claims("kp_ec"), ec, "ES256", headers={"kid": "ec"}),
        "es256_expiring": jwt.encode(
            kinde_claims("kp_ec2", exp=NOW - 29, aud=["other", AUDIENCE]), ec, "ES256",
            headers={"kid": "ec"}),
        # Header and payload JSON on two lines: the target signs them as they are (so that
        # mutations of the JSON text reach the claim checks under a good signature).
        "json_hs256": json.dumps({"alg": "HS256", "typ": "JWT"}) + "\n"
        + json.dumps(kinde_claims("kp_json")),
        "json_eddsa": json.dumps({"alg": "EdDSA", "kid": "ed"}) + "\n" + json.dumps(minimal),
        # exp and nbf one second inside the leeway: one second later or earlier is refused.
        "json_hs256_edges": json.dumps({"alg": "HS256"}) + "\n"
        + json.dumps(dict(minimal, exp=NOW - 29, nbf=NOW + 30)),
    }
    OUT.mkdir(parents=True, exist_ok=True)
    for name, text in seeds.items():
        (OUT / name).write_text(text)
    print(f"wrote {len(seeds)} seeds to {OUT}")


if __name__ == "__main__":
    main()
