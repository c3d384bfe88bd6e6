"""A mock Kinde issuer on 127.0.0.1: OpenID discovery and a JWKS, with the failures a real
issuer can have. Started and stopped by the tests; loopback only.

    issuer = MockIssuer()           # serves /.well-known/openid-configuration and the JWKS
    token = issuer.sign(claims)     # RS256 with the current key, kid in the header
    issuer.rotate()                 # new key; the old one leaves the set (keep_old=True keeps it)
    issuer.mode = "500"             # or "hang" ("hang_keys": the JWKS only), "garbage", "huge", "ok"
    issuer.discovery_mode = "500"   # discovery only: "500", "garbage", or "ok"
    issuer.discovery_issuer = "https://evil.example"   # what discovery claims to be
    issuer.extra_keys = [{...}]     # more JWKs served next to the signing keys
    issuer.count("jwks")            # requests served, per endpoint ("redirect" for redirects)
    issuer.requests                 # every request: (path, [(header name lowercased, value)])
    url = issuer.redirect_chain(3)  # a URL that redirects 3 times, then lands on the JWKS
    issuer.redirects["/x"] = "http://192.0.2.1/jwks"   # any path can redirect anywhere
    issuer.redirect_cookie = "sid=…"  # a Set-Cookie sent with every redirect
    issuer.reset_counts()           # forget the counts and the recorded requests

The OAuth 2.0 device authorization grant (RFC 8628), auto-approving, for PostgreSQL 18's libpq
(psql with oauth_issuer/oauth_client_id): discovery names a device_authorization_endpoint, the
grant type and a token_endpoint; the first poll of the token endpoint answers with
`issuer.device_token` (a token, or a callable returning one; None answers access_denied).
    issuer.device_token = issuer.token("kp_alice", aud=[AUD])
    issuer.device_requests          # the form fields of each device and token request
"""

import json
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from kinde import Signer, kinde_access_claims

DISCOVERY = "/.well-known/openid-configuration"
# Kinde publishes its keys at /.well-known/jwks; discovery points there. A custom path can be
# given to prove that discovery's jwks_uri is what is followed.
KINDE_JWKS = "/.well-known/jwks"
DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
_USED_PORTS: set = set()


class MockIssuer:
    def __init__(self, jwks_path: str = KINDE_JWKS, discovery: bool = True, kind: str = "rsa"):
        self.jwks_path = jwks_path
        self.discovery = discovery
        self.kind = kind
        self.signers = [Signer(kind)]
        self.mode = "ok"
        self.discovery_mode = "ok"
        self.discovery_issuer = None
        self.extra_keys = []
        self.hang_seconds = 10.0
        self.delay = 0.0  # seconds every answer takes
        self.date_offset = 0.0  # seconds added to the clock of the Date header it sends
        self.counts = Counter()
        self.requests = []  # (path, [(header name lowercased, value)]) per request
        self.redirects = {}  # path -> Location, answered with 302
        self.redirect_cookie = None
        self.device_token = None
        self.device_requests = []  # (endpoint, {form field: value})
        self._lock = threading.Lock()
        self._release = threading.Event()
        issuer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                issuer._serve(self)

            def do_POST(self):
                issuer._serve_post(self)

            def date_time_string(self, timestamp=None):
                return super().date_time_string(time.time() + issuer.date_offset)

        # A port no issuer of this test session had: the server's shared key cache is keyed by URL,
        # and a new issuer on a port the kernel handed out again would meet the keys an earlier
        # issuer left there (fresh, and not refetched within kinde_rls.jwks_min_refresh).
        held = []
        while True:
            server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
            if server.server_address[1] not in _USED_PORTS:
                break
            held.append(server)
        for s in held:
            s.server_close()
        self.server = server
        _USED_PORTS.add(server.server_address[1])
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.base = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    # -- what the tests use -------------------------------------------------------------------

    @property
    def iss(self) -> str:
        return self.base

    @property
    def jwks_url(self) -> str:
        return self.base + self.jwks_path

    @property
    def signer(self) -> Signer:
        return self.signers[0]

    def claims(self, sub: str, **extra) -> dict:
        c = kinde_access_claims(sub, **extra)
        c["iss"] = self.iss
        return c

    def sign(self, claims: dict, signer: Signer | None = None, **kw) -> str:
        s = signer or self.signer
        return s.sign(claims, "RS256" if s.kind.startswith("rsa") else "ES256", **kw)

    def token(self, sub: str, **extra) -> str:
        return self.sign(self.claims(sub, **extra))

    def rotate(self, keep_old: bool = False) -> Signer:
        new = Signer(self.kind)
        with self._lock:
            self.signers = [new] + (self.signers if keep_old else [])
        return new

    def redirect_chain(self, hops: int, target: str | None = None, name: str = "hop") -> str:
        """A URL that redirects `hops` times (absolute-path Locations, on this server) before
        landing on `target` (the JWKS path by default; an absolute URL is allowed)."""
        target = target or self.jwks_path
        with self._lock:
            for n in range(1, hops + 1):
                self.redirects[f"/{name}/{n}"] = f"/{name}/{n - 1}" if n > 1 else target
        return self.base + (f"/{name}/{hops}" if hops else target)

    def headers_seen(self) -> list:
        """Every header name (lowercased) of every request served so far."""
        with self._lock:
            return [k for _, headers in self.requests for k, _ in headers]

    def count(self, endpoint: str) -> int:
        with self._lock:
            return self.counts[endpoint]

    def reset_counts(self):
        with self._lock:
            self.counts.clear()
            self.requests.clear()

    def stop(self):
        self._release.set()
        self.server.shutdown()
        self.server.server_close()

    # -- serving ------------------------------------------------------------------------------

    def jwks_doc(self) -> dict:
        with self._lock:
            keys = [s.jwk() for s in self.signers]
        # A real set may hold keys we cannot use; they must be skipped, not fatal.
        keys.append({"kty": "RSA", "use": "enc", "kid": "encryption-key", "n": "AQAB", "e": "AQAB"})
        keys.append({"kty": "XYZ", "kid": "future-key-type"})
        return {"keys": keys + list(self.extra_keys)}

    def _serve(self, h: BaseHTTPRequestHandler):
        path = h.path.split("?")[0]
        with self._lock:
            self.requests.append((path, [(k.lower(), v) for k, v in h.headers.items()]))
            location = self.redirects.get(path)
        if location is not None:
            with self._lock:
                self.counts["redirect"] += 1
                self.counts["total"] += 1
            return self._send(h, 302, "", extra=[("Location", location)] + (
                [("Set-Cookie", self.redirect_cookie)] if self.redirect_cookie else []))
        if path == DISCOVERY and self.discovery:
            endpoint = "discovery"
            body = json.dumps({
                "issuer": self.discovery_issuer or self.iss,
                "authorization_endpoint": self.base + "/oauth2/auth",
                "token_endpoint": self.base + "/oauth2/token",
                "device_authorization_endpoint": self.base + "/oauth2/device/auth",
                "grant_types_supported": [
                    "authorization_code", "refresh_token", DEVICE_GRANT,
                ],
                "jwks_uri": self.jwks_url,
                "id_token_signing_alg_values_supported": ["RS256"],
            })
        elif path == self.jwks_path:
            endpoint = "jwks"
            body = None
        else:
            endpoint = "other"
            body = None
        with self._lock:
            self.counts[endpoint] += 1
            self.counts["total"] += 1
        if endpoint == "other":
            return self._send(h, 404, "not found")
        if self.delay:
            time.sleep(self.delay)
        if self.mode == "hang" or (self.mode == "hang_keys" and endpoint == "jwks"):
            self._release.wait(self.hang_seconds)
            return self._send(h, 200, "{}")
        if self.mode == "500":
            return self._send(h, 500, "internal error")
        if endpoint == "discovery" and self.discovery_mode == "500":
            return self._send(h, 500, "internal error")
        if endpoint == "discovery" and self.discovery_mode == "garbage":
            return self._send(h, 200, "<html>not json</html>")
        if endpoint == "jwks":
            if self.mode == "garbage":
                return self._send(h, 200, "<html>not a key set</html>\x00\xff")
            if self.mode == "huge":
                return self._send_huge(h)
            body = json.dumps(self.jwks_doc())
        self._send(h, 200, body)

    def _serve_post(self, h: BaseHTTPRequestHandler):
        """The device flow: a device code, then (auto-approved) the token on the first poll."""
        from urllib.parse import parse_qsl
        path = h.path.split("?")[0]
        length = int(h.headers.get("Content-Length") or 0)
        form = dict(parse_qsl(h.rfile.read(length).decode("utf-8", "replace")))
        endpoint = {"/oauth2/device/auth": "device", "/oauth2/token": "token"}.get(path, "other")
        with self._lock:
            self.requests.append((path, [(k.lower(), v) for k, v in h.headers.items()]))
            self.device_requests.append((endpoint, form))
            self.counts[endpoint] += 1
            self.counts["total"] += 1
        if endpoint == "device":
            return self._send(h, 200, json.dumps({
                "device_code": "device-code-1",
                "user_code": "ABCD-EFGH",
                "verification_uri": self.base + "/device",
                "verification_uri_complete": self.base + "/device?user_code=ABCD-EFGH",
                "expires_in": 300,
                "interval": 1,
                "qr_code": "data:image/png;base64,iVBORw0KGgo=",
            }))
        if endpoint == "token" and form.get("grant_type") == DEVICE_GRANT:
            token = self.device_token() if callable(self.device_token) else self.device_token
            if token is None:
                return self._send(h, 400, json.dumps({"error": "access_denied"}))
            return self._send(h, 200, json.dumps({
                # As Kinde answers: a lower-case token type and an empty scope.
                "access_token": token, "token_type": "bearer", "expires_in": 3600, "scope": "",
            }))
        return self._send(h, 400, json.dumps({"error": "invalid_request"}))

    @staticmethod
    def _send(h, status: int, body: str, extra=()):
        data = body.encode("utf-8", "surrogateescape")
        h.send_response(status)
        for name, value in extra:
            h.send_header(name, value)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        h.send_header("Connection", "close")
        h.end_headers()
        try:
            h.wfile.write(data)
        except OSError:
            pass

    @staticmethod
    def _send_huge(h):
        """Ten megabytes of valid-looking JSON, streamed without a Content-Length."""
        h.send_response(200)
        h.send_header("Content-Type", "application/json")
        h.send_header("Connection", "close")
        h.end_headers()
        chunk = ('{"kty":"oct","k":"' + "A" * 1000 + '"},').encode()
        try:
            h.wfile.write(b'{"keys":[')
            deadline = time.time() + 10
            for _ in range(10_000):
                if time.time() > deadline:
                    break
                h.wfile.write(chunk)
        except OSError:
            pass
