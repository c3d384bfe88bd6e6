"""Kinde-shaped tokens minted with an independent JOSE implementation (PyJWT + cryptography).

Shared by the integration tests and `make demo`. Nothing here uses kinde_rls itself, so a bug in
the extension cannot hide behind the same bug in the test tokens.
"""

import json
import secrets
import time
import uuid

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

KINDE_ISS = "https://acme.kinde.com"
CLIENT_ID = "463db732edf24274970e395735e6d3e2"
# Kinde client secrets are ~50 characters; the HS256 flow signs with their UTF-8 bytes.
CLIENT_SECRET = "Ht2ZZ0CGuKuM1NhXGEiTcZPg7Zu3vkWvcyrcvCRn6lr0WsHyLb"


def kinde_kid() -> str:
    """Kinde key ids are colon-separated hex."""
    return ":".join(f"{b:02x}" for b in secrets.token_bytes(16))


def pem_public(key) -> str:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


def pem_private(key) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def public_jwk(key, kid=None, alg=None) -> dict:
    pub = key.public_key()
    if isinstance(pub, rsa.RSAPublicKey):
        jwk = RSAAlgorithm.to_jwk(pub, as_dict=True)
    elif isinstance(pub, ec.EllipticCurvePublicKey):
        jwk = ECAlgorithm.to_jwk(pub, as_dict=True)
    else:
        jwk = OKPAlgorithm.to_jwk(pub, as_dict=True)
    jwk.pop("key_ops", None)
    jwk["use"] = "sig"
    if kid:
        jwk["kid"] = kid
    if alg:
        jwk["alg"] = alg
    return jwk


class Signer:
    """One signing key and the algorithms it serves."""

    def __init__(self, kind: str, kid: str | None = None):
        self.kind = kind
        self.kid = kid or kinde_kid()
        if kind == "rsa":
            self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        elif kind == "rsa1024":
            self.key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
        elif kind == "p256":
            self.key = ec.generate_private_key(ec.SECP256R1())
        elif kind == "p384":
            self.key = ec.generate_private_key(ec.SECP384R1())
        elif kind == "p521":
            self.key = ec.generate_private_key(ec.SECP521R1())
        elif kind == "ed25519":
            self.key = ed25519.Ed25519PrivateKey.generate()
        else:
            raise ValueError(kind)

    def jwk(self, alg=None) -> dict:
        return public_jwk(self.key, self.kid, alg)

    def sign(self, claims: dict, alg: str, headers: dict | None = None, kid=True) -> str:
        """Sign with PyJWT's JWS layer, which signs any payload bytes: claims that a JWT library
        would refuse to encode (a numeric sub, an array iss) are what hostile tests need."""
        h = {"kid": self.kid} if kid else {}
        h.update(headers or {})
        payload = json.dumps(claims, separators=(",", ":")).encode()
        return jwt.api_jws.PyJWS().encode(payload, self.key, algorithm=alg, headers=h)


def kinde_access_claims(sub: str, lifetime=3600, **extra) -> dict:
    """A Kinde access token payload, shaped like ../shared/KINDE.md."""
    now = int(time.time())
    claims = {
        "aud": [],
        "azp": CLIENT_ID,
        "email": f"{sub}@example.com",
        "exp": now + lifetime,
        "iat": now,
        "iss": KINDE_ISS,
        "jti": str(uuid.uuid4()),
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
    claims.update(extra)
    return claims


def kinde_id_claims(sub: str, lifetime=3600, **extra) -> dict:
    """A Kinde ID token payload (what the Supabase guide re-signs with HS256)."""
    now = int(time.time())
    claims = {
        "at_hash": "07zCRWxQSbvxUYvB2KL6tA",
        "aud": [CLIENT_ID],
        "auth_time": now - 60,
        "azp": CLIENT_ID,
        "email": f"{sub}@example.com",
        "email_verified": True,
        "exp": now + lifetime,
        "family_name": "P",
        "given_name": "Peter",
        "iat": now,
        "iss": KINDE_ISS,
        "jti": str(uuid.uuid4()),
        "name": "Peter P",
        "org_codes": ["org_95755120efb"],
        "sub": sub,
        "updated_at": now - 86400,
    }
    claims.update(extra)
    return claims


def hs256_resign(claims: dict, secret: str = CLIENT_SECRET) -> str:
    """Kinde's Supabase guide: the app re-signs the ID token's claims with the client secret."""
    return jwt.encode(claims, secret, algorithm="HS256", headers={"typ": "JWT"})


def jwks(*signers_or_jwks) -> str:
    keys = [s.jwk() if isinstance(s, Signer) else s for s in signers_or_jwks]
    return json.dumps({"keys": keys})
