"""A local identity provider shaped like Microsoft Entra ID, for tests.

A threaded HTTP server on 127.0.0.1 serves OpenID metadata and JWKS the way Entra lays them out:

    /{tenant}/v2.0/.well-known/openid-configuration   issuer <url>/{tid}/v2.0   keys /discovery/v2.0/keys
    /{tenant}/.well-known/openid-configuration        issuer <url>/sts/{tid}/   keys /discovery/keys
    /oidc/.well-known/openid-configuration            issuer <url>/oidc         keys /oidc/jwks

where {tenant} is a tenant id (a concrete issuer) or ``organizations``/``common`` (the issuer
holds the ``{tenantid}`` template). RSA keys are generated at test time; ``token()`` mints
Entra-shaped access tokens, and the helpers below forge the bad ones the tests need.
"""

from __future__ import annotations

import base64
import collections
import hashlib
import hmac
import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

TENANT_A = "11111111-1111-4111-8111-111111111111"
TENANT_B = "22222222-2222-4222-8222-222222222222"
TENANT_C = "33333333-3333-4333-8333-333333333333"  # never allowed
API_CLIENT_ID = "aaaaaaaa-0000-4000-8000-00000000a91d"
API_APP_ID_URI = "api://difflane"
GRAPH_AUDIENCES = ("00000003-0000-0000-c000-000000000000", "https://graph.microsoft.com")
ALL_SCOPES = "Jobs.Submit Jobs.Read"

_KEYS: dict[str, rsa.RSAPrivateKey] = {}
_KEYS_LOCK = threading.Lock()


def private_key(name: str) -> rsa.RSAPrivateKey:
    """One 2048-bit key per name for the whole test session (generation is the slow part)."""
    with _KEYS_LOCK:
        if name not in _KEYS:
            _KEYS[name] = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        return _KEYS[name]


def new_oid() -> str:
    return str(uuid.uuid4())


class OidcProvider:
    def __init__(self) -> None:
        self.published: list[str] = ["key-1"]
        self.signing: dict[str, rsa.RSAPrivateKey] = {"key-1": private_key("key-1")}
        self.requests: collections.Counter[str] = collections.Counter()
        self.lock = threading.Lock()
        self.down = False
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)

    # --- lifecycle -----------------------------------------------------------------------------

    def __enter__(self) -> OidcProvider:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    # --- what it publishes ---------------------------------------------------------------------

    def v2_issuer(self, tid: str) -> str:
        return f"{self.url}/{tid}/v2.0"

    def v1_issuer(self, tid: str) -> str:
        return f"{self.url}/sts/{tid}/"

    @property
    def oidc_issuer(self) -> str:
        return f"{self.url}/oidc"

    def rotate(self, kid: str) -> None:
        """Publish a new signing key (the old ones stay published)."""
        with self.lock:
            self.signing[kid] = private_key(kid)
            self.published.append(kid)

    def jwks_fetches(self) -> int:
        with self.lock:
            return sum(n for path, n in self.requests.items() if "keys" in path or path.endswith("/jwks"))

    def jwks(self) -> dict[str, Any]:
        with self.lock:
            kids = list(self.published)
        keys = []
        for kid in kids:
            public = json.loads(RSAAlgorithm.to_jwk(self.signing[kid].public_key()))
            keys.append({**public, "kid": kid, "use": "sig", "alg": "RS256"})
        return {"keys": keys}

    # --- tokens --------------------------------------------------------------------------------

    def claims(
        self,
        *,
        tid: str = TENANT_A,
        oid: str | None = "",
        version: int = 2,
        aud: str | None = None,
        scp: str | None = ALL_SCOPES,
        roles: list[str] | None = None,
        exp_in: float = 3600,
        nbf_in: float = -60,
        **extra: Any,
    ) -> dict[str, Any]:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.v2_issuer(tid) if version == 2 else self.v1_issuer(tid),
            "aud": aud or (API_CLIENT_ID if version == 2 else API_APP_ID_URI),
            "iat": now - 60,
            "nbf": int(now + nbf_in),
            "exp": int(now + exp_in),
            "tid": tid,
            "oid": new_oid() if oid == "" else oid,  # None: no oid claim at all
            "sub": "pairwise-" + new_oid(),
            "ver": f"{version}.0",
            "azp" if version == 2 else "appid": "cccccccc-0000-4000-8000-00000000c11e",
            "preferred_username": "someone@example.com",
        }
        if scp is not None:
            claims["scp"] = scp
        if roles is not None:
            claims["roles"] = roles
        claims.update(extra)
        return {k: v for k, v in claims.items() if v is not None}

    def token(self, *, kid: str = "key-1", signer: str | None = None, **claims: Any) -> str:
        """A signed access token; ``signer`` names a different private key than ``kid`` says."""
        key = private_key(signer) if signer else self.signing.get(kid) or private_key(kid)
        return jwt.encode(self.claims(**claims), key, algorithm="RS256", headers={"kid": kid, "typ": "JWT"})

    def unsigned_token(self, **claims: Any) -> str:
        """``alg: none``: a token with no signature at all."""
        return _segment({"alg": "none", "typ": "JWT", "kid": "key-1"}) + "." + _segment(self.claims(**claims)) + "."

    def hs256_with_public_key(self, **claims: Any) -> str:
        """The classic confusion attack: HMAC-signed with the RSA public key as the secret."""
        public_pem = (
            self.signing["key-1"]
            .public_key()
            .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        )
        signing_input = _segment({"alg": "HS256", "typ": "JWT", "kid": "key-1"}) + "." + _segment(self.claims(**claims))
        signature = hmac.new(public_pem, signing_input.encode(), hashlib.sha256).digest()
        return signing_input + "." + _b64(signature)

    # --- HTTP ----------------------------------------------------------------------------------

    def _document(self, path: str) -> dict[str, Any] | None:
        parts = [p for p in path.split("/") if p]
        if parts[-2:] == [".well-known", "openid-configuration"]:
            if parts[0] == "oidc" and len(parts) == 3:
                return {"issuer": self.oidc_issuer, "jwks_uri": f"{self.url}/oidc/jwks"}
            tenant = parts[0]
            tid = "{tenantid}" if tenant in ("organizations", "common") else tenant
            if parts[1:2] == ["v2.0"]:
                return {"issuer": self.v2_issuer(tid), "jwks_uri": f"{self.url}/discovery/v2.0/keys"}
            if len(parts) == 3:
                return {"issuer": self.v1_issuer(tid), "jwks_uri": f"{self.url}/discovery/keys"}
        if path in ("/discovery/v2.0/keys", "/discovery/keys", "/oidc/jwks"):
            return self.jwks()
        return None

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        provider = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with provider.lock:
                    provider.requests[self.path] += 1
                    down = provider.down
                document = None if down else provider._document(self.path)
                status = 503 if down else (200 if document is not None else 404)
                body = json.dumps(document or {"error": "not found"}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _segment(value: dict[str, Any]) -> str:
    return _b64(json.dumps(value, separators=(",", ":")).encode())
