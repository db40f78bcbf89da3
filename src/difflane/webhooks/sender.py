"""One delivery attempt: a signed POST to an address the guard checked, with no redirects.

The request goes to the checked IP address itself; the Host header and (for https) the TLS
server name and certificate check still use the URL's host name, so the receiver sees a normal
request and a spoofed DNS answer cannot move it elsewhere. Proxies from the environment are not
used (they would connect wherever they like), redirects are not followed (a 3xx is a failed
attempt), the response body is not read, and the whole attempt (connect, TLS, request, status
line and headers) has one overall deadline, ``timeout`` seconds, however slowly the receiver
answers (deadline.py).
"""

from __future__ import annotations

import dataclasses
import logging
import ssl
import time

import httpcore
import httpx

from difflane import __version__
from difflane.webhooks.deadline import DeadlineBackend
from difflane.webhooks.guard import Guard, Refused, ResolveFailed, Target
from difflane.webhooks.signing import Secret

log = logging.getLogger(__name__)

USER_AGENT = f"difflane-webhooks/{__version__}"


@dataclasses.dataclass(frozen=True)
class SendResult:
    """What one attempt to deliver an event came to."""

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
        self.timeout = timeout  # the overall deadline of one attempt
        # Built once: loading the CA bundle per attempt would cost more than the request.
        self.ssl_context = verify if isinstance(verify, ssl.SSLContext) else httpx.create_ssl_context(verify=verify)

    def send(self, msg_id: str, url: str, body: bytes) -> SendResult:
        try:
            target = self.guard.check_url(url)
            address = self.guard.resolve(target)[0]
        except Refused as exc:
            return SendResult(False, False, f"refused: {exc.message}")
        except ResolveFailed as exc:
            return SendResult(False, True, str(exc))
        headers = {
            "Host": target.host_header,
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            **self.secret.headers(msg_id, int(time.time()), body),
        }
        return self._post(target, str(address), headers, body)

    def _post(self, target: Target, address: str, headers: dict[str, str], body: bytes) -> SendResult:
        # raw target, not a joined URL: a path such as "//other.host/x" must stay a path.
        url = httpcore.URL(scheme=target.scheme, host=address, port=target.port, target=target.path)
        extensions: dict[str, object] = {}
        if target.scheme == "https" and not target.is_ip_literal:
            extensions["sni_hostname"] = target.host  # TLS name and certificate check: the host name
        try:
            with (
                httpcore.ConnectionPool(
                    ssl_context=self.ssl_context,
                    max_connections=1,
                    network_backend=DeadlineBackend(self.timeout),
                ) as pool,
                pool.stream(
                    "POST", url, headers=list(headers.items()), content=body, extensions=extensions
                ) as response,
            ):
                status = response.status
        except httpcore.TimeoutException:
            return SendResult(False, True, "timed out")
        except (httpcore.NetworkError, httpcore.ProtocolError, httpcore.UnsupportedProtocol, OSError) as exc:
            return SendResult(False, True, f"{type(exc).__name__}: {exc}")
        return _judge(status)


def _judge(status: int) -> SendResult:
    if 200 <= status < 300:
        return SendResult(True, False, f"HTTP {status}", status)
    if status == 410:  # Gone: the receiver asks us to stop
        return SendResult(False, False, "HTTP 410 Gone: the receiver asked to stop", status)
    kind = "redirect (not followed)" if 300 <= status < 400 else "error"
    return SendResult(False, True, f"HTTP {status} {kind}", status)
