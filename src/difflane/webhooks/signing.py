"""Standard Webhooks signatures: ``v1,<base64 HMAC-SHA256 of "id.timestamp.body">``.

The secret is ``whsec_`` + base64 of 24 to 64 random bytes; the HMAC key is those bytes. Each
attempt is signed again with a fresh timestamp, so receivers can refuse old (replayed) messages
while the id stays the same for deduplication.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
from collections.abc import Mapping

PREFIX = "whsec_"
MIN_KEY_BYTES = 24
MAX_KEY_BYTES = 64
DEFAULT_TOLERANCE_S = 300


class InvalidSignature(Exception):
    pass


class Secret:
    def __init__(self, key: bytes) -> None:
        if not MIN_KEY_BYTES <= len(key) <= MAX_KEY_BYTES:
            raise ValueError(f"a webhook secret must be {MIN_KEY_BYTES}-{MAX_KEY_BYTES} bytes, got {len(key)}")
        self._key = key

    @classmethod
    def parse(cls, text: str) -> Secret:
        text = text.strip()
        if not text.startswith(PREFIX):
            raise ValueError(f"a webhook secret must look like {PREFIX}<base64>")
        try:
            key = base64.b64decode(text[len(PREFIX) :], validate=True)
        except binascii.Error as exc:
            raise ValueError("a webhook secret must be base64 after the whsec_ prefix") from exc
        return cls(key)

    @classmethod
    def generate(cls) -> str:
        return PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()

    def __repr__(self) -> str:
        return "Secret(**********)"

    def sign(self, msg_id: str, timestamp: int, body: bytes) -> str:
        signed = f"{msg_id}.{timestamp}.".encode() + body
        return "v1," + base64.b64encode(hmac.new(self._key, signed, hashlib.sha256).digest()).decode()

    def headers(self, msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
        return {
            "webhook-id": msg_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": self.sign(msg_id, timestamp, body),
        }

    def verify(
        self, headers: Mapping[str, str], body: bytes, *, now: int, tolerance: int = DEFAULT_TOLERANCE_S
    ) -> None:
        """What a receiver does (used by our tests; a handy reference for users)."""
        lower = {k.lower(): v for k, v in headers.items()}
        try:
            msg_id, stamp, given = lower["webhook-id"], lower["webhook-timestamp"], lower["webhook-signature"]
            timestamp = int(stamp)
        except (KeyError, ValueError) as exc:
            raise InvalidSignature("missing or malformed webhook headers") from exc
        if abs(now - timestamp) > tolerance:
            raise InvalidSignature("timestamp outside the tolerance")
        expected = self.sign(msg_id, timestamp, body)
        # Several space-separated signatures may be sent (during secret rotation); one must match.
        if not any(hmac.compare_digest(expected, candidate) for candidate in given.split()):
            raise InvalidSignature("no signature matches")
