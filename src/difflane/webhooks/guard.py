"""SSRF defence for webhook URLs: who difflane may be made to send an HTTP request to.

Two stages. ``check_url`` runs on submit (no network): https only (http only when allowed for
development), no credentials in the URL, a host on the allowlist, and no literal address or
``localhost`` that the address rules refuse. ``resolve`` runs before every attempt: the host is
resolved and *every* address must pass (an answer mixing a public and a private address is
refused), and the sender then connects to that checked address, so a DNS answer that changes
between check and connect (rebinding) cannot redirect the request.

Always refused: loopback, private (RFC 1918, unique-local), link-local (which holds the cloud
metadata service at 169.254.169.254), carrier-grade NAT, multicast, reserved and unspecified
addresses, the Azure platform endpoint 168.63.129.16, and IPv6 forms that wrap a refused IPv4
address (mapped, 6to4, Teredo, NAT64). ``allow_private`` (development only) lets loopback and
private ranges through, never link-local or the metadata endpoints.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import socket
from collections.abc import Callable, Sequence
from urllib.parse import quote, urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Sequence[str]]  # host, port -> addresses (blocking)

MAX_URL_CHARS = 2048

# Never reachable, even in development: cloud metadata and platform endpoints.
_METADATA = tuple(
    ipaddress.ip_network(n)
    for n in ("169.254.0.0/16", "168.63.129.16/32", "100.100.100.200/32", "fd00:ec2::254/128", "fe80::/10")
)
# Reachable only with allow_private (development receivers on this machine or the LAN).
_PRIVATE = tuple(
    ipaddress.ip_network(n)
    for n in ("127.0.0.0/8", "::1/128", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7", "100.64.0.0/10")
)
# IPv6 ranges whose low 32 bits are an IPv4 address on some networks (translation, SIIT,
# deprecated IPv4-compatible form): the embedded IPv4 address is checked too.
_EMBEDS_IPV4 = tuple(ipaddress.ip_network(n) for n in ("64:ff9b::/96", "64:ff9b:1::/48", "::ffff:0:0:0/96", "::/96"))
# Never public, whatever is_global says on this Python: deprecated site-local IPv6 and the IETF
# protocol assignments block.
_THIS_NETWORK = ipaddress.ip_network("0.0.0.0/8")
_NOT_PUBLIC = tuple(ipaddress.ip_network(n) for n in ("fec0::/10", "192.0.0.0/24"))


class Refused(Exception):
    """This URL or address must never be contacted. Permanent: retrying cannot help."""

    def __init__(self, message: str, code: str = "webhook_url_refused") -> None:
        super().__init__(message)
        self.message = message
        self.code = code


class ResolveFailed(Exception):
    """DNS did not answer (temporary: worth retrying)."""


@dataclasses.dataclass(frozen=True)
class Target:
    url: str
    scheme: str
    host: str  # lower-case, IDNA (ASCII); an IPv6 literal without brackets
    port: int
    path: str  # path and query, at least "/"

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        return host if self.port == default else f"{host}:{self.port}"

    @property
    def is_ip_literal(self) -> bool:
        return _ip(self.host) is not None


def system_resolver(host: str, port: int) -> list[str]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise ResolveFailed(f"cannot resolve {host}: {exc}") from exc
    return [str(info[4][0]) for info in infos]


class Guard:
    def __init__(
        self,
        allowed_hosts: Sequence[str],
        *,
        allow_http: bool = False,
        allow_private: bool = False,
        resolver: Resolver = system_resolver,
    ) -> None:
        self.allowed_hosts = tuple(h.strip().lower().rstrip(".") for h in allowed_hosts if h.strip())
        self.allow_http = allow_http
        self.allow_private = allow_private
        self._resolve = resolver

    def check_url(self, url: str) -> Target:
        if len(url) > MAX_URL_CHARS:
            raise Refused(f"the webhook URL is longer than {MAX_URL_CHARS} characters")
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as exc:
            raise Refused(f"the webhook URL is not valid: {exc}") from exc
        schemes = ("https", "http") if self.allow_http else ("https",)
        if parts.scheme not in schemes:
            raise Refused("the webhook URL must use " + (" or ".join(schemes)), code="webhook_scheme_refused")
        if parts.username is not None or parts.password is not None:
            raise Refused("the webhook URL must not hold credentials")
        if parts.fragment:
            raise Refused("the webhook URL must not have a fragment")
        if not parts.hostname:
            raise Refused("the webhook URL has no host")
        host = _normalise_host(parts.hostname)
        if not self._host_allowed(host):
            raise Refused(f"webhooks to {host} are not allowed on this deployment", code="webhook_host_not_allowed")
        address = _ip(host)
        if address is not None:
            self.check_address(address)
        elif (host == "localhost" or host.endswith(".localhost")) and not self.allow_private:
            raise Refused("webhooks to localhost are not allowed", code="webhook_address_refused")
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        path = quote(path, safe="/?@!$&'()*+,;=:%~-._")  # non-ASCII and spaces percent-encoded
        return Target(url, parts.scheme, host, port or (443 if parts.scheme == "https" else 80), path)

    def resolve(self, target: Target) -> list[IPAddress]:
        """Every address the host resolves to, each checked; raises Refused or ResolveFailed."""
        literal = _ip(target.host)
        if literal is not None:
            self.check_address(literal)
            return [literal]
        found = [_ip(a.split("%", 1)[0]) for a in self._resolve(target.host, target.port)]
        addresses = [a for a in found if a is not None]
        if not addresses:
            raise ResolveFailed(f"{target.host} has no address")
        for address in addresses:
            self.check_address(address)
        return addresses

    def check_address(self, address: IPAddress) -> None:
        for candidate in _unwrapped(address):
            if any(candidate in net for net in _METADATA):
                raise Refused(f"{address} is a link-local or metadata address", code="webhook_address_refused")
            if self.allow_private and any(candidate in net for net in _PRIVATE):
                continue
            if not candidate.is_global or candidate.is_multicast or any(candidate in net for net in _NOT_PUBLIC):
                raise Refused(f"{address} is not a public address", code="webhook_address_refused")

    def _host_allowed(self, host: str) -> bool:
        for pattern in self.allowed_hosts:
            if pattern == "*" or pattern == host:
                return True
            if pattern.startswith("*.") and host.endswith(pattern[1:]):
                return True
        return False


def _normalise_host(host: str) -> str:
    host = host.lower().rstrip(".")
    if _ip(host) is not None:
        return host
    try:
        return host.encode("idna").decode("ascii")
    except UnicodeError as exc:
        raise Refused(f"the webhook host {host!r} is not a valid name") from exc


def _ip(text: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _unwrapped(address: IPAddress) -> list[IPAddress]:
    """The address and any IPv4 address it carries inside (so ::ffff:127.0.0.1 is loopback)."""
    out: list[IPAddress] = [address]
    if isinstance(address, ipaddress.IPv6Address):
        inner = [address.ipv4_mapped, address.sixtofour]
        if address.teredo is not None:
            inner.append(address.teredo[1])
        embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        # 0.0.0.0/8 is no IPv4 destination: "::1" and "::" are themselves, not wrappers.
        if any(address in net for net in _EMBEDS_IPV4) and embedded not in _THIS_NETWORK:
            inner.append(embedded)
        out.extend(a for a in inner if a is not None)
    return out
