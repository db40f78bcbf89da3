"""Credentials hidden inside ordinary-looking settings: URLs and connection strings.

``SecretStr`` settings are always masked; this is for the rest. A URL may carry a password
(``https://user:pass@host``) or a SAS signature (``?sv=...&sig=...``); a connection string
pasted into a plain setting carries ``AccountKey=`` or ``SharedAccessKey=``. ``redact`` keeps
everything an operator needs to check the setting (scheme, host, path, the names of the
parameters) and replaces each credential by ``**********``.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

MASK = "**********"
# Query parameters that are credentials (compared lower-case): SAS `sig`, tokens, keys.
SECRET_PARAMS = frozenset(
    {"sig", "signature", "token", "access_token", "code", "key", "secret", "password", "client_secret", "api_key"}
)
_CONNECTION_SECRET = re.compile(r"(?i)\b(AccountKey|SharedAccessKey|SharedAccessSignature|Password|Pwd|Secret)=([^;]*)")
_URL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*://")


def redact(text: str) -> str:
    text = _CONNECTION_SECRET.sub(lambda m: f"{m.group(1)}={MASK}", text)
    return _redact_url(text) if _URL.match(text) else text


def _redact_url(text: str) -> str:
    try:
        parts = urlsplit(text)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return MASK  # not parseable: show nothing rather than a credential
    netloc = parts.netloc
    if parts.username is not None or parts.password is not None:
        netloc = f"{MASK}@{host}" + (f":{port}" if port else "")
    query = parts.query
    if query:
        pairs = parse_qsl(query, keep_blank_values=True)
        query = urlencode([(k, MASK if k.lower() in SECRET_PARAMS else v) for k, v in pairs], safe="*")
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
