"""One delivery attempt: a signed POST to an address the guard checked, with no redirects.

The request goes to the checked IP address itself; the Host header and (for https) the TLS
server name and certificate check still use the URL's host name, so the receiver sees a normal
request and a spoofed DNS answer cannot move it elsewhere. Proxies from the environment are not
used (they would connect wherever they like), redirects are not followed (a 3xx is a failed
attempt), the response body is not read, and every phase has a short timeout.
"""

from __future__ import annotations

import dataclasses
import logging
import ssl
import time

import httpx

from difflane import __version__
from difflane.webhooks.guard import Guard, Refused, ResolveFailed, Target
from difflane.webhooks.signing import Secret

log = logging.getLogger(__name__)

USER_AGENT = f"difflane-webhooks/{__version__}"


@dataclasses.dataclass(frozen=True)
class Outcome:
    delivered: bool
    retry: bool  # worth another attempt later
    detail: str  # for logs and the delivery record
    status: int | None = None


class Sender:
    def __init__(
        self,
        guard: Guard,
        secret: Secret,
        *,
        timeout: float = 5.0,
        verify: ssl.SSLContext | bool = True,
    ) -> None:
        self.guard = guard
        self.secret = secret
        self.timeout = timeout
        self.verify = verify  # tests pass a context that trusts their own CA

    def send(self, msg_id: str, url: str, body: bytes) -> Outcome:
        try:
            target = self.guard.check_url(url)
            address = self.guard.resolve(target)[0]
        except Refused as exc:
            return Outcome(False, False, f"refused: {exc.message}")
        except ResolveFailed as exc:
            return Outcome(False, True, str(exc))
        headers = {
            "Host": target.host_header,
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            **self.secret.headers(msg_id, int(time.time()), body),
        }
        return self._post(target, str(address), headers, body)

    def _post(self, target: Target, address: str, headers: dict[str, str], body: bytes) -> Outcome:
        # raw_path, not join(): a path such as "//other.host/x" must stay a path.
        url = httpx.URL(scheme=target.scheme, host=address, port=target.port, raw_path=target.path.encode())
        extensions = {}
        if target.scheme == "https" and not target.is_ip_literal:
            extensions["sni_hostname"] = target.host  # TLS name and certificate check: the host name
        try:
            with (
                httpx.Client(
                    trust_env=False, follow_redirects=False, timeout=self.timeout, verify=self.verify
                ) as client,
                client.stream("POST", url, content=body, headers=headers, extensions=extensions) as response,
            ):
                status = response.status_code
        except httpx.TimeoutException:
            return Outcome(False, True, "timed out")
        except httpx.HTTPError as exc:
            return Outcome(False, True, f"{type(exc).__name__}: {exc}")
        if 200 <= status < 300:
            return Outcome(True, False, f"HTTP {status}", status)
        if status == 410:  # Gone: the receiver asks us to stop
            return Outcome(False, False, "HTTP 410 Gone: the receiver asked to stop", status)
        kind = "redirect (not followed)" if 300 <= status < 400 else "error"
        return Outcome(False, True, f"HTTP {status} {kind}", status)
